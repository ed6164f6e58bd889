//! The hot reads that resolve the caller's token in the same statement as the instance they read
//! (GetInstance, GetProjectInstance; see `Credential::Token`), with the read cache in front of
//! both: a project's answer is cached like an instance's, and also depends on the project's row.

use crate::store::read_cache::{instance_answer_counters, scope_counter};
use chrono::{DateTime, Utc};
use sqlx::{FromRow, Row, postgres::PgRow};

use super::{InstanceRow, select_instances};
use crate::{
    domain::{
        DomainError,
        caller::{Caller, Credential, UnresolvedToken, UserPrincipal},
        instance::Instance,
        names::{Handle, InstanceName, ProjectName, UserKey},
        project::{Detachment, Project, ProjectBinding},
    },
    store::{
        Store, errors,
        read_cache::{Deps, Fresh, InstanceAnswer, InstanceKey, SHARED_SCOPE, ScopeKind, scope},
    },
};

/// The caller whose token hash is `$1`, with the instance row that `$instance_query` (columns of
/// [`select_instances`] for grantee `c.id`, narrowed by `$2` and `$3`) finds, in one statement:
/// no row means no such token; a row without an instance means no such instance. One round trip
/// instead of two, and exactly as fresh as a separate lookup: a token that a rotation or deletion
/// on another replica has replaced matches nothing. Also reads, in the same snapshot, the
/// counters of the read cache scopes the answer depends on (the caller's row, the instance with
/// its shares, the API standards), to tag what it found.
macro_rules! with_caller_by_token {
    ($instance_query:expr) => {
        concat!(
            "SELECT c.id AS caller_id, c.handle AS caller_handle, c.is_admin AS caller_is_admin, ",
            instance_answer_counters!("c.id"),
            ", x.* \
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

/// Project `$2`/`$3` (its detachment columns, never NULL when it exists, and the counter of its
/// read cache scope) and the instance bound to it (none while detached), with the caller.
const FIND_PROJECT_INSTANCE_BY_TOKEN: &str = with_caller_by_token!(concat!(
    "SELECT p.id AS cache_project_id, ",
    scope_counter!(4, "p.id"),
    " AS project_counter, \
     p.detach_reason AS project_detach_reason, p.detach_time AS project_detach_time, bound.* \
     FROM projects p JOIN users pu ON pu.id = p.owner_id \
     LEFT JOIN LATERAL (",
    select_instances!("c.id"),
    " WHERE i.id = p.instance_id) bound ON true \
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
        let (question, cached) = self
            .cached(token, InstanceAnswer::Instance, &name.owner, &name.handle)
            .await;
        if let Some((principal, instance)) = cached {
            return Ok((Caller::User(principal), Some(instance)));
        }
        let start = self.cache.read_start();
        let (principal, row) = self
            .with_caller(
                FIND_BY_TOKEN,
                token,
                name.owner.as_str(),
                name.handle.as_str(),
            )
            .await?;
        let caller = Caller::User(principal.clone());
        let found = match instance_in(&row)? {
            None => None,
            Some(row) => row.into_visible(&caller)?,
        };
        // Only answers that found the instance are cached (see `read_cache`).
        if let Some(instance) = &found {
            let (deps, caller_deps) = answer_deps(&row, &principal, instance, None)?;
            self.cache.remember_instance(
                start,
                deps,
                caller_deps,
                InstanceAnswer::Instance,
                question,
                (principal, instance.clone()),
            );
        }
        Ok((caller, found))
    }

    /// What is behind a project, for a credential that may be an unresolved token, and who the
    /// caller is. `None`: no such project. The caller's right to see the project itself is for
    /// the handler to check.
    pub async fn find_project_instance_as(
        &self,
        credential: &Credential,
        project: &ProjectName,
    ) -> Result<(Caller, Option<ProjectBinding<Instance>>), DomainError> {
        let token = match credential {
            Credential::Caller(caller) => {
                let found = match self.find_project(project).await? {
                    None => None,
                    Some(Project {
                        detached: Some(detachment),
                        ..
                    }) => Some(ProjectBinding::Detached(detachment)),
                    Some(Project {
                        instance: Some(instance),
                        ..
                    }) => Some(ProjectBinding::Bound(
                        self.find_instance(caller, &instance).await?,
                    )),
                    Some(_) => Some(ProjectBinding::Bound(None)),
                };
                return Ok((caller.clone(), found));
            }
            Credential::Token(token) => token,
        };
        let (question, cached) = self
            .cached(
                token,
                InstanceAnswer::ProjectInstance,
                &project.owner,
                &project.handle,
            )
            .await;
        if let Some((principal, instance)) = cached {
            return Ok((
                Caller::User(principal),
                Some(ProjectBinding::Bound(Some(instance))),
            ));
        }
        let start = self.cache.read_start();
        let (principal, row) = self
            .with_caller(
                FIND_PROJECT_INSTANCE_BY_TOKEN,
                token,
                project.owner.as_str(),
                project.handle.as_str(),
            )
            .await?;
        let caller = Caller::User(principal.clone());
        let reason: Option<String> = row.try_get("project_detach_reason").map_err(errors::db)?;
        let time: Option<DateTime<Utc>> = row.try_get("project_detach_time").map_err(errors::db)?;
        let found = match (reason, time) {
            (None, _) => None,
            (Some(reason), Some(time)) => {
                Some(ProjectBinding::Detached(Detachment { reason, time }))
            }
            (Some(_), None) => Some(ProjectBinding::Bound(match instance_in(&row)? {
                None => None,
                Some(instance) => instance.into_visible(&caller)?,
            })),
        };
        // Only a bound instance the caller sees is cached; it depends on the project's row
        // (its binding) besides what a GetInstance answer depends on.
        if let Some(ProjectBinding::Bound(Some(instance))) = &found {
            let project_id: i64 = row.try_get("cache_project_id").map_err(errors::db)?;
            let project_counter: i64 = row.try_get("project_counter").map_err(errors::db)?;
            let (deps, caller_deps) = answer_deps(
                &row,
                &principal,
                instance,
                Some((scope(ScopeKind::Project, project_id), project_counter)),
            )?;
            self.cache.remember_instance(
                start,
                deps,
                caller_deps,
                InstanceAnswer::ProjectInstance,
                question,
                (principal, instance.clone()),
            );
        }
        Ok((caller, found))
    }

    /// The cache's question for `token` about `owner`/`handle`, and its answer when it has a
    /// current one: at once when the edge checked the token in this call with the cache fresh
    /// for it, else after a probe round sent now.
    async fn cached(
        &self,
        token: &UnresolvedToken,
        kind: InstanceAnswer,
        owner: &UserKey,
        handle: &Handle,
    ) -> (InstanceKey, Option<(UserPrincipal, Instance)>) {
        let question = InstanceKey {
            token_hash: *token.hash(),
            owner: owner.as_str().to_owned(),
            handle: handle.as_str().to_owned(),
        };
        let fresh = match token.checked_fresh() {
            true if self.cache.enabled() => Some(Fresh::after_a_round_applied()),
            _ => self.fresh().await,
        };
        let answer = fresh.and_then(|fresh| self.cache.instance(&fresh, kind, &question));
        (question, answer)
    }

    /// Runs one of the `*_BY_TOKEN` statements: the caller whose token hash is `$1` (or
    /// UNAUTHENTICATED) and the row the statement found for `$2`, `$3` (see [`instance_in`]).
    async fn with_caller(
        &self,
        statement: &'static str,
        token: &UnresolvedToken,
        owner: &str,
        handle: &str,
    ) -> Result<(UserPrincipal, PgRow), DomainError> {
        let row = sqlx::query(statement)
            .bind(token.hash().as_slice())
            .bind(owner)
            .bind(handle)
            .fetch_optional(&self.pool)
            .await
            .map_err(errors::db)?
            .ok_or(DomainError::Unauthenticated)?;
        let principal = UserPrincipal::new(
            row.try_get("caller_id").map_err(errors::db)?,
            errors::stored_handle(
                row.try_get::<&str, _>("caller_handle")
                    .map_err(errors::db)?,
            )?,
            row.try_get("caller_is_admin").map_err(errors::db)?,
        );
        Ok((principal, row))
    }
}

/// The read cache scopes a `*_BY_TOKEN` answer that found `instance` depends on, with their
/// counters as the row read them: the caller's row, the instance with its shares, the API
/// standards, and `extra` (a project's row); and the caller's row alone, which who holds the
/// token depends on.
fn answer_deps(
    row: &PgRow,
    principal: &UserPrincipal,
    instance: &Instance,
    extra: Option<(i64, i64)>,
) -> Result<(Deps, Deps), DomainError> {
    let counter = |column: &str| row.try_get::<i64, _>(column).map_err(errors::db);
    let caller_deps = Deps::new().with(
        Some(scope(ScopeKind::User, principal.id)),
        counter("caller_counter")?,
    );
    let mut deps = caller_deps
        .clone()
        .with(
            Some(scope(ScopeKind::Instance, instance.sequence)),
            counter("instance_counter")?,
        )
        .with(Some(SHARED_SCOPE), counter("shared_counter")?);
    if let Some((scope, value)) = extra {
        deps = deps.with(Some(scope), value);
    }
    Ok((deps, caller_deps))
}

/// The instance columns of a `*_BY_TOKEN` row, if it found an instance.
fn instance_in(row: &PgRow) -> Result<Option<InstanceRow>, DomainError> {
    match row.try_get::<Option<i64>, _>("id").map_err(errors::db)? {
        None => Ok(None),
        Some(_) => InstanceRow::from_row(row).map(Some).map_err(errors::db),
    }
}
