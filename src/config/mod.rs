//! Settings from flags with environment fallbacks, and the development/production split.
//!
//! Development mode (the default) needs only a reachable PostgreSQL: it creates the database if
//! missing and generates, once, an encryption key and an admin token that it keeps in a file only
//! its owner can read. Production mode refuses to start unless `DATABASE_URL`, `ADMIN_TOKEN` and
//! `ENCRYPTION_KEY` are all given and well-formed.

//!
//! This file holds the command line (every setting is a flag with an environment fallback, and
//! its default is written once, in its clap attribute); [`settings`] turns the arguments into
//! validated settings, and [`dev_secrets`] keeps development mode's generated secrets.

mod dev_secrets;
mod import;
mod key_source;
mod settings;

pub use self::{
    dev_secrets::default_dev_secrets_file,
    import::{DHAMPS_KEY_VARIABLE, ImportDhampsVdbArgs, import_options},
    settings::{
        EdgeLimits, ReleaseSettings, RetentionSettings, ServeSettings, command_key_source,
        database_url, provider_settings, serve_settings, tls_settings,
    },
};

use std::{convert::Infallible, fmt, net::SocketAddr, ops::Deref, path::PathBuf, str::FromStr};

use clap::{Args, Parser, Subcommand, ValueEnum};
use zeroize::Zeroizing;

use crate::telemetry::LogFormat;

/// A secret setting (a token, a key, a database URL that may hold a password) as the command line
/// reads it: zeroized when dropped, and `[redacted]` in every `Debug` output.
#[derive(Clone)]
pub struct SecretText(Zeroizing<String>);

impl FromStr for SecretText {
    type Err = Infallible;

    fn from_str(text: &str) -> Result<Self, Infallible> {
        Ok(Self(Zeroizing::new(text.to_owned())))
    }
}

impl Deref for SecretText {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

pub const DEV_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/llm_registry";
/// The database development mode uses (on 127.0.0.1:5432, or on the PostgreSQL it starts).
pub const DEV_DATABASE_NAME: &str = "llm_registry";
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

/// The shared settings that only commands using the database read.
const DATABASE_SETTINGS: &[&str] = &[
    "mode",
    "database_url",
    "dev_secrets_file",
    "dev_postgres_dir",
];

impl Cli {
    /// The command line of the process. The top-level help lists the commands and the settings
    /// every command shares; the server's own settings, which also apply when no command is
    /// given, are listed by `serve --help` alone rather than twice.
    pub fn from_process() -> Self {
        use clap::{CommandFactory as _, FromArgMatches as _};
        let command = Self::command();
        // `healthcheck` talks to a server, not to a database: the shared database settings are
        // still accepted there (scripts may pass them to every command) but not listed.
        let database_settings: Vec<clap::Arg> = command
            .get_arguments()
            .filter(|arg| DATABASE_SETTINGS.contains(&arg.get_id().as_str()))
            .map(|arg| arg.clone().global(false).hide(true))
            .collect();
        let command = command
            .mut_subcommand("healthcheck", |healthcheck| {
                healthcheck.args(database_settings)
            })
            .mut_args(|arg| {
                if arg.is_global_set() {
                    arg
                } else {
                    arg.hide(true)
                }
            })
            .after_help(
                "The server's settings (they apply when no command is given, too): \
                 llm-registry serve --help",
            );
        Self::from_arg_matches(&command.get_matches()).unwrap_or_else(|error| error.exit())
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply migrations, then serve gRPC until SIGINT/SIGTERM (the default command).
    Serve(Box<ServeArgs>),
    /// Apply pending migrations and exit.
    Migrate,
    /// Re-encrypt every stored API key under the primary key, in batches, while the service
    /// keeps serving (under KEY_SOURCE=vault-transit a new data key is made primary first, and
    /// data keys nothing uses any more are retired). Safe to interrupt and run again.
    RotateKeys(RotateKeysArgs),
    /// Under KEY_SOURCE=vault-transit: wrap every data key again under the newest version of the
    /// transit key (after `transit/keys/K/rotate`), so that min_decryption_version can be raised.
    RewrapDataKeys(RewrapDataKeysArgs),
    /// Bring a dhamps-vdb deployment over: its users (their dhamps-vdb API keys keep working as
    /// bearer tokens), API standards, definitions, instances with their provider keys, shares
    /// and projects, in one transaction. Safe to run again: nothing is imported twice.
    ImportDhampsVdb(Box<ImportDhampsVdbArgs>),
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
    pub database_url: Option<SecretText>,
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
    /// Where development mode keeps the PostgreSQL it starts when none answers on 127.0.0.1:5432
    /// and no DATABASE_URL is given. Default: postgres/ beside the secrets file (as root:
    /// /var/tmp/llm-registry-postgres).
    #[arg(long, env = "DEV_POSTGRES_DIR", global = true)]
    pub dev_postgres_dir: Option<PathBuf>,
}

impl GlobalArgs {
    /// The directory of development mode's state (its secrets file's).
    pub fn dev_state_dir(&self) -> PathBuf {
        let file = self
            .dev_secrets_file
            .clone()
            .unwrap_or_else(default_dev_secrets_file);
        file.parent().map(PathBuf::from).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (the log says which).
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    pub listen_addr: SocketAddr,
    /// The administrator's bearer token (at least 32 characters). Required in production.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<SecretText>,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Longest time one request may take, in seconds.
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_secs: u64,
    /// Largest request or response message, in bytes.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 1024 * 1024,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1024..))]
    pub max_message_bytes: usize,
    /// Calls served at once across all connections; more wait their turn.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 64,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_concurrent_requests: usize,
    /// Calls that may wait for a turn; beyond that, calls are shed with RESOURCE_EXHAUSTED.
    #[arg(long, env = "MAX_QUEUED_REQUESTS", default_value_t = 256)]
    pub max_queued_requests: usize,
    /// How long a request's body may take to arrive after its headers, in milliseconds. A call
    /// whose body is late is refused (DEADLINE_EXCEEDED) before it takes an admission slot.
    #[arg(long, env = "REQUEST_BODY_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..))]
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
    #[arg(long, env = "HTTP2_MAX_CONCURRENT_STREAMS", default_value_t = 128,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub http2_max_concurrent_streams: u32,
    /// Largest HTTP/2 header list a request may send, in bytes.
    #[arg(long, env = "HTTP2_MAX_HEADER_LIST_BYTES", default_value_t = 16 * 1024,
          value_parser = clap::value_parser!(u32).range(1024..))]
    pub http2_max_header_list_bytes: u32,
    /// How often an idle connection is pinged (HTTP/2 keep-alive), in seconds; a peer that does
    /// not answer within 20 seconds is disconnected.
    #[arg(long, env = "HTTP2_KEEPALIVE_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub http2_keepalive_secs: u64,
    /// Connections the listener keeps open at once; beyond, new ones are closed at once.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 1000,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,
    /// Connections one peer address may keep open at once (a proxy in front counts as one).
    /// Below MAX_OPENING_CONNECTIONS, so that one peer's connections that never open cannot
    /// take every opening place.
    #[arg(long, env = "MAX_CONNECTIONS_PER_PEER", default_value_t = 64,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections_per_peer: usize,
    /// Connections still in their TLS handshake or HTTP/2 preface at once.
    #[arg(long, env = "MAX_OPENING_CONNECTIONS", default_value_t = 256,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_opening_connections: usize,
    /// Time a new connection has to finish its TLS handshake and send the HTTP/2 preface, in
    /// milliseconds.
    #[arg(long, env = "CONNECTION_OPENING_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub connection_opening_timeout_ms: u64,
    /// A connection without a stream for this long is closed, in seconds.
    #[arg(long, env = "CONNECTION_IDLE_TIMEOUT_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub connection_idle_timeout_secs: u64,
    /// Refused calls of one caller that the audit trail records one by one per minute; further
    /// ones are counted in one summary row.
    #[arg(long, env = "REFUSALS_PER_MINUTE", default_value_t = 20)]
    pub refusals_per_minute: u32,
    /// Longest time one SQL statement of a call may run before PostgreSQL cancels it, in
    /// milliseconds (migrations are exempt).
    #[arg(long, env = "DB_STATEMENT_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..))]
    pub db_statement_timeout_ms: u64,
    /// Size of the database connection pool.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub db_max_connections: u32,
    /// Answers the read cache may hold (who holds a token; GetInstance answers); 0 turns it
    /// off. The cache is never stale, across replicas too: see docs/operations.md.
    #[arg(long, env = "READ_CACHE_ENTRIES", default_value_t = 10_000)]
    pub read_cache_entries: usize,
    /// On shutdown, how long in-flight calls may finish before the rest are cut, in seconds.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
    /// How often health probes the database, in milliseconds.
    #[arg(long, env = "HEALTH_CHECK_INTERVAL_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(100..))]
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
    #[command(flatten)]
    pub retention: RetentionArgs,
}

/// How long the audit trail and the usage ledger keep their rows (docs/operations.md,
/// "Quotas and usage"). Unset: everything is kept.
#[derive(Debug, Clone, Args)]
pub struct RetentionArgs {
    /// Days audit events are kept (by their time); older ones are deleted. Unset: kept forever.
    #[arg(long, env = "AUDIT_RETENTION_DAYS",
          value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub audit_retention_days: Option<u32>,
    /// Days of daily usage totals kept (by their UTC day); older ones are deleted. Unset: kept
    /// forever.
    #[arg(long, env = "USAGE_RETENTION_DAYS",
          value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub usage_retention_days: Option<u32>,
    /// Seconds between two retention sweeps (one replica at a time sweeps).
    #[arg(long, env = "RETENTION_SWEEP_SECS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub retention_sweep_secs: u64,
    /// Rows one deleting statement of a sweep removes at most; a sweep pauses between them.
    #[arg(long, env = "RETENTION_BATCH_ROWS", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=100000))]
    pub retention_batch_rows: u32,
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
    #[arg(long, env = "TLS_RELOAD_INTERVAL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(100..))]
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
    #[arg(long, env = "PROVIDER_ATTEMPT_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub provider_attempt_timeout_ms: u64,
    /// Longest wait for a connection to a provider, in milliseconds.
    #[arg(long, env = "PROVIDER_CONNECT_TIMEOUT_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub provider_connect_timeout_ms: u64,
    /// Attempts per provider request, the first included (429, 408, 5xx and connection errors
    /// are retried).
    #[arg(long, env = "PROVIDER_MAX_ATTEMPTS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub provider_max_attempts: u32,
    /// The first retry's backoff, in milliseconds; it doubles per attempt, with jitter.
    #[arg(long, env = "PROVIDER_BACKOFF_BASE_MS", default_value_t = 250)]
    pub provider_backoff_base_ms: u64,
    /// Largest provider reply read, in bytes (at most PROVIDER_REPLY_BUDGET_BYTES).
    #[arg(long, env = "PROVIDER_MAX_REPLY_BYTES", default_value_t = 32 * 1024 * 1024,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1024..))]
    pub provider_max_reply_bytes: usize,
    /// Provider reply bytes all calls of this process may hold at once; a call whose reply
    /// would go past it waits up to a second, then is refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "PROVIDER_REPLY_BUDGET_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub provider_reply_budget_bytes: usize,
    /// Largest Embed answer, in bytes of vectors (inputs x dimensions x 4): a call that could
    /// answer more is refused before it is sent, a reply that holds more is refused unread.
    #[arg(long, env = "PROVIDER_MAX_ANSWER_BYTES", default_value_t = 8 * 1024 * 1024,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1024..))]
    pub provider_max_answer_bytes: usize,
    /// Provider calls (Embed, TestInstance) running at once on this replica, in a pool of
    /// their own apart from MAX_CONCURRENT_REQUESTS; beyond, RESOURCE_EXHAUSTED at once.
    #[arg(long, env = "PROVIDER_MAX_CONCURRENT_CALLS", default_value_t = 64,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub provider_max_concurrent_calls: usize,
    /// Provider calls one caller may have running at once on this replica; the acting user and
    /// the service account acting for them each count.
    #[arg(long, env = "PROVIDER_CALLS_PER_CALLER", default_value_t = 16,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub provider_calls_per_caller: usize,
    /// Batches of one Embed call sent at once.
    #[arg(long, env = "PROVIDER_BATCHES_IN_FLIGHT", default_value_t = 4,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub provider_batches_in_flight: usize,
    /// Provider calls of one instance running at once on this replica.
    #[arg(long, env = "PROVIDER_CONCURRENCY_PER_INSTANCE", default_value_t = 32,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub provider_concurrency_per_instance: usize,
    /// Provider calls per instance per minute, counted across all replicas; 0 means no limit.
    #[arg(long, env = "PROVIDER_REQUESTS_PER_MINUTE", default_value_t = 0)]
    pub provider_requests_per_minute: u32,
    /// Texts per Embed call.
    #[arg(long, env = "PROVIDER_MAX_INPUTS", default_value_t = 512,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub provider_max_inputs: usize,
    /// Bytes per text of an Embed call.
    #[arg(long, env = "PROVIDER_MAX_INPUT_BYTES", default_value_t = 32 * 1024,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub provider_max_input_bytes: usize,
}

/// Where the keys that seal provider keys come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeySourceKind {
    /// ENCRYPTION_KEY and ENCRYPTION_KEYS_PREVIOUS in the environment (or flags).
    Env,
    /// ENCRYPTION_KEY_FILE and ENCRYPTION_KEYS_PREVIOUS_FILE (mounted secrets, mode 0600 or 0400).
    File,
    /// Data keys made and wrapped by OpenBao/Vault transit, kept wrapped in the database.
    VaultTransit,
}

/// The master keys, shared by `serve`, `rotate-keys`, `rewrap-data-keys` and the import.
#[derive(Debug, Clone, Args)]
pub struct KeyArgs {
    /// Where the keys come from: env, file or vault-transit (docs/operations.md, "Key sources").
    #[arg(long, env = "KEY_SOURCE", value_enum, default_value_t = KeySourceKind::Env)]
    pub key_source: KeySourceKind,
    /// KEY_SOURCE=file: the file holding the primary key (base64 of 32 bytes); it must not be
    /// readable by group or others.
    #[arg(long, env = "ENCRYPTION_KEY_FILE")]
    pub encryption_key_file: Option<PathBuf>,
    /// KEY_SOURCE=file or vault-transit: a file of previous keys (base64, one per line or
    /// comma-separated); it must not be readable by group or others.
    #[arg(long, env = "ENCRYPTION_KEYS_PREVIOUS_FILE")]
    pub encryption_keys_previous_file: Option<PathBuf>,
    /// KEY_SOURCE=vault-transit: the transit server, e.g. https://vault.internal:8200.
    #[arg(long, env = "VAULT_ADDR")]
    pub vault_addr: Option<String>,
    /// KEY_SOURCE=vault-transit: a file holding the token (re-read at each renewal); it must not
    /// be readable by group or others. Preferred to VAULT_TOKEN.
    #[arg(long, env = "VAULT_TOKEN_FILE")]
    pub vault_token_file: Option<PathBuf>,
    /// KEY_SOURCE=vault-transit: the token itself, when no VAULT_TOKEN_FILE is given.
    #[arg(long, env = "VAULT_TOKEN", hide_env_values = true)]
    pub vault_token: Option<SecretText>,
    /// KEY_SOURCE=vault-transit: where the transit engine is mounted.
    #[arg(long, env = "VAULT_TRANSIT_MOUNT", default_value = "transit")]
    pub vault_transit_mount: String,
    /// KEY_SOURCE=vault-transit: the transit key that wraps the data keys.
    #[arg(long, env = "VAULT_TRANSIT_KEY")]
    pub vault_transit_key: Option<String>,
    /// KEY_SOURCE=vault-transit: the CA (PEM) that signed the transit server's certificate.
    #[arg(long, env = "VAULT_CACERT")]
    pub vault_cacert: Option<PathBuf>,
    /// KEY_SOURCE=vault-transit: the namespace (Vault Enterprise, OpenBao namespaces).
    #[arg(long, env = "VAULT_NAMESPACE")]
    pub vault_namespace: Option<String>,
    /// KEY_SOURCE=vault-transit: how often a running server looks for a primary data key made
    /// by `rotate-keys` (seconds).
    #[arg(long, env = "DATA_KEY_REFRESH_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub data_key_refresh_secs: u64,
    /// Primary master key for API keys at rest (encrypts; decrypts too): base64 of 32 random
    /// bytes, e.g. from `openssl rand -base64 32`. Required in production.
    #[arg(long, env = "ENCRYPTION_KEY", hide_env_values = true)]
    pub encryption_key: Option<SecretText>,
    /// Previous master keys that still decrypt (comma-separated base64), kept until
    /// `rotate-keys` has re-encrypted everything under the primary.
    #[arg(long, env = "ENCRYPTION_KEYS_PREVIOUS", hide_env_values = true)]
    pub encryption_keys_previous: Option<SecretText>,
}

#[derive(Debug, Clone, Args)]
pub struct RewrapDataKeysArgs {
    #[command(flatten)]
    pub keys: KeyArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RotateKeysArgs {
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Keys re-encrypted per transaction.
    #[arg(long, env = "ROTATE_BATCH_SIZE", default_value_t = 500)]
    pub batch_size: u32,
}

/// The admin token as given, if it is long and plain enough to be a secret.
fn admin_token(token: &str) -> Result<Zeroizing<String>, String> {
    if token.len() < MIN_ADMIN_TOKEN_LEN {
        return Err(format!(
            "ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN_LEN} characters (make one with \
             `openssl rand -base64 32`)"
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("ADMIN_TOKEN must be printable ASCII without spaces".to_owned());
    }
    Ok(Zeroizing::new(token.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_in_no_debug_output() {
        let token = crate::domain::token::IssuedToken::generate()
            .reveal()
            .to_owned();
        let key = crate::vault::MasterKey::generate()
            .to_base64()
            .as_str()
            .to_owned();
        let password = "pw-9f8e7d6c5b4a";
        let url = format!("postgres://app:{password}@127.0.0.1:5432/llm_registry");
        let cli = Cli::try_parse_from([
            "llm-registry",
            "--mode",
            "production",
            "--database-url",
            &url,
            "--admin-token",
            &token,
            "--encryption-key",
            &key,
            "--tls-terminated-upstream",
        ])
        .unwrap();
        let settings = serve_settings(&cli.global, &cli.serve).unwrap();
        for shown in [format!("{cli:?}"), format!("{settings:?}")] {
            for secret in [token.as_str(), key.as_str(), password] {
                assert!(!shown.contains(secret), "a secret in {shown}");
            }
            assert!(shown.contains("[redacted]"));
        }
    }

    #[test]
    fn out_of_range_settings_are_refused_naming_the_setting_and_the_range() {
        for (flag, value, range) in [
            ("--max-message-bytes", "10", "1024.."),
            ("--request-timeout-secs", "0", "1.."),
            ("--db-statement-timeout-ms", "5", "100.."),
            ("--provider-max-inputs", "0", "1.."),
        ] {
            let refused = Cli::try_parse_from(["llm-registry", flag, value])
                .err()
                .map(|error| error.to_string())
                .unwrap_or_default();
            assert!(
                refused.contains(flag) && refused.contains(range),
                "{flag} {value}: {refused}"
            );
        }
    }
}
