//! Logical errors of applying a command or serving a read. They are part of the
//! replicated outcome (every node computes the same one), so they are serializable.
//! Each has a stable code; the server maps them to etcd's gRPC status and message.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum StateError {
    #[error("requested lease not found")]
    LeaseNotFound,
    #[error("lease already exists")]
    LeaseExists,
    #[error("lease TTL {0} exceeds the maximum")]
    LeaseTtlTooLarge(i64),
    #[error("key is not provided")]
    EmptyKey,
    /// `Put` with `ignore_value` or `ignore_lease` of a key that does not exist.
    #[error("key not found")]
    KeyNotFound,
    #[error("a batch may not contain a batch")]
    NestedBatch,
    /// A read, watch or compaction below the revision the history was compacted at.
    #[error("required revision has been compacted (compacted at {compacted})")]
    Compacted { compacted: i64 },
    #[error("required revision is a future revision")]
    FutureRevision,
    /// A txn branch that writes one key twice (or puts a key it also deletes).
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    #[error("lease TTL must be positive, not {0}")]
    InvalidTtl(i64),
    /// An empty, over-long or malformed service name, instance id, actor or tag.
    #[error("invalid {what} {name:?}: must be 1 to 253 printable bytes without '/' or spaces")]
    InvalidName { what: String, name: String },
    #[error("invalid endpoint {0:?}: expected HOST:PORT with a port from 1 to 65535")]
    InvalidEndpoint(String),
    #[error("metadata of {0} bytes exceeds the limit of 16 KiB")]
    MetadataTooLarge(usize),
    #[error("instance not found")]
    InstanceNotFound,
    #[error("a forced removal needs a reason")]
    MissingReason,
    #[error("status value {0:?} is not a finite number")]
    InvalidStatus(String),
    #[error("invalid health check: {0}")]
    InvalidCheck(String),
    #[error("invalid handler: {0}")]
    InvalidHandler(String),
    #[error("handler {0:?} not found")]
    UnknownHandler(String),
    #[error("handler {name:?} is the cluster-wide {event} handler; choose another first")]
    HandlerInUse { name: String, event: String },
    /// A check report for an instance without a TTL check.
    #[error("instance has no ttl check")]
    NotTtlCheck,
    /// An `InTerm` command decided by the leader of `decided` but appended to the
    /// log by the leader of `appended`.
    #[error("decided in term {decided} but appended in term {appended}")]
    StaleTerm { decided: u64, appended: u64 },
    /// A user added with an empty name.
    #[error("user name is empty")]
    UserEmpty,
    #[error("user name already exists")]
    UserExists,
    #[error("user name not found")]
    UserNotFound,
    #[error("role name is empty")]
    RoleEmpty,
    #[error("role name already exists")]
    RoleExists,
    #[error("role name not found")]
    RoleNotFound,
    #[error("role is not granted to the user")]
    RoleNotGranted,
    #[error("permission is not granted to the role")]
    PermissionNotGranted,
    #[error("root user does not exist")]
    RootUserMissing,
    #[error("root user does not have root role")]
    RootRoleMissing,
    /// Deleting root, or its root role, while auth is on.
    #[error("invalid auth management")]
    InvalidAuthMgmt,
    #[error("permission denied")]
    PermissionDenied,
    /// A token that is garbled, expired, or older than its user's credentials.
    #[error("invalid auth token")]
    InvalidToken,
    /// Auth is on and the request carries no token (etcd's message).
    #[error("user name is empty")]
    NoToken,
}

impl StateError {
    /// A stable code, for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            StateError::LeaseNotFound => "lease_not_found",
            StateError::LeaseExists => "lease_exists",
            StateError::LeaseTtlTooLarge(_) => "lease_ttl_too_large",
            StateError::EmptyKey => "empty_key",
            StateError::KeyNotFound => "key_not_found",
            StateError::NestedBatch => "nested_batch",
            StateError::Compacted { .. } => "compacted",
            StateError::FutureRevision => "future_revision",
            StateError::DuplicateKey => "duplicate_key",
            StateError::InvalidTtl(_) => "invalid_ttl",
            StateError::InvalidName { .. } => "invalid_name",
            StateError::InvalidEndpoint(_) => "invalid_endpoint",
            StateError::MetadataTooLarge(_) => "metadata_too_large",
            StateError::InstanceNotFound => "instance_not_found",
            StateError::MissingReason => "missing_reason",
            StateError::InvalidStatus(_) => "invalid_status",
            StateError::InvalidCheck(_) => "invalid_check",
            StateError::NotTtlCheck => "not_ttl_check",
            StateError::InvalidHandler(_) => "invalid_handler",
            StateError::UnknownHandler(_) => "unknown_handler",
            StateError::HandlerInUse { .. } => "handler_in_use",
            StateError::StaleTerm { .. } => "stale_term",
            StateError::UserEmpty => "user_empty",
            StateError::UserExists => "user_exists",
            StateError::UserNotFound => "user_not_found",
            StateError::RoleEmpty => "role_empty",
            StateError::RoleExists => "role_exists",
            StateError::RoleNotFound => "role_not_found",
            StateError::RoleNotGranted => "role_not_granted",
            StateError::PermissionNotGranted => "permission_not_granted",
            StateError::RootUserMissing => "root_user_missing",
            StateError::RootRoleMissing => "root_role_missing",
            StateError::InvalidAuthMgmt => "invalid_auth_mgmt",
            StateError::PermissionDenied => "permission_denied",
            StateError::InvalidToken => "invalid_token",
            StateError::NoToken => "no_token",
        }
    }
}

/// Why applying a command or serving a read stopped: a logical error (answered,
/// changes nothing) or a storage failure. Lets the code use `?` for both.
#[derive(Debug, thiserror::Error)]
pub enum Fail {
    #[error(transparent)]
    State(StateError),
    #[error(transparent)]
    Engine(crate::engine::EngineError),
}

impl From<StateError> for Fail {
    fn from(e: StateError) -> Self {
        Fail::State(e)
    }
}

impl From<crate::engine::EngineError> for Fail {
    fn from(e: crate::engine::EngineError) -> Self {
        Fail::Engine(e)
    }
}
