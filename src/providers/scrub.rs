//! Makes provider text safe to return and log: a provider may echo the key it was sent (some
//! quote it whole, some a prefix, some base64 or URL-encoded in a debugging field, and a hostile
//! one in any spelling it likes). Two passes:
//!
//! 1. Every run of eight or more characters that also occurs in the key, or in an encoding of
//!    it (base64 at every alignment, of the key and of the `Bearer` header value, hex of its
//!    bytes and of UTF-16, percent- and JSON-escaped, reversed), is replaced by `[REDACTED]`.
//! 2. What is left is read again through the spellings a reader's eye undoes: escapes decoded
//!    (`\uXXXX`, `\xHH`, `&#NN;`, `&#xHH;`, `%HH`), then only letters and digits kept, case
//!    folded (so `sk-abcd efgh…` in groups, or split by any separator, reads as the key). If any
//!    eight of them still spell part of a form of the key, the whole text is withheld.
//!
//! The text is then shortened. Callers show provider text only from recognized structured
//! fields (see `wire::error_text`), and a refused key (401/403) gets a fixed message.

use base64::Engine as _;

/// How much provider text an error carries at most, in characters.
pub const MAX_PROVIDER_TEXT: usize = 300;

/// Runs shorter than this are not treated as part of the key (so that ordinary words survive).
const WINDOW: usize = 8;

const REDACTED: &str = "[REDACTED]";

/// What replaces a text that still spells the key after the first pass.
const WITHHELD: &str = "[the provider's text is withheld: it quoted the key]";

/// `text` with every trace of `key` replaced, shortened to [`MAX_PROVIDER_TEXT`] characters.
pub fn scrub(text: &str, key: &str) -> String {
    let scrubbed = redact(text, key);
    shorten(&scrubbed, MAX_PROVIDER_TEXT)
}

/// `text` with every trace of `key` replaced (or withheld whole), not shortened.
pub fn redact(text: &str, key: &str) -> String {
    if key.is_empty() || text.is_empty() {
        return text.to_owned();
    }
    let forms = encodings(key);
    let redacted = redact_runs(text, &forms);
    let folded_forms: Vec<String> = forms.iter().map(|form| folded(form)).collect();
    let views = [folded(&redacted), folded(&decoded(&redacted))];
    if views.iter().any(|view| spells_any(view, &folded_forms)) {
        return WITHHELD.to_owned();
    }
    redacted
}

/// Pass 1: every run of [`WINDOW`] bytes found in a form of the key, replaced.
fn redact_runs(text: &str, forms: &[String]) -> String {
    let bytes = text.as_bytes();
    let mut covered = vec![false; bytes.len()];
    for form in forms {
        let form = form.as_bytes();
        let width = WINDOW.min(form.len());
        if width == 0 || bytes.len() < width {
            continue;
        }
        let windows: std::collections::HashSet<&[u8]> = form.windows(width).collect();
        for (start, window) in bytes.windows(width).enumerate() {
            if windows.contains(window) {
                covered[start..start + width].fill(true);
            }
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut in_redaction = false;
    for (index, character) in text.char_indices() {
        let hidden = covered[index..index + character.len_utf8()]
            .iter()
            .any(|&c| c);
        if hidden {
            if !in_redaction {
                out.push_str(REDACTED);
            }
            in_redaction = true;
        } else {
            out.push(character);
            in_redaction = false;
        }
    }
    out
}

/// Whether `view` holds [`WINDOW`] characters in a row of any form.
fn spells_any(view: &str, forms: &[String]) -> bool {
    forms.iter().any(|form| {
        let width = WINDOW.min(form.len());
        width > 0
            && view.len() >= width
            && form
                .as_bytes()
                .windows(width)
                .any(|window| view.as_bytes().windows(width).any(|seen| seen == window))
    })
}

/// Only ASCII letters and digits, lower case: separators, groupings and case undone.
fn folded(text: &str) -> String {
    text.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// `text` with the escapes a reader undoes decoded: `\uXXXX`, `\xHH`, `&#NN;`, `&#xHH;`, the
/// common named entities, and `%HH`.
fn decoded(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        let (decoded, used) = match c {
            '\\' => escape(rest),
            '&' => entity(rest),
            '%' => hex_code(&rest[1..], 2).map_or((None, 1), |c| (Some(c), 3)),
            _ => (None, c.len_utf8()),
        };
        match decoded {
            Some(decoded) => out.push(decoded),
            None => out.push_str(&rest[..used]),
        }
        rest = &rest[used..];
    }
    out
}

fn escape(text: &str) -> (Option<char>, usize) {
    match text.as_bytes().get(1) {
        Some(b'u') => hex_code(&text[2..], 4).map_or((None, 1), |c| (Some(c), 6)),
        Some(b'x') => hex_code(&text[2..], 2).map_or((None, 1), |c| (Some(c), 4)),
        _ => (None, 1),
    }
}

fn entity(text: &str) -> (Option<char>, usize) {
    let Some(end) = text.get(..12).unwrap_or(text).find(';') else {
        return (None, 1);
    };
    let body = &text[1..end];
    let decoded = if let Some(hex) = body.strip_prefix("#x").or_else(|| body.strip_prefix("#X")) {
        u32::from_str_radix(hex, 16).ok().and_then(char::from_u32)
    } else if let Some(decimal) = body.strip_prefix('#') {
        decimal.parse().ok().and_then(char::from_u32)
    } else {
        match body {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => None,
        }
    };
    match decoded {
        Some(c) => (Some(c), end + 1),
        None => (None, 1),
    }
}

fn hex_code(text: &str, digits: usize) -> Option<char> {
    let code = text.get(..digits)?;
    if !code.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(code, 16).ok().and_then(char::from_u32)
}

/// The key as a provider might echo it: as is and reversed; in base64 (standard and URL-safe,
/// padded or not, at each of the three alignments, and of the `Bearer` header value); hex of its
/// bytes and of its UTF-16 code units (either byte order); percent-encoded; escaped in JSON.
fn encodings(key: &str) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    let raw = key.as_bytes();
    let mut forms = vec![
        key.to_owned(),
        key.chars().rev().collect(),
        hex(raw, b"0123456789abcdef"),
        hex(raw, b"0123456789ABCDEF"),
        url::form_urlencoded::byte_serialize(raw).collect(),
    ];
    let bearer = format!("Bearer {key}");
    for subject in [raw, bearer.as_bytes()] {
        for shift in 0..3 {
            // Behind `shift` other bytes, the key's base64 begins at another alignment; what
            // follows the first four characters depends on the key alone.
            let mut shifted = vec![0u8; shift];
            shifted.extend_from_slice(subject);
            for engine in [&STANDARD, &URL_SAFE] {
                let encoded = engine.encode(&shifted);
                let skip = if shift == 0 { 0 } else { 4 };
                forms.push(
                    encoded
                        .trim_end_matches('=')
                        .get(skip..)
                        .unwrap_or("")
                        .to_owned(),
                );
            }
        }
    }
    let utf16: Vec<u16> = key.encode_utf16().collect();
    let big_endian: Vec<u8> = utf16.iter().flat_map(|unit| unit.to_be_bytes()).collect();
    let little_endian: Vec<u8> = utf16.iter().flat_map(|unit| unit.to_le_bytes()).collect();
    forms.push(hex(&big_endian, b"0123456789abcdef"));
    forms.push(hex(&little_endian, b"0123456789abcdef"));
    if let Ok(json) = serde_json::to_string(key) {
        forms.push(json.trim_matches('"').to_owned());
    }
    forms.retain(|form| !form.is_empty());
    forms
}

fn hex(raw: &[u8], digits: &[u8; 16]) -> String {
    let mut out = String::with_capacity(raw.len() * 2);
    for byte in raw {
        out.push(char::from(digits[usize::from(byte >> 4)]));
        out.push(char::from(digits[usize::from(byte & 0x0f)]));
    }
    out
}

/// At most `limit` characters of `text`, with an ellipsis when cut.
pub fn shorten(text: &str, limit: usize) -> String {
    match text.char_indices().nth(limit) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}…", &text[..cut]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-test-9f8e7d6c5b4a39281706";

    #[test]
    fn the_key_and_its_encodings_are_removed() {
        use base64::engine::general_purpose::STANDARD;
        let echoes = [
            format!("Incorrect API key provided: {KEY}."),
            format!("header was Bearer {KEY}"),
            format!("debug: {}", STANDARD.encode(KEY)),
            format!(
                "hex {}",
                KEY.bytes().map(|b| format!("{b:02x}")).collect::<String>()
            ),
            format!("partial: {}***", &KEY[..12]),
            format!("suffix: ...{}", &KEY[KEY.len() - 10..]),
        ];
        for echo in echoes {
            let scrubbed = scrub(&echo, KEY);
            assert!(scrubbed.contains(REDACTED), "{scrubbed}");
            for window in KEY.as_bytes().windows(WINDOW) {
                let window = std::str::from_utf8(window).unwrap_or_default();
                assert!(
                    !scrubbed.contains(window),
                    "{scrubbed} still holds {window}"
                );
            }
        }
    }

    #[test]
    fn the_spellings_the_review_found_are_caught() {
        use base64::engine::general_purpose::STANDARD;
        let groups_of_seven: Vec<String> = KEY
            .as_bytes()
            .chunks(7)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        let echoes = [
            format!("auth: {}", STANDARD.encode(format!("Bearer {KEY}"))),
            format!("shifted: {}", STANDARD.encode(format!("x{KEY}"))),
            format!("shifted twice: {}", STANDARD.encode(format!("xy{KEY}"))),
            format!("grouped: {}", groups_of_seven.join(" ")),
            format!("dashed: {}", groups_of_seven.join("-")),
            format!("reversed: {}", KEY.chars().rev().collect::<String>()),
            format!(
                "escaped: {}",
                KEY.chars()
                    .map(|c| format!("\\u{:04x}", c as u32))
                    .collect::<String>()
            ),
            format!(
                "entities: {}",
                KEY.chars()
                    .map(|c| format!("&#{};", c as u32))
                    .collect::<String>()
            ),
            format!(
                "hex entities: {}",
                KEY.chars()
                    .map(|c| format!("&#x{:x};", c as u32))
                    .collect::<String>()
            ),
            format!(
                "utf-16: {}",
                KEY.encode_utf16()
                    .map(|u| format!("{u:04X}"))
                    .collect::<String>()
            ),
            format!(
                "utf-16le: {}",
                KEY.encode_utf16()
                    .flat_map(|u| u.to_le_bytes())
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            ),
        ];
        for echo in echoes {
            let scrubbed = scrub(&echo, KEY);
            assert!(
                scrubbed.contains(REDACTED) || scrubbed == WITHHELD,
                "{echo} -> {scrubbed}"
            );
            for view in [folded(&scrubbed), folded(&decoded(&scrubbed))] {
                assert!(
                    !spells_any(&view, &[folded(KEY)]),
                    "{echo} -> {scrubbed} still spells the key"
                );
            }
        }
    }

    #[test]
    fn ordinary_text_survives_and_is_shortened() {
        let text = "The model `text-embedding-3-small` does not exist";
        assert_eq!(scrub(text, KEY), text);
        let long = "x".repeat(1000);
        assert_eq!(scrub(&long, KEY).chars().count(), MAX_PROVIDER_TEXT + 1);
        assert_eq!(
            redact("ünïcödé sk-test-9f8e7d6c ok", KEY),
            "ünïcödé [REDACTED] ok"
        );
    }
}
