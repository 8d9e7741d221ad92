//! The ready configurations of `examples/`, adapted to run in a test: the same pipelines, stages,
//! windows, sinks and schemas, with the source replaced by a file of generated input and every
//! output under a temporary directory.

use std::path::{Path, PathBuf};

use toml::{Table, Value};

/// How to adapt an example.
#[derive(Debug, Clone)]
pub struct Adapt<'a> {
    /// Pipelines to keep (the others are removed).
    pub pipelines: &'a [&'a str],
    /// Every source of the example becomes a file source reading this file, split in this many
    /// partitions by this key field.
    pub input: &'a Path,
    /// Partitions of the file source.
    pub partitions: u32,
    /// Key field of the file source.
    pub key_field: &'a str,
    /// Checkpoint interval.
    pub checkpoint_interval: &'a str,
    /// Most events per batch, set on every kept pipeline.
    pub batch_max_events: usize,
}

/// Writes `examples/<example>` adapted as `adapt` says into `dir/weir.toml` and returns that path.
/// Sinks write to `dir/<sink name>`, checkpoints to `dir/checkpoints`, plugins come from the test
/// build.
pub fn adapt_example(example: &str, dir: &Path, adapt: &Adapt<'_>) -> PathBuf {
    let path = crate::workspace_dir().join("examples").join(example);
    let text = std::fs::read_to_string(&path).expect("read example");
    let mut config: Table = text.parse().expect("example is TOML");

    config.insert(
        "checkpoint".into(),
        Value::Table(Table::from_iter([
            (
                "dir".to_owned(),
                Value::String(dir.join("checkpoints").display().to_string()),
            ),
            (
                "interval".to_owned(),
                Value::String(adapt.checkpoint_interval.to_owned()),
            ),
        ])),
    );
    // The plugin version store too: the examples keep it under the demo's data directory.
    if let Some(plugins) = config.get_mut("plugins").and_then(Value::as_table_mut) {
        plugins.insert(
            "store_dir".to_owned(),
            Value::String(dir.join("plugins").display().to_string()),
        );
    }
    let sources = config
        .get_mut("sources")
        .and_then(Value::as_table_mut)
        .expect("sources");
    for (_, source) in sources.iter_mut() {
        *source = Value::Table(Table::from_iter([
            ("kind".to_owned(), Value::String("file".into())),
            (
                "path".to_owned(),
                Value::String(adapt.input.display().to_string()),
            ),
            (
                "partitions".to_owned(),
                Value::Integer(i64::from(adapt.partitions)),
            ),
            (
                "key_field".to_owned(),
                Value::String(adapt.key_field.to_owned()),
            ),
        ]));
    }
    let sinks = config
        .get_mut("sinks")
        .and_then(Value::as_table_mut)
        .expect("sinks");
    for (name, sink) in sinks.iter_mut() {
        if let Some(table) = sink.as_table_mut()
            && table.contains_key("path")
        {
            table.insert(
                "path".into(),
                Value::String(dir.join(name).display().to_string()),
            );
        }
    }
    let pipelines = config
        .get_mut("pipelines")
        .and_then(Value::as_table_mut)
        .expect("pipelines");
    pipelines.retain(|name, _| adapt.pipelines.contains(&name));
    assert_eq!(
        pipelines.len(),
        adapt.pipelines.len(),
        "pipelines {:?} in {example}",
        adapt.pipelines
    );
    for (_, pipeline) in pipelines.iter_mut() {
        let pipeline = pipeline.as_table_mut().expect("pipeline table");
        // Every source now reads the one input: a pipeline of several becomes a pipeline of its
        // first (its stages, which take all sources as one union, see the same events once).
        if let Some(first) = pipeline
            .remove("sources")
            .and_then(|s| s.as_array().and_then(|a| a.first().cloned()))
        {
            pipeline.insert("source".into(), first);
            if let Some(event_time) = pipeline.get_mut("event_time").and_then(Value::as_table_mut) {
                event_time.remove("sources");
            }
        }
        pipeline.insert(
            "batch".into(),
            Value::Table(Table::from_iter([
                (
                    "max_events".to_owned(),
                    Value::Integer(i64::try_from(adapt.batch_max_events).unwrap_or(1024)),
                ),
                ("max_wait".to_owned(), Value::String("20ms".into())),
            ])),
        );
        let stages = pipeline
            .get_mut("stages")
            .and_then(Value::as_array_mut)
            .expect("stages");
        for stage in stages {
            let stage = stage.as_table_mut().expect("stage table");
            // Reference tables stay where the example keeps them.
            if let Some(tables) = stage.get_mut("reference").and_then(Value::as_table_mut) {
                for (_, table) in tables.iter_mut() {
                    if let Some(table) = table.as_table_mut()
                        && let Some(relative) = table.get("path").and_then(Value::as_str)
                    {
                        let absolute = path.parent().expect("examples directory").join(relative);
                        table.insert("path".into(), Value::String(absolute.display().to_string()));
                    }
                }
            }
            if let Some(plugin) = stage.get("plugin").and_then(Value::as_str) {
                let stem = Path::new(plugin)
                    .file_stem()
                    .expect("plugin file name")
                    .to_string_lossy()
                    .into_owned();
                stage.insert(
                    "plugin".into(),
                    Value::String(crate::plugin_path(&stem).display().to_string()),
                );
            }
        }
    }
    let out = dir.join("weir.toml");
    std::fs::write(&out, toml::to_string(&config).expect("serialise config")).expect("write");
    out
}
