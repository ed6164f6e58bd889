//! `ApiStandardService`: proto <-> domain for API standards. Reads for everyone, writes for admins.

use tonic::{Request, Response, Status};

use super::{ApiContext, caller_of, convert, paging, required};
use crate::{
    domain::{
        DomainError, access,
        api_standard::{ApiStandard, ApiStandardFields},
        audit::Audit,
        embedding::EmbeddingProtocol,
        error::both,
        names::{ApiStandardName, Handle},
    },
    pb::v1::{self as pb, api_standard_service_server::ApiStandardService},
};

pub struct ApiStandardsApi(pub ApiContext);

const UPDATABLE: &[&str] = &["description", "auth_header", "auth_scheme", "protocol"];

fn to_pb(standard: ApiStandard) -> pb::ApiStandard {
    let etag = standard.etag();
    pb::ApiStandard {
        name: ApiStandardName(standard.handle).to_string(),
        description: standard.fields.description,
        auth_header: standard.fields.auth_header,
        auth_scheme: standard.fields.auth_scheme,
        protocol: standard.fields.protocol.number(),
        create_time: convert::timestamp(standard.create_time),
        update_time: convert::timestamp(standard.update_time),
        etag,
    }
}

fn raw_fields(standard: &pb::ApiStandard) -> Result<ApiStandardFields, DomainError> {
    Ok(ApiStandardFields {
        description: standard.description.clone(),
        auth_header: standard.auth_header.clone(),
        auth_scheme: standard.auth_scheme.clone(),
        protocol: protocol_of(standard.protocol)?,
    })
}

/// The protocol a request names; a number outside the enum is the caller's mistake.
fn protocol_of(number: i32) -> Result<EmbeddingProtocol, DomainError> {
    EmbeddingProtocol::from_number(number).ok_or_else(|| {
        DomainError::invalid(
            "api_standard.protocol",
            format!("{number} is not an EmbeddingProtocol"),
        )
    })
}

#[tonic::async_trait]
impl ApiStandardService for ApiStandardsApi {
    async fn create_api_standard(
        &self,
        request: Request<pb::CreateApiStandardRequest>,
    ) -> Result<Response<pb::ApiStandard>, Status> {
        let caller = caller_of(&request)?;
        access::check_admin(&caller, "create API standards")?;
        let request = request.into_inner();
        let (handle, fields) = both(
            Handle::parse("api_standard_id", &request.api_standard_id),
            required(request.api_standard.as_ref(), "api_standard").and_then(|standard| {
                raw_fields(standard).and_then(|raw| ApiStandardFields::parse("api_standard", raw))
            }),
        )?;
        let created = self
            .0
            .store
            .create_api_standard(
                &Audit::new(&caller, "ApiStandardService/CreateApiStandard"),
                &ApiStandardName(handle),
                &fields,
            )
            .await?;
        Ok(Response::new(to_pb(created)))
    }

    async fn get_api_standard(
        &self,
        request: Request<pb::GetApiStandardRequest>,
    ) -> Result<Response<pb::ApiStandard>, Status> {
        caller_of(&request)?;
        let name = ApiStandardName::parse("name", &request.get_ref().name)?;
        Ok(Response::new(to_pb(
            self.0.store.get_api_standard(&name).await?,
        )))
    }

    async fn list_api_standards(
        &self,
        request: Request<pb::ListApiStandardsRequest>,
    ) -> Result<Response<pb::ListApiStandardsResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let (page, binding) = paging::start(&self.0.keys.paginator(), &caller, &request)?;
        let found = self.0.store.list_api_standards(&page).await?;
        let (standards, next_page_token) =
            paging::finish(&self.0.keys.paginator(), found, &binding);
        Ok(Response::new(pb::ListApiStandardsResponse {
            api_standards: standards.into_iter().map(to_pb).collect(),
            next_page_token,
        }))
    }

    async fn update_api_standard(
        &self,
        request: Request<pb::UpdateApiStandardRequest>,
    ) -> Result<Response<pb::ApiStandard>, Status> {
        let caller = caller_of(&request)?;
        access::check_admin(&caller, "update API standards")?;
        let request = request.into_inner();
        let standard = required(request.api_standard, "api_standard")?;
        let name = ApiStandardName::parse("api_standard.name", &standard.name)?;
        let mask = convert::update_mask(request.update_mask.as_ref(), UPDATABLE, &[])?;
        let updated = self
            .0
            .store
            .update_api_standard(
                &Audit::new(&caller, "ApiStandardService/UpdateApiStandard"),
                &name,
                &standard.etag,
                |current| {
                    let pick = |field: &str, new: &String, old: &String| {
                        if mask.touches(field, !new.is_empty()) {
                            new.clone()
                        } else {
                            old.clone()
                        }
                    };
                    let old = &current.fields;
                    ApiStandardFields::parse(
                        "api_standard",
                        ApiStandardFields {
                            description: pick(
                                "description",
                                &standard.description,
                                &old.description,
                            ),
                            auth_header: pick(
                                "auth_header",
                                &standard.auth_header,
                                &old.auth_header,
                            ),
                            auth_scheme: pick(
                                "auth_scheme",
                                &standard.auth_scheme,
                                &old.auth_scheme,
                            ),
                            protocol: if mask.touches("protocol", standard.protocol != 0) {
                                protocol_of(standard.protocol)?
                            } else {
                                old.protocol
                            },
                        },
                    )
                },
            )
            .await?;
        Ok(Response::new(to_pb(updated)))
    }

    async fn delete_api_standard(
        &self,
        request: Request<pb::DeleteApiStandardRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = caller_of(&request)?;
        access::check_admin(&caller, "delete API standards")?;
        let request = request.into_inner();
        let name = ApiStandardName::parse("name", &request.name)?;
        self.0
            .store
            .delete_api_standard(
                &Audit::new(&caller, "ApiStandardService/DeleteApiStandard"),
                &name,
                &request.etag,
            )
            .await?;
        Ok(Response::new(()))
    }
}
