//! Queries on instances. API keys are sealed with the key ring inside the same transaction that
//! writes the row, with the row's immutable uid as associated data; no plaintext reaches SQL.

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, FromRow, Postgres, Row, Transaction};

use super::{
    Store, audit, blockers,
    create_batches::{BatchOutcome, CreateValues, Created},
    errors,
};
use crate::{
    domain::{
        DomainError,
        audit::{Audit, resource_owner},
        caller::{Caller, Credential, UnresolvedToken, UserPrincipal},
        definition::ServiceSpec,
        instance::{ApiKeyChange, Instance, Role, Scope, effective_role},
        names::{ApiStandardName, DefinitionName, InstanceName, ProjectName, UserKey, UserName},
        pagination::PageRequest,
    },
    vault::{ApiKey, KeyRing},
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
    revision: i64,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
    /// The role of a share of this instance to the caller ($1), if any.
    shared_role: Option<String>,
}

/// Every column of an instance, plus the role of a share of it to `$grantee` (an SQL expression
/// for a user id; NULL for the configured admin).
macro_rules! select_instances {
    ($grantee:literal) => {
        concat!(
            "SELECT i.id, i.uid::text AS uid, u.handle AS owner, i.handle, \
             du.handle AS definition_owner, d.handle AS definition_handle, i.endpoint, st.handle AS api_standard, \
             i.model, i.dimensions, i.context_limit, i.description, (i.api_key_ciphertext IS NOT NULL) AS has_api_key, \
             i.revision, i.create_time, i.update_time, s.role AS shared_role \
             FROM instances i \
             JOIN users u ON u.id = i.owner_id \
             JOIN api_standards st ON st.id = i.api_standard_id \
             LEFT JOIN definitions d ON d.id = i.definition_id \
             LEFT JOIN users du ON du.id = d.owner_id \
             LEFT JOIN shares s ON s.instance_id = i.id AND s.grantee_id = ",
            $grantee
        )
    };
}

/// [`select_instances`] for the caller whose user id is `$1`.
const SELECT: &str = select_instances!("$1");

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

/// Inserts an instance and its audit event in one statement. The owner, API standard and
/// definition are resolved by handle inside it; when one is missing nothing is inserted and the
/// `*_found` flags say which. `$3` is NULL when the instance has no source definition.
const CREATE: &str = "WITH owner AS (SELECT id FROM users WHERE handle = $1), \
    standard AS (SELECT id FROM api_standards WHERE handle = $2), \
    definition AS (SELECT d.id FROM definitions d JOIN users u ON u.id = d.owner_id \
                   WHERE u.handle = $3 AND d.handle = $4), \
    inserted AS ( \
        INSERT INTO instances (uid, owner_id, handle, definition_id, endpoint, api_standard_id, model, \
                               dimensions, context_limit, description, api_key_ciphertext, api_key_key_id) \
        SELECT $5::uuid, owner.id, $6, (SELECT id FROM definition), $7, standard.id, $8, $9, $10, $11, $12, $13 \
        FROM owner, standard \
        WHERE $3::text IS NULL OR EXISTS (SELECT 1 FROM definition) \
        RETURNING id, revision, create_time, update_time), \
    audited AS ( \
        INSERT INTO audit_events (caller, method, resource, resource_owner, outcome, detail) \
        SELECT $14, $15, $16, $17, 'OK', $18 FROM inserted) \
    SELECT EXISTS (SELECT 1 FROM owner) AS owner_found, EXISTS (SELECT 1 FROM standard) AS standard_found, \
        inserted.id, inserted.revision, inserted.create_time, inserted.update_time \
    FROM (SELECT 1) AS one LEFT JOIN inserted ON true";

#[derive(sqlx::FromRow)]
struct CreatedRow {
    owner_found: bool,
    standard_found: bool,
    id: Option<i64>,
    revision: Option<i64>,
    create_time: Option<DateTime<Utc>>,
    update_time: Option<DateTime<Utc>>,
}

/// A random (version 4) uid for a new instance.
fn new_uid() -> String {
    let mut bytes = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

fn user_key(value: &str) -> Result<UserKey, DomainError> {
    UserKey::parse("stored", value)
        .map_err(|_| DomainError::Internal(format!("malformed stored owner {value:?}")))
}

impl InstanceRow {
    /// The instance as `caller` sees it, or `None` when the caller may not know it exists.
    fn into_visible(self, caller: &Caller) -> Result<Option<Instance>, DomainError> {
        let owner = user_key(&self.owner)?;
        let shared =
            match self.shared_role.as_deref() {
                None => None,
                Some(stored) => Some(Role::from_stored(stored).ok_or_else(|| {
                    DomainError::Internal(format!("unknown stored role {stored:?}"))
                })?),
            };
        let Some(access_role) = effective_role(caller, &owner, shared) else {
            return Ok(None);
        };
        let definition = match (self.definition_owner, self.definition_handle) {
            (Some(owner), Some(handle)) => Some(DefinitionName::new(
                user_key(&owner)?,
                errors::stored_handle(&handle)?,
            )),
            _ => None,
        };
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
            access_role,
            revision: self.revision,
            create_time: self.create_time,
            update_time: self.update_time,
        };
        Ok(Some(instance))
    }
}

fn caller_id(caller: &Caller) -> Option<i64> {
    match caller {
        Caller::Admin => None,
        Caller::User(user) => Some(user.id),
    }
}

/// A new instance, validated.
pub struct NewInstance<'a> {
    pub name: &'a InstanceName,
    pub spec: &'a ServiceSpec,
    pub definition: Option<&'a DefinitionName>,
    pub api_key: Option<&'a ApiKey>,
}

impl Store {
    /// Creates an instance, seals its key and records the audit event, atomically: both rows are
    /// written by one statement, usually together with concurrent creates (see
    /// [`super::create_batches`]). The uid is drawn here rather than by the database because the
    /// key is sealed with it as associated data before the row exists.
    pub async fn create_instance(
        &self,
        audit: &Audit,
        caller: &Caller,
        new: NewInstance<'_>,
        ring: &KeyRing,
    ) -> Result<Instance, DomainError> {
        let owner = new.name.owner.clone();
        let access_role = effective_role(caller, &owner, None).ok_or_else(|| {
            DomainError::Internal("an instance created by a caller who may not use it".to_owned())
        })?;
        let resource = new.name.to_string();
        let uid = new_uid();
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
            audit_caller: audit.caller.clone(),
            audit_method: audit.method.to_owned(),
            resource_owner: resource_owner(&resource).map(str::to_owned),
            resource,
            detail: detail.to_owned(),
        };
        let has_api_key = values.key_id.is_some();
        let created = match self.create_batches.create(values).await {
            BatchOutcome::Created(created) => created,
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
            access_role,
            revision: created.revision,
            create_time: created.create_time,
            update_time: created.update_time,
        })
    }

    /// Creates one instance with the one-row statement, for a create its batch did not write:
    /// it says which reference is missing or that the handle is taken, as a lone create would
    /// (or succeeds, when things changed since the batch).
    async fn create_alone(
        &self,
        values: &CreateValues,
        definition: Option<&DefinitionName>,
    ) -> Result<Created, DomainError> {
        let row: CreatedRow = sqlx::query_as(CREATE)
            .bind(&values.owner)
            .bind(&values.standard)
            .bind(&values.definition_owner)
            .bind(&values.definition_handle)
            .bind(&values.uid)
            .bind(&values.handle)
            .bind(&values.endpoint)
            .bind(&values.model)
            .bind(values.dimensions)
            .bind(values.context_limit)
            .bind(&values.description)
            .bind(&values.ciphertext)
            .bind(&values.key_id)
            .bind(&values.audit_caller)
            .bind(&values.audit_method)
            .bind(&values.resource)
            .bind(&values.resource_owner)
            .bind(&values.detail)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| match errors::sqlstate(&e).as_deref() {
                Some(errors::FOREIGN_KEY_VIOLATION) => {
                    errors::on_reference(e, "instance.api_standard")
                }
                _ => errors::on_insert(e, &values.resource),
            })?;
        let (Some(id), Some(revision), Some(create_time), Some(update_time)) =
            (row.id, row.revision, row.create_time, row.update_time)
        else {
            // Nothing was inserted: say which reference was missing, as the lookups would.
            return Err(if !row.owner_found {
                DomainError::NotFound(format!("users/{}", values.owner))
            } else if !row.standard_found {
                DomainError::invalid(
                    "instance.api_standard",
                    format!("unknown API standard {}", values.standard),
                )
            } else {
                DomainError::NotFound(
                    definition
                        .map(ToString::to_string)
                        .unwrap_or_else(|| values.resource.clone()),
                )
            });
        };
        Ok(Created {
            id,
            revision,
            create_time,
            update_time,
        })
    }

    /// The instance as `caller` sees it; `None` if it does not exist or the caller may not know.
    pub async fn find_instance(
        &self,
        caller: &Caller,
        name: &InstanceName,
    ) -> Result<Option<Instance>, DomainError> {
        let row = sqlx::query_as::<_, InstanceRow>(AssertSqlSafe(format!(
            "{SELECT} WHERE u.handle = $2 AND i.handle = $3"
        )))
        .bind(caller_id(caller))
        .bind(name.owner.as_str())
        .bind(name.handle.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(errors::db)?;
        Ok(match row {
            Some(row) => row.into_visible(caller)?,
            None => None,
        })
    }

    /// Like [`Store::find_instance`], for a credential that may be an unresolved token (see
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

    /// Instances `user` can use (owned and shared, each once) in creation order, after the
    /// cursor (an instance's sequence). Each branch walks an index from the cursor and stops after
    /// one page, so a page costs the same at any depth. The page's rows are then fetched by id
    /// through `= ANY (ARRAY(...))`, which is always an index lookup per id: with `IN (SELECT ...)`
    /// the cached generic plan merge-joined against the primary key from its start, reading every
    /// instance before the cursor (5,000 rows at page 100 of the benchmark).
    pub async fn list_instances(
        &self,
        caller: &Caller,
        user: &UserName,
        scope: Scope,
        page: &PageRequest,
    ) -> Result<Vec<Instance>, DomainError> {
        let user_id = Self::user_id(&self.pool, user.0.as_str()).await?;
        let after: i64 = page
            .after
            .as_deref()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let rows = sqlx::query_as::<_, InstanceRow>(AssertSqlSafe(format!(
            "WITH page AS ( \
                (SELECT id FROM instances WHERE $3 AND owner_id = $2 AND id > $5 ORDER BY id LIMIT $6) \
                UNION ALL \
                (SELECT instance_id FROM shares WHERE $4 AND grantee_id = $2 AND instance_id > $5 \
                 ORDER BY instance_id LIMIT $6) \
             ) \
             {SELECT} WHERE i.id = ANY (ARRAY(SELECT id FROM page)) ORDER BY i.id LIMIT $6"
        )))
        .bind(caller_id(caller))
        .bind(user_id)
        .bind(scope != Scope::Shared)
        .bind(scope != Scope::Owned)
        .bind(after)
        .bind(page.fetch_limit())
        .fetch_all(&self.pool)
        .await
        .map_err(errors::db)?;
        let mut instances = Vec::with_capacity(rows.len());
        for row in rows {
            if let Some(instance) = row.into_visible(caller)? {
                instances.push(instance);
            }
        }
        Ok(instances)
    }

    /// Read-modify-write: `change` sees the instance as the caller does (it authorizes, checks
    /// the etag, and returns the new spec and what happens to the key).
    pub async fn update_instance(
        &self,
        audit: &Audit,
        caller: &Caller,
        name: &InstanceName,
        ring: &KeyRing,
        change: impl FnOnce(&Instance) -> Result<(ServiceSpec, ApiKeyChange), DomainError>,
    ) -> Result<Instance, DomainError> {
        let mut tx = self.pool.begin().await.map_err(errors::db)?;
        let (id, current) = Self::lock_visible(&mut tx, caller, name).await?;
        let (spec, key_change) = change(&current)?;
        let detail = match &key_change {
            ApiKeyChange::Keep => "",
            ApiKeyChange::Replace(_) => "api_key replaced",
            ApiKeyChange::Remove => "api_key removed",
        };
        let standard_id = Self::api_standard_id(
            &mut *tx,
            "instance.api_standard",
            spec.api_standard.0.as_str(),
        )
        .await?;
        sqlx::query(
            "UPDATE instances SET endpoint = $2, api_standard_id = $3, model = $4, dimensions = $5, \
             context_limit = $6, description = $7, revision = revision + 1, update_time = clock_timestamp() \
             WHERE id = $1",
        )
        .bind(id)
        .bind(&spec.endpoint)
        .bind(standard_id)
        .bind(&spec.model)
        .bind(spec.dimensions)
        .bind(spec.context_limit)
        .bind(&spec.description)
        .execute(&mut *tx)
        .await
        .map_err(|e| errors::on_reference(e, "instance.api_standard"))?;
        Self::store_key(&mut tx, id, &current.uid, key_change, ring).await?;
        audit::record(&mut tx, audit, &name.to_string(), detail).await?;
        let updated = Self::visible_by_id(&mut tx, caller, id).await?;
        tx.commit().await.map_err(errors::db)?;
        Ok(updated)
    }

    /// Deletes an instance (and its shares). `authorize` sees the instance as the caller does.
    /// Refused, naming the projects, while projects use it.
    pub async fn delete_instance(
        &self,
        audit: &Audit,
        caller: &Caller,
        name: &InstanceName,
        authorize: impl FnOnce(&Instance) -> Result<(), DomainError>,
    ) -> Result<(), DomainError> {
        let mut tx = self.pool.begin().await.map_err(errors::db)?;
        let (id, current) = Self::lock_visible(&mut tx, caller, name).await?;
        authorize(&current)?;
        let projects = blockers::projects_using_instance(&mut tx, id, None).await?;
        if !projects.is_empty() {
            return Err(blockers::blocked(
                format!("{name} cannot be deleted while projects use it"),
                projects,
            ));
        }
        sqlx::query("DELETE FROM instances WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| errors::on_delete(e, &name.to_string()))?;
        audit::record(&mut tx, audit, &name.to_string(), "deleted with its shares").await?;
        tx.commit().await.map_err(errors::db)?;
        Ok(())
    }

    pub(super) async fn lock_visible(
        tx: &mut Transaction<'_, Postgres>,
        caller: &Caller,
        name: &InstanceName,
    ) -> Result<(i64, Instance), DomainError> {
        sqlx::query_as::<_, InstanceRow>(AssertSqlSafe(format!(
            "{SELECT} WHERE u.handle = $2 AND i.handle = $3 FOR UPDATE OF i"
        )))
        .bind(caller_id(caller))
        .bind(name.owner.as_str())
        .bind(name.handle.as_str())
        .fetch_optional(&mut **tx)
        .await
        .map_err(errors::db)?
        .map(|row| row.into_visible(caller))
        .transpose()?
        .flatten()
        .map(|instance| (instance.sequence, instance))
        .ok_or_else(|| DomainError::NotFound(name.to_string()))
    }

    async fn visible_by_id(
        tx: &mut Transaction<'_, Postgres>,
        caller: &Caller,
        id: i64,
    ) -> Result<Instance, DomainError> {
        sqlx::query_as::<_, InstanceRow>(AssertSqlSafe(format!("{SELECT} WHERE i.id = $2")))
            .bind(caller_id(caller))
            .bind(id)
            .fetch_one(&mut **tx)
            .await
            .map_err(errors::db)?
            .into_visible(caller)?
            .ok_or_else(|| {
                DomainError::Internal("a written instance is not visible to its writer".to_owned())
            })
    }

    async fn store_key(
        tx: &mut Transaction<'_, Postgres>,
        id: i64,
        uid: &str,
        change: ApiKeyChange,
        ring: &KeyRing,
    ) -> Result<(), DomainError> {
        let (ciphertext, key_id) = match change {
            ApiKeyChange::Keep => return Ok(()),
            ApiKeyChange::Remove => (None, None),
            ApiKeyChange::Replace(api_key) => {
                let sealed = ring.seal(&api_key, uid);
                (Some(sealed.ciphertext), Some(sealed.key_id))
            }
        };
        sqlx::query(
            "UPDATE instances SET api_key_ciphertext = $2, api_key_key_id = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(ciphertext)
        .bind(key_id)
        .execute(&mut **tx)
        .await
        .map_err(errors::db)?;
        Ok(())
    }
}
