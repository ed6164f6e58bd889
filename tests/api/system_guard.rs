//! The `_system` guard: every mutating method of the descriptor set, called by a user with a
//! `users/_system` target, is PERMISSION_DENIED. The list of methods comes from the descriptor
//! set itself, so a method added later is walked without anyone editing this test.

use std::str::FromStr;

use llm_registry::{is_read_only_method, pb::FILE_DESCRIPTOR_SET};
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor, Value};
use tonic::{Code, client::Grpc, transport::Channel};
use tonic_prost::ProstCodec;

use crate::helpers::{TestApp, authed, reason};

/// Fills the target fields of a request with `_system` names: top-level `name`/`parent`, the
/// `name` of a top-level resource message, and `*_id` handles; other fields get plausible values.
fn system_targeted(input: &MessageDescriptor) -> DynamicMessage {
    let mut message = DynamicMessage::new(input.clone());
    for field in input.fields() {
        if field.is_list() || field.is_map() {
            continue;
        }
        match field.kind() {
            Kind::String => {
                let value = match field.name() {
                    "parent" => "users/_system".to_owned(),
                    "name" => "users/_system/definitions/openai-small".to_owned(),
                    name if name.ends_with("_id") => "guarded".to_owned(),
                    _ => "users/alice".to_owned(),
                };
                message.set_field(&field, Value::String(value));
            }
            Kind::Message(resource) if resource.get_field_by_name("name").is_some() => {
                let mut nested = DynamicMessage::new(resource.clone());
                nested.set_field_by_name(
                    "name",
                    Value::String("users/_system/definitions/openai-small".to_owned()),
                );
                if let Some(model) = resource.get_field_by_name("model") {
                    nested.set_field(&model, Value::String("changed".to_owned()));
                }
                message.set_field(&field, Value::Message(nested));
            }
            Kind::Enum(_) => message.set_field(&field, Value::EnumNumber(1)),
            _ => {}
        }
    }
    message
}

#[tokio::test]
async fn every_mutating_method_refuses_system_targets_from_users() {
    let app = TestApp::spawn().await;
    let user = app.create_user("alice").await;
    let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).unwrap();

    let mut walked = Vec::new();
    for service in pool.services() {
        for method in service.methods() {
            if is_read_only_method(method.name()) {
                continue;
            }
            let path = format!("/{}/{}", service.full_name(), method.name());
            let mut grpc = Grpc::new(app.channel.clone());
            grpc.ready().await.unwrap();
            let request = authed(system_targeted(&method.input()), &user);
            let codec = ProstCodec::<DynamicMessage, ()>::default();
            let result = grpc
                .unary(
                    request,
                    http::uri::PathAndQuery::from_str(&path).unwrap(),
                    codec,
                )
                .await;
            let status = result.expect_err(&format!("{path} must refuse a user's _system write"));
            assert_eq!(status.code(), Code::PermissionDenied, "{path}: {status:?}");
            assert!(
                ["SYSTEM_NAMESPACE_READ_ONLY", "ADMIN_ONLY"].contains(&reason(&status).as_str()),
                "{path}: {}",
                reason(&status)
            );
            walked.push(path);
        }
    }
    // The walk covered the whole contract (if this count changes, a method was added or removed;
    // the loop above has already checked it, so just update the number).
    assert_eq!(walked.len(), 26, "walked {walked:#?}");

    // And nothing under users/_system changed.
    let d = app
        .definitions()
        .get_definition(authed(
            llm_registry::pb::v1::GetDefinitionRequest {
                name: "users/_system/definitions/openai-small".to_owned(),
            },
            &user,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.model, "text-embedding-3-small");
}

#[tokio::test]
async fn the_guard_lets_admins_through_and_ignores_read_references() {
    let app = TestApp::spawn().await;
    let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).unwrap();
    let method = pool
        .get_service_by_name("llmregistry.v1.LlmDefinitionService")
        .unwrap()
        .methods()
        .find(|m| m.name() == "UpdateDefinition")
        .unwrap();
    let mut grpc: Grpc<Channel> = Grpc::new(app.channel.clone());
    grpc.ready().await.unwrap();
    let mut message = system_targeted(&method.input());
    message.set_field_by_name(
        "update_mask",
        Value::Message({
            let mask_type = method.input().get_field_by_name("update_mask").unwrap();
            let Kind::Message(mask) = mask_type.kind() else {
                unreachable!()
            };
            let mut m = DynamicMessage::new(mask);
            m.set_field_by_name(
                "paths",
                Value::List(vec![Value::String("model".to_owned())]),
            );
            m
        }),
    );
    let result = grpc
        .unary(
            authed(message, &app.admin_token),
            http::uri::PathAndQuery::from_static(
                "/llmregistry.v1.LlmDefinitionService/UpdateDefinition",
            ),
            ProstCodec::<DynamicMessage, ()>::default(),
        )
        .await;
    assert!(result.is_ok(), "admin passes the guard: {result:?}");
}
