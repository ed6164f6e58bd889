//! ProjectService and the delete guards: one project, one usable instance; deletes that would
//! strand a project are refused, naming the projects, and succeed once they are gone.

use llm_registry::pb::v1::{
    self as pb, project_service_client::ProjectServiceClient,
    sharing_service_client::SharingServiceClient,
};
use prost_types::FieldMask;
use tonic::Code;

use crate::helpers::{
    TestApp, assert_code, assert_invalid_field, authed, blockers, create_instance_from,
    create_project, random_api_key, share,
};

#[tokio::test]
async fn projects_bind_to_one_usable_instance() {
    let app = TestApp::spawn().await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    let mut projects = ProjectServiceClient::new(app.channel.clone());
    let key = random_api_key();
    create_instance_from(
        &app,
        &alice,
        "alice",
        "mine",
        "_system/openai-small",
        pb::Instance {
            api_key: key.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    create_instance_from(
        &app,
        &bob,
        "bob",
        "bobs",
        "_system/cohere-v4",
        pb::Instance::default(),
    )
    .await
    .unwrap();

    // Bare handle, owner/handle and full name all resolve; responses carry the full name.
    for (id, reference) in [
        ("p1", "mine"),
        ("p2", "alice/mine"),
        ("p3", "users/alice/instances/mine"),
    ] {
        let project = create_project(&app, &alice, "alice", id, reference)
            .await
            .unwrap();
        assert_eq!(project.instance, "users/alice/instances/mine");
        assert_eq!(project.name, format!("users/alice/projects/{id}"));
    }
    // An instance the owner cannot use is NOT_FOUND, exactly like a missing one.
    let hidden = assert_code(
        create_project(&app, &alice, "alice", "p4", "bob/bobs").await,
        Code::NotFound,
    );
    let missing = assert_code(
        create_project(&app, &alice, "alice", "p4", "bob/absent").await,
        Code::NotFound,
    );
    assert_eq!(
        hidden.message().replace("bobs", "X"),
        missing.message().replace("absent", "X")
    );
    // Once shared (even as a reader), it can be bound.
    share(
        &app,
        &bob,
        "users/bob/instances/bobs",
        "alice",
        pb::Role::Reader,
    )
    .await
    .unwrap();
    create_project(&app, &alice, "alice", "p4", "bob/bobs")
        .await
        .expect("readers bind projects");

    assert_code(
        create_project(&app, &alice, "alice", "p1", "mine").await,
        Code::AlreadyExists,
    );
    assert_invalid_field(
        create_project(&app, &alice, "alice", "P5", "mine").await,
        "project_id",
    );
    assert_invalid_field(
        create_project(&app, &alice, "alice", "p5", "").await,
        "project.instance",
    );
    assert_invalid_field(
        create_project(&app, &alice, "alice", "p5", "users/alice/definitions/x").await,
        "project.instance",
    );
    assert_code(
        create_project(&app, &bob, "alice", "p5", "mine").await,
        Code::PermissionDenied,
    );

    // GetProjectInstance: the bound instance in one call, never its key.
    let instance = projects
        .get_project_instance(authed(
            pb::GetProjectInstanceRequest {
                name: "users/alice/projects/p1".into(),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(instance.name, "users/alice/instances/mine");
    assert!(instance.has_api_key && instance.api_key.is_empty());
    let via_share = projects
        .get_project_instance(authed(
            pb::GetProjectInstanceRequest {
                name: "users/alice/projects/p4".into(),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(via_share.access_role, pb::Role::Reader as i32);
    assert_code(
        projects
            .get_project_instance(authed(
                pb::GetProjectInstanceRequest {
                    name: "users/alice/projects/p1".into(),
                },
                &bob,
            ))
            .await,
        Code::NotFound,
    );

    // Get, list (paginated), update (rebind, mask, etag), delete.
    let p1 = projects
        .get_project(authed(
            pb::GetProjectRequest {
                name: "users/alice/projects/p1".into(),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_code(
        projects
            .get_project(authed(
                pb::GetProjectRequest {
                    name: p1.name.clone(),
                },
                &bob,
            ))
            .await,
        Code::NotFound,
    );
    let page = projects
        .list_projects(authed(
            pb::ListProjectsRequest {
                parent: "users/alice".into(),
                page_size: 3,
                ..Default::default()
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    let rest = projects
        .list_projects(authed(
            pb::ListProjectsRequest {
                parent: "users/alice".into(),
                page_size: 3,
                page_token: page.next_page_token.clone(),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<String> = page
        .projects
        .iter()
        .chain(&rest.projects)
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(
        names,
        ["p1", "p2", "p3", "p4"].map(|p| format!("users/alice/projects/{p}"))
    );
    assert_code(
        projects
            .list_projects(authed(
                pb::ListProjectsRequest {
                    parent: "users/alice".into(),
                    ..Default::default()
                },
                &bob,
            ))
            .await,
        Code::NotFound,
    );

    let rebind = pb::Project {
        name: p1.name.clone(),
        instance: "bob/bobs".into(),
        description: "ignored".into(),
        etag: p1.etag.clone(),
        ..Default::default()
    };
    let rebound = projects
        .update_project(authed(
            pb::UpdateProjectRequest {
                project: Some(rebind),
                update_mask: Some(FieldMask {
                    paths: vec!["instance".into()],
                }),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rebound.instance, "users/bob/instances/bobs");
    assert_eq!(rebound.description, "project p1");
    let stale = pb::Project {
        name: p1.name.clone(),
        description: "late".into(),
        etag: p1.etag.clone(),
        ..Default::default()
    };
    assert_code(
        projects
            .update_project(authed(
                pb::UpdateProjectRequest {
                    project: Some(stale),
                    update_mask: None,
                },
                &alice,
            ))
            .await,
        Code::Aborted,
    );
    let unusable = pb::Project {
        name: p1.name.clone(),
        instance: "bob/absent".into(),
        ..Default::default()
    };
    assert_code(
        projects
            .update_project(authed(
                pb::UpdateProjectRequest {
                    project: Some(unusable),
                    update_mask: None,
                },
                &alice,
            ))
            .await,
        Code::NotFound,
    );
    projects
        .delete_project(authed(
            pb::DeleteProjectRequest {
                name: p1.name.clone(),
                etag: rebound.etag.clone(),
            },
            &alice,
        ))
        .await
        .unwrap();
    assert_code(
        projects
            .get_project(authed(
                pb::GetProjectRequest {
                    name: p1.name.clone(),
                },
                &alice,
            ))
            .await,
        Code::NotFound,
    );
}

#[tokio::test]
async fn deletes_that_would_strand_projects_are_refused_without_force_until_the_blockers_go() {
    let app = TestApp::spawn().await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    let mut projects = ProjectServiceClient::new(app.channel.clone());
    let mut sharing = SharingServiceClient::new(app.channel.clone());
    let mut instances = app.instances();
    let instance = "users/alice/instances/shared";
    create_instance_from(
        &app,
        &alice,
        "alice",
        "shared",
        "_system/openai-small",
        pb::Instance::default(),
    )
    .await
    .unwrap();
    share(&app, &alice, instance, "bob", pb::Role::Reader)
        .await
        .unwrap();
    create_project(&app, &bob, "bob", "uses-shared", instance)
        .await
        .unwrap();

    // Revoking bob's share while his project uses the instance.
    let unshare = pb::UnshareInstanceRequest {
        name: format!("{instance}/shares/bob"),
        force: false,
    };
    let status = assert_code(
        sharing
            .unshare_instance(authed(unshare.clone(), &alice))
            .await,
        Code::FailedPrecondition,
    );
    // Refused without `force`; the grantee's project is counted, never named to the owner.
    assert!(blockers(&status).is_empty(), "{status:?}");
    assert!(!status.message().contains("uses-shared"), "{status:?}");
    assert!(status.message().contains("1 project(s) of other users"));
    // Deleting the instance.
    let delete = pb::DeleteInstanceRequest {
        name: instance.into(),
        etag: String::new(),
        force: false,
    };
    let status = assert_code(
        instances
            .delete_instance(authed(delete.clone(), &alice))
            .await,
        Code::FailedPrecondition,
    );
    assert!(blockers(&status).is_empty(), "{status:?}");
    assert!(!status.message().contains("uses-shared"), "{status:?}");
    // Deleting alice, whose instance bob's project uses.
    let delete_user = pb::DeleteUserRequest {
        name: "users/alice".into(),
        etag: String::new(),
        force: false,
    };
    let status = assert_code(
        app.users()
            .delete_user(authed(delete_user.clone(), &app.admin_token))
            .await,
        Code::FailedPrecondition,
    );
    assert!(blockers(&status).is_empty(), "{status:?}");
    assert!(!status.message().contains("uses-shared"), "{status:?}");

    // Alice's own project does not block deleting alice, but does block deleting the instance.
    create_project(&app, &alice, "alice", "own", "shared")
        .await
        .unwrap();
    projects
        .delete_project(authed(
            pb::DeleteProjectRequest {
                name: "users/bob/projects/uses-shared".into(),
                etag: String::new(),
            },
            &bob,
        ))
        .await
        .unwrap();
    let status = assert_code(
        instances
            .delete_instance(authed(delete.clone(), &alice))
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(blockers(&status), ["users/alice/projects/own"]);
    // With bob's project gone, the share can be revoked and alice deleted (her own project with her).
    sharing
        .unshare_instance(authed(unshare, &alice))
        .await
        .expect("revoke once unblocked");
    app.users()
        .delete_user(authed(delete_user, &app.admin_token))
        .await
        .expect("delete once unblocked");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM projects")
        .fetch_one(&mut app.db().await)
        .await
        .unwrap();
    assert_eq!(left, 0);
}
