//! The authorization matrix (tests/authorization_matrix.tsv): every RPC of every service, called
//! by every kind of caller in a fresh world, answers the expected code. And existence hiding: a
//! stranger's answer about an existing private resource is byte-for-byte the answer about a
//! missing one, apart from the name.

use std::{collections::BTreeMap, str::FromStr};

use futures_util::future::join_all;
use llm_registry::pb::{FILE_DESCRIPTOR_SET, v1 as pb};
use prost::Message;
use prost_reflect::DescriptorPool;
use prost_types::FieldMask;
use tonic::{Code, Request, Status, client::Grpc};

use crate::{
    fake_provider::{FakeProvider, Flavor},
    helpers::{
        TestApp, acting, authed, create_definition, create_instance_from, create_project,
        create_service_account_on, random_api_key, share, trust_fakes,
    },
    raw::RawCodec,
};

const CALLERS: [&str; 14] = [
    "anonymous",
    "stranger",
    "reader",
    "writer",
    "coowner",
    "owner",
    "admin",
    "sa",
    "as-owner",
    "as-reader",
    "as-writer",
    "as-stranger",
    "as-admin",
    "release",
];

/// How a matrix caller calls: its bearer token (none for anonymous) and, for a service account
/// acting for a user, that user's handle (the `x-llmr-act-as` metadata).
#[derive(Clone, Debug, Default)]
struct Identity {
    token: Option<String>,
    act_as: Option<String>,
}

/// The service accounts every world's callers use (one set per server: accounts own nothing, so
/// a cell cannot change what another cell sees through them).
struct Accounts {
    none: String,
    act: String,
    release: String,
}

impl Accounts {
    async fn create(app: &TestApp) -> Self {
        use pb::ServiceAccountPermission::{ActAsUser, ReleaseCredentials};
        let admin = &app.admin_token;
        Self {
            none: create_service_account_on(&app.channel, admin, "matrix-none", &[], &[]).await,
            act: create_service_account_on(&app.channel, admin, "matrix-act", &[ActAsUser], &[])
                .await,
            release: create_service_account_on(
                &app.channel,
                admin,
                "matrix-release",
                &[ActAsUser, ReleaseCredentials],
                &[],
            )
            .await,
        }
    }
}

/// The names a request targets. Existing private resources are `hidden-*`; the same-length
/// `absent-*` names are missing, so that answers about both can be compared byte for byte.
#[derive(Clone)]
struct Targets {
    /// Target of user methods (`users/{user}`).
    user: String,
    /// Owner of the definition, instances and project.
    owner: String,
    def: String,
    inst: String,
    inst2: String,
    proj: String,
    standard: String,
    /// An existing user with a share on `inst2`, and another to share with.
    grantee: String,
    newcomer: String,
    /// Makes created handles unique per cell.
    suffix: String,
}

impl Targets {
    fn existing(n: usize) -> Self {
        Self {
            user: format!("hidden-{n}"),
            owner: format!("hidden-{n}"),
            def: "hidden-def".into(),
            inst: "hidden-inst".into(),
            inst2: "hidden-in2".into(),
            proj: "hidden-proj".into(),
            standard: format!("std-{n}"),
            grantee: format!("reader-{n}"),
            newcomer: format!("extra-{n}"),
            suffix: n.to_string(),
        }
    }

    fn missing(n: usize) -> Self {
        Self {
            user: format!("absent-{n}"),
            def: "absent-def".into(),
            inst: "absent-inst".into(),
            inst2: "absent-in2".into(),
            proj: "absent-proj".into(),
            ..Self::existing(n)
        }
    }

    fn instance(&self, handle: &str) -> String {
        format!("users/{}/instances/{handle}", self.owner)
    }

    /// The world's own service account (the target of ServiceAccountService rows).
    fn account(&self) -> String {
        format!("serviceAccounts/{}-sa", self.user)
    }
}

fn mask(path: &str) -> Option<FieldMask> {
    Some(FieldMask {
        paths: vec![path.to_owned()],
    })
}

/// The request each RPC sends in the matrix.
fn request_for(rpc: &str, t: &Targets) -> Vec<u8> {
    let owner = format!("users/{}", t.owner);
    let definition = format!("{owner}/definitions/{}", t.def);
    let project = format!("{owner}/projects/{}", t.proj);
    let service_fields = pb::Instance {
        endpoint: "https://llm.example.com/v1".into(),
        api_standard: "openai".into(),
        model: "m".into(),
        ..Default::default()
    };
    match rpc {
        // Variants of an RPC (rows `Service/Method?variant`): deleting the instance that the
        // owner's project is bound to, without and with `force`, and the other revocations forced.
        "LlmInstanceService/DeleteInstance?bound" => pb::DeleteInstanceRequest {
            name: t.instance(&t.inst),
            etag: String::new(),
            force: false,
        }
        .encode_to_vec(),
        "LlmInstanceService/DeleteInstance?force" => pb::DeleteInstanceRequest {
            name: t.instance(&t.inst),
            etag: String::new(),
            force: true,
        }
        .encode_to_vec(),
        "SharingService/UnshareInstance?force" => pb::UnshareInstanceRequest {
            name: format!("{}/shares/{}", t.instance(&t.inst), t.grantee),
            force: true,
        }
        .encode_to_vec(),
        "UserService/DeleteUser?force" => pb::DeleteUserRequest {
            name: format!("users/{}", t.user),
            etag: String::new(),
            force: true,
        }
        .encode_to_vec(),
        "UserService/CreateUser" => pb::CreateUserRequest {
            user_id: format!("new-{}", t.suffix),
            user: Some(pb::User::default()),
        }
        .encode_to_vec(),
        "UserService/GetUser" => pb::GetUserRequest {
            name: format!("users/{}", t.user),
        }
        .encode_to_vec(),
        "UserService/ListUsers" => pb::ListUsersRequest::default().encode_to_vec(),
        "UserService/UpdateUser" => pb::UpdateUserRequest {
            user: Some(pb::User {
                name: format!("users/{}", t.user),
                display_name: "renamed".into(),
                ..Default::default()
            }),
            update_mask: mask("display_name"),
        }
        .encode_to_vec(),
        "UserService/DeleteUser" => pb::DeleteUserRequest {
            name: format!("users/{}", t.user),
            etag: String::new(),
            force: false,
        }
        .encode_to_vec(),
        "UserService/RotateUserToken" => pb::RotateUserTokenRequest {
            name: format!("users/{}", t.user),
        }
        .encode_to_vec(),
        "ApiStandardService/CreateApiStandard" => pb::CreateApiStandardRequest {
            api_standard_id: format!("new-std-{}", t.suffix),
            api_standard: Some(pb::ApiStandard {
                auth_header: "Authorization".into(),
                ..Default::default()
            }),
        }
        .encode_to_vec(),
        "ApiStandardService/GetApiStandard" => pb::GetApiStandardRequest {
            name: "apiStandards/openai".into(),
        }
        .encode_to_vec(),
        "ApiStandardService/ListApiStandards" => {
            pb::ListApiStandardsRequest::default().encode_to_vec()
        }
        "ApiStandardService/UpdateApiStandard" => pb::UpdateApiStandardRequest {
            api_standard: Some(pb::ApiStandard {
                name: format!("apiStandards/{}", t.standard),
                description: "d".into(),
                ..Default::default()
            }),
            update_mask: mask("description"),
        }
        .encode_to_vec(),
        "ApiStandardService/DeleteApiStandard" => pb::DeleteApiStandardRequest {
            name: format!("apiStandards/{}", t.standard),
            etag: String::new(),
        }
        .encode_to_vec(),
        "LlmDefinitionService/CreateDefinition" => pb::CreateDefinitionRequest {
            parent: owner.clone(),
            definition_id: "new-def".into(),
            definition: Some(pb::Definition {
                endpoint: "https://llm.example.com/v1".into(),
                api_standard: "openai".into(),
                model: "m".into(),
                ..Default::default()
            }),
        }
        .encode_to_vec(),
        "LlmDefinitionService/GetDefinition" => {
            pb::GetDefinitionRequest { name: definition }.encode_to_vec()
        }
        "LlmDefinitionService/ListDefinitions" => pb::ListDefinitionsRequest {
            parent: owner,
            ..Default::default()
        }
        .encode_to_vec(),
        "LlmDefinitionService/UpdateDefinition" => pb::UpdateDefinitionRequest {
            definition: Some(pb::Definition {
                name: definition,
                model: "m2".into(),
                ..Default::default()
            }),
            update_mask: mask("model"),
        }
        .encode_to_vec(),
        "LlmDefinitionService/DeleteDefinition" => pb::DeleteDefinitionRequest {
            name: definition,
            etag: String::new(),
        }
        .encode_to_vec(),
        "LlmInstanceService/CreateInstance" => pb::CreateInstanceRequest {
            parent: owner,
            instance_id: "new-inst".into(),
            instance: Some(service_fields),
        }
        .encode_to_vec(),
        "LlmInstanceService/CreateInstanceFromDefinition" => {
            pb::CreateInstanceFromDefinitionRequest {
                parent: owner,
                instance_id: "new-inst".into(),
                source_definition: "_system/openai-small".into(),
                instance: None,
            }
            .encode_to_vec()
        }
        "LlmInstanceService/GetInstance" => pb::GetInstanceRequest {
            name: t.instance(&t.inst),
        }
        .encode_to_vec(),
        "LlmInstanceService/ListInstances" => pb::ListInstancesRequest {
            parent: owner,
            ..Default::default()
        }
        .encode_to_vec(),
        "LlmInstanceService/UpdateInstance" => pb::UpdateInstanceRequest {
            instance: Some(pb::Instance {
                name: t.instance(&t.inst),
                description: "d".into(),
                ..Default::default()
            }),
            update_mask: mask("description"),
        }
        .encode_to_vec(),
        "LlmInstanceService/DeleteInstance" => pb::DeleteInstanceRequest {
            name: t.instance(&t.inst2),
            etag: String::new(),
            force: false,
        }
        .encode_to_vec(),
        "SharingService/ShareInstance" => pb::ShareInstanceRequest {
            name: t.instance(&t.inst2),
            grantee: format!("users/{}", t.newcomer),
            role: pb::Role::Reader as i32,
            quota: None,
        }
        .encode_to_vec(),
        "SharingService/UnshareInstance" => pb::UnshareInstanceRequest {
            name: format!("{}/shares/{}", t.instance(&t.inst2), t.grantee),
            force: false,
        }
        .encode_to_vec(),
        "SharingService/GetShare" => pb::GetShareRequest {
            name: format!("{}/shares/{}", t.instance(&t.inst), t.grantee),
        }
        .encode_to_vec(),
        "UsageService/ListUsage" => pb::ListUsageRequest {
            instance: t.instance(&t.inst),
            ..Default::default()
        }
        .encode_to_vec(),
        "SharingService/ListInstanceShares" => pb::ListInstanceSharesRequest {
            parent: t.instance(&t.inst),
            ..Default::default()
        }
        .encode_to_vec(),
        "ProjectService/CreateProject" => pb::CreateProjectRequest {
            parent: owner,
            project_id: "new-proj".into(),
            project: Some(pb::Project {
                instance: t.instance(&t.inst),
                ..Default::default()
            }),
        }
        .encode_to_vec(),
        "ProjectService/GetProject" => pb::GetProjectRequest { name: project }.encode_to_vec(),
        "ProjectService/ListProjects" => pb::ListProjectsRequest {
            parent: owner,
            ..Default::default()
        }
        .encode_to_vec(),
        "ProjectService/UpdateProject" => pb::UpdateProjectRequest {
            project: Some(pb::Project {
                name: project,
                description: "d".into(),
                ..Default::default()
            }),
            update_mask: mask("description"),
        }
        .encode_to_vec(),
        "ProjectService/DeleteProject" => pb::DeleteProjectRequest {
            name: project,
            etag: String::new(),
        }
        .encode_to_vec(),
        "ProjectService/GetProjectInstance" => {
            pb::GetProjectInstanceRequest { name: project }.encode_to_vec()
        }
        "EmbeddingService/Embed" => pb::EmbedRequest {
            name: t.instance(&t.inst),
            inputs: vec!["hello".into()],
            input_type: 0,
        }
        .encode_to_vec(),
        "EmbeddingService/Embed?project" => pb::EmbedRequest {
            name: project,
            inputs: vec!["hello".into()],
            input_type: 0,
        }
        .encode_to_vec(),
        "EmbeddingService/TestInstance" => pb::TestInstanceRequest {
            name: t.instance(&t.inst),
        }
        .encode_to_vec(),
        "AuditService/ListAuditEvents" => pb::ListAuditEventsRequest {
            resource: owner,
            ..Default::default()
        }
        .encode_to_vec(),
        "ServiceAccountService/CreateServiceAccount" => pb::CreateServiceAccountRequest {
            service_account_id: format!("new-sa-{}", t.suffix),
            service_account: Some(pb::ServiceAccount::default()),
        }
        .encode_to_vec(),
        "ServiceAccountService/GetServiceAccount" => {
            pb::GetServiceAccountRequest { name: t.account() }.encode_to_vec()
        }
        "ServiceAccountService/ListServiceAccounts" => {
            pb::ListServiceAccountsRequest::default().encode_to_vec()
        }
        "ServiceAccountService/UpdateServiceAccount" => pb::UpdateServiceAccountRequest {
            service_account: Some(pb::ServiceAccount {
                name: t.account(),
                display_name: "renamed".into(),
                ..Default::default()
            }),
            update_mask: mask("display_name"),
        }
        .encode_to_vec(),
        "ServiceAccountService/DeleteServiceAccount" => pb::DeleteServiceAccountRequest {
            name: t.account(),
            etag: String::new(),
        }
        .encode_to_vec(),
        "ServiceAccountService/RotateServiceAccountToken" => {
            pb::RotateServiceAccountTokenRequest { name: t.account() }.encode_to_vec()
        }
        "CredentialService/ResolveCredential" => pb::ResolveCredentialRequest {
            name: t.instance(&t.inst),
        }
        .encode_to_vec(),
        "CredentialService/ResolveCredential?project" => {
            pb::ResolveCredentialRequest { name: project }.encode_to_vec()
        }
        other => panic!(
            "no matrix request for {other}: add one to request_for and a row to the matrix file"
        ),
    }
}

/// A server that may call the fake provider behind every world's instances, and the service
/// accounts of the matrix's callers.
async fn spawn_with_provider() -> (TestApp, FakeProvider, Accounts) {
    // The worlds' definition is an OpenAI-format model of 256 dimensions.
    let fake = FakeProvider::start(Flavor::OpenAi, 256).await;
    let app = TestApp::spawn_with(trust_fakes).await;
    let accounts = Accounts::create(&app).await;
    (app, fake, accounts)
}

/// Builds world `n` and returns how each caller calls.
async fn world(
    app: &TestApp,
    provider: &FakeProvider,
    accounts: &Accounts,
    n: usize,
) -> BTreeMap<&'static str, Identity> {
    let t = Targets::existing(n);
    let user = |token: String| Identity {
        token: Some(token),
        act_as: None,
    };
    let mut tokens = BTreeMap::from([
        ("anonymous", Identity::default()),
        ("admin", user(app.admin_token.clone())),
        ("sa", user(accounts.none.clone())),
    ]);
    for (caller, handle) in [
        ("owner", t.owner.clone()),
        ("stranger", format!("stranger-{n}")),
        ("reader", format!("reader-{n}")),
        ("writer", format!("writer-{n}")),
        ("coowner", format!("coowner-{n}")),
        ("extra", t.newcomer.clone()),
        ("boss", format!("boss-{n}")),
    ] {
        let token = app.create_user(&handle).await;
        if !["extra", "boss"].contains(&caller) {
            tokens.insert(caller, user(token));
        }
    }
    // An admin user, whom an account acts for without gaining administration.
    app.users()
        .update_user(authed(
            pb::UpdateUserRequest {
                user: Some(pb::User {
                    name: format!("users/boss-{n}"),
                    admin: true,
                    ..Default::default()
                }),
                update_mask: mask("admin"),
            },
            &app.admin_token,
        ))
        .await
        .unwrap();
    for (caller, account, handle) in [
        ("as-owner", &accounts.act, t.owner.clone()),
        ("as-reader", &accounts.act, format!("reader-{n}")),
        ("as-writer", &accounts.act, format!("writer-{n}")),
        ("as-stranger", &accounts.act, format!("stranger-{n}")),
        ("as-admin", &accounts.act, format!("boss-{n}")),
        ("release", &accounts.release, format!("reader-{n}")),
    ] {
        tokens.insert(
            caller,
            Identity {
                token: Some(account.clone()),
                act_as: Some(handle),
            },
        );
    }
    create_service_account_on(
        &app.channel,
        &app.admin_token,
        &format!("{}-sa", t.user),
        &[],
        &[],
    )
    .await;
    let owner = tokens["owner"].token.clone().unwrap_or_default();
    create_definition(app, &owner, &t.owner, &t.def)
        .await
        .unwrap();
    let source = format!("users/{}/definitions/{}", t.owner, t.def);
    for handle in [&t.inst, &t.inst2] {
        create_instance_from(
            app,
            &owner,
            &t.owner,
            handle,
            &source,
            // Usable (a key, at the fake), so that Embed answers OK where it is allowed.
            pb::Instance {
                endpoint: provider.endpoint(),
                api_key: random_api_key(),
                // The first allows ResolveCredential; the owner opts in at creation.
                allow_credential_release: handle == &t.inst,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        for (grantee, role) in [
            ("reader", pb::Role::Reader),
            ("writer", pb::Role::Writer),
            ("coowner", pb::Role::Owner),
        ] {
            share(
                app,
                &owner,
                &t.instance(handle),
                &format!("{grantee}-{n}"),
                role,
            )
            .await
            .unwrap();
        }
    }
    create_project(app, &owner, &t.owner, &t.proj, &t.inst)
        .await
        .unwrap();
    app.standards()
        .create_api_standard(authed(
            pb::CreateApiStandardRequest {
                api_standard_id: t.standard.clone(),
                api_standard: Some(pb::ApiStandard {
                    auth_header: "X-Key".into(),
                    ..Default::default()
                }),
            },
            &app.admin_token,
        ))
        .await
        .unwrap();
    tokens
}

async fn call(
    app: &TestApp,
    rpc: &str,
    body: Vec<u8>,
    identity: &Identity,
) -> Result<Vec<u8>, Status> {
    let mut grpc = Grpc::new(app.channel.clone());
    grpc.ready().await.unwrap();
    let request = match (&identity.token, &identity.act_as) {
        (Some(token), Some(user)) => acting(body, token, user),
        (Some(token), None) => authed(body, token),
        (None, _) => Request::new(body),
    };
    let method = rpc.split_once('?').map_or(rpc, |(method, _)| method);
    let path = http::uri::PathAndQuery::from_str(&format!("/llmregistry.v1.{method}")).unwrap();
    grpc.unary(request, path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

fn code_name(code: Code) -> String {
    // tonic's Debug names (NotFound) -> the canonical names of the matrix (NOT_FOUND).
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

fn matrix() -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/authorization_matrix.tsv"
    ))
    .unwrap();
    text.lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|line| {
            let mut cells = line.split('\t').map(str::to_owned);
            let rpc = cells.next().unwrap();
            let codes: Vec<String> = cells.collect();
            assert_eq!(codes.len(), CALLERS.len(), "{rpc}: one code per caller");
            (rpc, codes)
        })
        .collect()
}

#[tokio::test]
async fn every_rpc_answers_every_kind_of_caller_as_the_matrix_says() {
    let matrix = matrix();
    // Every RPC of the contract has a row, and every row is an RPC of the contract.
    let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).unwrap();
    let rpcs: Vec<String> = pool
        .services()
        .flat_map(|s| {
            s.methods()
                .map(|m| format!("{}/{}", s.name(), m.name()))
                .collect::<Vec<_>>()
        })
        .collect();
    let rows: Vec<&String> = matrix.iter().map(|(rpc, _)| rpc).collect();
    for rpc in &rpcs {
        assert!(
            rows.contains(&rpc),
            "{rpc} has no row in tests/authorization_matrix.tsv"
        );
    }
    // Variant rows (`Service/Method?variant`) are extra cases of an RPC that exists.
    for row in &rows {
        let method = row
            .split_once('?')
            .map_or(row.as_str(), |(method, _)| method);
        assert!(
            rpcs.iter().any(|rpc| rpc == method),
            "the matrix names an RPC that does not exist: {row}"
        );
    }
    assert_eq!(
        rows.iter().filter(|row| !row.contains('?')).count(),
        rpcs.len(),
        "every RPC has exactly one plain row: {rows:?}"
    );

    let (app, provider, accounts) = spawn_with_provider().await;
    // One cell per (rpc, caller), numbered so that each gets a world of its own.
    let cells: Vec<(usize, &str, usize, &str)> = matrix
        .iter()
        .enumerate()
        .flat_map(|(r, (rpc, _))| {
            CALLERS
                .iter()
                .enumerate()
                .map(move |(c, caller)| (r * CALLERS.len() + c, rpc.as_str(), c, *caller))
        })
        .collect();
    let mut failures = Vec::new();
    for chunk in cells.chunks(12) {
        let results = join_all(chunk.iter().map(|&(n, rpc, c, caller)| {
            let app = &app;
            let provider = &provider;
            let accounts = &accounts;
            let expected = matrix
                .iter()
                .find(|(r, _)| r == rpc)
                .map(|(_, codes)| codes[c].clone())
                .unwrap_or_default();
            async move {
                let tokens = world(app, provider, accounts, n).await;
                let result = call(
                    app,
                    rpc,
                    request_for(rpc, &Targets::existing(n)),
                    &tokens[caller],
                )
                .await;
                let got = match &result {
                    Ok(_) => "OK".to_owned(),
                    Err(status) => code_name(status.code()),
                };
                (
                    rpc,
                    caller,
                    expected,
                    got,
                    result.err().map(|s| s.message().to_owned()),
                )
            }
        }))
        .await;
        for (rpc, caller, expected, got, message) in results {
            if expected != got {
                failures.push(format!(
                    "{rpc} as {caller}: expected {expected}, got {got} ({message:?})"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} cell(s) differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn strangers_cannot_tell_private_resources_from_missing_ones() {
    let (app, provider, accounts) = spawn_with_provider().await;
    let mut compared = 0;
    for (n, (rpc, _)) in matrix().iter().enumerate() {
        let tokens = world(&app, &provider, &accounts, n).await;
        // A stranger, in person or through an account acting for them, and an account alone.
        for stranger in ["stranger", "as-stranger", "sa"] {
            let stranger = &tokens[stranger];
            let existing = call(&app, rpc, request_for(rpc, &Targets::existing(n)), stranger).await;
            let missing = call(&app, rpc, request_for(rpc, &Targets::missing(n)), stranger).await;
            let normalize = |bytes: &[u8]| -> Vec<u8> {
                let mut out = bytes.to_vec();
                for word in [b"hidden", b"absent"] {
                    let mut i = 0;
                    while i + word.len() <= out.len() {
                        if &out[i..i + word.len()] == word {
                            out[i..i + word.len()].copy_from_slice(b"XXXXXX");
                        }
                        i += 1;
                    }
                }
                out
            };
            match (existing, missing) {
                (Err(a), Err(b)) => {
                    assert_eq!(a.code(), b.code(), "{rpc}");
                    assert_eq!(
                        normalize(a.message().as_bytes()),
                        normalize(b.message().as_bytes()),
                        "{rpc}: messages differ"
                    );
                    assert_eq!(
                        normalize(a.details()),
                        normalize(b.details()),
                        "{rpc}: details differ"
                    );
                    compared += 1;
                }
                (Ok(_), Ok(_)) => {}
                (a, b) => panic!(
                    "{rpc}: a stranger can tell them apart: {:?} vs {:?}",
                    a.map(|_| ()),
                    b.map(|_| ())
                ),
            }
        }
    }
    assert!(compared >= 60, "compared only {compared} answers");
}
