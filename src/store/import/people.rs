//! Imported users, shares and projects: batched inserts, single-row updates, and the lookups an
//! import needs (token digests already taken, who may use an instance).

use std::collections::{HashMap, HashSet};

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use super::{ImportTx, Times};

/// A user to create, with the SHA-256 of the token they already hold (or none).
#[derive(Debug, Clone)]
pub struct NewUser {
    pub handle: String,
    pub display_name: String,
    pub token_hash: Option<Vec<u8>>,
    pub times: Times,
}

/// A share to create.
#[derive(Debug, Clone)]
pub struct NewShare {
    pub instance_id: i64,
    pub grantee_id: i64,
    pub role: &'static str,
    pub times: Times,
}

/// A project to create: bound to an instance, or detached with a reason.
#[derive(Debug, Clone)]
pub struct NewProject {
    pub owner_id: i64,
    pub handle: String,
    pub description: String,
    pub instance_id: Option<i64>,
    pub detach_reason: String,
    pub times: Times,
}

/// A changed source project laid over the one it became.
#[derive(Debug, Clone)]
pub struct ProjectUpdate {
    pub id: i64,
    pub description: String,
    pub instance_id: Option<i64>,
    pub detach_reason: String,
    pub updated: DateTime<Utc>,
}

impl ImportTx {
    /// Which of these token digests a registry user already has.
    pub async fn taken_token_hashes(
        &mut self,
        hashes: &[Vec<u8>],
    ) -> anyhow::Result<HashSet<Vec<u8>>> {
        let rows: Vec<Vec<u8>> =
            sqlx::query_scalar("SELECT token_hash FROM users WHERE token_hash = ANY($1)")
                .bind(hashes)
                .fetch_all(&mut *self.tx)
                .await
                .context("reading token digests")?;
        Ok(rows.into_iter().collect())
    }

    /// The token digest each of these users has now.
    pub async fn user_token_hashes(
        &mut self,
        ids: &[i64],
    ) -> anyhow::Result<HashMap<i64, Option<Vec<u8>>>> {
        let rows: Vec<(i64, Option<Vec<u8>>)> =
            sqlx::query_as("SELECT id, token_hash FROM users WHERE id = ANY($1)")
                .bind(ids)
                .fetch_all(&mut *self.tx)
                .await
                .context("reading users")?;
        Ok(rows.into_iter().collect())
    }

    /// Creates users; their ids by handle.
    pub async fn insert_users(&mut self, rows: &[NewUser]) -> anyhow::Result<HashMap<String, i64>> {
        if rows.is_empty() {
            return Ok(HashMap::new());
        }
        let created: Vec<(String, i64)> = sqlx::query_as(
            "INSERT INTO users (handle, display_name, token_hash, create_time, update_time) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::timestamptz[], \
                 $5::timestamptz[]) \
             RETURNING handle, id",
        )
        .bind(rows.iter().map(|r| r.handle.as_str()).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.display_name.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| r.token_hash.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.times.created).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.times.updated).collect::<Vec<_>>())
        .fetch_all(&mut *self.tx)
        .await
        .context("creating users")?;
        self.wrote(super::Table::Users, created.len()).await?;
        Ok(created.into_iter().collect())
    }

    /// Lays a changed source user over the one they became (`token_hash` None keeps the
    /// token); their new revision.
    pub async fn update_user(
        &mut self,
        id: i64,
        display_name: &str,
        token_hash: Option<&[u8]>,
        updated: DateTime<Utc>,
    ) -> anyhow::Result<i64> {
        sqlx::query_scalar(
            "UPDATE users SET display_name = $2, token_hash = coalesce($3, token_hash), \
                 revision = revision + 1, update_time = $4 WHERE id = $1 RETURNING revision",
        )
        .bind(id)
        .bind(display_name)
        .bind(token_hash)
        .bind(updated)
        .fetch_one(&mut *self.tx)
        .await
        .context("updating a user")
    }

    /// Creates shares that do not exist yet; the (instance, grantee) pairs it created.
    pub async fn insert_shares(
        &mut self,
        rows: &[NewShare],
    ) -> anyhow::Result<HashSet<(i64, i64)>> {
        if rows.is_empty() {
            return Ok(HashSet::new());
        }
        let created: Vec<(i64, i64)> = sqlx::query_as(
            "INSERT INTO shares (instance_id, grantee_id, role, create_time, update_time) \
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::timestamptz[], \
                 $5::timestamptz[]) \
             ON CONFLICT (instance_id, grantee_id) DO NOTHING \
             RETURNING instance_id, grantee_id",
        )
        .bind(rows.iter().map(|r| r.instance_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.grantee_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.role).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.times.created).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.times.updated).collect::<Vec<_>>())
        .fetch_all(&mut *self.tx)
        .await
        .context("creating shares")?;
        self.wrote(super::Table::Shares, created.len()).await?;
        Ok(created.into_iter().collect())
    }

    /// Changes the role of an imported share.
    pub async fn update_share(
        &mut self,
        instance_id: i64,
        grantee_id: i64,
        role: &str,
        updated: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE shares SET role = $3, update_time = $4 \
             WHERE instance_id = $1 AND grantee_id = $2",
        )
        .bind(instance_id)
        .bind(grantee_id)
        .bind(role)
        .bind(updated)
        .execute(&mut *self.tx)
        .await
        .context("updating a share")?;
        Ok(())
    }

    /// Which (instance, user) pairs may use the instance here: its owner, or a grantee of any
    /// role (what binding a project to it requires).
    pub async fn may_use(&mut self, pairs: &[(i64, i64)]) -> anyhow::Result<HashSet<(i64, i64)>> {
        if pairs.is_empty() {
            return Ok(HashSet::new());
        }
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT x.i, x.u FROM unnest($1::bigint[], $2::bigint[]) AS x(i, u) \
             WHERE EXISTS (SELECT 1 FROM instances WHERE id = x.i AND owner_id = x.u) \
                OR EXISTS (SELECT 1 FROM shares WHERE instance_id = x.i AND grantee_id = x.u)",
        )
        .bind(pairs.iter().map(|p| p.0).collect::<Vec<_>>())
        .bind(pairs.iter().map(|p| p.1).collect::<Vec<_>>())
        .fetch_all(&mut *self.tx)
        .await
        .context("reading who may use instances")?;
        Ok(rows.into_iter().collect())
    }

    /// Creates projects; their ids by (owner, handle).
    pub async fn insert_projects(
        &mut self,
        rows: &[NewProject],
    ) -> anyhow::Result<HashMap<(i64, String), i64>> {
        if rows.is_empty() {
            return Ok(HashMap::new());
        }
        let created: Vec<(i64, String, i64)> = sqlx::query_as(
            "INSERT INTO projects (owner_id, handle, description, instance_id, detach_reason, \
                 detach_time, create_time, update_time) \
             SELECT o, h, d, i, r, CASE WHEN i IS NULL THEN now() END, c, u \
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::text[], \
                 $6::timestamptz[], $7::timestamptz[]) AS x(o, h, d, i, r, c, u) \
             RETURNING owner_id, handle, id",
        )
        .bind(rows.iter().map(|r| r.owner_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.handle.as_str()).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.description.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.instance_id).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.detach_reason.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.times.created).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.times.updated).collect::<Vec<_>>())
        .fetch_all(&mut *self.tx)
        .await
        .context("creating projects")?;
        self.wrote(super::Table::Projects, created.len()).await?;
        Ok(created
            .into_iter()
            .map(|(owner, handle, id)| ((owner, handle), id))
            .collect())
    }

    /// Lays a changed source project over the one it became; its new revision.
    pub async fn update_project(&mut self, update: &ProjectUpdate) -> anyhow::Result<i64> {
        sqlx::query_scalar(
            "UPDATE projects SET description = $2, instance_id = $3, detach_reason = $4, \
                 detach_time = CASE WHEN $3::bigint IS NULL THEN coalesce(detach_time, now()) END, \
                 revision = revision + 1, update_time = $5 WHERE id = $1 RETURNING revision",
        )
        .bind(update.id)
        .bind(&update.description)
        .bind(update.instance_id)
        .bind(&update.detach_reason)
        .bind(update.updated)
        .fetch_one(&mut *self.tx)
        .await
        .context("updating a project")
    }
}
