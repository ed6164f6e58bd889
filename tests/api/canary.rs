//! The canary: instances hold random API keys; every read method is called as the owner, the
//! admin, and users holding reader, writer and co-owner shares (the writer replaces a key, the
//! reader may not); the raw bytes of every response and error, the server's log at
//! its most verbose level, and every column of every table are searched for the keys, which
//! appear in none of them, while the stored ciphertext decrypts (through the vault) to each key.

use std::str::FromStr;

use base64::{Engine, engine::general_purpose::STANDARD};
use llm_registry::{
    IssuedToken, is_read_only_method,
    pb::{FILE_DESCRIPTOR_SET, v1 as pb},
    vault::{KeyRing, MasterKey, Sealed},
};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, Value};
use sqlx::Connection;
use tonic::{Status, client::Grpc, transport::Channel};
use tonic_types::StatusExt;

use crate::{
    binary::{bare_command, start_server, temp_home, terminate},
    helpers::{
        acting, authed, create_database, create_user_on, database_url, drop_database_blocking,
        random_api_key, unique_name, wait_until_serving,
    },
    raw::RawCodec,
};

/// Calls `path` with raw request bytes; returns the raw response bytes, or the error's message
/// and encoded details.
pub async fn call_raw(
    channel: &Channel,
    path: &str,
    request: Vec<u8>,
    token: &str,
) -> Result<Vec<u8>, Vec<u8>> {
    call_raw_with(channel, path, authed(request, token)).await
}

/// [`call_raw`] as a service account acting for `user`.
pub async fn call_raw_as(
    channel: &Channel,
    path: &str,
    request: Vec<u8>,
    token: &str,
    user: &str,
) -> Result<Vec<u8>, Vec<u8>> {
    call_raw_with(channel, path, acting(request, token, user)).await
}

async fn call_raw_with(
    channel: &Channel,
    path: &str,
    request: tonic::Request<Vec<u8>>,
) -> Result<Vec<u8>, Vec<u8>> {
    let mut grpc = Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let result = grpc
        .unary(
            request,
            http::uri::PathAndQuery::from_str(path).unwrap(),
            RawCodec,
        )
        .await;
    match result {
        Ok(response) => Ok(response.into_inner()),
        Err(status) => Err(status_bytes(&status)),
    }
}

fn status_bytes(status: &Status) -> Vec<u8> {
    let mut bytes = status.message().as_bytes().to_vec();
    bytes.extend_from_slice(status.details());
    bytes.extend_from_slice(format!("{:?}", status.get_error_details()).as_bytes());
    bytes
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// Asserts that `needle` (a secret, in some encoding) is in no response, log line or row.
#[track_caller]
pub fn assert_nowhere(needle: &str, responses: &[Vec<u8>], log_lines: &[String], rows: &[String]) {
    for response in responses {
        assert!(
            !contains(response, needle.as_bytes()),
            "a secret leaked into a response"
        );
    }
    for line in log_lines {
        assert!(
            !line.contains(needle),
            "a secret leaked into the log: {line}"
        );
    }
    for row in rows {
        assert!(!row.contains(needle), "a secret is in the database: {row}");
    }
}

/// Every row of every table of the database, as JSON text (bytea columns as hex).
pub async fn every_row(db: &mut sqlx::PgConnection) -> Vec<String> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
    )
    .fetch_all(&mut *db)
    .await
    .unwrap();
    let mut rows = Vec::new();
    for table in &tables {
        let dump: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT row_to_json(t)::text FROM \"{table}\" t"
        )))
        .fetch_all(&mut *db)
        .await
        .unwrap();
        rows.extend(dump);
    }
    rows
}

#[tokio::test]
async fn api_keys_appear_in_no_response_log_line_or_plaintext_column() {
    let database = unique_name("llmr_test");
    create_database(&database).await;
    let admin_token = IssuedToken::generate().reveal().to_owned();
    let master = MasterKey::generate();
    let ring = KeyRing::new(master.clone(), vec![]).unwrap();
    let home = temp_home();
    let mut command = bare_command(&home);
    command
        .env("LLM_REGISTRY_MODE", "production")
        .env("DATABASE_URL", database_url(&database))
        .env("ADMIN_TOKEN", &admin_token)
        .env("ENCRYPTION_KEY", master.to_base64().as_str())
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("TLS_TERMINATED_UPSTREAM", "true")
        .env("RUST_LOG", "trace");
    let (child, addr, mut log) = start_server(command).await;
    let channel = wait_until_serving(addr).await;

    let create_user = |handle: &'static str| create_user_on(&channel, &admin_token, handle);
    let alice = create_user("alice").await;
    let bob = create_user("bob").await;

    // Keys enter through every write path: create from a definition, create standalone, replace.
    let mut keys = Vec::new();
    let mut responses: Vec<Vec<u8>> = Vec::new();
    let mut instance_names = Vec::new();
    for i in 0..3 {
        let key = random_api_key();
        let request = pb::CreateInstanceFromDefinitionRequest {
            parent: "users/alice".into(),
            instance_id: format!("from-def-{i}"),
            source_definition: "_system/openai-small".into(),
            instance: Some(pb::Instance {
                api_key: key.clone(),
                ..Default::default()
            }),
        };
        let path = "/llmregistry.v1.LlmInstanceService/CreateInstanceFromDefinition";
        responses.push(
            call_raw(&channel, path, request.encode_to_vec(), &alice)
                .await
                .unwrap(),
        );
        instance_names.push(format!("users/alice/instances/from-def-{i}"));
        keys.push(key);
    }
    let key = random_api_key();
    let request = pb::CreateInstanceRequest {
        parent: "users/alice".into(),
        instance_id: "standalone".into(),
        instance: Some(pb::Instance {
            endpoint: "https://llm.example.com/v1".into(),
            api_standard: "gemini".into(),
            model: "m".into(),
            api_key: key.clone(),
            ..Default::default()
        }),
    };
    let path = "/llmregistry.v1.LlmInstanceService/CreateInstance";
    responses.push(
        call_raw(&channel, path, request.encode_to_vec(), &alice)
            .await
            .unwrap(),
    );
    instance_names.push("users/alice/instances/standalone".into());
    keys.push(key);
    let replacement = random_api_key();
    let request = pb::UpdateInstanceRequest {
        instance: Some(pb::Instance {
            name: "users/alice/instances/standalone".into(),
            api_key: replacement.clone(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["api_key".into()],
        }),
    };
    let path = "/llmregistry.v1.LlmInstanceService/UpdateInstance";
    responses.push(
        call_raw(&channel, path, request.encode_to_vec(), &alice)
            .await
            .unwrap(),
    );
    keys.push(replacement.clone());
    // A malformed key is refused without being echoed.
    let malformed = format!("{} x", random_api_key());
    let request = pb::UpdateInstanceRequest {
        instance: Some(pb::Instance {
            name: "users/alice/instances/standalone".into(),
            api_key: malformed.clone(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["api_key".into()],
        }),
    };
    responses.push(
        call_raw(&channel, path, request.encode_to_vec(), &alice)
            .await
            .unwrap_err(),
    );
    keys.push(malformed);

    // Bob reads, Carol writes and Dave co-owns from-def-0 through shares.
    let carol = create_user("carol").await;
    let dave = create_user("dave").await;
    for (grantee, role) in [
        ("bob", pb::Role::Reader),
        ("carol", pb::Role::Writer),
        ("dave", pb::Role::Owner),
    ] {
        let request = pb::ShareInstanceRequest {
            name: "users/alice/instances/from-def-0".into(),
            grantee: format!("users/{grantee}"),
            role: role as i32,
            quota: None,
        };
        let path = "/llmregistry.v1.SharingService/ShareInstance";
        responses.push(
            call_raw(&channel, path, request.encode_to_vec(), &alice)
                .await
                .unwrap(),
        );
    }
    // The writer replaces the key (and the answer does not carry it); the reader may not.
    let replace = |key: &str| {
        pb::UpdateInstanceRequest {
            instance: Some(pb::Instance {
                name: "users/alice/instances/from-def-0".into(),
                api_key: key.to_owned(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["api_key".into()],
            }),
        }
        .encode_to_vec()
    };
    let writers_key = random_api_key();
    let path = "/llmregistry.v1.LlmInstanceService/UpdateInstance";
    let answer = call_raw(&channel, path, replace(&writers_key), &carol)
        .await
        .unwrap();
    assert!(pb::Instance::decode(answer.as_slice()).unwrap().has_api_key);
    responses.push(answer);
    let readers_key = random_api_key();
    let refused = call_raw(&channel, path, replace(&readers_key), &bob)
        .await
        .unwrap_err();
    responses.push(refused);
    keys.push(writers_key.clone());
    keys.push(readers_key.clone());
    let mut db = sqlx::PgConnection::connect(&database_url(&database))
        .await
        .unwrap();

    // Every read method of the contract, as every kind of caller, with every plausible target.
    let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).unwrap();
    let mut names: Vec<String> = instance_names.clone();
    names.extend(
        [
            "users/alice",
            "users/bob",
            "users/_system/definitions/openai-small",
            "apiStandards/openai",
        ]
        .map(String::from),
    );
    let parents = [
        "users/alice",
        "users/bob",
        "users/_system",
        "users/alice/instances/from-def-0",
    ];
    let mut read_calls = 0;
    for service in pool.services() {
        for method in service.methods().filter(|m| is_read_only_method(m.name())) {
            let path = format!("/{}/{}", service.full_name(), method.name());
            let input = method.input();
            let mut requests = Vec::new();
            if input.get_field_by_name("name").is_some() {
                for name in &names {
                    let mut m = DynamicMessage::new(input.clone());
                    m.set_field_by_name("name", Value::String(name.clone()));
                    requests.push(m);
                }
            } else {
                let targets: Vec<Option<&str>> = if input.get_field_by_name("parent").is_some() {
                    parents.iter().map(|p| Some(*p)).collect()
                } else {
                    vec![None]
                };
                for parent in targets {
                    for scope in 0..3 {
                        let mut m = DynamicMessage::new(input.clone());
                        if let Some(parent) = parent {
                            m.set_field_by_name("parent", Value::String(parent.to_owned()));
                        }
                        if input.get_field_by_name("scope").is_some() {
                            m.set_field_by_name("scope", Value::EnumNumber(scope));
                        } else if scope > 0 {
                            continue;
                        }
                        m.set_field_by_name("page_size", Value::I32(1000));
                        requests.push(m);
                    }
                }
            }
            for request in requests {
                for token in [&alice, &bob, &carol, &dave, &admin_token] {
                    let bytes =
                        match call_raw(&channel, &path, request.encode_to_vec(), token).await {
                            Ok(bytes) | Err(bytes) => bytes,
                        };
                    responses.push(bytes);
                    read_calls += 1;
                }
            }
        }
    }
    assert!(read_calls > 100, "only {read_calls} read calls");
    // The owner, the admin and the reader really did see the instances (the search is not vacuous).
    let seen: Vec<&Vec<u8>> = responses
        .iter()
        .filter(|r| contains(r, b"from-def-0"))
        .collect();
    assert!(seen.len() > 10);

    terminate(child).await;
    let mut log_lines = Vec::new();
    while let Ok(line) = log.try_recv() {
        log_lines.push(line);
    }
    assert!(
        log_lines
            .iter()
            .any(|l| l.contains("TRACE") || l.contains("DEBUG")),
        "the log ran at its most verbose"
    );
    assert!(
        log_lines.iter().any(|l| l.contains("UpdateInstance")),
        "the log saw the key writes"
    );

    // The database: every column of every table, as text (bytea columns as hex).
    let rows = every_row(&mut db).await;
    assert!(rows.len() > 10);

    for key in &keys {
        let encodings = [
            key.clone(),
            STANDARD.encode(key),
            key.as_bytes().iter().map(|b| format!("{b:02x}")).collect(),
        ];
        for needle in &encodings {
            assert_nowhere(needle, &responses, &log_lines, &rows);
        }
    }

    // What is stored is ciphertext that decrypts, through the vault, to the right keys.
    let stored: Vec<(String, String, String, Vec<u8>)> = sqlx::query_as(
        "SELECT handle, uid::text, api_key_key_id, api_key_ciphertext FROM instances ORDER BY handle",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    // from-def-0 holds the writer's key; the reader's attempt changed nothing.
    let expected = [&writers_key, &keys[1], &keys[2], &replacement];
    assert_eq!(stored.len(), 4);
    for ((handle, uid, key_id, ciphertext), key) in stored.into_iter().zip(expected) {
        assert_eq!(key_id, ring.primary_id(), "{handle}");
        let opened = ring.open(&Sealed { key_id, ciphertext }, &uid).unwrap();
        assert_eq!(opened.expose(), key.as_str(), "{handle}");
    }

    drop(db);
    drop_database_blocking(database);
    let _ = std::fs::remove_dir_all(&home);
}
