//! A string field borrowed from the event's body whenever it can be.

use std::borrow::{Borrow, Cow};
use std::fmt;
use std::ops::Deref;

use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde::{Serialize, Serializer};

/// A JSON string, borrowed from the event's body when it has no escapes and copied when it has.
///
/// Deserializing a body into a struct with `Text<'a>` fields costs no allocation for ordinary
/// strings, and still accepts `"caf\u00e9"` or `"a \"quoted\" word"`, which a `&'a str` field
/// rejects. It is what `#[serde(borrow)] Cow<'a, str>` does, except that it keeps borrowing
/// inside an `Option` (serde borrows a `Cow` only when it is the field's whole type). Mark
/// fields with `#[serde(borrow)]`:
///
/// ```
/// use weir_sdk::Text;
/// use weir_sdk::prelude::*;
///
/// #[derive(Deserialize)]
/// #[serde(rename_all = "PascalCase")]
/// struct Reading<'a> {
///     #[serde(borrow)]
///     device_id: Text<'a>,
///     #[serde(borrow, default)]
///     location: Option<Text<'a>>,
/// }
///
/// let body = br#"{"DeviceId": "device-7", "Location": "caf\u00e9"}"#;
/// let reading: Reading = serde_json::from_slice(body)?;
/// assert_eq!(reading.device_id, "device-7");
/// assert!(reading.device_id.is_borrowed());
/// assert_eq!(reading.location.as_deref(), Some("café"));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Text<'a>(Cow<'a, str>);

impl<'a> Text<'a> {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the text points into the event's body (no copy was made).
    pub fn is_borrowed(&self) -> bool {
        matches!(self.0, Cow::Borrowed(_))
    }

    /// The text as an owned `String`.
    pub fn into_owned(self) -> String {
        self.0.into_owned()
    }

    /// The text as a `Cow`.
    pub fn into_cow(self) -> Cow<'a, str> {
        self.0
    }
}

impl Deref for Text<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Text<'_> {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Text<'_> {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for Text<'_> {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for Text<'_> {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl<'a> From<&'a str> for Text<'a> {
    fn from(text: &'a str) -> Self {
        Text(Cow::Borrowed(text))
    }
}

impl From<String> for Text<'_> {
    fn from(text: String) -> Self {
        Text(Cow::Owned(text))
    }
}

impl Serialize for Text<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;

        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(text)))
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }

            fn visit_string<E: de::Error>(self, text: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(text)))
            }
        }

        deserializer.deserialize_str(TextVisitor)
    }
}
