//! Embed against fake providers over real HTTPS: the exact request each wire format's reference
//! documents (method, path, headers, JSON body), vectors back in input order across batches, and
//! every way a provider can fail mapped to its gRPC code and reason.

use std::time::Duration;

use llm_registry::{config::ServeSettings, pb::v1 as pb};
use serde_json::json;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::{
    fake_provider::{Behaviour, FakeProvider, Flavor, error_body, signature},
    helpers::{
        TestApp, assert_code, assert_invalid_field, authed, random_api_key, reason, trust_fakes,
    },
};

/// A server that trusts the fakes, a fake provider, and alice's instance `emb` on it holding a
/// fresh key.
pub struct Fixture {
    pub app: TestApp,
    pub fake: FakeProvider,
    pub alice: String,
    pub key: String,
    pub instance: String,
}

pub fn model_of(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::OpenAi => "text-embedding-3-small",
        Flavor::Cohere => "embed-v4.0",
        Flavor::Gemini => "gemini-embedding-001",
    }
}

impl Fixture {
    pub async fn start(flavor: Flavor, dimensions: usize) -> Self {
        Self::start_with(flavor, dimensions, |_| {}).await
    }

    pub async fn start_with(
        flavor: Flavor,
        dimensions: usize,
        configure: impl FnOnce(&mut ServeSettings),
    ) -> Self {
        let fake = FakeProvider::start(flavor, dimensions).await;
        let app = TestApp::spawn_with(|settings| {
            trust_fakes(settings);
            configure(settings);
        })
        .await;
        let alice = app.create_user("alice").await;
        let key = random_api_key();
        app.instances()
            .create_instance(authed(
                pb::CreateInstanceRequest {
                    parent: "users/alice".into(),
                    instance_id: "emb".into(),
                    instance: Some(pb::Instance {
                        endpoint: fake.endpoint(),
                        api_standard: flavor.standard().into(),
                        model: model_of(flavor).into(),
                        dimensions: Some(dimensions as i32),
                        api_key: key.clone(),
                        ..Default::default()
                    }),
                },
                &alice,
            ))
            .await
            .expect("alice creates her instance");
        Self {
            app,
            fake,
            alice,
            key,
            instance: "users/alice/instances/emb".into(),
        }
    }

    pub async fn embed(
        &self,
        token: &str,
        name: &str,
        inputs: &[String],
        input_type: pb::EmbeddingInputType,
    ) -> Result<pb::EmbedResponse, Status> {
        self.app
            .embeddings()
            .embed(authed(
                pb::EmbedRequest {
                    name: name.to_owned(),
                    inputs: inputs.to_vec(),
                    input_type: input_type as i32,
                },
                token,
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Alice embeds `inputs` as documents with her instance.
    pub async fn embed_own(&self, inputs: &[String]) -> Result<pb::EmbedResponse, Status> {
        self.embed(
            &self.alice,
            &self.instance,
            inputs,
            pb::EmbeddingInputType::Document,
        )
        .await
    }
}

pub fn texts(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("text number {i}")).collect()
}

/// Every vector is the one the fake made for the input in its position.
#[track_caller]
fn assert_in_order(response: &pb::EmbedResponse, inputs: &[String], dimensions: usize) {
    assert_eq!(response.embeddings.len(), inputs.len());
    for (input, embedding) in inputs.iter().zip(&response.embeddings) {
        assert_eq!(embedding.values.len(), dimensions);
        assert_eq!(embedding.values[0], signature(input), "vector of {input:?}");
    }
    assert_eq!(response.dimensions as usize, dimensions);
}

#[tokio::test]
async fn openai_gets_the_documented_request_and_vectors_come_back_by_index() {
    let f = Fixture::start(Flavor::OpenAi, 16).await;
    let inputs = texts(3);
    let response = f.embed_own(&inputs).await.unwrap();
    assert_in_order(&response, &inputs, 16);
    assert_eq!(response.instance, f.instance);
    assert_eq!(response.model, "text-embedding-3-small");
    // Two words and a number per text, as the fake counts tokens.
    assert_eq!(response.input_tokens, Some(9));

    let recorded = f.fake.recorded();
    assert_eq!(recorded.len(), 1);
    let request = &recorded[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/v1/embeddings");
    assert_eq!(request.query, None);
    assert_eq!(
        request.header("authorization"),
        Some(format!("Bearer {}", f.key))
    );
    assert_eq!(
        request.header("content-type").as_deref(),
        Some("application/json")
    );
    // The instance's own size is the model's: no `dimensions` is asked for.
    assert_eq!(
        request.body,
        json!({"model": "text-embedding-3-small", "input": inputs, "encoding_format": "float"})
    );
    // HTTP/2 where the provider offers it (the fake does, by ALPN).
    assert_eq!(request.version, http::Version::HTTP_2);
}

#[tokio::test]
async fn cohere_gets_input_type_and_a_reduced_size_from_a_definition() {
    let f = Fixture::start(Flavor::Cohere, 1536).await;
    // From the seeded cohere-v4 definition (1536 dimensions), asking for 256, at the fake.
    let key = random_api_key();
    f.app
        .instances()
        .create_instance_from_definition(authed(
            pb::CreateInstanceFromDefinitionRequest {
                parent: "users/alice".into(),
                instance_id: "small".into(),
                source_definition: "_system/cohere-v4".into(),
                instance: Some(pb::Instance {
                    endpoint: f.fake.endpoint(),
                    dimensions: Some(256),
                    api_key: key.clone(),
                    ..Default::default()
                }),
            },
            &f.alice,
        ))
        .await
        .unwrap();
    let inputs = texts(2);
    let response = f
        .embed(
            &f.alice,
            "alice/small",
            &inputs,
            pb::EmbeddingInputType::Query,
        )
        .await
        .unwrap();
    assert_in_order(&response, &inputs, 256);
    assert_eq!(response.instance, "users/alice/instances/small");
    // Cohere does not name the model in its reply: the instance's is reported.
    assert_eq!(response.model, "embed-v4.0");
    assert_eq!(response.input_tokens, Some(6));
    let request = &f.fake.recorded()[0];
    assert_eq!(request.path, "/v2/embed");
    assert_eq!(
        request.header("authorization"),
        Some(format!("Bearer {key}"))
    );
    assert_eq!(
        request.body,
        json!({"model": "embed-v4.0", "texts": inputs, "input_type": "search_query",
            "embedding_types": ["float"], "output_dimension": 256})
    );
}

#[tokio::test]
async fn gemini_batches_through_batch_embed_contents_with_the_key_in_its_header() {
    let f = Fixture::start(Flavor::Gemini, 8).await;
    // 250 inputs: three batches of at most 100, sent concurrently, reassembled in order.
    let inputs = texts(250);
    let response = f.embed_own(&inputs).await.unwrap();
    assert_in_order(&response, &inputs, 8);
    assert_eq!(response.input_tokens, None, "Gemini reports no usage here");

    let recorded = f.fake.recorded();
    let mut sizes: Vec<usize> = recorded
        .iter()
        .map(|r| r.body["requests"].as_array().map_or(0, Vec::len))
        .collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [50, 100, 100]);
    for request in &recorded {
        assert_eq!(request.method, "POST");
        assert_eq!(
            request.path,
            "/v1beta/models/gemini-embedding-001:batchEmbedContents"
        );
        // Never in the query string, never as a bearer token.
        assert_eq!(request.query, None);
        assert_eq!(
            request.header("x-goog-api-key").as_deref(),
            Some(f.key.as_str())
        );
        assert_eq!(request.header("authorization"), None);
        let first = &request.body["requests"][0];
        assert_eq!(first["model"], "models/gemini-embedding-001");
        assert_eq!(first["taskType"], "RETRIEVAL_DOCUMENT");
        assert!(first["content"]["parts"][0]["text"].is_string());
        assert!(first.get("outputDimensionality").is_none());
    }
}

#[tokio::test]
async fn cohere_batches_of_96_keep_their_order() {
    let f = Fixture::start(Flavor::Cohere, 4).await;
    let inputs = texts(200);
    let response = f.embed_own(&inputs).await.unwrap();
    assert_in_order(&response, &inputs, 4);
    let mut sizes: Vec<usize> = f
        .fake
        .recorded()
        .iter()
        .map(|r| r.body["texts"].as_array().map_or(0, Vec::len))
        .collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [8, 96, 96]);
    assert_eq!(
        response.input_tokens,
        Some(600),
        "usage summed over batches"
    );
}

#[tokio::test]
async fn provider_answers_map_to_codes_with_reasons() {
    let f = Fixture::start_with(Flavor::OpenAi, 8, |settings| {
        settings.providers.max_reply_bytes = 64 * 1024;
    })
    .await;
    let one = texts(1);
    let status = |status: u16, message: &str| Behaviour::Status {
        status,
        body: error_body(Flavor::OpenAi, message).to_string(),
        retry_after: None,
    };
    let cases: Vec<(Vec<Behaviour>, Code, &str)> = vec![
        (
            vec![status(401, "bad key")],
            Code::FailedPrecondition,
            "PROVIDER_REJECTED_KEY",
        ),
        (
            vec![status(403, "no access")],
            Code::FailedPrecondition,
            "PROVIDER_REJECTED_KEY",
        ),
        (
            vec![status(404, "no such model")],
            Code::FailedPrecondition,
            "PROVIDER_NOT_FOUND",
        ),
        (
            vec![status(400, "input too long")],
            Code::InvalidArgument,
            "PROVIDER_REJECTED_REQUEST",
        ),
        (
            vec![Behaviour::Malformed],
            Code::Unavailable,
            "PROVIDER_BAD_REPLY",
        ),
        (
            vec![Behaviour::Oversized(200_000)],
            Code::Unavailable,
            "PROVIDER_BAD_REPLY",
        ),
        (
            vec![Behaviour::WrongDimensions(7)],
            Code::FailedPrecondition,
            "DIMENSIONS_MISMATCH",
        ),
        (
            vec![Behaviour::MissingVector],
            Code::FailedPrecondition,
            "DIMENSIONS_MISMATCH",
        ),
        (
            vec![status(503, "busy"); 3],
            Code::Unavailable,
            "PROVIDER_UNAVAILABLE",
        ),
        (
            vec![Behaviour::Reset; 3],
            Code::Unavailable,
            "PROVIDER_UNAVAILABLE",
        ),
    ];
    for (script, code, expected_reason) in cases {
        let before = f.fake.request_count();
        let attempts = script.len();
        f.fake.script(script.clone());
        let refused = assert_code(f.embed_own(&one).await, code);
        assert_eq!(reason(&refused), expected_reason, "{script:?}: {refused:?}");
        assert_eq!(
            f.fake.request_count() - before,
            attempts,
            "{script:?}: attempts made"
        );
        if code == Code::InvalidArgument || expected_reason == "PROVIDER_NOT_FOUND" {
            assert!(
                refused.message().contains("input too long")
                    || refused.message().contains("no such model"),
                "the provider's message is passed on: {refused:?}"
            );
        }
    }
}

#[tokio::test]
async fn retries_recover_from_5xx_and_honour_retry_after_on_429() {
    let f = Fixture::start(Flavor::OpenAi, 8).await;
    let one = texts(1);
    // 500 then success: retried, answered.
    f.fake.script([Behaviour::Status {
        status: 500,
        body: "{}".into(),
        retry_after: None,
    }]);
    f.embed_own(&one).await.unwrap();
    assert_eq!(f.fake.request_count(), 2);

    // 429 with Retry-After: 1, then success: the retry waits at least a second.
    f.fake.script([Behaviour::Status {
        status: 429,
        body: error_body(Flavor::OpenAi, "slow down").to_string(),
        retry_after: Some("1".into()),
    }]);
    let started = std::time::Instant::now();
    f.embed_own(&one).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    assert_eq!(f.fake.request_count(), 4);

    // 429 on every attempt: RESOURCE_EXHAUSTED with the provider's hint as RetryInfo.
    f.fake.script(vec![
        Behaviour::Status {
            status: 429,
            body: error_body(Flavor::OpenAi, "quota").to_string(),
            retry_after: Some("0".into()),
        };
        3
    ]);
    let limited = assert_code(f.embed_own(&one).await, Code::ResourceExhausted);
    assert_eq!(reason(&limited), "PROVIDER_RATE_LIMITED");
    assert!(limited.get_details_retry_info().is_some());
    assert_eq!(f.fake.request_count(), 7);

    // A Retry-After beyond the call's deadline is not waited for.
    f.fake.script([Behaviour::Status {
        status: 429,
        body: "{}".into(),
        retry_after: Some("120".into()),
    }]);
    let started = std::time::Instant::now();
    let limited = assert_code(f.embed_own(&one).await, Code::ResourceExhausted);
    assert!(started.elapsed() < Duration::from_secs(10));
    let retry = limited.get_details_retry_info().unwrap();
    assert_eq!(retry.retry_delay, Some(Duration::from_secs(120)));
    assert_eq!(f.fake.request_count(), 8, "no retry into the deadline");
}

#[tokio::test]
async fn a_slow_provider_ends_at_the_callers_deadline() {
    let f = Fixture::start(Flavor::OpenAi, 8).await;
    f.fake.script([Behaviour::Slow(Duration::from_secs(5))]);
    let mut request = authed(
        pb::EmbedRequest {
            name: f.instance.clone(),
            inputs: texts(1),
            input_type: 0,
        },
        &f.alice,
    );
    request.set_timeout(Duration::from_millis(1500));
    let started = std::time::Instant::now();
    let late = assert_code(
        f.app.embeddings().embed(request).await,
        Code::DeadlineExceeded,
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        reason(&late),
        "PROVIDER_TIMEOUT",
        "our answer, not a cancellation: {late:?}"
    );
}

#[tokio::test]
async fn redirects_are_refused_and_never_followed() {
    let f = Fixture::start(Flavor::OpenAi, 8).await;
    let elsewhere = FakeProvider::start(Flavor::OpenAi, 8).await;
    f.fake.script([Behaviour::Redirect(elsewhere.endpoint())]);
    let refused = assert_code(f.embed_own(&texts(1)).await, Code::FailedPrecondition);
    assert_eq!(reason(&refused), "PROVIDER_REDIRECTED");
    assert!(refused.message().contains("302"), "{refused:?}");
    assert_eq!(f.fake.request_count(), 1);
    assert_eq!(
        elsewhere.request_count(),
        0,
        "the key never went to the redirect target"
    );
}

#[tokio::test]
async fn bad_requests_name_their_field() {
    let f = Fixture::start_with(Flavor::OpenAi, 8, |settings| {
        settings.providers.max_inputs = 4;
        settings.providers.max_input_bytes = 16;
    })
    .await;
    let call = |name: &str, inputs: Vec<String>, input_type: i32| {
        let mut client = f.app.embeddings();
        let request = authed(
            pb::EmbedRequest {
                name: name.to_owned(),
                inputs,
                input_type,
            },
            &f.alice,
        );
        async move { client.embed(request).await }
    };
    assert_invalid_field(call(&f.instance, vec![], 0).await, "inputs");
    assert_invalid_field(call(&f.instance, texts(5), 0).await, "inputs");
    assert_invalid_field(
        call(&f.instance, vec!["ok".into(), "x".repeat(17)], 0).await,
        "inputs[1]",
    );
    assert_invalid_field(call(&f.instance, vec!["  ".into()], 0).await, "inputs[0]");
    assert_invalid_field(call(&f.instance, texts(1), 9).await, "input_type");
    assert_invalid_field(call("", texts(1), 0).await, "name");
    assert_invalid_field(call("users/alice/things/x", texts(1), 0).await, "name");
    assert_invalid_field(
        call("users/alice/projects/Bad_Name", texts(1), 0).await,
        "name",
    );
    assert_eq!(
        f.fake.request_count(),
        0,
        "nothing invalid reaches the provider"
    );
}
