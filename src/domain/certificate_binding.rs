//! What a service account's token may be bound to, and how a presented client certificate is
//! compared with it: never as text. A binding is one of
//!
//! - a subject distinguished name in RFC 4514 form (`CN=llm-gateway, O=Platform`), compared
//!   attribute by attribute (type and value, in order) with the certificate's parsed subject,
//!   so that a single CN of `llm-gateway,O=Platform` is not `CN=llm-gateway, O=Platform`;
//! - `sha256:` and the certificate's SHA-256 fingerprint in hex (colons allowed);
//! - `uri:` and a URI among the certificate's subject alternative names (a SPIFFE ID such as
//!   `uri:spiffe://example.org/ns/llm/sa/gateway`, as service meshes issue).

use std::fmt;

/// One attribute of a distinguished name: its type as a dotted OID, and its value.
pub type Attribute = (String, String);

/// A verified client certificate as the comparison needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedCertificate {
    /// The subject's attributes in the certificate's order.
    pub subject: Vec<Attribute>,
    pub sha256: [u8; 32],
    /// Its URI subject alternative names.
    pub uris: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateBinding {
    Subject(Vec<Attribute>),
    Sha256([u8; 32]),
    SanUri(String),
}

/// Attribute type names accepted in a subject, with their OIDs.
const NAMES: &[(&str, &str)] = &[
    ("CN", "2.5.4.3"),
    ("SERIALNUMBER", "2.5.4.5"),
    ("C", "2.5.4.6"),
    ("L", "2.5.4.7"),
    ("ST", "2.5.4.8"),
    ("STREET", "2.5.4.9"),
    ("O", "2.5.4.10"),
    ("OU", "2.5.4.11"),
    ("DC", "0.9.2342.19200300.100.1.25"),
    ("UID", "0.9.2342.19200300.100.1.1"),
    ("EMAILADDRESS", "1.2.840.113549.1.9.1"),
];

impl CertificateBinding {
    /// Reads a binding as an operator writes it; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        if let Some(hex) = trimmed.strip_prefix("sha256:") {
            let digits: String = hex.chars().filter(|c| *c != ':').collect();
            let mut fingerprint = [0u8; 32];
            if digits.len() != 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err("a sha256: binding is 64 hex digits (colons allowed)".to_owned());
            }
            for (index, byte) in fingerprint.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&digits[index * 2..index * 2 + 2], 16)
                    .map_err(|_| "a sha256: binding is 64 hex digits".to_owned())?;
            }
            return Ok(Self::Sha256(fingerprint));
        }
        if let Some(uri) = trimmed.strip_prefix("uri:") {
            let parsed = url::Url::parse(uri)
                .map_err(|e| format!("a uri: binding needs an absolute URI ({e})"))?;
            return Ok(Self::SanUri(parsed.as_str().to_owned()));
        }
        // Not trimmed at the end: a trailing space may be escaped (`CN=a\ `).
        parse_subject(text.trim_start()).map(Self::Subject)
    }

    /// Whether `certificate` is the one this binding names.
    pub fn matches(&self, certificate: &PresentedCertificate) -> bool {
        match self {
            Self::Subject(attributes) => *attributes == certificate.subject,
            Self::Sha256(fingerprint) => {
                subtle::ConstantTimeEq::ct_eq(&fingerprint[..], &certificate.sha256[..]).into()
            }
            Self::SanUri(uri) => certificate
                .uris
                .iter()
                .any(|presented| url::Url::parse(presented).is_ok_and(|p| p.as_str() == uri)),
        }
    }
}

/// The canonical text, as stored and shown: `CN=a,O=b`, `sha256:…`, `uri:…`.
impl fmt::Display for CertificateBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Subject(attributes) => {
                for (index, (oid, value)) in attributes.iter().enumerate() {
                    if index > 0 {
                        f.write_str(",")?;
                    }
                    let name = NAMES
                        .iter()
                        .find(|(_, known)| known == oid)
                        .map_or(oid.as_str(), |(name, _)| name);
                    write!(f, "{name}={}", escape(value))?;
                }
                Ok(())
            }
            Self::Sha256(fingerprint) => {
                f.write_str("sha256:")?;
                fingerprint.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
            Self::SanUri(uri) => write!(f, "uri:{uri}"),
        }
    }
}

/// An RFC 4514 distinguished name: attributes separated by unescaped `,` (or `+`), each
/// `type=value` with `\,`-style and `\XX` escapes (UTF-8 bytes); spaces around them are not
/// part of a value unless escaped.
fn parse_subject(text: &str) -> Result<Vec<Attribute>, String> {
    let mut attributes = Vec::new();
    for part in split_unescaped(text) {
        let part = part.trim_start();
        if part.trim_end().is_empty() {
            continue;
        }
        let (name, value) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not type=value"))?;
        let name = name.trim();
        let oid = if name.bytes().all(|b| b.is_ascii_digit() || b == b'.') && name.contains('.') {
            name.to_owned()
        } else {
            NAMES
                .iter()
                .find(|(known, _)| known.eq_ignore_ascii_case(name))
                .map(|(_, oid)| (*oid).to_owned())
                .ok_or_else(|| {
                    format!(
                        "{name:?} is not an attribute type this service knows (CN, O, OU, C, L, \
                         ST, STREET, DC, UID, SERIALNUMBER, EMAILADDRESS, or a dotted OID)"
                    )
                })?
        };
        let value = unescape(value.trim_start())?;
        if value.is_empty() {
            return Err(format!("{name} has no value"));
        }
        attributes.push((oid, value));
    }
    if attributes.is_empty() {
        return Err("the subject names no attribute".to_owned());
    }
    Ok(attributes)
}

/// The parts of `text` between unescaped `,` and `+`.
fn split_unescaped(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (index, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            ',' | '+' => {
                parts.push(&text[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// A value with its escapes undone; trailing spaces that were not escaped are dropped.
fn unescape(value: &str) -> Result<String, String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut kept = 0;
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'\\' {
            let next = *bytes
                .get(index + 1)
                .ok_or("a subject ends with a lone backslash")?;
            let pair = bytes.get(index + 1..index + 3);
            match pair.filter(|pair| pair.iter().all(u8::is_ascii_hexdigit)) {
                Some(pair) => {
                    let hex = std::str::from_utf8(pair).map_err(|e| e.to_string())?;
                    out.push(u8::from_str_radix(hex, 16).map_err(|e| e.to_string())?);
                    index += 3;
                }
                None => {
                    out.push(next);
                    index += 2;
                }
            }
            kept = out.len();
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    while out.len() > kept && out.last().is_some_and(u8::is_ascii_whitespace) {
        out.pop();
    }
    String::from_utf8(out).map_err(|_| "an escaped value is not UTF-8".to_owned())
}

/// A value as RFC 4514 writes it.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (index, c) in value.chars().enumerate() {
        let edge_space = c == ' ' && (index == 0 || index + 1 == value.chars().count());
        if matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || edge_space
            || (index == 0 && c == '#')
        {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presented(subject: &[(&str, &str)]) -> PresentedCertificate {
        PresentedCertificate {
            subject: subject
                .iter()
                .map(|(oid, value)| ((*oid).to_owned(), (*value).to_owned()))
                .collect(),
            sha256: [7; 32],
            uris: vec!["spiffe://example.org/ns/llm/sa/gateway".to_owned()],
        }
    }

    #[test]
    fn subjects_are_compared_as_parsed_attributes_never_as_text() {
        let binding = CertificateBinding::parse(" CN=llm-gateway, O=Platform ").unwrap();
        assert_eq!(binding.to_string(), "CN=llm-gateway,O=Platform");
        let genuine = presented(&[("2.5.4.3", "llm-gateway"), ("2.5.4.10", "Platform")]);
        assert!(binding.matches(&genuine));
        // The review's crafted certificate: one CN whose value holds the comma.
        let crafted = presented(&[("2.5.4.3", "llm-gateway,O=Platform")]);
        assert!(!binding.matches(&crafted));
        // And a binding that means that single CN says so with an escape.
        let escaped = CertificateBinding::parse(r"CN=llm-gateway\,O=Platform").unwrap();
        assert!(escaped.matches(&crafted) && !escaped.matches(&genuine));
        assert_eq!(
            CertificateBinding::parse(&escaped.to_string()).unwrap(),
            escaped
        );
        // Order matters; types are case-blind.
        let reversed = presented(&[("2.5.4.10", "Platform"), ("2.5.4.3", "llm-gateway")]);
        assert!(!binding.matches(&reversed));
        assert_eq!(
            CertificateBinding::parse("cn=llm-gateway,o=Platform").unwrap(),
            binding
        );
        assert!(CertificateBinding::parse("XX=1").is_err());
        // Hex escapes are UTF-8 bytes; escaped spaces stay, others around a value go.
        let accented = CertificateBinding::parse(r"CN=caf\C3\A9 , O=\ Platform\ ").unwrap();
        assert!(accented.matches(&presented(&[
            ("2.5.4.3", "café"),
            ("2.5.4.10", " Platform ")
        ])));
        assert_eq!(
            CertificateBinding::parse(&accented.to_string()).unwrap(),
            accented
        );
        assert!(CertificateBinding::parse("CN").is_err());
    }

    #[test]
    fn fingerprints_and_san_uris_bind_too() {
        let certificate = presented(&[("2.5.4.3", "x")]);
        let hex = "07".repeat(32);
        let colons = vec!["07"; 32].join(":");
        for text in [format!("sha256:{hex}"), format!("sha256:{colons}")] {
            let binding = CertificateBinding::parse(&text).unwrap();
            assert!(binding.matches(&certificate));
            assert_eq!(binding.to_string(), format!("sha256:{hex}"));
        }
        assert!(
            !CertificateBinding::parse(&format!("sha256:{}", "08".repeat(32)))
                .unwrap()
                .matches(&certificate)
        );
        assert!(CertificateBinding::parse("sha256:abc").is_err());
        let uri = CertificateBinding::parse("uri:spiffe://example.org/ns/llm/sa/gateway").unwrap();
        assert!(uri.matches(&certificate));
        let other = CertificateBinding::parse("uri:spiffe://example.org/ns/llm/sa/other").unwrap();
        assert!(!other.matches(&certificate));
    }
}
