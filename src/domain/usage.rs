//! The usage ledger: daily (UTC) totals of the uses of instances, per instance, subject (on
//! whose behalf) and caller (that user, or the service account acting), and who may read which
//! rows (see [`UsageVisibility`]).

use chrono::NaiveDate;

use super::{DomainError, names::InstanceName};

/// One day's use of one instance by one caller on behalf of one subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub day: NaiveDate,
    pub instance: String,
    pub subject: String,
    pub caller: String,
    pub requests: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub input_tokens: i64,
    pub input_tokens_estimated: i64,
}

/// Which rows a listing returns (every filter optional).
#[derive(Debug, Clone, Default)]
pub struct UsageFilter {
    pub instance: Option<InstanceName>,
    pub subject: Option<String>,
    pub caller: Option<String>,
    pub start_day: Option<NaiveDate>,
    pub end_day: Option<NaiveDate>,
}

/// The rows a caller may read: the admin every row; a user the rows of instances they own or
/// co-own, and the rows of calls made on their behalf; a service account on its own the rows
/// of calls it made.
#[derive(Debug, Clone)]
pub enum UsageVisibility {
    All,
    User { id: i64, handle: String },
    ServiceAccount { label: String },
}

/// A day given as `YYYY-MM-DD` under `field`; empty is none.
pub fn parse_day(field: &str, value: &str) -> Result<Option<NaiveDate>, DomainError> {
    if value.is_empty() {
        return Ok(None);
    }
    NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .map(Some)
        .map_err(|_| DomainError::invalid(field, "must be a day written YYYY-MM-DD"))
}

/// Refuses a range whose end is before its start.
pub fn check_range(start: Option<NaiveDate>, end: Option<NaiveDate>) -> Result<(), DomainError> {
    match (start, end) {
        (Some(start), Some(end)) if end < start => Err(DomainError::invalid(
            "end_day",
            format!("{end} is before start_day {start}"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_iso_dates_and_ranges_run_forward() {
        assert_eq!(
            parse_day("start_day", "2026-12-07").unwrap(),
            NaiveDate::from_ymd_opt(2026, 12, 7)
        );
        assert_eq!(parse_day("start_day", "").unwrap(), None);
        assert!(parse_day("start_day", "07.12.2026").is_err());
        assert!(parse_day("start_day", "2026-02-30").is_err());
        let day = |d| NaiveDate::from_ymd_opt(2026, 12, d);
        assert!(check_range(day(7), day(6)).is_err());
        assert!(check_range(day(6), day(6)).is_ok());
    }
}
