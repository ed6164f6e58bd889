//! UserService: admin-only management, self-service reads and rotation, reserved handles.

use llm_registry::pb::v1 as pb;
use prost_types::FieldMask;
use tonic::Code;

use crate::helpers::{TestApp, assert_code, assert_invalid_field, authed, reason};

fn get(name: &str) -> pb::GetUserRequest {
    pb::GetUserRequest {
        name: name.to_owned(),
    }
}

#[tokio::test]
async fn admin_manages_users_and_users_see_only_themselves() {
    let app = TestApp::spawn().await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    let mut users = app.users();

    let me = users
        .get_user(authed(get("users/alice"), &alice))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.name, "users/alice");
    assert_eq!(me.display_name, "Test user alice");
    assert!(!me.admin);
    users
        .get_user(authed(get("users/alice"), &app.admin_token))
        .await
        .expect("admin reads anyone");
    let hidden = assert_code(
        users.get_user(authed(get("users/alice"), &bob)).await,
        Code::NotFound,
    );
    let missing = assert_code(
        users.get_user(authed(get("users/nobody"), &bob)).await,
        Code::NotFound,
    );
    assert_eq!(
        hidden.message().replace("alice", "X"),
        missing.message().replace("nobody", "X")
    );

    // Only the admin creates, lists, updates and deletes users.
    let create = |id: &str| pb::CreateUserRequest {
        user_id: id.to_owned(),
        user: Some(pb::User::default()),
    };
    let status = assert_code(
        users.create_user(authed(create("carol"), &alice)).await,
        Code::PermissionDenied,
    );
    assert_eq!(reason(&status), "ADMIN_ONLY");
    assert_code(
        users
            .list_users(authed(pb::ListUsersRequest::default(), &alice))
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        users
            .delete_user(authed(
                pb::DeleteUserRequest {
                    name: "users/bob".into(),
                    etag: String::new(),
                    force: false,
                },
                &alice,
            ))
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        users
            .create_user(authed(create("alice"), &app.admin_token))
            .await,
        Code::AlreadyExists,
    );
    assert_invalid_field(
        users
            .create_user(authed(create("_hidden"), &app.admin_token))
            .await,
        "user_id",
    );
    assert_invalid_field(
        users
            .create_user(authed(create("_system"), &app.admin_token))
            .await,
        "user_id",
    );
    assert_invalid_field(
        users
            .create_user(authed(create("Carol"), &app.admin_token))
            .await,
        "user_id",
    );

    // Rotating someone else's token: invisible to users, allowed to the admin.
    assert_code(
        users
            .rotate_user_token(authed(
                pb::RotateUserTokenRequest {
                    name: "users/bob".into(),
                },
                &alice,
            ))
            .await,
        Code::NotFound,
    );
    let rotated = users
        .rotate_user_token(authed(
            pb::RotateUserTokenRequest {
                name: "users/bob".into(),
            },
            &app.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_code(
        users.get_user(authed(get("users/bob"), &bob)).await,
        Code::Unauthenticated,
    );
    users
        .get_user(authed(get("users/bob"), &rotated.token))
        .await
        .expect("the new token works");

    // The reserved user cannot be changed, deleted or given a token, even by the admin.
    for result in [
        users
            .rotate_user_token(authed(
                pb::RotateUserTokenRequest {
                    name: "users/_system".into(),
                },
                &app.admin_token,
            ))
            .await
            .map(|_| ()),
        users
            .delete_user(authed(
                pb::DeleteUserRequest {
                    name: "users/_system".into(),
                    etag: String::new(),
                    force: false,
                },
                &app.admin_token,
            ))
            .await
            .map(|_| ()),
    ] {
        let status = assert_code(result, Code::PermissionDenied);
        assert_eq!(reason(&status), "RESERVED_USER");
    }

    // Update: admin flag and display name through a mask; a stale etag is ABORTED.
    let updated = users
        .update_user(authed(
            pb::UpdateUserRequest {
                user: Some(pb::User {
                    name: "users/alice".into(),
                    admin: true,
                    display_name: "ignored".into(),
                    etag: me.etag.clone(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["admin".into()],
                }),
            },
            &app.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(updated.admin);
    assert_eq!(updated.display_name, "Test user alice");
    assert_code(
        users
            .update_user(authed(
                pb::UpdateUserRequest {
                    user: Some(pb::User {
                        name: "users/alice".into(),
                        etag: me.etag.clone(),
                        ..Default::default()
                    }),
                    update_mask: Some(FieldMask {
                        paths: vec!["admin".into()],
                    }),
                },
                &app.admin_token,
            ))
            .await,
        Code::Aborted,
    );
    // Alice is now an administrator: she may list users.
    let listed = users
        .list_users(authed(pb::ListUsersRequest::default(), &alice))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<String> = listed.users.into_iter().map(|u| u.name).collect();
    assert_eq!(names, ["users/_system", "users/alice", "users/bob"]);

    users
        .delete_user(authed(
            pb::DeleteUserRequest {
                name: "users/bob".into(),
                etag: String::new(),
                force: false,
            },
            &app.admin_token,
        ))
        .await
        .expect("admin deletes");
    assert_code(
        users
            .get_user(authed(get("users/bob"), &app.admin_token))
            .await,
        Code::NotFound,
    );
    assert_code(
        users
            .delete_user(authed(
                pb::DeleteUserRequest {
                    name: "users/bob".into(),
                    etag: String::new(),
                    force: false,
                },
                &app.admin_token,
            ))
            .await,
        Code::NotFound,
    );
}

#[tokio::test]
async fn deleting_a_user_removes_what_the_user_owns() {
    let app = TestApp::spawn().await;
    let alice = app.create_user("alice").await;
    crate::helpers::create_definition(&app, &alice, "alice", "mine")
        .await
        .unwrap();
    app.users()
        .delete_user(authed(
            pb::DeleteUserRequest {
                name: "users/alice".into(),
                etag: String::new(),
                force: false,
            },
            &app.admin_token,
        ))
        .await
        .unwrap();
    let mut db = app.db().await;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM definitions d JOIN users u ON u.id = d.owner_id WHERE u.handle <> '_system'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(left, 0);
    // The handle is free again, with a new token.
    let again = app.create_user("alice").await;
    assert_ne!(again, alice);
}
