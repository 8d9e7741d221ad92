//! Reading a configuration file and refusing a bad one with the file, line, key and expectation.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use super::{Config, PipelineConfig, SinkConfig, SourceConfig, StageConfig};

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
    /// The file's text, to locate keys in errors found after loading (empty: unknown).
    pub text: std::sync::Arc<str>,
}

impl LoadedConfig {
    /// Where `keys` (such as `["pipelines", "p", "stages", "0", "plugin"]`) is in the file, as
    /// `file:line:column`, for errors found after loading (a plugin refused at start).
    pub fn location(&self, keys: &[&str]) -> String {
        let doc = Document {
            text: &self.text,
            path: &self.path,
        };
        let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        let (line, column) = doc
            .span_of(&keys)
            .map_or((1, 1), |span| line_and_column(&self.text, span.start));
        format!("{}:{line}:{column}", self.path.display())
    }

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
    let mut loaded = LoadedConfig {
        config,
        path: path.to_path_buf(),
        base_dir: base_dir.to_path_buf(),
        text: text.into(),
    };
    for (name, pipeline) in &mut loaded.config.pipelines {
        pipeline.sources = source_names(&doc, name, pipeline)?;
        pipeline.source = pipeline.sources.first().cloned().unwrap_or_default();
    }
    let mut stages = validate(&loaded, &doc)?;
    // Past loading, a stage is its one resolved kind: the tables as written are dropped.
    for (name, pipeline) in &mut loaded.config.pipelines {
        pipeline.source_entries = super::stage::source_entries(pipeline);
        pipeline.stage_tables = Vec::new();
        pipeline.stages = stages.remove(name).unwrap_or_default();
    }
    Ok(loaded)
}

/// A pipeline's sources: its `source`, or its `sources` (one of the two, each name once).
fn source_names(
    doc: &Document<'_>,
    name: &str,
    pipeline: &PipelineConfig,
) -> Result<Vec<String>, ConfigError> {
    match (&pipeline.one_source, &pipeline.source_list) {
        (Some(_), Some(_)) => Err(doc.error(
            &["pipelines", name, "sources"],
            "a pipeline names its sources once: `source = \"<name>\"` for one, or `sources = [..]` for several, not both",
        )),
        (None, None) => Err(doc.error(
            &["pipelines", name],
            "missing field `source`: expected `source = \"<name>\"`, or `sources = [..]` for several",
        )),
        (Some(one), None) => Ok(vec![one.clone()]),
        (None, Some(list)) => {
            if list.is_empty() {
                return Err(doc.error(
                    &["pipelines", name, "sources"],
                    "expected at least one source",
                ));
            }
            for (index, source) in list.iter().enumerate() {
                if list[..index].contains(source) {
                    return Err(doc.error(
                        &["pipelines", name, "sources", &index.to_string()],
                        format!("source `{source}` is named twice"),
                    ));
                }
            }
            Ok(list.clone())
        }
    }
}

/// The text of a configuration file, for locating keys in error messages.
pub(crate) struct Document<'a> {
    text: &'a str,
    path: &'a Path,
}

impl<'a> Document<'a> {
    /// The document `text`, read from `path`.
    pub(crate) fn new(text: &'a str, path: &'a Path) -> Self {
        Document { text, path }
    }
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
            ("sources", "bookings") => check::<super::BookingsSourceConfig>(value),
            ("sources", "kafka") => check::<super::KafkaSourceConfig>(value),
            ("sinks", "kafka") => check::<super::KafkaSinkConfig>(value),
            ("sinks", "webhook") => check::<super::WebhookSinkConfig>(value),
            ("sinks", "delta") => check::<super::DeltaSinkConfig>(value),
            ("sinks", "file") => check::<super::FileSinkConfig>(value),
            ("sinks", "stdout") => check::<super::StdoutSinkConfig>(value),
            ("sources", "eventhubs") => check::<super::EventHubsSourceConfig>(value),
            ("sinks", "eventhubs") => check::<super::EventHubsSinkConfig>(value),
            _ => return None,
        };
        let err = result.err()?;
        let mut full = keys.to_vec();
        let inner_keys = path_segments(err.path());
        // The Kafka connection is `flatten`ed, which hides the path of an error inside its
        // nested tables: look into them one by one.
        if inner_keys.is_empty() && kind.as_ref() == "kafka" {
            for table in ["sasl", "tls"] {
                let Some(value) = find(fields, table) else {
                    continue;
                };
                let value = toml::de::ValueDeserializer::from(value.clone());
                let nested = match table {
                    "sasl" => check::<super::KafkaSasl>(value),
                    _ => check::<super::KafkaTls>(value),
                };
                if let Err(nested) = nested {
                    full.push(table.to_owned());
                    full.extend(path_segments(nested.path()));
                    return Some((full, nested.into_inner()));
                }
            }
        }
        full.extend(inner_keys);
        Some((full, err.into_inner()))
    }

    /// An error at the key path `keys`.
    pub(crate) fn error(&self, keys: &[&str], message: impl Into<String>) -> ConfigError {
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

pub(super) fn one_of<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<String> = names.map(|n| format!("`{n}`")).collect();
    if names.is_empty() {
        "none are defined".to_owned()
    } else {
        format!("defined: {}", names.join(", "))
    }
}

/// Cross-references and ranges that types alone cannot express, section by section in the order
/// below (the first error found is the one reported); returns each pipeline's resolved stages.
fn validate(
    loaded: &LoadedConfig,
    doc: &Document<'_>,
) -> Result<BTreeMap<String, Vec<StageConfig>>, ConfigError> {
    let config = &loaded.config;
    if config.pipelines.is_empty() {
        return Err(doc.error(
            &["pipelines"],
            "no pipeline is defined: expected at least one `[pipelines.<name>]` table",
        ));
    }
    validate_sources(doc, config)?;
    validate_sinks(loaded, doc)?;
    validate_kafka_sources(loaded, doc)?;
    validate_consumer_scopes(doc, config)?;
    validate_checkpoint(doc, config)?;
    validate_service(config, doc)?;
    let mut stages = BTreeMap::new();
    for (name, pipeline) in &config.pipelines {
        validate_pipeline(doc, config, name, pipeline)?;
        stages.insert(
            name.clone(),
            super::stage::resolve_stages(loaded, doc, name, pipeline)?,
        );
    }
    Ok(stages)
}

/// Partition counts, then each generator's settings.
fn validate_sources(doc: &Document<'_>, config: &Config) -> Result<(), ConfigError> {
    for (name, source) in &config.sources {
        let partitions = source.partitions().unwrap_or(1);
        if !(1..=4096).contains(&partitions) {
            return Err(doc.error(
                &["sources", name, "partitions"],
                format!("expected between 1 and 4096 partitions, found {partitions}"),
            ));
        }
        if let SourceConfig::EventHubs(eventhubs) = source {
            crate::connectors::eventhubs::config::validate_source(doc, name, eventhubs)?;
        }
        if let SourceConfig::Simulator(sim) = source {
            crate::generators::telemetry::config::validate(doc, name, sim)?;
        }
        if let SourceConfig::Http(http) = source {
            crate::connectors::http::config::validate_source(doc, name, http)?;
        }
    }
    for (name, source) in &config.sources {
        if let SourceConfig::Bookings(bookings) = source {
            crate::generators::bookings::config::validate(doc, name, bookings)?;
        }
    }
    Ok(())
}

/// Each sink's settings.
fn validate_sinks(loaded: &LoadedConfig, doc: &Document<'_>) -> Result<(), ConfigError> {
    for (name, sink) in &loaded.config.sinks {
        match sink {
            SinkConfig::Delta(delta) => {
                crate::connectors::delta::config::validate_sink(doc, name, delta)?;
            }
            SinkConfig::Webhook(webhook) => {
                crate::connectors::webhook::config::validate_sink(doc, name, webhook)?;
            }
            SinkConfig::Kafka(kafka) => {
                crate::connectors::kafka::config::validate_sink(loaded, doc, name, kafka)?;
            }
            _ => {}
        }
        if let SinkConfig::EventHubs(eventhubs) = sink {
            crate::connectors::eventhubs::config::validate_sink(doc, name, eventhubs)?;
        }
    }
    Ok(())
}

/// Each Kafka source's connection and fetch size.
fn validate_kafka_sources(loaded: &LoadedConfig, doc: &Document<'_>) -> Result<(), ConfigError> {
    for (name, source) in &loaded.config.sources {
        if let SourceConfig::Kafka(kafka) = source {
            crate::connectors::kafka::config::validate_source(loaded, doc, name, kafka)?;
        }
    }
    Ok(())
}

/// Two pipelines with one consumer scope would share checkpoints and ownership claims, or take
/// each other's readers: every source of each pipeline is compared, not only the first (whose
/// scope holds a several-source pipeline's checkpoints).
fn validate_consumer_scopes(doc: &Document<'_>, config: &Config) -> Result<(), ConfigError> {
    let mut scopes: BTreeMap<String, &String> = BTreeMap::new();
    for (name, pipeline) in &config.pipelines {
        let mut own: Vec<String> = Vec::new();
        for source_name in &pipeline.sources {
            let Some(source) = config.sources.get(source_name) else {
                continue;
            };
            let scope = source.consumer_scope(source_name, name).prefix();
            if let Some(other) = scopes.get(&scope) {
                let key = if pipeline.one_source.is_some() {
                    "source"
                } else {
                    "sources"
                };
                return Err(doc.error(
                    &["pipelines", name, key],
                    format!(
                        "pipelines `{other}` and `{name}` read the same stream as the same consumer group (`{scope}`): give the source a `consumer_group` per pipeline"
                    ),
                ));
            }
            own.push(scope);
        }
        for scope in own {
            scopes.insert(scope, name);
        }
    }
    Ok(())
}

/// The ownership claims' expiry and renewal.
fn validate_checkpoint(doc: &Document<'_>, config: &Config) -> Result<(), ConfigError> {
    if let Some(credential) = config
        .checkpoint
        .azure_blob
        .as_ref()
        .and_then(|blob| blob.credential.as_ref())
    {
        crate::connectors::entra::config::validate_storage(
            doc,
            &["checkpoint", "azure_blob", "credential"],
            credential,
        )?;
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
    Ok(())
}

/// A pipeline's source and dead-letter sink exist, its out-of-order share is one, its batches
/// hold events, it has stages.
fn validate_pipeline(
    doc: &Document<'_>,
    config: &Config,
    name: &str,
    pipeline: &PipelineConfig,
) -> Result<(), ConfigError> {
    for (index, source) in pipeline.sources.iter().enumerate() {
        if !config.sources.contains_key(source) {
            let index = index.to_string();
            let keys: &[&str] = if pipeline.one_source.is_some() {
                &["pipelines", name, "source"]
            } else {
                &["pipelines", name, "sources", &index]
            };
            return Err(doc.error(
                keys,
                format!(
                    "source `{source}` is not defined ({})",
                    one_of(config.sources.keys())
                ),
            ));
        }
    }
    validate_source_event_times(doc, name, pipeline)?;
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
    if let Some(share) = pipeline
        .event_time
        .as_ref()
        .and_then(|t| t.max_out_of_order_share)
        && !(0.0..=1.0).contains(&share)
    {
        return Err(doc.error(
            &["pipelines", name, "event_time", "max_out_of_order_share"],
            format!("expected a share from 0 to 1 (0.01 is 1%), found {share}"),
        ));
    }
    if pipeline.batch.max_events == 0 {
        return Err(doc.error(
            &["pipelines", name, "batch", "max_events"],
            "expected at least 1",
        ));
    }
    if pipeline.stage_tables.is_empty() {
        return Err(doc.error(
            &["pipelines", name, "stages"],
            "expected at least one stage (`[[pipelines.<name>.stages]]`)",
        ));
    }
    Ok(())
}

/// A pipeline's `event_time.sources` tables name its sources, and hold no tables of their own.
fn validate_source_event_times(
    doc: &Document<'_>,
    name: &str,
    pipeline: &PipelineConfig,
) -> Result<(), ConfigError> {
    let Some(event_time) = &pipeline.event_time else {
        return Ok(());
    };
    for (source, own) in &event_time.sources {
        let keys = ["pipelines", name, "event_time", "sources", source.as_str()];
        if !pipeline.sources.contains(source) {
            return Err(doc.error(
                &keys,
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
        if !own.sources.is_empty() {
            return Err(doc.error(
                &[&keys[..], &["sources"]].concat(),
                "a source's event-time table holds its own settings, not other sources'",
            ));
        }
        if let Some(share) = own.max_out_of_order_share
            && !(0.0..=1.0).contains(&share)
        {
            return Err(doc.error(
                &[&keys[..], &["max_out_of_order_share"]].concat(),
                format!("expected a share from 0 to 1 (0.01 is 1%), found {share}"),
            ));
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
    if let Some(admin) = &config.admin {
        let listener = crate::net::ListenerConfig {
            address: &admin.address,
            tls: admin.tls.as_ref(),
            allow_plain_http: admin.allow_plain_http,
        };
        if let Some(refusal) = listener.refusal() {
            return Err(doc.error(&["admin", "address"], refusal));
        }
        if admin
            .read_token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return Err(doc.error(&["admin", "read_token"], "expected a non-empty token"));
        }
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
    if let Err((index, reason)) =
        crate::plugin::signature::TrustedKeys::parse(&config.plugins.trusted_keys)
    {
        return Err(doc.error(
            &["plugins", "trusted_keys", &index.to_string()],
            format!("expected an Ed25519 public key in base64: {reason}"),
        ));
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

    /// `VALID` with a second simulator `pay` and the pipeline reading `sources`, then `extra`
    /// appended.
    fn two_sources(sources: &str, extra: &str) -> String {
        VALID
            .replace(
                "[sinks.out]",
                "[sources.pay]\nkind = \"simulator\"\n\n[sinks.out]",
            )
            .replace("source = \"sim\"", &format!("sources = {sources}"))
            + extra
    }

    fn load_ok(text: &str) -> LoadedConfig {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("p.wasm"), b"").expect("plugin placeholder");
        load_str(text, Path::new("weir.toml"), dir.path()).expect("valid")
    }

    #[test]
    fn a_pipeline_reads_several_sources_each_with_its_event_time() {
        let loaded = load_ok(&two_sources(
            r#"["sim", "pay"]"#,
            "\n[pipelines.p.event_time]\nfield = \"ts\"\nidle_timeout = \"5s\"\n\
             [pipelines.p.event_time.sources.pay]\nfield = \"paid_at\"\n",
        ));
        let pipeline = &loaded.config.pipelines["p"];
        assert_eq!(pipeline.sources, ["sim", "pay"]);
        assert_eq!(pipeline.source_label(), "sim+pay");
        let own = |s: &str| pipeline.event_time_of(s).expect("event time");
        assert_eq!(own("sim").field.as_deref(), Some("ts"));
        assert_eq!(own("pay").field.as_deref(), Some("paid_at"));
        // A key the source's table leaves out is the pipeline's.
        assert_eq!(
            own("pay").idle_timeout.map(|d| d.get()),
            Some(std::time::Duration::from_secs(5))
        );
        // Both enter the first stage by default (a union).
        let first = [crate::config::SourceEntry {
            stage: 0,
            right: false,
        }];
        assert_eq!(pipeline.source_entries["sim"], first);
        assert_eq!(pipeline.source_entries["pay"], first);
        // One source stays `source = ".."`.
        assert_eq!(load_ok(VALID).config.pipelines["p"].sources, ["sim"]);
    }

    #[test]
    fn bad_sources_are_refused_with_file_line_and_key() {
        let err = refuse(&two_sources(r#"["sim", "nope"]"#, ""));
        assert!(
            err.starts_with("weir.toml:12:19:")
                && err.contains(
                    "`pipelines.p.sources[1]`: source `nope` is not defined (defined: `pay`, `sim`)"
                ),
            "{err}"
        );
        let err =
            refuse(&VALID.replace("source = \"sim\"", "source = \"sim\"\nsources = [\"sim\"]"));
        assert!(
            err.contains("`pipelines.p.sources`: a pipeline names its sources once"),
            "{err}"
        );
        let err = refuse(&two_sources(r#"["sim", "sim"]"#, ""));
        assert!(err.contains("source `sim` is named twice"), "{err}");
        let err = refuse(&two_sources(
            r#"["sim", "pay"]"#,
            "\n[pipelines.p.event_time.sources.other]\nfield = \"t\"\n",
        ));
        assert!(
            err.contains("`pipelines.p.event_time.sources.other`: `other` is not a source of this pipeline (its sources: `sim`, `pay`)"),
            "{err}"
        );
        // A stage's `input` names a source of the pipeline; `left` belongs to joins.
        let err = refuse(&two_sources(r#"["sim", "pay"]"#, "").replace(
            "outputs = { alerts = \"out\" }",
            "outputs = { alerts = \"out\" }\ninput = \"other\"",
        ));
        assert!(
            err.contains("`pipelines.p.stages[0].input`: `other` is not a source of this pipeline"),
            "{err}"
        );
        let err = refuse(&two_sources(r#"["sim", "pay"]"#, "").replace(
            "outputs = { alerts = \"out\" }",
            "outputs = { alerts = \"out\" }\nleft = \"sim\"",
        ));
        assert!(
            err.contains("`pipelines.p.stages[0].left`: `left` belongs to a join stage"),
            "{err}"
        );
    }

    #[test]
    fn a_join_reads_its_sides_straight_from_sources() {
        let join = "\njoin = { key = \"id\", within = \"2m\" }\nleft = \"sim\"\nright = \"pay\"";
        let text = two_sources(r#"["sim", "pay"]"#, "").replace(
            "outputs = { alerts = \"out\" }",
            &format!("outputs = {{ alerts = \"out\" }}{join}"),
        );
        let pipeline = load_ok(&text).config.pipelines["p"].clone();
        assert_eq!(
            pipeline.source_entries["pay"],
            [crate::config::SourceEntry {
                stage: 0,
                right: true
            }]
        );
        let err = refuse(&text.replace("right = \"pay\"", "right = \"payments\""));
        assert!(
            err.starts_with("weir.toml:")
                && err.contains("`pipelines.p.stages[0].right`: `payments` is not a source of this pipeline (its sources: `sim`, `pay`)"),
            "{err}"
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
    fn the_out_of_order_share_is_a_share_with_file_line_and_key() {
        let with = |share: &str| {
            VALID.replace(
                "dead_letter = \"out\"",
                &format!(
                    "dead_letter = \"out\"\nevent_time = {{ field = \"ts\", max_out_of_order_share = {share} }}"
                ),
            )
        };
        let err = refuse(&with("1.5"));
        assert!(err.starts_with("weir.toml:11:"), "{err}");
        assert!(
            err.contains("`pipelines.p.event_time.max_out_of_order_share`: expected a share from 0 to 1 (0.01 is 1%), found 1.5"),
            "{err}"
        );
        assert!(refuse(&with("-0.1")).contains("found -0.1"));
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("p.wasm"), b"").expect("plugin placeholder");
        let loaded = load_str(&with("0.05"), Path::new("weir.toml"), dir.path()).expect("valid");
        let event_time = loaded.config.pipelines["p"].event_time.clone();
        assert_eq!(
            event_time.and_then(|t| t.max_out_of_order_share),
            Some(0.05)
        );
    }

    #[test]
    fn windows_and_dedup_stages_are_checked_with_their_key() {
        let window = |table: &str| {
            refuse(&VALID.replace(
                "outputs = { alerts = \"out\" }",
                &format!("outputs = {{ alerts = \"out\" }}\nwindow = {table}"),
            ))
        };
        let err = window(r#"{ type = "tumbling" }"#);
        assert!(
            err.contains("`pipelines.p.stages[0].window`: a tumbling window needs `size`"),
            "{err}"
        );
        let err = window(r#"{ type = "session", gap = "30s", hop = "1m" }"#);
        assert!(
            err.contains("`pipelines.p.stages[0].window.hop`: a session window has no `hop`"),
            "{err}"
        );
        let err = window(r#"{ type = "hopping", size = "1m", hop = "2m" }"#);
        assert!(err.contains("cannot be longer than its size"), "{err}");
        let err = window(r#"{ type = "rolling", size = "1m" }"#);
        assert!(err.contains("unknown variant `rolling`"), "{err}");

        let dedup = VALID.replace(
            "plugin = \"p.wasm\"\noutputs = { alerts = \"out\" }",
            "dedup = { id_field = \"EventId\", horizon = \"10m\" }\noutputs = { events = \"out\" }",
        );
        let dir = tempfile::tempdir().expect("temp dir");
        load_str(&dedup, Path::new("weir.toml"), dir.path())
            .expect("a dedup stage needs no plugin");
        let err = refuse(&dedup.replace("events = ", "kept = "));
        assert!(
            err.contains("a `dedup` stage has one output, `events`"),
            "{err}"
        );
        let err = refuse(&VALID.replace("plugin = \"p.wasm\"\n", ""));
        assert!(err.contains("needs a `plugin`"), "{err}");
    }

    #[test]
    fn a_join_is_fed_through_its_two_inputs() {
        let two_stages = |route: &str| {
            format!(
                "{}\n[[pipelines.p.stages]]\nname = \"j\"\nplugin = \"p.wasm\"\njoin = {{ key = \"K\", within = \"2m\" }}\noutputs = {{ rows = \"out\" }}\n",
                VALID.replace("alerts = \"out\"", route)
            )
        };
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("p.wasm"), b"").expect("plugin placeholder");
        load_str(
            &two_stages("a = \"j.left\", b = \"j.right\""),
            Path::new("weir.toml"),
            dir.path(),
        )
        .expect("routes to both inputs");
        let err = refuse(&two_stages("a = \"j\""));
        assert!(
            err.contains("`j` is a join: route to one of its inputs, `j.left` or `j.right`"),
            "{err}"
        );
        let err = refuse(&two_stages("a = \"out.left\""));
        assert!(err.contains("is neither a sink"), "{err}");
        let err = refuse(&two_stages("a = \"out\""));
        assert!(err.contains("nothing routes to join `j`"), "{err}");
    }

    #[test]
    fn reference_tables_must_exist_and_have_a_known_format() {
        let with = |table: &str| {
            VALID.replace(
                "outputs = { alerts = \"out\" }",
                &format!("outputs = {{ alerts = \"out\" }}\nreference = {{ venues = {table} }}"),
            )
        };
        let err = refuse(&with(r#"{ path = "missing.csv", key = "Id" }"#));
        assert!(
            err.contains("`pipelines.p.stages[0].reference.venues.path`: reference table"),
            "{err}"
        );
        let err = refuse(&with(r#"{ path = "p.wasm", key = "Id" }"#));
        assert!(
            err.contains("set `format` to `csv`, `json` or `delta`"),
            "{err}"
        );
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
    fn event_hubs_settings_are_refused_with_file_line_key_and_expectation() {
        const CONNECTION: &str = "connection_string = \"Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=s;EntityPath=hub\"";
        // The source's settings start on line 4: line 2 is `[sources.sim]`, line 3 its kind.
        let source = |settings: &str| {
            VALID.replace(
                "kind = \"simulator\"",
                &format!("kind = \"eventhubs\"\n{settings}"),
            )
        };
        // The sink's settings start on line 7: line 5 is `[sinks.out]`, line 6 its kind.
        let sink = |settings: &str| {
            VALID.replace(
                "kind = \"stdout\"",
                &format!("kind = \"eventhubs\"\n{settings}"),
            )
        };
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("p.wasm"), b"").expect("plugin placeholder");
        for valid in [
            source(CONNECTION),
            source(&format!(
                "{CONNECTION}\ncustom_endpoint = \"amqp://127.0.0.1:5672\"\nstart_position = {{ enqueued_time = \"2026-01-01T00:00:00.5Z\" }}"
            )),
            sink(CONNECTION),
        ] {
            load_str(&valid, Path::new("weir.toml"), dir.path())
                .unwrap_or_else(|err| panic!("{err}\n{valid}"));
        }

        // (configuration, line, key, expectation)
        let cases = [
            (
                source(&format!("{CONNECTION}\nconnection_string_env = \"HUB\"")),
                5,
                "sources.sim.connection_string_env",
                "give either `connection_string` or `connection_string_env`, not both",
            ),
            (
                source("event_hub = \"hub\""),
                2,
                "sources.sim",
                "expected `connection_string` (or `connection_string_env`",
            ),
            (
                source("connection_string = \"SharedAccessKey=s\""),
                4,
                "sources.sim.connection_string",
                "expected `Endpoint=sb://<namespace>/;SharedAccessKeyName=...;SharedAccessKey=...`",
            ),
            (
                source(&format!(
                    "{CONNECTION}\ncustom_endpoint = \"http://127.0.0.1:5672\""
                )),
                5,
                "sources.sim.custom_endpoint",
                "expected an `amqp://host:port` or `amqps://host:port` URL, found `http://127.0.0.1:5672`",
            ),
            (
                source(&format!("{CONNECTION}\nevent_hub = \"\"")),
                5,
                "sources.sim.event_hub",
                "expected an Event Hub name",
            ),
            (
                source(&format!(
                    "{CONNECTION}\nstart_position = {{ enqueued_time = \"yesterday\" }}"
                )),
                5,
                "sources.sim.start_position.enqueued_time",
                "expected an RFC 3339 time such as `2026-01-01T00:00:00Z`, found `yesterday`",
            ),
            (
                source(&format!(
                    "{CONNECTION}\nstart_position = {{ sequence_number = -1 }}"
                )),
                5,
                "sources.sim.start_position.sequence_number",
                "expected a sequence number of 0 or more, found -1",
            ),
            (
                source(&format!(
                    "{CONNECTION}\nstart_position = {{ offset = \"\" }}"
                )),
                5,
                "sources.sim.start_position.offset",
                "expected an offset",
            ),
            (
                source(&format!("{CONNECTION}\nstart_position = \"newest\"")),
                5,
                "sources.sim.start_position",
                "unknown variant `newest`",
            ),
            (
                source(&format!("{CONNECTION}\n\nprefetch = 0")),
                6,
                "sources.sim.prefetch",
                "expected at least 1 event",
            ),
            (
                source(&format!("{CONNECTION}\nconsumer_group = \"\"")),
                5,
                "sources.sim.consumer_group",
                "expected a consumer group name (the default one is `$Default`)",
            ),
            (
                source(&format!("{CONNECTION}\nlag_interval = \"0s\"")),
                5,
                "sources.sim.lag_interval",
                "expected a duration above zero",
            ),
            (
                source(&format!("{CONNECTION}\nowner_levl = 1")),
                5,
                "sources.sim.owner_levl",
                "unknown field `owner_levl`",
            ),
            (
                sink(&format!("{CONNECTION}\nconnection_string_env = \"HUB\"")),
                8,
                "sinks.out.connection_string_env",
                "give either `connection_string` or `connection_string_env`, not both",
            ),
            (
                sink(&format!(
                    "{CONNECTION}\ncustom_endpoint = \"127.0.0.1:5672\""
                )),
                8,
                "sinks.out.custom_endpoint",
                "expected an `amqp://host:port` or `amqps://host:port` URL",
            ),
            (
                sink(&format!("{CONNECTION}\nmax_attempts = 0")),
                8,
                "sinks.out.max_attempts",
                "expected at least 1 attempt",
            ),
            (
                sink(&format!("{CONNECTION}\npartition_by = \"device\"")),
                8,
                "sinks.out.partition_by",
                "unknown variant `device`",
            ),
        ];
        for (text, line, key, expectation) in cases {
            let err = refuse(&text);
            let at = format!("weir.toml:{line}:");
            assert!(err.starts_with(&at), "expected {at}, got: {err}\n{text}");
            assert!(
                err.contains(&format!("`{key}`: {expectation}")),
                "expected `{key}`: {expectation}, got: {err}\n{text}"
            );
        }
    }

    #[test]
    fn kafka_sasl_and_tls_settings_load_and_are_checked_with_lines() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("p.wasm"), b"").expect("plugin placeholder");
        std::fs::write(dir.path().join("ca.pem"), b"").expect("CA placeholder");
        let kafka = |settings: &str| {
            VALID.replace(
                "kind = \"simulator\"",
                &format!(
                    "kind = \"kafka\"\nbrokers = [\"ns.servicebus.windows.net:9093\"]\ntopic = \"t\"\n{settings}"
                ),
            )
        };
        // Event Hubs' Kafka endpoint: TLS with the system's roots, SASL PLAIN.
        let text = kafka(
            "tls = {}\nsasl = { mechanism = \"plain\", username = \"$ConnectionString\", password = \"${EH_CONNECTION}\" }\nmax_outage = \"2m\"",
        );
        let loaded = load_str(&text, Path::new("weir.toml"), dir.path()).expect("valid");
        let SourceConfig::Kafka(source) = &loaded.config.sources["sim"] else {
            panic!("a Kafka source");
        };
        let connection = &source.connection;
        let sasl = connection.sasl.as_ref().expect("sasl");
        assert_eq!(sasl.mechanism, super::super::SaslMechanism::Plain);
        assert_eq!(sasl.username, "$ConnectionString");
        assert_eq!(
            sasl.password, "${EH_CONNECTION}",
            "expanded at connect, not at load"
        );
        assert!(connection.tls.as_ref().is_some_and(|t| t.ca_file.is_none()));
        assert_eq!(
            connection.max_outage.get(),
            std::time::Duration::from_secs(120)
        );
        // The mechanism defaults to PLAIN; SCRAM is spelled as in Kafka's configuration.
        let text = kafka(
            "tls = { ca_file = \"ca.pem\" }\n[sources.sim.sasl]\nusername = \"u\"\npassword = \"p\"",
        );
        let loaded = load_str(&text, Path::new("weir.toml"), dir.path()).expect("valid");
        let SourceConfig::Kafka(source) = &loaded.config.sources["sim"] else {
            panic!("a Kafka source");
        };
        assert_eq!(
            source.connection.sasl.as_ref().map(|s| s.mechanism),
            Some(super::super::SaslMechanism::Plain)
        );
        let text =
            kafka("sasl = { mechanism = \"scram-sha-512\", username = \"u\", password = \"p\" }");
        load_str(&text, Path::new("weir.toml"), dir.path()).expect("SCRAM is valid");

        // Errors name file, line and key.
        let err = refuse(&kafka(
            "sasl = { mechanism = \"PLAIN-TEXT\", username = \"u\", password = \"p\" }",
        ));
        assert!(err.starts_with("weir.toml:6:"), "{err}");
        assert!(err.contains("sources.sim.sasl.mechanism"), "{err}");
        assert!(err.contains("unknown variant `PLAIN-TEXT`"), "{err}");
        assert!(
            err.contains("`plain`, `scram-sha-256`, `scram-sha-512`"),
            "{err}"
        );
        let err = refuse(&kafka("sasl = { username = \"u\" }"));
        assert!(err.starts_with("weir.toml:6:"), "{err}");
        assert!(err.contains("missing field `password`"), "{err}");
        let err = refuse(&kafka(
            "sasl = { username = \"u\", password = \"p\", mechanizm = \"plain\" }",
        ));
        assert!(err.contains("unknown field `mechanizm`"), "{err}");
        let err = refuse(&kafka("sasl = { username = \" \", password = \"p\" }"));
        assert!(err.starts_with("weir.toml:6:"), "{err}");
        assert!(
            err.contains("`sources.sim.sasl.username`: expected a user name"),
            "{err}"
        );
        let err = refuse(&kafka("sasl = { username = \"u\", password = \"\" }"));
        assert!(
            err.contains("`sources.sim.sasl.password`: expected a password"),
            "{err}"
        );
        let err = refuse(&kafka("tls = { ca_file = \"missing.pem\" }"));
        assert!(err.starts_with("weir.toml:6:"), "{err}");
        assert!(err.contains("`sources.sim.tls.ca_file`"), "{err}");
        assert!(err.contains("missing.pem"), "{err}");
        let err = refuse(&kafka("tls = { cafile = \"ca.pem\" }"));
        assert!(err.contains("unknown field `cafile`"), "{err}");
        // The sink has the same settings.
        let sink = VALID.replace(
            "kind = \"stdout\"",
            "kind = \"kafka\"\nbrokers = [\"127.0.0.1:9092\"]\ntopic = \"t\"\nsasl = { username = \"\", password = \"p\" }",
        );
        let err = refuse(&sink);
        assert!(err.contains("`sinks.out.sasl.username`"), "{err}");
    }

    #[test]
    fn two_pipelines_may_not_share_the_consumer_scope_of_any_of_their_sources() {
        let hub = |name: &str, hub: &str| {
            format!(
                "[sources.{name}]\nkind = \"eventhubs\"\nconnection_string = \"Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=s;EntityPath={hub}\"\n"
            )
        };
        let config = |second_group: &str| {
            format!(
                "{}{}[sinks.out]\nkind = \"stdout\"\n\n[pipelines.joined]\nsources = [\"bookings\", \"payments\"]\ndead_letter = \"out\"\n\n[[pipelines.joined.stages]]\nname = \"s\"\nplugin = \"p.wasm\"\noutputs = {{ alerts = \"out\" }}\n\n{}[pipelines.audit]\nsource = \"payments_again\"\ndead_letter = \"out\"\n\n[[pipelines.audit.stages]]\nname = \"s\"\nplugin = \"p.wasm\"\noutputs = {{ alerts = \"out\" }}\n",
                hub("bookings", "bookingstopic"),
                hub("payments", "paymentstopic"),
                hub("payments_again", "paymentstopic") + second_group,
            )
        };
        // One pipeline reads the other's second source as the same consumer group: refused,
        // although their first sources differ.
        let err = refuse(&config(""));
        assert!(
            err.contains("`pipelines.joined.sources`")
                && err.contains(
                    "pipelines `audit` and `joined` read the same stream as the same consumer group"
                ),
            "{err}"
        );
        // With a consumer group of its own it loads.
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("p.wasm"), b"").expect("plugin placeholder");
        let text = config("consumer_group = \"audit\"\n");
        load_str(&text, Path::new("weir.toml"), dir.path())
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
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
