//! Configuration of the Delta Lake sink.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

pub use super::types::{ColumnType, StructMember};
use crate::config::{ConfigDuration, ConfigError, Document};

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
    /// Sign in to Azure Storage or Fabric OneLake with Microsoft Entra ID: `{ kind =
    /// "managed_identity" | "workload_identity" | "client_secret" | "client_certificate" |
    /// "azure_cli", ... }`, through the Azure SDK's identity crate (checked at start).
    #[serde(default)]
    pub credential: Option<crate::connectors::entra::EntraCredential>,
    /// Columns of the table, in order. Omitted: the existing table's columns, each filled from
    /// the top-level field of its name (the start is refused if the table does not exist).
    #[serde(default)]
    pub columns: Vec<DeltaColumn>,
    /// Columns the table is partitioned by (each must be one of `columns`); with `columns`
    /// omitted, the existing table's partitioning when this is empty.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// Commit early once this many rows are buffered over all partitions (a checkpoint always
    /// commits); the early commit runs beside the partitions, which wait for it only once twice
    /// as many rows are buffered.
    #[serde(default = "default_max_buffered_rows")]
    pub max_buffered_rows: usize,
    /// `fixed` (the default): the table's columns stay as they are. `evolve`: a record's new
    /// top-level fields become new nullable columns, added in a metadata commit before the
    /// record's row is written (as Spark's `mergeSchema` does), their types inferred from the
    /// record's values.
    #[serde(default)]
    pub schema: SchemaMode,
    /// With `schema = "fixed"`, a record with top-level fields no column reads: `ignore` (the
    /// default: the fields are dropped, and counted) or `refuse` (the record goes to the dead
    /// letters with the fields named).
    #[serde(default)]
    pub extra_fields: ExtraFields,
    /// Parquet compression of the data files: `zstd` (the default), `snappy` or `none`.
    #[serde(default)]
    pub compression: Compression,
    /// A data file is closed and the next one started once it holds this many bytes, so one
    /// commit may write several files per table partition; absent: one file per table partition
    /// per commit.
    #[serde(default)]
    pub target_file_size: Option<u64>,
    /// The most rows in one parquet row group (parquet's default when absent: 1,048,576).
    #[serde(default)]
    pub row_group_rows: Option<usize>,
    /// Table properties set when the sink creates the table (for example
    /// `"delta.logRetentionDuration" = "interval 7 days"`); a key Delta does not know refuses the
    /// start. An existing table keeps its own.
    #[serde(default)]
    pub table_properties: BTreeMap<String, String>,
    /// Table maintenance while streaming: compaction of small files, log checkpoints, vacuum.
    #[serde(default)]
    pub maintenance: DeltaMaintenance,
}

/// Table maintenance run by the Delta sink beside the stream's commits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaMaintenance {
    /// How often compaction and vacuum run.
    #[serde(default = "default_maintenance_interval")]
    pub interval: ConfigDuration,
    /// Rewrite small data files into files of about `compact_target_size`, as Delta's OPTIMIZE
    /// does (a commit that removes and adds files without changing data).
    #[serde(default = "default_true")]
    pub compact: bool,
    /// The size compaction aims at; files of at least three quarters of it are left alone.
    #[serde(default = "default_compact_target_size")]
    pub compact_target_size: u64,
    /// Files younger than this are left for a later run, so that the partitions the stream is
    /// writing are compacted once it has moved past them.
    #[serde(default = "default_compact_min_age")]
    pub compact_min_age: ConfigDuration,
    /// The fewest small files of one table partition worth a rewrite.
    #[serde(default = "default_compact_min_files")]
    pub compact_min_files: usize,
    /// Write a log checkpoint every this many commits of the sink; 0: never.
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// Delete data files that were removed from the table (by compaction or by others) more than
    /// `vacuum_retention` ago: `true` (or `"removed"`, the default); `"full"` also deletes the
    /// data files no version of the table references (left by crashed writes) once older than
    /// the retention; `false` turns VACUUM off.
    #[serde(default)]
    pub vacuum: Vacuum,
    /// How long removed files are kept for readers of older versions (Delta's default: 7 days).
    #[serde(default = "default_vacuum_retention")]
    pub vacuum_retention: ConfigDuration,
}

impl Default for DeltaMaintenance {
    fn default() -> Self {
        DeltaMaintenance {
            interval: default_maintenance_interval(),
            compact: true,
            compact_target_size: default_compact_target_size(),
            compact_min_age: default_compact_min_age(),
            compact_min_files: default_compact_min_files(),
            checkpoint_every: default_checkpoint_every(),
            vacuum: Vacuum::default(),
            vacuum_retention: default_vacuum_retention(),
        }
    }
}

fn default_maintenance_interval() -> ConfigDuration {
    ConfigDuration::from_millis(5 * 60_000)
}

fn default_compact_target_size() -> u64 {
    128 * 1024 * 1024
}

fn default_compact_min_age() -> ConfigDuration {
    ConfigDuration::from_millis(5 * 60_000)
}

fn default_compact_min_files() -> usize {
    10
}

fn default_checkpoint_every() -> u64 {
    100
}

fn default_vacuum_retention() -> ConfigDuration {
    ConfigDuration::from_millis(7 * 24 * 3_600_000)
}

/// What VACUUM deletes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Vacuum {
    /// Nothing: VACUUM does not run.
    Off,
    /// The files removed from the table more than the retention ago (`true`, `"removed"`).
    #[default]
    Removed,
    /// Those, and the files no version references, once older than the retention (`"full"`).
    Full,
}

impl<'de> Deserialize<'de> for Vacuum {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Vacuum;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`true`, `false`, `\"removed\"` or `\"full\"`")
            }
            fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<Vacuum, E> {
                Ok(if on { Vacuum::Removed } else { Vacuum::Off })
            }
            fn visit_str<E: serde::de::Error>(self, mode: &str) -> Result<Vacuum, E> {
                match mode {
                    "removed" => Ok(Vacuum::Removed),
                    "full" => Ok(Vacuum::Full),
                    other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Whether the Delta sink changes the table's schema.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchemaMode {
    /// The columns stay as they are.
    #[default]
    Fixed,
    /// New top-level fields become new nullable columns.
    Evolve,
}

/// What a fixed-schema Delta sink does with fields no column reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtraFields {
    /// Drop them (counted).
    #[default]
    Ignore,
    /// Refuse the record.
    Refuse,
}

/// Parquet compression codecs of the Delta sink's data files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Zstandard (level 3): smaller files than snappy for about the same write cost.
    #[default]
    Zstd,
    /// Snappy, parquet's most common codec.
    Snappy,
    /// Uncompressed.
    None,
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
    /// Column type, spelled as Spark SQL's DDL spells it: `string`, `long`, `integer`, `short`,
    /// `byte`, `double`, `float`, `boolean`, `binary`, `timestamp`, `timestamp_ntz`, `date`,
    /// `decimal(p,s)`, `array<T>`, `map<K,V>`, `struct<name:T,...>`, nested to any depth.
    #[serde(rename = "type")]
    pub data_type: ColumnType,
    /// Top-level field of the record's JSON that fills the column; defaults to `name`.
    #[serde(default)]
    pub from: Option<String>,
    /// Fill the column from the record's metadata instead of its JSON.
    #[serde(default)]
    pub value: Option<ColumnValue>,
    /// Derive the column from the timestamp the value holds (RFC 3339 text or epoch
    /// milliseconds): `date` (its UTC date, a `date` column) or `hour` (its UTC hour of the day,
    /// 0 to 23, an `integer` column). Meant for `partition_by`.
    #[serde(default)]
    pub derive: Option<Derive>,
    /// Whether the column may be null; a non-nullable column missing from a record sends the
    /// record to the dead-letter sink.
    #[serde(default = "default_true")]
    pub nullable: bool,
}

/// A part of a timestamp a column can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Derive {
    /// The UTC date.
    Date,
    /// The UTC hour of the day, 0 to 23.
    Hour,
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
    if let Some(credential) = &delta.credential {
        crate::connectors::entra::config::validate_storage(
            doc,
            &["sinks", name, "credential"],
            credential,
        )?;
    }
    if delta.columns.is_empty() {
        // Taken from the existing table when the sink opens (refused there if it does not exist).
        return Ok(());
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
