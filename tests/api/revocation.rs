//! The owner's right to revoke always wins (issue 14): a grantee's project cannot veto an
//! unshare, an instance delete or a user delete. With `force` each dependent project is detached
//! (binding cleared, reason and time recorded, audited), `GetProjectInstance` on it is
//! FAILED_PRECONDITION (INSTANCE_REVOKED), and its owner can bind it again.
//!
//! And a key is never moved: on an instance holding a key, changing its endpoint or API standard
//! needs the key in the same update (KEY_REBIND_REQUIRED), whoever the writer is.

use llm_registry::pb::v1::{
    self as pb, audit_service_client::AuditServiceClient,
    project_service_client::ProjectServiceClient, sharing_service_client::SharingServiceClient,
};
use prost_types::FieldMask;
use tonic::Code;

use crate::helpers::{
    TestApp, assert_code, authed, blockers, create_definition, create_instance_from,
    create_project, random_api_key, reason, share,
};

const SHARED: &str = "users/alice/instances/shared";
const BOBS_PROJECT: &str = "users/bob/projects/uses-shared";

/// alice owns `shared` (with a key) and shares it with bob as a reader; bob binds a project to it.
async fn veto_world() -> (TestApp, String, String) {
    let app = TestApp::spawn().await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    create_instance_from(
        &app,
        &alice,
        "alice",
        "shared",
        "_system/openai-small",
        pb::Instance {
            api_key: random_api_key(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    share(&app, &alice, SHARED, "bob", pb::Role::Reader)
        .await
        .unwrap();
    create_project(&app, &bob, "bob", "uses-shared", SHARED)
        .await
        .unwrap();
    (app, alice, bob)
}

async fn get_project(app: &TestApp, token: &str, name: &str) -> pb::Project {
    ProjectServiceClient::new(app.channel.clone())
        .get_project(authed(pb::GetProjectRequest { name: name.into() }, token))
        .await
        .unwrap()
        .into_inner()
}

/// Asserts that bob's project is detached (for `because`) and cannot be used until rebound.
async fn assert_detached(app: &TestApp, bob: &str, because: &str) {
    let project = get_project(app, bob, BOBS_PROJECT).await;
    assert_eq!(project.instance, "", "{project:?}");
    assert!(project.detach_reason.contains(because), "{project:?}");
    assert!(project.detach_time.is_some(), "{project:?}");
    let status = assert_code(
        ProjectServiceClient::new(app.channel.clone())
            .get_project_instance(authed(
                pb::GetProjectInstanceRequest {
                    name: BOBS_PROJECT.into(),
                },
                bob,
            ))
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&status), "INSTANCE_REVOKED");
    // Bob sees the detachment in his audit trail.
    let events = AuditServiceClient::new(app.channel.clone())
        .list_audit_events(authed(
            pb::ListAuditEventsRequest {
                resource: BOBS_PROJECT.into(),
                ..Default::default()
            },
            bob,
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(
        events
            .iter()
            .any(|e| e.outcome == "OK" && e.detail.starts_with("detached: ")),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_forced_unshare_detaches_the_grantees_project_which_can_be_bound_again() {
    let (app, alice, bob) = veto_world().await;
    let mut sharing = SharingServiceClient::new(app.channel.clone());
    let unshare = |force| pb::UnshareInstanceRequest {
        name: format!("{SHARED}/shares/bob"),
        force,
    };
    let status = assert_code(
        sharing
            .unshare_instance(authed(unshare(false), &alice))
            .await,
        Code::FailedPrecondition,
    );
    assert!(blockers(&status).is_empty());
    sharing
        .unshare_instance(authed(unshare(true), &alice))
        .await
        .expect("the owner's forced revocation wins");
    assert_detached(&app, &bob, "was revoked").await;

    // A description change leaves it detached; binding it again clears the detachment.
    let mut projects = ProjectServiceClient::new(app.channel.clone());
    let update = |project: pb::Project, path: &str| pb::UpdateProjectRequest {
        project: Some(project),
        update_mask: Some(FieldMask {
            paths: vec![path.into()],
        }),
    };
    let still = projects
        .update_project(authed(
            update(
                pb::Project {
                    name: BOBS_PROJECT.into(),
                    description: "waiting".into(),
                    ..Default::default()
                },
                "description",
            ),
            &bob,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(still.instance, "");
    assert!(still.detach_time.is_some());
    // The revoked instance cannot be bound again by the former grantee.
    assert_code(
        projects
            .update_project(authed(
                update(
                    pb::Project {
                        name: BOBS_PROJECT.into(),
                        instance: SHARED.into(),
                        ..Default::default()
                    },
                    "instance",
                ),
                &bob,
            ))
            .await,
        Code::NotFound,
    );
    create_instance_from(
        &app,
        &bob,
        "bob",
        "own",
        "_system/openai-small",
        pb::Instance::default(),
    )
    .await
    .unwrap();
    let rebound = projects
        .update_project(authed(
            update(
                pb::Project {
                    name: BOBS_PROJECT.into(),
                    instance: "own".into(),
                    ..Default::default()
                },
                "instance",
            ),
            &bob,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rebound.instance, "users/bob/instances/own");
    assert_eq!(rebound.detach_reason, "");
    assert!(rebound.detach_time.is_none());
    let instance = projects
        .get_project_instance(authed(
            pb::GetProjectInstanceRequest {
                name: BOBS_PROJECT.into(),
            },
            &bob,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(instance.name, "users/bob/instances/own");
}

#[tokio::test]
async fn a_forced_instance_delete_detaches_every_dependent_project() {
    let (app, alice, bob) = veto_world().await;
    create_project(&app, &alice, "alice", "own", "shared")
        .await
        .unwrap();
    let delete = |force| pb::DeleteInstanceRequest {
        name: SHARED.into(),
        etag: String::new(),
        force,
    };
    let status = assert_code(
        app.instances()
            .delete_instance(authed(delete(false), &alice))
            .await,
        Code::FailedPrecondition,
    );
    // Her own project is named, bob's only counted.
    assert_eq!(blockers(&status), ["users/alice/projects/own"]);
    assert!(status.message().contains("1 project(s) of other users"));
    assert!(!status.message().contains("uses-shared"));
    app.instances()
        .delete_instance(authed(delete(true), &alice))
        .await
        .expect("forced delete");
    assert_detached(&app, &bob, "users/alice/instances/shared was deleted").await;
    let own = get_project(&app, &alice, "users/alice/projects/own").await;
    assert_eq!(own.instance, "");
    assert!(own.detach_time.is_some());
}

#[tokio::test]
async fn a_forced_user_delete_detaches_other_users_projects() {
    let (app, _alice, bob) = veto_world().await;
    let delete = |force| pb::DeleteUserRequest {
        name: "users/alice".into(),
        etag: String::new(),
        force,
    };
    let status = assert_code(
        app.users()
            .delete_user(authed(delete(false), &app.admin_token))
            .await,
        Code::FailedPrecondition,
    );
    assert!(blockers(&status).is_empty());
    app.users()
        .delete_user(authed(delete(true), &app.admin_token))
        .await
        .expect("forced user delete");
    assert_detached(
        &app,
        &bob,
        "users/alice, who owned its instance, was deleted",
    )
    .await;
}

fn key_update(
    name: &str,
    instance: pb::Instance,
    paths: &[&str],
    etag: &str,
) -> pb::UpdateInstanceRequest {
    pb::UpdateInstanceRequest {
        instance: Some(pb::Instance {
            name: name.into(),
            etag: etag.into(),
            ..instance
        }),
        update_mask: Some(FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }),
    }
}

#[tokio::test]
async fn a_stored_key_is_never_moved_to_a_new_destination() {
    let app = TestApp::spawn().await;
    let alice = app.create_user("alice").await;
    let writer = app.create_user("writer").await;
    let coowner = app.create_user("coowner").await;
    create_definition(&app, &alice, "alice", "template")
        .await
        .unwrap();
    let keyed = "users/alice/instances/keyed";
    let created = create_instance_from(
        &app,
        &alice,
        "alice",
        "keyed",
        "template",
        pb::Instance {
            api_key: random_api_key(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    share(&app, &alice, keyed, "writer", pb::Role::Writer)
        .await
        .unwrap();
    share(&app, &alice, keyed, "coowner", pb::Role::Owner)
        .await
        .unwrap();
    let get = || async {
        app.instances()
            .get_instance(authed(
                pb::GetInstanceRequest { name: keyed.into() },
                &alice,
            ))
            .await
            .unwrap()
            .into_inner()
    };

    let moves = [
        (
            pb::Instance {
                endpoint: "https://attacker.example/v1/embeddings".into(),
                ..Default::default()
            },
            "endpoint",
        ),
        (
            // Same scheme and host, another path: still another destination.
            pb::Instance {
                endpoint: format!("{}-other", created.endpoint),
                ..Default::default()
            },
            "endpoint",
        ),
        (
            pb::Instance {
                api_standard: "gemini".into(),
                ..Default::default()
            },
            "api_standard",
        ),
    ];
    for token in [&writer, &coowner, &alice] {
        for (fields, path) in &moves {
            let before = get().await;
            let status = assert_code(
                app.instances()
                    .update_instance(authed(
                        key_update(keyed, fields.clone(), &[path], ""),
                        token,
                    ))
                    .await,
                Code::FailedPrecondition,
            );
            assert_eq!(reason(&status), "KEY_REBIND_REQUIRED", "{path}");
            let after = get().await;
            assert_eq!(after.etag, before.etag, "nothing changed");
            assert_eq!(after.endpoint, created.endpoint);
            assert_eq!(after.api_standard, created.api_standard);
        }
    }
    // Other fields change freely; with the key in the same update, the destination may change.
    for token in [&writer, &coowner, &alice] {
        app.instances()
            .update_instance(authed(
                key_update(
                    keyed,
                    pb::Instance {
                        description: "still here".into(),
                        ..Default::default()
                    },
                    &["description"],
                    "",
                ),
                token,
            ))
            .await
            .unwrap();
        let moved = app
            .instances()
            .update_instance(authed(
                key_update(
                    keyed,
                    pb::Instance {
                        endpoint: "https://api.example.org/v1/embeddings".into(),
                        api_key: random_api_key(),
                        ..Default::default()
                    },
                    &["endpoint", "api_key"],
                    "",
                ),
                token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(moved.endpoint, "https://api.example.org/v1/embeddings");
        // Back, with a key again, for the next writer.
        app.instances()
            .update_instance(authed(
                key_update(
                    keyed,
                    pb::Instance {
                        endpoint: created.endpoint.clone(),
                        api_key: random_api_key(),
                        ..Default::default()
                    },
                    &["endpoint", "api_key"],
                    "",
                ),
                token,
            ))
            .await
            .unwrap();
    }

    // The instance keeps its own copy of the endpoint: a change of the definition it was made
    // from never moves its key.
    app.definitions()
        .update_definition(authed(
            pb::UpdateDefinitionRequest {
                definition: Some(pb::Definition {
                    name: "users/alice/definitions/template".into(),
                    endpoint: "https://elsewhere.example/v1/embeddings".into(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["endpoint".into()],
                }),
            },
            &alice,
        ))
        .await
        .unwrap();
    assert_eq!(get().await.endpoint, created.endpoint);

    // An instance without a key may be pointed anywhere by its writers.
    create_instance_from(
        &app,
        &alice,
        "alice",
        "keyless",
        "template",
        pb::Instance::default(),
    )
    .await
    .unwrap();
    app.instances()
        .update_instance(authed(
            key_update(
                "users/alice/instances/keyless",
                pb::Instance {
                    endpoint: "https://api.example.org/v1/embeddings".into(),
                    ..Default::default()
                },
                &["endpoint"],
                "",
            ),
            &alice,
        ))
        .await
        .expect("no key, nothing to move");
}
