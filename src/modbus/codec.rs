//! Values of Modbus points: the configured types (`u16` … `f64`, `string(N)`, `bit(n)`,
//! `bool`), the byte and word orders of multi-register values, scale and offset, and the
//! way back for writes (a published-unit value to registers, with range checks). Pure
//! functions: no I/O, no clocks.

use std::fmt;

/// Longest `string(N)`, in bytes (125 registers, one read request).
pub const MAX_STRING: u16 = 250;

/// The type of a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    /// One coil or discrete input.
    Bool,
    /// Unsigned 16-bit register.
    U16,
    /// Signed 16-bit register.
    I16,
    /// Unsigned 32-bit, two registers.
    U32,
    /// Signed 32-bit, two registers.
    I32,
    /// Unsigned 64-bit, four registers.
    U64,
    /// Signed 64-bit, four registers.
    I64,
    /// IEEE 754 single, two registers.
    F32,
    /// IEEE 754 double, four registers.
    F64,
    /// `N` bytes of text, two per register, NUL padding trimmed.
    Str(u16),
    /// Bit `n` (0 = least significant) of one register.
    Bit(u8),
}

/// Byte and word order of a value over several registers: the letters name the bytes
/// of the big-endian value (A most significant) in the order they appear on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Big-endian words, big-endian bytes (the Modbus convention).
    Abcd,
    /// Words swapped (little-endian word order), bytes big-endian.
    Cdab,
    /// Bytes swapped inside each register, words big-endian.
    Badc,
    /// Fully little-endian.
    Dcba,
}

impl Order {
    /// `ABCD`, `CDAB`, `BADC`, `DCBA` (any case).
    pub fn parse(text: &str) -> Result<Order, String> {
        match text.to_ascii_uppercase().as_str() {
            "ABCD" => Ok(Order::Abcd),
            "CDAB" => Ok(Order::Cdab),
            "BADC" => Ok(Order::Badc),
            "DCBA" => Ok(Order::Dcba),
            _ => Err(format!(
                "{text:?} is not an order: use ABCD, CDAB, BADC or DCBA"
            )),
        }
    }

    fn swaps_words(self) -> bool {
        matches!(self, Order::Cdab | Order::Dcba)
    }

    fn swaps_bytes(self) -> bool {
        matches!(self, Order::Badc | Order::Dcba)
    }
}

impl ValueType {
    /// `u16`, `f32`, `string(12)`, `bit(3)`, ...
    pub fn parse(text: &str) -> Result<ValueType, String> {
        let t = text.trim();
        let simple = match t {
            "bool" => Some(ValueType::Bool),
            "u16" => Some(ValueType::U16),
            "i16" => Some(ValueType::I16),
            "u32" => Some(ValueType::U32),
            "i32" => Some(ValueType::I32),
            "u64" => Some(ValueType::U64),
            "i64" => Some(ValueType::I64),
            "f32" => Some(ValueType::F32),
            "f64" => Some(ValueType::F64),
            _ => None,
        };
        if let Some(v) = simple {
            return Ok(v);
        }
        let arg = |prefix: &str| {
            t.strip_prefix(prefix)
                .and_then(|r| r.strip_suffix(')'))
                .map(|n| n.trim().parse::<u32>())
        };
        if let Some(n) = arg("string(") {
            return match n {
                Ok(n) if (1..=u32::from(MAX_STRING)).contains(&n) => Ok(ValueType::Str(n as u16)),
                _ => Err(format!(
                    "{t:?}: string(N) takes N from 1 to {MAX_STRING} bytes"
                )),
            };
        }
        if let Some(n) = arg("bit(") {
            return match n {
                Ok(n) if n < 16 => Ok(ValueType::Bit(n as u8)),
                _ => Err(format!(
                    "{t:?}: bit(n) takes n from 0 (least significant) to 15"
                )),
            };
        }
        Err(format!(
            "{t:?} is not a type: use bool, u16, i16, u32, i32, u64, i64, f32, f64, string(N) or bit(n)"
        ))
    }

    /// Registers (or bits, for `bool`) the value occupies.
    pub fn registers(self) -> u16 {
        match self {
            ValueType::Bool | ValueType::U16 | ValueType::I16 | ValueType::Bit(_) => 1,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 2,
            ValueType::U64 | ValueType::I64 | ValueType::F64 => 4,
            ValueType::Str(n) => n.div_ceil(2),
        }
    }

    /// Whether scale, offset, deadband and min/max apply.
    pub fn is_number(self) -> bool {
        !matches!(
            self,
            ValueType::Bool | ValueType::Str(_) | ValueType::Bit(_)
        )
    }

    /// The integer types (`u16` … `i64`).
    pub fn is_integer(self) -> bool {
        matches!(
            self,
            ValueType::U16
                | ValueType::I16
                | ValueType::U32
                | ValueType::I32
                | ValueType::U64
                | ValueType::I64
        )
    }

    /// Whether `order` means something for this type.
    pub fn check_order(self, order: Order) -> Result<(), String> {
        match self {
            // One register: the word order is moot, BADC/DCBA swap its two bytes.
            ValueType::U16 | ValueType::I16 => Ok(()),
            ValueType::U32 | ValueType::I32 | ValueType::F32 => Ok(()),
            ValueType::U64 | ValueType::I64 | ValueType::F64 => Ok(()),
            ValueType::Str(_) if matches!(order, Order::Abcd | Order::Badc) => Ok(()),
            ValueType::Str(_) => Err(
                "string(N) takes order ABCD (first character in the high byte) or BADC (low byte first)"
                    .into(),
            ),
            _ => Err(format!(
                "order applies to register numbers and strings, not {self}"
            )),
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueType::Bool => f.write_str("bool"),
            ValueType::U16 => f.write_str("u16"),
            ValueType::I16 => f.write_str("i16"),
            ValueType::U32 => f.write_str("u32"),
            ValueType::I32 => f.write_str("i32"),
            ValueType::U64 => f.write_str("u64"),
            ValueType::I64 => f.write_str("i64"),
            ValueType::F32 => f.write_str("f32"),
            ValueType::F64 => f.write_str("f64"),
            ValueType::Str(n) => write!(f, "string({n})"),
            ValueType::Bit(n) => write!(f, "bit({n})"),
        }
    }
}

/// A decoded value, before or after scaling.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Coil, discrete input or register bit.
    Bool(bool),
    /// Signed integer (i16, i32, i64), unscaled.
    Int(i64),
    /// Unsigned integer (u16, u32, u64), unscaled.
    UInt(u64),
    /// A float, or any number after a scale or offset.
    Float(f64),
    /// `string(N)`.
    Text(String),
}

impl Value {
    /// The value as a number (booleans 0/1; `None` for text).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            Value::Int(i) => Some(*i as f64),
            Value::UInt(u) => Some(*u as f64),
            Value::Float(f) => Some(*f),
            Value::Text(_) => None,
        }
    }

    /// JSON form (non-finite floats become `null`).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Bool(b) => (*b).into(),
            Value::Int(i) => (*i).into(),
            Value::UInt(u) => (*u).into(),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::Text(s) => s.clone().into(),
        }
    }
}

/// The big-endian bytes of the value held by `regs` in `order`.
fn wire_to_bytes(regs: &[u16], order: Order) -> Vec<u8> {
    let mut out = Vec::with_capacity(regs.len() * 2);
    let mut push = |r: u16| {
        let [hi, lo] = r.to_be_bytes();
        if order.swaps_bytes() {
            out.extend_from_slice(&[lo, hi]);
        } else {
            out.extend_from_slice(&[hi, lo]);
        }
    };
    if order.swaps_words() {
        regs.iter().rev().for_each(|&r| push(r));
    } else {
        regs.iter().for_each(|&r| push(r));
    }
    out
}

/// Registers carrying big-endian `bytes` in `order` (inverse of `wire_to_bytes`).
fn bytes_to_wire(bytes: &[u8], order: Order) -> Vec<u16> {
    let mut regs: Vec<u16> = bytes
        .chunks(2)
        .map(|c| {
            let (hi, lo) = (c[0], c.get(1).copied().unwrap_or(0));
            if order.swaps_bytes() {
                u16::from_be_bytes([lo, hi])
            } else {
                u16::from_be_bytes([hi, lo])
            }
        })
        .collect();
    if order.swaps_words() {
        regs.reverse();
    }
    regs
}

/// Decode the raw (unscaled) value of `t` from its registers (`regs.len()` must be
/// `t.registers()`; `bool` takes one register ≠ 0, use [`Value::Bool`] for bits).
pub fn decode(t: ValueType, order: Order, regs: &[u16]) -> Value {
    let b = wire_to_bytes(regs, order);
    let arr = |n: usize| -> [u8; 8] {
        let mut a = [0u8; 8];
        a[8 - n..].copy_from_slice(&b[..n]);
        a
    };
    match t {
        ValueType::Bool => Value::Bool(regs.first().is_some_and(|r| *r != 0)),
        ValueType::Bit(n) => Value::Bool(regs.first().is_some_and(|r| (r >> n) & 1 == 1)),
        ValueType::U16 => Value::UInt(u64::from_be_bytes(arr(2))),
        ValueType::I16 => Value::Int(i64::from(u64::from_be_bytes(arr(2)) as u16 as i16)),
        ValueType::U32 => Value::UInt(u64::from_be_bytes(arr(4))),
        ValueType::I32 => Value::Int(i64::from(u64::from_be_bytes(arr(4)) as u32 as i32)),
        ValueType::U64 => Value::UInt(u64::from_be_bytes(arr(8))),
        ValueType::I64 => Value::Int(u64::from_be_bytes(arr(8)) as i64),
        ValueType::F32 => {
            Value::Float(f64::from(f32::from_bits(u64::from_be_bytes(arr(4)) as u32)))
        }
        ValueType::F64 => Value::Float(f64::from_bits(u64::from_be_bytes(arr(8)))),
        ValueType::Str(n) => {
            let mut text = b;
            text.truncate(usize::from(n));
            while text.last().is_some_and(|c| *c == 0) {
                text.pop();
            }
            Value::Text(String::from_utf8_lossy(&text).into_owned())
        }
    }
}

/// Apply `scale` and `offset` to a raw value (integers stay integers when both are neutral).
pub fn scaled(raw: Value, scale: f64, offset: f64) -> Value {
    if scale == 1.0 && offset == 0.0 {
        return raw;
    }
    match raw.as_f64() {
        Some(v) if !matches!(raw, Value::Bool(_)) => Value::Float(v * scale + offset),
        _ => raw,
    }
}

/// Why a value cannot be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeError(pub String);

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Registers for writing `value` (published units) to a point of type `t`: the scale
/// and offset are undone, integers rounded to the nearest and range-checked.
pub fn encode(
    t: ValueType,
    order: Order,
    scale: f64,
    offset: f64,
    value: f64,
) -> Result<Vec<u16>, EncodeError> {
    if !value.is_finite() {
        return Err(EncodeError(format!("{value} is not a finite number")));
    }
    let raw = (value - offset) / scale;
    let int = |min: f64, max: f64| -> Result<f64, EncodeError> {
        let r = raw.round();
        if r < min || r > max {
            Err(EncodeError(format!(
                "{value} is raw {r}, outside {t}'s range {min} to {max}"
            )))
        } else {
            Ok(r)
        }
    };
    let bytes: Vec<u8> = match t {
        ValueType::U16 => (int(0.0, 65_535.0)? as u16).to_be_bytes().to_vec(),
        ValueType::I16 => (int(-32_768.0, 32_767.0)? as i16).to_be_bytes().to_vec(),
        ValueType::U32 => (int(0.0, 4_294_967_295.0)? as u32).to_be_bytes().to_vec(),
        ValueType::I32 => (int(-2_147_483_648.0, 2_147_483_647.0)? as i32)
            .to_be_bytes()
            .to_vec(),
        // f64 cannot hold every 64-bit integer: the bound is the last one it holds exactly.
        ValueType::U64 => (int(0.0, 18_446_744_073_709_549_568.0)? as u64)
            .to_be_bytes()
            .to_vec(),
        ValueType::I64 => (int(-9_223_372_036_854_775_808.0, 9_223_372_036_854_774_784.0)? as i64)
            .to_be_bytes()
            .to_vec(),
        ValueType::F32 => {
            let f = raw as f32;
            if !f.is_finite() {
                return Err(EncodeError(format!("{value} does not fit an f32")));
            }
            f.to_bits().to_be_bytes().to_vec()
        }
        ValueType::F64 => raw.to_bits().to_be_bytes().to_vec(),
        ValueType::Bool | ValueType::Bit(_) | ValueType::Str(_) => {
            return Err(EncodeError(format!(
                "{t} points are not written as numbers"
            )))
        }
    };
    Ok(bytes_to_wire(&bytes, order))
}

/// Registers for writing the integer `raw` to an integer point of type `t` exactly (no
/// scale or offset): 64-bit values beyond 2^53 keep every digit, which the `f64` path of
/// [`encode`] would round.
pub fn encode_integer(t: ValueType, order: Order, raw: i128) -> Result<Vec<u16>, EncodeError> {
    let (min, max): (i128, i128) = match t {
        ValueType::U16 => (0, u16::MAX.into()),
        ValueType::I16 => (i16::MIN.into(), i16::MAX.into()),
        ValueType::U32 => (0, u32::MAX.into()),
        ValueType::I32 => (i32::MIN.into(), i32::MAX.into()),
        ValueType::U64 => (0, u64::MAX.into()),
        ValueType::I64 => (i64::MIN.into(), i64::MAX.into()),
        _ => {
            return Err(EncodeError(format!(
                "{t} points are not written as integers"
            )))
        }
    };
    if raw < min || raw > max {
        return Err(EncodeError(format!(
            "{raw} is outside {t}'s range {min} to {max}"
        )));
    }
    // Two's complement in the type's width: the low bytes of the 128-bit value.
    let n = usize::from(t.registers()) * 2;
    let be = raw.to_be_bytes();
    Ok(bytes_to_wire(&be[16 - n..], order))
}

/// Registers for writing `text` to a `string(n)` point in `order`: its UTF-8 bytes (at
/// most `n`), padded with NUL, which the decoder strips again.
pub fn encode_text(n: u16, order: Order, text: &str) -> Result<Vec<u16>, EncodeError> {
    let bytes = text.as_bytes();
    if bytes.len() > usize::from(n) {
        return Err(EncodeError(format!(
            "{} bytes do not fit string({n})",
            bytes.len()
        )));
    }
    if bytes.contains(&0) {
        return Err(EncodeError("text with a NUL character".into()));
    }
    let mut padded = bytes.to_vec();
    padded.resize(usize::from(n.div_ceil(2)) * 2, 0);
    Ok(bytes_to_wire(&padded, order))
}

/// `register` with bit `n` (0: least significant) set to `on`.
pub fn with_bit(register: u16, n: u8, on: bool) -> u16 {
    if on {
        register | (1 << n)
    } else {
        register & !(1 << n)
    }
}

/// Registers holding the raw integer bits of `raw` for `t` (tests and the simulator side).
pub fn raw_registers(t: ValueType, order: Order, raw: u64) -> Vec<u16> {
    let n = usize::from(t.registers()) * 2;
    let be = raw.to_be_bytes();
    bytes_to_wire(&be[8 - n..], order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ORDERS: [Order; 4] = [Order::Abcd, Order::Cdab, Order::Badc, Order::Dcba];

    #[test]
    fn text_and_bits_encode_for_writing() {
        for order in [Order::Abcd, Order::Badc] {
            let regs = encode_text(5, order, "abc").expect("fits");
            assert_eq!(regs.len(), 3);
            assert_eq!(
                decode(ValueType::Str(5), order, &regs),
                Value::Text("abc".into())
            );
        }
        assert_eq!(encode_text(4, Order::Abcd, "AB"), Ok(vec![0x4142, 0]));
        assert_eq!(encode_text(4, Order::Badc, "AB"), Ok(vec![0x4241, 0]));
        assert!(encode_text(2, Order::Abcd, "abc").is_err());
        assert!(encode_text(4, Order::Abcd, "a\0").is_err());
        assert_eq!(with_bit(0b1000, 0, true), 0b1001);
        assert_eq!(with_bit(0b1001, 3, false), 0b0001);
        assert_eq!(with_bit(0, 15, true), 0x8000);
    }

    #[test]
    fn types_parse_with_bounds() {
        assert_eq!(ValueType::parse("f32"), Ok(ValueType::F32));
        assert_eq!(ValueType::parse("string(10)"), Ok(ValueType::Str(10)));
        assert_eq!(ValueType::parse("bit(15)"), Ok(ValueType::Bit(15)));
        assert!(ValueType::parse("bit(16)").is_err());
        assert!(ValueType::parse("string(0)").is_err());
        assert!(ValueType::parse("string(251)").is_err());
        assert!(ValueType::parse("float").is_err());
        assert_eq!(ValueType::Str(5).registers(), 3);
        assert_eq!(ValueType::F64.registers(), 4);
    }

    #[test]
    fn orders_place_bytes_as_named() {
        // 0x11223344: A=11 B=22 C=33 D=44.
        let cases = [
            (Order::Abcd, [0x1122, 0x3344]),
            (Order::Cdab, [0x3344, 0x1122]),
            (Order::Badc, [0x2211, 0x4433]),
            (Order::Dcba, [0x4433, 0x2211]),
        ];
        for (order, regs) in cases {
            assert_eq!(
                decode(ValueType::U32, order, &regs),
                Value::UInt(0x1122_3344),
                "{order:?}"
            );
            assert_eq!(
                raw_registers(ValueType::U32, order, 0x1122_3344),
                regs.to_vec()
            );
        }
        let f = decode(ValueType::F32, Order::Cdab, &[0x0000, 0x4148]);
        assert_eq!(f, Value::Float(12.5));
        let d = decode(ValueType::F64, Order::Abcd, &[0x4029, 0, 0, 0]);
        assert_eq!(d, Value::Float(12.5));
        let i = decode(
            ValueType::I64,
            Order::Dcba,
            &[0xFEFF, 0xFFFF, 0xFFFF, 0xFFFF],
        );
        assert_eq!(i, Value::Int(-2));
    }

    #[test]
    fn sixteen_bit_types_take_a_byte_order() {
        for (order, reg) in [
            (Order::Abcd, 0x1234),
            (Order::Cdab, 0x1234),
            (Order::Badc, 0x3412),
            (Order::Dcba, 0x3412),
        ] {
            assert_eq!(ValueType::U16.check_order(order), Ok(()));
            assert_eq!(
                decode(ValueType::U16, order, &[reg]),
                Value::UInt(0x1234),
                "{order:?}"
            );
            assert_eq!(
                encode(ValueType::U16, order, 1.0, 0.0, 4660.0),
                Ok(vec![reg])
            );
            assert_eq!(encode_integer(ValueType::U16, order, 0x1234), Ok(vec![reg]));
        }
        // -2 is FF FE; byte-swapped on the wire FE FF.
        assert_eq!(
            decode(ValueType::I16, Order::Badc, &[0xFEFF]),
            Value::Int(-2)
        );
        assert_eq!(
            encode(ValueType::I16, Order::Badc, 1.0, 0.0, -2.0),
            Ok(vec![0xFEFF])
        );
        assert!(ValueType::Bit(3).check_order(Order::Badc).is_err());
        assert!(ValueType::Bool.check_order(Order::Abcd).is_err());
    }

    #[test]
    fn sixteen_bit_types_strings_and_bits_decode() {
        assert_eq!(
            decode(ValueType::I16, Order::Abcd, &[0xFFFF]),
            Value::Int(-1)
        );
        assert_eq!(
            decode(ValueType::U16, Order::Abcd, &[0xFFFF]),
            Value::UInt(65_535)
        );
        assert_eq!(
            decode(ValueType::Bit(3), Order::Abcd, &[0b1000]),
            Value::Bool(true)
        );
        assert_eq!(
            decode(ValueType::Bit(2), Order::Abcd, &[0b1000]),
            Value::Bool(false)
        );
        let regs = [
            u16::from_be_bytes(*b"He"),
            u16::from_be_bytes(*b"ll"),
            u16::from_be_bytes([b'o', 0]),
        ];
        assert_eq!(
            decode(ValueType::Str(6), Order::Abcd, &regs),
            Value::Text("Hello".into())
        );
        let swapped = [
            u16::from_be_bytes(*b"eH"),
            u16::from_be_bytes(*b"ll"),
            u16::from_be_bytes([0, b'o']),
        ];
        assert_eq!(
            decode(ValueType::Str(5), Order::Badc, &swapped),
            Value::Text("Hello".into())
        );
    }

    #[test]
    fn scale_and_offset_make_floats_and_writes_undo_them() {
        assert_eq!(
            scaled(Value::UInt(2305), 0.1, 0.0),
            Value::Float(2305.0 * 0.1)
        );
        assert_eq!(scaled(Value::Int(-5), 1.0, 0.0), Value::Int(-5));
        assert_eq!(scaled(Value::Bool(true), 2.0, 1.0), Value::Bool(true));
        assert_eq!(
            encode(ValueType::U16, Order::Abcd, 0.1, 0.0, 230.5),
            Ok(vec![2305])
        );
        assert_eq!(
            encode(ValueType::I16, Order::Abcd, 1.0, -40.0, -50.0),
            Ok(vec![(-10i16) as u16])
        );
        assert!(encode(ValueType::U16, Order::Abcd, 1.0, 0.0, -1.0).is_err());
        assert!(encode(ValueType::I16, Order::Abcd, 1.0, 0.0, 40_000.0).is_err());
        assert!(encode(ValueType::F32, Order::Abcd, 1.0, 0.0, 1e300).is_err());
        assert!(encode(ValueType::U16, Order::Abcd, 1.0, 0.0, f64::NAN).is_err());
    }

    #[test]
    fn integer_writes_keep_every_digit_of_64_bit_values() {
        let beyond_f64 = 9_007_199_254_740_993i128; // 2^53 + 1
        for order in ORDERS {
            let regs = encode_integer(ValueType::U64, order, beyond_f64).expect("fits");
            assert_eq!(
                decode(ValueType::U64, order, &regs),
                Value::UInt(9_007_199_254_740_993)
            );
            let regs = encode_integer(ValueType::I64, order, i64::MIN.into()).expect("fits");
            assert_eq!(decode(ValueType::I64, order, &regs), Value::Int(i64::MIN));
            let regs = encode_integer(ValueType::U64, order, u64::MAX.into()).expect("fits");
            assert_eq!(decode(ValueType::U64, order, &regs), Value::UInt(u64::MAX));
            let regs = encode_integer(ValueType::I32, order, -2).expect("fits");
            assert_eq!(decode(ValueType::I32, order, &regs), Value::Int(-2));
        }
        assert_eq!(
            encode_integer(ValueType::I16, Order::Abcd, -1),
            Ok(vec![0xFFFF])
        );
        assert!(encode_integer(ValueType::U64, Order::Abcd, i128::from(u64::MAX) + 1).is_err());
        assert!(encode_integer(ValueType::U16, Order::Abcd, -1).is_err());
        assert!(encode_integer(ValueType::I16, Order::Abcd, 32_768).is_err());
        assert!(encode_integer(ValueType::F32, Order::Abcd, 1).is_err());
    }

    fn int_type() -> impl Strategy<Value = ValueType> {
        prop_oneof![
            Just(ValueType::U16),
            Just(ValueType::I16),
            Just(ValueType::U32),
            Just(ValueType::I32),
            Just(ValueType::U64),
            Just(ValueType::I64),
        ]
    }

    proptest! {
        #[test]
        fn integer_writes_decode_to_what_was_written(t in int_type(), o in 0usize..4, v in any::<i32>()) {
            let order = ORDERS[o];
            let v = match t {
                ValueType::U16 => f64::from(v.rem_euclid(65_536)),
                ValueType::I16 => f64::from(v as i16),
                ValueType::U32 | ValueType::U64 => f64::from(v).abs(),
                _ => f64::from(v),
            };
            let regs = encode(t, order, 1.0, 0.0, v).expect("in range");
            prop_assert_eq!(regs.len(), usize::from(t.registers()));
            prop_assert_eq!(decode(t, order, &regs).as_f64(), Some(v));
        }

        #[test]
        fn float_writes_decode_to_what_was_written(o in 0usize..4, v in -1e30f64..1e30, scale in 0.001f64..1000.0, offset in -100.0f64..100.0) {
            let order = ORDERS[o];
            let regs = encode(ValueType::F64, order, scale, offset, v).expect("finite");
            let back = scaled(decode(ValueType::F64, order, &regs), scale, offset).as_f64().expect("number");
            prop_assert!((back - v).abs() <= v.abs() * 1e-12 + 1e-9, "{} vs {}", back, v);
            let v32 = v / 1e25;
            let regs = encode(ValueType::F32, order, 1.0, 0.0, v32).expect("fits f32");
            let back = decode(ValueType::F32, order, &regs).as_f64().expect("number");
            prop_assert_eq!(back, f64::from(v32 as f32));
        }

        #[test]
        fn scaled_integer_writes_round_to_the_nearest_step(raw in 0u16..=65_535, o in 0usize..4) {
            let order = ORDERS[o];
            let published = f64::from(raw) * 0.1 + 5.0;
            let regs = encode(ValueType::U16, order, 0.1, 5.0, published).expect("in range");
            prop_assert_eq!(decode(ValueType::U16, order, &regs), Value::UInt(u64::from(raw)));
        }
    }
}
