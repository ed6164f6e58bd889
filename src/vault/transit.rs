//! The OpenBao/Vault transit secrets engine as a [`KeyWrapper`]: `datakey/wrapped` makes data
//! keys, `decrypt` unwraps them at start, `rewrap` moves them to the newest transit key version,
//! and `auth/token/renew-self` keeps a renewable token alive. The HTTP API is the same on both
//! (https://openbao.org/api-docs/secret/transit/, https://developer.hashicorp.com/vault/api-docs/secret/transit).
//!
//! The token never leaves this file except in the `X-Vault-Token` header; errors name the
//! operation and `VAULT_ADDR`, and the transit server's own message only when it is not ours to
//! hide (it never echoes a token or a key).

use std::{path::PathBuf, time::Duration};

use base64::{Engine, engine::general_purpose::STANDARD};
use futures_util::future::BoxFuture;
use parking_lot::RwLock;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{
    MasterKey,
    wrapper::{KeyWrapper, WrapError, WrapErrorKind, WrappedKey},
};
use crate::metrics::record_transit_call;

/// Bits of a data key: AES-256.
const DATA_KEY_BITS: u32 = 256;
/// A call to transit that takes longer than this is failed (start-up waits for at most a few).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the token comes from: a file (re-read at every renewal, so that an agent may replace
/// it) or the value itself.
#[derive(Clone)]
pub enum TokenSource {
    File(PathBuf),
    Value(Zeroizing<String>),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "File({})", path.display()),
            Self::Value(_) => f.write_str("Value(<redacted>)"),
        }
    }
}

/// Everything needed to reach one transit key.
#[derive(Debug, Clone)]
pub struct TransitSettings {
    /// `VAULT_ADDR`, e.g. `https://vault.internal:8200` (no trailing slash).
    pub address: url::Url,
    pub token: TokenSource,
    pub mount: String,
    pub key: String,
    /// PEM of the CA that signed the transit server's certificate (`VAULT_CACERT`).
    pub ca_pem: Option<Vec<u8>>,
    pub namespace: Option<String>,
}

impl TransitSettings {
    /// `VAULT_ADDR=... transit key K on mount M`, for messages.
    pub fn place(&self) -> String {
        format!(
            "VAULT_ADDR={} (transit key {} on mount {})",
            self.address.as_str().trim_end_matches('/'),
            self.key,
            self.mount
        )
    }
}

/// A transit client of one key.
pub struct TransitClient {
    settings: TransitSettings,
    http: reqwest::Client,
    token: RwLock<Zeroizing<String>>,
}

impl TransitClient {
    /// Builds the client and reads the token; a CA or token file that cannot be used is an
    /// error naming it.
    pub fn new(settings: TransitSettings) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .user_agent(concat!("llm-registry/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &settings.ca_pem {
            let certificates = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| anyhow::anyhow!("VAULT_CACERT holds no usable certificate: {e}"))?;
            anyhow::ensure!(
                !certificates.is_empty(),
                "VAULT_CACERT holds no certificate"
            );
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let token = read_token(&settings.token)?;
        Ok(Self {
            http: builder.build()?,
            token: RwLock::new(token),
            settings,
        })
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}/v1/{path}",
            self.settings.address.as_str().trim_end_matches('/')
        )
    }

    fn transit_url(&self, operation: &str) -> String {
        self.url(&format!(
            "{}/{operation}/{}",
            self.settings.mount, self.settings.key
        ))
    }

    fn error(&self, operation: &'static str, kind: WrapErrorKind) -> WrapError {
        WrapError {
            operation,
            place: self.settings.place(),
            kind,
        }
    }

    /// One call: the token and namespace headers, the answer's `data` (or `auth`) parsed as `T`,
    /// transit's errors sorted into [`WrapErrorKind`], and the call counted.
    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        operation: &'static str,
        method: reqwest::Method,
        url: String,
        body: Option<serde_json::Value>,
    ) -> Result<T, WrapError> {
        let outcome = async {
            let mut request = self
                .http
                .request(method, url)
                .header("X-Vault-Token", self.token.read().as_str());
            if let Some(namespace) = &self.settings.namespace {
                request = request.header("X-Vault-Namespace", namespace);
            }
            if let Some(body) = body {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.to_string());
            }
            let response = request
                .send()
                .await
                .map_err(|e| self.error(operation, WrapErrorKind::Unreachable(root_cause(&e))))?;
            let status = response.status();
            let body = Zeroizing::new(
                response
                    .bytes()
                    .await
                    .map_err(|e| self.error(operation, WrapErrorKind::Unreachable(root_cause(&e))))?
                    .to_vec(),
            );
            if !status.is_success() {
                return Err(self.error(operation, classify(status.as_u16(), &body)));
            }
            serde_json::from_slice(&body).map_err(|e| {
                // serde's message names the field and position, never the value.
                self.error(operation, WrapErrorKind::Malformed(e.to_string()))
            })
        }
        .await;
        record_transit_call(
            operation,
            match &outcome {
                Ok(_) => "ok",
                Err(error) => error.kind.outcome(),
            },
        );
        outcome
    }

    /// A transit call answering a wrapped key (`datakey/wrapped`, `rewrap`).
    async fn wrapped_answer(
        &self,
        operation: &'static str,
        path: &str,
        body: serde_json::Value,
    ) -> Result<WrappedKey, WrapError> {
        let answer: Data<CiphertextData> = self
            .call(
                operation,
                reqwest::Method::POST,
                self.transit_url(path),
                Some(body),
            )
            .await?;
        answer
            .data
            .into_wrapped()
            .map_err(|kind| self.error(operation, kind))
    }
}

/// Transit's refusals, sorted: 403 is a policy (or an expired token), "not found" a missing key,
/// "too old" a version below min_decryption_version.
fn classify(status: u16, body: &[u8]) -> WrapErrorKind {
    #[derive(Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<String>,
    }
    let message = serde_json::from_slice::<Errors>(body)
        .map(|e| e.errors.join("; "))
        .unwrap_or_default();
    if status == 403 {
        return WrapErrorKind::PermissionDenied;
    }
    let lowered = message.to_ascii_lowercase();
    if lowered.contains("too old") {
        WrapErrorKind::VersionTooOld
    } else if lowered.contains("key not found") || (status == 404 && message.is_empty()) {
        WrapErrorKind::KeyNotFound
    } else {
        // Transit's messages describe the request ("invalid ciphertext"), never its secrets;
        // cut to a line all the same.
        let mut message: String = message.chars().take(200).collect();
        if message.is_empty() {
            message = "no message".to_owned();
        }
        WrapErrorKind::Refused { status, message }
    }
}

/// The token at start (a blocking read, before anything is served).
fn read_token(source: &TokenSource) -> anyhow::Result<Zeroizing<String>> {
    match source {
        TokenSource::Value(value) => checked_token(value.clone()),
        TokenSource::File(path) => {
            #[allow(clippy::disallowed_methods)]
            let text = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("VAULT_TOKEN_FILE {} cannot be read: {e}", path.display())
            })?;
            checked_token(Zeroizing::new(text))
        }
    }
}

/// The token file again (an agent may have replaced it), without blocking the runtime.
async fn reread_token(path: &std::path::Path) -> anyhow::Result<Zeroizing<String>> {
    let text = tokio::fs::read_to_string(path).await?;
    checked_token(Zeroizing::new(text))
}

fn checked_token(token: Zeroizing<String>) -> anyhow::Result<Zeroizing<String>> {
    let trimmed = Zeroizing::new(token.trim().to_owned());
    anyhow::ensure!(
        !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_graphic()),
        "the transit token (VAULT_TOKEN or VAULT_TOKEN_FILE) is empty or not printable ASCII"
    );
    Ok(trimmed)
}

/// The innermost cause of a transport error (e.g. "Connection refused").
fn root_cause(error: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    if error.is_timeout() {
        format!("timed out: {cause}")
    } else {
        cause.to_string()
    }
}

#[derive(Deserialize)]
struct Data<T> {
    data: T,
}

#[derive(Deserialize)]
struct CiphertextData {
    ciphertext: String,
    #[serde(default)]
    key_version: Option<i32>,
}

#[derive(Deserialize)]
struct PlaintextData {
    plaintext: String,
}

#[derive(Deserialize)]
struct LookupData {
    #[serde(default)]
    renewable: bool,
}

#[derive(Deserialize)]
struct Auth<T> {
    auth: T,
}

#[derive(Deserialize)]
struct RenewedAuth {
    lease_duration: i64,
    #[serde(default)]
    renewable: bool,
}

impl CiphertextData {
    /// The wrapped key, its version from `key_version` or, from servers that do not return it,
    /// from the `vault:vN:` prefix.
    fn into_wrapped(self) -> Result<WrappedKey, WrapErrorKind> {
        let version = match self.key_version {
            Some(version) => version,
            None => version_of(&self.ciphertext).ok_or_else(|| {
                WrapErrorKind::Malformed("a ciphertext without a vault:vN: prefix".to_owned())
            })?,
        };
        Ok(WrappedKey {
            ciphertext: self.ciphertext,
            version,
        })
    }
}

/// N of a `vault:vN:...` ciphertext.
pub fn version_of(ciphertext: &str) -> Option<i32> {
    ciphertext
        .strip_prefix("vault:v")?
        .split(':')
        .next()?
        .parse()
        .ok()
}

impl KeyWrapper for TransitClient {
    fn place(&self) -> String {
        self.settings.place()
    }

    fn new_data_key(&self) -> BoxFuture<'_, Result<WrappedKey, WrapError>> {
        Box::pin(self.wrapped_answer(
            "datakey",
            "datakey/wrapped",
            serde_json::json!({ "bits": DATA_KEY_BITS }),
        ))
    }

    fn unwrap<'a>(
        &'a self,
        wrapped: &'a WrappedKey,
    ) -> BoxFuture<'a, Result<MasterKey, WrapError>> {
        Box::pin(async move {
            let answer: Data<PlaintextData> = self
                .call(
                    "decrypt",
                    reqwest::Method::POST,
                    self.transit_url("decrypt"),
                    Some(serde_json::json!({ "ciphertext": wrapped.ciphertext })),
                )
                .await?;
            let encoded = Zeroizing::new(answer.data.plaintext);
            let bytes = Zeroizing::new(STANDARD.decode(encoded.as_bytes()).map_err(|_| {
                self.error(
                    "decrypt",
                    WrapErrorKind::Malformed("the plaintext is not base64".to_owned()),
                )
            })?);
            MasterKey::from_slice(&bytes).map_err(|e| {
                self.error(
                    "decrypt",
                    WrapErrorKind::Malformed(format!("the data key {e}")),
                )
            })
        })
    }

    fn rewrap<'a>(
        &'a self,
        wrapped: &'a WrappedKey,
    ) -> BoxFuture<'a, Result<WrappedKey, WrapError>> {
        Box::pin(self.wrapped_answer(
            "rewrap",
            "rewrap",
            serde_json::json!({ "ciphertext": wrapped.ciphertext }),
        ))
    }

    fn keep_alive(&self) -> BoxFuture<'_, Result<Option<Duration>, WrapError>> {
        Box::pin(async move {
            // A token file may have been replaced (by an agent); a file that cannot be read now
            // keeps the token in hand.
            if let TokenSource::File(path) = &self.settings.token
                && let Ok(token) = reread_token(path).await
            {
                *self.token.write() = token;
            }
            let lookup: Data<LookupData> = self
                .call(
                    "lookup-self",
                    reqwest::Method::GET,
                    self.url("auth/token/lookup-self"),
                    None,
                )
                .await?;
            if !lookup.data.renewable {
                // A root or periodic-less token: nothing to renew (ttl 0 never expires).
                return Ok(None);
            }
            let renewed: Auth<RenewedAuth> = self
                .call(
                    "renew-self",
                    reqwest::Method::POST,
                    self.url("auth/token/renew-self"),
                    Some(serde_json::json!({})),
                )
                .await?;
            if !renewed.auth.renewable {
                return Ok(None);
            }
            // Renew at half the lease, so that one failed attempt leaves time for another.
            let lease = u64::try_from(renewed.auth.lease_duration).unwrap_or(0);
            Ok(Some(Duration::from_secs((lease / 2).max(1))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_refusals_are_read() {
        assert_eq!(version_of("vault:v3:abc"), Some(3));
        assert_eq!(version_of("vault:x"), None);
        assert_eq!(
            classify(403, br#"{"errors":["permission denied"]}"#),
            WrapErrorKind::PermissionDenied
        );
        assert_eq!(
            classify(400, br#"{"errors":["encryption key not found"]}"#),
            WrapErrorKind::KeyNotFound
        );
        assert_eq!(
            classify(
                400,
                br#"{"errors":["ciphertext or signature version is disallowed by policy (too old)"]}"#
            ),
            WrapErrorKind::VersionTooOld
        );
        assert!(matches!(
            classify(500, b"not json"),
            WrapErrorKind::Refused { status: 500, .. }
        ));
    }

    #[test]
    fn tokens_never_print() {
        let source = TokenSource::Value(Zeroizing::new("s.secret-token".to_owned()));
        assert!(!format!("{source:?}").contains("secret"));
    }
}
