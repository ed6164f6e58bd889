//! ApiStandardService: everyone reads, the admin writes; a standard in use cannot be deleted.

use llm_registry::pb::v1 as pb;
use prost_types::FieldMask;
use tonic::Code;

use crate::helpers::{TestApp, assert_code, assert_invalid_field, authed, reason};

fn standard(header: &str, scheme: &str) -> pb::ApiStandard {
    pb::ApiStandard {
        auth_header: header.to_owned(),
        auth_scheme: scheme.to_owned(),
        description: "test standard".to_owned(),
        ..Default::default()
    }
}

#[tokio::test]
async fn admin_writes_standards_users_read_them_and_used_ones_stay() {
    let app = TestApp::spawn().await;
    let alice = app.create_user("alice").await;
    let mut client = app.standards();
    let create = |id: &str, s: pb::ApiStandard| pb::CreateApiStandardRequest {
        api_standard_id: id.to_owned(),
        api_standard: Some(s),
    };

    let status = assert_code(
        client
            .create_api_standard(authed(
                create("mistral", standard("Authorization", "Bearer")),
                &alice,
            ))
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(reason(&status), "ADMIN_ONLY");
    let created = client
        .create_api_standard(authed(
            create("mistral", standard("Authorization", "Bearer")),
            &app.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.name, "apiStandards/mistral");
    assert_code(
        client
            .create_api_standard(authed(
                create("mistral", standard("Authorization", "Bearer")),
                &app.admin_token,
            ))
            .await,
        Code::AlreadyExists,
    );
    assert_invalid_field(
        client
            .create_api_standard(authed(
                create("bad", standard("Bad Header", "")),
                &app.admin_token,
            ))
            .await,
        "api_standard.auth_header",
    );
    assert_invalid_field(
        client
            .create_api_standard(authed(
                create("bad", standard("X-Key", "Bear er")),
                &app.admin_token,
            ))
            .await,
        "api_standard.auth_scheme",
    );

    let got = client
        .get_api_standard(authed(
            pb::GetApiStandardRequest {
                name: "apiStandards/mistral".into(),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, created);

    let mut change = created.clone();
    change.auth_header = "X-Api-Key".into();
    change.auth_scheme = String::new();
    let updated = client
        .update_api_standard(authed(
            pb::UpdateApiStandardRequest {
                api_standard: Some(change),
                update_mask: Some(FieldMask {
                    paths: vec!["auth_header".into(), "auth_scheme".into()],
                }),
            },
            &app.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (updated.auth_header.as_str(), updated.auth_scheme.as_str()),
        ("X-Api-Key", "")
    );
    assert_eq!(updated.description, "test standard");

    // A definition uses it: delete is FAILED_PRECONDITION, naming what blocks it.
    crate::helpers::create_definition(&app, &alice, "alice", "uses-mistral")
        .await
        .unwrap();
    let mut d = app
        .definitions()
        .get_definition(authed(
            pb::GetDefinitionRequest {
                name: "users/alice/definitions/uses-mistral".into(),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    d.api_standard = "mistral".into();
    app.definitions()
        .update_definition(authed(
            pb::UpdateDefinitionRequest {
                definition: Some(d),
                update_mask: Some(FieldMask {
                    paths: vec!["api_standard".into()],
                }),
            },
            &alice,
        ))
        .await
        .unwrap();
    let delete = |etag: &str| pb::DeleteApiStandardRequest {
        name: "apiStandards/mistral".into(),
        etag: etag.into(),
    };
    let blocked = assert_code(
        client
            .delete_api_standard(authed(delete(""), &app.admin_token))
            .await,
        Code::FailedPrecondition,
    );
    assert!(
        blocked.message().contains("1 definition"),
        "{}",
        blocked.message()
    );
    assert_code(
        client.delete_api_standard(authed(delete(""), &alice)).await,
        Code::PermissionDenied,
    );
    // The seeded ones are in use too.
    assert_code(
        client
            .delete_api_standard(authed(
                pb::DeleteApiStandardRequest {
                    name: "apiStandards/openai".into(),
                    etag: String::new(),
                },
                &app.admin_token,
            ))
            .await,
        Code::FailedPrecondition,
    );

    app.definitions()
        .delete_definition(authed(
            pb::DeleteDefinitionRequest {
                name: "users/alice/definitions/uses-mistral".into(),
                etag: String::new(),
            },
            &alice,
        ))
        .await
        .unwrap();
    assert_code(
        client
            .delete_api_standard(authed(delete("stale"), &app.admin_token))
            .await,
        Code::Aborted,
    );
    client
        .delete_api_standard(authed(delete(&updated.etag), &app.admin_token))
        .await
        .expect("unused standard deletes");
    assert_code(
        client
            .get_api_standard(authed(
                pb::GetApiStandardRequest {
                    name: "apiStandards/mistral".into(),
                },
                &alice,
            ))
            .await,
        Code::NotFound,
    );
}

#[tokio::test]
async fn standards_carry_the_wire_protocol_of_their_embedding_call() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token.clone();
    let mut client = app.standards();
    // The seeded standards know their formats.
    for (handle, protocol) in [
        ("openai", pb::EmbeddingProtocol::OpenaiEmbeddings),
        ("cohere", pb::EmbeddingProtocol::CohereV2Embed),
        ("gemini", pb::EmbeddingProtocol::GeminiEmbedContent),
    ] {
        let seeded = client
            .get_api_standard(authed(
                pb::GetApiStandardRequest {
                    name: format!("apiStandards/{handle}"),
                },
                &admin,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(seeded.protocol(), protocol, "{handle}");
    }
    // A new one may name one; without, it has none.
    let mut local = standard("Authorization", "Bearer");
    local.protocol = pb::EmbeddingProtocol::OpenaiEmbeddings as i32;
    let created = client
        .create_api_standard(authed(
            pb::CreateApiStandardRequest {
                api_standard_id: "vllm".into(),
                api_standard: Some(local),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.protocol(), pb::EmbeddingProtocol::OpenaiEmbeddings);
    // Changed through the mask like any field; other fields stay.
    let updated = client
        .update_api_standard(authed(
            pb::UpdateApiStandardRequest {
                api_standard: Some(pb::ApiStandard {
                    name: "apiStandards/vllm".into(),
                    protocol: pb::EmbeddingProtocol::CohereV2Embed as i32,
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["protocol".into()],
                }),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.protocol(), pb::EmbeddingProtocol::CohereV2Embed);
    assert_eq!(updated.auth_header, "Authorization");
    // A number outside the enum is the caller's mistake, named.
    let mut unknown = standard("X-Key", "");
    unknown.protocol = 9;
    assert_invalid_field(
        client
            .create_api_standard(authed(
                pb::CreateApiStandardRequest {
                    api_standard_id: "odd".into(),
                    api_standard: Some(unknown),
                },
                &admin,
            ))
            .await,
        "api_standard.protocol",
    );
}
