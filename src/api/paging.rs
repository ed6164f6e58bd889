//! Page tokens for the List methods: the binding of a request (what its token is valid for) is
//! built here, by one function, from the request itself: its method, every field but
//! `page_size` and `page_token` (the message re-encoded with those two cleared, so a field added
//! to a request later is covered without anyone remembering it), and the caller, so that a token
//! is not transferable between callers whose lists differ.

use prost::Message;

use crate::{
    domain::{
        DomainError,
        caller::Caller,
        pagination::{Page, PageRequest, Paginator},
    },
    pb::v1 as pb,
};

/// A List request: its page fields, and its other fields for the binding.
pub trait ListRequest: Message + Clone {
    const METHOD: &'static str;
    fn page_size(&self) -> i32;
    fn page_token(&self) -> &str;
    fn clear_page_fields(&mut self);
}

macro_rules! list_requests {
    ($($request:ty => $method:literal),* $(,)?) => {
        $(impl ListRequest for $request {
            const METHOD: &'static str = $method;
            fn page_size(&self) -> i32 {
                self.page_size
            }
            fn page_token(&self) -> &str {
                &self.page_token
            }
            fn clear_page_fields(&mut self) {
                self.page_size = 0;
                self.page_token.clear();
            }
        })*
    };
}

list_requests!(
    pb::ListApiStandardsRequest => "ListApiStandards",
    pb::ListAuditEventsRequest => "ListAuditEvents",
    pb::ListDefinitionsRequest => "ListDefinitions",
    pb::ListInstancesRequest => "ListInstances",
    pb::ListInstanceSharesRequest => "ListInstanceShares",
    pb::ListProjectsRequest => "ListProjects",
    pb::ListServiceAccountsRequest => "ListServiceAccounts",
    pb::ListUsersRequest => "ListUsers",
    pb::ListUsageRequest => "ListUsage",
);

/// What a page token of `request` by `caller` is bound to.
#[derive(Debug, Clone)]
pub struct Binding(Vec<u8>);

impl Binding {
    pub fn of<R: ListRequest>(caller: &Caller, request: &R) -> Self {
        let mut rest = request.clone();
        rest.clear_page_fields();
        let mut bytes = Vec::new();
        for part in [R::METHOD.as_bytes(), caller.label().as_bytes()] {
            bytes.extend_from_slice(&(part.len() as u64).to_be_bytes());
            bytes.extend_from_slice(part);
        }
        bytes.extend_from_slice(&rest.encode_to_vec());
        Self(bytes)
    }
}

/// Reads the page a List request asks for, and what its tokens are bound to.
pub fn start<R: ListRequest>(
    paginator: &Paginator,
    caller: &Caller,
    request: &R,
) -> Result<(PageRequest, Binding), DomainError> {
    let binding = Binding::of(caller, request);
    let page = paginator.start(request.page_size(), request.page_token(), &binding.0)?;
    Ok((page, binding))
}

/// The page's items and its next page token.
pub fn finish<T>(paginator: &Paginator, page: Page<T>, binding: &Binding) -> (Vec<T>, String) {
    paginator.finish(page, &binding.0)
}
