//! A pipeline's stages: the `[[pipelines.<name>.stages]]` tables as written, their checks, and
//! what loading resolves each into: a [`StageConfig`] whose [`StageKind`] is exactly one of a
//! per-event transform, a window aggregate, an interval join or a deduplication. The file's table
//! has a key for every kind; which combinations make sense is checked here, once, so that a stage
//! of two kinds (or of none) cannot be represented past loading.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Deserialize;

use super::load::{ConfigError, Document, LoadedConfig, one_of};
use super::{ConfigDuration, PipelineConfig};

/// A stage of a pipeline, as loaded: its name, its routes and what kind of stage it is.
#[derive(Debug, Clone)]
pub struct StageConfig {
    /// Name of the stage, unique in its pipeline; it scopes the stage's keyed state.
    pub name: String,
    /// Routes: each output name of the stage to one or more sinks or later stages.
    pub outputs: BTreeMap<String, Destinations>,
    /// What the stage is, with the settings of that kind.
    pub kind: StageKind,
}

/// The kinds of stage, each with its own settings.
#[derive(Debug, Clone)]
pub enum StageKind {
    /// A per-event transform: its plugin implements the `event-transform` world.
    Transform {
        /// The plugin and its instances' settings.
        plugin: PluginStage,
    },
    /// A window aggregate: its plugin implements the `window-aggregate` world.
    Window {
        /// The plugin and its instances' settings.
        plugin: PluginStage,
        /// How events are grouped and windowed.
        window: WindowConfig,
    },
    /// An interval join: its plugin implements the `join-enrichment` world, and earlier stages
    /// route to its two inputs as `<stage>.left` and `<stage>.right`.
    Join {
        /// The plugin and its instances' settings.
        plugin: PluginStage,
        /// The key and the time bound of the join.
        join: JoinConfig,
    },
    /// A deduplication, run by the host without a plugin: it drops events whose id was seen
    /// within the horizon and sends the others to its output `events`.
    Dedup {
        /// The id field and the horizon.
        dedup: DedupConfig,
    },
}

/// The plugin of a stage that runs one, and what its instances get.
#[derive(Debug, Clone)]
pub struct PluginStage {
    /// Path of the plugin component (`.wasm`), as written (relative to the configuration file).
    pub path: PathBuf,
    /// The stage's own settings, handed to the plugin as JSON.
    pub config: Option<toml::Table>,
    /// Largest linear memory of one instance, in bytes (overrides `plugins.max_memory_bytes`).
    pub max_memory_bytes: Option<u64>,
    /// Longest one call may run (overrides `plugins.call_timeout`).
    pub call_timeout: Option<ConfigDuration>,
    /// Reference tables the plugin looks rows up in by key, by name: loaded at start and
    /// reloaded when they change.
    pub reference: BTreeMap<String, ReferenceTableConfig>,
    /// Time-to-live of the plugin's keyed state in event time: a key expires once the
    /// partition's watermark passes its last write plus this (`None`: keys never expire unless
    /// the plugin gives them a time-to-live).
    pub state_ttl: Option<ConfigDuration>,
}

impl StageKind {
    /// The stage's plugin; `None` for a stage the host runs alone (a deduplication).
    pub fn plugin(&self) -> Option<&PluginStage> {
        match self {
            StageKind::Transform { plugin }
            | StageKind::Window { plugin, .. }
            | StageKind::Join { plugin, .. } => Some(plugin),
            StageKind::Dedup { .. } => None,
        }
    }
}

impl StageConfig {
    /// The stage's plugin; `None` for a stage the host runs alone (a deduplication).
    pub fn plugin(&self) -> Option<&PluginStage> {
        self.kind.plugin()
    }

    /// Whether the stage works in event time, so that its pipeline needs a watermark (a window,
    /// a join, or a stage whose keyed state expires).
    pub fn is_time_based(&self) -> bool {
        matches!(self.kind, StageKind::Window { .. } | StageKind::Join { .. })
            || self.plugin().is_some_and(|p| p.state_ttl.is_some())
    }
}

/// A `[[pipelines.<name>.stages]]` table as written in the file: every key of every kind of stage.
/// Loading checks which combinations make sense and resolves it into a [`StageConfig`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StageTable {
    /// Name of the stage, unique in its pipeline; it scopes the stage's keyed state.
    pub(super) name: String,
    /// Path of the plugin component (`.wasm`); every stage has one except a `dedup` stage.
    #[serde(default)]
    pub(super) plugin: Option<PathBuf>,
    /// Routes: each output name of the plugin to one or more sinks or later stages.
    #[serde(default)]
    pub(super) outputs: BTreeMap<String, Destinations>,
    /// The stage's own settings, handed to the plugin as JSON.
    #[serde(default)]
    pub(super) config: Option<toml::Table>,
    /// Largest linear memory of one instance, in bytes (overrides `plugins.max_memory_bytes`).
    #[serde(default)]
    pub(super) max_memory_bytes: Option<u64>,
    /// Longest one call may run (overrides `plugins.call_timeout`).
    #[serde(default)]
    pub(super) call_timeout: Option<ConfigDuration>,
    /// Makes the stage a window aggregate: its plugin implements the `window-aggregate` world,
    /// and this says how events are grouped and windowed.
    #[serde(default)]
    pub(super) window: Option<WindowConfig>,
    /// Makes the stage a deduplication stage (no plugin): it drops events whose id was seen
    /// within the horizon and sends the others to its output `events`.
    #[serde(default)]
    pub(super) dedup: Option<DedupConfig>,
    /// Makes the stage an interval join: its plugin implements the `join-enrichment` world, and
    /// earlier stages route to its two inputs as `<stage>.left` and `<stage>.right`.
    #[serde(default)]
    pub(super) join: Option<JoinConfig>,
    /// Reference tables the stage's plugin looks rows up in by key, by name: loaded at start and
    /// reloaded when they change.
    #[serde(default)]
    pub(super) reference: BTreeMap<String, ReferenceTableConfig>,
    /// Time-to-live of the plugin's keyed state in event time (`"5m"`): a key expires once the
    /// partition's watermark passes its last write plus this.
    #[serde(default)]
    pub(super) state_ttl: Option<ConfigDuration>,
    /// Sources of the pipeline whose events enter this stage (one name or a list); a source no
    /// stage names (here, or as a join's `left` or `right`) enters the first stage.
    #[serde(default)]
    pub(super) input: Option<Destinations>,
    /// A join's left input, read straight from this source of the pipeline.
    #[serde(default)]
    pub(super) left: Option<String>,
    /// A join's right input, read straight from this source of the pipeline.
    #[serde(default)]
    pub(super) right: Option<String>,
}

/// A reference table: rows looked up by the value of one column.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceTableConfig {
    /// A CSV file with a header row, a JSON file (an array of objects, or one object per line), or
    /// the directory of a Delta table.
    pub path: PathBuf,
    /// The column whose value is the lookup key.
    pub key: String,
    /// `csv`, `json` or `delta`; absent: from the path (`.csv`, `.json` or `.jsonl`, a directory).
    #[serde(default)]
    pub format: Option<ReferenceFormat>,
    /// How often the source is checked for changes; a changed one is loaded again.
    #[serde(default = "default_reload_interval")]
    pub reload_interval: ConfigDuration,
}

fn default_reload_interval() -> ConfigDuration {
    ConfigDuration::from_millis(10_000)
}

/// Formats of reference tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferenceFormat {
    /// Comma-separated values with a header row; every value is text.
    Csv,
    /// A JSON array of objects, or JSON Lines.
    Json,
    /// A Delta table on a local path (needs the `delta` feature).
    Delta,
}

/// An interval join of two inputs on a key, in event time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinConfig {
    /// Top-level field holding the join key of left events (text or a number).
    pub key: String,
    /// Top-level field holding the join key of right events; defaults to `key`.
    #[serde(default)]
    pub right_key: Option<String>,
    /// A right event joins a left event of the same key whose event time is at most this much
    /// earlier than its own (ASA: `DATEDIFF(.., left, right) BETWEEN 0 AND within`).
    pub within: ConfigDuration,
    /// A right event may also be at most this much earlier than the left event (default: not at
    /// all).
    #[serde(default)]
    pub before: Option<ConfigDuration>,
    /// What happens to a left event still without a match once the bound has passed.
    #[serde(default = "default_unmatched_left")]
    pub unmatched_left: UnmatchedPolicy,
    /// What happens to a right event still without a match once the bound has passed.
    #[serde(default = "default_unmatched_right")]
    pub unmatched_right: UnmatchedPolicy,
}

fn default_unmatched_left() -> UnmatchedPolicy {
    UnmatchedPolicy::Emit
}
fn default_unmatched_right() -> UnmatchedPolicy {
    UnmatchedPolicy::Drop
}

/// What a join does with an event that found no match within the bound; either way it is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnmatchedPolicy {
    /// The plugin is called with the event alone (the other side absent), like an outer join.
    Emit,
    /// The event is dropped.
    Drop,
}

/// A deduplication stage's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    /// Top-level field holding the event's id (text or a number).
    pub id_field: String,
    /// An event whose id was seen at most this much event time earlier (or later) is a duplicate.
    pub horizon: ConfigDuration,
}

/// How a window stage groups and windows events, in event time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// `tumbling`, `hopping`, `sliding`, `session` or `snapshot`.
    #[serde(rename = "type")]
    pub kind: WindowKind,
    /// Top-level fields whose values make up the group key (ASA's `GROUP BY`); absent: the
    /// partition's events form one group. A missing field counts as `null`.
    #[serde(default)]
    pub group_by: Vec<String>,
    /// Length of a window (tumbling, hopping and sliding windows).
    #[serde(default)]
    pub size: Option<ConfigDuration>,
    /// Distance between the starts of two consecutive hopping windows.
    #[serde(default)]
    pub hop: Option<ConfigDuration>,
    /// A session window closes after this long without an event of its key (session windows;
    /// ASA's timeout).
    #[serde(default)]
    pub gap: Option<ConfigDuration>,
    /// A session window is cut after this long, however busy its key (session windows); under
    /// `stream_analytics` semantics, checked at multiples of it (see [`WindowSemantics`]).
    #[serde(default)]
    pub max_duration: Option<ConfigDuration>,
    /// Whose window semantics: Weir's own (`weir`) or Azure Stream Analytics'
    /// (`stream_analytics`). Absent: the pipeline's `event_time.semantics` (loading fills it in;
    /// read it with [`WindowConfig::semantics`]).
    #[serde(default)]
    pub semantics: Option<WindowSemantics>,
    /// Stream Analytics' offset argument of a tumbling or hopping window: window ends fall on
    /// the Unix epoch plus `offset` plus multiples of the hop (`stream_analytics` semantics only).
    #[serde(default)]
    pub offset: Option<ConfigDuration>,
    /// Field of every output record that the host sets to the window's start (RFC 3339).
    #[serde(default = "default_window_start_field")]
    pub start_field: String,
    /// Field of every output record that the host sets to the window's end (RFC 3339).
    #[serde(default = "default_window_end_field")]
    pub end_field: String,
}

impl WindowConfig {
    /// Whose window semantics the stage follows: its own `semantics`, else Weir's.
    pub fn semantics(&self) -> WindowSemantics {
        self.semantics.unwrap_or_default()
    }
}

fn default_window_start_field() -> String {
    "WindowStart".to_owned()
}
fn default_window_end_field() -> String {
    "WindowEnd".to_owned()
}

/// Whose window semantics a window stage follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowSemantics {
    /// Weir's own: windows `[start, end)` aligned to the Unix epoch; a sliding window per event;
    /// a session ends at a gap of `gap` or more, cut at `max_duration` after its first event.
    #[default]
    Weir,
    /// Azure Stream Analytics': windows `(start, end]` with ASA's offset; tumbling and hopping
    /// windows end on the epoch plus `offset` plus multiples of the hop; a sliding window when an
    /// event enters and when one leaves; a session ends at a gap of more than `gap` and is cut
    /// at the first multiple of `max_duration` (since the epoch) at least `max_duration` after
    /// its start, where the next session opens.
    StreamAnalytics,
}

/// The kinds of window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    /// Fixed-size windows one after the other: `[k·size, (k+1)·size)` (Stream Analytics':
    /// `(offset + k·size, offset + (k+1)·size]`).
    Tumbling,
    /// Fixed-size windows every `hop`: an event falls in about `size / hop` of them (Weir's
    /// starts, Stream Analytics' ends fall on multiples of `hop`).
    Hopping,
    /// A window ending at every event: the key's events in `(t − size, t]` (Stream Analytics':
    /// also where each event leaves, at `t + size`).
    Sliding,
    /// A key's events with no gap of `gap` or more between them (Stream Analytics': no gap of
    /// more than `gap`).
    Session,
    /// A key's events with the same timestamp (Stream Analytics' `GROUP BY System.Timestamp()`):
    /// the window is that instant, in both semantics.
    Snapshot,
}

/// One destination or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Destinations {
    /// A single sink or stage name.
    One(String),
    /// Several sink or stage names.
    Many(Vec<String>),
}

impl Destinations {
    /// The destination names.
    pub fn names(&self) -> &[String] {
        match self {
            Destinations::One(name) => std::slice::from_ref(name),
            Destinations::Many(names) => names,
        }
    }
}

/// The keys of one stage table, for errors: `pipelines.<pipeline>.stages[<index>]...`.
struct StageKeys<'a> {
    pipeline: &'a str,
    index: String,
}

impl StageKeys<'_> {
    /// The keys of `key` in the stage's table.
    fn at<'k>(&'k self, key: &'k str) -> Vec<&'k str> {
        vec![
            "pipelines",
            self.pipeline,
            "stages",
            self.index.as_str(),
            key,
        ]
    }

    /// The keys of `inner` in the stage's table `key`.
    fn inside<'k>(&'k self, key: &'k str, inner: &'k str) -> Vec<&'k str> {
        let mut keys = self.at(key);
        keys.push(inner);
        keys
    }
}

/// What runs a stage: a plugin, or the host's deduplication.
enum Runner<'s> {
    Plugin(&'s PathBuf),
    Dedup(&'s DedupConfig),
}

/// How a stage treats time: event by event, in windows, or joining two inputs within a bound.
enum Timing<'s> {
    Events,
    Window(&'s WindowConfig),
    Join(&'s JoinConfig),
}

/// Checks the stage tables of pipeline `name` in order, each in the steps below, and resolves
/// each into its [`StageConfig`].
pub(super) fn resolve_stages(
    loaded: &LoadedConfig,
    doc: &Document<'_>,
    name: &str,
    pipeline: &PipelineConfig,
) -> Result<Vec<StageConfig>, ConfigError> {
    let tables = &pipeline.stage_tables;
    let mut seen = BTreeSet::new();
    let mut stages = Vec::with_capacity(tables.len());
    for (index, stage) in tables.iter().enumerate() {
        let keys = StageKeys {
            pipeline: name,
            index: index.to_string(),
        };
        check_name(loaded, doc, &keys, stage, &mut seen)?;
        let runner = runner(loaded, doc, &keys, stage)?;
        check_routes(loaded, doc, &keys, tables, index)?;
        check_source_inputs(doc, &keys, pipeline, stage)?;
        let timing = timing(doc, &keys, tables, index, pipeline_semantics(pipeline))?;
        check_references(loaded, doc, &keys, stage)?;
        check_state_ttl(doc, &keys, stage)?;
        if stage.max_memory_bytes.is_some_and(|m| m < 1024 * 1024) {
            return Err(doc.error(
                &keys.at("max_memory_bytes"),
                "expected at least 1048576 (1 MiB)",
            ));
        }
        let mut resolved = resolve(stage, runner, timing);
        if let StageKind::Window { window, .. } = &mut resolved.kind {
            window.semantics = window.semantics.or(Some(pipeline_semantics(pipeline)));
        }
        stages.push(resolved);
    }
    Ok(stages)
}

/// The semantics a window stage that names none follows: the pipeline's `event_time.semantics`.
fn pipeline_semantics(pipeline: &PipelineConfig) -> WindowSemantics {
    pipeline
        .event_time
        .as_ref()
        .and_then(|t| t.semantics)
        .unwrap_or_default()
}

/// The stage's name is its own, unique in the pipeline and no sink's.
fn check_name<'s>(
    loaded: &LoadedConfig,
    doc: &Document<'_>,
    keys: &StageKeys<'_>,
    stage: &'s StageTable,
    seen: &mut BTreeSet<&'s str>,
) -> Result<(), ConfigError> {
    if stage.name.starts_with('#') {
        return Err(doc.error(
            &keys.at("name"),
            format!(
                "stage name `{}` starts with `#`, which Weir keeps for its own state",
                stage.name
            ),
        ));
    }
    if !seen.insert(stage.name.as_str()) {
        return Err(doc.error(
            &keys.at("name"),
            format!("stage name `{}` is used twice in this pipeline", stage.name),
        ));
    }
    if loaded.config.sinks.contains_key(&stage.name) {
        return Err(doc.error(
            &keys.at("name"),
            format!(
                "stage name `{}` is also a sink name: routes would be ambiguous",
                stage.name
            ),
        ));
    }
    Ok(())
}

/// A stage has a plugin file that exists, or is a `dedup` stage with a horizon and its one output.
fn runner<'s>(
    loaded: &LoadedConfig,
    doc: &Document<'_>,
    keys: &StageKeys<'_>,
    stage: &'s StageTable,
) -> Result<Runner<'s>, ConfigError> {
    match (&stage.plugin, &stage.dedup) {
        (Some(_), Some(_)) => Err(doc.error(
            &keys.at("plugin"),
            "a `dedup` stage runs in the host and takes no plugin",
        )),
        (None, None) => Err(doc.error(
            &keys.at("name"),
            format!(
                "stage `{}` needs a `plugin` (a `.wasm` component), unless it is a `dedup` stage",
                stage.name
            ),
        )),
        (Some(plugin), None) => {
            let path = loaded.resolve(plugin);
            if !path.is_file() {
                return Err(doc.error(
                    &keys.at("plugin"),
                    format!("plugin file {} does not exist (a plugin is built with `cargo build --release --target wasm32-wasip2`; the repository's own with `scripts/build-plugins`)", path.display()),
                ));
            }
            Ok(Runner::Plugin(plugin))
        }
        (None, Some(dedup)) => {
            if stage.window.is_some() || stage.join.is_some() || stage.config.is_some() {
                return Err(doc.error(
                    &keys.at("dedup"),
                    "a `dedup` stage takes no `window`, `join` or `config`",
                ));
            }
            if dedup.horizon.get().is_zero() {
                return Err(doc.error(
                    &keys.inside("dedup", "horizon"),
                    "expected a duration above zero",
                ));
            }
            if let Some(output) = stage
                .outputs
                .keys()
                .find(|o| o.as_str() != crate::stage::DEDUP_OUTPUT)
            {
                return Err(doc.error(
                    &keys.inside("outputs", output),
                    format!(
                        "a `dedup` stage has one output, `{}`",
                        crate::stage::DEDUP_OUTPUT
                    ),
                ));
            }
            Ok(Runner::Dedup(dedup))
        }
    }
}

/// Every output of stage `index` goes to sinks or later stages, and to a join through one of its
/// two inputs (`<join>.left`, `<join>.right`) only.
fn check_routes(
    loaded: &LoadedConfig,
    doc: &Document<'_>,
    keys: &StageKeys<'_>,
    stages: &[StageTable],
    index: usize,
) -> Result<(), ConfigError> {
    let sinks = &loaded.config.sinks;
    let later: Vec<&String> = stages[index + 1..].iter().map(|s| &s.name).collect();
    for (output, destinations) in &stages[index].outputs {
        for destination in destinations.names() {
            let is_sink = sinks.contains_key(destination);
            let is_later_stage = later.contains(&destination);
            // A join's two inputs are addressed as `<stage>.left` and `<stage>.right`.
            let (target, port) = match destination.rsplit_once('.') {
                Some((stage_name, port @ ("left" | "right")))
                    if later.iter().any(|s| *s == stage_name) =>
                {
                    (stage_name, Some(port))
                }
                _ => (destination.as_str(), None),
            };
            let is_join = stages.iter().any(|s| s.name == target && s.join.is_some());
            if !is_sink && (is_later_stage || port.is_some()) && is_join != port.is_some() {
                let message = if is_join {
                    format!(
                        "`{target}` is a join: route to one of its inputs, `{target}.left` or `{target}.right`"
                    )
                } else {
                    format!("`{target}` is not a join: it has one input, `{target}`")
                };
                return Err(doc.error(&keys.inside("outputs", output), message));
            }
            if !is_sink && !is_later_stage && port.is_none() {
                let earlier = stages[..=index].iter().any(|s| &s.name == destination);
                let message = if earlier {
                    format!(
                        "`{destination}` is this stage or an earlier one: outputs may only go to sinks or later stages"
                    )
                } else {
                    format!(
                        "`{destination}` is neither a sink ({}) nor a later stage of this pipeline",
                        one_of(sinks.keys())
                    )
                };
                return Err(doc.error(&keys.inside("outputs", output), message));
            }
        }
    }
    Ok(())
}

/// The sources a stage reads straight from (`input`, a join's `left` and `right`) are sources of
/// the pipeline, and a join reads them through its two inputs, any other stage through its one.
fn check_source_inputs(
    doc: &Document<'_>,
    keys: &StageKeys<'_>,
    pipeline: &PipelineConfig,
    stage: &StageTable,
) -> Result<(), ConfigError> {
    let is_join = stage.join.is_some();
    let named = stage
        .input
        .iter()
        .flat_map(|input| input.names().iter().map(|name| ("input", name)))
        .chain(stage.left.iter().map(|name| ("left", name)))
        .chain(stage.right.iter().map(|name| ("right", name)));
    for (key, source) in named {
        if key == "input" && is_join {
            return Err(doc.error(
                &keys.at(key),
                format!(
                    "`{}` is a join: a source enters it as its `left` or its `right`",
                    stage.name
                ),
            ));
        }
        if key != "input" && !is_join {
            return Err(doc.error(
                &keys.at(key),
                format!(
                    "`{key}` belongs to a join stage; `{}` is not a join: a source enters it through `input`",
                    stage.name
                ),
            ));
        }
        if !pipeline.sources.contains(source) {
            return Err(doc.error(
                &keys.at(key),
                format!(
                    "`{source}` is not a source of this pipeline (its sources: {})",
                    pipeline
                        .sources
                        .iter()
                        .map(|s| format!("`{s}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Where each source of a pipeline enters its stages: the stages that name it (as `input`,
/// `left` or `right`), else the first stage.
pub(super) fn source_entries(
    pipeline: &PipelineConfig,
) -> BTreeMap<String, Vec<super::SourceEntry>> {
    use super::SourceEntry;
    let mut entries = BTreeMap::new();
    for source in &pipeline.sources {
        let mut found = Vec::new();
        for (stage, table) in pipeline.stage_tables.iter().enumerate() {
            let as_input = table
                .input
                .as_ref()
                .is_some_and(|input| input.names().contains(source));
            if as_input || table.left.as_ref() == Some(source) {
                found.push(SourceEntry {
                    stage,
                    right: false,
                });
            }
            if table.right.as_ref() == Some(source) {
                found.push(SourceEntry { stage, right: true });
            }
        }
        if found.is_empty() {
            found.push(SourceEntry {
                stage: 0,
                right: false,
            });
        }
        entries.insert(source.clone(), found);
    }
    entries
}

/// A window has the durations of its kind; a join is not also a window, has a time bound and is
/// fed by an earlier stage.
fn timing<'s>(
    doc: &Document<'_>,
    keys: &StageKeys<'_>,
    stages: &'s [StageTable],
    index: usize,
    inherited: WindowSemantics,
) -> Result<Timing<'s>, ConfigError> {
    let stage = &stages[index];
    if let Some(window) = &stage.window {
        let mut window = window.clone();
        window.semantics = window.semantics.or(Some(inherited));
        validate_window(doc, &keys.at("window"), &window)?;
    }
    let Some(join) = &stage.join else {
        return Ok(stage.window.as_ref().map_or(Timing::Events, Timing::Window));
    };
    if stage.window.is_some() {
        return Err(doc.error(&keys.at("join"), "a stage is a window or a join, not both"));
    }
    if join.within.get().is_zero() && join.before.is_none_or(|b| b.get().is_zero()) {
        return Err(doc.error(
            &keys.inside("join", "within"),
            "a join needs a time bound above zero (`within`, `before`)",
        ));
    }
    let from_sources = stage.left.is_some() || stage.right.is_some();
    let fed = from_sources
        || stages[..index].iter().any(|s| {
            s.outputs.values().any(|d| {
                d.names()
                    .iter()
                    .any(|n| n.starts_with(&format!("{}.", stage.name)))
            })
        });
    if !fed {
        return Err(doc.error(
            &keys.at("join"),
            format!(
                "nothing routes to join `{0}`: earlier stages route to `{0}.left` and `{0}.right`, or its `left` and `right` name sources of the pipeline",
                stage.name
            ),
        ));
    }
    Ok(Timing::Join(join))
}

/// A state time-to-live belongs to a stage with a plugin (whose keyed state it expires) and is
/// longer than zero.
fn check_state_ttl(
    doc: &Document<'_>,
    keys: &StageKeys<'_>,
    stage: &StageTable,
) -> Result<(), ConfigError> {
    let Some(ttl) = stage.state_ttl else {
        return Ok(());
    };
    if stage.plugin.is_none() {
        return Err(doc.error(
            &keys.at("state_ttl"),
            "only a stage with a plugin keeps keyed state to expire",
        ));
    }
    if ttl.get().is_zero() {
        return Err(doc.error(&keys.at("state_ttl"), "must be longer than zero"));
    }
    Ok(())
}

/// Reference tables belong to a stage with a plugin, exist, and have a format Weir can tell.
fn check_references(
    loaded: &LoadedConfig,
    doc: &Document<'_>,
    keys: &StageKeys<'_>,
    stage: &StageTable,
) -> Result<(), ConfigError> {
    for (table, reference) in &stage.reference {
        let mut keys = keys.inside("reference", table);
        if stage.plugin.is_none() {
            return Err(doc.error(&keys, "only a stage with a plugin can look rows up"));
        }
        let path = loaded.resolve(&reference.path);
        if !path.exists() {
            keys.push("path");
            return Err(doc.error(
                &keys,
                format!("reference table {} does not exist", path.display()),
            ));
        }
        if crate::reference::format_of(&path, reference.format).is_none() {
            keys.push("format");
            return Err(doc.error(
                &keys,
                format!(
                    "cannot tell the format of {} from its name: set `format` to `csv`, `json` or `delta`",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

/// The checked table as the one kind of stage it is.
fn resolve(stage: &StageTable, runner: Runner<'_>, timing: Timing<'_>) -> StageConfig {
    let kind = match runner {
        // A `dedup` stage has no window or join: `runner` refused them.
        Runner::Dedup(dedup) => StageKind::Dedup {
            dedup: dedup.clone(),
        },
        Runner::Plugin(path) => {
            let plugin = PluginStage {
                path: path.clone(),
                config: stage.config.clone(),
                max_memory_bytes: stage.max_memory_bytes,
                call_timeout: stage.call_timeout,
                reference: stage.reference.clone(),
                state_ttl: stage.state_ttl,
            };
            match timing {
                Timing::Events => StageKind::Transform { plugin },
                Timing::Window(window) => StageKind::Window {
                    plugin,
                    window: window.clone(),
                },
                Timing::Join(join) => StageKind::Join {
                    plugin,
                    join: join.clone(),
                },
            }
        }
    };
    StageConfig {
        name: stage.name.clone(),
        outputs: stage.outputs.clone(),
        kind,
    }
}

/// Checks the `window` and `join` tables of a plugin's test case (`weir plugin test`) as a
/// pipeline's stage is checked, locating errors in `text`, the case's file at `path`.
pub fn check_case_timing(
    text: &str,
    path: &std::path::Path,
    window: Option<&WindowConfig>,
    join: Option<&JoinConfig>,
) -> Result<(), ConfigError> {
    let doc = Document::new(text, path);
    if let Some(window) = window {
        validate_window(&doc, &["window"], window)?;
    }
    if let Some(join) = join {
        if window.is_some() {
            return Err(doc.error(&["join"], "a stage is a window or a join, not both"));
        }
        if join.within.get().is_zero() && join.before.is_none_or(|b| b.get().is_zero()) {
            return Err(doc.error(
                &["join", "within"],
                "a join needs a time bound above zero (`within`, `before`)",
            ));
        }
    }
    Ok(())
}

/// A window needs the durations of its kind, and only those.
fn validate_window(
    doc: &Document<'_>,
    at: &[&str],
    window: &WindowConfig,
) -> Result<(), ConfigError> {
    let key = |name: &'static str| {
        let mut keys = at.to_vec();
        keys.push(name);
        keys
    };
    let kind = match window.kind {
        WindowKind::Tumbling => "tumbling",
        WindowKind::Hopping => "hopping",
        WindowKind::Sliding => "sliding",
        WindowKind::Session => "session",
        WindowKind::Snapshot => "snapshot",
    };
    let (needed, allowed): (&[&str], &[&str]) = match window.kind {
        WindowKind::Tumbling | WindowKind::Sliding => (&["size"], &["size"]),
        WindowKind::Hopping => (&["size", "hop"], &["size", "hop"]),
        WindowKind::Session => (&["gap"], &["gap", "max_duration"]),
        WindowKind::Snapshot => (&[], &[]),
    };
    let given = [
        ("size", window.size),
        ("hop", window.hop),
        ("gap", window.gap),
        ("max_duration", window.max_duration),
    ];
    for (name, value) in given {
        match value {
            None if needed.contains(&name) => {
                return Err(doc.error(
                    at,
                    format!("a {kind} window needs `{name}` (a duration such as \"5m\")"),
                ));
            }
            Some(_) if !allowed.contains(&name) => {
                return Err(doc.error(
                    &key(name),
                    format!(
                        "a {kind} window has no `{name}` (it takes {})",
                        if allowed.is_empty() {
                            "no duration".to_owned()
                        } else {
                            allowed
                                .iter()
                                .map(|a| format!("`{a}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    ),
                ));
            }
            Some(duration) if duration.get().is_zero() => {
                return Err(doc.error(&key(name), "expected a duration above zero"));
            }
            _ => {}
        }
    }
    if let Some(offset) = window.offset {
        if window.semantics() != WindowSemantics::StreamAnalytics {
            return Err(doc.error(
                &key("offset"),
                "`offset` is Stream Analytics' window argument: it needs `semantics = \"stream_analytics\"`",
            ));
        }
        if !matches!(window.kind, WindowKind::Tumbling | WindowKind::Hopping) {
            return Err(doc.error(
                &key("offset"),
                format!("a {kind} window has no `offset` (only tumbling and hopping windows do)"),
            ));
        }
        let hop = window.hop.or(window.size).map(|d| d.get());
        if hop.is_some_and(|hop| offset.get() >= hop) {
            return Err(doc.error(
                &key("offset"),
                "the offset of a window must be shorter than its hop (tumbling: its size)",
            ));
        }
    }
    if let (Some(size), Some(hop)) = (window.size, window.hop)
        && hop.get() > size.get()
    {
        return Err(doc.error(
            &key("hop"),
            "the hop of a hopping window cannot be longer than its size (events would fall in no window)",
        ));
    }
    if window.start_field == window.end_field {
        return Err(doc.error(
            &key("end_field"),
            "the window's start and end need two different fields",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const FOUR_KINDS: &str = r#"
[sources.sim]
kind = "simulator"

[sinks.out]
kind = "stdout"

[pipelines.p]
source = "sim"
dead_letter = "out"

[[pipelines.p.stages]]
name = "unique"
dedup = { id_field = "EventId", horizon = "10m" }
outputs = { events = "t" }

[[pipelines.p.stages]]
name = "t"
plugin = "p.wasm"
config = { threshold = 3 }
max_memory_bytes = 2097152
outputs = { a = "w", b = "j.left", c = "j.right" }

[[pipelines.p.stages]]
name = "w"
plugin = "p.wasm"
window = { type = "tumbling", size = "5m" }
outputs = { rows = "out" }

[[pipelines.p.stages]]
name = "j"
plugin = "p.wasm"
join = { key = "K", within = "2m" }
outputs = { rows = "out" }
"#;

    #[test]
    fn each_stage_table_resolves_into_its_one_kind() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("p.wasm"), b"").expect("plugin placeholder");
        let loaded = super::super::load_str(FOUR_KINDS, Path::new("weir.toml"), dir.path())
            .expect("a valid configuration");
        let pipeline = &loaded.config.pipelines["p"];
        assert!(
            pipeline.stage_tables.is_empty(),
            "the tables as written are dropped"
        );
        let [dedup, transform, window, join] = pipeline.stages.as_slice() else {
            panic!("four stages expected: {:?}", pipeline.stages);
        };
        assert!(
            matches!(&dedup.kind, StageKind::Dedup { dedup } if dedup.id_field == "EventId"),
            "{dedup:?}"
        );
        assert!(dedup.plugin().is_none() && !dedup.is_time_based());
        let StageKind::Transform { plugin } = &transform.kind else {
            panic!("a transform: {transform:?}");
        };
        assert_eq!(plugin.path, Path::new("p.wasm"));
        assert_eq!(plugin.max_memory_bytes, Some(2_097_152));
        assert!(
            plugin
                .config
                .as_ref()
                .is_some_and(|c| c.contains_key("threshold"))
        );
        assert!(!transform.is_time_based());
        assert_eq!(transform.outputs["b"].names(), ["j.left"]);
        assert!(
            matches!(&window.kind, StageKind::Window { window, .. } if window.kind == WindowKind::Tumbling)
        );
        assert!(window.is_time_based() && window.plugin().is_some());
        assert!(matches!(&join.kind, StageKind::Join { join, .. } if join.key == "K"));
        assert!(join.is_time_based() && join.plugin().is_some());
    }

    /// The window table of `FOUR_KINDS` replaced by `table`: the loaded window, or the error.
    fn with_window(table: &str) -> Result<WindowConfig, String> {
        with_window_in(table, "")
    }

    /// As [`with_window`], with `pipeline_keys` (lines, each ending with a newline) added to the
    /// pipeline's table.
    fn with_window_in(table: &str, pipeline_keys: &str) -> Result<WindowConfig, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("p.wasm"), b"").expect("plugin placeholder");
        let text = FOUR_KINDS
            .replace(r#"{ type = "tumbling", size = "5m" }"#, table)
            .replace(
                "dead_letter = \"out\"\n",
                &format!("dead_letter = \"out\"\n{pipeline_keys}"),
            );
        let loaded = super::super::load_str(&text, Path::new("weir.toml"), dir.path())
            .map_err(|e| e.to_string())?;
        loaded.config.pipelines["p"]
            .stages
            .iter()
            .find_map(|stage| match &stage.kind {
                StageKind::Window { window, .. } => Some(window.clone()),
                _ => None,
            })
            .ok_or_else(|| "no window stage".to_owned())
    }

    #[test]
    fn window_semantics_default_to_weir_and_offset_is_stream_analytics_only() {
        let weir = with_window(r#"{ type = "tumbling", size = "5m" }"#).expect("weir");
        assert_eq!(weir.semantics(), WindowSemantics::Weir);
        let asa = with_window(
            r#"{ type = "tumbling", size = "1h", offset = "15m", semantics = "stream_analytics" }"#,
        )
        .expect("asa");
        assert_eq!(asa.semantics(), WindowSemantics::StreamAnalytics);
        assert_eq!(
            asa.offset.map(|d| d.get()),
            Some(std::time::Duration::from_secs(900))
        );
        let cases = [
            (
                r#"{ type = "tumbling", size = "1h", offset = "15m" }"#,
                "weir.toml:27:44: `pipelines.p.stages[2].window.offset`: `offset` is Stream Analytics' window argument",
            ),
            (
                r#"{ type = "sliding", size = "1h", offset = "15m", semantics = "stream_analytics" }"#,
                "a sliding window has no `offset`",
            ),
            (
                r#"{ type = "hopping", size = "1h", hop = "10m", offset = "10m", semantics = "stream_analytics" }"#,
                "the offset of a window must be shorter than its hop",
            ),
            (
                r#"{ type = "snapshot", size = "1h" }"#,
                "a snapshot window has no `size` (it takes no duration)",
            ),
            (
                r#"{ type = "tumbling", size = "1h", semantics = "asa" }"#,
                "unknown variant `asa`",
            ),
        ];
        for (table, expected) in cases {
            let err = with_window(table).expect_err(table);
            assert!(err.contains(expected), "{table}: {err}");
        }
    }

    #[test]
    fn a_window_without_semantics_follows_the_pipeline_s_event_time_semantics() {
        let asa_pipeline = "event_time = { semantics = \"stream_analytics\" }\n";
        let inherited = with_window_in(
            r#"{ type = "tumbling", size = "1h", offset = "15m" }"#,
            asa_pipeline,
        )
        .expect("inherits stream_analytics, so the offset is allowed");
        assert_eq!(inherited.semantics(), WindowSemantics::StreamAnalytics);
        let own = with_window_in(
            r#"{ type = "tumbling", size = "1h", semantics = "weir" }"#,
            asa_pipeline,
        )
        .expect("a stage's own semantics win");
        assert_eq!(own.semantics(), WindowSemantics::Weir);
        let err = with_window_in(
            r#"{ type = "tumbling", size = "1h" }"#,
            "event_time = { semantics = \"asa\" }\n",
        )
        .expect_err("unknown semantics");
        assert!(err.contains("unknown variant `asa`"), "{err}");
    }
}
