//! The worker's checkpoints name the source's offset of their position: a checkpoint saved again at
//! a resumed position before any new event (after a restart or a takeover, when an idle watermark
//! advance or the input's end dirties the state) keeps the offset the loaded checkpoint had. An idle
//! advance checkpointed just before a crash is repeated as decided when the worker starts, and so
//! is what the idle marks of several sources, checkpointed just before a crash, let go. A
//! checkpoint's sink flushes and a compaction's base run beside the partition.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::checkpoint::{Checkpoint, CheckpointStore, LocalCheckpointStore};
use crate::config::{Config, LoadedConfig};
use crate::event::{PartitionId, Position};
use crate::metrics::Metrics;
use crate::pipeline::{PipelineContext, build_worker};
use crate::source::{PartitionReader, ReadOutcome, SourceError};
use crate::status::ServiceStatus;
use crate::time::PipelineWatermarks;

/// A reader in the state of an Event Hubs reader that resumed and has read nothing yet: it knows
/// the offsets of the events it read (`known`), and of no other position.
struct ResumedReader {
    known: Vec<(Position, String)>,
}

#[async_trait]
impl PartitionReader for ResumedReader {
    fn partition(&self) -> PartitionId {
        0
    }

    async fn next_batch(
        &mut self,
        _max: usize,
        _wait: Duration,
    ) -> Result<ReadOutcome, SourceError> {
        Ok(ReadOutcome::Idle)
    }

    fn source_offset(&self, position: Position) -> Option<String> {
        self.known
            .iter()
            .find(|(p, _)| *p == position)
            .map(|(_, offset)| offset.clone())
    }
}

/// A pipeline `p` of no stages over a file source, its checkpoints in `store`.
pub(crate) fn context(store: Arc<dyn CheckpointStore>) -> PipelineContext {
    let config: Config = toml::from_str(
        r#"
[sources.input]
kind = "file"
path = "in.jsonl"

[pipelines.p]
source = "input"
dead_letter = "dead_letters"
stages = []
"#,
    )
    .expect("configuration");
    let mut pipeline = config.pipelines.get("p").expect("pipeline p").clone();
    // What loading resolves from `source`.
    pipeline.sources = vec!["input".to_owned()];
    pipeline.source = "input".to_owned();
    PipelineContext {
        name: "p".into(),
        pipeline,
        loaded: LoadedConfig {
            config,
            path: PathBuf::from("/etc/weir/weir.toml"),
            base_dir: PathBuf::from("/etc/weir"),
            text: "".into(),
        },
        sinks: BTreeMap::new(),
        plugins: HashMap::new(),
        references: HashMap::new(),
        watermarks: PipelineWatermarks::new(),
        slots: HashMap::new(),
        checkpoints: store,
        metrics: Metrics::new(),
        status: ServiceStatus::new(),
        label_versions: false,
    }
}

/// Resumes partition 0 from `loaded` with `reader`, dirties the state as an idle watermark
/// advance does, saves a checkpoint and returns what the store holds.
async fn resave(loaded: Checkpoint, reader: ResumedReader) -> Checkpoint {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn CheckpointStore> = Arc::new(LocalCheckpointStore::new(dir.path()));
    store.save("p", 0, &loaded).await.expect("save");
    let restored = store
        .load("p", 0)
        .await
        .expect("load")
        .expect("a checkpoint");
    let (_stop, shutdown) = watch::channel(false);
    let mut worker = build_worker(
        &context(store.clone()),
        vec![Box::new(reader)],
        restored,
        shutdown,
    )
    .await
    .expect("worker");
    worker.state_dirty = true;
    worker.checkpoint().await.expect("checkpoint");
    let first = store
        .load("p", 0)
        .await
        .expect("load")
        .expect("a checkpoint");
    // Once more: the offset also survives a second save at the same position.
    worker.state_dirty = true;
    worker.checkpoint().await.expect("checkpoint");
    let second = store
        .load("p", 0)
        .await
        .expect("load")
        .expect("a checkpoint");
    assert_eq!(first.source_offset, second.source_offset);
    assert!(second.written_at >= loaded.written_at);
    second
}

fn loaded(position: Position, offset: Option<&str>) -> Checkpoint {
    Checkpoint {
        position: Some(position),
        source_offset: offset.map(str::to_owned),
        written_at: 1,
        ..Checkpoint::default()
    }
}

#[tokio::test]
async fn a_checkpoint_saved_again_before_any_new_event_keeps_the_loaded_offset() {
    let saved = resave(
        loaded(41, Some("8192")),
        ResumedReader { known: Vec::new() },
    )
    .await;
    assert_eq!(saved.position, Some(41));
    assert_eq!(saved.source_offset.as_deref(), Some("8192"));
}

#[tokio::test]
async fn the_readers_offset_of_its_position_wins_and_none_is_invented() {
    // The reader read the event at the position again (a replay): its offset is the one to keep.
    let saved = resave(
        loaded(41, Some("8192")),
        ResumedReader {
            known: vec![(41, "8300".to_owned())],
        },
    )
    .await;
    assert_eq!(saved.source_offset.as_deref(), Some("8300"));
    // Nobody knew the offset: none is recorded (never the sequence number in its place).
    let saved = resave(loaded(41, None), ResumedReader { known: Vec::new() }).await;
    assert_eq!(saved.source_offset, None);
}

/// A reader whose partition has ended (a bounded input read to its end before the restart).
struct EndedReader;

#[async_trait]
impl PartitionReader for EndedReader {
    fn partition(&self) -> PartitionId {
        0
    }

    async fn next_batch(
        &mut self,
        _max: usize,
        _wait: Duration,
    ) -> Result<ReadOutcome, SourceError> {
        Ok(ReadOutcome::End)
    }

    fn source_offset(&self, _position: Position) -> Option<String> {
        None
    }
}

#[tokio::test]
async fn an_idle_advance_checkpointed_before_a_crash_is_repeated_first_and_then_cleared() {
    use crate::pipeline::event_time::{EVENT_TIME_STATE, IDLE_ADVANCE_STATE};
    use crate::time::{ClockSettings, EventClock};

    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn CheckpointStore> = Arc::new(LocalCheckpointStore::new(dir.path()));
    let mut context = context(store.clone());
    let dead_letters = crate::connectors::file::sink::FileSink::new(
        "dead_letters",
        dir.path().join("dead_letters"),
    );
    context
        .sinks
        .insert("dead_letters".to_owned(), Arc::new(dead_letters));
    context.pipeline.event_time =
        Some(toml::from_str(r#"semantics = "stream_analytics""#).expect("event_time"));
    let settings = ClockSettings::from_config(context.pipeline.event_time.as_ref());
    // The checkpoint a crashed run saved just before its idle advance to 90 s: its clock still
    // at 60 s, the advance pending.
    let mut clock = EventClock::new(settings);
    let mut admitted = crate::time::Admitted::default();
    let mut event = crate::event::Event::new(0, 41, "{}");
    event.event_time = Some(60_000);
    event.enqueued_time = 60_000;
    clock.admit(event, &mut admitted);
    let mut checkpoint = loaded(41, None);
    checkpoint
        .stages
        .insert(EVENT_TIME_STATE.to_owned(), clock.snapshot());
    checkpoint.stages.insert(
        IDLE_ADVANCE_STATE.to_owned(),
        90_000i64.to_be_bytes().to_vec(),
    );
    let (_stop, shutdown) = watch::channel(false);
    let worker = build_worker(&context, vec![Box::new(EndedReader)], checkpoint, shutdown)
        .await
        .expect("worker");
    assert_eq!(worker.pending_idle_advance, Some(90_000));
    worker.run().await.expect("run");

    let saved = store
        .load("p", 0)
        .await
        .expect("load")
        .expect("a checkpoint");
    assert!(
        !saved.stages.contains_key(IDLE_ADVANCE_STATE),
        "done: no longer pending"
    );
    let clock = EventClock::restore(settings, &saved.stages[EVENT_TIME_STATE]).expect("clock");
    assert_eq!(clock.watermark(), Some(90_000), "repeated as decided");
}

/// A reader that finds nothing, as a followed input that has gone quiet.
struct QuietReader;

#[async_trait]
impl PartitionReader for QuietReader {
    fn partition(&self) -> PartitionId {
        0
    }

    async fn next_batch(
        &mut self,
        _max: usize,
        wait: Duration,
    ) -> Result<ReadOutcome, SourceError> {
        tokio::time::sleep(wait.min(Duration::from_millis(20))).await;
        Ok(ReadOutcome::Idle)
    }

    fn source_offset(&self, _position: Position) -> Option<String> {
        None
    }
}

#[tokio::test]
async fn idle_marks_checkpointed_before_a_crash_let_their_events_go_first() {
    use crate::pipeline::event_time::SOURCES_TIME_STATE;
    use crate::time::{Admitted, ClockSettings, SourceMerge};

    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn CheckpointStore> = Arc::new(LocalCheckpointStore::new(dir.path()));
    let mut context = context(store.clone());
    let dead_letters = crate::connectors::file::sink::FileSink::new(
        "dead_letters",
        dir.path().join("dead_letters"),
    );
    context
        .sinks
        .insert("dead_letters".to_owned(), Arc::new(dead_letters));
    let other: crate::config::SourceConfig = toml::from_str(
        r#"
kind = "file"
path = "other.jsonl"
"#,
    )
    .expect("source");
    context
        .loaded
        .config
        .sources
        .insert("other".to_owned(), other);
    context.pipeline.sources = vec!["input".to_owned(), "other".to_owned()];
    context.pipeline.event_time = Some(toml::from_str(r#"field = "t""#).expect("event_time"));
    let settings = ClockSettings::from_config(context.pipeline.event_time.as_ref());
    // The checkpoint a crashed run saved with both sources just marked idle: three events read,
    // one released (sequence 1), two waiting in the merge for what the marks let go.
    let mut merge = SourceMerge::new(&[settings, settings]);
    let mut admitted = Admitted::default();
    for (source, name, time) in [(0, "input", 100), (1, "other", 150), (0, "input", 200)] {
        let mut event = crate::event::Event::new(0, time as u64, "{}");
        event.event_time = Some(time);
        event.source = name.into();
        merge.admit(source, event, &mut admitted);
    }
    assert_eq!(merge.sequence(), 1);
    assert!(merge.mark_idle(0, true) && merge.mark_idle(1, true));
    assert_eq!(merge.buffered(), 2, "marks alone release nothing");
    let mut checkpoint = loaded(1, None);
    checkpoint
        .stages
        .insert(SOURCES_TIME_STATE.to_owned(), merge.snapshot());
    let (stop, shutdown) = watch::channel(false);
    let worker = build_worker(
        &context,
        vec![Box::new(QuietReader), Box::new(QuietReader)],
        checkpoint,
        shutdown,
    )
    .await
    .expect("worker");
    let running = tokio::spawn(worker.run());
    let mut saved = None;
    for _ in 0..200 {
        saved = store.load("p", 0).await.expect("load");
        if saved.as_ref().is_some_and(|c| c.position == Some(3)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(true).expect("stop");
    running.await.expect("join").expect("run");
    let saved = saved.expect("a checkpoint");
    assert_eq!(
        saved.position,
        Some(3),
        "the two waiting events were let go, numbered 2 and 3, and checkpointed"
    );
    let names: Vec<Arc<str>> = vec!["input".into(), "other".into()];
    let merge = SourceMerge::restore(
        &[settings, settings],
        &names,
        &saved.stages[SOURCES_TIME_STATE],
    )
    .expect("merge");
    assert_eq!(merge.buffered(), 0);
    assert_eq!(merge.sequence(), 3);
}

/// A reader that finds one undecodable event per read, as a source of garbage would: each goes
/// to the dead-letter sink, and moves the position on.
struct GarbageReader {
    next: Position,
}

#[async_trait]
impl PartitionReader for GarbageReader {
    fn partition(&self) -> PartitionId {
        0
    }

    async fn next_batch(
        &mut self,
        _max: usize,
        _wait: Duration,
    ) -> Result<ReadOutcome, SourceError> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.next += 1;
        Ok(ReadOutcome::Undecodable {
            first: self.next,
            last: self.next,
            reason: "not JSON".to_owned(),
        })
    }

    fn source_offset(&self, _position: Position) -> Option<String> {
        None
    }
}

/// What a [`GatedSink`]'s writer saw, and the gate its flushes wait at.
struct Gate {
    open: tokio::sync::Semaphore,
    flush_began: std::sync::atomic::AtomicBool,
    writes_while_flushing: std::sync::atomic::AtomicUsize,
    fail: bool,
}

/// A sink whose flushes end only once the test opens its gate (as a slow Delta commit or a slow
/// acknowledgement would), or fail.
struct GatedSink(Arc<Gate>);

struct GatedWriter(Arc<Gate>);

#[async_trait]
impl crate::sink::Sink for GatedSink {
    fn name(&self) -> &str {
        "dead_letters"
    }

    async fn open_writer(
        &self,
        _scope: &crate::sink::WriterScope,
        _progress: Option<&crate::sink::SinkProgress>,
    ) -> Result<Box<dyn crate::sink::SinkWriter>, crate::sink::SinkError> {
        Ok(Box::new(GatedWriter(Arc::clone(&self.0))))
    }
}

#[async_trait]
impl crate::sink::SinkWriter for GatedWriter {
    async fn write(
        &mut self,
        _records: Vec<crate::event::Event>,
    ) -> Result<Vec<crate::sink::Refused>, crate::sink::SinkError> {
        use std::sync::atomic::Ordering;
        if self.0.flush_began.load(Ordering::SeqCst) {
            self.0.writes_while_flushing.fetch_add(1, Ordering::SeqCst);
        }
        Ok(Vec::new())
    }

    async fn flush(&mut self) -> Result<crate::sink::SinkProgress, crate::sink::SinkError> {
        self.begin_flush().await?.await
    }

    async fn begin_flush(&mut self) -> Result<crate::sink::PendingFlush, crate::sink::SinkError> {
        self.0
            .flush_began
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let gate = Arc::clone(&self.0);
        Ok(Box::pin(async move {
            let _passed = gate.open.acquire().await;
            if gate.fail {
                let scope = crate::sink::WriterScope {
                    pipeline: "p".into(),
                    partition: 0,
                };
                return Err(scope.error("dead_letters", "the commit failed"));
            }
            Ok(serde_json::json!({ "flushed": true }))
        }))
    }
}

/// Runs partition 0 of `p` on garbage into a [`GatedSink`] with checkpoints every 20 ms, until
/// records have been written while the first checkpoint's flush waits at the gate; then opens it.
/// Returns what the worker ended with and the checkpoint saved at the end, if any.
async fn run_past_a_slow_flush(fail: bool) -> (Result<(), String>, Option<Checkpoint>) {
    use std::sync::atomic::Ordering;

    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn CheckpointStore> = Arc::new(LocalCheckpointStore::new(dir.path()));
    let mut context = context(store.clone());
    let gate = Arc::new(Gate {
        open: tokio::sync::Semaphore::new(0),
        flush_began: Default::default(),
        writes_while_flushing: Default::default(),
        fail,
    });
    context.sinks.insert(
        "dead_letters".to_owned(),
        Arc::new(GatedSink(Arc::clone(&gate))),
    );
    let (stop, shutdown) = watch::channel(false);
    let mut worker = build_worker(
        &context,
        vec![Box::new(GarbageReader { next: 0 })],
        Checkpoint::default(),
        shutdown,
    )
    .await
    .expect("worker");
    worker.settings.checkpoint_interval = Duration::from_millis(20);
    let running = tokio::spawn(worker.run());
    let waited = tokio::time::timeout(Duration::from_secs(20), async {
        while gate.writes_while_flushing.load(Ordering::SeqCst) < 20 && !running.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    if running.is_finished() {
        panic!(
            "the worker ended early: {:?}",
            running.await.map(|r| r.map(|_| ()))
        );
    }
    assert!(
        waited.is_ok(),
        "the partition stopped reading while its checkpoint's flush was pending (flush began: {})",
        gate.flush_began.load(Ordering::SeqCst)
    );
    assert_eq!(
        store.load("p", 0).await.expect("load"),
        None,
        "no record is saved before its sinks' flushes end"
    );
    gate.open.add_permits(1_000_000);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = stop.send(true);
    let ended = running
        .await
        .expect("join")
        .map(|_| ())
        .map_err(|e| e.to_string());
    (ended, store.load("p", 0).await.expect("load"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_goes_on_reading_while_its_checkpoint_waits_for_the_sinks() {
    let (ended, saved) = run_past_a_slow_flush(false).await;
    ended.expect("the worker ends cleanly");
    let saved = saved.expect("checkpoints saved once the flushes ended");
    assert!(
        saved.position.is_some_and(|p| p > 20),
        "the last checkpoint covers what was read while the first waited: {:?}",
        saved.position
    );
    assert_eq!(
        saved.sinks.get("dead_letters"),
        Some(&serde_json::json!({ "flushed": true }))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_that_fails_in_the_background_stops_the_partition_and_saves_no_record() {
    let (ended, saved) = run_past_a_slow_flush(true).await;
    let error = ended.expect_err("the worker fails");
    assert!(error.contains("the commit failed"), "{error}");
    assert_eq!(saved, None);
}

/// A stage whose state is all keyed state, shared with the test that writes and reads it.
struct KeyedStage {
    name: Arc<str>,
    state: Arc<std::sync::Mutex<crate::plugin::KeyedState>>,
}

impl KeyedStage {
    fn state(&self) -> std::sync::MutexGuard<'_, crate::plugin::KeyedState> {
        self.state.lock().expect("state lock")
    }
}

impl crate::stage::Stage for KeyedStage {
    fn name(&self) -> &Arc<str> {
        &self.name
    }

    fn process(
        &mut self,
        _events: &[crate::event::Event],
        _out: &mut crate::stage::StageOutput,
    ) -> Result<(), crate::stage::StageError> {
        Ok(())
    }

    fn snapshot(&self) -> Vec<u8> {
        self.state().snapshot()
    }

    fn take_state_changes(&mut self, whole: bool) -> Option<bytes::Bytes> {
        Some(self.state().take_changes(whole))
    }

    fn begin_state_base(&mut self) -> Option<crate::plugin::BaseWrite> {
        Some(self.state().begin_base())
    }

    fn adopt_state_base(
        &mut self,
        write: &crate::plugin::BaseWrite,
        bytes: bytes::Bytes,
    ) -> Option<crate::plugin::ReplacedLayers> {
        self.state().adopt_base(write, bytes)
    }
}

/// Commits `keys` puts of `value` to `state`.
fn put_keys(
    state: &std::sync::Mutex<crate::plugin::KeyedState>,
    keys: std::ops::Range<u32>,
    value: &str,
) {
    let mut state = state.lock().expect("state lock");
    for key in keys {
        state.put(format!("key-{key}").into_bytes(), value.as_bytes().to_vec());
    }
    state.commit();
}

/// The keyed state of stage `s` the store's checkpoint of partition 0 restores.
async fn restored_state(store: &Arc<dyn CheckpointStore>) -> crate::plugin::KeyedState {
    let loaded = store
        .load("p", 0)
        .await
        .expect("load")
        .expect("a checkpoint");
    let parts = loaded.state_parts.get("s").expect("state files of s");
    crate::plugin::KeyedState::from_changes(parts.iter().cloned()).expect("state restores")
}

/// A compaction's base is written in the checkpoint's task from the state as it was at the cut,
/// while the stage takes further writes; once saved, the stage's state stands on the new base
/// (no layer left over from the cut), and the base and the delta after it restore the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_is_written_beside_the_stage_from_its_state_at_the_cut_and_then_taken_by_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn CheckpointStore> = Arc::new(LocalCheckpointStore::new(dir.path()));
    let (_stop, shutdown) = watch::channel(false);
    let mut worker = build_worker(
        &context(store.clone()),
        vec![Box::new(QuietReader)],
        Checkpoint::default(),
        shutdown,
    )
    .await
    .expect("worker");
    let state = Arc::new(std::sync::Mutex::new(crate::plugin::KeyedState::default()));
    worker.stages.push(super::StageSlot {
        stage: Box::new(KeyedStage {
            name: "s".into(),
            state: Arc::clone(&state),
        }),
        routes: HashMap::new(),
    });

    // The first checkpoint of a stage writes a base; writes after its cut are the next one's.
    put_keys(&state, 0..1_000, "at the cut");
    worker.position = Some(1);
    worker.state_dirty = true;
    worker.start_checkpoint().await.expect("checkpoint starts");
    assert_eq!(
        state.lock().expect("state lock").base_and_overlay().0,
        0,
        "the base is not written on the partition's thread"
    );
    put_keys(&state, 500..1_500, "after the cut");
    worker.finish_checkpoint().await.expect("checkpoint saved");

    let saved = restored_state(&store).await;
    assert_eq!(saved.len(), 1_000);
    assert_eq!(saved.get(b"key-999"), Some(&b"at the cut"[..]));
    let (base_bytes, overlay_keys) = state.lock().expect("state lock").base_and_overlay();
    assert!(base_bytes > 0, "the stage took its new base");
    assert_eq!(overlay_keys, 1_000, "over it only the writes after the cut");
    assert_eq!(state.lock().expect("state lock").len(), 1_500);

    // The next checkpoint, a delta over that base, restores the whole state.
    worker.position = Some(2);
    worker.state_dirty = true;
    worker.checkpoint().await.expect("checkpoint");
    let restored = restored_state(&store).await;
    let mut ours = state.lock().expect("state lock").clone();
    ours.rollback();
    assert!(restored == ours, "the base and the delta restore the state");
    assert_eq!(restored.get(b"key-999"), Some(&b"after the cut"[..]));
}
