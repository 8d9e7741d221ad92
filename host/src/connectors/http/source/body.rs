//! Splitting a request body into event bodies.
//!
//! A body that is one JSON value is one event, except an array, whose elements are one event each.
//! Anything else (or any body sent as NDJSON) is one event per non-blank line; a line that is not
//! JSON is still an event, which the pipeline dead-letters with the reason. Multi-line values are
//! compacted onto one line, so that every event body is a single line of JSON.

use bytes::Bytes;
use serde::Deserialize;
use serde::de::IgnoredAny;

/// The event bodies in `body`. `ndjson` forces one event per line.
pub(crate) fn split_events(body: &Bytes, ndjson: bool) -> Vec<Bytes> {
    if !ndjson && is_one_json_value(body) {
        let value = trim(body);
        return match value.first() {
            Some(b'[') => array_elements(value)
                .into_iter()
                .map(|e| compact(body, e))
                .collect(),
            _ => vec![compact(body, value)],
        };
    }
    body.split(|b| *b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .map(|line| body.slice_ref(line))
        .collect()
}

/// Whether `body` holds exactly one well-formed JSON value (and whitespace).
fn is_one_json_value(body: &[u8]) -> bool {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    IgnoredAny::deserialize(&mut deserializer).is_ok() && deserializer.end().is_ok()
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// The elements of a well-formed JSON array, trimmed.
fn array_elements(array: &[u8]) -> Vec<&[u8]> {
    let inner = array
        .strip_prefix(b"[")
        .and_then(|a| a.strip_suffix(b"]"))
        .unwrap_or_default();
    let mut elements = Vec::new();
    let (mut depth, mut in_string, mut escaped, mut start) = (0usize, false, false, 0usize);
    for (i, byte) in inner.iter().enumerate() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 0 => {
                elements.push(trim(&inner[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    let last = trim(&inner[start..]);
    if !last.is_empty() || !elements.is_empty() {
        elements.push(last);
    }
    elements
}

/// `value` (a slice of `body`) on one line: as it is when it has no line break, else with the
/// whitespace between tokens removed.
fn compact(body: &Bytes, value: &[u8]) -> Bytes {
    if !value.iter().any(|b| *b == b'\n' || *b == b'\r') {
        return body.slice_ref(value);
    }
    let mut out = Vec::with_capacity(value.len());
    let (mut in_string, mut escaped) = (false, false);
    for &byte in value {
        if in_string {
            out.push(byte);
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else if !byte.is_ascii_whitespace() {
            if byte == b'"' {
                in_string = true;
            }
            out.push(byte);
        }
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(body: &str, ndjson: bool) -> Vec<String> {
        split_events(&Bytes::copy_from_slice(body.as_bytes()), ndjson)
            .iter()
            .map(|b| String::from_utf8(b.to_vec()).expect("UTF-8"))
            .collect()
    }

    #[test]
    fn single_objects_arrays_and_lines() {
        assert_eq!(split(" {\"a\": 1}\n", false), ["{\"a\": 1}"]);
        assert_eq!(
            split("{\n  \"a\": \"x y\\\" }\",\n  \"b\": [1, 2]\n}", false),
            ["{\"a\":\"x y\\\" }\",\"b\":[1,2]}"]
        );
        assert_eq!(
            split("[{\"a\":1}, {\"b\":[1,{\"c\":\",\"}]},\n 3 ]", false),
            ["{\"a\":1}", "{\"b\":[1,{\"c\":\",\"}]}", "3"]
        );
        assert!(split("[ ]", false).is_empty());
        assert_eq!(
            split("{\"a\":1}\n\n{\"a\":2}\r\nnot json\n", false),
            ["{\"a\":1}", "{\"a\":2}", "not json"]
        );
        // NDJSON forced: even one array is one line.
        assert_eq!(split("[1,2]\n", true), ["[1,2]"]);
        assert!(split(" \n \r\n", false).is_empty());
    }
}
