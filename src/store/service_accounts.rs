//! Service accounts in the database: the administrator's CRUD and token rotation, each a
//! [`Change`] with its audit event; who a service account token belongs to (with the user it
//! names to act for, in the same statement), through the read cache; and the per-account window
//! of credential releases shared by every replica.

use super::read_cache::scope_counter;
use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Row, Transaction};

use super::{
    Store,
    change::Change,
    cursor::{self, HandleKey},
    errors,
    rate_windows::{self, Windows},
    read_cache::{AccountKey, Deps, ScopeKind, scope},
    rows::{self, DomainRow},
};
use crate::domain::{
    DomainError,
    audit::Audit,
    caller::UserPrincipal,
    names::{Handle, UserKey},
    pagination::{Page, PageRequest},
    service_account::{
        Permission, ServiceAccount, ServiceAccountFields, ServiceAccountName,
        ServiceAccountPrincipal,
    },
};

#[derive(sqlx::FromRow)]
struct AccountRow {
    handle: String,
    display_name: String,
    permissions: Vec<String>,
    act_for_users: Vec<String>,
    client_certificate_subject: String,
    revision: i64,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
}

macro_rules! account_columns {
    () => {
        "handle, display_name, permissions, act_for_users, \
     client_certificate_subject, revision, create_time, update_time"
    };
}

fn permissions_of(stored: &[String]) -> Result<Vec<Permission>, DomainError> {
    stored
        .iter()
        .map(|p| {
            Permission::from_stored(p)
                .ok_or_else(|| DomainError::Internal(format!("unknown stored permission {p:?}")))
        })
        .collect()
}

fn handles_of(stored: &[String]) -> Result<Vec<Handle>, DomainError> {
    stored.iter().map(|h| errors::stored_handle(h)).collect()
}

impl DomainRow for AccountRow {
    type Domain = ServiceAccount;

    fn into_domain(self) -> Result<ServiceAccount, DomainError> {
        Ok(ServiceAccount {
            name: ServiceAccountName(errors::stored_handle(&self.handle)?),
            fields: ServiceAccountFields {
                display_name: self.display_name,
                permissions: permissions_of(&self.permissions)?,
                act_for_users: handles_of(&self.act_for_users)?,
                client_certificate_subject: Some(self.client_certificate_subject)
                    .filter(|s| !s.is_empty()),
            },
            revision: self.revision,
            create_time: self.create_time,
            update_time: self.update_time,
        })
    }
}

/// The stored forms of the fields: permissions, users and subject ('' for none).
fn stored(fields: &ServiceAccountFields) -> (Vec<&'static str>, Vec<&str>, &str) {
    (
        fields.permissions.iter().map(|p| p.as_str()).collect(),
        fields.act_for_users.iter().map(Handle::as_str).collect(),
        fields.client_certificate_subject.as_deref().unwrap_or(""),
    )
}

impl Store {
    /// The service account holding a token with this hash and, when `act_as` names a user,
    /// that user (`None` when there is no such user, or it names the reserved `_system`, which
    /// nobody acts for), read in one statement, through the read cache. UNAUTHENTICATED for an
    /// unknown token.
    pub async fn service_account_by_token(
        &self,
        token_hash: &[u8; 32],
        act_as: Option<&UserKey>,
    ) -> Result<(Arc<ServiceAccountPrincipal>, Option<UserPrincipal>), DomainError> {
        let key = AccountKey {
            token_hash: *token_hash,
            act_as: act_as.map(|u| u.as_str().to_owned()).unwrap_or_default(),
        };
        if let Some(fresh) = self.fresh().await
            && let Some(answer) = self.cache.account(&fresh, &key)
        {
            return Ok(answer);
        }
        let start = self.cache.read_start();
        let row = sqlx::query(concat!(
            "SELECT sa.id, sa.handle, sa.permissions, sa.act_for_users, \
                    sa.client_certificate_subject, \
                    u.id AS user_id, u.handle AS user_handle, u.is_admin AS user_is_admin, \
                    ",
            scope_counter!(2, "sa.id"),
            " AS account_counter, \
                    ",
            scope_counter!(1, "u.id"),
            " AS user_counter \
             FROM service_accounts sa \
             LEFT JOIN users u ON u.handle = $2 AND u.handle <> '_system' \
             WHERE sa.token_hash = $1"
        ))
        .bind(token_hash.as_slice())
        .bind(act_as.map(UserKey::as_str))
        .fetch_optional(&self.pool)
        .await
        .map_err(errors::db)?
        .ok_or(DomainError::Unauthenticated)?;
        let subject: String = row
            .try_get("client_certificate_subject")
            .map_err(errors::db)?;
        let account = Arc::new(ServiceAccountPrincipal {
            id: row.try_get("id").map_err(errors::db)?,
            handle: errors::stored_handle(row.try_get::<&str, _>("handle").map_err(errors::db)?)?,
            permissions: permissions_of(
                &row.try_get::<Vec<String>, _>("permissions")
                    .map_err(errors::db)?,
            )?,
            act_for_users: handles_of(
                &row.try_get::<Vec<String>, _>("act_for_users")
                    .map_err(errors::db)?,
            )?,
            client_certificate_subject: Some(subject).filter(|s| !s.is_empty()),
        });
        let user = match row
            .try_get::<Option<i64>, _>("user_id")
            .map_err(errors::db)?
        {
            None => None,
            Some(id) => Some(UserPrincipal::new(
                id,
                errors::stored_handle(row.try_get::<&str, _>("user_handle").map_err(errors::db)?)?,
                row.try_get("user_is_admin").map_err(errors::db)?,
            )),
        };
        // A name the account may not act for is answered without its user, and kept like any
        // answer: whether that user exists changes nothing of the refusal, so refusals of
        // existing and missing users take the same path (no existence oracle by timing).
        let considered = act_as.is_none_or(|named| account.may_consider(named));
        let user = user.filter(|_| considered);
        // Otherwise only answers that found what they named are kept (a user created later
        // would bump no scope).
        if act_as.is_none() || user.is_some() || !considered {
            let deps = Deps::new()
                .with(
                    Some(scope(ScopeKind::ServiceAccount, account.id)),
                    row.try_get("account_counter").map_err(errors::db)?,
                )
                .with(
                    user.as_ref().map(|user| scope(ScopeKind::User, user.id)),
                    row.try_get("user_counter").map_err(errors::db)?,
                );
            self.cache
                .remember_account(start, deps, key, (account.clone(), user.clone()));
        }
        Ok((account, user))
    }

    pub async fn create_service_account(
        &self,
        audit: &Audit,
        name: &ServiceAccountName,
        fields: &ServiceAccountFields,
        token_hash: &[u8],
    ) -> Result<ServiceAccount, DomainError> {
        let mut change = Change::begin(self, audit, name).await?;
        let (permissions, users, subject) = stored(fields);
        let created = rows::inserted(
            sqlx::query_as::<_, AccountRow>(concat!(
                "INSERT INTO service_accounts (handle, display_name, permissions, act_for_users, \
             client_certificate_subject, token_hash) VALUES ($1, $2, $3, $4, $5, $6) \
             RETURNING ",
                account_columns!()
            ))
            .bind(name.0.as_str())
            .bind(&fields.display_name)
            .bind(permissions)
            .bind(users)
            .bind(subject)
            .bind(token_hash),
            &mut **change.tx(),
            &name.to_string(),
        )
        .await?;
        change.commit("created; token issued").await?;
        Ok(created)
    }

    pub async fn get_service_account(
        &self,
        name: &ServiceAccountName,
    ) -> Result<ServiceAccount, DomainError> {
        rows::optional(
            sqlx::query_as::<_, AccountRow>(concat!(
                "SELECT ",
                account_columns!(),
                " FROM service_accounts WHERE handle = $1"
            ))
            .bind(name.0.as_str()),
            &self.pool,
        )
        .await?
        .ok_or_else(|| DomainError::NotFound(name.to_string()))
    }

    /// Service accounts in handle order, after the page cursor (the last handle served).
    pub async fn list_service_accounts(
        &self,
        page: &PageRequest,
    ) -> Result<Page<ServiceAccount>, DomainError> {
        let found = rows::all(
            sqlx::query_as::<_, AccountRow>(concat!(
                "SELECT ",
                account_columns!(),
                " FROM service_accounts WHERE handle > $1 \
             ORDER BY handle LIMIT $2"
            ))
            .bind(cursor::handle_after(page)?)
            .bind(cursor::fetch_limit(page)),
            &self.pool,
        )
        .await?;
        Ok(cursor::page_of(found, page, |account| {
            HandleKey(account.name.0.to_string())
        }))
    }

    /// Read-modify-write of an account's fields: `change_fields` sees the current account
    /// (after the etag check) and returns the new fields. Every replica sees the change with
    /// its commit (it moves the account's read cache scope).
    pub async fn update_service_account(
        &self,
        audit: &Audit,
        name: &ServiceAccountName,
        etag: &str,
        change_fields: impl FnOnce(&ServiceAccount) -> Result<ServiceAccountFields, DomainError>,
    ) -> Result<ServiceAccount, DomainError> {
        let mut change = Change::begin(self, audit, name).await?;
        let current = Self::lock_service_account(change.tx(), name).await?;
        change.check_etag(etag, &current)?;
        let fields = change_fields(&current)?;
        let (permissions, users, subject) = stored(&fields);
        let updated = rows::one(sqlx::query_as::<_, AccountRow>(concat!(
            "UPDATE service_accounts SET display_name = $2, permissions = $3, act_for_users = $4, \
             client_certificate_subject = $5, revision = revision + 1, \
             update_time = clock_timestamp() WHERE handle = $1 RETURNING ",
            account_columns!()
        ))
        .bind(name.0.as_str())
        .bind(&fields.display_name)
        .bind(permissions)
        .bind(users)
        .bind(subject), &mut **change.tx()).await?;
        let detail = if fields.permissions == current.fields.permissions {
            String::new()
        } else {
            let names: Vec<&str> = fields.permissions.iter().map(|p| p.as_str()).collect();
            format!("permissions now [{}]", names.join(", "))
        };
        change.commit(&detail).await?;
        Ok(updated)
    }

    /// Replaces an account's token hash; the old token stops working with the commit.
    pub async fn rotate_service_account_token(
        &self,
        audit: &Audit,
        name: &ServiceAccountName,
        token_hash: &[u8],
    ) -> Result<ServiceAccount, DomainError> {
        let mut change = Change::begin(self, audit, name).await?;
        Self::lock_service_account(change.tx(), name).await?;
        let rotated = rows::one(
            sqlx::query_as::<_, AccountRow>(concat!(
                "UPDATE service_accounts SET token_hash = $2, revision = revision + 1, \
             update_time = clock_timestamp() WHERE handle = $1 RETURNING ",
                account_columns!()
            ))
            .bind(name.0.as_str())
            .bind(token_hash),
            &mut **change.tx(),
        )
        .await?;
        change.commit("token rotated").await?;
        Ok(rotated)
    }

    pub async fn delete_service_account(
        &self,
        audit: &Audit,
        name: &ServiceAccountName,
        etag: &str,
    ) -> Result<(), DomainError> {
        let mut change = Change::begin(self, audit, name).await?;
        let current = Self::lock_service_account(change.tx(), name).await?;
        change.check_etag(etag, &current)?;
        sqlx::query("DELETE FROM service_accounts WHERE handle = $1")
            .bind(name.0.as_str())
            .execute(&mut **change.tx())
            .await
            .map_err(|e| errors::on_delete(e, &name.to_string()))?;
        change.commit("deleted").await
    }

    /// Counts one credential release by account `account_id` in the current minute, shared by
    /// every replica; answers how long until the window ends when the release is over `limit`.
    pub async fn take_release_slot(
        &self,
        account_id: i64,
        limit: u32,
    ) -> Result<Option<Duration>, DomainError> {
        rate_windows::take_slot(&self.pool, Windows::CredentialReleases, account_id, limit)
            .await
            .map_err(|e| match errors::sqlstate(&e).as_deref() {
                // The account was deleted since the edge saw it.
                Some(errors::FOREIGN_KEY_VIOLATION) => DomainError::Unauthenticated,
                _ => errors::db(e),
            })
    }

    /// The account row, locked for the rest of the change.
    async fn lock_service_account(
        tx: &mut Transaction<'static, Postgres>,
        name: &ServiceAccountName,
    ) -> Result<ServiceAccount, DomainError> {
        rows::optional(
            sqlx::query_as::<_, AccountRow>(concat!(
                "SELECT ",
                account_columns!(),
                " FROM service_accounts WHERE handle = $1 FOR UPDATE"
            ))
            .bind(name.0.as_str()),
            &mut **tx,
        )
        .await?
        .ok_or_else(|| DomainError::NotFound(name.to_string()))
    }
}
