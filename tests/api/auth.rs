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
