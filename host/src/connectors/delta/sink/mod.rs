//! Delta Lake tables, exactly once.
//!
//! One [`DeltaSink`] per configured table. All the writers of a table (one per pipeline partition)
//! share one buffer of converted rows and one committer:
//!
//! - [`SinkWriter::write`] converts records to arrow rows (refusing those that do not fit the
//!   schema) and adds them to the shared buffer; once the buffer holds `max_buffered_rows` rows,
//!   everything buffered is committed, beside the writers (which go on buffering); a writer
//!   waits for that commit only while the buffer holds twice as many (back-pressure).
//! - [`SinkWriter::flush`] commits everything buffered (every partition's rows) when the calling
//!   partition has rows buffered, and returns that partition's progress
//!   `{"position": <highest position in the table or null>, "table_version": <delta version>}`.
//!   Commits are serialized; a flush with nothing of its own buffered makes no commit.
//!   [`SinkWriter::begin_flush`] does the same beside the writer: it numbers the rows buffered
//!   so far (each commit's take of a partition's rows has a number) and waits for the commit of
//!   that take, while the writer buffers rows for the next one.
//! - Every commit carries, for each (pipeline, partition) with rows in it, a transaction action
//!   with app id `weir/{pipeline}/{sink}/{partition}` and version = the highest source position
//!   of that partition's rows in the table. [`Sink::open_writer`] reads that version back and the
//!   writer skips every record at or below it: a replay from an older checkpoint never writes a
//!   row twice, whatever the checkpoint says.
//! - An idle advance (time alone closing windows, no new event) writes records at the
//!   partition's last position, which the table may already hold: the writer stops skipping once
//!   a checkpoint at or after its skip position is saved ([`SinkWriter::checkpointed`]), and a
//!   replay that repeats an advance checkpointed just before its records were written learns
//!   from the log whether they were committed ([`IDLE_ADVANCE_PENDING`]).
//! - The skip position is the partition's, shared by its writer and the commits: a commit that
//!   finds positions of the partition committed by another writer (another process that owned it
//!   until just now) drops those rows and raises the skip position to theirs, since this writer's
//!   replay makes those positions again until its checkpoint passes them.
//! - Commits are blind appends: a concurrent commit by another writer of the same table makes
//!   the commit retry at the next version instead of failing. A commit whose outcome is unknown
//!   (an error after the log entry may have been written) is resolved on the next attempt by
//!   dropping the rows whose positions the table's transactions already cover.

mod check_sql;
mod constraints;
mod convert;
mod json_tree;
mod location;
mod maintenance;
mod nested;
mod table;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use async_trait::async_trait;
use deltalake::arrow::compute::concat_batches;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::kernel::transaction::{
    CommitBuilder, CommitConflictError, CommitProperties, TransactionError,
};
use deltalake::kernel::{Action, Add, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter as _, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError};
use serde_json::json;

use self::convert::{Pushed, RowConverter};
use self::location::Location;
use crate::config::{DeltaSinkConfig, LoadedConfig};
use crate::connectors::delta::config::{Compression, DeltaMaintenance, SchemaMode};
use crate::event::{Event, PartitionId, Position, now_millis};
use crate::sink::{
    IDLE_ADVANCE_PENDING, PendingFlush, Refused, Sink, SinkError, SinkErrorKind, SinkProgress,
    SinkWriter, WriterScope,
};
use deltalake::parquet::basic::{Compression as ParquetCompression, ZstdLevel};
use deltalake::parquet::file::properties::WriterProperties;

/// How often one commit retries at a later version when other writers commit first.
const COMMIT_RETRIES: usize = 50;

/// How often a commit is redone after another writer committed rows of the same pipeline
/// partition (two processes briefly reading one partition while its ownership moves).
const CONFLICT_RETRIES: usize = 10;

/// A Delta Lake table.
pub struct DeltaSink {
    shared: Arc<Shared>,
}

impl fmt::Debug for DeltaSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeltaSink")
            .field("name", &self.shared.name)
            .field("location", &self.shared.location.display())
            .finish_non_exhaustive()
    }
}

impl DeltaSink {
    /// Opens the table at `config.path` (relative to the configuration file), creating it with
    /// the configured columns and partitioning if absent; an existing table must match them.
    pub async fn open(
        name: &str,
        config: &DeltaSinkConfig,
        loaded: &LoadedConfig,
    ) -> Result<Self, SinkError> {
        let misconfigured = |reason| SinkError::opening(SinkErrorKind::Misconfigured, name, reason);
        let location = Location::parse(&config.path, &config.storage_options, loaded)
            .and_then(|location| location.with_credential(config.credential.as_ref()))
            .map_err(misconfigured)?;
        location.check_sign_in().await.map_err(misconfigured)?;
        Self::open_at(name, config, location).await
    }

    async fn open_at(
        name: &str,
        config: &DeltaSinkConfig,
        location: Location,
    ) -> Result<Self, SinkError> {
        let misconfigured =
            |reason: String| SinkError::opening(SinkErrorKind::Misconfigured, name, reason);
        let resolved;
        let config = if config.columns.is_empty() || config.schema == SchemaMode::Evolve {
            resolved = table::columns_from_table(config, &location)
                .await
                .map_err(|(kind, reason)| SinkError::opening(kind, name, reason))?;
            if resolved.columns.len() > config.columns.len() {
                tracing::info!(sink = %name, columns = resolved.columns.len(), "took the columns from the existing Delta table");
            }
            &resolved
        } else {
            config
        };
        convert::validate(config).map_err(misconfigured)?;
        let (table, schema) = table::open_or_create(name, config, &location)
            .await
            .map_err(|(kind, reason)| SinkError::opening(kind, name, reason))?;
        let constraints =
            constraints::read(&table, &column_types(config)).map_err(misconfigured)?;
        let checks_constraints = constraints::has_checks(&table);
        let converter = Arc::new(
            RowConverter::new(config, schema)
                .map_err(misconfigured)?
                .with_constraints(constraints),
        );
        let partition_by = config.partition_by.clone();
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            location,
            schema: tokio::sync::RwLock::new(TableSchema {
                config: config.clone(),
                converter,
            }),
            maintenance: config.maintenance.clone(),
            maintenance_counts: maintenance::MaintenanceCounts::default(),
            max_buffered_rows: config.max_buffered_rows,
            files: FileSettings::new(config),
            next_epoch: AtomicU64::new(1),
            early_commit: AtomicBool::new(false),
            buffer: Mutex::new(Buffer::default()),
            committer: tokio::sync::Mutex::new(Committer {
                table,
                partition_by,
                checks_constraints,
                suspect: false,
                conflicted: false,
                txn_cache: HashMap::new(),
                commits: 0,
            }),
        });
        maintenance::spawn(&shared);
        Ok(DeltaSink { shared })
    }
}

/// The name and type of each column, in order.
fn column_types(config: &DeltaSinkConfig) -> Vec<(String, crate::config::ColumnType)> {
    config
        .columns
        .iter()
        .map(|c| (c.name.clone(), c.data_type.clone()))
        .collect()
}

/// The application id of the transaction actions of one pipeline partition writing to one sink.
pub fn app_id(pipeline: &str, sink: &str, partition: PartitionId) -> String {
    format!("weir/{pipeline}/{sink}/{partition}")
}

#[async_trait]
impl Sink for DeltaSink {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn describe(&self) -> String {
        format!("Delta table {}", self.shared.location.display())
    }

    fn attach_metrics(&self, metrics: &crate::metrics::Metrics) {
        self.shared
            .maintenance_counts
            .attach(metrics, &self.shared.name);
    }

    async fn open_writer(
        &self,
        scope: &WriterScope,
        progress: Option<&SinkProgress>,
    ) -> Result<Box<dyn SinkWriter>, SinkError> {
        let shared = &self.shared;
        let app_id = app_id(&scope.pipeline, &shared.name, scope.partition);
        let epoch = shared.next_epoch.fetch_add(1, Ordering::Relaxed);
        let (durable, skip_through) = {
            // No commit runs while the partition's state is read and reset.
            let mut committer = shared.committer.lock().await;
            {
                let mut buffer = shared.lock_buffer();
                if let Some(old) = buffer.parts.remove(&app_id)
                    && old.rows > 0
                {
                    // An earlier writer's rows beyond its checkpoint: the replay writes them again.
                    buffer.rows -= old.rows;
                    tracing::info!(sink = %shared.name, app_id, rows = old.rows, "dropping uncommitted rows of a reopened partition");
                }
            }
            committer
                .refresh()
                .await
                .map_err(|e| scope.error(&shared.name, e))?;
            let position = committer
                .known_txn(&app_id)
                .await
                .map_err(|e| scope.error(&shared.name, e))?;
            let durable = Durable {
                position,
                table_version: committer.version(),
            };
            let skip_through = skip_through(&committer, &app_id, durable, progress)
                .await
                .map_err(|e| scope.error(&shared.name, e))?;
            shared.lock_buffer().parts.insert(
                app_id.clone(),
                Part {
                    epoch,
                    chunks: Vec::new(),
                    rows: 0,
                    in_flight: 0,
                    taken: 0,
                    committed_take: 0,
                    durable,
                    skip_through,
                },
            );
            (durable, skip_through)
        };
        let recorded = progress
            .and_then(|p| p.get("position"))
            .and_then(serde_json::Value::as_u64);
        if let Some(recorded) = recorded
            && durable.position.is_none_or(|p| p < recorded)
        {
            tracing::warn!(
                sink = %shared.name, app_id, recorded, in_table = ?durable.position,
                "the checkpoint records more than the table holds for this partition: was the table replaced?"
            );
        }
        tracing::debug!(sink = %shared.name, app_id, skip_through = ?skip_through, "opened a Delta writer");
        Ok(Box::new(DeltaWriter {
            shared: Arc::clone(shared),
            scope: scope.clone(),
            app_id,
            epoch,
        }))
    }
}

/// What a writer reopened from `progress` (its checkpoint's) skips: the records at or below the
/// position the table holds for it. One exception: a checkpoint saved just before an idle
/// advance (`"idle_advance_pending": true`, added by the pipeline) at the position the table
/// holds. The replay repeats that advance first, and its records carry that same position: they
/// are in the table only if a commit of this partition came after the checkpoint's table version,
/// and are written otherwise.
async fn skip_through(
    committer: &Committer,
    app_id: &str,
    durable: Durable,
    progress: Option<&SinkProgress>,
) -> Result<Option<Position>, String> {
    let field = |name: &str| progress.and_then(|p| p.get(name));
    let recorded = field("position").and_then(serde_json::Value::as_u64);
    let since = field("table_version").and_then(serde_json::Value::as_u64);
    let pending = field(IDLE_ADVANCE_PENDING).and_then(serde_json::Value::as_bool);
    match (durable.position, recorded, since, pending) {
        (Some(in_table), Some(recorded), Some(since), Some(true)) if in_table == recorded => {
            let written = committer.committed_since(app_id, since).await?;
            Ok(written.then_some(in_table))
        }
        (in_table, ..) => Ok(in_table),
    }
}

/// State shared by every writer of one table.
struct Shared {
    name: String,
    location: Location,
    /// The columns and their converter; replaced when the table evolves (writers convert under
    /// the read lock, so no rows of the old schema are buffered after an evolution).
    schema: tokio::sync::RwLock<TableSchema>,
    maintenance: DeltaMaintenance,
    maintenance_counts: maintenance::MaintenanceCounts,
    max_buffered_rows: usize,
    files: FileSettings,
    next_epoch: AtomicU64,
    /// An early commit (a full buffer) is running beside the writers.
    early_commit: AtomicBool,
    buffer: Mutex<Buffer>,
    committer: tokio::sync::Mutex<Committer>,
}

/// The table's columns as the sink writes them.
struct TableSchema {
    config: DeltaSinkConfig,
    converter: Arc<RowConverter>,
}

/// How data files are written.
struct FileSettings {
    properties: WriterProperties,
    /// Bytes after which a file is closed; 0: one file per table partition per commit.
    target_size: u64,
    /// Rows written at a time when files roll over at a target size.
    slice_rows: usize,
}

impl FileSettings {
    fn new(config: &DeltaSinkConfig) -> Self {
        let compression = match config.compression {
            Compression::Zstd => ParquetCompression::ZSTD(ZstdLevel::default()),
            Compression::Snappy => ParquetCompression::SNAPPY,
            Compression::None => ParquetCompression::UNCOMPRESSED,
        };
        let mut properties = WriterProperties::builder()
            .set_created_by(format!("weir {}", env!("CARGO_PKG_VERSION")))
            .set_compression(compression);
        if let Some(rows) = config.row_group_rows {
            properties = properties.set_max_row_group_row_count(Some(rows));
        }
        FileSettings {
            properties: properties.build(),
            target_size: config.target_file_size.unwrap_or(0),
            slice_rows: config.row_group_rows.unwrap_or(8192).min(8192),
        }
    }
}

/// Rows waiting for a commit, per app id.
#[derive(Default)]
struct Buffer {
    parts: HashMap<String, Part>,
    /// Rows over all parts.
    rows: usize,
}

/// One pipeline partition's rows and what the table holds for it.
struct Part {
    /// The writer that owns it; an older writer of the same partition is refused.
    epoch: u64,
    chunks: Vec<Chunk>,
    rows: usize,
    /// Rows taken by the commit in progress.
    in_flight: usize,
    /// How many times commits have taken this part's rows; each take is numbered so.
    taken: u64,
    /// The number of the last take whose commit succeeded: every row buffered before it is in
    /// the table.
    committed_take: u64,
    durable: Durable,
    /// Records at or below this position are in the table by an earlier run's or another
    /// process's commits, and this writer's replay makes them again: they are skipped until a
    /// checkpoint at or past it is saved (see [`DeltaWriter::checkpointed`]).
    skip_through: Option<Position>,
}

/// What the table holds for one app id.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Durable {
    /// The highest position committed (the transaction version), `None` before the first commit.
    position: Option<Position>,
    /// The table version that committed it (or the version read when the writer opened).
    table_version: u64,
}

/// Converted rows of one write call.
struct Chunk {
    batch: RecordBatch,
    positions: Vec<Position>,
}

/// Rows of one app id taken out of the buffer for a commit.
struct Pending {
    app_id: String,
    epoch: u64,
    /// The number of this take of the part's rows ([`Part::taken`]).
    take: u64,
    chunks: Vec<Chunk>,
    /// The position already in the table for this app id.
    durable: Option<Position>,
    /// The partition's skip position when the rows were taken (see [`Part::skip_through`]).
    skip_through: Option<Position>,
    /// The position of another writer's commit of this app id that the commit found: the
    /// partition's skip position rises to it.
    another_writer: Option<Position>,
}

impl Pending {
    fn rows(&self) -> usize {
        self.chunks.iter().map(|c| c.positions.len()).sum()
    }

    fn max_position(&self) -> Option<Position> {
        self.chunks
            .iter()
            .flat_map(|c| c.positions.iter().copied())
            .max()
    }

    /// Drops the rows at or below `position` (already in the table).
    fn retain_after(&mut self, position: Position) -> Result<(), String> {
        let mut kept = Vec::with_capacity(self.chunks.len());
        for chunk in self.chunks.drain(..) {
            if chunk.positions.iter().all(|p| *p > position) {
                kept.push(chunk);
            } else if chunk.positions.iter().any(|p| *p > position) {
                let mask: deltalake::arrow::array::BooleanArray = chunk
                    .positions
                    .iter()
                    .map(|p| Some(*p > position))
                    .collect();
                let batch = deltalake::arrow::compute::filter_record_batch(&chunk.batch, &mask)
                    .map_err(|e| format!("cannot filter buffered rows: {e}"))?;
                let positions = chunk
                    .positions
                    .into_iter()
                    .filter(|p| *p > position)
                    .collect();
                kept.push(Chunk { batch, positions });
            }
        }
        self.chunks = kept;
        Ok(())
    }
}

impl Shared {
    fn lock_buffer(&self) -> MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Commits everything buffered, if anything; one commit at a time. The commit runs as its own
    /// task, so a caller that stops waiting does not abandon it halfway.
    async fn commit(self: &Arc<Self>) -> Result<(), String> {
        let shared = Arc::clone(self);
        tokio::spawn(async move { shared.commit_buffered().await })
            .await
            .map_err(|e| format!("the commit task failed: {e}"))?
    }

    /// Starts a commit of everything buffered beside the writers, unless one is running: a
    /// failure leaves the rows buffered (the next commit, a checkpoint's at the latest, tries
    /// again and reports it).
    fn commit_early(self: &Arc<Self>) {
        if self.early_commit.swap(true, Ordering::AcqRel) {
            return;
        }
        let shared = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(reason) = shared.commit_buffered().await {
                tracing::warn!(sink = %shared.name, %reason, "an early commit (a full buffer) failed; the next commit tries again");
            }
            shared.early_commit.store(false, Ordering::Release);
        });
    }

    async fn commit_buffered(&self) -> Result<(), String> {
        let mut committer = self.committer.lock().await;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.commit_once(&mut committer).await {
                Err(reason) if committer.conflicted && attempt <= CONFLICT_RETRIES => {
                    // Another writer committed positions of one of these partitions: the next
                    // attempt reads what it committed and drops those rows from ours.
                    tracing::info!(sink = %self.name, attempt, %reason, "concurrent commit for the same partition; committing again without what it covered");
                }
                outcome => return outcome,
            }
        }
    }

    async fn commit_once(&self, committer: &mut Committer) -> Result<(), String> {
        committer.conflicted = false;
        let mut pending = self.take_buffered();
        if pending.is_empty() {
            return Ok(());
        }
        match committer.commit(self, &mut pending).await {
            Ok(outcome) => {
                let mut buffer = self.lock_buffer();
                for p in &pending {
                    if let Some(part) = buffer.parts.get_mut(&p.app_id)
                        && part.epoch == p.epoch
                    {
                        part.in_flight = 0;
                        part.committed_take = part.committed_take.max(p.take);
                        part.skip_through = part.skip_through.max(p.another_writer);
                    }
                }
                for (app_id, durable) in outcome {
                    if let Some(part) = buffer.parts.get_mut(&app_id) {
                        part.durable = durable;
                    }
                }
                Ok(())
            }
            Err(reason) => {
                // The outcome may be unknown: the next attempt checks what the table holds.
                committer.suspect = true;
                self.restore(pending);
                Err(reason)
            }
        }
    }

    /// Adds the new fields of `record` to the table as nullable columns, and its new members
    /// inside struct columns as nullable nested fields, their types inferred from the record, in
    /// a metadata commit. Everything buffered is committed first, and no writer converts
    /// meanwhile (the schema's write lock), so every buffered chunk has one schema. What another
    /// process added first is taken as the table has it. A crash after the metadata commit
    /// leaves a table with new empty columns or fields, which the restart takes into its
    /// columns; the replay then writes the rows exactly once as before.
    /// Returns whether the table changed (or another writer's change was taken).
    async fn evolve(self: &Arc<Self>, record: &Event) -> Result<bool, String> {
        let mut schema = self.schema.write().await;
        let body = std::str::from_utf8(&record.body).map_err(|e| format!("malformed JSON: {e}"))?;
        let Ok(json_tree::Node::Object(members)) = json_tree::parse(body) else {
            return Err("malformed JSON: expected a JSON object".to_owned());
        };
        if table::evolution(&schema.config, &members)?.0.is_empty() {
            // Another writer added them meanwhile, or they have no type to give (`{}`).
            return Ok(false);
        }
        self.commit().await?;
        let mut committer = self.committer.lock().await;
        committer.refresh().await?;
        let current = table::with_table_columns(&schema.config, &committer.table)?;
        let (missing, added) = table::evolution(&current, &members)?;
        if !missing.is_empty() {
            let table = committer
                .table
                .clone()
                .add_columns()
                .with_fields(missing)
                .await
                .map_err(delta_error("cannot add the new columns"))?;
            committer.table = table;
            let version = committer.version();
            self.location.sync_commit(version).await?;
            self.maintenance_counts
                .add("columns_added", added.len() as u64);
            tracing::info!(sink = %self.name, version, columns = ?added, "the table gained new columns (schema = \"evolve\")");
        }
        let config = table::with_table_columns(&schema.config, &committer.table)?;
        let arrow = RecordBatchWriter::for_table(&committer.table)
            .map_err(delta_error("cannot write to the table"))?
            .arrow_schema();
        let constraints = constraints::read(&committer.table, &column_types(&config))?;
        schema.converter =
            Arc::new(RowConverter::new(&config, arrow)?.with_constraints(constraints));
        let shape = |c: &DeltaSinkConfig| {
            c.columns
                .iter()
                .map(|c| (c.name.clone(), c.data_type.clone()))
                .collect::<Vec<_>>()
        };
        let changed = shape(&config) != shape(&schema.config);
        schema.config = config;
        Ok(changed)
    }

    fn take_buffered(&self) -> Vec<Pending> {
        let mut buffer = self.lock_buffer();
        let mut pending = Vec::new();
        for (app_id, part) in &mut buffer.parts {
            if part.rows > 0 {
                part.taken += 1;
                pending.push(Pending {
                    app_id: app_id.clone(),
                    epoch: part.epoch,
                    take: part.taken,
                    chunks: std::mem::take(&mut part.chunks),
                    durable: part.durable.position,
                    skip_through: part.skip_through,
                    another_writer: None,
                });
                part.in_flight = part.rows;
                part.rows = 0;
            }
        }
        buffer.rows = 0;
        pending
    }

    /// Puts the rows of a failed commit back in front of what was buffered meanwhile.
    fn restore(&self, pending: Vec<Pending>) {
        let mut guard = self.lock_buffer();
        let buffer = &mut *guard;
        for p in pending {
            let rows = p.rows();
            match buffer.parts.get_mut(&p.app_id) {
                Some(part) if part.epoch == p.epoch => {
                    if rows == 0 {
                        // The commit found every row of this take in the table already
                        // (another writer's) before it failed for other rows: the take is
                        // as good as committed, and nothing goes back.
                        part.committed_take = part.committed_take.max(p.take);
                    }
                    let mut chunks = p.chunks;
                    chunks.append(&mut part.chunks);
                    part.chunks = chunks;
                    part.in_flight = 0;
                    part.skip_through = part.skip_through.max(p.another_writer);
                    part.rows += rows;
                    buffer.rows += rows;
                }
                // The partition was reopened: its replay writes these rows again.
                _ => {}
            }
        }
    }
}

/// The table, owned by whoever commits.
struct Committer {
    table: DeltaTable,
    partition_by: Vec<String>,
    /// The table has CHECK constraints or invariants, which the converter evaluates.
    checks_constraints: bool,
    /// The last commit failed, perhaps after its log entry was written.
    suspect: bool,
    /// The last commit failed because another writer committed a transaction of one of its app
    /// ids first.
    conflicted: bool,
    /// Per app id, its transaction version in the table as of a table version, so that a commit
    /// reads the log only when others' commits came in.
    txn_cache: HashMap<String, (u64, Option<Position>)>,
    /// Commits made by this sink, for log checkpoints every `checkpoint_every` of them.
    commits: u64,
}

fn delta_error(what: &'static str) -> impl Fn(DeltaTableError) -> String {
    move |e| format!("{what}: {e}")
}

impl Committer {
    fn version(&self) -> u64 {
        self.table.version().unwrap_or(0)
    }

    /// Catches up with commits made by others.
    async fn refresh(&mut self) -> Result<(), String> {
        self.table
            .update_incremental(None)
            .await
            .map_err(delta_error("cannot read the table's log"))
    }

    /// Whether a commit after table version `since` carries a transaction of `app_id`.
    async fn committed_since(&self, app_id: &str, since: u64) -> Result<bool, String> {
        let log_store = self.table.log_store();
        for version in since.saturating_add(1)..=self.version() {
            let Some(bytes) = log_store
                .read_commit_entry(version as deltalake::kernel::Version)
                .await
                .map_err(delta_error("cannot read a commit of the table's log"))?
            else {
                continue;
            };
            let carries = bytes.split(|b| *b == b'\n').any(|line| {
                serde_json::from_slice::<serde_json::Value>(line)
                    .ok()
                    .is_some_and(|action| action["txn"]["appId"] == app_id)
            });
            if carries {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The transaction version of `app_id` in the loaded snapshot, as a position.
    async fn txn_position(&self, app_id: &str) -> Result<Option<Position>, String> {
        let snapshot = self
            .table
            .snapshot()
            .map_err(delta_error("the table is not loaded"))?;
        let version = snapshot
            .transaction_version(self.table.log_store().as_ref(), app_id)
            .await
            .map_err(delta_error("cannot read the table's transactions"))?;
        Ok(version.and_then(|v| Position::try_from(v).ok()))
    }

    /// The transaction version of `app_id` in the loaded snapshot, read from the log only when
    /// the snapshot changed since it was last known.
    async fn known_txn(&mut self, app_id: &str) -> Result<Option<Position>, String> {
        let version = self.version();
        if let Some((at, position)) = self.txn_cache.get(app_id)
            && *at == version
        {
            return Ok(*position);
        }
        let position = self.txn_position(app_id).await?;
        self.txn_cache
            .insert(app_id.to_owned(), (version, position));
        Ok(position)
    }

    /// Writes and commits `pending`; returns what the table then holds for each app id.
    async fn commit(
        &mut self,
        shared: &Shared,
        pending: &mut [Pending],
    ) -> Result<HashMap<String, Durable>, String> {
        let started = Instant::now();
        let suspect = self.suspect;
        if suspect {
            self.refresh().await?;
            self.suspect = false;
        }
        let mut outcome = self.drop_committed(pending, suspect).await?;
        let rows: usize = pending.iter().map(Pending::rows).sum();
        if rows == 0 {
            return Ok(outcome);
        }
        let adds = self.write_files(shared, pending).await?;
        let written = started.elapsed();
        let Transactions { actions, committed } = transactions(pending)?;
        let files = adds.len();
        let version = self.commit_log(shared, adds, actions).await?;
        for (app_id, position) in committed {
            // Known as of the commit's own version: when the table was read further (a failed
            // post-commit step refreshes it), another writer may have committed this app id
            // since, and the next commit reads the log again.
            self.txn_cache
                .insert(app_id.clone(), (version, Some(position)));
            outcome.insert(
                app_id,
                Durable {
                    position: Some(position),
                    table_version: version,
                },
            );
        }
        let millis = |d: std::time::Duration| (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0;
        tracing::debug!(
            sink = %shared.name, rows, files, version,
            duration_ms = millis(started.elapsed()), data_files_ms = millis(written),
            "committed to the Delta table"
        );
        Ok(outcome)
    }

    /// Drops from `pending` the rows the table already holds: another process may have committed
    /// positions of a partition while it moved (its commits reach this table through a refresh,
    /// or through a commit of this process that landed after them). Returns what the table holds
    /// for the app ids it has a transaction of.
    ///
    /// - Rows at or below the partition's skip position are dropped: they are a replay of what
    ///   the table holds ([`Part::skip_through`]).
    /// - A transaction beyond what this partition knew it held (`durable`) is another writer's:
    ///   its rows are dropped, and the skip position rises to it, because this writer's replay
    ///   goes on making those positions until its checkpoint passes them. (Taking that position
    ///   as this partition's own, as the commit below does, must not make the replay's later rows
    ///   at or below it look new.)
    /// - The table holding exactly what this partition last committed says nothing about the
    ///   rows waiting: rows at that very position are an idle advance's, written after it (see
    ///   [`SinkWriter::checkpointed`]). Only after a commit whose outcome is unknown (`suspect`)
    ///   do they count as held, since that commit may have been theirs.
    async fn drop_committed(
        &mut self,
        pending: &mut [Pending],
        suspect: bool,
    ) -> Result<HashMap<String, Durable>, String> {
        let mut outcome = HashMap::new();
        for p in pending.iter_mut() {
            if let Some(skip) = p.skip_through {
                p.retain_after(skip)?;
            }
            if let Some(done) = self.known_txn(&p.app_id).await? {
                let another_writer = p.durable.is_none_or(|own| done > own);
                if suspect || another_writer {
                    p.retain_after(done)?;
                }
                if another_writer {
                    p.another_writer = Some(done);
                }
                p.durable = p.durable.max(Some(done));
                outcome.insert(
                    p.app_id.clone(),
                    Durable {
                        position: Some(done),
                        table_version: self.version(),
                    },
                );
            }
        }
        Ok(outcome)
    }

    /// Writes the rows of `pending` as data files (made durable where the location needs it);
    /// returns their add actions.
    async fn write_files(&self, shared: &Shared, pending: &[Pending]) -> Result<Vec<Add>, String> {
        // Every buffered chunk has the schema of the table's latest evolution (see `evolve`).
        let Some(schema) = pending
            .iter()
            .find_map(|p| p.chunks.first().map(|c| c.batch.schema()))
        else {
            return Ok(Vec::new());
        };
        let mut writer = RecordBatchWriter::for_table(&self.table)
            .map_err(delta_error("cannot write to the table"))?
            .with_writer_properties(shared.files.properties.clone())
            .with_target_file_size(shared.files.target_size);
        if shared.files.target_size == 0 {
            // One file per table partition: the writer streams each chunk into its files, so
            // the chunks go in as they are, without first copying every buffered row into one
            // batch (that copy was a fresh allocation of the whole buffer at every commit).
            for chunk in pending.iter().flat_map(|p| p.chunks.iter()) {
                writer
                    .write(chunk.batch.clone())
                    .await
                    .map_err(delta_error("cannot write data files"))?;
            }
            let adds = writer
                .flush()
                .await
                .map_err(delta_error("cannot write data files"))?;
            shared.location.sync_data_files(&adds).await?;
            return Ok(adds);
        }
        let batch = concat_batches(
            &schema,
            pending
                .iter()
                .flat_map(|p| p.chunks.iter().map(|c| &c.batch)),
        )
        .map_err(|e| format!("cannot assemble the buffered rows: {e}"))?;
        // A file rolls over to the next only between two writes: with a target size, write in
        // slices.
        let step = shared.files.slice_rows.max(1);
        let mut offset = 0;
        while offset < batch.num_rows() {
            let rows = step.min(batch.num_rows() - offset);
            writer
                .write(batch.slice(offset, rows))
                .await
                .map_err(delta_error("cannot write data files"))?;
            offset += rows;
        }
        let adds = writer
            .flush()
            .await
            .map_err(delta_error("cannot write data files"))?;
        shared.location.sync_data_files(&adds).await?;
        Ok(adds)
    }

    /// Commits `adds` with `transactions` to the table's log; returns the table version made.
    async fn commit_log(
        &mut self,
        shared: &Shared,
        adds: Vec<Add>,
        transactions: Vec<Transaction>,
    ) -> Result<u64, String> {
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: (!self.partition_by.is_empty()).then(|| self.partition_by.clone()),
            predicate: None,
        };
        let snapshot = self
            .table
            .snapshot()
            .map_err(delta_error("the table is not loaded"))?;
        let read_version = snapshot.version();
        let properties = CommitProperties::default()
            // Checkpoints follow `maintenance.checkpoint_every` (below), not the table's interval.
            .with_create_checkpoint(false)
            .with_application_transactions(transactions)
            .with_max_retries(COMMIT_RETRIES)
            .with_metadata([
                ("isBlindAppend".to_owned(), json!(true)),
                ("readVersion".to_owned(), json!(read_version)),
            ]);
        let actions = adds.into_iter().map(Action::Add).collect();
        // delta-rs without DataFusion refuses to commit to a table with CHECK constraints or
        // invariants, which it cannot evaluate; this sink evaluates them on every row
        // (`constraints`), so it commits without the read snapshot, which skips that check: the
        // commit then goes to the latest version, checked for conflicts from there.
        let read_snapshot: Option<&dyn deltalake::kernel::transaction::TableReference> =
            if self.checks_constraints {
                None
            } else {
                Some(snapshot)
            };
        let post_commit = CommitBuilder::from(properties)
            .with_actions(actions)
            .build(read_snapshot, self.table.log_store(), operation)
            .into_prepared_commit_future()
            .await
            .map_err(delta_error("cannot prepare the commit"))?
            .await
            .map_err(|e| {
                if matches!(
                    &e,
                    DeltaTableError::Transaction {
                        source: TransactionError::CommitConflict(
                            CommitConflictError::ConcurrentTransaction
                        )
                    }
                ) {
                    self.conflicted = true;
                }
                format!("commit failed: {e}")
            })?;
        let version = post_commit.version;
        if version == read_version + 1 {
            // Nobody else committed in between: what was known at the read version still holds.
            for entry in self.txn_cache.values_mut() {
                if entry.0 == read_version {
                    entry.0 = version;
                }
            }
        }
        // The commit is in the log from here on.
        shared.location.sync_commit(version).await?;
        match post_commit.await {
            Ok(finalized) => self.table.state = Some(finalized.snapshot()),
            Err(e) => {
                // A failed checkpoint or log cleanup leaves the commit itself in place.
                tracing::warn!(sink = %shared.name, version, error = %e, "post-commit work on the Delta table failed");
                self.refresh().await?;
            }
        }
        self.commits += 1;
        let every = shared.maintenance.checkpoint_every;
        if every > 0 && self.commits.is_multiple_of(every) {
            match deltalake::checkpoints::create_checkpoint(&self.table, None).await {
                Ok(()) => {
                    shared.maintenance_counts.add("checkpoints", 1);
                    tracing::debug!(sink = %shared.name, version, "wrote a log checkpoint");
                }
                // The commit stands; the next checkpoint covers it.
                Err(e) => {
                    tracing::warn!(sink = %shared.name, version, error = %e, "cannot write a log checkpoint")
                }
            }
        }
        Ok(version)
    }
}

/// The transactions of a commit, and the position each app id commits.
struct Transactions {
    actions: Vec<Transaction>,
    committed: Vec<(String, Position)>,
}

/// The transaction of each app id of `pending` that has rows left: its highest position, or
/// what the table held already if higher.
fn transactions(pending: &[Pending]) -> Result<Transactions, String> {
    let now = now_millis();
    let mut transactions = Transactions {
        actions: Vec::new(),
        committed: Vec::new(),
    };
    for p in pending.iter().filter(|p| !p.chunks.is_empty()) {
        let position = p.max_position().max(p.durable).unwrap_or(0);
        let version = i64::try_from(position)
            .map_err(|_| format!("position {position} is beyond a Delta transaction version"))?;
        transactions.actions.push(Transaction::new_with_last_update(
            &p.app_id,
            version,
            Some(now),
        ));
        transactions.committed.push((p.app_id.clone(), position));
    }
    Ok(transactions)
}

/// The writer of one pipeline partition.
struct DeltaWriter {
    shared: Arc<Shared>,
    scope: WriterScope,
    app_id: String,
    epoch: u64,
}

impl Drop for DeltaWriter {
    /// Rows this writer buffered but never flushed lie beyond its partition's checkpoint: whoever
    /// takes the partition over replays them.
    fn drop(&mut self) {
        let mut guard = self.shared.lock_buffer();
        let buffer = &mut *guard;
        if buffer
            .parts
            .get(&self.app_id)
            .is_some_and(|part| part.epoch == self.epoch)
            && let Some(part) = buffer.parts.remove(&self.app_id)
        {
            buffer.rows -= part.rows;
        }
    }
}

/// What a flush running beside its writer needs of it.
struct WriterRef {
    shared: Arc<Shared>,
    scope: WriterScope,
    app_id: String,
    epoch: u64,
}

impl WriterRef {
    /// Waits, committing, until the partition's take number `wanted` is committed; returns the
    /// partition's progress then.
    async fn committed_through(&self, wanted: u64) -> Result<SinkProgress, SinkError> {
        loop {
            let durable = {
                let buffer = self.shared.lock_buffer();
                match buffer.parts.get(&self.app_id) {
                    Some(part) if part.epoch == self.epoch => {
                        (part.committed_take >= wanted).then_some(part.durable)
                    }
                    _ => return Err(superseded(&self.scope, &self.shared.name)),
                }
            };
            if let Some(durable) = durable {
                return Ok(
                    json!({ "position": durable.position, "table_version": durable.table_version }),
                );
            }
            // Takes the rows if no commit has yet; a failed commit puts them back and fails here.
            self.shared
                .commit()
                .await
                .map_err(|e| self.scope.error(&self.shared.name, e))?;
        }
    }
}

fn superseded(scope: &WriterScope, sink: &str) -> SinkError {
    scope.error_of(
        SinkErrorKind::Superseded,
        sink,
        "this writer was replaced by a newer writer of the same partition",
    )
}

impl DeltaWriter {
    /// The partition's skip position ([`Part::skip_through`]); `None` for a replaced writer
    /// (which [`DeltaWriter::buffer`] refuses).
    fn skip_through(&self) -> Option<Position> {
        let buffer = self.shared.lock_buffer();
        buffer
            .parts
            .get(&self.app_id)
            .filter(|part| part.epoch == self.epoch)
            .and_then(|part| part.skip_through)
    }

    /// Adds converted rows to this partition's buffer; true when the buffer is full.
    fn buffer(&self, batch: RecordBatch, positions: Vec<Position>) -> Result<bool, SinkError> {
        let rows = positions.len();
        let mut guard = self.shared.lock_buffer();
        let buffer = &mut *guard;
        let part = match buffer.parts.get_mut(&self.app_id) {
            Some(part) if part.epoch == self.epoch => part,
            _ => return Err(self.superseded()),
        };
        part.chunks.push(Chunk { batch, positions });
        part.rows += rows;
        buffer.rows += rows;
        Ok(buffer.rows >= self.shared.max_buffered_rows)
    }

    fn error(&self, reason: impl Into<String>) -> SinkError {
        self.scope.error(&self.shared.name, reason)
    }

    fn superseded(&self) -> SinkError {
        superseded(&self.scope, &self.shared.name)
    }
}

#[async_trait]
impl SinkWriter for DeltaWriter {
    async fn write(&mut self, records: Vec<Event>) -> Result<Vec<Refused>, SinkError> {
        let ingestion_time = now_millis();
        let mut refused = Vec::new();
        let skip_through = self.skip_through();
        let mut records: std::collections::VecDeque<Event> = records
            .into_iter()
            .filter(|record| skip_through.is_none_or(|done| record.position > done))
            .collect();
        let mut commit_now = false;
        // The position of a record to write without its new fields (see `evolve`).
        let mut as_is: Option<Position> = None;
        while !records.is_empty() {
            let schema = self.shared.schema.read().await;
            let mut batch = schema.converter.batch(records.len());
            let mut ignored = 0u64;
            let mut evolve = None;
            while let Some(record) = records.pop_front() {
                let pushed = match as_is.take() {
                    Some(position) if position == record.position => {
                        batch.push_without_new(&record, ingestion_time)
                    }
                    _ => batch.push(&record, ingestion_time),
                };
                match pushed {
                    Ok(Pushed::Row) => {}
                    Ok(Pushed::Ignored) => ignored += 1,
                    Ok(Pushed::Evolve(_)) => {
                        evolve = Some(record);
                        break;
                    }
                    Err((kind, reason)) => refused.push(Refused {
                        record,
                        kind,
                        reason,
                    }),
                }
            }
            if ignored > 0 {
                self.shared
                    .maintenance_counts
                    .add("extra_fields_ignored", ignored);
                tracing::debug!(sink = %self.shared.name, records = ignored, "wrote records without their fields the table has no column for");
            }
            if batch.len() > 0 {
                let (batch, positions) = batch.finish().map_err(|e| self.error(e))?;
                commit_now |= self.buffer(batch, positions)?;
            }
            drop(schema);
            if let Some(record) = evolve {
                let changed = self
                    .shared
                    .evolve(&record)
                    .await
                    .map_err(|e| self.error(e))?;
                if !changed {
                    // Nothing to add for it: written without the fields, or it would come back.
                    as_is = Some(record.position);
                }
                records.push_front(record);
            }
        }
        if commit_now {
            let buffered = self.shared.lock_buffer().rows;
            if buffered >= self.shared.max_buffered_rows.saturating_mul(2) {
                // Commits fall behind: this partition waits for one.
                self.shared.commit().await.map_err(|e| self.error(e))?;
            } else {
                self.shared.commit_early();
            }
        }
        Ok(refused)
    }

    async fn flush(&mut self) -> Result<SinkProgress, SinkError> {
        self.begin_flush().await?.await
    }

    /// Commits what this partition buffered so far, unless a commit already took it; the
    /// commit runs beside the writer, which goes on buffering rows for the next one.
    async fn begin_flush(&mut self) -> Result<PendingFlush, SinkError> {
        let wanted = {
            let buffer = self.shared.lock_buffer();
            match buffer.parts.get(&self.app_id) {
                // Rows still buffered go with the next take; rows already taken, with the
                // commit in progress.
                Some(part) if part.epoch == self.epoch => part.taken + u64::from(part.rows > 0),
                _ => return Err(self.superseded()),
            }
        };
        let writer = WriterRef {
            shared: Arc::clone(&self.shared),
            scope: self.scope.clone(),
            app_id: self.app_id.clone(),
            epoch: self.epoch,
        };
        Ok(Box::pin(
            async move { writer.committed_through(wanted).await },
        ))
    }

    /// Records produced after a checkpoint that covers `skip_through` are new: stop skipping.
    fn checkpointed(&mut self, position: Position) {
        let mut buffer = self.shared.lock_buffer();
        if let Some(part) = buffer.parts.get_mut(&self.app_id)
            && part.epoch == self.epoch
            && part.skip_through.is_some_and(|done| done <= position)
        {
            part.skip_through = None;
        }
    }
}
