//! Group commit for instance creation ([`crate::store::group_commit`]): creates that arrive
//! together share one statement and one commit.
//!
//! [`CREATE_BATCH`] is the only text that says what a create writes: a create its batch skipped
//! runs the same statement again as a batch of one (see `create::create_alone`).
//!
//! A batch writes only the creates that certainly succeed. A create whose owner, API standard or
//! definition does not exist, or whose handle is taken (also by another create of the same batch),
//! is skipped by the statement (`ON CONFLICT DO NOTHING`), and when the statement fails as a whole
//! nothing of it is written. Such creates are answered `RunAlone` with their values, and their
//! callers run the one-row statement, which gives exactly the answer a lone create would get.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::store::group_commit::{BatchStatement, column};

/// Everything one create writes: the instance row (its references by handle) and its audit
/// event. The key is already sealed; no plaintext is here.
pub(in crate::store) struct CreateValues {
    pub owner: String,
    pub standard: String,
    pub definition_owner: Option<String>,
    pub definition_handle: Option<String>,
    pub uid: String,
    pub handle: String,
    pub endpoint: String,
    pub model: String,
    pub dimensions: Option<i32>,
    pub context_limit: Option<i32>,
    pub description: String,
    pub ciphertext: Option<Vec<u8>>,
    pub key_id: Option<String>,
    pub allow_credential_release: bool,
    /// The budget as stored (JSON), if any.
    pub quota: Option<String>,
    pub audit_caller: String,
    pub audit_subject: Option<String>,
    pub audit_method: String,
    pub resource: String,
    pub resource_owner: Option<String>,
    pub detail: String,
}

/// What the database assigned to a created instance.
#[derive(Clone, Copy, Debug)]
pub(in crate::store) struct Created {
    pub id: i64,
    pub revision: i64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

/// Instance creates, group-committed (`GroupCommit<CreateBatch>` in the store).
pub(in crate::store) struct CreateBatch;

impl BatchStatement for CreateBatch {
    type Values = CreateValues;
    type Done = Created;
    const OPERATION: &'static str = "create_instance";

    async fn write(
        pool: &PgPool,
        rows: &[&CreateValues],
    ) -> Result<Vec<(usize, Created)>, sqlx::Error> {
        insert(pool, rows).await
    }
}

/// Inserts the instances and audit events of a batch in one statement. The owner, API standard
/// and definition of each row are resolved by handle; rows whose references are missing, and
/// rows whose handle is taken, are not inserted. Rows are inserted in (owner, handle) order, so
/// that two batches racing for the same handles wait on each other in one order, never both ways.
///
/// Two choices keep PostgreSQL's work per batch small (measured with `perf` on the server under
/// the benchmark's load):
/// - The arrays reach `unnest` through a subquery fenced by `OFFSET 0`. Unnesting parameters
///   directly lets the planner see each batch's length, which makes every custom plan look
///   cheaper than the generic one, so the statement was planned anew on every execution (a
///   sixth of the machine's CPU). Behind the fence the row estimate no longer depends on the
///   values, and the plan is cached after the usual five executions.
/// - References are resolved by scalar subqueries, which are always index lookups; as joins, the
///   generic plan hashed the whole `users` table for every batch.
const CREATE_BATCH: &str = "WITH input AS ( \
        SELECT t.* \
        FROM (SELECT $1::text[] AS c1, $2::text[] AS c2, $3::text[] AS c3, $4::text[] AS c4, \
                     $5::text[]::uuid[] AS c5, $6::text[] AS c6, $7::text[] AS c7, $8::text[] AS c8, \
                     $9::int4[] AS c9, $10::int4[] AS c10, $11::text[] AS c11, $12::bytea[] AS c12, \
                     $13::text[] AS c13, $14::text[] AS c14, $15::text[] AS c15, $16::text[] AS c16, \
                     $17::text[] AS c17, $18::text[] AS c18, $19::bool[] AS c19, \
                     $20::text[] AS c20, $21::text[] AS c21 \
              OFFSET 0) AS batch, \
             unnest(c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15, c16, c17, c18, \
                   c19, c20, c21) \
            WITH ORDINALITY AS t (owner, standard, definition_owner, definition_handle, uid, handle, \
                                  endpoint, model, dimensions, context_limit, description, ciphertext, \
                                  key_id, audit_caller, audit_method, resource, resource_owner, detail, \
                                  allow_release, audit_subject, quota, position)), \
    resolved AS ( \
        SELECT input.*, \
               (SELECT id FROM users WHERE handle = input.owner) AS owner_id, \
               (SELECT id FROM api_standards WHERE handle = input.standard) AS standard_id, \
               (SELECT d.id FROM definitions d JOIN users du ON du.id = d.owner_id \
                WHERE du.handle = input.definition_owner AND d.handle = input.definition_handle) \
                   AS definition_id \
        FROM input), \
    inserted AS ( \
        INSERT INTO instances (uid, owner_id, handle, definition_id, endpoint, api_standard_id, model, \
                               dimensions, context_limit, description, api_key_ciphertext, api_key_key_id, \
                               allow_credential_release, quota) \
        SELECT uid, owner_id, handle, definition_id, endpoint, standard_id, model, \
               dimensions, context_limit, description, ciphertext, key_id, allow_release, \
               quota::jsonb \
        FROM resolved \
        WHERE owner_id IS NOT NULL AND standard_id IS NOT NULL \
          AND (definition_owner IS NULL OR definition_id IS NOT NULL) \
        ORDER BY owner_id, handle \
        ON CONFLICT DO NOTHING \
        RETURNING uid, id, revision, create_time, update_time), \
    audited AS ( \
        INSERT INTO audit_events (caller, method, resource, resource_owner, outcome, detail, subject) \
        SELECT r.audit_caller, r.audit_method, r.resource, r.resource_owner, 'OK', r.detail, \
               r.audit_subject \
        FROM inserted JOIN resolved r USING (uid)) \
    SELECT r.position, i.id, i.revision, i.create_time, i.update_time \
    FROM inserted i JOIN resolved r USING (uid)";

#[derive(sqlx::FromRow)]
struct InsertedRow {
    position: i64,
    id: i64,
    revision: i64,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
}

/// Runs [`CREATE_BATCH`] for `rows`: the position (0-based) and database values of each create it
/// wrote. Creates it skipped are missing from the answer.
pub(super) async fn insert(
    pool: &PgPool,
    rows: &[&CreateValues],
) -> Result<Vec<(usize, Created)>, sqlx::Error> {
    let written = sqlx::query_as::<_, InsertedRow>(CREATE_BATCH)
        .bind(column(rows, |v| v.owner.as_str()))
        .bind(column(rows, |v| v.standard.as_str()))
        .bind(column(rows, |v| v.definition_owner.as_deref()))
        .bind(column(rows, |v| v.definition_handle.as_deref()))
        .bind(column(rows, |v| v.uid.as_str()))
        .bind(column(rows, |v| v.handle.as_str()))
        .bind(column(rows, |v| v.endpoint.as_str()))
        .bind(column(rows, |v| v.model.as_str()))
        .bind(column(rows, |v| v.dimensions))
        .bind(column(rows, |v| v.context_limit))
        .bind(column(rows, |v| v.description.as_str()))
        .bind(column(rows, |v| v.ciphertext.as_deref()))
        .bind(column(rows, |v| v.key_id.as_deref()))
        .bind(column(rows, |v| v.audit_caller.as_str()))
        .bind(column(rows, |v| v.audit_method.as_str()))
        .bind(column(rows, |v| v.resource.as_str()))
        .bind(column(rows, |v| v.resource_owner.as_deref()))
        .bind(column(rows, |v| v.detail.as_str()))
        .bind(column(rows, |v| v.allow_credential_release))
        .bind(column(rows, |v| v.audit_subject.as_deref()))
        .bind(column(rows, |v| v.quota.as_deref()))
        .fetch_all(pool)
        .await?;
    Ok(written
        .into_iter()
        .filter_map(|row| {
            let position = usize::try_from(row.position - 1).ok()?;
            let created = Created {
                id: row.id,
                revision: row.revision,
                create_time: row.create_time,
                update_time: row.update_time,
            };
            Some((position, created))
        })
        .collect())
}
