//! Reference data: tables a stage's plugin looks rows up in by key, through the host import
//! `reference.lookup` (Fabric Eventstream's "join with reference data").
//!
//! A table is a CSV file (header row; every value is text), a JSON file (an array of objects, or
//! one object per line) or a local Delta table. It is loaded when the pipeline starts (a table that
//! cannot be loaded refuses the start) and checked every `reload_interval`: when its file (or the
//! Delta log) changed, it is loaded again and swapped in whole, between two plugin calls' lookups.
//! A reload that fails keeps the previous rows and says why in the log. When the key column
//! repeats a value, the last row wins.
//!
//! Lookups are not part of the checkpoint: after a crash, a replay looks rows up in the table as
//! it is then.

mod csv;
#[cfg(feature = "delta")]
mod delta;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime};

use crate::config::{ReferenceFormat, ReferenceTableConfig};
use crate::json::{FieldValue, top_level_field};
use crate::metrics::{Metrics, names};

/// Why a reference table could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("reference table `{table}` ({}): {reason}", path.display())]
pub struct ReferenceError {
    /// The table's name in the stage.
    pub table: String,
    /// Where it is.
    pub path: PathBuf,
    /// What went wrong.
    pub reason: String,
}

/// The format of the table at `path`: the configured one, else from the name.
pub fn format_of(path: &Path, configured: Option<ReferenceFormat>) -> Option<ReferenceFormat> {
    if configured.is_some() {
        return configured;
    }
    if path.is_dir() {
        return Some(ReferenceFormat::Delta);
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => Some(ReferenceFormat::Csv),
        Some("json" | "jsonl" | "ndjson") => Some(ReferenceFormat::Json),
        _ => None,
    }
}

/// Rows by key, each a JSON object as text.
type Rows = HashMap<String, Arc<str>>;

/// One loaded table.
#[derive(Debug)]
pub struct ReferenceTable {
    name: String,
    path: PathBuf,
    key: String,
    format: ReferenceFormat,
    rows: RwLock<Arc<Rows>>,
    /// What the source looked like when it was loaded, to notice a change.
    stamp: RwLock<Option<Stamp>>,
}

/// A cheap fingerprint of a file or Delta log: modification time and size (or entry count).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    size: u64,
}

impl ReferenceTable {
    fn error(&self, reason: impl Into<String>) -> ReferenceError {
        ReferenceError {
            table: self.name.clone(),
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// Rows now.
    pub fn len(&self) -> usize {
        self.rows.read().map(|rows| rows.len()).unwrap_or(0)
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The row with key `key`.
    pub fn get(&self, key: &str) -> Option<Arc<str>> {
        self.rows
            .read()
            .ok()
            .and_then(|rows| rows.get(key).cloned())
    }

    fn stamp(&self) -> Option<Stamp> {
        let watched = match self.format {
            ReferenceFormat::Delta => self.path.join("_delta_log"),
            ReferenceFormat::Csv | ReferenceFormat::Json => self.path.clone(),
        };
        let meta = std::fs::metadata(&watched).ok()?;
        let size = if meta.is_dir() {
            std::fs::read_dir(&watched).map_or(0, |d| d.count() as u64)
        } else {
            meta.len()
        };
        Some(Stamp {
            modified: meta.modified().ok(),
            size,
        })
    }

    /// Reads the source and swaps the rows in; the stamp is taken before reading, so that a
    /// change made while reading is seen at the next check.
    fn load(&self) -> Result<usize, ReferenceError> {
        let stamp = self.stamp();
        let objects = match self.format {
            ReferenceFormat::Csv => {
                let text = std::fs::read_to_string(&self.path)
                    .map_err(|e| self.error(format!("cannot read: {e}")))?;
                csv::rows_as_json(&text).map_err(|e| self.error(e))?
            }
            ReferenceFormat::Json => {
                let text = std::fs::read_to_string(&self.path)
                    .map_err(|e| self.error(format!("cannot read: {e}")))?;
                json_objects(&text).map_err(|e| self.error(e))?
            }
            #[cfg(feature = "delta")]
            ReferenceFormat::Delta => delta::rows_as_json(&self.path).map_err(|e| self.error(e))?,
            #[cfg(not(feature = "delta"))]
            ReferenceFormat::Delta => {
                return Err(self.error(
                    "this build of weir has no Delta Lake support: rebuild with `--features delta`",
                ));
            }
        };
        let mut rows: Rows = HashMap::with_capacity(objects.len());
        for (index, object) in objects.into_iter().enumerate() {
            let key = match top_level_field(object.as_bytes(), &self.key)
                .map_err(|e| self.error(format!("row {}: {e}", index + 1)))?
            {
                Some(FieldValue::Text(text)) => text.into_owned(),
                Some(value @ FieldValue::Number(_)) => value.to_json().unwrap_or_default(),
                _ => continue,
            };
            rows.insert(key, Arc::from(object));
        }
        let count = rows.len();
        if let Ok(mut current) = self.rows.write() {
            *current = Arc::new(rows);
        }
        if let Ok(mut current) = self.stamp.write() {
            *current = stamp;
        }
        Ok(count)
    }

    /// Whether the source changed since it was loaded.
    fn changed(&self) -> bool {
        let now = self.stamp();
        self.stamp.read().map_or(true, |loaded| *loaded != now)
    }
}

/// A JSON array of objects, or one object per line, as the objects' texts.
fn json_objects(text: &str) -> Result<Vec<String>, String> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let values: Vec<serde_json::Value> =
            serde_json::from_str(trimmed).map_err(|e| format!("malformed JSON: {e}"))?;
        values
            .into_iter()
            .enumerate()
            .map(|(index, value)| match value {
                serde_json::Value::Object(_) => Ok(value.to_string()),
                _ => Err(format!("element {} is not an object", index + 1)),
            })
            .collect()
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(
                |(index, line)| match serde_json::from_str::<serde_json::Value>(line) {
                    Ok(serde_json::Value::Object(_)) => Ok(line.trim().to_owned()),
                    Ok(_) => Err(format!("line {} is not a JSON object", index + 1)),
                    Err(e) => Err(format!("line {}: malformed JSON: {e}", index + 1)),
                },
            )
            .collect()
    }
}

/// The reference tables of one stage, shared by its partitions' plugin instances.
#[derive(Debug, Clone, Default)]
pub struct ReferenceTables {
    tables: Arc<BTreeMap<String, Arc<ReferenceTable>>>,
}

impl ReferenceTables {
    /// No tables: every lookup finds nothing.
    pub fn none() -> Self {
        ReferenceTables::default()
    }

    /// Loads the tables `configs` names (paths resolved by `resolve`); blocking.
    pub fn load(
        configs: &BTreeMap<String, ReferenceTableConfig>,
        resolve: impl Fn(&Path) -> PathBuf,
    ) -> Result<Self, ReferenceError> {
        let mut tables = BTreeMap::new();
        for (name, config) in configs {
            let path = resolve(&config.path);
            let format = format_of(&path, config.format).ok_or_else(|| ReferenceError {
                table: name.clone(),
                path: path.clone(),
                reason: "unknown format: set `format`".to_owned(),
            })?;
            let table = ReferenceTable {
                name: name.clone(),
                path,
                key: config.key.clone(),
                format,
                rows: RwLock::new(Arc::new(HashMap::new())),
                stamp: RwLock::new(None),
            };
            let rows = table.load()?;
            tracing::info!(table = %name, path = %table.path.display(), rows, "reference table loaded");
            tables.insert(name.clone(), Arc::new(table));
        }
        Ok(ReferenceTables {
            tables: Arc::new(tables),
        })
    }

    /// The row of `table` with key `key`, as a JSON object.
    pub fn lookup(&self, table: &str, key: &str) -> Option<Arc<str>> {
        self.tables.get(table)?.get(key)
    }

    /// The table named `name`.
    pub fn table(&self, name: &str) -> Option<&Arc<ReferenceTable>> {
        self.tables.get(name)
    }

    /// Starts, per table, a task that reloads it when its source changes, every `interval` of its
    /// configuration. The tasks end when the tables are dropped.
    pub fn watch(
        &self,
        configs: &BTreeMap<String, ReferenceTableConfig>,
        labels: (&str, &str),
        metrics: &Metrics,
    ) {
        for (name, table) in self.tables.iter() {
            let interval = configs
                .get(name)
                .map_or(Duration::from_secs(10), |c| c.reload_interval.get())
                .max(Duration::from_millis(50));
            let weak: Weak<ReferenceTable> = Arc::downgrade(table);
            let metrics = metrics.clone();
            let (pipeline, stage) = (labels.0.to_owned(), labels.1.to_owned());
            let name = name.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(interval).await;
                    let Some(table) = weak.upgrade() else {
                        return;
                    };
                    if !table.changed() {
                        continue;
                    }
                    let loaded = tokio::task::spawn_blocking(move || {
                        let result = table.load();
                        (table, result)
                    })
                    .await;
                    match loaded {
                        Ok((table, Ok(rows))) => {
                            tracing::info!(pipeline = %pipeline, stage = %stage, table = %name, path = %table.path.display(), rows, "reference table reloaded");
                            metrics.add(
                                names::REFERENCE_RELOADS,
                                &[("pipeline", &pipeline), ("stage", &stage), ("table", &name)],
                                1,
                            );
                        }
                        Ok((_, Err(e))) => {
                            tracing::warn!(pipeline = %pipeline, stage = %stage, error = %e, "reference table not reloaded; keeping the rows loaded before");
                        }
                        Err(e) => {
                            tracing::warn!(pipeline = %pipeline, stage = %stage, table = %name, error = %e, "reference reload task failed");
                        }
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigDuration;

    fn config(path: &str, key: &str) -> BTreeMap<String, ReferenceTableConfig> {
        BTreeMap::from([(
            "t".to_owned(),
            ReferenceTableConfig {
                path: PathBuf::from(path),
                key: key.to_owned(),
                format: None,
                reload_interval: ConfigDuration::from_millis(50),
            },
        )])
    }

    #[test]
    fn csv_and_json_tables_are_looked_up_by_key_and_reloaded_when_changed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let csv = dir.path().join("venues.csv");
        std::fs::write(&csv, "VenueId,City\nV1,London\nV2,\"Paris, France\"\n").expect("write");
        let tables =
            ReferenceTables::load(&config("venues.csv", "VenueId"), |p| dir.path().join(p))
                .expect("load");
        let row: serde_json::Value =
            serde_json::from_str(&tables.lookup("t", "V2").expect("row")).expect("json");
        assert_eq!(row["City"], "Paris, France");
        assert!(tables.lookup("t", "V3").is_none());
        assert!(tables.lookup("other", "V1").is_none());
        let table = tables.table("t").expect("table");
        assert!(!table.changed());
        std::fs::write(&csv, "VenueId,City\nV1,Leeds\nV3,Rome\nV3,Milan\n").expect("write");
        assert!(table.changed());
        assert_eq!(table.load().expect("reload"), 2);
        assert!(
            tables
                .lookup("t", "V1")
                .is_some_and(|r| r.contains("Leeds"))
        );
        assert!(
            tables
                .lookup("t", "V3")
                .is_some_and(|r| r.contains("Milan")),
            "last row wins"
        );

        let json = dir.path().join("rates.jsonl");
        std::fs::write(
            &json,
            "{\"Code\":1,\"Rate\":0.5}\n\n{\"Code\":2,\"Rate\":2}\n",
        )
        .expect("write");
        let tables = ReferenceTables::load(&config("rates.jsonl", "Code"), |p| dir.path().join(p))
            .expect("load");
        assert!(
            tables
                .lookup("t", "2")
                .is_some_and(|r| r.contains("\"Rate\":2"))
        );
        std::fs::write(&json, "[{\"Code\":\"x\"}, 3]").expect("write");
        let err = ReferenceTables::load(&config("rates.jsonl", "Code"), |p| dir.path().join(p))
            .expect_err("not objects");
        assert!(
            err.to_string().contains("element 2 is not an object"),
            "{err}"
        );
    }
}
