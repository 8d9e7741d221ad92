//! JSON Lines files, one per pipeline and partition, exactly once through truncation on recovery.

use std::path::PathBuf;

use async_trait::async_trait;
use serde_json::json;
use tokio::io::{AsyncSeekExt, AsyncWriteExt, BufWriter};

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
            file: BufWriter::with_capacity(256 * 1024, file),
            length: end,
        }))
    }
}

struct FileWriter {
    sink: String,
    scope: WriterScope,
    file: BufWriter<tokio::fs::File>,
    length: u64,
}

#[async_trait]
impl SinkWriter for FileWriter {
    async fn write(&mut self, records: Vec<Event>) -> Result<Vec<Refused>, SinkError> {
        // The batch's lines are gathered first and handed to the file in one write.
        let size: usize = records.iter().map(|r| r.body.len() + 1).sum();
        let mut lines = Vec::with_capacity(size);
        for record in records {
            // A JSON document can hold a raw newline only as whitespace: flatten it so that one
            // record stays one line.
            if record.body.contains(&b'\n') {
                lines.extend(
                    record
                        .body
                        .iter()
                        .map(|b| if *b == b'\n' || *b == b'\r' { b' ' } else { *b }),
                );
            } else {
                lines.extend_from_slice(&record.body);
            }
            lines.push(b'\n');
        }
        self.file
            .write_all(&lines)
            .await
            .map_err(|e| self.scope.error(&self.sink, format!("write failed: {e}")))?;
        self.length += lines.len() as u64;
        Ok(Vec::new())
    }

    async fn flush(&mut self) -> Result<SinkProgress, SinkError> {
        self.file
            .flush()
            .await
            .map_err(|e| self.scope.error(&self.sink, format!("flush failed: {e}")))?;
        self.file
            .get_ref()
            .sync_data()
            .await
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
