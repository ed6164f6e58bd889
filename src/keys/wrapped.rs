//! Data keys wrapped by a [`KeyWrapper`]: unwrapped at start (a first primary made when the
//! table is empty), learned later when a rotation made one this replica has not met.

use std::{collections::HashSet, sync::Arc};

use super::held::HeldKeys;
use crate::{
    domain::{DomainError, audit::Audit},
    metrics::{StateLabel, metrics},
    store::Store,
    vault::{
        KeyRing, MasterKey,
        wrapper::{DataKeyState, KeyWrapper, StoredDataKey},
    },
};

pub(super) struct WrappedKeys {
    pub(super) wrapper: Arc<dyn KeyWrapper>,
    pub(super) store: Store,
    /// Static keys that still open (the move from `env`).
    static_previous: Vec<MasterKey>,
    /// One learning at a time, so that a burst of calls for a new key asks transit once.
    learning: tokio::sync::Mutex<()>,
}

impl WrappedKeys {
    pub(super) fn new(
        wrapper: Arc<dyn KeyWrapper>,
        store: Store,
        static_previous: Vec<MasterKey>,
    ) -> Self {
        Self {
            wrapper,
            store,
            static_previous,
            learning: tokio::sync::Mutex::new(()),
        }
    }

    /// The ring at start: the primary data key (made now if there is none), the previous ones,
    /// any retired one that still seals a stored key, then the static previous keys.
    pub(super) async fn load(&self, audit: &Audit) -> anyhow::Result<KeyRing> {
        let mut rows = self.store.data_keys().await?;
        if !rows.iter().any(|row| row.state == DataKeyState::Primary) {
            self.make_first_primary(audit).await?;
            rows = self.store.data_keys().await?;
        }
        publish_states(&rows);
        let used: HashSet<String> = self.store.ciphertext_key_ids().await?.into_iter().collect();
        let mut primary = None;
        let mut previous = Vec::new();
        for row in rows
            .iter()
            .filter(|row| row.state != DataKeyState::Retired || used.contains(&row.id))
        {
            let key = self.unwrap_checked(row).await.map_err(anyhow::Error::msg)?;
            match row.state {
                DataKeyState::Primary => primary = Some(key),
                DataKeyState::Previous | DataKeyState::Retired => previous.push(key),
            }
        }
        let primary = primary
            .ok_or_else(|| anyhow::anyhow!("KEY_SOURCE=vault-transit: no primary data key"))?;
        previous.extend(self.static_previous.iter().cloned());
        Ok(KeyRing::new(primary, previous)?)
    }

    /// A new data key from the wrapper, unwrapped once (so that a token that may make keys but
    /// not open them is refused before anything is sealed), stored as the first primary unless
    /// another replica's won.
    async fn make_first_primary(&self, audit: &Audit) -> anyhow::Result<()> {
        let wrapped = self.wrapper.new_data_key().await.map_err(|e| {
            anyhow::anyhow!("KEY_SOURCE=vault-transit: cannot make a data key: {e}")
        })?;
        let key = self.wrapper.unwrap(&wrapped).await.map_err(|e| {
            anyhow::anyhow!("KEY_SOURCE=vault-transit: cannot open a new data key: {e}")
        })?;
        if self
            .store
            .insert_first_data_key(audit, key.id_str(), &wrapped)
            .await?
        {
            tracing::info!(data_key = %key.id(), version = wrapped.version, "made the first primary data key");
        }
        Ok(())
    }

    /// The plaintext of `row`, checked to be the key its id names (a row whose wrapped value
    /// was swapped for another key's is refused rather than used).
    pub(super) async fn unwrap_checked(&self, row: &StoredDataKey) -> Result<MasterKey, String> {
        let key = self.wrapper.unwrap(&row.wrapped).await.map_err(|e| {
            format!(
                "KEY_SOURCE=vault-transit: cannot open data key {} ({}, wrapped under transit key version {}): {e}",
                row.id,
                row.state.as_str(),
                row.wrapped.version
            )
        })?;
        if key.id_str() != row.id {
            return Err(format!(
                "KEY_SOURCE=vault-transit: data key {} unwraps to a key of id {}: its row was altered",
                row.id,
                key.id()
            ));
        }
        Ok(key)
    }

    /// Adds data key `id` to `ring` if the database has it (whatever its state). UNAVAILABLE
    /// when transit cannot be asked: the calls that need it fail, the others go on.
    pub(super) async fn learn(&self, held: &HeldKeys, id: &str) -> Result<(), DomainError> {
        let _one_at_a_time = self.learning.lock().await;
        if held.ring().key_ids().iter().any(|known| known == id) {
            return Ok(());
        }
        let Some(row) = self.store.data_key(id).await? else {
            return Ok(());
        };
        let key = self.unwrap_checked(&row).await.map_err(|message| {
            tracing::warn!("{message}");
            DomainError::KeysUnavailable(format!(
                "the data key {id} that sealed this API key cannot be unwrapped now (the key \
                 service is unavailable to this replica); retry later"
            ))
        })?;
        held.install(held.ring().with_previous(key));
        tracing::info!(data_key = %id, "learned a data key made after this replica started");
        Ok(())
    }

    /// Makes the database's primary data key the ring's, if it changed (a rotation by another
    /// process): whether it did.
    pub(super) async fn adopt_primary(&self, held: &HeldKeys) -> anyhow::Result<bool> {
        let rows = self.store.data_keys().await?;
        publish_states(&rows);
        let Some(row) = rows.iter().find(|row| row.state == DataKeyState::Primary) else {
            return Ok(false);
        };
        let current = held.ring();
        if current.primary_id() == row.id {
            return Ok(false);
        }
        let _one_at_a_time = self.learning.lock().await;
        let key = match current.keys().find(|key| key.id_str() == row.id) {
            Some(key) => key.clone(),
            None => self.unwrap_checked(row).await.map_err(anyhow::Error::msg)?,
        };
        held.install(held.ring().promoted(key));
        tracing::info!(data_key = %row.id, "adopted the new primary data key");
        Ok(true)
    }
}

/// The data keys gauge, by state, as `rows` have them.
pub(super) fn publish_states(rows: &[StoredDataKey]) {
    for state in [
        DataKeyState::Primary,
        DataKeyState::Previous,
        DataKeyState::Retired,
    ] {
        let count = rows.iter().filter(|row| row.state == state).count();
        metrics()
            .data_keys
            .get_or_create(&StateLabel {
                state: state.as_str(),
            })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
}
