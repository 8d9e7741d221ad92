//! JSON Lines files, one per pipeline and partition, exactly once through truncation on recovery.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;
use tokio::io::AsyncSeekExt;
use tokio::task::JoinHandle;

use crate::event::Event;
use crate::sink::{Refused, Sink, SinkError, SinkErrorKind, SinkProgress, SinkWriter, WriterScope};

/// Files under a directory: `<dir>/<pipeline>-<partition>.jsonl`.
#[derive(Debug)]
pub struct FileSink {
    name: String,
    dir: PathBuf,
}

impl FileSink {
    /// A sink writing under `dir` (created when a writer opens).
    pub fn new(name: &str, dir: PathBuf) -> Self {
        FileSink {
            name: name.to_owned(),
            dir,
        }
    }

    /// The file one pipeline partition writes.
    pub fn file_path(&self, pipeline: &str, partition: u32) -> PathBuf {
        self.dir.join(format!("{pipeline}-{partition}.jsonl"))
    }
}

/// The durable length recorded in a checkpoint.
fn recorded_length(progress: Option<&SinkProgress>) -> u64 {
    progress
        .and_then(|p| p.get("bytes"))
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

#[async_trait]
impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn describe(&self) -> String {
        format!(
            "JSON Lines files {}/<pipeline>-<partition>.jsonl",
            self.dir.display()
        )
    }

    async fn open_writer(
        &self,
        scope: &WriterScope,
        progress: Option<&SinkProgress>,
    ) -> Result<Box<dyn SinkWriter>, SinkError> {
        let fail = |what: &str, e: std::io::Error| {
            let kind = match super::misconfigured(&e) {
                true => SinkErrorKind::Misconfigured,
                false => SinkErrorKind::Unavailable,
            };
            let reason = format!("{what} {}: {e}", self.dir.display());
            scope.error_of(kind, &self.name, reason)
        };
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| fail("cannot create", e))?;
        let path = self.file_path(&scope.pipeline, scope.partition);
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .await
            .map_err(|e| fail("cannot open a file in", e))?;
        let durable = recorded_length(progress);
        let length = file
            .metadata()
            .await
            .map_err(|e| fail("cannot stat a file in", e))?
            .len();
        if length > durable {
            // Whatever lies past the checkpoint is written again by the replay.
            tracing::info!(
                sink = %self.name, file = %path.display(), from = length, to = durable,
                "truncating output written after the last checkpoint; the replay rewrites it"
            );
            file.set_len(durable)
                .await
                .map_err(|e| fail("cannot truncate a file in", e))?;
        } else if length < durable {
            tracing::warn!(
                sink = %self.name, file = %path.display(), length, checkpointed = durable,
                "file is shorter than its checkpoint says: it was changed outside Weir"
            );
        }
        let end = file
            .seek(std::io::SeekFrom::End(0))
            .await
            .map_err(|e| fail("cannot seek a file in", e))?;
        Ok(Box::new(FileWriter {
            sink: self.name.clone(),
            scope: scope.clone(),
            file: Arc::new(file.into_std().await),
            pending: Vec::with_capacity(WRITE_AT + WRITE_AT / 2),
            spare: Vec::new(),
            writing: None,
            syncing: None,
            unsynced: 0,
            length: end,
        }))
    }
}

/// Bytes gathered before they are written to the file (by a blocking thread, while the next
/// ones are gathered).
const WRITE_AT: usize = 512 * 1024;

/// Bytes written since the last sync after which the disk is asked to catch up in the
/// background, so that a checkpoint's sync finds little left to write.
const SYNC_AHEAD: u64 = 16 * 1024 * 1024;

/// A blocking write of a buffer, which comes back (emptied) for reuse.
type Writing = JoinHandle<(Vec<u8>, std::io::Result<()>)>;

struct FileWriter {
    sink: String,
    scope: WriterScope,
    file: Arc<std::fs::File>,
    /// Lines not handed to the file yet.
    pending: Vec<u8>,
    /// An empty buffer to gather into while `pending` is written.
    spare: Vec<u8>,
    /// The write in flight, if any (one at a time, so that the file's lines stay in order).
    writing: Option<Writing>,
    /// A sync started ahead of a checkpoint, if any.
    syncing: Option<JoinHandle<std::io::Result<()>>>,
    /// Bytes written since the last sync started.
    unsynced: u64,
    /// The file's length once everything gathered is written.
    length: u64,
}

impl FileWriter {
    /// Waits for the write in flight, taking its buffer back.
    async fn finish_writing(&mut self) -> Result<(), SinkError> {
        let Some(writing) = self.writing.take() else {
            return Ok(());
        };
        let (mut buffer, written) = writing.await.map_err(|e| {
            self.scope
                .error(&self.sink, format!("write task failed: {e}"))
        })?;
        written.map_err(|e| self.scope.error(&self.sink, format!("write failed: {e}")))?;
        buffer.clear();
        self.spare = buffer;
        Ok(())
    }

    /// Hands what was gathered to the file, in the background (after the write before it).
    async fn write_out(&mut self) -> Result<(), SinkError> {
        self.finish_writing().await?;
        if self.pending.is_empty() {
            return Ok(());
        }
        let next = std::mem::take(&mut self.spare);
        let lines = std::mem::replace(&mut self.pending, next);
        self.unsynced += lines.len() as u64;
        let file = self.file.clone();
        self.writing = Some(tokio::task::spawn_blocking(move || {
            let written = (&*file).write_all(&lines);
            (lines, written)
        }));
        if self.unsynced >= SYNC_AHEAD && self.syncing.as_ref().is_none_or(|s| s.is_finished()) {
            // Covers what is written by now; a failure shows at the checkpoint's own sync.
            self.unsynced = 0;
            let file = self.file.clone();
            self.syncing = Some(tokio::task::spawn_blocking(move || file.sync_data()));
        }
        Ok(())
    }
}

#[async_trait]
impl SinkWriter for FileWriter {
    async fn write(&mut self, records: Vec<Event>) -> Result<Vec<Refused>, SinkError> {
        // Lines are gathered into one buffer, written once it is large enough.
        let before = self.pending.len();
        for record in records {
            // A JSON document can hold a raw newline only as whitespace: flatten it so that one
            // record stays one line.
            if memchr::memchr(b'\n', &record.body).is_some() {
                self.pending.extend(
                    record
                        .body
                        .iter()
                        .map(|b| if *b == b'\n' || *b == b'\r' { b' ' } else { *b }),
                );
            } else {
                self.pending.extend_from_slice(&record.body);
            }
            self.pending.push(b'\n');
        }
        self.length += (self.pending.len() - before) as u64;
        if self.pending.len() >= WRITE_AT {
            self.write_out().await?;
        }
        Ok(Vec::new())
    }

    async fn flush(&mut self) -> Result<SinkProgress, SinkError> {
        self.write_out().await?;
        self.finish_writing().await?;
        if let Some(syncing) = self.syncing.take() {
            // Its outcome does not matter: the sync below covers everything.
            let _ = syncing.await;
        }
        self.unsynced = 0;
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(|e| {
                self.scope
                    .error(&self.sink, format!("sync task failed: {e}"))
            })?
            .map_err(|e| self.scope.error(&self.sink, format!("sync failed: {e}")))?;
        Ok(json!({ "bytes": self.length }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn recovery_truncates_to_the_checkpointed_length() {
        let dir = tempfile::tempdir().expect("temp dir");
        let sink = FileSink::new("out", dir.path().join("out"));
        let scope = WriterScope {
            pipeline: "p".into(),
            partition: 1,
        };
        let mut writer = sink.open_writer(&scope, None).await.expect("open");
        writer
            .write(vec![Event::new(1, 1, "{\"a\":1}")])
            .await
            .expect("write");
        let progress = writer.flush().await.expect("flush");
        assert_eq!(progress, json!({"bytes": 8}));
        writer
            .write(vec![Event::new(1, 2, "{\"a\":\n2}")])
            .await
            .expect("write");
        writer.flush().await.expect("flush");
        drop(writer);
        let path = sink.file_path("p", 1);
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "{\"a\":1}\n{\"a\": 2}\n"
        );

        // A restart from the first checkpoint drops the second record; the replay writes it again.
        let mut writer = sink
            .open_writer(&scope, Some(&progress))
            .await
            .expect("reopen");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "{\"a\":1}\n");
        writer
            .write(vec![Event::new(1, 2, "{\"a\":2}")])
            .await
            .expect("write");
        assert_eq!(writer.flush().await.expect("flush"), json!({"bytes": 16}));
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "{\"a\":1}\n{\"a\":2}\n"
        );
    }
}
