//! `ProjectService`: proto <-> domain for projects. Projects are private to their owner and the
//! admin; each is bound to one instance that its owner can use.

use tonic::{Request, Response, Status};

use super::{
    ApiContext, caller_of, convert, credential_of, instances, paging, parsed_for, required,
};
use crate::{
    domain::{
        DomainError, access,
        audit::Audit,
        caller::Caller,
        error::{PreconditionReason, both},
        names::{Handle, InstanceName, ProjectName, UserKey, UserName},
        project::{Project, ProjectBinding},
        validate,
    },
    pb::v1::{self as pb, project_service_server::ProjectService},
};

pub struct ProjectsApi(pub ApiContext);

const UPDATABLE: &[&str] = &["description", "instance"];

fn to_pb(project: Project) -> pb::Project {
    let etag = project.etag();
    pb::Project {
        name: project.name.to_string(),
        description: project.description,
        instance: project
            .instance
            .map(|instance| instance.to_string())
            .unwrap_or_default(),
        detach_reason: project
            .detached
            .as_ref()
            .map(|d| d.reason.clone())
            .unwrap_or_default(),
        detach_time: project.detached.and_then(|d| convert::timestamp(d.time)),
        create_time: convert::timestamp(project.create_time),
        update_time: convert::timestamp(project.update_time),
        etag,
    }
}

/// An instance reference in a project: full name, `owner/handle`, or a bare handle meaning the
/// caller's own (the admin, who has none, means the project owner's).
fn instance_reference(
    caller: &Caller,
    project_owner: &UserKey,
    value: &str,
) -> Result<InstanceName, DomainError> {
    if value.is_empty() {
        return Err(DomainError::invalid("project.instance", "is required"));
    }
    let namespace = caller.namespace().unwrap_or_else(|| project_owner.clone());
    InstanceName::parse_reference("project.instance", value, Some(&namespace))
}

#[tonic::async_trait]
impl ProjectService for ProjectsApi {
    async fn create_project(
        &self,
        request: Request<pb::CreateProjectRequest>,
    ) -> Result<Response<pb::Project>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let parent = UserName::parse("parent", &request.parent)?;
        access::check_namespace_write(&caller, &parent.0)?;
        let (handle, (description, instance)) = both(
            Handle::parse("project_id", &request.project_id),
            required(request.project.as_ref(), "project").and_then(|project| {
                both(
                    validate::description("project.description", &project.description),
                    instance_reference(&caller, &parent.0, &project.instance),
                )
            }),
        )?;
        let name = ProjectName::new(parent.0, handle);
        let created = self
            .0
            .store
            .create_project(
                &Audit::new(&caller, "ProjectService/CreateProject"),
                &name,
                &description,
                &instance,
            )
            .await?;
        Ok(Response::new(to_pb(created)))
    }

    async fn get_project(
        &self,
        request: Request<pb::GetProjectRequest>,
    ) -> Result<Response<pb::Project>, Status> {
        let caller = caller_of(&request)?;
        let name = ProjectName::parse("name", &request.get_ref().name)?;
        access::check_private_read(&caller, &name.owner, &name)?;
        let project = self
            .0
            .store
            .find_project(&name)
            .await?
            .ok_or_else(|| access::hidden(&name))?;
        Ok(Response::new(to_pb(project)))
    }

    async fn list_projects(
        &self,
        request: Request<pb::ListProjectsRequest>,
    ) -> Result<Response<pb::ListProjectsResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let parent = UserName::parse("parent", &request.parent)?;
        access::check_private_read(&caller, &parent.0, &parent)?;
        let (page, binding) = paging::start(&self.0.keys.paginator(), &caller, &request)?;
        let found = self.0.store.list_projects(&parent, &page).await?;
        let (projects, next_page_token) = paging::finish(&self.0.keys.paginator(), found, &binding);
        Ok(Response::new(pb::ListProjectsResponse {
            projects: projects.into_iter().map(to_pb).collect(),
            next_page_token,
        }))
    }

    async fn update_project(
        &self,
        request: Request<pb::UpdateProjectRequest>,
    ) -> Result<Response<pb::Project>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let project = required(request.project, "project")?;
        let name = ProjectName::parse("project.name", &project.name)?;
        access::check_namespace_write(&caller, &name.owner)?;
        let mask = convert::update_mask(request.update_mask.as_ref(), UPDATABLE, &[])?;
        let description = mask
            .touches("description", !project.description.is_empty())
            .then(|| validate::description("project.description", &project.description))
            .transpose()?;
        let instance = mask
            .touches("instance", !project.instance.is_empty())
            .then(|| instance_reference(&caller, &name.owner, &project.instance))
            .transpose()?;
        let updated = self
            .0
            .store
            .update_project(
                &Audit::new(&caller, "ProjectService/UpdateProject"),
                &name,
                &project.etag,
                |current| {
                    Ok((
                        description.unwrap_or_else(|| current.description.clone()),
                        instance.or_else(|| current.instance.clone()),
                    ))
                },
            )
            .await?;
        Ok(Response::new(to_pb(updated)))
    }

    async fn delete_project(
        &self,
        request: Request<pb::DeleteProjectRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let name = ProjectName::parse("name", &request.name)?;
        access::check_namespace_write(&caller, &name.owner)?;
        self.0
            .store
            .delete_project(
                &Audit::new(&caller, "ProjectService/DeleteProject"),
                &name,
                &request.etag,
            )
            .await?;
        Ok(Response::new(()))
    }

    async fn get_project_instance(
        &self,
        request: Request<pb::GetProjectInstanceRequest>,
    ) -> Result<Response<pb::Instance>, Status> {
        let credential = credential_of(&request)?;
        let name = parsed_for(
            &self.0.store,
            &credential,
            ProjectName::parse("name", &request.get_ref().name),
        )
        .await?;
        // One statement resolves the token, the project and its instance (see
        // the method table's `resolved_in_query`); whether the caller may see the project is decided here,
        // and a project the caller may not see is NOT_FOUND exactly like a missing one.
        let (caller, found) = self
            .0
            .store
            .find_project_instance_as(&credential, &name)
            .await?;
        tracing::Span::current().record("caller", caller.label());
        access::check_private_read(&caller, &name.owner, &name)?;
        // The caller is the project's owner (who can use the bound instance) or an admin.
        match found.ok_or_else(|| access::hidden(&name))? {
            ProjectBinding::Bound(Some(instance)) => Ok(Response::new(instances::to_pb(instance))),
            ProjectBinding::Bound(None) => Err(DomainError::Internal(format!(
                "{name} is bound to an instance its owner cannot see"
            ))
            .into()),
            ProjectBinding::Detached(detachment) => Err(DomainError::FailedPrecondition {
                reason: PreconditionReason::InstanceRevoked,
                message: format!(
                    "{name} has no instance: {}; its owner must bind it to an instance again",
                    detachment.reason
                ),
            }
            .into()),
        }
    }
}
