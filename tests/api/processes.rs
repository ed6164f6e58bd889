//! Reliability across processes: two replicas of the binary on one database, and SIGTERM under
//! load.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use llm_registry::{
    IssuedToken,
    pb::v1::{
        self as pb, llm_definition_service_client::LlmDefinitionServiceClient,
        llm_instance_service_client::LlmInstanceServiceClient,
        user_service_client::UserServiceClient,
    },
    vault::MasterKey,
};
use tokio::process::Command;
use tokio_stream::StreamExt;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    binary::{bare_command, start_server, temp_home},
    helpers::{
        authed, create_database, create_user_on, database_url, drop_database_blocking, unique_name,
        wait_until_serving,
    },
};

fn replica(home: &std::path::Path, database: &str, admin_token: &str, key: &MasterKey) -> Command {
    let mut command = bare_command(home);
    command
        .env("LLM_REGISTRY_MODE", "production")
        .env("DATABASE_URL", database_url(database))
        .env("ADMIN_TOKEN", admin_token)
        .env("ENCRYPTION_KEY", key.to_base64().as_str())
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("TLS_TERMINATED_UPSTREAM", "true")
        .env("SHUTDOWN_GRACE_SECS", "5");
    command
}

fn definition(id: &str) -> pb::CreateDefinitionRequest {
    pb::CreateDefinitionRequest {
        parent: "users/alice".into(),
        definition_id: id.into(),
        definition: Some(pb::Definition {
            endpoint: "https://llm.example.com/v1".into(),
            api_standard: "openai".into(),
            model: "m".into(),
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn two_replicas_share_one_database_without_stale_state() {
    let database = unique_name("llmr_test");
    create_database(&database).await;
    let home = temp_home();
    let admin = IssuedToken::generate().reveal().to_owned();
    let key = MasterKey::generate();
    // Both start at once on a database that has not been migrated yet.
    let ((a, addr_a, _), (b, addr_b, _)) = tokio::join!(
        start_server(replica(&home, &database, &admin, &key)),
        start_server(replica(&home, &database, &admin, &key)),
    );
    let (channel_a, channel_b) = (
        wait_until_serving(addr_a).await,
        wait_until_serving(addr_b).await,
    );

    let token = create_user_on(&channel_a, &admin, "alice").await;
    // A write through A is read through B at once, and page tokens of A work on B.
    LlmDefinitionServiceClient::new(channel_a.clone())
        .create_definition(authed(definition("d1"), &token))
        .await
        .unwrap();
    LlmDefinitionServiceClient::new(channel_a.clone())
        .create_definition(authed(definition("d2"), &token))
        .await
        .unwrap();
    let first = LlmDefinitionServiceClient::new(channel_a.clone())
        .list_definitions(authed(
            pb::ListDefinitionsRequest {
                parent: "users/alice".into(),
                page_size: 1,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let second = LlmDefinitionServiceClient::new(channel_b.clone())
        .list_definitions(authed(
            pb::ListDefinitionsRequest {
                parent: "users/alice".into(),
                page_size: 1,
                page_token: first.next_page_token,
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.definitions[0].name, "users/alice/definitions/d2");

    // A token rotated through A stops working on B at once.
    let rotated = UserServiceClient::new(channel_a.clone())
        .rotate_user_token(authed(
            pb::RotateUserTokenRequest {
                name: "users/alice".into(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let old = LlmDefinitionServiceClient::new(channel_b.clone())
        .list_definitions(authed(
            pb::ListDefinitionsRequest {
                parent: "users/alice".into(),
                ..Default::default()
            },
            &token,
        ))
        .await;
    assert_eq!(old.unwrap_err().code(), Code::Unauthenticated);
    // GetInstance resolves the token in its own query; the same holds there.
    assert_eq!(
        get_missing_instance(&channel_b, &token).await,
        Code::Unauthenticated
    );
    assert_eq!(
        get_missing_instance(&channel_b, &rotated.token).await,
        Code::NotFound
    );
    LlmDefinitionServiceClient::new(channel_b.clone())
        .list_definitions(authed(
            pb::ListDefinitionsRequest {
                parent: "users/alice".into(),
                ..Default::default()
            },
            &rotated.token,
        ))
        .await
        .expect("the new token works on the other replica");
    // And a deleted user's token dies on both.
    UserServiceClient::new(channel_b.clone())
        .delete_user(authed(
            pb::DeleteUserRequest {
                name: "users/alice".into(),
                etag: String::new(),
                force: false,
            },
            &admin,
        ))
        .await
        .unwrap();
    let gone = LlmDefinitionServiceClient::new(channel_a.clone())
        .list_definitions(authed(
            pb::ListDefinitionsRequest {
                parent: "users/alice".into(),
                ..Default::default()
            },
            &rotated.token,
        ))
        .await;
    assert_eq!(gone.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(
        get_missing_instance(&channel_a, &rotated.token).await,
        Code::Unauthenticated
    );

    crate::binary::terminate(a).await;
    crate::binary::terminate(b).await;
    drop_database_blocking(database);
    let _ = std::fs::remove_dir_all(&home);
}

/// The code of a GetInstance for one of alice's missing instances: it tells a live token
/// (NOT_FOUND) from a dead one (UNAUTHENTICATED) on the path that resolves tokens in its query.
async fn get_missing_instance(channel: &Channel, token: &str) -> Code {
    LlmInstanceServiceClient::new(channel.clone())
        .get_instance(authed(
            pb::GetInstanceRequest {
                name: "users/alice/instances/missing".into(),
            },
            token,
        ))
        .await
        .expect_err("alice has no such instance")
        .code()
}

#[tokio::test]
async fn sigterm_under_load_drains_and_exits_cleanly() {
    let database = unique_name("llmr_test");
    create_database(&database).await;
    let home = temp_home();
    let admin = IssuedToken::generate().reveal().to_owned();
    let key = MasterKey::generate();
    let (mut child, addr, _) = start_server(replica(&home, &database, &admin, &key)).await;
    let channel: Channel = wait_until_serving(addr).await;
    let token = create_user_on(&channel, &admin, "alice").await;

    // Load: 8 streams of creates on their own connections.
    let running = Arc::new(AtomicBool::new(true));
    let (succeeded, refused, broken) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut streams = Vec::new();
    for stream in 0..8 {
        let (running, succeeded, refused, broken) = (
            running.clone(),
            succeeded.clone(),
            refused.clone(),
            broken.clone(),
        );
        let token = token.clone();
        streams.push(tokio::spawn(async move {
            let Ok(channel) = Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
            else {
                return;
            };
            let mut client = LlmDefinitionServiceClient::new(channel);
            let mut i = 0;
            while running.load(Ordering::SeqCst) {
                i += 1;
                match client
                    .create_definition(authed(definition(&format!("s{stream}-{i}")), &token))
                    .await
                {
                    Ok(_) => succeeded.fetch_add(1, Ordering::SeqCst),
                    Err(status) if matches!(status.code(), Code::Unavailable | Code::Cancelled) => {
                        refused.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        0
                    }
                    Err(status) => {
                        eprintln!("unexpected during shutdown: {status:?}");
                        broken.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.next().await.unwrap().unwrap().status, 1);

    let pid = child.id().unwrap().to_string();
    let sent = Instant::now();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    let next = watch.next().await;
    assert!(
        matches!(next, Some(Ok(ref r)) if r.status == 2),
        "health goes NOT_SERVING first: {next:?}"
    );
    let exit = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits in bounded time")
        .unwrap();
    let took = sent.elapsed();
    assert!(exit.success(), "{exit:?}");
    running.store(false, Ordering::SeqCst);
    for stream in streams {
        stream.await.unwrap();
    }
    // New calls are refused once it is gone.
    let after = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await;
    assert!(after.is_err(), "the port no longer accepts calls");
    println!(
        "shutdown under load: exited 0 in {took:?}; {} calls served, {} refused while stopping",
        succeeded.load(Ordering::SeqCst),
        refused.load(Ordering::SeqCst)
    );
    assert_eq!(
        broken.load(Ordering::SeqCst),
        0,
        "no call failed other than by a clean refusal"
    );
    assert!(succeeded.load(Ordering::SeqCst) > 0);
    drop_database_blocking(database);
    let _ = std::fs::remove_dir_all(&home);
}
