//! The listener's connections over TLS, as tonic takes them: an accept loop hands each new
//! connection's handshake to a task of its own (a slow or hostile peer holds up nobody else),
//! bounded in time, and passes on the connections whose handshake succeeded. A refused
//! handshake (no client certificate under mutual TLS, a protocol below TLS 1.2, a client that
//! does not trust us) ends there, logged at debug: it is the peer's problem, not ours.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::Stream;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    task::JoinHandle,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tonic::transport::server::{Connected, TcpConnectInfo};

use sha2::Digest as _;

use crate::domain::certificate_binding::PresentedCertificate;

/// How long a handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const READY_QUEUE: usize = 128;

/// One accepted connection after its TLS handshake. Its requests carry the TCP connection info
/// (admission's per-connection share reads it) and [`ClientCertificate`] when the client
/// presented one (mutual TLS), which binds service account tokens to certificates.
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    info: TlsConnectInfo,
}

/// What tonic puts in the extensions of every request of a TLS connection.
#[derive(Debug, Clone)]
pub struct TlsConnectInfo {
    pub tcp: TcpConnectInfo,
    /// The verified client certificate, if the client presented one.
    pub client_certificate: Option<ClientCertificate>,
}

/// The verified client certificate of a mutual-TLS connection, as bindings compare it.
pub type ClientCertificate = Arc<PresentedCertificate>;

impl Connected for TlsConnection {
    type ConnectInfo = TlsConnectInfo;

    fn connect_info(&self) -> TlsConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The accept loop (abort it when the server stops) and the stream of connections it yields.
pub fn accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> (
    JoinHandle<()>,
    impl Stream<Item = io::Result<TlsConnection>> + Send + 'static,
) {
    let (ready, waiting) = mpsc::channel(READY_QUEUE);
    let accepting = tokio::spawn(accept_loop(listener, acceptor, ready));
    let connections = futures_util::stream::unfold(waiting, |mut waiting| async move {
        let connection = waiting.recv().await?;
        Some((Ok(connection), waiting))
    });
    (accepting, connections)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<TlsConnection>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!(%error, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if ready.is_closed() {
            return;
        }
        // As for plain TCP: a multi-segment answer must not wait for a delayed ACK.
        let _ = tcp.set_nodelay(true);
        let info = TcpConnectInfo {
            local_addr: tcp.local_addr().ok(),
            remote_addr: Some(peer),
        };
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let info = TlsConnectInfo {
                        tcp: info,
                        client_certificate: client_certificate(&stream),
                    };
                    let _ = ready.send(TlsConnection { stream, info }).await;
                }
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake refused");
                }
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
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
