//! Logging set-up: human-readable lines by default, JSON on request; the filter comes from
//! `--log-filter` / `RUST_LOG`. The per-RPC span is opened by the edge, in `grpc::trace`, with
//! the call's W3C trace context ([`crate::trace_context`]); JSON lines carry the span's fields,
//! so every line of a call has its trace id.

pub mod pool_waits;

use tracing_subscriber::{EnvFilter, Layer as _, fmt, prelude::*};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per event, for log collectors.
    Json,
}

/// Installs the global subscriber; logs go to standard error so standard output stays for
/// command results. Fails if the filter does not parse.
///
/// The log filter applies to the log layer only: the pool's acquisition events go to the
/// metrics ([`pool_waits`]) whatever it says, and never to the log.
pub fn init(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter = pool_waits::without_acquisitions(EnvFilter::try_new(filter)?);
    let registry = tracing_subscriber::registry().with(pool_waits::layer());
    match format {
        LogFormat::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            registry
                .with(
                    fmt::layer()
                        .with_ansi(ansi)
                        .with_writer(std::io::stderr)
                        .with_filter(filter),
                )
                .try_init()?
        }
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init()?,
    }
    Ok(())
}
