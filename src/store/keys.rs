//! Stored keys as a whole: which master keys made them (the start-up check), and re-encryption
//! under the primary (`rotate-keys`).

use super::{Store, change::Change, errors};
use crate::{
    domain::{DomainError, audit::Audit},
    vault::{KeyRing, Sealed},
};

/// What one rotation run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResealReport {
    pub reencrypted: u64,
    pub already_current: u64,
}

impl Store {
    /// The master key ids that sealed stored keys, each once. A skip scan of the key id index
    /// (one index probe per distinct id, and there are a handful), so the start-up check costs
    /// the same with a million keys as with ten.
    pub async fn ciphertext_key_ids(&self) -> Result<Vec<String>, DomainError> {
        sqlx::query_scalar(
            "WITH RECURSIVE ids AS ( \
                 SELECT min(api_key_key_id) AS id FROM instances WHERE api_key_key_id IS NOT NULL \
               UNION ALL \
                 SELECT (SELECT min(api_key_key_id) FROM instances WHERE api_key_key_id > ids.id) \
                 FROM ids WHERE ids.id IS NOT NULL) \
             SELECT id FROM ids WHERE id IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(errors::db)
    }

    /// How many stored keys each of `key_ids` sealed (for the refusal's message only).
    async fn ciphertext_key_counts(
        &self,
        key_ids: &[String],
    ) -> Result<Vec<(String, i64)>, DomainError> {
        sqlx::query_as(
            "SELECT api_key_key_id, count(*) FROM instances WHERE api_key_key_id = ANY($1) \
             GROUP BY api_key_key_id ORDER BY api_key_key_id",
        )
        .bind(key_ids)
        .fetch_all(&self.pool)
        .await
        .map_err(errors::db)
    }

    /// Refuses a key ring that lacks a key the database needs, naming the ids and counts.
    pub async fn check_key_ring_covers_database(&self, ring: &KeyRing) -> anyhow::Result<()> {
        let known = ring.key_ids();
        let unknown: Vec<String> = self
            .ciphertext_key_ids()
            .await
            .map_err(|e| anyhow::anyhow!("reading stored key ids: {e}"))?
            .into_iter()
            .filter(|id| !known.contains(id))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let missing = self
            .ciphertext_key_counts(&unknown)
            .await
            .map_err(|e| anyhow::anyhow!("counting stored keys: {e}"))?;
        let total: i64 = missing.iter().map(|(_, count)| count).sum();
        let listed: Vec<String> = missing
            .iter()
            .map(|(id, count)| format!("{id} ({count})"))
            .collect();
        anyhow::bail!(
            "the database holds {total} API key(s) encrypted under key id(s) {} that this service was not \
             given; pass the missing key(s) in ENCRYPTION_KEYS_PREVIOUS (the ring has {})",
            listed.join(", "),
            known.join(", ")
        )
    }

    /// Re-encrypts every key not sealed by the primary, `batch_size` per transaction. Rows are
    /// locked only for their batch, so the service keeps serving; an interrupted run leaves
    /// every row either old or new (both decrypt), and the next run finishes the job. Batches
    /// walk the primary key (each starts after the last row of the one before, so the run reads
    /// every row once however many are already current) and write with one statement each.
    pub async fn rotate_keys(
        &self,
        audit: &Audit,
        ring: &KeyRing,
        batch_size: u32,
    ) -> Result<ResealReport, DomainError> {
        let primary = ring.primary_id();
        let already_current: i64 =
            sqlx::query_scalar("SELECT count(*) FROM instances WHERE api_key_key_id = $1")
                .bind(&primary)
                .fetch_one(&self.pool)
                .await
                .map_err(errors::db)?;
        let mut report = ResealReport {
            reencrypted: 0,
            already_current: u64::try_from(already_current).unwrap_or_default(),
        };
        let mut after_id = 0_i64;
        loop {
            let mut change = Change::begin(self, audit, "instances").await?;
            let tx = change.tx();
            // Re-sealing changes no cached answer (see migration resealing_keeps_read_cache):
            // the rows of this transaction do not move their read cache scopes.
            sqlx::query("SELECT set_config('llm_registry.resealing', 'on', true)")
                .execute(&mut **tx)
                .await
                .map_err(errors::db)?;
            let batch: Vec<(i64, String, String, Vec<u8>)> = sqlx::query_as(
                "SELECT id, uid::text, api_key_key_id, api_key_ciphertext FROM instances \
                 WHERE id > $3 AND api_key_key_id IS NOT NULL AND api_key_key_id <> $1 \
                 ORDER BY id LIMIT $2 FOR UPDATE",
            )
            .bind(&primary)
            .bind(i64::from(batch_size.max(1)))
            .bind(after_id)
            .fetch_all(&mut **tx)
            .await
            .map_err(errors::db)?;
            let Some(last) = batch.last() else {
                break;
            };
            after_id = last.0;
            let mut ids = Vec::with_capacity(batch.len());
            let mut ciphertexts = Vec::with_capacity(batch.len());
            let mut key_ids = Vec::with_capacity(batch.len());
            for (id, uid, key_id, ciphertext) in batch {
                let plaintext = ring
                    .open(&Sealed { key_id, ciphertext }, &uid)
                    .map_err(|e| DomainError::Internal(format!("instance uid {uid}: {e}")))?;
                let sealed = ring.seal(&plaintext, &uid);
                ids.push(id);
                ciphertexts.push(sealed.ciphertext);
                key_ids.push(sealed.key_id);
            }
            sqlx::query(
                "UPDATE instances AS i SET api_key_ciphertext = u.ciphertext, api_key_key_id = u.key_id \
                 FROM unnest($1::bigint[], $2::bytea[], $3::text[]) AS u(id, ciphertext, key_id) \
                 WHERE i.id = u.id",
            )
            .bind(&ids)
            .bind(&ciphertexts)
            .bind(&key_ids)
            .execute(&mut **tx)
            .await
            .map_err(errors::db)?;
            report.reencrypted += ids.len() as u64;
            let detail = format!("re-encrypted {} key(s) under key {primary}", ids.len());
            change.commit(&detail).await?;
        }
        Ok(report)
    }
}
