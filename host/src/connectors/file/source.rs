//! Replay of a JSON Lines file: one event per line, positioned by the byte offset of its line.
//!
//! The file source knows its end (the file's size, checked again at each poll while following),
//! so each partition reports its lag in bytes: from the first line it has not read to the end of
//! the file (see [`InputProgress`]).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io::{Read, Seek};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use crate::config::FileSourceConfig;
use crate::event::{Event, PartitionId, now_millis, partition_for_key};
use crate::json::{FieldValue, event_time_millis, top_level_field, top_level_field_pair};
use crate::source::dispatch::InputProgress;
use crate::source::{
    DispatchSettings, Dispatcher, PartitionReader, PartitionStart, Source, SourceError,
    SourceErrorKind,
};

/// How often a followed file is checked for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// A JSON Lines file spread over partitions by a key field (or by line).
#[derive(Debug)]
pub struct FileSource {
    name: String,
    config: FileSourceConfig,
    /// The pipeline's event-time field, read in the scan that finds the key.
    event_time_field: Option<String>,
}

impl FileSource {
    /// A source reading `config.path` (already resolved).
    pub fn new(name: &str, config: FileSourceConfig) -> Self {
        FileSource {
            name: name.to_owned(),
            config,
            event_time_field: None,
        }
    }

    /// Reads each line's event time from top-level `field` in the same pass as its key (when the
    /// source has a key field: without one, lines are not scanned here, and the partition
    /// workers read the field in parallel).
    pub fn reading_event_time(mut self, field: Option<&str>) -> Self {
        self.event_time_field = field
            .filter(|_| self.config.key_field.is_some())
            .map(str::to_owned);
        self
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
        let (dispatcher, readers) = Dispatcher::with_settings(
            &self.name,
            self.config.partitions,
            &starts,
            DispatchSettings {
                progress: Some(progress.clone()),
                depth: CHANNEL_BATCHES,
                event_time_decoded: self.event_time_field.is_some(),
            },
        )?;
        let file = file.into_std().await;
        let name = self.name.clone();
        let reading = LineReader {
            config: self.config.clone(),
            event_time_field: self.event_time_field.clone(),
            dispatcher,
            progress,
        };
        // Reading and splitting the file is plain blocking work: a thread of its own, which
        // hands each partition its lines of a read at once.
        std::thread::Builder::new()
            .name(format!("weir-file-{}", self.name))
            .spawn(move || {
                if let Err(reason) = reading.run(file) {
                    tracing::error!(source = %name, %reason, "file source failed");
                    reading.dispatcher.fail_blocking(|partition| {
                        SourceError::read(SourceErrorKind::Unavailable, &name, partition, &reason)
                    });
                }
            })
            .map_err(|e| {
                SourceError::start(
                    SourceErrorKind::Unavailable,
                    &self.name,
                    format!("cannot start its reading thread: {e}"),
                )
            })?;
        Ok(readers)
    }
}

/// Bytes read from the file at a time. Events are slices of these reads (no copy per event); an
/// event kept long (a join's buffer) keeps its read's bytes alive.
const READ_CHUNK: usize = 256 * 1024;

/// Batches (one per partition per read) waiting per partition before the reading thread waits.
const CHANNEL_BATCHES: usize = 32;

/// Read buffers kept for reuse once the events made of them are gone: fresh memory costs the
/// kernel a page fault and a zeroed page per 4 KiB, more than the read itself.
const KEPT_BUFFERS: usize = CHANNEL_BATCHES * 2;

/// The read buffers of one file source, reused oldest first: the oldest is the one whose events
/// are most likely all dropped.
#[derive(Default)]
struct ReadBuffers {
    kept: VecDeque<BytesMut>,
}

impl ReadBuffers {
    /// An empty buffer of at least [`READ_CHUNK`] bytes: the oldest kept one if no event holds
    /// any of its bytes any more, else a new one.
    fn empty(&mut self) -> BytesMut {
        if let Some(mut oldest) = self.kept.pop_front() {
            if oldest.try_reclaim(READ_CHUNK) {
                return oldest;
            }
            // Still held (by events in flight, or kept by a stage): look again later.
            self.kept.push_back(oldest);
        }
        BytesMut::with_capacity(READ_CHUNK)
    }

    /// Keeps `buffer`, whose bytes were all handed out, for reuse.
    fn keep(&mut self, mut buffer: BytesMut) {
        buffer.clear();
        if self.kept.len() >= KEPT_BUFFERS {
            // Held too long (a stage keeps some of its events): let those events own it alone.
            self.kept.pop_front();
        }
        self.kept.push_back(buffer);
    }
}

/// The reading thread of a file source: reads the file in chunks and hands each partition the
/// lines of each chunk that are its own.
struct LineReader {
    config: FileSourceConfig,
    event_time_field: Option<String>,
    dispatcher: Dispatcher,
    progress: Arc<InputProgress>,
}

impl LineReader {
    fn run(&self, mut file: std::fs::File) -> Result<(), String> {
        let mut offset = self.dispatcher.resume_from().unwrap_or(0);
        file.seek(std::io::SeekFrom::Start(offset))
            .map_err(|e| format!("cannot seek to byte {offset}: {e}"))?;
        let partitions = self.dispatcher.partitions();
        let mut batches: Vec<Vec<Event>> = (0..partitions).map(|_| Vec::new()).collect();
        let mut buffers = ReadBuffers::default();
        // Bytes read but not dispatched yet: the start of a line whose end has not been read.
        let mut pending = buffers.empty();
        loop {
            if pending.capacity() - pending.len() < READ_CHUNK / 4 {
                // A line longer than a read so far.
                pending.reserve(READ_CHUNK);
            }
            let filled = pending.len();
            pending.resize(pending.capacity(), 0);
            let read = file.read(&mut pending[filled..]);
            pending.truncate(filled + *read.as_ref().unwrap_or(&0));
            let read = match read {
                Ok(read) => read,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("read error at byte {offset}: {e}")),
            };
            if read == 0 {
                // End of file, or a line still being written.
                if !self.config.follow {
                    if !pending.is_empty() {
                        let line = pending.split().freeze();
                        let length = line.len() as u64;
                        let now = now_millis();
                        if let Some(event) = self.line_event(partitions, offset, line, now) {
                            batches[event.partition as usize].push(event);
                        }
                        if !self.send(&mut batches) {
                            return Ok(());
                        }
                        self.progress.dispatched_through(offset + length);
                    }
                    return Ok(());
                }
                if self.dispatcher.is_closed() {
                    return Ok(());
                }
                // The file may have grown beyond what was read: its size is its end.
                if let Ok(metadata) = file.metadata() {
                    self.progress.end_seen(metadata.len());
                }
                std::thread::sleep(FOLLOW_POLL);
                continue;
            }
            // Every complete line read so far, in one shared buffer.
            let Some(last_end) = memchr::memrchr(b'\n', &pending) else {
                continue;
            };
            let lines = pending.split_to(last_end + 1).freeze();
            // The start of a line goes on in an empty buffer; this one is reused once the events
            // made of it are dropped.
            let mut next = buffers.empty();
            next.extend_from_slice(&pending);
            buffers.keep(std::mem::replace(&mut pending, next));
            let now = now_millis();
            let mut start = 0;
            for newline in memchr::memchr_iter(b'\n', &lines) {
                let end = newline + 1;
                let line_offset = offset;
                offset += (end - start) as u64;
                if let Some(event) =
                    self.line_event(partitions, line_offset, lines.slice(start..end), now)
                {
                    batches[event.partition as usize].push(event);
                }
                start = end;
            }
            if !self.send(&mut batches) {
                return Ok(());
            }
            // Once per read rather than per line: the readers load it for every event they take.
            self.progress.dispatched_through(offset);
        }
    }

    /// Sends each partition its batch; false when a partition's reader is gone.
    fn send(&self, batches: &mut [Vec<Event>]) -> bool {
        for (partition, batch) in batches.iter_mut().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let next = Vec::with_capacity(batch.len() + batch.len() / 4);
            let batch = std::mem::replace(batch, next);
            let partition = PartitionId::try_from(partition).unwrap_or(PartitionId::MAX);
            if !self.dispatcher.send_batch_blocking(partition, batch) {
                return false;
            }
        }
        true
    }

    /// The event of one line read at `offset` (`None` for a blank line), read at `now`.
    fn line_event(&self, partitions: u32, offset: u64, mut line: Bytes, now: i64) -> Option<Event> {
        let mut length = line.len();
        if line[..length].ends_with(b"\n") {
            length -= 1;
        }
        if line[..length].ends_with(b"\r") {
            length -= 1;
        }
        // In place: a `slice` would count one more reference to the read buffer, shared with the
        // other partition's thread, and drop one at once.
        line.truncate(length);
        let body = &line[..];
        if body.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        // A line whose key cannot be read is still delivered (and dead-lettered by the pipeline
        // if it is malformed), on a partition fixed by its offset so that a replay sends it to
        // the same one. The event time is read in the same pass; one that cannot be read is left
        // to the partition worker, which says why.
        let (key, time) = match (self.config.key_field.as_deref(), &self.event_time_field) {
            (Some(key), Some(time)) => {
                top_level_field_pair(body, key, time).unwrap_or((None, None))
            }
            (Some(key), None) => (top_level_field(body, key).ok().flatten(), None),
            (None, _) => (None, None),
        };
        let key = key.and_then(|value| match value {
            // A key as written in the line: a slice of it, not a copy.
            FieldValue::Text(Cow::Borrowed(text)) => Some(line.slice_ref(text.as_bytes())),
            value => value.key_bytes().map(Bytes::from),
        });
        let partition = match &key {
            Some(key) => partition_for_key(key, partitions),
            None => partition_for_key(&offset.to_le_bytes(), partitions),
        };
        let event_time = time.and_then(|value| event_time_millis(&value).ok());
        let enqueued_time = self
            .config
            .enqueued_time_field
            .as_deref()
            .and_then(|field| top_level_field(body, field).ok().flatten())
            .and_then(|value| event_time_millis(&value).ok())
            .unwrap_or(now);
        Some(Event {
            partition,
            source: crate::event::no_source(),
            position: offset,
            key,
            event_time,
            enqueued_time,
            properties: Vec::new(),
            body: line,
        })
    }
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

    #[test]
    fn a_read_buffer_is_reused_once_the_events_made_of_it_are_gone() {
        let mut buffers = ReadBuffers::default();
        let mut first = buffers.empty();
        first.extend_from_slice(b"{\"n\":1}\n{\"n\":2}\n{\"n\":");
        let at = first.as_ptr();
        let lines = first.split_to(16).freeze();
        let line = lines.slice(0..7);
        drop(lines);
        buffers.keep(first);
        // An event still holds a line of it: a new buffer.
        let second = buffers.empty();
        assert_ne!(second.as_ptr(), at);
        buffers.keep(second);
        drop(line);
        // Both kept buffers are free now; the oldest, whose events are gone, comes back first,
        // empty and with room for a whole read.
        let reused = buffers.empty();
        assert_eq!(reused.as_ptr(), at);
        assert!(reused.is_empty());
        assert!(reused.capacity() >= READ_CHUNK);
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
