//! The packed columns of the plugin contract (`u32s`, `u64s`, `s64s`, `u16s`, `bools` in
//! `wit/plugin.wit`): numbers in a `list<u8>`, little-endian, a fixed width each. The SDK reads
//! and writes them for the plugin; this module is public for tests and tools that lay out a
//! batch by hand. Reads are bounds-checked: a number past a column's end is `None`.

/// Appends `value` to a `u32s` column.
pub fn push_u32(column: &mut Vec<u8>, value: u32) {
    column.extend_from_slice(&value.to_le_bytes());
}

/// Appends `value` to a `u64s` column.
pub fn push_u64(column: &mut Vec<u8>, value: u64) {
    column.extend_from_slice(&value.to_le_bytes());
}

/// Appends `value` to an `s64s` column.
pub fn push_s64(column: &mut Vec<u8>, value: i64) {
    column.extend_from_slice(&value.to_le_bytes());
}

/// Appends `value` to a `u16s` column.
pub fn push_u16(column: &mut Vec<u8>, value: u16) {
    column.extend_from_slice(&value.to_le_bytes());
}

/// Appends `value` to a `bools` column.
pub fn push_bool(column: &mut Vec<u8>, value: bool) {
    column.push(u8::from(value));
}

/// A `u32s` column of `values`.
pub fn u32_column(values: impl IntoIterator<Item = u32>) -> Vec<u8> {
    values.into_iter().flat_map(u32::to_le_bytes).collect()
}

/// The numbers of a `u32s` column (a trailing partial number is left out).
pub fn u32s(column: &[u8]) -> impl ExactSizeIterator<Item = u32> + Clone + '_ {
    column
        .chunks_exact(4)
        .map(|bytes| u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// How many numbers a `u32s` column holds (a trailing partial number is not counted).
pub fn u32_count(column: &[u8]) -> usize {
    column.len() / 4
}

/// Number `index` of a `u32s` column.
pub fn u32_at(column: &[u8], index: usize) -> Option<u32> {
    let bytes = column.get(index.checked_mul(4)?..)?.first_chunk::<4>()?;
    Some(u32::from_le_bytes(*bytes))
}

/// Number `index` of a `u64s` column.
pub fn u64_at(column: &[u8], index: usize) -> Option<u64> {
    let bytes = column.get(index.checked_mul(8)?..)?.first_chunk::<8>()?;
    Some(u64::from_le_bytes(*bytes))
}

/// Number `index` of an `s64s` column.
pub fn s64_at(column: &[u8], index: usize) -> Option<i64> {
    let bytes = column.get(index.checked_mul(8)?..)?.first_chunk::<8>()?;
    Some(i64::from_le_bytes(*bytes))
}

/// Number `index` of a `u16s` column.
pub fn u16_at(column: &[u8], index: usize) -> Option<u16> {
    let bytes = column.get(index.checked_mul(2)?..)?.first_chunk::<2>()?;
    Some(u16::from_le_bytes(*bytes))
}

/// Flag `index` of a `bools` column (any byte but 0 is true).
pub fn bool_at(column: &[u8], index: usize) -> Option<bool> {
    column.get(index).map(|&byte| byte != 0)
}

/// One record of an `output-batch.emitted` column: event, target, payload end, forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmittedRecord {
    /// Index of the input event (or window, or pair) the record derives from.
    pub event: u32,
    /// Index into the output batch's targets.
    pub target: u32,
    /// End offset of the payload in the output batch's payloads.
    pub payload_end: u32,
    /// Whether the record is the input event's body unchanged.
    pub forward: bool,
}

/// Appends `record` to an `output-batch.emitted` column.
pub fn push_emitted(column: &mut Vec<u8>, record: EmittedRecord) {
    for number in [
        record.event,
        record.target,
        record.payload_end,
        u32::from(record.forward),
    ] {
        push_u32(column, number);
    }
}

/// Bytes of one record of an `output-batch.emitted` column (four `u32`s).
pub const EMITTED_RECORD_BYTES: usize = 16;

/// Whether an `output-batch.emitted` column holds a whole number of records.
pub fn whole_records(column: &[u8]) -> bool {
    column.len().is_multiple_of(EMITTED_RECORD_BYTES)
}

/// The records of an `output-batch.emitted` column (a trailing partial record is left out).
pub fn emitted(column: &[u8]) -> impl ExactSizeIterator<Item = EmittedRecord> + '_ {
    column.chunks_exact(EMITTED_RECORD_BYTES).map(|record| {
        let number = |at| u32_at(record, at).unwrap_or_default();
        EmittedRecord {
            event: number(0),
            target: number(1),
            payload_end: number(2),
            forward: number(3) != 0,
        }
    })
}

/// How many records an `output-batch.emitted` column holds.
pub fn emitted_count(column: &[u8]) -> usize {
    column.len() / EMITTED_RECORD_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_records_read_back_as_written() {
        let mut column = Vec::new();
        push_u32(&mut column, 0x0102_0304);
        push_u32(&mut column, u32::MAX);
        assert_eq!(column[..4], [4, 3, 2, 1], "little-endian");
        assert_eq!(u32s(&column).collect::<Vec<_>>(), [0x0102_0304, u32::MAX]);
        assert_eq!(
            (u32_at(&column, 1), u32_at(&column, 2)),
            (Some(u32::MAX), None)
        );
        assert_eq!(u32_column([7, 8]), [7, 0, 0, 0, 8, 0, 0, 0]);

        let mut wide = Vec::new();
        push_s64(&mut wide, -5);
        push_u64(&mut wide, 1 << 40);
        push_u16(&mut wide, 9);
        assert_eq!(s64_at(&wide, 0), Some(-5));
        assert_eq!(u64_at(&wide, 1), Some(1 << 40));
        assert_eq!(u16_at(&wide, 8), Some(9));
        assert_eq!(u64_at(&wide, 2), None);

        let records = [
            EmittedRecord {
                event: 1,
                target: 0,
                payload_end: 3,
                forward: false,
            },
            EmittedRecord {
                event: 2,
                target: 1,
                payload_end: 3,
                forward: true,
            },
        ];
        let mut column = Vec::new();
        for record in records {
            push_emitted(&mut column, record);
        }
        assert_eq!(emitted_count(&column), 2);
        assert_eq!(emitted(&column).collect::<Vec<_>>(), records);
        let mut flags = Vec::new();
        push_bool(&mut flags, true);
        assert_eq!((bool_at(&flags, 0), bool_at(&flags, 1)), (Some(true), None));
    }
}
