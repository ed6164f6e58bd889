//! SharingService: grant, change, revoke, list; refusals for bad grantees; access follows at once.

use llm_registry::pb::v1::{self as pb, sharing_service_client::SharingServiceClient};
use tonic::Code;

use crate::helpers::{
    TestApp, assert_code, assert_invalid_field, authed, create_instance_from, random_api_key,
    reason, share,
};

const INSTANCE: &str = "users/owner/instances/shared";

async fn world() -> (TestApp, Vec<String>) {
    let app = TestApp::spawn().await;
    let mut tokens = Vec::new();
    for user in ["owner", "ann", "ben", "cat", "dan"] {
        tokens.push(app.create_user(user).await);
    }
    let overrides = pb::Instance {
        api_key: random_api_key(),
        ..Default::default()
    };
    create_instance_from(
        &app,
        &tokens[0],
        "owner",
        "shared",
        "_system/openai-small",
        overrides,
    )
    .await
    .unwrap();
    (app, tokens)
}

fn get(token: &str) -> tonic::Request<pb::GetInstanceRequest> {
    authed(
        pb::GetInstanceRequest {
            name: INSTANCE.into(),
        },
        token,
    )
}

#[tokio::test]
async fn grant_change_revoke_and_list() {
    let (app, t) = world().await;
    let (owner, ann, ben, cat) = (&t[0], &t[1], &t[2], &t[3]);
    let mut instances = app.instances();
    let mut sharing = SharingServiceClient::new(app.channel.clone());

    assert_code(instances.get_instance(get(ann)).await, Code::NotFound);
    let granted = share(&app, owner, INSTANCE, "ann", pb::Role::Reader)
        .await
        .unwrap();
    assert_eq!(granted.name, "users/owner/instances/shared/shares/ann");
    assert_eq!(granted.grantee, "users/ann");
    assert_eq!(granted.role, pb::Role::Reader as i32);
    let seen = instances.get_instance(get(ann)).await.unwrap().into_inner();
    assert_eq!(seen.access_role, pb::Role::Reader as i32);

    // A reader cannot write or manage; re-sharing raises the role.
    let edit = |token: &str| {
        authed(
            pb::UpdateInstanceRequest {
                instance: Some(pb::Instance {
                    name: INSTANCE.into(),
                    api_key: random_api_key(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["api_key".into()],
                }),
            },
            token,
        )
    };
    let status = assert_code(
        instances.update_instance(edit(ann)).await,
        Code::PermissionDenied,
    );
    assert_eq!(reason(&status), "INSUFFICIENT_ROLE");
    assert_code(
        share(&app, ann, INSTANCE, "ben", pb::Role::Reader).await,
        Code::PermissionDenied,
    );
    let raised = share(&app, owner, INSTANCE, "ann", pb::Role::Writer)
        .await
        .unwrap();
    assert_eq!(raised.role, pb::Role::Writer as i32);
    assert_eq!(raised.create_time, granted.create_time);
    let replaced = instances
        .update_instance(edit(ann))
        .await
        .unwrap()
        .into_inner();
    assert!(
        replaced.has_api_key && replaced.api_key.is_empty(),
        "a writer replaces the key and still cannot read it"
    );
    assert_code(
        share(&app, ann, INSTANCE, "ben", pb::Role::Reader).await,
        Code::PermissionDenied,
    );

    // A co-owner manages shares.
    share(&app, owner, INSTANCE, "ben", pb::Role::Owner)
        .await
        .unwrap();
    share(&app, ben, INSTANCE, "cat", pb::Role::Reader)
        .await
        .expect("co-owners share");

    // Shared with three users: once in each of their lists, whatever the number of grantees.
    for (token, user, role) in [
        (ann, "ann", pb::Role::Writer),
        (ben, "ben", pb::Role::Owner),
        (cat, "cat", pb::Role::Reader),
    ] {
        let list = instances
            .list_instances(authed(
                pb::ListInstancesRequest {
                    parent: format!("users/{user}"),
                    ..Default::default()
                },
                token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(list.instances.len(), 1, "{user}");
        assert_eq!(list.instances[0].name, INSTANCE);
        assert_eq!(list.instances[0].access_role, role as i32);
    }
    let owner_list = instances
        .list_instances(authed(
            pb::ListInstancesRequest {
                parent: "users/owner".into(),
                ..Default::default()
            },
            owner,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(owner_list.instances.len(), 1);

    // Listing shares: managers only, grantee order, paginated.
    let list = |token: &str, size: i32, page_token: &str| {
        authed(
            pb::ListInstanceSharesRequest {
                parent: INSTANCE.into(),
                page_size: size,
                page_token: page_token.into(),
            },
            token,
        )
    };
    let first = sharing
        .list_instance_shares(list(ben, 2, ""))
        .await
        .unwrap()
        .into_inner();
    let second = sharing
        .list_instance_shares(list(ben, 2, &first.next_page_token))
        .await
        .unwrap()
        .into_inner();
    let grantees: Vec<String> = first
        .shares
        .iter()
        .chain(&second.shares)
        .map(|s| s.grantee.clone())
        .collect();
    assert_eq!(grantees, ["users/ann", "users/ben", "users/cat"]);
    assert!(second.next_page_token.is_empty());
    assert_code(
        sharing.list_instance_shares(list(ann, 10, "")).await,
        Code::PermissionDenied,
    );
    assert_code(
        sharing.list_instance_shares(list(&t[4], 10, "")).await,
        Code::NotFound,
    );

    // Revoking removes access at once.
    let unshare = |name: &str, token: &str| {
        authed(
            pb::UnshareInstanceRequest {
                name: name.into(),
                force: false,
            },
            token,
        )
    };
    assert_code(
        sharing
            .unshare_instance(unshare("users/owner/instances/shared/shares/cat", ann))
            .await,
        Code::PermissionDenied,
    );
    sharing
        .unshare_instance(unshare("users/owner/instances/shared/shares/cat", owner))
        .await
        .unwrap();
    assert_code(instances.get_instance(get(cat)).await, Code::NotFound);
    assert_code(
        sharing
            .unshare_instance(unshare("users/owner/instances/shared/shares/cat", owner))
            .await,
        Code::NotFound,
    );
    assert_code(
        sharing
            .unshare_instance(unshare("users/owner/instances/shared/shares/owner", owner))
            .await,
        Code::NotFound,
    );
}

#[tokio::test]
async fn bad_grantees_and_roles_are_refused_clearly() {
    let (app, t) = world().await;
    let owner = &t[0];
    share(&app, owner, INSTANCE, "ben", pb::Role::Owner)
        .await
        .unwrap();
    for (grantee, token) in [
        ("owner", owner),
        ("_system", owner),
        ("nobody", owner),
        ("ben", &t[2]),
    ] {
        assert_invalid_field(
            share(&app, token, INSTANCE, grantee, pb::Role::Reader).await,
            "grantee",
        );
    }
    assert_invalid_field(
        share(&app, owner, INSTANCE, "ann", pb::Role::Unspecified).await,
        "role",
    );
    let mut sharing = SharingServiceClient::new(app.channel.clone());
    let unknown_role = sharing
        .share_instance(authed(
            pb::ShareInstanceRequest {
                name: INSTANCE.into(),
                grantee: "users/ann".into(),
                role: 42,
                quota: None,
            },
            owner,
        ))
        .await;
    assert_invalid_field(unknown_role, "role");
    assert_invalid_field(
        share(
            &app,
            owner,
            "users/owner/definitions/x",
            "ann",
            pb::Role::Reader,
        )
        .await,
        "name",
    );
    // Strangers cannot tell the instance exists.
    let hidden = assert_code(
        share(&app, &t[4], INSTANCE, "ann", pb::Role::Reader).await,
        Code::NotFound,
    );
    let missing = assert_code(
        share(
            &app,
            &t[4],
            "users/owner/instances/absent",
            "ann",
            pb::Role::Reader,
        )
        .await,
        Code::NotFound,
    );
    assert_eq!(
        hidden.message().replace("shared", "X"),
        missing.message().replace("absent", "X")
    );
}
