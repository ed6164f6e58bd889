//! Quotas on shares and budgets on instances, against fake providers over real HTTPS and two
//! replicas on one database: a grantee's quota holds exactly under concurrency, resets with its
//! window, does not limit the owner; an instance's budget limits everyone; token limits settle
//! to the provider's count (OpenAI, Cohere) or the estimate (Gemini); no provider call is made
//! without a reservation; who may set what.

use std::time::Duration;

use futures_util::future::join_all;
use llm_registry::{
    config::ServeSettings,
    pb::v1::{self as pb, sharing_service_client::SharingServiceClient},
};
use prost_types::FieldMask;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::{
    db_proxy::Proxy,
    embed::{Fixture, texts},
    fake_provider::{FakeProvider, Flavor},
    helpers::{
        TestApp, assert_code, assert_invalid_field, authed, random_api_key, reason, trust_fakes,
    },
};

pub fn limit(metric: pb::QuotaMetric, period: pb::QuotaPeriod, limit: i64) -> pb::QuotaLimit {
    pb::QuotaLimit {
        metric: metric as i32,
        period: period as i32,
        limit,
    }
}

pub fn quota(limits: Vec<pb::QuotaLimit>) -> pb::Quota {
    pb::Quota { limits }
}

/// A quota of one limit.
pub fn one_limit(metric: pb::QuotaMetric, period: pb::QuotaPeriod, value: i64) -> pb::Quota {
    quota(vec![limit(metric, period, value)])
}

/// Shares `instance` with `grantee` as a reader, with `quota` if given.
pub async fn share_with_quota(
    app: &TestApp,
    token: &str,
    instance: &str,
    grantee: &str,
    quota: Option<pb::Quota>,
) -> Result<pb::Share, Status> {
    SharingServiceClient::new(app.channel.clone())
        .share_instance(authed(
            pb::ShareInstanceRequest {
                name: instance.to_owned(),
                grantee: format!("users/{grantee}"),
                role: pb::Role::Reader as i32,
                quota,
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// Sets (or with `None`, removes) the budget of `instance`.
pub async fn set_budget(
    app: &TestApp,
    token: &str,
    instance: &str,
    budget: Option<pb::Quota>,
) -> Result<pb::Instance, Status> {
    app.instances()
        .update_instance(authed(
            pb::UpdateInstanceRequest {
                instance: Some(pb::Instance {
                    name: instance.to_owned(),
                    quota: budget,
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["quota".into()],
                }),
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn embed_as(app: &TestApp, token: &str, instance: &str, text: &str) -> Result<(), Status> {
    app.embeddings()
        .embed(authed(
            pb::EmbedRequest {
                name: instance.to_owned(),
                inputs: vec![text.to_owned()],
                input_type: pb::EmbeddingInputType::Document as i32,
            },
            token,
        ))
        .await
        .map(|_| ())
}

/// The slot of input tokens per day in a counter row (`(metric - 1) * 4 + period`).
const TOKENS_PER_DAY: i32 = 7;

/// Waits until the counter of the only instance's budget (`grantee` "") or of a grantee's
/// share, at `slot`, reads `expected` (settlements are written after the calls' answers);
/// answers what it read last.
async fn counter_settles_to(app: &TestApp, grantee: &str, slot: i32, expected: i64) -> i64 {
    let mut db = app.db().await;
    let mut seen = -1;
    for _ in 0..100 {
        seen = sqlx::query_scalar(
            "SELECT c.used[$2] FROM quota_counters c \
             WHERE c.grantee_id = \
               CASE WHEN $1 = '' THEN 0 ELSE (SELECT id FROM users WHERE handle = $1) END",
        )
        .bind(grantee)
        .bind(slot)
        .fetch_one(&mut db)
        .await
        .expect("the counter exists");
        if seen == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    seen
}

/// Asserts a QUOTA_EXCEEDED refusal naming this limit, with a retry delay of at most `within`.
#[track_caller]
fn assert_exceeded(status: &Status, scope: &str, metric: &str, period: &str, limit: i64) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(status), "QUOTA_EXCEEDED");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.metadata.get("scope").map(String::as_str), Some(scope));
    assert_eq!(
        info.metadata.get("metric").map(String::as_str),
        Some(metric)
    );
    assert_eq!(
        info.metadata.get("period").map(String::as_str),
        Some(period)
    );
    assert_eq!(info.metadata.get("limit"), Some(&limit.to_string()));
    assert!(status.get_details_retry_info().is_some(), "RetryInfo");
}

/// A server that trusts the fakes and runs 64 provider calls of one caller and instance at once,
/// so that only quotas refuse the tests' bursts.
fn roomy(settings: &mut ServeSettings) {
    trust_fakes(settings);
    settings.providers.calls_per_caller = 64;
    settings.providers.max_concurrent_calls = 128;
    settings.providers.concurrency_per_instance = 64;
}

fn retry_delay(status: &Status) -> Duration {
    status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .expect("a retry delay")
}

/// Waits, if need be, until the current UTC minute has at least `seconds` left, so that a test
/// of a one-minute window does not straddle two.
async fn with_seconds_left_in_minute(seconds: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let into_minute = now.as_secs() % 60;
    if 60 - into_minute < seconds {
        tokio::time::sleep(Duration::from_secs(60 - into_minute + 1)).await;
    }
}

#[tokio::test]
async fn a_grantees_quota_holds_exactly_across_replicas_resets_with_its_minute_and_spares_the_owner()
 {
    let f = Fixture::start_with(Flavor::OpenAi, 8, roomy).await;
    let bob = f.app.create_user("bob").await;
    let share = share_with_quota(
        &f.app,
        &f.alice,
        &f.instance,
        "bob",
        Some(one_limit(
            pb::QuotaMetric::Requests,
            pb::QuotaPeriod::Minute,
            10,
        )),
    )
    .await
    .unwrap();
    assert_eq!(share.quota.as_ref().map(|q| q.limits.len()), Some(1));
    let replica = f.app.replica_with(roomy).await;

    with_seconds_left_in_minute(20).await;
    let calls = (0..64).map(|i| {
        let app = if i % 2 == 0 { &f.app } else { &replica };
        embed_as(app, &bob, &f.instance, "one two")
    });
    let results = join_all(calls).await;
    let passed = results.iter().filter(|r| r.is_ok()).count();
    let refused: Vec<&Status> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(passed, 10, "exactly the quota passes: {refused:?}");
    assert_eq!(refused.len(), 54);
    for status in &refused {
        assert_exceeded(status, "share", "requests", "minute", 10);
        assert!(retry_delay(status) <= Duration::from_secs(60));
    }
    assert_eq!(f.fake.request_count(), 10, "refused calls send nothing");

    // The owner is not held to bob's quota.
    for _ in 0..3 {
        f.embed_own(&texts(1)).await.unwrap();
    }
    // Nor is bob's next call let through while the minute lasts.
    let again = embed_as(&replica, &bob, &f.instance, "one")
        .await
        .unwrap_err();
    assert_exceeded(&again, "share", "requests", "minute", 10);

    // Once the minute is over, bob's calls pass again.
    tokio::time::sleep(retry_delay(&again) + Duration::from_millis(500)).await;
    embed_as(&replica, &bob, &f.instance, "one").await.unwrap();
    embed_as(&f.app, &bob, &f.instance, "one").await.unwrap();
}

/// A budget of 10 input tokens a day, spent by the owner and a grantee together: each call of
/// "a b c" (3 tokens as the fakes count, 2 as estimated from its 5 bytes) is settled to what
/// the provider reported, or to the estimate where it reports none.
async fn token_budget(flavor: Flavor, reported: bool) {
    let f = Fixture::start(flavor, 8).await;
    let bob = f.app.create_user("bob").await;
    share_with_quota(&f.app, &f.alice, &f.instance, "bob", None)
        .await
        .unwrap();
    let budget = one_limit(pb::QuotaMetric::InputTokens, pb::QuotaPeriod::Day, 10);
    let shown = set_budget(&f.app, &f.alice, &f.instance, Some(budget.clone()))
        .await
        .unwrap();
    assert_eq!(shown.quota, Some(budget));
    let per_call = if reported { 3 } else { 2 };

    embed_as(&f.app, &f.alice, &f.instance, "a b c")
        .await
        .unwrap();
    let mut spent = per_call;
    assert_eq!(
        counter_settles_to(&f.app, "", TOKENS_PER_DAY, spent).await,
        spent,
        "settled to the charge"
    );
    // Each call reserves its estimate (2) first: it passes while that fits what is left.
    let mut turn = 0;
    let refusal = loop {
        let token = if turn % 2 == 0 { &bob } else { &f.alice };
        turn += 1;
        match embed_as(&f.app, token, &f.instance, "a b c").await {
            Ok(()) => spent += per_call,
            Err(status) => break status,
        }
        assert_eq!(
            counter_settles_to(&f.app, "", TOKENS_PER_DAY, spent).await,
            spent
        );
        assert!(turn < 20, "the budget never refused");
    };
    assert!(
        spent + 2 > 10,
        "refused only when the estimate no longer fit ({spent})"
    );
    assert!(
        spent <= 10 + 1,
        "settled charges overshoot by at most the estimate's error"
    );
    assert_exceeded(&refusal, "instance", "input_tokens", "day", 10);
    assert_eq!(
        counter_settles_to(&f.app, "", TOKENS_PER_DAY, spent).await,
        spent,
        "a refused call takes nothing"
    );
    // The budget limits everyone: the owner too.
    let owner = embed_as(&f.app, &f.alice, &f.instance, "a b c")
        .await
        .unwrap_err();
    assert_exceeded(&owner, "instance", "input_tokens", "day", 10);
    // Lifting the budget through another replica shows at once on this one (whose read cache
    // held the instance with its budget).
    let replica = f.app.replica_with(trust_fakes).await;
    set_budget(&replica, &f.alice, &f.instance, None)
        .await
        .unwrap();
    embed_as(&f.app, &bob, &f.instance, "a b c").await.unwrap();
    spent += per_call;

    let rows = crate::usage::list_usage(&f.app, &f.alice, &f.instance).await;
    let (tokens, estimated): (i64, i64) = rows.iter().fold((0, 0), |(t, e), row| {
        (t + row.input_tokens, e + row.input_tokens_estimated)
    });
    if reported {
        assert_eq!((tokens, estimated), (spent, 0));
    } else {
        assert_eq!(
            (tokens, estimated),
            (0, spent),
            "Gemini's tokens are estimated"
        );
    }
}

#[tokio::test]
async fn token_budgets_settle_to_openais_reported_count() {
    token_budget(Flavor::OpenAi, true).await;
}

#[tokio::test]
async fn token_budgets_settle_to_coheres_reported_count() {
    token_budget(Flavor::Cohere, true).await;
}

#[tokio::test]
async fn token_budgets_charge_the_estimate_where_gemini_reports_none() {
    token_budget(Flavor::Gemini, false).await;
}

#[tokio::test]
async fn test_instance_counts_against_the_budget_and_not_the_grantees_quota() {
    let f = Fixture::start(Flavor::OpenAi, 8).await;
    let bob = f.app.create_user("bob").await;
    crate::helpers::share(&f.app, &f.alice, &f.instance, "bob", pb::Role::Writer)
        .await
        .unwrap();
    let one_a_day = |n| one_limit(pb::QuotaMetric::Requests, pb::QuotaPeriod::Day, n);
    SharingServiceClient::new(f.app.channel.clone())
        .share_instance(authed(
            pb::ShareInstanceRequest {
                name: f.instance.clone(),
                grantee: "users/bob".into(),
                role: pb::Role::Writer as i32,
                quota: Some(one_a_day(1)),
            },
            &f.alice,
        ))
        .await
        .unwrap();
    set_budget(&f.app, &f.alice, &f.instance, Some(one_a_day(3)))
        .await
        .unwrap();
    let test = |token: String| {
        let app = &f.app;
        let instance = f.instance.clone();
        async move {
            app.embeddings()
                .test_instance(authed(pb::TestInstanceRequest { name: instance }, &token))
                .await
        }
    };
    // Bob's quota of one does not count his tests; the budget of three does.
    test(bob.clone()).await.unwrap();
    test(bob.clone()).await.unwrap();
    embed_as(&f.app, &bob, &f.instance, "x").await.unwrap();
    let refused = test(bob.clone()).await.unwrap_err();
    assert_exceeded(&refused, "instance", "requests", "day", 3);
    assert_eq!(f.fake.request_count(), 3);
}

#[tokio::test]
async fn no_provider_call_is_made_without_a_reservation() {
    let fake = FakeProvider::start(Flavor::OpenAi, 8).await;
    let (app, proxy) = Proxy::spawn_behind(trust_fakes).await;
    let alice = app.create_user("alice").await;
    app.instances()
        .create_instance(authed(
            pb::CreateInstanceRequest {
                parent: "users/alice".into(),
                instance_id: "emb".into(),
                instance: Some(pb::Instance {
                    endpoint: fake.endpoint(),
                    api_standard: "openai".into(),
                    model: "text-embedding-3-small".into(),
                    dimensions: Some(8),
                    api_key: random_api_key(),
                    // Small enough that no reservation takes a lease along: every call asks
                    // the database.
                    quota: Some(one_limit(
                        pb::QuotaMetric::Requests,
                        pb::QuotaPeriod::Month,
                        10,
                    )),
                    ..Default::default()
                }),
            },
            &alice,
        ))
        .await
        .unwrap();
    let instance = "users/alice/instances/emb";
    embed_as(&app, &alice, instance, "warm").await.unwrap();
    assert_eq!(fake.request_count(), 1);

    // The next call finds the instance (from the read cache or the database) and waits for
    // its reservation behind a lock the test holds; then the database goes away.
    let mut holder = app.db().await;
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("SELECT used FROM quota_counters FOR UPDATE")
        .execute(&mut holder)
        .await
        .unwrap();
    let waiting = {
        let app_channel = app.channel.clone();
        let alice = alice.clone();
        tokio::spawn(async move {
            pb::embedding_service_client::EmbeddingServiceClient::new(app_channel)
                .embed(authed(
                    pb::EmbedRequest {
                        name: instance.into(),
                        inputs: vec!["held".into()],
                        input_type: 0,
                    },
                    &alice,
                ))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.cut().await;
    let stopped = waiting.await.unwrap().unwrap_err();
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    assert_eq!(stopped.code(), Code::Unavailable, "{stopped:?}");
    // And while it is away, calls are refused before anything is sent.
    let away = embed_as(&app, &alice, instance, "away").await.unwrap_err();
    assert_eq!(away.code(), Code::Unavailable, "{away:?}");
    assert_eq!(
        fake.request_count(),
        1,
        "nothing was sent without a reservation"
    );

    proxy.restore();
    let mut healed = false;
    for _ in 0..50 {
        if embed_as(&app, &alice, instance, "back").await.is_ok() {
            healed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(healed, "calls pass again once the database is back");
}

#[tokio::test]
async fn owners_set_quotas_writers_may_not_and_grantees_read_their_own() {
    let f = Fixture::start(Flavor::OpenAi, 8).await;
    let bob = f.app.create_user("bob").await;
    let carol = f.app.create_user("carol").await;
    let ten = one_limit(pb::QuotaMetric::Requests, pb::QuotaPeriod::Hour, 10);

    // Bad limits are named field by field.
    let bad = quota(vec![
        limit(pb::QuotaMetric::Unspecified, pb::QuotaPeriod::Hour, 1),
        limit(pb::QuotaMetric::Requests, pb::QuotaPeriod::Hour, 0),
    ]);
    assert_invalid_field(
        share_with_quota(&f.app, &f.alice, &f.instance, "bob", Some(bad.clone())).await,
        "quota.limits[0].metric",
    );
    assert_invalid_field(
        set_budget(&f.app, &f.alice, &f.instance, Some(bad)).await,
        "instance.quota.limits[1].limit",
    );

    // Bob reads his own share's quota; changing only the role keeps it; an empty quota
    // removes it.
    share_with_quota(&f.app, &f.alice, &f.instance, "bob", Some(ten.clone()))
        .await
        .unwrap();
    let share_name = format!("{}/shares/bob", f.instance);
    let get = |token: String, name: String| {
        let channel = f.app.channel.clone();
        async move {
            SharingServiceClient::new(channel)
                .get_share(authed(pb::GetShareRequest { name }, &token))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    assert_eq!(
        get(bob.clone(), share_name.clone()).await.unwrap().quota,
        Some(ten.clone())
    );
    let role_only = crate::helpers::share(&f.app, &f.alice, &f.instance, "bob", pb::Role::Writer)
        .await
        .unwrap();
    assert_eq!(
        role_only.quota,
        Some(ten.clone()),
        "a role change keeps the quota"
    );

    // Carol, a reader, may not read bob's share; a stranger learns nothing.
    share_with_quota(&f.app, &f.alice, &f.instance, "carol", None)
        .await
        .unwrap();
    assert_code(
        get(carol.clone(), share_name.clone()).await,
        Code::PermissionDenied,
    );
    let dave = f.app.create_user("dave").await;
    assert_code(get(dave, share_name.clone()).await, Code::NotFound);

    // Bob, a writer, may edit fields but not the budget.
    let refused = set_budget(&f.app, &bob, &f.instance, Some(ten.clone()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(reason(&refused), "INSUFFICIENT_ROLE");
    set_budget(&f.app, &f.alice, &f.instance, Some(ten.clone()))
        .await
        .unwrap();
    // Sending the budget back unchanged with a field edit is not a budget change.
    let instance = crate::helpers::get_instance(&f.app, &bob, &f.instance)
        .await
        .unwrap();
    assert_eq!(instance.quota, Some(ten.clone()), "readers see the budget");
    f.app
        .instances()
        .update_instance(authed(
            pb::UpdateInstanceRequest {
                instance: Some(pb::Instance {
                    description: "edited by bob".into(),
                    ..instance
                }),
                update_mask: None,
            },
            &bob,
        ))
        .await
        .unwrap();

    let cleared = SharingServiceClient::new(f.app.channel.clone())
        .share_instance(authed(
            pb::ShareInstanceRequest {
                name: f.instance.clone(),
                grantee: "users/bob".into(),
                role: pb::Role::Writer as i32,
                quota: Some(pb::Quota::default()),
            },
            &f.alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cleared.quota, None, "an empty quota removes it");
    let removed = set_budget(&f.app, &f.alice, &f.instance, Some(pb::Quota::default()))
        .await
        .unwrap();
    assert_eq!(removed.quota, None);
    // Every quota change is on the audit trail.
    let events = crate::helpers::audit_events(&f.app, &f.alice, &f.instance).await;
    assert!(
        events
            .iter()
            .any(|e| e.detail.contains("quota 10 requests/hour")),
        "{events:?}"
    );
    assert!(events.iter().any(|e| e.detail.contains("no quota")));
}

#[tokio::test]
async fn a_service_account_acting_for_a_grantee_spends_the_grantees_quota() {
    let f = Fixture::start(Flavor::OpenAi, 8).await;
    let bob = f.app.create_user("bob").await;
    share_with_quota(
        &f.app,
        &f.alice,
        &f.instance,
        "bob",
        Some(one_limit(
            pb::QuotaMetric::Requests,
            pb::QuotaPeriod::Day,
            2,
        )),
    )
    .await
    .unwrap();
    let indexer = crate::helpers::create_service_account_on(
        &f.app.channel,
        &f.app.admin_token,
        "indexer",
        &[pb::ServiceAccountPermission::ActAsUser],
        &["bob"],
    )
    .await;
    let as_bob = || {
        crate::helpers::acting(
            pb::EmbedRequest {
                name: f.instance.clone(),
                inputs: vec!["x".into()],
                input_type: 0,
            },
            &indexer,
            "bob",
        )
    };
    f.app.embeddings().embed(as_bob()).await.unwrap();
    embed_as(&f.app, &bob, &f.instance, "x").await.unwrap();
    // Bob's two calls of the day are spent, one of them by the account acting for him.
    let refused = f.app.embeddings().embed(as_bob()).await.unwrap_err();
    assert_exceeded(&refused, "share", "requests", "day", 2);
    let refused = embed_as(&f.app, &bob, &f.instance, "x").await.unwrap_err();
    assert_exceeded(&refused, "share", "requests", "day", 2);
    assert_eq!(f.fake.request_count(), 2);
}

/// What the counter of the instance's budget (grantee 0) reads at `slot`.
async fn budget_used(app: &TestApp, slot: i32) -> i64 {
    let mut db = app.db().await;
    sqlx::query_scalar("SELECT used[$1] FROM quota_counters WHERE grantee_id = 0")
        .bind(slot)
        .fetch_one(&mut db)
        .await
        .unwrap()
}

#[tokio::test]
async fn leases_serve_calls_without_the_database_yet_the_limit_holds_and_idle_ones_come_back() {
    let f = Fixture::start_with(Flavor::OpenAi, 8, roomy).await;
    let budget = one_limit(pb::QuotaMetric::Requests, pb::QuotaPeriod::Hour, 300);
    set_budget(&f.app, &f.alice, &f.instance, Some(budget))
        .await
        .unwrap();
    const REQUESTS_PER_HOUR: i32 = 2;

    // One call takes a lease along: a sixteenth of what is left, counted at once.
    f.embed_own(&texts(1)).await.unwrap();
    let leased = budget_used(&f.app, REQUESTS_PER_HOUR).await;
    assert_eq!(
        leased,
        1 + (300 - 1) / 16,
        "the call and its lease are counted"
    );
    // Calls served from the lease do not move the counter.
    for _ in 0..5 {
        f.embed_own(&texts(1)).await.unwrap();
    }
    assert_eq!(budget_used(&f.app, REQUESTS_PER_HOUR).await, leased);
    // Left idle, the lease comes back: the counter then reads the calls made.
    let mut returned = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        returned = budget_used(&f.app, REQUESTS_PER_HOUR).await;
        if returned == 6 {
            break;
        }
    }
    assert_eq!(returned, 6, "an idle lease is given back");

    // Two replicas with leases, in waves of 64 calls at once on each, against the 294 left:
    // never more pass; once both are refused whole waves (and idle leases are back), exactly
    // those have passed.
    let replica = f.app.replica_with(roomy).await;
    let mut passed = 0;
    let mut refused_waves = 0;
    for _ in 0..30 {
        let calls = (0..128).map(|i| {
            let app = if i % 2 == 0 { &f.app } else { &replica };
            embed_as(app, &f.alice, &f.instance, "one")
        });
        let results = join_all(calls).await;
        let ok = results.iter().filter(|r| r.is_ok()).count();
        for status in results.iter().filter_map(|r| r.as_ref().err()) {
            assert_exceeded(status, "instance", "requests", "hour", 300);
        }
        passed += ok;
        assert!(passed <= 294, "never more than the budget: {passed}");
        if ok == 0 {
            refused_waves += 1;
            if refused_waves == 2 {
                break;
            }
            // Leases left unused somewhere come back when idle.
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
    }
    assert_eq!(passed, 294, "every unit of the budget was spent");
    assert_eq!(f.fake.request_count(), 300);
    assert_eq!(budget_used(&f.app, REQUESTS_PER_HOUR).await, 300);
}

#[tokio::test]
async fn a_lowered_budget_takes_effect_at_once_despite_leases() {
    let f = Fixture::start(Flavor::OpenAi, 8).await;
    let per_hour = |n| one_limit(pb::QuotaMetric::Requests, pb::QuotaPeriod::Hour, n);
    set_budget(&f.app, &f.alice, &f.instance, Some(per_hour(1000)))
        .await
        .unwrap();
    f.embed_own(&texts(1)).await.unwrap();
    // The call took a lease along; lowered to 5, the lease is not drawn on, and what it holds
    // is still counted until it comes back.
    set_budget(&f.app, &f.alice, &f.instance, Some(per_hour(5)))
        .await
        .unwrap();
    let refused = f.embed_own(&texts(1)).await.unwrap_err();
    assert_exceeded(&refused, "instance", "requests", "hour", 5);
    assert_eq!(f.fake.request_count(), 1);
    // Once the idle lease is back, exactly the 4 calls left of the 5 pass.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut passed = 0;
    for _ in 0..8 {
        if f.embed_own(&texts(1)).await.is_ok() {
            passed += 1;
        }
    }
    assert_eq!(passed, 4);
    assert_eq!(f.fake.request_count(), 5);
}
