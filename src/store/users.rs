//! Queries on users and their token hashes.

use super::read_cache::scope_counter;
use chrono::{DateTime, Utc};

use sqlx::{Postgres, Transaction};

use super::{
    Store,
    change::Change,
    cursor::{self, HandleKey},
    dependents::{self, Revoked},
    errors,
    read_cache::{Deps, ScopeKind, scope},
    rows::{self, DomainRow},
};
use crate::domain::{
    DomainError,
    audit::Audit,
    caller::{Caller, Credential, UserPrincipal},
    names::{UserKey, UserName},
    pagination::{Page, PageRequest},
    user::{NewUser, User, UserFields},
};

#[derive(sqlx::FromRow)]
struct UserRow {
    handle: String,
    display_name: String,
    is_admin: bool,
    revision: i64,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
}

macro_rules! user_columns {
    () => {
        "handle, display_name, is_admin, revision, create_time, update_time"
    };
}

impl DomainRow for UserRow {
    type Domain = User;

    fn into_domain(self) -> Result<User, DomainError> {
        let handle = UserKey::parse("stored", &self.handle).map_err(|_| {
            DomainError::Internal(format!("malformed stored user handle {:?}", self.handle))
        })?;
        Ok(User {
            handle,
            display_name: self.display_name,
            is_admin: self.is_admin,
            revision: self.revision,
            create_time: self.create_time,
            update_time: self.update_time,
        })
    }
}

impl Store {
    /// The caller a credential stands for; UNAUTHENTICATED for an unknown token.
    pub async fn caller_for(&self, credential: &Credential) -> Result<Caller, DomainError> {
        self.authenticate(credential.clone())
            .await
            .map(|(caller, _)| caller)
    }

    /// The caller a credential stands for, and the credential marked with whether the read
    /// cache was fresh for this call, for the handler's own cached read by token;
    /// UNAUTHENTICATED for an unknown token.
    pub async fn authenticate(
        &self,
        credential: Credential,
    ) -> Result<(Caller, Credential), DomainError> {
        let token = match credential {
            Credential::Caller(caller) => return Ok((caller.clone(), Credential::Caller(caller))),
            Credential::Token(token) => token,
        };
        let fresh = self.fresh().await;
        if let Some(fresh) = &fresh
            && let Some(principal) = self.cache.principal(fresh, token.hash())
        {
            return Ok((
                Caller::User(principal),
                Credential::Token(token.checked(true)),
            ));
        }
        let start = self.cache.read_start();
        let (principal, counter) = self
            .principal_by_token_hash(token.hash())
            .await?
            .ok_or(DomainError::Unauthenticated)?;
        self.cache.remember_principal(
            start,
            Deps::new().with(Some(scope(ScopeKind::User, principal.id)), counter),
            *token.hash(),
            principal.clone(),
        );
        Ok((
            Caller::User(principal),
            Credential::Token(token.checked(fresh.is_some())),
        ))
    }

    /// The user holding a token with this hash, if any, and the counter of the user's read
    /// cache scope in the same snapshot. `_system` has no token, so never matches.
    async fn principal_by_token_hash(
        &self,
        token_hash: &[u8],
    ) -> Result<Option<(UserPrincipal, i64)>, DomainError> {
        let row: Option<(i64, String, bool, i64)> = sqlx::query_as(concat!(
            "SELECT id, handle, is_admin, ",
            scope_counter!(1, "id"),
            " FROM users WHERE token_hash = $1"
        ))
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(errors::db)?;
        row.map(|(id, handle, is_admin, counter)| {
            let principal = UserPrincipal::new(id, errors::stored_handle(&handle)?, is_admin);
            Ok((principal, counter))
        })
        .transpose()
    }

    pub async fn create_user(
        &self,
        audit: &Audit,
        new: &NewUser,
        token_hash: &[u8],
    ) -> Result<User, DomainError> {
        let name = UserName(UserKey::from(new.handle.clone()));
        let mut change = Change::begin(self, audit, &name).await?;
        let created = rows::inserted(sqlx::query_as::<_, UserRow>(concat!("INSERT INTO users (handle, display_name, is_admin, token_hash) VALUES ($1, $2, $3, $4) \
             RETURNING ", user_columns!()))
        .bind(new.handle.as_str())
        .bind(&new.fields.display_name)
        .bind(new.fields.is_admin)
        .bind(token_hash), &mut **change.tx(), &name.to_string()).await?;
        change.commit("created; token issued").await?;
        Ok(created)
    }

    pub async fn get_user(&self, name: &UserName) -> Result<User, DomainError> {
        rows::optional(
            sqlx::query_as::<_, UserRow>(concat!(
                "SELECT ",
                user_columns!(),
                " FROM users WHERE handle = $1"
            ))
            .bind(name.0.as_str()),
            &self.pool,
        )
        .await?
        .ok_or_else(|| DomainError::NotFound(name.to_string()))
    }

    /// Users in handle order, after the page cursor (the last handle served).
    pub async fn list_users(&self, page: &PageRequest) -> Result<Page<User>, DomainError> {
        let found = rows::all(
            sqlx::query_as::<_, UserRow>(concat!(
                "SELECT ",
                user_columns!(),
                " FROM users WHERE handle > $1 ORDER BY handle LIMIT $2"
            ))
            .bind(cursor::handle_after(page)?)
            .bind(cursor::fetch_limit(page)),
            &self.pool,
        )
        .await?;
        Ok(cursor::page_of(found, page, |user| {
            HandleKey(user.handle.to_string())
        }))
    }

    /// Read-modify-write of a user's fields: `change` sees the current user (after the etag check)
    /// and returns the new fields.
    pub async fn update_user(
        &self,
        audit: &Audit,
        name: &UserName,
        etag: &str,
        change_fields: impl FnOnce(&User) -> Result<UserFields, DomainError>,
    ) -> Result<User, DomainError> {
        let mut change = Change::begin(self, audit, name).await?;
        let current = Self::lock_user(change.tx(), name).await?;
        change.check_etag(etag, &current)?;
        let fields = change_fields(&current)?;
        let updated = rows::one(
            sqlx::query_as::<_, UserRow>(concat!(
                "UPDATE users SET display_name = $2, is_admin = $3, revision = revision + 1, \
             update_time = clock_timestamp() WHERE handle = $1 RETURNING ",
                user_columns!()
            ))
            .bind(name.0.as_str())
            .bind(&fields.display_name)
            .bind(fields.is_admin),
            &mut **change.tx(),
        )
        .await?;
        change.commit("").await?;
        Ok(updated)
    }

    /// Replaces a user's token hash; the old token stops working with the commit.
    pub async fn rotate_user_token(
        &self,
        audit: &Audit,
        name: &UserName,
        token_hash: &[u8],
    ) -> Result<User, DomainError> {
        let mut change = Change::begin(self, audit, name).await?;
        Self::lock_user(change.tx(), name).await?;
        let rotated = rows::one(sqlx::query_as::<_, UserRow>(concat!("UPDATE users SET token_hash = $2, revision = revision + 1, update_time = clock_timestamp() \
             WHERE handle = $1 RETURNING ", user_columns!()))
        .bind(name.0.as_str())
        .bind(token_hash), &mut **change.tx()).await?;
        change.commit("token rotated").await?;
        Ok(rotated)
    }

    /// Deletes a user and (by cascade) everything the user owns. While other users' projects use
    /// one of the user's instances it is refused, or with `force` they are detached.
    pub async fn delete_user(
        &self,
        audit: &Audit,
        caller: &Caller,
        name: &UserName,
        etag: &str,
        force: bool,
    ) -> Result<(), DomainError> {
        let mut change = Change::begin(self, audit, name).await?;
        let current = Self::lock_user(change.tx(), name).await?;
        change.check_etag(etag, &current)?;
        let user_id = Self::user_id(&mut **change.tx(), name.0.as_str()).await?;
        // The user's instances are locked first, so that a concurrent bind to one of them waits
        // and then finds it gone, instead of slipping in after the dependents were read.
        sqlx::query("SELECT id FROM instances WHERE owner_id = $1 ORDER BY id FOR UPDATE")
            .bind(user_id)
            .execute(&mut **change.tx())
            .await
            .map_err(errors::db)?;
        let dependents = dependents::dependents(change.tx(), Revoked::InstancesOf(user_id)).await?;
        dependents::refuse_or_detach(
            &mut change,
            caller,
            dependents,
            force,
            &format!("{name} cannot be deleted"),
            &format!("{name}, who owned its instance, was deleted"),
        )
        .await?;
        sqlx::query("DELETE FROM users WHERE handle = $1")
            .bind(name.0.as_str())
            .execute(&mut **change.tx())
            .await
            .map_err(|e| errors::on_delete(e, &name.to_string()))?;
        change.commit("deleted with everything it owned").await
    }

    /// The user row, locked for the rest of the change.
    async fn lock_user(
        tx: &mut Transaction<'static, Postgres>,
        name: &UserName,
    ) -> Result<User, DomainError> {
        rows::optional(
            sqlx::query_as::<_, UserRow>(concat!(
                "SELECT ",
                user_columns!(),
                " FROM users WHERE handle = $1 FOR UPDATE"
            ))
            .bind(name.0.as_str()),
            &mut **tx,
        )
        .await?
        .ok_or_else(|| DomainError::NotFound(name.to_string()))
    }
}
