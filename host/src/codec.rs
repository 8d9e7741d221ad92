//! A small binary encoding for the state that host-owned stages put in checkpoints (held-back
//! events, window accumulators, join buffers): little-endian integers and length-prefixed bytes.
//!
//! The format is private to this version of Weir: a checkpoint is read back by the same build
//! that wrote it, or refused with where it stopped making sense.

use bytes::Bytes;

use crate::event::Event;

/// Why encoded state could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt state at byte {offset}: expected {what}")]
pub struct DecodeError {
    /// Where reading stopped.
    pub offset: usize,
    /// What was expected there.
    pub what: &'static str,
}

/// Appends values to a buffer.
#[derive(Debug, Default, Clone)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Writer::default()
    }

    /// The bytes written.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    /// One byte.
    pub fn u8(&mut self, value: u8) {
        self.buf.push(value);
    }

    /// A u32.
    pub fn u32(&mut self, value: u32) {
        self.buf.extend_from_slice(&value.to_le_bytes());
    }

    /// A u64.
    pub fn u64(&mut self, value: u64) {
        self.buf.extend_from_slice(&value.to_le_bytes());
    }

    /// An i64.
    pub fn i64(&mut self, value: i64) {
        self.buf.extend_from_slice(&value.to_le_bytes());
    }

    /// A length (usize) as a u64.
    pub fn len(&mut self, value: usize) {
        self.u64(value as u64);
    }

    /// An optional i64.
    pub fn opt_i64(&mut self, value: Option<i64>) {
        match value {
            Some(v) => {
                self.u8(1);
                self.i64(v);
            }
            None => self.u8(0),
        }
    }

    /// Length-prefixed bytes.
    pub fn bytes(&mut self, value: &[u8]) {
        self.len(value.len());
        self.buf.extend_from_slice(value);
    }

    /// Length-prefixed UTF-8 text.
    pub fn str(&mut self, value: &str) {
        self.bytes(value.as_bytes());
    }

    /// A whole event.
    pub fn event(&mut self, event: &Event) {
        self.u32(event.partition);
        self.u64(event.position);
        match &event.key {
            Some(key) => {
                self.u8(1);
                self.bytes(key);
            }
            None => self.u8(0),
        }
        self.opt_i64(event.event_time);
        self.i64(event.enqueued_time);
        self.len(event.properties.len());
        for (name, value) in &event.properties {
            self.str(name);
            self.str(value);
        }
        self.bytes(&event.body);
    }
}

/// Reads values back in the order they were written.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, offset: 0 }
    }

    /// Whether everything has been read.
    pub fn is_empty(&self) -> bool {
        self.offset >= self.bytes.len()
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self.offset.checked_add(n).ok_or(DecodeError {
            offset: self.offset,
            what,
        })?;
        let slice = self.bytes.get(self.offset..end).ok_or(DecodeError {
            offset: self.offset,
            what,
        })?;
        self.offset = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    /// One byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    /// A u32.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    /// A u64.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// An i64.
    pub fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }

    /// A length written by [`Writer::len`], checked against what is left to read (every counted
    /// item takes at least one byte), so that a corrupt count cannot ask for a huge allocation.
    pub fn len(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let at = self.offset;
        let value = self.u64(what)?;
        let left = (self.bytes.len() - self.offset) as u64;
        if value > left {
            return Err(DecodeError { offset: at, what });
        }
        Ok(value as usize)
    }

    /// An optional i64.
    pub fn opt_i64(&mut self, what: &'static str) -> Result<Option<i64>, DecodeError> {
        match self.u8(what)? {
            0 => Ok(None),
            1 => Ok(Some(self.i64(what)?)),
            _ => Err(DecodeError {
                offset: self.offset - 1,
                what,
            }),
        }
    }

    /// Length-prefixed bytes.
    pub fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.len(what)?;
        self.take(len, what)
    }

    /// Length-prefixed UTF-8 text.
    pub fn str(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let at = self.offset;
        let bytes = self.bytes(what)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError { offset: at, what })
    }

    /// A whole event.
    pub fn event(&mut self) -> Result<Event, DecodeError> {
        let partition = self.u32("an event's partition")?;
        let position = self.u64("an event's position")?;
        let key = match self.u8("an event's key flag")? {
            0 => None,
            _ => Some(Bytes::copy_from_slice(self.bytes("an event's key")?)),
        };
        let event_time = self.opt_i64("an event's time")?;
        let enqueued_time = self.i64("an event's enqueued time")?;
        let count = self.len("an event's property count")?;
        let mut properties = Vec::with_capacity(count);
        for _ in 0..count {
            let name = self.str("a property name")?.to_owned();
            let value = self.str("a property value")?.to_owned();
            properties.push((name, value));
        }
        let body = Bytes::copy_from_slice(self.bytes("an event's body")?);
        Ok(Event {
            partition,
            source: crate::event::no_source(),
            position,
            key,
            event_time,
            enqueued_time,
            properties,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_events_round_trip_and_truncation_is_refused() {
        let mut event = Event::new(3, 77, &b"{\"a\":1}"[..]);
        event.key = Some(Bytes::from_static(b"k"));
        event.event_time = Some(-5);
        event.properties.push(("p".into(), "v".into()));
        let mut w = Writer::new();
        w.u8(7);
        w.opt_i64(None);
        w.str("hello");
        w.event(&event);
        let bytes = w.finish();
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8("u8"), Ok(7));
        assert_eq!(r.opt_i64("opt"), Ok(None));
        assert_eq!(r.str("str"), Ok("hello"));
        assert_eq!(r.event(), Ok(event));
        assert!(r.is_empty());
        let mut r = Reader::new(&bytes[..bytes.len() - 1]);
        r.u8("u8").expect("u8");
        r.opt_i64("opt").expect("opt");
        r.str("str").expect("str");
        assert!(r.event().is_err());
    }
}
