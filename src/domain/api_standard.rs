//! API standards: how a provider takes its key (header name and scheme) and the wire format of
//! its embedding call.

use chrono::{DateTime, Utc};

use super::{
    DomainError, embedding::EmbeddingProtocol, error::Violations, names::Handle, validate,
};

const MAX_HEADER_LEN: usize = 100;
const MAX_SCHEME_LEN: usize = 50;

/// An API standard as stored.
#[derive(Debug, Clone)]
pub struct ApiStandard {
    pub handle: Handle,
    pub fields: ApiStandardFields,
    pub revision: i64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

impl ApiStandard {
    pub fn etag(&self) -> String {
        super::etag(self.revision, self.update_time)
    }
}

/// The settable fields of an API standard, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiStandardFields {
    pub description: String,
    pub auth_header: String,
    pub auth_scheme: String,
    /// The wire format of the standard's embedding call.
    pub protocol: EmbeddingProtocol,
}

impl ApiStandardFields {
    /// Validates fields as they arrive under `prefix` (e.g. `api_standard`).
    pub fn parse(prefix: &str, raw: ApiStandardFields) -> Result<Self, DomainError> {
        let mut violations = Violations::default();
        violations.take(validate::description(
            &format!("{prefix}.description"),
            &raw.description,
        ));
        let header_field = format!("{prefix}.auth_header");
        if raw.auth_header.is_empty() {
            violations.add(&header_field, "is required");
        } else if raw.auth_header.len() > MAX_HEADER_LEN
            || !raw
                .auth_header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            violations.add(
                &header_field,
                format!("must be an HTTP header name: at most {MAX_HEADER_LEN} letters, digits, '-' or '_'"),
            );
        }
        if raw.auth_scheme.len() > MAX_SCHEME_LEN
            || !raw.auth_scheme.bytes().all(|b| b.is_ascii_alphabetic())
        {
            violations.add(
                format!("{prefix}.auth_scheme"),
                format!("must be empty or at most {MAX_SCHEME_LEN} letters, such as Bearer"),
            );
        }
        violations.finish()?;
        Ok(raw)
    }
}
