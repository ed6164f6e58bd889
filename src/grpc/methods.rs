//! The one table of method facts that every layer of the edge consults: for each gRPC path,
//! whether it is public (no token), whether it only reads, whether its handler resolves the token
//! inside its own query, its request type, and which request fields name the resource it acts on.
//!
//! The table is built from the descriptor set, not from a hand-kept list, so a method added to
//! the contract later is covered by every layer (authentication, `_system` guard, refusal audit)
//! without anyone remembering to add it. Deny by default: a method whose name does not start with
//! `Get` or `List` counts as a write.

use std::{collections::HashMap, sync::Arc};

use prost_reflect::{
    DescriptorPool, DynamicMessage, Kind, MessageDescriptor, ReflectMessage, Value,
};

use crate::domain::names;

/// Path prefixes that need no token: health checks and server reflection.
const PUBLIC_PREFIXES: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Read paths whose handler reads by token, in the same statement as the read (see
/// [`Credential::Token`](crate::domain::caller::Credential::Token)), after the edge has checked
/// the token. They are the hot paths: GetInstance answers from the read cache, keyed by token,
/// without a query of its own when nothing changed.
const RESOLVED_IN_QUERY: &[&str] = &[
    "/llmregistry.v1.LlmInstanceService/GetInstance",
    "/llmregistry.v1.ProjectService/GetProjectInstance",
];

/// Paths whose handler keeps answers in the read cache (Embed: what it needs of an instance) and
/// may answer from it when the edge checked the caller's token with the cache fresh for this
/// call, so the edge hands it the checked [`Credential`](crate::domain::caller::Credential) too.
const CACHED_WHEN_CHECKED_FRESH: &[&str] = &["/llmregistry.v1.EmbeddingService/Embed"];

/// Paths that call a provider: they wait on someone else's server, so they run in the provider
/// call pool (with a per-caller cap) instead of holding an admission slot meant for reads and
/// writes (see [`super::admission`]).
const CALLS_PROVIDER: &[&str] = &[
    "/llmregistry.v1.EmbeddingService/Embed",
    "/llmregistry.v1.EmbeddingService/TestInstance",
];

/// Method names that only read; everything else is treated as a write (deny by default).
pub fn is_read_only_method(method: &str) -> bool {
    method.starts_with("Get") || method.starts_with("List")
}

/// Which request fields name the resource a method acts on (AIP-131..135 place them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A top-level string field: `name` (Get, Delete, Share...) or `parent` (List).
    Field(String),
    /// The `name` of a top-level resource message (Update: `instance.name`).
    ResourceName(String),
    /// A Create: the resource to be is `parent` (if the request has one) plus the client-chosen
    /// id in `id_field`. The `name` inside the resource message is output-only there and
    /// ignored, since the handler ignores it too.
    NewChild {
        parent_field: Option<String>,
        id_field: String,
    },
    /// Nothing in the request names a resource.
    None,
}

/// What the edge knows of one of our methods.
#[derive(Debug)]
pub struct MethodFacts {
    /// `Service/Method`, as the audit trail records it.
    pub short_name: String,
    pub input: MessageDescriptor,
    pub read_only: bool,
    /// The handler reads with the caller's checked credential: by token in its own query
    /// ([`RESOLVED_IN_QUERY`]) or from the cache when it was checked fresh
    /// ([`CACHED_WHEN_CHECKED_FRESH`]).
    pub gets_credential: bool,
    /// The handler calls a provider ([`CALLS_PROVIDER`]).
    pub calls_provider: bool,
    pub target: Target,
}

impl MethodFacts {
    /// The resource a request asks to act on, as requested (not validated: it labels refusals).
    pub fn requested_target(&self, message: &DynamicMessage) -> String {
        match &self.target {
            Target::Field(field) => text_of(message, field),
            Target::ResourceName(field) => match message.get_field_by_name(field).as_deref() {
                Some(Value::Message(resource)) => text_of(resource, "name"),
                _ => String::new(),
            },
            Target::NewChild {
                parent_field,
                id_field,
            } => {
                let parent = parent_field
                    .as_deref()
                    .map(|field| text_of(message, field))
                    .unwrap_or_default();
                names::requested_child(&parent, id_field, &text_of(message, id_field))
            }
            Target::None => String::new(),
        }
    }

    /// Every name a `_system` write could aim at: the top-level `name` and `parent`, and the
    /// `name` of any top-level resource message (a Create's output-only `name` included, so
    /// that no field naming `users/_system` slips past the guard).
    pub fn names_targeting(message: &DynamicMessage) -> Vec<String> {
        let mut found = Vec::new();
        for field in message.descriptor().fields() {
            if field.is_list() || field.is_map() {
                continue;
            }
            match field.kind() {
                Kind::String if TARGET_FIELDS.contains(&field.name()) => {
                    if let Value::String(s) = message.get_field(&field).as_ref() {
                        found.push(s.clone());
                    }
                }
                Kind::Message(resource) if message.has_field(&field) => {
                    if let Some(name_field) = resource.get_field_by_name("name")
                        && let Some(inner) = message.get_field(&field).as_message()
                        && let Value::String(s) = inner.get_field(&name_field).as_ref()
                    {
                        found.push(s.clone());
                    }
                }
                _ => {}
            }
        }
        found
    }
}

/// A string field of a decoded message, or "" when it is missing or not a string.
fn text_of(message: &DynamicMessage, field: &str) -> String {
    match message.get_field_by_name(field).as_deref() {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}

/// Top-level string fields that name the resource a request acts on.
const TARGET_FIELDS: &[&str] = &["name", "parent"];

/// A request message already decoded by an outer layer, so that inner layers need not buffer and
/// decode the body again.
#[derive(Clone)]
pub struct DecodedRequest(pub DynamicMessage);

/// How the edge must treat a path.
#[derive(Debug, Clone)]
pub enum Method {
    /// Health and reflection: no token, no admission slot.
    Public,
    /// One of ours.
    Ours(Arc<MethodFacts>),
    /// Not in the contract; tonic answers UNIMPLEMENTED (after authentication).
    Unknown,
}

/// Every method of the contract, by gRPC path.
#[derive(Debug)]
pub struct MethodTable {
    by_path: HashMap<String, Arc<MethodFacts>>,
}

impl MethodTable {
    /// Reads the contract's descriptor set. Fails if a path listed in [`RESOLVED_IN_QUERY`] or
    /// [`CACHED_WHEN_CHECKED_FRESH`] is not in it, so a renamed method cannot silently lose its
    /// shortcut's fail-closed check.
    pub fn from_descriptor_set(descriptor_set: &[u8]) -> anyhow::Result<Self> {
        let pool = DescriptorPool::decode(descriptor_set)?;
        let mut by_path = HashMap::new();
        for service in pool.services() {
            for method in service.methods() {
                let path = format!("/{}/{}", service.full_name(), method.name());
                let facts = MethodFacts {
                    short_name: format!("{}/{}", service.name(), method.name()),
                    read_only: is_read_only_method(method.name()),
                    gets_credential: RESOLVED_IN_QUERY.contains(&path.as_str())
                        || CACHED_WHEN_CHECKED_FRESH.contains(&path.as_str()),
                    calls_provider: CALLS_PROVIDER.contains(&path.as_str()),
                    target: target_of(method.name(), &method.input()),
                    input: method.input(),
                };
                by_path.insert(path, Arc::new(facts));
            }
        }
        for path in RESOLVED_IN_QUERY
            .iter()
            .chain(CACHED_WHEN_CHECKED_FRESH)
            .chain(CALLS_PROVIDER)
        {
            anyhow::ensure!(
                by_path.contains_key(*path),
                "{path} is listed in the method table's facts but is not in the contract"
            );
        }
        Ok(Self { by_path })
    }

    /// What a request's path is, as the first layer of the edge looked it up and put in the
    /// request's extensions (see `trace`); looked up here only when it is not there.
    pub fn of<B>(&self, request: &http::Request<B>) -> Method {
        match request.extensions().get::<Method>() {
            Some(method) => method.clone(),
            None => self.lookup(request.uri().path()),
        }
    }

    pub fn lookup(&self, path: &str) -> Method {
        if PUBLIC_PREFIXES
            .iter()
            .any(|prefix| path.starts_with(prefix))
        {
            return Method::Public;
        }
        match self.by_path.get(path) {
            Some(facts) => Method::Ours(facts.clone()),
            None => Method::Unknown,
        }
    }
}

/// Where a request of method `name` names its target, from the shape of its input message.
fn target_of(name: &str, input: &MessageDescriptor) -> Target {
    let string_field = |field: &str| {
        input
            .get_field_by_name(field)
            .is_some_and(|f| matches!(f.kind(), Kind::String) && !f.is_list())
    };
    if name.starts_with("Create") {
        let id_field = input
            .fields()
            .find(|f| f.name().ends_with("_id") && matches!(f.kind(), Kind::String));
        if let Some(id_field) = id_field {
            return Target::NewChild {
                parent_field: string_field("parent").then(|| "parent".to_owned()),
                id_field: id_field.name().to_owned(),
            };
        }
    }
    if string_field("name") {
        return Target::Field("name".to_owned());
    }
    let resource = input.fields().find(|f| match f.kind() {
        Kind::Message(message) => message.get_field_by_name("name").is_some(),
        _ => false,
    });
    if let Some(resource) = resource {
        return Target::ResourceName(resource.name().to_owned());
    }
    if string_field("parent") {
        return Target::Field("parent".to_owned());
    }
    Target::None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> MethodTable {
        MethodTable::from_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET).unwrap()
    }

    #[test]
    fn every_method_has_its_facts() {
        let table = table();
        let Method::Ours(create) =
            table.lookup("/llmregistry.v1.LlmInstanceService/CreateInstance")
        else {
            panic!("CreateInstance is ours");
        };
        assert!(!create.read_only);
        assert_eq!(
            create.target,
            Target::NewChild {
                parent_field: Some("parent".to_owned()),
                id_field: "instance_id".to_owned()
            }
        );
        let Method::Ours(get) = table.lookup("/llmregistry.v1.LlmInstanceService/GetInstance")
        else {
            panic!("GetInstance is ours");
        };
        assert!(get.read_only && get.gets_credential);
        let Method::Ours(update) = table.lookup("/llmregistry.v1.ProjectService/UpdateProject")
        else {
            panic!("UpdateProject is ours");
        };
        assert_eq!(update.target, Target::ResourceName("project".to_owned()));
        let Method::Ours(create_user) = table.lookup("/llmregistry.v1.UserService/CreateUser")
        else {
            panic!("CreateUser is ours");
        };
        assert_eq!(
            create_user.target,
            Target::NewChild {
                parent_field: None,
                id_field: "user_id".to_owned()
            }
        );
        assert!(matches!(
            table.lookup("/grpc.health.v1.Health/Check"),
            Method::Public
        ));
        assert!(matches!(
            table.lookup("/llmregistry.v1.Nope/Nope"),
            Method::Unknown
        ));
    }
}
