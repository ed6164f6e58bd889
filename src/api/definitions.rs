//! `LlmDefinitionService`: proto <-> domain for definitions.

use tonic::{Request, Response, Status};

use super::{
    ApiContext, caller_of,
    convert::{self, ServiceFields},
    paging, required,
};
use crate::{
    domain::{
        access,
        audit::Audit,
        definition::{Definition, SERVICE_FIELDS, ServiceSpec},
        error::both,
        names::{DefinitionName, Handle, UserName},
    },
    pb::v1::{self as pb, llm_definition_service_server::LlmDefinitionService},
};

pub struct DefinitionsApi(pub ApiContext);

fn to_pb(definition: Definition) -> pb::Definition {
    let etag = definition.etag();
    pb::Definition {
        name: definition.name.to_string(),
        endpoint: definition.spec.endpoint,
        api_standard: definition.spec.api_standard.to_string(),
        model: definition.spec.model,
        dimensions: definition.spec.dimensions,
        context_limit: definition.spec.context_limit,
        description: definition.spec.description,
        create_time: convert::timestamp(definition.create_time),
        update_time: convert::timestamp(definition.update_time),
        etag,
    }
}

#[tonic::async_trait]
impl LlmDefinitionService for DefinitionsApi {
    async fn create_definition(
        &self,
        request: Request<pb::CreateDefinitionRequest>,
    ) -> Result<Response<pb::Definition>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let parent = UserName::parse("parent", &request.parent)?;
        access::check_namespace_write(&caller, &parent.0)?;
        let (handle, spec) = both(
            Handle::parse("definition_id", &request.definition_id),
            required(request.definition.as_ref(), "definition").and_then(|definition| {
                ServiceSpec::parse("definition", &ServiceFields::from(definition).raw())
            }),
        )?;
        let name = DefinitionName::new(parent.0, handle);
        let created = self
            .0
            .store
            .create_definition(
                &Audit::new(&caller, "LlmDefinitionService/CreateDefinition"),
                &name,
                &spec,
            )
            .await?;
        Ok(Response::new(to_pb(created)))
    }

    async fn get_definition(
        &self,
        request: Request<pb::GetDefinitionRequest>,
    ) -> Result<Response<pb::Definition>, Status> {
        let caller = caller_of(&request)?;
        let name = DefinitionName::parse("name", &request.get_ref().name)?;
        access::check_definitions_read(&caller, &name.owner, &name)?;
        let definition = self
            .0
            .store
            .find_definition(&name)
            .await?
            .ok_or_else(|| access::hidden(&name))?;
        Ok(Response::new(to_pb(definition)))
    }

    async fn list_definitions(
        &self,
        request: Request<pb::ListDefinitionsRequest>,
    ) -> Result<Response<pb::ListDefinitionsResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let parent = UserName::parse("parent", &request.parent)?;
        access::check_definitions_read(&caller, &parent.0, &parent)?;
        let (page, binding) = paging::start(&self.0.keys.paginator(), &caller, &request)?;
        let found = self.0.store.list_definitions(&parent, &page).await?;
        let (definitions, next_page_token) =
            paging::finish(&self.0.keys.paginator(), found, &binding);
        Ok(Response::new(pb::ListDefinitionsResponse {
            definitions: definitions.into_iter().map(to_pb).collect(),
            next_page_token,
        }))
    }

    async fn update_definition(
        &self,
        request: Request<pb::UpdateDefinitionRequest>,
    ) -> Result<Response<pb::Definition>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let definition = required(request.definition, "definition")?;
        let name = DefinitionName::parse("definition.name", &definition.name)?;
        access::check_namespace_write(&caller, &name.owner)?;
        let mask = convert::update_mask(request.update_mask.as_ref(), SERVICE_FIELDS, &[])?;
        let patch = ServiceFields::from(&definition).patch(&mask);
        let updated = self
            .0
            .store
            .update_definition(
                &Audit::new(&caller, "LlmDefinitionService/UpdateDefinition"),
                &name,
                &definition.etag,
                |current| patch.apply("definition", &current.spec),
            )
            .await?;
        Ok(Response::new(to_pb(updated)))
    }

    async fn delete_definition(
        &self,
        request: Request<pb::DeleteDefinitionRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let name = DefinitionName::parse("name", &request.name)?;
        access::check_namespace_write(&caller, &name.owner)?;
        self.0
            .store
            .delete_definition(
                &Audit::new(&caller, "LlmDefinitionService/DeleteDefinition"),
                &name,
                &request.etag,
            )
            .await?;
        Ok(Response::new(()))
    }
}
