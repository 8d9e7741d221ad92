//! Spreading one unpartitioned input over partitions by key.
//!
//! An input whose end the producer knows (a file: its size) can report each partition's lag
//! through an [`InputProgress`]: the part of the input from the first position the partition has
//! not read yet to the input's end, in the input's units (bytes for a file). A partition whose
//! channel is empty has read everything the producer dispatched, so it is behind only by what the
//! producer has not read yet: an idle partition does not look behind.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{PartitionReader, PartitionStart, ReadOutcome, SourceError, SourceErrorKind};
use crate::event::{Event, PartitionId, Position};

/// Sends waiting per partition before the producer is made to wait (backpressure), for a
/// producer that sends its events one by one.
const CHANNEL_DEPTH: usize = 8192;

/// How far a producer has got through an input whose end it knows, shared with the readers
/// for their [`PartitionReader::lag`].
#[derive(Debug, Default)]
pub struct InputProgress {
    /// Where the producer's reading stands: everything before it was sent (or skipped).
    dispatched: AtomicU64,
    /// The input's end, as last seen.
    end: AtomicU64,
}

impl InputProgress {
    /// Progress of an input that ends at `end`, read from `start`.
    pub fn new(start: u64, end: u64) -> Arc<Self> {
        Arc::new(InputProgress {
            dispatched: AtomicU64::new(start),
            end: AtomicU64::new(end.max(start)),
        })
    }

    /// Everything before `position` has been sent to its partition (call after the send).
    pub fn dispatched_through(&self, position: u64) {
        self.dispatched.fetch_max(position, Ordering::Release);
        self.end.fetch_max(position, Ordering::Release);
    }

    /// The input was seen to end at `end` (it may grow; it is never taken to shrink).
    pub fn end_seen(&self, end: u64) {
        self.end.fetch_max(end, Ordering::Release);
    }

    fn dispatched(&self) -> u64 {
        self.dispatched.load(Ordering::Acquire)
    }

    fn end(&self) -> u64 {
        self.end.load(Ordering::Acquire)
    }
}

/// How a [`Dispatcher`]'s channels and readers work.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// The producer's progress through an input whose end it knows: the readers report their
    /// lag from it, and the producer keeps it up to date.
    pub progress: Option<Arc<InputProgress>>,
    /// Sends (an event, or a batch of a partition's events) waiting per partition before the
    /// producer is made to wait.
    pub depth: usize,
    /// Whether the events the producer sends with an `event_time` carry the pipeline's event time
    /// read from its field as the partition worker would read it (see
    /// [`PartitionReader::event_time_decoded`]).
    pub event_time_decoded: bool,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        DispatchSettings {
            progress: None,
            depth: CHANNEL_DEPTH,
            event_time_decoded: false,
        }
    }
}

/// What goes through a partition's channel: a batch of its events in order, or a read error.
type Sent = Result<Vec<Event>, SourceError>;

/// The producing side: one channel per partition. A producer reads its input once, from
/// [`Dispatcher::resume_from`], and sends every event to the partition its key hashes to (one by
/// one, or in batches); each reader drops the events its own checkpoint already covers.
#[derive(Debug)]
pub struct Dispatcher {
    senders: Vec<mpsc::Sender<Sent>>,
    resume_from: Option<Position>,
}

impl Dispatcher {
    /// Channels for `starts`, which must cover partitions `0..partitions`, and their readers.
    pub fn new(
        source_name: &str,
        partitions: u32,
        starts: &[PartitionStart],
    ) -> Result<(Dispatcher, Vec<Box<dyn PartitionReader>>), SourceError> {
        Self::with_settings(source_name, partitions, starts, DispatchSettings::default())
    }

    /// [`Dispatcher::new`] with `settings` (see [`DispatchSettings`]).
    pub fn with_settings(
        source_name: &str,
        partitions: u32,
        starts: &[PartitionStart],
        settings: DispatchSettings,
    ) -> Result<(Dispatcher, Vec<Box<dyn PartitionReader>>), SourceError> {
        let mut covered: Vec<Option<PartitionStart>> = vec![None; partitions as usize];
        for start in starts {
            match covered.get_mut(start.partition as usize) {
                Some(slot) => *slot = Some(*start),
                None => {
                    return Err(SourceError::start(
                        SourceErrorKind::Misconfigured,
                        source_name,
                        format!(
                            "partition {} does not exist (the source has {partitions})",
                            start.partition
                        ),
                    ));
                }
            }
        }
        let mut senders = Vec::with_capacity(partitions as usize);
        let mut readers: Vec<Box<dyn PartitionReader>> = Vec::with_capacity(partitions as usize);
        let mut resume_from: Option<Position> = None;
        let mut from_start = false;
        for (partition, start) in covered.into_iter().enumerate() {
            let start = start.ok_or_else(|| {
                SourceError::start(
                    SourceErrorKind::Misconfigured,
                    source_name,
                    format!(
                        "partition {partition} was not opened: this source reads one input for all its partitions, so one process must own them all"
                    ),
                )
            })?;
            match start.after {
                Some(after) => resume_from = Some(resume_from.map_or(after, |r| r.min(after))),
                None => from_start = true,
            }
            let (sender, receiver) = mpsc::channel(settings.depth.max(1));
            senders.push(sender);
            readers.push(Box::new(ChannelReader {
                partition: start.partition,
                after: start.after,
                receiver,
                received: VecDeque::new(),
                ended: false,
                progress: settings.progress.clone(),
                read_through: start.after.unwrap_or(0),
                event_time_decoded: settings.event_time_decoded,
            }));
        }
        // The input is re-read from the oldest position any partition still needs.
        let resume_from = if from_start { None } else { resume_from };
        Ok((
            Dispatcher {
                senders,
                resume_from,
            },
            readers,
        ))
    }

    /// The oldest position any partition still needs: the producer resumes after it
    /// (`None`: from the beginning).
    pub fn resume_from(&self) -> Option<Position> {
        self.resume_from
    }

    /// Number of partitions.
    pub fn partitions(&self) -> u32 {
        // Built from a u32 count.
        u32::try_from(self.senders.len()).unwrap_or(u32::MAX)
    }

    /// Sends `event` to its partition (`event.partition`), waiting while that partition is full.
    /// Returns false once every reader is gone.
    pub async fn send(&self, event: Event) -> bool {
        match self.senders.get(event.partition as usize) {
            Some(sender) => sender.send(Ok(vec![event])).await.is_ok(),
            None => false,
        }
    }

    /// Sends `events`, all of `partition` and in its order, as one batch, blocking the thread
    /// while that partition is full: for a producer on a thread of its own, never on the async
    /// runtime's. Returns false once that partition's reader is gone.
    pub fn send_batch_blocking(&self, partition: PartitionId, events: Vec<Event>) -> bool {
        match self.senders.get(partition as usize) {
            Some(sender) => sender.blocking_send(Ok(events)).is_ok(),
            None => false,
        }
    }

    /// Reports a read error to every partition.
    pub async fn fail(&self, error: impl Fn(PartitionId) -> SourceError) {
        for (partition, sender) in self.senders.iter().enumerate() {
            let _ = sender
                .send(Err(error(u32::try_from(partition).unwrap_or(u32::MAX))))
                .await;
        }
    }

    /// [`Dispatcher::fail`] from a producer's own thread (see
    /// [`Dispatcher::send_batch_blocking`]).
    pub fn fail_blocking(&self, error: impl Fn(PartitionId) -> SourceError) {
        for (partition, sender) in self.senders.iter().enumerate() {
            let _ = sender.blocking_send(Err(error(u32::try_from(partition).unwrap_or(u32::MAX))));
        }
    }

    /// Whether every reader has gone away.
    pub fn is_closed(&self) -> bool {
        self.senders.iter().all(mpsc::Sender::is_closed)
    }
}

/// A partition fed by a [`Dispatcher`].
#[derive(Debug)]
struct ChannelReader {
    partition: PartitionId,
    after: Option<Position>,
    receiver: mpsc::Receiver<Sent>,
    /// Events taken from the channel in a batch but not handed out yet.
    received: VecDeque<Event>,
    ended: bool,
    /// The producer's progress, when it knows the input's end.
    progress: Option<Arc<InputProgress>>,
    /// Where this partition's reading stands in the input: nothing before it is left for it.
    read_through: u64,
    /// See [`DispatchSettings::event_time_decoded`].
    event_time_decoded: bool,
}

impl ChannelReader {
    fn wanted(&self, event: &Event) -> bool {
        self.after.is_none_or(|after| event.position > after)
    }

    /// Where the producer stood before a look at the channel: if the channel is then found
    /// empty, everything the producer sent before that point was taken by this reader.
    fn producer_position(&self) -> Option<u64> {
        self.progress.as_ref().map(|p| p.dispatched())
    }

    /// The channel was found empty (or closed) after the producer stood at `position`.
    fn drained(&mut self, position: Option<u64>) {
        if let Some(position) = position {
            self.read_through = self.read_through.max(position);
        }
    }

    /// `event` was taken from the channel: its line (its body and the line end, at least) is
    /// read.
    fn took(&mut self, event: &Event) {
        if self.progress.is_some() {
            let end = event
                .position
                .saturating_add(event.body.len() as u64)
                .saturating_add(1);
            self.read_through = self.read_through.max(end);
        }
    }

    /// Moves received events to `events`, up to `max` of them, skipping those the checkpoint
    /// covers.
    fn hand_out(&mut self, events: &mut Vec<Event>, max: usize) {
        while events.len() < max {
            let Some(event) = self.received.pop_front() else {
                break;
            };
            self.took(&event);
            if self.wanted(&event) {
                events.push(event);
            }
        }
    }

    /// Adds a whole batch from the channel to `events`: taken as it is when `events` is empty,
    /// else moved in one copy. Event by event, moving an event out of [`Self::received`] and
    /// into `events` took 9% of a pass-through pipeline's CPU.
    fn take_whole(&mut self, events: &mut Vec<Event>, mut batch: Vec<Event>) {
        for event in &batch {
            self.took(event);
        }
        if self.after.is_some() {
            batch.retain(|event| self.wanted(event));
        }
        if events.is_empty() {
            *events = batch;
        } else {
            events.append(&mut batch);
        }
    }
}

#[async_trait]
impl PartitionReader for ChannelReader {
    fn partition(&self) -> PartitionId {
        self.partition
    }

    /// What the input holds beyond what this partition has read, when the producer knows the
    /// input's end.
    fn lag(&self) -> Option<u64> {
        let progress = self.progress.as_ref()?;
        Some(progress.end().saturating_sub(self.read_through))
    }

    fn event_time_decoded(&self) -> bool {
        self.event_time_decoded
    }

    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<ReadOutcome, SourceError> {
        if self.ended {
            return Ok(ReadOutcome::End);
        }
        let max = max.max(1);
        let mut events = Vec::with_capacity(max.min(self.received.len().max(1024)));
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // What an earlier batch left first; once it is all taken (`events` not full), the
            // channel is looked at.
            self.hand_out(&mut events, max);
            if events.len() >= max {
                break;
            }
            let producer = self.producer_position();
            let batch = if events.is_empty() {
                // Wait for the first wanted event.
                match tokio::time::timeout_at(deadline, self.receiver.recv()).await {
                    Err(_) => {
                        // Nothing came since the producer stood there: all it sent was taken.
                        self.drained(producer);
                        return Ok(ReadOutcome::Idle);
                    }
                    Ok(None) => {
                        self.drained(self.producer_position());
                        self.ended = true;
                        return Ok(ReadOutcome::End);
                    }
                    Ok(Some(batch)) => batch,
                }
            } else {
                // Then take what is already there, without waiting.
                match self.receiver.try_recv() {
                    Ok(batch) => batch,
                    // Empty, or closed: deliver what we have; the next call reports the end.
                    Err(
                        mpsc::error::TryRecvError::Empty | mpsc::error::TryRecvError::Disconnected,
                    ) => {
                        self.drained(producer);
                        break;
                    }
                }
            };
            let batch = batch?;
            if events.len() + batch.len() <= max {
                self.take_whole(&mut events, batch);
            } else {
                self.received = VecDeque::from(batch);
            }
        }
        Ok(ReadOutcome::Events(events))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(partition: u32, after: Option<u64>) -> PartitionStart {
        PartitionStart { partition, after }
    }

    #[tokio::test]
    async fn readers_skip_what_their_checkpoint_covers_and_end_when_the_producer_stops() {
        let (dispatcher, mut readers) =
            Dispatcher::new("test", 2, &[start(0, Some(3)), start(1, Some(5))])
                .expect("dispatcher");
        assert_eq!(dispatcher.resume_from(), Some(3));
        for position in 4..=8 {
            let partition = (position % 2) as u32;
            assert!(dispatcher.send(Event::new(partition, position, "{}")).await);
        }
        drop(dispatcher);
        let mut seen = Vec::new();
        for reader in &mut readers {
            seen.extend(read_to_end(reader.as_mut(), 10).await.concat());
        }
        assert_eq!(seen, vec![(0, 4), (0, 6), (0, 8), (1, 7)]);
    }

    #[tokio::test]
    async fn batches_from_the_producer_are_joined_and_split_to_the_readers_size_in_order() {
        let (dispatcher, mut readers) =
            Dispatcher::new("test", 1, &[start(0, Some(5))]).expect("dispatcher");
        let batch = |positions: std::ops::Range<u64>| -> Vec<Event> {
            positions.map(|p| Event::new(0, p, "{}")).collect()
        };
        // All covered by the checkpoint; partly covered; then two that fill a read of 8 only
        // together with part of the next.
        for positions in [0..4, 4..10, 10..13, 13..30] {
            assert!(
                dispatcher.senders[0]
                    .send(Ok(batch(positions)))
                    .await
                    .is_ok()
            );
        }
        drop(dispatcher);
        let reads: Vec<Vec<u64>> = read_to_end(readers[0].as_mut(), 8)
            .await
            .into_iter()
            .map(|read| read.into_iter().map(|(_, position)| position).collect())
            .collect();
        assert_eq!(
            reads,
            vec![
                (6..14).collect::<Vec<u64>>(),
                (14..22).collect(),
                (22..30).collect()
            ]
        );
    }

    /// The (partition, position) of the events of each batch `reader` hands out, at most `max`
    /// at a time, until its end.
    async fn read_to_end(reader: &mut dyn PartitionReader, max: usize) -> Vec<Vec<(u32, u64)>> {
        let mut reads = Vec::new();
        loop {
            match reader
                .next_batch(max, Duration::from_millis(50))
                .await
                .expect("read")
            {
                ReadOutcome::Events(events) => {
                    reads.push(events.iter().map(|e| (e.partition, e.position)).collect())
                }
                ReadOutcome::Idle => panic!("a closed channel must end, not idle"),
                ReadOutcome::End => return reads,
                ReadOutcome::Undecodable { .. } => panic!("events are never undecodable"),
            }
        }
    }

    #[tokio::test]
    async fn a_partition_without_checkpoint_rereads_from_the_beginning() {
        let (dispatcher, _readers) =
            Dispatcher::new("test", 2, &[start(0, Some(3)), start(1, None)]).expect("dispatcher");
        assert_eq!(dispatcher.resume_from(), None);
        let Err(err) = Dispatcher::new("test", 2, &[start(0, None)]) else {
            panic!("partition 1 is missing: the dispatcher must refuse");
        };
        assert!(
            err.to_string().contains("partition 1 was not opened"),
            "{err}"
        );
    }
}
