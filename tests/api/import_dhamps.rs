//! `import-dhamps-vdb` against dhamps-vdb databases built from its real schemas
//! (tests/fixtures/dhamps_vdb_v4.sql and _v3.sql), filled at run time with rows that exercise
//! every mapping rule and hostile values, keys sealed exactly as dhamps-vdb's Go code seals them.
//! The real binary imports into a running registry; the results are checked where a user would
//! look: the API (a user's old dhamps-vdb key as bearer token, Embed through an imported key to a
//! fake provider), the report, and the audit trail.

use std::{collections::HashMap, path::Path, process::Output};

use aes_gcm::{Aes256Gcm, KeyInit as _, Nonce, aead::Aead as _};
use llm_registry::pb::v1 as pb;
use rand::{Rng as _, RngCore as _};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use sqlx::{Connection as _, PgConnection};

use crate::{
    binary::{bare_command, temp_home},
    embed::texts,
    fake_provider::{FakeProvider, Flavor},
    helpers::{
        TestApp, audit_events, authed, create_database, database_url, drop_database_blocking,
        random_api_key, stored_key, trust_fakes, unique_name,
    },
};

const V4_SCHEMA: &str = include_str!("../fixtures/dhamps_vdb_v4.sql");
const V3_SCHEMA: &str = include_str!("../fixtures/dhamps_vdb_v3.sql");

/// What dhamps-vdb's `crypto.EncryptionKey.Encrypt` writes: AES-256-GCM under SHA-256 of the
/// key string, `gcm.Seal(nonce, nonce, plaintext, nil)`, so nonce || ciphertext || tag.
fn seal_like_dhamps(encryption_key: &str, plaintext: &str) -> Vec<u8> {
    let cipher = Aes256Gcm::new(Sha256::digest(encryption_key.as_bytes()).as_slice().into());
    let mut nonce = [0u8; 12];
    rand::rng().fill_bytes(&mut nonce);
    let mut sealed = nonce.to_vec();
    sealed.extend(
        cipher
            .encrypt(Nonce::from_slice(&nonce), plaintext.as_bytes())
            .unwrap(),
    );
    sealed
}

/// A dhamps-vdb user API key as its `RandomKey(32)` makes them, and the digest it stores.
fn user_key() -> (String, String) {
    let key: String = (0..32)
        .map(|_| {
            char::from(
                b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                    [rand::rng().random_range(0..62)],
            )
        })
        .collect();
    let digest = hex(&Sha256::digest(key.as_bytes()));
    (key, digest)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A source database made from a schema fixture; dropped with the value.
struct SourceDb {
    name: String,
}

impl SourceDb {
    async fn create(schema: &str) -> Self {
        let name = unique_name("llmr_test");
        create_database(&name).await;
        let db = Self { name };
        sqlx::raw_sql(sqlx::AssertSqlSafe(schema.to_owned()))
            .execute(&mut db.connect().await)
            .await
            .expect("the fixture schema loads");
        db
    }

    async fn connect(&self) -> PgConnection {
        PgConnection::connect(&database_url(&self.name))
            .await
            .expect("source database")
    }

    fn url(&self) -> String {
        database_url(&self.name)
    }

    /// Everything in it, as pg_dump writes it.
    fn dump(&self) -> String {
        let output = std::process::Command::new("pg_dump")
            .args(["--no-owner", "--data-only", "--inserts", &self.url()])
            .output()
            .expect("pg_dump runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let schema = std::process::Command::new("pg_dump")
            .args(["--no-owner", "--schema-only", &self.url()])
            .output()
            .expect("pg_dump runs");
        // Newer pg_dump releases fence the dump with a random `\restrict` token.
        (String::from_utf8(output.stdout).unwrap() + &String::from_utf8(schema.stdout).unwrap())
            .lines()
            .filter(|line| !line.starts_with("\\restrict") && !line.starts_with("\\unrestrict"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for SourceDb {
    fn drop(&mut self) {
        drop_database_blocking(std::mem::take(&mut self.name));
    }
}

async fn exec(db: &mut PgConnection, sql: &'static str, binds: &[&dyn ToSql]) {
    let mut query = sqlx::query(sql);
    for bind in binds {
        query = bind.bind_to(query);
    }
    query
        .execute(db)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Values of any of the types the fixtures' rows need, bound in order.
trait ToSql: Sync {
    fn bind_to<'q>(
        &'q self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;
}

macro_rules! to_sql {
    ($($t:ty),*) => {$(
        impl ToSql for $t {
            fn bind_to<'q>(
                &'q self,
                query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
            ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
                query.bind(self)
            }
        }
    )*};
}
to_sql!(
    &str,
    String,
    i32,
    bool,
    Option<i32>,
    Option<Vec<u8>>,
    Option<&str>
);

/// One dhamps-vdb instance of the v4 fixture; its key, if any, sealed under the current
/// dhamps-vdb key or (`true`) the older one.
struct Row {
    handle: &'static str,
    owner: &'static str,
    endpoint: String,
    standard: &'static str,
    dimensions: i32,
    context_limit: i32,
    definition: Option<&'static str>,
    key: Option<(String, bool)>,
    description: String,
}

fn row(
    handle: &'static str,
    owner: &'static str,
    endpoint: &str,
    standard: &'static str,
    key: Option<(String, bool)>,
) -> Row {
    Row {
        handle,
        owner,
        endpoint: endpoint.to_owned(),
        standard,
        dimensions: 8,
        context_limit: 8191,
        definition: None,
        key,
        description: String::new(),
    }
}

/// The secrets of the v4 source, kept for the assertions.
struct V4 {
    db: SourceDb,
    encryption_key: String,
    older_key: String,
    /// dhamps-vdb user handle -> their API key.
    user_keys: HashMap<&'static str, String>,
    /// dhamps-vdb instance handle -> its provider key as dhamps-vdb held it.
    provider_keys: HashMap<&'static str, String>,
}

impl V4 {
    fn secrets(&self) -> Vec<String> {
        let mut all = vec![self.encryption_key.clone(), self.older_key.clone()];
        all.extend(self.user_keys.values().cloned());
        all.extend(
            self.user_keys
                .values()
                .map(|k| hex(&Sha256::digest(k.as_bytes()))),
        );
        all.extend(self.provider_keys.values().map(|k| k.trim().to_owned()));
        all
    }
}

/// A dhamps-vdb 4 deployment with every rule's case in it.
async fn v4_source(endpoint: &str) -> V4 {
    let db = SourceDb::create(V4_SCHEMA).await;
    let mut c = db.connect().await;
    let encryption_key = format!("dhamps secret {}", random_api_key());
    let older_key = format!("dhamps old secret {}", random_api_key());
    let mut user_keys = HashMap::new();
    for (handle, name) in [
        ("alice", "Alice\u{7}Liddell"),
        ("Bob Smith", "Bob Smith"),
        ("jürgen.müller", "Jürgen Müller"),
        ("Alice", "Another Alice"),
        ("carol", "Carol"),
        ("dave", "Dave in dhamps-vdb"),
    ] {
        let (key, digest) = user_key();
        // Alice's rows were written in Berlin's winter time.
        let created = if handle == "alice" {
            "2025-01-15 12:00:00"
        } else {
            "2025-06-01 08:00:00"
        };
        exec(
            &mut c,
            "INSERT INTO users VALUES ($1, $2, $3, $4, $5::timestamp, $5::timestamp)",
            &[
                &handle,
                &name,
                &format!("{handle}@example.org"),
                &digest,
                &created,
            ],
        )
        .await;
        user_keys.insert(handle, key);
    }
    for (handle, method, field) in [
        ("Mistral AI", "auth_bearer", "Authorization"),
        ("formy", "body_form", "key"),
        ("hdr", "custom_header", "X-Api-Key"),
    ] {
        exec(
            &mut c,
            "INSERT INTO api_standards VALUES ($1, 'a standard', $2, $3, now(), now())",
            &[&handle, &method, &field],
        )
        .await;
    }
    exec(
        &mut c,
        "INSERT INTO definitions (definition_handle, owner, endpoint, description, api_standard, \
             model, dimensions, context_limit, is_public, created_at, updated_at) VALUES \
         ('alice-def', 'alice', 'https://api.openai.com/v1/embeddings', 'mine', 'openai', \
             'text-embedding-3-small', 0, 0, true, now(), now()), \
         ('formdef', 'carol', 'https://example.com/embed', '', 'formy', 'm', 8, 100, false, now(), now())",
        &[],
    )
    .await;
    exec(
        &mut c,
        "INSERT INTO definitions_shared_with SELECT 'carol', definition_id, now(), now() \
         FROM definitions WHERE definition_handle = 'alice-def'",
        &[],
    )
    .await;
    let mut provider_keys = HashMap::new();
    let long_description = format!("first line\r\nsecond line\r\n{}", "x".repeat(1500));
    let current = |key: String| Some((key, false));
    let older = |key: String| Some((key, true));
    let instances = [
        Row {
            definition: Some("openai-small"),
            description: "my embedder".to_owned(),
            ..row(
                "embedder",
                "alice",
                endpoint,
                "openai",
                current(random_api_key()),
            )
        },
        row(
            "Old.Key",
            "alice",
            endpoint,
            "openai",
            older(random_api_key()),
        ),
        row(
            "spaced",
            "alice",
            endpoint,
            "openai",
            current(format!("  {}\t\n", random_api_key())),
        ),
        row(
            "unicode",
            "Bob Smith",
            endpoint,
            "openai",
            current(format!("sk-ünïcödé-{}", random_api_key())),
        ),
        row(
            "creds",
            "Bob Smith",
            "https://user:pw@example.com/v1/embeddings",
            "openai",
            current(random_api_key()),
        ),
        Row {
            dimensions: 0,
            context_limit: 0,
            description: long_description,
            ..row("long", "carol", endpoint, "openai", None)
        },
        row(
            "formy-inst",
            "carol",
            "https://example.com/embed",
            "formy",
            current(random_api_key()),
        ),
        Row {
            definition: Some("alice-def"),
            ..row("linked", "Bob Smith", endpoint, "openai", None)
        },
        row(
            "hdr-inst",
            "jürgen.müller",
            endpoint,
            "hdr",
            current(random_api_key()),
        ),
    ];
    for instance in instances {
        let sealed = instance.key.as_ref().map(|(plaintext, under_older)| {
            let sealing_key = if *under_older {
                &older_key
            } else {
                &encryption_key
            };
            seal_like_dhamps(sealing_key, plaintext)
        });
        exec(
            &mut c,
            "INSERT INTO instances (instance_handle, owner, endpoint, description, api_standard, \
                 model, dimensions, created_at, updated_at, context_limit, definition_id, \
                 api_key_encrypted) \
             VALUES ($1, $2, $3, $4, $5, 'text-embedding-3-small', $6, now(), now(), $7, \
                 (SELECT definition_id FROM definitions WHERE definition_handle = $8), $9)",
            &[
                &instance.handle,
                &instance.owner,
                &instance.endpoint,
                &instance.description,
                &instance.standard,
                &instance.dimensions,
                &instance.context_limit,
                &instance.definition,
                &sealed,
            ],
        )
        .await;
        if let Some((plaintext, _)) = instance.key {
            provider_keys.insert(instance.handle, plaintext);
        }
    }
    for (instance, user, role) in [
        ("embedder", "Bob Smith", "editor"),
        ("embedder", "_system", "reader"),
        ("embedder", "carol", "reader"),
        ("creds", "alice", "reader"),
    ] {
        exec(
            &mut c,
            "INSERT INTO instances_shared_with SELECT $2, instance_id, $3, now(), now() \
             FROM instances WHERE instance_handle = $1",
            &[&instance, &user, &role],
        )
        .await;
    }
    for (handle, owner, instance) in [
        ("Proj One", "alice", Some("embedder")),
        ("bobs", "Bob Smith", Some("embedder")),
        ("carols", "carol", Some("unicode")),
        ("meta", "alice", None),
        ("on-creds", "Bob Smith", Some("creds")),
    ] {
        exec(
            &mut c,
            "INSERT INTO projects (project_handle, owner, description, metadata_scheme, created_at, \
                 updated_at, public_read, instance_id) \
             VALUES ($1, $2, 'a project', CASE WHEN $1 = 'meta' THEN '{\"type\":\"object\"}' END, \
                 now(), now(), $1 = 'meta', (SELECT instance_id FROM instances WHERE instance_handle = $3))",
            &[&handle, &owner, &instance],
        )
        .await;
    }
    exec(
        &mut c,
        "INSERT INTO users_projects SELECT 'Bob Smith', project_id, 'reader', now(), now() \
         FROM projects WHERE project_handle = 'meta'",
        &[],
    )
    .await;
    V4 {
        db,
        encryption_key,
        older_key,
        user_keys,
        provider_keys,
    }
}

/// Runs the binary's import into `app`'s database; the output and the JSON report.
async fn import(
    app: &TestApp,
    source_url: &str,
    dhamps_key: Option<&str>,
    previous_keys: Option<&[&str]>,
    extra: &[&str],
) -> (Output, Option<Value>) {
    let home = temp_home();
    let report = home.join("report.json");
    let mut command = bare_command(&home);
    command
        .args(["import-dhamps-vdb", "--source-url", source_url, "--report"])
        .arg(&report)
        .args(extra)
        .env("LLM_REGISTRY_MODE", "production")
        .env("DATABASE_URL", database_url(&app.database))
        .env(
            "ENCRYPTION_KEY",
            app.key_ring.primary().to_base64().as_str(),
        );
    if let Some(key) = dhamps_key {
        command.env("DHAMPS_ENCRYPTION_KEY", key);
    }
    if let Some(keys) = previous_keys {
        let file = home.join("previous-keys");
        write_private(&file, &(keys.join("\n") + "\n"));
        command.arg("--source-previous-keys-file").arg(&file);
    }
    let output = command.output().await.expect("the binary runs");
    let parsed = std::fs::read_to_string(&report)
        .ok()
        .map(|text| serde_json::from_str(&text).expect("the report is JSON"));
    let _ = std::fs::remove_dir_all(&home);
    (output, parsed)
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[track_caller]
fn succeeded(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the import failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// `counts.{kind}.{field}` of a report.
fn count(report: &Value, kind: &str, field: &str) -> u64 {
    report["counts"][kind][field]
        .as_u64()
        .unwrap_or_else(|| panic!("no count {kind}.{field} in {report:#}"))
}

/// The report's item for a source identity starting with `source`.
fn item<'r>(report: &'r Value, source: &str) -> &'r Value {
    report["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["source"].as_str().unwrap().starts_with(source))
        .unwrap_or_else(|| panic!("no item for {source} in {report:#}"))
}

fn reasons(item: &Value) -> String {
    item["reasons"].to_string()
}

/// The registry's row counts of everything an import writes.
async fn registry_rows(app: &TestApp) -> Vec<i64> {
    let mut db = app.db().await;
    let mut counts = Vec::new();
    for sql in [
        "SELECT count(*) FROM users",
        "SELECT count(*) FROM api_standards",
        "SELECT count(*) FROM definitions",
        "SELECT count(*) FROM instances",
        "SELECT count(*) FROM shares",
        "SELECT count(*) FROM projects",
        "SELECT count(*) FROM audit_events",
        "SELECT count(*) FROM import_ledger",
        "SELECT coalesce(sum(revision), 0)::bigint FROM instances",
    ] {
        counts.push(sqlx::query_scalar(sql).fetch_one(&mut db).await.unwrap());
    }
    counts
}

#[tokio::test]
async fn a_dhamps_vdb_4_deployment_comes_over_with_its_keys_and_a_second_run_changes_nothing() {
    let fake = FakeProvider::start(Flavor::OpenAi, 8).await;
    let source = v4_source(&fake.endpoint()).await;
    let app = TestApp::spawn_with(trust_fakes).await;
    // A registry user who happens to have a dhamps-vdb user's handle keeps it.
    let registry_dave = app.create_user("dave").await;
    let dump_before = source.db.dump();

    let (output, report) = import(
        &app,
        &source.db.url(),
        Some(&source.encryption_key),
        Some(&[&source.older_key]),
        &["--source-timezone", "Europe/Berlin"],
    )
    .await;
    let stdout = succeeded(&output);
    let report = report.expect("a report");
    assert!(source.db.dump() == dump_before, "the source is only read");

    // Counts per kind.
    assert_eq!(count(&report, "user", "imported"), 6, "{report:#}");
    assert_eq!(count(&report, "user", "matched"), 1); // _system
    assert_eq!(count(&report, "user", "changed_on_the_way_in"), 5);
    assert_eq!(count(&report, "api_standard", "matched"), 3);
    assert_eq!(count(&report, "api_standard", "imported"), 2);
    assert_eq!(count(&report, "api_standard", "skipped"), 1);
    assert_eq!(count(&report, "definition", "matched"), 4);
    assert_eq!(count(&report, "definition", "imported"), 1);
    assert_eq!(count(&report, "definition", "skipped"), 1);
    assert_eq!(count(&report, "instance", "imported"), 7);
    assert_eq!(count(&report, "instance", "skipped"), 2);
    assert_eq!(count(&report, "instance", "changed_on_the_way_in"), 4);
    assert_eq!(count(&report, "share", "imported"), 2);
    assert_eq!(count(&report, "share", "skipped"), 2);
    assert_eq!(count(&report, "project", "imported"), 5);
    assert_eq!(count(&report, "project", "changed_on_the_way_in"), 4);
    assert_eq!(report["dropped"]["user emails"], 7);
    assert_eq!(report["dropped"]["definition is_public flags"], 1);
    assert_eq!(
        report["dropped"]["definition shares (definitions_shared_with)"],
        1
    );
    assert_eq!(report["dropped"]["project metadata schemes"], 1);
    assert_eq!(report["dropped"]["project public_read flags"], 1);
    assert_eq!(report["dropped"]["project members (users_projects)"], 1);

    // What was changed or skipped, and why.
    assert_eq!(
        item(&report, "users/Bob Smith")["target"],
        "users/bob-smith"
    );
    assert_eq!(
        item(&report, "users/jürgen.müller")["target"],
        "users/jurgen-muller"
    );
    assert_eq!(item(&report, "users/Alice")["target"], "users/alice-2");
    assert_eq!(item(&report, "users/dave")["target"], "users/dave-2");
    assert!(reasons(item(&report, "users/alice")).contains("control characters"));
    assert!(reasons(item(&report, "api_standards/formy")).contains("body_form"));
    assert_eq!(
        item(&report, "api_standards/Mistral AI")["target"],
        "apiStandards/mistral-ai"
    );
    let creds = item(&report, "instances/5 (Bob Smith/creds)");
    assert_eq!(creds["action"], "skipped");
    assert!(
        reasons(creds).contains("must not carry credentials"),
        "{creds}"
    );
    assert!(
        !reasons(creds).contains("pw@"),
        "the refusal does not echo credentials"
    );
    assert!(reasons(item(&report, "instances/3 (alice/spaced)")).contains("whitespace trimmed"));
    let long = reasons(item(&report, "instances/6 (carol/long)"));
    assert!(
        long.contains("to 1000 characters") && long.contains("line breaks"),
        "{long}"
    );
    assert!(
        reasons(item(&report, "instances/8 (Bob Smith/linked)"))
            .contains("link to users/alice/definitions/alice-def was dropped")
    );
    assert_eq!(
        item(&report, "projects/3 (carol/carols)")["target"],
        "users/carol/projects/carols"
    );
    assert!(
        reasons(item(&report, "projects/3 (carol/carols)"))
            .contains("may not use users/bob-smith/instances/unicode")
    );

    // No key, key fragment, user key or digest anywhere in what the import printed or wrote.
    let printed = format!(
        "{stdout}{}{report}",
        String::from_utf8_lossy(&output.stderr)
    );
    for secret in source.secrets() {
        assert!(!printed.contains(&secret), "the report holds a secret");
        let fragment: String = secret.chars().take(12).collect();
        assert!(
            !printed.contains(&fragment),
            "the report holds a key fragment"
        );
    }

    // A user's dhamps-vdb API key is their bearer token here.
    let alice = &source.user_keys["alice"];
    let bob = &source.user_keys["Bob Smith"];
    let carol = &source.user_keys["carol"];
    let bobs_instances = app
        .instances()
        .list_instances(authed(
            pb::ListInstancesRequest {
                parent: "users/bob-smith".into(),
                page_size: 50,
                ..Default::default()
            },
            bob,
        ))
        .await
        .expect("bob's old key authenticates him")
        .into_inner();
    let mut names: Vec<String> = bobs_instances
        .instances
        .iter()
        .map(|i| i.name.clone())
        .collect();
    names.sort();
    assert!(
        names.contains(&"users/bob-smith/instances/unicode".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"users/bob-smith/instances/linked".to_owned()),
        "{names:?}"
    );
    let user = app
        .users()
        .get_user(authed(
            pb::GetUserRequest {
                name: "users/alice".into(),
            },
            alice,
        ))
        .await
        .expect("alice reads herself")
        .into_inner();
    assert_eq!(user.display_name, "Alice Liddell");
    // 12:00 in Berlin's winter is 11:00 UTC.
    assert_eq!(user.create_time.unwrap().seconds, 1_736_938_800);
    // The registry's own dave is untouched, and the imported one is dave-2.
    let dave2 = &source.user_keys["dave"];
    assert!(
        app.users()
            .get_user(authed(
                pb::GetUserRequest {
                    name: "users/dave-2".into(),
                },
                dave2
            ))
            .await
            .is_ok()
    );
    assert!(
        app.users()
            .get_user(authed(
                pb::GetUserRequest {
                    name: "users/dave".into(),
                },
                &registry_dave
            ))
            .await
            .is_ok()
    );

    // Imported keys reach the provider unchanged (the older-key and trimmed ones too).
    for (handle, token, original) in [
        ("users/alice/instances/embedder", alice, "embedder"),
        ("users/alice/instances/old-key", alice, "Old.Key"),
        ("users/alice/instances/spaced", alice, "spaced"),
        ("users/alice/instances/embedder", bob, "embedder"),
    ] {
        let before = fake.request_count();
        app.embeddings()
            .embed(authed(
                pb::EmbedRequest {
                    name: handle.into(),
                    inputs: texts(1),
                    input_type: pb::EmbeddingInputType::Query as i32,
                },
                token,
            ))
            .await
            .unwrap_or_else(|e| panic!("embed through {handle}: {e:?}"));
        let recorded = fake.recorded();
        assert_eq!(recorded.len(), before + 1);
        assert_eq!(
            recorded.last().unwrap().header("authorization").unwrap(),
            format!("Bearer {}", source.provider_keys[original].trim())
        );
    }
    assert_eq!(
        stored_key(&app, "bob-smith", "unicode").await.unwrap(),
        source.provider_keys["unicode"]
    );
    assert_eq!(stored_key(&app, "carol", "long").await, None);
    assert!(
        stored_key(&app, "jurgen-muller", "hdr-inst")
            .await
            .is_some()
    );

    // Shares and projects, as their users see them.
    let shares = pb::sharing_service_client::SharingServiceClient::new(app.channel.clone())
        .list_instance_shares(authed(
            pb::ListInstanceSharesRequest {
                parent: "users/alice/instances/embedder".into(),
                ..Default::default()
            },
            alice,
        ))
        .await
        .unwrap()
        .into_inner()
        .shares;
    let mut granted: Vec<(String, i32)> =
        shares.iter().map(|s| (s.grantee.clone(), s.role)).collect();
    granted.sort();
    assert_eq!(
        granted,
        vec![
            ("users/bob-smith".to_owned(), pb::Role::Writer as i32),
            ("users/carol".to_owned(), pb::Role::Reader as i32)
        ]
    );
    let projects = pb::project_service_client::ProjectServiceClient::new(app.channel.clone());
    let bobs = projects
        .clone()
        .get_project(authed(
            pb::GetProjectRequest {
                name: "users/bob-smith/projects/bobs".into(),
            },
            bob,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bobs.instance, "users/alice/instances/embedder");
    let carols = projects
        .clone()
        .get_project(authed(
            pb::GetProjectRequest {
                name: "users/carol/projects/carols".into(),
            },
            carol,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(carols.instance, "");
    assert!(
        carols
            .detach_reason
            .contains("may not use users/bob-smith/instances/unicode"),
        "{}",
        carols.detach_reason
    );

    // Every imported object is in the audit trail, the import as its caller.
    let events = audit_events(&app, &app.admin_token, "users/alice/instances/embedder").await;
    assert!(
        events
            .iter()
            .any(|e| e.caller == "import-dhamps-vdb"
                && e.resource == "users/alice/instances/embedder"),
        "{events:#?}"
    );
    assert!(events.iter().any(|e| e.caller == "import-dhamps-vdb"
        && e.resource == "users/alice/instances/embedder/shares/bob-smith"));

    // A second run imports nothing twice and changes nothing.
    let rows_before = registry_rows(&app).await;
    let (output, again) = import(
        &app,
        &source.db.url(),
        Some(&source.encryption_key),
        Some(&[&source.older_key]),
        &["--source-timezone", "Europe/Berlin"],
    )
    .await;
    succeeded(&output);
    let again = again.unwrap();
    for kind in [
        "user",
        "api_standard",
        "definition",
        "instance",
        "share",
        "project",
    ] {
        assert_eq!(count(&again, kind, "imported"), 0, "{kind}: {again:#}");
        assert_eq!(count(&again, kind, "updated"), 0, "{kind}: {again:#}");
    }
    assert_eq!(count(&again, "user", "unchanged"), 6);
    assert_eq!(count(&again, "instance", "unchanged"), 7);
    assert_eq!(count(&again, "project", "unchanged"), 5);
    assert_eq!(registry_rows(&app).await, rows_before);

    // A row changed in the source since is updated; one changed on both sides is a conflict.
    let mut c = source.db.connect().await;
    exec(&mut c, "UPDATE instances SET model = 'text-embedding-3-large', updated_at = now() WHERE instance_handle = 'embedder'", &[]).await;
    exec(&mut c, "UPDATE instances SET description = 'changed in dhamps', updated_at = now() WHERE instance_handle = 'hdr-inst'", &[]).await;
    exec(&mut c, "UPDATE instances_shared_with SET role = 'reader', updated_at = now() WHERE user_handle = 'Bob Smith'", &[]).await;
    sqlx::query("UPDATE instances SET description = 'changed here', revision = revision + 1 WHERE handle = 'hdr-inst'")
        .execute(&mut app.db().await)
        .await
        .unwrap();
    let (output, third) = import(
        &app,
        &source.db.url(),
        Some(&source.encryption_key),
        Some(&[&source.older_key]),
        &["--source-timezone", "Europe/Berlin"],
    )
    .await;
    succeeded(&output);
    let third = third.unwrap();
    assert_eq!(count(&third, "instance", "updated"), 1, "{third:#}");
    assert_eq!(count(&third, "instance", "conflicts"), 1);
    assert_eq!(count(&third, "share", "updated"), 1);
    let embedder = app
        .instances()
        .get_instance(authed(
            pb::GetInstanceRequest {
                name: "users/alice/instances/embedder".into(),
            },
            alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(embedder.model, "text-embedding-3-large");
    assert_eq!(
        stored_key(&app, "alice", "embedder").await.unwrap(),
        source.provider_keys["embedder"],
        "the key stays"
    );
    assert_eq!(item(&third, "instances/9")["action"], "conflict");
}

#[tokio::test]
async fn a_wrong_source_key_imports_every_instance_without_its_key_and_the_right_one_fills_them_in()
{
    let fake = FakeProvider::start(Flavor::OpenAi, 8).await;
    let source = v4_source(&fake.endpoint()).await;
    let right = TestApp::spawn().await;
    let (output, with_right_key) = import(
        &right,
        &source.db.url(),
        Some(&source.encryption_key),
        Some(&[&source.older_key]),
        &[],
    )
    .await;
    succeeded(&output);
    let with_right_key = with_right_key.unwrap();

    let app = TestApp::spawn().await;
    let wrong = format!("not the key {}", random_api_key());
    let (output, report) = import(&app, &source.db.url(), Some(&wrong), None, &[]).await;
    succeeded(&output);
    let report = report.unwrap();
    // Nothing else is lost: the same objects are imported as with the right key.
    for kind in [
        "user",
        "api_standard",
        "definition",
        "instance",
        "share",
        "project",
    ] {
        assert_eq!(
            count(&report, kind, "imported"),
            count(&with_right_key, kind, "imported"),
            "{kind}"
        );
    }
    for handle in ["embedder", "spaced", "unicode", "hdr-inst"] {
        let found = report["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| {
                i["source"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!("/{handle})"))
            })
            .unwrap();
        assert!(
            reasons(found).contains("opens under none of the given dhamps-vdb keys"),
            "{found}"
        );
    }
    assert_eq!(stored_key(&app, "alice", "embedder").await, None);
    assert!(
        String::from_utf8_lossy(&output.stdout)
            .contains("opens under none of the given dhamps-vdb keys")
    );

    // Run again with the right keys: the keys are put in, nothing else changes.
    let (output, fixed) = import(
        &app,
        &source.db.url(),
        Some(&source.encryption_key),
        Some(&[&source.older_key]),
        &[],
    )
    .await;
    succeeded(&output);
    let fixed = fixed.unwrap();
    assert_eq!(count(&fixed, "instance", "updated"), 5, "{fixed:#}");
    assert_eq!(count(&fixed, "instance", "imported"), 0);
    assert_eq!(
        stored_key(&app, "alice", "embedder").await.unwrap(),
        source.provider_keys["embedder"]
    );
    assert_eq!(
        stored_key(&app, "alice", "old-key").await.unwrap(),
        source.provider_keys["Old.Key"]
    );
}

#[tokio::test]
async fn a_dry_run_writes_nothing_and_refusals_name_their_cause() {
    let fake = FakeProvider::start(Flavor::OpenAi, 8).await;
    let source = v4_source(&fake.endpoint()).await;
    let app = TestApp::spawn().await;
    // The first run of a fresh registry applies the migrations; measure after them.
    let rows_before = registry_rows(&app).await;
    let (output, report) = import(
        &app,
        &source.db.url(),
        Some(&source.encryption_key),
        None,
        &["--dry-run"],
    )
    .await;
    let stdout = succeeded(&output);
    let report = report.unwrap();
    assert_eq!(report["dry_run"], true);
    assert_eq!(count(&report, "instance", "imported"), 7);
    assert!(stdout.contains("dry run: nothing was written"));
    assert_eq!(
        registry_rows(&app).await,
        rows_before,
        "a dry run writes nothing"
    );

    // The key from a file instead of the environment: one trailing line break is not part of
    // it; a file that others may read is refused, naming it.
    let keys = temp_home();
    let key_file = keys.join("dhamps-key");
    write_private(&key_file, &format!("{}\n", source.encryption_key));
    let key_arg = key_file.to_str().unwrap().to_owned();
    let (output, from_file) = import(
        &app,
        &source.db.url(),
        None,
        None,
        &["--dry-run", "--source-encryption-key-file", &key_arg],
    )
    .await;
    succeeded(&output);
    let from_file = from_file.unwrap();
    assert_eq!(count(&from_file, "instance", "imported"), 7);
    // Only the instance sealed under the older key (not given here) stays without its key.
    let unopened: Vec<&Value> = from_file["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| reasons(item).contains("opens under none"))
        .collect();
    assert_eq!(unopened.len(), 1, "{unopened:#?}");
    assert!(
        unopened[0]["source"]
            .as_str()
            .unwrap()
            .ends_with("/Old.Key)")
    );
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let (output, _) = import(
        &app,
        &source.db.url(),
        None,
        None,
        &["--source-encryption-key-file", &key_arg],
    )
    .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("may be read by group or others") && stderr.contains(&key_arg),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&keys);

    // No key for a source that has encrypted keys.
    let (output, _) = import(&app, &source.db.url(), None, None, &[]).await;
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("DHAMPS_ENCRYPTION_KEY"),
        "{output:?}"
    );
    // An unknown time zone.
    let (output, _) = import(
        &app,
        &source.db.url(),
        Some(&source.encryption_key),
        None,
        &["--source-timezone", "Mars/Olympus"],
    )
    .await;
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("Mars/Olympus"),
        "{output:?}"
    );
    // An unreachable source.
    let (output, _) = import(
        &app,
        "postgres://postgres:hunter2secret@127.0.0.1:1/nothing",
        Some(&source.encryption_key),
        None,
        &[],
    )
    .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot reach the dhamps-vdb database at 127.0.0.1:1"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("hunter2secret"),
        "the password is not printed"
    );
    // An unknown schema version.
    exec(
        &mut source.db.connect().await,
        "UPDATE db_version SET version = 5",
        &[],
    )
    .await;
    let (output, _) = import(
        &app,
        &source.db.url(),
        Some(&source.encryption_key),
        None,
        &[],
    )
    .await;
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("schema version 5"),
        "{output:?}"
    );
    // A version 4 that lacks what version 4 has.
    exec(
        &mut source.db.connect().await,
        "UPDATE db_version SET version = 4",
        &[],
    )
    .await;
    exec(
        &mut source.db.connect().await,
        "ALTER TABLE instances DROP COLUMN api_key_encrypted",
        &[],
    )
    .await;
    let (output, _) = import(
        &app,
        &source.db.url(),
        Some(&source.encryption_key),
        None,
        &[],
    )
    .await;
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("lacks instances.api_key_encrypted"),
        "{output:?}"
    );
    assert_eq!(
        registry_rows(&app).await,
        rows_before,
        "refusals write nothing"
    );
}

#[tokio::test]
async fn a_dhamps_vdb_3_deployment_brings_its_plaintext_keys_owners_and_first_project_service() {
    let fake = FakeProvider::start(Flavor::OpenAi, 8).await;
    let db = SourceDb::create(V3_SCHEMA).await;
    let mut c = db.connect().await;
    let (ann_key, ann_digest) = user_key();
    let (ben_key, ben_digest) = user_key();
    let provider_key = random_api_key();
    exec(&mut c, "INSERT INTO users VALUES ('Ann', 'Ann', 'ann@example.org', $1, now(), now()), ('ben', 'Ben', 'ben@example.org', $2, now(), now())", &[&ann_digest, &ben_digest]).await;
    exec(&mut c, "INSERT INTO api_standards VALUES ('openai', 'OpenAI', 'auth_bearer', 'Authorization', now(), now())", &[]).await;
    exec(
        &mut c,
        "INSERT INTO llm_services (llm_service_handle, owner, endpoint, description, api_key, \
             api_standard, model, dimensions, created_at, updated_at) VALUES \
         ('Embed', 'Ann', $1, 'legacy', $2, 'openai', 'text-embedding-3-small', 8, now(), now()), \
         ('nokey', 'ben', $1, '', '', 'openai', 'text-embedding-3-small', 8, now(), now())",
        &[&fake.endpoint(), &format!(" {provider_key}\t")],
    )
    .await;
    exec(
        &mut c,
        "INSERT INTO users_llm_services VALUES ('Ann', 1, 'owner', now(), now()), \
             ('ben', 1, 'writer', now(), now()), ('ben', 2, 'owner', now(), now())",
        &[],
    )
    .await;
    exec(&mut c, "INSERT INTO projects (project_handle, owner, description, created_at, updated_at) VALUES ('p1', 'Ann', '', now(), now())", &[]).await;
    exec(
        &mut c,
        "INSERT INTO projects_llm_services VALUES (1, 1, '2025-01-01', now()), (1, 2, '2025-02-01', now())",
        &[],
    )
    .await;
    let app = TestApp::spawn_with(trust_fakes).await;
    // Schema 3 keeps keys in plaintext: no dhamps-vdb key is needed.
    let (output, report) = import(&app, &db.url(), None, None, &[]).await;
    let stdout = succeeded(&output);
    let report = report.unwrap();
    assert_eq!(report["schema_version"], 3);
    assert_eq!(count(&report, "user", "imported"), 2);
    assert_eq!(count(&report, "api_standard", "matched"), 1);
    assert_eq!(count(&report, "instance", "imported"), 2);
    // The owners' own rows are ownership: one share, ben's writer grant.
    assert_eq!(count(&report, "share", "imported"), 1);
    assert_eq!(count(&report, "project", "imported"), 1);
    assert_eq!(
        report["dropped"]["further LLM services of a project (schema 3)"],
        1
    );
    assert!(!stdout.contains(&provider_key) && !format!("{report}").contains(&provider_key));

    let response = app
        .embeddings()
        .embed(authed(
            pb::EmbedRequest {
                name: "users/ann/instances/embed".into(),
                inputs: texts(1),
                input_type: pb::EmbeddingInputType::Query as i32,
            },
            &ben_key,
        ))
        .await
        .expect("ben, a writer, embeds with ann's imported key");
    assert_eq!(response.into_inner().embeddings.len(), 1);
    assert_eq!(
        fake.recorded()[0].header("authorization").unwrap(),
        format!("Bearer {provider_key}")
    );
    assert_eq!(stored_key(&app, "ben", "nokey").await, None);
    let project = pb::project_service_client::ProjectServiceClient::new(app.channel.clone())
        .get_project(authed(
            pb::GetProjectRequest {
                name: "users/ann/projects/p1".into(),
            },
            &ann_key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        project.instance, "users/ann/instances/embed",
        "the first linked service is kept"
    );
}
