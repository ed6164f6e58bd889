//! Authentication: no token, a wrong token, a rotated-away token and a deleted user's token are
//! all UNAUTHENTICATED; health and reflection need none.

use llm_registry::pb::v1 as pb;
use tonic::{Code, Request};

use crate::helpers::{TestApp, assert_code, authed};

fn list_system() -> pb::ListDefinitionsRequest {
    pb::ListDefinitionsRequest {
        parent: "users/_system".to_owned(),
        ..Default::default()
    }
}

#[tokio::test]
async fn missing_wrong_rotated_and_deleted_tokens_are_unauthenticated() {
    let app = TestApp::spawn().await;
    let mut definitions = app.definitions();

    assert_code(
        definitions
            .list_definitions(Request::new(list_system()))
            .await,
        Code::Unauthenticated,
    );
    assert_code(
        definitions
            .list_definitions(authed(list_system(), "llmr_not-a-real-token"))
            .await,
        Code::Unauthenticated,
    );
    let mut basic = Request::new(list_system());
    basic
        .metadata_mut()
        .insert("authorization", "Basic dXNlcjpwdw==".parse().unwrap());
    assert_code(
        definitions.list_definitions(basic).await,
        Code::Unauthenticated,
    );

    // Rotation: the old token stops working at once, the new one works.
    let old = app.create_user("rotator").await;
    definitions
        .list_definitions(authed(list_system(), &old))
        .await
        .expect("fresh token works");
    let rotated = app
        .users()
        .rotate_user_token(authed(
            pb::RotateUserTokenRequest {
                name: "users/rotator".to_owned(),
            },
            &old,
        ))
        .await
        .expect("users may rotate their own token")
        .into_inner();
    assert!(rotated.token.starts_with("llmr_"));
    assert_ne!(rotated.token, old);
    assert_code(
        definitions
            .list_definitions(authed(list_system(), &old))
            .await,
        Code::Unauthenticated,
    );
    definitions
        .list_definitions(authed(list_system(), &rotated.token))
        .await
        .expect("new token works");

    // Deleted user.
    let doomed = app.create_user("doomed").await;
    app.users()
        .delete_user(authed(
            pb::DeleteUserRequest {
                name: "users/doomed".to_owned(),
                etag: String::new(),
                force: false,
            },
            &app.admin_token,
        ))
        .await
        .expect("admin deletes a user");
    assert_code(
        definitions
            .list_definitions(authed(list_system(), &doomed))
            .await,
        Code::Unauthenticated,
    );
}

#[tokio::test]
async fn tokens_are_stored_only_as_hashes() {
    let app = TestApp::spawn().await;
    let token = app.create_user("hashed").await;
    let mut db = app.db().await;
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT token_hash FROM users WHERE handle = 'hashed'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(stored.len(), 32);
    assert_ne!(stored, token.as_bytes());
    let dump: Vec<String> = sqlx::query_scalar("SELECT row_to_json(u)::text FROM users u")
        .fetch_all(&mut db)
        .await
        .unwrap();
    assert!(dump.iter().all(|row| !row.contains(&token)));
}

/// GetInstance resolves the token inside its own query (one round trip, see
/// the method table's `resolved_in_query`); it must refuse exactly what the separate lookup refuses, and see a
/// rotation, a deletion or a lost admin flag at once.
#[tokio::test]
async fn get_instance_resolves_tokens_as_strictly_as_the_authentication_layer() {
    use prost_types::FieldMask;

    let app = TestApp::spawn().await;
    let owner = app.create_user("owner").await;
    let boss = app.create_user("boss").await;
    let instance = "users/owner/instances/mine".to_owned();
    crate::helpers::create_instance_from(
        &app,
        &owner,
        "owner",
        "mine",
        "users/_system/definitions/openai-small",
        pb::Instance::default(),
    )
    .await
    .expect("owner creates an instance");
    let get = |name: &str| pb::GetInstanceRequest {
        name: name.to_owned(),
    };
    let mut instances = app.instances();

    // The owner, the configured admin: served.
    let seen = instances
        .get_instance(authed(get(&instance), &owner))
        .await
        .expect("the owner reads")
        .into_inner();
    assert_eq!(seen.name, instance);
    instances
        .get_instance(authed(get(&instance), &app.admin_token))
        .await
        .expect("the admin reads");

    // No token, a wrong one, a malformed name with a wrong token: UNAUTHENTICATED first.
    assert_code(
        instances.get_instance(Request::new(get(&instance))).await,
        Code::Unauthenticated,
    );
    assert_code(
        instances
            .get_instance(authed(get(&instance), "llmr_not-a-real-token"))
            .await,
        Code::Unauthenticated,
    );
    assert_code(
        instances
            .get_instance(authed(get("not a name"), "llmr_not-a-real-token"))
            .await,
        Code::Unauthenticated,
    );
    // A malformed name with a good token is the caller's mistake, named.
    assert_code(
        instances
            .get_instance(authed(get("not a name"), &owner))
            .await,
        Code::InvalidArgument,
    );
    // A stranger's read of an existing instance looks like a missing one.
    assert_code(
        instances.get_instance(authed(get(&instance), &boss)).await,
        Code::NotFound,
    );

    // An admin flag counts at once, both ways.
    let set_admin = |admin: bool, etag: String| pb::UpdateUserRequest {
        user: Some(pb::User {
            name: "users/boss".into(),
            admin,
            etag,
            ..Default::default()
        }),
        update_mask: Some(FieldMask {
            paths: vec!["admin".into()],
        }),
    };
    let promoted = app
        .users()
        .update_user(authed(set_admin(true, String::new()), &app.admin_token))
        .await
        .expect("admin promotes boss")
        .into_inner();
    instances
        .get_instance(authed(get(&instance), &boss))
        .await
        .expect("a user flagged admin reads any instance");
    app.users()
        .update_user(authed(set_admin(false, promoted.etag), &app.admin_token))
        .await
        .expect("admin demotes boss");
    assert_code(
        instances.get_instance(authed(get(&instance), &boss)).await,
        Code::NotFound,
    );

    // Rotation: the old token is dead at once, the new one reads.
    let rotated = app.rotate_token("owner", &owner).await;
    assert_code(
        instances.get_instance(authed(get(&instance), &owner)).await,
        Code::Unauthenticated,
    );
    instances
        .get_instance(authed(get(&instance), &rotated))
        .await
        .expect("the new token reads");

    // Deletion: the token dies with the user.
    app.users()
        .delete_user(authed(
            pb::DeleteUserRequest {
                name: "users/boss".to_owned(),
                etag: String::new(),
                force: false,
            },
            &app.admin_token,
        ))
        .await
        .expect("admin deletes boss");
    assert_code(
        instances.get_instance(authed(get(&instance), &boss)).await,
        Code::Unauthenticated,
    );
}

/// GetProjectInstance resolves the token, the project and its instance in one statement; the
/// answers must be those of the separate lookups.
#[tokio::test]
async fn get_project_instance_resolves_tokens_as_strictly_as_the_authentication_layer() {
    use llm_registry::pb::v1::project_service_client::ProjectServiceClient;

    let app = TestApp::spawn().await;
    let owner = app.create_user("owner").await;
    let stranger = app.create_user("stranger").await;
    crate::helpers::create_instance_from(
        &app,
        &owner,
        "owner",
        "mine",
        "users/_system/definitions/openai-small",
        pb::Instance::default(),
    )
    .await
    .expect("owner creates an instance");
    let mut projects = ProjectServiceClient::new(app.channel.clone());
    projects
        .create_project(authed(
            pb::CreateProjectRequest {
                parent: "users/owner".into(),
                project_id: "search".into(),
                project: Some(pb::Project {
                    instance: "users/owner/instances/mine".into(),
                    ..Default::default()
                }),
            },
            &owner,
        ))
        .await
        .expect("owner binds a project");
    let get = |name: &str| pb::GetProjectInstanceRequest {
        name: name.to_owned(),
    };
    let project = "users/owner/projects/search";

    let bound = projects
        .get_project_instance(authed(get(project), &owner))
        .await
        .expect("the owner reads the bound instance")
        .into_inner();
    assert_eq!(bound.name, "users/owner/instances/mine");
    assert_eq!(bound.access_role, pb::Role::Owner as i32);
    projects
        .get_project_instance(authed(get(project), &app.admin_token))
        .await
        .expect("the admin reads it");
    for (request, token, code) in [
        (get(project), "llmr_not-a-real-token", Code::Unauthenticated),
        (
            get("not a name"),
            "llmr_not-a-real-token",
            Code::Unauthenticated,
        ),
        (get("not a name"), owner.as_str(), Code::InvalidArgument),
        (get(project), stranger.as_str(), Code::NotFound),
        (
            get("users/owner/projects/absent"),
            owner.as_str(),
            Code::NotFound,
        ),
    ] {
        assert_code(
            projects.get_project_instance(authed(request, token)).await,
            code,
        );
    }
    // A stranger's answer for an existing project is the one for a missing project.
    let hidden = projects
        .get_project_instance(authed(get(project), &stranger))
        .await
        .expect_err("hidden");
    let absent = projects
        .get_project_instance(authed(get("users/owner/projects/absent"), &owner))
        .await
        .expect_err("absent");
    assert_eq!(
        hidden.message().replace("search", "absent"),
        absent.message()
    );

    let rotated = app.rotate_token("owner", &owner).await;
    assert_code(
        projects
            .get_project_instance(authed(get(project), &owner))
            .await,
        Code::Unauthenticated,
    );
    projects
        .get_project_instance(authed(get(project), &rotated))
        .await
        .expect("the new token reads");
}
