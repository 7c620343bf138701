//! The client's one error type. Server refusals keep their gRPC status (code
//! and message), so callers can tell "not found" from "no leader".

use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No endpoint could be reached (the last reason is kept).
    #[error("no endpoint answered: {0}")]
    Unreachable(String),
    /// An endpoint is not a `host:port` or `http://host:port`.
    #[error("invalid endpoint {0:?}")]
    InvalidEndpoint(String),
    /// The server answered with an error.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
}

impl ClientError {
    /// The gRPC code, if the server answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status(status) => Some(status.code()),
            _ => None,
        }
    }
}

/// Whether a failed call should be tried again on another endpoint: the
/// node could not be reached or has no leader, so the request did nothing
/// there (or, for an idempotent call, doing it twice is harmless).
pub(crate) fn retryable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded | Code::Unknown
    )
}
