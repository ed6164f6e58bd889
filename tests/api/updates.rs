//! UpdateInstance under concurrency. Updates are optimistic (read without a lock, then one
//! statement that writes only if the row is still the version read and the caller's share still
//! gives the role decided on; src/store/instances/write.rs): these tests prove that no update is
//! lost, counted twice or written on a stale decision, whatever comes between its read and its
//! write.
//!
//! The window between the read and the write is made deterministic by holding an exclusive lock
//! on `audit_events`, which the write statement needs and the read does not: the update reads,
//! decides, then waits while the test changes the row or the share underneath it.

use std::collections::BTreeMap;

use llm_registry::pb::v1 as pb;
use prost_types::FieldMask;
use sqlx::{Connection, PgConnection};
use tonic::Code;

use crate::helpers::{
    TestApp, assert_code, audit_events, authed, create_openai_instance_on, get_instance,
    grant_share, random_api_key, reason, share, stored_key,
};

const NAME: &str = "users/alice/instances/hot";

fn describe(description: &str, etag: &str) -> pb::UpdateInstanceRequest {
    pb::UpdateInstanceRequest {
        instance: Some(pb::Instance {
            name: NAME.into(),
            description: description.into(),
            etag: etag.into(),
            ..Default::default()
        }),
        update_mask: Some(FieldMask {
            paths: vec!["description".into()],
        }),
    }
}

/// alice's instance `hot`, shared with bob as a writer; their tokens.
async fn world() -> (TestApp, String, String) {
    let app = TestApp::spawn().await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    create_openai_instance_on(
        &app.channel,
        &alice,
        "alice",
        "hot",
        "https://api.openai.com/v1/embeddings".into(),
    )
    .await;
    grant_share(&app, "alice", "hot", "bob", "writer").await;
    (app, alice, bob)
}

async fn stored_revision(app: &TestApp) -> i64 {
    let (revision,): (i64,) = sqlx::query_as("SELECT revision FROM instances WHERE handle = 'hot'")
        .fetch_one(&mut app.db().await)
        .await
        .unwrap();
    revision
}

fn successful_updates(events: &[pb::AuditEvent]) -> usize {
    events
        .iter()
        .filter(|e| {
            e.method.ends_with("/UpdateInstance") && e.resource == NAME && e.outcome == "OK"
        })
        .count()
}

#[tokio::test]
async fn concurrent_updates_of_one_instance_all_land_once_and_an_etag_lets_exactly_one_win() {
    let (app, alice, bob) = world().await;
    let before = get_instance(&app, &alice, NAME).await.unwrap();
    let revision_before = stored_revision(&app).await;
    let new_key = random_api_key();

    // 24 unconditional updates at once, by the owner and the writer, one of them replacing the
    // key: every one lands, each on its own version.
    let mut calls = Vec::new();
    for n in 0..24 {
        let token = if n % 2 == 0 {
            alice.clone()
        } else {
            bob.clone()
        };
        let mut request = describe(&format!("d{n}"), "");
        if n == 7 {
            let instance = request.instance.as_mut().unwrap();
            instance.api_key = new_key.clone();
            request
                .update_mask
                .as_mut()
                .unwrap()
                .paths
                .push("api_key".into());
        }
        let mut client = app.instances();
        calls.push(tokio::spawn(async move {
            client.update_instance(authed(request, &token)).await
        }));
    }
    let mut answers = BTreeMap::new();
    for call in calls {
        let updated = call
            .await
            .unwrap()
            .expect("an unconditional update never loses a race")
            .into_inner();
        let previous = answers.insert(updated.etag.clone(), updated.description);
        assert!(previous.is_none(), "two updates answered one version");
    }
    let after = get_instance(&app, &alice, NAME).await.unwrap();
    assert_eq!(
        answers.get(&after.etag),
        Some(&after.description),
        "what is stored is one of the answers, as answered"
    );
    assert!(after.has_api_key);
    assert_eq!(
        stored_key(&app, "alice", "hot").await.as_deref(),
        Some(new_key.as_str()),
        "the replaced key stays: the other updates kept it"
    );
    let events = audit_events(&app, &alice, NAME).await;
    assert_eq!(successful_updates(&events), 24, "one event per update");
    assert_eq!(
        stored_revision(&app).await,
        revision_before + 24,
        "every update moved the version once"
    );
    assert_ne!(before.etag, after.etag);

    // 16 updates sent with the same etag: exactly one wins, the others are ABORTED.
    let mut calls = Vec::new();
    for n in 0..16 {
        let token = if n % 2 == 0 {
            alice.clone()
        } else {
            bob.clone()
        };
        let request = describe(&format!("e{n}"), &after.etag);
        let mut client = app.instances();
        calls.push(tokio::spawn(async move {
            client.update_instance(authed(request, &token)).await
        }));
    }
    let mut won = Vec::new();
    for call in calls {
        match call.await.unwrap() {
            Ok(updated) => won.push(updated.into_inner()),
            Err(status) => {
                assert_code(Err::<(), _>(status.clone()), Code::Aborted);
            }
        }
    }
    assert_eq!(won.len(), 1, "one etag, one winner");
    let stored = get_instance(&app, &alice, NAME).await.unwrap();
    assert_eq!(stored.description, won[0].description);
    assert_eq!(stored.etag, won[0].etag);
    let events = audit_events(&app, &alice, NAME).await;
    assert_eq!(successful_updates(&events), 25);
}

/// Begins a transaction on `db` that holds `audit_events` exclusively: an update that reaches
/// its write waits for it (its read does not touch the table).
async fn hold_the_write(db: &mut PgConnection) {
    sqlx::query("BEGIN").execute(&mut *db).await.unwrap();
    sqlx::query("LOCK TABLE audit_events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *db)
        .await
        .unwrap();
}

/// Sends `request` with `token`, and once it has read and decided (it waits for
/// [`hold_the_write`]'s lock), commits `underneath` (SQL) before letting it write.
async fn update_with_a_change_underneath(
    app: &TestApp,
    db: &mut PgConnection,
    token: &str,
    request: pb::UpdateInstanceRequest,
    underneath: &'static str,
) -> Result<tonic::Response<pb::Instance>, tonic::Status> {
    hold_the_write(db).await;
    let mut client = app.instances();
    let request = authed(request, token);
    let pending = tokio::spawn(async move { client.update_instance(request).await });
    wait_until_blocked(app).await;
    sqlx::query(underneath).execute(&mut *db).await.unwrap();
    sqlx::query("COMMIT").execute(&mut *db).await.unwrap();
    pending.await.unwrap()
}

/// Waits until an update is blocked on [`hold_the_write`]'s lock: it has read and decided.
async fn wait_until_blocked(app: &TestApp) {
    let mut watcher = app.db().await;
    for _ in 0..500 {
        let (waiting,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
             WHERE c.relname = 'audit_events' AND NOT l.granted",
        )
        .fetch_one(&mut watcher)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the update never reached its write");
}

#[tokio::test]
async fn a_change_between_an_updates_read_and_its_write_is_never_overwritten_on_a_stale_decision() {
    let (app, alice, bob) = world().await;
    let current = get_instance(&app, &bob, NAME).await.unwrap();

    // 1. Another write moves the row after bob's update read it: bob's update, sent with the
    // etag it read, is ABORTED, and the other write stays.
    let mut db = app.db().await;
    let outcome = update_with_a_change_underneath(
        &app,
        &mut db,
        &bob,
        describe("bob's", &current.etag),
        "UPDATE instances SET description = 'underneath', revision = revision + 1 \
         WHERE handle = 'hot'",
    )
    .await;
    assert_code(outcome, Code::Aborted);
    let stored = get_instance(&app, &alice, NAME).await.unwrap();
    assert_eq!(stored.description, "underneath");

    // 2. The same without an etag: bob's update starts over from the new version and lands.
    let outcome = update_with_a_change_underneath(
        &app,
        &mut db,
        &bob,
        describe("bob's again", ""),
        "UPDATE instances SET revision = revision + 1 WHERE handle = 'hot'",
    )
    .await;
    let landed = outcome.unwrap().into_inner();
    assert_eq!(landed.description, "bob's again");
    assert_eq!(
        get_instance(&app, &alice, NAME).await.unwrap().etag,
        landed.etag
    );

    // 3. bob's share is lowered to reader after his update decided he may write: the update
    // starts over, and is refused for the role he has now; nothing is written.
    let outcome = update_with_a_change_underneath(
        &app,
        &mut db,
        &bob,
        describe("as a former writer", ""),
        "UPDATE shares SET role = 'reader'",
    )
    .await;
    let refused = assert_code(outcome, Code::PermissionDenied);
    assert_eq!(reason(&refused), "INSUFFICIENT_ROLE");
    let stored = get_instance(&app, &alice, NAME).await.unwrap();
    assert_eq!(stored.description, "bob's again");
    assert_eq!(stored.etag, landed.etag);
    let events = audit_events(&app, &alice, NAME).await;
    assert_eq!(
        successful_updates(&events),
        1,
        "only the update that landed"
    );

    // 4. The share is revoked altogether: the instance is hidden from bob again.
    sqlx::query("UPDATE shares SET role = 'writer'")
        .execute(&mut db)
        .await
        .unwrap();
    let outcome = update_with_a_change_underneath(
        &app,
        &mut db,
        &bob,
        describe("as a stranger", ""),
        "DELETE FROM shares",
    )
    .await;
    assert_code(outcome, Code::NotFound);
    assert_eq!(
        get_instance(&app, &alice, NAME).await.unwrap().description,
        "bob's again"
    );
    drop(db.close().await);
}

#[tokio::test]
async fn a_callers_next_update_starts_from_what_it_wrote_and_a_stale_start_never_shows() {
    // Each caller's next update of an instance starts from the version it last wrote, without a
    // read (src/store/instances/update_hints.rs). Everything that can make that version stale
    // must still give the answer a read would have given.
    let (app, alice, bob) = world().await;
    let other = app.replica().await;
    let update = |app: &TestApp, token: &str, request: pb::UpdateInstanceRequest| {
        let mut client = app.instances();
        let request = authed(request, token);
        async move { client.update_instance(request).await }
    };
    let first = update(&app, &alice, describe("one", ""))
        .await
        .unwrap()
        .into_inner();

    // Another replica writes: alice's next update, sent with the etag she reads now, lands (her
    // hint is older than that etag) and keeps the other replica's model.
    let mut elsewhere = describe("", "");
    let instance = elsewhere.instance.as_mut().unwrap();
    instance.model = "text-embedding-3-large".into();
    elsewhere.update_mask.as_mut().unwrap().paths = vec!["model".into()];
    update(&other, &bob, elsewhere).await.unwrap();
    let now = get_instance(&app, &alice, NAME).await.unwrap();
    assert_ne!(now.etag, first.etag);
    let second = update(&app, &alice, describe("two", &now.etag))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.model, "text-embedding-3-large");
    assert_eq!(second.description, "two");
    // And her old etag is refused, whatever she last wrote.
    assert_code(
        update(&app, &alice, describe("three", &first.etag)).await,
        Code::Aborted,
    );

    // A test outcome recorded without a new version, after alice's last write: the answer to
    // her next update shows it as stored, not as she last wrote it.
    update(&app, &alice, describe("three", "")).await.unwrap();
    sqlx::query(
        "UPDATE instances SET last_test_time = now(), last_test_code = 'UNAVAILABLE', \
         last_test_message = 'recorded meanwhile', last_test_dimensions = 0, \
         last_test_latency_ms = 12 WHERE handle = 'hot'",
    )
    .execute(&mut app.db().await)
    .await
    .unwrap();
    let tested = update(&app, &alice, describe("four", ""))
        .await
        .unwrap()
        .into_inner();
    let last_test = tested
        .last_test
        .expect("the recorded test is in the answer");
    assert_eq!(
        (last_test.code.as_str(), last_test.message.as_str()),
        ("UNAVAILABLE", "recorded meanwhile")
    );

    // bob writes (and keeps a hint), then alice lowers his share through the other replica:
    // his next update is refused for the role he has now.
    update(&app, &bob, describe("bob's", "")).await.unwrap();
    share(&other, &alice, NAME, "bob", pb::Role::Reader)
        .await
        .unwrap();
    let refused = assert_code(
        update(&app, &bob, describe("bob's again", "")).await,
        Code::PermissionDenied,
    );
    assert_eq!(reason(&refused), "INSUFFICIENT_ROLE");

    // The instance is deleted and another made under its name: alice's next update lands on the
    // new one, never on the row she last wrote.
    let delete = || {
        let mut instances = other.instances();
        let request = authed(
            pb::DeleteInstanceRequest {
                name: NAME.into(),
                etag: String::new(),
                force: true,
            },
            &alice,
        );
        async move { instances.delete_instance(request).await.unwrap() }
    };
    delete().await;
    create_openai_instance_on(
        &other.channel,
        &alice,
        "alice",
        "hot",
        "https://api.openai.com/v1/embeddings".into(),
    )
    .await;
    let recreated = get_instance(&app, &alice, NAME).await.unwrap();
    assert_ne!(recreated.uid, tested.uid);
    let landed = update(&app, &alice, describe("on the new one", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(landed.uid, recreated.uid);
    assert_eq!(
        get_instance(&app, &alice, NAME).await.unwrap().description,
        "on the new one"
    );
    // Deleted for good: not found, not written.
    delete().await;
    assert_code(
        update(&app, &alice, describe("on nothing", "")).await,
        Code::NotFound,
    );
}
