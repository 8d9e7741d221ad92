//! Table maintenance beside the stream: compaction of small files and VACUUM, run by a background
//! task every `maintenance.interval`; log checkpoints are written by the committer every
//! `maintenance.checkpoint_every` commits (see `Committer::commit_log`).
//!
//! Compaction is OPTIMIZE done by hand (delta-rs has it only with DataFusion): the small files of
//! one table partition that are older than `compact_min_age` are read back and written again as
//! files of about `compact_target_size`, and one commit removes the old files and adds the new
//! ones with `dataChange = false`. It never touches the transaction actions the stream's
//! exactly-once rests on, and the rows it writes are the rows it removes. It commits as any
//! other writer of the table would: the stream's commits are blind appends that retry at the next
//! version, and a compaction whose files another compaction removed first fails its conflict
//! check and is retried on the next run, so a row is never lost or written twice. A crash midway
//! leaves only unreferenced files, which VACUUM deletes once older than its retention.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use deltalake::DeltaTable;
use deltalake::arrow::array::{ArrayRef, RecordBatch, StringArray, new_null_array};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, Remove};
use deltalake::logstore::object_store::ObjectStoreExt as _;
use deltalake::operations::vacuum::VacuumMode;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::protocol::DeltaOperation;
use deltalake::writer::{DeltaWriter as _, RecordBatchWriter};

use super::Shared;
use crate::connectors::delta::config::{DeltaMaintenance, Vacuum};
use crate::event::now_millis;
use crate::metrics::Metrics;
use crate::metrics::names::DELTA_MAINTENANCE;

/// What the sink did to its table besides appending rows, as the `action` label of
/// `weir_delta_maintenance_total` names it.
pub(super) const ACTIONS: [&str; 9] = [
    "compactions",
    "files_compacted",
    "files_written",
    "compaction_conflicts",
    "checkpoints",
    "files_vacuumed",
    "orphan_files_vacuumed",
    "columns_added",
    "extra_fields_ignored",
];

/// Counts of [`ACTIONS`], kept by the sink and added to the process's metrics once attached.
#[derive(Debug, Default)]
pub(super) struct MaintenanceCounts {
    counts: [AtomicU64; ACTIONS.len()],
    metrics: OnceLock<(Metrics, String)>,
}

impl MaintenanceCounts {
    /// Adds `n` to `action` (one of [`ACTIONS`]).
    pub(super) fn add(&self, action: &'static str, n: u64) {
        if let Some(index) = ACTIONS.iter().position(|a| *a == action) {
            self.counts[index].fetch_add(n, Ordering::Relaxed);
        }
        if let Some((metrics, sink)) = self.metrics.get() {
            metrics.add(DELTA_MAINTENANCE, &[("sink", sink), ("action", action)], n);
        }
    }

    /// The count of `action` so far.
    #[cfg(test)]
    pub(super) fn get(&self, action: &str) -> u64 {
        ACTIONS
            .iter()
            .position(|a| *a == action)
            .map_or(0, |index| self.counts[index].load(Ordering::Relaxed))
    }

    /// Reports to `metrics` from now on (what was counted before too), every action declared.
    pub(super) fn attach(&self, metrics: &Metrics, sink: &str) {
        if self
            .metrics
            .set((metrics.clone(), sink.to_owned()))
            .is_err()
        {
            return;
        }
        for (index, action) in ACTIONS.iter().enumerate() {
            let labels = [("sink", sink), ("action", *action)];
            metrics.declare(DELTA_MAINTENANCE, &labels);
            metrics.add(
                DELTA_MAINTENANCE,
                &labels,
                self.counts[index].load(Ordering::Relaxed),
            );
        }
    }
}

/// Starts the background maintenance of the sink's table; it ends when the sink is dropped.
pub(super) fn spawn(shared: &Arc<Shared>) {
    let settings = shared.maintenance.clone();
    if !settings.compact && settings.vacuum == Vacuum::Off {
        return;
    }
    let weak = Arc::downgrade(shared);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(settings.interval.get());
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let Some(shared) = Weak::upgrade(&weak) else {
                return;
            };
            if let Err(reason) = run_once(&shared).await {
                tracing::warn!(sink = %shared.name, %reason, "Delta table maintenance failed; retried at the next run");
            }
        }
    });
}

/// One run: compaction, then VACUUM, each if configured.
pub(super) async fn run_once(shared: &Shared) -> Result<(), String> {
    let settings = &shared.maintenance;
    let mut table = shared.location.table().await?;
    table
        .load()
        .await
        .map_err(|e| format!("cannot load the table: {e}"))?;
    if settings.compact {
        compact(shared, &table).await?;
        table
            .update_incremental(None)
            .await
            .map_err(|e| format!("cannot read the table's log: {e}"))?;
    }
    if settings.vacuum != Vacuum::Off {
        vacuum(shared, table).await?;
    }
    Ok(())
}

/// A small file to compact.
struct SmallFile {
    path: deltalake::Path,
    size: u64,
    remove: Remove,
    partition_values: BTreeMap<String, Option<String>>,
}

/// The bins of small files to rewrite: per table partition, the files old and small enough,
/// packed in order into bins of up to the target size; only bins of two files or more.
fn plan(table: &DeltaTable, settings: &DeltaMaintenance) -> Result<Vec<Vec<SmallFile>>, String> {
    let snapshot = table
        .snapshot()
        .map_err(|e| format!("the table is not loaded: {e}"))?;
    let small = settings.compact_target_size / 4 * 3;
    let settled_before = now_millis()
        - i64::try_from(settings.compact_min_age.get().as_millis()).unwrap_or(i64::MAX);
    let mut partitions: BTreeMap<BTreeMap<String, Option<String>>, Vec<SmallFile>> =
        BTreeMap::new();
    for file in snapshot.log_data().iter() {
        let size = u64::try_from(file.size()).unwrap_or(u64::MAX);
        if size >= small
            || file.modification_time() > settled_before
            || file.deletion_vector_descriptor().is_some()
        {
            continue;
        }
        let partition_values: BTreeMap<String, Option<String>> =
            file.partition_values_map().into_iter().collect();
        partitions
            .entry(partition_values.clone())
            .or_default()
            .push(SmallFile {
                path: file.object_store_path(),
                size,
                remove: file.remove_action(false),
                partition_values,
            });
    }
    let mut bins = Vec::new();
    for (_, files) in partitions {
        if files.len() < settings.compact_min_files.max(2) {
            continue;
        }
        let mut bin: Vec<SmallFile> = Vec::new();
        let mut bin_size = 0;
        for file in files {
            if bin_size + file.size > settings.compact_target_size && bin.len() > 1 {
                bins.push(std::mem::take(&mut bin));
                bin_size = 0;
            }
            bin_size += file.size;
            bin.push(file);
        }
        if bin.len() > 1 {
            bins.push(bin);
        }
    }
    Ok(bins)
}

/// Rewrites the small files of the table and commits the exchange; returns the files removed.
pub(super) async fn compact(shared: &Shared, table: &DeltaTable) -> Result<u64, String> {
    let bins = plan(table, &shared.maintenance)?;
    if bins.is_empty() {
        return Ok(0);
    }
    let mut actions = Vec::new();
    let mut removed = 0u64;
    let mut written = 0u64;
    for bin in bins {
        let adds = rewrite(shared, table, &bin).await?;
        written += adds.len() as u64;
        removed += bin.len() as u64;
        actions.extend(bin.into_iter().map(|f| Action::Remove(f.remove)));
        actions.extend(adds.into_iter().map(Action::Add));
    }
    let snapshot = table
        .snapshot()
        .map_err(|e| format!("the table is not loaded: {e}"))?;
    let operation = DeltaOperation::Optimize {
        predicate: None,
        target_size: i64::try_from(shared.maintenance.compact_target_size).unwrap_or(i64::MAX),
    };
    let committed = CommitBuilder::from(CommitProperties::default().with_create_checkpoint(false))
        .with_actions(actions)
        .build(Some(snapshot), table.log_store(), operation)
        .await;
    let counts = &shared.maintenance_counts;
    match committed {
        Ok(finalized) => {
            shared.location.sync_commit(finalized.version()).await?;
            counts.add("compactions", 1);
            counts.add("files_compacted", removed);
            counts.add("files_written", written);
            tracing::info!(sink = %shared.name, version = finalized.version(), removed, written, "compacted small files of the Delta table");
            Ok(removed)
        }
        Err(e) => {
            // Another writer removed some of these files first: the files written here are
            // unreferenced, and VACUUM deletes them.
            counts.add("compaction_conflicts", 1);
            tracing::info!(sink = %shared.name, error = %e, "compaction not committed; the next run tries again");
            Ok(0)
        }
    }
}

/// Reads the files of `bin` and writes their rows again as files of about the target size.
async fn rewrite(
    shared: &Shared,
    table: &DeltaTable,
    bin: &[SmallFile],
) -> Result<Vec<Add>, String> {
    let store = table.object_store();
    let mut writer = RecordBatchWriter::for_table(table)
        .map_err(|e| format!("cannot write to the table: {e}"))?
        .with_writer_properties(shared.files.properties.clone())
        .with_target_file_size(shared.maintenance.compact_target_size);
    let schema = writer.arrow_schema();
    for file in bin {
        let bytes = store
            .get(&file.path)
            .await
            .map_err(|e| format!("cannot read data file {}: {e}", file.path))?
            .bytes()
            .await
            .map_err(|e| format!("cannot read data file {}: {e}", file.path))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|builder| builder.build())
            .map_err(|e| format!("cannot read data file {}: {e}", file.path))?;
        for batch in reader {
            let batch = batch.map_err(|e| format!("cannot read data file {}: {e}", file.path))?;
            let batch = with_table_columns(&batch, &file.partition_values, &schema)?;
            writer
                .write(batch)
                .await
                .map_err(|e| format!("cannot write a compacted file: {e}"))?;
        }
    }
    let mut adds = writer
        .flush()
        .await
        .map_err(|e| format!("cannot write a compacted file: {e}"))?;
    for add in &mut adds {
        add.data_change = false;
    }
    shared.location.sync_data_files(&adds).await?;
    Ok(adds)
}

/// `batch` (a data file's rows, without the partition columns) with every column of the table:
/// partition columns from the file's partition values, columns the file predates as nulls.
fn with_table_columns(
    batch: &RecordBatch,
    partition_values: &BTreeMap<String, Option<String>>,
    schema: &SchemaRef,
) -> Result<RecordBatch, String> {
    let rows = batch.num_rows();
    let columns = schema
        .fields()
        .iter()
        .map(|field| {
            let column: ArrayRef = match (
                batch.column_by_name(field.name()),
                partition_values.get(field.name()),
            ) {
                (Some(column), _) if column.data_type() == field.data_type() => Arc::clone(column),
                (Some(column), _) => cast(column, field.data_type()).map_err(|e| e.to_string())?,
                (None, Some(Some(value))) => cast(
                    &(Arc::new(StringArray::from(vec![value.as_str(); rows])) as ArrayRef),
                    field.data_type(),
                )
                .map_err(|e| e.to_string())?,
                (None, _) => new_null_array(field.data_type(), rows),
            };
            Ok(column)
        })
        .collect::<Result<Vec<_>, String>>()
        .map_err(|e| format!("cannot rebuild the rows of a data file: {e}"))?;
    RecordBatch::try_new(Arc::clone(schema), columns)
        .map_err(|e| format!("cannot rebuild the rows of a data file: {e}"))
}

/// Deletes the files removed from the table more than the retention ago; with `vacuum =
/// "full"`, then also the files no version references (left by crashed writes, or by a
/// compaction whose commit lost) once older than the retention. That second pass runs holding
/// the committer, on the table as of then, so that no file this process has written and not yet
/// committed can be taken for an orphan; another process's such files are safe as long as the
/// retention is longer than its writes take to commit.
async fn vacuum(shared: &Shared, table: DeltaTable) -> Result<(), String> {
    let retention = chrono::Duration::milliseconds(
        i64::try_from(shared.maintenance.vacuum_retention.get().as_millis()).unwrap_or(i64::MAX),
    );
    let (table, metrics) = table
        .vacuum()
        .with_retention_period(retention)
        .with_enforce_retention_duration(false)
        .with_mode(VacuumMode::Lite)
        .await
        .map_err(|e| format!("VACUUM failed: {e}"))?;
    let deleted = metrics.files_deleted.len() as u64;
    if deleted > 0 {
        shared.maintenance_counts.add("files_vacuumed", deleted);
        tracing::info!(sink = %shared.name, deleted, "vacuumed removed files of the Delta table");
    }
    if shared.maintenance.vacuum != Vacuum::Full {
        return Ok(());
    }
    let committer = shared.committer.lock().await;
    let mut table = table;
    table
        .update_incremental(None)
        .await
        .map_err(|e| format!("cannot read the table's log: {e}"))?;
    let (_, metrics) = table
        .vacuum()
        .with_retention_period(retention)
        .with_enforce_retention_duration(false)
        .with_mode(VacuumMode::Full)
        .await
        .map_err(|e| format!("VACUUM (full) failed: {e}"))?;
    drop(committer);
    let orphans = metrics.files_deleted.len() as u64;
    if orphans > 0 {
        shared
            .maintenance_counts
            .add("orphan_files_vacuumed", orphans);
        tracing::info!(sink = %shared.name, deleted = orphans, files = ?metrics.files_deleted, "vacuumed data files no version of the Delta table references");
    }
    Ok(())
}
