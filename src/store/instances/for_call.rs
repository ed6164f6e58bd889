//! Reading an instance for a provider call (Embed, TestInstance), and what such a call writes:
//! the shared per-instance rate window and the outcome of a test.
//!
//! The call's destination comes only from here: the instance's own row (endpoint, model, sealed
//! key) and its API standard (header, scheme, protocol). A definition contributes nothing but
//! its dimensions, to tell whether the instance asks for a reduced size.

use crate::store::read_cache::{instance_answer_counters, scope_counter};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{FromRow, Row, postgres::PgRow};

use super::{InstanceRow, caller_id, select_instances};
use crate::{
    domain::{
        DomainError,
        caller::Caller,
        embedding::{CallTarget, EmbeddingProtocol, InstanceForCall},
        instance::InstanceTest,
        project::{Detachment, ProjectBinding},
    },
    store::{
        Store, UsageEvent, errors, quotas,
        rate_windows::{self, Windows},
        read_cache::{CallKey, Deps, Fresh, SHARED_SCOPE, ScopeKind, scope},
        usage_events,
    },
    vault::Sealed,
};

/// What a call needs beyond the instance's visible columns, for the instance `x` found, and the
/// counters of the read cache scopes its answer depends on (the caller `$1`'s row, the instance
/// with its shares, the API standards, the definition), read in the same snapshot.
macro_rules! call_columns {
    () => {
        concat!(
            instance_answer_counters!("$1"),
            ", kd.id AS cache_definition_id, ",
            scope_counter!(5, "kd.id"),
            " AS definition_counter, \
             k.api_key_ciphertext AS call_ciphertext, \
             k.api_key_key_id AS call_key_id, kst.auth_header AS call_auth_header, \
             kst.auth_scheme AS call_auth_scheme, kst.protocol AS call_protocol, \
             kd.dimensions AS call_definition_dimensions, \
             (SELECT s.quota::text FROM shares s WHERE s.instance_id = x.id AND s.grantee_id = $1) \
             AS call_share_quota"
        )
    };
}

/// The joins behind [`call_columns`] (primary-key lookups on the found instance).
macro_rules! call_joins {
    () => {
        "LEFT JOIN instances k ON k.id = x.id \
         LEFT JOIN api_standards kst ON kst.id = k.api_standard_id \
         LEFT JOIN definitions kd ON kd.id = k.definition_id"
    };
}

/// Instance `$2`/`$3` as caller `$1` sees it, with what a call needs.
const FIND_INSTANCE: &str = concat!(
    "SELECT x.*, NULL::bigint AS cache_project_id, 0::bigint AS project_counter, ",
    call_columns!(),
    " FROM (",
    select_instances!("$1"),
    " WHERE u.handle = $2 AND i.handle = $3) x ",
    call_joins!()
);

/// Project `$2`/`$3` (its detachment columns) and the instance bound to it, in one statement.
const FIND_PROJECT_INSTANCE: &str = concat!(
    "SELECT p.detach_reason AS project_detach_reason, p.detach_time AS project_detach_time, \
     p.id AS cache_project_id, ",
    scope_counter!(4, "p.id"),
    " AS project_counter, x.*, ",
    call_columns!(),
    " FROM projects p JOIN users pu ON pu.id = p.owner_id LEFT JOIN LATERAL (",
    select_instances!("$1"),
    " WHERE i.id = p.instance_id) x ON true ",
    call_joins!(),
    " WHERE pu.handle = $2 AND p.handle = $3"
);

impl Store {
    /// The instance a call names, as `caller` sees it, with its destination: `None` when it
    /// does not exist or the caller may not know it does; for a project, also whether it is
    /// detached. Whether the caller may see a named project is the handler's to check first.
    ///
    /// Found instances are kept in the read cache with the counters of the scopes they depend
    /// on, and answered from it when the edge checked this call's token with the cache fresh for
    /// it (`checked_fresh`) and those scopes did not change since: an Embed then needs no query
    /// before the provider call.
    pub async fn find_for_call(
        &self,
        caller: &Caller,
        target: &CallTarget,
        checked_fresh: bool,
    ) -> Result<Option<ProjectBinding<InstanceForCall>>, DomainError> {
        let key = match caller {
            // Keyed by user id, so only for the user in person: an account acting for them sees
            // less (never an administrator's view), and must not share answers with them.
            Caller::User(user) if self.cache.enabled() && user.via.is_none() => Some(CallKey {
                user_id: user.id,
                target: target.to_string(),
            }),
            _ => None,
        };
        if let (Some(key), true) = (&key, checked_fresh)
            && let Some(found) = self.cache.call_target(&Fresh::after_a_round_applied(), key)
        {
            return Ok(Some(ProjectBinding::Bound(Some(found))));
        }
        let start = self.cache.read_start();
        let (statement, owner, handle) = match target {
            CallTarget::Instance(name) => (FIND_INSTANCE, &name.owner, &name.handle),
            CallTarget::Project(name) => (FIND_PROJECT_INSTANCE, &name.owner, &name.handle),
        };
        let Some(row) = sqlx::query(statement)
            .bind(caller_id(caller))
            .bind(owner.as_str())
            .bind(handle.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(errors::db)?
        else {
            return Ok(None);
        };
        if target.project().is_some() {
            let reason: Option<String> =
                row.try_get("project_detach_reason").map_err(errors::db)?;
            let time: Option<DateTime<Utc>> =
                row.try_get("project_detach_time").map_err(errors::db)?;
            if let (Some(reason), Some(time)) = (reason, time) {
                return Ok(Some(ProjectBinding::Detached(Detachment { reason, time })));
            }
        }
        let found = for_call(&row, caller)?;
        if let (Some(key), Some(found)) = (key, &found) {
            let counter = |column: &str| row.try_get::<i64, _>(column).map_err(errors::db);
            let id = |column: &str| row.try_get::<Option<i64>, _>(column).map_err(errors::db);
            let deps = Deps::new()
                .with(
                    Some(scope(ScopeKind::User, key.user_id)),
                    counter("caller_counter")?,
                )
                .with(
                    Some(scope(ScopeKind::Instance, found.instance.sequence)),
                    counter("instance_counter")?,
                )
                .with(Some(SHARED_SCOPE), counter("shared_counter")?)
                .with(
                    id("cache_definition_id")?.map(|d| scope(ScopeKind::Definition, d)),
                    counter("definition_counter")?,
                )
                .with(
                    id("cache_project_id")?.map(|p| scope(ScopeKind::Project, p)),
                    counter("project_counter")?,
                );
            self.cache
                .remember_call_target(start, deps, key, found.clone());
        }
        Ok(Some(ProjectBinding::Bound(found)))
    }

    /// Counts one call of instance `instance_id` in the current minute, shared by every
    /// replica; answers how long until the window ends when the call is over `limit`. A fixed
    /// window: at most `limit` calls start in any calendar minute.
    pub async fn take_rate_slot(
        &self,
        instance_id: i64,
        limit: u32,
    ) -> Result<Option<Duration>, DomainError> {
        rate_windows::take_slot(&self.pool, Windows::ProviderCalls, instance_id, limit)
            .await
            .map_err(errors::db)
    }

    /// Records a test's outcome on instance `instance_id` and its use (audit event and ledger),
    /// together; the outcome only if the instance is still at `revision` (a test of a
    /// configuration since replaced says nothing about the new one). Not an edit: the revision
    /// and etag stay. Its quota settlement is queued for the settler. Answers whether the
    /// outcome was recorded.
    pub async fn record_test(
        &self,
        instance_id: i64,
        revision: i64,
        test: &InstanceTest,
        mut event: UsageEvent,
    ) -> Result<bool, DomainError> {
        self.settle_quota(std::mem::take(&mut event.settlement));
        let mut tx = self.pool.begin().await.map_err(errors::db)?;
        let updated = sqlx::query(
            "UPDATE instances SET last_test_time = $3, last_test_code = $4, \
             last_test_message = $5, last_test_dimensions = $6, last_test_latency_ms = $7 \
             WHERE id = $1 AND revision = $2",
        )
        .bind(instance_id)
        .bind(revision)
        .bind(test.time)
        .bind(&test.code)
        .bind(&test.message)
        .bind(test.observed_dimensions)
        .bind(i64::try_from(test.latency.as_millis()).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await
        .map_err(errors::db)?
        .rows_affected();
        usage_events::write(&mut *tx, &[&event]).await?;
        tx.commit().await.map_err(errors::db)?;
        Ok(updated == 1)
    }
}

/// The instance of a `FIND_*` row with what a call needs, if the row found one the caller may
/// see.
fn for_call(row: &PgRow, caller: &Caller) -> Result<Option<InstanceForCall>, DomainError> {
    if row
        .try_get::<Option<i64>, _>("id")
        .map_err(errors::db)?
        .is_none()
    {
        return Ok(None);
    }
    let visible = InstanceRow::from_row(row)
        .map_err(errors::db)?
        .into_visible(caller)?;
    let Some(instance) = visible else {
        return Ok(None);
    };
    let ciphertext: Option<Vec<u8>> = row.try_get("call_ciphertext").map_err(errors::db)?;
    let key_id: Option<String> = row.try_get("call_key_id").map_err(errors::db)?;
    let protocol: i16 = row.try_get("call_protocol").map_err(errors::db)?;
    let share_quota: Option<String> = row.try_get("call_share_quota").map_err(errors::db)?;
    let share_quota = quotas::quota_from_json(share_quota.as_deref())?;
    Ok(Some(InstanceForCall {
        instance,
        sealed_key: match (key_id, ciphertext) {
            (Some(key_id), Some(ciphertext)) => Some(Sealed { key_id, ciphertext }),
            _ => None,
        },
        protocol: EmbeddingProtocol::from_number(i32::from(protocol))
            .ok_or_else(|| DomainError::Internal(format!("unknown stored protocol {protocol}")))?,
        auth_header: row.try_get("call_auth_header").map_err(errors::db)?,
        auth_scheme: row.try_get("call_auth_scheme").map_err(errors::db)?,
        definition_dimensions: row
            .try_get("call_definition_dimensions")
            .map_err(errors::db)?,
        share_quota: match (caller_id(caller), share_quota) {
            (Some(grantee), Some(quota)) => Some((grantee, quota)),
            _ => None,
        },
    }))
}
