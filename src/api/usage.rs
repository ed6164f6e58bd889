//! `UsageService`: reads the usage ledger. The admin reads every row; a user the rows of the
//! instances they own or co-own and of calls made on their behalf (an acting service account
//! reads what its user reads); a service account on its own the rows of its own calls. An
//! `instance` filter naming one the caller may not see is NOT_FOUND, as everywhere, unless it
//! is in the caller's own namespace (the history of a deleted instance stays readable there).

use tonic::{Request, Response, Status};

use super::{ApiContext, caller_of, paging};
use crate::{
    domain::{
        DomainError, access,
        audit::caller_label,
        caller::Caller,
        error::both,
        names::InstanceName,
        usage::{UsageFilter, UsageRow, UsageVisibility, check_range, parse_day},
        validate::{self, MAX_ENDPOINT_LEN},
    },
    pb::v1::{self as pb, usage_service_server::UsageService},
};

pub struct UsageApi(pub ApiContext);

fn to_pb(row: UsageRow) -> pb::UsageRow {
    pb::UsageRow {
        day: row.day.to_string(),
        instance: row.instance,
        subject: row.subject,
        caller: row.caller,
        requests: row.requests,
        succeeded: row.succeeded,
        failed: row.failed,
        input_tokens: row.input_tokens,
        input_tokens_estimated: row.input_tokens_estimated,
    }
}

/// An optional label filter (`users/{u}`, `serviceAccounts/{sa}`, `admin`): empty is none.
fn label(field: &str, value: &str) -> Result<Option<String>, DomainError> {
    if value.is_empty() {
        return Ok(None);
    }
    validate::line(field, value, MAX_ENDPOINT_LEN, true).map(Some)
}

/// Which rows `caller` may read.
fn visibility(caller: &Caller) -> UsageVisibility {
    match caller {
        _ if caller.is_admin() => UsageVisibility::All,
        Caller::User(user) => UsageVisibility::User {
            id: user.id,
            handle: user.handle.to_string(),
        },
        Caller::Admin | Caller::ServiceAccount(_) => UsageVisibility::ServiceAccount {
            label: caller_label(caller),
        },
    }
}

#[tonic::async_trait]
impl UsageService for UsageApi {
    async fn list_usage(
        &self,
        request: Request<pb::ListUsageRequest>,
    ) -> Result<Response<pb::ListUsageResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let namespace = caller.namespace();
        let instance = (!request.instance.is_empty())
            .then(|| {
                InstanceName::parse_reference("instance", &request.instance, namespace.as_ref())
            })
            .transpose();
        let ((instance, (subject, caller_filter)), (start_day, end_day)) = both(
            both(
                instance,
                both(
                    label("subject", &request.subject),
                    label("caller", &request.caller),
                ),
            ),
            both(
                parse_day("start_day", &request.start_day),
                parse_day("end_day", &request.end_day),
            ),
        )?;
        check_range(start_day, end_day)?;
        if let Some(name) = &instance
            && !caller.is_admin()
            && !caller.owns(&name.owner)
        {
            let seen = self.0.store.find_instance(&caller, name).await?;
            if seen.is_none() {
                return Err(access::hidden(name).into());
            }
        }
        let filter = UsageFilter {
            instance,
            subject,
            caller: caller_filter,
            start_day,
            end_day,
        };
        let (page, binding) = paging::start(&self.0.keys.paginator(), &caller, &request)?;
        let found = self
            .0
            .store
            .list_usage(&filter, &visibility(&caller), &page)
            .await?;
        let (rows, next_page_token) = paging::finish(&self.0.keys.paginator(), found, &binding);
        Ok(Response::new(pb::ListUsageResponse {
            rows: rows.into_iter().map(to_pb).collect(),
            next_page_token,
        }))
    }
}
