//! `SharingService`. The contract is final; the methods answer UNIMPLEMENTED (with ErrorInfo
//! reason NOT_IMPLEMENTED) until the sharing issue lands.

use tonic::{Request, Response, Status};

use crate::{
    domain::DomainError,
    pb::v1::{self as pb, sharing_service_server::SharingService},
};

pub struct SharingApi;

fn not_yet<T>(method: &'static str) -> Result<Response<T>, Status> {
    Err(DomainError::Unimplemented(method).into())
}

#[tonic::async_trait]
impl SharingService for SharingApi {
    async fn share_instance(
        &self,
        _: Request<pb::ShareInstanceRequest>,
    ) -> Result<Response<pb::Share>, Status> {
        not_yet("ShareInstance")
    }

    async fn unshare_instance(
        &self,
        _: Request<pb::UnshareInstanceRequest>,
    ) -> Result<Response<()>, Status> {
        not_yet("UnshareInstance")
    }

    async fn list_instance_shares(
        &self,
        _: Request<pb::ListInstanceSharesRequest>,
    ) -> Result<Response<pb::ListInstanceSharesResponse>, Status> {
        not_yet("ListInstanceShares")
    }
}
