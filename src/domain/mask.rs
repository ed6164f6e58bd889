//! Update masks (AIP-134): which fields an update changes. An empty mask means "the fields the
//! request populated"; `*` means every updatable field; output-only paths are ignored; anything
//! else unknown is INVALID_ARGUMENT on `update_mask`.

use std::collections::BTreeSet;

use super::DomainError;

/// Paths that every resource has and no update may change; ignored when named.
const ALWAYS_OUTPUT_ONLY: &[&str] = &["name", "create_time", "update_time", "etag"];

#[derive(Debug, Clone)]
pub struct UpdateMask {
    /// `None`: the mask was empty, so populated fields count.
    named: Option<BTreeSet<String>>,
}

impl UpdateMask {
    pub fn parse(
        paths: &[String],
        updatable: &[&str],
        output_only: &[&str],
    ) -> Result<Self, DomainError> {
        if paths.is_empty() {
            return Ok(Self { named: None });
        }
        let mut named = BTreeSet::new();
        let mut unknown = Vec::new();
        for path in paths {
            if path == "*" {
                named.extend(updatable.iter().map(|p| (*p).to_owned()));
            } else if updatable.contains(&path.as_str()) {
                named.insert(path.clone());
            } else if !ALWAYS_OUTPUT_ONLY.contains(&path.as_str())
                && !output_only.contains(&path.as_str())
            {
                unknown.push(path.clone());
            }
        }
        if !unknown.is_empty() {
            return Err(DomainError::invalid(
                "update_mask",
                format!(
                    "unknown path(s) {}; updatable: {}",
                    unknown.join(", "),
                    updatable.join(", ")
                ),
            ));
        }
        Ok(Self { named: Some(named) })
    }

    /// Does the update change `field`? `populated` says whether the request set it.
    pub fn touches(&self, field: &str, populated: bool) -> bool {
        match &self.named {
            Some(named) => named.contains(field),
            None => populated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPDATABLE: &[&str] = &["endpoint", "model"];

    #[test]
    fn empty_mask_means_populated_fields() {
        let mask = UpdateMask::parse(&[], UPDATABLE, &[]).unwrap();
        assert!(mask.touches("model", true));
        assert!(!mask.touches("endpoint", false));
    }

    #[test]
    fn named_paths_win_and_output_only_is_ignored() {
        let paths = vec![
            "model".to_owned(),
            "etag".to_owned(),
            "has_api_key".to_owned(),
        ];
        let mask = UpdateMask::parse(&paths, UPDATABLE, &["has_api_key"]).unwrap();
        assert!(mask.touches("model", false));
        assert!(!mask.touches("endpoint", true));
        assert!(UpdateMask::parse(&["bogus".to_owned()], UPDATABLE, &[]).is_err());
        let all = UpdateMask::parse(&["*".to_owned()], UPDATABLE, &[]).unwrap();
        assert!(all.touches("endpoint", false));
    }
}
