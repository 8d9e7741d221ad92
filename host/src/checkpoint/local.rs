//! Checkpoints as files in a local directory: `<dir>/<pipeline>/<partition>.ckpt`.
//!
//! Ownership records are `<dir>/<pipeline>/ownership/<partition>.json` (owner, time, version
//! counter). A claim holds an exclusive lock on `<dir>/<pipeline>/ownership/.lock` while it
//! compares versions and writes, so several processes on one machine (or on a shared file system
//! with working locks) can share a pipeline's partitions without a cloud store.
//!
//! A file is `WEIRCKP1`, a little-endian u32 header length, the JSON header (position, sink
//! progress, stage names and sizes), the stage states back to back, and a SHA-256 of everything
//! before it. Files are written to a temporary name, synced and renamed, so a crash leaves either
//! the old checkpoint or the new one, never half of one. A checkpoint that lists state files of
//! incremental keyed state (see [`super::IncrementalState`]) starts `WEIRCKP2` instead (an older
//! Weir refuses it rather than restore without them); the files are
//! `<dir>/<pipeline>/<partition>.state/<name>`, written the same way, each with its SHA-256.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Checkpoint, CheckpointError, CheckpointErrorKind, CheckpointStore, Ownership};
use crate::event::{PartitionId, now_millis};

pub(crate) const MAGIC: &[u8; 8] = b"WEIRCKP1";
/// The magic of a checkpoint that lists state files.
pub(crate) const MAGIC_V2: &[u8; 8] = b"WEIRCKP2";

/// A checkpoint store in a local directory.
#[derive(Debug, Clone)]
pub struct LocalCheckpointStore {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Header {
    #[serde(flatten)]
    checkpoint: Checkpoint,
    /// Stage names and the length of their state, in the order the states follow the header.
    stage_sizes: Vec<(String, usize)>,
}

impl LocalCheckpointStore {
    /// A store under `dir` (created on first save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LocalCheckpointStore { dir: dir.into() }
    }

    /// The file of one partition's checkpoint.
    pub fn path(&self, pipeline: &str, partition: PartitionId) -> PathBuf {
        self.dir.join(pipeline).join(format!("{partition}.ckpt"))
    }

    /// The directory of one partition's state files.
    pub fn state_dir(&self, pipeline: &str, partition: PartitionId) -> PathBuf {
        self.dir.join(pipeline).join(format!("{partition}.state"))
    }

    /// The directory of a pipeline's ownership records.
    pub fn ownership_dir(&self, pipeline: &str) -> PathBuf {
        self.dir.join(pipeline).join("ownership")
    }

    fn meta_path(&self, key: &str) -> PathBuf {
        let safe: String = key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join("meta").join(format!("{safe}.txt"))
    }
}

fn error(path: &Path, reason: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::new(
        CheckpointErrorKind::Unavailable,
        path.display().to_string(),
        reason,
    )
}

/// Encodes a checkpoint in the file format described in the module documentation.
pub(crate) fn encode(checkpoint: &Checkpoint) -> Result<Vec<u8>, serde_json::Error> {
    let header = Header {
        checkpoint: checkpoint.clone(),
        stage_sizes: checkpoint
            .stages
            .iter()
            .map(|(name, state)| (name.clone(), state.len()))
            .collect(),
    };
    let header = serde_json::to_vec(&header)?;
    let states: usize = checkpoint.stages.values().map(Vec::len).sum();
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + header.len() + states + 32);
    out.extend_from_slice(if checkpoint.state_files.is_empty() {
        MAGIC
    } else {
        MAGIC_V2
    });
    // A header beyond 4 GiB would need that many sinks; saturate rather than wrap.
    out.extend_from_slice(
        &u32::try_from(header.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(&header);
    for state in checkpoint.stages.values() {
        out.extend_from_slice(state);
    }
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    Ok(out)
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Checkpoint, String> {
    let body_len = bytes.len().checked_sub(32).ok_or("file is too short")?;
    let (body, digest) = bytes.split_at(body_len);
    if Sha256::digest(body).as_slice() != digest {
        return Err("checksum mismatch: the file is corrupt".to_owned());
    }
    let rest = body
        .strip_prefix(&MAGIC[..])
        .or_else(|| body.strip_prefix(&MAGIC_V2[..]))
        .ok_or("not a Weir checkpoint (bad magic)")?;
    let (len, rest) = rest.split_at_checked(4).ok_or("truncated header length")?;
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let (header, mut states) = rest.split_at_checked(len).ok_or("truncated header")?;
    let header: Header = serde_json::from_slice(header).map_err(|e| format!("bad header: {e}"))?;
    let mut checkpoint = header.checkpoint;
    let mut stages = BTreeMap::new();
    for (name, size) in header.stage_sizes {
        let (state, rest) = states
            .split_at_checked(size)
            .ok_or("truncated stage state")?;
        stages.insert(name, state.to_vec());
        states = rest;
    }
    checkpoint.stages = stages;
    Ok(checkpoint)
}

/// The last bytes of a state file sealed with a CRC-32 of its bytes.
const CRC_SEAL: &[u8; 8] = b"WEIRCRC1";

/// What follows a state file's bytes: their CRC-32 (LE) and [`CRC_SEAL`].
///
/// A CRC-32 rather than the SHA-256 state files had before (still read): a base holds a whole
/// state, up to a gigabyte for 10M keys, and SHA-256 reads about 1 GB/s here, against more than
/// 10 GB/s for a CRC-32 with carry-less multiplication; a restart reads the base. The seal
/// detects damage, not tampering: whoever can write a state file can write the record too.
pub(crate) fn seal(body: &[u8]) -> Vec<u8> {
    let mut trailer = crc32fast::hash(body).to_le_bytes().to_vec();
    trailer.extend_from_slice(CRC_SEAL);
    trailer
}

/// A state file's bytes, checked against the seal [`seal`] added (or the SHA-256 of older
/// versions), without copying them.
pub(crate) fn unseal(bytes: bytes::Bytes) -> Result<bytes::Bytes, String> {
    if let Some(body_len) = bytes.len().checked_sub(12)
        && bytes.ends_with(CRC_SEAL)
    {
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&bytes[body_len..body_len + 4]);
        if crc32fast::hash(&bytes[..body_len]) == u32::from_le_bytes(crc) {
            return Ok(bytes.slice(..body_len));
        }
        // Else maybe an older file whose SHA-256 happens to end like the seal.
    }
    let body_len = bytes
        .len()
        .checked_sub(32)
        .ok_or("state file is too short")?;
    if Sha256::digest(&bytes[..body_len]).as_slice() != &bytes[body_len..] {
        return Err("checksum mismatch: the state file is corrupt".to_owned());
    }
    Ok(bytes.slice(..body_len))
}

/// Writes `bytes` to `path` atomically: temporary file, sync, rename, sync the directory. The
/// temporary name is unique to this process and write: while a partition changes hands, its
/// previous owner may still save the same file, and a shared temporary name would let one
/// process rename the other's half-written bytes into place, or find its own file gone.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_parts_atomically(path, &[bytes])
}

/// [`write_atomically`] of `parts` one after the other.
fn write_parts_atomically(path: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir)?;
    let write = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".{}-{write}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    {
        let file = std::fs::File::create(&tmp)?;
        let mut writer = std::io::BufWriter::with_capacity(1 << 20, file);
        for part in parts {
            writer.write_all(part)?;
        }
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// One ownership record as stored.
#[derive(Serialize, Deserialize)]
struct OwnershipRecord {
    owner: String,
    last_modified: i64,
    version: u64,
}

fn read_record(dir: &Path, partition: PartitionId) -> Result<Option<OwnershipRecord>, String> {
    let path = dir.join(format!("{partition}.json"));
    match read_optional(&path) {
        Ok(None) => Ok(None),
        Ok(Some(bytes)) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn list_records(dir: &Path) -> Result<Vec<Ownership>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    let mut out = Vec::new();
    for entry in entries {
        let name = entry.map_err(|e| e.to_string())?.file_name();
        let Some(partition) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|n| n.parse::<PartitionId>().ok())
        else {
            continue;
        };
        if let Some(record) = read_record(dir, partition)? {
            out.push(Ownership {
                partition,
                owner: record.owner,
                last_modified: record.last_modified,
                version: Some(record.version.to_string()),
            });
        }
    }
    out.sort_by_key(|o| o.partition);
    Ok(out)
}

/// Applies `claims` under the directory's lock; returns those that succeeded.
fn claim_records(dir: &Path, claims: &[Ownership]) -> Result<Vec<Ownership>, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))
        .map_err(|e| format!("cannot open the ownership lock: {e}"))?;
    lock.lock()
        .map_err(|e| format!("cannot lock the ownership records: {e}"))?;
    let mut won = Vec::new();
    for claim in claims {
        let current = read_record(dir, claim.partition)?;
        let matches = match (&current, &claim.version) {
            (None, None) => true,
            (Some(record), Some(version)) => record.version.to_string() == *version,
            _ => false,
        };
        if !matches {
            continue;
        }
        let record = OwnershipRecord {
            owner: claim.owner.clone(),
            last_modified: now_millis(),
            version: current.map_or(1, |r| r.version + 1),
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
        write_atomically(&dir.join(format!("{}.json", claim.partition)), &bytes)
            .map_err(|e| e.to_string())?;
        won.push(Ownership {
            partition: claim.partition,
            owner: record.owner,
            last_modified: record.last_modified,
            version: Some(record.version.to_string()),
        });
    }
    // Dropping the file releases the lock.
    Ok(won)
}

/// A state file's bytes, checked against its seal ([`unseal`]; the error says why they are not
/// a state file): a large one (a base) mapped, so that the state looks its keys up in the page
/// cache rather than in a copy of its own (see `crate::mapped`).
fn read_or_map(path: &Path) -> std::io::Result<Result<bytes::Bytes, String>> {
    let file = std::fs::File::open(path)?;
    if file.metadata()?.len() >= crate::mapped::MAP_AT_LEAST {
        return crate::mapped::map_checked(&file, unseal);
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut &file, &mut bytes)?;
    Ok(unseal(bytes.into()))
}

fn read_optional(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

async fn blocking<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, CheckpointError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| error(path, format!("checkpoint task failed: {e}")))?
        .map_err(|reason| error(path, reason))
}

#[async_trait]
impl CheckpointStore for LocalCheckpointStore {
    async fn load(
        &self,
        pipeline: &str,
        partition: PartitionId,
    ) -> Result<Option<Checkpoint>, CheckpointError> {
        let path = self.path(pipeline, partition);
        let owned = path.clone();
        let decoded = blocking(&path, move || match read_optional(&owned) {
            Ok(bytes) => Ok(bytes.map(|bytes| decode(&bytes))),
            Err(e) => Err(e.to_string()),
        })
        .await?;
        // The file was read: one that does not decode reads the same way next time.
        let mut checkpoint = decoded.transpose().map_err(|reason| {
            CheckpointError::new(
                CheckpointErrorKind::Unreadable,
                path.display().to_string(),
                reason,
            )
        })?;
        if let Some(checkpoint) = &mut checkpoint {
            super::incremental::read_files(self, pipeline, partition, checkpoint).await?;
        }
        Ok(checkpoint)
    }

    async fn write_state_file(
        &self,
        pipeline: &str,
        partition: PartitionId,
        name: &str,
        bytes: bytes::Bytes,
    ) -> Result<(), CheckpointError> {
        let path = self.state_dir(pipeline, partition).join(name);
        let owned = path.clone();
        blocking(&path, move || {
            write_parts_atomically(&owned, &[&bytes, &seal(&bytes)]).map_err(|e| e.to_string())
        })
        .await
    }

    async fn read_state_file(
        &self,
        pipeline: &str,
        partition: PartitionId,
        name: &str,
    ) -> Result<bytes::Bytes, CheckpointError> {
        let path = self.state_dir(pipeline, partition).join(name);
        let owned = path.clone();
        let bytes = blocking(&path, move || {
            read_or_map(&owned).map_err(|e| e.to_string())
        })
        .await?;
        bytes.map_err(|reason| {
            CheckpointError::new(
                CheckpointErrorKind::Unreadable,
                path.display().to_string(),
                reason,
            )
        })
    }

    async fn list_state_files(
        &self,
        pipeline: &str,
        partition: PartitionId,
    ) -> Result<Vec<String>, CheckpointError> {
        let dir = self.state_dir(pipeline, partition);
        let owned = dir.clone();
        blocking(&dir, move || match std::fs::read_dir(&owned) {
            Ok(entries) => entries
                .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<std::io::Result<Vec<String>>>()
                .map_err(|e| e.to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e.to_string()),
        })
        .await
    }

    async fn delete_state_file(
        &self,
        pipeline: &str,
        partition: PartitionId,
        name: &str,
    ) -> Result<(), CheckpointError> {
        let path = self.state_dir(pipeline, partition).join(name);
        let owned = path.clone();
        blocking(&path, move || match std::fs::remove_file(&owned) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
            _ => Ok(()),
        })
        .await
    }

    async fn save(
        &self,
        pipeline: &str,
        partition: PartitionId,
        checkpoint: &Checkpoint,
    ) -> Result<(), CheckpointError> {
        let path = self.path(pipeline, partition);
        let bytes = encode(checkpoint).map_err(|e| error(&path, e))?;
        super::incremental::write_files(self, pipeline, partition, checkpoint).await?;
        let owned = path.clone();
        blocking(&path, move || {
            write_atomically(&owned, &bytes).map_err(|e| e.to_string())
        })
        .await?;
        super::incremental::drop_files(self, pipeline, partition, checkpoint).await;
        Ok(())
    }

    async fn load_meta(&self, key: &str) -> Result<Option<String>, CheckpointError> {
        let path = self.meta_path(key);
        let owned = path.clone();
        blocking(&path, move || match read_optional(&owned) {
            Ok(bytes) => Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned())),
            Err(e) => Err(e.to_string()),
        })
        .await
    }

    async fn save_meta(&self, key: &str, value: &str) -> Result<(), CheckpointError> {
        let path = self.meta_path(key);
        let owned = path.clone();
        let bytes = value.as_bytes().to_vec();
        blocking(&path, move || {
            write_atomically(&owned, &bytes).map_err(|e| e.to_string())
        })
        .await
    }

    async fn list_ownership(&self, pipeline: &str) -> Result<Vec<Ownership>, CheckpointError> {
        let dir = self.ownership_dir(pipeline);
        let owned = dir.clone();
        blocking(&dir, move || list_records(&owned)).await
    }

    async fn claim_ownership(
        &self,
        pipeline: &str,
        claims: &[Ownership],
    ) -> Result<Vec<Ownership>, CheckpointError> {
        let dir = self.ownership_dir(pipeline);
        let owned = dir.clone();
        let claims = claims.to_vec();
        blocking(&dir, move || claim_records(&owned, &claims)).await
    }

    fn describe(&self) -> String {
        format!("local directory {}", self.dir.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn claim(partition: PartitionId, owner: &str, version: Option<&str>) -> Ownership {
        Ownership {
            partition,
            owner: owner.to_owned(),
            last_modified: 0,
            version: version.map(str::to_owned),
        }
    }

    #[tokio::test]
    async fn ownership_claims_are_conditional_on_the_version_seen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = LocalCheckpointStore::new(dir.path());
        assert!(store.list_ownership("p").await.expect("list").is_empty());

        // Two processes race for partition 0 with nothing seen: one wins.
        let a = store
            .claim_ownership("p", &[claim(0, "a", None), claim(1, "a", None)])
            .await
            .expect("claim");
        assert_eq!(a.len(), 2);
        let b = store
            .claim_ownership("p", &[claim(0, "b", None)])
            .await
            .expect("claim");
        assert!(b.is_empty(), "a record that exists cannot be created again");

        // b steals partition 1 with the version it listed; a's renewal with its old version fails.
        let listed = store.list_ownership("p").await.expect("list");
        assert_eq!(
            listed
                .iter()
                .map(|o| (o.partition, o.owner.as_str()))
                .collect::<Vec<_>>(),
            [(0, "a"), (1, "a")]
        );
        let stolen = store
            .claim_ownership("p", &[claim(1, "b", listed[1].version.as_deref())])
            .await
            .expect("steal");
        assert_eq!(stolen.len(), 1);
        assert_ne!(stolen[0].version, listed[1].version);
        let renewed = store
            .claim_ownership(
                "p",
                &[
                    claim(0, "a", a[0].version.as_deref()),
                    claim(1, "a", a[1].version.as_deref()),
                ],
            )
            .await
            .expect("renew");
        assert_eq!(renewed.iter().map(|o| o.partition).collect::<Vec<_>>(), [0]);
        let now = now_millis();
        assert!(renewed[0].is_active(now, 10_000));
        assert!(!renewed[0].is_active(now + 10_000, 10_000), "expired");

        // A release leaves a record with no owner, which is never active.
        let released = store
            .claim_ownership("p", &[claim(0, "", renewed[0].version.as_deref())])
            .await
            .expect("release");
        assert!(!released[0].is_active(now, 10_000));
    }

    #[tokio::test]
    async fn several_sources_positions_round_trip_and_old_checkpoints_have_none() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = LocalCheckpointStore::new(dir.path());
        let mut checkpoint = Checkpoint {
            position: Some(9),
            ..Checkpoint::default()
        };
        checkpoint.sources.insert(
            "bookings".into(),
            super::super::SourcePosition {
                position: Some(4096),
                offset: None,
            },
        );
        checkpoint.sources.insert(
            "payments".into(),
            super::super::SourcePosition {
                position: Some(17),
                offset: Some("8192".into()),
            },
        );
        store.save("p", 0, &checkpoint).await.expect("save");
        assert_eq!(
            store.load("p", 0).await.expect("load"),
            Some(checkpoint.clone())
        );
        // A checkpoint of one source, as written before pipelines had several: no `sources`.
        let header: serde_json::Value =
            serde_json::to_value(Checkpoint::default()).expect("header");
        assert!(header.get("sources").is_none(), "{header}");
        let old: Checkpoint =
            serde_json::from_str(r#"{"position": 41, "sinks": {}, "written_at": 1}"#)
                .expect("an old checkpoint reads");
        assert_eq!(old.position, Some(41));
        assert!(old.sources.is_empty());
    }

    #[tokio::test]
    async fn checkpoints_round_trip_and_corruption_is_detected() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = LocalCheckpointStore::new(dir.path());
        assert_eq!(store.load("p", 3).await.expect("load"), None);
        let mut checkpoint = Checkpoint {
            position: Some(42),
            written_at: 7,
            ..Checkpoint::default()
        };
        checkpoint
            .sinks
            .insert("alerts".into(), serde_json::json!({"bytes": 120}));
        checkpoint.stages.insert("anomaly".into(), vec![1, 2, 3]);
        checkpoint.stages.insert("empty".into(), Vec::new());
        store.save("p", 3, &checkpoint).await.expect("save");
        assert_eq!(
            store.load("p", 3).await.expect("load"),
            Some(checkpoint.clone())
        );

        checkpoint.position = Some(43);
        store.save("p", 3, &checkpoint).await.expect("overwrite");
        assert_eq!(
            store
                .load("p", 3)
                .await
                .expect("load")
                .and_then(|c| c.position),
            Some(43)
        );

        let path = store.path("p", 3);
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 40;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).expect("corrupt");
        let err = store.load("p", 3).await.expect_err("corrupt file");
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        assert_eq!(err.kind, CheckpointErrorKind::Unreadable);
        assert!(!err.retryable());

        store
            .save_meta("sim/start", "2026-01-01T00:00:00Z")
            .await
            .expect("meta");
        assert_eq!(
            store.load_meta("sim/start").await.expect("meta").as_deref(),
            Some("2026-01-01T00:00:00Z")
        );
    }

    /// Keyed state with changes `puts` (key, value) and `deletes` on top of `state`.
    fn change(state: &mut crate::plugin::KeyedState, puts: &[(&str, &str)], deletes: &[&str]) {
        for (key, value) in puts {
            state.put(key.as_bytes().to_vec(), value.as_bytes().to_vec());
        }
        for key in deletes {
            state.delete(key.as_bytes().to_vec());
        }
        state.commit();
    }

    /// Saves a checkpoint at `position` of stage `s`'s changes as `inc` plans them.
    fn save_incremental(
        inc: &mut super::super::IncrementalState,
        state: &mut crate::plugin::KeyedState,
        position: u64,
    ) -> Checkpoint {
        inc.begin();
        let mut checkpoint = Checkpoint {
            position: Some(position),
            ..Checkpoint::default()
        };
        let write = inc.next_write("s");
        let bytes = state.take_changes(write == super::super::StateWrite::Base);
        inc.add(&mut checkpoint, "s", write, bytes);
        checkpoint
    }

    async fn restored(store: &LocalCheckpointStore) -> (Checkpoint, crate::plugin::KeyedState) {
        let loaded = store
            .load("p", 0)
            .await
            .expect("load")
            .expect("a checkpoint");
        let parts = loaded.state_parts.get("s").expect("state files");
        let state = crate::plugin::KeyedState::from_changes(parts.iter().cloned()).expect("state");
        (loaded, state)
    }

    /// State files the previous version wrote (the whole state in the changes format, sealed with
    /// a SHA-256) still restore, and a damaged file of either seal is refused.
    #[test]
    fn state_files_of_the_previous_seal_and_format_restore_and_damage_is_refused() {
        // Version 1 of the changes format: a put of "device-1" (expiry never) and one of "gone",
        // then a delete of "gone".
        let mut changes = vec![1u8];
        for (key, value) in [(&b"device-1"[..], &b"{\"t\":20}"[..]), (b"gone", b"1")] {
            changes.push(1);
            changes.extend_from_slice(&(key.len() as u32).to_le_bytes());
            changes.extend_from_slice(key);
            changes.extend_from_slice(&i64::MAX.to_le_bytes());
            changes.extend_from_slice(&(value.len() as u32).to_le_bytes());
            changes.extend_from_slice(value);
        }
        changes.push(2);
        changes.extend_from_slice(&4u32.to_le_bytes());
        changes.extend_from_slice(b"gone");
        let mut old = changes.clone();
        old.extend_from_slice(&Sha256::digest(&changes));
        let body = unseal(Bytes::from(old.clone())).expect("the previous seal is read");
        assert_eq!(body, changes);
        let state = crate::plugin::KeyedState::from_changes([body]).expect("restores");
        assert_eq!(state.len(), 1);
        assert_eq!(state.committed(b"device-1"), Some(&b"{\"t\":20}"[..]));
        // Damage under either seal is refused, never read as a state.
        old[3] ^= 1;
        assert!(unseal(Bytes::from(old)).is_err());
        let mut new = changes.clone();
        new.extend_from_slice(&seal(&changes));
        assert_eq!(unseal(Bytes::from(new.clone())).expect("sealed"), changes);
        new[3] ^= 1;
        assert!(unseal(Bytes::from(new)).is_err());
    }

    /// A large state file (a base) is mapped, not copied into memory, and reads back the same;
    /// its mapping outlives the file's deletion (a compaction deletes the base a state was
    /// restored from).
    #[tokio::test]
    async fn a_large_state_file_is_mapped_and_reads_back_whole() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = LocalCheckpointStore::new(dir.path());
        let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let small = b"a small delta".to_vec();
        store
            .write_state_file("p", 0, "s.1.base", Bytes::from(body.clone()))
            .await
            .expect("write");
        store
            .write_state_file("p", 0, "s.2.delta", Bytes::from(small.clone()))
            .await
            .expect("write");
        let read = store
            .read_state_file("p", 0, "s.1.base")
            .await
            .expect("read");
        assert_eq!(read, body);
        let path = store.state_dir("p", 0).join("s.1.base");
        let mapped = || {
            let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
            let path = path.display().to_string();
            maps.lines().any(|l| l.contains(&path))
        };
        assert!(mapped(), "the base is mapped");
        let delta = store
            .read_state_file("p", 0, "s.2.delta")
            .await
            .expect("read");
        assert_eq!(delta, small);
        store
            .delete_state_file("p", 0, "s.1.base")
            .await
            .expect("delete");
        assert_eq!(read, body, "still readable once deleted");
        drop(read);
        assert!(!mapped(), "unmapped with its last reference");
        // A damaged large file is refused like a small one.
        store
            .write_state_file("p", 0, "s.3.base", Bytes::from(body))
            .await
            .expect("write");
        let path = store.state_dir("p", 0).join("s.3.base");
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[1_000_000] ^= 1;
        std::fs::write(&path, bytes).expect("damage");
        assert!(store.read_state_file("p", 0, "s.3.base").await.is_err());
    }

    #[tokio::test]
    async fn incremental_state_restores_from_base_and_deltas_and_survives_crashes() {
        use super::super::{IncrementalState, MAX_DELTAS};
        let dir = tempfile::tempdir().expect("temp dir");
        let store = LocalCheckpointStore::new(dir.path());
        let mut inc = IncrementalState::new(&Checkpoint::default());
        let mut state = crate::plugin::KeyedState::default();
        let keys: Vec<String> = (0..1000).map(|i| format!("device-{i}")).collect();
        let puts: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "20.5")).collect();
        change(&mut state, &puts, &[]);
        let first = save_incremental(&mut inc, &mut state, 1);
        store.save("p", 0, &first).await.expect("save");
        inc.saved();
        let base_bytes = std::fs::metadata(store.state_dir("p", 0).join(&first.state_writes[0].0))
            .expect("base")
            .len();

        // A delta holds only what changed: a few keys, not the thousand.
        change(
            &mut state,
            &[("device-1", "30"), ("new", "1")],
            &["device-2"],
        );
        let second = save_incremental(&mut inc, &mut state, 2);
        store.save("p", 0, &second).await.expect("save");
        inc.saved();
        let delta_bytes = second.state_writes[0].1.len() as u64;
        assert!(
            delta_bytes * 50 < base_bytes,
            "{delta_bytes} of {base_bytes}"
        );
        let (loaded, back) = restored(&store).await;
        assert_eq!(loaded.position, Some(2));
        assert_eq!(back, state);
        let raw = std::fs::read(store.path("p", 0)).expect("record");
        assert!(
            raw.starts_with(MAGIC_V2),
            "a record listing state files is version 2"
        );

        // A crash after the delta was written, before the record: the delta is never read.
        let mut crashed = state.clone();
        change(&mut crashed, &[("device-3", "99")], &[]);
        let lost = save_incremental(&mut inc, &mut crashed, 3);
        let (name, bytes) = &lost.state_writes[0];
        store
            .write_state_file("p", 0, name, bytes.slice(..bytes.len() / 2))
            .await
            .expect("a torn delta");
        let (loaded, back) = restored(&store).await;
        assert_eq!(loaded.position, Some(2));
        assert_eq!(back, state, "the torn delta is not applied");

        // The worker restarted from that record writes its own base first (it never lists or
        // deletes another run's files), then deltas, all under new names.
        let mut inc = IncrementalState::new(&loaded);
        let mut state = back;
        for position in 3..=3 + MAX_DELTAS as u64 {
            change(&mut state, &[("device-4", &position.to_string())], &[]);
            let next = save_incremental(&mut inc, &mut state, position);
            assert!(!next.state_writes.iter().any(|(n, _)| n == name));
            let kind = if position == 3 { ".base" } else { ".delta" };
            assert!(next.state_writes[0].0.ends_with(kind), "{position}");
            assert!(next.state_drops.is_empty());
            store.save("p", 0, &next).await.expect("save");
            inc.saved();
        }
        assert_eq!(restored(&store).await.1, state);
        // Compaction: a new base, and the files before it deleted once the record is written.
        change(&mut state, &[("fresh", "1")], &[]);
        let compacted = save_incremental(&mut inc, &mut state, 100);
        assert!(compacted.state_writes[0].0.ends_with(".base"));
        // A crash mid-compaction (base written, no record): the old files still restore.
        store
            .write_state_file(
                "p",
                0,
                &compacted.state_writes[0].0,
                compacted.state_writes[0].1.clone(),
            )
            .await
            .expect("base");
        let (before, back) = restored(&store).await;
        assert_eq!(before.state_files["s"].len(), MAX_DELTAS + 1);
        assert_eq!(back.committed(b"fresh"), None);
        store.save("p", 0, &compacted).await.expect("save");
        inc.saved();
        let (loaded, back) = restored(&store).await;
        assert_eq!(loaded.state_files["s"].len(), 1);
        assert_eq!(back, state);
        let files = std::fs::read_dir(store.state_dir("p", 0))
            .expect("dir")
            .count();
        // The new base, the torn delta of the crash (nothing lists it; it is never read), and
        // the previous run's base and delta, which this run leaves in place.
        assert_eq!(files, 4);

        // A state file that does not match its checksum is refused, not half applied.
        let path = store.state_dir("p", 0).join(&loaded.state_files["s"][0]);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[3] ^= 0xff;
        std::fs::write(&path, bytes).expect("corrupt");
        let err = store.load("p", 0).await.expect_err("corrupt state file");
        assert_eq!(err.kind, CheckpointErrorKind::Unreadable);
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
    }
}
