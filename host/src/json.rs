//! Reading one top-level field of a JSON object without building the whole document.
//!
//! The fields are found by [`scan`], one fast pass over the body; a body it leaves aside (an
//! escape in a string, malformed JSON) is read by serde_json, whose errors are the reasons given.

pub mod fields;
pub mod scan;
pub mod timestamp;

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use self::scan::Scanned;

/// A scalar JSON value found at a top-level field.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue<'a> {
    /// A string.
    Text(Cow<'a, str>),
    /// A number, as its value.
    Number(f64),
    /// `null`.
    Null,
    /// An object, array or boolean.
    Other,
}

impl FieldValue<'_> {
    /// The value as partition-key bytes: strings as they are, numbers as text.
    pub fn key_bytes(&self) -> Option<Vec<u8>> {
        match self {
            FieldValue::Text(text) => Some(text.as_bytes().to_vec()),
            FieldValue::Number(n) => Some(n.to_string().into_bytes()),
            FieldValue::Null | FieldValue::Other => None,
        }
    }
}

/// The value of top-level `field` in the JSON object `body`: `Ok(None)` when absent, `Err` with a
/// reason when `body` is not one well-formed JSON object.
pub fn top_level_field<'a>(body: &'a [u8], field: &str) -> Result<Option<FieldValue<'a>>, String> {
    let mut found = None;
    let plain = scan::members(body, |key, value| {
        if found.is_none() && key == field {
            found = Some(value);
        }
    });
    if plain && let Some(found) = resolved(found) {
        return Ok(found);
    }
    serde_field(body, field)
}

/// The values of top-level fields `first` and `second` of the JSON object `body`, read in one
/// pass: the same answers as [`top_level_field`] of each (which fail together, for a body that
/// is not one well-formed JSON object).
pub fn top_level_field_pair<'a>(
    body: &'a [u8],
    first: &str,
    second: &str,
) -> Result<(Option<FieldValue<'a>>, Option<FieldValue<'a>>), String> {
    let (mut found_first, mut found_second) = (None, None);
    let plain = scan::members(body, |key, value| {
        if found_first.is_none() && key == first {
            found_first = Some(value);
        }
        if found_second.is_none() && key == second {
            found_second = Some(value);
        }
    });
    if plain && let (Some(first), Some(second)) = (resolved(found_first), resolved(found_second)) {
        return Ok((first, second));
    }
    Ok((serde_field(body, first)?, serde_field(body, second)?))
}

/// [`top_level_field`] read by serde_json alone.
fn serde_field<'a>(body: &'a [u8], field: &str) -> Result<Option<FieldValue<'a>>, String> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let found = FieldSeed { field }
        .deserialize(&mut deserializer)
        .map_err(|e| format!("malformed JSON: {e}"))?;
    deserializer
        .end()
        .map_err(|e| format!("malformed JSON: {e}"))?;
    Ok(found)
}

/// The values of several top-level `fields` of the JSON object `body`, in the order asked for
/// (`None` for an absent one), read in one pass; `Err` with a reason when `body` is not one
/// well-formed JSON object.
pub fn top_level_fields<'a>(
    body: &'a [u8],
    fields: &[String],
) -> Result<Vec<Option<FieldValue<'a>>>, String> {
    let mut found: Vec<Option<Scanned<'a>>> = vec![None; fields.len()];
    let plain = scan::members(body, |key, value| {
        if let Some(index) = fields.iter().position(|f| f == key)
            && found[index].is_none()
        {
            found[index] = Some(value);
        }
    });
    if plain && let Some(values) = found.into_iter().map(resolved).collect::<Option<Vec<_>>>() {
        return Ok(values);
    }
    serde_fields(body, fields)
}

/// [`top_level_fields`] read by serde_json alone.
fn serde_fields<'a>(
    body: &'a [u8],
    fields: &[String],
) -> Result<Vec<Option<FieldValue<'a>>>, String> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let found = FieldsSeed { fields }
        .deserialize(&mut deserializer)
        .map_err(|e| format!("malformed JSON: {e}"))?;
    deserializer
        .end()
        .map_err(|e| format!("malformed JSON: {e}"))?;
    Ok(found)
}

/// A field found (`Some`) or absent (`Some(None)`), or `None` when serde_json must read it.
fn resolved(found: Option<Scanned<'_>>) -> Option<Option<FieldValue<'_>>> {
    match found {
        None => Some(None),
        Some(value) => scanned_value(value).map(Some),
    }
}

/// A scanned value as serde_json reads it (`None` for a number out of range, whose error is
/// serde_json's to give).
fn scanned_value(value: Scanned<'_>) -> Option<FieldValue<'_>> {
    Some(match value {
        Scanned::Text(text) => FieldValue::Text(Cow::Borrowed(text)),
        Scanned::Number(text) => FieldValue::Number(serde_json::from_slice::<f64>(text).ok()?),
        Scanned::Null => FieldValue::Null,
        Scanned::Bool(_) | Scanned::Array | Scanned::Object => FieldValue::Other,
    })
}

struct FieldsSeed<'f> {
    fields: &'f [String],
}

impl<'de> DeserializeSeed<'de> for FieldsSeed<'_> {
    type Value = Vec<Option<FieldValue<'de>>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FieldsSeed<'_> {
    type Value = Vec<Option<FieldValue<'de>>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found: Vec<Option<FieldValue<'de>>> = vec![None; self.fields.len()];
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match self.fields.iter().position(|f| *f == key) {
                Some(index) if found[index].is_none() => {
                    found[index] = Some(map.next_value::<ScalarValue<'de>>()?.0);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }
}

/// The top-level keys of the JSON object `body`, in order; `Err` with a reason when `body` is not
/// one well-formed JSON object.
pub fn top_level_keys(body: &[u8]) -> Result<Vec<Cow<'_, str>>, String> {
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = Vec<Cow<'de, str>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut keys = Vec::new();
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                map.next_value::<IgnoredAny>()?;
                keys.push(key);
            }
            Ok(keys)
        }
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let keys = deserializer
        .deserialize_map(Keys)
        .map_err(|e| format!("not a JSON object: {e}"))?;
    deserializer
        .end()
        .map_err(|e| format!("malformed JSON: {e}"))?;
    Ok(keys)
}

impl FieldValue<'_> {
    /// The value as JSON text, for values that have one here (strings, numbers, null).
    pub fn to_json(&self) -> Option<String> {
        match self {
            FieldValue::Text(text) => serde_json::to_string(text.as_ref()).ok(),
            FieldValue::Number(n) => {
                if n.fract() == 0.0 && n.abs() < 9.0e15 {
                    Some(format!("{}", *n as i64))
                } else {
                    serde_json::Number::from_f64(*n).map(|n| n.to_string())
                }
            }
            FieldValue::Null => Some("null".to_owned()),
            FieldValue::Other => None,
        }
    }
}

struct FieldSeed<'f> {
    field: &'f str,
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = Option<FieldValue<'de>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_> {
    type Value = Option<FieldValue<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if found.is_none() && key == self.field {
                found = Some(map.next_value::<ScalarValue<'de>>()?.0);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

struct ScalarValue<'a>(FieldValue<'a>);

impl<'de> de::Deserialize<'de> for ScalarValue<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl<'de> Visitor<'de> for ScalarVisitor {
            type Value = ScalarValue<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(ScalarValue(FieldValue::Text(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ScalarValue(FieldValue::Text(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(ScalarValue(FieldValue::Text(Cow::Owned(v))))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(ScalarValue(FieldValue::Number(v as f64)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(ScalarValue(FieldValue::Number(v as f64)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(ScalarValue(FieldValue::Number(v)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(ScalarValue(FieldValue::Null))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(ScalarValue(FieldValue::Other))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(ScalarValue(FieldValue::Other))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(ScalarValue(FieldValue::Other))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// Milliseconds since the Unix epoch from an event-time value: RFC 3339 text, or a number of
/// epoch milliseconds.
pub fn event_time_millis(value: &FieldValue<'_>) -> Result<i64, String> {
    match value {
        FieldValue::Text(text) => match timestamp::rfc3339_micros(text) {
            Some(micros) => Ok(micros.div_euclid(1000)),
            None => chrono::DateTime::parse_from_rfc3339(text)
                .map(|t| t.timestamp_millis())
                .map_err(|e| format!("event time `{text}` is not an RFC 3339 timestamp: {e}")),
        },
        FieldValue::Number(n) if n.is_finite() => Ok(*n as i64),
        FieldValue::Number(n) => Err(format!("event time {n} is not a finite number")),
        FieldValue::Null => Err("event time is null".to_owned()),
        FieldValue::Other => Err("event time is neither text nor a number".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_of_fields_reads_as_each_field_alone() {
        let bodies: [&[u8]; 6] = [
            br#"{"k":"dev-1","t":"2026-01-02T03:04:05Z","n":1}"#,
            br#"{"t":17,"k":"x\"y"}"#,
            br#"{"k":"only"}"#,
            br#"{"k":"a","k":"b","t":1e999}"#,
            br#"{"k":"a""#,
            b"not json",
        ];
        for body in bodies {
            for (first, second) in [("k", "t"), ("t", "k"), ("k", "k"), ("n", "absent")] {
                let pair = top_level_field_pair(body, first, second);
                let each = top_level_field(body, first)
                    .and_then(|a| top_level_field(body, second).map(|b| (a, b)));
                assert_eq!(
                    pair,
                    each,
                    "{} ({first}, {second})",
                    String::from_utf8_lossy(body)
                );
            }
        }
    }

    #[test]
    fn finds_top_level_scalars_only() {
        let body = br#"{"a":{"DeviceId":"inner"},"DeviceId":"dev-1","n":12.5,"esc":"x\"y"}"#;
        assert_eq!(
            top_level_field(body, "DeviceId"),
            Ok(Some(FieldValue::Text(Cow::Borrowed("dev-1"))))
        );
        assert_eq!(
            top_level_field(body, "n"),
            Ok(Some(FieldValue::Number(12.5)))
        );
        assert_eq!(
            top_level_field(body, "esc"),
            Ok(Some(FieldValue::Text(Cow::Owned("x\"y".into()))))
        );
        assert_eq!(top_level_field(body, "missing"), Ok(None));
        assert_eq!(top_level_field(body, "a"), Ok(Some(FieldValue::Other)));
    }

    #[test]
    fn several_fields_in_one_pass() {
        let body = br#"{"b":2,"a":"x","c":{"b":3},"d":null}"#;
        let fields: Vec<String> = ["a", "b", "d", "e"]
            .iter()
            .map(|f| (*f).to_owned())
            .collect();
        let found = top_level_fields(body, &fields).expect("object");
        let json: Vec<Option<String>> = found
            .iter()
            .map(|v| v.as_ref().and_then(FieldValue::to_json))
            .collect();
        assert_eq!(
            json,
            [
                Some("\"x\"".to_owned()),
                Some("2".to_owned()),
                Some("null".to_owned()),
                None
            ]
        );
        assert!(top_level_fields(b"[1]", &fields).is_err());
    }

    #[test]
    fn refuses_malformed_json_and_non_objects() {
        assert!(
            top_level_field(b"{\"a\":", "a")
                .expect_err("refused")
                .starts_with("malformed JSON")
        );
        assert!(top_level_field(b"[1,2]", "a").is_err());
        assert!(top_level_field(b"{\"a\":1} trailing", "a").is_err());
    }

    proptest::proptest! {
        /// The fast pass and serde_json give the same answer, or the same error, for any body
        /// (mostly malformed ones: the alphabet is JSON's punctuation, a few letters and digits).
        #[test]
        fn the_fast_pass_answers_as_serde_json_does(
            body in r#"[{}\[\]":, a-c0-9.eE+\-\\tnrufls\n]{0,48}"#,
            wrapped in r#"\{("[a-c]{1,2}":([0-9.eE+\-]{1,6}|"[a-c\\]{0,3}"|null|true|\[[0-9,]{0,5}\]|\{\}),?){0,4}\}"#,
        ) {
            let fields = vec!["a".to_owned(), "b".to_owned()];
            for body in [body.as_bytes(), wrapped.as_bytes()] {
                proptest::prop_assert_eq!(top_level_field(body, "a"), serde_field(body, "a"));
                proptest::prop_assert_eq!(top_level_fields(body, &fields), serde_fields(body, &fields));
            }
        }
    }

    #[test]
    fn event_times_from_text_and_numbers() {
        let t = FieldValue::Text(Cow::Borrowed("2026-01-01T00:00:01.500Z"));
        assert_eq!(event_time_millis(&t), Ok(1_767_225_601_500));
        assert_eq!(event_time_millis(&FieldValue::Number(42.0)), Ok(42));
        assert!(event_time_millis(&FieldValue::Text(Cow::Borrowed("yesterday"))).is_err());
    }
}
