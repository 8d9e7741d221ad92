//! Reading a configuration file and refusing a bad one with the file, line, key and expectation.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use super::{Config, SinkConfig, SourceConfig};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration.
    #[error("{}:{line}:{column}: `{key}`: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Line of the offending key or value (1-based).
        line: usize,
        /// Column (1-based).
        column: usize,
        /// Dotted path of the offending key, such as `pipelines.telemetry.stages[0].plugin`.
        key: String,
        /// What is wrong and what was expected.
        message: String,
    },
}

/// A configuration with the file it came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The typed configuration.
    pub config: Config,
    /// The file it was read from.
    pub path: PathBuf,
    /// Directory that relative paths in the file are resolved against.
    pub base_dir: PathBuf,
}

impl LoadedConfig {
    /// `path` made absolute against the configuration file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }
}

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let base_dir = path
        .parent()
        .map(Path::to_path_buf)
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    load_str(&text, path, &base_dir)
}

/// Parses and validates configuration `text`, reporting errors against `path`.
pub fn load_str(text: &str, path: &Path, base_dir: &Path) -> Result<LoadedConfig, ConfigError> {
    let doc = Document { text, path };
    let deserializer =
        toml::de::Deserializer::parse(text).map_err(|err| doc.toml_error(&err, &[]))?;
    let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let keys = path_segments(err.path());
        match doc.refine_tagged(&keys) {
            Some((keys, inner)) => doc.toml_error(&inner, &keys),
            None => doc.toml_error(err.inner(), &keys),
        }
    })?;
    let loaded = LoadedConfig {
        config,
        path: path.to_path_buf(),
        base_dir: base_dir.to_path_buf(),
    };
    validate(&loaded, &doc)?;
    Ok(loaded)
}

/// The text of a configuration file, for locating keys in error messages.
struct Document<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Document<'_> {
    fn toml_error(&self, err: &toml::de::Error, keys: &[String]) -> ConfigError {
        let message = err.message().trim().to_owned();
        // serde reports an unknown field against its table; point at the field itself.
        let unknown = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
            .map(str::to_owned);
        let mut full_keys = keys.to_vec();
        let mut span = None;
        if let Some(field) = unknown {
            if full_keys.last() != Some(&field) {
                full_keys.push(field);
            }
            span = self.span_of(&full_keys);
        }
        let span = span.or_else(|| err.span()).or_else(|| self.span_of(keys));
        self.error_at(span, &full_keys, message)
    }

    /// serde loses the key and position of an error inside an internally tagged table (one with
    /// `kind = ...`): deserialize that table again as its concrete kind to find them.
    fn refine_tagged(&self, keys: &[String]) -> Option<(Vec<String>, toml::de::Error)> {
        let [section, name] = keys else {
            return None;
        };
        let root = DeTable::parse(self.text).ok()?;
        let DeValue::Table(entries) = find(root.get_ref(), section)?.get_ref() else {
            return None;
        };
        let entry = find(entries, name)?;
        let DeValue::Table(fields) = entry.get_ref() else {
            return None;
        };
        let DeValue::String(kind) = find(fields, "kind")?.get_ref() else {
            return None;
        };
        let rest: DeTable<'_> = fields
            .iter()
            .filter(|(k, _)| k.get_ref().as_ref() != "kind")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let value = toml::de::ValueDeserializer::from(toml::Spanned::new(
            entry.span(),
            DeValue::Table(rest),
        ));
        let result = match (section.as_str(), kind.as_ref()) {
            ("sources", "simulator") => check::<super::SimulatorSourceConfig>(value),
            ("sources", "file") => check::<super::FileSourceConfig>(value),
            ("sources", "http") => check::<super::HttpSourceConfig>(value),
            ("sources", "kafka") => check::<super::KafkaSourceConfig>(value),
            ("sinks", "kafka") => check::<super::KafkaSinkConfig>(value),
            ("sinks", "webhook") => check::<super::WebhookSinkConfig>(value),
            ("sinks", "delta") => check::<super::DeltaSinkConfig>(value),
            ("sinks", "file") => check::<super::FileSinkConfig>(value),
            ("sinks", "stdout") => check::<super::StdoutSinkConfig>(value),
            _ => return None,
        };
        let err = result.err()?;
        let mut full = keys.to_vec();
        full.extend(path_segments(err.path()));
        Some((full, err.into_inner()))
    }

    /// An error at the key path `keys`.
    fn error(&self, keys: &[&str], message: impl Into<String>) -> ConfigError {
        let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        self.error_at(self.span_of(&keys), &keys, message.into())
    }

    fn error_at(
        &self,
        span: Option<Range<usize>>,
        keys: &[String],
        message: String,
    ) -> ConfigError {
        let (line, column) = span.map_or((1, 1), |span| line_and_column(self.text, span.start));
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            column,
            key: dotted(keys),
            message,
        }
    }

    /// The span of the value at `keys`, or of the closest enclosing value that exists.
    fn span_of(&self, keys: &[String]) -> Option<Range<usize>> {
        let root = DeTable::parse(self.text).ok()?;
        let mut span = root.span();
        let mut table: Option<&DeTable<'_>> = Some(root.get_ref());
        let mut array: Option<&toml::de::DeArray<'_>> = None;
        for key in keys {
            let value = if let Some(t) = table {
                match t.iter().find(|(k, _)| k.get_ref().as_ref() == key.as_str()) {
                    // Point at the key: a value may sit on a later line of a table.
                    Some((k, v)) => {
                        span = k.span();
                        v
                    }
                    None => return Some(span),
                }
            } else if let Some(a) = array {
                match key.parse::<usize>().ok().and_then(|i| a.get(i)) {
                    Some(v) => {
                        span = v.span();
                        v
                    }
                    None => return Some(span),
                }
            } else {
                return Some(span);
            };
            table = None;
            array = None;
            match value.get_ref() {
                DeValue::Table(t) => table = Some(t),
                DeValue::Array(a) => array = Some(a),
                _ => {}
            }
        }
        Some(span)
    }
}

fn find<'t, 'i>(table: &'t DeTable<'i>, key: &str) -> Option<&'t toml::Spanned<DeValue<'i>>> {
    table
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == key)
        .map(|(_, v)| v)
}

fn check<T: serde::de::DeserializeOwned>(
    value: toml::de::ValueDeserializer<'_>,
) -> Result<(), serde_path_to_error::Error<toml::de::Error>> {
    serde_path_to_error::deserialize::<_, T>(value).map(|_| ())
}

fn path_segments(path: &serde_path_to_error::Path) -> Vec<String> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|segment| match segment {
            Segment::Seq { index } => Some(index.to_string()),
            Segment::Map { key } => Some(key.clone()),
            Segment::Enum { .. } | Segment::Unknown => None,
        })
        .collect()
}

fn dotted(keys: &[String]) -> String {
    let mut out = String::new();
    for key in keys {
        if key.parse::<usize>().is_ok() {
            out.push_str(&format!("[{key}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(key);
        }
    }
    if out.is_empty() {
        "(file)".to_owned()
    } else {
        out
    }
}

fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn one_of<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<String> = names.map(|n| format!("`{n}`")).collect();
    if names.is_empty() {
        "none are defined".to_owned()
    } else {
        format!("defined: {}", names.join(", "))
    }
}

/// Cross-references and ranges that types alone cannot express.
fn validate(loaded: &LoadedConfig, doc: &Document<'_>) -> Result<(), ConfigError> {
    let config = &loaded.config;
    if config.pipelines.is_empty() {
        return Err(doc.error(
            &["pipelines"],
            "no pipeline is defined: expected at least one `[pipelines.<name>]` table",
        ));
    }
    for (name, source) in &config.sources {
        let partitions = source.partitions().unwrap_or(1);
        if !(1..=4096).contains(&partitions) {
            return Err(doc.error(
                &["sources", name, "partitions"],
                format!("expected between 1 and 4096 partitions, found {partitions}"),
            ));
        }
        if let SourceConfig::Simulator(sim) = source {
            if sim.devices == 0 {
                return Err(doc.error(&["sources", name, "devices"], "expected at least 1 device"));
            }
            for (key, ratio) in [
                ("jump_ratio", sim.jump_ratio),
                ("duplicate_ratio", sim.duplicate_ratio),
            ] {
                if !(0.0..=1.0).contains(&ratio) {
                    return Err(doc.error(
                        &["sources", name, key],
                        format!("expected a fraction between 0 and 1, found {ratio}"),
                    ));
                }
            }
            if let Some(start) = &sim.start_time
                && chrono::DateTime::parse_from_rfc3339(start).is_err()
            {
                return Err(doc.error(
                    &["sources", name, "start_time"],
                    format!(
                        "expected an RFC 3339 time such as `2026-01-01T00:00:00Z`, found `{start}`"
                    ),
                ));
            }
            if sim.reading_interval.get().is_zero() {
                return Err(doc.error(
                    &["sources", name, "reading_interval"],
                    "expected a duration above zero",
                ));
            }
        }
    }
    for (name, sink) in &config.sinks {
        match sink {
            SinkConfig::Delta(delta) => validate_delta(doc, name, delta)?,
            SinkConfig::Webhook(webhook) => validate_webhook(doc, name, webhook)?,
            SinkConfig::Kafka(kafka) => {
                validate_kafka(doc, &["sinks", name], &kafka.connection)?;
                if kafka.batch_max_records == 0 {
                    return Err(
                        doc.error(&["sinks", name, "batch_max_records"], "expected at least 1")
                    );
                }
            }
            _ => {}
        }
    }
    for (name, source) in &config.sources {
        if let SourceConfig::Kafka(kafka) = source {
            validate_kafka(doc, &["sources", name], &kafka.connection)?;
            if kafka.fetch_max_bytes < 1024 {
                return Err(doc.error(
                    &["sources", name, "fetch_max_bytes"],
                    format!("expected at least 1024, found {}", kafka.fetch_max_bytes),
                ));
            }
        }
    }
    // Two pipelines with one consumer scope would share checkpoints and ownership claims.
    let mut scopes: std::collections::BTreeMap<String, &String> = std::collections::BTreeMap::new();
    for (name, pipeline) in &config.pipelines {
        let Some(source) = config.sources.get(&pipeline.source) else {
            continue;
        };
        let scope = source.consumer_scope(&pipeline.source, name).prefix();
        if let Some(other) = scopes.insert(scope.clone(), name) {
            return Err(doc.error(
                &["pipelines", name, "source"],
                format!(
                    "pipelines `{other}` and `{name}` read the same stream as the same consumer group (`{scope}`): give the source a `consumer_group` per pipeline"
                ),
            ));
        }
    }
    let ownership = &config.checkpoint.ownership;
    if ownership.expiry.get() < std::time::Duration::from_millis(500) {
        return Err(doc.error(
            &["checkpoint", "ownership", "expiry"],
            "expected at least 500ms",
        ));
    }
    if let Some(renew) = ownership.renew_interval
        && (renew.get().is_zero() || renew.get() >= ownership.expiry.get())
    {
        return Err(doc.error(
            &["checkpoint", "ownership", "renew_interval"],
            "expected a duration above zero and shorter than `expiry`",
        ));
    }
    validate_service(config, doc)?;
    for (name, pipeline) in &config.pipelines {
        if !config.sources.contains_key(&pipeline.source) {
            return Err(doc.error(
                &["pipelines", name, "source"],
                format!(
                    "source `{}` is not defined ({})",
                    pipeline.source,
                    one_of(config.sources.keys())
                ),
            ));
        }
        if !config.sinks.contains_key(&pipeline.dead_letter) {
            return Err(doc.error(
                &["pipelines", name, "dead_letter"],
                format!(
                    "sink `{}` is not defined ({})",
                    pipeline.dead_letter,
                    one_of(config.sinks.keys())
                ),
            ));
        }
        if pipeline.batch.max_events == 0 {
            return Err(doc.error(
                &["pipelines", name, "batch", "max_events"],
                "expected at least 1",
            ));
        }
        if pipeline.stages.is_empty() {
            return Err(doc.error(
                &["pipelines", name, "stages"],
                "expected at least one stage (`[[pipelines.<name>.stages]]`)",
            ));
        }
        let mut seen = BTreeSet::new();
        for (index, stage) in pipeline.stages.iter().enumerate() {
            let index_key = index.to_string();
            let at = |key: &'static str| {
                vec![
                    "pipelines",
                    name.as_str(),
                    "stages",
                    index_key.as_str(),
                    key,
                ]
            };
            if !seen.insert(stage.name.as_str()) {
                return Err(doc.error(
                    &at("name"),
                    format!("stage name `{}` is used twice in this pipeline", stage.name),
                ));
            }
            if config.sinks.contains_key(&stage.name) {
                return Err(doc.error(
                    &at("name"),
                    format!(
                        "stage name `{}` is also a sink name: routes would be ambiguous",
                        stage.name
                    ),
                ));
            }
            let plugin = loaded.resolve(&stage.plugin);
            if !plugin.is_file() {
                return Err(doc.error(
                    &at("plugin"),
                    format!("plugin file {} does not exist (build plugins with `scripts/build-plugins`)", plugin.display()),
                ));
            }
            let later: Vec<&String> = pipeline.stages[index + 1..]
                .iter()
                .map(|s| &s.name)
                .collect();
            for (output, destinations) in &stage.outputs {
                for destination in destinations.names() {
                    let is_sink = config.sinks.contains_key(destination);
                    let is_later_stage = later.contains(&destination);
                    if !is_sink && !is_later_stage {
                        let mut keys = at("outputs");
                        keys.push(output.as_str());
                        let earlier = pipeline.stages[..=index]
                            .iter()
                            .any(|s| &s.name == destination);
                        let message = if earlier {
                            format!(
                                "`{destination}` is this stage or an earlier one: outputs may only go to sinks or later stages"
                            )
                        } else {
                            format!(
                                "`{destination}` is neither a sink ({}) nor a later stage of this pipeline",
                                one_of(config.sinks.keys())
                            )
                        };
                        return Err(doc.error(&keys, message));
                    }
                }
            }
            if stage.max_memory_bytes.is_some_and(|m| m < 1024 * 1024) {
                return Err(doc.error(&at("max_memory_bytes"), "expected at least 1048576 (1 MiB)"));
            }
        }
    }
    Ok(())
}

/// The admin API, health alerts and rollback policy.
fn validate_service(config: &super::Config, doc: &Document<'_>) -> Result<(), ConfigError> {
    if let Some(admin) = &config.admin
        && admin.address.parse::<std::net::SocketAddr>().is_err()
    {
        return Err(doc.error(
            &["admin", "address"],
            format!(
                "expected an IP address and port such as `127.0.0.1:9464`, found `{}`",
                admin.address
            ),
        ));
    }
    if let Some(admin) = &config.admin
        && admin.token.as_deref().is_some_and(|t| t.trim().is_empty())
    {
        return Err(doc.error(&["admin", "token"], "expected a non-empty token"));
    }
    if let Some(health) = &config.health {
        if !config.sinks.contains_key(&health.sink) {
            return Err(doc.error(
                &["health", "sink"],
                format!(
                    "sink `{}` is not defined ({})",
                    health.sink,
                    one_of(config.sinks.keys())
                ),
            ));
        }
        for (key, ratio) in [
            ("max_error_ratio", health.max_error_ratio),
            ("min_throughput_ratio", health.min_throughput_ratio),
        ] {
            if let Some(ratio) = ratio
                && !(0.0..=1.0).contains(&ratio)
            {
                return Err(doc.error(
                    &["health", key],
                    format!("expected a fraction between 0 and 1, found {ratio}"),
                ));
            }
        }
        if health.interval.get().is_zero() {
            return Err(doc.error(&["health", "interval"], "expected a duration above zero"));
        }
        if health.baseline_intervals == 0 {
            return Err(doc.error(&["health", "baseline_intervals"], "expected at least 1"));
        }
    }
    let rollback = &config.plugins.rollback;
    for (key, ratio) in [
        ("max_trap_ratio", rollback.max_trap_ratio),
        ("max_error_ratio", rollback.max_error_ratio),
    ] {
        if !(0.0..=1.0).contains(&ratio) {
            return Err(doc.error(
                &["plugins", "rollback", key],
                format!("expected a fraction between 0 and 1, found {ratio}"),
            ));
        }
    }
    if rollback.probation_events == 0 {
        return Err(doc.error(
            &["plugins", "rollback", "probation_events"],
            "expected at least 1",
        ));
    }
    if config.plugins.max_memory_bytes < 1024 * 1024 {
        return Err(doc.error(
            &["plugins", "max_memory_bytes"],
            "expected at least 1048576 (1 MiB)",
        ));
    }
    Ok(())
}

fn validate_kafka(
    doc: &Document<'_>,
    at: &[&str],
    connection: &super::KafkaConnection,
) -> Result<(), ConfigError> {
    let key = |k: &'static str| {
        let mut keys = at.to_vec();
        keys.push(k);
        keys
    };
    if connection.brokers.is_empty() {
        return Err(doc.error(&key("brokers"), "expected at least one `host:port`"));
    }
    for broker in &connection.brokers {
        let port = broker.rsplit_once(':').map(|(_, port)| port.parse::<u16>());
        if !matches!(port, Some(Ok(_))) {
            return Err(doc.error(
                &key("brokers"),
                format!("expected `host:port`, found `{broker}`"),
            ));
        }
    }
    if connection.topic.trim().is_empty() {
        return Err(doc.error(&key("topic"), "expected a topic name"));
    }
    Ok(())
}

fn validate_webhook(
    doc: &Document<'_>,
    name: &str,
    webhook: &super::WebhookSinkConfig,
) -> Result<(), ConfigError> {
    let url = webhook.url.trim();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(doc.error(
            &["sinks", name, "url"],
            format!(
                "expected an http:// or https:// URL, found `{}`",
                webhook.url
            ),
        ));
    }
    if webhook.batch_max_records == 0 {
        return Err(doc.error(&["sinks", name, "batch_max_records"], "expected at least 1"));
    }
    if webhook.max_backoff.get() < webhook.initial_backoff.get() {
        return Err(doc.error(
            &["sinks", name, "max_backoff"],
            "expected at least `initial_backoff`",
        ));
    }
    Ok(())
}

fn validate_delta(
    doc: &Document<'_>,
    name: &str,
    delta: &super::DeltaSinkConfig,
) -> Result<(), ConfigError> {
    if delta.columns.is_empty() {
        return Err(doc.error(&["sinks", name, "columns"], "expected at least one column"));
    }
    let mut seen = BTreeSet::new();
    for (index, column) in delta.columns.iter().enumerate() {
        let index_key = index.to_string();
        if !seen.insert(column.name.as_str()) {
            return Err(doc.error(
                &["sinks", name, "columns", &index_key, "name"],
                format!("column `{}` is defined twice", column.name),
            ));
        }
        if column.from.is_some() && column.value.is_some() {
            return Err(doc.error(
                &["sinks", name, "columns", &index_key],
                "a column takes its value either `from` a field or from a metadata `value`, not both",
            ));
        }
    }
    for (index, partition_column) in delta.partition_by.iter().enumerate() {
        if !seen.contains(partition_column.as_str()) {
            return Err(doc.error(
                &["sinks", name, "partition_by", &index.to_string()],
                format!("partition column `{partition_column}` is not one of the table's columns"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refuse(text: &str) -> String {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("p.wasm"), b"").expect("plugin placeholder");
        match load_str(text, Path::new("weir.toml"), dir.path()) {
            Ok(_) => panic!("configuration was accepted:\n{text}"),
            Err(err) => err.to_string(),
        }
    }

    const VALID: &str = r#"
[sources.sim]
kind = "simulator"

[sinks.out]
kind = "stdout"

[pipelines.p]
source = "sim"
dead_letter = "out"

[[pipelines.p.stages]]
name = "s"
plugin = "p.wasm"
outputs = { alerts = "out" }
"#;

    #[test]
    fn a_valid_file_loads() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("p.wasm"), b"").expect("plugin placeholder");
        let loaded = load_str(VALID, Path::new("weir.toml"), dir.path()).expect("valid");
        assert_eq!(
            loaded.config.pipelines["p"].stages[0].outputs["alerts"].names(),
            ["out"]
        );
    }

    #[test]
    fn unknown_field_names_line_and_key() {
        let text = VALID.replace("kind = \"simulator\"", "kind = \"simulator\"\nratez = 5");
        let err = refuse(&text);
        assert!(
            err.starts_with("weir.toml:4:1: `sources.sim.ratez`: unknown field `ratez`"),
            "{err}"
        );
        assert!(err.contains("expected one of"), "{err}");
    }

    #[test]
    fn wrong_type_names_line_and_key() {
        let text = VALID.replace(
            "kind = \"simulator\"",
            "kind = \"simulator\"\nrate = \"fast\"",
        );
        let err = refuse(&text);
        assert!(err.starts_with("weir.toml:4:"), "{err}");
        assert!(err.contains("sources.sim.rate"), "{err}");
        assert!(err.contains("expected u32"), "{err}");
    }

    #[test]
    fn unknown_sink_in_route_is_refused_with_the_defined_ones() {
        let err = refuse(&VALID.replace("alerts = \"out\"", "alerts = \"nowhere\""));
        assert!(err.starts_with("weir.toml:15:"), "{err}");
        assert!(
            err.contains("pipelines.p.stages[0].outputs.alerts"),
            "{err}"
        );
        assert!(
            err.contains("`nowhere` is neither a sink (defined: `out`)"),
            "{err}"
        );
    }

    #[test]
    fn unknown_source_and_missing_plugin_are_refused() {
        let err = refuse(&VALID.replace("source = \"sim\"", "source = \"simm\""));
        assert!(
            err.contains("`pipelines.p.source`: source `simm` is not defined (defined: `sim`)"),
            "{err}"
        );
        let err = refuse(&VALID.replace("p.wasm", "missing.wasm"));
        assert!(err.starts_with("weir.toml:14:"), "{err}");
        assert!(err.contains("missing.wasm does not exist"), "{err}");
    }

    #[test]
    fn kafka_and_webhook_settings_are_checked_with_lines() {
        let kafka = VALID.replace(
            "kind = \"simulator\"",
            "kind = \"kafka\"\nbrokers = [\"127.0.0.1:9092\"]\ntopic = \"t\"\nfetch_max_wiat = \"1s\"",
        );
        let err = refuse(&kafka);
        assert!(err.starts_with("weir.toml:6:"), "{err}");
        assert!(err.contains("unknown field `fetch_max_wiat`"), "{err}");
        let err = refuse(
            &kafka
                .replace("fetch_max_wiat = \"1s\"", "")
                .replace("127.0.0.1:9092", "nohost"),
        );
        assert!(
            err.contains("`sources.sim.brokers`: expected `host:port`, found `nohost`"),
            "{err}"
        );
        let webhook = VALID.replace("kind = \"stdout\"", "kind = \"webhook\"\nurl = \"ftp://x\"");
        let err = refuse(&webhook);
        assert!(
            err.contains("`sinks.out.url`: expected an http:// or https:// URL"),
            "{err}"
        );
        let err = refuse(&format!(
            "{VALID}\n[checkpoint.ownership]\nexpiry = \"2s\"\nrenew_interval = \"5s\"\n"
        ));
        assert!(
            err.contains("`checkpoint.ownership.renew_interval`"),
            "{err}"
        );
    }

    #[test]
    fn bad_duration_and_syntax_errors_have_lines() {
        let err = refuse(&format!(
            "{VALID}\n[checkpoint]\ninterval = \"5 parsecs\"\n"
        ));
        assert!(err.contains("`checkpoint.interval`"), "{err}");
        assert!(err.contains("unknown duration unit"), "{err}");
        let err = refuse("[sources.sim\nkind = 1");
        assert!(err.starts_with("weir.toml:1:"), "{err}");
    }
}
