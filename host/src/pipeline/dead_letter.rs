//! The record a dead-letter sink receives: the original event, why it was set aside, and where it
//! came from.

use bytes::Bytes;
use serde::Serialize;

use crate::event::Event;
use crate::stage::RejectionKind;

/// Why an event went to the dead-letter sink, as a short label for metrics and searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterKind {
    /// The body is not well-formed JSON (found by the host).
    Malformed,
    /// The body is larger than the pipeline's `max_event_bytes`.
    Oversized,
    /// The event time could not be read.
    EventTime,
    /// The event was beyond an event-time tolerance whose policy is `drop` (see [`crate::time`]),
    /// or came for a window or join that had already closed.
    Late,
    /// The plugin rejected the event.
    Rejected,
    /// The plugin trapped on the event (panic, deadline, memory limit).
    Trap,
    /// A stage emitted to an output with no route.
    Unrouted,
    /// A sink could not take the record.
    SinkRefused,
    /// The source could not decode the data at these positions (a corrupt Kafka record batch);
    /// the dead letter names them and the cause, without a body.
    Undecodable,
}

impl DeadLetterKind {
    /// Every kind.
    pub const ALL: [DeadLetterKind; 9] = [
        DeadLetterKind::Malformed,
        DeadLetterKind::Oversized,
        DeadLetterKind::EventTime,
        DeadLetterKind::Late,
        DeadLetterKind::Rejected,
        DeadLetterKind::Trap,
        DeadLetterKind::Unrouted,
        DeadLetterKind::SinkRefused,
        DeadLetterKind::Undecodable,
    ];

    /// The label used in metrics.
    pub fn label(self) -> &'static str {
        match self {
            DeadLetterKind::Malformed => "malformed",
            DeadLetterKind::Oversized => "oversized",
            DeadLetterKind::EventTime => "event_time",
            DeadLetterKind::Late => "late",
            DeadLetterKind::Rejected => "rejected",
            DeadLetterKind::Trap => "trap",
            DeadLetterKind::Unrouted => "unrouted",
            DeadLetterKind::SinkRefused => "sink_refused",
            DeadLetterKind::Undecodable => "undecodable",
        }
    }
}

impl From<RejectionKind> for DeadLetterKind {
    /// The dead letter's kind for an event a stage refused.
    fn from(kind: RejectionKind) -> Self {
        match kind {
            RejectionKind::Trap => DeadLetterKind::Trap,
            RejectionKind::Late => DeadLetterKind::Late,
            RejectionKind::Plugin | RejectionKind::InvalidOutput | RejectionKind::Unreadable => {
                DeadLetterKind::Rejected
            }
        }
    }
}

/// What a dead letter records.
#[derive(Debug, Serialize)]
struct Envelope<'a> {
    kind: DeadLetterKind,
    reason: &'a str,
    pipeline: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    stage: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sink: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plugin_version: Option<&'a str>,
    partition: u32,
    position: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_time: Option<i64>,
    enqueued_time: i64,
    dead_lettered_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    /// The original body as text, when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
    /// The original body in hex, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    body_hex: Option<String>,
}

/// Where a dead letter came from.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetterOrigin<'a> {
    /// Pipeline name.
    pub pipeline: &'a str,
    /// Stage that rejected or trapped on the event, if any.
    pub stage: Option<&'a str>,
    /// Sink that refused the record, if any.
    pub sink: Option<&'a str>,
    /// Version of the plugin involved, if any.
    pub plugin_version: Option<&'a str>,
}

/// The dead-letter record for `event`: same partition, position and times, body = envelope JSON.
pub fn dead_letter(
    event: &Event,
    kind: DeadLetterKind,
    reason: &str,
    origin: DeadLetterOrigin<'_>,
) -> Event {
    let text = std::str::from_utf8(&event.body).ok();
    let envelope = Envelope {
        kind,
        reason,
        pipeline: origin.pipeline,
        stage: origin.stage,
        sink: origin.sink,
        plugin_version: origin.plugin_version,
        partition: event.partition,
        position: event.position,
        event_time: event.event_time,
        enqueued_time: event.enqueued_time,
        dead_lettered_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        key: event
            .key
            .as_ref()
            .map(|k| String::from_utf8_lossy(k).into_owned()),
        body: text,
        body_hex: match text {
            Some(_) => None,
            None => Some(event.body.iter().map(|b| format!("{b:02x}")).collect()),
        },
    };
    // Serialising plain strings and numbers cannot fail; keep the reason if it somehow does.
    let body = serde_json::to_vec(&envelope).unwrap_or_else(|e| {
        format!("{{\"reason\":\"cannot encode dead letter: {e}\"}}").into_bytes()
    });
    Event {
        partition: event.partition,
        position: event.position,
        source: event.source.clone(),
        key: event.key.clone(),
        event_time: event.event_time,
        enqueued_time: event.enqueued_time,
        properties: Vec::new(),
        body: Bytes::from(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_keeps_the_original_and_its_origin() {
        let mut event = Event::new(2, 17, &b"{\"a\":"[..]);
        event.key = Some(Bytes::from_static(b"dev-1"));
        let origin = DeadLetterOrigin {
            pipeline: "telemetry",
            stage: Some("anomaly"),
            sink: None,
            plugin_version: Some("abc123"),
        };
        let letter = dead_letter(
            &event,
            DeadLetterKind::Rejected,
            "missing field `Temperature`",
            origin,
        );
        let value: serde_json::Value = serde_json::from_slice(&letter.body).expect("json");
        assert_eq!(value["kind"], "rejected");
        assert_eq!(value["reason"], "missing field `Temperature`");
        assert_eq!(value["stage"], "anomaly");
        assert_eq!(value["plugin_version"], "abc123");
        assert_eq!(value["partition"], 2);
        assert_eq!(value["position"], 17);
        assert_eq!(value["key"], "dev-1");
        assert_eq!(value["body"], "{\"a\":");
        assert_eq!((letter.partition, letter.position), (2, 17));

        let binary = Event::new(0, 1, &[0xff, 0x00][..]);
        let letter = dead_letter(&binary, DeadLetterKind::Malformed, "not UTF-8", origin);
        let value: serde_json::Value = serde_json::from_slice(&letter.body).expect("json");
        assert_eq!(value["body_hex"], "ff00");
        assert!(value.get("body").is_none());
    }
}
