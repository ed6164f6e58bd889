//! `SharingService`: proto <-> domain for shares. Only owners, co-owners and admins manage
//! shares; everyone else who can see the instance gets PERMISSION_DENIED, strangers NOT_FOUND.

use tonic::{Request, Response, Status};

use super::{ApiContext, caller_of, convert, instances::role_to_pb, paging};
use crate::{
    domain::{
        DomainError, access,
        audit::Audit,
        error::both,
        instance::Role,
        names::{InstanceName, ShareName, UserName},
        share::Share,
    },
    pb::v1::{self as pb, sharing_service_server::SharingService},
};

pub struct SharingApi(pub ApiContext);

fn to_pb(share: Share) -> pb::Share {
    pb::Share {
        name: share.name.to_string(),
        grantee: format!("users/{}", share.name.grantee),
        role: role_to_pb(share.role).into(),
        create_time: convert::timestamp(share.create_time),
        update_time: convert::timestamp(share.update_time),
        quota: convert::quota_to_pb(share.quota),
    }
}

fn role_from_pb(value: i32) -> Result<Role, DomainError> {
    match pb::Role::try_from(value) {
        Ok(pb::Role::Reader) => Ok(Role::Reader),
        Ok(pb::Role::Writer) => Ok(Role::Writer),
        Ok(pb::Role::Owner) => Ok(Role::Owner),
        Ok(pb::Role::Unspecified) | Err(_) => Err(DomainError::invalid(
            "role",
            "must be ROLE_READER, ROLE_WRITER or ROLE_OWNER",
        )),
    }
}

#[tonic::async_trait]
impl SharingService for SharingApi {
    async fn share_instance(
        &self,
        request: Request<pb::ShareInstanceRequest>,
    ) -> Result<Response<pb::Share>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let (instance, ((grantee, role), quota)) = both(
            InstanceName::parse("name", &request.name),
            both(
                both(
                    UserName::parse("grantee", &request.grantee),
                    role_from_pb(request.role),
                ),
                // Given: the new quota (`None` removes it); not given: kept as it is.
                request
                    .quota
                    .as_ref()
                    .map(|quota| convert::quota_from_pb("quota", quota))
                    .transpose(),
            ),
        )?;
        access::check_share_role(&caller, role)?;
        let share = self
            .0
            .store
            .share_instance(
                &Audit::new(&caller, "SharingService/ShareInstance"),
                &caller,
                &instance,
                &access::check_grantee(&caller, &instance, &grantee.0)?,
                role,
                quota.as_ref().map(Option::as_ref),
            )
            .await?;
        Ok(Response::new(to_pb(share)))
    }

    async fn get_share(
        &self,
        request: Request<pb::GetShareRequest>,
    ) -> Result<Response<pb::Share>, Status> {
        let caller = caller_of(&request)?;
        let share = ShareName::parse("name", &request.get_ref().name)?;
        let found = self.0.store.get_share(&caller, &share).await?;
        Ok(Response::new(to_pb(found)))
    }

    async fn unshare_instance(
        &self,
        request: Request<pb::UnshareInstanceRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = caller_of(&request)?;
        let share = ShareName::parse("name", &request.get_ref().name)?;
        self.0
            .store
            .unshare_instance(
                &Audit::new(&caller, "SharingService/UnshareInstance"),
                &caller,
                &share,
                request.get_ref().force,
            )
            .await?;
        Ok(Response::new(()))
    }

    async fn list_instance_shares(
        &self,
        request: Request<pb::ListInstanceSharesRequest>,
    ) -> Result<Response<pb::ListInstanceSharesResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let instance = InstanceName::parse("parent", &request.parent)?;
        let (page, binding) = paging::start(&self.0.keys.paginator(), &caller, &request)?;
        let found = self.0.store.list_shares(&caller, &instance, &page).await?;
        let (shares, next_page_token) = paging::finish(&self.0.keys.paginator(), found, &binding);
        Ok(Response::new(pb::ListInstanceSharesResponse {
            shares: shares.into_iter().map(to_pb).collect(),
            next_page_token,
        }))
    }
}
