//! A JSON reader that keeps numbers as the text they were written in.
//!
//! Decimal columns must take `19.99` as the digits 1, 9, 9, 9 and never as the nearest float, and
//! serde_json (without its crate-wide `arbitrary_precision` feature, which would change every
//! other user of it in the build) hands numbers over as floats. Records whose table has decimal or
//! nested columns are read with this instead: a tree of borrowed slices, strings unescaped only
//! when they hold escapes. It refuses what serde_json refuses (malformed text, trailing
//! characters) and nests at most [`MAX_DEPTH`] deep, so hostile input cannot exhaust the stack.

use std::borrow::Cow;

/// How deep arrays and objects may nest (serde_json's own limit).
pub(super) const MAX_DEPTH: usize = 128;

/// One JSON value.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Node<'a> {
    Null,
    Bool(bool),
    /// A number, exactly as written (validated against JSON's number grammar).
    Number(&'a str),
    Text(Cow<'a, str>),
    Array(Vec<Node<'a>>),
    /// Members in the order written; a repeated key keeps every occurrence (readers take the last).
    Object(Vec<(Cow<'a, str>, Node<'a>)>),
}

impl<'a> Node<'a> {
    /// The member `key` of an object (the last one if repeated).
    pub(super) fn member(members: &'a [(Cow<'a, str>, Node<'a>)], key: &str) -> Option<&'a Self> {
        members.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// Parses `text` as exactly one JSON value.
pub(super) fn parse(text: &str) -> Result<Node<'_>, String> {
    let mut reader = Reader { text, at: 0 };
    let node = reader.value(0)?;
    reader.skip_space();
    if reader.at < text.len() {
        return Err(reader.fail("trailing characters"));
    }
    Ok(node)
}

struct Reader<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn fail(&self, what: &str) -> String {
        format!("{what} at byte {}", self.at + 1)
    }

    fn value(&mut self, depth: usize) -> Result<Node<'a>, String> {
        self.skip_space();
        match self.peek() {
            None => Err(self.fail("EOF while parsing a value")),
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string().map(Node::Text),
            Some(b't') => self.literal("true", Node::Bool(true)),
            Some(b'f') => self.literal("false", Node::Bool(false)),
            Some(b'n') => self.literal("null", Node::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.fail("expected value")),
        }
    }

    fn literal(&mut self, word: &str, node: Node<'a>) -> Result<Node<'a>, String> {
        if self
            .text
            .get(self.at..)
            .is_some_and(|rest| rest.starts_with(word))
        {
            self.at += word.len();
            Ok(node)
        } else {
            Err(self.fail("expected value"))
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        self.at - start
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Result<Node<'a>, String> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        let leading_zero = self.peek() == Some(b'0');
        let whole = self.digits();
        if whole == 0 || (leading_zero && whole > 1) {
            return Err(self.fail("invalid number"));
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return Err(self.fail("invalid number"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if self.digits() == 0 {
                return Err(self.fail("invalid number"));
            }
        }
        Ok(Node::Number(&self.text[start..self.at]))
    }

    /// A string, borrowed when it holds no escapes; escapes are decoded by serde_json.
    fn string(&mut self) -> Result<Cow<'a, str>, String> {
        let start = self.at;
        self.at += 1;
        let mut escaped = false;
        loop {
            match self.peek() {
                None => return Err(self.fail("EOF while parsing a string")),
                Some(b'"') => break,
                Some(b'\\') => {
                    escaped = true;
                    self.at += 2;
                }
                Some(0..=0x1f) => return Err(self.fail("control character in a string")),
                Some(_) => self.at += 1,
            }
        }
        self.at += 1;
        let quoted = self
            .text
            .get(start..self.at)
            .ok_or_else(|| self.fail("EOF while parsing a string"))?;
        if !escaped {
            return Ok(Cow::Borrowed(&quoted[1..quoted.len() - 1]));
        }
        serde_json::from_str::<String>(quoted)
            .map(Cow::Owned)
            .map_err(|e| format!("invalid string at byte {}: {e}", start + 1))
    }

    fn array(&mut self, depth: usize) -> Result<Node<'a>, String> {
        self.nest(depth)?;
        let mut items = Vec::new();
        self.at += 1;
        self.skip_space();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(Node::Array(items));
        }
        loop {
            items.push(self.value(depth)?);
            self.skip_space();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(Node::Array(items));
                }
                _ => return Err(self.fail("expected `,` or `]`")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Node<'a>, String> {
        self.nest(depth)?;
        let mut members = Vec::new();
        self.at += 1;
        self.skip_space();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(Node::Object(members));
        }
        loop {
            self.skip_space();
            if self.peek() != Some(b'"') {
                return Err(self.fail("key must be a string"));
            }
            let key = self.string()?;
            self.skip_space();
            if self.peek() != Some(b':') {
                return Err(self.fail("expected `:`"));
            }
            self.at += 1;
            members.push((key, self.value(depth)?));
            self.skip_space();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(Node::Object(members));
                }
                _ => return Err(self.fail("expected `,` or `}`")),
            }
        }
    }

    fn nest(&self, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            Err(self.fail("recursion limit exceeded"))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_numbers_as_written() {
        let node = parse(r#" {"a": 19.99, "b": [1, -0.5e3, "x\"y"], "c": null, "d": true} "#)
            .expect("valid JSON");
        let Node::Object(members) = node else {
            panic!("an object")
        };
        assert_eq!(Node::member(&members, "a"), Some(&Node::Number("19.99")));
        assert_eq!(
            Node::member(&members, "b"),
            Some(&Node::Array(vec![
                Node::Number("1"),
                Node::Number("-0.5e3"),
                Node::Text(Cow::Owned("x\"y".to_owned()))
            ]))
        );
        assert_eq!(Node::member(&members, "c"), Some(&Node::Null));
        assert_eq!(Node::member(&members, "e"), None);
    }

    #[test]
    fn refuses_what_is_not_json() {
        for bad in [
            "",
            "{",
            "{\"a\"}",
            "{\"a\":1,}",
            "[1 2]",
            "01",
            "1.",
            "-",
            "1e",
            "tru",
            "\"a",
            "{} x",
            "{a:1}",
            "\"\u{1}\"",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(parse(&deep).is_err());
        let fine = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(parse(&fine).is_ok());
    }
}
