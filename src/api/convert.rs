//! Small conversions between proto and domain values shared by the services.

use chrono::{DateTime, Utc};
use prost_types::{FieldMask, Timestamp};

use crate::domain::{DomainError, mask::UpdateMask};

pub fn timestamp(time: DateTime<Utc>) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: time.timestamp(),
        // Always in 0..1e9, so the cast cannot truncate.
        nanos: time.timestamp_subsec_nanos() as i32,
    })
}

/// Reads an update mask, treating an absent one as empty.
pub fn update_mask(
    mask: Option<&FieldMask>,
    updatable: &[&str],
    output_only: &[&str],
) -> Result<UpdateMask, DomainError> {
    let paths = mask.map(|m| m.paths.as_slice()).unwrap_or_default();
    UpdateMask::parse(paths, updatable, output_only)
}
