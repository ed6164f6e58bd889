//! Group commit for instance updates ([`crate::store::group_commit`]): the optimistic writes of
//! updates that arrive together share one statement and one commit.
//!
//! [`UPDATE_BATCH`] is the only text that says what an update writes: an update that locked its
//! row runs it as a batch of one inside its transaction, and an update its batch skipped runs it
//! alone (`update_one`) for its own answer. Each row is written only if the instance is still at
//! the version the update decided on and the caller's share still gives the role the decision
//! rested on; a row that fails that (a lost race, or two updates of one instance in one batch)
//! is skipped, and its update finds out alone, exactly as it would have without the batch. When
//! the statement fails as a whole (an unknown API standard in one of its rows, a deadlock with
//! another writer) nothing of it is written and each update runs alone.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::{
    domain::DomainError,
    store::{
        errors,
        group_commit::{BatchStatement, column},
    },
};

/// Everything one update writes: the instance's new fields, its key when it changes (already
/// sealed: no plaintext is here), the conditions, and the audit event.
pub(in crate::store) struct UpdateValues {
    pub id: i64,
    /// The version the update decided on: the row is written only if it is still this one.
    pub read_revision: i64,
    pub endpoint: String,
    pub standard: String,
    pub model: String,
    pub dimensions: Option<i32>,
    pub context_limit: Option<i32>,
    pub description: String,
    pub allow_credential_release: bool,
    /// The budget as stored (JSON), if any.
    pub quota: Option<String>,
    /// Whether the key changes (to `ciphertext` and `key_id`, both `None` to remove it).
    pub key_changes: bool,
    pub ciphertext: Option<Vec<u8>>,
    pub key_id: Option<String>,
    /// The caller's user id and the share role the decision rested on; `None` when the caller's
    /// role does not come from a share (the owner, an administrator).
    pub share_grantee: Option<i64>,
    pub share_role: Option<&'static str>,
    pub audit_caller: String,
    pub audit_method: &'static str,
    pub resource: String,
    pub resource_owner: Option<String>,
    pub detail: String,
    pub audit_subject: Option<String>,
}

/// What an update's statement wrote.
#[derive(Clone, Debug, sqlx::FromRow)]
pub(in crate::store) struct Updated {
    pub revision: i64,
    pub update_time: DateTime<Utc>,
    pub last_test_time: Option<DateTime<Utc>>,
    pub last_test_code: Option<String>,
    pub last_test_message: Option<String>,
    pub last_test_dimensions: Option<i32>,
    pub last_test_latency_ms: Option<i64>,
}

/// Instance updates, group-committed (`GroupCommit<UpdateBatch>` in the store).
pub(in crate::store) struct UpdateBatch;

impl BatchStatement for UpdateBatch {
    type Values = UpdateValues;
    type Done = Updated;
    const OPERATION: &'static str = "update_instance";

    async fn write(
        pool: &PgPool,
        rows: &[&UpdateValues],
    ) -> Result<Vec<(usize, Updated)>, sqlx::Error> {
        update(pool, rows).await
    }
}

/// Writes each row's fields, key and audit event if the row is at `read_revision` and the share
/// check holds. As for creates (`create_batches.rs`), the arrays reach `unnest` behind
/// `OFFSET 0`, so that the plan does not depend on the batch's length and is cached, and the API
/// standard is a scalar subquery (an unknown one leaves it NULL, which the column refuses).
const UPDATE_BATCH: &str = "WITH input AS ( \
        SELECT t.* \
        FROM (SELECT $1::int8[] AS c1, $2::int8[] AS c2, $3::text[] AS c3, $4::text[] AS c4, \
                     $5::text[] AS c5, $6::int4[] AS c6, $7::int4[] AS c7, $8::text[] AS c8, \
                     $9::bool[] AS c9, $10::bool[] AS c10, $11::bytea[] AS c11, $12::text[] AS c12, \
                     $13::int8[] AS c13, $14::text[] AS c14, $15::text[] AS c15, $16::text[] AS c16, \
                     $17::text[] AS c17, $18::text[] AS c18, $19::text[] AS c19, $20::text[] AS c20, \
                     $21::text[] AS c21 \
              OFFSET 0) AS batch, \
             unnest(c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15, c16, c17, c18, \
                    c19, c20, c21) \
            WITH ORDINALITY AS t (id, read_revision, endpoint, standard, model, dimensions, \
                                  context_limit, description, allow_release, key_changes, ciphertext, \
                                  key_id, share_grantee, share_role, audit_caller, audit_method, \
                                  resource, resource_owner, detail, audit_subject, quota, \
                                  position)), \
    updated AS ( \
        UPDATE instances i SET endpoint = input.endpoint, \
            api_standard_id = (SELECT id FROM api_standards WHERE handle = input.standard), \
            model = input.model, dimensions = input.dimensions, \
            context_limit = input.context_limit, description = input.description, \
            allow_credential_release = input.allow_release, quota = input.quota::jsonb, \
            api_key_ciphertext = CASE WHEN input.key_changes THEN input.ciphertext \
                                      ELSE i.api_key_ciphertext END, \
            api_key_key_id = CASE WHEN input.key_changes THEN input.key_id ELSE i.api_key_key_id END, \
            revision = i.revision + 1, update_time = clock_timestamp() \
        FROM input \
        WHERE i.id = input.id AND i.revision = input.read_revision \
          AND (input.share_role IS NULL \
               OR (SELECT role FROM shares \
                   WHERE instance_id = input.id AND grantee_id = input.share_grantee) \
                  = input.share_role) \
        RETURNING input.position, i.revision, i.update_time, i.last_test_time, i.last_test_code, \
            i.last_test_message, i.last_test_dimensions, i.last_test_latency_ms), \
    audited AS ( \
        INSERT INTO audit_events (caller, method, resource, resource_owner, outcome, detail, subject) \
        SELECT r.audit_caller, r.audit_method, r.resource, r.resource_owner, 'OK', r.detail, \
               r.audit_subject \
        FROM updated JOIN input r USING (position)) \
    SELECT position, revision, update_time, last_test_time, last_test_code, last_test_message, \
           last_test_dimensions, last_test_latency_ms \
    FROM updated";

#[derive(sqlx::FromRow)]
struct UpdatedRow {
    position: i64,
    #[sqlx(flatten)]
    updated: Updated,
}

/// Runs [`UPDATE_BATCH`] for `rows`: the position (0-based) and new version of each update it
/// wrote. The rows are sent in instance id order, so that two batches writing the same instances
/// lock them in one order, not both ways.
async fn update<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    rows: &[&UpdateValues],
) -> Result<Vec<(usize, Updated)>, sqlx::Error> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&position| rows[position].id);
    let sorted: Vec<&UpdateValues> = order.iter().map(|&position| rows[position]).collect();
    let rows = &sorted;
    let written = sqlx::query_as::<_, UpdatedRow>(UPDATE_BATCH)
        .bind(column(rows, |v| v.id))
        .bind(column(rows, |v| v.read_revision))
        .bind(column(rows, |v| v.endpoint.as_str()))
        .bind(column(rows, |v| v.standard.as_str()))
        .bind(column(rows, |v| v.model.as_str()))
        .bind(column(rows, |v| v.dimensions))
        .bind(column(rows, |v| v.context_limit))
        .bind(column(rows, |v| v.description.as_str()))
        .bind(column(rows, |v| v.allow_credential_release))
        .bind(column(rows, |v| v.key_changes))
        .bind(column(rows, |v| v.ciphertext.as_deref()))
        .bind(column(rows, |v| v.key_id.as_deref()))
        .bind(column(rows, |v| v.share_grantee))
        .bind(column(rows, |v| v.share_role))
        .bind(column(rows, |v| v.audit_caller.as_str()))
        .bind(column(rows, |v| v.audit_method))
        .bind(column(rows, |v| v.resource.as_str()))
        .bind(column(rows, |v| v.resource_owner.as_deref()))
        .bind(column(rows, |v| v.detail.as_str()))
        .bind(column(rows, |v| v.audit_subject.as_deref()))
        .bind(column(rows, |v| v.quota.as_deref()))
        .fetch_all(executor)
        .await?;
    Ok(written
        .into_iter()
        .filter_map(|row| {
            let sorted_position = usize::try_from(row.position - 1).ok()?;
            Some((*order.get(sorted_position)?, row.updated))
        })
        .collect())
}

/// Runs the update alone (in the caller's transaction when it locked the row): its new version,
/// or `None` if the row is no longer the version decided on (or the share check fails).
pub(in crate::store) async fn update_one<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    values: &UpdateValues,
) -> Result<Option<Updated>, DomainError> {
    let written =
        update(executor, &[values])
            .await
            .map_err(|e| match errors::sqlstate(&e).as_deref() {
                Some(errors::NOT_NULL_VIOLATION) => DomainError::invalid(
                    "instance.api_standard",
                    format!("unknown API standard apiStandards/{}", values.standard),
                ),
                _ => errors::on_reference(e, "instance.api_standard"),
            })?;
    Ok(written.into_iter().next().map(|(_, updated)| updated))
}
