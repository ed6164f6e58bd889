//! Field-level validation shared by every resource: URLs, bounded text, bounded numbers.
//! Each check names the request field it judges, so errors point at what to fix.

use super::DomainError;

pub const MAX_ENDPOINT_LEN: usize = 2048;
pub const MAX_MODEL_LEN: usize = 200;
pub const MAX_DISPLAY_NAME_LEN: usize = 200;
pub const MAX_DESCRIPTION_LEN: usize = 1000;
pub const MAX_DIMENSIONS: i32 = 65_536;
pub const MAX_CONTEXT_LIMIT: i32 = 100_000_000;

/// An absolute `http`/`https` URL with a host, without credentials or fragment. Returns it as
/// given (not re-serialized), so what the caller stored is what they read back.
pub fn endpoint(field: &str, value: &str) -> Result<String, DomainError> {
    let invalid = |why: &str| DomainError::invalid(field, why.to_owned());
    if value.is_empty() {
        return Err(invalid("is required"));
    }
    if value.len() > MAX_ENDPOINT_LEN {
        return Err(invalid("must be at most 2048 characters"));
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid("must not contain whitespace or control characters"));
    }
    let url =
        url::Url::parse(value).map_err(|e| invalid(&format!("is not an absolute URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("must use the http or https scheme"));
    }
    // WHATWG parsing forgives `https:///host` and `https:host`; what we store must read
    // the same to every client, so insist on the plain `scheme://host` form.
    let after_scheme = value.get(url.scheme().len() + 1..).unwrap_or_default();
    if !after_scheme.starts_with("//") || after_scheme.starts_with("///") {
        return Err(invalid("must look like https://host/path"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("must name a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("must not carry credentials"));
    }
    if url.fragment().is_some() {
        return Err(invalid("must not have a fragment"));
    }
    Ok(value.to_owned())
}

/// A single-line text field: bounded, no control characters; empty allowed unless `required`.
pub fn line(
    field: &str,
    value: &str,
    max_chars: usize,
    required: bool,
) -> Result<String, DomainError> {
    if required && value.trim().is_empty() {
        return Err(DomainError::invalid(field, "is required"));
    }
    if value.chars().count() > max_chars {
        return Err(DomainError::invalid(
            field,
            format!("must be at most {max_chars} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(DomainError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(value.to_owned())
}

/// Free text: bounded; newlines and tabs allowed, other control characters not.
pub fn description(field: &str, value: &str) -> Result<String, DomainError> {
    if value.chars().count() > MAX_DESCRIPTION_LEN {
        return Err(DomainError::invalid(
            field,
            format!("must be at most {MAX_DESCRIPTION_LEN} characters"),
        ));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(DomainError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(value.to_owned())
}

/// An optional count that, when given, lies in `1..=max`.
pub fn positive(field: &str, value: Option<i32>, max: i32) -> Result<Option<i32>, DomainError> {
    match value {
        Some(n) if !(1..=max).contains(&n) => Err(DomainError::invalid(
            field,
            format!("must be between 1 and {max} (got {n})"),
        )),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_plain_http_urls() {
        assert!(endpoint("e", "https://api.openai.com/v1/embeddings").is_ok());
        assert!(endpoint("e", "http://localhost:8080/x?y=1").is_ok());
        for bad in [
            "",
            "api.openai.com/v1",
            "ftp://example.com/x",
            "https://user:pw@example.com/",
            "https://user@example.com/",
            "https://example.com/#frag",
            "https:///nohost",
            "https:nohost",
            "https://",
            "https://exa mple.com/",
            "file:///etc/passwd",
        ] {
            assert!(endpoint("e", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn numbers_are_positive_and_bounded() {
        assert_eq!(positive("d", None, 10).unwrap(), None);
        assert_eq!(positive("d", Some(10), 10).unwrap(), Some(10));
        for bad in [0, -1, 11, i32::MIN] {
            assert!(positive("d", Some(bad), 10).is_err());
        }
    }
}
