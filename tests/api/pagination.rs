//! Lists: 120 definitions in pages of 50, stable, complete, without repeats; page tokens are
//! tamper-evident and bound to the request; page sizes are validated.

use std::collections::BTreeSet;

use crate::helpers::{TestApp, assert_invalid_field, authed, create_definition};
use llm_registry::{
    pb::v1 as pb,
    vault::{KeyRing, MasterKey},
};

fn page(parent: &str, size: i32, token: &str) -> pb::ListDefinitionsRequest {
    pb::ListDefinitionsRequest {
        parent: parent.to_owned(),
        page_size: size,
        page_token: token.to_owned(),
    }
}

#[tokio::test]
async fn list_walks_120_definitions_in_pages_of_50() {
    let app = TestApp::spawn().await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    // Created out of order, so that the order of the answer is the service's doing.
    for i in (0..120).rev() {
        create_definition(&app, &alice, "alice", &format!("def-{:03}", (i * 7) % 120))
            .await
            .unwrap();
    }
    // Another user's definitions must not leak into the walk.
    create_definition(&app, &bob, "bob", "def-000")
        .await
        .unwrap();

    let mut client = app.definitions();
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut token = String::new();
    loop {
        let response = client
            .list_definitions(authed(page("users/alice", 50, &token), &alice))
            .await
            .unwrap()
            .into_inner();
        sizes.push(response.definitions.len());
        seen.extend(response.definitions.into_iter().map(|d| d.name));
        if response.next_page_token.is_empty() {
            break;
        }
        token = response.next_page_token;
    }
    assert_eq!(sizes, [50, 50, 20]);
    let expected: Vec<String> = (0..120)
        .map(|i| format!("users/alice/definitions/def-{i:03}"))
        .collect();
    assert_eq!(seen, expected, "every definition once, in handle order");
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 120);

    // The default page is 50, and a page token can be followed with another page size.
    let first = client
        .list_definitions(authed(page("users/alice", 0, ""), &alice))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.definitions.len(), 50);
    let second = client
        .list_definitions(authed(
            page("users/alice", 10, &first.next_page_token),
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        second.definitions[0].name,
        "users/alice/definitions/def-050"
    );

    // Tampered tokens and tokens replayed against another parent are refused.
    let mut tampered = first.next_page_token.clone().into_bytes();
    let middle = tampered.len() / 2;
    tampered[middle] = if tampered[middle] == b'a' { b'b' } else { b'a' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert_invalid_field(
        client
            .list_definitions(authed(page("users/alice", 50, &tampered), &alice))
            .await,
        "page_token",
    );
    assert_invalid_field(
        client
            .list_definitions(authed(page("users/alice", 50, "garbage"), &alice))
            .await,
        "page_token",
    );
    assert_invalid_field(
        client
            .list_definitions(authed(
                page("users/_system", 50, &first.next_page_token),
                &alice,
            ))
            .await,
        "page_token",
    );
    assert_invalid_field(
        client
            .list_definitions(authed(page("users/alice", -1, ""), &alice))
            .await,
        "page_size",
    );

    // Oversized pages are capped rather than refused.
    let all = client
        .list_definitions(authed(page("users/alice", 5000, ""), &alice))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.definitions.len(), 120);
    assert!(all.next_page_token.is_empty());
}

#[tokio::test]
async fn page_tokens_are_opaque_and_survive_a_key_rotation() {
    let mut app = TestApp::spawn().await;
    let alice = app.create_user("alice").await;
    for i in 0..3 {
        create_definition(&app, &alice, "alice", &format!("def-{i}"))
            .await
            .unwrap();
    }
    let first = app
        .definitions()
        .list_definitions(authed(page("users/alice", 1, ""), &alice))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.definitions[0].name, "users/alice/definitions/def-0");
    let token = first.next_page_token;
    // The cursor (the last handle served) cannot be read out of the token.
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    assert!(!token.contains("def-0") && !token.contains(&URL_SAFE_NO_PAD.encode("def-0")));

    // A new primary key, with the old one kept to decrypt: the token still opens.
    let old = app.key_ring.primary().clone();
    app.restart_with(KeyRing::new(MasterKey::generate(), vec![old]).unwrap())
        .await
        .unwrap();
    let second = app
        .definitions()
        .list_definitions(authed(page("users/alice", 1, &token), &alice))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.definitions[0].name, "users/alice/definitions/def-1");
    // A server that has only other keys refuses it as any forged token.
    let only_new = KeyRing::new(app.key_ring.primary().clone(), vec![]).unwrap();
    app.restart_with(only_new).await.unwrap();
    assert_invalid_field(
        app.definitions()
            .list_definitions(authed(page("users/alice", 1, &token), &alice))
            .await,
        "page_token",
    );
}
