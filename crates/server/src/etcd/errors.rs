//! etcd's gRPC errors: the same code and message etcd sends, so that clients
//! react to Roster exactly as they react to etcd (retry on "no leader", give up on
//! "requested lease not found", ...).

use roster_state::{EngineError, Fail, StateError};
use tonic::Status;

use crate::route::RouteError;

pub fn state_status(error: &StateError) -> Status {
    match error {
        StateError::LeaseNotFound => Status::not_found("etcdserver: requested lease not found"),
        StateError::LeaseExists => Status::failed_precondition("etcdserver: lease already exists"),
        StateError::LeaseTtlTooLarge(_) => Status::out_of_range("etcdserver: too large lease TTL"),
        StateError::EmptyKey => Status::invalid_argument("etcdserver: key is not provided"),
        StateError::KeyNotFound => Status::invalid_argument("etcdserver: key not found"),
        // Only the proposer builds batches, never from a client's request.
        StateError::NestedBatch => Status::internal("roster: a batch inside a batch"),
        StateError::Compacted { .. } => compacted(),
        StateError::FutureRevision => future_revision(),
        StateError::DuplicateKey => {
            Status::invalid_argument("etcdserver: duplicate key given in txn request")
        }
        StateError::InvalidTtl(_)
        | StateError::InvalidName { .. }
        | StateError::InvalidEndpoint(_)
        | StateError::MetadataTooLarge(_)
        | StateError::MissingReason
        | StateError::InvalidStatus(_)
        | StateError::InvalidCheck(_)
        | StateError::InvalidHandler(_) => Status::invalid_argument(format!("roster: {error}")),
        StateError::UnknownHandler(_) => Status::not_found(format!("roster: {error}")),
        StateError::HandlerInUse { .. } => Status::failed_precondition(format!("roster: {error}")),
        StateError::InstanceNotFound => Status::not_found(format!("roster: {error}")),
        StateError::NotTtlCheck => Status::failed_precondition(format!("roster: {error}")),
        // Only the lessor and the health checker propose term-bound commands.
        StateError::StaleTerm { .. } => Status::unavailable(format!("roster: {error}")),
        StateError::UserEmpty | StateError::RoleEmpty | StateError::InvalidAuthMgmt => {
            Status::invalid_argument(format!("etcdserver: {error}"))
        }
        StateError::UserExists
        | StateError::UserNotFound
        | StateError::RoleExists
        | StateError::RoleNotFound
        | StateError::RoleNotGranted
        | StateError::PermissionNotGranted
        | StateError::RootUserMissing
        | StateError::RootRoleMissing => {
            Status::failed_precondition(format!("etcdserver: {error}"))
        }
        StateError::PermissionDenied => permission_denied(),
        // etcd's message, which clients match, with the code the issue asks
        // for (etcd 3.4 sends InvalidArgument).
        StateError::NoToken => Status::permission_denied("etcdserver: user name is empty"),
        StateError::InvalidToken => invalid_token(),
    }
}

/// A logical error as etcd's status; a storage failure as internal.
pub fn fail_status(fail: Fail) -> Status {
    fail_status_with(fail, state_status)
}

/// A logical error as `error_status` maps it (an API's own mapping, such as
/// [`roster_status`]); a storage failure as internal.
pub fn fail_status_with(fail: Fail, error_status: fn(&StateError) -> Status) -> Status {
    match fail {
        Fail::State(error) => error_status(&error),
        Fail::Engine(error) => engine_status(error),
    }
}

pub fn route_status(error: RouteError) -> Status {
    match error {
        RouteError::NoLeader => Status::unavailable("etcdserver: no leader"),
        RouteError::Timeout => Status::unavailable("etcdserver: request timed out"),
        RouteError::Unavailable(reason) | RouteError::Unknown(reason) => {
            tracing::debug!(%reason, "request failed");
            Status::unavailable("etcdserver: request timed out")
        }
    }
}

pub fn engine_status(error: EngineError) -> Status {
    tracing::error!(%error, "storage failure while serving a request");
    Status::internal(format!("etcdserver: {error}"))
}

pub fn empty_key() -> Status {
    state_status(&StateError::EmptyKey)
}

pub fn too_large() -> Status {
    Status::invalid_argument("etcdserver: request is too large")
}

pub fn compacted() -> Status {
    Status::out_of_range("etcdserver: mvcc: required revision has been compacted")
}

pub fn future_revision() -> Status {
    Status::out_of_range("etcdserver: mvcc: required revision is a future revision")
}

pub fn permission_denied() -> Status {
    Status::permission_denied("etcdserver: permission denied")
}

/// clientv3 matches this message to authenticate again and retry.
pub fn invalid_token() -> Status {
    Status::unauthenticated("etcdserver: invalid auth token")
}

pub fn auth_failed() -> Status {
    Status::invalid_argument("etcdserver: authentication failed, invalid user ID or password")
}

/// A logical error on Roster's own APIs (registry, handlers): as etcd's, but a
/// call that needs rights and carries no token is PermissionDenied, and a
/// refusal names what to do.
pub fn roster_status(error: &StateError) -> Status {
    match error {
        StateError::NoToken => Status::permission_denied(
            "roster: permission denied: auth is on and the request carries no token (authenticate first)",
        ),
        StateError::PermissionDenied => Status::permission_denied(
            "roster: permission denied: the user's roles do not grant this (see docs/operations.md, Authentication)",
        ),
        other => state_status(other),
    }
}
