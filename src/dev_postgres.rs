//! Development mode's own PostgreSQL: when no `DATABASE_URL` is given and nothing answers on
//! the development default (127.0.0.1:5432), but PostgreSQL's server programs are installed,
//! `serve` and `migrate` create a private cluster (on first use), start it, use it over a Unix
//! socket only (no TCP port), and stop it when they exit. Production mode never does this.
//!
//! The cluster lives in `DEV_POSTGRES_DIR` (default: `postgres/` beside the development secrets;
//! as root, `/var/tmp/llm-registry-postgres`, since PostgreSQL will not run as root and the
//! `postgres` system user cannot enter root's home). As root, every PostgreSQL program runs as
//! the `postgres` system user (`runuser`); without one, the start is refused with a message. A
//! cluster found already running (a previous run was killed) is used and left running.

use std::{
    fs,
    io::ErrorKind,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

/// The cluster's directory for root, whose home the `postgres` user cannot enter.
const ROOT_CLUSTER_DIR: &str = "/var/tmp/llm-registry-postgres";
/// Where PostgreSQL's server programs are looked for when `pg_config` is not on PATH.
const BIN_DIR_GLOBS: &[&str] = &[
    "/usr/lib/postgresql", // Debian, Ubuntu: /usr/lib/postgresql/<version>/bin
    "/opt/homebrew/opt",   // Homebrew on Apple silicon: postgresql@<version>/bin
    "/usr/local/opt",      // Homebrew on Intel
    "/usr/pgsql",          // PGDG RPMs: /usr/pgsql-<version>/bin (prefix match below)
];

/// A private PostgreSQL this process started (stopped when dropped), or found running.
#[derive(Debug)]
pub struct DevPostgres {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    run_as_postgres: bool,
    started_here: bool,
}

/// Whether something accepts connections on the development default address.
pub async fn default_answers() -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(("127.0.0.1", 5432))
        )
        .await,
        Ok(Ok(_))
    )
}

impl DevPostgres {
    /// Starts (creating on first use) the private cluster in `dir`, or `None` when PostgreSQL's
    /// server programs are not installed.
    pub fn start(dir: Option<&Path>, beside: &Path) -> anyhow::Result<Option<Self>> {
        let Some(bin_dir) = server_bin_dir() else {
            return Ok(None);
        };
        let root = running_as_root()?;
        let cluster = match dir {
            Some(dir) => dir.to_owned(),
            None if root => PathBuf::from(ROOT_CLUSTER_DIR),
            None => beside.join("postgres"),
        };
        let postgres_user = if root {
            Some(system_user("postgres")?.ok_or_else(|| {
                anyhow::anyhow!(
                    "development mode would start its own PostgreSQL, but PostgreSQL refuses to \
                     run as root and there is no `postgres` system user to run it: start \
                     PostgreSQL yourself, or set DATABASE_URL"
                )
            })?)
        } else {
            None
        };
        let this = Self {
            bin_dir,
            data_dir: cluster.join("data"),
            socket_dir: cluster.join("socket"),
            run_as_postgres: root,
            started_here: false,
        };
        for dir in [&cluster, &this.socket_dir] {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("making {} private", dir.display()))?;
            if let Some((uid, gid)) = postgres_user {
                std::os::unix::fs::chown(dir, Some(uid), Some(gid))
                    .with_context(|| format!("giving {} to the postgres user", dir.display()))?;
            }
        }
        let fresh = !this.data_dir.join("PG_VERSION").is_file();
        if fresh {
            this.run(
                "initdb",
                &[
                    "-D".as_ref(),
                    this.data_dir.as_os_str(),
                    "-U".as_ref(),
                    "postgres".as_ref(),
                    "--auth=trust".as_ref(),
                    "--encoding=UTF8".as_ref(),
                    "--no-locale".as_ref(),
                ],
            )?;
        }
        let mut this = this;
        if this.status_running() {
            tracing::info!(
                data_dir = %this.data_dir.display(),
                "development mode: using its own PostgreSQL, found running"
            );
            return Ok(Some(this));
        }
        let options = format!(
            "-c listen_addresses='' -k '{}' -p 5432",
            this.socket_dir.display()
        );
        let log = cluster.join("postgres.log");
        this.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                this.data_dir.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "-o".as_ref(),
                options.as_ref(),
                "start".as_ref(),
            ],
        )
        .with_context(|| format!("starting PostgreSQL (its log: {})", log.display()))?;
        this.started_here = true;
        tracing::info!(
            data_dir = %this.data_dir.display(),
            socket_dir = %this.socket_dir.display(),
            created = fresh,
            "development mode: no PostgreSQL answered on 127.0.0.1:5432, so it started its own \
             (Unix socket only; stopped on exit)"
        );
        Ok(Some(this))
    }

    /// The URL of `database` on this cluster.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@localhost/{database}?host={}&port=5432",
            self.socket_dir.display()
        )
    }

    fn status_running(&self) -> bool {
        self.command("pg_ctl")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("status")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin_dir.join(program);
        if self.run_as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
        let output = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {program}"))?;
        if !output.status.success() {
            bail!(
                "{program} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for DevPostgres {
    fn drop(&mut self) {
        if !self.started_here {
            return;
        }
        let stopped = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match stopped {
            Ok(status) if status.success() => {
                tracing::info!("development mode: stopped its own PostgreSQL");
            }
            other => tracing::warn!(?other, "development mode could not stop its own PostgreSQL"),
        }
    }
}

/// The directory of `initdb`, `pg_ctl` and `postgres`: `pg_config --bindir`, else the newest
/// version in the usual package locations.
fn server_bin_dir() -> Option<PathBuf> {
    let has_server = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|p| dir.join(p).is_file())
    };
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if output.status.success() && has_server(&dir) {
            return Some(dir);
        }
    }
    let mut found: Vec<PathBuf> = BIN_DIR_GLOBS
        .iter()
        .flat_map(|base| {
            let base = Path::new(base);
            let (parent, prefix) = match base.file_name().and_then(|n| n.to_str()) {
                Some("pgsql") => (base.parent().unwrap_or(base), "pgsql-"),
                Some("opt") => (base, "postgresql"),
                _ => (base, ""),
            };
            fs::read_dir(parent)
                .into_iter()
                .flatten()
                .flatten()
                .filter(move |entry| entry.file_name().to_string_lossy().starts_with(prefix))
                .map(|entry| entry.path().join("bin"))
        })
        .filter(|dir| has_server(dir))
        .collect();
    // The newest version: names end in the version number.
    found.sort_by_key(|dir| {
        dir.parent()
            .and_then(|p| p.file_name())
            .map(|n| {
                n.to_string_lossy()
                    .chars()
                    .filter(char::is_ascii_digit)
                    .collect::<String>()
            })
            .and_then(|digits| digits.parse::<u64>().ok())
            .unwrap_or(0)
    });
    found.pop()
}

/// Whether this process runs as root (the owner of `/proc/self` is the effective user).
fn running_as_root() -> anyhow::Result<bool> {
    match fs::metadata("/proc/self") {
        Ok(meta) => Ok(meta.uid() == 0),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(false),
        Err(error) => Err(error).context("reading /proc/self"),
    }
}

/// The uid and gid of a system user, from /etc/passwd.
fn system_user(name: &str) -> anyhow::Result<Option<(u32, u32)>> {
    let passwd = fs::read("/etc/passwd").context("reading /etc/passwd")?;
    let passwd = String::from_utf8_lossy(&passwd);
    Ok(passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next() == Some(name)).then_some(())?;
        let uid = fields.nth(1)?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some((uid, gid))
    }))
}
