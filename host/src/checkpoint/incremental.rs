//! Incremental checkpoints of keyed state: a checkpoint writes only the keys put or deleted since
//! the one before it, as a *delta* file, next to the checkpoint record; from time to time it
//! writes the whole state instead, as a new *base*, and the files before it are deleted.
//!
//! The checkpoint record (the manifest) lists, per stage, the state files that make its state:
//! its base, then its deltas in order ([`Checkpoint::state_files`]). Restoring reads them in that
//! order and applies each to the state the ones before it gave.
//!
//! Every step is safe to crash at:
//!
//! - A state file is written whole or not at all (a local file is written to a temporary name,
//!   synced and renamed; a blob is one upload), **before** the record that lists it. A crash
//!   before the record is written leaves the previous record, which does not list the new file:
//!   a torn or orphaned delta is never read, so nothing is applied twice or half.
//! - File names carry a sequence number and the id of the worker's run, so a file is never
//!   written twice under one name, even by a worker started again after a crash from the same
//!   record.
//! - Files a new record no longer lists (those a compaction replaced) are deleted only **after**
//!   the record is written; a crash before that leaves files nothing reads (at most one
//!   compaction's worth).
//! - A run lists and deletes only files it wrote itself: its first checkpoint after a restore
//!   writes a new base, and the files it restored from are left in place. While a partition
//!   changes hands, the previous owner may still save a record or two (ownership is not fenced
//!   per write), and whichever record is the latest must list only files its writer has not
//!   deleted. So a restart or handover leaves a base and its deltas behind, until the new run
//!   has held the partition for a few ownership expiries and sweeps them
//!   ([`IncrementalState::take_sweep`]).
//!
//! The record's format is version 2 (`WEIRCKP2`) when it lists state files, so an older Weir
//! refuses it rather than start from empty state; records of version 1 (the whole state in the
//! record) are still read.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Checkpoint, CheckpointError, CheckpointStore};
use crate::event::PartitionId;

/// At most this many deltas follow a base: the next checkpoint compacts.
pub const MAX_DELTAS: usize = 16;

/// A worker's record of its stages' state files, and when to compact them.
#[derive(Debug, Clone)]
pub struct IncrementalState {
    /// Unique to this run of the worker, in every file name it writes.
    run: String,
    /// The sequence number of the next file.
    seq: u64,
    /// Per stage, its files as the last saved checkpoint lists them.
    stages: BTreeMap<String, StageFiles>,
    /// The files of the checkpoint being saved, until it is saved.
    in_flight: Option<BTreeMap<String, StageFiles>>,
    /// The last save was prepared but not confirmed: the changes it took are lost to the next
    /// delta, so the next checkpoint writes bases.
    must_compact: bool,
    /// When this run began.
    started: std::time::Instant,
    /// The sequence number of the record this run restored from: every file the runs before it
    /// wrote before that record has a number no higher.
    restored_seq: u64,
    /// Whether this run has deleted (or tried to) what earlier runs left behind.
    swept: bool,
}

/// The state files of one stage.
#[derive(Debug, Clone, Default, PartialEq)]
struct StageFiles {
    files: Vec<String>,
    /// Bytes of the base.
    base_bytes: u64,
    /// Bytes of the deltas after it.
    delta_bytes: u64,
}

/// Whether a stage's next checkpoint writes its whole state (a base) or its changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateWrite {
    /// The whole state, replacing the stage's files.
    Base,
    /// The changes since the last checkpoint, after the stage's files.
    Delta,
}

impl IncrementalState {
    /// The files the checkpoint `restored` from lists (none for a new partition).
    pub fn new(restored: &Checkpoint) -> Self {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let run = format!(
            "{:x}{:x}{:x}",
            crate::event::now_millis(),
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        );
        let stages: BTreeMap<String, StageFiles> = restored
            .state_files
            .iter()
            .map(|(stage, files)| {
                (
                    stage.clone(),
                    StageFiles {
                        files: files.clone(),
                        // Sizes are not kept: a restored stage compacts after MAX_DELTAS.
                        base_bytes: u64::MAX,
                        delta_bytes: 0,
                    },
                )
            })
            .collect();
        IncrementalState {
            run,
            seq: restored.state_seq,
            // Restored files are another run's: the first save writes this run's own base.
            must_compact: !stages.is_empty(),
            stages,
            in_flight: None,
            started: std::time::Instant::now(),
            restored_seq: restored.state_seq,
            swept: false,
        }
    }

    /// Whether to delete the state files earlier runs left behind now ([`IncrementalState::leftovers`]):
    /// true once per run, after a save whose record lists only files this run wrote, and once
    /// the run is `after` old.
    ///
    /// A run never deletes the files it restored from at its own compactions (see the module's
    /// documentation), so each restart or handoff leaves a base and its deltas behind. Once this
    /// run's record lists none of them, only a previous owner still saving during a handoff could
    /// list them again; `after` (a few ownership expiries) is long enough for it to have noticed
    /// it lost the partition and stopped.
    pub fn take_sweep(&mut self, after: std::time::Duration) -> bool {
        let due = !self.swept
            && !self.must_compact
            && self.in_flight.is_none()
            && self.started.elapsed() >= after
            && self
                .stages
                .values()
                .all(|stage| stage.files.iter().all(|name| self.own(name)));
        self.swept |= due;
        due
    }

    /// Of `listed`, every state file of the partition, those the last saved record does not list
    /// and another run wrote **before the record this run restored from** (files this run failed
    /// to save are its own to drop at its next compaction). Names not in the form this module
    /// gives are left alone.
    ///
    /// Only files numbered up to that record's sequence number: a run that took the partition
    /// over from this one (while this one has not yet noticed it lost it) numbers its files after
    /// the record it restored, which is this run's, so this run never deletes a newer owner's
    /// files. Files numbered after it (written by a run that crashed before its record) are left
    /// to a later run, which restores a record numbered past them.
    pub fn leftovers(&self, listed: Vec<String>) -> Vec<String> {
        listed
            .into_iter()
            .filter(|name| {
                file_parts(name)
                    .is_some_and(|(seq, run)| run != self.run && seq <= self.restored_seq)
            })
            .filter(|name| !self.stages.values().any(|stage| stage.files.contains(name)))
            .collect()
    }

    /// Which write `stage`'s next checkpoint makes: a base for a stage without files, after a
    /// save that failed, or when its deltas reached [`MAX_DELTAS`] or the size of its base.
    pub fn next_write(&self, stage: &str) -> StateWrite {
        match self.stages.get(stage) {
            Some(files)
                if !self.must_compact
                    && files.files.len() <= MAX_DELTAS
                    && files.delta_bytes < files.base_bytes =>
            {
                StateWrite::Delta
            }
            _ => StateWrite::Base,
        }
    }

    /// Adds `stage`'s `bytes` (what [`IncrementalState::next_write`] said to write) to
    /// `checkpoint`: the file to write before its record, and the files its record lists.
    pub fn add(
        &mut self,
        checkpoint: &mut Checkpoint,
        stage: &str,
        write: StateWrite,
        bytes: bytes::Bytes,
    ) {
        let name = self.add_later(checkpoint, stage, write, bytes.len() as u64);
        checkpoint.state_writes.push((name, bytes));
    }

    /// As [`IncrementalState::add`], for bytes written later (a base written beside the
    /// partition) of about `size` bytes: returns the name of the file, whose bytes the caller
    /// adds to [`Checkpoint::state_writes`] before the checkpoint is saved.
    pub fn add_later(
        &mut self,
        checkpoint: &mut Checkpoint,
        stage: &str,
        write: StateWrite,
        size: u64,
    ) -> String {
        self.seq += 1;
        let kind = match write {
            StateWrite::Base => "base",
            StateWrite::Delta => "delta",
        };
        let name = format!("{}.{:010}-{}.{kind}", safe_name(stage), self.seq, self.run);
        let files = match (write, self.stages.get(stage)) {
            (StateWrite::Delta, Some(previous)) => {
                let mut files = previous.clone();
                files.files.push(name.clone());
                files.delta_bytes += size;
                files
            }
            _ => StageFiles {
                files: vec![name.clone()],
                base_bytes: size,
                delta_bytes: 0,
            },
        };
        checkpoint
            .state_files
            .insert(stage.to_owned(), files.files.clone());
        let mut in_flight = self.in_flight.take().unwrap_or_default();
        in_flight.insert(stage.to_owned(), files);
        checkpoint.state_seq = self.seq;
        checkpoint.state_drops = self.dropped(&in_flight);
        self.in_flight = Some(in_flight);
        name
    }

    /// Whether this run wrote the file `name`.
    fn own(&self, name: &str) -> bool {
        file_parts(name).is_some_and(|(_, run)| run == self.run)
    }

    /// Files of this run the last saved checkpoint lists that `next` does not.
    fn dropped(&self, next: &BTreeMap<String, StageFiles>) -> Vec<String> {
        self.stages
            .iter()
            .flat_map(|(stage, files)| {
                let kept = next
                    .get(stage)
                    .map(|f| f.files.as_slice())
                    .unwrap_or_default();
                files
                    .files
                    .iter()
                    .filter(|f| !kept.contains(f) && self.own(f))
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Starts a checkpoint: a save that was prepared and never confirmed makes this one
    /// write bases (the changes it took are in no saved file).
    pub fn begin(&mut self) {
        if self.in_flight.take().is_some() {
            self.must_compact = true;
        }
    }

    /// The checkpoint prepared since [`IncrementalState::begin`] was saved: its files are the
    /// stages' files now.
    pub fn saved(&mut self) {
        if let Some(stages) = self.in_flight.take() {
            self.stages = stages;
        } else {
            self.stages.clear();
        }
        self.must_compact = false;
    }
}

/// The sequence number and the run of state file `name` (`<stage>.<sequence>-<run>.<kind>`, or
/// a local store's temporary file of it: the same with more after it).
fn file_parts(name: &str) -> Option<(u64, &str)> {
    let mut parts = name.split('.');
    parts.next()?;
    let (seq, run) = parts.next()?.split_once('-')?;
    let kind = parts.next()?;
    let well_formed = !seq.is_empty()
        && seq.bytes().all(|b| b.is_ascii_digit())
        && !run.is_empty()
        && matches!(kind, "base" | "delta");
    well_formed.then_some((seq.parse().ok()?, run))
}

/// `name` with only letters, digits, `-` and `_` (others become `_`), for file and blob names.
pub(crate) fn safe_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes the state files `checkpoint` adds, before its record.
pub(crate) async fn write_files<S: CheckpointStore + ?Sized>(
    store: &S,
    pipeline: &str,
    partition: PartitionId,
    checkpoint: &Checkpoint,
) -> Result<(), CheckpointError> {
    for (name, bytes) in &checkpoint.state_writes {
        store
            .write_state_file(pipeline, partition, name, bytes.clone())
            .await?;
    }
    Ok(())
}

/// Deletes the files `checkpoint`'s record no longer lists, after it was written. A failure is
/// logged: nothing reads those files any more.
pub(crate) async fn drop_files<S: CheckpointStore + ?Sized>(
    store: &S,
    pipeline: &str,
    partition: PartitionId,
    checkpoint: &Checkpoint,
) {
    for name in &checkpoint.state_drops {
        if let Err(e) = store.delete_state_file(pipeline, partition, name).await {
            tracing::warn!(pipeline, partition, file = %name, error = %e,
                "cannot delete a state file no checkpoint lists any more");
        }
    }
}

/// Reads the state files `checkpoint`'s record lists into [`Checkpoint::state_parts`].
pub(crate) async fn read_files<S: CheckpointStore + ?Sized>(
    store: &S,
    pipeline: &str,
    partition: PartitionId,
    checkpoint: &mut Checkpoint,
) -> Result<(), CheckpointError> {
    for (stage, files) in &checkpoint.state_files {
        let mut parts = Vec::with_capacity(files.len());
        for name in files {
            parts.push(store.read_state_file(pipeline, partition, name).await?);
        }
        checkpoint.state_parts.insert(stage.clone(), parts);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(inc: &mut IncrementalState, changes: &[(&str, StateWrite, &[u8])]) -> Checkpoint {
        inc.begin();
        let mut c = Checkpoint::default();
        for (stage, write, bytes) in changes {
            assert_eq!(inc.next_write(stage), *write, "{stage}");
            inc.add(&mut c, stage, *write, bytes::Bytes::copy_from_slice(bytes));
        }
        c
    }

    #[test]
    fn a_run_sweeps_what_earlier_runs_left_behind_once_its_record_lists_only_its_own_files() {
        // An earlier run's base and delta, as its record lists them.
        let mut earlier = IncrementalState::new(&Checkpoint::default());
        let base = checkpoint(&mut earlier, &[("s", StateWrite::Base, b"b")]);
        earlier.saved();
        let record = checkpoint(&mut earlier, &[("s", StateWrite::Delta, b"d")]);
        earlier.saved();
        let restored_files = record.state_files["s"].clone();
        assert_eq!(restored_files[0], base.state_files["s"][0]);

        let mut run = IncrementalState::new(&record);
        // Before its first save, the record lists the earlier run's files: nothing to sweep.
        assert!(!run.take_sweep(std::time::Duration::ZERO));
        let own = checkpoint(&mut run, &[("s", StateWrite::Base, b"b")]);
        assert!(!run.take_sweep(std::time::Duration::ZERO), "not saved yet");
        run.saved();
        assert!(
            !run.take_sweep(std::time::Duration::from_secs(3600)),
            "too young: a previous owner may still save"
        );
        assert!(run.take_sweep(std::time::Duration::ZERO));
        assert!(!run.take_sweep(std::time::Duration::ZERO), "once per run");

        // The restored record is numbered 2: files of other runs up to 2 go; a file numbered
        // after it (a newer owner's, or a crashed run's) stays.
        assert_eq!(record.state_seq, 2);
        let own_name = own.state_files["s"][0].clone();
        let other_tmp = format!("{}.4242-1.tmp", restored_files[1]);
        let own_tmp = format!("{own_name}.4242-2.tmp");
        let listed: Vec<String> = restored_files
            .iter()
            .cloned()
            .chain([
                own_name.clone(),
                other_tmp.clone(),
                own_tmp,
                "s.0000000001-abc.delta".to_owned(),
                "s.0000000003-newer.base".to_owned(),
                "notes.txt".to_owned(),
                "s.12x-abc.base".to_owned(),
            ])
            .collect();
        let mut leftovers = run.leftovers(listed);
        leftovers.sort();
        let mut expected = restored_files;
        expected.push(other_tmp);
        expected.push("s.0000000001-abc.delta".to_owned());
        expected.sort();
        assert_eq!(leftovers, expected);
    }

    #[test]
    fn deltas_follow_a_base_until_compaction_and_a_failed_save_compacts() {
        let mut inc = IncrementalState::new(&Checkpoint::default());
        let big = vec![0u8; 1000];
        let first = checkpoint(&mut inc, &[("s", StateWrite::Base, &big)]);
        assert_eq!(first.state_files["s"].len(), 1);
        assert!(first.state_drops.is_empty());
        inc.saved();
        let mut last = first.clone();
        for n in 0..MAX_DELTAS {
            last = checkpoint(&mut inc, &[("s", StateWrite::Delta, b"d")]);
            assert_eq!(last.state_files["s"].len(), n + 2);
            assert!(last.state_drops.is_empty());
            inc.saved();
        }
        // Enough deltas: a base, and every earlier file is dropped after the record.
        let compacted = checkpoint(&mut inc, &[("s", StateWrite::Base, &big)]);
        assert_eq!(compacted.state_files["s"].len(), 1);
        assert_eq!(compacted.state_drops, last.state_files["s"]);
        inc.saved();
        // Deltas as large as the base compact too.
        let _ = checkpoint(&mut inc, &[("s", StateWrite::Delta, &big)]);
        inc.saved();
        let _ = checkpoint(&mut inc, &[("s", StateWrite::Base, b"b")]);
        // Never saved: the next checkpoint writes bases, keeping the saved files until then.
        let retry = checkpoint(&mut inc, &[("s", StateWrite::Base, b"b")]);
        assert_eq!(retry.state_files["s"].len(), 1);
        assert_eq!(retry.state_drops.len(), 2);
        inc.saved();

        // A worker restored from the record (after a restart, or a new owner while the old one
        // may still save) writes its own base first, never reuses a name, and never deletes
        // the files it restored from: they are another run's.
        let mut restored = IncrementalState::new(&retry);
        let next = checkpoint(&mut restored, &[("s", StateWrite::Base, b"b")]);
        assert_eq!(next.state_files["s"].len(), 1);
        assert_ne!(next.state_files["s"][0], retry.state_files["s"][0]);
        assert_ne!(next.state_writes[0].0, retry.state_writes[0].0);
        assert!(next.state_drops.is_empty(), "{:?}", next.state_drops);
        assert!(next.state_seq > retry.state_seq);
        restored.saved();
        // Then deltas after its own base; its own files are dropped at its next compaction.
        let delta = checkpoint(&mut restored, &[("s", StateWrite::Delta, b"d")]);
        assert_eq!(delta.state_files["s"].len(), 2);
        restored.saved();
        restored.must_compact = true;
        let compacted = checkpoint(&mut restored, &[("s", StateWrite::Base, b"b")]);
        assert_eq!(compacted.state_drops, delta.state_files["s"]);
    }
}
