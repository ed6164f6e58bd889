//! The canary for provider calls: the real binary at its most verbose log level calls fake
//! providers with random keys, which echo the key back in error bodies (whole, in base64, in a
//! 5xx that is retried). Each key reaches its provider, in the standard's header, and appears in
//! no response, error, log line or database column, in any of its usual encodings, with one
//! exception: the body of a ResolveCredential answer to a service account, for the instance whose
//! owner allowed it. The account's token appears nowhere either.

use base64::{Engine, engine::general_purpose::STANDARD};
use llm_registry::{IssuedToken, pb::v1 as pb, vault::MasterKey};
use prost::Message;
use sqlx::Connection;

use crate::{
    binary::{production_with_fakes, start_server, temp_home, terminate},
    canary::{assert_nowhere, call_raw, call_raw_as, contains, every_row},
    fake_provider::{Behaviour, FakeProvider, Flavor, error_body},
    helpers::{
        create_database, create_service_account_on, create_user_on, database_url,
        drop_database_blocking, random_api_key, unique_name, wait_until_serving,
    },
};

const EMBED: &str = "/llmregistry.v1.EmbeddingService/Embed";
const TEST: &str = "/llmregistry.v1.EmbeddingService/TestInstance";

fn embed_request(name: &str) -> Vec<u8> {
    pb::EmbedRequest {
        name: name.to_owned(),
        inputs: vec!["a canary text".into(), "another".into()],
        input_type: 0,
    }
    .encode_to_vec()
}

#[tokio::test]
async fn keys_reach_their_provider_and_nothing_else() {
    let openai = FakeProvider::start(Flavor::OpenAi, 8).await;
    let gemini = FakeProvider::start(Flavor::Gemini, 8).await;
    let database = unique_name("llmr_test");
    create_database(&database).await;
    let admin = IssuedToken::generate().reveal().to_owned();
    let master = MasterKey::generate();
    let home = temp_home();
    let mut command = production_with_fakes(&home, &database, &admin, &master);
    command
        .env("PROVIDER_BACKOFF_BASE_MS", "5")
        .env("RUST_LOG", "trace");
    let (child, addr, mut log) = start_server(command).await;
    let channel = wait_until_serving(addr).await;
    let mut responses: Vec<Vec<u8>> = Vec::new();

    let alice = create_user_on(&channel, &admin, "alice").await;
    let bob = create_user_on(&channel, &admin, "bob").await;

    let openai_key = random_api_key();
    let gemini_key = random_api_key();
    for (id, fake, standard, key) in [
        ("oai", &openai, "openai", &openai_key),
        ("gem", &gemini, "gemini", &gemini_key),
    ] {
        let request = pb::CreateInstanceRequest {
            parent: "users/alice".into(),
            instance_id: id.into(),
            instance: Some(pb::Instance {
                endpoint: fake.endpoint(),
                api_standard: standard.into(),
                model: "gemini-embedding-001".into(),
                dimensions: Some(8),
                api_key: key.clone(),
                // The OpenAI one may be released to a gateway; the Gemini one may not.
                allow_credential_release: standard == "openai",
                ..Default::default()
            }),
        };
        responses.push(
            call_raw(
                &channel,
                "/llmregistry.v1.LlmInstanceService/CreateInstance",
                request.encode_to_vec(),
                &alice,
            )
            .await
            .unwrap(),
        );
        let share = pb::ShareInstanceRequest {
            name: format!("users/alice/instances/{id}"),
            grantee: "users/bob".into(),
            role: pb::Role::Reader as i32,
            quota: None,
        };
        responses.push(
            call_raw(
                &channel,
                "/llmregistry.v1.SharingService/ShareInstance",
                share.encode_to_vec(),
                &alice,
            )
            .await
            .unwrap(),
        );
    }

    // A gateway receives the releasable key in exactly one place: its answer's body. Everything
    // else it is told (a refusal for the other instance, a use) goes with the other responses.
    let gateway = create_service_account_on(
        &channel,
        &admin,
        "gateway",
        &[
            pb::ServiceAccountPermission::ActAsUser,
            pb::ServiceAccountPermission::ReleaseCredentials,
        ],
        &[],
    )
    .await;
    const RESOLVE: &str = "/llmregistry.v1.CredentialService/ResolveCredential";
    let resolve = |name: &str| {
        pb::ResolveCredentialRequest {
            name: name.to_owned(),
        }
        .encode_to_vec()
    };
    let released = call_raw_as(
        &channel,
        RESOLVE,
        resolve("users/alice/instances/oai"),
        &gateway,
        "bob",
    )
    .await
    .unwrap();
    assert_eq!(
        pb::ResolvedCredential::decode(released.as_slice())
            .unwrap()
            .api_key,
        openai_key
    );
    responses.push(
        call_raw_as(
            &channel,
            RESOLVE,
            resolve("users/alice/instances/gem"),
            &gateway,
            "bob",
        )
        .await
        .unwrap_err(),
    );
    responses.push(
        call_raw_as(
            &channel,
            EMBED,
            embed_request("users/alice/instances/gem"),
            &gateway,
            "bob",
        )
        .await
        .unwrap(),
    );

    let mut echoed_errors = 0;
    for (name, fake, key) in [
        ("users/alice/instances/oai", &openai, &openai_key),
        ("users/alice/instances/gem", &gemini, &gemini_key),
    ] {
        // Used as intended, by the owner and a reader.
        for token in [&alice, &bob] {
            let answer = call_raw(&channel, EMBED, embed_request(name), token)
                .await
                .unwrap();
            assert_eq!(
                pb::EmbedResponse::decode(answer.as_slice())
                    .unwrap()
                    .embeddings
                    .len(),
                2
            );
            responses.push(answer);
        }
        // The provider quotes the key in its refusal: whole, then in base64, then in a 5xx
        // body that is retried.
        fake.script([Behaviour::EchoKey]);
        let refused = call_raw(&channel, EMBED, embed_request(name), &bob)
            .await
            .unwrap_err();
        // Issue 25: a refused key is answered with a fixed message, none of the provider's
        // text (the likeliest to quote the key).
        assert!(
            !contains(&refused, b"Incorrect API key"),
            "a refused key gets a fixed message"
        );
        responses.push(refused);
        echoed_errors += 1;
        fake.script([Behaviour::Status {
            status: 400,
            body: error_body(fake.flavor, &format!("bad key {}", STANDARD.encode(key))).to_string(),
            retry_after: None,
        }]);
        responses.push(
            call_raw(&channel, EMBED, embed_request(name), &alice)
                .await
                .unwrap_err(),
        );
        fake.script([Behaviour::Status {
            status: 500,
            body: format!("upstream saw Authorization: Bearer {key}"),
            retry_after: None,
        }]);
        responses.push(
            call_raw(&channel, EMBED, embed_request(name), &alice)
                .await
                .unwrap(),
        );
        // A reply whose `model` is the key: the vectors come back, the model name scrubbed.
        if fake.flavor == Flavor::OpenAi {
            fake.script([Behaviour::EchoKeyAsModel]);
            let answer = call_raw(&channel, EMBED, embed_request(name), &bob)
                .await
                .unwrap();
            let decoded = pb::EmbedResponse::decode(answer.as_slice()).unwrap();
            assert!(decoded.model.contains("[REDACTED]"), "{}", decoded.model);
            responses.push(answer);
        }
        // TestInstance stores the (scrubbed) provider text on the instance: read it back.
        fake.script([Behaviour::EchoKey]);
        let test = pb::TestInstanceRequest { name: name.into() };
        responses.push(
            call_raw(&channel, TEST, test.encode_to_vec(), &alice)
                .await
                .unwrap(),
        );
        let get = pb::GetInstanceRequest { name: name.into() };
        let seen = call_raw(
            &channel,
            "/llmregistry.v1.LlmInstanceService/GetInstance",
            get.encode_to_vec(),
            &bob,
        )
        .await
        .unwrap();
        let last_test = pb::Instance::decode(seen.as_slice())
            .unwrap()
            .last_test
            .unwrap();
        assert!(!last_test.succeeded);
        // Bob reads: the test's message (provider text) is for roles that may test (issue 25).
        assert!(last_test.message.is_empty(), "{last_test:?}");
        responses.push(seen);
    }
    assert_eq!(echoed_errors, 2);

    // Each key did reach its provider, in the standard's header and nowhere else in the request.
    let sent_openai = openai.recorded();
    assert!(sent_openai.len() >= 7);
    for request in &sent_openai {
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {openai_key}"))
        );
        assert!(!request.body.to_string().contains(&openai_key));
        assert!(request.query.is_none());
    }
    for request in &gemini.recorded() {
        assert_eq!(
            request.header("x-goog-api-key").as_deref(),
            Some(gemini_key.as_str())
        );
        assert_eq!(request.header("authorization"), None);
        assert!(request.query.is_none(), "never ?key=");
    }

    terminate(child).await;
    let mut log_lines = Vec::new();
    while let Ok(line) = log.try_recv() {
        log_lines.push(line);
    }
    assert!(
        log_lines.iter().any(|l| l.contains("TRACE")),
        "the log ran at trace"
    );
    assert!(
        log_lines.iter().any(|l| l.contains("Embed")),
        "the log saw the calls"
    );

    let mut db = sqlx::PgConnection::connect(&database_url(&database))
        .await
        .unwrap();
    let rows = every_row(&mut db).await;
    assert!(
        rows.iter().any(|r| r.contains("EmbeddingService/Embed")),
        "uses were audited"
    );
    assert!(
        rows.iter()
            .any(|r| r.contains("CredentialService/ResolveCredential") && r.contains("users/bob")),
        "the release was audited"
    );
    // The released key is in its answer, whole, and in nothing else.
    assert!(contains(&released, openai_key.as_bytes()));
    assert_nowhere(&gateway, &responses, &log_lines, &rows);

    for key in [&openai_key, &gemini_key] {
        let needles = [
            key.clone(),
            STANDARD.encode(key),
            key.as_bytes().iter().map(|b| format!("{b:02x}")).collect(),
            // The random part alone: a partial echo of the key.
            key.trim_start_matches("sk-test-")[..16].to_owned(),
        ];
        for needle in &needles {
            assert_nowhere(needle, &responses, &log_lines, &rows);
        }
    }
    drop(db);
    drop_database_blocking(database);
    let _ = std::fs::remove_dir_all(&home);
}
