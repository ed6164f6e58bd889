//! Who may use an instance and on what terms: roles and existence hiding, projects as targets,
//! TestInstance's record on the instance, refusals before any byte is sent (no key, no protocol,
//! the egress guard), the per-instance limits (concurrency here, the rate across two server
//! processes), and the audit trail of every use.

use std::time::Duration;

use llm_registry::pb::v1::{self as pb, sharing_service_client::SharingServiceClient};
use tonic::Code;
use tonic_types::StatusExt;

use crate::{
    binary::{production_with_fakes, start_server, temp_home, terminate},
    embed::{Fixture, texts},
    fake_provider::{Behaviour, FakeProvider, Flavor, error_body},
    helpers::{
        TestApp, assert_code, audit_events, authed, create_database, create_project,
        create_user_on, drop_database_blocking, get_instance, random_api_key, reason, share,
        trust_fakes, unique_name, wait_until_serving,
    },
};

/// Alice's instance shared with bob (reader) and carol (writer); dave is a stranger.
async fn shared_fixture() -> (Fixture, String, String, String) {
    let f = Fixture::start(Flavor::OpenAi, 8).await;
    let bob = f.app.create_user("bob").await;
    let carol = f.app.create_user("carol").await;
    let dave = f.app.create_user("dave").await;
    share(&f.app, &f.alice, &f.instance, "bob", pb::Role::Reader)
        .await
        .unwrap();
    share(&f.app, &f.alice, &f.instance, "carol", pb::Role::Writer)
        .await
        .unwrap();
    (f, bob, carol, dave)
}

async fn test_instance(
    app: &TestApp,
    token: &str,
    name: &str,
) -> Result<pb::TestInstanceResponse, tonic::Status> {
    app.embeddings()
        .test_instance(authed(
            pb::TestInstanceRequest {
                name: name.to_owned(),
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn readers_embed_writers_test_and_strangers_learn_nothing() {
    let (f, bob, carol, dave) = shared_fixture().await;
    let doc = pb::EmbeddingInputType::Document;
    let one = texts(1);
    f.embed(&bob, &f.instance, &one, doc).await.unwrap();
    f.embed(&carol, "alice/emb", &one, doc).await.unwrap();
    f.embed(&f.app.admin_token, &f.instance, &one, doc)
        .await
        .unwrap();
    let denied = assert_code(
        test_instance(&f.app, &bob, &f.instance).await,
        Code::PermissionDenied,
    );
    assert_eq!(reason(&denied), "INSUFFICIENT_ROLE");
    test_instance(&f.app, &carol, &f.instance).await.unwrap();
    test_instance(&f.app, &f.app.admin_token, &f.instance)
        .await
        .unwrap();

    // A stranger's answer about the existing instance is the answer about a missing one.
    for (existing, missing) in [
        ("users/alice/instances/emb", "users/alice/instances/emx"),
        ("alice/emb", "alice/emx"),
    ] {
        let hidden = assert_code(f.embed(&dave, existing, &one, doc).await, Code::NotFound);
        let absent = assert_code(f.embed(&dave, missing, &one, doc).await, Code::NotFound);
        assert_eq!(
            hidden.message().replace("emb", "emx"),
            absent.message(),
            "same answer apart from the name"
        );
        let hidden = assert_code(test_instance(&f.app, &dave, existing).await, Code::NotFound);
        let absent = assert_code(test_instance(&f.app, &dave, missing).await, Code::NotFound);
        assert_eq!(hidden.message().replace("emb", "emx"), absent.message());
    }
    // Every allowed call reached the provider; no refused one did.
    assert_eq!(f.fake.request_count(), 5);
}

#[tokio::test]
async fn a_project_stands_for_its_instance_and_stays_private_to_its_owner() {
    let (f, bob, _carol, _dave) = shared_fixture().await;
    create_project(&f.app, &f.alice, "alice", "search", "emb")
        .await
        .unwrap();
    let inputs = texts(2);
    let doc = pb::EmbeddingInputType::Document;
    let response = f
        .embed(&f.alice, "users/alice/projects/search", &inputs, doc)
        .await
        .unwrap();
    assert_eq!(
        response.instance, f.instance,
        "resolved to the bound instance"
    );
    assert_eq!(response.embeddings.len(), 2);
    // Bob may use the instance, but alice's project is hers: the same NOT_FOUND as a missing one.
    let hidden = assert_code(
        f.embed(&bob, "users/alice/projects/search", &inputs, doc)
            .await,
        Code::NotFound,
    );
    let absent = assert_code(
        f.embed(&bob, "users/alice/projects/searcx", &inputs, doc)
            .await,
        Code::NotFound,
    );
    assert_eq!(
        hidden.message().replace("search", "searcx"),
        absent.message()
    );

    // Bob's own project on alice's instance works until alice revokes his share with force.
    create_project(&f.app, &bob, "bob", "mine", "alice/emb")
        .await
        .unwrap();
    f.embed(&bob, "users/bob/projects/mine", &inputs, doc)
        .await
        .unwrap();
    SharingServiceClient::new(f.app.channel.clone())
        .unshare_instance(authed(
            pb::UnshareInstanceRequest {
                name: format!("{}/shares/bob", f.instance),
                force: true,
            },
            &f.alice,
        ))
        .await
        .unwrap();
    let revoked = assert_code(
        f.embed(&bob, "users/bob/projects/mine", &inputs, doc).await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&revoked), "INSTANCE_REVOKED");
    assert_eq!(f.fake.request_count(), 2);
}

#[tokio::test]
async fn test_instance_records_its_outcome_for_every_reader_without_changing_the_etag() {
    let (f, bob, carol, _dave) = shared_fixture().await;
    let before = get_instance(&f.app, &f.alice, &f.instance).await.unwrap();
    assert!(before.last_test.is_none(), "never tested");

    let passed = test_instance(&f.app, &carol, &f.instance).await.unwrap();
    assert_eq!(passed.instance, f.instance);
    let result = passed.result.unwrap();
    assert!(result.succeeded, "{result:?}");
    assert_eq!(result.code, "OK");
    assert_eq!(result.observed_dimensions, 8);
    let probe = &f.fake.recorded()[0];
    assert_eq!(
        probe.body["input"],
        serde_json::json!(["llm-registry connectivity test"])
    );

    // A reader sees the outcome; the message (provider text) is for roles that may test.
    let seen = get_instance(&f.app, &bob, &f.instance).await.unwrap();
    assert_eq!(
        seen.last_test,
        Some(pb::InstanceTestResult {
            message: String::new(),
            ..result.clone()
        })
    );
    let seen_by_writer = get_instance(&f.app, &carol, &f.instance).await.unwrap();
    assert_eq!(seen_by_writer.last_test, Some(result));
    assert_eq!(seen.etag, before.etag, "a test is not an edit");

    // A failing provider is an answer, recorded as such, with the provider's reason.
    f.fake.script([Behaviour::Status {
        status: 401,
        body: error_body(Flavor::OpenAi, "Invalid API key").to_string(),
        retry_after: None,
    }]);
    let failed = test_instance(&f.app, &f.alice, &f.instance)
        .await
        .unwrap()
        .result
        .unwrap();
    assert!(!failed.succeeded);
    assert_eq!(failed.code, "FAILED_PRECONDITION");
    assert!(
        failed.message.contains("refused this instance's key"),
        "{failed:?}"
    );
    assert_eq!(failed.observed_dimensions, 0);
    assert_eq!(
        get_instance(&f.app, &bob, &f.instance)
            .await
            .unwrap()
            .last_test,
        Some(pb::InstanceTestResult {
            message: String::new(),
            ..failed.clone()
        })
    );
    assert_eq!(
        get_instance(&f.app, &carol, &f.instance)
            .await
            .unwrap()
            .last_test,
        Some(failed)
    );

    // Wrong dimensions: recorded with what was observed.
    f.fake.script([Behaviour::WrongDimensions(5)]);
    let mismatch = test_instance(&f.app, &f.alice, &f.instance)
        .await
        .unwrap()
        .result
        .unwrap();
    assert_eq!(mismatch.code, "FAILED_PRECONDITION");
    assert_eq!(mismatch.observed_dimensions, 5);
    assert!(
        mismatch.message.contains("expects 8 dimensions"),
        "{mismatch:?}"
    );
}

#[tokio::test]
async fn nothing_is_sent_without_a_key_a_protocol_or_an_allowed_destination() {
    let f = Fixture::start(Flavor::OpenAi, 8).await;
    let create = |id: &str, endpoint: String, standard: &str, key: Option<String>| {
        let mut instances = f.app.instances();
        let request = authed(
            pb::CreateInstanceRequest {
                parent: "users/alice".into(),
                instance_id: id.to_owned(),
                instance: Some(pb::Instance {
                    endpoint,
                    api_standard: standard.to_owned(),
                    model: "m".into(),
                    api_key: key.unwrap_or_default(),
                    ..Default::default()
                }),
            },
            &f.alice,
        );
        async move { instances.create_instance(request).await.unwrap() }
    };
    let one = texts(1);
    let doc = pb::EmbeddingInputType::Document;

    create("keyless", f.fake.endpoint(), "openai", None).await;
    let refused = assert_code(
        f.embed(&f.alice, "keyless", &one, doc).await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&refused), "NO_API_KEY");
    // Refusals before the call are errors of TestInstance too, not test results.
    let refused = assert_code(
        test_instance(&f.app, &f.alice, "users/alice/instances/keyless").await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&refused), "NO_API_KEY");

    f.app
        .standards()
        .create_api_standard(authed(
            pb::CreateApiStandardRequest {
                api_standard_id: "custom".into(),
                api_standard: Some(pb::ApiStandard {
                    auth_header: "X-Key".into(),
                    ..Default::default()
                }),
            },
            &f.app.admin_token,
        ))
        .await
        .unwrap();
    create(
        "custom",
        f.fake.endpoint(),
        "custom",
        Some(random_api_key()),
    )
    .await;
    let refused = assert_code(
        f.embed(&f.alice, "custom", &one, doc).await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&refused), "NO_EMBEDDING_PROTOCOL");

    // Plain http to a host the operator did not list.
    let plain = format!("http://localhost:{}/v1/embeddings", f.fake.addr.port());
    create("plain", plain, "openai", Some(random_api_key())).await;
    let refused = assert_code(
        f.embed(&f.alice, "plain", &one, doc).await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&refused), "PLAIN_HTTP_REFUSED");

    // The cloud metadata address, refused before any connection.
    create(
        "metadata",
        "https://169.254.169.254/v1/embeddings".into(),
        "openai",
        Some(random_api_key()),
    )
    .await;
    let started = std::time::Instant::now();
    let refused = assert_code(
        f.embed(&f.alice, "metadata", &one, doc).await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&refused), "EGRESS_REFUSED");
    assert!(refused.message().contains("169.254.169.254"), "{refused:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "no connection was tried"
    );
    assert_eq!(f.fake.request_count(), 0);
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_when_loopback_is_not_allowed() {
    // Production's default policy: no loopback. The fake listens on 127.0.0.1, reached as
    // `localhost`, which the guard sees only after resolution.
    let f = Fixture::start_with(Flavor::OpenAi, 8, |settings| {
        settings.providers.egress.allow_loopback = false;
    })
    .await;
    let refused = assert_code(f.embed_own(&texts(1)).await, Code::FailedPrecondition);
    assert_eq!(reason(&refused), "EGRESS_REFUSED");
    assert!(refused.message().contains("loopback"), "{refused:?}");
    assert_eq!(
        f.fake.request_count(),
        0,
        "no connection reached the provider"
    );
}

#[tokio::test]
async fn one_instance_runs_at_most_its_concurrency_limit() {
    let f = Fixture::start_with(Flavor::OpenAi, 8, |settings| {
        settings.providers.concurrency_per_instance = 1;
    })
    .await;
    f.fake
        .script([Behaviour::Slow(Duration::from_millis(1500))]);
    let slow = {
        let mut client = f.app.embeddings();
        let request = authed(
            pb::EmbedRequest {
                name: f.instance.clone(),
                inputs: texts(1),
                input_type: 0,
            },
            &f.alice,
        );
        tokio::spawn(async move { client.embed(request).await })
    };
    while f.fake.request_count() == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let limited = assert_code(f.embed_own(&texts(1)).await, Code::ResourceExhausted);
    assert_eq!(reason(&limited), "INSTANCE_CONCURRENCY_LIMITED");
    assert!(limited.get_details_retry_info().is_some());
    slow.await.unwrap().unwrap();
    f.embed_own(&texts(1)).await.unwrap();
}

#[tokio::test]
async fn the_rate_limit_holds_across_two_server_processes() {
    let fake = FakeProvider::start(Flavor::OpenAi, 8).await;
    let database = unique_name("llmr_test");
    create_database(&database).await;
    let admin = llm_registry::IssuedToken::generate().reveal().to_owned();
    let master = llm_registry::vault::MasterKey::generate();
    let home = temp_home();
    let start = || {
        let mut command = production_with_fakes(&home, &database, &admin, &master);
        command.env("PROVIDER_REQUESTS_PER_MINUTE", "3");
        start_server(command)
    };
    let (first, first_addr, _first_log) = start().await;
    let (second, second_addr, _second_log) = start().await;
    let first_channel = wait_until_serving(first_addr).await;
    let second_channel = wait_until_serving(second_addr).await;

    let alice = create_user_on(&first_channel, &admin, "alice").await;
    pb::llm_instance_service_client::LlmInstanceServiceClient::new(first_channel.clone())
        .create_instance(authed(
            pb::CreateInstanceRequest {
                parent: "users/alice".into(),
                instance_id: "emb".into(),
                instance: Some(pb::Instance {
                    endpoint: fake.endpoint(),
                    api_standard: "openai".into(),
                    model: "m".into(),
                    api_key: random_api_key(),
                    ..Default::default()
                }),
            },
            &alice,
        ))
        .await
        .unwrap();
    // The windows are calendar minutes: start early in one, so all calls share it.
    let second_of_minute = chrono::Utc::now().timestamp() % 60;
    if second_of_minute > 50 {
        tokio::time::sleep(Duration::from_secs((61 - second_of_minute) as u64)).await;
    }
    let embed = |channel: &tonic::transport::Channel| {
        let mut client = pb::embedding_service_client::EmbeddingServiceClient::new(channel.clone());
        let request = authed(
            pb::EmbedRequest {
                name: "users/alice/instances/emb".into(),
                inputs: vec!["hello".into()],
                input_type: 0,
            },
            &alice,
        );
        async move { client.embed(request).await }
    };
    embed(&first_channel).await.unwrap();
    embed(&second_channel).await.unwrap();
    embed(&first_channel).await.unwrap();
    // The fourth call of the minute is refused, on the process that has seen only one.
    let limited = assert_code(embed(&second_channel).await, Code::ResourceExhausted);
    assert_eq!(reason(&limited), "INSTANCE_RATE_LIMITED");
    let retry = limited
        .get_details_retry_info()
        .unwrap()
        .retry_delay
        .unwrap();
    assert!(
        retry <= Duration::from_secs(60) && retry > Duration::ZERO,
        "{retry:?}"
    );
    assert_code(embed(&first_channel).await, Code::ResourceExhausted);
    assert_eq!(
        fake.request_count(),
        3,
        "refused calls never reached the provider"
    );

    terminate(first).await;
    terminate(second).await;
    drop_database_blocking(database);
}

#[tokio::test]
async fn every_use_is_audited_once_with_counts_but_never_texts_or_vectors() {
    let (f, bob, carol, dave) = shared_fixture().await;
    create_project(&f.app, &f.alice, "alice", "search", "emb")
        .await
        .unwrap();
    let doc = pb::EmbeddingInputType::Document;
    f.embed(&bob, &f.instance, &texts(3), doc).await.unwrap();
    f.embed(&f.alice, "users/alice/projects/search", &texts(2), doc)
        .await
        .unwrap();
    f.fake.script([Behaviour::Status {
        status: 401,
        body: error_body(Flavor::OpenAi, "Invalid API key").to_string(),
        retry_after: None,
    }]);
    assert_code(
        f.embed(&bob, &f.instance, &texts(1), doc).await,
        Code::FailedPrecondition,
    );
    test_instance(&f.app, &carol, &f.instance).await.unwrap();
    assert_code(
        f.embed(&dave, &f.instance, &texts(1), doc).await,
        Code::NotFound,
    );

    // The owner sees who used her instance, how much, and how it ended.
    let trail = audit_events(&f.app, &f.alice, &f.instance).await;
    let uses: Vec<&pb::AuditEvent> = trail
        .iter()
        .filter(|e| e.method.starts_with("EmbeddingService/"))
        .collect();
    assert_eq!(uses.len(), 5, "one event per call: {uses:#?}");
    // Newest first.
    let (stranger, test, failed, by_project, by_bob) =
        (uses[0], uses[1], uses[2], uses[3], uses[4]);
    assert_eq!(by_bob.caller, "users/bob");
    assert_eq!(by_bob.method, "EmbeddingService/Embed");
    assert_eq!(by_bob.outcome, "OK");
    assert!(by_bob.detail.contains("inputs=3"), "{by_bob:?}");
    assert!(by_bob.detail.contains("input_tokens=9"), "{by_bob:?}");
    assert!(by_bob.detail.contains("latency_ms="), "{by_bob:?}");
    assert_eq!(by_project.caller, "users/alice");
    assert!(
        by_project
            .detail
            .contains("project=users/alice/projects/search"),
        "{by_project:?}"
    );
    assert_eq!(failed.outcome, "FAILED_PRECONDITION");
    assert!(
        failed.detail.contains("reason=PROVIDER_REJECTED_KEY"),
        "{failed:?}"
    );
    assert_eq!(test.method, "EmbeddingService/TestInstance");
    assert_eq!(test.caller, "users/carol");
    assert_eq!(test.outcome, "OK");
    assert_eq!(stranger.caller, "users/dave");
    assert_eq!(stranger.outcome, "NOT_FOUND");
    for event in &uses {
        assert!(!event.detail.contains("text number"), "no texts: {event:?}");
        assert!(!event.detail.contains("0.25"), "no vectors: {event:?}");
        assert!(!event.detail.contains(&f.key), "no key: {event:?}");
    }
    // Bob sees nothing of alice's trail.
    let bobs_view = audit_events(&f.app, &bob, &f.instance).await;
    assert!(bobs_view.is_empty(), "{bobs_view:#?}");
}

#[tokio::test]
async fn cached_call_targets_are_never_stale_on_any_replica() {
    let (f, bob, _carol, _dave) = shared_fixture().await;
    let replica = f.app.replica_with(trust_fakes).await;
    let doc = pb::EmbeddingInputType::Document;
    let one = texts(1);
    let embed_on = |app: &TestApp, token: &str, name: &str| {
        let mut client = app.embeddings();
        let request = authed(
            pb::EmbedRequest {
                name: name.to_owned(),
                inputs: one.clone(),
                input_type: doc as i32,
            },
            token,
        );
        async move { client.embed(request).await.map(tonic::Response::into_inner) }
    };
    let last_auth = || {
        f.fake
            .recorded()
            .last()
            .and_then(|r| r.header("authorization"))
    };

    // Warm both replicas' caches.
    embed_on(&f.app, &bob, &f.instance).await.unwrap();
    embed_on(&replica, &bob, &f.instance).await.unwrap();

    // A new key written on one replica is the key the other sends next.
    let new_key = random_api_key();
    f.app
        .instances()
        .update_instance(authed(
            pb::UpdateInstanceRequest {
                instance: Some(pb::Instance {
                    name: f.instance.clone(),
                    api_key: new_key.clone(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["api_key".into()],
                }),
            },
            &f.alice,
        ))
        .await
        .unwrap();
    embed_on(&replica, &bob, &f.instance).await.unwrap();
    assert_eq!(last_auth(), Some(format!("Bearer {new_key}")));

    // The standard's scheme changed by the admin: the next call uses it.
    f.app
        .standards()
        .update_api_standard(authed(
            pb::UpdateApiStandardRequest {
                api_standard: Some(pb::ApiStandard {
                    name: "apiStandards/openai".into(),
                    auth_scheme: "Token".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["auth_scheme".into()],
                }),
            },
            &f.app.admin_token,
        ))
        .await
        .unwrap();
    embed_on(&replica, &bob, &f.instance).await.unwrap();
    assert_eq!(last_auth(), Some(format!("Token {new_key}")));

    // A project rebound to another instance: the next Embed of the project calls that one.
    create_project(&f.app, &f.alice, "alice", "search", "emb")
        .await
        .unwrap();
    let other = FakeProvider::start(Flavor::OpenAi, 8).await;
    f.app
        .instances()
        .create_instance(authed(
            pb::CreateInstanceRequest {
                parent: "users/alice".into(),
                instance_id: "other".into(),
                instance: Some(pb::Instance {
                    endpoint: other.endpoint(),
                    api_standard: "openai".into(),
                    model: "m".into(),
                    api_key: random_api_key(),
                    ..Default::default()
                }),
            },
            &f.alice,
        ))
        .await
        .unwrap();
    let project = "users/alice/projects/search";
    assert_eq!(
        embed_on(&replica, &f.alice, project)
            .await
            .unwrap()
            .instance,
        f.instance
    );
    pb::project_service_client::ProjectServiceClient::new(f.app.channel.clone())
        .update_project(authed(
            pb::UpdateProjectRequest {
                project: Some(pb::Project {
                    name: project.into(),
                    instance: "other".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["instance".into()],
                }),
            },
            &f.alice,
        ))
        .await
        .unwrap();
    assert_eq!(
        embed_on(&replica, &f.alice, project)
            .await
            .unwrap()
            .instance,
        "users/alice/instances/other"
    );
    assert_eq!(other.request_count(), 1);

    // A revoked share: the reader's next call on the other replica is NOT_FOUND.
    SharingServiceClient::new(f.app.channel.clone())
        .unshare_instance(authed(
            pb::UnshareInstanceRequest {
                name: format!("{}/shares/bob", f.instance),
                force: false,
            },
            &f.alice,
        ))
        .await
        .unwrap();
    assert_code(embed_on(&replica, &bob, &f.instance).await, Code::NotFound);
}

#[tokio::test]
async fn a_caller_who_hangs_up_ends_the_provider_call_and_the_use_is_recorded_cancelled() {
    let f = Fixture::start(Flavor::OpenAi, 8).await;
    f.fake.script([Behaviour::Slow(Duration::from_millis(800))]);
    let call = {
        let mut client = f.app.embeddings();
        let request = authed(
            pb::EmbedRequest {
                name: f.instance.clone(),
                inputs: texts(2),
                input_type: 0,
            },
            &f.alice,
        );
        tokio::spawn(async move { client.embed(request).await })
    };
    while f.fake.request_count() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The caller goes away while the provider is answering: the provider call ends with it
    // (issue 25: a cancelled Embed no longer runs on outside every limit), and the use is on
    // the record as CANCELLED.
    call.abort();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let uses: Vec<pb::AuditEvent> = audit_events(&f.app, &f.alice, &f.instance)
            .await
            .into_iter()
            .filter(|e| e.method == "EmbeddingService/Embed")
            .collect();
        if let [used] = uses.as_slice() {
            assert_eq!(used.outcome, "CANCELLED", "{used:?}");
            assert!(used.detail.contains("inputs=2"), "{used:?}");
            assert!(used.detail.contains("reason=CANCELLED"), "{used:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the use was never recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn ipv6_endpoints_carrying_an_internal_ipv4_address_are_refused_before_any_connection() {
    // Production's policy: loopback, private and link-local closed.
    let f = Fixture::start_with(Flavor::OpenAi, 8, |settings| {
        settings.providers.egress.allow_loopback = false;
    })
    .await;
    let one = texts(1);
    let doc = pb::EmbeddingInputType::Document;
    // IPv4-compatible, NAT64 well-known and local-use, 6to4, SIIT, Teredo, deprecated
    // site-local: each reaches loopback, metadata or a private network through a translator.
    let forms = [
        ("compatible", "[::127.0.0.1]"),
        ("nat64", "[64:ff9b::a9fe:a9fe]"),
        ("nat64-local", "[64:ff9b:1::a00:1]"),
        ("sixtofour", "[2002:7f00:1::]"),
        ("siit", "[::ffff:0:a9fe:a9fe]"),
        ("teredo", "[2001:0:4136:e378:8000:63bf:80ff:fffe]"),
        ("site-local", "[fec0::1]"),
    ];
    for (id, host) in forms {
        let mut instances = f.app.instances();
        instances
            .create_instance(authed(
                pb::CreateInstanceRequest {
                    parent: "users/alice".into(),
                    instance_id: id.to_owned(),
                    instance: Some(pb::Instance {
                        endpoint: format!("https://{host}/v1/embeddings"),
                        api_standard: "openai".into(),
                        model: "m".into(),
                        api_key: random_api_key(),
                        ..Default::default()
                    }),
                },
                &f.alice,
            ))
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let refused = assert_code(
            f.embed(&f.alice, id, &one, doc).await,
            Code::FailedPrecondition,
        );
        assert_eq!(reason(&refused), "EGRESS_REFUSED", "{host}: {refused:?}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{host}: refused before connecting"
        );
    }
    assert_eq!(f.fake.request_count(), 0);
}
