//! Changing instances: update (fields and key), optimistic (read, decide, then one statement
//! that writes the row and its audit event only if nothing moved; see
//! [`Store::update_instance`]), and delete, a [`Change`] that locks the row, asks the policy,
//! checks the etag, writes and records its audit event in one transaction.

use chrono::{DateTime, Utc};

use crate::{
    domain::{
        DomainError,
        access::{self, InstanceAction},
        audit::{Audit, resource_owner},
        caller::Caller,
        check_etag,
        embedding::InstanceTest,
        instance::{ApiKeyChange, Instance, InstanceChange},
        names::InstanceName,
    },
    store::{
        Store,
        change::Change,
        dependents::{self, Revoked},
        errors,
        instances::{last_test_of, update_hints::UpdateHints},
    },
    vault::KeyRing,
};

/// How many times an update reads and writes without a lock before its last attempt, which
/// locks the row (and so cannot lose to another write).
const UPDATE_ATTEMPTS: usize = 3;

/// What one attempt of an update writes: the instance's new fields, its key and the audit
/// event, if the row is still the version the attempt read.
struct UpdateWrite<'a> {
    id: i64,
    read_revision: i64,
    /// The caller's user id and the share role the attempt's decision rested on; `None` when the
    /// caller's role does not come from a share (the owner, an administrator), which no other
    /// write can take away.
    share_check: Option<(i64, &'static str)>,
    change: &'a InstanceChange,
    /// The sealed key and its key id (both `None` to remove it); `None`: the key is kept.
    sealed_key: Option<(Option<Vec<u8>>, Option<String>)>,
    audit: &'a Audit,
    resource: String,
    detail: String,
}

/// What an update's statement wrote, when it did.
struct Written {
    revision: i64,
    update_time: DateTime<Utc>,
    last_test: Option<InstanceTest>,
}

#[derive(sqlx::FromRow)]
struct WrittenRow {
    revision: i64,
    update_time: DateTime<Utc>,
    last_test_time: Option<DateTime<Utc>>,
    last_test_code: Option<String>,
    last_test_message: Option<String>,
    last_test_dimensions: Option<i32>,
    last_test_latency_ms: Option<i64>,
}

impl Store {
    /// Read-modify-write, for writers and up: `change_spec` sees the instance as the caller does
    /// (after the etag check) and returns the new spec, what happens to the key and the release
    /// opt-in.
    ///
    /// Optimistic, so that a write holds the row only for one statement and costs at most two
    /// round trips: the instance is read without a lock, the policy and the etag decide, and one
    /// statement writes the new fields and the audit event *if* the row is still at the version
    /// read and the caller's share still gives the role decided on. If another write came
    /// between, the attempt starts over from a new read (where an etag, if sent, now refuses);
    /// the last attempt locks the row first, so an unconditional update never fails for losing
    /// races. A caller's next update of an instance starts from the version it last wrote
    /// ([`UpdateHints`]) instead of the read: one round trip.
    pub async fn update_instance(
        &self,
        audit: &Audit,
        caller: &Caller,
        name: &InstanceName,
        etag: &str,
        ring: &KeyRing,
        change_spec: impl Fn(&Instance) -> Result<InstanceChange, DomainError>,
    ) -> Result<Instance, DomainError> {
        let hint_key = UpdateHints::key(caller, name);
        let mut hint = hint_key
            .as_ref()
            .and_then(|key| self.update_hints.take(key));
        let mut attempt = 0;
        loop {
            // A hint is an extra attempt: it does not count against the reads.
            let hinted = hint.take();
            if hinted.is_none() {
                attempt += 1;
            }
            let mut locked = if attempt == UPDATE_ATTEMPTS {
                Some(self.pool.begin().await.map_err(errors::db)?)
            } else {
                None
            };
            let from_hint = hinted.is_some();
            let current = match (locked.as_mut(), hinted) {
                (Some(tx), _) => Self::lock_for(tx, caller, name, InstanceAction::Write)
                    .await
                    .map(|(_, instance)| Some(instance)),
                (None, Some(hinted)) => Ok(Some(hinted)),
                (None, None) => self.find_instance(caller, name).await,
            }?;
            let decided = decide(current, name, etag, &change_spec);
            let (current, change) = match decided {
                Ok(decided) => decided,
                // Decided on a hint, a refusal may be the hint's age: decide again on a read.
                Err(_) if from_hint => continue,
                Err(refused) => return Err(refused),
            };
            let write = UpdateWrite {
                id: current.sequence,
                read_revision: current.revision,
                share_check: share_check(caller, &current),
                change: &change,
                sealed_key: match &change.key {
                    ApiKeyChange::Keep => None,
                    ApiKeyChange::Remove => Some((None, None)),
                    ApiKeyChange::Replace(api_key) => {
                        let sealed = ring.seal(api_key, &current.uid);
                        Some((Some(sealed.ciphertext), Some(sealed.key_id)))
                    }
                },
                audit,
                resource: name.to_string(),
                detail: update_detail(&current, &change),
            };
            let written = match locked.as_mut() {
                Some(tx) => write.run(&mut **tx).await?,
                None => write.run(&self.pool).await?,
            };
            if let Some(tx) = locked {
                tx.commit().await.map_err(errors::db)?;
            }
            let Some(written) = written else {
                if attempt >= UPDATE_ATTEMPTS {
                    // The last attempt held the row's lock from its read to its write.
                    return Err(DomainError::Internal(format!(
                        "{name} changed under its own lock"
                    )));
                }
                continue;
            };
            let has_api_key = match &change.key {
                ApiKeyChange::Keep => current.has_api_key,
                ApiKeyChange::Replace(_) => true,
                ApiKeyChange::Remove => false,
            };
            let updated = Instance {
                spec: change.spec,
                has_api_key,
                allow_credential_release: change.allow_credential_release,
                revision: written.revision,
                update_time: written.update_time,
                // Recorded by TestInstance without a new version: as written, not as read.
                last_test: written.last_test,
                ..current
            };
            if let Some(key) = hint_key {
                self.update_hints.keep(key, updated.clone());
            }
            return Ok(updated);
        }
    }

    /// Deletes an instance (and its shares), for owners and co-owners. While projects use it,
    /// refused, or with `force` they are detached.
    pub async fn delete_instance(
        &self,
        audit: &Audit,
        caller: &Caller,
        name: &InstanceName,
        etag: &str,
        force: bool,
    ) -> Result<(), DomainError> {
        let mut change = Change::begin(self, audit, name).await?;
        let (id, current) =
            Self::lock_for(change.tx(), caller, name, InstanceAction::Manage).await?;
        change.check_etag(etag, &current)?;
        let dependents = dependents::dependents(change.tx(), Revoked::Instance(id)).await?;
        dependents::refuse_or_detach(
            &mut change,
            caller,
            dependents,
            force,
            &format!("{name} cannot be deleted"),
            &format!("{name} was deleted"),
        )
        .await?;
        sqlx::query("DELETE FROM instances WHERE id = $1")
            .bind(id)
            .execute(&mut **change.tx())
            .await
            .map_err(|e| errors::on_delete(e, &name.to_string()))?;
        change.commit("deleted with its shares").await
    }
}

/// Whether `caller` may write `current` (`None`: not found) as `etag` asks, and what the change
/// is.
fn decide(
    current: Option<Instance>,
    name: &InstanceName,
    etag: &str,
    change_spec: impl Fn(&Instance) -> Result<InstanceChange, DomainError>,
) -> Result<(Instance, InstanceChange), DomainError> {
    access::authorize_instance(
        current.as_ref().map(|instance| instance.access_role),
        InstanceAction::Write,
        name,
    )?;
    let current = current.ok_or_else(|| access::hidden(name))?;
    check_etag(etag, &current.etag(), &name.to_string())?;
    let change = change_spec(&current)?;
    Ok((current, change))
}

/// The share role `caller` holds `current` by, if that is where its role comes from.
fn share_check(caller: &Caller, current: &Instance) -> Option<(i64, &'static str)> {
    match caller {
        Caller::User(user) if !caller.is_admin() && !caller.owns(&current.name.owner) => {
            Some((user.id, current.access_role.as_str()))
        }
        _ => None,
    }
}

/// The audit event's detail: what happened to the key and to the release opt-in.
fn update_detail(current: &Instance, change: &InstanceChange) -> String {
    let mut details = Vec::new();
    match &change.key {
        ApiKeyChange::Keep => {}
        ApiKeyChange::Replace(_) => details.push("api_key replaced"),
        ApiKeyChange::Remove => details.push("api_key removed"),
    }
    if change.allow_credential_release != current.allow_credential_release {
        details.push(if change.allow_credential_release {
            "credential release allowed"
        } else {
            "credential release disallowed"
        });
    }
    details.join("; ")
}

impl UpdateWrite<'_> {
    /// Writes, in one statement (so in one transaction even outside one): the fields, the key
    /// when it changes, and the audit event, only if the row is at `read_revision` and the share
    /// check holds. The API standard is looked up in the statement (an unknown one leaves it
    /// NULL, which the column refuses). The new version, or `None` if the row moved on.
    async fn run<'e>(
        &self,
        executor: impl sqlx::PgExecutor<'e>,
    ) -> Result<Option<Written>, DomainError> {
        let spec = &self.change.spec;
        let standard = spec.api_standard.0.as_str();
        let (key_changes, ciphertext, key_id) = match &self.sealed_key {
            None => (false, None, None),
            Some((ciphertext, key_id)) => (true, ciphertext.as_deref(), key_id.as_deref()),
        };
        let (share_grantee, share_role) = self.share_check.unzip();
        let row: Option<WrittenRow> = sqlx::query_as(
            "WITH updated AS ( \
               UPDATE instances SET endpoint = $3, \
                 api_standard_id = (SELECT id FROM api_standards WHERE handle = $4), model = $5, \
                 dimensions = $6, context_limit = $7, description = $8, \
                 allow_credential_release = $9, \
                 api_key_ciphertext = CASE WHEN $10 THEN $11 ELSE api_key_ciphertext END, \
                 api_key_key_id = CASE WHEN $10 THEN $12 ELSE api_key_key_id END, \
                 revision = revision + 1, update_time = clock_timestamp() \
               WHERE id = $1 AND revision = $2 \
                 AND ($14::text IS NULL \
                      OR (SELECT role FROM shares WHERE instance_id = $1 AND grantee_id = $13) = $14) \
               RETURNING revision, update_time, last_test_time, last_test_code, last_test_message, \
                 last_test_dimensions, last_test_latency_ms), \
             event AS ( \
               INSERT INTO audit_events (caller, method, resource, resource_owner, outcome, detail, subject) \
               SELECT $15, $16, $17, $18, 'OK', $19, $20 FROM updated) \
             SELECT revision, update_time, last_test_time, last_test_code, last_test_message, \
               last_test_dimensions, last_test_latency_ms FROM updated",
        )
        .bind(self.id)
        .bind(self.read_revision)
        .bind(&spec.endpoint)
        .bind(standard)
        .bind(&spec.model)
        .bind(spec.dimensions)
        .bind(spec.context_limit)
        .bind(&spec.description)
        .bind(self.change.allow_credential_release)
        .bind(key_changes)
        .bind(ciphertext)
        .bind(key_id)
        .bind(share_grantee)
        .bind(share_role)
        .bind(&self.audit.caller)
        .bind(self.audit.method)
        .bind(&self.resource)
        .bind(resource_owner(&self.resource))
        .bind(&self.detail)
        .bind(self.audit.subject.as_deref())
        .fetch_optional(executor)
        .await
        .map_err(|e| match errors::sqlstate(&e).as_deref() {
            Some(errors::NOT_NULL_VIOLATION) => DomainError::invalid(
                "instance.api_standard",
                format!("unknown API standard apiStandards/{standard}"),
            ),
            _ => errors::on_reference(e, "instance.api_standard"),
        })?;
        Ok(row.map(|row| Written {
            revision: row.revision,
            update_time: row.update_time,
            last_test: last_test_of(
                row.last_test_time,
                row.last_test_code,
                row.last_test_message,
                row.last_test_dimensions,
                row.last_test_latency_ms,
            ),
        }))
    }
}
