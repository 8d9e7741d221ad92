//! One input event, borrowed from the batch the host sent.

use serde::Deserialize;

use crate::bindings::Property;
use crate::error::Result;
use crate::projection::{self, Projected};
use crate::time::Timestamp;

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
    pub(crate) source: &'a str,
    /// The fields the host projected out of the body, when it did.
    pub(crate) projected: Option<Projected<'a>>,
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
    ///
    /// A struct is read from the few fields the host cut out of the body for this plugin, when it
    /// did (the typed projection: the SDK asks the host for the fields of the structs it is
    /// given), which gives the same value or else falls back to the body; see the README's
    /// plugin section for what is projected and when.
    pub fn json<T: Deserialize<'a>>(&self) -> Result<T> {
        if let Some(value) = projection::read::<T>(self.projected) {
            return Ok(value);
        }
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

    /// Event time as a [`Timestamp`], for its calendar parts (UTC):
    ///
    /// ```
    /// use std::time::Duration;
    /// use weir_sdk::prelude::*;
    ///
    /// fn day_and_hour(event: &Event) -> (&'static str, u32) {
    ///     let time = event.timestamp();
    ///     (time.weekday_name(), time.hour()) // ("Sunday", 18)
    /// }
    ///
    /// fn five_minute_bucket(event: &Event) -> String {
    ///     event.timestamp().truncate(Duration::from_secs(300)).to_string() // "2026-11-22T18:30:00Z"
    /// }
    /// # let _ = (day_and_hour, five_minute_bucket);
    /// ```
    pub fn timestamp(&self) -> Timestamp {
        Timestamp::from_epoch_millis(self.time)
    }

    /// The top-level body field `name` read as a timestamp: an RFC 3339 string (or any text
    /// [`Timestamp::parse`] reads) or a number of epoch milliseconds.
    ///
    /// Rejects the event with the reason when the body is not a JSON object, the field is
    /// missing (``missing field `ShowTime` ``), or its value is not a timestamp
    /// (`ShowTime: invalid timestamp "soon": expected RFC 3339, ...`). To read several fields at once, put a
    /// [`Timestamp`] field in the struct given to [`Event::json`] instead.
    pub fn field_time(&self, name: &str) -> Result<Timestamp> {
        let mut deserializer = serde_json::Deserializer::from_slice(self.body);
        let found =
            serde::de::DeserializeSeed::deserialize(FieldValue { name }, &mut deserializer)?;
        deserializer.end()?;
        let value = found.ok_or_else(|| crate::Error::reject(format!("missing field `{name}`")))?;
        // Read outside serde, so the reason names the field rather than a column of the body.
        Timestamp::from_json(&value).map_err(|error| crate::Error::from(error).context(name))
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

    /// The name of the source the event comes from, as the pipeline's configuration names it
    /// (`bookings`, `payments`): a pipeline with several sources tells them apart by it. Empty
    /// when the host did not say (a record made by an earlier stage from no single event).
    pub fn source(&self) -> &'a str {
        self.source
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

/// Finds one field of a JSON object and takes its value, skipping the others without building
/// them.
struct FieldValue<'n> {
    name: &'n str,
}

impl<'de> serde::de::DeserializeSeed<'de> for FieldValue<'_> {
    type Value = Option<serde_json::Value>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FieldValue<'_> {
    type Value = Option<serde_json::Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(is_it) = map.next_key_seed(KeyIs(self.name))? {
            if is_it && found.is_none() {
                found = Some(map.next_value::<serde_json::Value>()?);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// Compares an object key with a name, without allocating for it (unless it has escapes).
struct KeyIs<'n>(&'n str);

impl<'de> serde::de::DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.0)
    }
}
