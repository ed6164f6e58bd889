//! gzip-compressed calls: a real compressing client (tonic with `send_compressed(Gzip)`, as
//! grpc-go and grpcio can be set to) gets the same answers as an uncompressed one, the edge still
//! sees into compressed writes (the `_system` guard, the refusal audit, size limits), and a
//! client that accepts gzip gets a compressed answer.

use std::io::{Read, Write};

use bytes::Bytes;
use llm_registry::pb::v1::{
    self as pb, audit_service_client::AuditServiceClient,
    llm_definition_service_client::LlmDefinitionServiceClient,
    llm_instance_service_client::LlmInstanceServiceClient,
};
use prost::Message;
use tonic::{Code, codec::CompressionEncoding, transport::Channel};

use crate::helpers::{TestApp, assert_code, authed, random_api_key, reason};

fn instances(app: &TestApp) -> LlmInstanceServiceClient<Channel> {
    LlmInstanceServiceClient::new(app.channel.clone())
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip)
}

fn definitions(app: &TestApp) -> LlmDefinitionServiceClient<Channel> {
    LlmDefinitionServiceClient::new(app.channel.clone())
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip)
}

fn instance_fields(api_key: &str) -> pb::Instance {
    pb::Instance {
        endpoint: "https://api.openai.com/v1/embeddings".into(),
        api_standard: "openai".into(),
        model: "text-embedding-3-small".into(),
        dimensions: Some(1536),
        api_key: api_key.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn compressed_calls_work_and_the_edge_still_sees_into_them() {
    let app = TestApp::spawn().await;
    let alice = app.create_user("alice").await;
    app.create_user("bob").await;

    // A compressed write and a compressed read, end to end.
    let created = instances(&app)
        .create_instance(authed(
            pb::CreateInstanceRequest {
                parent: "users/alice".into(),
                instance_id: "zipped".into(),
                instance: Some(instance_fields(&random_api_key())),
            },
            &alice,
        ))
        .await
        .expect("a gzip-compressed create succeeds")
        .into_inner();
    assert_eq!(created.name, "users/alice/instances/zipped");
    assert!(created.has_api_key);
    let read = instances(&app)
        .get_instance(authed(
            pb::GetInstanceRequest {
                name: created.name.clone(),
            },
            &alice,
        ))
        .await
        .expect("a gzip-compressed read succeeds")
        .into_inner();
    assert_eq!(read.uid, created.uid);

    // The `_system` guard decodes compressed writes too.
    let status = assert_code(
        definitions(&app)
            .create_definition(authed(
                pb::CreateDefinitionRequest {
                    parent: "users/_system".into(),
                    definition_id: "sneaky".into(),
                    definition: Some(pb::Definition {
                        endpoint: "https://example.com/v1/embeddings".into(),
                        api_standard: "openai".into(),
                        model: "m".into(),
                        ..Default::default()
                    }),
                },
                &alice,
            ))
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(reason(&status), "SYSTEM_NAMESPACE_READ_ONLY");

    // The refusal audit reads the target of a compressed write: parent and requested id.
    assert_code(
        instances(&app)
            .create_instance(authed(
                pb::CreateInstanceRequest {
                    parent: "users/bob".into(),
                    instance_id: "intrusion".into(),
                    instance: Some(instance_fields(&random_api_key())),
                },
                &alice,
            ))
            .await,
        Code::PermissionDenied,
    );
    let events = AuditServiceClient::new(app.channel.clone())
        .list_audit_events(authed(
            pb::ListAuditEventsRequest {
                resource: "users/bob/instances/intrusion".into(),
                ..Default::default()
            },
            &app.admin_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].caller, "users/alice");
    assert_eq!(events[0].outcome, "PERMISSION_DENIED");

    // A small compressed frame that inflates past the message limit is refused at the edge.
    let bomb = pb::CreateInstanceRequest {
        parent: "users/alice".into(),
        instance_id: "bomb".into(),
        instance: Some(pb::Instance {
            description: "a".repeat(4 * 1024 * 1024),
            ..instance_fields("")
        }),
    };
    assert_code(
        instances(&app).create_instance(authed(bomb, &alice)).await,
        Code::ResourceExhausted,
    );
}

/// One unary call over a bare HTTP/2 connection, so that the test sees the wire: the answer's
/// headers and its first message frame.
async fn raw_call(
    app: &TestApp,
    path: &str,
    token: &str,
    frame: Vec<u8>,
    headers: &[(&str, &str)],
) -> (http::HeaderMap, Bytes) {
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}{path}", app.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let (response, mut body) = client
        .send_request(request.body(()).unwrap(), false)
        .unwrap();
    body.send_data(Bytes::from(frame), true).unwrap();
    let response = response.await.unwrap();
    let (parts, mut incoming) = response.into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = incoming.data().await {
        let chunk = chunk.unwrap();
        incoming
            .flow_control()
            .release_capacity(chunk.len())
            .unwrap();
        data.extend_from_slice(&chunk);
    }
    (parts.headers, Bytes::from(data))
}

fn frame(compressed: bool, payload: &[u8]) -> Vec<u8> {
    let mut framed = vec![u8::from(compressed)];
    framed.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(payload);
    framed
}

#[tokio::test]
async fn answers_are_compressed_for_clients_that_accept_gzip() {
    let app = TestApp::spawn().await;
    let request = pb::ListDefinitionsRequest {
        parent: "users/_system".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(&request).unwrap();
    let compressed = gzip.finish().unwrap();
    let path = "/llmregistry.v1.LlmDefinitionService/ListDefinitions";

    let (headers, body) = raw_call(
        &app,
        path,
        &app.admin_token,
        frame(true, &compressed),
        &[("grpc-encoding", "gzip"), ("grpc-accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(
        headers.get("grpc-encoding").map(|v| v.as_bytes()),
        Some(&b"gzip"[..])
    );
    assert_eq!(body[0], 1, "the answer's frame is flagged compressed");
    let mut inflated = Vec::new();
    flate2::read::GzDecoder::new(&body[5..])
        .read_to_end(&mut inflated)
        .unwrap();
    let answer = pb::ListDefinitionsResponse::decode(inflated.as_slice()).unwrap();
    assert_eq!(
        answer.definitions.len(),
        5,
        "the seeded _system definitions"
    );

    // A client that does not accept gzip gets the same answer uncompressed.
    let (headers, body) = raw_call(&app, path, &app.admin_token, frame(false, &request), &[]).await;
    assert!(headers.get("grpc-encoding").is_none());
    assert_eq!(body[0], 0);
    let answer = pb::ListDefinitionsResponse::decode(&body[5..]).unwrap();
    assert_eq!(answer.definitions.len(), 5);
}
