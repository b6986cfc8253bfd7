//! Modbus framing, tollgate's own: request PDUs (functions 1–6, 15, 16), their
//! responses, the RTU envelope (unit, CRC-16/MODBUS) and the TCP one (MBAP header with
//! transaction ids). Pure functions over byte slices, so every damaged or foreign
//! frame is seen and named (CRC error, wrong unit, wrong function, late transaction)
//! instead of being skipped silently. Nothing here trusts a length it was sent.

use std::fmt;

use super::config::RegisterKind;

/// A request to one unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Functions 1–4.
    Read {
        /// Table.
        kind: RegisterKind,
        /// First address.
        start: u16,
        /// Registers or bits.
        count: u16,
    },
    /// Function 5.
    WriteCoil {
        /// Address.
        address: u16,
        /// On or off.
        value: bool,
    },
    /// Function 6.
    WriteRegister {
        /// Address.
        address: u16,
        /// Value.
        value: u16,
    },
    /// Function 15.
    WriteCoils {
        /// First address.
        address: u16,
        /// Values (1..=1968).
        values: Vec<bool>,
    },
    /// Function 16.
    WriteRegisters {
        /// First address.
        address: u16,
        /// Values (1..=123).
        values: Vec<u16>,
    },
}

/// A successful response's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Functions 3, 4.
    Registers(Vec<u16>),
    /// Functions 1, 2 (as many bits as requested).
    Bits(Vec<bool>),
    /// A write was acknowledged.
    Written,
}

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The device answered with exception `code` (0x02 illegal data address, ...).
    Exception(u8),
    /// RTU frame whose CRC does not match.
    Crc,
    /// A well-formed reply that does not answer this request (unit, function, length).
    Mismatch(String),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Exception(code) => {
                write!(f, "exception 0x{code:02x} ({})", exception_name(*code))
            }
            FrameError::Crc => f.write_str("CRC error"),
            FrameError::Mismatch(why) => write!(f, "unexpected reply: {why}"),
        }
    }
}

/// The standard name of exception `code`.
pub fn exception_name(code: u8) -> &'static str {
    match code {
        1 => "illegal function",
        2 => "illegal data address",
        3 => "illegal data value",
        4 => "server device failure",
        5 => "acknowledge",
        6 => "server device busy",
        10 => "gateway path unavailable",
        11 => "gateway target failed to respond",
        _ => "unknown exception",
    }
}

impl Request {
    /// Function code.
    pub fn function(&self) -> u8 {
        match self {
            Request::Read { kind, .. } => match kind {
                RegisterKind::Coil => 1,
                RegisterKind::Discrete => 2,
                RegisterKind::Holding => 3,
                RegisterKind::Input => 4,
            },
            Request::WriteCoil { .. } => 5,
            Request::WriteRegister { .. } => 6,
            Request::WriteCoils { .. } => 15,
            Request::WriteRegisters { .. } => 16,
        }
    }

    /// The PDU (function code and data).
    pub fn pdu(&self) -> Vec<u8> {
        let mut out = vec![self.function()];
        match self {
            Request::Read { start, count, .. } => {
                out.extend_from_slice(&start.to_be_bytes());
                out.extend_from_slice(&count.to_be_bytes());
            }
            Request::WriteCoil { address, value } => {
                out.extend_from_slice(&address.to_be_bytes());
                out.extend_from_slice(&(if *value { 0xFF00u16 } else { 0 }).to_be_bytes());
            }
            Request::WriteRegister { address, value } => {
                out.extend_from_slice(&address.to_be_bytes());
                out.extend_from_slice(&value.to_be_bytes());
            }
            Request::WriteCoils { address, values } => {
                out.extend_from_slice(&address.to_be_bytes());
                out.extend_from_slice(&(values.len() as u16).to_be_bytes());
                out.push(values.len().div_ceil(8) as u8);
                // Packed least significant bit first, the first coil in the first byte.
                for chunk in values.chunks(8) {
                    out.push(
                        chunk
                            .iter()
                            .enumerate()
                            .fold(0u8, |byte, (i, on)| byte | (u8::from(*on) << i)),
                    );
                }
            }
            Request::WriteRegisters { address, values } => {
                out.extend_from_slice(&address.to_be_bytes());
                out.extend_from_slice(&(values.len() as u16).to_be_bytes());
                out.push((values.len() * 2) as u8);
                for v in values {
                    out.extend_from_slice(&v.to_be_bytes());
                }
            }
        }
        out
    }

    /// Length of the complete response PDU, from its first bytes (`None`: need more).
    pub fn response_pdu_len(head: &[u8]) -> Option<usize> {
        let fc = *head.first()?;
        if fc & 0x80 != 0 {
            return Some(2);
        }
        match fc {
            1..=4 => head.get(1).map(|n| 2 + usize::from(*n)),
            _ => Some(5),
        }
    }

    /// Interpret a response PDU to this request.
    pub fn parse_response(&self, pdu: &[u8]) -> Result<Response, FrameError> {
        let fc = *pdu
            .first()
            .ok_or_else(|| FrameError::Mismatch("empty PDU".into()))?;
        if fc == self.function() | 0x80 {
            return Err(FrameError::Exception(pdu.get(1).copied().unwrap_or(0)));
        }
        if fc != self.function() {
            return Err(FrameError::Mismatch(format!(
                "function {fc} answers a request with function {}",
                self.function()
            )));
        }
        match self {
            Request::Read { kind, count, .. } => {
                let n = usize::from(*pdu.get(1).unwrap_or(&0));
                let data = pdu
                    .get(2..2 + n)
                    .ok_or_else(|| FrameError::Mismatch("truncated data".into()))?;
                let count = usize::from(*count);
                if kind.is_bits() {
                    if n != count.div_ceil(8) {
                        return Err(FrameError::Mismatch(format!(
                            "{n} data bytes for {count} bits"
                        )));
                    }
                    Ok(Response::Bits(
                        (0..count)
                            .map(|i| data[i / 8] >> (i % 8) & 1 == 1)
                            .collect(),
                    ))
                } else {
                    if n != count * 2 {
                        return Err(FrameError::Mismatch(format!(
                            "{n} data bytes for {count} registers"
                        )));
                    }
                    Ok(Response::Registers(
                        data.chunks_exact(2)
                            .map(|c| u16::from_be_bytes([c[0], c[1]]))
                            .collect(),
                    ))
                }
            }
            _ => {
                let mut expected = self.pdu();
                expected.truncate(5);
                if pdu.get(..5) == Some(&expected[..]) {
                    Ok(Response::Written)
                } else {
                    Err(FrameError::Mismatch(
                        "write echo differs from the request".into(),
                    ))
                }
            }
        }
    }
}

/// CRC-16/MODBUS (polynomial 0xA001 reflected, initial 0xFFFF).
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// An RTU frame: unit, PDU, CRC (low byte first).
pub fn rtu_frame(unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(pdu.len() + 3);
    out.push(unit);
    out.extend_from_slice(pdu);
    let crc = crc16(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Length of the RTU reply frame starting with `head` (`None`: need more bytes).
pub fn rtu_reply_len(head: &[u8]) -> Option<usize> {
    Request::response_pdu_len(head.get(1..)?).map(|n| n + 3)
}

/// Check a complete RTU reply frame for `unit`; its PDU.
pub fn rtu_check(unit: u8, frame: &[u8]) -> Result<&[u8], FrameError> {
    if frame.len() < 4 {
        return Err(FrameError::Mismatch("frame shorter than 4 bytes".into()));
    }
    let (body, crc) = frame.split_at(frame.len() - 2);
    if crc16(body).to_le_bytes() != [crc[0], crc[1]] {
        return Err(FrameError::Crc);
    }
    if body[0] != unit {
        return Err(FrameError::Mismatch(format!(
            "reply from unit {} to a request to unit {unit}",
            body[0]
        )));
    }
    Ok(&body[1..])
}

/// A TCP ADU: MBAP header (transaction, protocol 0, length) then unit and PDU.
pub fn tcp_frame(transaction: u16, unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(pdu.len() + 7);
    out.extend_from_slice(&transaction.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&((pdu.len() + 1) as u16).to_be_bytes());
    out.push(unit);
    out.extend_from_slice(pdu);
    out
}

/// A parsed MBAP header: (transaction, unit, PDU length). Refuses a protocol id other
/// than 0 and lengths outside 2..=254 (the largest PDU is 253 bytes).
pub fn mbap(header: &[u8; 7]) -> Result<(u16, u8, usize), FrameError> {
    let transaction = u16::from_be_bytes([header[0], header[1]]);
    let protocol = u16::from_be_bytes([header[2], header[3]]);
    let length = usize::from(u16::from_be_bytes([header[4], header[5]]));
    if protocol != 0 || !(2..=254).contains(&length) {
        return Err(FrameError::Mismatch(format!(
            "MBAP protocol {protocol}, length {length}"
        )));
    }
    Ok((transaction, header[6], length - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_specification_example() {
        // Read holding registers, unit 1, address 0, count 10: CRC C5CD (sent CD C5).
        assert_eq!(
            rtu_frame(1, &[3, 0, 0, 0, 10]),
            vec![1, 3, 0, 0, 0, 10, 0xC5, 0xCD]
        );
    }

    #[test]
    fn rtu_replies_are_checked_for_crc_and_unit() {
        let request = Request::Read {
            kind: RegisterKind::Holding,
            start: 0,
            count: 2,
        };
        let reply = rtu_frame(7, &[3, 4, 0x12, 0x34, 0x56, 0x78]);
        assert_eq!(rtu_reply_len(&reply[..3]), Some(reply.len()));
        let pdu = rtu_check(7, &reply).expect("valid");
        assert_eq!(
            request.parse_response(pdu),
            Ok(Response::Registers(vec![0x1234, 0x5678]))
        );
        let mut damaged = reply.clone();
        damaged[3] ^= 1;
        assert_eq!(rtu_check(7, &damaged), Err(FrameError::Crc));
        assert!(matches!(rtu_check(8, &reply), Err(FrameError::Mismatch(_))));
        let exception = rtu_frame(7, &[0x83, 2]);
        assert_eq!(rtu_reply_len(&exception[..2]), Some(5));
        let pdu = rtu_check(7, &exception).expect("valid");
        assert_eq!(request.parse_response(pdu), Err(FrameError::Exception(2)));
    }

    #[test]
    fn bit_replies_unpack_least_significant_first() {
        let request = Request::Read {
            kind: RegisterKind::Coil,
            start: 0,
            count: 10,
        };
        let bits = request
            .parse_response(&[1, 2, 0b0000_0101, 0b10])
            .expect("valid");
        let expected = [
            true, false, true, false, false, false, false, false, false, true,
        ];
        assert_eq!(bits, Response::Bits(expected.to_vec()));
        assert!(
            request.parse_response(&[1, 1, 0]).is_err(),
            "10 bits need 2 bytes"
        );
    }

    #[test]
    fn writes_are_confirmed_by_their_echo() {
        let write = Request::WriteRegisters {
            address: 100,
            values: vec![1, 2],
        };
        assert_eq!(write.pdu(), vec![16, 0, 100, 0, 2, 4, 0, 1, 0, 2]);
        assert_eq!(
            write.parse_response(&[16, 0, 100, 0, 2]),
            Ok(Response::Written)
        );
        assert!(write.parse_response(&[16, 0, 101, 0, 2]).is_err());
        let coils = Request::WriteCoils {
            address: 19,
            values: vec![
                true, false, true, true, false, false, true, true, true, false,
            ],
        };
        // The specification's example: coils 20..29 (address 19) set to CD 01.
        assert_eq!(coils.pdu(), vec![15, 0, 19, 0, 10, 2, 0xCD, 0x01]);
        assert_eq!(
            coils.parse_response(&[15, 0, 19, 0, 10]),
            Ok(Response::Written)
        );
        assert!(coils.parse_response(&[15, 0, 19, 0, 9]).is_err());
        let coil = Request::WriteCoil {
            address: 3,
            value: true,
        };
        assert_eq!(
            coil.parse_response(&[5, 0, 3, 0xFF, 0]),
            Ok(Response::Written)
        );
        assert_eq!(
            coil.parse_response(&[0x85, 4]),
            Err(FrameError::Exception(4))
        );
    }

    #[test]
    fn mbap_headers_are_bounded() {
        let adu = tcp_frame(9, 1, &[3, 0, 0, 0, 1]);
        let header: [u8; 7] = adu[..7].try_into().expect("7 bytes");
        assert_eq!(mbap(&header), Ok((9, 1, 5)));
        assert!(mbap(&[0, 9, 0, 1, 0, 6, 1]).is_err(), "protocol 1");
        assert!(mbap(&[0, 9, 0, 0, 0xFF, 0xFF, 1]).is_err(), "65535 bytes");
    }
}
