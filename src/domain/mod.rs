//! The domain: resource names and handles, validation, the access policy, pagination tokens and
//! the error vocabulary. It knows neither tonic nor sqlx, so the rules here can be read (and
//! tested) without the transport or the database.

pub mod access;
pub mod api_standard;
pub mod audit;
pub mod caller;
pub mod certificate_binding;
pub mod definition;
pub mod embedding;
pub mod error;
pub mod instance;
pub mod mask;
pub mod names;
pub mod pagination;
pub mod project;
pub mod quota;
pub mod service_account;
pub mod share;
pub mod token;
pub mod usage;
pub mod user;
pub mod validate;

pub use error::DomainError;

/// A stored resource with an etag, which updates and deletes check before they change it.
pub trait Versioned {
    fn etag(&self) -> String;
}

macro_rules! versioned {
    ($($resource:ty),*) => {
        $(impl Versioned for $resource {
            fn etag(&self) -> String {
                <$resource>::etag(self)
            }
        })*
    };
}

versioned!(
    instance::Instance,
    service_account::ServiceAccount,
    project::Project,
    user::User,
    definition::Definition,
    api_standard::ApiStandard
);

/// The opaque version tag of a resource: its revision and last update time. The time makes a tag
/// of a deleted and re-created resource differ from the old one's.
pub fn etag(revision: i64, update_time: chrono::DateTime<chrono::Utc>) -> String {
    format!("{revision}-{:x}", update_time.timestamp_micros())
}

/// Refuses a stale etag; an empty expected etag means "unconditional".
pub fn check_etag(expected: &str, current: &str, resource: &str) -> Result<(), DomainError> {
    if expected.is_empty() || expected == current {
        Ok(())
    } else {
        Err(DomainError::EtagMismatch(resource.to_owned()))
    }
}
