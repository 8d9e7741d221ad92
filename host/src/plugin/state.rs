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

use std::collections::HashMap;

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
    committed: HashMap<Vec<u8>, Stored, Hasher>,
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
}

/// A value written during a call, with the time-to-live it was written with (`None`: the
/// stage's).
type PendingPut = (Vec<u8>, Option<i64>);

/// A committed value with its expiry.
#[derive(Debug, Clone, PartialEq)]
struct Stored {
    value: Vec<u8>,
    /// Event time after which the watermark expires the key ([`NEVER`]: it does not expire).
    expires_after: i64,
    /// Whether it was put since the last [`KeyedState::take_changes`].
    changed: bool,
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
            && self.committed.len() == other.committed.len()
            && self.committed.iter().all(|(key, stored)| {
                other.committed.get(key).is_some_and(|theirs| {
                    theirs.value == stored.value && theirs.expires_after == stored.expires_after
                })
            })
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

fn push_put(out: &mut Vec<u8>, key: &[u8], stored: &Stored) {
    out.push(TAG_PUT);
    push_part(out, key);
    out.extend_from_slice(&stored.expires_after.to_le_bytes());
    push_part(out, &stored.value);
}

impl KeyedState {
    /// The value under `key`, seeing this call's pending writes.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        match self.pending.get(key) {
            Some(pending) => pending.as_ref().map(|(value, _)| value.as_slice()),
            None => self.committed.get(key).map(|s| s.value.as_slice()),
        }
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
        let before = self.committed.len();
        let mut earliest = NEVER;
        let changed = &mut self.changed;
        self.committed.retain(|key, stored| {
            if watermark > stored.expires_after {
                if !stored.changed {
                    changed.push(key.clone());
                }
                false
            } else {
                earliest = earliest.min(stored.expires_after);
                true
            }
        });
        self.ttl.earliest = earliest;
        let expired = before - self.committed.len();
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
                    self.put_committed(key, value, expires_after);
                }
                None => {
                    if let Some(stored) = self.committed.remove(&key)
                        && !stored.changed
                    {
                        self.changed.push(key);
                    }
                }
            }
        }
        self.pending = pending;
    }

    /// Stores a committed value, remembering that the key changed.
    fn put_committed(&mut self, key: Vec<u8>, value: Vec<u8>, expires_after: i64) {
        match self.committed.get_mut(&key) {
            Some(stored) => {
                if !stored.changed {
                    self.changed.push(key);
                }
                *stored = Stored {
                    value,
                    expires_after,
                    changed: true,
                };
            }
            None => {
                self.changed.push(key.clone());
                self.committed.insert(
                    key,
                    Stored {
                        value,
                        expires_after,
                        changed: true,
                    },
                );
            }
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
        self.committed
            .iter()
            .map(|(key, stored)| (key.as_slice(), stored.value.as_slice()))
    }

    /// The committed value under `key` (not seeing pending writes).
    pub fn committed(&self, key: &[u8]) -> Option<&[u8]> {
        self.committed.get(key).map(|s| s.value.as_slice())
    }

    /// A copy of the committed state that no instance caches.
    pub fn detached_copy(&self) -> KeyedState {
        KeyedState {
            committed: self.committed.clone(),
            ttl: self.ttl.clone(),
            ..KeyedState::default()
        }
    }

    /// Number of committed keys, and the bytes of their keys and of their values.
    pub fn committed_sizes(&self) -> (usize, usize, usize) {
        self.committed
            .iter()
            .fold((0, 0, 0), |(n, k, v), (key, stored)| {
                (n + 1, k + key.len(), v + stored.value.len())
            })
    }

    /// Number of committed keys.
    pub fn len(&self) -> usize {
        self.committed.len()
    }

    /// Whether no key is committed.
    pub fn is_empty(&self) -> bool {
        self.committed.is_empty()
    }

    /// Number of keys put or deleted since the last [`KeyedState::take_changes`] (an upper
    /// bound: a key changed twice may count twice).
    pub fn changed_keys(&self) -> usize {
        self.changed.len()
    }

    /// What changed since the last call of this (every key put, with its value and expiry, and
    /// every key deleted or expired), or with `whole` the whole committed state, in the changes
    /// format: a version byte, then records `1, key, expiry, value` (a put) or `2, key` (a
    /// delete), each key and value a u32 LE length and its bytes, the expiry an i64 LE. Applied
    /// in order to the state they follow ([`KeyedState::apply_changes`]), they give this state.
    pub fn take_changes(&mut self, whole: bool) -> Vec<u8> {
        let mut out = vec![CHANGES_VERSION];
        if whole {
            self.changed.clear();
            for (key, stored) in &mut self.committed {
                stored.changed = false;
                push_put(&mut out, key, stored);
            }
            return out;
        }
        for key in std::mem::take(&mut self.changed) {
            match self.committed.get_mut(&key) {
                Some(stored) if stored.changed => {
                    stored.changed = false;
                    push_put(&mut out, &key, stored);
                }
                // Written already (the key was listed twice).
                Some(_) => {}
                None => {
                    out.push(TAG_DELETE);
                    push_part(&mut out, &key);
                }
            }
        }
        out
    }

    /// Applies changes [`KeyedState::take_changes`] wrote, to the committed state (restoring
    /// it: nothing counts as changed since a checkpoint).
    pub fn apply_changes(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        let mut r = ChangeReader { bytes, offset: 0 };
        if r.take(1, "the changes format version")? != [CHANGES_VERSION] {
            return Err(SnapshotError {
                offset: 0,
                what: "changes format version 1",
            });
        }
        if self.committed.is_empty() {
            // A base: sized once rather than grown (and rehashed) key by key.
            self.committed.reserve(count_changes(bytes));
        }
        while r.offset < bytes.len() {
            let tag = r.take(1, "a change")?[0];
            let key = r.part("a key")?;
            match tag {
                TAG_PUT => {
                    let expires_after = r.i64("an expiry")?;
                    let value = r.part("a value")?.to_vec();
                    self.ttl.earliest = self.ttl.earliest.min(expires_after);
                    self.committed.insert(
                        key.to_vec(),
                        Stored {
                            value,
                            expires_after,
                            changed: false,
                        },
                    );
                }
                TAG_DELETE => {
                    self.committed.remove(key);
                }
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
    pub fn from_changes<'a>(
        parts: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Self, SnapshotError> {
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
        let mut entries: Vec<_> = self.committed.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        if entries.iter().any(|(_, s)| s.expires_after != NEVER) {
            let mut out = CHANGES_MARKER.to_vec();
            out.push(CHANGES_VERSION);
            for (key, stored) in entries {
                push_put(&mut out, key, stored);
            }
            return out;
        }
        let size: usize = entries
            .iter()
            .map(|(k, s)| 8 + k.len() + s.value.len())
            .sum();
        let mut out = Vec::with_capacity(size);
        for (key, stored) in entries {
            push_part(&mut out, key);
            push_part(&mut out, &stored.value);
        }
        out
    }

    /// State read back from [`KeyedState::snapshot`] bytes.
    pub fn restore(bytes: &[u8]) -> Result<Self, SnapshotError> {
        if let Some(changes) = bytes.strip_prefix(&CHANGES_MARKER[..]) {
            return Self::from_changes([changes]).map_err(|e| SnapshotError {
                offset: e.offset + CHANGES_MARKER.len(),
                what: e.what,
            });
        }
        let mut committed = HashMap::default();
        let mut r = ChangeReader { bytes, offset: 0 };
        while r.offset < bytes.len() {
            let key = r.part("a key")?.to_vec();
            let value = r.part("a value")?.to_vec();
            committed.insert(
                key,
                Stored {
                    value,
                    expires_after: NEVER,
                    changed: false,
                },
            );
        }
        Ok(KeyedState {
            committed,
            ..KeyedState::default()
        })
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
        assert_eq!(state.take_changes(false), [CHANGES_VERSION]);
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
        let rebuilt = KeyedState::from_changes([base.as_slice(), delta.as_slice()]).expect("ok");
        assert_eq!(rebuilt, state);
        assert_eq!(rebuilt.committed(b"k1"), Some(&b"y"[..]));
        assert_eq!(rebuilt.committed(b"k2"), None);
        assert_eq!(rebuilt.committed(b"new"), None);
        // Applying a delta twice gives the same state (a put or delete says what a key is).
        let twice = KeyedState::from_changes([base.as_slice(), delta.as_slice(), delta.as_slice()])
            .expect("ok");
        assert_eq!(twice, state);
        // A torn delta is refused rather than half applied silently.
        let err = KeyedState::from_changes([base.as_slice(), &delta[..delta.len() - 1]])
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
        restored.apply_changes(&delta).expect("apply");
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
}
