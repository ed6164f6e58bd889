//! Definitions: templates of an LLM or embedding service (endpoint, API standard, model,
//! dimensions, context limit, description). Instances carry the same fields, so the validated
//! field set `ServiceSpec` is shared with them.

use chrono::{DateTime, Utc};

use super::{
    DomainError,
    error::Violations,
    names::{ApiStandardName, DefinitionName},
    validate,
};

/// The fields of a service, as a request gives them (not yet validated).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawServiceSpec {
    pub endpoint: String,
    pub api_standard: String,
    pub model: String,
    pub dimensions: Option<i32>,
    pub context_limit: Option<i32>,
    pub description: String,
}

/// The fields of a service, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub endpoint: String,
    pub api_standard: ApiStandardName,
    pub model: String,
    pub dimensions: Option<i32>,
    pub context_limit: Option<i32>,
    pub description: String,
}

impl ServiceSpec {
    /// Validates every field, naming each bad one as `{prefix}.{field}`.
    pub fn parse(prefix: &str, raw: &RawServiceSpec) -> Result<Self, DomainError> {
        let field = |name: &str| format!("{prefix}.{name}");
        let mut violations = Violations::default();
        let endpoint = violations.take(validate::endpoint(&field("endpoint"), &raw.endpoint));
        let api_standard = if raw.api_standard.is_empty() {
            violations.add(field("api_standard"), "is required");
            None
        } else {
            violations.take(ApiStandardName::parse_reference(
                &field("api_standard"),
                &raw.api_standard,
            ))
        };
        let model = violations.take(validate::line(
            &field("model"),
            &raw.model,
            validate::MAX_MODEL_LEN,
            true,
        ));
        let dimensions = violations.take(validate::positive(
            &field("dimensions"),
            raw.dimensions,
            validate::MAX_DIMENSIONS,
        ));
        let context_limit = violations.take(validate::positive(
            &field("context_limit"),
            raw.context_limit,
            validate::MAX_CONTEXT_LIMIT,
        ));
        let description = violations.take(validate::description(
            &field("description"),
            &raw.description,
        ));
        violations.finish()?;
        // Every `take` above succeeded when no violation was recorded.
        let lost = || DomainError::Internal("service spec validation lost a violation".to_owned());
        Ok(Self {
            endpoint: endpoint.ok_or_else(lost)?,
            api_standard: api_standard.ok_or_else(lost)?,
            model: model.ok_or_else(lost)?,
            dimensions: dimensions.ok_or_else(lost)?,
            context_limit: context_limit.ok_or_else(lost)?,
            description: description.ok_or_else(lost)?,
        })
    }

    /// Back to the raw form, so that a patch can be laid over it and the result validated whole.
    pub fn to_raw(&self) -> RawServiceSpec {
        RawServiceSpec {
            endpoint: self.endpoint.clone(),
            api_standard: self.api_standard.to_string(),
            model: self.model.clone(),
            dimensions: self.dimensions,
            context_limit: self.context_limit,
            description: self.description.clone(),
        }
    }
}

/// Which fields of a service an update replaces, with their new values.
#[derive(Debug, Clone, Default)]
pub struct ServicePatch {
    pub endpoint: Option<String>,
    pub api_standard: Option<String>,
    pub model: Option<String>,
    pub dimensions: Option<Option<i32>>,
    pub context_limit: Option<Option<i32>>,
    pub description: Option<String>,
}

/// The service fields an update mask may name.
pub const SERVICE_FIELDS: &[&str] = &[
    "endpoint",
    "api_standard",
    "model",
    "dimensions",
    "context_limit",
    "description",
];

impl ServicePatch {
    /// Lays the patch over `current` and validates the result under `prefix`.
    pub fn apply(self, prefix: &str, current: &ServiceSpec) -> Result<ServiceSpec, DomainError> {
        let mut raw = current.to_raw();
        if let Some(v) = self.endpoint {
            raw.endpoint = v;
        }
        if let Some(v) = self.api_standard {
            raw.api_standard = v;
        }
        if let Some(v) = self.model {
            raw.model = v;
        }
        if let Some(v) = self.dimensions {
            raw.dimensions = v;
        }
        if let Some(v) = self.context_limit {
            raw.context_limit = v;
        }
        if let Some(v) = self.description {
            raw.description = v;
        }
        ServiceSpec::parse(prefix, &raw)
    }
}

/// A definition as stored.
#[derive(Debug, Clone)]
pub struct Definition {
    pub name: DefinitionName,
    pub spec: ServiceSpec,
    pub revision: i64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

impl Definition {
    pub fn etag(&self) -> String {
        super::etag(self.revision, self.update_time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawServiceSpec {
        RawServiceSpec {
            endpoint: "https://api.example.com/v1/embed".to_owned(),
            api_standard: "openai".to_owned(),
            model: "m".to_owned(),
            dimensions: Some(8),
            context_limit: None,
            description: String::new(),
        }
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut bad = raw();
        bad.endpoint = "ftp://x".to_owned();
        bad.dimensions = Some(0);
        bad.model = String::new();
        let Err(DomainError::InvalidArgument(violations)) = ServiceSpec::parse("definition", &bad)
        else {
            panic!("expected invalid argument");
        };
        let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "definition.endpoint",
                "definition.model",
                "definition.dimensions"
            ]
        );
    }

    #[test]
    fn patches_change_only_what_they_name() {
        let spec = ServiceSpec::parse("d", &raw()).unwrap();
        let patched = ServicePatch {
            model: Some("other".to_owned()),
            dimensions: Some(None),
            ..Default::default()
        }
        .apply("d", &spec)
        .unwrap();
        assert_eq!(patched.model, "other");
        assert_eq!(patched.dimensions, None);
        assert_eq!(patched.endpoint, spec.endpoint);
        assert_eq!(patched.api_standard.to_string(), "apiStandards/openai");
    }
}
