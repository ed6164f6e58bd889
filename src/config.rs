//! Settings from flags with environment fallbacks, and the development/production split.
//!
//! Development mode (the default) needs only a reachable PostgreSQL: it creates the database if
//! missing and generates, once, an encryption key and an admin token that it keeps in a file only
//! its owner can read. Production mode refuses to start unless `DATABASE_URL`, `ADMIN_TOKEN` and
//! `ENCRYPTION_KEY` are all given and well-formed.

use std::{
    fs,
    io::Write,
    net::SocketAddr,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail, ensure};
use clap::{Args, Parser, Subcommand, ValueEnum};
use zeroize::Zeroizing;

use crate::{
    domain::token::IssuedToken,
    providers::{ProviderSettings, egress::EgressPolicy},
    telemetry::LogFormat,
    tls::TlsSettings,
    tls::incoming::ConnectionLimits,
    vault::{KeyRing, MasterKey},
};

pub const DEV_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/llm_registry";
/// An admin token shorter than this is refused: it would be guessable.
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;

#[derive(Debug, Parser)]
#[command(
    name = "llm-registry",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("LLMR_GIT_COMMIT"), ")"),
    about = "gRPC registry of LLM and embedding services: definitions, instances with write-only API keys, sharing, projects.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings of `serve`, which runs when no command is given.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply migrations, then serve gRPC until SIGINT/SIGTERM (the default command).
    Serve(Box<ServeArgs>),
    /// Apply pending migrations and exit.
    Migrate,
    /// Re-encrypt every stored API key under the primary key, in batches, while the service
    /// keeps serving. Safe to interrupt and run again.
    RotateKeys(RotateKeysArgs),
    /// Ask a running server's health service; exit 0 only when it answers SERVING (for images
    /// without grpc_health_probe).
    Healthcheck(HealthcheckArgs),
}

#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// The server, as host:port.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub addr: String,
    /// PEM CA file: connect over TLS, trusting it (without it, plaintext).
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the host of --addr).
    #[arg(long)]
    pub server_name: Option<String>,
    /// Client certificate (PEM) for a server that requires mutual TLS, with --key.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// The service to ask about ("" is the server as a whole).
    #[arg(long, default_value = "")]
    pub service: String,
    /// How long to wait for the answer, connecting included, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Local use: defaults for everything, generated secrets kept in a private file.
    Development,
    /// Real deployments: every secret must be given explicitly.
    Production,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// development (default; not for production) or production.
    #[arg(long, env = "LLM_REGISTRY_MODE", value_enum, default_value_t = Mode::Development, global = true)]
    pub mode: Mode,
    /// PostgreSQL URL. Development default: postgres://postgres@127.0.0.1:5432/llm_registry.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Log filter in tracing's EnvFilter syntax, e.g. `info` or `llm_registry=debug,info`.
    #[arg(long, env = "RUST_LOG", default_value = "info", global = true)]
    pub log_filter: String,
    /// Where development mode keeps its generated secrets. Default:
    /// $XDG_STATE_HOME/llm-registry/dev-secrets.env (or ~/.local/state/...).
    #[arg(long, env = "DEV_SECRETS_FILE", global = true)]
    pub dev_secrets_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (the log says which).
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    pub listen_addr: SocketAddr,
    /// The administrator's bearer token (at least 32 characters). Required in production.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Longest time one request may take, in seconds.
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// Largest request or response message, in bytes.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 1024 * 1024)]
    pub max_message_bytes: usize,
    /// Calls served at once across all connections; more wait their turn.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 64)]
    pub max_concurrent_requests: usize,
    /// Calls that may wait for a turn; beyond that, calls are shed with RESOURCE_EXHAUSTED.
    #[arg(long, env = "MAX_QUEUED_REQUESTS", default_value_t = 256)]
    pub max_queued_requests: usize,
    /// How long a request's body may take to arrive after its headers, in milliseconds. A call
    /// whose body is late is refused (DEADLINE_EXCEEDED) before it takes an admission slot.
    #[arg(long, env = "REQUEST_BODY_TIMEOUT_MS", default_value_t = 5000)]
    pub request_body_timeout_ms: u64,
    /// The share of the running and queued slots (percent) that one connection may hold.
    #[arg(long, env = "MAX_SHARE_PER_CONNECTION_PERCENT", default_value_t = 50,
          value_parser = clap::value_parser!(u8).range(1..=100))]
    pub max_share_per_connection_percent: u8,
    /// The share of the running and queued slots (percent) that one caller may hold.
    #[arg(long, env = "MAX_SHARE_PER_CALLER_PERCENT", default_value_t = 50,
          value_parser = clap::value_parser!(u8).range(1..=100))]
    pub max_share_per_caller_percent: u8,
    /// HTTP/2 streams one connection may have open at once.
    #[arg(long, env = "HTTP2_MAX_CONCURRENT_STREAMS", default_value_t = 128)]
    pub http2_max_concurrent_streams: u32,
    /// Largest HTTP/2 header list a request may send, in bytes.
    #[arg(long, env = "HTTP2_MAX_HEADER_LIST_BYTES", default_value_t = 16 * 1024)]
    pub http2_max_header_list_bytes: u32,
    /// How often an idle connection is pinged (HTTP/2 keep-alive), in seconds; a peer that does
    /// not answer within 20 seconds is disconnected.
    #[arg(long, env = "HTTP2_KEEPALIVE_SECS", default_value_t = 60)]
    pub http2_keepalive_secs: u64,
    /// Connections the listener keeps open at once; beyond, new ones are closed at once.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 1000)]
    pub max_connections: usize,
    /// Connections one peer address may keep open at once (a proxy in front counts as one).
    /// Below MAX_OPENING_CONNECTIONS, so that one peer's connections that never open cannot
    /// take every opening place.
    #[arg(long, env = "MAX_CONNECTIONS_PER_PEER", default_value_t = 64)]
    pub max_connections_per_peer: usize,
    /// Connections still in their TLS handshake or HTTP/2 preface at once.
    #[arg(long, env = "MAX_OPENING_CONNECTIONS", default_value_t = 256)]
    pub max_opening_connections: usize,
    /// Time a new connection has to finish its TLS handshake and send the HTTP/2 preface, in
    /// milliseconds.
    #[arg(long, env = "CONNECTION_OPENING_TIMEOUT_MS", default_value_t = 5000)]
    pub connection_opening_timeout_ms: u64,
    /// A connection without a stream for this long is closed, in seconds.
    #[arg(long, env = "CONNECTION_IDLE_TIMEOUT_SECS", default_value_t = 300)]
    pub connection_idle_timeout_secs: u64,
    /// Refused calls of one caller that the audit trail records one by one per minute; further
    /// ones are counted in one summary row.
    #[arg(long, env = "REFUSALS_PER_MINUTE", default_value_t = 20)]
    pub refusals_per_minute: u32,
    /// Longest time one SQL statement of a call may run before PostgreSQL cancels it, in
    /// milliseconds (migrations are exempt).
    #[arg(long, env = "DB_STATEMENT_TIMEOUT_MS", default_value_t = 10_000)]
    pub db_statement_timeout_ms: u64,
    /// Size of the database connection pool.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
    /// Answers the read cache may hold (who holds a token; GetInstance answers); 0 turns it
    /// off. The cache is never stale, across replicas too: see docs/operations.md.
    #[arg(long, env = "READ_CACHE_ENTRIES", default_value_t = 10_000)]
    pub read_cache_entries: usize,
    /// On shutdown, how long in-flight calls may finish before the rest are cut, in seconds.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
    /// How often health probes the database, in milliseconds.
    #[arg(long, env = "HEALTH_CHECK_INTERVAL_MS", default_value_t = 2000)]
    pub health_check_interval_ms: u64,
    /// Address of the Prometheus metrics listener (`GET /metrics`), e.g. `0.0.0.0:9090`; off
    /// when unset. Never the gRPC port.
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub providers: ProviderArgs,
    #[command(flatten)]
    pub release: ReleaseArgs,
}

/// `CredentialService.ResolveCredential`: the one way a key leaves the registry
/// (docs/operations.md, "Service accounts").
#[derive(Debug, Clone, Args)]
pub struct ReleaseArgs {
    /// Credential releases one service account may receive per minute, counted across
    /// replicas; beyond, RESOURCE_EXHAUSTED. 0 turns ResolveCredential off.
    #[arg(long, env = "CREDENTIAL_RELEASES_PER_MINUTE", default_value_t = 600)]
    pub credential_releases_per_minute: u32,
    /// Allow ResolveCredential over a listener without TLS (a sidecar on loopback). Not needed
    /// when TLS_CERT_FILE is set or TLS_TERMINATED_UPSTREAM=true.
    #[arg(
        long,
        env = "ALLOW_PLAINTEXT_CREDENTIAL_RELEASE",
        default_value_t = false
    )]
    pub allow_plaintext_credential_release: bool,
}

/// TLS on the gRPC listener (docs/operations.md, "TLS and mutual TLS").
#[derive(Debug, Clone, Args)]
pub struct TlsArgs {
    /// PEM certificate chain the listener serves (server certificate first). With
    /// TLS_KEY_FILE, gRPC is served over TLS only; the files are reloaded when they change.
    #[arg(long, env = "TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of TLS_CERT_FILE's first certificate.
    #[arg(long, env = "TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificates: when set, every client must present a certificate they signed
    /// (mutual TLS); a connection without one is refused during the handshake.
    #[arg(long, env = "TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// Production without TLS_CERT_FILE: say that TLS ends in front of the service (a mesh
    /// sidecar, a load balancer) and plaintext gRPC is served.
    #[arg(long, env = "TLS_TERMINATED_UPSTREAM", default_value_t = false)]
    pub tls_terminated_upstream: bool,
    /// How often the certificate files are checked for a change, in milliseconds.
    #[arg(long, env = "TLS_RELOAD_INTERVAL_MS", default_value_t = 1000)]
    pub tls_reload_interval_ms: u64,
}

/// Outbound provider calls (Embed, TestInstance): where keys may go, and how calls are bounded.
#[derive(Debug, Clone, Args)]
pub struct ProviderArgs {
    /// Non-public address classes provider endpoints may resolve to, comma-separated:
    /// `loopback`, `private`, `link-local`. Default: `loopback` in development, none in
    /// production. Public addresses are always allowed; 0.0.0.0, multicast and reserved never.
    #[arg(long, env = "PROVIDER_EGRESS_ALLOW")]
    pub provider_egress_allow: Option<String>,
    /// Hosts a key may be sent to over plain http (e.g. `127.0.0.1,models.internal`),
    /// comma-separated; every other endpoint must be https.
    #[arg(long, env = "PROVIDER_PLAIN_HTTP_HOSTS", default_value = "")]
    pub provider_plain_http_hosts: String,
    /// A PEM file of CA certificates trusted for provider endpoints besides the public roots.
    #[arg(long, env = "PROVIDER_CA_FILE")]
    pub provider_ca_file: Option<PathBuf>,
    /// Longest wait for one provider request (one attempt), in milliseconds.
    #[arg(long, env = "PROVIDER_ATTEMPT_TIMEOUT_MS", default_value_t = 30_000)]
    pub provider_attempt_timeout_ms: u64,
    /// Longest wait for a connection to a provider, in milliseconds.
    #[arg(long, env = "PROVIDER_CONNECT_TIMEOUT_MS", default_value_t = 5_000)]
    pub provider_connect_timeout_ms: u64,
    /// Attempts per provider request, the first included (429, 408, 5xx and connection errors
    /// are retried).
    #[arg(long, env = "PROVIDER_MAX_ATTEMPTS", default_value_t = 3)]
    pub provider_max_attempts: u32,
    /// The first retry's backoff, in milliseconds; it doubles per attempt, with jitter.
    #[arg(long, env = "PROVIDER_BACKOFF_BASE_MS", default_value_t = 250)]
    pub provider_backoff_base_ms: u64,
    /// Largest provider reply read, in bytes (at most PROVIDER_REPLY_BUDGET_BYTES).
    #[arg(long, env = "PROVIDER_MAX_REPLY_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub provider_max_reply_bytes: usize,
    /// Provider reply bytes all calls of this process may hold at once; a call whose reply
    /// would go past it waits up to a second, then is refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "PROVIDER_REPLY_BUDGET_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub provider_reply_budget_bytes: usize,
    /// Largest Embed answer, in bytes of vectors (inputs x dimensions x 4): a call that could
    /// answer more is refused before it is sent, a reply that holds more is refused unread.
    #[arg(long, env = "PROVIDER_MAX_ANSWER_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub provider_max_answer_bytes: usize,
    /// Provider calls (Embed, TestInstance) running at once on this replica, in a pool of
    /// their own apart from MAX_CONCURRENT_REQUESTS; beyond, RESOURCE_EXHAUSTED at once.
    #[arg(long, env = "PROVIDER_MAX_CONCURRENT_CALLS", default_value_t = 64)]
    pub provider_max_concurrent_calls: usize,
    /// Provider calls one caller may have running at once on this replica; the acting user and
    /// the service account acting for them each count.
    #[arg(long, env = "PROVIDER_CALLS_PER_CALLER", default_value_t = 16)]
    pub provider_calls_per_caller: usize,
    /// Batches of one Embed call sent at once.
    #[arg(long, env = "PROVIDER_BATCHES_IN_FLIGHT", default_value_t = 4)]
    pub provider_batches_in_flight: usize,
    /// Provider calls of one instance running at once on this replica.
    #[arg(long, env = "PROVIDER_CONCURRENCY_PER_INSTANCE", default_value_t = 32)]
    pub provider_concurrency_per_instance: usize,
    /// Provider calls per instance per minute, counted across all replicas; 0 means no limit.
    #[arg(long, env = "PROVIDER_REQUESTS_PER_MINUTE", default_value_t = 0)]
    pub provider_requests_per_minute: u32,
    /// Texts per Embed call.
    #[arg(long, env = "PROVIDER_MAX_INPUTS", default_value_t = 512)]
    pub provider_max_inputs: usize,
    /// Bytes per text of an Embed call.
    #[arg(long, env = "PROVIDER_MAX_INPUT_BYTES", default_value_t = 32 * 1024)]
    pub provider_max_input_bytes: usize,
}

/// The master keys, shared by `serve` and `rotate-keys`.
#[derive(Debug, Clone, Args)]
pub struct KeyArgs {
    /// Primary master key for API keys at rest (encrypts; decrypts too): base64 of 32 random
    /// bytes, e.g. from `openssl rand -base64 32`. Required in production.
    #[arg(long, env = "ENCRYPTION_KEY", hide_env_values = true)]
    pub encryption_key: Option<String>,
    /// Previous master keys that still decrypt (comma-separated base64), kept until
    /// `rotate-keys` has re-encrypted everything under the primary.
    #[arg(long, env = "ENCRYPTION_KEYS_PREVIOUS", hide_env_values = true)]
    pub encryption_keys_previous: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct RotateKeysArgs {
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Keys re-encrypted per transaction.
    #[arg(long, env = "ROTATE_BATCH_SIZE", default_value_t = 500)]
    pub batch_size: u32,
}

/// Everything `serve` needs, validated.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub mode: Mode,
    pub listen_addr: SocketAddr,
    pub database_url: String,
    pub admin_token: Zeroizing<String>,
    pub key_ring: KeyRing,
    pub request_timeout: Duration,
    pub max_message_bytes: usize,
    pub max_concurrent_requests: usize,
    pub max_queued_requests: usize,
    pub db_max_connections: u32,
    pub db_statement_timeout: Duration,
    pub read_cache_entries: usize,
    pub health_check_interval: Duration,
    pub shutdown_grace: Duration,
    pub edge: EdgeLimits,
    pub providers: ProviderSettings,
    /// TLS on the listener; `None` serves plaintext (development, or TLS ended upstream).
    pub tls: Option<TlsSettings>,
    /// Where Prometheus scrapes; `None`: no metrics listener.
    pub metrics_addr: Option<SocketAddr>,
    pub release: ReleaseSettings,
}

/// How ResolveCredential may release keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReleaseSettings {
    /// Releases per service account and minute, across replicas; 0: none at all.
    pub per_minute: u32,
    /// Keys may be released over a plaintext listener: TLS ends upstream, or the operator
    /// allowed it explicitly. With TLS on the listener this does not matter.
    pub plaintext_allowed: bool,
}

impl Default for ReleaseSettings {
    /// The defaults of the command line: 600 a minute, never over plaintext.
    fn default() -> Self {
        Self {
            per_minute: 600,
            plaintext_allowed: false,
        }
    }
}

/// What one connection or caller may hold at the edge, and the HTTP/2 limits (see
/// docs/operations.md, "Limits").
#[derive(Debug, Clone)]
pub struct EdgeLimits {
    pub request_body_timeout: Duration,
    pub max_share_per_connection_percent: u8,
    pub max_share_per_caller_percent: u8,
    pub http2_max_concurrent_streams: u32,
    pub http2_max_header_list_bytes: u32,
    pub http2_keepalive: Duration,
    /// Refusals of one caller recorded one by one per window; the rest are counted in one row.
    pub refusals_per_window: u32,
    pub refusal_window: Duration,
    /// Connections of the listener (caps, opening deadline, idle timeout).
    pub connections: ConnectionLimits,
}

impl Default for EdgeLimits {
    /// The defaults of the command line.
    fn default() -> Self {
        Self {
            request_body_timeout: Duration::from_millis(5000),
            max_share_per_connection_percent: 50,
            max_share_per_caller_percent: 50,
            http2_max_concurrent_streams: 128,
            http2_max_header_list_bytes: 16 * 1024,
            http2_keepalive: Duration::from_secs(60),
            refusals_per_window: 20,
            refusal_window: Duration::from_secs(60),
            connections: ConnectionLimits {
                max_connections: 1000,
                max_per_peer: 64,
                max_opening: 256,
                opening_timeout: Duration::from_millis(5000),
                idle_timeout: Duration::from_secs(300),
            },
        }
    }
}

/// Where development secrets live unless told otherwise.
pub fn default_dev_secrets_file() -> PathBuf {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/state")));
    match state {
        Some(dir) => dir.join("llm-registry").join("dev-secrets.env"),
        None => PathBuf::from(".llm-registry-dev-secrets.env"),
    }
}

/// The database URL for any command: given, or the development default.
pub fn database_url(global: &GlobalArgs) -> anyhow::Result<String> {
    match (&global.database_url, global.mode) {
        (Some(url), _) if !url.trim().is_empty() => Ok(url.clone()),
        (_, Mode::Development) => Ok(DEV_DATABASE_URL.to_owned()),
        (_, Mode::Production) => bail!("production mode needs DATABASE_URL (or --database-url)"),
    }
}

/// Resolves and validates the settings of `serve`.
pub fn serve_settings(global: &GlobalArgs, serve: &ServeArgs) -> anyhow::Result<ServeSettings> {
    let (admin_token, key_ring) = match global.mode {
        Mode::Production => {
            let mut problems = Vec::new();
            if global
                .database_url
                .as_deref()
                .is_none_or(|url| url.trim().is_empty())
            {
                problems.push("DATABASE_URL is missing".to_owned());
            }
            let token = match serve.admin_token.as_deref() {
                None | Some("") => {
                    problems.push("ADMIN_TOKEN is missing".to_owned());
                    None
                }
                Some(token) => admin_token(token).map_err(|p| problems.push(p)).ok(),
            };
            let ring = explicit_ring(&serve.keys, &mut problems);
            if serve.tls.tls_cert_file.is_none() && !serve.tls.tls_terminated_upstream {
                problems.push(
                    "gRPC is served over TLS in production: set TLS_CERT_FILE and TLS_KEY_FILE, \
                     or, if TLS ends in front of the service (a mesh sidecar or a load balancer), \
                     set TLS_TERMINATED_UPSTREAM=true"
                        .to_owned(),
                );
            }
            match (token, ring) {
                (Some(token), Some(ring)) if problems.is_empty() => (token, ring),
                _ => bail!("production mode refuses to start: {}", problems.join("; ")),
            }
        }
        Mode::Development => {
            let stored = development_secrets(global)?;
            let token = match serve.admin_token.as_deref().filter(|t| !t.is_empty()) {
                Some(token) => admin_token(token).map_err(anyhow::Error::msg)?,
                None => stored.admin_token,
            };
            (token, development_ring(&serve.keys, stored.encryption_key)?)
        }
    };
    ensure!(
        serve.max_connections_per_peer < serve.max_opening_connections,
        "MAX_CONNECTIONS_PER_PEER ({}) must be below MAX_OPENING_CONNECTIONS ({}): one peer's \
         connections that never open could otherwise take every opening place",
        serve.max_connections_per_peer,
        serve.max_opening_connections
    );
    Ok(ServeSettings {
        mode: global.mode,
        listen_addr: serve.listen_addr,
        database_url: database_url(global)?,
        admin_token,
        key_ring,
        request_timeout: Duration::from_secs(serve.request_timeout_secs.max(1)),
        max_message_bytes: serve.max_message_bytes.max(1024),
        max_concurrent_requests: serve.max_concurrent_requests.max(1),
        max_queued_requests: serve.max_queued_requests,
        edge: EdgeLimits {
            request_body_timeout: Duration::from_millis(serve.request_body_timeout_ms.max(1)),
            max_share_per_connection_percent: serve.max_share_per_connection_percent,
            max_share_per_caller_percent: serve.max_share_per_caller_percent,
            http2_max_concurrent_streams: serve.http2_max_concurrent_streams.max(1),
            http2_max_header_list_bytes: serve.http2_max_header_list_bytes.max(1024),
            http2_keepalive: Duration::from_secs(serve.http2_keepalive_secs.max(1)),
            refusals_per_window: serve.refusals_per_minute,
            refusal_window: Duration::from_secs(60),
            connections: ConnectionLimits {
                max_connections: serve.max_connections.max(1),
                max_per_peer: serve.max_connections_per_peer.max(1),
                max_opening: serve.max_opening_connections.max(1),
                opening_timeout: Duration::from_millis(serve.connection_opening_timeout_ms.max(1)),
                idle_timeout: Duration::from_secs(serve.connection_idle_timeout_secs.max(1)),
            },
        },
        db_max_connections: serve.db_max_connections.max(1),
        db_statement_timeout: Duration::from_millis(serve.db_statement_timeout_ms.max(100)),
        read_cache_entries: serve.read_cache_entries,
        health_check_interval: Duration::from_millis(serve.health_check_interval_ms.max(100)),
        shutdown_grace: Duration::from_secs(serve.shutdown_grace_secs),
        providers: provider_settings(global.mode, &serve.providers)?,
        tls: tls_settings(&serve.tls)?,
        metrics_addr: serve.metrics_addr,
        release: ReleaseSettings {
            per_minute: serve.release.credential_releases_per_minute,
            plaintext_allowed: serve.tls.tls_terminated_upstream
                || serve.release.allow_plaintext_credential_release,
        },
    })
}

/// The listener's TLS, if its files are named; half a pair, or a client CA without a
/// certificate, refuses the start (the files themselves are checked when the server starts).
pub fn tls_settings(args: &TlsArgs) -> anyhow::Result<Option<TlsSettings>> {
    match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert_file), Some(key_file)) => Ok(Some(TlsSettings {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            client_ca_file: args.tls_client_ca_file.clone(),
            reload_interval: Duration::from_millis(args.tls_reload_interval_ms.max(100)),
        })),
        (Some(_), None) => bail!("TLS_CERT_FILE is set but TLS_KEY_FILE is not: set both"),
        (None, Some(_)) => bail!("TLS_KEY_FILE is set but TLS_CERT_FILE is not: set both"),
        (None, None) if args.tls_client_ca_file.is_some() => {
            bail!("TLS_CLIENT_CA_FILE (mutual TLS) needs TLS_CERT_FILE and TLS_KEY_FILE")
        }
        (None, None) => Ok(None),
    }
}

/// The settings of outbound provider calls; a CA file that cannot be read refuses the start.
pub fn provider_settings(mode: Mode, args: &ProviderArgs) -> anyhow::Result<ProviderSettings> {
    let allowed = match (&args.provider_egress_allow, mode) {
        (Some(list), _) => list.clone(),
        (None, Mode::Development) => "loopback".to_owned(),
        (None, Mode::Production) => String::new(),
    };
    let mut egress = EgressPolicy::default();
    for class in allowed.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        match class {
            "loopback" => egress.allow_loopback = true,
            "private" => egress.allow_private = true,
            "link-local" => egress.allow_link_local = true,
            other => bail!(
                "PROVIDER_EGRESS_ALLOW: unknown address class {other:?}; use loopback, private or link-local"
            ),
        }
    }
    egress.plain_http_hosts = args
        .provider_plain_http_hosts
        .split(',')
        .map(|host| host.trim().trim_matches(['[', ']']).to_ascii_lowercase())
        .filter(|host| !host.is_empty())
        .collect();
    let extra_ca_pem = match &args.provider_ca_file {
        None => None,
        Some(path) => Some(
            fs::read(path)
                .with_context(|| format!("PROVIDER_CA_FILE {} cannot be read", path.display()))?,
        ),
    };
    anyhow::ensure!(
        args.provider_max_reply_bytes <= args.provider_reply_budget_bytes,
        "PROVIDER_MAX_REPLY_BYTES ({}) is larger than PROVIDER_REPLY_BUDGET_BYTES ({}): one \
         reply could never be read; raise the budget or lower the reply limit",
        args.provider_max_reply_bytes,
        args.provider_reply_budget_bytes
    );
    anyhow::ensure!(
        args.provider_calls_per_caller <= args.provider_max_concurrent_calls,
        "PROVIDER_CALLS_PER_CALLER ({}) is more than PROVIDER_MAX_CONCURRENT_CALLS ({}): a caller's \
         share is of the calls that can run; lower it or raise the pool",
        args.provider_calls_per_caller,
        args.provider_max_concurrent_calls
    );
    Ok(ProviderSettings {
        egress,
        extra_ca_pem,
        attempt_timeout: Duration::from_millis(args.provider_attempt_timeout_ms.max(1)),
        connect_timeout: Duration::from_millis(args.provider_connect_timeout_ms.max(1)),
        max_attempts: args.provider_max_attempts.max(1),
        backoff_base: Duration::from_millis(args.provider_backoff_base_ms),
        max_reply_bytes: args.provider_max_reply_bytes.max(1024),
        reply_budget_bytes: args.provider_reply_budget_bytes,
        max_answer_bytes: args.provider_max_answer_bytes.max(1024),
        max_concurrent_calls: args.provider_max_concurrent_calls.max(1),
        calls_per_caller: args.provider_calls_per_caller.max(1),
        batches_in_flight: args.provider_batches_in_flight.max(1),
        concurrency_per_instance: args.provider_concurrency_per_instance.max(1),
        requests_per_minute: (args.provider_requests_per_minute > 0)
            .then_some(args.provider_requests_per_minute),
        max_inputs: args.provider_max_inputs.max(1),
        max_input_bytes: args.provider_max_input_bytes.max(1),
    })
}

/// The key ring of `rotate-keys`: the same rules as `serve`, without the admin token.
pub fn rotation_key_ring(global: &GlobalArgs, keys: &KeyArgs) -> anyhow::Result<KeyRing> {
    match global.mode {
        Mode::Production => {
            let mut problems = Vec::new();
            match explicit_ring(keys, &mut problems) {
                Some(ring) if problems.is_empty() => Ok(ring),
                _ => bail!("rotate-keys refuses to run: {}", problems.join("; ")),
            }
        }
        Mode::Development => development_ring(keys, development_secrets(global)?.encryption_key),
    }
}

fn admin_token(token: &str) -> Result<Zeroizing<String>, String> {
    if token.len() < MIN_ADMIN_TOKEN_LEN {
        return Err(format!(
            "ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN_LEN} characters"
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("ADMIN_TOKEN must be printable ASCII without spaces".to_owned());
    }
    Ok(Zeroizing::new(token.to_owned()))
}

/// `ENCRYPTION_KEYS_PREVIOUS`: comma-separated base64 keys; problems name the entry, not the key.
fn previous_keys(keys: &KeyArgs, problems: &mut Vec<String>) -> Vec<MasterKey> {
    let Some(list) = keys.encryption_keys_previous.as_deref() else {
        return Vec::new();
    };
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .enumerate()
        .filter_map(|(i, entry)| {
            MasterKey::from_base64(entry)
                .map_err(|e| problems.push(format!("ENCRYPTION_KEYS_PREVIOUS entry {} {e}", i + 1)))
                .ok()
        })
        .collect()
}

fn ring(
    primary: MasterKey,
    previous: Vec<MasterKey>,
    problems: &mut Vec<String>,
) -> Option<KeyRing> {
    KeyRing::new(primary, previous)
        .map_err(|e| problems.push(e.to_string()))
        .ok()
}

/// The ring from explicit settings only (production).
fn explicit_ring(keys: &KeyArgs, problems: &mut Vec<String>) -> Option<KeyRing> {
    let primary = match keys.encryption_key.as_deref() {
        None | Some("") => {
            problems.push("ENCRYPTION_KEY is missing".to_owned());
            None
        }
        Some(encoded) => MasterKey::from_base64(encoded)
            .map_err(|e| problems.push(format!("ENCRYPTION_KEY {e}")))
            .ok(),
    };
    let previous = previous_keys(keys, problems);
    ring(primary?, previous, problems)
}

/// The ring in development: an explicit primary wins over the secrets file's key.
fn development_ring(keys: &KeyArgs, stored: MasterKey) -> anyhow::Result<KeyRing> {
    let mut problems = Vec::new();
    let primary = match keys.encryption_key.as_deref().filter(|k| !k.is_empty()) {
        Some(encoded) => {
            MasterKey::from_base64(encoded).map_err(|e| anyhow::anyhow!("ENCRYPTION_KEY {e}"))?
        }
        None => stored,
    };
    let previous = previous_keys(keys, &mut problems);
    match ring(primary, previous, &mut problems) {
        Some(ring) if problems.is_empty() => Ok(ring),
        _ => bail!("{}", problems.join("; ")),
    }
}

/// Development secrets from the secrets file, created on first use.
fn development_secrets(global: &GlobalArgs) -> anyhow::Result<DevSecrets> {
    let path = global
        .dev_secrets_file
        .clone()
        .unwrap_or_else(default_dev_secrets_file);
    let stored = load_or_create_secrets_file(&path)?;
    tracing::warn!(
        secrets_file = %path.display(),
        "DEVELOPMENT MODE: generated secrets, defaults everywhere. NOT FOR PRODUCTION \
         (use --mode production with DATABASE_URL, ADMIN_TOKEN and ENCRYPTION_KEY)"
    );
    Ok(stored)
}

struct DevSecrets {
    admin_token: Zeroizing<String>,
    encryption_key: MasterKey,
}

fn load_or_create_secrets_file(path: &Path) -> anyhow::Result<DevSecrets> {
    if !path.exists() {
        create_secrets_file(path)?;
    }
    let metadata = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if metadata.permissions().mode() & 0o077 != 0 {
        // Someone loosened it; secrets must stay the owner's.
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {} to its owner", path.display()))?;
        tracing::warn!(file = %path.display(), "secrets file was readable by others; reset to 0600");
    }
    let contents = Zeroizing::new(
        fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    );
    let value = |key: &str| {
        contents
            .lines()
            .find_map(|line| {
                line.strip_prefix(key)
                    .and_then(|rest| rest.strip_prefix('='))
            })
            .map(|v| Zeroizing::new(v.trim().to_owned()))
    };
    let (Some(token), Some(key)) = (value("ADMIN_TOKEN"), value("ENCRYPTION_KEY")) else {
        bail!(
            "{} lacks ADMIN_TOKEN or ENCRYPTION_KEY; delete it to have new secrets generated",
            path.display()
        );
    };
    if let Err(problem) = admin_token(&token) {
        bail!("{problem} (in {})", path.display());
    }
    let encryption_key = MasterKey::from_base64(&key)
        .map_err(|e| anyhow::anyhow!("ENCRYPTION_KEY in {} {e}", path.display()))?;
    Ok(DevSecrets {
        admin_token: token,
        encryption_key,
    })
}

fn create_secrets_file(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let token = IssuedToken::generate();
    let key = MasterKey::generate();
    let contents = Zeroizing::new(format!(
        "# llm-registry development secrets. Generated once; not for production.\n\
         ADMIN_TOKEN={}\nENCRYPTION_KEY={}\n",
        token.reveal(),
        key.to_base64().as_str()
    ));
    // create_new: if another process created it first, keep theirs and read it.
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            file.write_all(contents.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            file.sync_all()?;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}
