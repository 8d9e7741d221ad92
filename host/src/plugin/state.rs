//! Keyed state owned by the host on behalf of one stage in one partition.

use std::collections::HashMap;

/// Key/value state with call-level transactions: writes made during a plugin call are pending
/// until the call returns ([`KeyedState::commit`]); a trap discards them ([`KeyedState::rollback`]).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct KeyedState {
    committed: HashMap<Vec<u8>, Vec<u8>>,
    pending: HashMap<Vec<u8>, Option<Vec<u8>>>,
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
        for (key, value) in self.pending.drain() {
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

    /// Forgets the pending writes.
    pub fn rollback(&mut self) {
        self.pending.clear();
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
