//! Creating instances. Every create goes through the group commit of [`super::create_batches`],
//! whose one statement is the only text that says what a create writes; a create the batch could
//! not write runs that same statement alone and, if it is still not written, asks the database
//! why, so that it gets the answer a lone create deserves.

use super::create_batches::{self, CreateValues, Created};
use crate::domain::quota::Quota;
use crate::store::{group_commit::BatchOutcome, quotas::quota_to_json};
use crate::{
    domain::{
        DomainError, access,
        audit::{Audit, resource_owner},
        caller::Caller,
        definition::ServiceSpec,
        instance::Instance,
        names::{DefinitionName, InstanceName, UserName},
    },
    store::{Store, errors},
    vault::{ApiKey, KeyRing},
};

/// How often a create that its statement skipped, but for which nothing seems wrong afterwards
/// (a conflicting handle deleted in between), is tried again.
const MAX_ATTEMPTS_ALONE: usize = 3;

/// A new instance, validated.
pub struct NewInstance<'a> {
    pub name: &'a InstanceName,
    pub spec: &'a ServiceSpec,
    pub definition: Option<&'a DefinitionName>,
    pub api_key: Option<&'a ApiKey>,
    /// Whether ResolveCredential may release its key (the creator is its owner, who may say so).
    pub allow_credential_release: bool,
    /// The budget over every caller, if any (the creator owns it, so may set it).
    pub quota: Option<&'a Quota>,
}

/// What the database says of a create that was not written.
#[derive(sqlx::FromRow)]
struct WhyNotCreated {
    owner_found: bool,
    standard_found: bool,
    definition_found: bool,
    handle_taken: bool,
}

impl Store {
    /// Creates an instance, seals its key and records the audit event, atomically: both rows are
    /// written by one statement, usually together with concurrent creates (see
    /// [`create_batches`]). The uid is drawn here rather than by the database because the key is
    /// sealed with it as associated data before the row exists.
    pub async fn create_instance(
        &self,
        audit: &Audit,
        caller: &Caller,
        new: NewInstance<'_>,
        ring: &KeyRing,
    ) -> Result<Instance, DomainError> {
        let owner = new.name.owner.clone();
        let access_role = access::effective_role(caller, &owner, None).ok_or_else(|| {
            DomainError::Internal("an instance created by a caller who may not use it".to_owned())
        })?;
        let resource = new.name.to_string();
        let uid = uuid::Uuid::new_v4().hyphenated().to_string();
        let sealed = new.api_key.map(|api_key| ring.seal(api_key, &uid));
        let detail = if new.api_key.is_some() {
            "created; api_key set"
        } else {
            "created"
        };
        let values = CreateValues {
            owner: owner.as_str().to_owned(),
            standard: new.spec.api_standard.0.as_str().to_owned(),
            definition_owner: new.definition.map(|d| d.owner.as_str().to_owned()),
            definition_handle: new.definition.map(|d| d.handle.as_str().to_owned()),
            uid: uid.clone(),
            handle: new.name.handle.as_str().to_owned(),
            endpoint: new.spec.endpoint.clone(),
            model: new.spec.model.clone(),
            dimensions: new.spec.dimensions,
            context_limit: new.spec.context_limit,
            description: new.spec.description.clone(),
            key_id: sealed.as_ref().map(|s| s.key_id.clone()),
            ciphertext: sealed.map(|s| s.ciphertext),
            allow_credential_release: new.allow_credential_release,
            quota: quota_to_json(new.quota),
            audit_caller: audit.caller.clone(),
            audit_subject: audit.subject.clone(),
            audit_method: audit.method.to_owned(),
            resource_owner: resource_owner(&resource).map(str::to_owned),
            resource,
            detail: detail.to_owned(),
        };
        let has_api_key = values.key_id.is_some();
        let created = match self.create_batches.submit(values).await {
            BatchOutcome::Done(created) => created,
            BatchOutcome::Unavailable => return Err(DomainError::Unavailable),
            BatchOutcome::RunAlone(values) => self.create_alone(&values, new.definition).await?,
        };
        Ok(Instance {
            sequence: created.id,
            name: new.name.clone(),
            uid,
            definition: new.definition.cloned(),
            spec: new.spec.clone(),
            has_api_key,
            allow_credential_release: new.allow_credential_release,
            access_role,
            quota: new.quota.cloned(),
            revision: created.revision,
            create_time: created.create_time,
            update_time: created.update_time,
            // A new instance was never tested.
            last_test: None,
        })
    }

    /// Runs the batch statement for one create that its batch did not write: it fails with the
    /// statement's own error, or is written, or is told why not (a missing reference, or the
    /// handle is taken), as a lone create would be.
    async fn create_alone(
        &self,
        values: &CreateValues,
        definition: Option<&DefinitionName>,
    ) -> Result<Created, DomainError> {
        for _ in 0..MAX_ATTEMPTS_ALONE {
            let written = create_batches::insert(&self.pool, &[values])
                .await
                .map_err(|e| match errors::sqlstate(&e).as_deref() {
                    Some(errors::FOREIGN_KEY_VIOLATION) => {
                        errors::on_reference(e, "instance.api_standard")
                    }
                    _ => errors::on_insert(e, &values.resource),
                })?;
            if let Some(created) = written.into_iter().next() {
                return Ok(created.1);
            }
            self.why_not_created(values, definition).await?;
        }
        // Skipped each time while nothing was wrong a moment later: the handle keeps being taken
        // and freed by others, and was taken when it counted.
        Err(DomainError::AlreadyExists(values.resource.clone()))
    }

    /// The reason a create was skipped, as the database sees it now; `Ok` when nothing is wrong
    /// any more (things changed since the statement ran).
    async fn why_not_created(
        &self,
        values: &CreateValues,
        definition: Option<&DefinitionName>,
    ) -> Result<(), DomainError> {
        let why: WhyNotCreated = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM users WHERE handle = $1) AS owner_found, \
                    EXISTS (SELECT 1 FROM api_standards WHERE handle = $2) AS standard_found, \
                    ($3::text IS NULL OR EXISTS (SELECT 1 FROM definitions d \
                        JOIN users du ON du.id = d.owner_id WHERE du.handle = $3 AND d.handle = $4)) \
                        AS definition_found, \
                    EXISTS (SELECT 1 FROM instances i JOIN users u ON u.id = i.owner_id \
                        WHERE u.handle = $1 AND i.handle = $5) AS handle_taken",
        )
        .bind(&values.owner)
        .bind(&values.standard)
        .bind(&values.definition_owner)
        .bind(&values.definition_handle)
        .bind(&values.handle)
        .fetch_one(&self.pool)
        .await
        .map_err(errors::db)?;
        if !why.owner_found {
            let owner = errors::stored_user(&values.owner)?;
            return Err(access::hidden(UserName(owner)));
        }
        if !why.standard_found {
            return Err(DomainError::invalid(
                "instance.api_standard",
                format!("unknown API standard {}", values.standard),
            ));
        }
        if !why.definition_found {
            return Err(match definition {
                Some(definition) => access::hidden(definition),
                None => access::hidden(&values.resource),
            });
        }
        if why.handle_taken {
            return Err(DomainError::AlreadyExists(values.resource.clone()));
        }
        Ok(())
    }
}
