//! W3C trace context, through the real binary with JSON logs: a call's `traceparent` is
//! continued (its trace id and the caller's span id on the `rpc finished` line, with a span id
//! of our own), a call without one starts a new trace, every JSON line of a call carries its
//! trace id, and the provider call an Embed makes carries a child `traceparent` (same trace, our
//! span as parent) and the caller's `tracestate`.

use std::{net::SocketAddr, time::Duration};

use llm_registry::{IssuedToken, pb::v1 as pb, vault::MasterKey};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::{
    binary::{production_with_fakes, temp_home, terminate},
    fake_provider::{FakeProvider, Flavor},
    helpers::{
        authed, create_database, create_openai_instance_on, create_user_on, drop_database_blocking,
        unique_name, wait_until_serving,
    },
};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// The JSON log lines the server printed so far (waits for `quiet` without a new one).
async fn drain(lines: &mut mpsc::UnboundedReceiver<String>, quiet: Duration) -> Vec<Value> {
    let mut parsed = Vec::new();
    while let Ok(Some(line)) = tokio::time::timeout(quiet, lines.recv()).await {
        let value: Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("a log line is not JSON: {line}"));
        parsed.push(value);
    }
    parsed
}

/// The `rpc` span's fields on a JSON line (the current span).
fn rpc_span(line: &Value) -> Option<&Value> {
    line.get("span").filter(|span| span["name"] == "rpc")
}

fn finished_lines<'a>(lines: &'a [Value], method: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|line| line["message"] == "rpc finished")
        .filter(|line| rpc_span(line).is_some_and(|span| span["method"] == method))
        .collect()
}

#[tokio::test]
async fn calls_continue_the_callers_trace_and_provider_calls_carry_a_child_traceparent() {
    let fake = FakeProvider::start(Flavor::OpenAi, 8).await;
    let database = unique_name("llmr_test");
    create_database(&database).await;
    let admin = IssuedToken::generate().reveal().to_owned();
    let home = temp_home();
    let mut command = production_with_fakes(&home, &database, &admin, &MasterKey::generate());
    command
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info,llm_registry=debug,sqlx=debug");
    let mut child = command.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (sender, mut lines) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt as _;
        let mut reader = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            let _ = sender.send(line);
        }
    });
    let addr: SocketAddr = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let line = lines
                .recv()
                .await
                .expect("the server announces its address");
            let value: Value = serde_json::from_str(&line).expect("JSON log line");
            if let Some(address) = value["address"].as_str() {
                return address.parse().unwrap();
            }
        }
    })
    .await
    .unwrap();
    let channel = wait_until_serving(addr).await;
    let alice = create_user_on(&channel, &admin, "alice").await;
    create_openai_instance_on(&channel, &alice, "alice", "traced", fake.endpoint()).await;
    drain(&mut lines, Duration::from_millis(300)).await;

    // An Embed inside the caller's trace.
    let mut request = authed(
        pb::EmbedRequest {
            name: "users/alice/instances/traced".into(),
            inputs: vec!["traced text".into()],
            input_type: 0,
        },
        &alice,
    );
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{CALLER_SPAN}-01").parse().unwrap(),
    );
    request
        .metadata_mut()
        .insert("tracestate", "congo=t61rcWkgMzE".parse().unwrap());
    pb::embedding_service_client::EmbeddingServiceClient::new(channel.clone())
        .embed(request)
        .await
        .unwrap();
    let logged = drain(&mut lines, Duration::from_millis(500)).await;
    let embed = "/llmregistry.v1.EmbeddingService/Embed";
    let finished = finished_lines(&logged, embed);
    assert_eq!(finished.len(), 1, "{logged:#?}");
    let span = rpc_span(finished[0]).unwrap();
    assert_eq!(span["trace_id"], TRACE_ID);
    assert_eq!(span["parent_span_id"], CALLER_SPAN);
    let our_span = span["span_id"].as_str().unwrap().to_owned();
    assert_eq!(our_span.len(), 16);
    assert_ne!(our_span, CALLER_SPAN);
    // Every line logged inside the call's span carries its trace id.
    let in_call: Vec<&Value> = logged
        .iter()
        .filter(|line| rpc_span(line).is_some_and(|span| span["method"] == embed))
        .collect();
    // (the statement that resolves the instance is logged at debug inside the call)
    assert!(
        in_call.len() > 1,
        "debug lines inside the call: {logged:#?}"
    );
    for line in in_call {
        assert_eq!(rpc_span(line).unwrap()["trace_id"], TRACE_ID, "{line}");
    }
    // The provider saw a child of our span in the same trace, and the caller's tracestate.
    let recorded = fake.recorded();
    let sent = recorded.last().expect("the fake was called");
    assert_eq!(
        sent.header("traceparent").as_deref(),
        Some(format!("00-{TRACE_ID}-{our_span}-01").as_str())
    );
    assert_eq!(
        sent.header("tracestate").as_deref(),
        Some("congo=t61rcWkgMzE")
    );

    // Without a traceparent: a new trace, no parent; the provider still gets a traceparent.
    pb::embedding_service_client::EmbeddingServiceClient::new(channel.clone())
        .embed(authed(
            pb::EmbedRequest {
                name: "users/alice/instances/traced".into(),
                inputs: vec!["untraced text".into()],
                input_type: 0,
            },
            &alice,
        ))
        .await
        .unwrap();
    let logged = drain(&mut lines, Duration::from_millis(500)).await;
    let finished = finished_lines(&logged, embed);
    assert_eq!(finished.len(), 1, "{logged:#?}");
    let span = rpc_span(finished[0]).unwrap();
    let new_trace = span["trace_id"].as_str().unwrap();
    assert_eq!(new_trace.len(), 32);
    assert_ne!(new_trace, TRACE_ID);
    assert!(span.get("parent_span_id").is_none(), "{span}");
    let sent = fake.recorded();
    let sent = sent.last().unwrap();
    let traceparent = sent.header("traceparent").unwrap();
    assert!(
        traceparent.starts_with(&format!(
            "00-{new_trace}-{}-",
            span["span_id"].as_str().unwrap()
        )),
        "{traceparent}"
    );
    assert_eq!(sent.header("tracestate"), None);

    terminate(child).await;
    drop_database_blocking(database);
    let _ = std::fs::remove_dir_all(&home);
}
