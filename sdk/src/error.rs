//! Why an event is rejected.

use std::borrow::Cow;
use std::fmt;

/// The result of a transform function and of most SDK calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an event was rejected.
///
/// Returning `Err` from a transform function rejects the event it was called with: the host sends
/// the event to the pipeline's dead-letter sink, recorded with this error's text (its
/// [`Display`](fmt::Display)) as the reason, and everything the function emitted or wrote to keyed
/// state for that event is discarded.
///
/// Errors from `serde_json` convert with `?` and keep the distinction between a body that is not
/// JSON at all and one that does not match the expected shape:
///
/// | body                          | reason                                                      |
/// |-------------------------------|-------------------------------------------------------------|
/// | `{"Temperature": 21.5`        | ``malformed JSON: EOF while parsing an object at line 1 column 20`` |
/// | `{}`                          | ``missing field `Temperature` ``                            |
/// | `{"Temperature": "hot"}`      | ``invalid type: string "hot", expected f64 at line 1 column 21`` |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    reason: Cow<'static, str>,
}

impl Error {
    /// Rejects the event with `reason`, in the plugin author's words.
    ///
    /// ```
    /// # use weir_sdk::Error;
    /// let error = Error::reject("temperature sensor reported a fault");
    /// assert_eq!(error.to_string(), "temperature sensor reported a fault");
    /// ```
    pub fn reject(reason: impl Into<Cow<'static, str>>) -> Self {
        Error {
            reason: reason.into(),
        }
    }

    /// The rejection reason.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// This error with `context` and `": "` put in front of its reason.
    pub fn context(self, context: impl fmt::Display) -> Self {
        Error::reject(format!("{context}: {}", self.reason))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Error {}

impl From<serde_json::Error> for Error {
    /// Turns a JSON error into a readable reason: `malformed JSON: ...` when the text is not JSON,
    /// serde's own words when the JSON does not have the expected shape. A missing field is
    /// reported without a position (serde points at the end of the object, which only confuses).
    fn from(error: serde_json::Error) -> Self {
        use serde_json::error::Category;
        let text = error.to_string();
        let reason = match error.classify() {
            Category::Syntax | Category::Eof => format!("malformed JSON: {text}"),
            Category::Data if text.starts_with("missing field") => {
                let location = format!(" at line {} column {}", error.line(), error.column());
                match text.strip_suffix(&location) {
                    Some(message) => message.to_owned(),
                    None => text,
                }
            }
            Category::Data | Category::Io => text,
        };
        Error::reject(reason)
    }
}

impl From<std::str::Utf8Error> for Error {
    fn from(error: std::str::Utf8Error) -> Self {
        Error::reject(format!("not valid UTF-8: {error}"))
    }
}

impl From<&'static str> for Error {
    fn from(reason: &'static str) -> Self {
        Error::reject(reason)
    }
}

impl From<String> for Error {
    fn from(reason: String) -> Self {
        Error::reject(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    #[allow(dead_code)]
    struct Reading {
        temperature: f64,
    }

    fn reason(body: &str) -> String {
        match serde_json::from_str::<Reading>(body) {
            Ok(reading) => panic!("{body} parsed as {reading:?}"),
            Err(e) => Error::from(e).to_string(),
        }
    }

    #[test]
    fn json_errors_read_well() {
        assert_eq!(reason("{}"), "missing field `Temperature`");
        assert_eq!(
            reason(r#"{"Temperature": "hot"}"#),
            r#"invalid type: string "hot", expected f64 at line 1 column 21"#
        );
        assert_eq!(
            reason(r#"{"Temperature": 21.5"#),
            "malformed JSON: EOF while parsing an object at line 1 column 20"
        );
        assert_eq!(
            reason("not json"),
            "malformed JSON: expected ident at line 1 column 2"
        );
    }

    #[test]
    fn context_prefixes_the_reason() {
        let error = Error::reject("missing field `x`").context("invalid stage config");
        assert_eq!(error.reason(), "invalid stage config: missing field `x`");
    }
}
