//! Running the real binary as a child process: a bare environment, its announced address, its
//! log lines, and a SIGTERM to stop it.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

use crate::helpers::unique_name;

pub const BINARY: &str = env!("CARGO_BIN_EXE_llm-registry");

/// A command with an empty environment but PATH and a private HOME: no settings leak in.
pub fn bare_command(home: &Path) -> Command {
    wrapped_command(home, &[])
}

/// [`bare_command`] run by `wrapper` (a program and its arguments, e.g. `prlimit --as=…`,
/// which execs the binary: its pid is the server's).
pub fn wrapped_command(home: &Path, wrapper: &[&str]) -> Command {
    let mut command = match wrapper.split_first() {
        Some((program, arguments)) => {
            let mut command = Command::new(program);
            command.args(arguments).arg(BINARY);
            command
        }
        None => Command::new(BINARY),
    };
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// The binary in production mode on `database`, allowed to call the fake providers: loopback
/// egress, and their test CA (written under `home`) trusted.
pub fn production_with_fakes(
    home: &Path,
    database: &str,
    admin_token: &str,
    master: &llm_registry::vault::MasterKey,
) -> Command {
    production_with_fakes_under(&[], home, database, admin_token, master)
}

/// [`production_with_fakes`], run by `wrapper` (see [`wrapped_command`]).
pub fn production_with_fakes_under(
    wrapper: &[&str],
    home: &Path,
    database: &str,
    admin_token: &str,
    master: &llm_registry::vault::MasterKey,
) -> Command {
    let ca_file = home.join("provider-ca.pem");
    std::fs::write(&ca_file, &crate::fake_provider::TestCa::get().ca_pem).unwrap();
    let mut command = wrapped_command(home, wrapper);
    command
        .env("LLM_REGISTRY_MODE", "production")
        .env("DATABASE_URL", crate::helpers::database_url(database))
        .env("ADMIN_TOKEN", admin_token)
        .env("ENCRYPTION_KEY", master.to_base64().as_str())
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("TLS_TERMINATED_UPSTREAM", "true")
        .env("PROVIDER_EGRESS_ALLOW", "loopback")
        .env("PROVIDER_CA_FILE", &ca_file);
    command
}

pub fn temp_home() -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name("llmr_home"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts the binary and waits for its "serving" log line; keeps draining its output.
pub async fn start_server(
    mut command: Command,
) -> (Child, SocketAddr, mpsc::UnboundedReceiver<String>) {
    let mut child = command.spawn().expect("start the binary");
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, mut lines) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut reader = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            let _ = lines_tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.recv().await {
            seen.push(line.clone());
            if let Some(rest) = line.split("address=").nth(1) {
                return rest.split_whitespace().next().and_then(|a| a.parse().ok());
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_else(|| panic!("the server did not announce its address; output: {seen:#?}"));
    (child, addr, lines)
}

pub async fn terminate(mut child: Child) {
    let pid = child.id().expect("running").to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        exit.success(),
        "SIGTERM should end the server cleanly, got {exit:?}"
    );
}
