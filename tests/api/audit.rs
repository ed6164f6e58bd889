//! The audit trail: committed mutations always leave one event (in their own transaction),
//! refused ones are recorded as refused, rolled-back ones leave no success; admins read it all,
//! owners read their own resources' events; it never holds a secret.

use std::time::Duration;

use llm_registry::pb::v1::{self as pb, audit_service_client::AuditServiceClient};
use prost_types::FieldMask;
use tonic::Code;

use crate::helpers::{
    TestApp, assert_code, authed, create_definition, create_instance_from, create_project,
    random_api_key, share,
};

async fn events(app: &TestApp, token: &str, resource: &str, caller: &str) -> Vec<pb::AuditEvent> {
    let mut client = AuditServiceClient::new(app.channel.clone());
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_audit_events(authed(
                pb::ListAuditEventsRequest {
                    page_size: 7,
                    page_token: page_token.clone(),
                    resource: resource.into(),
                    caller: caller.into(),
                    ..Default::default()
                },
                token,
            ))
            .await
            .unwrap()
            .into_inner();
        all.extend(page.events);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}

fn summary(events: &[pb::AuditEvent]) -> Vec<(String, String, String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e.caller.clone(),
                e.method.clone(),
                e.resource.clone(),
                e.outcome.clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn every_mutation_leaves_one_event_and_refusals_are_recorded() {
    let app = TestApp::spawn().await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    let key = random_api_key();
    create_definition(&app, &alice, "alice", "def")
        .await
        .unwrap();
    create_instance_from(
        &app,
        &alice,
        "alice",
        "inst",
        "def",
        pb::Instance {
            api_key: key.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    app.instances()
        .update_instance(authed(
            pb::UpdateInstanceRequest {
                instance: Some(pb::Instance {
                    name: "users/alice/instances/inst".into(),
                    api_key: random_api_key(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["api_key".into()],
                }),
            },
            &alice,
        ))
        .await
        .unwrap();
    share(
        &app,
        &alice,
        "users/alice/instances/inst",
        "bob",
        pb::Role::Reader,
    )
    .await
    .unwrap();
    create_project(&app, &bob, "bob", "proj", "alice/inst")
        .await
        .unwrap();
    // Refusals: a _system write (the guard), a duplicate (the store), a reader's write (policy).
    assert_code(
        create_definition(&app, &alice, "_system", "x").await,
        Code::PermissionDenied,
    );
    assert_code(
        create_definition(&app, &alice, "alice", "def").await,
        Code::AlreadyExists,
    );
    let readers_write = app
        .instances()
        .update_instance(authed(
            pb::UpdateInstanceRequest {
                instance: Some(pb::Instance {
                    name: "users/alice/instances/inst".into(),
                    description: "x".into(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["description".into()],
                }),
            },
            &bob,
        ))
        .await;
    assert_code(readers_write, Code::PermissionDenied);

    let all = events(&app, &app.admin_token, "", "").await;
    let mut got = summary(&all);
    got.reverse(); // oldest first
    let expected: Vec<(String, String, String, String)> = [
        ("admin", "UserService/CreateUser", "users/alice", "OK"),
        ("admin", "UserService/CreateUser", "users/bob", "OK"),
        (
            "users/alice",
            "LlmDefinitionService/CreateDefinition",
            "users/alice/definitions/def",
            "OK",
        ),
        (
            "users/alice",
            "LlmInstanceService/CreateInstanceFromDefinition",
            "users/alice/instances/inst",
            "OK",
        ),
        (
            "users/alice",
            "LlmInstanceService/UpdateInstance",
            "users/alice/instances/inst",
            "OK",
        ),
        (
            "users/alice",
            "SharingService/ShareInstance",
            "users/alice/instances/inst/shares/bob",
            "OK",
        ),
        (
            "users/bob",
            "ProjectService/CreateProject",
            "users/bob/projects/proj",
            "OK",
        ),
        (
            "users/alice",
            "LlmDefinitionService/CreateDefinition",
            "users/_system/definitions/x",
            "PERMISSION_DENIED",
        ),
        (
            "users/alice",
            "LlmDefinitionService/CreateDefinition",
            "users/alice/definitions/def",
            "ALREADY_EXISTS",
        ),
        (
            "users/bob",
            "LlmInstanceService/UpdateInstance",
            "users/alice/instances/inst",
            "PERMISSION_DENIED",
        ),
    ]
    .iter()
    .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
    .collect();
    assert_eq!(got, expected);
    let details: Vec<&str> = all.iter().map(|e| e.detail.as_str()).collect();
    assert!(details.contains(&"api_key replaced"));
    assert!(details.contains(&"created; api_key set"));
    assert!(all.iter().all(|e| !format!("{e:?}").contains(&key)));

    // Filters: by resource (and everything under it) and by caller.
    let about_inst =
        summary(&events(&app, &app.admin_token, "users/alice/instances/inst", "").await);
    assert_eq!(about_inst.len(), 4, "{about_inst:?}");
    let by_bob = summary(&events(&app, &app.admin_token, "", "users/bob").await);
    assert_eq!(by_bob.len(), 2);
    // Owners read their own resources' events, and nothing else.
    let alices = events(&app, &alice, "", "").await;
    assert!(
        alices.iter().all(|e| e.resource.starts_with("users/alice")),
        "{:?}",
        summary(&alices)
    );
    assert_eq!(
        alices.len(),
        7,
        "her user, definition, instance (create, update), share and two refusals"
    );
    let bobs_view_of_alice = events(&app, &bob, "users/alice", "").await;
    assert!(bobs_view_of_alice.is_empty());
}

#[tokio::test]
async fn a_rolled_back_change_leaves_no_event() {
    let app = TestApp::spawn().await;
    let alice = app.create_user("alice").await;
    let created = create_definition(&app, &alice, "alice", "locked")
        .await
        .unwrap();

    // Hold the row, so that the update is still inside its transaction when its deadline passes.
    let mut db = app.db().await;
    let mut tx = sqlx::Connection::begin(&mut db).await.unwrap();
    sqlx::query("SELECT 1 FROM definitions WHERE handle = 'locked' FOR UPDATE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let mut request = authed(
        pb::UpdateDefinitionRequest {
            definition: Some(pb::Definition {
                name: created.name.clone(),
                model: "never".into(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["model".into()],
            }),
        },
        &alice,
    );
    request.set_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let result = app.definitions().update_definition(request).await;
    // tonic reports a server-side deadline expiry as CANCELLED; either way the call ended early.
    let code = result.unwrap_err().code();
    assert!(
        matches!(code, Code::DeadlineExceeded | Code::Cancelled),
        "{code:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the deadline was honoured"
    );
    // The server counts the deadline from when the call reached it, which under load can be later
    // than the client's start: hold the lock well past it before letting the update proceed.
    tokio::time::sleep(Duration::from_millis(700)).await;
    tx.rollback().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The server stopped the work: nothing changed, and no success was recorded.
    let current = app
        .definitions()
        .get_definition(authed(
            pb::GetDefinitionRequest {
                name: created.name.clone(),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(current.model, created.model);
    let recorded = events(&app, &app.admin_token, &created.name, "").await;
    assert!(
        recorded
            .iter()
            .all(|e| e.method != "LlmDefinitionService/UpdateDefinition" || e.outcome != "OK"),
        "{:?}",
        summary(&recorded)
    );
    // A committed change always leaves exactly one.
    app.definitions()
        .update_definition(authed(
            pb::UpdateDefinitionRequest {
                definition: Some(pb::Definition {
                    name: created.name.clone(),
                    model: "now".into(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["model".into()],
                }),
            },
            &alice,
        ))
        .await
        .unwrap();
    let recorded = events(&app, &app.admin_token, &created.name, "").await;
    let successes = recorded
        .iter()
        .filter(|e| e.method == "LlmDefinitionService/UpdateDefinition" && e.outcome == "OK")
        .count();
    assert_eq!(successes, 1);
}
