//! Instances in the database, split by job: reading them ([`read`]), reading them together with
//! the caller's token in one statement ([`by_token`]), creating them ([`create`], group-committed
//! by [`create_batches`]) and changing them ([`write`]). This file holds what they share: the row,
//! the one SELECT of every column, and how a row becomes the instance a caller may see.
//!
//! API keys are sealed with the key ring before they reach SQL, with the row's immutable uid as
//! associated data; no plaintext reaches the database.

mod by_token;
mod create;
pub(super) mod create_batches;
mod for_call;
mod read;
pub(super) mod update_batches;
mod update_hints;
mod write;

pub use create::NewInstance;
pub(super) use update_hints::UpdateHints;

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

use super::{Store, errors};
use crate::domain::{
    DomainError,
    access::{self, InstanceAction},
    caller::Caller,
    definition::ServiceSpec,
    instance::InstanceTest,
    instance::{Instance, Role},
    names::{ApiStandardName, DefinitionName, InstanceName},
};

#[derive(sqlx::FromRow)]
struct InstanceRow {
    id: i64,
    uid: String,
    owner: String,
    handle: String,
    definition_owner: Option<String>,
    definition_handle: Option<String>,
    endpoint: String,
    api_standard: String,
    model: String,
    dimensions: Option<i32>,
    context_limit: Option<i32>,
    description: String,
    has_api_key: bool,
    allow_credential_release: bool,
    revision: i64,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
    /// The role of a share of this instance to the caller ($1), if any.
    shared_role: Option<String>,
    last_test_time: Option<DateTime<Utc>>,
    last_test_code: Option<String>,
    last_test_message: Option<String>,
    last_test_dimensions: Option<i32>,
    last_test_latency_ms: Option<i64>,
    /// The instance's budget as stored (JSON text), if any.
    quota: Option<String>,
}

/// Every column of an instance, plus the role of a share of it to `$grantee` (an SQL expression
/// for a user id; NULL for the configured admin). The share is a scalar subquery, looked up per
/// row through its primary key: as a join (even a lateral one, which the planner flattens), the
/// generic plan of a prepared statement read all of the grantee's shares for every page when the
/// grantee holds many (a ListInstances page 100 deep took 10 ms instead of 0.3 on a bulk-loaded
/// database). The API standard, the definition and the definition's owner are scalar subqueries
/// too, each one primary-key probe per row (NULL when the instance has no definition): as outer
/// joins, the generic plan merge-joined the definitions' owners after a sort, for every read.
macro_rules! select_instances {
    ($grantee:literal) => {
        concat!(
            "SELECT (SELECT role FROM shares WHERE instance_id = i.id AND grantee_id = ",
            $grantee,
            ") AS shared_role, \
             i.id, i.uid::text AS uid, u.handle AS owner, i.handle, \
             (SELECT du.handle FROM definitions d JOIN users du ON du.id = d.owner_id \
              WHERE d.id = i.definition_id) AS definition_owner, \
             (SELECT d.handle FROM definitions d WHERE d.id = i.definition_id) AS definition_handle, \
             i.endpoint, \
             (SELECT st.handle FROM api_standards st WHERE st.id = i.api_standard_id) AS api_standard, \
             i.model, i.dimensions, i.context_limit, i.description, (i.api_key_ciphertext IS NOT NULL) AS has_api_key, \
             i.allow_credential_release, i.revision, i.create_time, i.update_time, \
             i.last_test_time, i.last_test_code, i.last_test_message, i.last_test_dimensions, \
             i.last_test_latency_ms, i.quota::text AS quota \
             FROM instances i \
             JOIN users u ON u.id = i.owner_id"
        )
    };
}

// Path-based, so that the sibling modules can use the macro too.
use select_instances;

impl InstanceRow {
    /// The instance as `caller` sees it, or `None` when the caller may not know it exists.
    fn into_visible(self, caller: &Caller) -> Result<Option<Instance>, DomainError> {
        let owner = errors::stored_user(&self.owner)?;
        let shared =
            match self.shared_role.as_deref() {
                None => None,
                Some(stored) => Some(Role::from_stored(stored).ok_or_else(|| {
                    DomainError::Internal(format!("unknown stored role {stored:?}"))
                })?),
            };
        let Some(access_role) = access::effective_role(caller, &owner, shared) else {
            return Ok(None);
        };
        let definition = match (self.definition_owner, self.definition_handle) {
            (Some(owner), Some(handle)) => Some(DefinitionName::new(
                errors::stored_user(&owner)?,
                errors::stored_handle(&handle)?,
            )),
            _ => None,
        };
        let last_test = last_test_of(
            self.last_test_time,
            self.last_test_code,
            self.last_test_message,
            self.last_test_dimensions,
            self.last_test_latency_ms,
        );
        let instance = Instance {
            sequence: self.id,
            name: InstanceName::new(owner, errors::stored_handle(&self.handle)?),
            uid: self.uid,
            definition,
            spec: ServiceSpec {
                endpoint: self.endpoint,
                api_standard: ApiStandardName(errors::stored_handle(&self.api_standard)?),
                model: self.model,
                dimensions: self.dimensions,
                context_limit: self.context_limit,
                description: self.description,
            },
            has_api_key: self.has_api_key,
            allow_credential_release: self.allow_credential_release,
            access_role,
            quota: super::quotas::quota_from_json(self.quota.as_deref())?,
            revision: self.revision,
            create_time: self.create_time,
            update_time: self.update_time,
            last_test,
        };
        Ok(Some(instance))
    }
}

/// The last TestInstance outcome recorded on a row, from its columns (none before the first).
fn last_test_of(
    time: Option<DateTime<Utc>>,
    code: Option<String>,
    message: Option<String>,
    observed_dimensions: Option<i32>,
    latency_ms: Option<i64>,
) -> Option<InstanceTest> {
    match (time, code) {
        (Some(time), Some(code)) => Some(InstanceTest {
            time,
            code,
            message: message.unwrap_or_default(),
            observed_dimensions: observed_dimensions.unwrap_or_default(),
            latency: Duration::from_millis(
                u64::try_from(latency_ms.unwrap_or_default()).unwrap_or(0),
            ),
        }),
        _ => None,
    }
}

fn caller_id(caller: &Caller) -> Option<i64> {
    match caller {
        // A service account on its own holds no shares (and owns nothing).
        Caller::Admin | Caller::ServiceAccount(_) => None,
        Caller::User(user) => Some(user.id),
    }
}

impl Store {
    /// Locks the instance row for the rest of a change and reads it as the caller sees it;
    /// refuses (as the policy says) a caller who may not do `action` with it.
    pub(super) async fn lock_for(
        tx: &mut Transaction<'static, Postgres>,
        caller: &Caller,
        name: &InstanceName,
        action: InstanceAction,
    ) -> Result<(i64, Instance), DomainError> {
        let found = sqlx::query_as::<_, InstanceRow>(concat!(
            select_instances!("$1"),
            " WHERE u.handle = $2 AND i.handle = $3 FOR UPDATE OF i"
        ))
        .bind(caller_id(caller))
        .bind(name.owner.as_str())
        .bind(name.handle.as_str())
        .fetch_optional(&mut **tx)
        .await
        .map_err(errors::db)?
        .map(|row| row.into_visible(caller))
        .transpose()?
        .flatten();
        access::authorize_instance(found.as_ref().map(|i| i.access_role), action, name)?;
        found
            .map(|instance| (instance.sequence, instance))
            .ok_or_else(|| access::hidden(name))
    }
}
