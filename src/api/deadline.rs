//! The caller's deadline: gRPC sends it as the `grpc-timeout` header (an integer of at most
//! eight digits and a unit: H, M, S, m, u, n). Provider calls must end before it, and before the
//! server's own request timeout, so that the caller gets our answer (and the audit trail its
//! event) rather than a cancelled call.

use std::time::Duration;

use tonic::metadata::MetadataMap;

/// The time a call may take: the smaller of the caller's `grpc-timeout` and `server_limit`.
pub fn budget(metadata: &MetadataMap, server_limit: Duration) -> Duration {
    metadata
        .get("grpc-timeout")
        .and_then(|value| value.to_str().ok())
        .and_then(parse)
        .map_or(server_limit, |caller| caller.min(server_limit))
}

/// A `grpc-timeout` value, or `None` when it is malformed (then the server's limit applies).
pub fn parse(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_in_every_unit() {
        assert_eq!(parse("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("10u"), Some(Duration::from_micros(10)));
        assert_eq!(parse("10n"), Some(Duration::from_nanos(10)));
        assert_eq!(parse("S"), None);
        assert_eq!(parse("123456789S"), None);
        assert_eq!(parse("12x"), None);
    }
}
