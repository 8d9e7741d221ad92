//! The *base* of a keyed state: its whole committed state as of a checkpoint, in one buffer that
//! is looked up in place (a hash table of offsets after the entries), so that restoring a state
//! from its checkpoint reads one file and rebuilds nothing, however many keys it holds.
//!
//! Layout (integers little-endian):
//!
//! ```text
//! header   u8 version (2), 7 bytes "WKSBASE", u64 entries, i64 earliest expiry,
//!          u64 hash seed, u64 end of the entries (= start of the table), u64 table slots
//! entries  per key: u32 key length, key, i64 expiry, u32 value length, value
//! table    u64 per slot: empty (all ones), or the top 24 bits of the key's hash and the byte
//!          offset of its entry (40 bits); open addressing with linear probing, at most 70% full
//! ```
//!
//! The hash ([`key_hash`]) is defined here, not taken from a crate, so that a base written by one
//! version of Weir is read by the next; its seed is random per file, so keys that come from
//! events cannot be chosen to collide.

use bytes::Bytes;

use super::state::SnapshotError;

/// The first byte of a base (the changes format starts with its own version, 1).
pub(super) const BASE_VERSION: u8 = 2;
const MAGIC: &[u8; 7] = b"WKSBASE";
const HEADER_LEN: usize = 48;
/// An empty slot of the table.
const EMPTY: u64 = u64::MAX;
/// Bits of a slot holding the entry's offset: a base's entries end before 1 TiB.
const OFFSET_BITS: u32 = 40;
const OFFSET_MASK: u64 = (1 << OFFSET_BITS) - 1;

/// One entry: key, value and expiry.
pub(super) type Entry<'a> = (&'a [u8], &'a [u8], i64);

/// A base, read in place.
#[derive(Debug, Clone)]
pub(super) struct Base {
    bytes: Bytes,
    count: usize,
    earliest: i64,
    seed: u64,
    entries_end: usize,
    /// Slots of the table minus one (slots are a power of two); unused when `count` is 0.
    mask: usize,
}

impl Default for Base {
    fn default() -> Self {
        Base {
            bytes: Bytes::new(),
            count: 0,
            earliest: i64::MAX,
            seed: 0,
            entries_end: HEADER_LEN,
            mask: 0,
        }
    }
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let part = bytes.get(at..at.checked_add(8)?)?;
    let mut array = [0u8; 8];
    array.copy_from_slice(part);
    Some(u64::from_le_bytes(array))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<usize> {
    let part = bytes.get(at..at.checked_add(4)?)?;
    let mut array = [0u8; 4];
    array.copy_from_slice(part);
    Some(u32::from_le_bytes(array) as usize)
}

fn corrupt(offset: usize, what: &'static str) -> SnapshotError {
    SnapshotError { offset, what }
}

impl Base {
    /// Reads the header of a base; the entries are read when looked up.
    pub(super) fn parse(bytes: Bytes) -> Result<Self, SnapshotError> {
        if bytes.len() < HEADER_LEN
            || bytes.first() != Some(&BASE_VERSION)
            || bytes.get(1..8) != Some(&MAGIC[..])
        {
            return Err(corrupt(0, "a keyed state base header"));
        }
        let field = |at: usize| u64_at(&bytes, at).unwrap_or_default();
        let count = usize::try_from(field(8)).map_err(|_| corrupt(8, "an entry count"))?;
        let earliest = field(16) as i64;
        let seed = field(24);
        let entries_end = usize::try_from(field(32))
            .ok()
            .filter(|&end| end >= HEADER_LEN && end <= bytes.len())
            .ok_or(corrupt(32, "the end of the entries"))?;
        let slots = usize::try_from(field(40))
            .ok()
            .filter(|&slots| {
                slots.is_power_of_two()
                    && slots > count
                    && slots
                        .checked_mul(8)
                        .and_then(|t| t.checked_add(entries_end))
                        == Some(bytes.len())
            })
            .ok_or(corrupt(40, "a table of the entries"))?;
        Ok(Base {
            bytes,
            count,
            earliest,
            seed,
            entries_end,
            mask: slots - 1,
        })
    }

    /// Number of keys.
    pub(super) fn len(&self) -> usize {
        self.count
    }

    /// The earliest expiry of its keys (a lower bound).
    pub(super) fn earliest(&self) -> i64 {
        self.earliest
    }

    /// Its bytes (what a checkpoint writes as the stage's base file).
    pub(super) fn size(&self) -> usize {
        self.bytes.len()
    }

    /// The entry at byte `at` and the offset of the next one.
    fn entry_at(&self, at: usize) -> Option<(Entry<'_>, usize)> {
        let bytes = self.bytes.get(..self.entries_end)?;
        let key_len = u32_at(bytes, at)?;
        let key_start = at + 4;
        let key = bytes.get(key_start..key_start.checked_add(key_len)?)?;
        let expiry_at = key_start + key_len;
        let expiry = u64_at(bytes, expiry_at)? as i64;
        let value_len = u32_at(bytes, expiry_at + 8)?;
        let value_start = expiry_at + 12;
        let value_end = value_start.checked_add(value_len)?;
        let value = bytes.get(value_start..value_end)?;
        Some(((key, value, expiry), value_end))
    }

    /// The entry of `key`.
    pub(super) fn get(&self, key: &[u8]) -> Option<Entry<'_>> {
        if self.count == 0 {
            return None;
        }
        let hash = key_hash(self.seed, key);
        let tag = hash >> OFFSET_BITS;
        let mut index = hash as usize & self.mask;
        for _ in 0..=self.mask {
            let slot = u64_at(&self.bytes, self.entries_end + index * 8)?;
            if slot == EMPTY {
                return None;
            }
            if slot >> OFFSET_BITS == tag
                && let Some((entry, _)) = self.entry_at((slot & OFFSET_MASK) as usize)
                && entry.0 == key
            {
                return Some(entry);
            }
            index = (index + 1) & self.mask;
        }
        None
    }

    /// Whether it holds `key`.
    #[cfg(test)]
    pub(super) fn contains(&self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    /// Every entry, in the order they were written.
    pub(super) fn entries(&self) -> impl Iterator<Item = Entry<'_>> {
        let mut at = HEADER_LEN;
        let mut left = self.count;
        std::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            let (entry, next) = self.entry_at(at)?;
            at = next;
            left -= 1;
            Some(entry)
        })
    }
}

/// A random seed for a new base's hash.
fn random_seed() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(crate::event::now_millis())
}

/// Writes `entries` (unique keys, at most `bound` of them) as a base; `None` when they do not fit
/// the format (entries past 1 TiB, or more than `bound`). `size_hint`: bytes of their keys and
/// values, to size the buffer once.
pub(super) fn write<'a>(
    entries: impl Iterator<Item = Entry<'a>>,
    bound: usize,
    size_hint: usize,
) -> Option<Vec<u8>> {
    let capacity = HEADER_LEN
        .saturating_add(size_hint)
        .saturating_add(bound.saturating_mul(16))
        .saturating_add(table_slots(bound)?.saturating_mul(8));
    let mut out = std::io::Cursor::new(Vec::with_capacity(capacity));
    // Writing to memory fails on no I/O.
    write_into(&mut out, entries, bound)
        .ok()?
        .then(|| out.into_inner())
}

/// Slots of the table of a base of at most `bound` keys: a power of two, at most 70% full.
fn table_slots(bound: usize) -> Option<usize> {
    (bound.max(1).checked_mul(10)? / 7 + 1).checked_next_power_of_two()
}

/// Writes `entries` (unique keys, at most `bound` of them) as a base to `out`, from where it
/// stands: the entries as they come (so a base larger than memory can go to a file), the table
/// after them, then the header at the start. `Ok(false)` when they do not fit the format (entries
/// past 1 TiB, or more than `bound`); what was written then is not a base.
pub(super) fn write_into<'a, W: std::io::Write + std::io::Seek>(
    out: &mut W,
    entries: impl Iterator<Item = Entry<'a>>,
    bound: usize,
) -> std::io::Result<bool> {
    let Some(slots) = table_slots(bound) else {
        return Ok(false);
    };
    let mask = slots - 1;
    let seed = random_seed();
    let mut table = vec![EMPTY; slots];
    let start = out.stream_position()?;
    out.write_all(&[0; HEADER_LEN])?;
    let mut offset = HEADER_LEN as u64;
    let mut count = 0usize;
    let mut earliest = i64::MAX;
    for (key, value, expiry) in entries {
        let (Ok(key_len), Ok(value_len)) = (u32::try_from(key.len()), u32::try_from(value.len()))
        else {
            return Ok(false);
        };
        if offset > OFFSET_MASK || count >= bound {
            return Ok(false);
        }
        out.write_all(&key_len.to_le_bytes())?;
        out.write_all(key)?;
        out.write_all(&expiry.to_le_bytes())?;
        out.write_all(&value_len.to_le_bytes())?;
        out.write_all(value)?;
        let hash = key_hash(seed, key);
        let mut index = hash as usize & mask;
        // The table has more slots than `bound`: an empty one is found.
        while table.get(index).is_some_and(|&slot| slot != EMPTY) {
            index = (index + 1) & mask;
        }
        if let Some(slot) = table.get_mut(index) {
            *slot = (hash >> OFFSET_BITS) << OFFSET_BITS | offset;
        }
        offset += 16 + key.len() as u64 + value.len() as u64;
        count += 1;
        earliest = earliest.min(expiry);
    }
    let entries_end = offset;
    // The table in pieces: one buffer of it whole would double its memory.
    let mut piece = Vec::with_capacity(64 * 1024);
    for chunk in table.chunks(8 * 1024) {
        piece.clear();
        for slot in chunk {
            piece.extend_from_slice(&slot.to_le_bytes());
        }
        out.write_all(&piece)?;
    }
    let end = out.stream_position()?;
    let mut header = [0u8; HEADER_LEN];
    header[0] = BASE_VERSION;
    header[1..8].copy_from_slice(MAGIC);
    header[8..16].copy_from_slice(&(count as u64).to_le_bytes());
    header[16..24].copy_from_slice(&earliest.to_le_bytes());
    header[24..32].copy_from_slice(&seed.to_le_bytes());
    header[32..40].copy_from_slice(&entries_end.to_le_bytes());
    header[40..48].copy_from_slice(&(slots as u64).to_le_bytes());
    out.seek(std::io::SeekFrom::Start(start))?;
    out.write_all(&header)?;
    out.seek(std::io::SeekFrom::Start(end))?;
    Ok(true)
}

/// The hash of a key in a base with `seed`: a multiply-fold over 8-byte words and a final mix.
/// Part of the format: changing it makes older bases unreadable.
fn key_hash(seed: u64, key: &[u8]) -> u64 {
    const MUL: u64 = 0x9e37_79b9_7f4a_7c15;
    const TAIL: u64 = 0xff51_afd7_ed55_8ccd;
    fn fold(a: u64, b: u64) -> u64 {
        let product = u128::from(a) * u128::from(b);
        (product as u64) ^ ((product >> 64) as u64)
    }
    let mut hash = seed ^ (key.len() as u64).wrapping_mul(MUL);
    let mut words = key.chunks_exact(8);
    for word in &mut words {
        let mut array = [0u8; 8];
        array.copy_from_slice(word);
        hash = fold(hash ^ u64::from_le_bytes(array), MUL);
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut array = [0u8; 8];
        array[..rest.len()].copy_from_slice(rest);
        hash = fold(hash ^ u64::from_le_bytes(array), TAIL);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base_of(entries: &[(&str, &str, i64)]) -> Base {
        let bytes = write(
            entries
                .iter()
                .map(|(k, v, e)| (k.as_bytes(), v.as_bytes(), *e)),
            entries.len(),
            0,
        )
        .expect("fits");
        Base::parse(Bytes::from(bytes)).expect("parses")
    }

    #[test]
    fn every_key_is_found_in_place_and_no_other() {
        let owned: Vec<(String, String, i64)> = (0..5_000)
            .map(|i| (format!("device-{i}"), format!("value {i}"), i64::from(i)))
            .collect();
        let entries: Vec<(&str, &str, i64)> = owned
            .iter()
            .map(|(k, v, e)| (k.as_str(), v.as_str(), *e))
            .collect();
        let base = base_of(&entries);
        assert_eq!(base.len(), 5_000);
        assert_eq!(base.earliest(), 0);
        for (k, v, e) in &entries {
            assert_eq!(
                base.get(k.as_bytes()),
                Some((k.as_bytes(), v.as_bytes(), *e))
            );
        }
        assert!(!base.contains(b"device-5000"));
        assert!(!base.contains(b""));
        assert_eq!(base.entries().count(), 5_000);
        // Empty keys and values are entries like any other.
        let small = base_of(&[("", "", 7), ("a", "", i64::MAX)]);
        assert_eq!(small.get(b""), Some((&b""[..], &b""[..], 7)));
        assert!(small.contains(b"a"));
        assert!(Base::default().get(b"a").is_none());
    }

    #[test]
    fn a_damaged_header_or_table_is_refused_and_damaged_entries_are_not_found() {
        let bytes = write([(&b"k"[..], &b"v"[..], 1)].into_iter(), 1, 0).expect("fits");
        assert!(Base::parse(Bytes::from(bytes[..bytes.len() - 1].to_vec())).is_err());
        let mut wrong = bytes.clone();
        wrong[1] = b'x';
        assert!(Base::parse(Bytes::from(wrong)).is_err());
        // A key length running past the entries: not found, and no panic.
        let mut long_key = bytes.clone();
        long_key[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let base = Base::parse(Bytes::from(long_key)).expect("the header is whole");
        assert!(base.get(b"k").is_none());
        assert_eq!(base.entries().count(), 0);
        // More entries than the bound: refused rather than overfilling the table.
        let too_many = [(&b"a"[..], &b""[..], 0), (&b"b"[..], &b""[..], 0)];
        assert!(write(too_many.into_iter(), 1, 0).is_none());
    }
}
