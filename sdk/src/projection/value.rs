//! One projected value, read without setting up a JSON parser for the common scalars.
//!
//! Most projected values are short strings without escapes and plain decimal numbers. For
//! those, [`ProjectedValue`] hands the visitor what serde_json would (the same `visit_*` call
//! with the same value, bit for bit); anything else (escapes, exponents, long numbers, objects,
//! arrays, `f32` and 128-bit targets) goes to serde_json itself. Inside Wasm, building a
//! serde_json deserializer and walking its number and string state machines cost about as much
//! per value as the rule's own work on it.

use serde::de::{self, Visitor};

use super::GiveUp;

/// A projected value's JSON text, already cut out of the body by the host.
pub(super) struct ProjectedValue<'a> {
    pub(super) text: &'a [u8],
}

/// What a value's text is, when it is one of the forms read here.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scalar<'a> {
    /// A string without escapes or control characters.
    Str(&'a str),
    /// A non-negative integer (serde_json's `visit_u64`).
    U64(u64),
    /// A negative integer (serde_json's `visit_i64`).
    I64(i64),
    /// A number with a fraction, or `-0` (serde_json's `visit_f64`).
    F64(f64),
    Bool(bool),
    Null,
}

/// The most significant digits a number read here may have: below 2^53, so that the digits are
/// an exact `f64` and one division by an exact power of ten rounds correctly, as serde_json's
/// parser (`float_roundtrip`) does.
const MAX_DIGITS: usize = 15;

/// Powers of ten up to [`MAX_DIGITS`], each exact in an `f64`.
const POW10: [f64; MAX_DIGITS + 1] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// The scalar `text` is, or `None` for anything serde_json must read.
fn scalar(text: &[u8]) -> Option<Scalar<'_>> {
    match text.first()? {
        b'"' => string(text).map(Scalar::Str),
        b'n' => (text == b"null").then_some(Scalar::Null),
        b't' => (text == b"true").then_some(Scalar::Bool(true)),
        b'f' => (text == b"false").then_some(Scalar::Bool(false)),
        _ => number(text),
    }
}

/// A string without escapes or control characters, as serde_json borrows it.
fn string(text: &[u8]) -> Option<&str> {
    let [b'"', inner @ .., b'"'] = text else {
        return None;
    };
    if has_quote_backslash_or_control(inner) {
        return None;
    }
    std::str::from_utf8(inner).ok()
}

/// Whether `bytes` holds a `"`, a `\\` or a control character (below 0x20), eight bytes at a
/// time: inside Wasm a byte-by-byte loop over every string value was a tenth of a light rule's
/// time.
fn has_quote_backslash_or_control(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
    // Non-zero when some byte of `word` is below `n` (exact for n <= 0x80; bytes of 0x80 and
    // above never count, as their high bit is masked out by `!word`).
    let below = |word: u64, n: u8| word.wrapping_sub(ONES * u64::from(n)) & !word & HIGH_BITS;
    // Non-zero when some byte of `word` equals `byte`.
    let equal = |word: u64, byte: u8| below(word ^ (ONES * u64::from(byte)), 1);
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let Ok(eight) = <[u8; 8]>::try_from(chunk) else {
            return true;
        };
        let word = u64::from_le_bytes(eight);
        if below(word, 0x20) | equal(word, b'"') | equal(word, b'\\') != 0 {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&byte| byte == b'\\' || byte == b'"' || byte < 0x20)
}

/// A number of at most [`MAX_DIGITS`] digits, without exponent, as serde_json reads it.
fn number(text: &[u8]) -> Option<Scalar<'static>> {
    let (positive, digits) = match text {
        [b'-', rest @ ..] => (false, rest),
        _ => (true, text),
    };
    // JSON has no leading zeros.
    if let [b'0', b'0'..=b'9', ..] = digits {
        return None;
    }
    let mut significand = 0u64;
    let mut count = 0;
    // How many digits came before the point, once there was one.
    let mut point = None;
    for &byte in digits {
        if byte.is_ascii_digit() {
            if count == MAX_DIGITS {
                return None;
            }
            significand = significand * 10 + u64::from(byte - b'0');
            count += 1;
        } else if byte == b'.' && point.is_none() {
            point = Some(count);
        } else {
            return None;
        }
    }
    Some(match point {
        // JSON: at least one digit on each side of a point.
        Some(before) if before == 0 || before == count => return None,
        Some(before) => {
            let magnitude = significand as f64 / POW10[count - before];
            Scalar::F64(if positive { magnitude } else { -magnitude })
        }
        None if count == 0 => return None,
        None if positive => Scalar::U64(significand),
        // serde_json reads `-0` as a float.
        None if significand == 0 => Scalar::F64(-0.0),
        None => Scalar::I64(-(significand as i64)),
    })
}

impl<'de> ProjectedValue<'de> {
    /// Reads the value with serde_json, as if it had been parsed alone.
    fn with_serde_json<T>(
        self,
        read: impl FnOnce(
            &mut serde_json::Deserializer<serde_json::de::SliceRead<'de>>,
        ) -> Result<T, serde_json::Error>,
    ) -> Result<T, GiveUp> {
        let mut json = serde_json::Deserializer::from_slice(self.text);
        let value = read(&mut json).map_err(|_| GiveUp::Other)?;
        json.end().map_err(|_| GiveUp::Other)?;
        Ok(value)
    }

    /// A number to the visitor, or serde_json's answer for anything else.
    fn number_or_serde_json<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        match number(self.text) {
            Some(Scalar::U64(value)) => visitor.visit_u64(value),
            Some(Scalar::I64(value)) => visitor.visit_i64(value),
            Some(Scalar::F64(value)) => visitor.visit_f64(value),
            _ => self.with_serde_json(|json| de::Deserializer::deserialize_any(json, visitor)),
        }
    }
}

/// Methods that are serde_json's, with their arguments before the visitor.
macro_rules! by_serde_json {
    ($($method:ident($($arg:ident: $type:ty),*);)*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $type,)* visitor: V) -> Result<V::Value, GiveUp> {
            self.with_serde_json(|json| de::Deserializer::$method(json, $($arg,)* visitor))
        }
    )*};
}

/// Number methods: the same visit as serde_json's `deserialize_number`.
macro_rules! by_number {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
            self.number_or_serde_json(visitor)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for ProjectedValue<'de> {
    type Error = GiveUp;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        match scalar(self.text) {
            Some(Scalar::Str(text)) => visitor.visit_borrowed_str(text),
            Some(Scalar::U64(value)) => visitor.visit_u64(value),
            Some(Scalar::I64(value)) => visitor.visit_i64(value),
            Some(Scalar::F64(value)) => visitor.visit_f64(value),
            Some(Scalar::Bool(value)) => visitor.visit_bool(value),
            Some(Scalar::Null) => visitor.visit_unit(),
            None => self.with_serde_json(|json| de::Deserializer::deserialize_any(json, visitor)),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        match string(self.text) {
            Some(text) => visitor.visit_borrowed_str(text),
            None => self.with_serde_json(|json| de::Deserializer::deserialize_str(json, visitor)),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        // serde_json reads a `String` as a `str`.
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        if self.text == b"null" {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    by_number! {
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_f64
    }

    // `f32` (parsed in single precision with `float_roundtrip`) and 128-bit integers have
    // parsers of their own in serde_json.
    by_serde_json! {
        deserialize_f32(); deserialize_i128(); deserialize_u128(); deserialize_bool();
        deserialize_char(); deserialize_bytes(); deserialize_byte_buf(); deserialize_unit();
        deserialize_seq(); deserialize_map(); deserialize_identifier(); deserialize_ignored_any();
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Debug;

    use serde::Deserialize;

    use super::*;

    /// `T` read from `text` here and by serde_json: both fail, or both give the same value.
    fn agree<'a, T: Deserialize<'a> + Debug>(text: &'a str, same: impl Fn(&T, &T) -> bool) {
        let here = T::deserialize(ProjectedValue {
            text: text.as_bytes(),
        });
        let theirs = serde_json::from_str::<T>(text);
        match (here, theirs) {
            (Ok(here), Ok(theirs)) => assert!(
                same(&here, &theirs),
                "{text:?}: read {here:?} here, {theirs:?} by serde_json"
            ),
            (Err(_), Err(_)) => {}
            (here, theirs) => panic!("{text:?}: {here:?} here, {theirs:?} by serde_json"),
        }
    }

    /// Every target type a rule's field might have, on one text.
    fn agree_on_all(text: &str) {
        agree::<serde_json::Value>(text, PartialEq::eq);
        agree::<f64>(text, |a, b| a.to_bits() == b.to_bits());
        agree::<Option<f64>>(text, |a, b| a.map(f64::to_bits) == b.map(f64::to_bits));
        agree::<f32>(text, |a, b| a.to_bits() == b.to_bits());
        agree::<u8>(text, PartialEq::eq);
        agree::<u64>(text, PartialEq::eq);
        agree::<i32>(text, PartialEq::eq);
        agree::<i64>(text, PartialEq::eq);
        agree::<i128>(text, PartialEq::eq);
        agree::<bool>(text, PartialEq::eq);
        agree::<String>(text, PartialEq::eq);
        agree::<Option<&str>>(text, PartialEq::eq);
        agree::<crate::Text>(text, PartialEq::eq);
        agree::<Option<crate::Text>>(text, PartialEq::eq);
        agree::<()>(text, PartialEq::eq);
        agree::<Vec<f64>>(text, PartialEq::eq);
        agree::<serde::de::IgnoredAny>(text, |_, _| true);
    }

    #[test]
    fn quotes_backslashes_and_control_characters_are_found_at_every_place() {
        for len in 0..20 {
            let plain: Vec<u8> = (0..len).map(|i| b"a~ \x7f\xc3\xa9Z0"[i % 8]).collect();
            assert!(!has_quote_backslash_or_control(&plain), "{plain:?}");
            for at in 0..len {
                for special in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
                    let mut text = plain.clone();
                    text[at] = special;
                    assert!(has_quote_backslash_or_control(&text), "{text:?}");
                }
                for harmless in [0x20, 0x21, 0x23, 0x5b, 0x5d, 0x80, 0xff] {
                    let mut text = plain.clone();
                    text[at] = harmless;
                    assert!(!has_quote_backslash_or_control(&text), "{text:?}");
                }
            }
        }
    }

    #[test]
    fn scalars_read_as_serde_json_reads_them() {
        let texts = [
            "0",
            "-0",
            "0.0",
            "-0.0",
            "7",
            "-7",
            "23.5",
            "-23.5",
            "0.1",
            "0.3",
            "1.7976931348623157",
            "255",
            "256",
            "-129",
            "4294967296",
            "123456789012345",
            "1234567890123456",
            "999999999999999",
            "-999999999999999",
            "0.000000000000001",
            "9007199254740993",
            "18446744073709551615",
            "18446744073709551616",
            "1e3",
            "1.5E-3",
            "01",
            "-01",
            "1.",
            ".5",
            "-",
            "",
            "+1",
            "1.2.3",
            "1a",
            "--1",
            "\"\"",
            "\"DEV-001\"",
            "\"2026-12-07T10:00:00.000Z\"",
            "\"é ü 漢字\"",
            "\"a\\\"b\"",
            "\"tab\\t\"",
            "\"\u{1}\"",
            "\"unterminated",
            "\"",
            "null",
            "true",
            "false",
            "nul",
            "[1,2]",
            "{\"a\":1}",
            " 1",
            "1 ",
        ];
        for text in texts {
            agree_on_all(text);
        }
    }

    #[test]
    fn generated_decimals_read_as_serde_json_reads_them() {
        // A small linear congruential generator: deterministic, no dependency.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            state >> 11
        };
        for _ in 0..20_000 {
            let digits = 1 + (next() % 17) as usize;
            let mut text: String = (0..digits)
                .map(|_| char::from(b'0' + (next() % 10) as u8))
                .collect();
            if text.len() > 1 && next() % 4 != 0 {
                // Mostly valid numbers: no leading zero.
                text.replace_range(0..1, "1");
            }
            let point = (next() % (digits as u64 + 1)) as usize;
            if point > 0 && point < digits {
                text.insert(point, '.');
            }
            if next() % 2 == 0 {
                text.insert(0, '-');
            }
            agree::<serde_json::Value>(&text, PartialEq::eq);
            agree::<f64>(&text, |a, b| a.to_bits() == b.to_bits());
            agree::<i64>(&text, PartialEq::eq);
        }
    }

    #[test]
    fn only_plain_forms_skip_serde_json() {
        assert_eq!(scalar(b"\"DEV-001\""), Some(Scalar::Str("DEV-001")));
        assert_eq!(scalar(b"-12.25"), Some(Scalar::F64(-12.25)));
        assert_eq!(scalar(b"42"), Some(Scalar::U64(42)));
        assert_eq!(scalar(b"-42"), Some(Scalar::I64(-42)));
        for other in [
            "\"a\\nb\"",
            "1e3",
            "1234567890123456",
            "01",
            "1.",
            "[1]",
            " 1",
            "\"\t\"",
        ] {
            assert_eq!(scalar(other.as_bytes()), None, "{other:?}");
        }
    }
}
