//! The typed projection: reading an event's struct from the fields the host extracted natively.
//!
//! The host can hand a batch's events with some of their top-level fields already cut out of the
//! bodies (`event-batch.field-names` in `wit/plugin.wit`): each value's JSON text, a few bytes
//! long. [`Event::json`](crate::Event::json) then deserializes a struct from those slices instead
//! of scanning the whole body, which is most of a light rule's time inside Wasm.
//!
//! Which fields: the SDK learns them from the types plugins read. The first time
//! [`Event::json`](crate::Event::json) is asked for a type, a probe deserializes it from an empty
//! stand-in to see its shape: a struct (serde's `deserialize_struct`) gives its field names
//! (aliases included), and the union of all of them goes back to the host in
//! `output-batch.wanted-fields`; the host projects them from the next batch on.
//!
//! The projected path never changes an answer. It is taken only for structs that accept unknown
//! fields (a struct with `deny_unknown_fields` must see the whole body to refuse it, which the
//! probe detects); anything else (a map, `serde_json::Value`, an enum, a struct with
//! `#[serde(flatten)]`) reads the body. Each value is deserialized from its own slice as serde_json
//! would (plain strings and numbers directly, the rest by serde_json: `projection/value.rs`), so
//! its meaning (and what `&'a str` or `Text<'a>` borrow) is serde_json's. On any error
//! from the projected path (a missing field, a wrong type), the body is read as without
//! projection, so rejection reasons, with their line and column, are serde_json's on the body.
//! What is left: the struct's `Deserialize` sees its fields in their declaration order rather
//! than the body's, which only a hand-written `visit_map` could tell apart.

use std::cell::RefCell;
use std::fmt;

use serde::de::value::BorrowedStrDeserializer;
use serde::de::{self, Deserialize, DeserializeSeed, MapAccess, Visitor};

use crate::bindings::EventBatch;
use crate::columns::{self, u32_at};

mod value;

use value::ProjectedValue;

/// One event's projected values: the host's layout, already checked to cover every name.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Projected<'a> {
    values: &'a [u8],
    /// The end of each of this event's values in `values`, one per usable name (a `u32s` column).
    ends: &'a [u8],
    /// Where the first value starts (the others start one past the previous one's end: past
    /// the comma between them).
    start: usize,
}

impl<'a> Projected<'a> {
    /// The JSON text of value `index`; empty when the body does not have the field, `None` when
    /// the layout is out of range.
    fn value(&self, index: usize) -> Option<&'a [u8]> {
        // Entries are separated by one comma (`event-batch.field-values`).
        let start = match index.checked_sub(1) {
            Some(previous) => (u32_at(self.ends, previous)? as usize).checked_add(1)?,
            None => self.start,
        };
        let end = u32_at(self.ends, index)? as usize;
        self.values.get(start..end)
    }
}

/// A batch's projection, when this instance can use it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchProjection<'a> {
    values: &'a [u8],
    /// A `u32s` column.
    ends: &'a [u8],
    /// A `bools` column.
    projected: &'a [u8],
    /// How many of the batch's names the SDK's indices can use (a prefix of the wanted list).
    names: usize,
}

impl<'a> BatchProjection<'a> {
    /// The projection of `batch`, or `None` when it has none, its names are not the ones this
    /// instance asked for (a projection asked for before it learnt more fields is still used
    /// for the fields it has), or its layout does not add up.
    pub(crate) fn of(batch: &'a EventBatch) -> Option<Self> {
        let names = batch.field_names.len();
        if names == 0 {
            return None;
        }
        let events = columns::u32_count(&batch.body_ends);
        if batch.projected.len() != events
            || batch.field_ends.len() != events.checked_mul(names)?.checked_mul(4)?
        {
            return None;
        }
        let known = REGISTRY.with_borrow(|registry| {
            registry.wanted.len() >= names
                && registry.wanted[..names]
                    .iter()
                    .zip(&batch.field_names)
                    .all(|(wanted, name)| wanted == name)
        });
        known.then_some(BatchProjection {
            values: &batch.field_values,
            ends: &batch.field_ends,
            projected: &batch.projected,
            names,
        })
    }

    /// Event `index`'s values, when the host projected them.
    pub(crate) fn event(&self, index: usize) -> Option<Projected<'a>> {
        if !columns::bool_at(self.projected, index)? {
            return None;
        }
        let first = index.checked_mul(self.names)?;
        let start = match first.checked_sub(1) {
            Some(previous) => (u32_at(self.ends, previous)? as usize).checked_add(1)?,
            None => 0,
        };
        Some(Projected {
            values: self.values,
            ends: self.ends.get(first * 4..(first + self.names) * 4)?,
            start,
        })
    }
}

/// What the SDK knows of a type read with [`Event::json`](crate::Event::json).
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// Read from the body, always.
    Body,
    /// A struct that ignores unknown fields.
    Struct {
        /// Its field names, as serde's derive lists them (aliases included).
        fields: &'static [&'static str],
        /// The index of each of them in the wanted list.
        indices: &'static [usize],
        /// One past the largest index: a batch needs that many names.
        needs: usize,
    },
}

/// The types seen in this instance and the fields they read.
#[derive(Debug, Default)]
struct Registry {
    /// Each type by its name, with its shape.
    types: Vec<(&'static str, Shape)>,
    /// The union of the structs' fields, in the order they were learnt.
    wanted: Vec<String>,
}

thread_local! {
    /// The instance's registry (a component has one thread; native tests one per test).
    static REGISTRY: RefCell<Registry> = RefCell::new(Registry::default());
}

/// The fields to ask the host for: every field of every struct read so far.
pub(crate) fn wanted_fields() -> Vec<String> {
    REGISTRY.with_borrow(|registry| registry.wanted.clone())
}

/// The shape of `T`, probed the first time it is asked for.
fn shape<'de, T: Deserialize<'de>>() -> Shape {
    let name = std::any::type_name::<T>();
    let known = REGISTRY.with_borrow(|registry| {
        registry
            .types
            .iter()
            .find(|(known, _)| std::ptr::eq(*known, name) || *known == name)
            .map(|(_, shape)| *shape)
    });
    if let Some(shape) = known {
        return shape;
    }
    let shape = match probe::<T>() {
        Some(fields) => REGISTRY.with_borrow_mut(|registry| {
            let indices: Vec<usize> = fields
                .iter()
                .map(
                    |field| match registry.wanted.iter().position(|wanted| wanted == field) {
                        Some(index) => index,
                        None => {
                            registry.wanted.push((*field).to_owned());
                            registry.wanted.len() - 1
                        }
                    },
                )
                .collect();
            let needs = indices.iter().max().map_or(0, |max| max + 1);
            // Leaked once per type and instance: a handful of small slices.
            Shape::Struct {
                fields,
                indices: Box::leak(indices.into_boxed_slice()),
                needs,
            }
        }),
        None => Shape::Body,
    };
    REGISTRY.with_borrow_mut(|registry| registry.types.push((name, shape)));
    shape
}

/// Reads `T` from the event's projection; `None` when it cannot (the caller reads the body).
pub(crate) fn read<'de, T: Deserialize<'de>>(projected: Option<Projected<'de>>) -> Option<T> {
    let Shape::Struct {
        fields,
        indices,
        needs,
    } = shape::<T>()
    else {
        return None;
    };
    let projected = projected?;
    if columns::u32_count(projected.ends) < needs {
        return None;
    }
    let value = T::deserialize(ProjectedStruct {
        projected,
        fields,
        indices,
    })
    .ok();
    #[cfg(test)]
    if value.is_some() {
        tests::PROJECTED_READS.set(tests::PROJECTED_READS.get() + 1);
    }
    value
}

/// Why the projected path gave up (never shown: the body is read instead).
#[derive(Debug)]
enum GiveUp {
    /// The type refused a field it does not know (probe only).
    UnknownField,
    /// Anything else.
    Other,
}

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not read from the projection")
    }
}

impl std::error::Error for GiveUp {}

impl de::Error for GiveUp {
    fn custom<M: fmt::Display>(_: M) -> Self {
        GiveUp::Other
    }

    fn unknown_field(_: &str, _: &'static [&'static str]) -> Self {
        GiveUp::UnknownField
    }
}

/// The fields of `T` when it is a struct that ignores unknown fields: deserialized once from a
/// stand-in that says "struct" and offers one field no type has.
fn probe<'de, T: Deserialize<'de>>() -> Option<&'static [&'static str]> {
    let mut seen = None;
    let result = T::deserialize(Probe { seen: &mut seen });
    match result {
        Err(GiveUp::UnknownField) => None,
        _ => seen,
    }
}

/// The name no struct has, offered to the probed type.
const PROBE_FIELD: &str = "\u{0}weir-sdk projection probe\u{0}";

struct Probe<'s> {
    seen: &'s mut Option<&'static [&'static str]>,
}

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = GiveUp;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, GiveUp> {
        Err(GiveUp::Other)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, GiveUp> {
        *self.seen = Some(fields);
        visitor.visit_map(ProbeMember { offered: false })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// The probe's one member: [`PROBE_FIELD`], with a value that is nothing but ignorable.
struct ProbeMember {
    offered: bool,
}

impl<'de> MapAccess<'de> for ProbeMember {
    type Error = GiveUp;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, GiveUp> {
        if std::mem::replace(&mut self.offered, true) {
            return Ok(None);
        }
        seed.deserialize(BorrowedStrDeserializer::new(PROBE_FIELD))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, GiveUp> {
        seed.deserialize(Ignorable)
    }
}

/// A value only `IgnoredAny` accepts.
struct Ignorable;

impl<'de> de::Deserializer<'de> for Ignorable {
    type Error = GiveUp;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, GiveUp> {
        Err(GiveUp::Other)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier
    }
}

/// An event as a struct of its projected fields.
struct ProjectedStruct<'a> {
    projected: Projected<'a>,
    fields: &'static [&'static str],
    indices: &'static [usize],
}

impl<'de> de::Deserializer<'de> for ProjectedStruct<'de> {
    type Error = GiveUp;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, GiveUp> {
        Err(GiveUp::Other)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, GiveUp> {
        // The fields probed under this type's name; another type of the same name reads the body.
        if !(std::ptr::eq(fields, self.fields) || fields == self.fields) {
            return Err(GiveUp::Other);
        }
        visitor.visit_map(ProjectedMembers {
            projected: self.projected,
            fields,
            indices: self.indices,
            next: 0,
            value: None,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// The fields the event has, in the struct's order, each value read as serde_json reads it.
struct ProjectedMembers<'a> {
    projected: Projected<'a>,
    fields: &'static [&'static str],
    indices: &'static [usize],
    next: usize,
    value: Option<&'a [u8]>,
}

impl<'de> MapAccess<'de> for ProjectedMembers<'de> {
    type Error = GiveUp;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, GiveUp> {
        while let (Some(field), Some(&index)) =
            (self.fields.get(self.next), self.indices.get(self.next))
        {
            self.next += 1;
            let text = self.projected.value(index).ok_or(GiveUp::Other)?;
            if text.is_empty() {
                continue;
            }
            self.value = Some(text);
            return seed
                .deserialize(BorrowedStrDeserializer::new(field))
                .map(Some);
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, GiveUp> {
        let text = self.value.take().ok_or(GiveUp::Other)?;
        seed.deserialize(ProjectedValue { text })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.fields.len().saturating_sub(self.next))
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;
    use crate::Text;
    use crate::event::Event;
    use crate::testing::{TestEvent, batch_of};

    thread_local! {
        /// How many reads the projected path answered (so that a test can tell it was taken).
        pub(super) static PROJECTED_READS: Cell<usize> = const { Cell::new(0) };
    }

    /// The top-level members of a JSON object body, each key unescaped and each value as its
    /// text; `None` when the body is not one JSON object. Unlike the host's scanner, it reads
    /// bodies with escapes too: the SDK must give the body's answers whatever a host projects.
    fn members(body: &str) -> Option<Vec<(String, &str)>> {
        let parsed: serde_json::Value = serde_json::from_str(body).ok()?;
        if !parsed.is_object() {
            return None;
        }
        let bytes = body.as_bytes();
        let skip = |mut at: usize| {
            while bytes.get(at).is_some_and(u8::is_ascii_whitespace) {
                at += 1;
            }
            at
        };
        // The end of the string starting at `at` (after its closing quote).
        let string_end = |mut at: usize| {
            at += 1;
            while bytes[at] != b'"' {
                at += if bytes[at] == b'\\' { 2 } else { 1 };
            }
            at + 1
        };
        let mut found = Vec::new();
        let mut at = skip(skip(0) + 1);
        while bytes[at] != b'}' {
            let key_end = string_end(at);
            let key: String = serde_json::from_str(&body[at..key_end]).ok()?;
            at = skip(skip(key_end) + 1);
            let start = at;
            let mut depth = 0usize;
            loop {
                match bytes[at] {
                    b'"' => {
                        at = string_end(at);
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' if depth == 0 => break,
                    b'}' | b']' => depth -= 1,
                    b',' if depth == 0 => break,
                    _ => {}
                }
                at += 1;
            }
            found.push((key, body[start..at].trim_end()));
            if bytes[at] == b',' {
                at = skip(at + 1);
            }
        }
        Some(found)
    }

    /// `bodies` as a batch with `wanted` projected the way the contract says.
    fn projected_batch(bodies: &[String], wanted: &[String]) -> crate::bindings::EventBatch {
        let events: Vec<TestEvent> = bodies.iter().map(|b| TestEvent::new(b.as_str())).collect();
        let mut batch = batch_of(0, &events);
        batch.field_names = wanted.to_vec();
        for body in bodies {
            let found = members(body).filter(|found| {
                wanted
                    .iter()
                    .all(|name| found.iter().filter(|(key, _)| key == name).count() < 2)
            });
            columns::push_bool(&mut batch.projected, found.is_some());
            for name in wanted {
                if !batch.field_ends.is_empty() {
                    batch.field_values.push(b',');
                }
                if let Some(text) = found
                    .as_ref()
                    .and_then(|f| f.iter().find(|(key, _)| key == name))
                {
                    batch.field_values.extend_from_slice(text.1.as_bytes());
                }
                columns::push_u32(&mut batch.field_ends, batch.field_values.len() as u32);
            }
        }
        batch
    }

    fn event<'a>(batch: &'a crate::bindings::EventBatch, index: usize) -> Event<'a> {
        let end = |at| u32_at(&batch.body_ends, at).expect("an end") as usize;
        let start = index.checked_sub(1).map_or(0, end);
        Event {
            body: &batch.bodies[start..end(index)],
            key: &[],
            properties: &[],
            time: 0,
            enqueued_time: 0,
            position: 0,
            partition: 0,
            source: "",
            projected: BatchProjection::of(batch).and_then(|p| p.event(index)),
        }
    }

    /// Reads every body as `$t` without and then with projection (after the first reads taught
    /// the SDK the type's fields), asserting the same answer (value or reason) for each; gives
    /// how many reads went the projected way.
    macro_rules! compare {
        ($t:ty, $bodies:expr) => {{
            let bodies: &[String] = $bodies;
            let plain = projected_batch(bodies, &[]);
            let without: Vec<String> = (0..bodies.len())
                .map(|i| format!("{:?}", event(&plain, i).json::<$t>()))
                .collect();
            let wanted = wanted_fields();
            let batch = projected_batch(bodies, &wanted);
            let before = PROJECTED_READS.get();
            for (i, body) in bodies.iter().enumerate() {
                let with = format!("{:?}", event(&batch, i).json::<$t>());
                assert_eq!(with, without[i], "{body}");
            }
            PROJECTED_READS.get() - before
        }};
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "PascalCase")]
    struct Reading<'a> {
        #[serde(borrow)]
        device_id: Text<'a>,
        #[serde(borrow, default)]
        location: Option<Text<'a>>,
        temperature: f64,
        #[serde(default)]
        humidity: Option<f64>,
        #[serde(alias = "Ts")]
        timestamp: &'a str,
        #[serde(default)]
        count: u32,
        #[serde(default)]
        tags: Vec<String>,
        #[serde(default)]
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Inner {
        a: i64,
    }

    fn bodies() -> Vec<String> {
        [
            r#"{"DeviceId":"d1","Temperature":21.5,"Timestamp":"t"}"#,
            r#"{"DeviceId":"d1","Location":"Paris","Temperature":-4,"Humidity":45.25,"Timestamp":"t","Count":3,"Tags":["a","b"],"Inner":{"a":7},"Other":[1,{"x":null}]}"#,
            r#" { "Timestamp" : "t" , "Temperature" : 1e2 , "DeviceId" : "d\u00e9" } "#,
            r#"{"DeviceId":"d1","Location":null,"Temperature":21.5,"Ts":"alias"}"#,
            r#"{"DeviceId":"d1","Temperature":21.5,"Ts":"alias","Timestamp":"both"}"#,
            r#"{"DeviceId":"d1","Temperature":"hot","Timestamp":"t"}"#,
            r#"{"DeviceId":"d1","Timestamp":"t"}"#,
            r#"{"DeviceId":"d1","Temperature":null,"Timestamp":"t"}"#,
            r#"{"DeviceId":"d1","Temperature":1,"Temperature":2,"Timestamp":"t"}"#,
            r#"{"DeviceId":"d1","Temperature":1,"Timestamp":"t","Count":-1}"#,
            r#"{"DeviceId":"d1","Temperature":1,"Timestamp":"t","Count":4294967296}"#,
            r#"{"DeviceId":"d1","Temperature":1,"Timestamp":"esc\"aped"}"#,
            r#"{"DeviceId":"d1","Temperature":1,"Timestamp":"t","Inner":{"a":"x"}}"#,
            r#"{"DeviceId":"d1","Temperature":1,"Timestamp":"t""#,
            r#"{"DeviceId":"d1","Temperature":1,"Timestamp":"t"} x"#,
            r#"[1,2]"#,
            r#""text""#,
            r#"{}"#,
            r#"{"Device\u0049d":"d1","Temperature":1,"Timestamp":"t"}"#,
            r#"{"DeviceId":"d1","Temperature":-0,"Humidity":-0.0,"Timestamp":"t","Count":0}"#,
            r#"{"DeviceId":"d1","Temperature":12345678901234567,"Humidity":0.1,"Timestamp":"t"}"#,
            r#"{"DeviceId":"d1","Temperature":1.5E1,"Timestamp":"t","Count":1.0}"#,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    #[test]
    fn a_struct_reads_the_same_with_and_without_projection() {
        let projected = compare!(Reading, &bodies());
        // The valid bodies without escapes in the values a `&str` borrows went the fast way.
        assert!(projected >= 4, "{projected} reads projected");
        let wanted = wanted_fields();
        for field in ["DeviceId", "Temperature", "Timestamp", "Ts", "Inner"] {
            assert!(wanted.iter().any(|w| w == field), "{wanted:?}");
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Strict {
        #[serde(rename = "DeviceId")]
        device: String,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Flattened {
        #[serde(rename = "DeviceId")]
        device: String,
        #[serde(flatten)]
        rest: BTreeMap<String, serde_json::Value>,
    }

    #[test]
    fn types_that_must_see_the_whole_body_always_read_it() {
        let bodies = bodies();
        assert_eq!(compare!(Strict, &bodies), 0);
        assert_eq!(compare!(Flattened, &bodies), 0);
        assert_eq!(compare!(serde_json::Value, &bodies), 0);
        assert_eq!(compare!(BTreeMap<String, serde_json::Value>, &bodies), 0);
        assert!(wanted_fields().is_empty(), "{:?}", wanted_fields());
        // A struct learnt later still reads the same, from the fields it shares.
        assert!(compare!(Reading, &bodies) > 0);
    }

    #[test]
    fn a_projection_of_other_names_is_not_used() {
        let bodies = bodies();
        assert!(compare!(Reading, &bodies) > 0);
        let stale = projected_batch(&bodies, &["Temperature".to_owned()]);
        let before = PROJECTED_READS.get();
        for (i, body) in bodies.iter().enumerate() {
            let plain = serde_json::from_str::<Reading>(body).map_err(crate::Error::from);
            let read = event(&stale, i).json::<Reading>();
            assert_eq!(format!("{read:?}"), format!("{plain:?}"));
        }
        assert_eq!(PROJECTED_READS.get(), before);
    }
}
