//! Refused TLS handshakes, logged so that an operator can tell a client's mistake from the
//! outside: at info level with the likely cause (plaintext sent to the TLS port, a client that
//! does not trust the server's certificate, no client certificate under mutual TLS), at most
//! one line per [`INTERVAL`], saying how many were refused in between. A client sees only
//! "failed to find service" or a reset, so the server's log is where the reason has to be.

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_rustls::rustls::{self, AlertDescription};

/// At most one line per this long.
const INTERVAL: Duration = Duration::from_secs(10);

/// When the last line was written, and how many refusals have not been logged since.
#[derive(Debug)]
pub struct HandshakeLog {
    state: Mutex<(Option<Instant>, u64)>,
}

impl Default for HandshakeLog {
    fn default() -> Self {
        Self {
            state: Mutex::new((None, 0)),
        }
    }
}

impl HandshakeLog {
    /// Records a refused handshake; logs it unless a line was written within [`INTERVAL`].
    pub fn refused(&self, peer: std::net::SocketAddr, error: &std::io::Error) {
        let suppressed = {
            let mut state = self.state.lock();
            let now = Instant::now();
            if state
                .0
                .is_some_and(|last| now.duration_since(last) < INTERVAL)
            {
                state.1 += 1;
                return;
            }
            state.0 = Some(now);
            std::mem::take(&mut state.1)
        };
        tracing::info!(
            %peer,
            cause = likely_cause(error),
            %error,
            refused_since_last_line = suppressed,
            "TLS handshake refused"
        );
    }
}

/// What the client most likely did wrong, from the error rustls gave.
pub fn likely_cause(error: &std::io::Error) -> &'static str {
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return "the connection broke during the handshake";
    };
    match tls {
        rustls::Error::NoCertificatesPresented => {
            "the client sent no certificate, and mutual TLS requires one"
        }
        rustls::Error::InvalidCertificate(_) => {
            "the client's certificate is not signed by TLS_CLIENT_CA_FILE, or not valid now"
        }
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "the client did not speak TLS: plaintext sent to the TLS port (use https and a CA)"
        }
        rustls::Error::AlertReceived(
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown,
        ) => "the client does not trust the server's certificate: give it the CA that signed it",
        rustls::Error::PeerIncompatible(_) => {
            "the client offers no TLS version or cipher suite the server accepts"
        }
        _ => "the handshake failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_named_from_rustls_errors() {
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        assert!(
            likely_cause(&io(rustls::Error::NoCertificatesPresented)).contains("no certificate")
        );
        assert!(
            likely_cause(&io(rustls::Error::AlertReceived(
                AlertDescription::UnknownCA
            )))
            .contains("does not trust")
        );
        assert!(
            likely_cause(&std::io::Error::from(std::io::ErrorKind::ConnectionReset))
                .contains("broke")
        );
    }

    #[test]
    fn lines_are_rate_limited() {
        let log = HandshakeLog::default();
        let error = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let peer = "127.0.0.1:1".parse().unwrap();
        log.refused(peer, &error);
        log.refused(peer, &error);
        log.refused(peer, &error);
        assert_eq!(log.state.lock().1, 2, "two refusals wait for the next line");
    }
}
