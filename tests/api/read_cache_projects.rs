//! The read cache in front of GetProjectInstance: a project's answer comes from memory while
//! nothing it depends on moves (the caller's row, the project's binding, the bound instance with
//! its shares, the API standards), and no replica ever answers one from a stale cache, also
//! while other calls keep refilling that cache concurrently.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use llm_registry::pb::v1::{self as pb, project_service_client::ProjectServiceClient};
use prost_types::FieldMask;
use tonic::{Code, Status};

use crate::helpers::{
    TestApp, authed, change_behind_the_cache, create_project, get_instance, random_api_key, reason,
    set_description, share,
};

const PROJECT: &str = "users/bob/projects/p";

async fn project_instance(app: &TestApp, token: &str) -> Result<pb::Instance, Status> {
    ProjectServiceClient::new(app.channel.clone())
        .get_project_instance(authed(
            pb::GetProjectInstanceRequest {
                name: PROJECT.into(),
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// alice's instances `i1` and `i2`, both shared with bob as a reader, and bob's project `p`
/// bound to `i1`.
async fn bob_uses_alices_instance(app: &TestApp, alice: &str, bob: &str) {
    for id in ["i1", "i2"] {
        app.instances()
            .create_instance(authed(
                pb::CreateInstanceRequest {
                    parent: "users/alice".into(),
                    instance_id: id.into(),
                    instance: Some(pb::Instance {
                        endpoint: "https://llm.example.com/v1".into(),
                        api_standard: "openai".into(),
                        model: "m".into(),
                        api_key: random_api_key(),
                        ..Default::default()
                    }),
                },
                alice,
            ))
            .await
            .expect("alice creates an instance");
        share(
            app,
            alice,
            &format!("users/alice/instances/{id}"),
            "bob",
            pb::Role::Reader,
        )
        .await
        .expect("alice shares it with bob");
    }
    create_project(app, bob, "bob", "p", "alice/i1")
        .await
        .expect("bob binds p to alice/i1");
}

async fn bind(app: &TestApp, bob: &str, instance: &str) {
    ProjectServiceClient::new(app.channel.clone())
        .update_project(authed(
            pb::UpdateProjectRequest {
                project: Some(pb::Project {
                    name: PROJECT.into(),
                    instance: instance.into(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["instance".into()],
                }),
            },
            bob,
        ))
        .await
        .expect("bob rebinds p");
}

#[tokio::test]
async fn project_answers_come_from_memory_until_their_scope_moves() {
    let app = TestApp::spawn().await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    bob_uses_alices_instance(&app, &alice, &bob).await;
    let before = project_instance(&app, &bob).await.unwrap();
    assert_eq!(before.name, "users/alice/instances/i1");

    // Change the rows behind the service's back with triggers off, so no scope moves: only a
    // cache can still answer the old description and the old binding.
    change_behind_the_cache(
        &app,
        &[
            "UPDATE instances SET description = 'changed behind the cache'",
            "UPDATE projects SET instance_id = (SELECT id FROM instances WHERE handle = 'i2') \
             WHERE handle = 'p'",
        ],
    )
    .await;
    let cached = project_instance(&app, &bob).await.unwrap();
    assert_eq!(cached, before, "served from the cache");

    // The bound instance's scope moves: the answer depended on it, so the next call reads the
    // database, and finds the new binding with the new description.
    change_behind_the_cache(
        &app,
        &[
            "SELECT bump_read_cache_scope(read_cache_scope(3, id)) FROM instances \
           WHERE handle = 'i1'",
        ],
    )
    .await;
    let reread = project_instance(&app, &bob).await.unwrap();
    assert_eq!(reread.name, "users/alice/instances/i2");
    assert_eq!(reread.description, "changed behind the cache");

    // Rebound behind the cache again: now only the project's own scope tells.
    change_behind_the_cache(
        &app,
        &[
            "UPDATE projects SET instance_id = (SELECT id FROM instances WHERE handle = 'i1') \
           WHERE handle = 'p'",
        ],
    )
    .await;
    assert_eq!(
        project_instance(&app, &bob).await.unwrap().name,
        "users/alice/instances/i2",
        "served from the cache"
    );
    change_behind_the_cache(
        &app,
        &["SELECT bump_read_cache_scope(read_cache_scope(4, id)) FROM projects"],
    )
    .await;
    assert_eq!(
        project_instance(&app, &bob).await.unwrap().name,
        "users/alice/instances/i1"
    );

    // An instance of bob's named like his project: the two questions name the same owner and
    // handle, and their cached answers are kept apart.
    app.instances()
        .create_instance(authed(
            pb::CreateInstanceRequest {
                parent: "users/bob".into(),
                instance_id: "p".into(),
                instance: Some(pb::Instance {
                    endpoint: "https://llm.example.com/v1".into(),
                    api_standard: "openai".into(),
                    model: "m".into(),
                    ..Default::default()
                }),
            },
            &bob,
        ))
        .await
        .expect("bob creates his own p");
    for _ in 0..2 {
        assert_eq!(
            get_instance(&app, &bob, "users/bob/instances/p")
                .await
                .unwrap()
                .name,
            "users/bob/instances/p"
        );
        assert_eq!(
            project_instance(&app, &bob).await.unwrap().name,
            "users/alice/instances/i1"
        );
    }
}

#[tokio::test]
async fn no_replica_answers_a_project_from_a_stale_cache() {
    let a = TestApp::spawn().await;
    let b = a.replica().await;
    let alice = a.create_user("alice").await;
    let bob = a.create_user("bob").await;
    bob_uses_alices_instance(&a, &alice, &bob).await;

    // Readers keep refilling b's cache with answers from older snapshots while the changes
    // below commit through a.
    let stop = Arc::new(AtomicBool::new(false));
    let refillers: Vec<_> = (0..4)
        .map(|_| {
            let (b, bob, stop) = (b.channel.clone(), bob.clone(), stop.clone());
            tokio::spawn(async move {
                let mut client = ProjectServiceClient::new(b);
                while !stop.load(Ordering::Relaxed) {
                    let _ = client
                        .get_project_instance(authed(
                            pb::GetProjectInstanceRequest {
                                name: PROJECT.into(),
                            },
                            &bob,
                        ))
                        .await;
                }
            })
        })
        .collect();

    // The bound instance changes: b shows each change at once.
    for round in 0..20 {
        set_description(
            &a,
            &alice,
            "users/alice/instances/i1",
            &format!("round {round}"),
        )
        .await;
        let seen = project_instance(&b, &bob).await.unwrap();
        assert_eq!(seen.description, format!("round {round}"), "round {round}");
    }

    // The project is rebound, back and forth: b follows each binding at once.
    for round in 0..10 {
        let target = if round % 2 == 0 { "i2" } else { "i1" };
        bind(&a, &bob, &format!("alice/{target}")).await;
        assert_eq!(
            project_instance(&b, &bob).await.unwrap().name,
            format!("users/alice/instances/{target}"),
            "rebinding {round}"
        );
    }
    assert_eq!(
        project_instance(&b, &bob).await.unwrap().name,
        "users/alice/instances/i1"
    );

    // The share behind the binding is revoked with force: the project is detached, at once on b.
    pb::sharing_service_client::SharingServiceClient::new(a.channel.clone())
        .unshare_instance(authed(
            pb::UnshareInstanceRequest {
                name: "users/alice/instances/i1/shares/bob".into(),
                force: true,
            },
            &alice,
        ))
        .await
        .expect("alice revokes bob's share");
    let detached = project_instance(&b, &bob).await.unwrap_err();
    assert_eq!(detached.code(), Code::FailedPrecondition);
    assert_eq!(reason(&detached), "INSTANCE_REVOKED");

    // Bound again to the instance still shared; then bob's token is rotated through a: the old
    // one dies on b at once.
    bind(&a, &bob, "alice/i2").await;
    project_instance(&b, &bob).await.unwrap();
    let rotated = a.rotate_token("bob", &bob).await;
    assert_eq!(
        project_instance(&b, &bob).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        project_instance(&b, &rotated).await.unwrap().name,
        "users/alice/instances/i2"
    );

    // The project deleted through a is gone at once on b.
    ProjectServiceClient::new(a.channel.clone())
        .delete_project(authed(
            pb::DeleteProjectRequest {
                name: PROJECT.into(),
                etag: String::new(),
            },
            &rotated,
        ))
        .await
        .expect("bob deletes p");
    assert_eq!(
        project_instance(&b, &rotated).await.unwrap_err().code(),
        Code::NotFound
    );

    stop.store(true, Ordering::Relaxed);
    for refiller in refillers {
        refiller.await.unwrap();
    }
}
