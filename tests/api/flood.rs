//! Hostile load at the edge (issue 14): header-only streams from raw HTTP/2 clients hold nothing
//! that a legitimate caller needs (nothing is held before authentication, no admission slot
//! before the body arrives, and a late body is refused); one caller gets a bounded share of the
//! slots; and the audit trail of refused calls is aimed at the real target, bounded, and
//! rate-limited per caller.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use llm_registry::pb::v1::{self as pb, audit_service_client::AuditServiceClient};
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::helpers::{
    TestApp, assert_code, audit_events, authed, create_definition, create_instance_from,
};

fn instance_fields() -> pb::Instance {
    pb::Instance {
        endpoint: "https://api.openai.com/v1/embeddings".into(),
        api_standard: "openai".into(),
        model: "text-embedding-3-small".into(),
        ..Default::default()
    }
}

/// Opens `count` streams on one fresh HTTP/2 connection that send headers and never a body;
/// answers, per stream, the gRPC status of its answer (when it comes) and when it came.
async fn header_only_streams(
    app: &TestApp,
    count: usize,
    path: &'static str,
    token: Option<String>,
) -> tokio::task::JoinHandle<Vec<(Option<String>, Duration)>> {
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let addr = app.addr;
    tokio::spawn(async move {
        let started = Instant::now();
        let mut open = Vec::new();
        for _ in 0..count {
            let mut client = client.clone().ready().await.unwrap();
            let mut request = http::Request::builder()
                .method("POST")
                .uri(format!("http://{addr}{path}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers");
            if let Some(token) = &token {
                request = request.header("authorization", format!("Bearer {token}"));
            }
            let (response, body) = client
                .send_request(request.body(()).unwrap(), false)
                .unwrap();
            open.push((response, body));
        }
        join_all(open.into_iter().map(|(response, body)| async move {
            // The send half stays open (no body, no end of stream) until the answer comes.
            let answer = response.await;
            drop(body);
            let status = answer.ok().and_then(|response| {
                response
                    .headers()
                    .get("grpc-status")
                    .map(|v| v.to_str().unwrap_or_default().to_owned())
            });
            (status, started.elapsed())
        }))
        .await
    })
}

#[tokio::test]
async fn header_only_floods_do_not_stop_a_legitimate_caller() {
    let app = TestApp::spawn_with(|s| {
        s.max_concurrent_requests = 4;
        s.max_queued_requests = 8;
        s.edge.request_body_timeout = Duration::from_millis(1500);
    })
    .await;
    let alice = app.create_user("alice").await;
    let mallory = app.create_user("mallory").await;
    create_instance_from(
        &app,
        &alice,
        "alice",
        "served",
        "_system/openai-small",
        pb::Instance::default(),
    )
    .await
    .unwrap();

    const GET: &str = "/llmregistry.v1.LlmInstanceService/GetInstance";
    const CREATE: &str = "/llmregistry.v1.LlmInstanceService/CreateInstance";
    // 4 connections x 90 streams: a made-up token, no token, and a valid token on a read and a
    // write method; far more than the 4 running and 8 queued slots.
    let floods = vec![
        header_only_streams(&app, 90, GET, Some("llmr_made-up-token".into())).await,
        header_only_streams(&app, 90, CREATE, None).await,
        header_only_streams(&app, 90, GET, Some(mallory.clone())).await,
        header_only_streams(&app, 90, CREATE, Some(mallory.clone())).await,
    ];
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A legitimate caller on its own connection is served at once, reads and writes.
    let started = Instant::now();
    app.instances()
        .get_instance(authed(
            pb::GetInstanceRequest {
                name: "users/alice/instances/served".into(),
            },
            &alice,
        ))
        .await
        .expect("a read during the flood");
    app.instances()
        .create_instance(authed(
            pb::CreateInstanceRequest {
                parent: "users/alice".into(),
                instance_id: "during-flood".into(),
                instance: Some(instance_fields()),
            },
            &alice,
        ))
        .await
        .expect("a write during the flood");
    let served_in = started.elapsed();
    assert!(
        served_in < Duration::from_secs(1),
        "served in {served_in:?}"
    );
    // Health stays truthful: the database answers, so SERVING.
    let health = HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(health.into_inner().status, 1);

    let mut answers = Vec::new();
    for flood in floods {
        answers.push(flood.await.unwrap());
    }
    // Made-up and missing tokens are refused at once, before anything waits for their body.
    for stream in answers[0].iter().chain(&answers[1]) {
        assert_eq!(
            stream.0.as_deref(),
            Some("16"),
            "UNAUTHENTICATED: {stream:?}"
        );
        assert!(stream.1 < Duration::from_millis(1500), "{stream:?}");
    }
    // A known caller whose body never comes is refused when the body deadline passes.
    for stream in answers[2].iter().chain(&answers[3]) {
        assert_eq!(
            stream.0.as_deref(),
            Some("4"),
            "DEADLINE_EXCEEDED: {stream:?}"
        );
        assert!(stream.1 >= Duration::from_millis(1400), "{stream:?}");
        assert!(stream.1 < Duration::from_secs(10), "{stream:?}");
    }
}

#[tokio::test]
async fn one_caller_gets_a_bounded_share_of_the_slots() {
    let app = TestApp::spawn_with(|s| {
        s.max_concurrent_requests = 2;
        s.max_queued_requests = 2;
        s.edge.max_share_per_caller_percent = 50;
        s.edge.max_share_per_connection_percent = 100;
    })
    .await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    let created = create_definition(&app, &alice, "alice", "busy")
        .await
        .unwrap();
    create_definition(&app, &bob, "bob", "own").await.unwrap();
    // Hold the row, so that alice's admitted updates stay in flight.
    let mut db = app.db().await;
    let mut tx = sqlx::Connection::begin(&mut db).await.unwrap();
    sqlx::query("SELECT 1 FROM definitions WHERE handle = 'busy' FOR UPDATE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let update = |name: &str, model: String| pb::UpdateDefinitionRequest {
        definition: Some(pb::Definition {
            name: name.into(),
            model,
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["model".into()],
        }),
    };
    let alices: Vec<_> = (0..6)
        .map(|i| {
            let mut client = app.definitions();
            let request = authed(update(&created.name, format!("m{i}")), &alice);
            tokio::spawn(async move { client.update_definition(request).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Alice holds her share (2 of the 4 slots); bob still gets in.
    let mut bobs_client = app.definitions();
    let bobs = tokio::spawn(async move {
        bobs_client
            .get_definition(authed(
                pb::GetDefinitionRequest {
                    name: "users/bob/definitions/own".into(),
                },
                &bob,
            ))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.rollback().await.unwrap();
    bobs.await
        .unwrap()
        .expect("bob is admitted beside alice's flood");
    let mut ok = 0;
    let mut shed = 0;
    for call in alices {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                shed += 1;
            }
        }
    }
    assert_eq!(
        (ok, shed),
        (2, 4),
        "alice holds at most half of 2 running + 2 queued"
    );
}

#[tokio::test]
async fn refused_calls_are_audited_against_their_real_target_bounded() {
    let app = TestApp::spawn().await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    let carol = app.create_user("carol").await;

    // A decoy in the output-only name does not decide where the refusal is recorded.
    assert_code(
        app.instances()
            .create_instance(authed(
                pb::CreateInstanceRequest {
                    parent: "users/bob".into(),
                    instance_id: "intrusion".into(),
                    instance: Some(pb::Instance {
                        name: "users/carol/instances/decoy".into(),
                        ..instance_fields()
                    }),
                },
                &alice,
            ))
            .await,
        Code::PermissionDenied,
    );
    let bobs = audit_events(&app, &bob, "users/bob/instances/intrusion").await;
    assert_eq!(bobs.len(), 1, "{bobs:?}");
    assert_eq!(bobs[0].caller, "users/alice");
    assert!(
        audit_events(&app, &carol, "users/carol/instances")
            .await
            .is_empty()
    );
    assert!(
        audit_events(&app, &app.admin_token, "users/carol/instances/decoy")
            .await
            .is_empty()
    );

    // An oversized target is recorded, cut to a bounded length, against its real owner.
    let long_id = "x".repeat(4000);
    assert_code(
        app.instances()
            .create_instance(authed(
                pb::CreateInstanceRequest {
                    parent: "users/bob".into(),
                    instance_id: long_id,
                    instance: Some(pb::Instance {
                        name: format!("users/carol/instances/{}", "y".repeat(4000)),
                        ..instance_fields()
                    }),
                },
                &alice,
            ))
            .await,
        Code::PermissionDenied,
    );
    let bobs = audit_events(&app, &bob, "users/bob/instances").await;
    let cut: Vec<_> = bobs.iter().filter(|e| e.resource.ends_with('…')).collect();
    assert_eq!(cut.len(), 1, "{bobs:?}");
    assert!(cut[0].resource.starts_with("users/bob/instances/xxx"));
    assert!(cut[0].resource.chars().count() <= 257);
    assert!(
        audit_events(&app, &carol, "users/carol/instances")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn a_flood_of_refusals_is_recorded_up_to_a_limit_then_counted() {
    let app = TestApp::spawn_with(|s| {
        s.edge.refusals_per_window = 5;
        s.edge.refusal_window = Duration::from_secs(2);
    })
    .await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    let request = |i: usize| pb::CreateInstanceRequest {
        parent: "users/bob".into(),
        instance_id: format!("flood-{i}"),
        instance: Some(instance_fields()),
    };
    for i in 0..40 {
        assert_code(
            app.instances()
                .create_instance(authed(request(i), &alice))
                .await,
            Code::PermissionDenied,
        );
    }
    let recorded = audit_events(&app, &bob, "users/bob/instances").await;
    assert_eq!(recorded.len(), 5, "{recorded:?}");
    // The window ends; the summary of the rest appears without any further call.
    let deadline = Instant::now() + Duration::from_secs(15);
    let summary = loop {
        let all = AuditServiceClient::new(app.channel.clone())
            .list_audit_events(authed(
                pb::ListAuditEventsRequest {
                    caller: "users/alice".into(),
                    page_size: 1000,
                    ..Default::default()
                },
                &app.admin_token,
            ))
            .await
            .unwrap()
            .into_inner()
            .events;
        if let Some(summary) = all.into_iter().find(|e| e.outcome == "RATE_LIMITED") {
            break summary;
        }
        assert!(Instant::now() < deadline, "no summary row");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        summary
            .detail
            .starts_with("35 further refusal(s) of users/alice"),
        "{summary:?}"
    );
}

#[tokio::test]
async fn one_caller_runs_at_most_its_share_of_what_can_run() {
    // 4 slots run, 8 wait; one caller may hold half of the 12, but only half of the 4 running.
    let app = TestApp::spawn_with(|s| {
        s.max_concurrent_requests = 4;
        s.max_queued_requests = 8;
        s.edge.max_share_per_caller_percent = 50;
        s.edge.max_share_per_connection_percent = 100;
    })
    .await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    let created = create_definition(&app, &alice, "alice", "busy")
        .await
        .unwrap();
    create_definition(&app, &bob, "bob", "own").await.unwrap();
    // Hold the row, so that alice's admitted updates stay in flight.
    let mut db = app.db().await;
    let mut tx = sqlx::Connection::begin(&mut db).await.unwrap();
    sqlx::query("SELECT 1 FROM definitions WHERE handle = 'busy' FOR UPDATE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let alices: Vec<_> = (0..6)
        .map(|i| {
            let mut client = app.definitions();
            let request = authed(
                pb::UpdateDefinitionRequest {
                    definition: Some(pb::Definition {
                        name: created.name.clone(),
                        model: format!("m{i}"),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["model".into()],
                    }),
                },
                &alice,
            );
            tokio::spawn(async move { client.update_definition(request).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Alice's 6 are admitted, but only 2 run (stuck on the row); bob runs at once beside them,
    // instead of queueing behind 4 of hers.
    let started = Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(2),
        app.definitions().get_definition(authed(
            pb::GetDefinitionRequest {
                name: "users/bob/definitions/own".into(),
            },
            &bob,
        )),
    )
    .await;
    let waited = started.elapsed();
    tx.rollback().await.unwrap();
    answer
        .expect("bob is not queued behind alice's running calls")
        .unwrap();
    assert!(waited < Duration::from_secs(1), "bob waited {waited:?}");
    for call in alices {
        call.await
            .unwrap()
            .expect("alice's calls all land once the row is free");
    }
}
