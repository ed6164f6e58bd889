//! Stored keys as a whole: which master keys made them (the start-up check), and re-encryption
//! under the primary (`rotate-keys`).

use super::{Store, change::Change, errors};
use crate::{
    domain::{DomainError, audit::Audit},
    vault::{KeyRing, Sealed},
};

/// What one rotation run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RotationReport {
    pub reencrypted: u64,
    pub already_current: u64,
}

impl Store {
    /// How many stored keys each master key id sealed.
    pub async fn ciphertext_key_counts(&self) -> Result<Vec<(String, i64)>, DomainError> {
        sqlx::query_as(
            "SELECT api_key_key_id, count(*) FROM instances WHERE api_key_key_id IS NOT NULL \
             GROUP BY api_key_key_id ORDER BY api_key_key_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(errors::db)
    }

    /// Refuses a key ring that lacks a key the database needs, naming the ids and counts.
    pub async fn check_key_ring_covers_database(&self, ring: &KeyRing) -> anyhow::Result<()> {
        let known = ring.key_ids();
        let missing: Vec<(String, i64)> = self
            .ciphertext_key_counts()
            .await
            .map_err(|e| anyhow::anyhow!("reading stored key ids: {e}"))?
            .into_iter()
            .filter(|(id, _)| !known.contains(id))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
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
    /// every row either old or new (both decrypt), and the next run finishes the job.
    pub async fn rotate_keys(
        &self,
        audit: &Audit,
        ring: &KeyRing,
        batch_size: u32,
    ) -> Result<RotationReport, DomainError> {
        let primary = ring.primary_id();
        let already_current: i64 =
            sqlx::query_scalar("SELECT count(*) FROM instances WHERE api_key_key_id = $1")
                .bind(&primary)
                .fetch_one(&self.pool)
                .await
                .map_err(errors::db)?;
        let mut report = RotationReport {
            reencrypted: 0,
            already_current: u64::try_from(already_current).unwrap_or_default(),
        };
        loop {
            let mut change = Change::begin(self, audit, "instances").await?;
            let tx = change.tx();
            let batch: Vec<(i64, String, String, Vec<u8>)> = sqlx::query_as(
                "SELECT id, uid::text, api_key_key_id, api_key_ciphertext FROM instances \
                 WHERE api_key_key_id IS NOT NULL AND api_key_key_id <> $1 \
                 ORDER BY id LIMIT $2 FOR UPDATE",
            )
            .bind(&primary)
            .bind(i64::from(batch_size.max(1)))
            .fetch_all(&mut **tx)
            .await
            .map_err(errors::db)?;
            if batch.is_empty() {
                break;
            }
            let batch_size = batch.len();
            for (id, uid, key_id, ciphertext) in batch {
                let plaintext = ring
                    .open(&Sealed { key_id, ciphertext }, &uid)
                    .map_err(|e| DomainError::Internal(format!("instance uid {uid}: {e}")))?;
                let sealed = ring.seal(&plaintext, &uid);
                sqlx::query("UPDATE instances SET api_key_ciphertext = $2, api_key_key_id = $3 WHERE id = $1")
                    .bind(id)
                    .bind(&sealed.ciphertext)
                    .bind(&sealed.key_id)
                    .execute(&mut **tx)
                    .await
                    .map_err(errors::db)?;
                report.reencrypted += 1;
            }
            let detail = format!("re-encrypted {batch_size} key(s) under key {primary}");
            change.commit(&detail).await?;
        }
        Ok(report)
    }
}
