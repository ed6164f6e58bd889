//! The binary itself: development mode starts against a bare PostgreSQL (creating its database
//! and secrets file) and reuses its secrets on the next start; production mode refuses to start
//! without explicit, well-formed settings; concurrent migrations are safe.

use std::{net::SocketAddr, os::unix::fs::PermissionsExt, path::Path};

use llm_registry::pb::v1::{self as pb, llm_definition_service_client::LlmDefinitionServiceClient};

use crate::{
    binary::{bare_command, start_server, temp_home, terminate},
    helpers::{authed, database_url, drop_database_blocking, unique_name, wait_until_serving},
};

fn secret(file: &Path, key: &str) -> String {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_owned))
        .unwrap_or_else(|| panic!("{key} missing from {}", file.display()))
}

async fn list_system(addr: SocketAddr, token: &str) -> usize {
    let channel = wait_until_serving(addr).await;
    LlmDefinitionServiceClient::new(channel)
        .list_definitions(authed(
            pb::ListDefinitionsRequest {
                parent: "users/_system".into(),
                ..Default::default()
            },
            token,
        ))
        .await
        .expect("the admin token from the secrets file works")
        .into_inner()
        .definitions
        .len()
}

#[tokio::test]
async fn development_mode_starts_on_bare_postgres_and_reuses_its_secrets() {
    let home = temp_home();
    // The database does not exist yet: development mode creates it.
    let database = unique_name("llmr_dev");
    let start = || {
        let mut command = bare_command(&home);
        command
            .env("DATABASE_URL", database_url(&database))
            .env("LISTEN_ADDR", "127.0.0.1:0");
        command
    };

    let (child, addr, _) = start_server(start()).await;
    let file = home.join(".local/state/llm-registry/dev-secrets.env");
    assert!(file.exists(), "the secrets file is created under $HOME");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let token = secret(&file, "ADMIN_TOKEN");
    let key = secret(&file, "ENCRYPTION_KEY");
    assert_eq!(list_system(addr, &token).await, 5);
    terminate(child).await;

    let (child, addr, mut lines) = start_server(start()).await;
    assert_eq!(secret(&file, "ADMIN_TOKEN"), token, "token reused");
    assert_eq!(secret(&file, "ENCRYPTION_KEY"), key, "key reused");
    assert_eq!(list_system(addr, &token).await, 5);
    // A newcomer's first call without a token: the log says where the admin token is.
    let refused = LlmDefinitionServiceClient::new(wait_until_serving(addr).await)
        .list_definitions(pb::ListDefinitionsRequest {
            parent: "users/_system".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    terminate(child).await;
    let mut hinted = false;
    // No secret ever reached the log.
    while let Ok(line) = lines.try_recv() {
        assert!(
            !line.contains(&token) && !line.contains(&key),
            "secret in log: {line}"
        );
        hinted |= line.contains("refused as UNAUTHENTICATED")
            && line.contains(&file.display().to_string());
    }
    assert!(
        hinted,
        "the log names the secrets file after an UNAUTHENTICATED call"
    );
    drop_database_blocking(database);
    let _ = std::fs::remove_dir_all(&home);
}

#[tokio::test]
async fn production_mode_refuses_missing_or_malformed_settings() {
    let home = temp_home();
    let run = |envs: Vec<(&'static str, String)>| {
        let mut command = bare_command(&home);
        command.env("LLM_REGISTRY_MODE", "production").envs(envs);
        command.output()
    };

    let output = run(vec![]).await.unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for missing in [
        "DATABASE_URL is missing",
        "ADMIN_TOKEN is missing",
        "ENCRYPTION_KEY is missing",
        // Both ways out of the TLS requirement are named.
        "set TLS_CERT_FILE and TLS_KEY_FILE",
        "set TLS_TERMINATED_UPSTREAM=true",
    ] {
        assert!(stderr.contains(missing), "expected {missing:?} in {stderr}");
    }
    assert!(
        !home.join(".local").exists(),
        "production never writes a secrets file"
    );

    let output = run(vec![
        ("DATABASE_URL", database_url("unused")),
        ("ADMIN_TOKEN", "short".to_owned()),
        ("ENCRYPTION_KEY", "bm90IDMyIGJ5dGVz".to_owned()),
    ])
    .await
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("ADMIN_TOKEN must be at least 32 characters"),
        "{stderr}"
    );
    assert!(
        stderr.contains("ENCRYPTION_KEY must decode to exactly 32 bytes"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("bm90IDMyIGJ5dGVz"),
        "the key itself is never echoed"
    );
    let _ = std::fs::remove_dir_all(&home);
}

#[tokio::test]
async fn concurrent_migrations_apply_once() {
    let home = temp_home();
    let database = unique_name("llmr_migrate");
    let migrate = || {
        let mut command = bare_command(&home);
        command
            .arg("migrate")
            .env("DATABASE_URL", database_url(&database));
        command.output()
    };
    let (a, b, c) = tokio::join!(migrate(), migrate(), migrate());
    for output in [a, b, c] {
        let output = output.unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&database_url(&database))
        .await
        .unwrap();
    let count: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM definitions d JOIN users u ON u.id = d.owner_id WHERE u.handle = '_system'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(count, 5);
    drop(conn);
    drop_database_blocking(database);
    let _ = std::fs::remove_dir_all(&home);
}

#[tokio::test]
async fn development_mode_names_the_unreachable_database_once_without_its_password() {
    let home = temp_home();
    // Port 1 on loopback: nothing listens there.
    let password = format!("pw{}", unique_name("secret"));
    let output = bare_command(&home)
        .env(
            "DATABASE_URL",
            format!("postgres://someone:{password}@127.0.0.1:1/llm_registry"),
        )
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&home);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr
            .matches("could not reach PostgreSQL at 127.0.0.1:1")
            .count(),
        1,
        "named once: {stderr}"
    );
    assert!(stderr.contains("set DATABASE_URL"), "{stderr}");
    assert!(
        !stderr.contains("5432"),
        "the address tried, not a guess: {stderr}"
    );
    assert!(
        !stderr.contains(&password),
        "the password is never shown: {stderr}"
    );
}

/// With no DATABASE_URL and nothing answering on 127.0.0.1:5432, development mode creates its
/// own PostgreSQL, serves on it, stops it on exit, and reuses it (data kept) on the next start.
/// The binary runs in a network namespace of its own (`unshare -n`, as root: CI's case), where
/// the machine's PostgreSQL on 127.0.0.1:5432 cannot be reached; the cluster is reached by its
/// Unix socket, which the namespace does not hide.
#[tokio::test]
async fn development_mode_starts_its_own_postgres_when_none_answers() {
    let root =
        std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
    if root.ok() != Some(true) {
        eprintln!("skipped: needs root for `unshare -n` (CI runs it)");
        return;
    }
    let home = temp_home();
    let cluster = home.join("own-postgres");
    let script = format!(
        r#"set -e
ip link set lo up
export HOME={home} DEV_POSTGRES_DIR={cluster} LISTEN_ADDR=127.0.0.1:50123 RUST_LOG=info
run() {{
    {bin} > {home}/server-$1.log 2>&1 &
    pid=$!
    for i in $(seq 1 120); do {bin} healthcheck --addr 127.0.0.1:50123 >/dev/null 2>&1 && break; sleep 0.25; done
    {bin} healthcheck --addr 127.0.0.1:50123
    kill $pid; wait $pid
}}
run 1
run 2
"#,
        home = home.display(),
        cluster = cluster.display(),
        bin = crate::binary::BINARY,
    );
    let output = tokio::process::Command::new("unshare")
        .args(["-n", "sh", "-c", &script])
        .output()
        .await
        .expect("unshare runs");
    let log =
        |n: u32| std::fs::read_to_string(home.join(format!("server-{n}.log"))).unwrap_or_default();
    assert!(
        output.status.success(),
        "{}\n{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        log(1),
        log(2)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout)
            .matches("SERVING")
            .count(),
        2
    );
    for (n, created) in [(1, "created=true"), (2, "created=false")] {
        let log = log(n);
        assert!(log.contains("so it started its own"), "{log}");
        assert!(log.contains(created), "{log}");
        assert!(log.contains("stopped its own PostgreSQL"), "{log}");
    }
    // The second start found the database the first one created.
    assert!(
        !log(2).contains("created the development database"),
        "{}",
        log(2)
    );
    // Stopped on exit: nothing runs on the cluster any more.
    let bindir = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        .unwrap();
    let pg_ctl =
        std::path::PathBuf::from(String::from_utf8_lossy(&bindir.stdout).trim()).join("pg_ctl");
    let status = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(pg_ctl)
        .arg("-D")
        .arg(cluster.join("data"))
        .arg("status")
        .output()
        .unwrap();
    assert!(!status.status.success(), "the cluster still runs");
    let _ = std::fs::remove_dir_all(&home);
}

/// Each command's help lists what applies to it: the top level the commands and shared settings
/// (the server's own under `serve --help`), `healthcheck` no database settings.
#[tokio::test]
async fn help_lists_what_applies_to_each_command() {
    let home = temp_home();
    let help = |args: &'static [&'static str]| {
        let mut command = bare_command(&home);
        command.args(args);
        async move {
            let output = command.output().await.unwrap();
            assert!(output.status.success(), "{args:?}");
            String::from_utf8(output.stdout).unwrap()
        }
    };
    let top = help(&["--help"]).await;
    assert!(
        top.contains("import-dhamps-vdb") && top.contains("--database-url"),
        "{top}"
    );
    assert!(
        !top.contains("--listen-addr"),
        "the server's settings are listed twice: {top}"
    );
    assert!(top.contains("llm-registry serve --help"), "{top}");
    let serve = help(&["serve", "--help"]).await;
    assert!(
        serve.contains("--listen-addr") && serve.contains("--database-url"),
        "{serve}"
    );
    let healthcheck = help(&["healthcheck", "--help"]).await;
    assert!(healthcheck.contains("--addr"), "{healthcheck}");
    for other in [
        "--database-url",
        "--mode",
        "--dev-secrets-file",
        "--listen-addr",
    ] {
        assert!(
            !healthcheck.contains(other),
            "healthcheck lists {other}: {healthcheck}"
        );
    }
    let _ = std::fs::remove_dir_all(&home);
}
