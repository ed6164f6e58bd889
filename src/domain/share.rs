//! Shares: one user's role on another user's instance.

use chrono::{DateTime, Utc};

use super::{instance::Role, names::ShareName};

/// A share as stored.
#[derive(Debug, Clone)]
pub struct Share {
    pub name: ShareName,
    pub role: Role,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    /// The grantee's quota, if any.
    pub quota: Option<super::quota::Quota>,
}
