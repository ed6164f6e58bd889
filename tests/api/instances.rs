//! LlmInstanceService: creation from definitions and standalone, overrides, the authorization
//! table, write-only keys (keep, replace, remove), lists, deletes.

use llm_registry::pb::v1 as pb;
use prost_types::FieldMask;
use tonic::Code;

use crate::helpers::{
    TestApp, assert_code, assert_invalid_field, authed, create_definition, create_instance_from,
    grant_share, random_api_key, reason, stored_key,
};

fn get(name: &str) -> pb::GetInstanceRequest {
    pb::GetInstanceRequest {
        name: name.to_owned(),
    }
}

fn update(instance: pb::Instance, paths: &[&str]) -> pb::UpdateInstanceRequest {
    pb::UpdateInstanceRequest {
        instance: Some(instance),
        update_mask: Some(FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }),
    }
}

fn delete(name: &str, etag: &str) -> pb::DeleteInstanceRequest {
    pb::DeleteInstanceRequest {
        name: name.to_owned(),
        etag: etag.to_owned(),
        force: false,
    }
}

fn with_key(key: &str) -> pb::Instance {
    pb::Instance {
        api_key: key.to_owned(),
        ..Default::default()
    }
}

#[tokio::test]
async fn instances_come_from_system_or_own_definitions_or_stand_alone() {
    let app = TestApp::spawn().await;
    let alice = app.create_user("alice").await;
    let key = random_api_key();

    // From a _system definition, by full name: every field copied, the source remembered.
    let copied = create_instance_from(
        &app,
        &alice,
        "alice",
        "small",
        "users/_system/definitions/openai-small",
        with_key(&key),
    )
    .await
    .unwrap();
    assert_eq!(copied.name, "users/alice/instances/small");
    assert_eq!(copied.definition, "users/_system/definitions/openai-small");
    assert_eq!(copied.endpoint, "https://api.openai.com/v1/embeddings");
    assert_eq!(copied.api_standard, "apiStandards/openai");
    assert_eq!(copied.model, "text-embedding-3-small");
    assert_eq!(
        (copied.dimensions, copied.context_limit),
        (Some(1536), Some(8191))
    );
    assert!(copied.has_api_key);
    assert!(copied.api_key.is_empty());
    assert_eq!(copied.access_role, pb::Role::Owner as i32);
    assert!(!copied.uid.is_empty());
    assert_eq!(
        stored_key(&app, "alice", "small").await.as_deref(),
        Some(key.as_str())
    );

    // By `owner/handle`, with overrides that win over the definition's values.
    let overridden = create_instance_from(
        &app,
        &alice,
        "alice",
        "large-eu",
        "_system/openai-large",
        pb::Instance {
            endpoint: "https://eu.api.openai.com/v1/embeddings".into(),
            dimensions: Some(256),
            description: "EU endpoint, shortened vectors".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        overridden.endpoint,
        "https://eu.api.openai.com/v1/embeddings"
    );
    assert_eq!(overridden.dimensions, Some(256));
    assert_eq!(overridden.context_limit, Some(8192));
    assert_eq!(overridden.model, "text-embedding-3-large");
    assert!(!overridden.has_api_key);

    // From her own definition, by bare handle.
    create_definition(&app, &alice, "alice", "mine")
        .await
        .unwrap();
    let own = create_instance_from(
        &app,
        &alice,
        "alice",
        "own",
        "mine",
        pb::Instance::default(),
    )
    .await
    .unwrap();
    assert_eq!(own.definition, "users/alice/definitions/mine");
    assert_eq!(own.model, "model-x");

    // Standalone: every field given by the caller, the key optional.
    let standalone = app
        .instances()
        .create_instance(authed(
            pb::CreateInstanceRequest {
                parent: "users/alice".into(),
                instance_id: "local".into(),
                instance: Some(pb::Instance {
                    endpoint: "http://127.0.0.1:8080/v1/embeddings".into(),
                    api_standard: "openai".into(),
                    model: "bge-small".into(),
                    dimensions: Some(384),
                    ..Default::default()
                }),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(standalone.definition, "");
    assert!(!standalone.has_api_key);
    assert_eq!(stored_key(&app, "alice", "local").await, None);

    // Deleting a definition leaves its instances intact, with `definition` cleared.
    app.definitions()
        .delete_definition(authed(
            pb::DeleteDefinitionRequest {
                name: "users/alice/definitions/mine".into(),
                etag: String::new(),
            },
            &alice,
        ))
        .await
        .unwrap();
    let orphan = app
        .instances()
        .get_instance(authed(get(&own.name), &alice))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(orphan.definition, "");
    assert_eq!(orphan.model, "model-x");
}

#[tokio::test]
async fn bad_sources_and_fields_are_refused_clearly() {
    let app = TestApp::spawn().await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    create_definition(&app, &bob, "bob", "private")
        .await
        .unwrap();

    // Another user's definition answers exactly as a missing one.
    let hidden = assert_code(
        create_instance_from(
            &app,
            &alice,
            "alice",
            "x",
            "bob/private",
            pb::Instance::default(),
        )
        .await,
        Code::NotFound,
    );
    let missing = assert_code(
        create_instance_from(
            &app,
            &alice,
            "alice",
            "x",
            "bob/absent",
            pb::Instance::default(),
        )
        .await,
        Code::NotFound,
    );
    assert_eq!(
        hidden.message().replace("private", "X"),
        missing.message().replace("absent", "X")
    );
    // The admin may use anyone's definition.
    create_instance_from(
        &app,
        &app.admin_token,
        "alice",
        "via-admin",
        "users/bob/definitions/private",
        pb::Instance::default(),
    )
    .await
    .expect("admin uses any definition");

    create_instance_from(
        &app,
        &alice,
        "alice",
        "taken",
        "_system/cohere-v4",
        pb::Instance::default(),
    )
    .await
    .unwrap();
    assert_code(
        create_instance_from(
            &app,
            &alice,
            "alice",
            "taken",
            "_system/cohere-v4",
            pb::Instance::default(),
        )
        .await,
        Code::AlreadyExists,
    );
    for (id, source, overrides, field) in [
        (
            "Bad",
            "_system/cohere-v4",
            pb::Instance::default(),
            "instance_id",
        ),
        (
            "ok",
            "users/_system/instances/x",
            pb::Instance::default(),
            "source_definition",
        ),
        (
            "ok",
            "_system/",
            pb::Instance::default(),
            "source_definition",
        ),
        (
            "ok",
            "_system/cohere-v4",
            pb::Instance {
                endpoint: "ftp://x".into(),
                ..Default::default()
            },
            "instance.endpoint",
        ),
        (
            "ok",
            "_system/cohere-v4",
            pb::Instance {
                dimensions: Some(-1),
                ..Default::default()
            },
            "instance.dimensions",
        ),
        (
            "ok",
            "_system/cohere-v4",
            pb::Instance {
                api_standard: "nope".into(),
                ..Default::default()
            },
            "instance.api_standard",
        ),
        (
            "ok",
            "_system/cohere-v4",
            with_key("has a space"),
            "instance.api_key",
        ),
        (
            "ok",
            "_system/cohere-v4",
            with_key(&"k".repeat(4097)),
            "instance.api_key",
        ),
    ] {
        assert_invalid_field(
            create_instance_from(&app, &alice, "alice", id, source, overrides).await,
            field,
        );
    }
    // Nobody can create in someone else's namespace.
    assert_code(
        create_instance_from(
            &app,
            &bob,
            "alice",
            "intrusion",
            "_system/cohere-v4",
            pb::Instance::default(),
        )
        .await,
        Code::PermissionDenied,
    );
    let standalone_missing_fields = app
        .instances()
        .create_instance(authed(
            pb::CreateInstanceRequest {
                parent: "users/alice".into(),
                instance_id: "bare".into(),
                instance: Some(with_key(&random_api_key())),
            },
            &alice,
        ))
        .await;
    assert_invalid_field(standalone_missing_fields, "instance.endpoint");
    // The admin creating for a user who does not exist: NOT_FOUND naming the user, nothing
    // written (the create is one statement that resolves the owner itself).
    let for_nobody = create_instance_from(
        &app,
        &app.admin_token,
        "nobody",
        "orphan",
        "_system/cohere-v4",
        pb::Instance::default(),
    )
    .await;
    let status = for_nobody.expect_err("no such owner");
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("users/nobody"), "{status:?}");
    // The same instance twice: ALREADY_EXISTS, the first one untouched.
    for attempt in 0..2 {
        let created = create_instance_from(
            &app,
            &alice,
            "alice",
            "twice",
            "_system/cohere-v4",
            pb::Instance::default(),
        )
        .await;
        match attempt {
            0 => assert!(!created.expect("first create").uid.is_empty()),
            _ => {
                assert_code(created, Code::AlreadyExists);
            }
        }
    }
}

#[tokio::test]
async fn updates_keep_replace_or_remove_the_key_as_asked() {
    let app = TestApp::spawn().await;
    let alice = app.create_user("alice").await;
    let first = random_api_key();
    let created = create_instance_from(
        &app,
        &alice,
        "alice",
        "k",
        "_system/openai-small",
        with_key(&first),
    )
    .await
    .unwrap();
    let mut client = app.instances();

    // An update that does not name api_key keeps it.
    let mut change = created.clone();
    change.model = "text-embedding-3-small-2".into();
    let kept = client
        .update_instance(authed(update(change, &["model"]), &alice))
        .await
        .unwrap()
        .into_inner();
    assert!(kept.has_api_key);
    assert_eq!(
        stored_key(&app, "alice", "k").await.as_deref(),
        Some(first.as_str())
    );
    // Not even when the mask is empty and only other fields are populated.
    let patch = pb::Instance {
        name: created.name.clone(),
        description: "d".into(),
        ..Default::default()
    };
    client
        .update_instance(authed(update(patch, &[]), &alice))
        .await
        .unwrap();
    assert_eq!(
        stored_key(&app, "alice", "k").await.as_deref(),
        Some(first.as_str())
    );

    // Naming it replaces it.
    let second = random_api_key();
    let replace = pb::Instance {
        name: created.name.clone(),
        api_key: second.clone(),
        ..Default::default()
    };
    let replaced = client
        .update_instance(authed(update(replace, &["api_key"]), &alice))
        .await
        .unwrap()
        .into_inner();
    assert!(replaced.has_api_key && replaced.api_key.is_empty());
    assert_eq!(
        stored_key(&app, "alice", "k").await.as_deref(),
        Some(second.as_str())
    );
    assert_eq!(replaced.model, "text-embedding-3-small-2");

    // A bad key is refused and the stored one stays.
    let bad = pb::Instance {
        name: created.name.clone(),
        api_key: "bad key".into(),
        ..Default::default()
    };
    assert_invalid_field(
        client
            .update_instance(authed(update(bad, &["api_key"]), &alice))
            .await,
        "instance.api_key",
    );
    assert_eq!(
        stored_key(&app, "alice", "k").await.as_deref(),
        Some(second.as_str())
    );

    // Naming it with an empty value removes it.
    let remove = pb::Instance {
        name: created.name.clone(),
        ..Default::default()
    };
    let removed = client
        .update_instance(authed(update(remove, &["api_key"]), &alice))
        .await
        .unwrap()
        .into_inner();
    assert!(!removed.has_api_key);
    assert_eq!(stored_key(&app, "alice", "k").await, None);

    // Stale etags, unknown paths, output-only paths.
    let mut stale = created.clone();
    stale.model = "lost".into();
    assert_code(
        client
            .update_instance(authed(update(stale, &["model"]), &alice))
            .await,
        Code::Aborted,
    );
    assert_invalid_field(
        client
            .update_instance(authed(update(removed.clone(), &["bogus"]), &alice))
            .await,
        "update_mask",
    );
    let ignored = client
        .update_instance(authed(
            update(removed.clone(), &["has_api_key", "uid", "definition"]),
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (ignored.uid, ignored.definition),
        (removed.uid, removed.definition)
    );
}

#[tokio::test]
async fn the_authorization_table_holds() {
    let app = TestApp::spawn().await;
    let owner = app.create_user("owner").await;
    let reader = app.create_user("reader").await;
    let writer = app.create_user("writer").await;
    let coowner = app.create_user("coowner").await;
    let stranger = app.create_user("stranger").await;
    let name = "users/owner/instances/shared";
    create_instance_from(
        &app,
        &owner,
        "owner",
        "shared",
        "_system/openai-small",
        with_key(&random_api_key()),
    )
    .await
    .unwrap();
    grant_share(&app, "owner", "shared", "reader", "reader").await;
    grant_share(&app, "owner", "shared", "writer", "writer").await;
    grant_share(&app, "owner", "shared", "coowner", "owner").await;
    let mut client = app.instances();
    let edit = |description: &str| pb::Instance {
        name: name.into(),
        description: description.into(),
        ..Default::default()
    };

    // get
    let missing = assert_code(
        client
            .get_instance(authed(get("users/owner/instances/absent"), &stranger))
            .await,
        Code::NotFound,
    );
    let hidden = assert_code(
        client.get_instance(authed(get(name), &stranger)).await,
        Code::NotFound,
    );
    assert_eq!(
        hidden.message().replace("shared", "X"),
        missing.message().replace("absent", "X")
    );
    for (token, role) in [
        (&reader, pb::Role::Reader),
        (&writer, pb::Role::Writer),
        (&coowner, pb::Role::Owner),
        (&owner, pb::Role::Owner),
        (&app.admin_token, pb::Role::Owner),
    ] {
        let seen = client
            .get_instance(authed(get(name), token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(seen.access_role, role as i32);
        assert!(seen.api_key.is_empty());
    }

    // update
    assert_code(
        client
            .update_instance(authed(update(edit("s"), &["description"]), &stranger))
            .await,
        Code::NotFound,
    );
    let status = assert_code(
        client
            .update_instance(authed(update(edit("r"), &["description"]), &reader))
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(reason(&status), "INSUFFICIENT_ROLE");
    for token in [&writer, &coowner, &owner, &app.admin_token] {
        client
            .update_instance(authed(update(edit("ok"), &["description"]), token))
            .await
            .expect("writers and up update");
    }

    // delete (readers and writers refused; strangers see nothing)
    assert_code(
        client
            .delete_instance(authed(delete(name, ""), &stranger))
            .await,
        Code::NotFound,
    );
    assert_code(
        client
            .delete_instance(authed(delete(name, ""), &reader))
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        client
            .delete_instance(authed(delete(name, ""), &writer))
            .await,
        Code::PermissionDenied,
    );

    // list: the shared instance appears for its grantees, with their role, and not for strangers.
    let list = |user: &str, scope: pb::InstanceScope| pb::ListInstancesRequest {
        parent: format!("users/{user}"),
        scope: scope as i32,
        ..Default::default()
    };
    let for_reader = client
        .list_instances(authed(
            list("reader", pb::InstanceScope::Unspecified),
            &reader,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(for_reader.instances.len(), 1);
    assert_eq!(for_reader.instances[0].access_role, pb::Role::Reader as i32);
    let for_stranger = client
        .list_instances(authed(
            list("stranger", pb::InstanceScope::Unspecified),
            &stranger,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(for_stranger.instances.is_empty());
    assert_code(
        client
            .list_instances(authed(
                list("owner", pb::InstanceScope::Unspecified),
                &stranger,
            ))
            .await,
        Code::NotFound,
    );

    // A project in use blocks the delete (without `force`); another user's project is counted,
    // not named (docs/operations.md, "Deletes, revocation and detached projects").
    let mut db = app.db().await;
    sqlx::query(
        "INSERT INTO projects (owner_id, handle, instance_id) \
         SELECT u.id, 'uses-it', i.id FROM users u, instances i WHERE u.handle = 'reader' AND i.handle = 'shared'",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let blocked = assert_code(
        client
            .delete_instance(authed(delete(name, ""), &coowner))
            .await,
        Code::FailedPrecondition,
    );
    assert!(
        blocked.message().contains("1 project(s) of other users")
            && !blocked.message().contains("uses-it"),
        "{}",
        blocked.message()
    );
    sqlx::query("DELETE FROM projects")
        .execute(&mut db)
        .await
        .unwrap();

    let current = client
        .get_instance(authed(get(name), &coowner))
        .await
        .unwrap()
        .into_inner();
    assert_code(
        client
            .delete_instance(authed(delete(name, "stale"), &coowner))
            .await,
        Code::Aborted,
    );
    client
        .delete_instance(authed(delete(name, &current.etag), &coowner))
        .await
        .expect("co-owners delete");
    assert_code(
        client.get_instance(authed(get(name), &owner)).await,
        Code::NotFound,
    );
    let shares: i64 = sqlx::query_scalar("SELECT count(*) FROM shares")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(shares, 0, "the instance's shares went with it");
}

#[tokio::test]
async fn list_instances_returns_owned_and_shared_once_with_scopes_and_pages() {
    let app = TestApp::spawn().await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    for i in 0..7 {
        create_instance_from(
            &app,
            &alice,
            "alice",
            &format!("own-{i}"),
            "_system/cohere-v4",
            pb::Instance::default(),
        )
        .await
        .unwrap();
    }
    for i in 0..5 {
        create_instance_from(
            &app,
            &bob,
            "bob",
            &format!("bobs-{i}"),
            "_system/cohere-v4",
            pb::Instance::default(),
        )
        .await
        .unwrap();
        if i % 2 == 0 {
            grant_share(&app, "bob", &format!("bobs-{i}"), "alice", "writer").await;
        }
    }
    let mut client = app.instances();
    let walk = |scope: pb::InstanceScope| {
        let mut client = client.clone();
        let alice = alice.clone();
        async move {
            let mut names = Vec::new();
            let mut token = String::new();
            loop {
                let page = client
                    .list_instances(authed(
                        pb::ListInstancesRequest {
                            parent: "users/alice".into(),
                            page_size: 3,
                            page_token: token.clone(),
                            scope: scope as i32,
                        },
                        &alice,
                    ))
                    .await
                    .unwrap()
                    .into_inner();
                names.extend(page.instances.into_iter().map(|i| (i.name, i.access_role)));
                if page.next_page_token.is_empty() {
                    return names;
                }
                token = page.next_page_token;
            }
        }
    };
    let all = walk(pb::InstanceScope::Unspecified).await;
    // Creation order: alice's own first (created first), then the ones bob shared.
    let mut expected: Vec<(String, i32)> = (0..7)
        .map(|i| {
            (
                format!("users/alice/instances/own-{i}"),
                pb::Role::Owner as i32,
            )
        })
        .collect();
    expected.extend(
        ["bobs-0", "bobs-2", "bobs-4"]
            .iter()
            .map(|h| (format!("users/bob/instances/{h}"), pb::Role::Writer as i32)),
    );
    assert_eq!(all, expected);
    assert_eq!(walk(pb::InstanceScope::Owned).await.len(), 7);
    let shared = walk(pb::InstanceScope::Shared).await;
    assert_eq!(shared.len(), 3);
    assert!(shared.iter().all(|(n, _)| n.starts_with("users/bob/")));

    // A page token is bound to its scope.
    let first = client
        .list_instances(authed(
            pb::ListInstancesRequest {
                parent: "users/alice".into(),
                page_size: 2,
                ..Default::default()
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_invalid_field(
        client
            .list_instances(authed(
                pb::ListInstancesRequest {
                    parent: "users/alice".into(),
                    page_size: 2,
                    page_token: first.next_page_token,
                    scope: pb::InstanceScope::Owned as i32,
                },
                &alice,
            ))
            .await,
        "page_token",
    );
    // The admin sees alice's list with the owner's rights.
    let seen_by_admin = client
        .list_instances(authed(
            pb::ListInstancesRequest {
                parent: "users/alice".into(),
                ..Default::default()
            },
            &app.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen_by_admin.instances.len(), 10);
    assert!(
        seen_by_admin
            .instances
            .iter()
            .all(|i| i.access_role == pb::Role::Owner as i32)
    );
    // A user who does not exist has no list (the owner's own list needs no lookup of the
    // owner; anyone else's does).
    assert_code(
        client
            .list_instances(authed(
                pb::ListInstancesRequest {
                    parent: "users/nobody".into(),
                    ..Default::default()
                },
                &app.admin_token,
            ))
            .await,
        Code::NotFound,
    );
}
