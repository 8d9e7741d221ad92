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

use std::sync::atomic::{AtomicBool, Ordering};

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

/// Where each top-level member of one body sits, as a scan found it: the member's key, its value
/// and the value's kind, so that the body's members can be read again without a scan (see
/// [`members_of`]).
///
/// The file source and the partition worker record them when they read an event's key or event
/// time; a forwarded record keeps its event's, so the plugin's projection and a Delta sink read
/// the body without scanning it again. They describe one body only: an event whose body is
/// replaced gets none.
///
/// Events are equal whether or not they carry them: they only cache what the body says.
#[derive(Debug, Clone, Default)]
pub struct MemberSpans {
    /// The spans, and the length of the body they were found in (a cheap check against use with
    /// another one); `None`: not known, the body is scanned when read.
    found: Option<(std::sync::Arc<[Span]>, usize)>,
}

impl PartialEq for MemberSpans {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// Whether some reader in this process ([`members_of`]: a projection, a Delta sink) has scanned
/// a body whose spans were not known. Until one has, [`members_recorded`] records nothing: the
/// record costs a little on every event, which a pipeline without such readers (a pass-through
/// to JSON Lines) would pay for nothing. Spans only spare work, so a process-wide hint is enough.
static SPANS_WANTED: AtomicBool = AtomicBool::new(false);

/// From now on, [`members_recorded`] records (see [`SPANS_WANTED`]).
pub fn want_spans() {
    if !SPANS_WANTED.load(Ordering::Relaxed) {
        SPANS_WANTED.store(true, Ordering::Relaxed);
    }
}

/// Where one member sits: its key's and its value's byte ranges in the body (a string value with
/// its quotes; the value's first byte says what it is).
#[derive(Debug, Clone, Copy)]
pub struct Span {
    key: (u32, u32),
    value: (u32, u32),
}

/// Like [`members`], also recording each member's place into `record` (a buffer reused between
/// bodies): it holds every member when the scan answers `true`, none otherwise. Nothing is
/// recorded until a reader wants spans (see [`SPANS_WANTED`]).
pub fn members_recorded<'a>(
    body: &'a [u8],
    record: &mut Vec<Span>,
    mut member: impl FnMut(&'a str, Scanned<'a>),
) -> bool {
    record.clear();
    if !SPANS_WANTED.load(Ordering::Relaxed) {
        return members(body, member);
    }
    // Offsets are kept in 32 bits; a body past 4 GiB (never, under `max_event_bytes`) is read
    // without a record.
    let recordable = u32::try_from(body.len()).is_ok();
    let base = body.as_ptr() as usize;
    let offset = |part: &[u8]| (part.as_ptr() as usize - base) as u32;
    let plain = scan(body, &mut |key, value, text| {
        let key_start = offset(key.as_bytes());
        let value_start = offset(text);
        record.push(Span {
            key: (key_start, key_start + key.len() as u32),
            value: (value_start, value_start + text.len() as u32),
        });
        member(key, value);
    });
    if !(plain && recordable) {
        record.clear();
    }
    plain
}

impl MemberSpans {
    /// The spans `record` holds, found by [`members_recorded`] in `body`: none known when it
    /// holds none (the scan left the body aside, or the body has no member).
    pub fn from_recorded(body: &[u8], record: &[Span]) -> Self {
        MemberSpans {
            found: (!record.is_empty()).then(|| (std::sync::Arc::from(record), body.len())),
        }
    }

    /// Whether they are known.
    pub fn is_known(&self) -> bool {
        self.found.is_some()
    }
}

/// Calls `member` with each top-level member of `body`, as [`members_with_text`] does: from
/// `spans` (found in this same body) when they are known, without scanning it again, else by a
/// scan.
/// `false` as for [`members_with_text`]; also when `spans` do not fit `body` (they were made for
/// another one), which the caller then reads as it reads a body the scan leaves aside.
pub fn members_of<'a>(
    body: &'a [u8],
    spans: &MemberSpans,
    mut member: impl FnMut(&'a str, Scanned<'a>, &'a [u8]),
) -> bool {
    let Some((spans, body_len)) = &spans.found else {
        want_spans();
        return scan(body, &mut member);
    };
    if *body_len != body.len() {
        return false;
    }
    // One check of the whole body, as the scan makes: then every key and string is a slice of it
    // (one check per slice costs several times more, for short ones).
    let Ok(whole) = std::str::from_utf8(body) else {
        return false;
    };
    for span in spans.iter() {
        let (key_start, key_end) = (span.key.0 as usize, span.key.1 as usize);
        let (value_start, value_end) = (span.value.0 as usize, span.value.1 as usize);
        // The checks cannot fail on the body the spans were found in; they keep a mismatch from
        // reading anything but its own bytes.
        let (Some(key), Some(text)) = (
            whole.get(key_start..key_end),
            body.get(value_start..value_end),
        ) else {
            return false;
        };
        let value = match text.first() {
            Some(b'"') => match whole.get(value_start + 1..value_end.saturating_sub(1)) {
                Some(inner) => Scanned::Text(inner),
                None => return false,
            },
            Some(b't') => Scanned::Bool(true),
            Some(b'f') => Scanned::Bool(false),
            Some(b'n') => Scanned::Null,
            Some(b'[') => Scanned::Array,
            Some(b'{') => Scanned::Object,
            Some(_) => Scanned::Number(text),
            None => return false,
        };
        member(key, value, text);
    }
    true
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

    /// At `"`: the string's text, when it has no escape and no control character. Inlined: as a
    /// call (two per member) it cost a pass-through pipeline about 2% of its instructions.
    #[inline(always)]
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

    /// Read from the spans a scan recorded, a body gives the same members as the scan itself; a
    /// body the scan leaves aside records none, and spans are not read against another body.
    #[test]
    fn recorded_spans_read_as_the_scan() {
        let with_text = |body: &'static str, spans: &MemberSpans| {
            let mut found = Vec::new();
            members_of(body.as_bytes(), spans, |k, v, t| {
                found.push((k.to_owned(), v, t.to_vec()));
            })
            .then_some(found)
        };
        want_spans();
        let mut record = Vec::new();
        for body in [
            r#" { "a" : "x", "n":-12.5e+3, "z":0, "t":true, "f":false, "o":{"p":[1,{"q":null}]}, "l":[], "e":{}, "u":null } "#,
            "{\"é\":\"°C\",\"\":\"\"}",
            "{\"a\":1,\"a\":2}",
            "{}",
        ] {
            let mut keys = Vec::new();
            assert!(members_recorded(body.as_bytes(), &mut record, |k, _| keys.push(k)));
            let spans = MemberSpans::from_recorded(body.as_bytes(), &record);
            assert_eq!(spans.is_known(), !keys.is_empty(), "{body}");
            let scanned = with_text(body, &MemberSpans::default());
            assert!(scanned.is_some(), "{body}");
            assert_eq!(with_text(body, &spans), scanned, "{body}");
        }
        // What the scan leaves aside leaves nothing recorded, even after a body that recorded.
        assert!(members_recorded(b"{\"a\":1}", &mut record, |_, _| {}));
        assert!(!members_recorded(
            b"{\"a\":1,\"b\":\"x\\\"y\"}",
            &mut record,
            |_, _| {}
        ));
        assert!(record.is_empty());
        // Spans of one body do not read another of a different length.
        assert!(members_recorded(b"{\"a\":1}", &mut record, |_, _| {}));
        let spans = MemberSpans::from_recorded(b"{\"a\":1}", &record);
        assert_eq!(with_text("{\"a\":12}", &spans), None);
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
