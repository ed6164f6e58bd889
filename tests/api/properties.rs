//! Property-based hostile input: for random requests to every method of the contract (random and
//! adversarial strings: unicode, NUL, very long, path tricks; numbers at and past their bounds;
//! masks naming odd paths), sent by a user and by the admin, the server never panics, never
//! answers INTERNAL or UNKNOWN, and writes nothing for a call it rejects.

use std::str::FromStr;

use llm_registry::pb::{FILE_DESCRIPTOR_SET, v1 as pb};
use proptest::{
    prelude::*,
    strategy::ValueTree,
    test_runner::{Config, TestRunner},
};
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor, Value};
use tonic::{Code, client::Grpc};
use tonic_prost::ProstCodec;

use crate::helpers::{TestApp, authed, create_instance_from, create_project, random_api_key};

const CASES: u32 = 400;

/// Names of real resources, so that random requests also hit things that exist.
const REAL: &[&str] = &[
    "users/alice",
    "users/_system",
    "users/alice/instances/inst",
    "users/alice/projects/proj",
    "users/_system/definitions/openai-small",
    "users/alice/instances/inst/shares/bob",
    "apiStandards/openai",
    "alice/inst",
    "inst",
];

fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z0-9_/.-]{0,40}",
        "\\PC{0,300}",
        "[a-z]{1,5}".prop_map(|s| s.repeat(2000)),
        prop::sample::select(REAL).prop_map(str::to_owned),
        prop::sample::select(REAL).prop_map(|s| format!("{s}/../_system")),
        prop::sample::select(REAL).prop_map(|s| format!("{s}\0")),
        prop::sample::select(REAL).prop_map(|s| s.to_uppercase()),
        Just("users/a/../_system".to_owned()),
        Just("users/%5Fsystem/definitions/x".to_owned()),
        Just("https://user:pw@host/#frag".to_owned()),
    ]
}

fn number() -> impl Strategy<Value = i64> {
    prop_oneof![
        prop::sample::select(vec![
            0,
            -1,
            1,
            1000,
            1001,
            65_536,
            65_537,
            100_000_000,
            100_000_001
        ]),
        any::<i32>().prop_map(i64::from),
        Just(i64::from(i32::MAX)),
        Just(i64::from(i32::MIN)),
    ]
}

fn mask_path() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "model",
            "name",
            "*",
            "api_key",
            "",
            "etag",
            "has_api_key",
            "definition.model",
            "instance",
            "role",
        ])
        .prop_map(str::to_owned),
        "[a-z_.*]{0,20}",
    ]
}

/// The random material of one case; fields are filled from it in order.
#[derive(Debug, Clone)]
struct Case {
    method: usize,
    as_admin: bool,
    strings: Vec<String>,
    numbers: Vec<i64>,
    masks: Vec<String>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<usize>(),
        any::<bool>(),
        prop::collection::vec(hostile_string(), 24),
        prop::collection::vec(number(), 12),
        prop::collection::vec(mask_path(), 0..4),
    )
        .prop_map(|(method, as_admin, strings, numbers, masks)| Case {
            method,
            as_admin,
            strings,
            numbers,
            masks,
        })
}

fn fill(
    descriptor: &MessageDescriptor,
    case: &Case,
    cursor: &mut usize,
    depth: usize,
) -> DynamicMessage {
    let mut message = DynamicMessage::new(descriptor.clone());
    if descriptor.full_name() == "google.protobuf.FieldMask" {
        let paths = case.masks.iter().cloned().map(Value::String).collect();
        message.set_field_by_name("paths", Value::List(paths));
        return message;
    }
    for field in descriptor.fields() {
        *cursor += 1;
        let pick = *cursor;
        let value = match field.kind() {
            Kind::String => Value::String(case.strings[pick % case.strings.len()].clone()),
            Kind::Int32 => Value::I32(
                case.numbers[pick % case.numbers.len()].clamp(i32::MIN.into(), i32::MAX.into())
                    as i32,
            ),
            Kind::Int64 => Value::I64(case.numbers[pick % case.numbers.len()]),
            Kind::Bool => Value::Bool(pick.is_multiple_of(2)),
            Kind::Enum(_) => {
                Value::EnumNumber((case.numbers[pick % case.numbers.len()] % 5) as i32)
            }
            Kind::Message(inner) if depth < 2 => {
                Value::Message(fill(&inner, case, cursor, depth + 1))
            }
            _ => continue,
        };
        if field.is_map() {
            continue;
        }
        message.set_field(
            &field,
            if field.is_list() {
                Value::List(vec![value])
            } else {
                value
            },
        );
    }
    message
}

/// A digest of every table the API writes (not the audit trail, which records refusals).
async fn digest(db: &mut sqlx::PgConnection) -> String {
    sqlx::query_scalar(
        "SELECT md5(concat_ws('|', \
            (SELECT string_agg(t::text, ',' ORDER BY t::text) FROM users t), \
            (SELECT string_agg(t::text, ',' ORDER BY t::text) FROM api_standards t), \
            (SELECT string_agg(t::text, ',' ORDER BY t::text) FROM definitions t), \
            (SELECT string_agg(t::text, ',' ORDER BY t::text) FROM instances t), \
            (SELECT string_agg(t::text, ',' ORDER BY t::text) FROM shares t), \
            (SELECT string_agg(t::text, ',' ORDER BY t::text) FROM projects t)))",
    )
    .fetch_one(db)
    .await
    .unwrap()
}

#[tokio::test]
async fn random_hostile_requests_never_break_the_server_or_write_when_refused() {
    let app = TestApp::spawn().await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    create_instance_from(
        &app,
        &alice,
        "alice",
        "inst",
        "_system/openai-small",
        pb::Instance {
            api_key: random_api_key(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    crate::helpers::share(
        &app,
        &alice,
        "users/alice/instances/inst",
        "bob",
        pb::Role::Reader,
    )
    .await
    .unwrap();
    create_project(&app, &alice, "alice", "proj", "inst")
        .await
        .unwrap();
    let _ = bob;

    let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).unwrap();
    let methods: Vec<_> = pool
        .services()
        .flat_map(|s| s.methods().collect::<Vec<_>>())
        .collect();
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        ..Config::default()
    });
    let strategy = case();
    let mut db = app.db().await;
    let (mut refused, mut accepted) = (0, 0);
    for _ in 0..CASES {
        let case = strategy.new_tree(&mut runner).unwrap().current();
        let method = &methods[case.method % methods.len()];
        let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
        let message = fill(&method.input(), &case, &mut 0, 0);
        let token = if case.as_admin {
            &app.admin_token
        } else {
            &alice
        };
        let before = digest(&mut db).await;
        let mut grpc = Grpc::new(app.channel.clone());
        grpc.ready().await.unwrap();
        let result = grpc
            .unary(
                authed(message, token),
                http::uri::PathAndQuery::from_str(&path).unwrap(),
                ProstCodec::<DynamicMessage, ()>::default(),
            )
            .await;
        match result {
            Ok(_) => accepted += 1,
            Err(status) => {
                assert!(
                    !matches!(status.code(), Code::Internal | Code::Unknown),
                    "{path} answered {:?} ({}) for {case:?}",
                    status.code(),
                    status.message()
                );
                assert_eq!(
                    digest(&mut db).await,
                    before,
                    "{path} wrote something for a refused call: {case:?}"
                );
                refused += 1;
            }
        }
    }
    println!("properties: {CASES} random requests, {refused} refused, {accepted} accepted");
    assert!(refused > CASES / 2);
    crate::helpers::wait_until_serving(app.addr).await;
}
