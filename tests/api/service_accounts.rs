//! Service accounts: managed by administrators, tokens shown once and told apart by prefix; on
//! their own they read only what every user may; acting for a user (`x-llmr-act-as`) they are
//! exactly that user, never an administrator, with both identities in the audit trail; refusals
//! do not tell which users exist; ResolveCredential releases a key only to an account with
//! RELEASE_CREDENTIALS acting for a user who may use an instance whose owner opted in, over TLS
//! or where plaintext is allowed, audited and rate-limited; and every change to an account takes
//! effect at once on every replica, cached read paths included.

use llm_registry::pb::v1::{
    self as pb, ServiceAccountPermission as Permission, audit_service_client::AuditServiceClient,
    credential_service_client::CredentialServiceClient,
    project_service_client::ProjectServiceClient,
    service_account_service_client::ServiceAccountServiceClient,
};
use prost_types::FieldMask;
use tonic::{Code, Request, Status, transport::Channel};

use crate::{
    fake_provider::{FakeProvider, Flavor},
    helpers::{
        TestApp, acting, assert_code, assert_invalid_field, authed, create_openai_instance_on,
        create_project, create_service_account_on, random_api_key, reason, share, trust_fakes,
    },
};

fn accounts(channel: &Channel) -> ServiceAccountServiceClient<Channel> {
    ServiceAccountServiceClient::new(channel.clone())
}

fn credentials(channel: &Channel) -> CredentialServiceClient<Channel> {
    CredentialServiceClient::new(channel.clone())
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

async fn list_instances(
    app: &TestApp,
    request: Request<pb::ListInstancesRequest>,
) -> Result<Vec<String>, Status> {
    app.instances().list_instances(request).await.map(|r| {
        r.into_inner()
            .instances
            .into_iter()
            .map(|i| i.name)
            .collect()
    })
}

fn list_of(user: &str) -> pb::ListInstancesRequest {
    pb::ListInstancesRequest {
        parent: format!("users/{user}"),
        ..Default::default()
    }
}

async fn audit(
    app: &TestApp,
    request: Request<pb::ListAuditEventsRequest>,
) -> Result<Vec<pb::AuditEvent>, Status> {
    AuditServiceClient::new(app.channel.clone())
        .list_audit_events(request)
        .await
        .map(|r| r.into_inner().events)
}

async fn set_permissions(app: &TestApp, id: &str, permissions: &[Permission], users: &[&str]) {
    accounts(&app.channel)
        .update_service_account(authed(
            pb::UpdateServiceAccountRequest {
                service_account: Some(pb::ServiceAccount {
                    name: format!("serviceAccounts/{id}"),
                    permissions: permissions.iter().map(|p| *p as i32).collect(),
                    act_for_users: users.iter().map(|u| format!("users/{u}")).collect(),
                    ..Default::default()
                }),
                update_mask: mask(&["permissions", "act_for_users"]),
            },
            &app.admin_token,
        ))
        .await
        .expect("admin updates the account");
}

/// An instance of `owner` at a provider that is never called (ResolveCredential does not call).
async fn create_instance(
    app: &TestApp,
    token: &str,
    owner: &str,
    id: &str,
    key: &str,
    allow_release: bool,
) -> Result<pb::Instance, Status> {
    app.instances()
        .create_instance(authed(
            pb::CreateInstanceRequest {
                parent: format!("users/{owner}"),
                instance_id: id.into(),
                instance: Some(pb::Instance {
                    endpoint: "https://api.openai.com/v1/embeddings".into(),
                    api_standard: "openai".into(),
                    model: "text-embedding-3-small".into(),
                    dimensions: Some(512),
                    api_key: key.into(),
                    allow_credential_release: allow_release,
                    ..Default::default()
                }),
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

fn resolve(name: &str) -> pb::ResolveCredentialRequest {
    pb::ResolveCredentialRequest {
        name: name.to_owned(),
    }
}

#[tokio::test]
async fn administrators_manage_service_accounts_and_tokens_are_shown_once() {
    let app = TestApp::spawn().await;
    let admin = &app.admin_token;
    let alice = app.create_user("alice").await;
    let created = accounts(&app.channel)
        .create_service_account(authed(
            pb::CreateServiceAccountRequest {
                service_account_id: "gateway".into(),
                service_account: Some(pb::ServiceAccount {
                    display_name: "LLM gateway".into(),
                    permissions: vec![
                        Permission::ReleaseCredentials as i32,
                        Permission::ActAsUser as i32,
                    ],
                    act_for_users: vec!["users/alice".into()],
                    ..Default::default()
                }),
            },
            admin,
        ))
        .await
        .unwrap()
        .into_inner();
    let token = created.token.clone();
    assert!(token.starts_with("llmrsa_"), "told apart by its prefix");
    let account = created.service_account.unwrap();
    assert_eq!(account.name, "serviceAccounts/gateway");
    assert_eq!(
        account.permissions,
        vec![
            Permission::ActAsUser as i32,
            Permission::ReleaseCredentials as i32
        ]
    );
    assert_eq!(account.act_for_users, vec!["users/alice".to_owned()]);
    let other = create_service_account_on(&app.channel, admin, "indexer", &[], &[]).await;

    // Read by the admin and by itself; by nobody else, whether or not it exists.
    let get = |name: &str| pb::GetServiceAccountRequest { name: name.into() };
    let read = accounts(&app.channel)
        .get_service_account(authed(get("serviceAccounts/gateway"), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.display_name, "LLM gateway");
    assert_eq!(read.etag, account.etag);
    for (caller, name) in [
        (&other, "serviceAccounts/gateway"),
        (&alice, "serviceAccounts/gateway"),
        (&alice, "serviceAccounts/missing"),
    ] {
        let refused = assert_code(
            accounts(&app.channel)
                .get_service_account(authed(get(name), caller))
                .await,
            Code::PermissionDenied,
        );
        assert_eq!(reason(&refused), "ADMIN_ONLY");
    }
    assert_code(
        accounts(&app.channel)
            .get_service_account(authed(get("serviceAccounts/missing"), admin))
            .await,
        Code::NotFound,
    );
    let listed = accounts(&app.channel)
        .list_service_accounts(authed(pb::ListServiceAccountsRequest::default(), admin))
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = listed
        .service_accounts
        .iter()
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["serviceAccounts/gateway", "serviceAccounts/indexer"]
    );
    for caller in [&alice, &token] {
        assert_code(
            accounts(&app.channel)
                .list_service_accounts(authed(pb::ListServiceAccountsRequest::default(), caller))
                .await,
            Code::PermissionDenied,
        );
    }

    // Validation names the field; nothing is created.
    let bad = |id: &str, account: pb::ServiceAccount| {
        authed(
            pb::CreateServiceAccountRequest {
                service_account_id: id.into(),
                service_account: Some(account),
            },
            admin,
        )
    };
    assert_invalid_field(
        accounts(&app.channel)
            .create_service_account(bad("Bad_Id", pb::ServiceAccount::default()))
            .await,
        "service_account_id",
    );
    assert_invalid_field(
        accounts(&app.channel)
            .create_service_account(bad(
                "x",
                pb::ServiceAccount {
                    permissions: vec![0],
                    ..Default::default()
                },
            ))
            .await,
        "service_account.permissions[0]",
    );
    assert_invalid_field(
        accounts(&app.channel)
            .create_service_account(bad(
                "x",
                pb::ServiceAccount {
                    act_for_users: vec!["alice".into()],
                    ..Default::default()
                },
            ))
            .await,
        "service_account.act_for_users[0]",
    );
    assert_code(
        accounts(&app.channel)
            .create_service_account(bad("gateway", pb::ServiceAccount::default()))
            .await,
        Code::AlreadyExists,
    );
    assert_code(
        accounts(&app.channel)
            .create_service_account(bad_as(&alice, "y"))
            .await,
        Code::PermissionDenied,
    );

    // Update: only the masked fields; a stale etag is ABORTED.
    let updated = accounts(&app.channel)
        .update_service_account(authed(
            pb::UpdateServiceAccountRequest {
                service_account: Some(pb::ServiceAccount {
                    name: "serviceAccounts/gateway".into(),
                    display_name: "Gateway".into(),
                    etag: account.etag.clone(),
                    ..Default::default()
                }),
                update_mask: mask(&["display_name"]),
            },
            admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.display_name, "Gateway");
    assert_eq!(updated.permissions.len(), 2, "unmasked fields kept");
    assert_code(
        accounts(&app.channel)
            .update_service_account(authed(
                pb::UpdateServiceAccountRequest {
                    service_account: Some(pb::ServiceAccount {
                        name: "serviceAccounts/gateway".into(),
                        display_name: "Again".into(),
                        etag: account.etag.clone(),
                        ..Default::default()
                    }),
                    update_mask: mask(&["display_name"]),
                },
                admin,
            ))
            .await,
        Code::Aborted,
    );

    // Rotation: the old token stops at once, the new one works.
    let rotated = accounts(&app.channel)
        .rotate_service_account_token(authed(
            pb::RotateServiceAccountTokenRequest {
                name: "serviceAccounts/gateway".into(),
            },
            admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(rotated.token.starts_with("llmrsa_") && rotated.token != token);
    assert_code(
        accounts(&app.channel)
            .get_service_account(authed(get("serviceAccounts/gateway"), &token))
            .await,
        Code::Unauthenticated,
    );
    accounts(&app.channel)
        .get_service_account(authed(get("serviceAccounts/gateway"), &rotated.token))
        .await
        .unwrap();

    // Delete: the token stops at once; everything was audited, no token in the trail.
    accounts(&app.channel)
        .delete_service_account(authed(
            pb::DeleteServiceAccountRequest {
                name: "serviceAccounts/gateway".into(),
                etag: String::new(),
            },
            admin,
        ))
        .await
        .unwrap();
    assert_code(
        accounts(&app.channel)
            .get_service_account(authed(get("serviceAccounts/gateway"), &rotated.token))
            .await,
        Code::Unauthenticated,
    );
    let events = audit(
        &app,
        authed(
            pb::ListAuditEventsRequest {
                resource: "serviceAccounts/gateway".into(),
                ..Default::default()
            },
            admin,
        ),
    )
    .await
    .unwrap();
    let methods: Vec<&str> = events.iter().map(|e| e.method.as_str()).collect();
    for method in [
        "ServiceAccountService/CreateServiceAccount",
        "ServiceAccountService/UpdateServiceAccount",
        "ServiceAccountService/RotateServiceAccountToken",
        "ServiceAccountService/DeleteServiceAccount",
    ] {
        assert!(methods.contains(&method), "{method} audited: {methods:?}");
    }
    let all = format!("{events:?}");
    assert!(!all.contains(&token) && !all.contains(&rotated.token));
}

fn bad_as(token: &str, id: &str) -> Request<pb::CreateServiceAccountRequest> {
    authed(
        pb::CreateServiceAccountRequest {
            service_account_id: id.into(),
            service_account: Some(pb::ServiceAccount::default()),
        },
        token,
    )
}

#[tokio::test]
async fn on_its_own_a_service_account_reads_only_what_every_user_may() {
    let app = TestApp::spawn().await;
    let alice = app.create_user("alice").await;
    create_instance(&app, &alice, "alice", "mine", &random_api_key(), false)
        .await
        .unwrap();
    // It holds every permission, yet acts for nobody: none of them applies.
    let token = create_service_account_on(
        &app.channel,
        &app.admin_token,
        "indexer",
        &[Permission::ActAsUser, Permission::ReleaseCredentials],
        &[],
    )
    .await;
    app.standards()
        .list_api_standards(authed(pb::ListApiStandardsRequest::default(), &token))
        .await
        .unwrap();
    app.definitions()
        .get_definition(authed(
            pb::GetDefinitionRequest {
                name: "users/_system/definitions/openai-small".into(),
            },
            &token,
        ))
        .await
        .unwrap();
    assert_code(
        list_instances(&app, authed(list_of("alice"), &token)).await,
        Code::NotFound,
    );
    assert_code(
        app.instances()
            .get_instance(authed(
                pb::GetInstanceRequest {
                    name: "users/alice/instances/mine".into(),
                },
                &token,
            ))
            .await,
        Code::NotFound,
    );
    assert_code(
        create_instance(&app, &token, "alice", "theirs", &random_api_key(), false).await,
        Code::PermissionDenied,
    );
    assert_code(
        app.definitions()
            .create_definition(authed(
                pb::CreateDefinitionRequest {
                    parent: "users/_system".into(),
                    definition_id: "sneaky".into(),
                    definition: Some(crate::helpers::definition(
                        "https://x.example.com/v1",
                        "openai",
                        "m",
                        None,
                    )),
                },
                &token,
            ))
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        app.users()
            .list_users(authed(pb::ListUsersRequest::default(), &token))
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        credentials(&app.channel)
            .resolve_credential(authed(resolve("users/alice/instances/mine"), &token))
            .await,
        Code::PermissionDenied,
    );
    // Its audit trail is its own: the refused writes above, nothing of alice's.
    let events = audit(&app, authed(pb::ListAuditEventsRequest::default(), &token))
        .await
        .unwrap();
    assert!(!events.is_empty());
    assert!(
        events.iter().all(|e| e.caller == "serviceAccounts/indexer"),
        "{events:?}"
    );
}

#[tokio::test]
async fn acting_for_a_user_is_exactly_that_user_never_an_admin_and_both_are_audited() {
    let provider = FakeProvider::start(Flavor::OpenAi, 8).await;
    let app = TestApp::spawn_with(trust_fakes).await;
    let admin = &app.admin_token;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    let boss = app.create_user("boss").await;
    app.users()
        .update_user(authed(
            pb::UpdateUserRequest {
                user: Some(pb::User {
                    name: "users/boss".into(),
                    admin: true,
                    ..Default::default()
                }),
                update_mask: mask(&["admin"]),
            },
            admin,
        ))
        .await
        .unwrap();
    create_openai_instance_on(&app.channel, &alice, "alice", "a1", provider.endpoint()).await;
    create_openai_instance_on(&app.channel, &bob, "bob", "b1", provider.endpoint()).await;
    share(
        &app,
        &bob,
        "users/bob/instances/b1",
        "alice",
        pb::Role::Writer,
    )
    .await
    .unwrap();
    create_project(&app, &alice, "alice", "search", "users/alice/instances/a1")
        .await
        .unwrap();
    let gateway = create_service_account_on(
        &app.channel,
        admin,
        "gateway",
        &[Permission::ActAsUser],
        &[],
    )
    .await;

    // Alice's view, through the account: her own and what is shared with her.
    let mut seen = list_instances(&app, acting(list_of("alice"), &gateway, "alice"))
        .await
        .unwrap();
    seen.sort();
    assert_eq!(seen, ["users/alice/instances/a1", "users/bob/instances/b1"]);
    assert_code(
        list_instances(&app, acting(list_of("bob"), &gateway, "alice")).await,
        Code::NotFound,
    );
    // Her rights on bob's instance (writer): update yes, delete no.
    app.instances()
        .update_instance(acting(
            pb::UpdateInstanceRequest {
                instance: Some(pb::Instance {
                    name: "users/bob/instances/b1".into(),
                    description: "tuned by the gateway for alice".into(),
                    ..Default::default()
                }),
                update_mask: mask(&["description"]),
            },
            &gateway,
            "alice",
        ))
        .await
        .unwrap();
    assert_code(
        app.instances()
            .delete_instance(acting(
                pb::DeleteInstanceRequest {
                    name: "users/bob/instances/b1".into(),
                    ..Default::default()
                },
                &gateway,
                "alice",
            ))
            .await,
        Code::PermissionDenied,
    );
    // Embeds through her project, at the fake.
    let embedded = app
        .embeddings()
        .embed(acting(
            pb::EmbedRequest {
                name: "users/alice/projects/search".into(),
                inputs: vec!["hello".into()],
                input_type: 0,
            },
            &gateway,
            "alice",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(embedded.instance, "users/alice/instances/a1");
    assert_eq!(provider.request_count(), 1);

    // Acting for an admin user grants no administration.
    assert_code(
        app.users()
            .list_users(acting(pb::ListUsersRequest::default(), &gateway, "boss"))
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        app.instances()
            .get_instance(acting(
                pb::GetInstanceRequest {
                    name: "users/alice/instances/a1".into(),
                },
                &gateway,
                "boss",
            ))
            .await,
        Code::NotFound,
    );
    app.instances()
        .get_instance(authed(
            pb::GetInstanceRequest {
                name: "users/alice/instances/a1".into(),
            },
            &boss,
        ))
        .await
        .expect("boss in person is an admin");
    let mut create_for_alice = acting(
        pb::CreateInstanceRequest {
            parent: "users/alice".into(),
            instance_id: "planted".into(),
            instance: Some(pb::Instance {
                endpoint: provider.endpoint(),
                api_standard: "openai".into(),
                model: "m".into(),
                ..Default::default()
            }),
        },
        &gateway,
        "boss",
    );
    assert_code(
        app.instances().create_instance(create_for_alice).await,
        Code::PermissionDenied,
    );
    create_for_alice = authed(
        pb::CreateInstanceRequest {
            parent: "users/alice".into(),
            instance_id: "planted".into(),
            instance: Some(pb::Instance {
                endpoint: provider.endpoint(),
                api_standard: "openai".into(),
                model: "m".into(),
                ..Default::default()
            }),
        },
        &boss,
    );
    app.instances()
        .create_instance(create_for_alice)
        .await
        .expect("boss in person may write anywhere");
    // Nor a user's own credentials, nor the key opt-in.
    let refused = assert_code(
        app.users()
            .rotate_user_token(acting(
                pb::RotateUserTokenRequest {
                    name: "users/alice".into(),
                },
                &gateway,
                "alice",
            ))
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(reason(&refused), "ACT_AS_DENIED");
    let refused = assert_code(
        app.instances()
            .update_instance(acting(
                pb::UpdateInstanceRequest {
                    instance: Some(pb::Instance {
                        name: "users/alice/instances/a1".into(),
                        allow_credential_release: true,
                        ..Default::default()
                    }),
                    update_mask: mask(&["allow_credential_release"]),
                },
                &gateway,
                "alice",
            ))
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(reason(&refused), "ACT_AS_DENIED");

    // The trail: the account as caller, alice as subject, on bob's resource too; alice reads
    // what was done on her behalf, bob reads what was done to his instance.
    let alice_view = audit(&app, authed(pb::ListAuditEventsRequest::default(), &alice))
        .await
        .unwrap();
    let update = alice_view
        .iter()
        .find(|e| e.method == "LlmInstanceService/UpdateInstance" && e.outcome == "OK")
        .expect("alice sees the update done for her on bob's instance");
    assert_eq!(update.caller, "serviceAccounts/gateway");
    assert_eq!(update.subject, "users/alice");
    assert_eq!(update.resource, "users/bob/instances/b1");
    let embed = alice_view
        .iter()
        .find(|e| e.method == "EmbeddingService/Embed")
        .expect("the use is audited");
    assert_eq!(
        (embed.caller.as_str(), embed.subject.as_str()),
        ("serviceAccounts/gateway", "users/alice")
    );
    assert!(
        alice_view
            .iter()
            .any(|e| e.method == "LlmInstanceService/DeleteInstance"
                && e.outcome == "PERMISSION_DENIED"
                && e.subject == "users/alice")
    );
    let bob_view = audit(
        &app,
        authed(
            pb::ListAuditEventsRequest {
                resource: "users/bob/instances/b1".into(),
                ..Default::default()
            },
            &bob,
        ),
    )
    .await
    .unwrap();
    assert!(bob_view.iter().any(|e| e.subject == "users/alice"));
    // Filters by either identity.
    let by_subject = audit(
        &app,
        authed(
            pb::ListAuditEventsRequest {
                subject: "users/alice".into(),
                ..Default::default()
            },
            admin,
        ),
    )
    .await
    .unwrap();
    assert!(by_subject.len() >= 4);
    assert!(by_subject.iter().all(|e| e.subject == "users/alice"));
    let by_caller = audit(
        &app,
        authed(
            pb::ListAuditEventsRequest {
                caller: "serviceAccounts/gateway".into(),
                ..Default::default()
            },
            admin,
        ),
    )
    .await
    .unwrap();
    assert!(by_caller.iter().any(|e| e.subject == "users/boss"));
    assert!(
        by_caller
            .iter()
            .all(|e| e.caller == "serviceAccounts/gateway")
    );
    // Bob does not see what was done for boss.
    let bob_all = audit(&app, authed(pb::ListAuditEventsRequest::default(), &bob))
        .await
        .unwrap();
    assert!(bob_all.iter().all(|e| e.subject != "users/boss"));
}

#[tokio::test]
async fn act_as_refusals_do_not_tell_which_users_exist_and_are_audited() {
    let app = TestApp::spawn().await;
    let admin = &app.admin_token;
    let alice = app.create_user("alice").await;
    app.create_user("bob").await;
    let only_alice = create_service_account_on(
        &app.channel,
        admin,
        "only-alice",
        &[Permission::ActAsUser],
        &["alice"],
    )
    .await;
    let no_permission = create_service_account_on(&app.channel, admin, "plain", &[], &[]).await;
    let list = |token: &str, user: &str| acting(list_of(user), token, user);

    list_instances(&app, list(&only_alice, "alice"))
        .await
        .unwrap();
    let outside = assert_code(
        list_instances(&app, list(&only_alice, "bob")).await,
        Code::PermissionDenied,
    );
    let missing = assert_code(
        list_instances(&app, list(&only_alice, "nobod")).await,
        Code::PermissionDenied,
    );
    assert_eq!(
        outside.message().replace("bob", "X"),
        missing.message().replace("nobod", "X"),
        "no enumeration of users"
    );
    assert_eq!(reason(&outside), "ACT_AS_DENIED");
    assert_code(
        list_instances(&app, list(&only_alice, "_system")).await,
        Code::PermissionDenied,
    );
    assert_code(
        list_instances(&app, list(&no_permission, "alice")).await,
        Code::PermissionDenied,
    );
    // Only service accounts act for others.
    for token in [&alice, admin] {
        let refused = assert_code(
            list_instances(&app, list(token, "alice")).await,
            Code::PermissionDenied,
        );
        assert_eq!(reason(&refused), "ACT_AS_DENIED");
    }
    // Malformed: INVALID_ARGUMENT naming the metadata; an unknown token comes first.
    let mut malformed = authed(list_of("alice"), &only_alice);
    malformed
        .metadata_mut()
        .insert("x-llmr-act-as", "alice".parse().unwrap());
    assert_invalid_field(list_instances(&app, malformed).await, "x-llmr-act-as");
    let mut twice = acting(list_of("alice"), &only_alice, "alice");
    twice
        .metadata_mut()
        .append("x-llmr-act-as", "users/alice".parse().unwrap());
    assert_invalid_field(list_instances(&app, twice).await, "x-llmr-act-as");
    assert_code(
        list_instances(&app, list("llmrsa_unknown", "alice")).await,
        Code::Unauthenticated,
    );

    let events = audit(
        &app,
        authed(
            pb::ListAuditEventsRequest {
                caller: "serviceAccounts/only-alice".into(),
                ..Default::default()
            },
            admin,
        ),
    )
    .await
    .unwrap();
    let refused: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e.outcome == "PERMISSION_DENIED")
        .map(|e| (e.subject.as_str(), e.method.as_str()))
        .collect();
    for subject in ["users/bob", "users/nobod", "users/_system"] {
        assert!(
            refused.contains(&(subject, "LlmInstanceService/ListInstances")),
            "{subject} refusal audited: {refused:?}"
        );
    }
}

#[tokio::test]
async fn keys_are_released_only_where_the_owner_allowed_to_an_account_acting_for_a_user() {
    let app = TestApp::spawn().await;
    let admin = &app.admin_token;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    let dave = app.create_user("dave").await;
    app.create_user("carol").await;
    let key = random_api_key();
    let other_key = random_api_key();
    create_instance(&app, &alice, "alice", "open", &key, true)
        .await
        .unwrap();
    let closed = create_instance(&app, &alice, "alice", "closed", &other_key, false)
        .await
        .unwrap();
    assert!(!closed.allow_credential_release, "off by default");
    for instance in ["open", "closed"] {
        share(
            &app,
            &alice,
            &format!("users/alice/instances/{instance}"),
            "bob",
            pb::Role::Reader,
        )
        .await
        .unwrap();
        share(
            &app,
            &alice,
            &format!("users/alice/instances/{instance}"),
            "dave",
            pb::Role::Writer,
        )
        .await
        .unwrap();
    }
    create_project(&app, &alice, "alice", "rag", "users/alice/instances/open")
        .await
        .unwrap();
    let release = create_service_account_on(
        &app.channel,
        admin,
        "gateway",
        &[Permission::ActAsUser, Permission::ReleaseCredentials],
        &[],
    )
    .await;
    let act_only = create_service_account_on(
        &app.channel,
        admin,
        "act-only",
        &[Permission::ActAsUser],
        &[],
    )
    .await;

    // A reader of the instance, through the gateway.
    let released = credentials(&app.channel)
        .resolve_credential(acting(
            resolve("users/alice/instances/open"),
            &release,
            "bob",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(released.api_key, key);
    assert_eq!(released.instance, "users/alice/instances/open");
    assert_eq!(released.endpoint, "https://api.openai.com/v1/embeddings");
    assert_eq!(released.api_standard, "apiStandards/openai");
    assert_eq!(released.auth_header, "Authorization");
    assert_eq!(released.auth_scheme, "Bearer");
    assert_eq!(released.model, "text-embedding-3-small");
    assert_eq!(released.dimensions, Some(512));
    assert_eq!(released.project, "");
    // A project stands for its instance, for whoever may read the project.
    let by_project = credentials(&app.channel)
        .resolve_credential(acting(
            resolve("users/alice/projects/rag"),
            &release,
            "alice",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_project.api_key, key);
    assert_eq!(by_project.project, "users/alice/projects/rag");
    assert_code(
        credentials(&app.channel)
            .resolve_credential(acting(resolve("users/alice/projects/rag"), &release, "bob"))
            .await,
        Code::NotFound,
    );
    // Not opted in: the key stays in the registry.
    let refused = assert_code(
        credentials(&app.channel)
            .resolve_credential(acting(
                resolve("users/alice/instances/closed"),
                &release,
                "bob",
            ))
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&refused), "RELEASE_NOT_ALLOWED");
    assert!(!refused.message().contains(&other_key));
    // Strangers do not learn it exists.
    assert_code(
        credentials(&app.channel)
            .resolve_credential(acting(
                resolve("users/alice/instances/open"),
                &release,
                "carol",
            ))
            .await,
        Code::NotFound,
    );
    // Only an account with RELEASE_CREDENTIALS, acting for a user.
    for request in [
        acting(resolve("users/alice/instances/open"), &act_only, "bob"),
        authed(resolve("users/alice/instances/open"), &release),
        authed(resolve("users/alice/instances/open"), &alice),
        authed(resolve("users/alice/instances/open"), admin),
    ] {
        let refused = assert_code(
            credentials(&app.channel).resolve_credential(request).await,
            Code::PermissionDenied,
        );
        assert_eq!(reason(&refused), "RELEASE_DENIED");
    }

    // The opt-in is the owner's (and co-owners', and the admin's): a writer may not set it.
    let allow = |token: &str| {
        authed(
            pb::UpdateInstanceRequest {
                instance: Some(pb::Instance {
                    name: "users/alice/instances/closed".into(),
                    allow_credential_release: true,
                    ..Default::default()
                }),
                update_mask: mask(&["allow_credential_release"]),
            },
            token,
        )
    };
    let refused = assert_code(
        app.instances().update_instance(allow(&dave)).await,
        Code::PermissionDenied,
    );
    assert_eq!(reason(&refused), "INSUFFICIENT_ROLE");
    // A writer's other edits keep the flag as it is.
    app.instances()
        .update_instance(authed(
            pb::UpdateInstanceRequest {
                instance: Some(pb::Instance {
                    name: "users/alice/instances/open".into(),
                    description: "edited by dave".into(),
                    ..Default::default()
                }),
                update_mask: None,
            },
            &dave,
        ))
        .await
        .unwrap();
    let updated = app
        .instances()
        .update_instance(allow(&alice))
        .await
        .unwrap()
        .into_inner();
    assert!(updated.allow_credential_release);
    let now_open = credentials(&app.channel)
        .resolve_credential(acting(
            resolve("users/alice/instances/closed"),
            &release,
            "dave",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now_open.api_key, other_key);
    // Readers see whether an instance allows release.
    let read = crate::helpers::get_instance(&app, &bob, "users/alice/instances/open")
        .await
        .unwrap();
    assert!(read.allow_credential_release);

    // Every release is on the record with both identities and the project; no key anywhere.
    let events = audit(
        &app,
        authed(
            pb::ListAuditEventsRequest {
                resource: "users/alice".into(),
                ..Default::default()
            },
            admin,
        ),
    )
    .await
    .unwrap();
    let releases: Vec<&pb::AuditEvent> = events
        .iter()
        .filter(|e| e.method == "CredentialService/ResolveCredential" && e.outcome == "OK")
        .collect();
    assert_eq!(releases.len(), 3, "{releases:?}");
    assert!(
        releases
            .iter()
            .all(|e| e.caller == "serviceAccounts/gateway")
    );
    assert!(releases.iter().any(|e| e.subject == "users/bob"
        && e.resource == "users/alice/instances/open"
        && !e.detail.contains("project")));
    assert!(releases.iter().any(
        |e| e.subject == "users/alice" && e.detail.contains("project=users/alice/projects/rag")
    ));
    assert!(
        events
            .iter()
            .any(|e| e.method == "CredentialService/ResolveCredential"
                && e.outcome == "FAILED_PRECONDITION"
                && e.subject == "users/bob")
    );
    let mut db = app.db().await;
    let trail: Vec<String> = sqlx::query_scalar("SELECT row_to_json(a)::text FROM audit_events a")
        .fetch_all(&mut db)
        .await
        .unwrap();
    assert!(
        trail
            .iter()
            .all(|row| !row.contains(&key) && !row.contains(&other_key))
    );
}

#[tokio::test]
async fn releases_are_rate_limited_per_account_and_refused_over_plaintext() {
    let app = TestApp::spawn_with(|settings| settings.release.per_minute = 2).await;
    let admin = &app.admin_token;
    let alice = app.create_user("alice").await;
    create_instance(&app, &alice, "alice", "open", &random_api_key(), true)
        .await
        .unwrap();
    let permissions = [Permission::ActAsUser, Permission::ReleaseCredentials];
    let first = create_service_account_on(&app.channel, admin, "first", &permissions, &[]).await;
    let second = create_service_account_on(&app.channel, admin, "second", &permissions, &[]).await;
    let ask = |token: &str| acting(resolve("users/alice/instances/open"), token, "alice");
    for _ in 0..2 {
        credentials(&app.channel)
            .resolve_credential(ask(&first))
            .await
            .unwrap();
    }
    let limited = assert_code(
        credentials(&app.channel)
            .resolve_credential(ask(&first))
            .await,
        Code::ResourceExhausted,
    );
    assert_eq!(reason(&limited), "CREDENTIAL_RELEASE_RATE_LIMITED");
    use tonic_types::StatusExt as _;
    let retry = limited.get_details_retry_info().expect("RetryInfo");
    assert!(retry.retry_delay.is_some_and(|d| d.as_secs() <= 60));
    // Per account: another account has its own budget, and a second replica shares the first's.
    credentials(&app.channel)
        .resolve_credential(ask(&second))
        .await
        .unwrap();
    let replica = app
        .replica_with(|settings| settings.release.per_minute = 2)
        .await;
    assert_code(
        credentials(&replica.channel)
            .resolve_credential(ask(&first))
            .await,
        Code::ResourceExhausted,
    );

    // A listener without TLS, where the operator did not allow plaintext release.
    let plaintext = app
        .replica_with(|settings| settings.release.plaintext_allowed = false)
        .await;
    let refused = assert_code(
        credentials(&plaintext.channel)
            .resolve_credential(ask(&second))
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&refused), "PLAINTEXT_TRANSPORT");
    assert!(
        refused
            .message()
            .contains("ALLOW_PLAINTEXT_CREDENTIAL_RELEASE")
    );
}

#[tokio::test]
async fn account_changes_take_effect_at_once_on_every_replica_cached_paths_included() {
    let provider = FakeProvider::start(Flavor::OpenAi, 8).await;
    let first = TestApp::spawn_with(trust_fakes).await;
    let second = first.replica_with(trust_fakes).await;
    let admin = &first.admin_token;
    let alice = first.create_user("alice").await;
    first.create_user("bob").await;
    create_openai_instance_on(&first.channel, &alice, "alice", "a1", provider.endpoint()).await;
    create_project(&first, &alice, "alice", "p", "users/alice/instances/a1")
        .await
        .unwrap();
    let token = create_service_account_on(
        &first.channel,
        admin,
        "gateway",
        &[Permission::ActAsUser],
        &[],
    )
    .await;
    let get = |token: &str| {
        acting(
            pb::GetInstanceRequest {
                name: "users/alice/instances/a1".into(),
            },
            token,
            "alice",
        )
    };
    let embed = |token: &str| {
        acting(
            pb::EmbedRequest {
                name: "users/alice/projects/p".into(),
                inputs: vec!["x".into()],
                input_type: 0,
            },
            token,
            "alice",
        )
    };
    let project = |token: &str| {
        acting(
            pb::GetProjectInstanceRequest {
                name: "users/alice/projects/p".into(),
            },
            token,
            "alice",
        )
    };
    // Warm the second replica's cache (twice: the second answer comes from it).
    for _ in 0..2 {
        second.instances().get_instance(get(&token)).await.unwrap();
        second.embeddings().embed(embed(&token)).await.unwrap();
        ProjectServiceClient::new(second.channel.clone())
            .get_project_instance(project(&token))
            .await
            .unwrap();
    }

    // Permission removed on the first: refused at once on the second.
    set_permissions(&first, "gateway", &[], &[]).await;
    assert_code(
        second.instances().get_instance(get(&token)).await,
        Code::PermissionDenied,
    );
    assert_code(
        second.embeddings().embed(embed(&token)).await,
        Code::PermissionDenied,
    );
    assert_code(
        ProjectServiceClient::new(second.channel.clone())
            .get_project_instance(project(&token))
            .await,
        Code::PermissionDenied,
    );
    // Given back, but only for bob: alice is refused.
    set_permissions(&first, "gateway", &[Permission::ActAsUser], &["bob"]).await;
    assert_code(
        second.instances().get_instance(get(&token)).await,
        Code::PermissionDenied,
    );
    set_permissions(&first, "gateway", &[Permission::ActAsUser], &[]).await;
    second.instances().get_instance(get(&token)).await.unwrap();
    second.embeddings().embed(embed(&token)).await.unwrap();

    // Token rotated on the first: the old one is unknown at once on the second.
    let rotated = accounts(&first.channel)
        .rotate_service_account_token(authed(
            pb::RotateServiceAccountTokenRequest {
                name: "serviceAccounts/gateway".into(),
            },
            admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .token;
    assert_code(
        second.instances().get_instance(get(&token)).await,
        Code::Unauthenticated,
    );
    assert_code(
        second.embeddings().embed(embed(&token)).await,
        Code::Unauthenticated,
    );
    second
        .instances()
        .get_instance(get(&rotated))
        .await
        .unwrap();
    second.embeddings().embed(embed(&rotated)).await.unwrap();

    // Deleted on the first: unknown at once on the second.
    accounts(&first.channel)
        .delete_service_account(authed(
            pb::DeleteServiceAccountRequest {
                name: "serviceAccounts/gateway".into(),
                etag: String::new(),
            },
            admin,
        ))
        .await
        .unwrap();
    assert_code(
        second.instances().get_instance(get(&rotated)).await,
        Code::Unauthenticated,
    );
    assert_code(
        second.embeddings().embed(embed(&rotated)).await,
        Code::Unauthenticated,
    );
    assert_code(
        ProjectServiceClient::new(second.channel.clone())
            .get_project_instance(project(&rotated))
            .await,
        Code::Unauthenticated,
    );
    // The user acted for, deleted on the first: refused at once on the second.
    let again = create_service_account_on(
        &first.channel,
        admin,
        "again",
        &[Permission::ActAsUser],
        &[],
    )
    .await;
    second.instances().get_instance(get(&again)).await.unwrap();
    first
        .users()
        .delete_user(authed(
            pb::DeleteUserRequest {
                name: "users/alice".into(),
                etag: String::new(),
                force: true,
            },
            admin,
        ))
        .await
        .unwrap();
    assert_code(
        second.instances().get_instance(get(&again)).await,
        Code::PermissionDenied,
    );
}

#[tokio::test]
async fn an_account_cannot_make_a_co_owner_who_opts_an_instance_in_for_it() {
    let app = TestApp::spawn().await;
    let alice = app.create_user("alice").await;
    let dave = app.create_user("dave").await;
    let key = random_api_key();
    create_instance(&app, &alice, "alice", "paid", &key, false)
        .await
        .unwrap();
    let gateway = create_service_account_on(
        &app.channel,
        &app.admin_token,
        "gateway",
        &[Permission::ActAsUser, Permission::ReleaseCredentials],
        &[],
    )
    .await;
    let name = "users/alice/instances/paid";
    let share_request = |role: pb::Role| pb::ShareInstanceRequest {
        name: name.into(),
        grantee: "users/dave".into(),
        role: role as i32,
        quota: None,
    };
    let sharing = || pb::sharing_service_client::SharingServiceClient::new(app.channel.clone());

    // Acting for alice, the account may not make dave a co-owner (nor raise him to one)...
    let refused = assert_code(
        sharing()
            .share_instance(acting(share_request(pb::Role::Owner), &gateway, "alice"))
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(reason(&refused), "ACT_AS_DENIED");
    sharing()
        .share_instance(acting(share_request(pb::Role::Writer), &gateway, "alice"))
        .await
        .expect("other roles may be granted while acting");
    let refused = assert_code(
        sharing()
            .share_instance(acting(share_request(pb::Role::Owner), &gateway, "alice"))
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(reason(&refused), "ACT_AS_DENIED");

    // ...and a co-owner alice made in person may turn the opt-in off, never on.
    sharing()
        .share_instance(authed(share_request(pb::Role::Owner), &alice))
        .await
        .unwrap();
    let opt_in = |allow: bool, token: &str| {
        let mut instances = app.instances();
        let request = authed(
            pb::UpdateInstanceRequest {
                instance: Some(pb::Instance {
                    name: name.into(),
                    allow_credential_release: allow,
                    ..Default::default()
                }),
                update_mask: mask(&["allow_credential_release"]),
            },
            token,
        );
        async move { instances.update_instance(request).await }
    };
    let refused = assert_code(opt_in(true, &dave).await, Code::PermissionDenied);
    assert_eq!(reason(&refused), "INSUFFICIENT_ROLE");
    assert!(refused.message().contains("only the owner"), "{refused:?}");
    let released = credentials(&app.channel)
        .resolve_credential(acting(resolve(name), &gateway, "alice"))
        .await;
    let refused = assert_code(released, Code::FailedPrecondition);
    assert_eq!(reason(&refused), "RELEASE_NOT_ALLOWED");
    assert!(!refused.message().contains(&key));

    // The owner opts in; the co-owner may take it back.
    opt_in(true, &alice).await.unwrap();
    let allowed = opt_in(false, &dave).await.unwrap().into_inner();
    assert!(!allowed.allow_credential_release);
    let refused = assert_code(
        credentials(&app.channel)
            .resolve_credential(acting(resolve(name), &gateway, "alice"))
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&refused), "RELEASE_NOT_ALLOWED");
}
