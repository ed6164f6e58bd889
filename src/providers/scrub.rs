//! Makes provider text safe to return and log: a provider may echo the key it was sent (some
//! quote it whole, some a prefix, some base64 or URL-encoded in a debugging field). Every run of
//! eight or more characters that also occurs in the key, or in a common encoding of it, is
//! replaced, then the text is shortened.

use base64::Engine as _;

/// How much provider text an error carries at most, in characters.
pub const MAX_PROVIDER_TEXT: usize = 300;

/// Runs shorter than this are not treated as part of the key (so that ordinary words survive).
const WINDOW: usize = 8;

const REDACTED: &str = "[REDACTED]";

/// `text` with every trace of `key` replaced, shortened to [`MAX_PROVIDER_TEXT`] characters.
pub fn scrub(text: &str, key: &str) -> String {
    let scrubbed = redact(text, key);
    shorten(&scrubbed, MAX_PROVIDER_TEXT)
}

/// `text` with every trace of `key` replaced, not shortened.
pub fn redact(text: &str, key: &str) -> String {
    if key.is_empty() || text.is_empty() {
        return text.to_owned();
    }
    let forms = encodings(key);
    let bytes = text.as_bytes();
    let mut covered = vec![false; bytes.len()];
    for form in &forms {
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

/// The key as a provider might echo it: as is, in base64 (standard and URL-safe, padded or
/// not), hex, percent-encoded, and escaped in JSON.
fn encodings(key: &str) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let raw = key.as_bytes();
    let mut forms = vec![
        key.to_owned(),
        STANDARD.encode(raw),
        STANDARD_NO_PAD.encode(raw),
        URL_SAFE.encode(raw),
        URL_SAFE_NO_PAD.encode(raw),
        hex(raw, b"0123456789abcdef"),
        hex(raw, b"0123456789ABCDEF"),
        url::form_urlencoded::byte_serialize(raw).collect(),
    ];
    if let Ok(json) = serde_json::to_string(key) {
        forms.push(json.trim_matches('"').to_owned());
    }
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
