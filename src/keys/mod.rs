//! The keys that seal provider keys, as the running service holds them, whatever their source
//! (`KEY_SOURCE`):
//!
//! - `env` and `file`: a fixed [`KeyRing`] given at start (`ENCRYPTION_KEY` and its previous keys).
//! - `vault-transit`: data keys made by OpenBao/Vault transit and kept only wrapped in the
//!   database (`data_keys`); unwrapped at start, they form the ring (the primary data key seals,
//!   the others and any static previous keys open). A replica adopts a primary made after it
//!   started (by `rotate-keys`) within `DATA_KEY_REFRESH_SECS`, and learns on first use a data key
//!   it has not met, so a rotation needs no restart.
//!
//! Everything that seals takes [`Keys::ring`] (a snapshot); everything that opens calls
//! [`Keys::open`], which may have to ask transit and so is async.

mod held;
mod rotation;
mod upkeep;
mod wrapped;

use std::sync::Arc;

use crate::{
    domain::{DomainError, audit::Audit, pagination::Paginator},
    store::Store,
    vault::{
        ApiKey, KeyRing, MasterKey, Sealed, VaultError,
        transit::{TransitClient, TransitSettings},
        wrapper::KeyWrapper,
    },
};

pub use rotation::{RewrapReport, RotationReport, rewrap_data_keys};
pub use upkeep::spawn_upkeep;

/// Where the keys come from, as configured.
#[derive(Clone)]
pub enum KeySource {
    /// A fixed ring: `KEY_SOURCE=env` or `file`, or the development key.
    Ring(KeyRing),
    /// Data keys wrapped by transit; `previous` are static keys that still open (the move from
    /// `env`: the old key given as previous until `rotate-keys` has re-sealed everything).
    VaultTransit {
        transit: TransitSettings,
        previous: Vec<MasterKey>,
    },
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ring(ring) => write!(f, "Ring({:?})", ring.key_ids()),
            Self::VaultTransit { transit, previous } => write!(
                f,
                "VaultTransit({}, previous {:?})",
                transit.place(),
                previous.iter().map(MasterKey::id).collect::<Vec<_>>()
            ),
        }
    }
}

impl KeySource {
    /// The wrapper this source unwraps data keys with, if it has one.
    pub fn wrapper(&self) -> anyhow::Result<Option<Arc<dyn KeyWrapper>>> {
        match self {
            Self::Ring(_) => Ok(None),
            Self::VaultTransit { transit, .. } => {
                Ok(Some(Arc::new(TransitClient::new(transit.clone())?)))
            }
        }
    }
}

/// The service's keys: the ring in hand, and for wrapped sources what is needed to learn more.
pub struct Keys {
    held: held::HeldKeys,
    wrapped: Option<wrapped::WrappedKeys>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("key_ids", &self.ring().key_ids())
            .field("wrapped", &self.is_wrapped())
            .finish()
    }
}

impl Keys {
    /// The keys of `source` for a service or command on `store`: a fixed ring checked against
    /// the database, or the data keys unwrapped (a first primary made if there is none). Refuses,
    /// naming the cause, when a stored key could not be opened.
    pub async fn load(source: &KeySource, store: &Store, audit: &Audit) -> anyhow::Result<Self> {
        let keys = match source {
            KeySource::Ring(ring) => Self {
                held: held::HeldKeys::new(ring.clone()),
                wrapped: None,
            },
            KeySource::VaultTransit { transit, previous } => {
                let wrapper = Arc::new(TransitClient::new(transit.clone())?);
                let wrapped = wrapped::WrappedKeys::new(wrapper, store.clone(), previous.clone());
                let ring = wrapped.load(audit).await?;
                Self {
                    held: held::HeldKeys::new(ring),
                    wrapped: Some(wrapped),
                }
            }
        };
        store.check_key_ring_covers_database(&keys.ring()).await?;
        Ok(keys)
    }

    /// The ring as it is now: seal under its primary.
    pub fn ring(&self) -> Arc<KeyRing> {
        self.held.ring()
    }

    /// Seals page tokens under the ring's primary; opens them under any key of the ring.
    pub fn paginator(&self) -> Arc<Paginator> {
        self.held.paginator()
    }

    /// Opens a stored key of the instance `uid`. A key sealed under a data key this replica has
    /// not met (made by a rotation after it started) is learned from the database and transit
    /// first; if transit cannot be asked, UNAVAILABLE. `what` names the key for messages.
    pub async fn open(
        &self,
        sealed: &Sealed,
        uid: &str,
        what: &str,
    ) -> Result<ApiKey, DomainError> {
        let opened = self.ring().open(sealed, uid);
        let opened = match (opened, &self.wrapped) {
            (Err(VaultError::UnknownKey(id)), Some(wrapped)) => {
                wrapped.learn(&self.held, &id).await?;
                self.ring().open(sealed, uid)
            }
            (opened, _) => opened,
        };
        // The vault's errors name key ids, never key material; a key that does not open is our
        // fault (a ring without its key), not the caller's.
        opened.map_err(|e| DomainError::Internal(format!("opening the key of {what}: {e}")))
    }

    /// Whether the keys are data keys wrapped outside the process.
    pub fn is_wrapped(&self) -> bool {
        self.wrapped.is_some()
    }
}
