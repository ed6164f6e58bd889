//! `ServiceAccountService`: proto <-> domain for service accounts and their tokens. Managed by
//! administrators only; an account may read its own record.

use tonic::{Request, Response, Status};

use super::{ApiContext, caller_of, convert, paging, required};
use crate::{
    domain::{
        DomainError, access,
        audit::Audit,
        error::{Violations, both},
        names::Handle,
        service_account::{Permission, ServiceAccount, ServiceAccountFields, ServiceAccountName},
        token::IssuedToken,
    },
    pb::v1::{self as pb, service_account_service_server::ServiceAccountService},
};

pub struct ServiceAccountsApi(pub ApiContext);

const UPDATABLE: &[&str] = &[
    "display_name",
    "permissions",
    "act_for_users",
    "client_certificate_subject",
];
const OUTPUT_ONLY: &[&str] = &["name", "create_time", "update_time", "etag"];

fn permission_to_pb(permission: Permission) -> pb::ServiceAccountPermission {
    match permission {
        Permission::ActAsUser => pb::ServiceAccountPermission::ActAsUser,
        Permission::ReleaseCredentials => pb::ServiceAccountPermission::ReleaseCredentials,
    }
}

/// The permissions of a request, each a known value; unknown or unspecified ones are named.
fn permissions_from_pb(prefix: &str, values: &[i32]) -> Result<Vec<Permission>, DomainError> {
    let mut violations = Violations::default();
    let mut permissions = Vec::new();
    for (i, value) in values.iter().enumerate() {
        match pb::ServiceAccountPermission::try_from(*value) {
            Ok(pb::ServiceAccountPermission::ActAsUser) => permissions.push(Permission::ActAsUser),
            Ok(pb::ServiceAccountPermission::ReleaseCredentials) => {
                permissions.push(Permission::ReleaseCredentials)
            }
            _ => violations.add(
                format!("{prefix}.permissions[{i}]"),
                "must be ACT_AS_USER or RELEASE_CREDENTIALS",
            ),
        }
    }
    violations.finish()?;
    Ok(permissions)
}

fn to_pb(account: ServiceAccount) -> pb::ServiceAccount {
    let etag = account.etag();
    let fields = account.fields;
    pb::ServiceAccount {
        name: account.name.to_string(),
        display_name: fields.display_name,
        permissions: fields
            .permissions
            .into_iter()
            .map(|p| permission_to_pb(p).into())
            .collect(),
        act_for_users: fields
            .act_for_users
            .iter()
            .map(|handle| format!("users/{handle}"))
            .collect(),
        client_certificate_subject: fields.client_certificate_subject.unwrap_or_default(),
        create_time: convert::timestamp(account.create_time),
        update_time: convert::timestamp(account.update_time),
        etag,
    }
}

/// The fields of a request's account message, validated.
fn fields_of(
    prefix: &str,
    account: &pb::ServiceAccount,
) -> Result<ServiceAccountFields, DomainError> {
    let permissions = permissions_from_pb(prefix, &account.permissions)?;
    ServiceAccountFields::parse(
        prefix,
        &account.display_name,
        permissions,
        &account.act_for_users,
        &account.client_certificate_subject,
    )
}

#[tonic::async_trait]
impl ServiceAccountService for ServiceAccountsApi {
    async fn create_service_account(
        &self,
        request: Request<pb::CreateServiceAccountRequest>,
    ) -> Result<Response<pb::CreateServiceAccountResponse>, Status> {
        let caller = caller_of(&request)?;
        access::check_admin(&caller, "create service accounts")?;
        let request = request.into_inner();
        let (handle, fields) = both(
            Handle::parse("service_account_id", &request.service_account_id),
            required(request.service_account.as_ref(), "service_account")
                .and_then(|account| fields_of("service_account", account)),
        )?;
        let token = IssuedToken::generate_for_service_account();
        let account = self
            .0
            .store
            .create_service_account(
                &Audit::new(&caller, "ServiceAccountService/CreateServiceAccount"),
                &ServiceAccountName(handle),
                &fields,
                &token.hash(),
            )
            .await?;
        Ok(Response::new(pb::CreateServiceAccountResponse {
            service_account: Some(to_pb(account)),
            token: token.reveal().to_owned(),
        }))
    }

    async fn get_service_account(
        &self,
        request: Request<pb::GetServiceAccountRequest>,
    ) -> Result<Response<pb::ServiceAccount>, Status> {
        let caller = caller_of(&request)?;
        let name = ServiceAccountName::parse("name", &request.get_ref().name)?;
        access::check_service_account_read(&caller, &name)?;
        Ok(Response::new(to_pb(
            self.0.store.get_service_account(&name).await?,
        )))
    }

    async fn list_service_accounts(
        &self,
        request: Request<pb::ListServiceAccountsRequest>,
    ) -> Result<Response<pb::ListServiceAccountsResponse>, Status> {
        let caller = caller_of(&request)?;
        access::check_admin(&caller, "list service accounts")?;
        let request = request.into_inner();
        let (page, binding) = paging::start(&self.0.keys.paginator(), &caller, &request)?;
        let found = self.0.store.list_service_accounts(&page).await?;
        let (accounts, next_page_token) = paging::finish(&self.0.keys.paginator(), found, &binding);
        Ok(Response::new(pb::ListServiceAccountsResponse {
            service_accounts: accounts.into_iter().map(to_pb).collect(),
            next_page_token,
        }))
    }

    async fn update_service_account(
        &self,
        request: Request<pb::UpdateServiceAccountRequest>,
    ) -> Result<Response<pb::ServiceAccount>, Status> {
        let caller = caller_of(&request)?;
        access::check_admin(&caller, "update service accounts")?;
        let request = request.into_inner();
        let account = required(request.service_account, "service_account")?;
        let name = ServiceAccountName::parse("service_account.name", &account.name)?;
        let mask = convert::update_mask(request.update_mask.as_ref(), UPDATABLE, OUTPUT_ONLY)?;
        // Validated before the row is locked, so a malformed request changes nothing.
        let requested = fields_of("service_account", &account)?;
        let updated = self
            .0
            .store
            .update_service_account(
                &Audit::new(&caller, "ServiceAccountService/UpdateServiceAccount"),
                &name,
                &account.etag,
                |current| {
                    let current = &current.fields;
                    let pick = |field: &str, populated: bool| mask.touches(field, populated);
                    Ok(ServiceAccountFields {
                        display_name: if pick("display_name", !account.display_name.is_empty()) {
                            requested.display_name.clone()
                        } else {
                            current.display_name.clone()
                        },
                        permissions: if pick("permissions", !account.permissions.is_empty()) {
                            requested.permissions.clone()
                        } else {
                            current.permissions.clone()
                        },
                        act_for_users: if pick("act_for_users", !account.act_for_users.is_empty()) {
                            requested.act_for_users.clone()
                        } else {
                            current.act_for_users.clone()
                        },
                        client_certificate_subject: if pick(
                            "client_certificate_subject",
                            !account.client_certificate_subject.is_empty(),
                        ) {
                            requested.client_certificate_subject.clone()
                        } else {
                            current.client_certificate_subject.clone()
                        },
                    })
                },
            )
            .await?;
        Ok(Response::new(to_pb(updated)))
    }

    async fn delete_service_account(
        &self,
        request: Request<pb::DeleteServiceAccountRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = caller_of(&request)?;
        access::check_admin(&caller, "delete service accounts")?;
        let request = request.into_inner();
        let name = ServiceAccountName::parse("name", &request.name)?;
        self.0
            .store
            .delete_service_account(
                &Audit::new(&caller, "ServiceAccountService/DeleteServiceAccount"),
                &name,
                &request.etag,
            )
            .await?;
        Ok(Response::new(()))
    }

    async fn rotate_service_account_token(
        &self,
        request: Request<pb::RotateServiceAccountTokenRequest>,
    ) -> Result<Response<pb::RotateServiceAccountTokenResponse>, Status> {
        let caller = caller_of(&request)?;
        access::check_admin(&caller, "rotate service account tokens")?;
        let name = ServiceAccountName::parse("name", &request.get_ref().name)?;
        let token = IssuedToken::generate_for_service_account();
        let account = self
            .0
            .store
            .rotate_service_account_token(
                &Audit::new(&caller, "ServiceAccountService/RotateServiceAccountToken"),
                &name,
                &token.hash(),
            )
            .await?;
        Ok(Response::new(pb::RotateServiceAccountTokenResponse {
            service_account: Some(to_pb(account)),
            token: token.reveal().to_owned(),
        }))
    }
}
