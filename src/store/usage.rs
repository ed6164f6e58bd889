//! Reading the usage ledger (`usage_daily`, kept with the audit events by `usage_events`): daily
//! totals in (day, instance, subject, caller) order, resuming after a cursor of those four, so a
//! page costs the same at any depth. The statement names only the filters in use; what a caller
//! may read is part of it ([`UsageVisibility`]).

use chrono::NaiveDate;
use sqlx::{Postgres, QueryBuilder};

use super::{
    Store,
    cursor::{self, Cursor},
    errors,
};
use crate::domain::{
    DomainError,
    pagination::{Page, PageRequest},
    usage::{UsageFilter, UsageRow, UsageVisibility},
};

/// Where a page of the ledger resumes: the last row's key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UsageKey {
    day: NaiveDate,
    instance: String,
    subject: String,
    caller: String,
}

impl Cursor for UsageKey {
    fn encode(&self) -> String {
        // Names hold no newline.
        format!(
            "{}\n{}\n{}\n{}",
            self.day, self.instance, self.subject, self.caller
        )
    }

    fn decode(text: &str) -> Option<Self> {
        let mut parts = text.split('\n');
        let key = Self {
            day: NaiveDate::parse_from_str(parts.next()?, "%Y-%m-%d").ok()?,
            instance: parts.next()?.to_owned(),
            subject: parts.next()?.to_owned(),
            caller: parts.next()?.to_owned(),
        };
        parts.next().is_none().then_some(key)
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    day: NaiveDate,
    instance: String,
    subject: String,
    caller: String,
    requests: i64,
    succeeded: i64,
    failed: i64,
    input_tokens: i64,
    input_tokens_estimated: i64,
}

impl Store {
    /// Ledger rows matching `filter` that `visible` allows, after the page's cursor.
    pub async fn list_usage(
        &self,
        filter: &UsageFilter,
        visible: &UsageVisibility,
        page: &PageRequest,
    ) -> Result<Page<UsageRow>, DomainError> {
        let after = cursor::start_after::<UsageKey>(page)?;
        let mut query = QueryBuilder::<Postgres>::new(
            "SELECT day, instance, subject, caller, requests, succeeded, failed, input_tokens, \
             input_tokens_estimated FROM usage_daily WHERE true",
        );
        if let Some(after) = after {
            query
                .push(" AND (day, instance, subject, caller) > (")
                .push_bind(after.day)
                .push(", ")
                .push_bind(after.instance)
                .push(", ")
                .push_bind(after.subject)
                .push(", ")
                .push_bind(after.caller)
                .push(")");
        }
        if let Some(instance) = &filter.instance {
            query
                .push(" AND instance = ")
                .push_bind(instance.to_string());
        }
        if let Some(subject) = &filter.subject {
            query.push(" AND subject = ").push_bind(subject.clone());
        }
        if let Some(caller) = &filter.caller {
            query.push(" AND caller = ").push_bind(caller.clone());
        }
        if let Some(start) = filter.start_day {
            query.push(" AND day >= ").push_bind(start);
        }
        if let Some(end) = filter.end_day {
            query.push(" AND day <= ").push_bind(end);
        }
        match visible {
            UsageVisibility::All => {}
            UsageVisibility::User { id, handle } => {
                // Their instances, those they co-own (as shares say now), and their own calls.
                query
                    .push(" AND (instance_owner = ")
                    .push_bind(handle.clone())
                    .push(" OR subject = ")
                    .push_bind(format!("users/{handle}"))
                    .push(
                        " OR instance IN (SELECT 'users/' || o.handle || '/instances/' || i.handle \
                         FROM shares s JOIN instances i ON i.id = s.instance_id \
                         JOIN users o ON o.id = i.owner_id \
                         WHERE s.role = 'owner' AND s.grantee_id = ",
                    )
                    .push_bind(*id)
                    .push("))");
            }
            UsageVisibility::ServiceAccount { label } => {
                query.push(" AND caller = ").push_bind(label.clone());
            }
        }
        query
            .push(" ORDER BY day, instance, subject, caller LIMIT ")
            .push_bind(cursor::fetch_limit(page));
        let rows = query
            .build_query_as::<Row>()
            .fetch_all(&self.pool)
            .await
            .map_err(errors::db)?;
        let found = rows
            .into_iter()
            .map(|row| UsageRow {
                day: row.day,
                instance: row.instance,
                subject: row.subject,
                caller: row.caller,
                requests: row.requests,
                succeeded: row.succeeded,
                failed: row.failed,
                input_tokens: row.input_tokens,
                input_tokens_estimated: row.input_tokens_estimated,
            })
            .collect();
        Ok(cursor::page_of(found, page, |row: &UsageRow| UsageKey {
            day: row.day,
            instance: row.instance.clone(),
            subject: row.subject.clone(),
            caller: row.caller.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_and_nothing_else_does() {
        let key = UsageKey {
            day: NaiveDate::from_ymd_opt(2026, 12, 7).unwrap_or_default(),
            instance: "users/a/instances/x".to_owned(),
            subject: "users/b".to_owned(),
            caller: "serviceAccounts/c".to_owned(),
        };
        assert_eq!(UsageKey::decode(&key.encode()), Some(key));
        assert_eq!(UsageKey::decode("2026-12-07\na\nb"), None);
        assert_eq!(UsageKey::decode("2026-13-07\na\nb\nc"), None);
    }
}
