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
        }
    }
}

/// Why applying a command stopped: a logical error (answered, changes nothing) or
/// a storage failure (returned to the caller as `Err`). Lets the apply code use
/// `?` for both.
#[derive(Debug)]
pub(crate) enum Fail {
    State(StateError),
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
