//! What the server knows of one connection, as every request on it carries it in its
//! extensions: the TCP addresses, the verified client certificate (mutual TLS), and the count of
//! its open streams. The listener ([`crate::tls::incoming`]) makes it; the edge
//! ([`crate::grpc`]) reads it. Plain data, below both.

use parking_lot::Mutex;
use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use tokio::time::Instant;
use tonic::transport::server::TcpConnectInfo;

use crate::domain::certificate_binding::PresentedCertificate;

/// What tonic puts in the extensions of every request: the TCP addresses, the verified client
/// certificate (mutual TLS), and the connection's stream count (see [`ConnectionActivity`]).
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub tcp: TcpConnectInfo,
    /// The verified client certificate, if the client presented one.
    pub client_certificate: Option<ClientCertificate>,
    pub activity: Arc<ConnectionActivity>,
}

/// The verified client certificate of a mutual-TLS connection, as bindings compare it.
pub type ClientCertificate = Arc<PresentedCertificate>;

/// The streams a connection has open, and when it last had one: the edge counts each request
/// in ([`ConnectionActivity::stream`]), the connection closes itself when idle.
#[derive(Debug)]
pub struct ConnectionActivity {
    streams: AtomicUsize,
    last_stream_end: Mutex<Instant>,
}

/// One open stream; its end is recorded when dropped.
pub struct StreamHeld(Arc<ConnectionActivity>);

impl ConnectionActivity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            streams: AtomicUsize::new(0),
            last_stream_end: Mutex::new(Instant::now()),
        })
    }

    /// Counts one stream open until the answer is dropped.
    pub fn stream(self: &Arc<Self>) -> StreamHeld {
        self.streams.fetch_add(1, Ordering::SeqCst);
        StreamHeld(self.clone())
    }

    /// When the connection stops being wanted if nothing happens: `None` while streams are open.
    pub fn idle_since(&self) -> Option<Instant> {
        if self.streams.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(*self.last_stream_end.lock())
    }
}

impl Drop for StreamHeld {
    fn drop(&mut self) {
        *self.0.last_stream_end.lock() = Instant::now();
        self.0.streams.fetch_sub(1, Ordering::SeqCst);
    }
}
