//! One batch sent to a provider: the request with the key in the standard's header, bounded
//! retries with backoff (honouring `Retry-After`) inside the call's deadline, a bounded read of
//! the reply, and the mapping of every way it can fail to a [`DomainError`]. Provider text in an
//! error is scrubbed of the key here, before anything else can see it.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode, header};
use rand::Rng as _;
use tokio::time::Instant;

use super::{
    budget::{ReplyBudget, ReplyRoom},
    egress, scrub,
};
use crate::domain::{DomainError, error::ProviderFailure};

/// The longest pause between two attempts, whatever the backoff or `Retry-After` say.
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// How retries go (`PROVIDER_MAX_ATTEMPTS`, `PROVIDER_BACKOFF_BASE_MS`).
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub attempt_timeout: Duration,
    pub max_reply_bytes: usize,
}

/// The request of one batch, ready to send as many times as retries allow.
pub struct Exchange<'a> {
    pub client: &'a reqwest::Client,
    /// The wire protocol, for the retry metric.
    pub protocol_label: &'static str,
    /// W3C trace headers of the call (a child `traceparent`), possibly empty.
    pub trace_headers: &'a http::HeaderMap,
    pub url: &'a url::Url,
    pub auth_header: &'a HeaderName,
    /// Marked sensitive: never printed by `Debug`, never indexed by HPACK.
    pub auth_value: &'a HeaderValue,
    pub body: Bytes,
    /// Used to scrub provider text.
    pub key: &'a str,
    pub deadline: Instant,
    pub policy: RetryPolicy,
    /// The process-wide budget the reply's bytes are counted against.
    pub budget: &'a ReplyBudget,
}

/// A successful exchange: the reply body, the budget room it holds (until both are dropped),
/// and how many retries it took.
pub struct Answer {
    pub body: Bytes,
    pub room: ReplyRoom,
    pub retries: u32,
}

/// What one attempt came to.
enum Attempt {
    Done(Bytes, ReplyRoom),
    /// Worth another attempt (after at least `retry_after`, if the provider said so).
    Retry {
        error: DomainError,
        retry_after: Option<Duration>,
    },
    Fatal(DomainError),
}

impl Exchange<'_> {
    pub async fn run(&self) -> Result<Answer, DomainError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (error, retry_after) = match self.attempt().await {
                Attempt::Done(body, room) => {
                    return Ok(Answer {
                        body,
                        room,
                        retries: attempt - 1,
                    });
                }
                Attempt::Fatal(error) => return Err(error),
                Attempt::Retry { error, retry_after } => (error, retry_after),
            };
            if attempt >= self.policy.max_attempts {
                return Err(error);
            }
            let pause = backoff(self.policy.backoff_base, attempt)
                .max(retry_after.unwrap_or_default())
                .min(MAX_PAUSE);
            // Never retry into the deadline: the caller gets the last real answer instead.
            if Instant::now() + pause >= self.deadline {
                return Err(error);
            }
            tracing::debug!(
                attempt,
                pause_ms = pause.as_millis() as u64,
                "provider call will be retried"
            );
            crate::metrics::metrics()
                .provider_retries
                .get_or_create(&crate::metrics::ProtocolLabel {
                    protocol: self.protocol_label,
                })
                .inc();
            tokio::time::sleep(pause).await;
        }
    }

    async fn attempt(&self) -> Attempt {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Attempt::Fatal(deadline_exceeded());
        }
        // When the deadline is nearer than a whole attempt, a timeout means the deadline passed.
        let bounded_by_deadline = left <= self.policy.attempt_timeout;
        let timeout = self.policy.attempt_timeout.min(left);
        let sent = self
            .client
            .post(self.url.clone())
            .timeout(timeout)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .header(self.auth_header.clone(), self.auth_value.clone())
            .headers(self.trace_headers.clone())
            .body(self.body.clone())
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => return self.transport_failure(&error, timeout, bounded_by_deadline),
        };
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let (body, room) = match self
            .read_bounded(response, timeout, bounded_by_deadline)
            .await
        {
            Ok(read) => read,
            Err(failure) => return failure,
        };
        if status.is_success() {
            return Attempt::Done(body, room);
        }
        self.status_failure(status, &body, retry_after)
    }

    /// Reads the reply, refusing one larger than the policy allows without reading it all, and
    /// counting its bytes against the process's budget before they are kept.
    async fn read_bounded(
        &self,
        mut response: reqwest::Response,
        timeout: Duration,
        bounded_by_deadline: bool,
    ) -> Result<(Bytes, ReplyRoom), Attempt> {
        let limit = self.policy.max_reply_bytes;
        let too_large = || {
            Attempt::Fatal(failure(
                ProviderFailure::BadReply,
                format!("the provider's reply is larger than {limit} bytes"),
            ))
        };
        if response
            .content_length()
            .is_some_and(|length| length > limit as u64)
        {
            return Err(too_large());
        }
        let mut room = ReplyRoom::default();
        let mut body = Vec::new();
        if let Some(length) = response.content_length() {
            // Announced and within the limit: room for all of it at once, one allocation.
            let length = usize::try_from(length).unwrap_or(limit);
            self.budget
                .grow(&mut room, length, self.deadline)
                .await
                .map_err(Attempt::Fatal)?;
            body.reserve_exact(length);
        }
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let total = body.len() + chunk.len();
                    if total > limit {
                        return Err(too_large());
                    }
                    self.budget
                        .grow(&mut room, total, self.deadline)
                        .await
                        .map_err(Attempt::Fatal)?;
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok((Bytes::from(body), room)),
                Err(error) => {
                    return Err(self.transport_failure(&error, timeout, bounded_by_deadline));
                }
            }
        }
    }

    fn transport_failure(
        &self,
        error: &reqwest::Error,
        timeout: Duration,
        bounded_by_deadline: bool,
    ) -> Attempt {
        if let Some(refusal) = egress::refusal_in(error) {
            return Attempt::Fatal(failure(ProviderFailure::EgressRefused, refusal.to_string()));
        }
        if Instant::now() >= self.deadline || (error.is_timeout() && bounded_by_deadline) {
            return Attempt::Fatal(deadline_exceeded());
        }
        // reqwest's own text names the URL and the cause, never a header; scrubbed anyway.
        let what = if error.is_timeout() {
            format!(
                "the provider did not answer within {} ms",
                timeout.as_millis()
            )
        } else if error.is_connect() {
            format!(
                "could not connect to the provider: {}",
                scrub::scrub(&root_cause(error), self.key)
            )
        } else {
            format!(
                "the connection to the provider failed: {}",
                scrub::scrub(&root_cause(error), self.key)
            )
        };
        Attempt::Retry {
            error: failure(ProviderFailure::Unavailable, what),
            retry_after: None,
        }
    }

    fn status_failure(
        &self,
        status: StatusCode,
        body: &[u8],
        retry_after: Option<Duration>,
    ) -> Attempt {
        let text = super::wire::error_text(body)
            .map(|text| scrub::scrub(&text, self.key))
            .unwrap_or_default();
        let code = status.as_u16();
        let said = |what: &str| {
            if text.trim().is_empty() {
                format!("{what} ({code})")
            } else {
                format!("{what} ({code}): {text}")
            }
        };
        match code {
            300..=399 => Attempt::Fatal(failure(
                ProviderFailure::Redirected,
                format!(
                    "the provider answered {code} (a redirect); redirects are not followed, \
                     since they would carry the key elsewhere: check the instance's endpoint"
                ),
            )),
            // A fixed message: a provider that refuses a key is the likeliest to quote it back,
            // so only its error code (an identifier, and scrubbed) is kept.
            401 | 403 => Attempt::Fatal(failure(
                ProviderFailure::RejectedKey,
                match super::wire::error_code(body).filter(|provider_code| {
                    scrub::redact(provider_code, self.key) == *provider_code
                }) {
                    Some(provider_code) => format!(
                        "the provider refused this instance's key ({code}, {provider_code})"
                    ),
                    None => format!("the provider refused this instance's key ({code})"),
                },
            )),
            404 => Attempt::Fatal(failure(
                ProviderFailure::NotFound,
                said("the provider has no such endpoint or model; check the instance"),
            )),
            429 => Attempt::Retry {
                error: DomainError::Provider {
                    failure: ProviderFailure::RateLimited,
                    message: said("the provider is rate limiting this key"),
                    retry_after: Some(retry_after.unwrap_or(Duration::from_secs(1))),
                },
                retry_after,
            },
            408 | 500 | 502 | 503 | 504 => Attempt::Retry {
                error: failure(
                    ProviderFailure::Unavailable,
                    said("the provider is unavailable"),
                ),
                retry_after,
            },
            400..=499 => Attempt::Fatal(failure(
                ProviderFailure::RejectedRequest,
                said("the provider refused the request"),
            )),
            _ => Attempt::Fatal(failure(
                ProviderFailure::Unavailable,
                said("the provider failed"),
            )),
        }
    }
}

fn failure(failure: ProviderFailure, message: String) -> DomainError {
    DomainError::Provider {
        failure,
        message,
        retry_after: None,
    }
}

pub fn deadline_exceeded() -> DomainError {
    failure(
        ProviderFailure::DeadlineExceeded,
        "the call's deadline passed before the provider answered".to_owned(),
    )
}

/// The innermost cause of a transport error (e.g. "Connection refused"), which says more than
/// reqwest's outer "error sending request".
fn root_cause(error: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

/// Exponential backoff with jitter: a random pause between half and all of
/// `base * 2^(attempt-1)`.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let ceiling = base.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    let floor = ceiling / 2;
    let spread = ceiling.saturating_sub(floor).as_millis() as u64;
    floor + Duration::from_millis(rand::rng().random_range(0..=spread))
}

/// `Retry-After` in seconds or as an HTTP date (RFC 9110 §10.2.3).
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_jittered() {
        let base = Duration::from_millis(100);
        for attempt in 1..6 {
            let pause = backoff(base, attempt);
            let ceiling = base * (1 << (attempt - 1));
            assert!(pause >= ceiling / 2 && pause <= ceiling, "{pause:?}");
        }
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let mut headers = http::HeaderMap::new();
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        let date = httpdate::fmt_http_date(later);
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from_str(&date).unwrap_or(HeaderValue::from_static("")),
        );
        let parsed = retry_after(&headers).unwrap_or_default();
        assert!(parsed > Duration::from_secs(100) && parsed <= Duration::from_secs(120));
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }
}
