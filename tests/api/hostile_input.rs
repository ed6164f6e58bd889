//! Bad input never panics the server and never answers INTERNAL or UNKNOWN: every method of the
//! contract gets malformed wire bytes and messages full of hostile values, as a user and as the
//! admin, and must answer with a caller-side code.

use std::str::FromStr;

use llm_registry::pb::FILE_DESCRIPTOR_SET;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor, Value};
use tonic::{Code, Status, client::Grpc};
use tonic_prost::ProstCodec;

use crate::{
    helpers::{TestApp, authed},
    raw::RawCodec,
};

const HOSTILE_STRINGS: &[&str] = &[
    "",
    "\0",
    "users/",
    "users//definitions/",
    "users/_system/../alice",
    "users/alice/definitions/a\u{0}b",
    "users/ALICE/definitions/x",
    "apiStandards/",
    "💥🔥",
    "users/alice/definitions/x/extra",
    "http://[::1",
    "' OR 1=1; --",
];

/// A message whose every scalar is set to a hostile value (strings rotate through the list).
fn hostile(descriptor: &MessageDescriptor, seed: usize, depth: usize) -> DynamicMessage {
    let mut message = DynamicMessage::new(descriptor.clone());
    for (i, field) in descriptor.fields().enumerate() {
        let pick = seed + i;
        let value = match field.kind() {
            Kind::String => {
                let base = HOSTILE_STRINGS[pick % HOSTILE_STRINGS.len()];
                let s = if pick.is_multiple_of(5) {
                    base.repeat(3000)
                } else {
                    base.to_owned()
                };
                Value::String(s)
            }
            Kind::Int32 => Value::I32([-1, 0, i32::MAX, i32::MIN][pick % 4]),
            Kind::Int64 => Value::I64(i64::MIN),
            Kind::Bool => Value::Bool(true),
            Kind::Enum(_) => Value::EnumNumber([99, -1, 0][pick % 3]),
            Kind::Message(inner) if depth < 2 => Value::Message(hostile(&inner, pick, depth + 1)),
            _ => continue,
        };
        let value = if field.is_list() {
            Value::List(vec![value])
        } else {
            value
        };
        if !field.is_map() {
            message.set_field(&field, value);
        }
    }
    message
}

fn assert_caller_side<T>(path: &str, result: Result<tonic::Response<T>, Status>) {
    if let Err(status) = result {
        assert!(
            !matches!(status.code(), Code::Internal | Code::Unknown),
            "{path} answered {:?}: {}",
            status.code(),
            status.message()
        );
    }
}

#[tokio::test]
async fn hostile_requests_get_caller_side_errors_never_internal() {
    let app = TestApp::spawn().await;
    let user = app.create_user("alice").await;
    crate::helpers::create_definition(&app, &user, "alice", "x")
        .await
        .unwrap();
    let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).unwrap();
    let garbage: [&[u8]; 4] = [
        &[0xff, 0xff, 0xff],
        &[0x0a, 0x05, 0xc3, 0x28, 0xa0, 0xa1, 0xe2], // field 1 as string, invalid UTF-8
        &[0x0a, 0x7f],                               // length beyond the message
        &[
            0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01,
        ],
    ];

    let mut calls = 0;
    for service in pool.services() {
        for method in service.methods() {
            let path = format!("/{}/{}", service.full_name(), method.name());
            for token in [&user, &app.admin_token] {
                for seed in 0..4 {
                    let mut grpc = Grpc::new(app.channel.clone());
                    grpc.ready().await.unwrap();
                    let message = hostile(&method.input(), seed, 0);
                    let result = grpc
                        .unary(
                            authed(message, token),
                            http::uri::PathAndQuery::from_str(&path).unwrap(),
                            ProstCodec::<DynamicMessage, ()>::default(),
                        )
                        .await;
                    assert_caller_side(&path, result);
                    calls += 1;
                }
                for bytes in garbage {
                    let mut grpc = Grpc::new(app.channel.clone());
                    grpc.ready().await.unwrap();
                    let result = grpc
                        .unary(
                            authed(bytes.to_vec(), token),
                            http::uri::PathAndQuery::from_str(&path).unwrap(),
                            RawCodec,
                        )
                        .await;
                    assert_caller_side(&path, result);
                    calls += 1;
                }
            }
        }
    }
    assert!(calls > 200);
    // The server is still healthy after all that.
    crate::helpers::wait_until_serving(app.addr).await;
}
