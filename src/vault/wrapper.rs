//! Data keys wrapped by a key-encryption key that lives outside the process (OpenBao/Vault
//! transit today; a cloud KMS would be one more [`KeyWrapper`]).
//!
//! A data key is an ordinary [`MasterKey`] of the ring: it seals provider keys exactly as an
//! `ENCRYPTION_KEY` does (same format, same key ids). What differs is where it comes from: the
//! wrapper makes it, the database keeps only its wrapped form, and the process holds the
//! plaintext in zeroize-on-drop memory after unwrapping it at start.

use std::{fmt, time::Duration};

use futures_util::future::BoxFuture;

use super::MasterKey;

/// A data key as the wrapper returned it: opaque text (transit's `vault:vN:...`) and the
/// version of the key-encryption key that wrapped it.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    pub ciphertext: String,
    pub version: i32,
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The wrapped form is useless without the wrapper, but it stays out of logs all the same.
        write!(f, "WrappedKey(version={}, <redacted>)", self.version)
    }
}

/// What a data key is for now: `Primary` seals new keys (one at a time), `Previous` still opens
/// keys sealed under it, `Retired` sealed nothing still stored when it was retired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKeyState {
    Primary,
    Previous,
    Retired,
}

impl DataKeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Previous => "previous",
            Self::Retired => "retired",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "primary" => Some(Self::Primary),
            "previous" => Some(Self::Previous),
            "retired" => Some(Self::Retired),
            _ => None,
        }
    }
}

/// One stored data key: its public id (the [`MasterKey::id`] of its plaintext, as sealed keys
/// name it), its wrapped form and its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDataKey {
    pub id: String,
    pub wrapped: WrappedKey,
    pub state: DataKeyState,
}

/// Why the wrapper refused or could not be asked. The message names the operation and the
/// wrapper's address, never a token, a data key or its wrapped form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{operation} at {place}: {kind}")]
pub struct WrapError {
    /// `datakey`, `decrypt`, `rewrap`, `renew-self`.
    pub operation: &'static str,
    /// Where the wrapper is (`VAULT_ADDR=https://... transit key K on mount M`).
    pub place: String,
    pub kind: WrapErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WrapErrorKind {
    #[error("not reachable ({0})")]
    Unreachable(String),
    #[error("permission denied (the token's policy does not allow it, or the token expired)")]
    PermissionDenied,
    #[error("the key was not found")]
    KeyNotFound,
    #[error(
        "the data key is wrapped under a key version below the key's min_decryption_version \
         (lower it, run `rewrap-data-keys`, then raise it again)"
    )]
    VersionTooOld,
    #[error("refused with HTTP {status}: {message}")]
    Refused { status: u16, message: String },
    #[error("the answer was not understood ({0})")]
    Malformed(String),
}

impl WrapErrorKind {
    /// A label for the `outcome` of the transit call metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "unreachable",
            Self::PermissionDenied => "permission_denied",
            Self::KeyNotFound => "key_not_found",
            Self::VersionTooOld => "version_too_old",
            Self::Refused { .. } => "refused",
            Self::Malformed(_) => "malformed",
        }
    }
}

/// A key-encryption key outside the process that makes, unwraps and rewraps data keys.
pub trait KeyWrapper: Send + Sync {
    /// Where the wrapper is, for messages (no secrets).
    fn place(&self) -> String;

    /// A new random 256-bit data key, wrapped (its plaintext is obtained with [`Self::unwrap`],
    /// which also proves the token may decrypt before anything is sealed under it).
    fn new_data_key(&self) -> BoxFuture<'_, Result<WrappedKey, WrapError>>;

    /// The data key inside `wrapped`.
    fn unwrap<'a>(&'a self, wrapped: &'a WrappedKey)
    -> BoxFuture<'a, Result<MasterKey, WrapError>>;

    /// `wrapped` wrapped again under the newest version of the key-encryption key.
    fn rewrap<'a>(
        &'a self,
        wrapped: &'a WrappedKey,
    ) -> BoxFuture<'a, Result<WrappedKey, WrapError>>;

    /// Keeps the wrapper's credentials alive (renews a renewable token): when to call again, or
    /// `None` when there is nothing to renew.
    fn keep_alive(&self) -> BoxFuture<'_, Result<Option<Duration>, WrapError>>;
}
