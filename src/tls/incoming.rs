//! The listener's connections, plaintext or TLS, as tonic takes them, guarded against peers
//! that would only hold descriptors: one accept loop for both, which
//!
//! - caps connections in total, per peer address, and those still opening (TLS handshake, or the
//!   HTTP/2 preface on plaintext): a connection over a cap is closed at once, so one peer's
//!   thousand idle sockets cannot take the descriptors every other caller needs;
//! - gives each new connection a deadline to finish its TLS handshake and send the HTTP/2
//!   preface, and closes a connection that has had no stream for the idle timeout (HTTP/2
//!   pings do not count: they keep a dead peer's connection open, not a used one);
//! - keeps accepting when the process runs out of descriptors (EMFILE), after a short pause.
//!
//! Each opening connection is handled in a task of its own, so a slow or hostile peer holds up
//! nobody else. A refused handshake (no client certificate under mutual TLS, a protocol below
//! TLS 1.2) ends there, logged at debug: it is the peer's problem, not ours.

use parking_lot::Mutex;
use std::{
    collections::HashMap,
    future::Future,
    io,
    net::IpAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures_util::Stream;
use sha2::Digest as _;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    task::JoinHandle,
    time::{Instant, Sleep},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::{
    connection::{ClientCertificate, ConnectionActivity, ConnectionInfo},
    domain::certificate_binding::PresentedCertificate,
};

/// Connections ready for the server, waiting for it to take them.
const READY_QUEUE: usize = 128;
/// The bytes of the HTTP/2 client preface (RFC 9113 §3.4).
const PREFACE_BYTES: usize = 24;

/// How many connections the listener keeps, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub max_per_peer: usize,
    /// Connections still in their TLS handshake or HTTP/2 preface.
    pub max_opening: usize,
    /// For the TLS handshake and the HTTP/2 preface together.
    pub opening_timeout: Duration,
    /// A connection without a stream for this long is closed.
    pub idle_timeout: Duration,
}

/// The connections held, in total and per peer address; a [`Place`] is one of them.
struct Places {
    limits: ConnectionLimits,
    total: AtomicUsize,
    per_peer: Mutex<HashMap<IpAddr, usize>>,
    opening: Arc<Semaphore>,
}

/// A connection's place in the caps, given back when the connection is dropped.
struct Place {
    places: Arc<Places>,
    peer: IpAddr,
}

impl Places {
    fn take(self: &Arc<Self>, peer: IpAddr) -> Option<Place> {
        let mut per_peer = self.per_peer.lock();
        let held = per_peer.entry(peer).or_insert(0);
        if *held >= self.limits.max_per_peer
            || self.total.load(Ordering::SeqCst) >= self.limits.max_connections
        {
            if *held == 0 {
                per_peer.remove(&peer);
            }
            return None;
        }
        *held += 1;
        self.total.fetch_add(1, Ordering::SeqCst);
        Some(Place {
            places: self.clone(),
            peer,
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut per_peer = self.places.per_peer.lock();
        if let Some(held) = per_peer.get_mut(&self.peer) {
            *held -= 1;
            if *held == 0 {
                per_peer.remove(&self.peer);
            }
        }
        self.places.total.fetch_sub(1, Ordering::SeqCst);
    }
}

enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// One accepted connection, past its TLS handshake (if any), as the server reads it.
pub struct Connection {
    transport: Transport,
    info: ConnectionInfo,
    _place: Place,
    /// Until the HTTP/2 preface has arrived: its deadline, and the opening slot it holds.
    opening: Option<(Pin<Box<Sleep>>, OwnedSemaphorePermit)>,
    read: usize,
    idle_timeout: Duration,
    idle_check: Pin<Box<Sleep>>,
}

impl Connected for Connection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info.clone()
    }
}

impl Connection {
    /// Whether the connection has outlived its opening deadline or its idle timeout; arms the
    /// timers so that the task is woken when either passes.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<&'static str> {
        if let Some((deadline, _)) = &mut self.opening
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Some("the HTTP/2 preface did not arrive in time");
        }
        loop {
            let Some(since) = self.info.activity.idle_since() else {
                // Streams are open: look again once a timeout from now, and only then move the
                // timer (not on every read: this runs whenever the socket has nothing more).
                if self.idle_check.is_elapsed() {
                    let next = Instant::now() + self.idle_timeout;
                    self.idle_check.as_mut().reset(next);
                }
                let _ = self.idle_check.as_mut().poll(cx);
                return None;
            };
            let due = since + self.idle_timeout;
            if Instant::now() >= due {
                return Some("the connection had no stream for the idle timeout");
            }
            if self.idle_check.deadline() != due {
                self.idle_check.as_mut().reset(due);
            }
            if self.idle_check.as_mut().poll(cx).is_pending() {
                return None;
            }
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = match &mut self.transport {
            Transport::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        };
        match polled {
            Poll::Ready(result) => {
                self.read += buf.filled().len() - before;
                if self.read >= PREFACE_BYTES {
                    // The preface is in: the opening slot goes back.
                    self.opening = None;
                }
                Poll::Ready(result)
            }
            Poll::Pending => match self.expired(cx) {
                Some(why) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why))),
                None => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.transport {
            Transport::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.transport {
            Transport::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.transport {
            Transport::Plain(stream) => stream.is_write_vectored(),
            Transport::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.transport {
            Transport::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.transport {
            Transport::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The accept loop (abort it when the server stops) and the stream of connections it yields;
/// `tls` is the listener's TLS, if it serves TLS.
pub fn accept(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
) -> (
    JoinHandle<()>,
    impl Stream<Item = io::Result<Connection>> + Send + 'static,
) {
    let (ready, waiting) = mpsc::channel(READY_QUEUE);
    let places = Arc::new(Places {
        limits,
        total: AtomicUsize::new(0),
        per_peer: Mutex::new(HashMap::new()),
        opening: Arc::new(Semaphore::new(limits.max_opening.max(1))),
    });
    let accepting = tokio::spawn(accept_loop(listener, tls, places, ready));
    let connections = futures_util::stream::unfold(waiting, |mut waiting| async move {
        let connection = waiting.recv().await?;
        Some((Ok(connection), waiting))
    });
    (accepting, connections)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    places: Arc<Places>,
    ready: mpsc::Sender<Connection>,
) {
    let limits = places.limits;
    let refusals = Arc::new(super::handshake_log::HandshakeLog::default());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // The server stopped taking connections (shutdown began): close the listener, so
            // that new connections are refused rather than accepted and never served.
            () = ready.closed() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: pause rather than spin, then go on.
                tracing::warn!(%error, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Over a cap: closed at once (dropping the socket), before any byte is read.
        let Some(place) = places.take(peer.ip()) else {
            tracing::debug!(%peer, "connection refused: over the connection caps");
            continue;
        };
        let Ok(opening) = places.opening.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "connection refused: too many connections opening");
            continue;
        };
        // A multi-segment answer must not wait for a delayed ACK.
        let _ = tcp.set_nodelay(true);
        let tcp_info = TcpConnectInfo {
            local_addr: tcp.local_addr().ok(),
            remote_addr: Some(peer),
        };
        let tls = tls.clone();
        let ready = ready.clone();
        let refusals = refusals.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + limits.opening_timeout;
            let (transport, client_certificate) = match tls {
                None => (Transport::Plain(tcp), None),
                Some(acceptor) => {
                    match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let certificate = client_certificate(&stream);
                            (Transport::Tls(Box::new(stream)), certificate)
                        }
                        Ok(Err(error)) => {
                            refusals.refused(peer, &error);
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            let connection = Connection {
                transport,
                info: ConnectionInfo {
                    tcp: tcp_info,
                    client_certificate,
                    activity: ConnectionActivity::new(),
                },
                _place: place,
                opening: Some((Box::pin(tokio::time::sleep_until(deadline)), opening)),
                read: 0,
                idle_timeout: limits.idle_timeout,
                idle_check: Box::pin(tokio::time::sleep(limits.idle_timeout)),
            };
            let _ = ready.send(connection).await;
        });
    }
}

/// Raises the soft limit of open descriptors to the hard one (logged), so that the connection
/// caps, not the default soft limit, decide when connections are refused; warns when the caps
/// do not fit under it.
pub fn raise_descriptor_limit(limits: &ConnectionLimits) {
    match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, hard)) => {
            let raised = if soft < hard {
                match rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard) {
                    Ok(()) => {
                        tracing::info!(from = soft, to = hard, "raised the open descriptor limit");
                        hard
                    }
                    Err(error) => {
                        tracing::warn!(%error, soft, hard, "could not raise the open descriptor limit");
                        soft
                    }
                }
            } else {
                soft
            };
            // Room for the database pool, the provider connections, files and the metrics port.
            let needed = limits.max_connections as u64 + 128;
            if raised < needed {
                tracing::warn!(
                    descriptor_limit = raised,
                    max_connections = limits.max_connections,
                    "MAX_CONNECTIONS and 128 more descriptors do not fit under the descriptor \
                     limit: when it is reached, new connections wait until others close"
                );
            }
        }
        Err(error) => tracing::warn!(%error, "could not read the open descriptor limit"),
    }
}

/// The end-entity certificate the client presented (rustls has verified it against the client
/// CA by now), if it presented one: its parsed subject, fingerprint and URI names.
fn client_certificate(stream: &TlsStream<TcpStream>) -> Option<ClientCertificate> {
    let leaf = stream.get_ref().1.peer_certificates()?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let subject = parsed
        .subject()
        .iter_attributes()
        .map(|attribute| {
            let value = attribute.as_str().map_or_else(
                |_| {
                    let raw = attribute.attr_value().data;
                    format!(
                        "#{}",
                        raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
                    )
                },
                str::to_owned,
            );
            (attribute.attr_type().to_id_string(), value)
        })
        .collect();
    let uris = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|names| {
            names
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Arc::new(PresentedCertificate {
        subject,
        sha256: sha2::Sha256::digest(leaf.as_ref()).into(),
        uris,
    }))
}
