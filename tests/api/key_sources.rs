//! KEY_SOURCE against a real OpenBao (tests/api/openbao.rs) and real files, through the real
//! binary: provider keys sealed under transit data keys serve and survive restarts, replicas
//! starting together share one data key, nothing in
//! the database opens without transit, start-up refuses (naming VAULT_ADDR and the operation)
//! when transit is down, denies or rejects an old wrapping, transit key rotation + rewrap +
//! min_decryption_version, rotate-keys while serving, the move from `env`, token renewal and
//! what fails when it stops, and key files readable by others refused.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use base64::{Engine, engine::general_purpose::STANDARD};
use llm_registry::{IssuedToken, pb::v1 as pb, vault::MasterKey};
use serde_json::json;
use sqlx::Connection;
use tokio::{
    process::{Child, Command},
    sync::mpsc::UnboundedReceiver,
};
use tonic::{Code, Status, transport::Channel};

use crate::{
    binary::{production_with_fakes, start_server, temp_home, terminate},
    fake_provider::{FakeProvider, Flavor},
    helpers::{
        authed, create_database, create_user_on, database_url, drop_database_blocking,
        random_api_key, unique_name, wait_until_serving,
    },
    openbao::{OpenBao, TRANSIT_KEY, secret_file},
};

/// One registry deployment: a database, an admin token, a home for files, a fake provider.
struct Deployment {
    database: String,
    admin: String,
    home: PathBuf,
    fake: FakeProvider,
}

impl Deployment {
    async fn new() -> Self {
        let database = unique_name("llmr_test");
        create_database(&database).await;
        Self {
            database,
            admin: IssuedToken::generate().reveal().to_owned(),
            home: temp_home(),
            fake: FakeProvider::start(Flavor::OpenAi, 8).await,
        }
    }

    /// The binary in production mode with `ENCRYPTION_KEY` = `master` (KEY_SOURCE=env).
    fn env_command(&self, master: &MasterKey) -> Command {
        production_with_fakes(&self.home, &self.database, &self.admin, master)
    }

    /// The binary with KEY_SOURCE=vault-transit on `bao`, its token read from `token_file`.
    fn transit_command(&self, bao: &OpenBao, token_file: &Path) -> Command {
        let mut command = self.env_command(&MasterKey::generate());
        command
            .env_remove("ENCRYPTION_KEY")
            .env("KEY_SOURCE", "vault-transit")
            .env("VAULT_ADDR", &bao.address)
            .env("VAULT_TOKEN_FILE", token_file)
            .env("VAULT_TRANSIT_KEY", TRANSIT_KEY)
            .env("DATA_KEY_REFRESH_SECS", "1");
        command
    }

    /// Starts `command`, waits until it serves and creates alice there: the server process, a
    /// channel to it, alice's token and the server's log.
    async fn start_with_alice(
        &self,
        command: Command,
    ) -> (Child, Channel, String, UnboundedReceiver<String>) {
        let (child, addr, log) = start_server(command).await;
        let channel = wait_until_serving(addr).await;
        let alice = create_user_on(&channel, &self.admin, "alice").await;
        (child, channel, alice, log)
    }

    /// `command` run to its end (a refused start, or an operator command).
    async fn run(&self, mut command: Command) -> Output {
        tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .expect("the command ends")
            .unwrap()
    }

    async fn db(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&database_url(&self.database))
            .await
            .unwrap()
    }

    /// (id, wrapped, version, state) of every data key, oldest first.
    async fn data_keys(&self) -> Vec<(String, String, i32, String)> {
        sqlx::query_as(
            "SELECT id, wrapped, wrapped_version, state FROM data_keys ORDER BY created_at, id",
        )
        .fetch_all(&mut self.db().await)
        .await
        .unwrap()
    }

    /// The id of the key that sealed instance `id` of alice.
    async fn sealed_by(&self, id: &str) -> String {
        sqlx::query_scalar(
            "SELECT i.api_key_key_id FROM instances i JOIN users u ON u.id = i.owner_id \
             WHERE u.handle = 'alice' AND i.handle = $1",
        )
        .bind(id)
        .fetch_one(&mut self.db().await)
        .await
        .unwrap()
    }

    /// Creates alice's instance `id` at the fake provider with a fresh key; returns the key.
    async fn create_instance(&self, channel: &Channel, alice: &str, id: &str) -> String {
        let key = random_api_key();
        pb::llm_instance_service_client::LlmInstanceServiceClient::new(channel.clone())
            .create_instance(authed(
                pb::CreateInstanceRequest {
                    parent: "users/alice".into(),
                    instance_id: id.into(),
                    instance: Some(pb::Instance {
                        endpoint: self.fake.endpoint(),
                        api_standard: "openai".into(),
                        model: "text-embedding-3-small".into(),
                        dimensions: Some(8),
                        api_key: key.clone(),
                        ..Default::default()
                    }),
                },
                alice,
            ))
            .await
            .expect("the instance is created");
        key
    }

    /// Embeds with alice's instance `id`, and checks that the fake received `key`.
    async fn embed(
        &self,
        channel: &Channel,
        alice: &str,
        id: &str,
        key: &str,
    ) -> Result<(), Status> {
        pb::embedding_service_client::EmbeddingServiceClient::new(channel.clone())
            .embed(authed(
                pb::EmbedRequest {
                    name: format!("users/alice/instances/{id}"),
                    inputs: vec!["a text".into()],
                    input_type: 0,
                },
                alice,
            ))
            .await?;
        let last = self.fake.recorded().pop().expect("the provider was called");
        assert_eq!(
            last.header("authorization").as_deref(),
            Some(format!("Bearer {key}").as_str())
        );
        Ok(())
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.home);
        drop_database_blocking(std::mem::take(&mut self.database));
    }
}

/// One instance of alice's list per page, from `page_token`.
async fn list_instances(
    channel: &Channel,
    alice: &str,
    page_token: &str,
) -> Result<pb::ListInstancesResponse, Status> {
    pb::llm_instance_service_client::LlmInstanceServiceClient::new(channel.clone())
        .list_instances(authed(
            pb::ListInstancesRequest {
                parent: "users/alice".into(),
                page_size: 1,
                page_token: page_token.into(),
                ..Default::default()
            },
            alice,
        ))
        .await
        .map(tonic::Response::into_inner)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Refused: a failed exit whose standard error holds every one of `needles`.
fn assert_refused(output: &Output, needles: &[&str]) {
    let text = stderr(output);
    assert!(!output.status.success(), "started; stderr: {text}");
    for needle in needles {
        assert!(text.contains(needle), "{needle:?} not in: {text}");
    }
}

/// Waits until a log line holds `needle`; returns every line read.
async fn wait_for_line(log: &mut UnboundedReceiver<String>, needle: &str) -> Vec<String> {
    let mut lines = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = log.recv().await {
            let found = line.contains(needle);
            lines.push(line);
            if found {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no log line with {needle:?} in {lines:#?}"));
    lines
}

fn drain(log: &mut UnboundedReceiver<String>) -> String {
    let mut text = String::new();
    while let Ok(line) = log.try_recv() {
        text.push_str(&line);
        text.push('\n');
    }
    text
}

#[tokio::test]
async fn keys_sealed_under_a_transit_data_key_serve_survive_a_restart_and_are_never_in_the_clear() {
    let bao = OpenBao::start().await;
    let token = bao.registry_token().await;
    let deployment = Deployment::new().await;
    let token_file = secret_file(&deployment.home, "vault-token", &token);

    let (child, channel, alice, mut log) = deployment
        .start_with_alice(deployment.transit_command(&bao, &token_file))
        .await;
    let key = deployment.create_instance(&channel, &alice, "oai").await;
    deployment
        .embed(&channel, &alice, "oai", &key)
        .await
        .unwrap();

    // One data key, primary, wrapped by transit key version 1; the instance's key sealed by it.
    let stored = deployment.data_keys().await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    let (data_key_id, wrapped, version, state) = stored[0].clone();
    assert_eq!((version, state.as_str()), (1, "primary"));
    assert!(wrapped.starts_with("vault:v1:"));
    assert_eq!(deployment.sealed_by("oai").await, data_key_id);
    terminate(child).await;
    let first_log = drain(&mut log);

    // A restart unwraps the same data key (no new one) and opens the key.
    let (child, addr, mut log) = start_server(deployment.transit_command(&bao, &token_file)).await;
    let channel = wait_until_serving(addr).await;
    deployment
        .embed(&channel, &alice, "oai", &key)
        .await
        .unwrap();
    assert_eq!(deployment.data_keys().await.len(), 1);
    terminate(child).await;
    let logs = format!("{first_log}{}", drain(&mut log));

    // A dump of the database holds the wrapped data key, but neither the data key (in any
    // encoding PostgreSQL or we would print) nor the provider key nor the transit token.
    let dump = Command::new("pg_dump")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            &deployment.database,
        ])
        .output()
        .await
        .unwrap();
    assert!(dump.status.success(), "{}", stderr(&dump));
    let dump = stdout(&dump);
    assert!(dump.contains(&wrapped));
    let plaintext = STANDARD
        .decode(bao.decrypt_as_root(&wrapped).await)
        .unwrap();
    assert_eq!(plaintext.len(), 32);
    let hex: String = plaintext.iter().map(|b| format!("{b:02x}")).collect();
    for (what, secret) in [
        ("the data key (base64)", STANDARD.encode(&plaintext)),
        ("the data key (hex)", hex),
        ("the provider key", key.clone()),
        ("the transit token", token.clone()),
    ] {
        assert!(!dump.contains(&secret), "{what} is in the dump");
        assert!(!logs.contains(&secret), "{what} is in the log");
    }
}

#[tokio::test]
async fn replicas_starting_together_on_an_empty_table_share_one_data_key() {
    let bao = OpenBao::start().await;
    let deployment = Deployment::new().await;
    let token_file = secret_file(&deployment.home, "token", &bao.registry_token().await);
    let ((first, first_addr, _first_log), (second, second_addr, _second_log)) = tokio::join!(
        start_server(deployment.transit_command(&bao, &token_file)),
        start_server(deployment.transit_command(&bao, &token_file)),
    );
    let stored = deployment.data_keys().await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].3, "primary");

    // A key sealed by one opens on the other.
    let first_channel = wait_until_serving(first_addr).await;
    let second_channel = wait_until_serving(second_addr).await;
    let alice = create_user_on(&first_channel, &deployment.admin, "alice").await;
    let key = deployment
        .create_instance(&first_channel, &alice, "oai")
        .await;
    deployment
        .embed(&second_channel, &alice, "oai", &key)
        .await
        .unwrap();
    terminate(first).await;
    terminate(second).await;
}

#[tokio::test]
async fn start_is_refused_naming_vault_addr_and_the_operation() {
    let mut bao = OpenBao::start().await;
    let deployment = Deployment::new().await;
    let place = format!("VAULT_ADDR={}", bao.address);

    // A policy that may make data keys but not decrypt them: nothing is sealed under a key the
    // registry could not open again.
    let no_decrypt = bao
        .token(
            "datakey-only",
            &format!(
                "path \"transit/datakey/wrapped/{TRANSIT_KEY}\" {{ capabilities = [\"update\"] }}"
            ),
            "1h",
        )
        .await;
    let file = secret_file(&deployment.home, "no-decrypt", &no_decrypt);
    let output = deployment
        .run(deployment.transit_command(&bao, &file))
        .await;
    assert_refused(&output, &[&place, "decrypt", "permission denied"]);
    assert!(deployment.data_keys().await.is_empty());

    // A transit key that does not exist.
    let root_like = bao
        .token(
            "wide",
            "path \"transit/*\" { capabilities = [\"update\", \"read\"] }",
            "1h",
        )
        .await;
    let file = secret_file(&deployment.home, "wide", &root_like);
    let mut command = deployment.transit_command(&bao, &file);
    command.env("VAULT_TRANSIT_KEY", "no-such-key");
    assert_refused(
        &deployment.run(command).await,
        &[&place, "datakey", "no-such-key", "the key was not found"],
    );

    // Transit stopped after the data key was made.
    let good = secret_file(&deployment.home, "good", &bao.registry_token().await);
    let (child, _, _) = start_server(deployment.transit_command(&bao, &good)).await;
    terminate(child).await;
    bao.stop().await;
    let output = deployment
        .run(deployment.transit_command(&bao, &good))
        .await;
    assert_refused(&output, &[&place, "decrypt", "not reachable"]);
}

#[tokio::test]
async fn transit_key_rotation_rewrap_and_min_decryption_version() {
    let bao = OpenBao::start().await;
    let deployment = Deployment::new().await;
    let token_file = secret_file(&deployment.home, "token", &bao.registry_token().await);
    let (child, channel, alice, _log) = deployment
        .start_with_alice(deployment.transit_command(&bao, &token_file))
        .await;
    let key = deployment.create_instance(&channel, &alice, "oai").await;
    terminate(child).await;

    // The transit key rotates and old versions are refused before the data key moved: start-up
    // says what to do.
    let config = format!("transit/keys/{TRANSIT_KEY}/config");
    bao.root(
        "POST",
        &format!("transit/keys/{TRANSIT_KEY}/rotate"),
        json!({}),
    )
    .await;
    bao.root("POST", &config, json!({ "min_decryption_version": 2 }))
        .await;
    assert_refused(
        &deployment
            .run(deployment.transit_command(&bao, &token_file))
            .await,
        &["decrypt", "min_decryption_version", "rewrap-data-keys"],
    );

    // Lowered again, rewrapped, raised: serves.
    bao.root("POST", &config, json!({ "min_decryption_version": 1 }))
        .await;
    let mut rewrap = deployment.transit_command(&bao, &token_file);
    rewrap.arg("rewrap-data-keys");
    let output = deployment.run(rewrap).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains(
            "rewrapped 1 data key(s); 0 already current; all now under transit key version 2"
        ),
        "{}",
        stdout(&output)
    );
    let stored = deployment.data_keys().await;
    assert_eq!(stored[0].2, 2);
    assert!(stored[0].1.starts_with("vault:v2:"));
    bao.root("POST", &config, json!({ "min_decryption_version": 2 }))
        .await;
    let (child, addr, _log) = start_server(deployment.transit_command(&bao, &token_file)).await;
    let channel = wait_until_serving(addr).await;
    deployment
        .embed(&channel, &alice, "oai", &key)
        .await
        .unwrap();
    terminate(child).await;

    // Nothing left to move.
    let mut again = deployment.transit_command(&bao, &token_file);
    again.arg("rewrap-data-keys");
    let output = deployment.run(again).await;
    assert!(stdout(&output).contains("rewrapped 0 data key(s); 1 already current"));
}

#[tokio::test]
async fn env_moves_to_vault_transit_with_rotate_keys_while_serving() {
    let bao = OpenBao::start().await;
    let deployment = Deployment::new().await;
    let token_file = secret_file(&deployment.home, "token", &bao.registry_token().await);
    let old = MasterKey::generate();

    // Keys sealed under an ENCRYPTION_KEY.
    let (child, channel, alice, _log) = deployment
        .start_with_alice(deployment.env_command(&old))
        .await;
    let first = deployment.create_instance(&channel, &alice, "first").await;
    terminate(child).await;
    assert_eq!(deployment.sealed_by("first").await, old.id());

    // Step 1: vault-transit with the old key as previous: serves both.
    let with_previous = || {
        let mut command = deployment.transit_command(&bao, &token_file);
        command.env("ENCRYPTION_KEYS_PREVIOUS", old.to_base64().as_str());
        command
    };
    let (serving, addr, mut log) = start_server(with_previous()).await;
    let channel = wait_until_serving(addr).await;
    deployment
        .embed(&channel, &alice, "first", &first)
        .await
        .unwrap();
    let first_data_key = deployment.data_keys().await[0].0.clone();

    // Step 2: rotate-keys while that replica serves: a new data key made primary, every key
    // re-sealed under it, the unused first data key retired.
    let mut rotate = with_previous();
    rotate.args(["rotate-keys", "--batch-size", "1"]);
    let output = deployment.run(rotate).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let stored = deployment.data_keys().await;
    let states: Vec<(&str, &str)> = stored
        .iter()
        .map(|(id, _, _, state)| (id.as_str(), state.as_str()))
        .collect();
    assert_eq!(states.len(), 2, "{states:?}");
    assert_eq!(states[0], (first_data_key.as_str(), "retired"));
    let new_primary = states[1].0.to_owned();
    assert_eq!(states[1].1, "primary");
    assert!(stdout(&output).contains(&format!(
        "re-encrypted 1 key(s) under primary key {new_primary}"
    )));
    assert!(stdout(&output).contains(&format!("retired data key(s) {first_data_key}")));
    assert_eq!(deployment.sealed_by("first").await, new_primary);

    // The running replica opens a key sealed under a data key made after it started, and seals
    // new keys under the new primary once it has looked (DATA_KEY_REFRESH_SECS=1).
    deployment
        .embed(&channel, &alice, "first", &first)
        .await
        .unwrap();
    wait_for_line(&mut log, "adopted the new primary data key").await;
    let second = deployment.create_instance(&channel, &alice, "second").await;
    assert_eq!(deployment.sealed_by("second").await, new_primary);
    // Its page tokens follow: one it signs now opens on a replica that never held the first
    // data key (retired) nor the old key.
    let first_page = list_instances(&channel, &alice, "").await.unwrap();
    assert_eq!(first_page.instances.len(), 1);
    terminate(serving).await;

    // Step 3: the old key is no longer needed.
    let (child, addr, _log) = start_server(deployment.transit_command(&bao, &token_file)).await;
    let channel = wait_until_serving(addr).await;
    let second_page = list_instances(&channel, &alice, &first_page.next_page_token)
        .await
        .expect("a page token signed after the rotation opens");
    assert_eq!(second_page.instances.len(), 1);
    deployment
        .embed(&channel, &alice, "first", &first)
        .await
        .unwrap();
    deployment
        .embed(&channel, &alice, "second", &second)
        .await
        .unwrap();
    terminate(child).await;
}

#[tokio::test]
async fn the_token_is_renewed_and_when_it_cannot_be_only_new_data_keys_fail() {
    let bao = OpenBao::start().await;
    let deployment = Deployment::new().await;
    // A token that would expire in 8 seconds unless renewed (long enough for a start on a
    // loaded machine).
    let token = bao
        .token("short", &crate::openbao::registry_policy(TRANSIT_KEY), "8s")
        .await;
    let token_file = secret_file(&deployment.home, "token", &token);
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut command = deployment.transit_command(&bao, &token_file);
    command.env("METRICS_ADDR", format!("127.0.0.1:{metrics_port}"));
    let (child, channel, alice, mut log) = deployment.start_with_alice(command).await;
    let key = deployment.create_instance(&channel, &alice, "oai").await;

    tokio::time::sleep(Duration::from_secs(11)).await;
    let (status, answer) = bao
        .call(&token, "GET", "auth/token/lookup-self", json!(null))
        .await;
    assert_eq!(
        status, 200,
        "the token expired: it was not renewed ({answer})"
    );

    // The token is revoked: renewal fails, the service says so and keeps serving.
    bao.root("POST", "auth/token/revoke", json!({ "token": token }))
        .await;
    wait_for_line(&mut log, "renewing the transit token failed").await;
    deployment
        .embed(&channel, &alice, "oai", &key)
        .await
        .unwrap();
    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "llmr_transit_token_renewal_failing 1",
        "llmr_data_keys{state=\"primary\"} 1",
        "llmr_transit_calls_total{operation=\"datakey\",outcome=\"ok\"} 1",
        "llmr_transit_calls_total{operation=\"decrypt\",outcome=\"ok\"}",
        "llmr_transit_calls_total{operation=\"renew-self\",outcome=\"ok\"}",
        "llmr_transit_calls_total{operation=\"lookup-self\",outcome=\"permission_denied\"}",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
    assert!(!metrics.contains(&token));

    // Another process (with a good token) rotates, and another replica seals a new key under
    // the new data key: this replica cannot unwrap it, so that key is UNAVAILABLE here (with a
    // message naming no secret), and nothing else is: the keys it holds keep serving.
    let good = secret_file(&deployment.home, "good", &bao.registry_token().await);
    let mut rotate = deployment.transit_command(&bao, &good);
    rotate.arg("rotate-keys");
    let output = deployment.run(rotate).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let (other, other_addr, _other_log) =
        start_server(deployment.transit_command(&bao, &good)).await;
    let other_channel = wait_until_serving(other_addr).await;
    let fresh = deployment
        .create_instance(&other_channel, &alice, "fresh")
        .await;
    deployment
        .embed(&other_channel, &alice, "fresh", &fresh)
        .await
        .unwrap();
    let refused = deployment
        .embed(&channel, &alice, "fresh", &fresh)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("cannot be unwrapped now"),
        "{refused:?}"
    );
    assert!(!refused.message().contains(&fresh));
    deployment
        .embed(&channel, &alice, "oai", &key)
        .await
        .unwrap();
    terminate(other).await;
    pb::user_service_client::UserServiceClient::new(channel.clone())
        .get_user(authed(
            pb::GetUserRequest {
                name: "users/alice".into(),
            },
            &alice,
        ))
        .await
        .expect("what needs no new data key still works");
    terminate(child).await;
}

#[tokio::test]
async fn key_files_must_be_private_and_serve() {
    let deployment = Deployment::new().await;
    let master = MasterKey::generate();
    let key_file = secret_file(
        &deployment.home,
        "encryption-key",
        master.to_base64().as_str(),
    );
    let file_command = || {
        let mut command = deployment.env_command(&master);
        command
            .env_remove("ENCRYPTION_KEY")
            .env("KEY_SOURCE", "file")
            .env("ENCRYPTION_KEY_FILE", &key_file);
        command
    };

    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_refused(
        &deployment.run(file_command()).await,
        &[
            "ENCRYPTION_KEY_FILE",
            key_file.to_str().unwrap(),
            "may be read by group or others (mode 0644)",
        ],
    );

    // Two places for one key: refused too.
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut both = file_command();
    both.env("ENCRYPTION_KEY", master.to_base64().as_str());
    assert_refused(
        &deployment.run(both).await,
        &["ENCRYPTION_KEY is set but KEY_SOURCE is file"],
    );

    // Private: serves, and seals under the file's key.
    let (child, channel, alice, _log) = deployment.start_with_alice(file_command()).await;
    let key = deployment.create_instance(&channel, &alice, "oai").await;
    deployment
        .embed(&channel, &alice, "oai", &key)
        .await
        .unwrap();
    assert_eq!(deployment.sealed_by("oai").await, master.id());
    terminate(child).await;

    // The transit token's file is held to the same rule (checked before transit is asked).
    let token_file = secret_file(&deployment.home, "token", &random_api_key());
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o604)).unwrap();
    let mut command = deployment.env_command(&master);
    command
        .env_remove("ENCRYPTION_KEY")
        .env("KEY_SOURCE", "vault-transit")
        .env("VAULT_ADDR", "http://127.0.0.1:9")
        .env("VAULT_TOKEN_FILE", &token_file)
        .env("VAULT_TRANSIT_KEY", TRANSIT_KEY);
    assert_refused(
        &deployment.run(command).await,
        &[
            "VAULT_TOKEN_FILE",
            "may be read by group or others (mode 0604)",
        ],
    );
}
