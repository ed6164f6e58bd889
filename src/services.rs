//! The one list of what the server serves: our services with their message limits and
//! compression, written once, plus health and reflection. Mounting and health both read it, so a
//! service cannot be served without being reported by health (two once were).

use tonic::{codec::CompressionEncoding, server::NamedService, service::RoutesBuilder};
use tonic_health::server::HealthReporter;

use crate::{
    api::{
        ApiContext, api_standards::ApiStandardsApi, audit::AuditApi, credentials::CredentialsApi,
        definitions::DefinitionsApi, embeddings::EmbeddingApi, instances::InstancesApi,
        projects::ProjectsApi, service_accounts::ServiceAccountsApi, sharing::SharingApi,
        usage::UsageApi, users::UsersApi,
    },
    pb::{
        self,
        v1::{
            api_standard_service_server::ApiStandardServiceServer,
            audit_service_server::AuditServiceServer,
            credential_service_server::CredentialServiceServer,
            embedding_service_server::EmbeddingServiceServer,
            llm_definition_service_server::LlmDefinitionServiceServer,
            llm_instance_service_server::LlmInstanceServiceServer,
            project_service_server::ProjectServiceServer,
            service_account_service_server::ServiceAccountServiceServer,
            sharing_service_server::SharingServiceServer, usage_service_server::UsageServiceServer,
            user_service_server::UserServiceServer,
        },
    },
};

/// The services as mounted, and their names as health reports them.
pub struct Served {
    pub routes: RoutesBuilder,
    /// "" (the server as a whole) and every mounted service, health and reflection included.
    pub names: Vec<&'static str>,
}

/// Message sizes the services are held to.
#[derive(Debug, Clone, Copy)]
pub struct MessageLimits {
    /// Requests (and answers, but for Embed's).
    pub max_message_bytes: usize,
    /// Embed's answers: as large as their vectors, bounded by `PROVIDER_MAX_ANSWER_BYTES`.
    pub max_embed_answer_bytes: usize,
}

fn name_of<S: NamedService>(_: &S) -> &'static str {
    S::NAME
}

/// Mounts one service and records its name.
macro_rules! mount {
    ($served:expr, $service:expr) => {{
        let service = $service;
        $served.names.push(name_of(&service));
        $served.routes.add_service(service);
    }};
}

/// One of our services with the settings every one of them shares: requests and answers held
/// to the message limit, gzip taken and given.
macro_rules! ours {
    ($server:ident, $api:expr, $limits:expr) => {
        $server::new($api)
            .max_decoding_message_size($limits.max_message_bytes)
            .max_encoding_message_size($limits.max_message_bytes)
            .accept_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Gzip)
    };
}

/// Every service, in one list.
pub fn all(
    context: &ApiContext,
    limits: MessageLimits,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
) -> anyhow::Result<Served> {
    let mut served = Served {
        routes: RoutesBuilder::default(),
        names: vec![""],
    };
    mount!(served, health);
    // google.rpc's error details are registered too, so that reflection-only clients (buf curl,
    // grpcurl) can decode the ErrorInfo and RetryInfo in a refusal instead of showing bytes.
    mount!(
        served,
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?
    );
    mount!(
        served,
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?
    );
    let api = || context.clone();
    mount!(served, ours!(AuditServiceServer, AuditApi(api()), limits));
    mount!(served, ours!(UsageServiceServer, UsageApi(api()), limits));
    mount!(served, ours!(UserServiceServer, UsersApi(api()), limits));
    mount!(
        served,
        ours!(ApiStandardServiceServer, ApiStandardsApi(api()), limits)
    );
    mount!(
        served,
        ours!(LlmDefinitionServiceServer, DefinitionsApi(api()), limits)
    );
    mount!(
        served,
        ours!(LlmInstanceServiceServer, InstancesApi(api()), limits)
    );
    mount!(
        served,
        ours!(SharingServiceServer, SharingApi(api()), limits)
    );
    mount!(
        served,
        ours!(ProjectServiceServer, ProjectsApi(api()), limits)
    );
    mount!(
        served,
        ours!(
            ServiceAccountServiceServer,
            ServiceAccountsApi(api()),
            limits
        )
    );
    // Embed's answers are as large as their vectors: held to their own bound (checked before
    // the call, see `domain::embedding`), not to the request limit.
    mount!(
        served,
        ours!(EmbeddingServiceServer, EmbeddingApi(api()), limits)
            .max_encoding_message_size(limits.max_embed_answer_bytes.saturating_add(64 * 1024))
    );
    // Its answer carries a key: never compressed (no second copy of it in a compression
    // buffer).
    mount!(
        served,
        CredentialServiceServer::new(CredentialsApi(api()))
            .max_decoding_message_size(limits.max_message_bytes)
            .max_encoding_message_size(limits.max_message_bytes)
            .accept_compressed(CompressionEncoding::Gzip)
    );
    Ok(served)
}

/// Reports `status` for every name in the list.
pub async fn set_health(
    reporter: &HealthReporter,
    names: &[&'static str],
    status: tonic_health::ServingStatus,
) {
    for name in names {
        reporter.set_service_status(*name, status).await;
    }
}
