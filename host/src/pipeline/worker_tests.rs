//! The worker's checkpoints name the source's offset of their position: a checkpoint saved again at
//! a resumed position before any new event (after a restart or a takeover, when an idle watermark
//! advance or the input's end dirties the state) keeps the offset the loaded checkpoint had.

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
