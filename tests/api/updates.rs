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

/// An update of instance `handle` of alice's: `paths` of `instance` (its name is set here).
fn update_of(handle: &str, instance: pb::Instance, paths: &[&str]) -> pb::UpdateInstanceRequest {
    pb::UpdateInstanceRequest {
        instance: Some(pb::Instance {
            name: format!("users/alice/instances/{handle}"),
            ..instance
        }),
        update_mask: Some(FieldMask {
            paths: paths.iter().map(|path| (*path).to_owned()).collect(),
        }),
    }
}

/// Waits until `count` statements wait for [`hold_the_write`]'s lock, then until no other
/// statement of the service is running (the other updates have read and decided, and wait for
/// a batch slot).
async fn wait_until_queued_behind(app: &TestApp, count: i64) {
    let mut watcher = app.db().await;
    let mut quiet_polls = 0;
    for _ in 0..1000 {
        let (waiting, running): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                     WHERE c.relname = 'audit_events' AND NOT l.granted), \
                    (SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = current_database() AND state = 'active' \
                       AND wait_event_type IS DISTINCT FROM 'Lock' AND pid <> pg_backend_pid())",
        )
        .fetch_one(&mut watcher)
        .await
        .unwrap();
        quiet_polls = if waiting >= count && running == 0 {
            quiet_polls + 1
        } else {
            0
        };
        if quiet_polls == 5 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the updates never queued behind the held write");
}

type UpdateAnswer = Result<tonic::Response<pb::Instance>, tonic::Status>;

/// Sends `blockers` while the write is held, until each waits in the database holding a batch
/// slot (there are four), then `queued`, which read, decide and queue for a slot; releases the
/// write and answers both, in order.
async fn held_round(
    app: &TestApp,
    blockers: Vec<(String, pb::UpdateInstanceRequest)>,
    queued: Vec<(String, pb::UpdateInstanceRequest)>,
) -> (Vec<UpdateAnswer>, Vec<UpdateAnswer>) {
    let mut db = app.db().await;
    hold_the_write(&mut db).await;
    let send = |(token, request): (String, pb::UpdateInstanceRequest)| {
        let mut client = app.instances();
        let request = authed(request, &token);
        tokio::spawn(async move { client.update_instance(request).await })
    };
    let count = i64::try_from(blockers.len()).unwrap();
    let blockers: Vec<_> = blockers.into_iter().map(send).collect();
    wait_until_queued_behind(app, count).await;
    let queued: Vec<_> = queued.into_iter().map(send).collect();
    wait_until_queued_behind(app, count).await;
    sqlx::query("COMMIT").execute(&mut db).await.unwrap();
    let mut answers = (Vec::new(), Vec::new());
    for call in blockers {
        answers.0.push(call.await.unwrap());
    }
    for call in queued {
        answers.1.push(call.await.unwrap());
    }
    answers
}

fn describing(handle: &str, description: &str) -> pb::UpdateInstanceRequest {
    update_of(
        handle,
        pb::Instance {
            description: description.into(),
            ..Default::default()
        },
        &["description"],
    )
}

#[tokio::test]
async fn updates_of_distinct_instances_are_written_together_each_as_if_alone() {
    let (app, alice, bob) = world().await;
    for n in 0..16 {
        create_openai_instance_on(
            &app.channel,
            &alice,
            "alice",
            &format!("i{n}"),
            "https://api.openai.com/v1/embeddings".into(),
        )
        .await;
    }
    for n in 8..10 {
        grant_share(&app, "alice", &format!("i{n}"), "bob", "writer").await;
    }
    let kept_key = stored_key(&app, "alice", "i4").await;
    let as_alice = |handle: String, round: usize| {
        let description = format!("{handle} described {round}");
        (alice.clone(), describing(&handle, &description))
    };

    // 1. Four updates take every batch slot and wait in the database; the others (alice's,
    // bob's as a writer, one replacing a key) queue, and go together once the slots free. The
    // test sees the queue only through the database, so a call slower to reach it than the
    // test to release may still go alone: the round is repeated until some went together.
    let mut db = app.db().await;
    let mut rounds = 0;
    loop {
        let round = rounds;
        rounds += 1;
        let blockers = (0..4).map(|n| as_alice(format!("i{n}"), round)).collect();
        let mut queued: Vec<_> = (4..8).map(|n| as_alice(format!("i{n}"), round)).collect();
        for n in 8..10 {
            let description = format!("i{n} described {round}");
            queued.push((bob.clone(), describing(&format!("i{n}"), &description)));
        }
        let new_key = random_api_key();
        queued.push((
            alice.clone(),
            update_of(
                "i10",
                pb::Instance {
                    api_key: new_key.clone(),
                    ..Default::default()
                },
                &["api_key"],
            ),
        ));
        // Sent out of id order: each answer must still be its own update's.
        queued.reverse();
        let (first, then) = held_round(&app, blockers, queued).await;
        let sent_order = (0..4).chain((4..11).rev());
        for (n, answer) in sent_order.zip(first.into_iter().chain(then)) {
            let updated = answer.expect("written").into_inner();
            let name = format!("users/alice/instances/i{n}");
            assert_eq!(updated.name, name);
            let stored = get_instance(&app, &alice, &name).await.unwrap();
            assert_eq!(stored.etag, updated.etag, "answered as stored");
            if n == 10 {
                assert!(updated.has_api_key);
            } else {
                assert_eq!(updated.description, format!("i{n} described {round}"));
                assert_eq!(stored.description, updated.description);
            }
        }
        assert_eq!(
            stored_key(&app, "alice", "i10").await.as_deref(),
            Some(new_key.as_str())
        );
        assert_eq!(
            stored_key(&app, "alice", "i4").await,
            kept_key,
            "the other rows keep their keys"
        );
        // One success event per update, by its caller.
        for n in 0..11 {
            let resource = format!("users/alice/instances/i{n}");
            let events = audit_events(&app, &alice, &resource).await;
            let written: Vec<_> = events
                .iter()
                .filter(|e| e.method.ends_with("/UpdateInstance") && e.outcome == "OK")
                .collect();
            assert_eq!(written.len(), rounds, "{resource}: {events:?}");
            let caller = if (8..10).contains(&n) { "bob" } else { "alice" };
            assert!(
                written.iter().all(|e| e.caller.ends_with(caller)),
                "{written:?}"
            );
        }
        // Several committed in one transaction?
        let (together,): (i64,) = sqlx::query_as(
            "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM audit_events \
             WHERE method LIKE '%/UpdateInstance' AND outcome = 'OK' GROUP BY xmin::text) t",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        if together > 1 {
            break;
        }
        assert!(
            rounds < 5,
            "no update was group-committed in {rounds} rounds"
        );
    }

    // 2. A row the database refuses (an unknown API standard) fails its whole batch: nothing of
    // it is written, and each of the others is written alone.
    let refused_key = stored_key(&app, "alice", "i11").await;
    let blockers = (0..4).map(|n| as_alice(format!("i{n}"), rounds)).collect();
    let mut queued: Vec<_> = (12..16)
        .map(|n| as_alice(format!("i{n}"), rounds))
        .collect();
    queued.insert(
        2,
        (
            alice.clone(),
            update_of(
                "i11",
                pb::Instance {
                    api_standard: "nope".into(),
                    api_key: random_api_key(),
                    ..Default::default()
                },
                &["api_standard", "api_key"],
            ),
        ),
    );
    let (first, then) = held_round(&app, blockers, queued).await;
    assert!(first.into_iter().all(|answer| answer.is_ok()));
    let mut then = then.into_iter();
    for n in 12..16 {
        if n == 14 {
            let refused = assert_code(then.next().unwrap(), Code::InvalidArgument);
            assert!(
                refused.message().contains("apiStandards/nope"),
                "{refused:?}"
            );
        }
        let updated = then.next().unwrap().expect("written").into_inner();
        assert_eq!(updated.description, format!("i{n} described {rounds}"));
    }
    let stored = get_instance(&app, &alice, "users/alice/instances/i11")
        .await
        .unwrap();
    assert_eq!(
        stored.api_standard, "apiStandards/openai",
        "nothing written"
    );
    assert_eq!(stored_key(&app, "alice", "i11").await, refused_key);
    let events = audit_events(&app, &alice, "users/alice/instances/i11").await;
    assert!(
        !events
            .iter()
            .any(|e| e.method.ends_with("/UpdateInstance") && e.outcome == "OK"),
        "{events:?}"
    );
}
