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
    /// The plugin's name: its crate's (`weir plugin build`), else its file's.
    #[serde(skip_serializing_if = "Option::is_none")]
    plugin: Option<&'a str>,
    /// The version of the plugin's crate, when its component records it.
    #[serde(skip_serializing_if = "Option::is_none")]
    plugin_crate_version: Option<&'a str>,
    /// The versions of the plugin stages the event went through, this one last
    /// (`stage@crate-version+hash,...`): the stages before it when records are labelled (a sink
    /// reads `plugin_version` or `plugin_versions`), else this one alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    plugin_versions: Option<String>,
    partition: u32,
    position: u64,
    /// With several sources, for an event set aside before their merge (it could not be
    /// decoded, or its source's clock dropped it): its source, and its position in that source
    /// (`position` is then the partition's merged position when it was read).
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_position: Option<u64>,
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
    /// The plugin involved, if any (its name, crate version and lineage entry).
    pub plugin: Option<&'a LetterPlugin>,
}

/// The plugin of the stage that refused an event, as its dead letter names it.
#[derive(Debug, Clone)]
pub struct LetterPlugin {
    /// Its name: its crate's, else its file's.
    pub name: String,
    /// Its crate's version, when its component records it.
    pub crate_version: Option<String>,
    /// Its content hash.
    pub version: String,
}

impl LetterPlugin {
    /// The plugin `stage` runs now, if it runs one.
    pub fn of(stage: &dyn crate::stage::Stage) -> Option<LetterPlugin> {
        let plugin = stage.running_plugin()?;
        let package = plugin.package();
        Some(LetterPlugin {
            name: package.map_or_else(|| plugin.name().to_string(), |p| p.name.clone()),
            crate_version: package.map(|p| p.version.clone()),
            version: plugin.version().to_string(),
        })
    }

    /// Its entry in a lineage when `version` made the record (`stage@crate-version+hash`, or
    /// `stage@hash` for another version or a component without a crate version).
    fn entry(&self, stage: &str, version: &str) -> String {
        match &self.crate_version {
            Some(crate_version) if version == self.version => {
                format!("{stage}@{crate_version}+{version}")
            }
            _ => format!("{stage}@{version}"),
        }
    }
}

/// The dead-letter record for `event`: same partition, position and times, body = envelope JSON.
pub fn dead_letter(
    event: &Event,
    kind: DeadLetterKind,
    reason: &str,
    origin: DeadLetterOrigin<'_>,
) -> Event {
    letter(event, kind, reason, origin, None)
}

/// The dead-letter record for `event` of a pipeline with several sources, set aside before their
/// merge gave it a position of the partition: its position is `merged`, the partition's position
/// when it was read (the positions of the partition's other records and dead letters, which
/// sinks such as Delta order by), and the envelope keeps its source and its position there.
pub(crate) fn dead_letter_before_merge(
    event: &Event,
    kind: DeadLetterKind,
    reason: &str,
    origin: DeadLetterOrigin<'_>,
    merged: crate::event::Position,
) -> Event {
    letter(event, kind, reason, origin, Some(merged))
}

fn letter(
    event: &Event,
    kind: DeadLetterKind,
    reason: &str,
    origin: DeadLetterOrigin<'_>,
    merged: Option<crate::event::Position>,
) -> Event {
    let text = std::str::from_utf8(&event.body).ok();
    // The plugin is named only for the version it runs (a fallback's letter names its hash).
    let plugin = origin
        .plugin
        .filter(|p| origin.plugin_version.is_none_or(|v| v == p.version));
    let plugin_versions = match (origin.stage, origin.plugin_version, origin.plugin) {
        (Some(stage), Some(version), Some(plugin)) => Some(crate::stage::lineage(
            crate::stage::labelled_lineage(event),
            &plugin.entry(stage, version),
        )),
        _ => crate::stage::labelled_lineage(event).map(str::to_owned),
    };
    let envelope = Envelope {
        kind,
        reason,
        pipeline: origin.pipeline,
        stage: origin.stage,
        sink: origin.sink,
        plugin_version: origin.plugin_version,
        plugin: plugin.map(|p| p.name.as_str()),
        plugin_crate_version: plugin.and_then(|p| p.crate_version.as_deref()),
        plugin_versions,
        partition: event.partition,
        position: merged.unwrap_or(event.position),
        source: merged.map(|_| &*event.source),
        source_position: merged.map(|_| event.position),
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
        position: merged.unwrap_or(event.position),
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
            plugin: None,
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

    #[test]
    fn a_letter_set_aside_before_the_merge_has_the_merged_position_and_its_source_s() {
        let mut event = Event::new(1, 90_210, &b"{\"a\":"[..]);
        event.source = "payments".into();
        let origin = DeadLetterOrigin {
            pipeline: "bookings",
            stage: None,
            sink: None,
            plugin_version: None,
            plugin: None,
        };
        let letter =
            dead_letter_before_merge(&event, DeadLetterKind::Malformed, "bad JSON", origin, 41);
        let value: serde_json::Value = serde_json::from_slice(&letter.body).expect("json");
        assert_eq!(letter.position, 41);
        assert_eq!(value["position"], 41);
        assert_eq!(value["source"], "payments");
        assert_eq!(value["source_position"], 90_210);
        // A letter of one source keeps its envelope as it was.
        let letter = dead_letter(&event, DeadLetterKind::Malformed, "bad JSON", origin);
        let value: serde_json::Value = serde_json::from_slice(&letter.body).expect("json");
        assert_eq!(value["position"], 90_210);
        assert!(value.get("source").is_none() && value.get("source_position").is_none());
    }

    #[test]
    fn a_letter_names_the_plugin_and_the_versions_the_event_went_through() {
        let mut event = Event::new(0, 5, &b"{}"[..]);
        event.properties.push((
            crate::stage::PLUGIN_VERSIONS_PROPERTY.to_owned(),
            "categorize@1.2.0+aaaaaaaaaaaa".to_owned(),
        ));
        let plugin = LetterPlugin {
            name: "booking-join".into(),
            crate_version: Some("0.3.0".into()),
            version: "bbbbbbbbbbbb".into(),
        };
        let origin = DeadLetterOrigin {
            pipeline: "bookings",
            stage: Some("join"),
            sink: None,
            plugin_version: Some("bbbbbbbbbbbb"),
            plugin: Some(&plugin),
        };
        let letter = dead_letter(&event, DeadLetterKind::Rejected, "no seat", origin);
        let value: serde_json::Value = serde_json::from_slice(&letter.body).expect("json");
        assert_eq!(value["plugin"], "booking-join");
        assert_eq!(value["plugin_crate_version"], "0.3.0");
        assert_eq!(
            value["plugin_versions"],
            "categorize@1.2.0+aaaaaaaaaaaa,join@0.3.0+bbbbbbbbbbbb"
        );
        // A letter of the fallback version names its hash only.
        let origin = DeadLetterOrigin {
            plugin_version: Some("cccccccccccc"),
            ..origin
        };
        let letter = dead_letter(&event, DeadLetterKind::Trap, "trapped", origin);
        let value: serde_json::Value = serde_json::from_slice(&letter.body).expect("json");
        assert!(value.get("plugin").is_none(), "{value}");
        assert_eq!(
            value["plugin_versions"],
            "categorize@1.2.0+aaaaaaaaaaaa,join@cccccccccccc"
        );
    }

    #[test]
    fn a_lineage_keeps_each_entry_once_in_order() {
        use crate::stage::lineage;
        assert_eq!(lineage(["a@1", "b@2,a@1"], "c@3"), "a@1,b@2,c@3");
        assert_eq!(lineage(None, "c@3"), "c@3");
        assert_eq!(lineage(["c@3"], "c@3"), "c@3");
    }
}
