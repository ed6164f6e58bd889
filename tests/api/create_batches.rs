//! Group commit of instance creates: creates sent together are written by shared statements,
//! yet each gets exactly the answer it would get alone, its own key, and its own audit event.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use futures_util::future::join_all;
use llm_registry::pb::v1 as pb;
use tonic::{Code, Status};

use crate::helpers::{
    TestApp, assert_code, assert_invalid_field, authed, random_api_key, stored_key,
};

/// What one create of the burst should get.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expected {
    Created,
    /// One of two creates of the same handle wins, the other finds it taken.
    OneOfTwo,
    UnknownStandard,
    UnknownOwner,
    /// A value the database refuses (a rule it alone enforces).
    RefusedByDatabase,
}

struct Create {
    parent: &'static str,
    handle: String,
    standard: &'static str,
    api_key: Option<String>,
    from_definition: bool,
    expected: Expected,
}

async fn send(app: &TestApp, create: &Create) -> Result<pb::Instance, Status> {
    let instance = pb::Instance {
        endpoint: "https://api.example.com/v1/embeddings".into(),
        api_standard: create.standard.into(),
        model: format!("model-{}", create.handle),
        dimensions: Some(256),
        api_key: create.api_key.clone().unwrap_or_default(),
        ..Default::default()
    };
    let mut client = app.instances();
    let answer = if create.from_definition {
        client
            .create_instance_from_definition(authed(
                pb::CreateInstanceFromDefinitionRequest {
                    parent: create.parent.into(),
                    instance_id: create.handle.clone(),
                    source_definition: "_system/openai-small".into(),
                    instance: Some(pb::Instance {
                        model: instance.model,
                        api_key: instance.api_key,
                        ..Default::default()
                    }),
                },
                &app.admin_token,
            ))
            .await
    } else {
        client
            .create_instance(authed(
                pb::CreateInstanceRequest {
                    parent: create.parent.into(),
                    instance_id: create.handle.clone(),
                    instance: Some(instance),
                },
                &app.admin_token,
            ))
            .await
    };
    answer.map(tonic::Response::into_inner)
}

#[tokio::test]
async fn concurrent_creates_share_commits_and_each_gets_its_own_answer() {
    let app = TestApp::spawn().await;
    app.create_user("alice").await;
    app.create_user("bob").await;

    let mut creates = Vec::new();
    for n in 0..40 {
        creates.push(Create {
            parent: if n % 2 == 0 {
                "users/alice"
            } else {
                "users/bob"
            },
            handle: format!("burst-{n}"),
            standard: "openai",
            api_key: (n % 3 != 0).then(random_api_key),
            from_definition: n % 4 == 1,
            expected: Expected::Created,
        });
    }
    for n in 0..4 {
        for _ in 0..2 {
            creates.push(Create {
                parent: "users/alice",
                handle: format!("contended-{n}"),
                standard: "openai",
                api_key: Some(random_api_key()),
                from_definition: false,
                expected: Expected::OneOfTwo,
            });
        }
    }
    for n in 0..4 {
        creates.push(Create {
            parent: "users/alice",
            handle: format!("unknown-standard-{n}"),
            standard: "no-such-standard",
            api_key: None,
            from_definition: false,
            expected: Expected::UnknownStandard,
        });
        creates.push(Create {
            parent: "users/nobody",
            handle: format!("orphan-{n}"),
            standard: "openai",
            api_key: Some(random_api_key()),
            from_definition: false,
            expected: Expected::UnknownOwner,
        });
    }
    // Interleave the kinds, so that batches mix winners and losers.
    creates.sort_by_key(|create| {
        create
            .handle
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31) ^ u64::from(b))
    });

    let answers = join_all(creates.iter().map(|create| send(&app, create))).await;

    let mut contended_wins: HashMap<String, usize> = HashMap::new();
    let mut created = Vec::new();
    for (create, answer) in creates.iter().zip(answers) {
        match create.expected {
            Expected::Created => {
                let instance = answer.unwrap_or_else(|e| panic!("{}: {e:?}", create.handle));
                created.push((create, instance));
            }
            Expected::OneOfTwo => match answer {
                Ok(instance) => {
                    *contended_wins.entry(create.handle.clone()).or_default() += 1;
                    created.push((create, instance));
                }
                Err(status) => assert_eq!(status.code(), Code::AlreadyExists, "{status:?}"),
            },
            Expected::UnknownStandard => assert_invalid_field(answer, "instance.api_standard"),
            Expected::UnknownOwner => {
                let status = assert_code(answer, Code::NotFound);
                assert!(status.message().contains("users/nobody"), "{status:?}");
            }
            Expected::RefusedByDatabase => {
                assert_code(answer, Code::InvalidArgument);
            }
        }
    }
    assert_eq!(
        contended_wins.len(),
        4,
        "each contended handle has one winner"
    );
    assert!(contended_wins.values().all(|wins| *wins == 1));
    assert_eq!(created.len(), 44);

    // Each answer is the stored row, and each key was sealed for its own instance.
    for (create, instance) in &created {
        let (owner, handle) = (&create.parent["users/".len()..], create.handle.as_str());
        assert_eq!(
            instance.name,
            format!("{}/instances/{handle}", create.parent)
        );
        let stored = app
            .instances()
            .get_instance(authed(
                pb::GetInstanceRequest {
                    name: instance.name.clone(),
                },
                &app.admin_token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((&stored.uid, &stored.etag), (&instance.uid, &instance.etag));
        assert_eq!(stored.model, format!("model-{handle}"));
        assert_eq!(stored.has_api_key, create.api_key.is_some());
        assert_eq!(stored_key(&app, owner, handle).await, create.api_key);
    }

    let mut db = app.db().await;
    // One OK audit event per created instance, none for the creates that failed.
    let audited: Vec<String> = sqlx::query_scalar(
        "SELECT resource FROM audit_events WHERE outcome = 'OK' AND method LIKE '%CreateInstance%'",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    let expected: HashSet<String> = created.iter().map(|(_, i)| i.name.clone()).collect();
    assert_eq!(audited.len(), created.len(), "{audited:?}");
    assert_eq!(audited.into_iter().collect::<HashSet<_>>(), expected);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM instances")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(stored, 44, "nothing written for the failed creates");

    // The creates shared transactions: fewer commits than instances.
    let transactions: i64 = sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM instances")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert!(
        transactions < 44,
        "44 creates sent together were committed one by one ({transactions} transactions)"
    );
}

#[tokio::test]
async fn a_create_that_fails_its_batch_leaves_the_others_written() {
    let app = TestApp::spawn().await;
    app.create_user("alice").await;
    // A rule only the database knows (as a constraint added later might be): the statement of
    // any batch carrying this handle fails as a whole.
    let mut db = app.db().await;
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.handle = 'poison' THEN \
             RAISE EXCEPTION 'refused' USING ERRCODE = '22023'; \
         END IF; RETURN NEW; END $$; \
         CREATE TRIGGER refuse_poison BEFORE INSERT ON instances \
             FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
    )
    .execute(&mut db)
    .await
    .unwrap();

    let mut creates: Vec<Create> = (0..23)
        .map(|n| Create {
            parent: "users/alice",
            handle: format!("healthy-{n}"),
            standard: "openai",
            api_key: Some(random_api_key()),
            from_definition: false,
            expected: Expected::Created,
        })
        .collect();
    creates.insert(
        11,
        Create {
            parent: "users/alice",
            handle: "poison".into(),
            standard: "openai",
            api_key: Some(random_api_key()),
            from_definition: false,
            expected: Expected::RefusedByDatabase,
        },
    );
    let answers = join_all(creates.iter().map(|create| send(&app, create))).await;
    for (create, answer) in creates.iter().zip(answers) {
        if create.expected == Expected::RefusedByDatabase {
            // The caller's value, refused by the database: INVALID_ARGUMENT, not INTERNAL.
            assert_code(answer, Code::InvalidArgument);
        } else {
            let instance = answer.unwrap_or_else(|e| panic!("{}: {e:?}", create.handle));
            let handle = &create.handle;
            assert_eq!(instance.name, format!("users/alice/instances/{handle}"));
            assert_eq!(stored_key(&app, "alice", handle).await, create.api_key);
        }
    }
    let (instances, audited): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM instances), \
                (SELECT count(*) FROM audit_events WHERE outcome = 'OK' AND method LIKE '%CreateInstance')",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!((instances, audited), (23, 23));
}

#[tokio::test]
async fn a_stuck_batch_statement_is_cancelled_and_frees_its_slot() {
    let app = TestApp::spawn_with(|s| s.db_statement_timeout = Duration::from_millis(800)).await;
    app.create_user("alice").await;
    // A statement that would hang (as one waiting on a lock held elsewhere would): inserting
    // this handle sleeps far longer than the statement timeout.
    let mut db = app.db().await;
    sqlx::raw_sql(
        "CREATE FUNCTION stall() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.handle LIKE 'stuck-%' THEN PERFORM pg_sleep(30); END IF; \
         RETURN NEW; END $$; \
         CREATE TRIGGER stall BEFORE INSERT ON instances FOR EACH ROW EXECUTE FUNCTION stall();",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let create = |handle: String| Create {
        parent: "users/alice",
        handle,
        standard: "openai",
        api_key: Some(random_api_key()),
        from_definition: false,
        expected: Expected::Created,
    };
    // More stuck creates than batch slots: without the timeout they would hold every slot.
    let stuck: Vec<Create> = (0..6).map(|n| create(format!("stuck-{n}"))).collect();
    let started = Instant::now();
    let stuck_answers = join_all(stuck.iter().map(|c| send(&app, c)));
    let healthy: Vec<Create> = (0..8).map(|n| create(format!("healthy-{n}"))).collect();
    let healthy_answers = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        join_all(healthy.iter().map(|c| send(&app, c))).await
    };
    let (stuck_answers, healthy_answers) = tokio::join!(stuck_answers, healthy_answers);
    for answer in stuck_answers {
        // Cancelled by the database and rolled back: retryable, never INTERNAL.
        assert_code(answer, Code::Unavailable);
    }
    for answer in healthy_answers {
        answer.expect("creates beside stuck ones go through");
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let stuck_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM instances WHERE handle LIKE 'stuck-%'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(stuck_rows, 0);
}
