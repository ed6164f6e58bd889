//! `AuditService`: reads the audit trail. Admins read everything; other users read the events
//! of resources in their own namespace and those a service account did on their behalf; a
//! service account on its own reads the events it caused.

use tonic::{Request, Response, Status};

use super::{ApiContext, caller_of, convert, paging};
use crate::{
    domain::{
        audit::{AuditEvent, caller_label},
        caller::Caller,
        validate::{self, MAX_ENDPOINT_LEN},
    },
    pb::v1::{self as pb, audit_service_server::AuditService},
    store::{AuditFilter, Visibility},
};

pub struct AuditApi(pub ApiContext);

fn to_pb(event: AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent {
        name: format!("auditEvents/{}", event.id),
        time: convert::timestamp(event.time),
        caller: event.caller,
        subject: event.subject.unwrap_or_default(),
        method: event.method,
        resource: event.resource,
        outcome: event.outcome,
        detail: event.detail,
    }
}

/// An optional filter string: empty means "no filter".
fn filter(field: &str, value: &str) -> Result<Option<String>, crate::domain::DomainError> {
    if value.is_empty() {
        return Ok(None);
    }
    validate::line(field, value, MAX_ENDPOINT_LEN, true).map(Some)
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let filter = AuditFilter {
            resource: filter("resource", request.resource.trim_end_matches('/'))?,
            caller: filter("caller", &request.caller)?,
            subject: filter("subject", &request.subject)?,
            // Callers who are not admins see only what concerns them (an acting service account
            // sees what its user sees).
            visible_to: match &caller {
                Caller::Admin => None,
                Caller::User(user) if user.is_admin => None,
                Caller::User(user) => Some(Visibility::User {
                    handle: user.handle.to_string(),
                }),
                Caller::ServiceAccount(_) => Some(Visibility::ServiceAccount {
                    label: caller_label(&caller),
                }),
            },
        };
        let (page, binding) = paging::start(&self.0.keys.paginator(), &caller, &request)?;
        let found = self.0.store.list_audit_events(&filter, &page).await?;
        let (events, next_page_token) = paging::finish(&self.0.keys.paginator(), found, &binding);
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: events.into_iter().map(to_pb).collect(),
            next_page_token,
        }))
    }
}
