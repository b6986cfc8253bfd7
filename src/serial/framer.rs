//! Framing: bytes from the port in, frames (or counted framing errors) out. Line
//! framing splits on a delimiter of one or more bytes; a line longer than
//! `max_length` is reported once and skipped up to its delimiter (the framer
//! resynchronises on the next line, it never grows its buffer beyond the limit);
//! text that is not UTF-8 is rejected or replaced as configured. Fixed framing cuts
//! every `n` bytes. Regex framing matches each line against the pattern (linear time,
//! on input already bounded by `max_length`) and yields its named captures. It never
//! holds more than `max_length + delimiter` bytes (or `n` for fixed frames).

use super::config::{Framing, InvalidUtf8, SerialConfig};

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A line (line framing).
    Text(String),
    /// `n` bytes (fixed framing).
    Bytes(Vec<u8>),
    /// Named captures, in pattern order (regex framing; unmatched optional groups left out).
    Fields(Vec<(String, String)>),
}

/// Why bytes did not make a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A line longer than `max_length` (dropped up to its delimiter).
    Overlong,
    /// A line that is not UTF-8 (dropped, or published with U+FFFD and counted).
    InvalidUtf8,
    /// A line the pattern does not match.
    NoMatch,
}

/// The framer of one port.
#[derive(Debug)]
pub struct Framer {
    framing: Framing,
    delimiter: Vec<u8>,
    max_length: usize,
    trim: bool,
    invalid_utf8: InvalidUtf8,
    buf: Vec<u8>,
    /// Skipping the rest of an overlong line.
    discarding: bool,
    /// Lines published with U+FFFD in place of invalid UTF-8 (`invalid_utf8 = "replace"`).
    pub replaced: u64,
}

impl Framer {
    /// The framer of a validated `[[serial]]`.
    pub fn new(config: &SerialConfig) -> Self {
        Framer {
            framing: config.parsed_framing(),
            delimiter: config.delimiter.as_bytes().to_vec(),
            max_length: config.max_length,
            trim: config.trim,
            invalid_utf8: config.invalid_utf8,
            buf: Vec::new(),
            discarding: false,
            replaced: 0,
        }
    }

    /// Forget a partial frame (the port was reopened).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.discarding = false;
    }

    /// Feed `bytes`; every complete frame or framing error goes to `out`, in order.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Result<Frame, FrameError>>) {
        if let Framing::Fixed(n) = self.framing {
            for &b in bytes {
                self.buf.push(b);
                if self.buf.len() == n {
                    out.push(Ok(Frame::Bytes(std::mem::take(&mut self.buf))));
                }
            }
            return;
        }
        let d = self.delimiter.len();
        for &b in bytes {
            self.buf.push(b);
            if self.buf.ends_with(&self.delimiter) {
                self.buf.truncate(self.buf.len() - d);
                let line = std::mem::take(&mut self.buf);
                if std::mem::take(&mut self.discarding) {
                    continue;
                }
                if line.len() > self.max_length {
                    out.push(Err(FrameError::Overlong));
                } else if let Some(frame) = self.line(&line) {
                    out.push(frame);
                }
            } else if self.buf.len() > self.max_length + d {
                // Keep the last d-1 bytes: they may start the delimiter.
                let keep = self.buf.len() - (d - 1);
                self.buf.drain(..keep);
                if !self.discarding {
                    self.discarding = true;
                    out.push(Err(FrameError::Overlong));
                }
            }
        }
    }

    /// The frame of one complete line (`None`: an empty line, skipped).
    fn line(&mut self, line: &[u8]) -> Option<Result<Frame, FrameError>> {
        let (text, bad) = match std::str::from_utf8(line) {
            Ok(t) => (std::borrow::Cow::Borrowed(t), false),
            Err(_) => match self.invalid_utf8 {
                InvalidUtf8::Reject => return Some(Err(FrameError::InvalidUtf8)),
                InvalidUtf8::Replace => (String::from_utf8_lossy(line), true),
            },
        };
        let text = if self.trim { text.trim() } else { &text[..] };
        if text.is_empty() {
            return None;
        }
        if bad {
            self.replaced += 1;
        }
        Some(match &self.framing {
            Framing::Regex(r) => match r.captures(text) {
                None => Err(FrameError::NoMatch),
                Some(c) => Ok(Frame::Fields(
                    r.capture_names()
                        .flatten()
                        .filter_map(|n| c.name(n).map(|m| (n.to_string(), m.as_str().to_string())))
                        .collect(),
                )),
            },
            _ => Ok(Frame::Text(text.to_string())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framer(extra: &str) -> Framer {
        let config: SerialConfig =
            toml::from_str(&format!("name = \"t\"\nport = \"/dev/null\"\n{extra}"))
                .expect("parses");
        Framer::new(&config)
    }

    fn feed(f: &mut Framer, chunks: &[&[u8]]) -> Vec<Result<Frame, FrameError>> {
        let mut out = Vec::new();
        for c in chunks {
            f.push(c, &mut out);
        }
        out
    }

    fn text(s: &str) -> Result<Frame, FrameError> {
        Ok(Frame::Text(s.into()))
    }

    #[test]
    fn lines_split_across_reads_and_trimmed() {
        let mut f = framer("");
        let out = feed(&mut f, &[b"12.5 k", b"g\r\n\r\nnext", b"\n"]);
        assert_eq!(out, [text("12.5 kg"), text("next")]);
    }

    #[test]
    fn a_multi_byte_delimiter_split_between_reads() {
        let mut f = framer("delimiter = \"\\r\\n\"\ntrim = false");
        let out = feed(&mut f, &[b"a\r", b"\nb\rc\r", b"\n"]);
        assert_eq!(out, [text("a"), text("b\rc")]);
    }

    #[test]
    fn an_overlong_line_is_reported_once_and_the_next_line_survives() {
        let mut f = framer("max_length = 8");
        let long = vec![b'x'; 100];
        let out = feed(&mut f, &[&long, &long, b"\nok\n", b"123456789\n"]);
        assert_eq!(
            out,
            [
                Err(FrameError::Overlong),
                text("ok"),
                Err(FrameError::Overlong)
            ]
        );
        assert!(f.buf.capacity() < 200, "buffer bounded");
        let out = feed(&mut f, &[b"12345678\n"]);
        assert_eq!(out, [text("12345678")]);
    }

    #[test]
    fn invalid_utf8_is_rejected_or_replaced() {
        let mut f = framer("");
        assert_eq!(feed(&mut f, &[b"a\xffb\n"]), [Err(FrameError::InvalidUtf8)]);
        let mut f = framer("invalid_utf8 = \"replace\"");
        assert_eq!(feed(&mut f, &[b"a\xffb\n"]), [text("a\u{fffd}b")]);
        assert_eq!(f.replaced, 1);
    }

    #[test]
    fn fixed_frames_cut_every_n_bytes() {
        let mut f = framer("framing = \"fixed\"\nframe_length = 3");
        let out = feed(&mut f, &[b"\x01\x02", b"\x03\x04\x05\x06\x07"]);
        assert_eq!(
            out,
            [
                Ok(Frame::Bytes(vec![1, 2, 3])),
                Ok(Frame::Bytes(vec![4, 5, 6]))
            ]
        );
        f.reset();
        assert_eq!(
            feed(&mut f, &[b"\x08\x09\x0a"]),
            [Ok(Frame::Bytes(vec![8, 9, 10]))]
        );
    }

    #[test]
    fn regex_captures_become_fields() {
        let mut f = framer("framing = \"regex\"\npattern = '^(?P<weight>[0-9.]+) ?(?P<unit>kg|g)(?: (?P<flag>S))?$'");
        let out = feed(&mut f, &[b"12.5 kg\nnoise\n3g S\n"]);
        assert_eq!(
            out,
            [
                Ok(Frame::Fields(vec![
                    ("weight".into(), "12.5".into()),
                    ("unit".into(), "kg".into())
                ])),
                Err(FrameError::NoMatch),
                Ok(Frame::Fields(vec![
                    ("weight".into(), "3".into()),
                    ("unit".into(), "g".into()),
                    ("flag".into(), "S".into())
                ])),
            ]
        );
    }
}
