//! The hot reads that resolve the caller's token in the same statement as the instance they read
//! (GetInstance, GetProjectInstance; see `Credential::Token`), with the read cache in front of
//! GetInstance.

use sqlx::{FromRow, Row};

use super::{InstanceRow, select_instances};
use crate::{
    domain::{
        DomainError,
        caller::{Caller, Credential, UnresolvedToken, UserPrincipal},
        instance::Instance,
        names::{InstanceName, ProjectName},
    },
    store::{Store, errors},
};

/// The caller whose token hash is `$1`, with the instance row that `$instance_query` (columns of
/// [`select_instances`] for grantee `c.id`, narrowed by `$2` and `$3`) finds, in one statement:
/// no row means no such token; a row without an instance means no such instance. One round trip
/// instead of two, and exactly as fresh as a separate lookup: a token that a rotation or deletion
/// on another replica has replaced matches nothing. Also reads the read cache's epoch, in the
/// same snapshot, to tag what it found.
macro_rules! with_caller_by_token {
    ($instance_query:expr) => {
        concat!(
            "SELECT c.id AS caller_id, c.handle AS caller_handle, c.is_admin AS caller_is_admin, \
             (SELECT value FROM read_cache_epoch) AS cache_epoch, x.* \
             FROM users c LEFT JOIN LATERAL (",
            $instance_query,
            ") x ON true WHERE c.token_hash = $1"
        )
    };
}

/// One instance by its name (`$2`, `$3`), with the caller.
const FIND_BY_TOKEN: &str = with_caller_by_token!(concat!(
    select_instances!("c.id"),
    " WHERE u.handle = $2 AND i.handle = $3"
));

/// The instance bound to project `$2`/`$3`, with the caller.
const FIND_PROJECT_INSTANCE_BY_TOKEN: &str = with_caller_by_token!(concat!(
    select_instances!("c.id"),
    " JOIN projects p ON p.instance_id = i.id JOIN users pu ON pu.id = p.owner_id \
      WHERE pu.handle = $2 AND p.handle = $3"
));

impl Store {
    /// [`Credential`]); also answers who the caller turned out to be.
    pub async fn find_instance_as(
        &self,
        credential: &Credential,
        name: &InstanceName,
    ) -> Result<(Caller, Option<Instance>), DomainError> {
        let token = match credential {
            Credential::Caller(caller) => {
                let found = self.find_instance(caller, name).await?;
                return Ok((caller.clone(), found));
            }
            Credential::Token(token) => token,
        };
        let question = (
            *token.hash(),
            name.owner.as_str().to_owned(),
            name.handle.as_str().to_owned(),
        );
        if let Some(epoch) = self.fresh_epoch().await
            && let Some((principal, instance)) = self.cache.instance(epoch, &question)
        {
            return Ok((Caller::User(principal), Some(instance)));
        }
        let (principal, row, epoch) = self
            .with_caller(
                FIND_BY_TOKEN,
                token,
                name.owner.as_str(),
                name.handle.as_str(),
            )
            .await?;
        let caller = Caller::User(principal.clone());
        let found = match row {
            None => None,
            Some(row) => row.into_visible(&caller)?,
        };
        // Only answers that found the instance are cached (see `read_cache`).
        if let Some(instance) = &found {
            self.cache
                .remember_instance(epoch, question, (principal, instance.clone()));
        }
        Ok((caller, found))
    }

    /// The instance bound to a project, for a credential that may be an unresolved token, and
    /// who the caller is. `None`: no such project. `Some(None)`: the project exists but its
    /// instance is not visible to the caller. The caller's right to see the project itself is
    /// for the handler to check.
    pub async fn find_project_instance_as(
        &self,
        credential: &Credential,
        project: &ProjectName,
    ) -> Result<(Caller, Option<Option<Instance>>), DomainError> {
        let token = match credential {
            Credential::Caller(caller) => {
                let found = match self.find_project(project).await? {
                    None => None,
                    Some(found) => Some(self.find_instance(caller, &found.instance).await?),
                };
                return Ok((caller.clone(), found));
            }
            Credential::Token(token) => token,
        };
        let (principal, row, _) = self
            .with_caller(
                FIND_PROJECT_INSTANCE_BY_TOKEN,
                token,
                project.owner.as_str(),
                project.handle.as_str(),
            )
            .await?;
        let caller = Caller::User(principal);
        let found = match row {
            None => None,
            Some(row) => Some(row.into_visible(&caller)?),
        };
        Ok((caller, found))
    }

    /// Runs one of the `*_BY_TOKEN` statements: the caller whose token hash is `$1` (or
    /// UNAUTHENTICATED), the instance row the statement found for `$2`, `$3`, if any, and the
    /// read cache's epoch they were read at.
    async fn with_caller(
        &self,
        statement: &'static str,
        token: &UnresolvedToken,
        owner: &str,
        handle: &str,
    ) -> Result<(UserPrincipal, Option<InstanceRow>, i64), DomainError> {
        let row = sqlx::query(statement)
            .bind(token.hash().as_slice())
            .bind(owner)
            .bind(handle)
            .fetch_optional(&self.pool)
            .await
            .map_err(errors::db)?
            .ok_or(DomainError::Unauthenticated)?;
        let principal = UserPrincipal {
            id: row.try_get("caller_id").map_err(errors::db)?,
            handle: errors::stored_handle(
                row.try_get::<&str, _>("caller_handle")
                    .map_err(errors::db)?,
            )?,
            is_admin: row.try_get("caller_is_admin").map_err(errors::db)?,
        };
        let epoch = row.try_get("cache_epoch").map_err(errors::db)?;
        let instance = match row.try_get::<Option<i64>, _>("id").map_err(errors::db)? {
            None => None,
            Some(_) => Some(InstanceRow::from_row(&row).map_err(errors::db)?),
        };
        Ok((principal, instance, epoch))
    }
}
