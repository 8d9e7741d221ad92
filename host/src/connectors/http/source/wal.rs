//! The write-ahead log that makes accepted HTTP events durable before the reply.
//!
//! Each partition has its own log under `<wal_dir>/<partition>/`, split into segment files named
//! by the log offset of their first byte (`00000000000000000000.wal`, 20 digits). A segment holds
//! frames back to back, with no file header:
//!
//! ```text
//! offset size  field
//! 0      4     len: u32 LE, bytes after this 8-byte header
//! 4      4     crc: u32 LE, CRC-32 (IEEE) of the 4 `len` bytes followed by the payload
//! 8      8     enqueued time: i64 LE, milliseconds since the Unix epoch
//! 16     4     key length: u32 LE, 0xFFFF_FFFF when the event has no key
//! 20     k     key bytes
//! ..     4     property count: u32 LE, then per property:
//!              name length u32 LE, name (UTF-8), value length u32 LE, value (UTF-8)
//! ..     rest  body
//! ```
//!
//! An event's position is the log offset of its frame: segment name plus offset in the file.
//! One writer thread per partition appends the frames of all the requests waiting for it, syncs
//! the file once (group commit), then publishes the new durable end and wakes the readers. A
//! segment is rolled when the next frame would take it past the segment size; the old one is
//! synced first. On start the last segment is scanned and a torn tail (a frame cut short by a
//! crash, or one whose checksum fails) is truncated away.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::event::{Event, PartitionId, Position};

/// Bytes of a frame before its payload.
pub(crate) const HEADER_LEN: usize = 8;
/// The smallest payload: enqueued time, key length, property count.
const MIN_PAYLOAD: usize = 8 + 4 + 4;
/// Key length marking an event without key.
const NO_KEY: u32 = u32::MAX;
/// Most bytes of requests one group commit takes before syncing.
const GROUP_COMMIT_BYTES: usize = 32 << 20;
/// How much a reader reads from a segment at once.
const READ_CHUNK: usize = 1 << 20;

/// Appends one frame for an event to `out`.
pub(crate) fn encode_frame(
    out: &mut Vec<u8>,
    enqueued_time: i64,
    key: Option<&[u8]>,
    properties: &[(String, String)],
    body: &[u8],
) -> Result<(), String> {
    let len32 = |len: usize, what: &str| {
        u32::try_from(len).map_err(|_| format!("{what} of {len} bytes is too large"))
    };
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    out.extend_from_slice(&enqueued_time.to_le_bytes());
    match key {
        Some(key) => {
            let len = len32(key.len(), "a key")?;
            if len == NO_KEY {
                return Err("a key of 4 GiB is too large".to_owned());
            }
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(key);
        }
        None => out.extend_from_slice(&NO_KEY.to_le_bytes()),
    }
    out.extend_from_slice(&len32(properties.len(), "a property list")?.to_le_bytes());
    for (name, value) in properties {
        out.extend_from_slice(&len32(name.len(), "a property name")?.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&len32(value.len(), "a property value")?.to_le_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(body);
    let payload_len = len32(out.len() - start - HEADER_LEN, "an event")?;
    let len_bytes = payload_len.to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len_bytes);
    crc.update(&out[start + HEADER_LEN..]);
    out[start..start + 4].copy_from_slice(&len_bytes);
    out[start + 4..start + HEADER_LEN].copy_from_slice(&crc.finalize().to_le_bytes());
    Ok(())
}

/// The payload length a frame header announces.
fn payload_len(header: &[u8]) -> usize {
    let mut len = [0u8; 4];
    len.copy_from_slice(&header[..4]);
    u32::from_le_bytes(len) as usize
}

/// Whether `frame` (header and payload) is whole and its checksum matches.
fn frame_is_valid(frame: &[u8]) -> bool {
    if frame.len() < HEADER_LEN + MIN_PAYLOAD || payload_len(frame) != frame.len() - HEADER_LEN {
        return false;
    }
    let mut expected = [0u8; 4];
    expected.copy_from_slice(&frame[4..HEADER_LEN]);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&frame[..4]);
    crc.update(&frame[HEADER_LEN..]);
    crc.finalize() == u32::from_le_bytes(expected)
}

/// Decodes a valid frame into the event at `position`.
fn decode_frame(frame: &[u8], partition: PartitionId, position: Position) -> Result<Event, String> {
    let mut rest = frame.get(HEADER_LEN..).unwrap_or_default();
    let mut take = |n: usize| -> Result<&[u8], String> {
        if rest.len() < n {
            return Err(format!("the frame at position {position} is cut short"));
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let mut enqueued = [0u8; 8];
    enqueued.copy_from_slice(take(8)?);
    let read_u32 = |bytes: &[u8]| {
        let mut b = [0u8; 4];
        b.copy_from_slice(bytes);
        u32::from_le_bytes(b)
    };
    let key_len = read_u32(take(4)?);
    let key = if key_len == NO_KEY {
        None
    } else {
        Some(Bytes::copy_from_slice(take(key_len as usize)?))
    };
    let count = read_u32(take(4)?);
    let mut properties = Vec::with_capacity(count.min(64) as usize);
    for _ in 0..count {
        let name_len = read_u32(take(4)?) as usize;
        let name = String::from_utf8_lossy(take(name_len)?).into_owned();
        let value_len = read_u32(take(4)?) as usize;
        let value = String::from_utf8_lossy(take(value_len)?).into_owned();
        properties.push((name, value));
    }
    let body = Bytes::copy_from_slice(rest);
    Ok(Event {
        partition,
        source: crate::event::no_source(),
        position,
        key,
        event_time: None,
        enqueued_time: i64::from_le_bytes(enqueued),
        properties,
        body,
    })
}

/// The file of the segment starting at log offset `start`.
fn segment_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("{start:020}.wal"))
}

/// Start offsets of the segments in `dir`, ascending.
fn list_segments(dir: &Path) -> Result<Vec<u64>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut starts = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".wal")) else {
            continue;
        };
        if stem.len() == 20
            && let Ok(start) = stem.parse::<u64>()
        {
            starts.push(start);
        }
    }
    starts.sort_unstable();
    Ok(starts)
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync directory {}: {e}", dir.display()))
}

/// Length of the whole, valid frames at the start of `file`.
fn valid_prefix(file: &File, file_len: u64) -> std::io::Result<u64> {
    let mut reader = BufReader::with_capacity(READ_CHUNK, file);
    reader.seek(SeekFrom::Start(0))?;
    let mut valid = 0u64;
    let mut frame = Vec::new();
    loop {
        let mut header = [0u8; HEADER_LEN];
        match reader.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(valid),
            Err(e) => return Err(e),
        }
        let len = payload_len(&header);
        let size = (HEADER_LEN + len) as u64;
        if len < MIN_PAYLOAD || valid + size > file_len {
            return Ok(valid);
        }
        frame.clear();
        frame.extend_from_slice(&header);
        frame.resize(HEADER_LEN + len, 0);
        reader.read_exact(&mut frame[HEADER_LEN..])?;
        if !frame_is_valid(&frame) {
            return Ok(valid);
        }
        valid += size;
    }
}

/// What the writer and the readers of one partition's log share.
#[derive(Debug)]
pub(crate) struct PartitionLog {
    pub(crate) partition: PartitionId,
    dir: PathBuf,
    /// End of the frames synced to disk: readers read up to here.
    durable_end: AtomicU64,
    /// Woken whenever `durable_end` moves.
    notify: Notify,
    /// Start offsets of the segments on disk, ascending.
    segments: Mutex<Vec<u64>>,
    /// Per open reader, the position its last checkpoint covers (`None`: none yet). Segments
    /// wholly below the lowest are deleted.
    readers: Mutex<BTreeMap<u64, Option<Position>>>,
    next_reader: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data under these locks stays consistent even if a holder panicked.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl PartitionLog {
    /// End of the durable frames.
    pub(crate) fn durable_end(&self) -> u64 {
        self.durable_end.load(Ordering::Acquire)
    }

    /// Waits until `durable_end` may have moved.
    pub(crate) fn notify(&self) -> &Notify {
        &self.notify
    }

    /// The segment holding log offset `at`: its start and the start of the next one
    /// (`u64::MAX` for the last).
    fn segment_for(&self, at: u64) -> Option<(u64, u64)> {
        let segments = lock(&self.segments);
        let index = segments
            .partition_point(|start| *start <= at)
            .checked_sub(1)?;
        Some((
            segments[index],
            segments.get(index + 1).copied().unwrap_or(u64::MAX),
        ))
    }

    /// The offset of the oldest byte still on disk.
    pub(crate) fn first_offset(&self) -> u64 {
        lock(&self.segments).first().copied().unwrap_or(0)
    }

    /// Registers a reader whose checkpoint covers `after`; returns its id.
    pub(crate) fn add_reader(&self, after: Option<Position>) -> u64 {
        let id = self.next_reader.fetch_add(1, Ordering::Relaxed);
        lock(&self.readers).insert(id, after);
        id
    }

    pub(crate) fn remove_reader(&self, id: u64) {
        lock(&self.readers).remove(&id);
    }

    /// Records that reader `id`'s checkpoint covers `position`, then deletes the segments no open
    /// reader needs any more: those that end at or before the lowest checkpointed position. The
    /// segment holding that position is kept, so a reader can resume right after its frame.
    pub(crate) fn checkpointed(&self, id: u64, position: Position) -> Vec<PathBuf> {
        let threshold = {
            let mut readers = lock(&self.readers);
            if let Some(slot) = readers.get_mut(&id) {
                *slot = Some(slot.map_or(position, |p| p.max(position)));
            }
            match readers.values().copied().collect::<Option<Vec<_>>>() {
                Some(positions) => positions.into_iter().min(),
                None => None,
            }
        };
        let Some(threshold) = threshold else {
            return Vec::new();
        };
        let mut segments = lock(&self.segments);
        // Never the last segment: the writer appends to it.
        let releasable = segments
            .windows(2)
            .take_while(|pair| pair[1] <= threshold)
            .count();
        segments
            .drain(..releasable)
            .map(|start| segment_path(&self.dir, start))
            .collect()
    }
}

/// One request's frames for one partition, and where to say whether they are durable.
#[derive(Debug)]
pub(crate) struct Append {
    /// Encoded frames, back to back.
    pub(crate) frames: Vec<u8>,
    pub(crate) done: oneshot::Sender<Result<(), String>>,
}

/// The appending side of one partition's log, run on its own thread.
#[derive(Debug)]
pub(crate) struct LogWriter {
    log: Arc<PartitionLog>,
    segment_bytes: u64,
    file: File,
    segment_start: u64,
    /// Bytes of the current segment that are synced.
    segment_len: u64,
    /// Set when the log can no longer be appended to safely.
    failed: Option<String>,
    /// The directory lock, released when the last writer ends.
    _lock: Arc<File>,
}

/// Opens (creating if needed) the log of `partition` under `dir`, truncating a torn tail.
pub(crate) fn open_partition(
    dir: &Path,
    partition: PartitionId,
    segment_bytes: u64,
    dir_lock: Arc<File>,
) -> Result<(Arc<PartitionLog>, LogWriter), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut segments = list_segments(dir)?;
    if segments.is_empty() {
        File::create(segment_path(dir, 0))
            .map_err(|e| format!("cannot create the first segment in {}: {e}", dir.display()))?;
        sync_dir(dir)?;
        segments.push(0);
    }
    for pair in segments.windows(2) {
        let path = segment_path(dir, pair[0]);
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if pair[0] + len != pair[1] {
            tracing::warn!(
                segment = %path.display(), length = len, next = pair[1],
                "write-ahead log segment does not end where the next one starts; reading across it will fail"
            );
        }
    }
    let segment_start = segments.last().copied().unwrap_or(0);
    let path = segment_path(dir, segment_start);
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let file_len = file
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?
        .len();
    let valid = valid_prefix(&file, file_len)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if valid < file_len {
        tracing::warn!(
            segment = %path.display(), valid, dropped = file_len - valid,
            "truncating a torn write at the end of the write-ahead log"
        );
        file.set_len(valid)
            .and_then(|()| file.sync_all())
            .map_err(|e| format!("cannot truncate the torn tail of {}: {e}", path.display()))?;
    }
    let log = Arc::new(PartitionLog {
        partition,
        dir: dir.to_path_buf(),
        durable_end: AtomicU64::new(segment_start + valid),
        notify: Notify::new(),
        segments: Mutex::new(segments),
        readers: Mutex::new(BTreeMap::new()),
        next_reader: AtomicU64::new(0),
    });
    let writer = LogWriter {
        log: Arc::clone(&log),
        segment_bytes: segment_bytes.max(1),
        file,
        segment_start,
        segment_len: valid,
        failed: None,
        _lock: dir_lock,
    };
    Ok((log, writer))
}

impl LogWriter {
    /// Appends requests until every sender is gone, syncing once per group of waiting requests.
    pub(crate) fn run(mut self, mut requests: mpsc::Receiver<Append>) {
        while let Some(first) = requests.blocking_recv() {
            let mut bytes = first.frames.len();
            let mut group = vec![first];
            while bytes < GROUP_COMMIT_BYTES {
                match requests.try_recv() {
                    Ok(next) => {
                        bytes += next.frames.len();
                        group.push(next);
                    }
                    Err(_) => break,
                }
            }
            let result = self.append(&group);
            if let Err(reason) = &result {
                tracing::error!(partition = self.log.partition, %reason, "write-ahead log append failed");
            }
            for request in group {
                // A client that went away does not care.
                let _ = request.done.send(result.clone());
            }
        }
    }

    fn append(&mut self, group: &[Append]) -> Result<(), String> {
        if let Some(reason) = &self.failed {
            return Err(reason.clone());
        }
        let result = self.append_frames(group);
        if result.is_err() {
            // Cut what was written but not synced, so the next frame starts where a reader expects it.
            let path = segment_path(&self.log.dir, self.segment_start);
            if let Err(e) = self.file.set_len(self.segment_len) {
                let reason = format!(
                    "cannot cut a failed write from {}: {e}; restart to repair the log",
                    path.display()
                );
                self.failed = Some(reason.clone());
                return Err(reason);
            }
        }
        result
    }

    fn append_frames(&mut self, group: &[Append]) -> Result<(), String> {
        let mut pending: Vec<u8> = Vec::new();
        for request in group {
            let mut frames = &request.frames[..];
            while frames.len() >= HEADER_LEN {
                let size = HEADER_LEN + payload_len(frames);
                let Some((frame, rest)) = frames.split_at_checked(size) else {
                    return Err("an append request held a cut frame".to_owned());
                };
                frames = rest;
                let used = self.segment_len + pending.len() as u64;
                if used > 0 && used + size as u64 > self.segment_bytes {
                    self.write_and_sync(&pending)?;
                    pending.clear();
                    self.roll()?;
                }
                pending.extend_from_slice(frame);
            }
        }
        self.write_and_sync(&pending)
    }

    fn write_and_sync(&mut self, bytes: &[u8]) -> Result<(), String> {
        if bytes.is_empty() {
            return Ok(());
        }
        let path = segment_path(&self.log.dir, self.segment_start);
        self.file
            .write_all(bytes)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        self.segment_len += bytes.len() as u64;
        self.log
            .durable_end
            .store(self.segment_start + self.segment_len, Ordering::Release);
        self.log.notify.notify_waiters();
        Ok(())
    }

    /// Starts a new segment where the current one ends.
    fn roll(&mut self) -> Result<(), String> {
        let start = self.segment_start + self.segment_len;
        let path = segment_path(&self.log.dir, start);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| format!("cannot create segment {}: {e}", path.display()))?;
        sync_dir(&self.log.dir)?;
        lock(&self.log.segments).push(start);
        self.file = file;
        self.segment_start = start;
        self.segment_len = 0;
        Ok(())
    }
}

/// A reader's open segment and read-ahead buffer. Used on a blocking thread.
#[derive(Debug, Default)]
pub(crate) struct Cursor {
    /// The open segment: its start offset and file.
    segment: Option<(u64, File)>,
    buf: Vec<u8>,
    /// Log offset of `buf[0]`.
    buf_start: u64,
}

impl Cursor {
    /// `n` bytes at log offset `at` of the segment starting at `segment_start`, reading ahead up
    /// to `limit` (never past durable or segment data).
    fn bytes(
        &mut self,
        log: &PartitionLog,
        segment_start: u64,
        at: u64,
        n: usize,
        limit: u64,
    ) -> Result<&[u8], String> {
        if self
            .segment
            .as_ref()
            .is_none_or(|(start, _)| *start != segment_start)
        {
            let path = segment_path(&log.dir, segment_start);
            let file = File::open(&path)
                .map_err(|e| format!("cannot open segment {}: {e}", path.display()))?;
            self.segment = Some((segment_start, file));
            self.buf.clear();
        }
        let buffered =
            at >= self.buf_start && at + n as u64 <= self.buf_start + self.buf.len() as u64;
        if !buffered {
            let ahead = usize::try_from(limit.saturating_sub(at))
                .unwrap_or(usize::MAX)
                .min(READ_CHUNK);
            let len = n.max(ahead);
            self.buf.clear();
            self.buf.resize(len, 0);
            self.buf_start = at;
            let Some((_, file)) = self.segment.as_mut() else {
                return Err("no segment open".to_owned());
            };
            let read = file
                .seek(SeekFrom::Start(at - segment_start))
                .and_then(|_| file.read_exact(&mut self.buf));
            if let Err(e) = read {
                self.buf.clear();
                return Err(format!(
                    "cannot read {len} bytes at position {at} of segment {}: {e}",
                    segment_path(&log.dir, segment_start).display()
                ));
            }
        }
        let from = (at - self.buf_start) as usize;
        Ok(&self.buf[from..from + n])
    }

    /// The frame at `at` if it is whole and valid below `end`: its size.
    fn frame_size_at(&mut self, log: &PartitionLog, at: u64, end: u64) -> Result<u64, String> {
        let (segment_start, segment_end) = log
            .segment_for(at)
            .ok_or_else(|| format!("position {at} is before the oldest segment kept"))?;
        let limit = end.min(segment_end);
        if at + HEADER_LEN as u64 > limit {
            return Err(format!("no frame header fits at position {at}"));
        }
        let len = payload_len(self.bytes(log, segment_start, at, HEADER_LEN, limit)?);
        let size = (HEADER_LEN + len) as u64;
        if at + size > limit {
            return Err(format!(
                "the frame at position {at} runs past the end of its segment"
            ));
        }
        if !frame_is_valid(self.bytes(log, segment_start, at, HEADER_LEN + len, limit)?) {
            return Err(format!("the frame at position {at} fails its checksum"));
        }
        Ok(size)
    }

    /// Up to `max` events from log offset `next` up to `end`, dropping those at positions
    /// `<= skip_through`. Returns the events and the offset after the last frame read.
    pub(crate) fn read(
        &mut self,
        log: &PartitionLog,
        mut next: u64,
        end: u64,
        max: usize,
        skip_through: Option<Position>,
    ) -> Result<(Vec<Event>, u64), String> {
        let mut events = Vec::new();
        while next < end && events.len() < max.max(1) {
            let size = self.frame_size_at(log, next, end)?;
            if skip_through.is_none_or(|skip| next > skip) {
                // Validated just above, so it is in the buffer.
                let (segment_start, segment_end) = log
                    .segment_for(next)
                    .ok_or_else(|| format!("position {next} is before the oldest segment kept"))?;
                let frame = self.bytes(
                    log,
                    segment_start,
                    next,
                    size as usize,
                    end.min(segment_end),
                )?;
                events.push(decode_frame(frame, log.partition, next)?);
            }
            next += size;
        }
        Ok((events, next))
    }

    /// Where to resume after the frame at `after`: just past it when it is a valid frame, else
    /// the start of its segment (the caller then skips frames up to `after`).
    pub(crate) fn resume_point(&mut self, log: &PartitionLog, after: Position) -> u64 {
        let end = log.durable_end();
        if after < log.first_offset() {
            return log.first_offset();
        }
        if after >= end {
            return end;
        }
        match self.frame_size_at(log, after, end) {
            Ok(size) => after + size,
            Err(reason) => {
                tracing::warn!(
                    partition = log.partition, after, %reason,
                    "checkpointed position is not a frame of the write-ahead log; scanning its segment"
                );
                log.segment_for(after).map_or(end, |(start, _)| start)
            }
        }
    }
}

/// Deletes released segment files.
pub(crate) fn delete_segments(paths: Vec<PathBuf>) {
    for path in paths {
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::debug!(segment = %path.display(), "released write-ahead log segment")
            }
            Err(e) => {
                tracing::warn!(segment = %path.display(), error = %e, "cannot delete a released write-ahead log segment")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_detect_damage() {
        let mut out = Vec::new();
        let props = vec![("source".to_owned(), "test".to_owned())];
        encode_frame(&mut out, 42, Some(b"k1"), &props, b"{\"a\":1}").expect("encode");
        let first = out.len();
        encode_frame(&mut out, 43, None, &[], b"").expect("encode");
        assert!(frame_is_valid(&out[..first]));
        assert!(frame_is_valid(&out[first..]));
        let event = decode_frame(&out[..first], 3, 100).expect("decode");
        assert_eq!(event.partition, 3);
        assert_eq!(event.position, 100);
        assert_eq!(event.enqueued_time, 42);
        assert_eq!(event.key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(event.properties, props);
        assert_eq!(&event.body[..], b"{\"a\":1}");
        let empty = decode_frame(&out[first..], 0, 0).expect("decode");
        assert_eq!(empty.key, None);
        assert!(empty.body.is_empty());

        let mut damaged = out[..first].to_vec();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(!frame_is_valid(&damaged));
        assert!(!frame_is_valid(&out[..first - 1]));
    }
}
