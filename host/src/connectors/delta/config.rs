//! Configuration of the Delta Lake sink.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::config::{ConfigError, Document};

/// A Delta Lake table with an explicit schema.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaSinkConfig {
    /// Table location: a local directory, or on Azure Data Lake Storage Gen2 / Blob Storage
    /// `abfss://<container>@<account>.dfs.core.windows.net/<path>` or `az://<container>/<path>`.
    pub path: String,
    /// Options of the table's object store (for Azure: `azure_storage_account_name`,
    /// `azure_storage_account_key`, `azure_client_id`, `azure_storage_endpoint`, …); `${NAME}` in
    /// a value is replaced by the environment variable `NAME`. Without credentials here, the
    /// `AZURE_*` environment variables and managed identity are used.
    #[serde(default)]
    pub storage_options: BTreeMap<String, String>,
    /// Columns of the table, in order.
    pub columns: Vec<DeltaColumn>,
    /// Columns the table is partitioned by (each must be one of `columns`).
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// Commit early once this many rows are buffered (a checkpoint always commits).
    #[serde(default = "default_max_buffered_rows")]
    pub max_buffered_rows: usize,
}

fn default_max_buffered_rows() -> usize {
    200_000
}

/// One column of a Delta table and where its value comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaColumn {
    /// Column name.
    pub name: String,
    /// Column type.
    #[serde(rename = "type")]
    pub data_type: ColumnType,
    /// Top-level field of the record's JSON that fills the column; defaults to `name`.
    #[serde(default)]
    pub from: Option<String>,
    /// Fill the column from the record's metadata instead of its JSON.
    #[serde(default)]
    pub value: Option<ColumnValue>,
    /// Whether the column may be null; a non-nullable column missing from a record sends the
    /// record to the dead-letter sink.
    #[serde(default = "default_true")]
    pub nullable: bool,
}

/// Types a Delta column can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// UTF-8 text.
    String,
    /// 64-bit signed integer.
    Long,
    /// 32-bit signed integer.
    Integer,
    /// 64-bit float.
    Double,
    /// Boolean.
    Boolean,
    /// Instant with microsecond precision, UTC (from RFC 3339 text or epoch milliseconds).
    Timestamp,
    /// Calendar date (from `YYYY-MM-DD`, or the UTC date of a timestamp).
    Date,
}

/// Record metadata a column can be filled from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnValue {
    /// When the sink received the record.
    IngestionTime,
    /// The event time of the input event the record derives from.
    EventTime,
    /// The source partition.
    Partition,
    /// The source position of the input event the record derives from.
    Position,
    /// The version (content hash) of the plugin that produced the record; null for records no
    /// plugin produced (dead letters of the decoding step).
    PluginVersion,
    /// The versions of every plugin stage the record went through, in pipeline order:
    /// `stage@crate-version+hash,...` (`stage@hash` for a component without a crate version);
    /// null for records no plugin produced.
    PluginVersions,
}

fn default_true() -> bool {
    true
}

/// Checks a Delta sink: its columns, each defined once and filled one way, and its partition
/// columns.
pub(crate) fn validate_sink(
    doc: &Document<'_>,
    name: &str,
    delta: &DeltaSinkConfig,
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
