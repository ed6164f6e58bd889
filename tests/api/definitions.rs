//! LlmDefinitionService: `_system` rules, visibility, validation, updates with masks and etags,
//! deletes.

use llm_registry::pb::v1 as pb;
use prost_types::FieldMask;
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{
    TestApp, assert_code, assert_invalid_field, authed, create_definition, definition, reason,
};

fn get(name: &str) -> pb::GetDefinitionRequest {
    pb::GetDefinitionRequest {
        name: name.to_owned(),
    }
}

fn update(d: pb::Definition, paths: &[&str]) -> pb::UpdateDefinitionRequest {
    pb::UpdateDefinitionRequest {
        definition: Some(d),
        update_mask: Some(FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }),
    }
}

fn delete(name: &str, etag: &str) -> pb::DeleteDefinitionRequest {
    pb::DeleteDefinitionRequest {
        name: name.to_owned(),
        etag: etag.to_owned(),
    }
}

#[tokio::test]
async fn admin_writes_system_definitions_and_users_are_refused_for_existing_and_missing_targets() {
    let app = TestApp::spawn().await;
    let user = app.create_user("alice").await;
    let mut client = app.definitions();

    // The admin creates, updates and deletes a _system definition.
    let created = create_definition(&app, &app.admin_token, "_system", "ops-model")
        .await
        .expect("admin creates");
    assert_eq!(created.name, "users/_system/definitions/ops-model");
    let mut change = created.clone();
    change.model = "ops-model-2".to_owned();
    let updated = client
        .update_definition(authed(update(change, &["model"]), &app.admin_token))
        .await
        .expect("admin updates")
        .into_inner();
    assert_eq!(updated.model, "ops-model-2");

    // A user: PERMISSION_DENIED on create, update and delete, existing and missing alike.
    for (target, exists) in [("ops-model", true), ("no-such-model", false)] {
        let name = format!("users/_system/definitions/{target}");
        let status = assert_code(
            create_definition(&app, &user, "_system", target).await,
            Code::PermissionDenied,
        );
        assert_eq!(reason(&status), "SYSTEM_NAMESPACE_READ_ONLY");
        let mut d = definition("https://x.example.com/", "openai", "m", None);
        d.name = name.clone();
        let status = assert_code(
            client
                .update_definition(authed(update(d, &["model"]), &user))
                .await,
            Code::PermissionDenied,
        );
        assert_eq!(
            reason(&status),
            "SYSTEM_NAMESPACE_READ_ONLY",
            "update, exists={exists}"
        );
        let status = assert_code(
            client
                .delete_definition(authed(delete(&name, ""), &user))
                .await,
            Code::PermissionDenied,
        );
        assert_eq!(
            reason(&status),
            "SYSTEM_NAMESPACE_READ_ONLY",
            "delete, exists={exists}"
        );
    }
    // The user's refusals changed nothing.
    let still = client
        .get_definition(authed(get("users/_system/definitions/ops-model"), &user))
        .await
        .unwrap();
    assert_eq!(still.into_inner().model, "ops-model-2");

    client
        .delete_definition(authed(
            delete("users/_system/definitions/ops-model", &updated.etag),
            &app.admin_token,
        ))
        .await
        .expect("admin deletes");
    assert_code(
        client
            .get_definition(authed(get("users/_system/definitions/ops-model"), &user))
            .await,
        Code::NotFound,
    );
}

#[tokio::test]
async fn system_definitions_are_public_and_private_ones_look_missing_to_others() {
    let app = TestApp::spawn().await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    let mut client = app.definitions();

    for token in [&alice, &bob, &app.admin_token] {
        let d = client
            .get_definition(authed(get("users/_system/definitions/openai-small"), token))
            .await
            .expect("everyone reads _system definitions")
            .into_inner();
        assert_eq!(d.model, "text-embedding-3-small");
    }

    create_definition(&app, &alice, "alice", "private")
        .await
        .expect("alice creates her own");
    client
        .get_definition(authed(get("users/alice/definitions/private"), &alice))
        .await
        .expect("owner reads");
    client
        .get_definition(authed(
            get("users/alice/definitions/private"),
            &app.admin_token,
        ))
        .await
        .expect("admin reads");

    let hidden = assert_code(
        client
            .get_definition(authed(get("users/alice/definitions/private"), &bob))
            .await,
        Code::NotFound,
    );
    let missing = assert_code(
        client
            .get_definition(authed(get("users/alice/definitions/absent"), &bob))
            .await,
        Code::NotFound,
    );
    assert_eq!(
        hidden.message().replace("private", "X"),
        missing.message().replace("absent", "X")
    );
    assert_eq!(reason(&hidden), reason(&missing));
    assert_eq!(
        format!("{:?}", hidden.get_details_error_info()),
        format!("{:?}", missing.get_details_error_info())
    );

    // Listing someone else's definitions looks like listing a user that does not exist.
    let list = |parent: &str| pb::ListDefinitionsRequest {
        parent: parent.to_owned(),
        ..Default::default()
    };
    let other = assert_code(
        client
            .list_definitions(authed(list("users/alice"), &bob))
            .await,
        Code::NotFound,
    );
    let nobody = assert_code(
        client
            .list_definitions(authed(list("users/nobody"), &bob))
            .await,
        Code::NotFound,
    );
    assert_eq!(
        other.message().replace("alice", "X"),
        nobody.message().replace("nobody", "X")
    );

    // Writing into someone else's namespace is PERMISSION_DENIED, existing target or not.
    assert_code(
        create_definition(&app, &bob, "alice", "intrusion").await,
        Code::PermissionDenied,
    );
    assert_code(
        client
            .delete_definition(authed(delete("users/alice/definitions/private", ""), &bob))
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        client
            .delete_definition(authed(delete("users/alice/definitions/absent", ""), &bob))
            .await,
        Code::PermissionDenied,
    );
}

#[tokio::test]
async fn bad_definitions_are_invalid_argument_naming_the_field() {
    let app = TestApp::spawn().await;
    let alice = app.create_user("alice").await;
    let mut client = app.definitions();
    let create = |id: &str, d: pb::Definition| {
        authed(
            pb::CreateDefinitionRequest {
                parent: "users/alice".to_owned(),
                definition_id: id.to_owned(),
                definition: Some(d),
            },
            &alice,
        )
    };
    let good = || definition("https://api.example.com/v1/embed", "openai", "m", Some(8));

    create_definition(&app, &alice, "alice", "taken")
        .await
        .unwrap();
    assert_code(
        create_definition(&app, &alice, "alice", "taken").await,
        Code::AlreadyExists,
    );

    let cases: Vec<(&str, pb::Definition, &str)> = vec![
        (
            "ok-handle",
            pb::Definition {
                api_standard: "nope".into(),
                ..good()
            },
            "definition.api_standard",
        ),
        (
            "ok-handle",
            pb::Definition {
                api_standard: "apiStandards/nope".into(),
                ..good()
            },
            "definition.api_standard",
        ),
        ("Bad_Handle", good(), "definition_id"),
        ("-bad", good(), "definition_id"),
        ("_system", good(), "definition_id"),
        (
            "ok-handle",
            pb::Definition {
                endpoint: "ftp://api.example.com/x".into(),
                ..good()
            },
            "definition.endpoint",
        ),
        (
            "ok-handle",
            pb::Definition {
                endpoint: "api.example.com/x".into(),
                ..good()
            },
            "definition.endpoint",
        ),
        (
            "ok-handle",
            pb::Definition {
                endpoint: "https://u:p@api.example.com/x".into(),
                ..good()
            },
            "definition.endpoint",
        ),
        (
            "ok-handle",
            pb::Definition {
                endpoint: "https://api.example.com/x#frag".into(),
                ..good()
            },
            "definition.endpoint",
        ),
        (
            "ok-handle",
            pb::Definition {
                dimensions: Some(0),
                ..good()
            },
            "definition.dimensions",
        ),
        (
            "ok-handle",
            pb::Definition {
                dimensions: Some(-5),
                ..good()
            },
            "definition.dimensions",
        ),
        (
            "ok-handle",
            pb::Definition {
                context_limit: Some(0),
                ..good()
            },
            "definition.context_limit",
        ),
        (
            "ok-handle",
            pb::Definition {
                model: String::new(),
                ..good()
            },
            "definition.model",
        ),
        (
            "ok-handle",
            pb::Definition {
                model: "x".repeat(201),
                ..good()
            },
            "definition.model",
        ),
        (
            "ok-handle",
            pb::Definition {
                description: "d".repeat(1001),
                ..good()
            },
            "definition.description",
        ),
    ];
    for (id, d, field) in cases {
        assert_invalid_field(client.create_definition(create(id, d)).await, field);
    }
    let missing = client
        .create_definition(authed(
            pb::CreateDefinitionRequest {
                parent: "users/alice".to_owned(),
                definition_id: "x".to_owned(),
                definition: None,
            },
            &alice,
        ))
        .await;
    assert_invalid_field(missing, "definition");
    assert_invalid_field(
        client
            .get_definition(authed(get("users/alice/definitions/UPPER"), &alice))
            .await,
        "name",
    );
    // Nothing was written by the refused requests.
    let listed = client
        .list_definitions(authed(
            pb::ListDefinitionsRequest {
                parent: "users/alice".to_owned(),
                ..Default::default()
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner()
        .definitions;
    assert_eq!(listed.len(), 1);
}

#[tokio::test]
async fn updates_change_only_masked_fields_and_respect_etags() {
    let app = TestApp::spawn().await;
    let alice = app.create_user("alice").await;
    let mut client = app.definitions();
    let original = create_definition(&app, &alice, "alice", "embedder")
        .await
        .unwrap();

    // The mask names model only: the other populated fields of the request are ignored.
    let mut change = original.clone();
    change.model = "new-model".to_owned();
    change.endpoint = "https://elsewhere.example.com/".to_owned();
    change.dimensions = Some(999);
    let updated = client
        .update_definition(authed(
            update(change, &["model", "etag", "create_time"]),
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.model, "new-model");
    assert_eq!(updated.endpoint, original.endpoint);
    assert_eq!(updated.dimensions, original.dimensions);
    assert_ne!(updated.etag, original.etag);

    // The stale etag of the original is refused, and nothing changes.
    let mut stale = original.clone();
    stale.model = "lost-update".to_owned();
    let status = assert_code(
        client
            .update_definition(authed(update(stale, &["model"]), &alice))
            .await,
        Code::Aborted,
    );
    assert_eq!(reason(&status), "ETAG_MISMATCH");
    assert_code(
        client
            .delete_definition(authed(delete(&original.name, &original.etag), &alice))
            .await,
        Code::Aborted,
    );

    // Clearing an optional field by naming it in the mask.
    let mut clear = updated.clone();
    clear.dimensions = None;
    let cleared = client
        .update_definition(authed(update(clear, &["dimensions"]), &alice))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cleared.dimensions, None);
    assert_eq!(cleared.model, "new-model");

    // An empty mask means the populated fields.
    let patch = pb::Definition {
        name: original.name.clone(),
        description: "described".to_owned(),
        ..Default::default()
    };
    let described = client
        .update_definition(authed(update(patch, &[]), &alice))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(described.description, "described");
    assert_eq!(described.model, "new-model");

    // Unknown mask paths and invalid new values are INVALID_ARGUMENT.
    assert_invalid_field(
        client
            .update_definition(authed(update(described.clone(), &["bogus"]), &alice))
            .await,
        "update_mask",
    );
    let mut bad = described.clone();
    bad.endpoint = "gopher://x".to_owned();
    assert_invalid_field(
        client
            .update_definition(authed(update(bad, &["endpoint"]), &alice))
            .await,
        "definition.endpoint",
    );
    let mut unknown_standard = described.clone();
    unknown_standard.api_standard = "nope".to_owned();
    assert_invalid_field(
        client
            .update_definition(authed(update(unknown_standard, &["api_standard"]), &alice))
            .await,
        "definition.api_standard",
    );

    // Missing targets are NOT_FOUND for update and delete.
    let mut ghost = described.clone();
    ghost.name = "users/alice/definitions/ghost".to_owned();
    ghost.etag = String::new();
    assert_code(
        client
            .update_definition(authed(update(ghost, &["model"]), &alice))
            .await,
        Code::NotFound,
    );
    assert_code(
        client
            .delete_definition(authed(delete("users/alice/definitions/ghost", ""), &alice))
            .await,
        Code::NotFound,
    );

    client
        .delete_definition(authed(delete(&described.name, &described.etag), &alice))
        .await
        .expect("delete with the current etag");
    assert_code(
        client
            .get_definition(authed(get(&described.name), &alice))
            .await,
        Code::NotFound,
    );
}
