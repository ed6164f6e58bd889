//! Turning dhamps-vdb's free-form names and texts into what this registry accepts: handles
//! (normalized, collisions numbered), display names and descriptions (control characters
//! replaced, cut to the limit). Each function says what it changed, for the report.

use unicode_normalization::{UnicodeNormalization as _, char::is_combining_mark};

use crate::domain::{names::Handle, validate};

const MAX_HANDLE_LEN: usize = 63;

/// `source` as a handle: unchanged when valid here; otherwise NFKD, marks dropped, lowercase,
/// every other character to `-` (runs of them to one), `-` trimmed from both ends, at most 63
/// characters, and `prefix` put before it when it would not start with a letter.
pub fn handle(source: &str, prefix: &str) -> String {
    if Handle::parse("", source).is_ok() {
        return source.to_owned();
    }
    let mut out = String::with_capacity(source.len());
    for c in source.nfkd().filter(|c| !is_combining_mark(*c)) {
        for lower in c.to_lowercase() {
            if lower.is_ascii_lowercase() || lower.is_ascii_digit() {
                out.push(lower);
            } else if !out.ends_with('-') {
                out.push('-');
            }
        }
    }
    let trimmed = out.trim_matches('-');
    let mut handle = if trimmed.starts_with(|c: char| c.is_ascii_lowercase()) {
        trimmed.to_owned()
    } else if trimmed.is_empty() {
        prefix.to_owned()
    } else {
        format!("{prefix}-{trimmed}")
    };
    handle.truncate(MAX_HANDLE_LEN);
    handle.truncate(handle.trim_end_matches('-').len());
    handle
}

/// The `n`th candidate for a handle that is taken (`n` >= 2): `base-n`, `base` shortened so that
/// the whole stays within 63 characters.
pub fn numbered(base: &str, n: u32) -> String {
    let suffix = format!("-{n}");
    let mut stem = base.to_owned();
    stem.truncate(MAX_HANDLE_LEN - suffix.len());
    let stem = stem.trim_end_matches('-');
    format!("{stem}{suffix}")
}

/// A single line for a display name: control characters to spaces, cut to the limit.
pub fn display_name(source: &str) -> (String, Vec<String>) {
    let mut changes = Vec::new();
    let mut out: String = source
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out != source {
        changes.push("control characters in the display name replaced by spaces".to_owned());
    }
    cut(
        &mut out,
        validate::MAX_DISPLAY_NAME_LEN,
        "display name",
        &mut changes,
    );
    (out, changes)
}

/// A description: `\r\n` and lone `\r` to `\n`, other control characters (but `\n` and tab) to
/// spaces, cut to the limit.
pub fn description(source: &str) -> (String, Vec<String>) {
    let mut changes = Vec::new();
    let unified = source.replace("\r\n", "\n").replace('\r', "\n");
    if unified != source {
        changes.push("line breaks in the description made \\n".to_owned());
    }
    let mut out: String = unified
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                ' '
            } else {
                c
            }
        })
        .collect();
    if out != unified {
        changes.push("control characters in the description replaced by spaces".to_owned());
    }
    cut(
        &mut out,
        validate::MAX_DESCRIPTION_LEN,
        "description",
        &mut changes,
    );
    (out, changes)
}

fn cut(text: &mut String, max_chars: usize, what: &str, changes: &mut Vec<String>) {
    let count = text.chars().count();
    if count > max_chars {
        let end = text
            .char_indices()
            .nth(max_chars)
            .map_or(text.len(), |(at, _)| at);
        text.truncate(end);
        changes.push(format!("{what} cut from {count} to {max_chars} characters"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_handles_stay_and_others_are_normalized() {
        assert_eq!(handle("alice", "u"), "alice");
        assert_eq!(handle("Alice Smith", "u"), "alice-smith");
        assert_eq!(handle("jürgen.müller", "u"), "jurgen-muller");
        assert_eq!(handle("  Ｂob__  ", "u"), "bob");
        assert_eq!(handle("42nd", "u"), "u-42nd");
        assert_eq!(handle("日本", "u"), "u");
        assert_eq!(handle("_system", "u"), "system");
        let long = "A".repeat(100);
        assert_eq!(handle(&long, "u").len(), 63);
        for source in ["Alice Smith", "42nd", "日本", "a--b-", "x_y.z", &long] {
            assert!(Handle::parse("", &handle(source, "u")).is_ok(), "{source}");
        }
    }

    #[test]
    fn numbered_candidates_stay_within_the_limit() {
        assert_eq!(numbered("alice", 2), "alice-2");
        let long = "a".repeat(63);
        let candidate = numbered(&long, 12);
        assert_eq!(candidate.len(), 63);
        assert!(candidate.ends_with("-12"));
        assert!(Handle::parse("", &candidate).is_ok());
    }

    #[test]
    fn descriptions_are_cleaned_and_cut() {
        let source = format!("line one\r\nline two\rthree\u{7}{}", "x".repeat(1500));
        let (cleaned, changes) = description(&source);
        assert_eq!(cleaned.chars().count(), validate::MAX_DESCRIPTION_LEN);
        assert!(cleaned.starts_with("line one\nline two\nthree "));
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert!(validate::description("d", &cleaned).is_ok());
        assert_eq!(description("plain").1, Vec::<String>::new());
    }
}
