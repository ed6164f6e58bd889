//! The audit trail's vocabulary: who did what to which resource, and how it ended.

use chrono::{DateTime, Utc};

use super::caller::Caller;

/// Who is making a change, for whom, and through which method; handed to every store mutation,
/// which records it in the transaction of the change.
#[derive(Debug, Clone)]
pub struct Audit {
    /// The identity that authenticated (see [`caller_label`]).
    pub caller: String,
    /// The user a service account acted for (see [`subject_label`]).
    pub subject: Option<String>,
    pub method: &'static str,
}

impl Audit {
    pub fn new(caller: &Caller, method: &'static str) -> Self {
        Self {
            caller: caller_label(caller),
            subject: subject_label(caller),
            method,
        }
    }

    /// An operator command run outside the API: it is both the caller and the method.
    pub fn operator(command: &'static str) -> Self {
        Self {
            caller: command.to_owned(),
            subject: None,
            method: command,
        }
    }
}

/// Set by a handler that writes its own audit event for a call, whatever its outcome (Embed and
/// TestInstance record counts and latency), so that the refusal layer does not record the call
/// a second time. The refusal layer puts one in every write's request extensions.
#[derive(Debug, Clone, Default)]
pub struct SelfAudited(pub std::sync::Arc<std::sync::atomic::AtomicBool>);

impl SelfAudited {
    pub fn claim(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn claimed(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// How a caller appears in the trail: the identity that authenticated, so a service account
/// acting for a user is `serviceAccounts/{sa}` (the user is the [`subject_label`]).
pub fn caller_label(caller: &Caller) -> String {
    match caller {
        Caller::Admin => "admin".to_owned(),
        Caller::User(user) => match &user.via {
            None => format!("users/{}", user.handle),
            Some(account) => format!("serviceAccounts/{}", account.handle),
        },
        Caller::ServiceAccount(account) => format!("serviceAccounts/{}", account.handle),
    }
}

/// The user a service account acted for, as the trail's `subject` records it.
pub fn subject_label(caller: &Caller) -> Option<String> {
    match caller {
        Caller::User(user) if user.via.is_some() => Some(format!("users/{}", user.handle)),
        _ => None,
    }
}

/// The user a resource belongs to (`users/{owner}` itself or anything under it), if any.
pub fn resource_owner(resource: &str) -> Option<&str> {
    let rest = resource.strip_prefix("users/")?;
    let owner = rest.split('/').next()?;
    (!owner.is_empty()).then_some(owner)
}

/// One recorded event.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub id: i64,
    pub time: DateTime<Utc>,
    pub caller: String,
    pub subject: Option<String>,
    pub method: String,
    pub resource: String,
    pub outcome: String,
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_of_resources() {
        assert_eq!(resource_owner("users/alice/instances/x"), Some("alice"));
        assert_eq!(
            resource_owner("users/alice/instances/x/shares/bob"),
            Some("alice")
        );
        assert_eq!(resource_owner("users/alice"), Some("alice"));
        assert_eq!(resource_owner("apiStandards/openai"), None);
    }
}
