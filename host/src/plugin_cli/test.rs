//! `weir plugin test`: runs a built component through the host's own stage code (the sandbox,
//! keyed state, event clock, windows and joins of `weir run`) over each test case of its crate,
//! and compares what each output got with the case's expectation.
//!
//! A case is driven as one partition whose source delivers one event per batch, in the order of
//! `input.jsonl`: each event goes through the event clock (for a window or join, or when the case
//! orders events), what the clock releases goes to the stage (a join's `right` events to its
//! second input), then the watermark's marks; at the end the input ends, which closes everything.
//! Nothing depends on the wall clock, so a case gives the same outputs on every run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;

use super::{Kind, PluginCliError};
use crate::config::{EventTimeConfig, JoinConfig, WindowConfig};
use crate::event::Event;
use crate::metrics::Metrics;
use crate::plugin::{
    InstanceSettings, InstanceSlot, KeyedState, Plugin, PluginEngine, PluginKind, PluginScope,
};
use crate::reference::ReferenceTables;
use crate::stage::{
    JoinSettings, JoinStage, Stage, StageOutput, WasmTransformStage, WindowSettings, WindowStage,
};
use crate::time::{Admitted, ClockSettings, EventClock};

/// The name of the output that holds a case's dead letters.
pub const DEAD_LETTERS: &str = "dead-letters";

/// A case's stage settings (`case.toml`): the keys of a pipeline's stage table that shape what
/// the stage does, and the pipeline's `event_time`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseSettings {
    /// The stage's `config` table, handed to the plugin as JSON.
    #[serde(default)]
    pub config: Option<toml::Table>,
    /// A window aggregate's `window` table.
    #[serde(default)]
    pub window: Option<WindowConfig>,
    /// A join's `join` table.
    #[serde(default)]
    pub join: Option<JoinConfig>,
    /// The pipeline's `event_time` table (tolerances and policies; the time of each event is the
    /// `time` of its input line).
    #[serde(default)]
    pub event_time: Option<EventTimeConfig>,
    /// Largest linear memory of the plugin's instance, in bytes (default: the host's).
    #[serde(default)]
    pub max_memory_bytes: Option<u64>,
}

/// One line of a case's `input.jsonl`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputLine {
    /// Event time, in milliseconds since the epoch.
    #[serde(default)]
    time: i64,
    /// When the event was enqueued, in milliseconds since the epoch (default: its time).
    #[serde(default)]
    enqueued: Option<i64>,
    /// Partition key.
    #[serde(default)]
    key: Option<String>,
    /// For a join: `left` (default) or `right`.
    #[serde(default)]
    side: Option<String>,
    /// The name of the source the event comes from, as `event.source()` reads it (default:
    /// `input`).
    #[serde(default)]
    source: Option<String>,
    /// Application properties.
    #[serde(default)]
    properties: BTreeMap<String, String>,
    /// The event's body.
    body: serde_json::Value,
}

/// What a case's outputs got: records per output name (`dead-letters` included), as JSON.
pub type Outputs = BTreeMap<String, Vec<serde_json::Value>>;

/// What one case gave.
#[derive(Debug)]
pub struct CaseResult {
    /// The case's name (its directory's).
    pub name: String,
    /// Its directory.
    pub dir: PathBuf,
    /// What each output got.
    pub got: Outputs,
    /// What the case expects.
    pub expected: Outputs,
}

impl CaseResult {
    /// Whether every output got what the case expects.
    pub fn passed(&self) -> bool {
        let empty = Vec::new();
        let names: std::collections::BTreeSet<&String> =
            self.got.keys().chain(self.expected.keys()).collect();
        names.into_iter().all(|name| {
            let got = self.got.get(name).unwrap_or(&empty);
            let want = self.expected.get(name).unwrap_or(&empty);
            got.len() == want.len() && got.iter().zip(want).all(|(g, w)| same(g, w))
        })
    }

    /// A readable diff of what differs, one block per output, naming each differing record.
    pub fn diff(&self) -> String {
        let mut text = String::new();
        let names: std::collections::BTreeSet<&String> =
            self.got.keys().chain(self.expected.keys()).collect();
        let empty = Vec::new();
        for name in names {
            let got = self.got.get(name).unwrap_or(&empty);
            let want = self.expected.get(name).unwrap_or(&empty);
            if got.len() == want.len() && got.iter().zip(want).all(|(g, w)| same(g, w)) {
                continue;
            }
            text.push_str(&format!(
                "  output `{name}`: expected {} record(s), got {}\n",
                want.len(),
                got.len()
            ));
            for index in 0..got.len().max(want.len()) {
                match (want.get(index), got.get(index)) {
                    (Some(w), Some(g)) if same(w, g) => {}
                    (Some(w), Some(g)) => text.push_str(&format!(
                        "    record {}:\n      expected: {w}\n      got:      {g}\n{}",
                        index + 1,
                        field_diff(w, g)
                    )),
                    (Some(w), None) => text.push_str(&format!(
                        "    record {}: missing\n      expected: {w}\n",
                        index + 1
                    )),
                    (None, Some(g)) => text.push_str(&format!(
                        "    record {}: unexpected\n      got:      {g}\n",
                        index + 1
                    )),
                    (None, None) => {}
                }
            }
        }
        text
    }
}

/// Whether two JSON values are the same, numbers by value: `20` and `20.0` are one JSON number
/// (a JavaScript plugin writes the first, a Rust or Python one the second).
fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// The fields two JSON objects disagree on, one line each (nothing for other values).
fn field_diff(want: &serde_json::Value, got: &serde_json::Value) -> String {
    let (Some(want), Some(got)) = (want.as_object(), got.as_object()) else {
        return String::new();
    };
    let fields: std::collections::BTreeSet<&String> = want.keys().chain(got.keys()).collect();
    let show = |v: Option<&serde_json::Value>| v.map_or("(absent)".to_owned(), |v| v.to_string());
    fields
        .into_iter()
        .filter(|f| match (want.get(*f), got.get(*f)) {
            (Some(w), Some(g)) => !same(w, g),
            (w, g) => w != g,
        })
        .map(|f| {
            format!(
                "      field `{f}`: expected {}, got {}\n",
                show(want.get(f)),
                show(got.get(f))
            )
        })
        .collect()
}

/// What `weir plugin test` tests: a component and the cases of its crate.
#[derive(Debug, Clone)]
pub struct TestTarget {
    /// The component.
    pub wasm: PathBuf,
    /// The directory holding one directory per case.
    pub cases: PathBuf,
    /// The kind its crate names, if it does.
    pub kind: Option<Kind>,
    /// Where compiled forms are kept, if anywhere (a Python or JavaScript component takes
    /// seconds to compile, and its build compiled it already).
    pub compile_cache: Option<PathBuf>,
}

/// The component and cases of `path`: a plugin crate (built first; what the build made comes
/// back too) or a built `.wasm` file, whose cases are found in the crate it was built in (the
/// nearest `cases/` above it).
pub fn target(path: &Path) -> Result<(TestTarget, Option<super::Built>), PluginCliError> {
    if path.is_file() {
        let cases = path
            .ancestors()
            .skip(1)
            .map(|dir| dir.join("cases"))
            .find(|cases| cases.is_dir())
            .ok_or_else(|| PluginCliError::NoCases {
                dir: path.to_path_buf(),
            })?;
        let target = TestTarget {
            wasm: path.to_path_buf(),
            kind: None,
            cases,
            compile_cache: None,
        };
        return Ok((target, None));
    }
    let built = super::build(path)?;
    let target = TestTarget {
        wasm: built.path.clone(),
        cases: path.join("cases"),
        kind: super::build::crate_kind(path)?,
        compile_cache: (super::Lang::of(path) != super::Lang::Rust)
            .then(|| super::script::compile_cache(path)),
    };
    Ok((target, Some(built)))
}

/// Runs every case of `target` (see the module doc); with `bless`, writes what each output got
/// as its expectation.
pub fn test(target: &TestTarget, bless: bool) -> Result<Vec<CaseResult>, PluginCliError> {
    let engine = match &target.compile_cache {
        Some(dir) => PluginEngine::new()?.with_cache(dir),
        None => PluginEngine::new()?,
    };
    let bytes = std::fs::read(&target.wasm).map_err(|source| PluginCliError::Read {
        path: target.wasm.clone(),
        source,
    })?;
    let kind = super::build::check(&engine, &target.wasm, &bytes, target.kind)?;
    let plugin = engine.from_bytes(&target.wasm, &bytes, kind)?;
    let mut results = Vec::new();
    for dir in case_dirs(&target.cases)? {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let got = run_case(&plugin, &dir)?;
        if bless {
            write_expected(&dir, &got)?;
        }
        let expected = read_expected(&dir)?;
        results.push(CaseResult {
            name,
            dir,
            got,
            expected,
        });
    }
    if results.is_empty() {
        return Err(PluginCliError::NoCases {
            dir: target.cases.clone(),
        });
    }
    Ok(results)
}

/// The case directories under `cases`, sorted.
fn case_dirs(cases: &Path) -> Result<Vec<PathBuf>, PluginCliError> {
    let read_error = |source| PluginCliError::Read {
        path: cases.to_path_buf(),
        source,
    };
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(cases).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        if path.is_dir() {
            dirs.push(path);
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// A case's error, naming its file.
fn case_error(path: &Path, reason: impl std::fmt::Display) -> PluginCliError {
    PluginCliError::BadCase {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn read_text(path: &Path) -> Result<String, PluginCliError> {
    std::fs::read_to_string(path).map_err(|source| PluginCliError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The JSON values of a JSONL file, one a line (blank lines skipped).
fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>, PluginCliError> {
    let text = read_text(path)?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str(line)
                .map_err(|e| case_error(path, format_args!("line {}: {e}", n + 1)))
        })
        .collect()
}

/// A case's expectation: `expected/<output>.jsonl` per output (an empty file is no records).
fn read_expected(case: &Path) -> Result<Outputs, PluginCliError> {
    let dir = case.join("expected");
    let mut outputs = Outputs::new();
    if !dir.is_dir() {
        return Ok(outputs);
    }
    for path in jsonl_files(&dir)? {
        let records: Vec<serde_json::Value> = read_jsonl(&path)?;
        if let (false, Some(stem)) = (records.is_empty(), path.file_stem()) {
            outputs.insert(stem.to_string_lossy().into_owned(), records);
        }
    }
    Ok(outputs)
}

fn jsonl_files(dir: &Path) -> Result<Vec<PathBuf>, PluginCliError> {
    let read_error = |source| PluginCliError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Writes `got` as the case's expectation, removing the files of outputs that got nothing.
fn write_expected(case: &Path, got: &Outputs) -> Result<(), PluginCliError> {
    let dir = case.join("expected");
    let write_error = |path: &Path, source| PluginCliError::Write {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(|e| write_error(&dir, e))?;
    if dir.is_dir() {
        for path in jsonl_files(&dir)? {
            let output = path.file_stem().map(|s| s.to_string_lossy().into_owned());
            if output.is_none_or(|o| !got.contains_key(&o)) {
                std::fs::remove_file(&path).map_err(|e| write_error(&path, e))?;
            }
        }
    }
    for (output, records) in got {
        let path = dir.join(format!("{output}.jsonl"));
        let text: String = records.iter().map(|r| format!("{r}\n")).collect();
        std::fs::write(&path, text).map_err(|e| write_error(&path, e))?;
    }
    Ok(())
}

/// The case's settings from its `case.toml` (none: all defaults).
fn read_settings(case: &Path) -> Result<CaseSettings, PluginCliError> {
    let path = case.join("case.toml");
    if !path.is_file() {
        return Ok(CaseSettings::default());
    }
    let text = read_text(&path)?;
    let settings: CaseSettings =
        toml::from_str(&text).map_err(|e| case_error(&path, e.to_string().trim()))?;
    crate::config::check_case_timing(
        &text,
        &path,
        settings.window.as_ref(),
        settings.join.as_ref(),
    )?;
    Ok(settings)
}

/// The stage the case's settings make for `plugin`, as `weir run` builds it (no checkpoint).
fn stage(
    plugin: &Arc<Plugin>,
    settings: &CaseSettings,
    case: &Path,
) -> Result<Box<dyn Stage>, PluginCliError> {
    let name: Arc<str> = Arc::from(plugin.name().as_ref());
    let defaults = crate::config::PluginDefaults::default();
    let config_json = match &settings.config {
        Some(table) => serde_json::to_string(table).unwrap_or_else(|_| "{}".to_owned()),
        None => "{}".to_owned(),
    };
    let instance = Arc::new(InstanceSettings {
        scope: PluginScope {
            pipeline: "test".into(),
            stage: name.clone(),
            partition: 0,
            plugin: plugin.name().clone(),
            version: plugin.version().clone(),
        },
        config_json: config_json.into(),
        max_memory_bytes: settings
            .max_memory_bytes
            .unwrap_or(defaults.max_memory_bytes),
        call_timeout: defaults.call_timeout.get(),
        reference: ReferenceTables::none(),
    });
    let slot = |keyed| InstanceSlot::new(plugin.clone(), instance.clone(), keyed);
    let missing = |table: &str| {
        case_error(
            &case.join("case.toml"),
            format_args!(
                "a {} plugin's case needs a `{table}` table",
                plugin.kind().world()
            ),
        )
    };
    let restore = |e: crate::codec::DecodeError| case_error(case, e);
    Ok(match plugin.kind() {
        PluginKind::Transform => Box::new(WasmTransformStage::new(
            name,
            plugin.clone(),
            instance.clone(),
            KeyedState::default(),
        )),
        PluginKind::WindowAggregate => {
            let window = settings.window.as_ref().ok_or_else(|| missing("window"))?;
            let window = WindowSettings::from_config(window);
            Box::new(WindowStage::new(name, window, slot, None, Metrics::new()).map_err(restore)?)
        }
        PluginKind::JoinEnrichment => {
            let join = settings.join.as_ref().ok_or_else(|| missing("join"))?;
            let join = JoinSettings::from_config(join);
            Box::new(JoinStage::new(name, join, slot, None, Metrics::new()).map_err(restore)?)
        }
    })
}

/// The events of a case's input, each at its line's position (from 1), and which are `right`.
fn input_events(case: &Path) -> Result<Vec<(Event, bool)>, PluginCliError> {
    let path = case.join("input.jsonl");
    let lines: Vec<InputLine> = read_jsonl(&path)?;
    lines
        .into_iter()
        .enumerate()
        .map(|(n, line)| {
            let right = match line.side.as_deref() {
                None | Some("left") => false,
                Some("right") => true,
                Some(other) => {
                    return Err(case_error(
                        &path,
                        format_args!(
                            "line {}: side `{other}` is neither `left` nor `right`",
                            n + 1
                        ),
                    ));
                }
            };
            let position = n as u64 + 1;
            let event = Event {
                partition: 0,
                source: Arc::from(line.source.as_deref().unwrap_or("input")),
                position,
                key: line.key.map(Bytes::from),
                event_time: Some(line.time),
                enqueued_time: line.enqueued.unwrap_or(line.time),
                properties: line.properties.into_iter().collect(),
                body: Bytes::from(line.body.to_string()),
            };
            Ok((event, right))
        })
        .collect()
}

/// Runs one case (see the module doc) and returns what each output got.
pub fn run_case(plugin: &Arc<Plugin>, case: &Path) -> Result<Outputs, PluginCliError> {
    let settings = read_settings(case)?;
    let mut stage = stage(plugin, &settings, case)?;
    let events = input_events(case)?;
    let timed = plugin.kind() != PluginKind::Transform
        || settings
            .event_time
            .as_ref()
            .is_some_and(|t| t.orders_events());
    let mut clock =
        timed.then(|| EventClock::new(ClockSettings::from_config(settings.event_time.as_ref())));
    let mut run = CaseRun {
        stage: stage.as_mut(),
        inputs: &events,
        outputs: Outputs::new(),
        admitted: Admitted::default(),
        out: StageOutput::default(),
    };
    for (event, right) in &events {
        match &mut clock {
            Some(clock) => {
                clock.admit(event.clone(), &mut run.admitted);
                run.step(case)?;
            }
            None if *right => run.call(case, &[], std::slice::from_ref(event), &[])?,
            None => run.call(case, std::slice::from_ref(event), &[], &[])?,
        }
    }
    if let Some(clock) = &mut clock {
        let last = events.last().map_or(0, |(e, _)| e.position);
        clock.finish(last + 1, &mut run.admitted);
        run.step(case)?;
    }
    Ok(run.outputs)
}

/// One case's run in progress.
struct CaseRun<'a> {
    stage: &'a mut dyn Stage,
    inputs: &'a [(Event, bool)],
    outputs: Outputs,
    admitted: Admitted,
    out: StageOutput,
}

impl CaseRun<'_> {
    /// Hands what the clock released (by side) and its marks to the stage, as one batch.
    fn step(&mut self, case: &Path) -> Result<(), PluginCliError> {
        let mut left = Vec::new();
        let mut right = Vec::new();
        for event in std::mem::take(&mut self.admitted.released) {
            match self.line_of(&event) {
                Some(line) if self.inputs[line].1 => right.push(event),
                _ => left.push(event),
            }
        }
        for late in std::mem::take(&mut self.admitted.dropped) {
            self.dead_letter(&late.event, &late.reason);
        }
        let marks = std::mem::take(&mut self.admitted.marks);
        self.admitted.clear();
        self.call(case, &left, &right, &marks)
    }

    /// Calls the stage as the partition worker does: first input, second input, then marks.
    fn call(
        &mut self,
        case: &Path,
        left: &[Event],
        right: &[Event],
        marks: &[crate::time::Mark],
    ) -> Result<(), PluginCliError> {
        let failed = |e: crate::stage::StageError| case_error(case, e);
        self.out.clear();
        self.stage.batch_boundary();
        if !left.is_empty() {
            self.stage.process(left, &mut self.out).map_err(failed)?;
        }
        if !right.is_empty() {
            self.stage
                .process_right(right, &mut self.out)
                .map_err(failed)?;
        }
        if !marks.is_empty() {
            self.stage
                .watermarks(marks, &mut self.out)
                .map_err(failed)?;
        }
        let mut out = std::mem::take(&mut self.out);
        for (output, record) in out.emitted.drain(..) {
            self.outputs
                .entry(output.to_string())
                .or_default()
                .push(body_json(&record.body));
        }
        for rejected in out.rejected.drain(..) {
            self.dead_letter(&rejected.event, &rejected.reason);
        }
        self.out = out;
        Ok(())
    }

    /// The index in the input of `event` (the host keeps its body's bytes; else the first line
    /// with the same body and key).
    fn line_of(&self, event: &Event) -> Option<usize> {
        let same_bytes =
            |e: &Event| e.body.as_ptr() == event.body.as_ptr() && e.body.len() == event.body.len();
        self.inputs
            .iter()
            .position(|(e, _)| same_bytes(e))
            .or_else(|| {
                self.inputs
                    .iter()
                    .position(|(e, _)| e.body == event.body && e.key == event.key)
            })
    }

    fn dead_letter(&mut self, event: &Event, reason: &str) {
        let input = self.line_of(event).map(|line| line + 1);
        self.outputs
            .entry(DEAD_LETTERS.to_owned())
            .or_default()
            .push(serde_json::json!({ "input": input, "reason": reason }));
    }
}

/// A record's body as JSON (a string when it is not JSON).
fn body_json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diff_names_the_output_the_record_and_the_field() {
        let outputs = |records: &[serde_json::Value]| {
            let mut outputs = Outputs::new();
            outputs.insert("rows".to_owned(), records.to_vec());
            outputs
        };
        let result = CaseResult {
            name: "c".into(),
            dir: PathBuf::from("cases/c"),
            got: outputs(&[serde_json::json!({"a": 1}), serde_json::json!({"a": 5})]),
            expected: outputs(&[
                serde_json::json!({"a": 1}),
                serde_json::json!({"a": 2, "b": 3}),
            ]),
        };
        assert!(!result.passed());
        assert_eq!(
            result.diff(),
            "  output `rows`: expected 2 record(s), got 2\n    record 2:\n      expected: {\"a\":2,\"b\":3}\n      got:      {\"a\":5}\n      field `a`: expected 2, got 5\n      field `b`: expected 3, got (absent)\n"
        );
    }

    #[test]
    fn case_settings_are_checked_like_a_stage_and_errors_name_the_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |text: &str| std::fs::write(dir.path().join("case.toml"), text).expect("write");
        write("# a case\nwindow = { type = \"hopping\", size = \"1m\" }\n");
        let error = read_settings(dir.path()).expect_err("no hop").to_string();
        assert!(error.contains("case.toml"), "{error}");
        assert!(error.contains("case.toml:2:1: `window`"), "{error}");
        assert!(error.contains("a hopping window needs `hop`"), "{error}");
        write("confi = {}\n");
        let error = read_settings(dir.path())
            .expect_err("unknown key")
            .to_string();
        assert!(error.contains("unknown field `confi`"), "{error}");
        write("config = { max_jump = 3 }\n");
        let settings = read_settings(dir.path()).expect("a transform's case");
        assert!(settings.config.is_some() && settings.window.is_none());
    }
}
