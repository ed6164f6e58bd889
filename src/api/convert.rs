//! Small conversions between proto and domain values shared by the services.

use chrono::{DateTime, Utc};
use prost_types::{FieldMask, Timestamp};

use crate::{
    domain::{
        DomainError,
        definition::{RawServiceSpec, ServicePatch},
        mask::UpdateMask,
        quota::{Quota, RawLimit},
    },
    pb::v1 as pb,
};

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

/// The service fields of a request message (definition or instance), borrowed.
pub struct ServiceFields<'a> {
    pub endpoint: &'a str,
    pub api_standard: &'a str,
    pub model: &'a str,
    pub dimensions: Option<i32>,
    pub context_limit: Option<i32>,
    pub description: &'a str,
}

impl ServiceFields<'_> {
    pub fn raw(&self) -> RawServiceSpec {
        RawServiceSpec {
            endpoint: self.endpoint.to_owned(),
            api_standard: self.api_standard.to_owned(),
            model: self.model.to_owned(),
            dimensions: self.dimensions,
            context_limit: self.context_limit,
            description: self.description.to_owned(),
        }
    }

    /// The fields an update changes: named in the mask, or (empty mask) populated.
    pub fn patch(&self, mask: &UpdateMask) -> ServicePatch {
        let text = |field: &str, value: &str| {
            mask.touches(field, !value.is_empty())
                .then(|| value.to_owned())
        };
        ServicePatch {
            endpoint: text("endpoint", self.endpoint),
            api_standard: text("api_standard", self.api_standard),
            model: text("model", self.model),
            dimensions: mask
                .touches("dimensions", self.dimensions.is_some())
                .then_some(self.dimensions),
            context_limit: mask
                .touches("context_limit", self.context_limit.is_some())
                .then_some(self.context_limit),
            description: text("description", self.description),
        }
    }
}

impl<'a> From<&'a pb::Definition> for ServiceFields<'a> {
    fn from(d: &'a pb::Definition) -> Self {
        Self {
            endpoint: &d.endpoint,
            api_standard: &d.api_standard,
            model: &d.model,
            dimensions: d.dimensions,
            context_limit: d.context_limit,
            description: &d.description,
        }
    }
}

impl<'a> From<&'a pb::Instance> for ServiceFields<'a> {
    fn from(i: &'a pb::Instance) -> Self {
        Self {
            endpoint: &i.endpoint,
            api_standard: &i.api_standard,
            model: &i.model,
            dimensions: i.dimensions,
            context_limit: i.context_limit,
            description: &i.description,
        }
    }
}

/// A quota as the API shows it (unset: none).
pub fn quota_to_pb(quota: Option<Quota>) -> Option<pb::Quota> {
    quota.map(|quota| pb::Quota {
        limits: quota
            .limits()
            .iter()
            .map(|limit| pb::QuotaLimit {
                metric: i32::from(limit.metric.number()),
                period: i32::from(limit.period.number()),
                limit: limit.limit,
            })
            .collect(),
    })
}

/// A quota a request gives under `field`; one without limits is `None` (no quota).
pub fn quota_from_pb(field: &str, quota: &pb::Quota) -> Result<Option<Quota>, DomainError> {
    let raw: Vec<RawLimit> = quota
        .limits
        .iter()
        .map(|limit| RawLimit {
            metric: limit.metric,
            period: limit.period,
            limit: limit.limit,
        })
        .collect();
    Quota::parse(field, &raw)
}
