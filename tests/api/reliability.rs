//! Reliability in one process: overload is shed, oversized requests refused, races resolve to
//! exactly one winner, and a database outage fails fast and heals by itself with no lost write.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::future::join_all;
use llm_registry::pb::v1::{
    self as pb, project_service_client::ProjectServiceClient,
    sharing_service_client::SharingServiceClient,
};
use prost_types::FieldMask;
use tokio::sync::Mutex;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    db_proxy::Proxy,
    helpers::{
        TestApp, assert_code, authed, create_definition, create_instance_from, create_project,
        database_url, share,
    },
};

fn update_model(name: &str, model: &str, etag: &str) -> pb::UpdateDefinitionRequest {
    pb::UpdateDefinitionRequest {
        definition: Some(pb::Definition {
            name: name.into(),
            model: model.into(),
            etag: etag.into(),
            ..Default::default()
        }),
        update_mask: Some(FieldMask {
            paths: vec!["model".into()],
        }),
    }
}

#[tokio::test]
async fn overload_is_shed_at_once_and_admitted_calls_complete() {
    let app = TestApp::spawn_with(|s| {
        s.max_concurrent_requests = 2;
        s.max_queued_requests = 2;
        // One caller on one connection may use every slot here: this test is about the totals
        // (the fair shares have their own test in `flood`).
        s.edge.max_share_per_connection_percent = 100;
        s.edge.max_share_per_caller_percent = 100;
    })
    .await;
    let alice = app.create_user("alice").await;
    let created = create_definition(&app, &alice, "alice", "busy")
        .await
        .unwrap();
    // Hold the row, so that admitted updates stay in flight.
    let mut db = app.db().await;
    let mut tx = sqlx::Connection::begin(&mut db).await.unwrap();
    sqlx::query("SELECT 1 FROM definitions WHERE handle = 'busy' FOR UPDATE")
        .execute(&mut *tx)
        .await
        .unwrap();

    let started = Instant::now();
    let calls: Vec<_> = (0..12)
        .map(|i| {
            let mut client = app.definitions();
            let request = authed(update_model(&created.name, &format!("m{i}"), ""), &alice);
            tokio::spawn(
                async move { (client.update_definition(request).await, started.elapsed()) },
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Probes still answer while the service is saturated.
    let health = HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(health.into_inner().status, 1);
    tx.rollback().await.unwrap();

    let mut ok = 0;
    let mut shed = 0;
    for call in calls {
        let (result, elapsed) = call.await.unwrap();
        match result {
            Ok(_) => ok += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(
                    elapsed < Duration::from_millis(400),
                    "shed calls answer at once ({elapsed:?})"
                );
                shed += 1;
            }
        }
    }
    println!(
        "overload: 12 calls against 2 running + 2 queued: {ok} served, {shed} shed ({:.0}%)",
        shed as f64 * 100.0 / 12.0
    );
    assert_eq!((ok, shed), (4, 8));
}

#[tokio::test]
async fn oversized_requests_are_resource_exhausted() {
    let app = TestApp::spawn().await;
    let alice = app.create_user("alice").await;
    let huge = "x".repeat(2 * 1024 * 1024);
    let write = app
        .definitions()
        .create_definition(authed(
            pb::CreateDefinitionRequest {
                parent: "users/alice".into(),
                definition_id: "big".into(),
                definition: Some(pb::Definition {
                    description: huge.clone(),
                    ..Default::default()
                }),
            },
            &alice,
        ))
        .await;
    assert_code(write, Code::ResourceExhausted);
    let read = app
        .definitions()
        .get_definition(authed(pb::GetDefinitionRequest { name: huge }, &alice))
        .await;
    assert_code(read, Code::ResourceExhausted);
}

#[tokio::test]
async fn races_have_exactly_one_winner_and_leave_nothing_dangling() {
    let app = TestApp::spawn().await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;

    // 64 concurrent creates of one handle.
    let creates =
        join_all((0..64).map(|_| create_definition(&app, &alice, "alice", "contended"))).await;
    let won = creates.iter().filter(|r| r.is_ok()).count();
    let lost = creates
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == Code::AlreadyExists))
        .count();
    assert_eq!((won, lost), (1, 63));

    // 16 concurrent updates with the same etag: one wins, the rest are ABORTED, none is lost.
    let current = creates.into_iter().find_map(Result::ok).unwrap();
    let updates = join_all((0..16).map(|i| {
        let mut client = app.definitions();
        let request = authed(
            update_model(&current.name, &format!("writer-{i}"), &current.etag),
            &alice,
        );
        async move { client.update_definition(request).await }
    }))
    .await;
    let winners: Vec<String> = updates
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|r| r.get_ref().model.clone())
        .collect();
    assert_eq!(winners.len(), 1);
    assert!(
        updates
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|s| s.code() == Code::Aborted)
    );
    let stored = app
        .definitions()
        .get_definition(authed(
            pb::GetDefinitionRequest {
                name: current.name.clone(),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        stored.model, winners[0],
        "the acknowledged update is the stored one"
    );

    // Share, unshare, bind and delete racing on one instance, many times over.
    let instance = "users/alice/instances/raced";
    for round in 0..20 {
        let _ = create_instance_from(
            &app,
            &alice,
            "alice",
            "raced",
            "_system/openai-small",
            pb::Instance {
                api_key: format!("sk-{round}"),
                ..Default::default()
            },
        )
        .await;
        let mut sharing = SharingServiceClient::new(app.channel.clone());
        let mut projects = ProjectServiceClient::new(app.channel.clone());
        let mut instances = app.instances();
        let (alice2, bob2) = (alice.clone(), bob.clone());
        let project = format!("p{round}");
        let _ = tokio::join!(
            share(&app, &alice, instance, "bob", pb::Role::Reader),
            create_project(&app, &bob, "bob", &project, instance),
            sharing.unshare_instance(authed(
                pb::UnshareInstanceRequest {
                    name: format!("{instance}/shares/bob"),
                    // Every other round the revocations are forced: they detach instead of
                    // waiting for the grantee, and must still never strand a binding.
                    force: round % 2 == 0,
                },
                &alice2
            )),
            instances.delete_instance(authed(
                pb::DeleteInstanceRequest {
                    name: instance.into(),
                    etag: String::new(),
                    force: round % 2 == 0,
                },
                &alice
            )),
            projects.delete_project(authed(
                pb::DeleteProjectRequest {
                    name: format!("users/bob/projects/p{}", round.max(1) - 1),
                    etag: String::new()
                },
                &bob2
            )),
        );
    }
    let mut db = app.db().await;
    let unusable: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM projects p JOIN instances i ON i.id = p.instance_id \
         WHERE i.owner_id <> p.owner_id \
           AND NOT EXISTS (SELECT 1 FROM shares s WHERE s.instance_id = i.id AND s.grantee_id = p.owner_id)",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(
        unusable, 0,
        "no project is bound to an instance its owner cannot use"
    );
    let dangling_keys: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM instances WHERE (api_key_ciphertext IS NULL) <> (api_key_key_id IS NULL)",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(dangling_keys, 0);
}

#[tokio::test]
async fn a_database_outage_fails_fast_and_heals_without_losing_acknowledged_writes() {
    let (app, proxy) = Proxy::spawn_behind(|_| {}).await;
    let alice = app.create_user("alice").await;

    // Steady load: a create every 20 ms, remembering what was acknowledged.
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let failures = Arc::new(Mutex::new(Vec::<(Code, Duration)>::new()));
    let running = Arc::new(AtomicBool::new(true));
    let load = {
        let (acknowledged, failures, running) =
            (acknowledged.clone(), failures.clone(), running.clone());
        let mut client = app.definitions();
        let alice = alice.clone();
        tokio::spawn(async move {
            let mut i = 0;
            while running.load(Ordering::SeqCst) {
                i += 1;
                let handle = format!("load-{i}");
                let mut request = authed(
                    pb::CreateDefinitionRequest {
                        parent: "users/alice".into(),
                        definition_id: handle.clone(),
                        definition: Some(pb::Definition {
                            endpoint: "https://llm.example.com/v1".into(),
                            api_standard: "openai".into(),
                            model: "m".into(),
                            ..Default::default()
                        }),
                    },
                    &alice,
                );
                request.set_timeout(Duration::from_secs(10));
                let started = Instant::now();
                match client.create_definition(request).await {
                    Ok(_) => acknowledged.lock().await.push(handle),
                    Err(status) => failures
                        .lock()
                        .await
                        .push((status.code(), started.elapsed())),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = acknowledged.lock().await.len();
    proxy.cut().await;
    let mut health = HealthClient::new(app.channel.clone());
    let mut went_down = false;
    for _ in 0..50 {
        if health
            .check(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner()
            .status
            == 2
        {
            went_down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(went_down, "health turns NOT_SERVING during the outage");
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();
    let restored = Instant::now();
    let mut recovered = None;
    for _ in 0..200 {
        let serving = health
            .check(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner()
            .status
            == 1;
        if serving && acknowledged.lock().await.len() > before {
            recovered = Some(restored.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered = recovered.expect("the service recovers by itself");
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.store(false, Ordering::SeqCst);
    load.await.unwrap();

    let failures = failures.lock().await.clone();
    assert!(!failures.is_empty(), "the outage was felt");
    for (code, elapsed) in &failures {
        assert_eq!(
            *code,
            Code::Unavailable,
            "failures during the outage are UNAVAILABLE"
        );
        assert!(*elapsed < Duration::from_secs(4), "and fast ({elapsed:?})");
    }
    let slowest = failures.iter().map(|(_, e)| *e).max().unwrap_or_default();
    println!(
        "outage: {} calls refused (slowest {slowest:?}); recovered {recovered:?} after the database came back",
        failures.len()
    );
    assert!(recovered < Duration::from_secs(5));

    // Every acknowledged write is there.
    let acknowledged = acknowledged.lock().await.clone();
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&database_url(&app.database))
        .await
        .unwrap();
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT handle FROM definitions WHERE handle LIKE 'load-%'")
            .fetch_all(&mut db)
            .await
            .unwrap();
    for handle in &acknowledged {
        assert!(stored.contains(handle), "acknowledged {handle} is missing");
    }
    assert!(
        acknowledged.len() > before,
        "writes were acknowledged after the outage too"
    );
}
