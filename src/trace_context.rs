//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the `traceparent` and
//! `tracestate` a caller sends, the span id of our own work on its call, and the `traceparent`
//! our outgoing provider calls carry. A call without a valid `traceparent` starts a new trace.
//!
//! This is a leaf module (no tonic, no sqlx): the edge parses it into the request's extensions,
//! handlers pass it down, and the provider client writes the child header.

use std::fmt;

use rand::Rng as _;

/// The trace one call belongs to, and our span in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits, never all zeros.
    pub trace_id: String,
    /// Our span: the work this service does for the call (16 hex digits).
    pub span_id: String,
    /// The caller's span, when the call came with a `traceparent`.
    pub parent_span_id: Option<String>,
    /// The trace flags (bit 0: sampled), passed on unchanged.
    pub flags: u8,
    /// The caller's `tracestate`, passed on unchanged (bounded, printable ASCII only).
    pub tracestate: Option<String>,
}

/// Longest `tracestate` passed on (the spec allows 32 list members; 512 bytes is what it asks
/// vendors to propagate at least).
const MAX_TRACESTATE: usize = 512;

impl TraceContext {
    /// The context of a call whose headers carried `traceparent` (and `tracestate`); a missing
    /// or malformed `traceparent` starts a new trace (and drops `tracestate`, as the spec says).
    pub fn continue_or_start(traceparent: Option<&str>, tracestate: Option<&str>) -> Self {
        match traceparent.and_then(parse_traceparent) {
            Some((trace_id, parent, flags)) => Self {
                trace_id,
                span_id: random_hex::<8>(),
                parent_span_id: Some(parent),
                flags,
                tracestate: tracestate
                    .map(str::trim)
                    .filter(|state| {
                        !state.is_empty()
                            && state.len() <= MAX_TRACESTATE
                            && state.bytes().all(|b| (0x20..0x7f).contains(&b))
                    })
                    .map(str::to_owned),
            },
            None => Self {
                trace_id: random_hex::<16>(),
                span_id: random_hex::<8>(),
                parent_span_id: None,
                // Sampling is the caller's decision; a trace we start is marked sampled so that
                // downstream services record it.
                flags: 1,
                tracestate: None,
            },
        }
    }

    /// The `traceparent` of an outgoing request made as part of this call: same trace, our
    /// span as the parent.
    pub fn child_traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.span_id, self.flags)
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.trace_id)
    }
}

/// `version-traceid-parentid-flags`: version 00 exactly four fields; a higher version may
/// append fields (read the first four); version ff, uppercase hex, all-zero ids are invalid.
fn parse_traceparent(value: &str) -> Option<(String, String, u8)> {
    let value = value.trim();
    let mut fields = value.split('-');
    let version = fields.next()?;
    let trace_id = fields.next()?;
    let parent = fields.next()?;
    let flags = fields.next()?;
    let more = fields.next().is_some();
    let lower_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !lower_hex(version, 2) || version == "ff" || (version == "00" && more) {
        return None;
    }
    if !lower_hex(trace_id, 32) || trace_id.bytes().all(|b| b == b'0') {
        return None;
    }
    if !lower_hex(parent, 16) || parent.bytes().all(|b| b == b'0') {
        return None;
    }
    if !lower_hex(flags, 2) {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace_id.to_owned(), parent.to_owned(), flags))
}

/// `N` random bytes as 2N lowercase hex digits, never all zeros (one allocation: this runs
/// twice per call).
fn random_hex<const N: usize>() -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    loop {
        let bytes: [u8; N] = rand::rng().random();
        if bytes.iter().any(|b| *b != 0) {
            let mut hex = String::with_capacity(2 * N);
            for byte in bytes {
                hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
                hex.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
            }
            return hex;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_continued_with_a_new_span_of_ours() {
        let context = TraceContext::continue_or_start(Some(PARENT), Some("congo=t61rcWkgMzE"));
        assert_eq!(context.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(context.flags, 1);
        assert_eq!(context.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
        assert_eq!(context.span_id.len(), 16);
        assert_ne!(context.span_id, "00f067aa0ba902b7");
        assert_eq!(
            context.child_traceparent(),
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", context.span_id)
        );
    }

    #[test]
    fn a_missing_or_malformed_traceparent_starts_a_new_trace() {
        for bad in [
            None,
            Some(""),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"),
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
            Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            Some("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01"),
        ] {
            let context = TraceContext::continue_or_start(bad, Some("congo=t61rcWkgMzE"));
            assert_eq!(context.parent_span_id, None, "{bad:?}");
            assert_eq!(context.tracestate, None, "{bad:?}");
            assert_eq!(context.trace_id.len(), 32);
            assert_ne!(context.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        }
        // A future version with more fields is read by its first four.
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever";
        let context = TraceContext::continue_or_start(Some(future), None);
        assert_eq!(context.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn tracestate_with_control_characters_or_too_long_is_dropped() {
        let newline = TraceContext::continue_or_start(Some(PARENT), Some("a=b\r\nx: y"));
        assert_eq!(newline.tracestate, None);
        let long = "a=".to_owned() + &"b".repeat(600);
        let long = TraceContext::continue_or_start(Some(PARENT), Some(&long));
        assert_eq!(long.tracestate, None);
    }
}
