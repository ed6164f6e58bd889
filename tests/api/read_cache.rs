//! The read cache (who holds a token; GetInstance answers): it does answer from memory, and it
//! never hides a change. Every change made through one server is seen at once by a second server
//! on the same database whose cache held the old answer, also while other calls keep refilling
//! that cache concurrently.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use llm_registry::pb::v1 as pb;
use prost_types::FieldMask;
use tonic::{Code, Status};

use crate::helpers::{TestApp, authed, get_instance, random_api_key, share};

const NAME: &str = "users/alice/instances/i1";

/// A call that resolves its token through the authentication layer (not in its own query).
async fn list(app: &TestApp, token: &str) -> Result<usize, Status> {
    app.instances()
        .list_instances(authed(
            pb::ListInstancesRequest {
                parent: "users/bob".into(),
                ..Default::default()
            },
            token,
        ))
        .await
        .map(|answer| answer.into_inner().instances.len())
}

async fn set_description(app: &TestApp, token: &str, description: &str) -> pb::Instance {
    app.instances()
        .update_instance(authed(
            pb::UpdateInstanceRequest {
                instance: Some(pb::Instance {
                    name: NAME.into(),
                    description: description.into(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["description".into()],
                }),
            },
            token,
        ))
        .await
        .expect("alice updates her instance")
        .into_inner()
}

async fn set_admin(app: &TestApp, handle: &str, is_admin: bool) {
    app.users()
        .update_user(authed(
            pb::UpdateUserRequest {
                user: Some(pb::User {
                    name: format!("users/{handle}"),
                    admin: is_admin,
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["admin".into()],
                }),
            },
            &app.admin_token,
        ))
        .await
        .expect("the admin sets the flag");
}

/// alice's instance `i1`, shared with bob as a reader.
async fn alice_shares_with_bob(app: &TestApp, alice: &str) {
    app.instances()
        .create_instance(authed(
            pb::CreateInstanceRequest {
                parent: "users/alice".into(),
                instance_id: "i1".into(),
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
        .expect("alice creates i1");
    share(app, alice, NAME, "bob", pb::Role::Reader)
        .await
        .expect("alice shares i1 with bob");
}

#[tokio::test]
async fn answers_come_from_memory_until_their_scope_moves() {
    let app = TestApp::spawn().await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    alice_shares_with_bob(&app, &alice).await;
    let before = get_instance(&app, &bob, NAME).await.unwrap();

    // Change the row behind the service's back with triggers off, so no scope moves: only a
    // cache can still answer the old description.
    let mut db = app.db().await;
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query("UPDATE instances SET description = 'changed behind the cache'")
        .execute(&mut db)
        .await
        .unwrap();
    let cached = get_instance(&app, &bob, NAME).await.unwrap();
    assert_eq!(
        cached.description, before.description,
        "served from the cache"
    );

    // Once the instance's scope moves, the next call reads the database.
    sqlx::query("SELECT bump_read_cache_scope(read_cache_scope(3, id)) FROM instances")
        .execute(&mut db)
        .await
        .unwrap();
    let fresh = get_instance(&app, &bob, NAME).await.unwrap();
    assert_eq!(fresh.description, "changed behind the cache");

    // The same for who holds a token: a hash swapped behind the cache still works until then.
    sqlx::query("UPDATE users SET token_hash = sha256('not a token'::bytea) WHERE handle = 'bob'")
        .execute(&mut db)
        .await
        .unwrap();
    assert_eq!(list(&app, &bob).await.unwrap(), 1, "served from the cache");
    sqlx::query(
        "SELECT bump_read_cache_scope(read_cache_scope(1, id)) FROM users WHERE handle = 'bob'",
    )
    .execute(&mut db)
    .await
    .unwrap();
    assert_eq!(
        list(&app, &bob).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        get_instance(&app, &bob, NAME).await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn no_replica_answers_from_a_stale_cache() {
    let a = TestApp::spawn().await;
    let b = a.replica().await;
    let alice = a.create_user("alice").await;
    let bob = a.create_user("bob").await;
    let carol = a.create_user("carol").await;
    alice_shares_with_bob(&a, &alice).await;

    // Quiet first: b's last look at the changed scopes is older than each update, so b must
    // look again rather than trust the last one.
    for round in 0..5 {
        get_instance(&b, &bob, NAME).await.unwrap();
        let updated = set_description(&a, &alice, &format!("quiet {round}")).await;
        assert_eq!(
            get_instance(&b, &bob, NAME).await.unwrap().etag,
            updated.etag,
            "quiet {round}"
        );
    }

    // Then readers keep refilling b's cache with answers from older snapshots while the
    // changes below commit through a.
    let stop = Arc::new(AtomicBool::new(false));
    let refillers: Vec<_> = (0..4)
        .map(|_| {
            let (b, bob, stop) = (b.channel.clone(), bob.clone(), stop.clone());
            tokio::spawn(async move {
                let mut client = pb::llm_instance_service_client::LlmInstanceServiceClient::new(b);
                while !stop.load(Ordering::Relaxed) {
                    let _ = client
                        .get_instance(authed(pb::GetInstanceRequest { name: NAME.into() }, &bob))
                        .await;
                }
            })
        })
        .collect();

    for round in 0..30 {
        let updated = set_description(&a, &alice, &format!("round {round}")).await;
        let seen = get_instance(&b, &bob, NAME).await.unwrap();
        assert_eq!(seen.description, format!("round {round}"), "round {round}");
        assert_eq!(seen.etag, updated.etag, "round {round}");
    }

    // A role changed through a shows at once on b.
    share(&a, &alice, NAME, "bob", pb::Role::Writer)
        .await
        .unwrap();
    assert_eq!(
        get_instance(&b, &bob, NAME).await.unwrap().access_role,
        pb::Role::Writer as i32
    );

    // An admin flag granted and revoked through a counts at once on b.
    assert_eq!(
        get_instance(&b, &carol, NAME).await.unwrap_err().code(),
        Code::NotFound
    );
    set_admin(&a, "carol", true).await;
    get_instance(&b, &carol, NAME)
        .await
        .expect("an admin sees every instance");
    set_admin(&a, "carol", false).await;
    assert_eq!(
        get_instance(&b, &carol, NAME).await.unwrap_err().code(),
        Code::NotFound
    );

    // A token rotated through a dies on b at once, on both token paths.
    assert_eq!(list(&b, &bob).await.unwrap(), 1);
    let rotated = a.rotate_token("bob", &bob).await;
    assert_eq!(
        get_instance(&b, &bob, NAME).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        list(&b, &bob).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        get_instance(&b, &rotated, NAME).await.unwrap().description,
        "round 29"
    );

    // A share removed through a hides the instance at once on b.
    get_instance(&b, &rotated, NAME).await.unwrap();
    pb::sharing_service_client::SharingServiceClient::new(a.channel.clone())
        .unshare_instance(authed(
            pb::UnshareInstanceRequest {
                name: format!("{NAME}/shares/bob"),
                force: false,
            },
            &alice,
        ))
        .await
        .expect("alice unshares");
    assert_eq!(
        get_instance(&b, &rotated, NAME).await.unwrap_err().code(),
        Code::NotFound
    );

    // An instance deleted through a is gone at once on b.
    get_instance(&b, &alice, NAME).await.unwrap();
    a.instances()
        .delete_instance(authed(
            pb::DeleteInstanceRequest {
                name: NAME.into(),
                etag: String::new(),
                force: false,
            },
            &alice,
        ))
        .await
        .expect("alice deletes i1");
    assert_eq!(
        get_instance(&b, &alice, NAME).await.unwrap_err().code(),
        Code::NotFound
    );

    // And a deleted user's token dies on b at once.
    assert_eq!(list(&b, &rotated).await.unwrap(), 0);
    a.users()
        .delete_user(authed(
            pb::DeleteUserRequest {
                name: "users/bob".into(),
                etag: String::new(),
                force: false,
            },
            &a.admin_token,
        ))
        .await
        .expect("the admin deletes bob");
    assert_eq!(
        list(&b, &rotated).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    stop.store(true, Ordering::Relaxed);
    for refiller in refillers {
        refiller.await.unwrap();
    }
}

/// carol's own instance `c1`.
async fn carol_creates(app: &TestApp, carol: &str) {
    app.instances()
        .create_instance(authed(
            pb::CreateInstanceRequest {
                parent: "users/carol".into(),
                instance_id: "c1".into(),
                instance: Some(pb::Instance {
                    endpoint: "https://llm.example.com/v1".into(),
                    api_standard: "openai".into(),
                    model: "m".into(),
                    ..Default::default()
                }),
            },
            carol,
        ))
        .await
        .expect("carol creates c1");
}

#[tokio::test]
async fn a_write_to_one_tenant_leaves_the_other_tenants_answers_cached_on_every_replica() {
    // Scopes are rows (an instance with its shares, a user, a project...), finer than tenants:
    // carol's writes to her instance touch only that instance's scope.
    let a = TestApp::spawn().await;
    let b = a.replica().await;
    let alice = a.create_user("alice").await;
    let bob = a.create_user("bob").await;
    let carol = a.create_user("carol").await;
    alice_shares_with_bob(&a, &alice).await;
    carol_creates(&a, &carol).await;
    const CAROLS: &str = "users/carol/instances/c1";
    // Both replicas hold bob's answer about alice's instance, and carol's about hers.
    for app in [&a, &b] {
        get_instance(app, &bob, NAME).await.unwrap();
        get_instance(app, &carol, CAROLS).await.unwrap();
    }

    // Behind the service's back (no scope moves): only a cache still answers the old text.
    let mut db = a.db().await;
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query("UPDATE instances SET description = 'changed behind the cache'")
        .execute(&mut db)
        .await
        .unwrap();

    // carol writes to her own namespace through a, many times over.
    for round in 0..5 {
        let updated = a
            .instances()
            .update_instance(authed(
                pb::UpdateInstanceRequest {
                    instance: Some(pb::Instance {
                        name: CAROLS.into(),
                        description: format!("carol {round}"),
                        ..Default::default()
                    }),
                    update_mask: Some(FieldMask {
                        paths: vec!["description".into()],
                    }),
                },
                &carol,
            ))
            .await
            .unwrap()
            .into_inner();
        for app in [&a, &b] {
            // Her change is seen at once on both replicas...
            let seen = get_instance(app, &carol, CAROLS).await.unwrap();
            assert_eq!(seen.etag, updated.etag, "round {round}");
            // ...and alice's tenant kept its cached answers: still the text from before the
            // change made behind the cache, so it was not read again.
            assert_ne!(
                get_instance(app, &bob, NAME).await.unwrap().description,
                "changed behind the cache",
                "round {round}: a write to carol's namespace evicted an answer about alice's"
            );
        }
    }

    // A write to alice's namespace does reach bob's answers, on both replicas.
    let updated = set_description(&a, &alice, "alice's own").await;
    for app in [&a, &b] {
        let seen = get_instance(app, &bob, NAME).await.unwrap();
        assert_eq!(
            (seen.description.as_str(), seen.etag.as_str()),
            ("alice's own", updated.etag.as_str())
        );
    }
}
