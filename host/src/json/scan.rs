//! One fast pass over a JSON object's top-level members, building no values.
//!
//! The host reads a few top-level fields of every event (its key, its event time, a Delta
//! table's columns). [`members`] walks the object once, checking the JSON grammar as it goes, and
//! hands each member's key and value as slices of the body. It only answers for the plain case:
//! a body with an escape in a string, nesting deeper than [`MAX_DEPTH`], or anything malformed
//! makes it answer `false`, and the caller asks serde_json instead, which then gives the same
//! answer or error as before (so a malformed event's dead-letter reason is serde_json's).
//!
//! Whatever it accepts, serde_json accepts too and reads the same way: strings hold no escapes
//! and no control characters and are valid UTF-8, numbers follow the JSON grammar, and only
//! whitespace may follow the object.

/// Nesting beyond this is left to serde_json (whose own limit is 128).
pub const MAX_DEPTH: u32 = 64;

/// A top-level member's value, as written in the body.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scanned<'a> {
    /// A string (without escapes): its text.
    Text(&'a str),
    /// A number: its text, which follows the JSON grammar (its value may still be out of range).
    Number(&'a [u8]),
    /// `true` or `false`.
    Bool(bool),
    /// `null`.
    Null,
    /// An array (checked, not read).
    Array,
    /// An object (checked, not read).
    Object,
}

/// Calls `member` with each top-level member of the JSON object `body`, in order. Returns
/// `false`, possibly after some calls, when the body is not plainly well formed (see the module
/// documentation): the caller then discards what it was given and asks serde_json.
pub fn members<'a>(body: &'a [u8], mut member: impl FnMut(&'a str, Scanned<'a>)) -> bool {
    scan(body, &mut |key, value, _| member(key, value))
}

/// Like [`members`], with each member's value also given as its text in the body (a string with
/// its quotes), which serde_json reads as the same value.
pub fn members_with_text<'a>(
    body: &'a [u8],
    mut member: impl FnMut(&'a str, Scanned<'a>, &'a [u8]),
) -> bool {
    scan(body, &mut member)
}

/// A member's key, its value, and the value's text.
type Member<'m, 'a> = &'m mut dyn FnMut(&'a str, Scanned<'a>, &'a [u8]);

fn scan<'a>(body: &'a [u8], member: Member<'_, 'a>) -> bool {
    // One check of the whole body (std reads ASCII a word at a time) instead of one per string:
    // every string is then a slice of `text` between two quotes, so on character boundaries.
    let Ok(text) = std::str::from_utf8(body) else {
        return false;
    };
    let mut cursor = Cursor { text, at: 0 };
    cursor.whitespace();
    if cursor.peek() != Some(b'{') {
        return false;
    }
    if cursor.object(1, member).is_none() {
        return false;
    }
    cursor.whitespace();
    cursor.at == body.len()
}

/// Bytes that end the plain run of a string: the quote, a backslash, control characters.
const fn string_stops() -> [bool; 256] {
    let mut stops = [false; 256];
    let mut byte = 0;
    while byte < 0x20 {
        stops[byte] = true;
        byte += 1;
    }
    stops[b'"' as usize] = true;
    stops[b'\\' as usize] = true;
    stops
}

static STRING_STOPS: [bool; 256] = string_stops();

/// The length of the plain run at the start of `rest`: the index of its first quote, backslash or
/// control character, if it has one. Eight bytes are tested at a time (bitwise tests on a `u64`,
/// each byte's flag in its top bit): strings are most of an event's bytes.
fn plain_run(rest: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const TOPS: u64 = u64::from_le_bytes([0x80; 8]);
    // A byte's top bit in `(x - ONES) & !x & TOPS` says it is zero, and in
    // `(x - 0x20 * ONES) & !x & TOPS` that it is below 0x20. A borrow can flag a byte above a
    // flagged one, never below it, so the lowest flag (the first byte: little endian) is exact.
    let zero_bytes = |x: u64| x.wrapping_sub(ONES) & !x & TOPS;
    let mut at = 0;
    while let Some(chunk) = rest.get(at..at + 8) {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        let stops = zero_bytes(word ^ (ONES * u64::from(b'"')))
            | zero_bytes(word ^ (ONES * u64::from(b'\\')))
            | (word.wrapping_sub(ONES * 0x20) & !word & TOPS);
        if stops != 0 {
            return Some(at + (stops.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let tail = rest.get(at..)?;
    let length = tail.iter().position(|b| STRING_STOPS[usize::from(*b)])?;
    Some(at + length)
}

struct Cursor<'a> {
    /// The body, known to be UTF-8.
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    /// The body's bytes.
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.at).copied()
    }

    fn whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.at += 1;
        }
    }

    /// At `{`: the members, each given to `member`.
    fn object(&mut self, depth: u32, member: Member<'_, 'a>) -> Option<()> {
        self.at += 1;
        self.whitespace();
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(());
        }
        loop {
            if self.peek()? != b'"' {
                return None;
            }
            let key = self.string()?;
            self.whitespace();
            if self.peek()? != b':' {
                return None;
            }
            self.at += 1;
            self.whitespace();
            let start = self.at;
            let value = self.value(depth)?;
            member(key, value, self.bytes().get(start..self.at)?);
            self.whitespace();
            match self.peek()? {
                b',' => {
                    self.at += 1;
                    self.whitespace();
                }
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// At `[`: the elements, checked.
    fn array(&mut self, depth: u32) -> Option<()> {
        self.at += 1;
        self.whitespace();
        if self.peek()? == b']' {
            self.at += 1;
            return Some(());
        }
        loop {
            self.value(depth)?;
            self.whitespace();
            match self.peek()? {
                b',' => {
                    self.at += 1;
                    self.whitespace();
                }
                b']' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A value inside a container at `depth`. Inlined into its callers: returned through the
    /// stack, its answer cost a stalled load (a 16-byte read of smaller writes) at every member.
    #[inline(always)]
    fn value(&mut self, depth: u32) -> Option<Scanned<'a>> {
        match self.peek()? {
            b'"' => self.string().map(Scanned::Text),
            b'{' if depth < MAX_DEPTH => {
                self.object(depth + 1, &mut |_, _, _| {})?;
                Some(Scanned::Object)
            }
            b'[' if depth < MAX_DEPTH => {
                self.array(depth + 1)?;
                Some(Scanned::Array)
            }
            b't' => self.literal(b"true", Scanned::Bool(true)),
            b'f' => self.literal(b"false", Scanned::Bool(false)),
            b'n' => self.literal(b"null", Scanned::Null),
            b'-' | b'0'..=b'9' => self.number().map(Scanned::Number),
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8], value: Scanned<'a>) -> Option<Scanned<'a>> {
        let rest = self.bytes().get(self.at..)?;
        rest.starts_with(word).then(|| {
            self.at += word.len();
            value
        })
    }

    /// At `"`: the string's text, when it has no escape and no control character.
    fn string(&mut self) -> Option<&'a str> {
        let start = self.at + 1;
        let length = plain_run(self.bytes().get(start..)?)?;
        if self.bytes().get(start + length) != Some(&b'"') {
            return None;
        }
        self.at = start + length + 1;
        self.text.get(start..start + length)
    }

    /// A number's text: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Option<&'a [u8]> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.required_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.required_digits()?;
        }
        self.bytes().get(start..self.at)
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
    }

    fn required_digits(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(body: &str) -> Option<Vec<(String, Scanned<'_>)>> {
        let mut found = Vec::new();
        members(body.as_bytes(), |k, v| found.push((k.to_owned(), v))).then_some(found)
    }

    #[test]
    fn reads_the_members_of_a_plain_object() {
        let found = scan(
            r#" { "a" : "x", "n":-12.5e+3, "z":0, "t":true, "f":false, "o":{"p":[1,{"q":null}]}, "l":[], "e":{}, "u":null } "#,
        )
        .expect("plain");
        assert_eq!(
            found,
            [
                ("a".to_owned(), Scanned::Text("x")),
                ("n".to_owned(), Scanned::Number(b"-12.5e+3")),
                ("z".to_owned(), Scanned::Number(b"0")),
                ("t".to_owned(), Scanned::Bool(true)),
                ("f".to_owned(), Scanned::Bool(false)),
                ("o".to_owned(), Scanned::Object),
                ("l".to_owned(), Scanned::Array),
                ("e".to_owned(), Scanned::Object),
                ("u".to_owned(), Scanned::Null),
            ]
        );
        assert_eq!(scan("{}"), Some(Vec::new()));
        assert_eq!(
            scan("{\"é\":\"°C\"}"),
            Some(vec![("é".to_owned(), Scanned::Text("°C"))])
        );
    }

    #[test]
    fn leaves_everything_else_to_serde_json() {
        for body in [
            "",
            "[1]",
            "\"a\"",
            "{",
            "{\"a\":1,}",
            "{\"a\":1} x",
            "{\"a\" 1}",
            "{a:1}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":.5}",
            "{\"a\":1e}",
            "{\"a\":-}",
            "{\"a\":+1}",
            "{\"a\":tru}",
            "{\"a\":nul}",
            "{\"a\":\"x\\\"y\"}",
            "{\"a\\u0062\":1}",
            "{\"a\":\"tab\there\"}",
            "{\"a\":[1,]}",
            "{\"a\":[1 2]}",
            "{\"a\":{\"b\":1,}}",
            "{\"a\":\"x}",
        ] {
            assert_eq!(scan(body), None, "{body:?}");
        }
        assert!(!members(b"{\"a\":\"\xff\"}", |_, _| {}));
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(70), "]".repeat(70));
        assert_eq!(scan(&deep), None, "deep nesting");
        let shallow = format!("{{\"a\":{}1{}}}", "[".repeat(60), "]".repeat(60));
        assert!(scan(&shallow).is_some());
    }

    /// The eight-at-a-time test finds the first stop byte wherever it is, whatever follows it.
    #[test]
    fn a_plain_run_ends_at_the_first_stop_byte() {
        let reference = |rest: &[u8]| rest.iter().position(|b| STRING_STOPS[usize::from(*b)]);
        for length in 0..24 {
            for stop_at in 0..=length {
                for byte in 0..=255u8 {
                    // Filler bytes near the stop classes (0x21, 0x1f + 1, 0x5b/0x5d around the
                    // backslash, 0x80+): a wrong borrow or mask shows up as an early stop.
                    for filler in [b'a', 0x21, 0x5b, 0x5d, 0x7f, 0x80, 0xc3, 0xff] {
                        let mut rest = vec![filler; length];
                        if stop_at < length {
                            rest[stop_at] = byte;
                            // A second stop after the first must not hide or move it.
                            if stop_at + 1 < length {
                                rest[stop_at + 1] = b'"';
                            }
                        }
                        assert_eq!(
                            plain_run(&rest),
                            reference(&rest),
                            "{rest:?} (byte {byte:#x} at {stop_at})"
                        );
                    }
                }
            }
        }
    }

    /// Whatever the scanner accepts, serde_json accepts and reads the same way.
    #[test]
    fn agrees_with_serde_json_on_what_it_accepts() {
        let bodies = [
            r#"{"DeviceId":"device-001","Temperature":21.5,"Humidity":45,"Ok":true,"Tags":["a","b"],"Nested":{"x":[{}]},"Nothing":null}"#,
            r#"{"big":123456789012345678901234567890,"neg":-0,"exp":1E-7}"#,
            "{\"a\":1,\"a\":2}",
        ];
        for body in bodies {
            let parsed: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(body).expect("serde_json accepts it");
            let mut ours = serde_json::Map::new();
            assert!(members(body.as_bytes(), |key, value| {
                let value = match value {
                    Scanned::Text(t) => serde_json::Value::String(t.to_owned()),
                    Scanned::Number(n) => serde_json::from_slice(n).expect("number"),
                    Scanned::Bool(b) => serde_json::Value::Bool(b),
                    Scanned::Null => serde_json::Value::Null,
                    Scanned::Array | Scanned::Object => parsed[key].clone(),
                };
                ours.insert(key.to_owned(), value);
            }));
            assert_eq!(ours, parsed, "{body}");
        }
    }
}
