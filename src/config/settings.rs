//! The arguments of `serve` and `rotate-keys` turned into validated settings: production's
//! refusals, the key ring, TLS, the edge's limits and the provider settings.

use std::{fs, net::SocketAddr, time::Duration};

use anyhow::{Context, bail, ensure};
use zeroize::Zeroizing;

use super::{
    DEV_DATABASE_URL, GlobalArgs, KeyArgs, KeySourceKind, Mode, ProviderArgs, ServeArgs, TlsArgs,
    admin_token, dev_secrets::development_secrets, key_source,
};
use crate::{
    keys::KeySource,
    providers::{ProviderSettings, egress::EgressPolicy},
    tls::{TlsSettings, incoming::ConnectionLimits},
};

/// Everything `serve` needs, validated. Its `Debug` leaves out the secrets.
#[derive(Clone)]
pub struct ServeSettings {
    pub mode: Mode,
    pub listen_addr: SocketAddr,
    pub database_url: String,
    pub admin_token: Zeroizing<String>,
    /// Where the keys that seal provider keys come from.
    pub keys: KeySource,
    /// KEY_SOURCE=vault-transit: how often the primary data key is looked up.
    pub data_key_refresh: Duration,
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
    /// Development mode: the file holding the generated admin token (named in the log when a
    /// call is refused as UNAUTHENTICATED). `None` in production.
    pub dev_secrets_file: Option<std::path::PathBuf>,
    /// Where Prometheus scrapes; `None`: no metrics listener.
    pub metrics_addr: Option<SocketAddr>,
    pub release: ReleaseSettings,
    pub retention: RetentionSettings,
}

/// How long the audit trail and the usage ledger keep rows, and how the sweep deletes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionSettings {
    pub audit_days: Option<u32>,
    pub usage_days: Option<u32>,
    pub sweep_every: Duration,
    pub batch_rows: u32,
}

impl std::fmt::Debug for ServeSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeSettings")
            .field("mode", &self.mode)
            .field("listen_addr", &self.listen_addr)
            .field("database_url", &"[redacted]")
            .field("admin_token", &"[redacted]")
            .field("keys", &self.keys)
            .field("data_key_refresh", &self.data_key_refresh)
            .field("request_timeout", &self.request_timeout)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("max_queued_requests", &self.max_queued_requests)
            .field("db_max_connections", &self.db_max_connections)
            .field("db_statement_timeout", &self.db_statement_timeout)
            .field("read_cache_entries", &self.read_cache_entries)
            .field("health_check_interval", &self.health_check_interval)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("edge", &self.edge)
            .field("providers", &self.providers)
            .field("tls", &self.tls)
            .field("metrics_addr", &self.metrics_addr)
            .field("release", &self.release)
            .field("retention", &self.retention)
            .finish()
    }
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

/// The database URL for any command: given, or the development default.
pub fn database_url(global: &GlobalArgs) -> anyhow::Result<String> {
    match (&global.database_url, global.mode) {
        (Some(url), _) if !url.trim().is_empty() => Ok((**url).to_owned()),
        (_, Mode::Development) => Ok(DEV_DATABASE_URL.to_owned()),
        (_, Mode::Production) => bail!("production mode needs DATABASE_URL (or --database-url)"),
    }
}

/// Resolves and validates the settings of `serve`.
pub fn serve_settings(global: &GlobalArgs, serve: &ServeArgs) -> anyhow::Result<ServeSettings> {
    let (admin_token, keys) = match global.mode {
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
                    problems.push(
                        "ADMIN_TOKEN is missing (make one with `openssl rand -base64 32`)"
                            .to_owned(),
                    );
                    None
                }
                Some(token) => admin_token(token).map_err(|p| problems.push(p)).ok(),
            };
            let keys = key_source::resolve(Mode::Production, &serve.keys, None, &mut problems);
            if serve.tls.tls_cert_file.is_none() && !serve.tls.tls_terminated_upstream {
                problems.push(
                    "gRPC is served over TLS in production: set TLS_CERT_FILE and TLS_KEY_FILE, \
                     or, if TLS ends in front of the service (a mesh sidecar or a load balancer), \
                     set TLS_TERMINATED_UPSTREAM=true"
                        .to_owned(),
                );
            }
            match (token, keys) {
                (Some(token), Some(keys)) if problems.is_empty() => (token, keys),
                _ => bail!("production mode refuses to start: {}", problems.join("; ")),
            }
        }
        Mode::Development => {
            let stored = development_secrets(global)?;
            let token = match serve.admin_token.as_deref().filter(|t| !t.is_empty()) {
                Some(token) => admin_token(token).map_err(anyhow::Error::msg)?,
                None => stored.admin_token,
            };
            let mut problems = Vec::new();
            match key_source::resolve(
                Mode::Development,
                &serve.keys,
                Some(stored.encryption_key),
                &mut problems,
            ) {
                Some(keys) if problems.is_empty() => (token, keys),
                _ => bail!("{}", problems.join("; ")),
            }
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
        dev_secrets_file: (global.mode == Mode::Development).then(|| {
            global
                .dev_secrets_file
                .clone()
                .unwrap_or_else(super::default_dev_secrets_file)
        }),
        mode: global.mode,
        listen_addr: serve.listen_addr,
        database_url: database_url(global)?,
        admin_token,
        data_key_refresh: Duration::from_secs(serve.keys.data_key_refresh_secs),
        keys,
        request_timeout: Duration::from_secs(serve.request_timeout_secs),
        max_message_bytes: serve.max_message_bytes,
        max_concurrent_requests: serve.max_concurrent_requests,
        max_queued_requests: serve.max_queued_requests,
        edge: EdgeLimits {
            request_body_timeout: Duration::from_millis(serve.request_body_timeout_ms),
            max_share_per_connection_percent: serve.max_share_per_connection_percent,
            max_share_per_caller_percent: serve.max_share_per_caller_percent,
            http2_max_concurrent_streams: serve.http2_max_concurrent_streams,
            http2_max_header_list_bytes: serve.http2_max_header_list_bytes,
            http2_keepalive: Duration::from_secs(serve.http2_keepalive_secs),
            refusals_per_window: serve.refusals_per_minute,
            refusal_window: Duration::from_secs(60),
            connections: ConnectionLimits {
                max_connections: serve.max_connections,
                max_per_peer: serve.max_connections_per_peer,
                max_opening: serve.max_opening_connections,
                opening_timeout: Duration::from_millis(serve.connection_opening_timeout_ms),
                idle_timeout: Duration::from_secs(serve.connection_idle_timeout_secs),
            },
        },
        db_max_connections: serve.db_max_connections,
        db_statement_timeout: Duration::from_millis(serve.db_statement_timeout_ms),
        read_cache_entries: serve.read_cache_entries,
        health_check_interval: Duration::from_millis(serve.health_check_interval_ms),
        shutdown_grace: Duration::from_secs(serve.shutdown_grace_secs),
        providers: provider_settings(global.mode, &serve.providers)?,
        tls: tls_settings(&serve.tls)?,
        metrics_addr: serve.metrics_addr,
        release: ReleaseSettings {
            per_minute: serve.release.credential_releases_per_minute,
            plaintext_allowed: serve.tls.tls_terminated_upstream
                || serve.release.allow_plaintext_credential_release,
        },
        retention: RetentionSettings {
            audit_days: serve.retention.audit_retention_days,
            usage_days: serve.retention.usage_retention_days,
            sweep_every: Duration::from_secs(serve.retention.retention_sweep_secs),
            batch_rows: serve.retention.retention_batch_rows,
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
            reload_interval: Duration::from_millis(args.tls_reload_interval_ms),
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
        attempt_timeout: Duration::from_millis(args.provider_attempt_timeout_ms),
        connect_timeout: Duration::from_millis(args.provider_connect_timeout_ms),
        max_attempts: args.provider_max_attempts,
        backoff_base: Duration::from_millis(args.provider_backoff_base_ms),
        max_reply_bytes: args.provider_max_reply_bytes,
        reply_budget_bytes: args.provider_reply_budget_bytes,
        max_answer_bytes: args.provider_max_answer_bytes,
        max_concurrent_calls: args.provider_max_concurrent_calls,
        calls_per_caller: args.provider_calls_per_caller,
        batches_in_flight: args.provider_batches_in_flight,
        concurrency_per_instance: args.provider_concurrency_per_instance,
        requests_per_minute: (args.provider_requests_per_minute > 0)
            .then_some(args.provider_requests_per_minute),
        max_inputs: args.provider_max_inputs,
        max_input_bytes: args.provider_max_input_bytes,
    })
}

/// The key source of an operator command (`rotate-keys`, `rewrap-data-keys`,
/// `import-dhamps-vdb`), as `serve` would have it: explicit in production, the stored
/// development key by default otherwise.
pub fn command_key_source(
    global: &GlobalArgs,
    keys: &KeyArgs,
    command: &str,
) -> anyhow::Result<KeySource> {
    let development_key = match (global.mode, keys.key_source) {
        (Mode::Development, KeySourceKind::Env) => {
            Some(development_secrets(global)?.encryption_key)
        }
        _ => None,
    };
    let mut problems = Vec::new();
    match key_source::resolve(global.mode, keys, development_key, &mut problems) {
        Some(source) if problems.is_empty() => Ok(source),
        _ => bail!("{command} refuses to run: {}", problems.join("; ")),
    }
}
