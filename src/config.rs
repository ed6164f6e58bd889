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

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use zeroize::Zeroizing;

use crate::{auth::token::IssuedToken, telemetry::LogFormat, vault::MasterKey};

pub const DEV_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/llm_registry";
/// An admin token shorter than this is refused: it would be guessable.
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;

#[derive(Debug, Parser)]
#[command(
    name = "llm-registry",
    version,
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
    Serve(ServeArgs),
    /// Apply pending migrations and exit.
    Migrate,
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
    /// Master key for API keys at rest: base64 of 32 random bytes. Required in production.
    #[arg(long, env = "ENCRYPTION_KEY", hide_env_values = true)]
    pub encryption_key: Option<String>,
    /// Longest time one request may take, in seconds.
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// Largest request or response message, in bytes.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 1024 * 1024)]
    pub max_message_bytes: usize,
    /// Requests served at once across all connections; more wait their turn.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 256)]
    pub max_concurrent_requests: usize,
    /// Size of the database connection pool.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 10)]
    pub db_max_connections: u32,
    /// On shutdown, how long in-flight calls may finish before the rest are cut, in seconds.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
    /// How often health probes the database, in milliseconds.
    #[arg(long, env = "HEALTH_CHECK_INTERVAL_MS", default_value_t = 2000)]
    pub health_check_interval_ms: u64,
}

/// Everything `serve` needs, validated.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub mode: Mode,
    pub listen_addr: SocketAddr,
    pub database_url: String,
    pub admin_token: Zeroizing<String>,
    pub encryption_key: MasterKey,
    pub request_timeout: Duration,
    pub max_message_bytes: usize,
    pub max_concurrent_requests: usize,
    pub db_max_connections: u32,
    pub health_check_interval: Duration,
    pub shutdown_grace: Duration,
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
    let (admin_token, encryption_key) = match global.mode {
        Mode::Production => production_secrets(global, serve)?,
        Mode::Development => {
            let path = global
                .dev_secrets_file
                .clone()
                .unwrap_or_else(default_dev_secrets_file);
            development_secrets(&path, serve)?
        }
    };
    Ok(ServeSettings {
        mode: global.mode,
        listen_addr: serve.listen_addr,
        database_url: database_url(global)?,
        admin_token,
        encryption_key,
        request_timeout: Duration::from_secs(serve.request_timeout_secs.max(1)),
        max_message_bytes: serve.max_message_bytes.max(1024),
        max_concurrent_requests: serve.max_concurrent_requests.max(1),
        db_max_connections: serve.db_max_connections.max(1),
        health_check_interval: Duration::from_millis(serve.health_check_interval_ms.max(100)),
        shutdown_grace: Duration::from_secs(serve.shutdown_grace_secs),
    })
}

fn production_secrets(
    global: &GlobalArgs,
    serve: &ServeArgs,
) -> anyhow::Result<(Zeroizing<String>, MasterKey)> {
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
        Some(token) => match admin_token_problem(token) {
            Some(problem) => {
                problems.push(format!("ADMIN_TOKEN {problem}"));
                None
            }
            None => Some(Zeroizing::new(token.to_owned())),
        },
    };
    let key = match serve.encryption_key.as_deref() {
        None | Some("") => {
            problems.push("ENCRYPTION_KEY is missing".to_owned());
            None
        }
        Some(encoded) => match MasterKey::from_base64(encoded) {
            Ok(key) => Some(key),
            Err(problem) => {
                problems.push(format!("ENCRYPTION_KEY {problem}"));
                None
            }
        },
    };
    match (token, key) {
        (Some(token), Some(key)) if problems.is_empty() => Ok((token, key)),
        _ => bail!("production mode refuses to start: {}", problems.join("; ")),
    }
}

fn admin_token_problem(token: &str) -> Option<String> {
    if token.len() < MIN_ADMIN_TOKEN_LEN {
        return Some(format!("must be at least {MIN_ADMIN_TOKEN_LEN} characters"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Some("must be printable ASCII without spaces".to_owned());
    }
    None
}

/// Development secrets: explicit settings win; otherwise the secrets file, created on first use.
fn development_secrets(
    path: &Path,
    serve: &ServeArgs,
) -> anyhow::Result<(Zeroizing<String>, MasterKey)> {
    let stored = load_or_create_secrets_file(path)?;
    let token = match serve.admin_token.as_deref().filter(|t| !t.is_empty()) {
        Some(token) => {
            if let Some(problem) = admin_token_problem(token) {
                bail!("ADMIN_TOKEN {problem}");
            }
            Zeroizing::new(token.to_owned())
        }
        None => stored.admin_token,
    };
    let key = match serve.encryption_key.as_deref().filter(|k| !k.is_empty()) {
        Some(encoded) => {
            MasterKey::from_base64(encoded).map_err(|e| anyhow::anyhow!("ENCRYPTION_KEY {e}"))?
        }
        None => stored.encryption_key,
    };
    tracing::warn!(
        secrets_file = %path.display(),
        "DEVELOPMENT MODE: generated secrets, defaults everywhere. NOT FOR PRODUCTION \
         (use --mode production with DATABASE_URL, ADMIN_TOKEN and ENCRYPTION_KEY)"
    );
    Ok((token, key))
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
    if let Some(problem) = admin_token_problem(&token) {
        bail!("ADMIN_TOKEN in {} {problem}", path.display());
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
