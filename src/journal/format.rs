//! The bytes on disk: record frames in segment files and ack entries in ack files, and
//! the scan that finds where the intact part of a segment ends. Pure functions over
//! byte slices; this file never touches the filesystem.
//!
//! Record frame (little endian), 28-byte header then the payload:
//!
//! ```text
//! 0   u32 header CRC32C over bytes 4..28, seeded with RECORD_SEED
//! 4   u32 payload length
//! 8   u64 sequence number (never 0; strictly increasing through the journal)
//! 16  u64 append wall-clock time, milliseconds since the Unix epoch
//! 24  u32 payload CRC32C
//! 28  payload
//! ```
//!
//! Ack entry (16 bytes): `u64 first seq, u32 count, u32 CRC32C over bytes 0..12 seeded
//! with ACK_SEED`: the records `first .. first + count` are acknowledged.

/// Bytes of the header in front of every payload.
pub const RECORD_HEADER_BYTES: usize = 28;
/// Bytes of one ack entry; every record reserves one in the disk budget.
pub const ACK_ENTRY_BYTES: usize = 16;

/// CRC seeds tie a checksum to its kind of frame and to format version 1: a record
/// header can never pass as an ack entry, and a future format changes the seed.
const RECORD_SEED: u32 = 0x544A_5231; // "TJR1"
const ACK_SEED: u32 = 0x544A_4131; // "TJA1"

/// The decoded header of a record frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Payload bytes after the header.
    pub len: u32,
    /// Sequence number.
    pub seq: u64,
    /// Append wall-clock time (ms since the Unix epoch).
    pub appended_ms: u64,
    /// CRC32C of the payload.
    pub payload_crc: u32,
}

impl RecordHeader {
    /// Header plus payload bytes.
    pub fn frame_len(&self) -> u64 {
        RECORD_HEADER_BYTES as u64 + u64::from(self.len)
    }
}

/// Build an unsealed frame: everything but the sequence number and header CRC, which
/// [`seal_frame`] fills in. Callers encode on their own thread so the payload CRC is
/// spread over the appenders, not computed on the writer thread.
pub fn encode_frame(payload: &[u8], appended_ms: u64) -> Vec<u8> {
    let mut frame = start_frame(payload.len());
    frame.extend_from_slice(payload);
    finish_frame(frame, appended_ms)
}

/// A frame buffer with room for a payload of about `payload_len` bytes: the header's
/// place reserved, the payload to be written after it (no copy of a separately built
/// payload), then [`finish_frame`].
pub fn start_frame(payload_len: usize) -> bytes::BytesMut {
    let mut frame = bytes::BytesMut::with_capacity(RECORD_HEADER_BYTES + payload_len);
    frame.extend_from_slice(&[0; RECORD_HEADER_BYTES]);
    frame
}

/// [`encode_frame`] of a frame from [`start_frame`] with its payload written after the
/// header: the payload length, append time and payload CRC filled in. The conversion
/// to `Vec` reuses the buffer's allocation.
pub fn finish_frame(frame: bytes::BytesMut, appended_ms: u64) -> Vec<u8> {
    let mut frame = Vec::from(frame);
    let payload = &frame[RECORD_HEADER_BYTES..];
    let len = u32::try_from(payload.len()).expect("invariant: payload length checked by caller");
    let crc = crc32c::crc32c(payload);
    frame[4..8].copy_from_slice(&len.to_le_bytes());
    frame[16..24].copy_from_slice(&appended_ms.to_le_bytes());
    frame[24..28].copy_from_slice(&crc.to_le_bytes());
    frame
}

/// Write the sequence number into a frame from [`encode_frame`] and seal its header CRC.
pub fn seal_frame(frame: &mut [u8], seq: u64) {
    frame[8..16].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c_append(RECORD_SEED, &frame[4..RECORD_HEADER_BYTES]);
    frame[0..4].copy_from_slice(&crc.to_le_bytes());
}

/// Decode a header; `None` when the CRC does not match or the sequence number is 0
/// (an all-zero header, as in a zero-filled tail, is rejected by both).
pub fn decode_header(bytes: &[u8]) -> Option<RecordHeader> {
    let bytes = bytes.get(..RECORD_HEADER_BYTES)?;
    let stored = u32::from_le_bytes(bytes[0..4].try_into().expect("invariant: 4 bytes"));
    if crc32c::crc32c_append(RECORD_SEED, &bytes[4..]) != stored {
        return None;
    }
    let header = RecordHeader {
        len: u32::from_le_bytes(bytes[4..8].try_into().expect("invariant: 4 bytes")),
        seq: u64::from_le_bytes(bytes[8..16].try_into().expect("invariant: 8 bytes")),
        appended_ms: u64::from_le_bytes(bytes[16..24].try_into().expect("invariant: 8 bytes")),
        payload_crc: u32::from_le_bytes(bytes[24..28].try_into().expect("invariant: 4 bytes")),
    };
    (header.seq != 0).then_some(header)
}

/// Whether `payload` is the one the header was written for.
pub fn payload_matches(header: &RecordHeader, payload: &[u8]) -> bool {
    payload.len() == header.len as usize && crc32c::crc32c(payload) == header.payload_crc
}

/// One intact record found by [`scan_segment`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScannedRecord {
    /// Its header.
    pub header: RecordHeader,
    /// Offset of the frame in the segment.
    pub offset: u64,
}

/// What is wrong where the intact part of a segment ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// Only zero bytes follow (a power cut on ext4 can extend a file whose blocks were
    /// never written): nothing that was written is lost, `records` is 0.
    ZeroTail,
    /// Fewer bytes than a header, not all zero: a record torn while being written.
    TornHeader,
    /// A valid header whose payload runs past the end of the file.
    TornBody,
    /// The header CRC does not match (or a sequence number does not increase).
    BadHeader,
    /// The header is valid but the payload CRC does not match.
    BadPayload,
}

/// Bytes and records after the intact part of a segment, which recovery drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loss {
    /// What the scan found at the cut.
    pub damage: Damage,
    /// Bytes from the cut to the end of the segment.
    pub bytes: u64,
    /// The damaged record plus intact-looking records found after it by a
    /// resynchronising scan (0 for a zero-filled tail).
    pub records: u64,
}

/// The result of scanning one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    /// Intact records in order.
    pub records: Vec<ScannedRecord>,
    /// Length of the intact prefix.
    pub valid_len: u64,
    /// What follows the intact prefix, if anything.
    pub loss: Option<Loss>,
}

/// Scan a segment: keep records while each has a valid header, a sequence number
/// greater than the one before (the first greater than `after_seq`) and a payload that
/// matches its CRC; stop at the first that does not.
pub fn scan_segment(bytes: &[u8], after_seq: u64) -> SegmentScan {
    let mut records = Vec::new();
    let mut offset = 0usize;
    let mut last_seq = after_seq;
    let damage = loop {
        let rest = &bytes[offset..];
        if rest.is_empty() {
            break None;
        }
        if rest.iter().all(|&b| b == 0) {
            break Some(Damage::ZeroTail);
        }
        if rest.len() < RECORD_HEADER_BYTES {
            break Some(Damage::TornHeader);
        }
        let header = match decode_header(rest) {
            Some(h) if h.seq > last_seq => h,
            _ => break Some(Damage::BadHeader),
        };
        let end = RECORD_HEADER_BYTES as u64 + u64::from(header.len);
        if end > rest.len() as u64 {
            break Some(Damage::TornBody);
        }
        let payload = &rest[RECORD_HEADER_BYTES..end as usize];
        if !payload_matches(&header, payload) {
            break Some(Damage::BadPayload);
        }
        records.push(ScannedRecord {
            header,
            offset: offset as u64,
        });
        last_seq = header.seq;
        offset += end as usize;
    };
    let loss = damage.map(|damage| {
        let records = match damage {
            Damage::ZeroTail => 0,
            Damage::TornHeader | Damage::TornBody => 1,
            Damage::BadHeader => 1 + count_intact_after(bytes, offset + 1, last_seq),
            Damage::BadPayload => {
                let header = decode_header(&bytes[offset..]).expect("invariant: header decoded");
                1 + count_intact_after(bytes, offset + header.frame_len() as usize, header.seq)
            }
        };
        Loss {
            damage,
            bytes: (bytes.len() - offset) as u64,
            records,
        }
    });
    SegmentScan {
        records,
        valid_len: offset as u64,
        loss,
    }
}

/// Count frames with a valid header from `from` on, sliding one byte at a time over
/// garbage: an estimate of how many records the damage took with it.
fn count_intact_after(bytes: &[u8], from: usize, mut last_seq: u64) -> u64 {
    // Past the last nonzero byte there is nothing to find.
    let data_end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let mut count = 0;
    let mut offset = from;
    while offset < data_end && offset + RECORD_HEADER_BYTES <= bytes.len() {
        match decode_header(&bytes[offset..]) {
            Some(h) if h.seq > last_seq => {
                count += 1;
                last_seq = h.seq;
                offset = offset.saturating_add(h.frame_len() as usize);
            }
            _ => offset += 1,
        }
    }
    count
}

/// Encode one ack entry for the records `first .. first + count`.
pub fn encode_ack(out: &mut Vec<u8>, first: u64, count: u32) {
    let start = out.len();
    out.extend_from_slice(&first.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    let crc = crc32c::crc32c_append(ACK_SEED, &out[start..start + 12]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Decode the intact prefix of an ack file: the ranges, and the length they occupy.
pub fn decode_acks(bytes: &[u8]) -> (Vec<(u64, u32)>, u64) {
    let mut ranges = Vec::new();
    let mut offset = 0;
    while let Some(entry) = bytes.get(offset..offset + ACK_ENTRY_BYTES) {
        let stored = u32::from_le_bytes(entry[12..16].try_into().expect("invariant: 4 bytes"));
        if crc32c::crc32c_append(ACK_SEED, &entry[..12]) != stored {
            break;
        }
        let first = u64::from_le_bytes(entry[0..8].try_into().expect("invariant: 8 bytes"));
        let count = u32::from_le_bytes(entry[8..12].try_into().expect("invariant: 4 bytes"));
        ranges.push((first, count));
        offset += ACK_ENTRY_BYTES;
    }
    (ranges, offset as u64)
}

/// Coalesce acknowledged sequence numbers into `(first, count)` ranges of consecutive
/// numbers, sorting them first.
pub fn coalesce(seqs: &mut [u64]) -> Vec<(u64, u32)> {
    seqs.sort_unstable();
    let mut ranges: Vec<(u64, u32)> = Vec::new();
    for &seq in seqs.iter() {
        match ranges.last_mut() {
            Some((first, count)) if *first + u64::from(*count) == seq && *count < u32::MAX => {
                *count += 1
            }
            Some((first, count)) if seq < *first + u64::from(*count) => {} // duplicate
            _ => ranges.push((seq, 1)),
        }
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64, payload: &[u8]) -> Vec<u8> {
        let mut f = encode_frame(payload, 1_700_000_000_000 + seq);
        seal_frame(&mut f, seq);
        f
    }

    fn segment(seqs: std::ops::RangeInclusive<u64>) -> Vec<u8> {
        seqs.flat_map(|s| frame(s, format!("payload {s}").as_bytes()))
            .collect()
    }

    #[test]
    fn encoded_frame_decodes_to_the_same_header_and_payload() {
        let f = frame(42, b"hello");
        let h = decode_header(&f).expect("valid header");
        assert_eq!(h.seq, 42);
        assert_eq!(h.len, 5);
        assert_eq!(h.appended_ms, 1_700_000_000_042);
        assert_eq!(h.frame_len() as usize, f.len());
        assert!(payload_matches(&h, &f[RECORD_HEADER_BYTES..]));
    }

    #[test]
    fn empty_payload_is_a_valid_record() {
        let f = frame(1, b"");
        let scan = scan_segment(&f, 0);
        assert_eq!(scan.records.len(), 1);
        assert_eq!(scan.loss, None);
    }

    #[test]
    fn header_crc_mismatch_is_rejected() {
        for byte in 0..RECORD_HEADER_BYTES {
            let mut f = frame(7, b"abc");
            f[byte] ^= 0x10;
            assert_eq!(decode_header(&f), None, "flipped header byte {byte}");
        }
    }

    #[test]
    fn all_zero_header_is_rejected() {
        assert_eq!(decode_header(&[0; RECORD_HEADER_BYTES]), None);
    }

    #[test]
    fn payload_crc_mismatch_cuts_the_segment_and_counts_later_records() {
        let mut bytes = segment(1..=5);
        let second = frame(1, b"payload 1").len();
        bytes[second + RECORD_HEADER_BYTES + 2] ^= 1; // payload of record 2
        let scan = scan_segment(&bytes, 0);
        assert_eq!(scan.records.len(), 1);
        assert_eq!(scan.valid_len, second as u64);
        let loss = scan.loss.expect("loss");
        assert_eq!(loss.damage, Damage::BadPayload);
        assert_eq!(loss.records, 4, "the damaged record and the three after it");
        assert_eq!(loss.bytes, (bytes.len() - second) as u64);
    }

    #[test]
    fn torn_header_is_detected_at_every_length() {
        let whole = segment(1..=2);
        let first = frame(1, b"payload 1").len();
        for cut in 1..RECORD_HEADER_BYTES {
            let scan = scan_segment(&whole[..first + cut], 0);
            assert_eq!(scan.records.len(), 1);
            let loss = scan.loss.expect("loss");
            assert_eq!(loss.bytes, cut as u64);
            assert_eq!(loss.records, 1);
            // A prefix of a header is either torn or (when the cut leaves only zero
            // bytes, impossible here since the CRC comes first and is nonzero) a zero tail.
            assert_eq!(loss.damage, Damage::TornHeader, "cut {cut}");
        }
    }

    #[test]
    fn torn_body_is_detected_at_every_length() {
        let whole = segment(1..=2);
        let first = frame(1, b"payload 1").len();
        for cut in RECORD_HEADER_BYTES..whole.len() - first {
            let scan = scan_segment(&whole[..first + cut], 0);
            assert_eq!(scan.records.len(), 1);
            let loss = scan.loss.expect("loss");
            assert_eq!(loss.damage, Damage::TornBody, "cut {cut}");
            assert_eq!((loss.bytes, loss.records), (cut as u64, 1));
        }
    }

    #[test]
    fn zero_filled_tail_keeps_the_records_and_loses_no_record() {
        let mut bytes = segment(1..=3);
        let intact = bytes.len();
        bytes.extend_from_slice(&[0; 4096]);
        let scan = scan_segment(&bytes, 0);
        assert_eq!(scan.records.len(), 3);
        assert_eq!(scan.valid_len, intact as u64);
        let loss = scan.loss.expect("loss");
        assert_eq!(loss.damage, Damage::ZeroTail);
        assert_eq!((loss.bytes, loss.records), (4096, 0));
    }

    #[test]
    fn partly_written_record_followed_by_zeros_is_a_torn_record() {
        let mut bytes = segment(1..=2);
        let first = frame(1, b"payload 1").len();
        for b in &mut bytes[first + 10..] {
            *b = 0;
        }
        bytes.extend_from_slice(&[0; 100]);
        let scan = scan_segment(&bytes, 0);
        assert_eq!(scan.records.len(), 1);
        let loss = scan.loss.expect("loss");
        assert_eq!(loss.damage, Damage::BadHeader);
        assert_eq!(loss.records, 1);
    }

    #[test]
    fn sequence_numbers_that_do_not_increase_end_the_intact_part() {
        let mut bytes = segment(1..=2);
        bytes.extend(frame(2, b"again"));
        let scan = scan_segment(&bytes, 0);
        assert_eq!(scan.records.len(), 2);
        assert_eq!(scan.loss.expect("loss").damage, Damage::BadHeader);
        let scan = scan_segment(&segment(5..=6), 5);
        assert!(
            scan.records.is_empty(),
            "first record must follow after_seq"
        );
    }

    #[test]
    fn ack_entries_round_trip_and_a_torn_entry_ends_the_list() {
        let mut out = Vec::new();
        encode_ack(&mut out, 10, 3);
        encode_ack(&mut out, 20, 1);
        let (ranges, len) = decode_acks(&out);
        assert_eq!(ranges, vec![(10, 3), (20, 1)]);
        assert_eq!(len, 32);
        let (ranges, len) = decode_acks(&out[..30]);
        assert_eq!((ranges, len), (vec![(10, 3)], 16));
        out.extend_from_slice(&[0; 16]);
        assert_eq!(decode_acks(&out).1, 32, "zero entry is not an ack");
    }

    #[test]
    fn out_of_order_acks_coalesce_into_ranges() {
        let mut seqs = vec![5, 3, 4, 9, 1, 4, 10];
        assert_eq!(coalesce(&mut seqs), vec![(1, 1), (3, 3), (9, 2)]);
    }
}
