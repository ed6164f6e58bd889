//! The Prometheus endpoint of an in-process server (METRICS_ADDR), scraped over a real socket:
//! per-method request counts and latency histograms, admission, pool, database, read cache,
//! group commit and vault series; labels from closed sets only (no handle, instance name, token
//! or made-up method path in any series); 404 elsewhere; no metrics on the gRPC port. A real
//! Prometheus scraping the real binary is `clients/prometheus/check.sh`, run by `.ci/run`.
//!
//! Metrics are process-wide, and other tests' servers run in this process too, so the
//! assertions look at series this test alone can move, or at least-so-many.

use std::{net::SocketAddr, time::Duration};

use llm_registry::pb::v1 as pb;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{
    canary::call_raw,
    helpers::{TestApp, authed, create_openai_instance_on, create_user_on, random_api_key},
};

/// `GET path` over HTTP/1.1: the status line and the body.
async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer)).await;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

/// The value of the series `name{labels}` exactly as written (labels in encoding order).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test]
async fn the_metrics_endpoint_counts_calls_by_method_and_code_with_bounded_labels() {
    let metrics_addr = free_port();
    let app = TestApp::spawn_with(|settings| settings.metrics_addr = Some(metrics_addr)).await;
    let canary_handle = "zelda-metrics-canary";
    let token = create_user_on(&app.channel, &app.admin_token, canary_handle).await;
    let mut instances =
        pb::llm_instance_service_client::LlmInstanceServiceClient::new(app.channel.clone());
    let api_key = random_api_key();
    instances
        .create_instance(authed(
            pb::CreateInstanceRequest {
                parent: format!("users/{canary_handle}"),
                instance_id: "secret-project-name".into(),
                instance: Some(pb::Instance {
                    endpoint: "https://api.openai.com/v1/embeddings".into(),
                    api_standard: "openai".into(),
                    model: "text-embedding-3-small".into(),
                    dimensions: Some(1536),
                    api_key: api_key.clone(),
                    ..Default::default()
                }),
            },
            &token,
        ))
        .await
        .unwrap();
    let before = get(metrics_addr, "/metrics").await.1;
    let get_instance = "/llmregistry.v1.LlmInstanceService/GetInstance";
    let series_ok = format!("llmr_rpc_requests_total{{method=\"{get_instance}\",code=\"OK\"}}");
    let series_missing =
        format!("llmr_rpc_requests_total{{method=\"{get_instance}\",code=\"NOT_FOUND\"}}");
    for _ in 0..5 {
        instances
            .get_instance(authed(
                pb::GetInstanceRequest {
                    name: format!("users/{canary_handle}/instances/secret-project-name"),
                },
                &token,
            ))
            .await
            .unwrap();
    }
    instances
        .get_instance(authed(
            pb::GetInstanceRequest {
                name: format!("users/{canary_handle}/instances/nothing-here"),
            },
            &token,
        ))
        .await
        .unwrap_err();
    // A made-up method path: answered UNIMPLEMENTED, counted under `other`.
    let _ = call_raw(
        &app.channel,
        "/made.up.Service/Method-zelda",
        vec![],
        &token,
    )
    .await;

    let (status, text) = get(metrics_addr, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    let delta =
        |series: &str| value(&text, series).unwrap_or(0.0) - value(&before, series).unwrap_or(0.0);
    assert!(delta(&series_ok) >= 5.0, "{series_ok} in {text}");
    assert!(delta(&series_missing) >= 1.0, "{series_missing} in {text}");
    // Every query took a pooled connection: acquisitions are counted with their waits.
    assert!(delta("llmr_db_pool_acquire_seconds_count") >= 1.0, "{text}");
    assert!(
        value(
            &text,
            "llmr_rpc_requests_total{method=\"other\",code=\"UNIMPLEMENTED\"}"
        )
        .is_some(),
        "{text}"
    );
    // A histogram per method, with sub-millisecond buckets.
    for bucket in ["0.0005", "0.001", "30.0", "+Inf"] {
        let series = format!(
            "llmr_rpc_duration_seconds_bucket{{le=\"{bucket}\",method=\"{get_instance}\"}}"
        );
        assert!(value(&text, &series).is_some(), "{series} in {text}");
    }
    // Sampled and recorded gauges and counters of the other parts.
    for series in [
        "llmr_database_up 1",
        "llmr_circuit_breaker_open 0",
        "llmr_admission_running ",
        "llmr_admission_queued ",
        "llmr_db_pool_connections ",
        "llmr_db_pool_idle_connections ",
        "llmr_db_pool_max_connections 5",
        "llmr_db_pool_acquire_seconds_bucket{le=\"0.001\"} ",
        "llmr_read_cache_entries ",
        "llmr_read_cache_hits_total{kind=\"principal\"} ",
        "llmr_read_cache_misses_total{kind=\"instance\"} ",
        "llmr_read_cache_invalidations_total ",
        "llmr_group_commit_batches_total{kind=\"create_instance\"} ",
        "llmr_group_commit_batch_size_bucket{le=\"1.0\",kind=\"create_instance\"} ",
    ] {
        assert!(
            text.lines().any(|line| line.starts_with(series)),
            "{series:?} in {text}"
        );
    }
    let primary = app.key_ring.primary_id();
    assert!(
        text.contains(&format!(
            "llmr_vault_keys{{key_id=\"{primary}\",role=\"primary\"}} 1"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("llmr_vault_seals_total{{key_id=\"{primary}\"}}")),
        "{text}"
    );
    // Closed label sets: nothing a caller chose or holds.
    for secret in [
        canary_handle,
        "secret-project-name",
        "zelda",
        &token,
        &api_key,
        &app.admin_token,
    ] {
        assert!(!text.contains(secret), "{secret:?} in the metrics");
    }

    let (status, _) = get(metrics_addr, "/").await;
    assert!(status.contains("404"), "{status}");
    // The gRPC port serves no metrics.
    let (_, body) = get(app.addr, "/metrics").await;
    assert!(!body.contains("llmr_"), "metrics on the gRPC port: {body}");
}

#[tokio::test]
async fn provider_calls_vault_opens_and_usage_commits_are_counted() {
    use crate::fake_provider::{Behaviour, FakeProvider, Flavor, error_body};
    let fake = FakeProvider::start(Flavor::OpenAi, 8).await;
    let metrics_addr = free_port();
    let app = TestApp::spawn_with(|settings| {
        crate::helpers::trust_fakes(settings);
        settings.metrics_addr = Some(metrics_addr);
    })
    .await;
    let token = create_user_on(&app.channel, &app.admin_token, "alice").await;
    create_openai_instance_on(&app.channel, &token, "alice", "metered", fake.endpoint()).await;
    let before = get(metrics_addr, "/metrics").await.1;
    let mut embeddings =
        pb::embedding_service_client::EmbeddingServiceClient::new(app.channel.clone());
    let embed = || {
        authed(
            pb::EmbedRequest {
                name: "users/alice/instances/metered".into(),
                inputs: vec!["counted".into()],
                input_type: 0,
            },
            &token,
        )
    };
    embeddings.embed(embed()).await.unwrap();
    embeddings.embed(embed()).await.unwrap();
    // Rate limited on every attempt: one call, `rate_limited`, with retries.
    let limited = Behaviour::Status {
        status: 429,
        body: error_body(Flavor::OpenAi, "slow down").to_string(),
        retry_after: None,
    };
    fake.script([limited.clone(), limited.clone(), limited]);
    embeddings.embed(embed()).await.unwrap_err();

    let text = get(metrics_addr, "/metrics").await.1;
    let delta =
        |series: &str| value(&text, series).unwrap_or(0.0) - value(&before, series).unwrap_or(0.0);
    // The outcome is the error's own stable reason (issue 26: the metrics ask the error).
    let ok = "llmr_provider_requests_total{protocol=\"openai\",outcome=\"OK\"}";
    let limited =
        "llmr_provider_requests_total{protocol=\"openai\",outcome=\"PROVIDER_RATE_LIMITED\"}";
    assert!(delta(ok) >= 2.0, "{ok} in {text}");
    assert!(delta(limited) >= 1.0, "{limited} in {text}");
    assert!(
        delta("llmr_provider_retries_total{protocol=\"openai\"}") >= 2.0,
        "{text}"
    );
    assert!(
        value(
            &text,
            "llmr_provider_duration_seconds_bucket{le=\"+Inf\",protocol=\"openai\"}"
        )
        .is_some(),
        "{text}"
    );
    // This server's master key is its own: its opens are this test's three calls.
    let primary = app.key_ring.primary_id();
    assert_eq!(
        value(
            &text,
            &format!("llmr_vault_opens_total{{key_id=\"{primary}\"}}")
        ),
        Some(3.0),
        "{text}"
    );
    assert!(
        delta("llmr_group_commit_batches_total{kind=\"usage_event\"}") >= 1.0,
        "{text}"
    );
}
