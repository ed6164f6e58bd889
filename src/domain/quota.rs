//! Quotas: limits on how much of a shared instance is used, per grantee (on the share) or over
//! every caller (the instance's budget). A limit counts requests or input tokens in a calendar
//! window in UTC; a call reserves against every limit that applies before the provider is called
//! and is settled after (see `store::quotas` for the counting, `api::embeddings` for the order).
//!
//! Token limits are checked before the provider says how many tokens a call used, so a call
//! reserves an estimate ([`estimate_input_tokens`]) and is settled to the provider's count; a
//! provider that reports none (Gemini's embedContent) is charged the estimate, marked as such.

use std::time::Duration;

use super::{
    DomainError,
    error::{ExceededLimit, Violations},
};

/// What a limit counts. The numbers are the proto enum's and the database's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QuotaMetric {
    /// Calls that reached the provider.
    Requests,
    /// Input tokens of those calls, as the provider reported them (or estimated).
    InputTokens,
}

/// The calendar window (UTC) a limit counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QuotaPeriod {
    Minute,
    Hour,
    Day,
    Month,
}

/// Whose use a limit counts: one grantee's (the share's quota) or everyone's (the instance's
/// budget).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaScope {
    Share,
    Instance,
}

/// One limit: at most `limit` of `metric` per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaLimit {
    pub metric: QuotaMetric,
    pub period: QuotaPeriod,
    pub limit: i64,
}

/// A list of limits, all of which apply. Never empty: "no quota" is `None` where one is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    limits: Vec<QuotaLimit>,
}

/// The most a limit may be (a bound, so that sums cannot overflow).
pub const MAX_LIMIT: i64 = 1_000_000_000_000_000;

/// A rough count of input tokens, charged where a provider reports none and reserved before any
/// call: one token per 4 bytes of UTF-8 (rounded up), at least one per input. English text runs
/// at about 4 characters per token with OpenAI's and Gemini's tokenizers; other scripts take
/// more bytes per character, so the estimate errs high for them.
pub fn estimate_input_tokens(inputs: &[String]) -> i64 {
    inputs
        .iter()
        .map(|text| i64::try_from(text.len().div_ceil(4).max(1)).unwrap_or(i64::MAX))
        .fold(0i64, i64::saturating_add)
}

impl QuotaMetric {
    pub fn number(self) -> i16 {
        match self {
            Self::Requests => 1,
            Self::InputTokens => 2,
        }
    }

    pub fn from_number(number: i32) -> Option<Self> {
        match number {
            1 => Some(Self::Requests),
            2 => Some(Self::InputTokens),
            _ => None,
        }
    }

    /// The word stored and shown in error metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::InputTokens => "input_tokens",
        }
    }

    pub fn from_str(word: &str) -> Option<Self> {
        [Self::Requests, Self::InputTokens]
            .into_iter()
            .find(|metric| metric.as_str() == word)
    }
}

impl QuotaPeriod {
    pub fn number(self) -> i16 {
        match self {
            Self::Minute => 1,
            Self::Hour => 2,
            Self::Day => 3,
            Self::Month => 4,
        }
    }

    pub fn from_number(number: i32) -> Option<Self> {
        match number {
            1 => Some(Self::Minute),
            2 => Some(Self::Hour),
            3 => Some(Self::Day),
            4 => Some(Self::Month),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Month => "month",
        }
    }

    pub fn from_str(word: &str) -> Option<Self> {
        [Self::Minute, Self::Hour, Self::Day, Self::Month]
            .into_iter()
            .find(|period| period.as_str() == word)
    }
}

impl QuotaScope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Share => "share",
            Self::Instance => "instance",
        }
    }
}

/// A limit as a request gives it, before validation (numbers of the proto enums).
#[derive(Debug, Clone, Copy)]
pub struct RawLimit {
    pub metric: i32,
    pub period: i32,
    pub limit: i64,
}

impl Quota {
    /// Validates the limits a request gives under `field` (`quota`): each with a known metric and
    /// period and a limit in 1..=[`MAX_LIMIT`], no metric and period twice. No limits at all is
    /// `None`: no quota.
    pub fn parse(field: &str, raw: &[RawLimit]) -> Result<Option<Self>, DomainError> {
        let mut violations = Violations::default();
        let mut limits: Vec<QuotaLimit> = Vec::with_capacity(raw.len());
        for (index, given) in raw.iter().enumerate() {
            let at = format!("{field}.limits[{index}]");
            let metric = QuotaMetric::from_number(given.metric);
            let period = QuotaPeriod::from_number(given.period);
            if metric.is_none() {
                violations.add(
                    format!("{at}.metric"),
                    "must be QUOTA_METRIC_REQUESTS or QUOTA_METRIC_INPUT_TOKENS",
                );
            }
            if period.is_none() {
                violations.add(
                    format!("{at}.period"),
                    "must be QUOTA_PERIOD_MINUTE, QUOTA_PERIOD_HOUR, QUOTA_PERIOD_DAY or \
                     QUOTA_PERIOD_MONTH",
                );
            }
            if !(1..=MAX_LIMIT).contains(&given.limit) {
                violations.add(
                    format!("{at}.limit"),
                    format!("must be between 1 and {MAX_LIMIT}"),
                );
            }
            if let (Some(metric), Some(period)) = (metric, period) {
                if limits
                    .iter()
                    .any(|seen| seen.metric == metric && seen.period == period)
                {
                    violations.add(
                        at,
                        format!(
                            "a second limit of {} per {}; give each metric and period once",
                            metric.as_str(),
                            period.as_str()
                        ),
                    );
                } else {
                    limits.push(QuotaLimit {
                        metric,
                        period,
                        limit: given.limit,
                    });
                }
            }
        }
        violations.finish()?;
        Ok(Self::new(limits))
    }

    /// A quota of `limits` (already valid), in key order; `None` if there are none.
    pub fn new(mut limits: Vec<QuotaLimit>) -> Option<Self> {
        limits.sort_by_key(|limit| (limit.metric, limit.period));
        (!limits.is_empty()).then_some(Self { limits })
    }

    pub fn limits(&self) -> &[QuotaLimit] {
        &self.limits
    }
}

/// A call refused because a limit would be passed: which, and when its window resets.
#[derive(Debug, Clone)]
pub struct QuotaExceeded {
    pub scope: QuotaScope,
    pub limit: QuotaLimit,
    pub retry_after: Duration,
}

impl QuotaExceeded {
    /// The refusal of a call of `instance`: QUOTA_EXCEEDED naming the limit (never anyone's
    /// usage), retry when its window resets.
    pub fn into_error(self, instance: &impl std::fmt::Display) -> DomainError {
        DomainError::QuotaExceeded {
            message: self.message(instance),
            limit: ExceededLimit {
                scope: self.scope.as_str(),
                metric: self.limit.metric.as_str(),
                period: self.limit.period.as_str(),
                limit: self.limit.limit,
            },
            retry_after: self.retry_after,
        }
    }

    fn message(&self, instance: &impl std::fmt::Display) -> String {
        let whose = match self.scope {
            QuotaScope::Share => "your share's quota",
            QuotaScope::Instance => "the instance's budget",
        };
        format!(
            "{instance}: this call would pass {whose} of {} {} per {} (UTC); it resets in {} s",
            self.limit.limit,
            self.limit.metric.as_str().replace('_', " "),
            self.limit.period.as_str(),
            self.retry_after.as_secs().max(1)
        )
    }
}

/// The grantee key of an instance's budget among the counters (user ids start at 1).
pub const INSTANCE_BUDGET: i64 = 0;

/// One counter a call reserves against: a limit of the instance's budget
/// ([`INSTANCE_BUDGET`]) or of a grantee's share quota, and what the call takes from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub grantee: i64,
    pub limit: QuotaLimit,
    pub amount: i64,
}

impl Claim {
    pub fn scope(&self) -> QuotaScope {
        if self.grantee == INSTANCE_BUDGET {
            QuotaScope::Instance
        } else {
            QuotaScope::Share
        }
    }
}

/// The counters one call of an instance reserves against: every limit of the instance's budget
/// and, when the call is made on behalf of a grantee with a quota, of that share. Requests take
/// one, input tokens the estimate. In the order counters are locked (grantee, metric, period).
pub fn claims(
    budget: Option<&Quota>,
    share: Option<(i64, &Quota)>,
    estimated_tokens: i64,
) -> Vec<Claim> {
    let amount = |limit: &QuotaLimit| match limit.metric {
        QuotaMetric::Requests => 1,
        QuotaMetric::InputTokens => estimated_tokens,
    };
    let mut claims: Vec<Claim> = budget
        .into_iter()
        .flat_map(|quota| quota.limits())
        .map(|limit| Claim {
            grantee: INSTANCE_BUDGET,
            limit: *limit,
            amount: amount(limit),
        })
        .collect();
    if let Some((grantee, quota)) = share {
        claims.extend(quota.limits().iter().map(|limit| Claim {
            grantee,
            limit: *limit,
            amount: amount(limit),
        }));
    }
    claims.sort_by_key(|claim| (claim.grantee, claim.limit.metric, claim.limit.period));
    claims
}

/// A call's reservation, held until its use is recorded: the claims and the windows (as the
/// database keyed them) they were taken in.
#[derive(Debug, Clone)]
pub struct Reservation<W> {
    pub instance: i64,
    pub claims: Vec<Claim>,
    pub windows: Vec<W>,
}

/// How a finished call is charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// It never reached the provider: nothing is charged, the reservation is released.
    Nothing,
    /// It reached the provider: one request, and these input tokens.
    Reached { input_tokens: i64 },
}

/// One counter's correction when a reservation is settled.
#[derive(Debug, Clone)]
pub struct CounterDelta<W> {
    pub instance: i64,
    pub grantee: i64,
    pub limit: QuotaLimit,
    pub window: W,
    pub delta: i64,
}

impl<W: Clone> Reservation<W> {
    /// What each counter's reservation was off by, once the call is charged `charge`.
    pub fn settle(&self, charge: Charge) -> Vec<CounterDelta<W>> {
        self.claims
            .iter()
            .zip(&self.windows)
            .filter_map(|(claim, window)| {
                let charged = match (charge, claim.limit.metric) {
                    (Charge::Nothing, _) => 0,
                    (Charge::Reached { .. }, QuotaMetric::Requests) => 1,
                    (Charge::Reached { input_tokens }, QuotaMetric::InputTokens) => input_tokens,
                };
                let delta = charged - claim.amount;
                (delta != 0).then(|| CounterDelta {
                    instance: self.instance,
                    grantee: claim.grantee,
                    limit: claim.limit,
                    window: window.clone(),
                    delta,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(metric: i32, period: i32, limit: i64) -> RawLimit {
        RawLimit {
            metric,
            period,
            limit,
        }
    }

    #[test]
    fn limits_are_validated_field_by_field() {
        let DomainError::InvalidArgument(violations) =
            Quota::parse("quota", &[raw(0, 1, 10), raw(1, 9, 0), raw(2, 4, 5)]).unwrap_err()
        else {
            panic!("not INVALID_ARGUMENT");
        };
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "quota.limits[0].metric",
                "quota.limits[1].period",
                "quota.limits[1].limit"
            ]
        );
        let twice = Quota::parse("quota", &[raw(1, 1, 10), raw(1, 1, 20)]).unwrap_err();
        assert!(
            matches!(twice, DomainError::InvalidArgument(v) if v[0].field == "quota.limits[1]")
        );
        assert_eq!(Quota::parse("quota", &[]).unwrap(), None);
        let quota = Quota::parse("quota", &[raw(2, 4, 1000), raw(1, 1, 10)])
            .unwrap()
            .unwrap();
        // Key order, whatever the request's order: the order counters are locked in.
        assert_eq!(quota.limits()[0].metric, QuotaMetric::Requests);
    }

    #[test]
    fn claims_come_in_lock_order_and_settle_to_the_charge() {
        let budget = Quota::parse("quota", &[raw(2, 4, 1000), raw(1, 1, 10)])
            .unwrap()
            .unwrap();
        let share = Quota::parse("quota", &[raw(1, 3, 5)]).unwrap().unwrap();
        let claims = claims(Some(&budget), Some((7, &share)), 40);
        let keys: Vec<(i64, i16, i16, i64)> = claims
            .iter()
            .map(|c| {
                (
                    c.grantee,
                    c.limit.metric.number(),
                    c.limit.period.number(),
                    c.amount,
                )
            })
            .collect();
        assert_eq!(keys, [(0, 1, 1, 1), (0, 2, 4, 40), (7, 1, 3, 1)]);
        let reservation = Reservation {
            instance: 3,
            claims,
            windows: vec!["w1", "w2", "w3"],
        };
        let reported: Vec<i64> = reservation
            .settle(Charge::Reached { input_tokens: 25 })
            .iter()
            .map(|d| d.delta)
            .collect();
        assert_eq!(reported, [-15], "only the token counter was off");
        let released: Vec<i64> = reservation
            .settle(Charge::Nothing)
            .iter()
            .map(|d| d.delta)
            .collect();
        assert_eq!(released, [-1, -40, -1]);
    }

    #[test]
    fn the_estimate_is_a_token_per_four_bytes_and_one_at_least() {
        let inputs = ["abcd".to_owned(), "abcde".to_owned(), String::new()];
        assert_eq!(estimate_input_tokens(&inputs), 1 + 2 + 1);
    }
}
