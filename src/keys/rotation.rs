//! The operator commands on keys: `rotate-keys` (a new primary, every stored key re-sealed under
//! it, unused data keys retired) and `rewrap-data-keys` (every data key wrapped again under the
//! newest transit key version, so that `min_decryption_version` can be raised).

use super::{KeySource, Keys};
use crate::{domain::audit::Audit, store::Store};

/// What one rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationReport {
    pub primary: String,
    pub reencrypted: u64,
    pub already_current: u64,
    /// Data keys retired because nothing sealed under them is stored any more.
    pub retired: Vec<String>,
}

impl Keys {
    /// Re-seals every stored key under the primary, `batch_size` per transaction. With wrapped
    /// keys a new data key is made primary first (running replicas adopt it within
    /// `DATA_KEY_REFRESH_SECS`, and open keys sealed under it at once), and afterwards every data
    /// key that seals nothing is retired.
    pub async fn rotate(
        &self,
        store: &Store,
        audit: &Audit,
        batch_size: u32,
    ) -> anyhow::Result<RotationReport> {
        if let Some(wrapped) = &self.wrapped {
            let new = wrapped
                .wrapper
                .new_data_key()
                .await
                .map_err(|e| anyhow::anyhow!("cannot make a new data key: {e}"))?;
            let key = wrapped
                .wrapper
                .unwrap(&new)
                .await
                .map_err(|e| anyhow::anyhow!("cannot open the new data key: {e}"))?;
            store
                .promote_new_data_key(audit, key.id_str(), &new)
                .await?;
            self.held.install(self.ring().promoted(key));
        }
        let ring = self.ring();
        let report = store
            .rotate_keys(audit, &ring, batch_size)
            .await
            .map_err(|e| anyhow::anyhow!("rotation stopped: {e}"))?;
        let retired = match &self.wrapped {
            Some(_) => store.retire_unused_data_keys(audit).await?,
            None => Vec::new(),
        };
        Ok(RotationReport {
            primary: ring.primary_id(),
            reencrypted: report.reencrypted,
            already_current: report.already_current,
            retired,
        })
    }
}

/// What one rewrap did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewrapReport {
    pub rewrapped: u64,
    pub already_current: u64,
    /// The transit key version every data key is now wrapped under.
    pub version: Option<i32>,
}

/// Wraps every data key again under the newest version of the transit key. Each new wrapping is
/// unwrapped and checked to be the same key before it replaces the old one, so a rewrap can
/// never lose a key.
pub async fn rewrap_data_keys(
    source: &KeySource,
    store: &Store,
    audit: &Audit,
) -> anyhow::Result<RewrapReport> {
    let wrapper = source
        .wrapper()?
        .ok_or_else(|| anyhow::anyhow!("rewrap-data-keys needs KEY_SOURCE=vault-transit"))?;
    let mut report = RewrapReport {
        rewrapped: 0,
        already_current: 0,
        version: None,
    };
    for row in store.data_keys().await? {
        let rewrapped = wrapper
            .rewrap(&row.wrapped)
            .await
            .map_err(|e| anyhow::anyhow!("cannot rewrap data key {}: {e}", row.id))?;
        report.version = report.version.max(Some(rewrapped.version));
        if rewrapped.version == row.wrapped.version {
            report.already_current += 1;
            continue;
        }
        let key = wrapper
            .unwrap(&rewrapped)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open data key {} as rewrapped: {e}", row.id))?;
        anyhow::ensure!(
            key.id_str() == row.id,
            "data key {} rewrapped to a key of id {}; nothing was written",
            row.id,
            key.id()
        );
        if store
            .rewrap_data_key(audit, &row.id, &row.wrapped, &rewrapped)
            .await?
        {
            report.rewrapped += 1;
        }
    }
    Ok(report)
}
