//! A frame-aware relay between a client's socket and the endpoint's AMQP engine, which holds back
//! the endpoint's answers to a client's detaches for a moment, to work around a race in the
//! client's `fe2o3-amqp`.
//!
//! The upstream bug (`fe2o3-amqp` 0.16.2, `session/engine.rs`, on the client side): the Azure
//! client drops its `$cbs` links and their session together right after a put-token. Each dropped
//! link sends a closing detach (`Drop for SenderInner`/`ReceiverInner`) and the session handle's
//! drop sends `End`, but the session keeps the dropped links' relays, whose channels are closed.
//! The peer's answering detach then cannot reach its link: `on_incoming_detach` fails with
//! `UnattachedHandle`. The session's event loop ignores such errors only once it has noticed
//! that every handle is gone; `tokio::select!` picks its ready branch at random, so when it takes
//! the incoming detach first, `on_error` calls `end_session`, whose `wait_for_remote_end` fails
//! again on the second answering detach and stops the session engine *before* the peer's `End`
//! arrives. The connection engine still maps that channel, cannot hand the peer's `End` to the
//! stopped session ("Session is not found") and closes the whole connection with
//! `amqp:not-found`. The client's next call on that connection fails with "Connection dropped:
//! Connection must have been closed" (`IllegalConnectionState`) or "Illegal session state".
//! Against the real service the answers are a network round trip away and the client's session
//! is past that point; on loopback, with the client's tasks slowed down by a loaded machine, the
//! answers can come first (about one test run in four here).
//!
//! The workaround: an answer to a client's detach is held back for [`ANSWER_HOLD`]. If the client
//! ends that session meanwhile, the answer is dropped (the client gave the links up with the
//! session and waits for nothing on them; the endpoint's `End` follows as usual); otherwise it is
//! sent when the hold expires, for a client that closes a link and waits for the answer. Frames
//! after a held one wait behind it, so the order on the connection is kept.
//!
//! The relay also acknowledges the client's TCP segments at once (`TCP_QUICKACK` after every
//! read). The client does not set `TCP_NODELAY`, so a small frame it writes right after another
//! waits for the first one's acknowledgement, which Linux delays by up to 40 ms when it has nothing
//! to send back: opening a connection and reading the hub's properties took about 200 ms instead
//! of a few.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fe2o3_amqp::types::performatives::{Begin, Detach};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long an answer to a client's detach waits for the client's `End` before it is sent.
pub(crate) const ANSWER_HOLD: Duration = Duration::from_millis(250);

/// Bytes buffered between the relay and the AMQP engine, each way (a frame is at most 256 KiB).
const ENGINE_BUFFER: usize = 512 * 1024;

/// Room made in a buffer before each read (a `Vec` otherwise grows 64 bytes at a time).
const READ_SIZE: usize = 64 * 1024;

/// Descriptor codes of the performatives the relay looks at (AMQP 1.0, part 2.7).
const BEGIN: u64 = 0x11;
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
    /// A `detach`; answers and plain detaches carry no error.
    Detach {
        with_error: bool,
    },
    End,
    Close,
    Other,
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
        DETACH => match serde_amqp::from_slice::<Detach>(body) {
            Ok(detach) => Kind::Detach {
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

/// What the two directions share: which of the endpoint's session channels answers which of the
/// client's, and how many of the client's detaches on each are not answered yet.
#[derive(Debug, Default)]
struct Sessions {
    /// The client's channel → the endpoint's channel of the same session.
    endpoint_channel: HashMap<u16, u16>,
    /// The endpoint's channel → detaches from the client still to be answered.
    unanswered: HashMap<u16, usize>,
}

/// The client ended a session (by the endpoint's channel), or closed the connection (`None`).
type Ended = Option<u16>;

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
            // Book-keep before the engine sees the frame, so that its answer finds it counted.
            match unit.kind {
                Kind::Detach { .. } => {
                    let mut sessions = lock(&sessions);
                    if let Some(&channel) = sessions.endpoint_channel.get(&unit.channel) {
                        *sessions.unanswered.entry(channel).or_default() += 1;
                    }
                }
                Kind::End => {
                    let mut sessions = lock(&sessions);
                    if let Some(channel) = sessions.endpoint_channel.remove(&unit.channel) {
                        sessions.unanswered.remove(&channel);
                        let _ = ended.send(Some(channel));
                    }
                }
                Kind::Close => {
                    let _ = ended.send(None);
                }
                Kind::Begin { .. } | Kind::Other => {}
            }
            out.extend_from_slice(&unit.bytes);
        }
        if !out.is_empty() && engine.write_all(&out).await.is_err() {
            return;
        }
    }
    let _ = engine.shutdown().await;
}

/// A frame on its way to the client; an answer to a detach waits until `hold_until`.
#[derive(Debug)]
struct Outgoing {
    unit: Unit,
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
                for unit in framer.units() {
                    let hold_until = match unit.kind {
                        Kind::Begin { remote_channel: Some(client) } => {
                            lock(&sessions).endpoint_channel.insert(client, unit.channel);
                            None
                        }
                        Kind::Detach { with_error: false } => {
                            let mut sessions = lock(&sessions);
                            match sessions.unanswered.get_mut(&unit.channel) {
                                Some(count) if *count > 0 => {
                                    *count -= 1;
                                    Some(Instant::now() + ANSWER_HOLD)
                                }
                                _ => None,
                            }
                        }
                        _ => None,
                    };
                    queue.push_back(Outgoing { unit, hold_until });
                }
            }
            channel = ended.recv(), if ended_open => match channel {
                Some(channel) => {
                    // The client ended the session (or the connection): its answers are moot.
                    queue.retain(|o| {
                        o.hold_until.is_none() || channel.is_some_and(|c| c != o.unit.channel)
                    });
                }
                None => ended_open = false,
            },
            () = sleep_until(deadline), if deadline.is_some() => {
                if let Some(front) = queue.front_mut() {
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
    use fe2o3_amqp::types::performatives::End;

    fn frame(channel: u16, body: Vec<u8>) -> Vec<u8> {
        let mut frame = Vec::new();
        frame.extend_from_slice(&u32::try_from(8 + body.len()).expect("size").to_be_bytes());
        frame.extend_from_slice(&[2, 0]);
        frame.extend_from_slice(&channel.to_be_bytes());
        frame.extend_from_slice(&body);
        frame
    }

    fn detach(error: Option<AmqpError>) -> Detach {
        Detach {
            handle: Handle(3),
            closed: true,
            error,
        }
    }

    #[test]
    fn frames_are_split_and_recognised_across_reads() {
        let begin = Begin {
            remote_channel: Some(4),
            next_outgoing_id: 0,
            incoming_window: 10,
            outgoing_window: 10,
            handle_max: Handle(255),
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        let mut stream = b"AMQP\x00\x01\x00\x00".to_vec();
        stream.extend(frame(1, serde_amqp::to_vec(&begin).expect("encode")));
        stream.extend(frame(2, serde_amqp::to_vec(&detach(None)).expect("encode")));
        let failed = AmqpError::new(ErrorCondition::Custom("x:y".into()), None, None);
        stream.extend(frame(
            2,
            serde_amqp::to_vec(&detach(Some(failed))).expect("encode"),
        ));
        stream.extend(frame(
            5,
            serde_amqp::to_vec(&End { error: None }).expect("encode"),
        ));
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
                (2, Kind::Detach { with_error: false }),
                (2, Kind::Detach { with_error: true }),
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
}
