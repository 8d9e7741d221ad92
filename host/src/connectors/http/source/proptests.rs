//! Property-based tests (issue 19) of what the HTTP source reads from outside: request bodies,
//! and its write-ahead log as a crash (or anything else) left it on disk. Run like those of
//! `crate::proptests` (a fixed seed and few cases in CI; see the README for a longer run).

use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;

use super::body::split_events;
use super::wal::{self, Cursor};

/// Events written as frames, then `tail` (garbage, or a frame cut short) after them.
fn recover(events: &[Vec<u8>], tail: &[u8], cut: bool) -> Result<(Vec<Vec<u8>>, u64), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut frames = Vec::new();
    for (index, body) in events.iter().enumerate() {
        let key = (index % 2 == 0).then_some(b"k".as_slice());
        let properties = vec![("p".to_owned(), index.to_string())];
        wal::encode_frame(&mut frames, index as i64, key, &properties, body)?;
    }
    let valid = frames.len() as u64;
    if cut {
        // The first bytes of one more frame: a write torn by a crash.
        let mut last = Vec::new();
        wal::encode_frame(&mut last, 0, None, &[], tail)?;
        frames.extend_from_slice(&last[..last.len() / 2]);
    } else {
        frames.extend_from_slice(tail);
    }
    let partition_dir = dir.path().join("0");
    std::fs::create_dir_all(&partition_dir).map_err(|e| e.to_string())?;
    std::fs::write(partition_dir.join(format!("{:020}.wal", 0)), &frames)
        .map_err(|e| e.to_string())?;
    let lock = Arc::new(std::fs::File::create(dir.path().join("LOCK")).map_err(|e| e.to_string())?);
    let (log, _writer) = wal::open_partition(&partition_dir, 0, 1 << 20, lock)?;
    let end = log.durable_end();
    if end < valid {
        return Err(format!("recovered {end} bytes of {valid} valid ones"));
    }
    let (read, _) = Cursor::default().read(&log, log.first_offset(), end, usize::MAX, None)?;
    Ok((read.into_iter().map(|e| e.body.to_vec()).collect(), end))
}

proptest! {
    #![proptest_config(crate::proptests::config())]

    #[test]
    fn any_body_splits_into_single_line_events(
        body in prop::collection::vec(any::<u8>(), 0..512),
        ndjson in any::<bool>(),
    ) {
        for event in split_events(&Bytes::from(body), ndjson) {
            prop_assert!(!event.is_empty());
        }
    }

    #[test]
    fn json_arrays_of_any_strings_split_into_their_elements(
        texts in prop::collection::vec(any::<String>(), 1..8),
    ) {
        let body = serde_json::to_vec(&texts).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let events = split_events(&Bytes::from(body), false);
        prop_assert_eq!(events.len(), texts.len());
        for (event, text) in events.iter().zip(&texts) {
            let back: String = serde_json::from_slice(event).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&back, text);
        }
    }

    #[test]
    fn recovery_keeps_every_whole_frame_and_drops_a_torn_or_garbage_tail(
        events in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..64), 0..8),
        tail in prop::collection::vec(any::<u8>(), 0..128),
        cut in any::<bool>(),
    ) {
        let (read, _) = recover(&events, &tail, cut).map_err(TestCaseError::fail)?;
        // Garbage can only be read as a frame if it carries a valid checksum: vanishingly rare.
        prop_assert!(read.len() >= events.len());
        prop_assert_eq!(&read[..events.len()], &events[..]);
    }

    #[test]
    fn recovery_of_arbitrary_bytes_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        // Either some frames or an error that says why; never a panic.
        let _ = recover(&[], &bytes, false);
    }
}
