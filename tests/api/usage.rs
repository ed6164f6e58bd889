//! The usage ledger (`UsageService.ListUsage`) against the audit trail it must agree with, what
//! each role reads of it, its filters and pages, and the retention sweep removing old audit
//! events and ledger rows in batches while the server serves.

use std::time::Duration;

use llm_registry::{
    metrics::{TableLabel, metrics},
    pb::v1::{self as pb, usage_service_client::UsageServiceClient},
};
use tonic::{Code, Request};

use crate::{
    embed::Fixture,
    fake_provider::{Behaviour, Flavor, error_body},
    helpers::{
        TestApp, acting, assert_code, assert_invalid_field, authed, create_service_account_on,
        share,
    },
};

/// Every ledger row of `instance` that `token`'s caller may read, walking the pages.
pub async fn list_usage(app: &TestApp, token: &str, instance: &str) -> Vec<pb::UsageRow> {
    list_all(
        app,
        pb::ListUsageRequest {
            instance: instance.to_owned(),
            ..Default::default()
        },
        |request| authed(request, token),
    )
    .await
    .expect("ListUsage")
}

async fn list_all(
    app: &TestApp,
    request: pb::ListUsageRequest,
    wrap: impl Fn(pb::ListUsageRequest) -> Request<pb::ListUsageRequest>,
) -> Result<Vec<pb::UsageRow>, tonic::Status> {
    let mut client = UsageServiceClient::new(app.channel.clone());
    let mut rows = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_usage(wrap(pb::ListUsageRequest {
                page_token: page_token.clone(),
                ..request.clone()
            }))
            .await?
            .into_inner();
        rows.extend(page.rows);
        if page.next_page_token.is_empty() {
            return Ok(rows);
        }
        page_token = page.next_page_token;
    }
}

/// (subject, caller, requests, succeeded, failed) of each row, in the ledger's order.
fn summary(rows: &[pb::UsageRow]) -> Vec<(String, String, i64, i64, i64)> {
    rows.iter()
        .map(|r| {
            (
                r.subject.clone(),
                r.caller.clone(),
                r.requests,
                r.succeeded,
                r.failed,
            )
        })
        .collect()
}

#[tokio::test]
async fn the_ledger_agrees_with_the_audit_trail_and_each_role_reads_what_it_should() {
    let f = Fixture::start(Flavor::OpenAi, 8).await;
    let app = &f.app;
    let bob = app.create_user("bob").await;
    let carol = app.create_user("carol").await;
    let dave = app.create_user("dave").await;
    share(app, &f.alice, &f.instance, "bob", pb::Role::Reader)
        .await
        .unwrap();
    share(app, &f.alice, &f.instance, "carol", pb::Role::Owner)
        .await
        .unwrap();
    let indexer = create_service_account_on(
        &app.channel,
        &app.admin_token,
        "indexer",
        &[pb::ServiceAccountPermission::ActAsUser],
        &["bob"],
    )
    .await;
    let embed = |request: Request<pb::EmbedRequest>| {
        let mut client = app.embeddings();
        async move { client.embed(request).await }
    };
    let body = || pb::EmbedRequest {
        name: f.instance.clone(),
        inputs: vec!["one two".into()],
        input_type: 0,
    };
    for _ in 0..2 {
        embed(authed(body(), &f.alice)).await.unwrap();
    }
    for _ in 0..3 {
        embed(authed(body(), &bob)).await.unwrap();
    }
    // One of bob's calls fails at the provider: a request, failed.
    f.fake.script([Behaviour::Status {
        status: 400,
        body: error_body(Flavor::OpenAi, "bad input").to_string(),
        retry_after: None,
    }]);
    embed(authed(body(), &bob)).await.unwrap_err();
    for _ in 0..2 {
        embed(acting(body(), &indexer, "bob")).await.unwrap();
    }
    embed(authed(body(), &carol)).await.unwrap();
    // A stranger's refused call is on the trail, but it is not a use of the instance.
    assert_code(embed(authed(body(), &dave)).await, Code::NotFound);

    let admin_rows = list_usage(app, &app.admin_token, &f.instance).await;
    assert_eq!(
        summary(&admin_rows),
        [
            ("users/alice".into(), "users/alice".into(), 2, 2, 0),
            (
                "users/bob".into(),
                "serviceAccounts/indexer".into(),
                2,
                2,
                0
            ),
            ("users/bob".into(), "users/bob".into(), 4, 3, 1),
            ("users/carol".into(), "users/carol".into(), 1, 1, 0),
        ]
    );
    assert!(admin_rows.iter().all(|r| r.instance == f.instance));
    // Two tokens per call as the fake counts them, for the calls that succeeded.
    assert_eq!(admin_rows[2].input_tokens, 6);

    // The ledger and the trail's use events agree, per day, instance, subject and caller.
    let mut db = app.db().await;
    let from_trail: Vec<(String, String, String, i64, i64)> = sqlx::query_as(
        "SELECT resource, coalesce(subject, caller), caller, count(*), \
                count(*) FILTER (WHERE outcome = 'OK') \
         FROM audit_events \
         WHERE method IN ('EmbeddingService/Embed', 'EmbeddingService/TestInstance') \
           AND detail LIKE '%latency_ms=%' \
         GROUP BY (time AT TIME ZONE 'UTC')::date, 1, 2, 3 ORDER BY 1, 2, 3",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    let from_ledger: Vec<(String, String, String, i64, i64)> = admin_rows
        .iter()
        .map(|r| {
            (
                r.instance.clone(),
                r.subject.clone(),
                r.caller.clone(),
                r.requests,
                r.succeeded,
            )
        })
        .collect();
    assert_eq!(from_trail, from_ledger);
    let refusals: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events \
         WHERE method = 'EmbeddingService/Embed' AND caller = 'users/dave'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(
        refusals, 1,
        "the refusal is on the trail, not in the ledger"
    );

    // Owner and co-owner read every row; bob his own (also through the account acting for
    // him); a stranger learns nothing of the instance.
    assert_eq!(list_usage(app, &f.alice, &f.instance).await, admin_rows);
    assert_eq!(list_usage(app, &carol, &f.instance).await, admin_rows);
    let bobs = list_usage(app, &bob, &f.instance).await;
    assert_eq!(bobs, admin_rows[1..3].to_vec());
    let as_bob = list_all(app, pb::ListUsageRequest::default(), |request| {
        acting(request, &indexer, "bob")
    })
    .await
    .unwrap();
    assert_eq!(as_bob, bobs);
    let hidden = list_all(
        app,
        pb::ListUsageRequest {
            instance: f.instance.clone(),
            ..Default::default()
        },
        |request| authed(request, &dave),
    )
    .await;
    assert_code(hidden, Code::NotFound);
    let nothing = list_all(app, pb::ListUsageRequest::default(), |request| {
        authed(request, &dave)
    })
    .await
    .unwrap();
    assert!(nothing.is_empty());

    // Filters and pages.
    let by_caller = list_all(
        app,
        pb::ListUsageRequest {
            caller: "serviceAccounts/indexer".into(),
            ..Default::default()
        },
        |request| authed(request, &f.alice),
    )
    .await
    .unwrap();
    assert_eq!(by_caller, admin_rows[1..2].to_vec());
    let today = admin_rows[0].day.clone();
    let tomorrow = (chrono::NaiveDate::parse_from_str(&today, "%Y-%m-%d").unwrap()
        + chrono::Duration::days(1))
    .to_string();
    let later = list_all(
        app,
        pb::ListUsageRequest {
            start_day: tomorrow.clone(),
            ..Default::default()
        },
        |request| authed(request, &f.alice),
    )
    .await
    .unwrap();
    assert!(later.is_empty());
    let within = list_all(
        app,
        pb::ListUsageRequest {
            start_day: today.clone(),
            end_day: today.clone(),
            page_size: 1,
            ..Default::default()
        },
        |request| authed(request, &f.alice),
    )
    .await
    .unwrap();
    assert_eq!(within, admin_rows, "pages of one walk every row in order");
    assert_invalid_field(
        list_all(
            app,
            pb::ListUsageRequest {
                start_day: tomorrow,
                end_day: today,
                ..Default::default()
            },
            |request| authed(request, &f.alice),
        )
        .await,
        "end_day",
    );
    assert_invalid_field(
        list_all(
            app,
            pb::ListUsageRequest {
                start_day: "yesterday".into(),
                ..Default::default()
            },
            |request| authed(request, &f.alice),
        )
        .await,
        "start_day",
    );
}

fn batches(table: &'static str) -> u64 {
    metrics()
        .retention_batches
        .get_or_create(&TableLabel { table })
        .get()
}

#[tokio::test]
async fn retention_removes_only_old_rows_in_batches_while_serving() {
    let app = TestApp::spawn_with(|settings| {
        settings.retention.audit_days = Some(30);
        settings.retention.usage_days = Some(30);
        settings.retention.sweep_every = Duration::from_millis(500);
        settings.retention.batch_rows = 10;
    })
    .await;
    let mut db = app.db().await;
    let audit_batches = batches("audit_events");
    let usage_batches = batches("usage_daily");
    sqlx::query(
        "INSERT INTO audit_events (time, caller, method, resource, outcome) \
         SELECT now() - make_interval(days => d), 'admin', 'Old/Call', 'users/x', 'OK' \
         FROM generate_series(1, 40) AS g(n), LATERAL (SELECT CASE WHEN n <= 35 THEN 40 ELSE 20 END AS d) x",
    )
    .execute(&mut db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO usage_daily (day, instance, instance_owner, subject, caller, requests, \
                                  succeeded, failed, input_tokens, input_tokens_estimated) \
         SELECT current_date - CASE WHEN n <= 25 THEN 40 ELSE 10 END, 'users/x/instances/i' || n, \
                'x', 'users/x', 'users/x', 1, 1, 0, 0, 0 \
         FROM generate_series(1, 28) AS n",
    )
    .execute(&mut db)
    .await
    .unwrap();

    // The server keeps serving while it sweeps.
    let mut left = (0, 0);
    for i in 0..100 {
        app.create_user(&format!("user-{i}")).await;
        left = sqlx::query_as::<_, (i64, i64)>(
            "SELECT (SELECT count(*) FROM audit_events WHERE method = 'Old/Call' \
                     AND time < now() - interval '30 days'), \
                    (SELECT count(*) FROM usage_daily WHERE day < current_date - 30)",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        if left == (0, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, (0, 0), "old rows are gone");
    let kept: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM audit_events WHERE method = 'Old/Call'), \
                (SELECT count(*) FROM usage_daily)",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(kept, (5, 3), "rows within the retention stay");
    let recent_users: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE method = 'UserService/CreateUser'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert!(recent_users >= 1, "new events stay");
    // 35 old events in batches of at most 10, 25 old ledger rows likewise.
    assert!(batches("audit_events") - audit_batches >= 4);
    assert!(batches("usage_daily") - usage_batches >= 3);
}
