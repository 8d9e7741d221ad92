//! Keyed state owned by the host on behalf of one stage in one partition.

use std::collections::HashMap;

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
    committed: HashMap<Vec<u8>, Vec<u8>>,
    pending: HashMap<Vec<u8>, Option<Vec<u8>>>,
    recent: RecentKeys,
    /// The instance whose cache matches this state (0: none).
    cache_holder: u64,
}

/// Two states are equal when they hold the same values; which keys were written last and which
/// instance caches them are hints, not state.
impl PartialEq for KeyedState {
    fn eq(&self, other: &Self) -> bool {
        self.committed == other.committed && self.pending == other.pending
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

impl KeyedState {
    /// The value under `key`, seeing this call's pending writes.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        match self.pending.get(key) {
            Some(pending) => pending.as_deref(),
            None => self.committed.get(key).map(Vec::as_slice),
        }
    }

    /// Stores `value` under `key` (pending until [`KeyedState::commit`]).
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.pending.insert(key, Some(value));
    }

    /// Removes `key` (pending until [`KeyedState::commit`]).
    pub fn delete(&mut self, key: Vec<u8>) {
        self.pending.insert(key, None);
    }

    /// Applies the pending writes.
    pub fn commit(&mut self) {
        if !self.pending.is_empty() {
            self.recent.clear();
        }
        for (key, value) in self.pending.drain() {
            self.recent.push(&key);
            match value {
                Some(value) => {
                    self.committed.insert(key, value);
                }
                None => {
                    self.committed.remove(&key);
                }
            }
        }
    }

    /// Forgets the pending writes. The instance that made them may have cached them: it no
    /// longer holds the state.
    pub fn rollback(&mut self) {
        self.pending.clear();
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
            .map(|(key, value)| (key.as_slice(), value.as_slice()))
    }

    /// The committed value under `key` (not seeing pending writes).
    pub fn committed(&self, key: &[u8]) -> Option<&[u8]> {
        self.committed.get(key).map(Vec::as_slice)
    }

    /// A copy of the committed state that no instance caches.
    pub fn detached_copy(&self) -> KeyedState {
        KeyedState {
            committed: self.committed.clone(),
            ..KeyedState::default()
        }
    }

    /// Number of committed keys, and the bytes of their keys and of their values.
    pub fn committed_sizes(&self) -> (usize, usize, usize) {
        // Reads the lengths in the map's own table, without visiting the keys and values.
        self.committed
            .iter()
            .fold((0, 0, 0), |(n, k, v), (key, value)| {
                (n + 1, k + key.len(), v + value.len())
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

    /// The committed state as bytes, keys sorted so that equal states give equal snapshots:
    /// a sequence of (u32 LE key length, key, u32 LE value length, value).
    pub fn snapshot(&self) -> Vec<u8> {
        let mut entries: Vec<_> = self.committed.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let size: usize = entries.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
        let mut out = Vec::with_capacity(size);
        for (key, value) in entries {
            for part in [key, value] {
                // Keys and values come through the WIT boundary, whose lists are u32-sized.
                let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(part);
            }
        }
        out
    }

    /// State read back from [`KeyedState::snapshot`] bytes.
    pub fn restore(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let mut committed = HashMap::new();
        let mut offset = 0;
        let take = |offset: &mut usize, what: &'static str| -> Result<Vec<u8>, SnapshotError> {
            let header = bytes.get(*offset..*offset + 4).ok_or(SnapshotError {
                offset: *offset,
                what,
            })?;
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            let start = *offset + 4;
            let part = bytes.get(start..start + len).ok_or(SnapshotError {
                offset: start,
                what,
            })?;
            *offset = start + len;
            Ok(part.to_vec())
        };
        while offset < bytes.len() {
            let key = take(&mut offset, "a key")?;
            let value = take(&mut offset, "a value")?;
            committed.insert(key, value);
        }
        Ok(KeyedState {
            committed,
            pending: HashMap::new(),
            recent: RecentKeys::default(),
            cache_holder: 0,
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
}
