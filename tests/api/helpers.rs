//! `TestApp`: starts the service in-process against a fresh database and hands out clients.
//! Secrets (admin token, encryption key) are generated per test, never committed.

use std::{net::SocketAddr, str::FromStr, time::Duration};

use clap::Parser as _;
use llm_registry::{
    IssuedToken,
    config::{Cli, ServeSettings, serve_settings},
    pb::v1::{
        self as pb, api_standard_service_client::ApiStandardServiceClient,
        llm_definition_service_client::LlmDefinitionServiceClient,
        llm_instance_service_client::LlmInstanceServiceClient,
        user_service_client::UserServiceClient,
    },
    vault::{KeyRing, MasterKey},
};
use rand::Rng;
use sqlx::{Connection, PgConnection, postgres::PgConnectOptions};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{Code, Request, Status, transport::Channel};
use tonic_types::StatusExt;

/// The server that tests create databases on; override with TEST_DATABASE_URL.
pub fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A URL for a database name on the test server.
pub fn database_url(name: &str) -> String {
    let options = PgConnectOptions::from_str(&server_url()).expect("TEST_DATABASE_URL parses");
    let host = options.get_host().to_owned();
    let port = options.get_port();
    let user = options.get_username().to_owned();
    format!("postgres://{user}@{host}:{port}/{name}")
}

pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{:016x}", rand::rng().random::<u64>())
}

pub async fn create_database(name: &str) {
    let mut conn = PgConnection::connect(&server_url())
        .await
        .expect("PostgreSQL answers");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .expect("create test database");
}

/// Drops a test database, even if connections linger (PostgreSQL 13+).
pub fn drop_database_blocking(name: String) {
    let _ = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            if let Ok(mut conn) = PgConnection::connect(&server_url()).await {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await;
            }
        });
    })
    .join();
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub channel: Channel,
    pub admin_token: String,
    pub key_ring: KeyRing,
    pub database: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// The settings a test server starts with, made the way the binary makes them: the command line
/// parsed by clap (so every default is the real one) and validated by `serve_settings`, then
/// the test's key ring put in. Production mode, plaintext as behind a mesh that ends TLS
/// (`TLS_TERMINATED_UPSTREAM`; tests/api/tls.rs serves over TLS), and production's egress policy:
/// no loopback, so fakes must be opted into (`trust_fakes`).
pub fn settings(database: &str, admin_token: &str, key_ring: &KeyRing) -> ServeSettings {
    let url = database_url(database);
    // Parsing wants a well-formed key; the test's own ring replaces the one it makes.
    let placeholder_key = MasterKey::generate().to_base64();
    let cli = Cli::try_parse_from([
        "llm-registry",
        "--mode",
        "production",
        "--listen-addr",
        "127.0.0.1:0",
        "--database-url",
        &url,
        "--admin-token",
        admin_token,
        "--encryption-key",
        placeholder_key.as_str(),
        "--tls-terminated-upstream",
        // A small pool per test server, since many run at once against one PostgreSQL; health
        // probed often and a short grace, so that outage and shutdown tests run quickly.
        "--db-max-connections",
        "5",
        "--health-check-interval-ms",
        "200",
        "--shutdown-grace-secs",
        "1",
    ])
    .expect("the test settings parse");
    let mut settings = serve_settings(&cli.global, &cli.serve).expect("the test settings hold");
    settings.keys = llm_registry::keys::KeySource::Ring(key_ring.clone());
    settings
}

/// Lets the server call the fake providers of `fake_provider`: loopback allowed, their test CA
/// trusted, short backoffs and timeouts so that retries do not slow the suite.
pub fn trust_fakes(settings: &mut ServeSettings) {
    settings.providers.egress.allow_loopback = true;
    settings.providers.extra_ca_pem = Some(
        crate::fake_provider::TestCa::get()
            .ca_pem
            .clone()
            .into_bytes(),
    );
    settings.providers.backoff_base = Duration::from_millis(5);
    settings.providers.attempt_timeout = Duration::from_secs(5);
}

/// Shows the server's logs in failing tests' output (filter with RUST_LOG; default warn).
fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use tracing_subscriber::{
            Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _,
        };
        let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned());
        // As the binary sets it up: the pool's acquisition events feed the metrics.
        let _ = tracing_subscriber::registry()
            .with(llm_registry::telemetry::pool_waits::layer())
            .with(
                tracing_subscriber::fmt::layer()
                    .with_test_writer()
                    .with_filter(llm_registry::telemetry::pool_waits::without_acquisitions(
                        tracing_subscriber::EnvFilter::new(filter),
                    )),
            )
            .try_init();
    });
}

impl TestApp {
    pub async fn spawn() -> Self {
        let database = unique_name("llmr_test");
        create_database(&database).await;
        let admin_token = IssuedToken::generate().reveal().to_owned();
        let key_ring = KeyRing::new(MasterKey::generate(), vec![]).expect("one key");
        Self::start(database, admin_token, key_ring)
            .await
            .expect("server starts")
    }

    /// Starts a server on an existing database.
    /// Starts a server on an existing database; the error is the server's refusal to start.
    pub async fn start(
        database: String,
        admin_token: String,
        key_ring: KeyRing,
    ) -> anyhow::Result<Self> {
        Self::start_with(database, admin_token, key_ring, |_| {}).await
    }

    /// A fresh database and a server whose settings `configure` adjusts.
    pub async fn spawn_with(configure: impl FnOnce(&mut ServeSettings)) -> Self {
        let database = unique_name("llmr_test");
        create_database(&database).await;
        let admin_token = IssuedToken::generate().reveal().to_owned();
        let key_ring = KeyRing::new(MasterKey::generate(), vec![]).expect("one key");
        Self::start_with(database, admin_token, key_ring, configure)
            .await
            .expect("server starts")
    }

    /// A fresh database and a server with `key_ring`, whose settings `configure` adjusts.
    pub async fn spawn_with_ring(
        key_ring: KeyRing,
        configure: impl FnOnce(&mut ServeSettings),
    ) -> Self {
        let database = unique_name("llmr_test");
        create_database(&database).await;
        let admin_token = IssuedToken::generate().reveal().to_owned();
        Self::start_with(database, admin_token, key_ring, configure)
            .await
            .expect("server starts")
    }

    async fn start_with(
        database: String,
        admin_token: String,
        key_ring: KeyRing,
        configure: impl FnOnce(&mut ServeSettings),
    ) -> anyhow::Result<Self> {
        init_logging();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (shutdown, stopped) = oneshot::channel::<()>();
        let mut settings = settings(&database, &admin_token, &key_ring);
        configure(&mut settings);
        let mut task = tokio::spawn(llm_registry::server::serve(settings, listener, async {
            let _ = stopped.await;
        }));
        let channel = tokio::select! {
            channel = wait_until_serving(addr) => channel,
            ended = &mut task => {
                return Err(ended.expect("server task").err().unwrap_or_else(|| anyhow::anyhow!("server stopped")));
            }
        };
        Ok(Self {
            addr,
            channel,
            admin_token,
            key_ring,
            database,
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }

    /// Stops this server and starts another on the same database with another key ring. When
    /// that one refuses to start, the database is dropped and the refusal returned.
    pub async fn restart_with(&mut self, key_ring: KeyRing) -> anyhow::Result<()> {
        self.stop().await;
        // Taken, so that dropping the old value below leaves the database alone.
        let database = std::mem::take(&mut self.database);
        match Self::start(database.clone(), self.admin_token.clone(), key_ring).await {
            Ok(restarted) => {
                *self = restarted;
                Ok(())
            }
            Err(refusal) => {
                drop_database_blocking(database);
                Err(refusal)
            }
        }
    }

    /// A second server (another replica, with its own read cache) on this one's database.
    /// Dropping it leaves the database to this one.
    pub async fn replica(&self) -> Self {
        let mut replica = Self::start(
            self.database.clone(),
            self.admin_token.clone(),
            self.key_ring.clone(),
        )
        .await
        .expect("the replica starts");
        replica.database = String::new();
        replica
    }

    /// Another replica on this one's database, with settings `configure` adjusts.
    pub async fn replica_with(&self, configure: impl FnOnce(&mut ServeSettings)) -> Self {
        let mut replica = Self::start_with(
            self.database.clone(),
            self.admin_token.clone(),
            self.key_ring.clone(),
            configure,
        )
        .await
        .expect("the replica starts");
        replica.database = String::new();
        replica
    }

    pub fn embeddings(
        &self,
    ) -> llm_registry::pb::v1::embedding_service_client::EmbeddingServiceClient<Channel> {
        llm_registry::pb::v1::embedding_service_client::EmbeddingServiceClient::new(
            self.channel.clone(),
        )
    }

    /// Stops the server (draining calls) and returns once it has exited.
    pub async fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("server task")
                .expect("server exits cleanly");
        }
    }

    pub fn users(&self) -> UserServiceClient<Channel> {
        UserServiceClient::new(self.channel.clone())
    }

    pub fn definitions(&self) -> LlmDefinitionServiceClient<Channel> {
        LlmDefinitionServiceClient::new(self.channel.clone())
    }

    pub fn instances(&self) -> LlmInstanceServiceClient<Channel> {
        LlmInstanceServiceClient::new(self.channel.clone())
    }

    pub fn standards(&self) -> ApiStandardServiceClient<Channel> {
        ApiStandardServiceClient::new(self.channel.clone())
    }

    /// Creates a user through the API and returns its token.
    pub async fn create_user(&self, handle: &str) -> String {
        create_user_on(&self.channel, &self.admin_token, handle).await
    }

    /// Rotates `users/{handle}`'s token with `token` (the user's own) and returns the new one.
    pub async fn rotate_token(&self, handle: &str, token: &str) -> String {
        self.users()
            .rotate_user_token(authed(
                pb::RotateUserTokenRequest {
                    name: format!("users/{handle}"),
                },
                token,
            ))
            .await
            .expect("users may rotate their own token")
            .into_inner()
            .token
    }

    /// A raw connection to this test's database, for checks behind the API.
    pub async fn db(&self) -> PgConnection {
        PgConnection::connect(&database_url(&self.database))
            .await
            .expect("connect to test database")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if !self.database.is_empty() {
            drop_database_blocking(self.database.clone());
        }
    }
}

/// Connects and waits until the health service says SERVING.
pub async fn wait_until_serving(addr: SocketAddr) -> Channel {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let endpoint = Channel::from_shared(format!("http://{addr}")).expect("endpoint");
    for _ in 0..200 {
        if let Ok(channel) = endpoint.connect().await {
            let status = HealthClient::new(channel.clone())
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await;
            if status.is_ok_and(|s| s.into_inner().status == 1) {
                return channel;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server at {addr} did not become SERVING");
}

/// Wraps a message with a bearer token.
pub fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii token"),
    );
    request
}

/// Creates `users/{handle}` as the admin on any server (an in-process one or the binary) and
/// returns its token.
pub async fn create_user_on(channel: &Channel, admin_token: &str, handle: &str) -> String {
    UserServiceClient::new(channel.clone())
        .create_user(authed(
            pb::CreateUserRequest {
                user_id: handle.to_owned(),
                user: Some(pb::User {
                    display_name: format!("Test user {handle}"),
                    ..Default::default()
                }),
            },
            admin_token,
        ))
        .await
        .expect("admin creates a user")
        .into_inner()
        .token
}

/// GetInstance of `name` as the holder of `token`.
pub async fn get_instance(app: &TestApp, token: &str, name: &str) -> Result<pb::Instance, Status> {
    app.instances()
        .get_instance(authed(
            pb::GetInstanceRequest {
                name: name.to_owned(),
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// The audit events of `resource` (and what lies under it) that the holder of `token` may read,
/// newest first, up to 1000.
pub async fn audit_events(app: &TestApp, token: &str, resource: &str) -> Vec<pb::AuditEvent> {
    audit_events_on(&app.channel, token, resource).await
}

/// [`audit_events`] on any server.
pub async fn audit_events_on(
    channel: &Channel,
    token: &str,
    resource: &str,
) -> Vec<pb::AuditEvent> {
    llm_registry::pb::v1::audit_service_client::AuditServiceClient::new(channel.clone())
        .list_audit_events(authed(
            pb::ListAuditEventsRequest {
                resource: resource.to_owned(),
                page_size: 1000,
                ..Default::default()
            },
            token,
        ))
        .await
        .expect("audit events")
        .into_inner()
        .events
}

/// Asserts the status code, that ErrorInfo is present, and returns the status.
#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    let status = match result {
        Ok(value) => panic!("expected {code:?}, got success: {value:?}"),
        Err(status) => status,
    };
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    let info = status
        .get_details_error_info()
        .expect("every error carries ErrorInfo");
    assert_eq!(info.domain, "llm-registry");
    assert!(!info.reason.is_empty());
    status
}

/// Asserts INVALID_ARGUMENT with a BadRequest violation on `field`.
#[track_caller]
pub fn assert_invalid_field<T: std::fmt::Debug>(result: Result<T, Status>, field: &str) {
    let status = assert_code(result, Code::InvalidArgument);
    let bad_request = status
        .get_details_bad_request()
        .expect("INVALID_ARGUMENT carries BadRequest");
    let fields: Vec<&str> = bad_request
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert!(
        fields.contains(&field),
        "expected a violation on {field}, got {fields:?} ({status:?})"
    );
}

/// The ErrorInfo reason of a status.
pub fn reason(status: &Status) -> String {
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

pub fn definition(
    endpoint: &str,
    standard: &str,
    model: &str,
    dimensions: Option<i32>,
) -> pb::Definition {
    pb::Definition {
        endpoint: endpoint.to_owned(),
        api_standard: standard.to_owned(),
        model: model.to_owned(),
        dimensions,
        ..Default::default()
    }
}

/// Creates `users/{owner}/definitions/{id}` with plausible values.
pub async fn create_definition(
    app: &TestApp,
    token: &str,
    owner: &str,
    id: &str,
) -> Result<pb::Definition, Status> {
    app.definitions()
        .create_definition(authed(
            pb::CreateDefinitionRequest {
                parent: format!("users/{owner}"),
                definition_id: id.to_owned(),
                definition: Some(definition(
                    "https://llm.example.com/v1/embed",
                    "openai",
                    "model-x",
                    Some(256),
                )),
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// The API key stored for an instance, decrypted through the vault (None when there is none).
pub async fn stored_key(app: &TestApp, owner: &str, handle: &str) -> Option<String> {
    let mut db = app.db().await;
    let (uid, key_id, ciphertext): (String, Option<String>, Option<Vec<u8>>) = sqlx::query_as(
        "SELECT i.uid::text, i.api_key_key_id, i.api_key_ciphertext FROM instances i \
         JOIN users u ON u.id = i.owner_id WHERE u.handle = $1 AND i.handle = $2",
    )
    .bind(owner)
    .bind(handle)
    .fetch_one(&mut db)
    .await
    .expect("instance row");
    let (key_id, ciphertext) = (key_id?, ciphertext?);
    let sealed = llm_registry::vault::Sealed { key_id, ciphertext };
    Some(
        app.key_ring
            .open(&sealed, &uid)
            .expect("the stored ciphertext decrypts")
            .expose()
            .to_owned(),
    )
}

/// Sets the description of instance `name` as `token`'s user (who must be allowed to).
pub async fn set_description(app: &TestApp, token: &str, name: &str, description: &str) {
    app.instances()
        .update_instance(authed(
            pb::UpdateInstanceRequest {
                instance: Some(pb::Instance {
                    name: name.to_owned(),
                    description: description.into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["description".into()],
                }),
            },
            token,
        ))
        .await
        .expect("the description is updated");
}

/// Runs `statements` on the test's database behind the service's back: with triggers off, so
/// that no read cache scope moves and only a cache can still answer what they changed.
pub async fn change_behind_the_cache(app: &TestApp, statements: &[&'static str]) {
    let mut db = app.db().await;
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut db)
        .await
        .expect("triggers off");
    for &statement in statements {
        sqlx::query(statement)
            .execute(&mut db)
            .await
            .expect("a change behind the cache");
    }
}

/// A provider-looking API key made at run time.
pub fn random_api_key() -> String {
    format!("sk-test-{:032x}", rand::rng().random::<u128>())
}

/// Grants a share directly in the database (for access tests that do not exercise sharing).
pub async fn grant_share(app: &TestApp, owner: &str, instance: &str, grantee: &str, role: &str) {
    let mut db = app.db().await;
    sqlx::query(
        "INSERT INTO shares (instance_id, grantee_id, role) \
         SELECT i.id, g.id, $4 FROM instances i JOIN users o ON o.id = i.owner_id, users g \
         WHERE o.handle = $1 AND i.handle = $2 AND g.handle = $3",
    )
    .bind(owner)
    .bind(instance)
    .bind(grantee)
    .bind(role)
    .execute(&mut db)
    .await
    .expect("grant share");
}

pub async fn create_instance_from(
    app: &TestApp,
    token: &str,
    owner: &str,
    id: &str,
    source: &str,
    overrides: pb::Instance,
) -> Result<pb::Instance, Status> {
    app.instances()
        .create_instance_from_definition(authed(
            pb::CreateInstanceFromDefinitionRequest {
                parent: format!("users/{owner}"),
                instance_id: id.to_owned(),
                source_definition: source.to_owned(),
                instance: Some(overrides),
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// Shares `users/{owner}/instances/{instance}` with `grantee` through the API.
pub async fn share(
    app: &TestApp,
    token: &str,
    instance: &str,
    grantee: &str,
    role: pb::Role,
) -> Result<pb::Share, Status> {
    llm_registry::pb::v1::sharing_service_client::SharingServiceClient::new(app.channel.clone())
        .share_instance(authed(
            pb::ShareInstanceRequest {
                name: instance.to_owned(),
                grantee: format!("users/{grantee}"),
                role: role as i32,
                quota: None,
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

pub async fn create_project(
    app: &TestApp,
    token: &str,
    owner: &str,
    id: &str,
    instance: &str,
) -> Result<pb::Project, Status> {
    llm_registry::pb::v1::project_service_client::ProjectServiceClient::new(app.channel.clone())
        .create_project(authed(
            pb::CreateProjectRequest {
                parent: format!("users/{owner}"),
                project_id: id.to_owned(),
                project: Some(pb::Project {
                    instance: instance.to_owned(),
                    description: format!("project {id}"),
                    ..Default::default()
                }),
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// The blocker names of a FAILED_PRECONDITION (its PreconditionFailure violations).
pub fn blockers(status: &Status) -> Vec<String> {
    status
        .get_details_precondition_failure()
        .map(|failure| failure.violations.into_iter().map(|v| v.subject).collect())
        .unwrap_or_default()
}

/// Creates `users/{owner}/instances/{id}` holding a fresh random key, as `token`'s user, on any
/// server: an OpenAI-format instance of 8 dimensions at `endpoint` (usually a fake provider's).
pub async fn create_openai_instance_on(
    channel: &Channel,
    token: &str,
    owner: &str,
    id: &str,
    endpoint: String,
) {
    pb::llm_instance_service_client::LlmInstanceServiceClient::new(channel.clone())
        .create_instance(authed(
            pb::CreateInstanceRequest {
                parent: format!("users/{owner}"),
                instance_id: id.into(),
                instance: Some(pb::Instance {
                    endpoint,
                    api_standard: "openai".into(),
                    model: "text-embedding-3-small".into(),
                    dimensions: Some(8),
                    api_key: random_api_key(),
                    ..Default::default()
                }),
            },
            token,
        ))
        .await
        .expect("the instance is created");
}

/// Wraps a message with a service account's token and the user it acts for.
pub fn acting<T>(message: T, token: &str, user: &str) -> Request<T> {
    let mut request = authed(message, token);
    request.metadata_mut().insert(
        "x-llmr-act-as",
        format!("users/{user}").parse().expect("ascii handle"),
    );
    request
}

/// Creates `serviceAccounts/{id}` with `permissions`, restricted to `users` (handles; empty:
/// any user), as the admin on any server; returns its token.
pub async fn create_service_account_on(
    channel: &Channel,
    admin_token: &str,
    id: &str,
    permissions: &[pb::ServiceAccountPermission],
    users: &[&str],
) -> String {
    pb::service_account_service_client::ServiceAccountServiceClient::new(channel.clone())
        .create_service_account(authed(
            pb::CreateServiceAccountRequest {
                service_account_id: id.to_owned(),
                service_account: Some(pb::ServiceAccount {
                    display_name: format!("Test service {id}"),
                    permissions: permissions.iter().map(|p| *p as i32).collect(),
                    act_for_users: users.iter().map(|u| format!("users/{u}")).collect(),
                    ..Default::default()
                }),
            },
            admin_token,
        ))
        .await
        .expect("admin creates a service account")
        .into_inner()
        .token
}
