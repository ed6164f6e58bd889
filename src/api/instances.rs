//! `LlmInstanceService`. The contract is final; the methods answer UNIMPLEMENTED (with ErrorInfo
//! reason NOT_IMPLEMENTED) until the instances-and-vault issue lands.

use tonic::{Request, Response, Status};

use crate::{
    domain::DomainError,
    pb::v1::{self as pb, llm_instance_service_server::LlmInstanceService},
};

pub struct InstancesApi;

fn not_yet<T>(method: &'static str) -> Result<Response<T>, Status> {
    Err(DomainError::Unimplemented(method).into())
}

#[tonic::async_trait]
impl LlmInstanceService for InstancesApi {
    async fn create_instance(
        &self,
        _: Request<pb::CreateInstanceRequest>,
    ) -> Result<Response<pb::Instance>, Status> {
        not_yet("CreateInstance")
    }

    async fn create_instance_from_definition(
        &self,
        _: Request<pb::CreateInstanceFromDefinitionRequest>,
    ) -> Result<Response<pb::Instance>, Status> {
        not_yet("CreateInstanceFromDefinition")
    }

    async fn get_instance(
        &self,
        _: Request<pb::GetInstanceRequest>,
    ) -> Result<Response<pb::Instance>, Status> {
        not_yet("GetInstance")
    }

    async fn list_instances(
        &self,
        _: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        not_yet("ListInstances")
    }

    async fn update_instance(
        &self,
        _: Request<pb::UpdateInstanceRequest>,
    ) -> Result<Response<pb::Instance>, Status> {
        not_yet("UpdateInstance")
    }

    async fn delete_instance(
        &self,
        _: Request<pb::DeleteInstanceRequest>,
    ) -> Result<Response<()>, Status> {
        not_yet("DeleteInstance")
    }
}
