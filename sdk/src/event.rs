//! One input event, borrowed from the batch the host sent.

use serde::Deserialize;

use crate::bindings::Property;
use crate::error::Result;

/// One input event.
///
/// An `Event` borrows everything from the batch the host sent: its body is a slice of the batch's
/// body buffer, so [`Event::json`] can deserialize straight from it, with `&'a str` (or, better,
/// `Cow<'a, str>`) fields that point into the batch and cost no allocation.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    pub(crate) body: &'a [u8],
    pub(crate) key: &'a [u8],
    pub(crate) properties: &'a [Property],
    pub(crate) time: i64,
    pub(crate) enqueued_time: i64,
    pub(crate) position: u64,
    pub(crate) partition: u32,
}

impl<'a> Event<'a> {
    /// The body, as the source delivered it (usually one JSON object).
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// The body as text; rejects the event with `not valid UTF-8: ...` when it is not UTF-8.
    pub fn body_str(&self) -> Result<&'a str> {
        Ok(std::str::from_utf8(self.body)?)
    }

    /// The body deserialized from JSON, borrowing from the batch where `T` allows it.
    ///
    /// A body that is not JSON gives the reason `malformed JSON: ...`; one that does not match `T`
    /// gives serde's reason, such as ``missing field `Temperature` `` (see [`crate::Error`]).
    ///
    /// Borrowed string fields: `&'a str` fails on strings that contain escapes (`\"`, `\n`,
    /// `\u00e9`), because those must be unescaped into a new string. Use [`Text<'a>`](crate::Text)
    /// (or `Cow<'a, str>`) with `#[serde(borrow)]`: it borrows when it can and allocates only when
    /// it must.
    ///
    /// ```
    /// use weir_sdk::prelude::*;
    ///
    /// #[derive(Deserialize)]
    /// #[serde(rename_all = "PascalCase")]
    /// struct Reading<'a> {
    ///     #[serde(borrow)]
    ///     device_id: Text<'a>,
    ///     temperature: f64,
    /// }
    ///
    /// fn celsius(event: &Event) -> Result<f64> {
    ///     let reading: Reading = event.json()?;
    ///     Ok(reading.temperature)
    /// }
    /// # let _ = celsius;
    /// ```
    pub fn json<T: Deserialize<'a>>(&self) -> Result<T> {
        Ok(serde_json::from_slice(self.body)?)
    }

    /// The body parsed as a generic JSON value (allocates; prefer [`Event::json`] with a struct).
    pub fn value(&self) -> Result<serde_json::Value> {
        self.json()
    }

    /// The partition key, or `None` when the event has none (or it is not UTF-8; see
    /// [`Event::key_bytes`]).
    pub fn key(&self) -> Option<&'a str> {
        if self.key.is_empty() {
            None
        } else {
            std::str::from_utf8(self.key).ok()
        }
    }

    /// The partition key as bytes; empty when the event has none.
    pub fn key_bytes(&self) -> &'a [u8] {
        self.key
    }

    /// Event time in milliseconds since the Unix epoch: the pipeline's time field (its
    /// `TIMESTAMP BY`), or the enqueued time when it has none.
    pub fn time(&self) -> i64 {
        self.time
    }

    /// When the event entered Weir or its broker, in milliseconds since the Unix epoch.
    pub fn enqueued_time(&self) -> i64 {
        self.enqueued_time
    }

    /// The event's position (offset or sequence number) in its source partition.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The source partition the event comes from.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The value of application property `name` (an Event Hubs property, a Kafka header, an HTTP
    /// header), if the event has it.
    pub fn property(&self, name: &str) -> Option<&'a str> {
        self.properties
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.value.as_str())
    }

    /// All application properties of the event, as (name, value) pairs.
    pub fn properties(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.properties
            .iter()
            .map(|p| (p.name.as_str(), p.value.as_str()))
    }
}
