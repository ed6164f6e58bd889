//! Reflection (v1 and v1alpha) lists every service; health reports SERVING overall and per
//! service, NOT_SERVING when the database goes away and on shutdown.

use std::collections::BTreeSet;

use tokio_stream::StreamExt;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::helpers::{TestApp, authed};

const OUR_SERVICES: [&str; 7] = [
    "llmregistry.v1.ApiStandardService",
    "llmregistry.v1.AuditService",
    "llmregistry.v1.LlmDefinitionService",
    "llmregistry.v1.LlmInstanceService",
    "llmregistry.v1.ProjectService",
    "llmregistry.v1.SharingService",
    "llmregistry.v1.UserService",
];

/// The services v1 reflection lists.
async fn listed_services(app: &TestApp) -> Vec<String> {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(app.channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(Ok(response)) = responses.next().await else {
        panic!("no reflection answer")
    };
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer")
    };
    list.service.into_iter().map(|s| s.name).collect()
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_all_services_and_health() {
    let app = TestApp::spawn().await;
    let expected: BTreeSet<String> = OUR_SERVICES
        .iter()
        .map(|s| s.to_string())
        .chain([
            "grpc.health.v1.Health".to_owned(),
            "grpc.reflection.v1.ServerReflection".to_owned(),
        ])
        .collect();

    {
        let names: BTreeSet<String> = listed_services(&app).await.into_iter().collect();
        assert!(
            names.is_superset(&expected),
            "v1 reflection lists {names:?}"
        );
    }
    {
        use tonic_reflection::pb::v1alpha::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "llmregistry.v1.LlmDefinitionService".to_owned(),
            )),
        };
        let mut responses = ServerReflectionClient::new(app.channel.clone())
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let Some(Ok(response)) = responses.next().await else {
            panic!("no v1alpha answer")
        };
        let Some(MessageResponse::FileDescriptorResponse(files)) = response.message_response else {
            panic!("unexpected v1alpha answer")
        };
        assert!(!files.file_descriptor_proto.is_empty());
    }
}

#[tokio::test]
async fn health_is_serving_per_service_and_not_serving_on_outage_and_shutdown() {
    let mut app = TestApp::spawn().await;
    let mut health = HealthClient::new(app.channel.clone());
    for service in std::iter::once("").chain(OUR_SERVICES) {
        let status = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, 1, "{service} should be SERVING");
    }

    // Cut the database away: terminate the service's connections and refuse new ones.
    let mut admin = sqlx::PgConnection::connect(&crate::helpers::server_url())
        .await
        .unwrap();
    let db = app.database.clone();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{db}\" WITH ALLOW_CONNECTIONS false"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&db)
        .execute(&mut admin)
        .await
        .unwrap();
    let mut saw_not_serving = false;
    for _ in 0..100 {
        let status = health
            .check(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner()
            .status;
        if status == 2 {
            saw_not_serving = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        saw_not_serving,
        "health should turn NOT_SERVING while the database is away"
    );
    // A request now is UNAVAILABLE, not INTERNAL.
    let result = app
        .definitions()
        .list_definitions(authed(
            llm_registry::pb::v1::ListDefinitionsRequest {
                parent: "users/_system".to_owned(),
                ..Default::default()
            },
            &app.admin_token,
        ))
        .await;
    assert_eq!(result.unwrap_err().code(), tonic::Code::Unavailable);

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{db}\" WITH ALLOW_CONNECTIONS true"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    let mut serving_again = false;
    for _ in 0..100 {
        if health
            .check(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner()
            .status
            == 1
        {
            serving_again = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        serving_again,
        "health should return to SERVING once the database answers"
    );

    // Shutdown: a watcher sees NOT_SERVING before the server goes away.
    let mut watch = health
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.next().await.unwrap().unwrap().status, 1);
    let stopping = tokio::spawn(async move {
        app.stop().await;
    });
    let next = watch.next().await;
    assert!(
        matches!(next, Some(Ok(ref r)) if r.status == 2),
        "watch saw {next:?}"
    );
    stopping.await.unwrap();
}

use sqlx::Connection;

#[tokio::test]
async fn shutdown_lets_in_flight_calls_finish() {
    let mut app = TestApp::spawn().await;
    let alice = app.create_user("alice").await;
    let created = crate::helpers::create_definition(&app, &alice, "alice", "slow")
        .await
        .unwrap();

    // Hold the row lock, so that an update is in flight (waiting) when shutdown begins.
    let mut db = app.db().await;
    let mut tx = sqlx::Connection::begin(&mut db).await.unwrap();
    sqlx::query("SELECT 1 FROM definitions WHERE handle = 'slow' FOR UPDATE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let mut client = app.definitions();
    let mut change = created.clone();
    change.model = "finished-during-drain".to_owned();
    let in_flight = tokio::spawn(async move {
        client
            .update_definition(authed(
                llm_registry::pb::v1::UpdateDefinitionRequest {
                    definition: Some(change),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["model".to_owned()],
                    }),
                },
                &alice,
            ))
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let stopping = tokio::spawn(async move {
        app.stop().await;
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    tx.rollback().await.unwrap();
    let answer = in_flight
        .await
        .unwrap()
        .expect("the in-flight call completes during the drain");
    assert_eq!(answer.into_inner().model, "finished-during-drain");
    stopping.await.unwrap();
}

#[tokio::test]
async fn health_reports_serving_for_every_service_reflection_lists() {
    let app = TestApp::spawn().await;
    let listed = listed_services(&app).await;
    // The two the hand-kept health list once missed are among them.
    for service in [
        "llmregistry.v1.ServiceAccountService",
        "llmregistry.v1.CredentialService",
        "llmregistry.v1.EmbeddingService",
    ] {
        assert!(listed.iter().any(|s| s == service), "{service} is listed");
    }
    let mut health = HealthClient::new(app.channel.clone());
    for service in &listed {
        let status = health
            .check(HealthCheckRequest {
                service: service.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("{service}: {e:?}"))
            .into_inner()
            .status;
        assert_eq!(status, 1, "{service} should be SERVING");
    }
}

/// google.rpc's error details are resolvable through reflection, for the clients that look a
/// detail's type up there.
#[tokio::test]
async fn reflection_knows_the_error_detail_types() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let app = TestApp::spawn().await;
    for symbol in [
        "google.rpc.ErrorInfo",
        "google.rpc.RetryInfo",
        "google.rpc.BadRequest",
    ] {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(symbol.to_owned())),
        };
        let mut responses = ServerReflectionClient::new(app.channel.clone())
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let Some(Ok(response)) = responses.next().await else {
            panic!("no reflection answer")
        };
        let Some(MessageResponse::FileDescriptorResponse(files)) = response.message_response else {
            panic!(
                "{symbol} is not known to reflection: {:?}",
                response.message_response
            )
        };
        assert!(!files.file_descriptor_proto.is_empty(), "{symbol}");
    }
}
