//! Queries on shares. Every share operation locks its instance row first, so that granting,
//! revoking and binding projects to the instance take turns.

use chrono::{DateTime, Utc};

use super::{
    Store,
    change::Change,
    cursor::{self, HandleKey},
    dependents::{self, Revoked},
    errors, quotas,
};
use crate::domain::{
    DomainError,
    access::{self, InstanceAction},
    audit::Audit,
    caller::Caller,
    instance::Role,
    names::{Handle, InstanceName, ShareName},
    pagination::{Page, PageRequest},
    quota::Quota,
    share::Share,
};

#[derive(sqlx::FromRow)]
struct ShareRow {
    grantee: String,
    role: String,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
    quota: Option<String>,
}

macro_rules! share_columns {
    () => {
        "g.handle AS grantee, s.role, s.create_time, s.update_time, s.quota::text AS quota"
    };
}

impl ShareRow {
    fn into_domain(self, instance: &InstanceName) -> Result<Share, DomainError> {
        Ok(Share {
            name: ShareName {
                instance: instance.clone(),
                grantee: errors::stored_handle(&self.grantee)?,
            },
            role: Role::from_stored(&self.role).ok_or_else(|| {
                DomainError::Internal(format!("unknown stored role {:?}", self.role))
            })?,
            create_time: self.create_time,
            update_time: self.update_time,
            quota: quotas::quota_from_json(self.quota.as_deref())?,
        })
    }
}

impl Store {
    /// Grants `grantee` a role on the instance, or changes it, and sets its quota when `quota`
    /// is given (`Some(None)` removes it; `None` keeps it as it is, none for a new share); for
    /// those who may manage it.
    pub async fn share_instance(
        &self,
        audit: &Audit,
        caller: &Caller,
        instance: &InstanceName,
        grantee: &Handle,
        role: Role,
        quota: Option<Option<&Quota>>,
    ) -> Result<Share, DomainError> {
        // The share's own name is known only once the grantee is checked; the event names it.
        let share_name = ShareName {
            instance: instance.clone(),
            grantee: grantee.clone(),
        };
        let mut change = Change::begin(self, audit, &share_name).await?;
        let (instance_id, _) =
            Self::lock_for(change.tx(), caller, instance, InstanceAction::Manage).await?;
        let tx = change.tx();
        let grantee_id: i64 = sqlx::query_scalar("SELECT id FROM users WHERE handle = $1")
            .bind(grantee.as_str())
            .fetch_optional(&mut **tx)
            .await
            .map_err(errors::db)?
            .ok_or_else(|| {
                DomainError::invalid("grantee", format!("there is no user users/{grantee}"))
            })?;
        let row = sqlx::query_as::<_, ShareRow>(concat!("WITH upserted AS ( \
                INSERT INTO shares AS s (instance_id, grantee_id, role, quota) \
                VALUES ($1, $2, $3, $5::jsonb) \
                ON CONFLICT (instance_id, grantee_id) DO UPDATE SET role = EXCLUDED.role, \
                    quota = CASE WHEN $4 THEN EXCLUDED.quota ELSE s.quota END, \
                    update_time = CASE WHEN s.role = EXCLUDED.role \
                                        AND (NOT $4 OR s.quota IS NOT DISTINCT FROM EXCLUDED.quota) \
                                       THEN s.update_time ELSE clock_timestamp() END \
                RETURNING * \
             ) SELECT ", share_columns!(), " FROM upserted s JOIN users g ON g.id = s.grantee_id"))
        .bind(instance_id)
        .bind(grantee_id)
        .bind(role.as_str())
        .bind(quota.is_some())
        .bind(quota.and_then(quotas::quota_to_json))
        .fetch_one(&mut **tx)
        .await
        .map_err(errors::db)?;
        let share = row.into_domain(instance)?;
        let detail = match quota {
            None => format!("role {}", role.as_str()),
            Some(None) => format!("role {}; no quota", role.as_str()),
            Some(Some(quota)) => {
                format!("role {}; quota {}", role.as_str(), quotas::describe(quota))
            }
        };
        change.commit(&detail).await?;
        Ok(share)
    }

    /// Revokes a share. While the grantee's projects use the instance it is refused, or with
    /// `force` they are detached (see [`dependents`]).
    pub async fn unshare_instance(
        &self,
        audit: &Audit,
        caller: &Caller,
        share: &ShareName,
        force: bool,
    ) -> Result<(), DomainError> {
        let mut change = Change::begin(self, audit, share).await?;
        let (instance_id, _) =
            Self::lock_for(change.tx(), caller, &share.instance, InstanceAction::Manage).await?;
        let tx = change.tx();
        let grantee_id: Option<i64> = sqlx::query_scalar(
            "SELECT s.grantee_id FROM shares s JOIN users g ON g.id = s.grantee_id \
             WHERE s.instance_id = $1 AND g.handle = $2",
        )
        .bind(instance_id)
        .bind(share.grantee.as_str())
        .fetch_optional(&mut **tx)
        .await
        .map_err(errors::db)?;
        let grantee_id = grantee_id.ok_or_else(|| DomainError::NotFound(share.to_string()))?;
        let dependents = dependents::dependents(
            tx,
            Revoked::Share {
                instance_id,
                grantee_id,
            },
        )
        .await?;
        dependents::refuse_or_detach(
            &mut change,
            caller,
            dependents,
            force,
            &format!("{share} cannot be revoked"),
            &format!(
                "the share of {} to users/{} was revoked",
                share.instance, share.grantee
            ),
        )
        .await?;
        let tx = change.tx();
        sqlx::query("DELETE FROM shares WHERE instance_id = $1 AND grantee_id = $2")
            .bind(instance_id)
            .bind(grantee_id)
            .execute(&mut **tx)
            .await
            .map_err(errors::db)?;
        // The former grantee's quota counters go with the share.
        sqlx::query("DELETE FROM quota_counters WHERE instance_id = $1 AND grantee_id = $2")
            .bind(instance_id)
            .bind(grantee_id)
            .execute(&mut **tx)
            .await
            .map_err(errors::db)?;
        change.commit("revoked").await
    }

    /// One share: for those who may manage the instance, and for its grantee. A reader or
    /// writer asking for another's share is refused as the policy says; strangers learn nothing.
    pub async fn get_share(
        &self,
        caller: &Caller,
        share: &ShareName,
    ) -> Result<Share, DomainError> {
        let current = self.find_instance(caller, &share.instance).await?;
        access::authorize_share_read(caller, current.map(|i| i.access_role), share)?;
        let row = sqlx::query_as::<_, ShareRow>(concat!(
            "SELECT ",
            share_columns!(),
            " FROM shares s JOIN users g ON g.id = s.grantee_id \
             JOIN instances i ON i.id = s.instance_id JOIN users o ON o.id = i.owner_id \
             WHERE o.handle = $1 AND i.handle = $2 AND g.handle = $3"
        ))
        .bind(share.instance.owner.as_str())
        .bind(share.instance.handle.as_str())
        .bind(share.grantee.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(errors::db)?
        .ok_or_else(|| DomainError::NotFound(share.to_string()))?;
        row.into_domain(&share.instance)
    }

    /// The shares of an instance in grantee order after the cursor; for those who may manage it.
    pub async fn list_shares(
        &self,
        caller: &Caller,
        instance: &InstanceName,
        page: &PageRequest,
    ) -> Result<Page<Share>, DomainError> {
        let current = self.find_instance(caller, instance).await?;
        access::authorize_instance(
            current.map(|i| i.access_role),
            InstanceAction::Manage,
            instance,
        )?;
        let rows = sqlx::query_as::<_, ShareRow>(concat!(
            "SELECT ",
            share_columns!(),
            " FROM shares s JOIN users g ON g.id = s.grantee_id \
             JOIN instances i ON i.id = s.instance_id JOIN users o ON o.id = i.owner_id \
             WHERE o.handle = $1 AND i.handle = $2 AND g.handle > $3 ORDER BY g.handle LIMIT $4"
        ))
        .bind(instance.owner.as_str())
        .bind(instance.handle.as_str())
        .bind(cursor::handle_after(page)?)
        .bind(cursor::fetch_limit(page))
        .fetch_all(&self.pool)
        .await
        .map_err(errors::db)?;
        let found = rows
            .into_iter()
            .map(|row| row.into_domain(instance))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(cursor::page_of(found, page, |share| {
            HandleKey(share.name.grantee.to_string())
        }))
    }
}
