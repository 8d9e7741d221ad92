//! Continuous delivery for at-least-once sinks (Kafka, Event Hubs): records are sent as they are
//! written, by a task of the writer's own, and a checkpoint only waits for the acknowledgements
//! of what was written before it.
//!
//! - **Linger**: an idle sender waits at most `linger` (or until `max_batch` records are there)
//!   before it sends; a busy one sends whatever came in while its last request was out, so
//!   requests grow with the load and never wait behind a timer under it.
//! - **In flight**: one request at a time per writer (the transport may spread it over
//!   destinations), so each destination sees the records in the order they were written; at most
//!   `max_buffered` records wait unacknowledged, beyond which `write` waits (back-pressure).
//! - **Failure**: a request the transport gives up on (after its own retries) stops the sender;
//!   the next `write` or barrier returns the error, so the pipeline fails as a failed flush did,
//!   and no checkpoint covers records that were not acknowledged.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{PendingFlush, SinkError, SinkProgress, WriterScope};

/// Sends records to a destination, in order, with the sink's own retries.
#[async_trait]
pub trait Transport: Send + 'static {
    /// What one record is, ready to send.
    type Record: Send + 'static;

    /// Sends `records` (in order, as many requests as needed) and returns once every one is
    /// acknowledged; an error means the sink gave up on them.
    async fn send(&mut self, records: Vec<Self::Record>) -> Result<(), SinkError>;
}

/// How a [`Continuous`] sender groups records into requests.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Longest an idle sender waits for more records before it sends.
    pub linger: Duration,
    /// Records that are sent at once, without lingering.
    pub max_batch: usize,
    /// Records written but not yet acknowledged, at most; `write` waits beyond it.
    pub max_buffered: usize,
}

enum Command<R> {
    Records(Vec<R>),
    Barrier(oneshot::Sender<Result<(), SinkError>>),
}

/// The sending side of one writer: records in, a task sending them, barriers answered once what
/// came before them is acknowledged.
pub struct Continuous<R> {
    commands: mpsc::UnboundedSender<Command<R>>,
    room: Arc<Semaphore>,
    max_buffered: usize,
    failure: Arc<Mutex<Option<SinkError>>>,
    task: JoinHandle<()>,
    /// The error for a sender that ended without one (its transport panicked).
    gone: SinkError,
}

impl<R: Send + 'static> Continuous<R> {
    /// Starts the task sending through `transport` for sink `sink` in `scope`.
    pub fn start<T: Transport<Record = R>>(
        transport: T,
        batching: Batching,
        scope: &WriterScope,
        sink: &str,
    ) -> Self {
        let max_buffered = batching.max_buffered.max(1);
        let room = Arc::new(Semaphore::new(max_buffered));
        let failure = Arc::new(Mutex::new(None));
        let (commands, receiver) = mpsc::unbounded_channel();
        let sender = Sender {
            transport,
            batching,
            commands: receiver,
            room: Arc::clone(&room),
            failure: Arc::clone(&failure),
            buffer: Vec::new(),
            barriers: Vec::new(),
        };
        Continuous {
            commands,
            room,
            max_buffered,
            failure,
            task: tokio::spawn(sender.run()),
            gone: scope.error(sink, "the sink's sender stopped"),
        }
    }

    /// The error that stopped the sender, if one did.
    fn failed(&self) -> Option<SinkError> {
        failure_of(&self.failure)
    }

    /// Hands `records` to the sender, waiting while too many are unacknowledged.
    pub async fn send(&mut self, records: Vec<R>) -> Result<(), SinkError> {
        if let Some(error) = self.failed() {
            return Err(error);
        }
        if records.is_empty() {
            return Ok(());
        }
        // A write larger than the bound takes all of it (and waits for an empty pipe).
        let permits = records.len().min(self.max_buffered) as u32;
        let acquired = Arc::clone(&self.room).acquire_many_owned(permits).await;
        match acquired {
            Ok(permits) => permits.forget(),
            Err(_) => return Err(self.stopped()),
        }
        self.commands
            .send(Command::Records(records))
            .map_err(|_| self.stopped())
    }

    /// Waits until every record handed over so far is acknowledged.
    pub async fn barrier(&mut self) -> Result<(), SinkError> {
        self.begin_barrier()?.await
    }

    /// A future that resolves once every record handed over so far is acknowledged, while
    /// later records go on being sent.
    pub fn begin_barrier(
        &mut self,
    ) -> Result<impl Future<Output = Result<(), SinkError>> + Send + 'static, SinkError> {
        let (answer, answered) = oneshot::channel();
        self.commands
            .send(Command::Barrier(answer))
            .map_err(|_| self.stopped())?;
        let failure = Arc::clone(&self.failure);
        let gone = self.gone.clone();
        Ok(async move {
            answered
                .await
                .map_err(|_| failure_of(&failure).unwrap_or(gone))?
        })
    }

    /// A writer's flush: resolves to `progress` once every record handed over so far is
    /// acknowledged (see [`Continuous::begin_barrier`]).
    pub fn begin_flush(&mut self, progress: SinkProgress) -> Result<PendingFlush, SinkError> {
        let acknowledged = self.begin_barrier()?;
        Ok(Box::pin(async move {
            acknowledged.await?;
            Ok(progress)
        }))
    }

    /// The error for a sender that is gone: the one that stopped it.
    fn stopped(&self) -> SinkError {
        self.failed().unwrap_or_else(|| self.gone.clone())
    }
}

impl<R> Drop for Continuous<R> {
    fn drop(&mut self) {
        // What it still holds is after the last checkpoint: the replay sends it again.
        self.task.abort();
    }
}

/// The error recorded in `failure`, if any.
fn failure_of(failure: &Mutex<Option<SinkError>>) -> Option<SinkError> {
    failure.lock().ok().and_then(|failure| failure.clone())
}

/// The task behind a [`Continuous`].
struct Sender<T: Transport> {
    transport: T,
    batching: Batching,
    commands: mpsc::UnboundedReceiver<Command<T::Record>>,
    room: Arc<Semaphore>,
    failure: Arc<Mutex<Option<SinkError>>>,
    buffer: Vec<T::Record>,
    barriers: Vec<oneshot::Sender<Result<(), SinkError>>>,
}

impl<T: Transport> Sender<T> {
    async fn run(mut self) {
        loop {
            if self.buffer.is_empty() && self.barriers.is_empty() {
                match self.commands.recv().await {
                    Some(command) => self.take(command),
                    None => return,
                }
            }
            let open = self.linger().await;
            if let Err(error) = self.send_buffer().await {
                if let Ok(mut failure) = self.failure.lock() {
                    *failure = Some(error.clone());
                }
                for barrier in self.barriers.drain(..) {
                    let _ = barrier.send(Err(error.clone()));
                }
                // Writers waiting for room find the semaphore closed and read the failure.
                self.room.close();
                return;
            }
            for barrier in self.barriers.drain(..) {
                let _ = barrier.send(Ok(()));
            }
            if !open && self.buffer.is_empty() {
                return;
            }
        }
    }

    fn take(&mut self, command: Command<T::Record>) {
        match command {
            Command::Records(records) => self.buffer.extend(records),
            Command::Barrier(answer) => self.barriers.push(answer),
        }
    }

    /// Collects records until a batch is full, a barrier asks, or the linger ends; whatever is
    /// already waiting is taken at once. `false` once the writer is gone.
    async fn linger(&mut self) -> bool {
        let deadline = Instant::now() + self.batching.linger;
        loop {
            while let Ok(command) = self.commands.try_recv() {
                self.take(command);
            }
            if self.buffer.len() >= self.batching.max_batch || !self.barriers.is_empty() {
                return true;
            }
            match tokio::time::timeout_at(deadline, self.commands.recv()).await {
                Ok(Some(command)) => self.take(command),
                Ok(None) => return false,
                Err(_) => return true,
            }
        }
    }

    async fn send_buffer(&mut self) -> Result<(), SinkError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let records = std::mem::take(&mut self.buffer);
        let count = records.len();
        self.transport.send(records).await?;
        self.room.add_permits(count.min(self.room_limit()));
        Ok(())
    }

    fn room_limit(&self) -> usize {
        self.batching.max_buffered.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::SinkErrorKind;

    /// The requests a [`Recorder`] sent.
    type Sent = Arc<Mutex<Vec<Vec<u32>>>>;

    /// Records what it sent, in requests; fails the request holding `fail_on`.
    struct Recorder {
        sent: Sent,
        fail_on: Option<u32>,
        pause: Duration,
    }

    #[async_trait]
    impl Transport for Recorder {
        type Record = u32;
        async fn send(&mut self, records: Vec<u32>) -> Result<(), SinkError> {
            tokio::time::sleep(self.pause).await;
            if self.fail_on.is_some_and(|bad| records.contains(&bad)) {
                return Err(SinkError::opening(
                    SinkErrorKind::Unavailable,
                    "t",
                    "refused",
                ));
            }
            self.sent.lock().expect("lock").push(records);
            Ok(())
        }
    }

    fn start(fail_on: Option<u32>, pause: Duration, batching: Batching) -> (Continuous<u32>, Sent) {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let transport = Recorder {
            sent: Arc::clone(&sent),
            fail_on,
            pause,
        };
        let scope = WriterScope {
            pipeline: "p".into(),
            partition: 0,
        };
        (Continuous::start(transport, batching, &scope, "t"), sent)
    }

    const BATCHING: Batching = Batching {
        linger: Duration::from_millis(5),
        max_batch: 100,
        max_buffered: 1000,
    };

    #[tokio::test]
    async fn records_go_out_without_a_barrier_and_in_order() {
        let (mut sender, sent) = start(None, Duration::ZERO, BATCHING);
        sender.send(vec![1, 2]).await.expect("send");
        sender.send(vec![3]).await.expect("send");
        // No barrier: the linger alone sends them.
        let wait = Instant::now() + Duration::from_secs(5);
        while sent.lock().expect("lock").concat().len() < 3 {
            assert!(Instant::now() < wait, "nothing sent without a barrier");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(sent.lock().expect("lock").concat(), vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn a_barrier_returns_only_once_everything_before_it_is_acknowledged() {
        let batching = Batching {
            linger: Duration::from_secs(3600),
            ..BATCHING
        };
        let (mut sender, sent) = start(None, Duration::from_millis(20), batching);
        for n in 0..250 {
            sender.send(vec![n]).await.expect("send");
        }
        sender.barrier().await.expect("barrier");
        let sent = sent.lock().expect("lock").clone();
        assert_eq!(sent.concat(), (0..250).collect::<Vec<_>>());
        // Full batches went without waiting for the hour-long linger.
        assert!(sent.len() >= 2, "{sent:?}");
    }

    #[tokio::test]
    async fn a_barrier_begun_is_answered_while_later_records_are_still_written() {
        let (mut sender, sent) = start(None, Duration::from_millis(20), BATCHING);
        sender.send((0..50).collect()).await.expect("send");
        let acknowledged = sender.begin_barrier().expect("barrier");
        // The writer goes on while the barrier waits.
        sender.send((50..60).collect()).await.expect("send");
        acknowledged.await.expect("barrier");
        let sent = sent.lock().expect("lock").concat();
        assert!(sent.len() >= 50, "{sent:?}");
        assert_eq!(sent[..50], (0..50).collect::<Vec<_>>());
        sender.barrier().await.expect("barrier");
    }

    #[tokio::test]
    async fn a_failed_request_fails_the_barrier_and_later_writes() {
        let (mut sender, sent) = start(Some(7), Duration::ZERO, BATCHING);
        sender.send(vec![1, 2]).await.expect("send");
        sender.barrier().await.expect("first barrier");
        sender.send(vec![7]).await.expect("handed over");
        let error = sender.barrier().await.expect_err("the failure");
        assert_eq!(error.reason, "refused");
        let again = sender.send(vec![8]).await.expect_err("stopped");
        assert_eq!(again.reason, "refused");
        assert_eq!(sent.lock().expect("lock").concat(), vec![1, 2]);
    }

    #[tokio::test]
    async fn writes_wait_while_too_many_records_are_unacknowledged() {
        let batching = Batching {
            linger: Duration::ZERO,
            max_batch: 10,
            max_buffered: 10,
        };
        let (mut sender, _sent) = start(None, Duration::from_millis(200), batching);
        sender
            .send((0..10).collect())
            .await
            .expect("fills the room");
        let started = Instant::now();
        sender.send(vec![10]).await.expect("waits for room");
        assert!(started.elapsed() >= Duration::from_millis(100));
        sender.barrier().await.expect("barrier");
    }
}
