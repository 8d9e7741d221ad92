//! Replay of a JSON Lines file: one event per line, positioned by the byte offset of its line.
//!
//! The file source knows its end (the file's size, checked again at each poll while following),
//! so each partition reports its lag in bytes: from the first line it has not read to the end of
//! the file (see [`InputProgress`]).

use std::borrow::Cow;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::config::FileSourceConfig;
use crate::event::{Event, now_millis, partition_for_key};
use crate::json::{FieldValue, event_time_millis, top_level_field};
use crate::source::dispatch::InputProgress;
use crate::source::{
    Dispatcher, PartitionReader, PartitionStart, Source, SourceError, SourceErrorKind,
};

/// How often a followed file is checked for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// A JSON Lines file spread over partitions by a key field (or by line).
#[derive(Debug)]
pub struct FileSource {
    name: String,
    config: FileSourceConfig,
}

impl FileSource {
    /// A source reading `config.path` (already resolved).
    pub fn new(name: &str, config: FileSourceConfig) -> Self {
        FileSource {
            name: name.to_owned(),
            config,
        }
    }
}

#[async_trait]
impl Source for FileSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn partition_count(&self) -> u32 {
        self.config.partitions
    }

    async fn open(
        &self,
        starts: Vec<PartitionStart>,
    ) -> Result<Vec<Box<dyn PartitionReader>>, SourceError> {
        let file = tokio::fs::File::open(&self.config.path)
            .await
            .map_err(|e| {
                let kind = match super::misconfigured(&e) {
                    true => SourceErrorKind::Misconfigured,
                    false => SourceErrorKind::Unavailable,
                };
                SourceError::start(
                    kind,
                    &self.name,
                    format!("cannot open {}: {e}", self.config.path.display()),
                )
            })?;
        let size = file
            .metadata()
            .await
            .map_err(|e| {
                SourceError::start(
                    SourceErrorKind::Unavailable,
                    &self.name,
                    format!(
                        "cannot read the size of {}: {e}",
                        self.config.path.display()
                    ),
                )
            })?
            .len();
        // The producer starts where the partition furthest behind resumes; the readers' lag is
        // measured from there until they have read more.
        let start = starts
            .iter()
            .map(|s| s.after.unwrap_or(0))
            .min()
            .unwrap_or(0);
        let progress = InputProgress::new(start, size);
        let (dispatcher, readers) = Dispatcher::with_progress(
            &self.name,
            self.config.partitions,
            &starts,
            Some(progress.clone()),
        )?;
        let name = self.name.clone();
        let config = self.config.clone();
        tokio::spawn(async move {
            if let Err(reason) = read_lines(file, &config, &dispatcher, &progress).await {
                tracing::error!(source = %name, %reason, "file source failed");
                dispatcher
                    .fail(|partition| {
                        SourceError::read(SourceErrorKind::Unavailable, &name, partition, &reason)
                    })
                    .await;
            }
        });
        Ok(readers)
    }
}

/// Bytes read from the file at a time. Events are slices of these reads (no copy per event); an
/// event kept long (a join's buffer) keeps its read's bytes alive, so reads stay small.
const READ_CHUNK: usize = 64 * 1024;

async fn read_lines(
    mut file: tokio::fs::File,
    config: &FileSourceConfig,
    dispatcher: &Dispatcher,
    progress: &InputProgress,
) -> Result<(), String> {
    let mut offset = dispatcher.resume_from().unwrap_or(0);
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(|e| format!("cannot seek to byte {offset}: {e}"))?;
    // Bytes read but not dispatched yet: the start of a line whose end has not been read.
    let mut pending = BytesMut::with_capacity(READ_CHUNK);
    loop {
        if pending.capacity() - pending.len() < READ_CHUNK / 4 {
            pending.reserve(READ_CHUNK);
        }
        let read = file
            .read_buf(&mut pending)
            .await
            .map_err(|e| format!("read error at byte {offset}: {e}"))?;
        if read == 0 {
            // End of file, or a line still being written.
            if !config.follow {
                if !pending.is_empty() {
                    let line = pending.split().freeze();
                    let length = line.len() as u64;
                    dispatch_line(config, dispatcher, offset, line).await;
                    progress.dispatched_through(offset + length);
                }
                return Ok(());
            }
            if dispatcher.is_closed() {
                return Ok(());
            }
            // The file may have grown beyond what was read: its size is its end.
            if let Ok(metadata) = file.metadata().await {
                progress.end_seen(metadata.len());
            }
            tokio::time::sleep(FOLLOW_POLL).await;
            continue;
        }
        // Every complete line read so far, in one shared buffer.
        let Some(last_end) = pending.iter().rposition(|b| *b == b'\n') else {
            continue;
        };
        let lines = pending.split_to(last_end + 1).freeze();
        let mut start = 0;
        while start < lines.len() {
            let end = lines[start..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(lines.len(), |at| start + at + 1);
            let line_offset = offset;
            offset += (end - start) as u64;
            if !dispatch_line(config, dispatcher, line_offset, lines.slice(start..end)).await {
                return Ok(());
            }
            start = end;
        }
        // Once per read rather than per line: the readers load it for every event they take.
        progress.dispatched_through(offset);
    }
}

/// Sends one line as an event; false when nobody reads any more.
async fn dispatch_line(
    config: &FileSourceConfig,
    dispatcher: &Dispatcher,
    offset: u64,
    line: Bytes,
) -> bool {
    let mut length = line.len();
    if line[..length].ends_with(b"\n") {
        length -= 1;
    }
    if line[..length].ends_with(b"\r") {
        length -= 1;
    }
    let line = line.slice(..length);
    let body = &line[..];
    if body.iter().all(u8::is_ascii_whitespace) {
        return true;
    }
    let partitions = dispatcher.partitions();
    // A line whose key cannot be read is still delivered (and dead-lettered by the pipeline if it
    // is malformed), on a partition fixed by its offset so that a replay sends it to the same one.
    let key = config
        .key_field
        .as_deref()
        .and_then(|field| top_level_field(body, field).ok().flatten())
        .and_then(|value| match value {
            // A key as written in the line: a slice of it, not a copy.
            FieldValue::Text(Cow::Borrowed(text)) => Some(line.slice_ref(text.as_bytes())),
            value => value.key_bytes().map(Bytes::from),
        });
    let partition = match &key {
        Some(key) => partition_for_key(key, partitions),
        None => partition_for_key(&offset.to_le_bytes(), partitions),
    };
    let mut event = Event::new(partition, offset, line.clone());
    event.enqueued_time = config
        .enqueued_time_field
        .as_deref()
        .and_then(|field| top_level_field(body, field).ok().flatten())
        .and_then(|value| event_time_millis(&value).ok())
        .unwrap_or_else(now_millis);
    event.key = key;
    dispatcher.send(event).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::ReadOutcome;

    async fn read_all(source: &FileSource, starts: Vec<PartitionStart>) -> Vec<Event> {
        let mut readers = source.open(starts).await.expect("open");
        let mut events = Vec::new();
        for reader in &mut readers {
            loop {
                match reader
                    .next_batch(100, Duration::from_secs(5))
                    .await
                    .expect("read")
                {
                    ReadOutcome::Events(batch) => events.extend(batch),
                    ReadOutcome::Idle => panic!("file source idled before its end"),
                    ReadOutcome::End => break,
                    ReadOutcome::Undecodable { .. } => {
                        panic!("this source never has undecodable data")
                    }
                }
            }
        }
        events.sort_by_key(|e| e.position);
        events
    }

    #[tokio::test]
    async fn a_missing_input_file_is_the_configuration_s_fault() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = FileSourceConfig {
            path: dir.path().join("absent.jsonl"),
            partitions: 1,
            key_field: None,
            follow: false,
            enqueued_time_field: None,
        };
        let source = FileSource::new("f", config);
        let start = PartitionStart {
            partition: 0,
            after: None,
        };
        let Err(error) = source.open(vec![start]).await else {
            panic!("an absent file opens");
        };
        assert!(
            error
                .to_string()
                .starts_with("source `f` cannot start: cannot open "),
            "{error}"
        );
        assert_eq!(error.kind(), SourceErrorKind::Misconfigured);
        assert!(!error.retryable());
    }

    #[tokio::test]
    async fn lines_are_partitioned_by_key_and_resume_after_checkpoints() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("in.jsonl");
        let lines = [
            "{\"k\":\"a\",\"n\":1}",
            "",
            "{\"k\":\"b\",\"n\":2}",
            "not json",
            "{\"k\":\"a\",\"n\":3}",
        ];
        std::fs::write(&path, lines.join("\n")).expect("write input");
        let config = FileSourceConfig {
            path,
            partitions: 2,
            key_field: Some("k".into()),
            follow: false,
            enqueued_time_field: None,
        };
        let source = FileSource::new("f", config);
        let all = read_all(
            &source,
            vec![
                PartitionStart {
                    partition: 0,
                    after: None,
                },
                PartitionStart {
                    partition: 1,
                    after: None,
                },
            ],
        )
        .await;
        let bodies: Vec<&[u8]> = all.iter().map(|e| &e.body[..]).collect();
        assert_eq!(
            bodies,
            [
                lines[0].as_bytes(),
                lines[2].as_bytes(),
                lines[3].as_bytes(),
                lines[4].as_bytes()
            ]
        );
        let pa = partition_for_key(b"a", 2);
        assert_eq!(all[0].partition, pa);
        assert_eq!(all[3].partition, pa);
        assert_eq!(
            all[2].position,
            (lines[0].len() + 1 + 1 + lines[2].len() + 1) as u64
        );

        // Resume: each partition skips what its checkpoint covers.
        let starts = (0..2)
            .map(|p| PartitionStart {
                partition: p,
                after: Some(all[1].position),
            })
            .collect();
        let rest = read_all(&source, starts).await;
        assert_eq!(
            rest.iter().map(|e| e.position).collect::<Vec<_>>(),
            [all[2].position, all[3].position]
        );
    }

    #[tokio::test]
    async fn a_followed_line_read_half_written_keeps_the_byte_offsets_of_the_lines_after_it() {
        // A writer that writes a line in pieces (as `writeln!` on a `File` does) is seen half
        // way: the line's offset and the next lines' must still be their byte offsets, or a
        // restart seeks elsewhere and writes lines again at other positions.
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("in.jsonl");
        let first = "{\"n\":1}\n";
        let (head, tail) = ("{\"n\":2,\"pad\":\"", "xxxxxxxx\"}\n");
        let third = "{\"n\":3}\n";
        std::fs::write(&path, format!("{first}{head}")).expect("write input");
        let config = FileSourceConfig {
            path: path.clone(),
            partitions: 1,
            key_field: None,
            follow: true,
            enqueued_time_field: None,
        };
        let source = FileSource::new("f", config);
        let start = PartitionStart {
            partition: 0,
            after: None,
        };
        let mut readers = source.open(vec![start]).await.expect("open");
        let size = (first.len() + head.len()) as u64;
        // The first line is read, the half line waits.
        assert_eq!(read_events(&mut readers[0], 1).await.len(), 1);
        // Past a poll, the rest of the line and a third one arrive.
        tokio::time::sleep(FOLLOW_POLL * 2).await;
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut file| {
                std::io::Write::write_all(&mut file, format!("{tail}{third}").as_bytes())
            })
            .expect("append");
        let read = read_events(&mut readers[0], 2).await;
        let positions: Vec<u64> = read.iter().map(|e| e.position).collect();
        let second_at = first.len() as u64;
        let third_at = size + tail.len() as u64;
        assert_eq!(positions, [second_at, third_at]);
        let text = std::fs::read_to_string(&path).expect("read input");
        assert_eq!(&text[third_at as usize..], third);
    }

    /// Reads `reader` in short waits until it has given `count` events (panics after 20 s).
    async fn read_events(reader: &mut Box<dyn PartitionReader>, count: usize) -> Vec<Event> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut events = Vec::new();
        while events.len() < count {
            assert!(std::time::Instant::now() < deadline, "{events:?}");
            if let ReadOutcome::Events(batch) = reader
                .next_batch(100, Duration::from_millis(50))
                .await
                .expect("read")
            {
                events.extend(batch);
            }
        }
        events
    }

    /// Reads `reader` in short waits until its lag is `want` (panics after 20 s); the events read.
    async fn read_until_lag(reader: &mut Box<dyn PartitionReader>, want: u64) -> Vec<Event> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut events = Vec::new();
        while reader.lag() != Some(want) {
            assert!(
                std::time::Instant::now() < deadline,
                "partition {}: lag {:?}, expected {want}",
                reader.partition(),
                reader.lag()
            );
            if let ReadOutcome::Events(batch) = reader
                .next_batch(100, Duration::from_millis(50))
                .await
                .expect("read")
            {
                events.extend(batch);
            }
        }
        events
    }

    #[tokio::test]
    async fn each_partition_reports_the_bytes_it_has_not_read_up_to_the_end_of_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("in.jsonl");
        // Two keys of different partitions.
        let keys: Vec<String> = (0..64).map(|i| format!("k{i}")).collect();
        let first = &keys[0];
        let second = keys
            .iter()
            .find(|k| partition_for_key(k.as_bytes(), 2) != partition_for_key(first.as_bytes(), 2))
            .expect("a key of the other partition");
        let line = |key: &str, n: u32| format!("{{\"k\":\"{key}\",\"n\":{n}}}\n");
        let text = [line(first, 1), line(second, 2), line(first, 3)].concat();
        std::fs::write(&path, &text).expect("write input");
        let size = text.len() as u64;
        let config = FileSourceConfig {
            path: path.clone(),
            partitions: 2,
            key_field: Some("k".into()),
            follow: true,
            enqueued_time_field: None,
        };
        let source = FileSource::new("f", config);
        let starts = (0..2)
            .map(|partition| PartitionStart {
                partition,
                after: None,
            })
            .collect();
        let mut readers = source.open(starts).await.expect("open");
        let a = partition_for_key(first.as_bytes(), 2) as usize;
        let b = 1 - a;
        // Nothing read yet: the whole file is ahead of each partition.
        assert_eq!(readers[a].lag(), Some(size));
        assert_eq!(readers[b].lag(), Some(size));
        // Read to the end: no lag, whether the file's last line was the partition's or not.
        assert_eq!(read_until_lag(&mut readers[a], 0).await.len(), 2);
        assert_eq!(readers[b].lag(), Some(size), "b has read nothing");
        assert_eq!(read_until_lag(&mut readers[b], 0).await.len(), 1);

        // A line for `a` appended: both partitions are behind by it until they read on (`b`
        // catches up as soon as it finds nothing for it).
        let appended = line(first, 4);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut file| std::io::Write::write_all(&mut file, appended.as_bytes()))
            .expect("append");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while readers[a].lag() != Some(appended.len() as u64) {
            assert!(
                std::time::Instant::now() < deadline,
                "lag {:?} after the append",
                readers[a].lag()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(read_until_lag(&mut readers[b], 0).await.is_empty());
        let read = read_until_lag(&mut readers[a], 0).await;
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].position, size);
    }
}
