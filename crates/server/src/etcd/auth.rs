//! etcd `Auth`: users, roles, key-range permissions, the auth switch and
//! Authenticate, so that `etcdctl user|role|auth` work unchanged.
//!
//! Changes become [`AuthOp`] commands sent by the caller; apply checks that
//! the caller is root (while auth is on) and applies etcd's rules (see
//! `roster_state::auth`). Reads answer from the local state after a read-index
//! confirmation. Passwords are hashed and tokens signed here (`crate::auth`).

use roster_proto::authpb;
use roster_proto::etcdserverpb::auth_server::Auth;
use roster_proto::etcdserverpb::*;
use roster_state::auth::{AuthOp, Caller, PermKind, Permission, User};
use roster_state::Command;
use tonic::{Request, Response as GrpcResponse, Status};

use super::errors::{auth_failed, engine_status, fail_status};
use super::EtcdApi;
use crate::auth::{hash_password, random_bytes, sign, verify_password, PBKDF2_ITERATIONS};

fn crypto_failed(_: ring::error::Unspecified) -> Status {
    Status::internal("roster: the system random generator failed")
}

impl EtcdApi {
    /// Sends an auth change; the revision to answer with.
    async fn auth_change(&self, caller: Option<Caller>, op: AuthOp) -> Result<i64, Status> {
        Ok(self.write(caller, Command::Auth(op)).await?.revision())
    }

    /// A password hash, computed off the async workers (it is slow on purpose).
    async fn hash(&self, password: String) -> Result<roster_state::auth::PasswordHash, Status> {
        tokio::task::spawn_blocking(move || hash_password(&password, PBKDF2_ITERATIONS))
            .await
            .map_err(|e| Status::internal(format!("roster: hashing task: {e}")))?
            .map_err(crypto_failed)
    }

    /// A linearizable read of the auth records by `caller`, allowed for root
    /// or when `allowed` says so of the caller's own record.
    async fn auth_read<T>(
        &self,
        caller: Option<&Caller>,
        allowed: impl Fn(&User) -> bool,
        read: impl FnOnce(&roster_state::StateMachine<roster_raft::DynEngine>) -> Result<T, Status>,
    ) -> Result<(T, i64), Status> {
        self.before_read(false).await?;
        self.read(|sm| {
            sm.authorize_admin_or(caller, allowed)
                .map_err(fail_status)?;
            Ok((read(sm)?, sm.revision()))
        })
    }
}

/// etcd refuses a bcrypt hash it did not make only from 3.5 on; Roster keeps
/// PBKDF2 hashes of its own and says so.
fn refuse_hashed(hashed: &str) -> Result<(), Status> {
    if hashed.is_empty() {
        Ok(())
    } else {
        Err(Status::invalid_argument(
            "roster: hashedPassword is not supported (Roster hashes passwords itself); send password",
        ))
    }
}

fn to_perm(p: authpb::Permission) -> Result<Permission, Status> {
    let kind = match authpb::permission::Type::try_from(p.perm_type) {
        Ok(authpb::permission::Type::Read) => PermKind::Read,
        Ok(authpb::permission::Type::Write) => PermKind::Write,
        Ok(authpb::permission::Type::Readwrite) => PermKind::ReadWrite,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "roster: permission type {} is not READ, WRITE or READWRITE",
                p.perm_type
            )))
        }
    };
    Ok(Permission {
        kind,
        key: p.key,
        range_end: p.range_end,
    })
}

fn from_perm(p: Permission) -> authpb::Permission {
    let kind = match p.kind {
        PermKind::Read => authpb::permission::Type::Read,
        PermKind::Write => authpb::permission::Type::Write,
        PermKind::ReadWrite => authpb::permission::Type::Readwrite,
    };
    authpb::Permission {
        perm_type: kind as i32,
        key: p.key,
        range_end: p.range_end,
    }
}

/// Answers `$resp { header }` to an auth change.
macro_rules! changed {
    ($self:ident, $req:ident, $resp:ident, |$r:ident| $op:expr) => {{
        let caller = $self.caller(&$req)?;
        let $r = $req.into_inner();
        let revision = $self.auth_change(caller, $op).await?;
        Ok(GrpcResponse::new($resp {
            header: $self.header(revision),
        }))
    }};
}

#[tonic::async_trait]
impl Auth for EtcdApi {
    async fn auth_enable(
        &self,
        req: Request<AuthEnableRequest>,
    ) -> Result<GrpcResponse<AuthEnableResponse>, Status> {
        let token_key = random_bytes(32).map_err(crypto_failed)?;
        changed!(self, req, AuthEnableResponse, |_r| AuthOp::Enable {
            token_key
        })
    }

    async fn auth_disable(
        &self,
        req: Request<AuthDisableRequest>,
    ) -> Result<GrpcResponse<AuthDisableResponse>, Status> {
        changed!(self, req, AuthDisableResponse, |_r| AuthOp::Disable)
    }

    async fn auth_status(
        &self,
        _req: Request<AuthStatusRequest>,
    ) -> Result<GrpcResponse<AuthStatusResponse>, Status> {
        self.before_read(false).await?;
        let (status, revision) =
            self.read(|sm| Ok((sm.auth_status().map_err(engine_status)?, sm.revision())))?;
        Ok(GrpcResponse::new(AuthStatusResponse {
            header: self.header(revision),
            enabled: status.enabled,
            auth_revision: status.revision,
        }))
    }

    /// Checks the password on this member and signs a token. Ignores any
    /// token the request carries (a stale one must not stop a new login).
    async fn authenticate(
        &self,
        req: Request<AuthenticateRequest>,
    ) -> Result<GrpcResponse<AuthenticateResponse>, Status> {
        let req = req.into_inner();
        self.before_read(false).await?;
        let (status, user, revision) = self.read(|sm| {
            Ok((
                sm.auth_status().map_err(engine_status)?,
                sm.user(&req.name).map_err(engine_status)?,
                sm.revision(),
            ))
        })?;
        if !status.enabled {
            return Err(Status::failed_precondition(
                "etcdserver: authentication is not enabled",
            ));
        }
        let Some((user, hash)) = user.and_then(|u| u.password.clone().map(|h| (u, h))) else {
            return Err(auth_failed());
        };
        let password = req.password;
        let matches = tokio::task::spawn_blocking(move || verify_password(&hash, &password))
            .await
            .map_err(|e| Status::internal(format!("roster: password check task: {e}")))?;
        if !matches {
            return Err(auth_failed());
        }
        let ttl_ms = u64::try_from(self.token_ttl.as_millis()).unwrap_or(u64::MAX);
        let expires_ms = crate::wall_clock::now_ms().saturating_add(ttl_ms);
        let token = sign(&status.token_key, &user.name, user.generation, expires_ms)
            .map_err(crypto_failed)?;
        Ok(GrpcResponse::new(AuthenticateResponse {
            header: self.header(revision),
            token,
        }))
    }

    async fn user_add(
        &self,
        req: Request<AuthUserAddRequest>,
    ) -> Result<GrpcResponse<AuthUserAddResponse>, Status> {
        let caller = self.caller(&req)?;
        let req = req.into_inner();
        refuse_hashed(&req.hashed_password)?;
        // Refused before the (slow) hash is made.
        self.authorize_admin(caller.as_ref())?;
        let no_password = req.options.as_ref().is_some_and(|o| o.no_password);
        let password = match no_password {
            true => None,
            false => Some(self.hash(req.password).await?),
        };
        let op = AuthOp::UserAdd {
            name: req.name,
            password,
        };
        let revision = self.auth_change(caller, op).await?;
        Ok(GrpcResponse::new(AuthUserAddResponse {
            header: self.header(revision),
        }))
    }

    async fn user_get(
        &self,
        req: Request<AuthUserGetRequest>,
    ) -> Result<GrpcResponse<AuthUserGetResponse>, Status> {
        let caller = self.caller(&req)?;
        let name = req.into_inner().name;
        let (user, revision) = self
            .auth_read(
                caller.as_ref(),
                |me| me.name == name,
                |sm| sm.user(&name).map_err(engine_status),
            )
            .await?;
        let user =
            user.ok_or_else(|| super::state_status(&roster_state::StateError::UserNotFound))?;
        Ok(GrpcResponse::new(AuthUserGetResponse {
            header: self.header(revision),
            roles: user.roles.into_iter().collect(),
        }))
    }

    async fn user_list(
        &self,
        req: Request<AuthUserListRequest>,
    ) -> Result<GrpcResponse<AuthUserListResponse>, Status> {
        let caller = self.caller(&req)?;
        let (users, revision) = self
            .auth_read(
                caller.as_ref(),
                |_| false,
                |sm| sm.users().map_err(engine_status),
            )
            .await?;
        Ok(GrpcResponse::new(AuthUserListResponse {
            header: self.header(revision),
            users: users.into_iter().map(|u| u.name).collect(),
        }))
    }

    async fn user_delete(
        &self,
        req: Request<AuthUserDeleteRequest>,
    ) -> Result<GrpcResponse<AuthUserDeleteResponse>, Status> {
        changed!(self, req, AuthUserDeleteResponse, |r| AuthOp::UserDelete {
            name: r.name
        })
    }

    async fn user_change_password(
        &self,
        req: Request<AuthUserChangePasswordRequest>,
    ) -> Result<GrpcResponse<AuthUserChangePasswordResponse>, Status> {
        let caller = self.caller(&req)?;
        let req = req.into_inner();
        refuse_hashed(&req.hashed_password)?;
        self.authorize_admin(caller.as_ref())?;
        let op = AuthOp::UserChangePassword {
            name: req.name,
            password: self.hash(req.password).await?,
        };
        let revision = self.auth_change(caller, op).await?;
        Ok(GrpcResponse::new(AuthUserChangePasswordResponse {
            header: self.header(revision),
        }))
    }

    async fn user_grant_role(
        &self,
        req: Request<AuthUserGrantRoleRequest>,
    ) -> Result<GrpcResponse<AuthUserGrantRoleResponse>, Status> {
        changed!(self, req, AuthUserGrantRoleResponse, |r| {
            AuthOp::UserGrantRole {
                user: r.user,
                role: r.role,
            }
        })
    }

    async fn user_revoke_role(
        &self,
        req: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<GrpcResponse<AuthUserRevokeRoleResponse>, Status> {
        changed!(self, req, AuthUserRevokeRoleResponse, |r| {
            AuthOp::UserRevokeRole {
                user: r.name,
                role: r.role,
            }
        })
    }

    async fn role_add(
        &self,
        req: Request<AuthRoleAddRequest>,
    ) -> Result<GrpcResponse<AuthRoleAddResponse>, Status> {
        changed!(self, req, AuthRoleAddResponse, |r| AuthOp::RoleAdd {
            name: r.name
        })
    }

    async fn role_get(
        &self,
        req: Request<AuthRoleGetRequest>,
    ) -> Result<GrpcResponse<AuthRoleGetResponse>, Status> {
        let caller = self.caller(&req)?;
        let name = req.into_inner().role;
        let (role, revision) = self
            .auth_read(
                caller.as_ref(),
                |me| me.roles.contains(&name),
                |sm| sm.role(&name).map_err(engine_status),
            )
            .await?;
        let role =
            role.ok_or_else(|| super::state_status(&roster_state::StateError::RoleNotFound))?;
        Ok(GrpcResponse::new(AuthRoleGetResponse {
            header: self.header(revision),
            perm: role.perms.into_iter().map(from_perm).collect(),
        }))
    }

    async fn role_list(
        &self,
        req: Request<AuthRoleListRequest>,
    ) -> Result<GrpcResponse<AuthRoleListResponse>, Status> {
        let caller = self.caller(&req)?;
        let (roles, revision) = self
            .auth_read(
                caller.as_ref(),
                |_| false,
                |sm| sm.roles().map_err(engine_status),
            )
            .await?;
        Ok(GrpcResponse::new(AuthRoleListResponse {
            header: self.header(revision),
            roles: roles.into_iter().map(|r| r.name).collect(),
        }))
    }

    async fn role_delete(
        &self,
        req: Request<AuthRoleDeleteRequest>,
    ) -> Result<GrpcResponse<AuthRoleDeleteResponse>, Status> {
        changed!(self, req, AuthRoleDeleteResponse, |r| AuthOp::RoleDelete {
            name: r.role
        })
    }

    async fn role_grant_permission(
        &self,
        req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<GrpcResponse<AuthRoleGrantPermissionResponse>, Status> {
        let perm = req
            .get_ref()
            .perm
            .clone()
            .ok_or_else(|| Status::invalid_argument("etcdserver: permission not given"))?;
        let perm = to_perm(perm)?;
        changed!(self, req, AuthRoleGrantPermissionResponse, |r| {
            AuthOp::RoleGrantPermission { role: r.name, perm }
        })
    }

    async fn role_revoke_permission(
        &self,
        req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<GrpcResponse<AuthRoleRevokePermissionResponse>, Status> {
        changed!(self, req, AuthRoleRevokePermissionResponse, |r| {
            AuthOp::RoleRevokePermission {
                role: r.role,
                key: r.key,
                range_end: r.range_end,
            }
        })
    }
}
