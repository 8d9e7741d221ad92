//! A frame-aware relay between a client's socket and the endpoint's AMQP engine, which keeps
//! the endpoint's answers to a client's closing detaches away from a client session that is
//! ending, to work around a race in the client's `fe2o3-amqp`.
//!
//! The upstream bug (`fe2o3-amqp` 0.16.2, on the client side): the Azure client drops its `$cbs`
//! links and their session together right after a put-token. Each dropped link sends a closing
//! detach (`Drop for SenderInner`/`ReceiverInner` in `link/sender.rs`, `link/receiver.rs`) and
//! the session handle's drop sends `End` (`Drop for SessionHandle`, `session/mod.rs`), but the
//! session keeps the dropped links' relays in `link_by_input_handle`, whose channels are closed.
//! The peer's answering detach then cannot reach its link: `Session::on_incoming_detach` fails
//! with `UnattachedHandle`. `SessionEngine::event_loop` (`session/engine.rs`) ignores such
//! errors only once it has noticed that every handle is gone; `tokio::select!` picks its ready
//! branch at random, so when it takes the incoming detach first, `on_error` calls `end_session`,
//! whose `wait_for_remote_end` fails again on the *second* answering detach and stops the
//! session engine before the peer's `End` arrives. The connection engine still maps that
//! channel: `ConnectionEngine::on_incoming` hands the peer's `End` to `on_incoming_end`
//! (`connection/mod.rs`), whose send to the stopped session fails, and that `SendError` becomes
//! `ConnectionInnerError::NotFound("Session is not found")` (`connection/error.rs`); the
//! connection engine closes the whole connection with `amqp:not-found`. The client's next call on
//! that connection fails with "Connection dropped: Connection must have been closed"
//! (`IllegalConnectionState`). Against the real service the answers are a network round trip
//! away and the client's session is past that point; on loopback they can come first.
//!
//! The workaround keeps such answers from the client, driven by the frames themselves:
//! - A client's `End` makes every link frame the endpoint sends on that session moot (the client
//!   gave its links up; the endpoint's `End` follows as usual): frames already queued are dropped,
//!   and so are those the endpoint writes afterwards, until its `End`. The client's detaches and
//!   its `End` often come in one read, so the endpoint answers the detaches only after the relay
//!   has seen the `End`; an earlier version of this relay forgot the detaches at the `End` and let
//!   those answers through, which was the race its tests still hit (between one run in 4 and one
//!   in 40 here, depending on the load).
//! - A detach with `closed: false` only comes from a client waiting for the answer (a dropped link
//!   closes), so its answer goes out at once.
//! - Likewise, once the client has sent `Close`, only the endpoint's `Close` goes out: the
//!   client's `fe2o3-amqp` takes any other frame then for an illegal state and fails its `close()`
//!   ("Illegal local state"), which the start-position scenario hit once it no longer waited for
//!   held answers.
//! - An answer to a closing detach (`closed: true`) is held until the client ends that session,
//!   for at most [`ANSWER_HOLD`]: a client that closes a link and waits for the answer gets it
//!   then. Frames after a held one wait behind it, so the order on the connection is kept.
//!
//! The relay also acknowledges the client's TCP segments at once (`TCP_QUICKACK` after every
//! read). The client does not set `TCP_NODELAY`, so a small frame it writes right after another
//! waits for the first one's acknowledgement, which Linux delays by up to 40 ms when it has nothing
//! to send back: opening a connection and reading the hub's properties took about 200 ms instead
//! of a few.
//!
//! `RUST_LOG=weir_eventhubs_endpoint::relay=trace` logs what the relay sees and decides.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fe2o3_amqp::types::performatives::{Begin, Detach};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long an answer to a client's closing detach waits for the client's `End` before it is
/// sent. The client sends its `End` right after its detaches when it drops the links with their
/// session, so this only delays a client that closes a link and waits for the answer.
pub(crate) const ANSWER_HOLD: Duration = Duration::from_millis(250);

/// Bytes buffered between the relay and the AMQP engine, each way (a frame is at most 256 KiB).
const ENGINE_BUFFER: usize = 512 * 1024;

/// Room made in a buffer before each read (a `Vec` otherwise grows 64 bytes at a time).
const READ_SIZE: usize = 64 * 1024;

/// Descriptor codes of the performatives the relay looks at (AMQP 1.0, part 2.7).
const BEGIN: u64 = 0x11;
const ATTACH: u64 = 0x12;
const FLOW: u64 = 0x13;
const TRANSFER: u64 = 0x14;
const DISPOSITION: u64 = 0x15;
const DETACH: u64 = 0x16;
const END: u64 = 0x17;
const CLOSE: u64 = 0x18;

/// What a frame is, as far as the relay cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A `begin`, with the channel of the session it answers (if it answers one).
    Begin {
        remote_channel: Option<u16>,
    },
    /// An `attach`, `flow`, `transfer` or `disposition`: a frame for one of a session's links.
    Link,
    /// A `detach`; answers carry no error, and close (`closed: true`) what closed.
    Detach {
        closed: bool,
        with_error: bool,
    },
    End,
    Close,
    /// Protocol headers, SASL frames, `open`, empty (heartbeat) frames, unparsed bytes.
    Other,
}

impl Kind {
    /// A frame on a session's channel that is moot once the client has ended that session.
    fn is_for_links(self) -> bool {
        matches!(self, Kind::Link | Kind::Detach { .. })
    }

    /// A performative that is moot once the client has sent `Close`: a client in that state
    /// takes any frame but `close` for an illegal state (`ConnectionEngine::on_incoming` in
    /// `fe2o3-amqp` 0.16.2, `connection/engine.rs`) and its `close()` returns that error.
    fn is_moot_after_close(self) -> bool {
        !matches!(self, Kind::Close | Kind::Other)
    }
}

/// A protocol header or a frame, whole, with its channel and kind.
#[derive(Debug)]
struct Unit {
    bytes: Vec<u8>,
    channel: u16,
    kind: Kind,
}

/// Splits complete protocol headers and frames off the front of `buffer`. A malformed size
/// (below the 8-byte frame header) switches the reader to passing bytes through unparsed.
#[derive(Debug, Default)]
struct Framer {
    buffer: Vec<u8>,
    opaque: bool,
}

impl Framer {
    fn units(&mut self) -> Vec<Unit> {
        let mut units = Vec::new();
        let mut at = 0;
        loop {
            let rest = &self.buffer[at..];
            if self.opaque {
                if !rest.is_empty() {
                    units.push(Unit {
                        bytes: rest.to_vec(),
                        channel: 0,
                        kind: Kind::Other,
                    });
                    at = self.buffer.len();
                }
                break;
            }
            if rest.len() < 8 {
                break;
            }
            let size = if rest.starts_with(b"AMQP") {
                8
            } else {
                let size = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                if size < 8 {
                    self.opaque = true;
                    continue;
                }
                size
            };
            if rest.len() < size {
                break;
            }
            let bytes = rest[..size].to_vec();
            at += size;
            let (channel, kind) = inspect(&bytes);
            units.push(Unit {
                bytes,
                channel,
                kind,
            });
        }
        self.buffer.drain(..at);
        units
    }
}

/// The channel and kind of a frame (protocol headers and SASL frames are `Other`).
fn inspect(frame: &[u8]) -> (u16, Kind) {
    if frame.starts_with(b"AMQP") || frame.len() < 8 {
        return (0, Kind::Other);
    }
    let data_offset = usize::from(frame[4]) * 4;
    let is_amqp = frame[5] == 0;
    let channel = u16::from_be_bytes([frame[6], frame[7]]);
    let Some(body) = frame
        .get(data_offset..)
        .filter(|b| is_amqp && !b.is_empty())
    else {
        return (channel, Kind::Other);
    };
    // A performative is a described list: 0x00, then the descriptor as a small ulong (0x53) or
    // a ulong (0x80).
    let code = match body {
        [0x00, 0x53, code, ..] => u64::from(*code),
        [0x00, 0x80, rest @ ..] if rest.len() >= 8 => {
            let mut code = [0u8; 8];
            code.copy_from_slice(&rest[..8]);
            u64::from_be_bytes(code)
        }
        _ => return (channel, Kind::Other),
    };
    let kind = match code {
        BEGIN => match serde_amqp::from_slice::<Begin>(body) {
            Ok(begin) => Kind::Begin {
                remote_channel: begin.remote_channel,
            },
            Err(_) => Kind::Other,
        },
        ATTACH | FLOW | TRANSFER | DISPOSITION => Kind::Link,
        DETACH => match serde_amqp::from_slice::<Detach>(body) {
            Ok(detach) => Kind::Detach {
                closed: detach.closed,
                with_error: detach.error.is_some(),
            },
            Err(_) => Kind::Other,
        },
        END => Kind::End,
        CLOSE => Kind::Close,
        _ => Kind::Other,
    };
    (channel, kind)
}

/// A session as the relay follows it, from the endpoint's `begin` to the endpoint's `end`.
#[derive(Debug)]
struct Session {
    /// Tells this session from earlier ones on the same channels.
    id: u64,
    /// The client's channel of this session.
    client_channel: u16,
    /// The client's closing detaches the endpoint has not answered yet.
    unanswered_closes: usize,
    /// The client sent its `End`: the endpoint's link frames on this session are moot.
    ended_by_client: bool,
}

/// What the two directions share: the sessions, by either side's channel.
#[derive(Debug, Default)]
struct Sessions {
    /// The client's channel → the endpoint's channel, until either side ends the session.
    endpoint_channel: HashMap<u16, u16>,
    /// The endpoint's channel → the session, until the endpoint's `End` goes out.
    by_endpoint_channel: HashMap<u16, Session>,
    next_id: u64,
    /// The client sent `Close`: only the endpoint's `Close` still means something to it.
    client_closed: bool,
}

/// What the client ended, as `engine_to_client` learns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The client sent `End` on this session (by [`Session::id`]).
    Session(u64),
    /// The client sent `Close`.
    Connection,
}

/// What becomes of a frame from the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Sent, in order; `session` is the session the frame is for, if it is a link frame.
    Send { session: Option<u64>, hold: bool },
    /// Not sent: the client ended its session.
    Drop,
}

impl Sessions {
    /// Books a frame from the client, before the engine sees it (so that the engine's answer
    /// finds it booked).
    fn on_client_frame(&mut self, unit: &Unit) -> Option<Ended> {
        match unit.kind {
            Kind::Detach { closed: true, .. } => {
                let channel = self.endpoint_channel.get(&unit.channel)?;
                let session = self.by_endpoint_channel.get_mut(channel)?;
                session.unanswered_closes += 1;
                None
            }
            Kind::End => {
                let channel = self.endpoint_channel.remove(&unit.channel)?;
                let session = self.by_endpoint_channel.get_mut(&channel)?;
                session.ended_by_client = true;
                session.unanswered_closes = 0;
                Some(Ended::Session(session.id))
            }
            Kind::Close => {
                self.client_closed = true;
                Some(Ended::Connection)
            }
            Kind::Begin { .. } | Kind::Link | Kind::Detach { .. } | Kind::Other => None,
        }
    }

    /// Books a frame from the endpoint and says what becomes of it.
    fn on_endpoint_frame(&mut self, unit: &Unit) -> Verdict {
        let channel = unit.channel;
        if self.client_closed && unit.kind.is_moot_after_close() {
            return Verdict::Drop;
        }
        match unit.kind {
            Kind::Begin {
                remote_channel: Some(client_channel),
            } => {
                self.next_id += 1;
                self.endpoint_channel.insert(client_channel, channel);
                self.by_endpoint_channel.insert(
                    channel,
                    Session {
                        id: self.next_id,
                        client_channel,
                        unanswered_closes: 0,
                        ended_by_client: false,
                    },
                );
            }
            Kind::End => {
                // The endpoint's channel is free again; so is the client's, if the endpoint
                // ended first.
                if let Some(session) = self.by_endpoint_channel.remove(&channel)
                    && self.endpoint_channel.get(&session.client_channel) == Some(&channel)
                {
                    self.endpoint_channel.remove(&session.client_channel);
                }
            }
            kind if kind.is_for_links() => {
                if let Some(session) = self.by_endpoint_channel.get_mut(&channel) {
                    if session.ended_by_client {
                        return Verdict::Drop;
                    }
                    let answers_a_close =
                        kind == Kind::Detach {
                            closed: true,
                            with_error: false,
                        } && session.unanswered_closes > 0;
                    if answers_a_close {
                        session.unanswered_closes -= 1;
                    }
                    return Verdict::Send {
                        session: Some(session.id),
                        hold: answers_a_close,
                    };
                }
            }
            _ => {}
        }
        Verdict::Send {
            session: None,
            hold: false,
        }
    }
}

/// Relays between `socket` and the AMQP engine's end of the returned stream until either side
/// closes.
pub(crate) fn spawn(socket: tokio::net::TcpStream) -> tokio::io::DuplexStream {
    let _ = socket2::SockRef::from(&socket).set_tcp_quickack(true);
    let (engine_side, relay_side) = tokio::io::duplex(ENGINE_BUFFER);
    let (socket_read, socket_write) = socket.into_split();
    let (engine_read, engine_write) = tokio::io::split(relay_side);
    let sessions = Arc::new(Mutex::new(Sessions::default()));
    let (ended_tx, ended_rx) = mpsc::unbounded_channel();
    tokio::spawn(client_to_engine(
        socket_read,
        engine_write,
        sessions.clone(),
        ended_tx,
    ));
    tokio::spawn(engine_to_client(
        engine_read,
        socket_write,
        sessions,
        ended_rx,
    ));
    engine_side
}

fn lock(sessions: &Mutex<Sessions>) -> std::sync::MutexGuard<'_, Sessions> {
    // Every critical section leaves the maps consistent.
    sessions.lock().unwrap_or_else(|e| e.into_inner())
}

async fn client_to_engine(
    mut socket: tokio::net::tcp::OwnedReadHalf,
    mut engine: impl AsyncWrite + Unpin,
    sessions: Arc<Mutex<Sessions>>,
    ended: mpsc::UnboundedSender<Ended>,
) {
    let mut framer = Framer::default();
    loop {
        framer.buffer.reserve(READ_SIZE);
        match socket.read_buf(&mut framer.buffer).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        // Quick-ack mode is not permanent: the kernel may leave it after any segment.
        let _ = socket2::SockRef::from(socket.as_ref()).set_tcp_quickack(true);
        let mut out = Vec::new();
        for unit in framer.units() {
            if unit.kind != Kind::Other {
                tracing::trace!(channel = unit.channel, kind = ?unit.kind, "from the client");
            }
            if unit.kind != Kind::Link
                && let Some(what) = lock(&sessions).on_client_frame(&unit)
            {
                let _ = ended.send(what);
            }
            out.extend_from_slice(&unit.bytes);
        }
        if !out.is_empty() && engine.write_all(&out).await.is_err() {
            return;
        }
    }
    let _ = engine.shutdown().await;
}

/// A frame on its way to the client; an answer to a closing detach waits until `hold_until`.
#[derive(Debug)]
struct Outgoing {
    unit: Unit,
    /// The session of a link frame, which the client's `End` makes moot.
    session: Option<u64>,
    hold_until: Option<Instant>,
}

async fn engine_to_client(
    mut engine: impl AsyncRead + Unpin,
    mut socket: impl AsyncWrite + Unpin,
    sessions: Arc<Mutex<Sessions>>,
    mut ended: mpsc::UnboundedReceiver<Ended>,
) {
    let mut framer = Framer::default();
    let mut queue: VecDeque<Outgoing> = VecDeque::new();
    let mut ended_open = true;
    loop {
        let deadline = queue.front().and_then(|o| o.hold_until);
        framer.buffer.reserve(READ_SIZE);
        tokio::select! {
            read = engine.read_buf(&mut framer.buffer) => {
                match read {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let units = framer.units();
                let mut sessions = lock(&sessions);
                for unit in units {
                    let verdict = sessions.on_endpoint_frame(&unit);
                    if unit.kind != Kind::Other && unit.kind != Kind::Link {
                        tracing::trace!(channel = unit.channel, kind = ?unit.kind, ?verdict, "from the endpoint");
                    }
                    if let Verdict::Send { session, hold } = verdict {
                        let hold_until = hold.then(|| Instant::now() + ANSWER_HOLD);
                        queue.push_back(Outgoing { unit, session, hold_until });
                    }
                }
            }
            what = ended.recv(), if ended_open => match what {
                Some(Ended::Session(id)) => {
                    // The client ended the session: what the endpoint said to its links is moot.
                    queue.retain(|o| o.session != Some(id) || !o.unit.kind.is_for_links());
                }
                Some(Ended::Connection) => {
                    // The client closed the connection: all but the endpoint's `Close` is moot.
                    queue.retain(|o| !o.unit.kind.is_moot_after_close());
                }
                None => ended_open = false,
            },
            () = sleep_until(deadline), if deadline.is_some() => {
                if let Some(front) = queue.front_mut() {
                    tracing::trace!(channel = front.unit.channel, "no end from the client: the held answer goes out");
                    front.hold_until = None;
                }
            }
        }
        if !flush(&mut queue, &mut socket, false).await {
            return;
        }
    }
    // The engine is done: whatever it said goes out, then the client sees the end of the stream.
    if flush(&mut queue, &mut socket, true).await {
        let _ = socket.shutdown().await;
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Writes the frames at the front of the queue that are not held (all of them with `all`), in
/// one write: the engine writes each frame on its own, and a consumer's events come a frame each.
/// False when the client's socket is gone.
async fn flush(
    queue: &mut VecDeque<Outgoing>,
    socket: &mut (impl AsyncWrite + Unpin),
    all: bool,
) -> bool {
    let now = Instant::now();
    let mut out = Vec::new();
    while queue
        .front()
        .is_some_and(|o| all || o.hold_until.is_none_or(|t| t <= now))
    {
        let Some(outgoing) = queue.pop_front() else {
            break;
        };
        if out.is_empty() {
            out = outgoing.unit.bytes;
        } else {
            out.extend_from_slice(&outgoing.unit.bytes);
        }
    }
    out.is_empty() || (socket.write_all(&out).await.is_ok() && socket.flush().await.is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp::types::definitions::{Error as AmqpError, ErrorCondition, Handle};
    use fe2o3_amqp::types::performatives::{Close, End, Flow};

    fn frame(channel: u16, body: Vec<u8>) -> Vec<u8> {
        let mut frame = Vec::new();
        frame.extend_from_slice(&u32::try_from(8 + body.len()).expect("size").to_be_bytes());
        frame.extend_from_slice(&[2, 0]);
        frame.extend_from_slice(&channel.to_be_bytes());
        frame.extend_from_slice(&body);
        frame
    }

    fn begin(remote_channel: Option<u16>) -> Vec<u8> {
        serde_amqp::to_vec(&Begin {
            remote_channel,
            next_outgoing_id: 0,
            incoming_window: 10,
            outgoing_window: 10,
            handle_max: Handle(255),
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        })
        .expect("encode")
    }

    fn detach(handle: u32, closed: bool, error: Option<AmqpError>) -> Vec<u8> {
        serde_amqp::to_vec(&Detach {
            handle: Handle(handle),
            closed,
            error,
        })
        .expect("encode")
    }

    fn end() -> Vec<u8> {
        serde_amqp::to_vec(&End { error: None }).expect("encode")
    }

    fn flow() -> Vec<u8> {
        serde_amqp::to_vec(&Flow {
            next_incoming_id: Some(0),
            incoming_window: 10,
            next_outgoing_id: 0,
            outgoing_window: 10,
            handle: Some(Handle(0)),
            delivery_count: Some(0),
            link_credit: Some(10),
            available: None,
            drain: false,
            echo: false,
            properties: None,
        })
        .expect("encode")
    }

    fn unit(channel: u16, body: Vec<u8>) -> Unit {
        let bytes = frame(channel, body);
        let (channel, kind) = inspect(&bytes);
        Unit {
            bytes,
            channel,
            kind,
        }
    }

    fn failed() -> AmqpError {
        AmqpError::new(ErrorCondition::Custom("x:y".into()), None, None)
    }

    const SEND: Verdict = Verdict::Send {
        session: None,
        hold: false,
    };

    #[test]
    fn frames_are_split_and_recognised_across_reads() {
        let mut stream = b"AMQP\x00\x01\x00\x00".to_vec();
        stream.extend(frame(1, begin(Some(4))));
        stream.extend(frame(2, detach(3, true, None)));
        stream.extend(frame(2, detach(3, false, Some(failed()))));
        stream.extend(frame(2, flow()));
        stream.extend(frame(5, end()));
        // An empty (heartbeat) frame.
        stream.extend([0, 0, 0, 8, 2, 0, 0, 0]);

        let mut framer = Framer::default();
        let mut units = Vec::new();
        // Byte by byte: no frame comes out before it is whole.
        for byte in &stream {
            framer.buffer.push(*byte);
            units.extend(framer.units());
        }
        let kinds: Vec<(u16, Kind)> = units.iter().map(|u| (u.channel, u.kind)).collect();
        assert_eq!(
            kinds,
            [
                (0, Kind::Other),
                (
                    1,
                    Kind::Begin {
                        remote_channel: Some(4)
                    }
                ),
                (
                    2,
                    Kind::Detach {
                        closed: true,
                        with_error: false
                    }
                ),
                (
                    2,
                    Kind::Detach {
                        closed: false,
                        with_error: true
                    }
                ),
                (2, Kind::Link),
                (5, Kind::End),
                (0, Kind::Other),
            ]
        );
        let relayed: Vec<u8> = units.into_iter().flat_map(|u| u.bytes).collect();
        assert_eq!(relayed, stream, "the relay changes no byte");
    }

    #[test]
    fn a_malformed_size_passes_through_unparsed() {
        let mut framer = Framer::default();
        framer.buffer.extend([0, 0, 0, 3, 9, 9, 9, 9, 9, 9]);
        let units = framer.units();
        assert_eq!(units.len(), 1);
        assert_eq!(units[0].bytes, [0, 0, 0, 3, 9, 9, 9, 9, 9, 9]);
    }

    /// A session begun by the client on channel 3 and answered by the endpoint on channel 7.
    fn one_session() -> (Sessions, u64) {
        let mut sessions = Sessions::default();
        assert_eq!(sessions.on_client_frame(&unit(3, begin(None))), None);
        let Verdict::Send { session: None, .. } =
            sessions.on_endpoint_frame(&unit(7, begin(Some(3))))
        else {
            panic!("a begin is sent");
        };
        let id = sessions.by_endpoint_channel[&7].id;
        (sessions, id)
    }

    #[test]
    fn answers_the_endpoint_writes_after_the_clients_end_are_dropped() {
        // The client drops two links and their session: its detaches and its `End` reach the
        // relay before the endpoint answers any of them (one read, as under load).
        let (mut sessions, id) = one_session();
        assert_eq!(
            sessions.on_client_frame(&unit(3, detach(0, true, None))),
            None
        );
        assert_eq!(
            sessions.on_client_frame(&unit(3, detach(1, true, None))),
            None
        );
        assert_eq!(
            sessions.on_client_frame(&unit(3, end())),
            Some(Ended::Session(id))
        );
        assert_eq!(
            sessions.on_endpoint_frame(&unit(7, detach(0, true, None))),
            Verdict::Drop
        );
        assert_eq!(
            sessions.on_endpoint_frame(&unit(7, detach(1, true, None))),
            Verdict::Drop
        );
        assert_eq!(sessions.on_endpoint_frame(&unit(7, flow())), Verdict::Drop);
        assert_eq!(sessions.on_endpoint_frame(&unit(7, end())), SEND);
        // Both channels are free again: a new session on them is relayed as usual.
        assert_eq!(sessions.on_client_frame(&unit(3, begin(None))), None);
        assert_eq!(sessions.on_endpoint_frame(&unit(7, begin(Some(3)))), SEND);
        let new_id = sessions.by_endpoint_channel[&7].id;
        assert_ne!(new_id, id);
        assert_eq!(
            sessions.on_endpoint_frame(&unit(7, flow())),
            Verdict::Send {
                session: Some(new_id),
                hold: false
            }
        );
    }

    #[test]
    fn only_answers_to_closing_detaches_are_held() {
        let (mut sessions, id) = one_session();
        // A detach that does not close comes from a client waiting for the answer.
        sessions.on_client_frame(&unit(3, detach(0, false, None)));
        assert_eq!(
            sessions.on_endpoint_frame(&unit(7, detach(0, false, None))),
            Verdict::Send {
                session: Some(id),
                hold: false
            }
        );
        // A closing detach may come from a dropped link: its answer waits for the client's `End`.
        sessions.on_client_frame(&unit(3, detach(1, true, None)));
        assert_eq!(
            sessions.on_endpoint_frame(&unit(7, detach(1, true, None))),
            Verdict::Send {
                session: Some(id),
                hold: true
            }
        );
        // A detach the endpoint starts (an error, or nothing to answer) is not held.
        assert_eq!(
            sessions.on_endpoint_frame(&unit(7, detach(2, true, Some(failed())))),
            Verdict::Send {
                session: Some(id),
                hold: false
            }
        );
        assert_eq!(
            sessions.on_endpoint_frame(&unit(7, detach(2, true, None))),
            Verdict::Send {
                session: Some(id),
                hold: false
            }
        );
    }

    #[test]
    fn a_session_the_endpoint_ends_first_leaves_nothing_behind() {
        let (mut sessions, _) = one_session();
        assert_eq!(sessions.on_endpoint_frame(&unit(7, end())), SEND);
        // The client's `End` answers it; its channel maps to nothing any more.
        assert_eq!(sessions.on_client_frame(&unit(3, end())), None);
        assert!(sessions.endpoint_channel.is_empty());
        assert!(sessions.by_endpoint_channel.is_empty());
        // The endpoint's channel 7 now serves another of the client's sessions, which is not
        // taken for ended.
        sessions.on_client_frame(&unit(4, begin(None)));
        sessions.on_endpoint_frame(&unit(7, begin(Some(4))));
        let id = sessions.by_endpoint_channel[&7].id;
        assert_eq!(
            sessions.on_endpoint_frame(&unit(7, flow())),
            Verdict::Send {
                session: Some(id),
                hold: false
            }
        );
    }

    #[test]
    fn after_the_clients_close_only_the_endpoints_close_goes_out() {
        let (mut sessions, _) = one_session();
        assert_eq!(
            sessions.on_client_frame(&unit(
                0,
                serde_amqp::to_vec(&Close { error: None }).expect("encode")
            )),
            Some(Ended::Connection)
        );
        assert_eq!(sessions.on_endpoint_frame(&unit(7, end())), Verdict::Drop);
        assert_eq!(sessions.on_endpoint_frame(&unit(7, flow())), Verdict::Drop);
        assert_eq!(
            sessions.on_endpoint_frame(&unit(7, begin(Some(4)))),
            Verdict::Drop
        );
        assert_eq!(
            sessions.on_endpoint_frame(&unit(
                0,
                serde_amqp::to_vec(&Close { error: None }).expect("encode")
            )),
            SEND
        );
        // An empty (heartbeat) frame.
        let heartbeat = Unit {
            bytes: vec![0, 0, 0, 8, 2, 0, 0, 0],
            channel: 0,
            kind: Kind::Other,
        };
        assert_eq!(sessions.on_endpoint_frame(&heartbeat), SEND);
    }

    /// Reads from `stream` until `want` bytes came, or fails after a generous wait.
    async fn read_exactly(stream: &mut (impl AsyncRead + Unpin), want: usize) -> Vec<u8> {
        let mut got = vec![0; want];
        tokio::time::timeout(Duration::from_secs(30), stream.read_exact(&mut got))
            .await
            .expect("in time")
            .expect("read");
        got
    }

    #[tokio::test]
    async fn a_client_ending_its_session_with_its_detaches_gets_no_answer_to_them() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().expect("address"))
            .await
            .expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        let mut engine = spawn(accepted);

        let client_begin = frame(3, begin(None));
        client.write_all(&client_begin).await.expect("write");
        assert_eq!(
            read_exactly(&mut engine, client_begin.len()).await,
            client_begin
        );
        let endpoint_begin = frame(7, begin(Some(3)));
        engine.write_all(&endpoint_begin).await.expect("write");
        assert_eq!(
            read_exactly(&mut client, endpoint_begin.len()).await,
            endpoint_begin
        );

        // Two dropped links and their session, in one write: the endpoint answers after it has
        // read all three.
        let mut dropped = frame(3, detach(0, true, None));
        dropped.extend(frame(3, detach(1, true, None)));
        dropped.extend(frame(3, end()));
        client.write_all(&dropped).await.expect("write");
        assert_eq!(read_exactly(&mut engine, dropped.len()).await, dropped);
        let mut answers = frame(7, detach(0, true, None));
        answers.extend(frame(7, detach(1, true, None)));
        let endpoint_end = frame(7, end());
        answers.extend(&endpoint_end);
        let started = Instant::now();
        engine.write_all(&answers).await.expect("write");
        // Only the endpoint's `End` reaches the client, and without waiting for a hold.
        assert_eq!(
            read_exactly(&mut client, endpoint_end.len()).await,
            endpoint_end
        );
        assert!(
            started.elapsed() < ANSWER_HOLD,
            "the end waited {:?}",
            started.elapsed()
        );
        drop(engine);
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), client.read_to_end(&mut rest))
            .await
            .expect("in time")
            .expect("read");
        assert!(rest.is_empty(), "nothing after the end: {rest:?}");
    }
}
