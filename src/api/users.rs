//! `UserService`: proto <-> domain for users and their tokens.

use tonic::{Request, Response, Status};

use super::{ApiContext, caller_of, convert, paging, required};
use crate::{
    domain::{
        access,
        audit::Audit,
        error::both,
        names::{Handle, UserName},
        token::IssuedToken,
        user::{NewUser, User, UserFields},
    },
    pb::v1::{self as pb, user_service_server::UserService},
};

pub struct UsersApi(pub ApiContext);

const UPDATABLE: &[&str] = &["display_name", "admin"];

fn to_pb(user: User) -> pb::User {
    let etag = user.etag();
    pb::User {
        name: format!("users/{}", user.handle),
        display_name: user.display_name,
        admin: user.is_admin,
        create_time: convert::timestamp(user.create_time),
        update_time: convert::timestamp(user.update_time),
        etag,
    }
}

#[tonic::async_trait]
impl UserService for UsersApi {
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let caller = caller_of(&request)?;
        access::check_admin(&caller, "create users")?;
        let request = request.into_inner();
        let (handle, fields) = both(
            Handle::parse("user_id", &request.user_id),
            required(request.user.as_ref(), "user")
                .and_then(|user| UserFields::parse("user", &user.display_name, user.admin)),
        )?;
        let token = IssuedToken::generate();
        let user = self
            .0
            .store
            .create_user(
                &Audit::new(&caller, "UserService/CreateUser"),
                &NewUser { handle, fields },
                &token.hash(),
            )
            .await?;
        Ok(Response::new(pb::CreateUserResponse {
            user: Some(to_pb(user)),
            token: token.reveal().to_owned(),
        }))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let caller = caller_of(&request)?;
        let name = UserName::parse("name", &request.get_ref().name)?;
        access::check_private_read(&caller, &name.0, &name)?;
        Ok(Response::new(to_pb(self.0.store.get_user(&name).await?)))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let caller = caller_of(&request)?;
        access::check_admin(&caller, "list users")?;
        let request = request.into_inner();
        let (page, binding) = paging::start(&self.0.keys.paginator(), &caller, &request)?;
        let found = self.0.store.list_users(&page).await?;
        let (users, next_page_token) = paging::finish(&self.0.keys.paginator(), found, &binding);
        Ok(Response::new(pb::ListUsersResponse {
            users: users.into_iter().map(to_pb).collect(),
            next_page_token,
        }))
    }

    async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let caller = caller_of(&request)?;
        access::check_admin(&caller, "update users")?;
        let request = request.into_inner();
        let user = required(request.user, "user")?;
        let name = UserName::parse("user.name", &user.name)?;
        access::check_user_changeable(&name.0)?;
        let mask = convert::update_mask(request.update_mask.as_ref(), UPDATABLE, &[])?;
        let updated = self
            .0
            .store
            .update_user(
                &Audit::new(&caller, "UserService/UpdateUser"),
                &name,
                &user.etag,
                |current| {
                    let display_name =
                        if mask.touches("display_name", !user.display_name.is_empty()) {
                            &user.display_name
                        } else {
                            &current.display_name
                        };
                    let is_admin = if mask.touches("admin", user.admin) {
                        user.admin
                    } else {
                        current.is_admin
                    };
                    UserFields::parse("user", display_name, is_admin)
                },
            )
            .await?;
        Ok(Response::new(to_pb(updated)))
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = caller_of(&request)?;
        access::check_admin(&caller, "delete users")?;
        let request = request.into_inner();
        let name = UserName::parse("name", &request.name)?;
        access::check_user_changeable(&name.0)?;
        self.0
            .store
            .delete_user(
                &Audit::new(&caller, "UserService/DeleteUser"),
                &caller,
                &name,
                &request.etag,
                request.force,
            )
            .await?;
        Ok(Response::new(()))
    }

    async fn rotate_user_token(
        &self,
        request: Request<pb::RotateUserTokenRequest>,
    ) -> Result<Response<pb::RotateUserTokenResponse>, Status> {
        let caller = caller_of(&request)?;
        let name = UserName::parse("name", &request.get_ref().name)?;
        access::check_private_read(&caller, &name.0, &name)?;
        access::check_user_changeable(&name.0)?;
        // A user's token is the user's own credential; an account acting for them never
        // receives one (it would outlive the call and the account's permission).
        access::check_not_acting(&caller, "rotate the user's token")?;
        let token = IssuedToken::generate();
        let user = self
            .0
            .store
            .rotate_user_token(
                &Audit::new(&caller, "UserService/RotateUserToken"),
                &name,
                &token.hash(),
            )
            .await?;
        Ok(Response::new(pb::RotateUserTokenResponse {
            user: Some(to_pb(user)),
            token: token.reveal().to_owned(),
        }))
    }
}
