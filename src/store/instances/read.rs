//! Reading instances as a caller sees them: one by name, and the paged list of those a user can
//! use.

use super::{InstanceRow, caller_id, select_instances};
use crate::{
    domain::{
        DomainError,
        caller::Caller,
        instance::{Instance, Scope},
        names::{InstanceName, UserName},
        pagination::{Page, PageRequest},
    },
    store::{
        Store,
        cursor::{self, RowId},
        errors,
    },
};

impl Store {
    /// The instance as `caller` sees it; `None` if it does not exist or the caller may not know.
    pub async fn find_instance(
        &self,
        caller: &Caller,
        name: &InstanceName,
    ) -> Result<Option<Instance>, DomainError> {
        let row = sqlx::query_as::<_, InstanceRow>(concat!(
            select_instances!("$1"),
            " WHERE u.handle = $2 AND i.handle = $3"
        ))
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
    ) -> Result<Page<Instance>, DomainError> {
        // A user listing their own instances (the common call) is already known by id: the
        // token that named them was resolved in this call. Anyone else (an administrator) names
        // a user to look up, who may not exist.
        let user_id = match caller {
            Caller::User(principal) if caller.owns(&user.0) => principal.id,
            _ => Self::user_id(&self.pool, user.0.as_str()).await?,
        };
        let after = cursor::start_after::<RowId>(page)?.map_or(0, |RowId(id)| id);
        let rows = sqlx::query_as::<_, InstanceRow>(concat!("WITH page AS ( \
                (SELECT id FROM instances WHERE $3 AND owner_id = $2 AND id > $5 ORDER BY id LIMIT $6) \
                UNION ALL \
                (SELECT instance_id FROM shares WHERE $4 AND grantee_id = $2 AND instance_id > $5 \
                 ORDER BY instance_id LIMIT $6) \
             ) \
             ", select_instances!("$1"), " WHERE i.id = ANY (ARRAY(SELECT id FROM page)) ORDER BY i.id LIMIT $6"))
        .bind(caller_id(caller))
        .bind(user_id)
        .bind(scope != Scope::Shared)
        .bind(scope != Scope::Owned)
        .bind(after)
        .bind(cursor::fetch_limit(page))
        .fetch_all(&self.pool)
        .await
        .map_err(errors::db)?;
        let mut instances = Vec::with_capacity(rows.len());
        for row in rows {
            if let Some(instance) = row.into_visible(caller)? {
                instances.push(instance);
            }
        }
        Ok(cursor::page_of(instances, page, |instance| {
            RowId(instance.sequence)
        }))
    }
}
