//! `LlmInstanceService`: proto <-> domain for instances. The API key goes in (validated, then
//! sealed by the store) and never comes out: responses carry only `has_api_key`.

use tonic::{Request, Response, Status};

use super::{
    ApiContext, caller_of,
    convert::{self, ServiceFields},
    credential_of, paging, parsed_for, required,
};
use crate::{
    domain::{
        DomainError,
        access::{self, InstanceAction},
        audit::Audit,
        definition::ServiceSpec,
        error::both,
        instance::InstanceTest,
        instance::{self, ApiKeyChange, Instance, InstanceChange, Role, Scope},
        mask::UpdateMask,
        names::{DefinitionName, Handle, InstanceName, UserName},
        quota::Quota,
    },
    pb::v1::{self as pb, llm_instance_service_server::LlmInstanceService},
    store::NewInstance,
    vault::ApiKey,
};

pub struct InstancesApi(pub ApiContext);

/// Mask paths of an instance update: the service fields and the key.
const UPDATABLE: &[&str] = &[
    "endpoint",
    "api_standard",
    "model",
    "dimensions",
    "context_limit",
    "description",
    "api_key",
    "allow_credential_release",
    "quota",
];
const OUTPUT_ONLY: &[&str] = &["uid", "definition", "has_api_key", "access_role"];

pub fn role_to_pb(role: Role) -> pb::Role {
    match role {
        Role::Reader => pb::Role::Reader,
        Role::Writer => pb::Role::Writer,
        Role::Owner => pb::Role::Owner,
    }
}

pub fn to_pb(instance: Instance) -> pb::Instance {
    let etag = instance.etag();
    pb::Instance {
        name: instance.name.to_string(),
        uid: instance.uid,
        definition: instance
            .definition
            .map(|d| d.to_string())
            .unwrap_or_default(),
        endpoint: instance.spec.endpoint,
        api_standard: instance.spec.api_standard.to_string(),
        model: instance.spec.model,
        dimensions: instance.spec.dimensions,
        context_limit: instance.spec.context_limit,
        description: instance.spec.description,
        // Input only: never returned.
        api_key: String::new(),
        has_api_key: instance.has_api_key,
        allow_credential_release: instance.allow_credential_release,
        access_role: role_to_pb(instance.access_role).into(),
        quota: convert::quota_to_pb(instance.quota),
        create_time: convert::timestamp(instance.create_time),
        update_time: convert::timestamp(instance.update_time),
        etag,
        // The test's message carries the provider's (scrubbed) words: only for roles that may
        // test; readers see whether it succeeded and its code.
        last_test: instance.last_test.map(|test| {
            let mut shown = test_to_pb(test);
            if instance.access_role < Role::Writer {
                shown.message.clear();
            }
            shown
        }),
    }
}

/// An instance's last test as the API shows it.
pub fn test_to_pb(test: InstanceTest) -> pb::InstanceTestResult {
    pb::InstanceTestResult {
        test_time: convert::timestamp(test.time),
        succeeded: test.succeeded(),
        code: test.code,
        message: test.message,
        observed_dimensions: test.observed_dimensions,
        latency_ms: i64::try_from(test.latency.as_millis()).unwrap_or(i64::MAX),
    }
}

/// The budget of a create request's instance, if it gives one.
fn create_quota(instance: Option<&pb::Instance>) -> Result<Option<Quota>, DomainError> {
    match instance.and_then(|instance| instance.quota.as_ref()) {
        Some(quota) => convert::quota_from_pb("instance.quota", quota),
        None => Ok(None),
    }
}

/// The optional key of a create request: empty means none.
fn optional_api_key(value: &str) -> Result<Option<ApiKey>, DomainError> {
    if value.is_empty() {
        Ok(None)
    } else {
        instance::api_key("instance.api_key", value).map(Some)
    }
}

#[tonic::async_trait]
impl LlmInstanceService for InstancesApi {
    async fn create_instance(
        &self,
        request: Request<pb::CreateInstanceRequest>,
    ) -> Result<Response<pb::Instance>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let parent = UserName::parse("parent", &request.parent)?;
        access::check_namespace_write(&caller, &parent.0)?;
        let (handle, (spec, api_key)) = both(
            Handle::parse("instance_id", &request.instance_id),
            required(request.instance.as_ref(), "instance").and_then(|instance| {
                both(
                    ServiceSpec::parse("instance", &ServiceFields::from(instance).raw()),
                    optional_api_key(&instance.api_key),
                )
            }),
        )?;
        let allow_credential_release = request
            .instance
            .as_ref()
            .is_some_and(|instance| instance.allow_credential_release);
        access::check_release_opt_in_at_create(&caller, allow_credential_release)?;
        let quota = create_quota(request.instance.as_ref())?;
        let name = InstanceName::new(parent.0, handle);
        let new = NewInstance {
            name: &name,
            spec: &spec,
            definition: None,
            api_key: api_key.as_ref(),
            allow_credential_release,
            quota: quota.as_ref(),
        };
        let created = self
            .0
            .store
            .create_instance(
                &Audit::new(&caller, "LlmInstanceService/CreateInstance"),
                &caller,
                new,
                &self.0.keys.ring(),
            )
            .await?;
        Ok(Response::new(to_pb(created)))
    }

    async fn create_instance_from_definition(
        &self,
        request: Request<pb::CreateInstanceFromDefinitionRequest>,
    ) -> Result<Response<pb::Instance>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let parent = UserName::parse("parent", &request.parent)?;
        access::check_namespace_write(&caller, &parent.0)?;
        // A bare handle is the caller's own definition; the admin, who has no namespace, means
        // the namespace it is creating in.
        let namespace = caller.namespace().unwrap_or_else(|| parent.0.clone());
        let overrides = request.instance.unwrap_or_default();
        let (handle, (source, api_key)) = both(
            Handle::parse("instance_id", &request.instance_id),
            both(
                DefinitionName::parse_reference(
                    "source_definition",
                    &request.source_definition,
                    Some(&namespace),
                ),
                optional_api_key(&overrides.api_key),
            ),
        )?;
        access::check_definitions_read(&caller, &source.owner, &source)?;
        let definition = self
            .0
            .store
            .find_definition(&source)
            .await?
            .ok_or_else(|| access::hidden(&source))?;
        // Every populated override replaces the definition's value (an empty mask means "the
        // populated fields"); the result is validated whole.
        let populated = UpdateMask::parse(&[], UPDATABLE, OUTPUT_ONLY)?;
        let spec = ServiceFields::from(&overrides)
            .patch(&populated)
            .apply("instance", &definition.spec)?;
        access::check_release_opt_in_at_create(&caller, overrides.allow_credential_release)?;
        let quota = create_quota(Some(&overrides))?;
        let name = InstanceName::new(parent.0, handle);
        let new = NewInstance {
            name: &name,
            spec: &spec,
            definition: Some(&source),
            api_key: api_key.as_ref(),
            allow_credential_release: overrides.allow_credential_release,
            quota: quota.as_ref(),
        };
        let created = self
            .0
            .store
            .create_instance(
                &Audit::new(&caller, "LlmInstanceService/CreateInstanceFromDefinition"),
                &caller,
                new,
                &self.0.keys.ring(),
            )
            .await?;
        Ok(Response::new(to_pb(created)))
    }

    async fn get_instance(
        &self,
        request: Request<pb::GetInstanceRequest>,
    ) -> Result<Response<pb::Instance>, Status> {
        let credential = credential_of(&request)?;
        let name = parsed_for(
            &self.0.store,
            &credential,
            InstanceName::parse("name", &request.get_ref().name),
        )
        .await?;
        let (caller, instance) = self.0.store.find_instance_as(&credential, &name).await?;
        tracing::Span::current().record("caller", caller.label());
        access::authorize_instance(
            instance.as_ref().map(|i| i.access_role),
            InstanceAction::Use,
            &name,
        )?;
        let instance = instance.ok_or_else(|| access::hidden(&name))?;
        Ok(Response::new(to_pb(instance)))
    }

    async fn list_instances(
        &self,
        request: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let parent = UserName::parse("parent", &request.parent)?;
        access::check_private_read(&caller, &parent.0, &parent)?;
        let scope = match pb::InstanceScope::try_from(request.scope) {
            Ok(pb::InstanceScope::Unspecified) => Scope::All,
            Ok(pb::InstanceScope::Owned) => Scope::Owned,
            Ok(pb::InstanceScope::Shared) => Scope::Shared,
            Err(_) => {
                return Err(DomainError::invalid("scope", "is not a known InstanceScope").into());
            }
        };
        let (page, binding) = paging::start(&self.0.keys.paginator(), &caller, &request)?;
        let found = self
            .0
            .store
            .list_instances(&caller, &parent, scope, &page)
            .await?;
        let (instances, next_page_token) =
            paging::finish(&self.0.keys.paginator(), found, &binding);
        Ok(Response::new(pb::ListInstancesResponse {
            instances: instances.into_iter().map(to_pb).collect(),
            next_page_token,
        }))
    }

    async fn update_instance(
        &self,
        request: Request<pb::UpdateInstanceRequest>,
    ) -> Result<Response<pb::Instance>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let instance = required(request.instance, "instance")?;
        let name = InstanceName::parse("instance.name", &instance.name)?;
        let mask = convert::update_mask(request.update_mask.as_ref(), UPDATABLE, OUTPUT_ONLY)?;
        let patch = ServiceFields::from(&instance).patch(&mask);
        let key_change = if !mask.touches("api_key", !instance.api_key.is_empty()) {
            ApiKeyChange::Keep
        } else if instance.api_key.is_empty() {
            ApiKeyChange::Remove
        } else {
            ApiKeyChange::Replace(instance::api_key("instance.api_key", &instance.api_key)?)
        };
        let release = mask
            .touches(
                "allow_credential_release",
                instance.allow_credential_release,
            )
            .then_some(instance.allow_credential_release);
        // Named in the mask (or populated, with an empty mask): the new budget, `None` to remove.
        let budget = if mask.touches("quota", instance.quota.is_some()) {
            Some(match &instance.quota {
                Some(quota) => convert::quota_from_pb("instance.quota", quota)?,
                None => None,
            })
        } else {
            None
        };
        let updated = self
            .0
            .store
            .update_instance(
                &Audit::new(&caller, "LlmInstanceService/UpdateInstance"),
                &caller,
                &name,
                &instance.etag,
                &self.0.keys.ring(),
                |current| {
                    let spec = patch.clone().apply("instance", &current.spec)?;
                    access::check_key_destination(current, &spec, &key_change)?;
                    let allow_credential_release = access::check_release_opt_in_change(
                        &caller,
                        current,
                        release.unwrap_or(current.allow_credential_release),
                    )?;
                    let quota = budget.clone().unwrap_or_else(|| current.quota.clone());
                    access::check_budget_change(current, quota != current.quota)?;
                    Ok(InstanceChange {
                        spec,
                        // Cloned: the store may run this again after losing a race.
                        key: key_change.clone(),
                        allow_credential_release,
                        quota,
                    })
                },
            )
            .await?;
        Ok(Response::new(to_pb(updated)))
    }

    async fn delete_instance(
        &self,
        request: Request<pb::DeleteInstanceRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let name = InstanceName::parse("name", &request.name)?;
        self.0
            .store
            .delete_instance(
                &Audit::new(&caller, "LlmInstanceService/DeleteInstance"),
                &caller,
                &name,
                &request.etag,
                request.force,
            )
            .await?;
        Ok(Response::new(()))
    }
}
