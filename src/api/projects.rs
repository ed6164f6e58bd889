//! `ProjectService`. The contract is final; the methods answer UNIMPLEMENTED (with ErrorInfo
//! reason NOT_IMPLEMENTED) until the projects issue lands.

use tonic::{Request, Response, Status};

use crate::{
    domain::DomainError,
    pb::v1::{self as pb, project_service_server::ProjectService},
};

pub struct ProjectsApi;

fn not_yet<T>(method: &'static str) -> Result<Response<T>, Status> {
    Err(DomainError::Unimplemented(method).into())
}

#[tonic::async_trait]
impl ProjectService for ProjectsApi {
    async fn create_project(
        &self,
        _: Request<pb::CreateProjectRequest>,
    ) -> Result<Response<pb::Project>, Status> {
        not_yet("CreateProject")
    }

    async fn get_project(
        &self,
        _: Request<pb::GetProjectRequest>,
    ) -> Result<Response<pb::Project>, Status> {
        not_yet("GetProject")
    }

    async fn list_projects(
        &self,
        _: Request<pb::ListProjectsRequest>,
    ) -> Result<Response<pb::ListProjectsResponse>, Status> {
        not_yet("ListProjects")
    }

    async fn update_project(
        &self,
        _: Request<pb::UpdateProjectRequest>,
    ) -> Result<Response<pb::Project>, Status> {
        not_yet("UpdateProject")
    }

    async fn delete_project(
        &self,
        _: Request<pb::DeleteProjectRequest>,
    ) -> Result<Response<()>, Status> {
        not_yet("DeleteProject")
    }

    async fn get_project_instance(
        &self,
        _: Request<pb::GetProjectInstanceRequest>,
    ) -> Result<Response<pb::Instance>, Status> {
        not_yet("GetProjectInstance")
    }
}
