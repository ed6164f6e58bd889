//! `CredentialService`: ResolveCredential, the one answer of the API that carries a key.
//!
//! Every check happens before the key is opened, in this order: the caller (a service account
//! with RELEASE_CREDENTIALS acting for a user), the transport (TLS, or plaintext only where the
//! operator allowed it), the target as that user may see it (strangers get the NOT_FOUND of a
//! missing instance), the instance owner's opt-in, a stored key, and the account's release rate
//! across replicas. The release is on the audit trail (committed) before the answer leaves;
//! the answer's key is zeroized once tonic has encoded it ([`Drop`] below). It is never logged,
//! traced or cached: no layer of the edge reads response bodies, and the service does not
//! compress it (no second copy in a compression buffer).

use tonic::{Request, Response, Status};
use zeroize::Zeroize;

use super::{ApiContext, caller_of, instance_use};
use crate::{
    domain::{
        DomainError, access,
        access::InstanceAction,
        audit::{caller_label, subject_label},
        error::{LimitReason, PreconditionReason},
    },
    pb::v1::{self as pb, credential_service_server::CredentialService},
    store::UsageEvent,
};

pub struct CredentialsApi(pub ApiContext);

const RESOLVE: &str = "CredentialService/ResolveCredential";

/// The key leaves memory with the answer: once tonic has encoded the message and drops it, the
/// key's bytes are overwritten (the generated type is ours, so it may have a `Drop`).
impl Drop for pb::ResolvedCredential {
    fn drop(&mut self) {
        self.api_key.zeroize();
    }
}

#[tonic::async_trait]
impl CredentialService for CredentialsApi {
    async fn resolve_credential(
        &self,
        request: Request<pb::ResolveCredentialRequest>,
    ) -> Result<Response<pb::ResolvedCredential>, Status> {
        let context = &self.0;
        let caller = caller_of(&request)?;
        let user = access::check_release_caller(&caller)?;
        let account = user
            .via
            .clone()
            .ok_or_else(|| DomainError::Internal("a release without an account".to_owned()))?;
        let target = instance_use::call_target(&caller, "name", &request.get_ref().name)?;
        if !context.release.transport_allowed {
            return Err(DomainError::FailedPrecondition {
                reason: PreconditionReason::PlaintextTransport,
                message: "this listener serves plaintext, and keys are released only over TLS; \
                          the operator may set TLS_CERT_FILE and TLS_KEY_FILE, \
                          TLS_TERMINATED_UPSTREAM=true, or ALLOW_PLAINTEXT_CREDENTIAL_RELEASE=true"
                    .to_owned(),
            }
            .into());
        }
        // Read as it is now (not from the cache): a release is rare and must see the latest
        // opt-in.
        let found =
            instance_use::resolve(context, &caller, false, &target, InstanceAction::Use).await?;
        let instance = &found.instance;
        access::check_release_allowed(instance)?;
        let Some(sealed) = &found.sealed_key else {
            return Err(DomainError::FailedPrecondition {
                reason: PreconditionReason::NoApiKey,
                message: format!("{} holds no API key", instance.name),
            }
            .into());
        };
        let limit = context.release.per_minute;
        let over = match limit {
            0 => Some(std::time::Duration::from_secs(60)),
            _ => context.store.take_release_slot(account.id, limit).await?,
        };
        if let Some(retry_after) = over {
            return Err(DomainError::InstanceLimited {
                reason: LimitReason::ReleaseRate,
                message: format!(
                    "serviceAccounts/{} has used its {limit} credential releases of this minute \
                     (CREDENTIAL_RELEASES_PER_MINUTE, counted across replicas)",
                    account.handle
                ),
                retry_after,
            }
            .into());
        }
        let key = context
            .keys
            .open(sealed, &instance.uid, &instance.name.to_string())
            .await?;
        let project = target.project().map(ToString::to_string);
        let mut detail = format!("key released to {}", caller_label(&caller));
        if let Some(project) = &project {
            detail.push_str(&format!(" project={project}"));
        }
        // On the record before the key leaves; if it cannot be written, the key does not leave.
        context
            .store
            .record_use(UsageEvent {
                caller: caller_label(&caller),
                subject: subject_label(&caller),
                method: RESOLVE,
                resource: instance.name.to_string(),
                outcome: "OK",
                detail,
                // A release is on the audit trail, not in the usage ledger: the registry does
                // not see the provider call the key is released for.
                in_ledger: false,
                input_tokens: 0,
                estimated_tokens: 0,
                settlement: Vec::new(),
            })
            .await?;
        Ok(Response::new(pb::ResolvedCredential {
            instance: instance.name.to_string(),
            project: project.unwrap_or_default(),
            endpoint: instance.spec.endpoint.clone(),
            api_standard: instance.spec.api_standard.to_string(),
            auth_header: found.auth_header.clone(),
            auth_scheme: found.auth_scheme.clone(),
            model: instance.spec.model.clone(),
            dimensions: instance.spec.dimensions,
            // One copy, made here, zeroized when the answer is dropped; `key` zeroizes its own.
            api_key: key.expose().to_owned(),
        }))
    }
}
