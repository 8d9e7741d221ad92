//! Keyed state owned by the host on behalf of one stage in one partition.
//!
//! Besides the values, the state keeps what its checkpoints and its time-to-live need:
//!
//! - **Changes since the last checkpoint**: every key put or deleted since the checkpoint took
//!   the previous changes ([`KeyedState::take_changes`]), so that a checkpoint writes only those
//!   (an incremental checkpoint) rather than the whole state.
//! - **Expiry in event time**: a key written with a time-to-live (the stage's `state_ttl`, or the
//!   plugin's own for a write) expires when the partition's watermark passes the event time of
//!   its last write plus that time-to-live ([`KeyedState::expire`]); expired keys leave memory
//!   and, as deletes, the checkpoints.
//! - **A base and an overlay**: the committed state is the base (the whole state as of the last
//!   base checkpoint, in one buffer looked up in place, see [`super::state_base`]) and, over it,
//!   the keys put or deleted since. Restoring a checkpoint takes its base file as it is, and
//!   applies only the deltas after it; a base checkpoint (compaction) merges the two into a new
//!   base, which the state then keeps. So a restart rebuilds no map of every key, and the memory
//!   a key costs is its bytes in the base, not an allocation of its own.
//! - **A base written beside the partition**: a compaction freezes the overlay as it is
//!   ([`KeyedState::begin_base`]) and writes the new base from the frozen layers on another
//!   thread ([`BaseWrite::write`]), while new writes go to a fresh overlay over them; once the
//!   checkpoint is saved the state takes the new base in their place ([`KeyedState::adopt_base`]).
//!   So a compaction of millions of keys does not stop the partition for the seconds it takes.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::state_base::{self, BASE_VERSION, Base};

/// The hasher of the committed keys: fast, and seeded per process (keys come from events).
type Hasher = foldhash::fast::RandomState;

/// Key/value state with call-level transactions: writes made during a plugin call are pending
/// until the call returns ([`KeyedState::commit`]); a trap discards them ([`KeyedState::rollback`]).
///
/// It also remembers which keys the last call that wrote anything committed
/// ([`KeyedState::recent_keys`]): when the state is too large to hand over whole, an instance
/// whose cache must start again (a hot swap, a replacement after a trap) fills it from them in
/// one call, instead of asking for each key on its first batch.
///
/// And it remembers which plugin instance may hold a cache of it ([`KeyedState::claim_cache`]):
/// the state moves between instances (a hot swap, the fallback of a version on probation, a
/// replacement after a trap), and an instance whose cache another one wrote past must drop it.
#[derive(Debug, Default, Clone)]
pub struct KeyedState {
    /// The committed state as of the last base, or as of the cut of a base being written (see
    /// the module's documentation).
    below: Below,
    /// Committed keys put or deleted since then (a delete only of a key `below` holds).
    overlay: Overlay,
    /// Number of committed keys, in the base and the overlay together.
    live: usize,
    /// This call's writes: a value and its time-to-live (`None`: the stage's), or a delete.
    pending: HashMap<Vec<u8>, Option<PendingPut>>,
    recent: RecentKeys,
    /// The instance whose cache matches this state (0: none).
    cache_holder: u64,
    /// Keys put or deleted since the last [`KeyedState::take_changes`] (a key may appear twice;
    /// a committed key's own `changed` flag says whether it still has to be written).
    changed: Vec<Vec<u8>>,
    /// Time-to-live settings and the event time of writes.
    ttl: Ttl,
    /// Where a large base goes instead of memory (`None`: bases stay in memory).
    spill: Option<Arc<StateSpill>>,
}

/// Where a keyed state keeps a base too large for memory: in a file of `dir`, mapped, so that the
/// page cache holds what is looked up and the kernel drops the rest when memory is short. The
/// file is unlinked as it is created (a crash leaves nothing behind); the checkpoint writes its
/// own copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateSpill {
    /// Directory of the spill files (created when first needed).
    pub dir: std::path::PathBuf,
    /// A base larger than this many bytes is spilled; smaller ones stay in memory.
    pub above_bytes: u64,
}

/// Committed keys put or deleted over a base.
type Overlay = HashMap<Vec<u8>, Slot, Hasher>;

/// The committed state under the overlay: the base, and while a new base is written from them,
/// the overlay frozen when it began (read-only, shared with the writer).
#[derive(Debug, Clone, Default)]
struct Below {
    base: Base,
    frozen: Option<Arc<Overlay>>,
}

impl Below {
    /// A base alone.
    fn of(base: Base) -> Self {
        Below { base, frozen: None }
    }

    /// The entry of `key`: the frozen overlay's, else the base's.
    fn get(&self, key: &[u8]) -> Option<state_base::Entry<'_>> {
        match self
            .frozen
            .as_ref()
            .and_then(|frozen| frozen.get_key_value(key))
        {
            Some((key, slot)) => slot
                .value
                .as_deref()
                .map(|value| (key.as_slice(), value, slot.expires_after)),
            None => self.base.get(key),
        }
    }

    fn contains(&self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    /// Every entry: the base's the frozen overlay does not replace, then the frozen overlay's.
    fn entries(&self) -> impl Iterator<Item = state_base::Entry<'_>> {
        layered(self.base.entries(), self.frozen.as_deref())
    }

    /// Bytes of the base and of the frozen overlay's keys and values.
    fn size(&self) -> usize {
        self.base
            .size()
            .saturating_add(self.frozen.as_deref().map_or(0, overlay_bytes))
    }
}

/// The entries of `lower` that `overlay` (if any) does not replace, then the overlay's values.
fn layered<'a>(
    lower: impl Iterator<Item = state_base::Entry<'a>>,
    overlay: Option<&'a Overlay>,
) -> impl Iterator<Item = state_base::Entry<'a>> {
    let overlay = overlay.filter(|overlay| !overlay.is_empty());
    let from_lower =
        lower.filter(move |(key, _, _)| overlay.is_none_or(|overlay| !overlay.contains_key(*key)));
    let from_overlay = overlay.into_iter().flatten().filter_map(|(key, slot)| {
        slot.value
            .as_deref()
            .map(|value| (key.as_slice(), value, slot.expires_after))
    });
    from_lower.chain(from_overlay)
}

/// Bytes of an overlay's keys and values.
fn overlay_bytes(overlay: &Overlay) -> usize {
    overlay
        .iter()
        .map(|(key, slot)| key.len() + slot.value.as_ref().map_or(0, Vec::len))
        .sum()
}

/// A new base to write from a state's committed layers frozen at a checkpoint's cut
/// ([`KeyedState::begin_base`]): owned, so that it is written on another thread while the state
/// takes new writes.
#[derive(Debug)]
pub struct BaseWrite {
    below: Below,
    spill: Option<Arc<StateSpill>>,
}

impl BaseWrite {
    /// Writes the base (seconds for millions of keys: run it off the partition's thread). Its
    /// bytes are the stage's base file; [`KeyedState::adopt_base`] gives them back to the state.
    pub fn write(&self) -> Bytes {
        let below = &self.below;
        let bound = below.base.len() + below.frozen.as_deref().map_or(0, HashMap::len);
        let size = below.size();
        let written = match &self.spill {
            Some(spill) if size as u64 > spill.above_bytes => spill_base(below, spill, bound),
            _ => None,
        }
        .or_else(|| state_base::write(below.entries(), bound, size).map(Bytes::from));
        if let Some(bytes) = written {
            return bytes;
        }
        // Too large for a base (past 1 TiB): the whole state in the changes format, which
        // restores the same (the state then keeps its layers).
        let mut out = vec![CHANGES_VERSION];
        for (key, value, expiry) in below.entries() {
            push_put(&mut out, key, value, expiry);
        }
        Bytes::from(out)
    }

    /// Roughly the bytes [`BaseWrite::write`] gives, known before it runs.
    pub fn estimated_size(&self) -> u64 {
        self.below.size() as u64
    }
}

/// The layers `below` as a base in a spill file, mapped; `None` (with a warning: the base is then
/// kept in memory) when the file cannot be written.
fn spill_base(below: &Below, spill: &StateSpill, bound: usize) -> Option<Bytes> {
    let written = (|| {
        std::fs::create_dir_all(&spill.dir)?;
        let file = tempfile::tempfile_in(&spill.dir)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        if !state_base::write_into(&mut out, below.entries(), bound)? {
            return Ok(None);
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        crate::mapped::map(&file).map(Some)
    })();
    written.unwrap_or_else(|e| {
        tracing::warn!(
            dir = %spill.dir.display(), error = %e,
            "could not spill a keyed state's base to disk; it stays in memory"
        );
        None
    })
}

/// What a state let go of when it took a new base: dropping it frees the old base and the
/// frozen overlay (for millions of keys, long enough to do off the partition's thread).
#[derive(Debug)]
pub struct ReplacedLayers {
    _layers: Below,
}

/// A value written during a call, with the time-to-live it was written with (`None`: the
/// stage's).
type PendingPut = (Vec<u8>, Option<i64>);

/// A committed key of the overlay: its value and expiry, or a delete of the base's.
#[derive(Debug, Clone, PartialEq)]
struct Slot {
    /// `None`: deleted (the base holds the key; this hides it).
    value: Option<Vec<u8>>,
    /// Event time after which the watermark expires the key ([`NEVER`]: it does not expire).
    expires_after: i64,
    /// Whether it was put or deleted since the last [`KeyedState::take_changes`].
    changed: bool,
}

impl Slot {
    /// A delete of a key the base holds.
    fn deleted(changed: bool) -> Self {
        Slot {
            value: None,
            expires_after: NEVER,
            changed,
        }
    }
}

/// The expiry of a key that does not expire.
const NEVER: i64 = i64::MAX;

/// Time-to-live settings and clocks of one state.
#[derive(Debug, Clone)]
struct Ttl {
    /// The stage's time-to-live of every key, in milliseconds (`None`: keys do not expire unless
    /// the plugin gives a time-to-live).
    stage: Option<i64>,
    /// The time-to-live the plugin set for the rest of its call (0: the stage's).
    call: Option<i64>,
    /// Event time of the writes being made: the latest event time handed to the stage.
    write_time: i64,
    /// The watermark up to which keys were last expired.
    swept_at: i64,
    /// The earliest expiry of any committed key (a lower bound), to skip sweeps with nothing to do.
    earliest: i64,
}

impl Default for Ttl {
    fn default() -> Self {
        Ttl {
            stage: None,
            call: None,
            write_time: i64::MIN,
            swept_at: i64::MIN,
            earliest: NEVER,
        }
    }
}

/// Two states are equal when they hold the same values (and expiries); which keys were written
/// last, which instance caches them and which changed since a checkpoint are hints, not state.
impl PartialEq for KeyedState {
    fn eq(&self, other: &Self) -> bool {
        self.pending == other.pending
            && self.live == other.live
            && self
                .entries()
                .all(|(key, value, expiry)| other.lookup(key) == Some((value, expiry)))
    }
}

/// Most keys remembered as recently written: a batch's worth and more (a new instance reads
/// the values of all of them in one call).
const MAX_RECENT_KEYS: usize = 16_384;

/// The keys the last committing call wrote, concatenated (no allocation per key, so that keeping
/// them costs a copy of their bytes per call).
#[derive(Debug, Default, Clone)]
struct RecentKeys {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl RecentKeys {
    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    fn push(&mut self, key: &[u8]) {
        if self.ends.len() < MAX_RECENT_KEYS {
            self.bytes.extend_from_slice(key);
            self.ends.push(self.bytes.len());
        }
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .filter_map(|(start, end)| self.bytes.get(start..end))
    }
}

/// Why a state snapshot could not be read back.
#[derive(Debug, thiserror::Error)]
#[error("keyed state snapshot is corrupt at byte {offset}: {what}")]
pub struct SnapshotError {
    /// Where reading stopped.
    pub offset: usize,
    /// What was expected there.
    pub what: &'static str,
}

/// The first bytes of a snapshot in the changes format (a key length no key can have, so that
/// it cannot be read as the first key of a snapshot in the older format).
const CHANGES_MARKER: [u8; 4] = [0xff; 4];
/// Version of the changes format (see [`KeyedState::take_changes`]).
const CHANGES_VERSION: u8 = 1;
/// A put in the changes format.
const TAG_PUT: u8 = 1;
/// A delete in the changes format.
const TAG_DELETE: u8 = 2;

/// Reads the changes format.
struct ChangeReader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> ChangeReader<'a> {
    fn take(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], SnapshotError> {
        let part = self
            .bytes
            .get(self.offset..self.offset.saturating_add(len))
            .ok_or(SnapshotError {
                offset: self.offset,
                what,
            })?;
        self.offset += len;
        Ok(part)
    }

    fn u32(&mut self, what: &'static str) -> Result<usize, SnapshotError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, SnapshotError> {
        let b = self.take(8, what)?;
        let mut array = [0u8; 8];
        array.copy_from_slice(b);
        Ok(i64::from_le_bytes(array))
    }

    fn part(&mut self, what: &'static str) -> Result<&'a [u8], SnapshotError> {
        let len = self.u32(what)?;
        self.take(len, what)
    }
}

/// How many records the changes `bytes` hold (as far as they read; the count only sizes a map).
fn count_changes(bytes: &[u8]) -> usize {
    let mut r = ChangeReader { bytes, offset: 1 };
    let mut count = 0;
    while r.offset < bytes.len() {
        let Ok(tag) = r.take(1, "") else { break };
        let skip = |r: &mut ChangeReader<'_>| r.part("").map(drop);
        let ok = match tag[0] {
            TAG_PUT => skip(&mut r)
                .and_then(|()| r.i64(""))
                .and_then(|_| skip(&mut r)),
            _ => skip(&mut r),
        };
        if ok.is_err() {
            break;
        }
        count += 1;
    }
    count
}

fn push_part(out: &mut Vec<u8>, part: &[u8]) {
    // Keys and values come through the WIT boundary, whose lists are u32-sized.
    let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(part);
}

fn push_put(out: &mut Vec<u8>, key: &[u8], value: &[u8], expires_after: i64) {
    out.push(TAG_PUT);
    push_part(out, key);
    out.extend_from_slice(&expires_after.to_le_bytes());
    push_part(out, value);
}

impl KeyedState {
    /// The value under `key`, seeing this call's pending writes.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        match self.pending.get(key) {
            Some(pending) => pending.as_ref().map(|(value, _)| value.as_slice()),
            None => self.committed(key),
        }
    }

    /// The committed value and expiry under `key`: the overlay's, else the base's.
    fn lookup(&self, key: &[u8]) -> Option<(&[u8], i64)> {
        match self.overlay.get(key) {
            Some(slot) => slot
                .value
                .as_deref()
                .map(|value| (value, slot.expires_after)),
            None => self
                .below
                .get(key)
                .map(|(_, value, expiry)| (value, expiry)),
        }
    }

    /// Every committed key, value and expiry: the lower layers' the overlay does not replace,
    /// then the overlay's.
    fn entries(&self) -> impl Iterator<Item = state_base::Entry<'_>> {
        layered(self.below.entries(), Some(&self.overlay))
    }

    /// Stores `value` under `key` (pending until [`KeyedState::commit`]).
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        let ttl = self.ttl.call;
        self.pending.insert(key, Some((value, ttl)));
    }

    /// Removes `key` (pending until [`KeyedState::commit`]).
    pub fn delete(&mut self, key: Vec<u8>) {
        self.pending.insert(key, None);
    }

    /// Sets the time-to-live of every key the stage writes, in milliseconds of event time
    /// (`None`: keys do not expire unless the plugin gives their time-to-live).
    pub fn set_stage_ttl(&mut self, ttl_ms: Option<i64>) {
        self.ttl.stage = ttl_ms.filter(|&ttl| ttl > 0);
    }

    /// The stage's time-to-live, in milliseconds.
    pub fn stage_ttl(&self) -> Option<i64> {
        self.ttl.stage
    }

    /// Sets the time-to-live of the keys the plugin puts during the rest of its call, in
    /// milliseconds of event time (0: the stage's).
    pub fn set_call_ttl(&mut self, ttl_ms: u64) {
        self.ttl.call = (ttl_ms > 0).then(|| i64::try_from(ttl_ms).unwrap_or(i64::MAX));
    }

    /// The event time of what the stage is handed now (the latest event time it saw): keys
    /// written from now on expire their time-to-live after it.
    pub fn advance_write_time(&mut self, event_time: i64) {
        self.ttl.write_time = self.ttl.write_time.max(event_time);
    }

    /// Expires keys whose last write plus time-to-live the `watermark` passed. Sweeping visits
    /// every key, so it runs at most once per eighth of the shortest time-to-live of event time
    /// (a key outlives its time-to-live by at most that). Returns how many keys expired.
    pub fn expire(&mut self, watermark: i64) -> usize {
        if watermark <= self.ttl.earliest {
            return 0;
        }
        let step = self.ttl.stage.unwrap_or(8_000).max(8) / 8;
        if watermark.saturating_sub(self.ttl.swept_at) < step && self.ttl.swept_at != i64::MIN {
            return 0;
        }
        self.ttl.swept_at = watermark;
        let before = self.live;
        let mut earliest = NEVER;
        let (below, changed) = (&self.below, &mut self.changed);
        let mut live = self.live;
        self.overlay.retain(|key, slot| {
            if slot.value.is_none() {
                return true;
            }
            if watermark <= slot.expires_after {
                earliest = earliest.min(slot.expires_after);
                return true;
            }
            live -= 1;
            if !slot.changed {
                changed.push(key.clone());
            }
            // A key of the lower layers stays as a delete of it; another leaves.
            if below.contains(key) {
                *slot = Slot::deleted(true);
                true
            } else {
                false
            }
        });
        for (key, _, expires_after) in below.entries() {
            if watermark <= expires_after {
                // A lower bound: the overlay may have replaced the key.
                earliest = earliest.min(expires_after);
            } else if !self.overlay.contains_key(key) {
                live -= 1;
                changed.push(key.to_vec());
                self.overlay.insert(key.to_vec(), Slot::deleted(true));
            }
        }
        self.live = live;
        self.ttl.earliest = earliest;
        let expired = before - self.live;
        if expired > 0 {
            // An instance may have cached what expired: its cache must start again.
            self.cache_holder = 0;
        }
        expired
    }

    /// The expiry of a key put now with time-to-live `ttl` (`None`: the stage's).
    fn expiry(&self, ttl: Option<i64>) -> i64 {
        match ttl.or(self.ttl.stage) {
            Some(ttl) => self.ttl.write_time.saturating_add(ttl),
            None => NEVER,
        }
    }

    /// Applies the pending writes.
    pub fn commit(&mut self) {
        self.ttl.call = None;
        if !self.pending.is_empty() {
            self.recent.clear();
        }
        // Taken out and put back, keeping its capacity from call to call.
        let mut pending = std::mem::take(&mut self.pending);
        for (key, value) in pending.drain() {
            self.recent.push(&key);
            match value {
                Some((value, ttl)) => {
                    let expires_after = self.expiry(ttl);
                    self.ttl.earliest = self.ttl.earliest.min(expires_after);
                    self.put_committed(key, value, expires_after, true);
                }
                None => self.delete_committed(key, true),
            }
        }
        self.pending = pending;
    }

    /// Stores a committed value; `changed`: remembering that the key changed (else it is being
    /// restored from a checkpoint that holds it).
    fn put_committed(&mut self, key: Vec<u8>, value: Vec<u8>, expires_after: i64, changed: bool) {
        let put = Slot {
            value: Some(value),
            expires_after,
            changed,
        };
        match self.overlay.get_mut(&key) {
            Some(slot) => {
                if slot.value.is_none() {
                    self.live += 1;
                }
                let listed = slot.changed;
                *slot = put;
                if changed && !listed {
                    self.changed.push(key);
                }
            }
            None => {
                if !self.below.contains(&key) {
                    self.live += 1;
                }
                if changed {
                    self.changed.push(key.clone());
                }
                self.overlay.insert(key, put);
            }
        }
    }

    /// Deletes a committed key; `changed` as for [`KeyedState::put_committed`].
    fn delete_committed(&mut self, key: Vec<u8>, changed: bool) {
        let in_base = self.below.contains(&key);
        match self.overlay.get_mut(&key) {
            Some(slot) => {
                if slot.value.is_none() {
                    return;
                }
                self.live -= 1;
                let listed = slot.changed;
                if in_base {
                    *slot = Slot::deleted(changed);
                } else {
                    self.overlay.remove(&key);
                }
                if changed && !listed {
                    self.changed.push(key);
                }
            }
            None if in_base => {
                self.live -= 1;
                if changed {
                    self.changed.push(key.clone());
                }
                self.overlay.insert(key, Slot::deleted(changed));
            }
            None => {}
        }
    }

    /// Forgets the pending writes. The instance that made them may have cached them: it no
    /// longer holds the state.
    pub fn rollback(&mut self) {
        self.pending.clear();
        self.ttl.call = None;
        self.cache_holder = 0;
    }

    /// Makes `instance` (a process-unique id, never 0) the one whose cache matches the state, and
    /// says whether it already was: when it was not, its cache must start again.
    pub fn claim_cache(&mut self, instance: u64) -> bool {
        std::mem::replace(&mut self.cache_holder, instance) == instance
    }

    /// The keys the last call that wrote anything committed (at most a bounded number of them),
    /// in no particular order.
    pub fn recent_keys(&self) -> impl Iterator<Item = &[u8]> {
        self.recent.iter()
    }

    /// Every committed key and value, in no particular order.
    pub fn committed_entries(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries().map(|(key, value, _)| (key, value))
    }

    /// The committed value under `key` (not seeing pending writes).
    pub fn committed(&self, key: &[u8]) -> Option<&[u8]> {
        self.lookup(key).map(|(value, _)| value)
    }

    /// A copy of the committed state that no instance caches (the base is shared, not copied).
    pub fn detached_copy(&self) -> KeyedState {
        KeyedState {
            below: self.below.clone(),
            overlay: self.overlay.clone(),
            live: self.live,
            ttl: self.ttl.clone(),
            ..KeyedState::default()
        }
    }

    /// Number of committed keys, and the bytes of their keys and of their values.
    pub fn committed_sizes(&self) -> (usize, usize, usize) {
        self.entries()
            .fold((0, 0, 0), |(n, k, v), (key, value, _)| {
                (n + 1, k + key.len(), v + value.len())
            })
    }

    /// Number of committed keys.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no key is committed.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Number of keys put or deleted since the last [`KeyedState::take_changes`] (an upper
    /// bound: a key changed twice may count twice).
    pub fn changed_keys(&self) -> usize {
        self.changed.len()
    }

    /// Bytes of the base (the whole state as of the last base checkpoint) and number of keys put
    /// or deleted since it (held in memory besides the base).
    pub fn base_and_overlay(&self) -> (usize, usize) {
        let frozen = self.below.frozen.as_deref().map_or(0, HashMap::len);
        (self.below.base.size(), self.overlay.len() + frozen)
    }

    /// What changed since the last call of this (every key put, with its value and expiry, and
    /// every key deleted or expired), in the changes format: a version byte, then records `1,
    /// key, expiry, value` (a put) or `2, key` (a delete), each key and value a u32 LE length and
    /// its bytes, the expiry an i64 LE. Applied in order to the state they follow
    /// ([`KeyedState::apply_changes`]), they give this state.
    ///
    /// With `whole`, the whole committed state instead, as a base (the format of `state_base.rs`),
    /// which the state keeps as its own base from then on.
    pub fn take_changes(&mut self, whole: bool) -> Bytes {
        if whole {
            return self.take_base();
        }
        let mut out = vec![CHANGES_VERSION];
        for key in std::mem::take(&mut self.changed) {
            match self.overlay.get_mut(&key) {
                Some(slot) if slot.changed => {
                    slot.changed = false;
                    match &slot.value {
                        Some(value) => push_put(&mut out, &key, value, slot.expires_after),
                        None => {
                            out.push(TAG_DELETE);
                            push_part(&mut out, &key);
                        }
                    }
                }
                // Written already (the key was listed twice).
                Some(_) => {}
                None => {
                    out.push(TAG_DELETE);
                    push_part(&mut out, &key);
                }
            }
        }
        Bytes::from(out)
    }

    /// The whole state as a new base, merging the base and the overlay; the state keeps it.
    fn take_base(&mut self) -> Bytes {
        let write = self.begin_base();
        let bytes = write.write();
        self.adopt_base(&write, bytes.clone());
        bytes
    }

    /// Starts a compaction at this cut: the overlay is frozen over the base, as the layers a
    /// new base is written from ([`BaseWrite::write`], on another thread), and writes from here
    /// on go to a fresh overlay above them, as the next checkpoint's changes.
    pub fn begin_base(&mut self) -> BaseWrite {
        self.changed.clear();
        // Frozen as it is (its slots' `changed` flags are not read again); the fresh overlay
        // starts small rather than at the largest the old one grew to.
        let overlay = std::mem::take(&mut self.overlay);
        let frozen = match self.below.frozen.take() {
            // A base began earlier and was not taken (its checkpoint failed): the two overlays
            // merge, the newer's keys over the older's.
            Some(mut earlier) => {
                Arc::make_mut(&mut earlier).extend(overlay);
                earlier
            }
            None => Arc::new(overlay),
        };
        self.below.frozen = Some(frozen);
        BaseWrite {
            below: self.below.clone(),
            spill: self.spill.clone(),
        }
    }

    /// Takes `bytes`, the base `write` wrote, in place of the layers it was written from, if the
    /// state still stands on them (a state restored or replaced since keeps its own). Returns
    /// what it let go of, for the caller to drop where a long drop does no harm.
    pub fn adopt_base(&mut self, write: &BaseWrite, bytes: Bytes) -> Option<ReplacedLayers> {
        let same = match (&self.below.frozen, &write.below.frozen) {
            (Some(ours), Some(written)) => Arc::ptr_eq(ours, written),
            _ => false,
        };
        if !same {
            return None;
        }
        // A whole state too large for a base came in the changes format: the layers stay.
        let base = Base::parse(bytes).ok()?;
        Some(ReplacedLayers {
            _layers: std::mem::replace(&mut self.below, Below::of(base)),
        })
    }

    /// Spills bases larger than `spill.above_bytes` to `spill.dir` from the next one on (see
    /// [`StateSpill`]); `None`: bases stay in memory.
    pub fn set_spill(&mut self, spill: Option<Arc<StateSpill>>) {
        self.spill = spill;
    }

    /// Applies a base or changes [`KeyedState::take_changes`] wrote, to the committed state
    /// (restoring it: nothing counts as changed since a checkpoint). A base applied to an empty
    /// state becomes its base as it is, read in place.
    pub fn apply_changes(&mut self, bytes: Bytes) -> Result<(), SnapshotError> {
        if bytes.first() == Some(&BASE_VERSION) {
            let base = Base::parse(bytes)?;
            self.ttl.earliest = self.ttl.earliest.min(base.earliest());
            if self.live == 0 && self.overlay.is_empty() {
                self.live = base.len();
                self.below = Below::of(base);
            } else {
                for (key, value, expiry) in base.entries() {
                    self.put_committed(key.to_vec(), value.to_vec(), expiry, false);
                }
            }
            return Ok(());
        }
        let mut r = ChangeReader {
            bytes: &bytes,
            offset: 0,
        };
        if r.take(1, "the changes format version")? != [CHANGES_VERSION] {
            return Err(SnapshotError {
                offset: 0,
                what: "changes format version 1 or a base",
            });
        }
        // Sized once rather than grown (and rehashed) key by key: a restart applies every delta
        // since the base (hundreds of thousands of keys at 100,000 events/s), and a whole state
        // in the changes format (written before bases were) holds every key.
        self.overlay.reserve(count_changes(&bytes));
        while r.offset < bytes.len() {
            let tag = r.take(1, "a change")?[0];
            let key = r.part("a key")?;
            match tag {
                TAG_PUT => {
                    let expires_after = r.i64("an expiry")?;
                    let value = r.part("a value")?.to_vec();
                    self.ttl.earliest = self.ttl.earliest.min(expires_after);
                    self.put_committed(key.to_vec(), value, expires_after, false);
                }
                TAG_DELETE => self.delete_committed(key.to_vec(), false),
                _ => {
                    return Err(SnapshotError {
                        offset: r.offset - key.len() - 5,
                        what: "a put or a delete",
                    });
                }
            }
        }
        Ok(())
    }

    /// The state a base and the changes after it give, in order ([`KeyedState::take_changes`]).
    pub fn from_changes(parts: impl IntoIterator<Item = Bytes>) -> Result<Self, SnapshotError> {
        let mut state = KeyedState::default();
        for part in parts {
            state.apply_changes(part)?;
        }
        Ok(state)
    }

    /// The committed state as bytes, keys sorted so that equal states give equal snapshots: a
    /// sequence of (u32 LE key length, key, u32 LE value length, value) when no key expires (the
    /// format snapshots always had), else `ff ff ff ff` and the whole state in the changes format.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut entries: Vec<_> = self.entries().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        if entries.iter().any(|(_, _, expiry)| *expiry != NEVER) {
            let mut out = CHANGES_MARKER.to_vec();
            out.push(CHANGES_VERSION);
            for (key, value, expiry) in entries {
                push_put(&mut out, key, value, expiry);
            }
            return out;
        }
        let size: usize = entries.iter().map(|(k, v, _)| 8 + k.len() + v.len()).sum();
        let mut out = Vec::with_capacity(size);
        for (key, value, _) in entries {
            push_part(&mut out, key);
            push_part(&mut out, value);
        }
        out
    }

    /// State read back from [`KeyedState::snapshot`] bytes.
    pub fn restore(bytes: &[u8]) -> Result<Self, SnapshotError> {
        if let Some(changes) = bytes.strip_prefix(&CHANGES_MARKER[..]) {
            return Self::from_changes([Bytes::copy_from_slice(changes)]).map_err(|e| {
                SnapshotError {
                    offset: e.offset + CHANGES_MARKER.len(),
                    what: e.what,
                }
            });
        }
        let mut state = KeyedState::default();
        let mut r = ChangeReader { bytes, offset: 0 };
        while r.offset < bytes.len() {
            let key = r.part("a key")?.to_vec();
            let value = r.part("a value")?.to_vec();
            state.put_committed(key, value, NEVER, false);
        }
        Ok(state)
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_writes_are_visible_then_committed_or_discarded() {
        let mut state = KeyedState::default();
        state.put(b"a".to_vec(), b"1".to_vec());
        assert_eq!(state.get(b"a"), Some(&b"1"[..]));
        state.rollback();
        assert_eq!(state.get(b"a"), None);
        state.put(b"a".to_vec(), b"1".to_vec());
        state.put(b"b".to_vec(), b"2".to_vec());
        state.commit();
        state.delete(b"a".to_vec());
        assert_eq!(state.get(b"a"), None);
        state.rollback();
        assert_eq!(state.get(b"a"), Some(&b"1"[..]));
        assert_eq!(state.len(), 2);
    }

    #[test]
    fn remembers_the_keys_of_the_last_committing_call() {
        let mut state = KeyedState::default();
        state.put(b"a".to_vec(), b"1".to_vec());
        state.put(b"b".to_vec(), b"2".to_vec());
        state.commit();
        let mut recent: Vec<&[u8]> = state.recent_keys().collect();
        recent.sort_unstable();
        assert_eq!(recent, [&b"a"[..], &b"b"[..]]);
        // A call that writes nothing keeps them; one that writes replaces them.
        state.commit();
        assert_eq!(state.recent_keys().count(), 2);
        state.delete(b"a".to_vec());
        state.rollback();
        state.commit();
        assert_eq!(
            state.recent_keys().count(),
            2,
            "a rolled-back write is not recent"
        );
        state.delete(b"b".to_vec());
        state.commit();
        assert_eq!(state.recent_keys().collect::<Vec<_>>(), [&b"b"[..]]);
        assert_eq!(state.committed(b"b"), None);
        assert_eq!(state.committed(b"a"), Some(&b"1"[..]));
    }

    #[test]
    fn only_the_instance_that_claimed_the_cache_keeps_it() {
        let mut state = KeyedState::default();
        assert!(!state.claim_cache(1), "a new state has no cache holder");
        assert!(state.claim_cache(1));
        assert!(!state.claim_cache(2), "another instance took it");
        assert!(!state.claim_cache(1), "the first instance must start again");
        state.put(b"a".to_vec(), b"1".to_vec());
        state.rollback();
        assert!(
            !state.claim_cache(1),
            "a rolled-back call may have cached what it wrote"
        );
    }

    #[test]
    fn snapshot_round_trips_and_detects_truncation() {
        let mut state = KeyedState::default();
        for i in 0..100u32 {
            state.put(format!("device-{i}").into_bytes(), i.to_le_bytes().to_vec());
        }
        state.put(Vec::new(), Vec::new());
        state.commit();
        let bytes = state.snapshot();
        let restored = KeyedState::restore(&bytes).expect("restore");
        assert_eq!(restored, state);
        assert_eq!(restored.snapshot(), bytes, "snapshots are deterministic");
        let err = KeyedState::restore(&bytes[..bytes.len() - 1]).expect_err("truncated");
        assert!(err.to_string().contains("corrupt"));
    }

    fn put(state: &mut KeyedState, key: &str, value: &str) {
        state.put(key.as_bytes().to_vec(), value.as_bytes().to_vec());
    }

    #[test]
    fn changes_hold_only_what_was_put_or_deleted_and_rebuild_the_state() {
        let mut state = KeyedState::default();
        for i in 0..50 {
            put(&mut state, &format!("k{i}"), "v");
        }
        state.commit();
        let base = state.take_changes(true);
        assert_eq!(state.changed_keys(), 0);
        // Nothing changed: an empty delta.
        assert_eq!(state.take_changes(false), &[CHANGES_VERSION][..]);
        put(&mut state, "k1", "w");
        put(&mut state, "k1", "x");
        state.delete(b"k2".to_vec());
        put(&mut state, "new", "n");
        state.commit();
        put(&mut state, "k1", "y");
        state.commit();
        state.delete(b"new".to_vec());
        state.commit();
        put(&mut state, "k3", "rolled back");
        state.rollback();
        let delta = state.take_changes(false);
        assert!(
            delta.len() < base.len() / 10,
            "{} of {}",
            delta.len(),
            base.len()
        );
        let rebuilt = KeyedState::from_changes([base.clone(), delta.clone()]).expect("ok");
        assert_eq!(rebuilt, state);
        assert_eq!(rebuilt.committed(b"k1"), Some(&b"y"[..]));
        assert_eq!(rebuilt.committed(b"k2"), None);
        assert_eq!(rebuilt.committed(b"new"), None);
        // Applying a delta twice gives the same state (a put or delete says what a key is).
        let twice =
            KeyedState::from_changes([base.clone(), delta.clone(), delta.clone()]).expect("ok");
        assert_eq!(twice, state);
        // A torn delta is refused rather than half applied silently.
        let err = KeyedState::from_changes([base.clone(), delta.slice(..delta.len() - 1)])
            .expect_err("torn");
        assert!(err.to_string().contains("corrupt"), "{err}");
    }

    #[test]
    fn keys_expire_when_the_watermark_passes_their_last_write_plus_ttl() {
        let mut state = KeyedState::default();
        state.set_stage_ttl(Some(300_000));
        state.advance_write_time(1_000_000);
        put(&mut state, "old", "1");
        state.commit();
        state.advance_write_time(1_200_000);
        put(&mut state, "young", "2");
        // The plugin's own time-to-live for one write.
        state.set_call_ttl(10_000);
        put(&mut state, "short", "3");
        state.commit();
        put(&mut state, "after-commit", "4");
        state.commit();
        state.take_changes(true);
        assert_eq!(state.expire(1_210_000), 0, "exactly at the expiry: kept");
        assert_eq!(state.committed(b"short"), Some(&b"3"[..]));
        assert_eq!(state.expire(1_300_001), 2, "short and old expire");
        assert_eq!(state.committed(b"old"), None);
        assert_eq!(state.committed(b"short"), None);
        assert_eq!(state.committed(b"young"), Some(&b"2"[..]));
        assert!(!state.claim_cache(7), "caches start again after an expiry");
        // Expired keys leave the checkpoints as deletes, and snapshots keep expiries.
        let delta = state.take_changes(false);
        let mut restored = KeyedState::default();
        put(&mut restored, "old", "1");
        restored.commit();
        restored.apply_changes(delta).expect("apply");
        assert_eq!(restored.committed(b"old"), None);
        let snapshot = state.snapshot();
        let back = KeyedState::restore(&snapshot).expect("restore");
        assert_eq!(back, state);
        state.advance_write_time(1_320_000);
        state.set_call_ttl(1);
        put(&mut state, "blink", "5");
        state.commit();
        assert_eq!(state.expire(1_330_000), 0, "swept at most every ttl/8");
        assert_eq!(state.expire(1_340_000), 1);
        assert_eq!(state.expire(1_500_001), 2);
        assert!(state.is_empty());
    }

    /// A base with its overlay, through puts, deletes, rollbacks, expiry, deltas and bases
    /// (compactions, written at once or beside further writes, taken or failed), holds what a
    /// plain map does, and its checkpoint files restore it.
    #[test]
    fn base_and_overlay_hold_what_a_plain_map_does_and_restore_from_their_files() {
        base_and_overlay_match_a_plain_map(None);
    }

    /// The same with every base spilled: written to an unlinked file of the spill directory and
    /// looked up where it is mapped.
    #[test]
    fn spilled_bases_hold_what_a_plain_map_does_and_leave_no_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spill_dir = dir.path().join("spill");
        let state = base_and_overlay_match_a_plain_map(Some(Arc::new(StateSpill {
            dir: spill_dir.clone(),
            above_bytes: 0,
        })));
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        let spill_path = spill_dir.display().to_string();
        assert!(
            maps.lines()
                .any(|l| l.contains(&spill_path) && l.ends_with("(deleted)")),
            "the state's base is a mapped spill file"
        );
        let listed = std::fs::read_dir(&spill_dir).expect("spill dir").count();
        assert_eq!(listed, 0, "spill files are unlinked");
        drop(state);
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        assert!(
            !maps.lines().any(|l| l.contains(&spill_path)),
            "a dropped state unmaps its base"
        );
    }

    /// Drives a state through random puts, deletes, rollbacks, expiry, deltas and bases, checking
    /// it against a plain map and its checkpoint files against it; returns it.
    fn base_and_overlay_match_a_plain_map(spill: Option<Arc<StateSpill>>) -> KeyedState {
        use std::collections::BTreeMap;
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut state = KeyedState::default();
        state.set_spill(spill);
        state.set_stage_ttl(Some(8_000));
        state.advance_write_time(0);
        let mut model: BTreeMap<Vec<u8>, (Vec<u8>, i64)> = BTreeMap::new();
        let mut call: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let mut files: Vec<Bytes> = Vec::new();
        // A base being written beside the state, and whether the next checkpoint must be one.
        let mut writing: Option<BaseWrite> = None;
        let mut must_base = false;
        let mut time = 0i64;
        let key = |k: u64| format!("key-{k}").into_bytes();
        for step in 0..6_000u64 {
            match next(100) {
                0..=44 => {
                    let (k, v) = (key(next(400)), format!("v{step}").into_bytes());
                    state.put(k.clone(), v.clone());
                    call.push((k, Some(v)));
                }
                45..=59 => {
                    let k = key(next(400));
                    state.delete(k.clone());
                    call.push((k, None));
                }
                60..=79 => {
                    state.commit();
                    for (k, v) in call.drain(..) {
                        match v {
                            Some(v) => {
                                model.insert(k, (v, time + 8_000));
                            }
                            None => {
                                model.remove(&k);
                            }
                        }
                    }
                    time += i64::try_from(next(300)).expect("small");
                    state.advance_write_time(time);
                }
                80..=84 => {
                    state.rollback();
                    call.clear();
                }
                85..=89 => {
                    let watermark = time - 6_000;
                    let expired = state.expire(watermark);
                    if expired > 0 {
                        let before = model.len();
                        model.retain(|_, (_, expiry)| watermark <= *expiry);
                        assert_eq!(before - model.len(), expired, "step {step}");
                    }
                }
                90..=97 => {
                    // A checkpoint. The one before it, if its base was being written beside
                    // (while the steps between wrote over the frozen layers), ends first: saved
                    // and taken by the state, or failed, which leaves the state on its layers
                    // and makes this one a base.
                    if let Some(write) = writing.take() {
                        let bytes = write.write();
                        if next(4) == 0 {
                            must_base = true;
                        } else {
                            assert!(state.adopt_base(&write, bytes.clone()).is_some());
                            files = vec![bytes];
                        }
                    }
                    // A base now and then, written at once or beside; else a delta.
                    let whole = must_base || files.is_empty() || next(5) == 0;
                    must_base = false;
                    if whole && next(2) == 0 {
                        writing = Some(state.begin_base());
                    } else {
                        let bytes = state.take_changes(whole);
                        if whole {
                            files.clear();
                        }
                        files.push(bytes);
                    }
                }
                _ => {
                    if writing.is_none() && !files.is_empty() && state.changed_keys() == 0 {
                        let restored =
                            KeyedState::from_changes(files.iter().cloned()).expect("restores");
                        let mut committed = state.clone();
                        committed.rollback();
                        assert!(restored == committed, "step {step}");
                    }
                }
            }
            if step % 97 == 0 {
                for k in 0..400 {
                    let k = key(k);
                    let expected = model.get(&k).map(|(v, _)| v.as_slice());
                    assert_eq!(state.committed(&k), expected, "step {step}");
                }
                assert_eq!(state.len(), model.len(), "step {step}");
                assert_eq!(state.committed_entries().count(), model.len());
                let mut snapshot = KeyedState::restore(&state.snapshot()).expect("snapshot");
                let mut committed = state.clone();
                committed.rollback();
                snapshot.rollback();
                assert!(snapshot == committed, "step {step}");
            }
        }
        let (base_bytes, _) = state.base_and_overlay();
        assert!(base_bytes > 0, "bases were taken");
        state
    }
}
