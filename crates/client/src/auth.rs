//! Credentials for a cluster with auth on: authenticate on each new
//! connection, send the token (etcd's `token` metadata) with every call, and
//! authenticate again when a member says the token is no longer valid (it
//! expired, or the password changed), as etcd's clientv3 does.

use std::sync::{Arc, RwLock};

use roster_proto::etcdserverpb::auth_client::AuthClient;
use roster_proto::etcdserverpb::AuthenticateRequest;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// The metadata key of the token (etcd's).
pub const TOKEN_METADATA: &str = "token";

/// A user name and password.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl Credentials {
    /// `name:password`, as etcdctl's `--user` takes it.
    pub fn parse(text: &str) -> Option<Credentials> {
        let (user, password) = text.split_once(':')?;
        (!user.is_empty()).then(|| Credentials {
            user: user.to_string(),
            password: password.to_string(),
        })
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}:***)", self.user)
    }
}

/// Adds the token, if there is one, to every call through a channel.
#[derive(Clone, Default)]
pub struct TokenSlot(Arc<RwLock<Option<AsciiMetadataValue>>>);

impl Interceptor for TokenSlot {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        // A poisoned lock still holds a whole value (it is only ever replaced).
        let token = self.0.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(token) = token {
            request.metadata_mut().insert(TOKEN_METADATA, token);
        }
        Ok(request)
    }
}

/// A channel whose calls carry the token of its credentials.
pub type AuthChannel = InterceptedService<Channel, TokenSlot>;

/// `channel` with calls carrying a token for `credentials` (none without
/// credentials, or when the cluster has auth off, as etcdctl goes on then).
pub async fn authenticated(
    channel: Channel,
    credentials: Option<&Credentials>,
) -> Result<AuthChannel, Status> {
    let slot = TokenSlot::default();
    if let Some(credentials) = credentials {
        let request = AuthenticateRequest {
            name: credentials.user.clone(),
            password: credentials.password.clone(),
        };
        let token = match AuthClient::new(channel.clone()).authenticate(request).await {
            Ok(answer) => answer.into_inner().token,
            // "authentication is not enabled"
            Err(status) if status.code() == Code::FailedPrecondition => {
                return Ok(InterceptedService::new(channel, slot))
            }
            Err(status) => return Err(status),
        };
        let token = AsciiMetadataValue::try_from(token)
            .map_err(|_| Status::internal("the server sent a token that is not ASCII"))?;
        *slot.0.write().unwrap_or_else(|p| p.into_inner()) = Some(token);
    }
    Ok(InterceptedService::new(channel, slot))
}

/// Whether a member refused the call's token (authenticate again and retry).
pub fn token_refused(status: &Status) -> bool {
    status.code() == Code::Unauthenticated
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_name_colon_password() {
        let c = Credentials::parse("alice:pw:with:colons").expect("parses");
        assert_eq!(
            (c.user.as_str(), c.password.as_str()),
            ("alice", "pw:with:colons")
        );
        assert!(Credentials::parse("alice").is_none());
        assert!(Credentials::parse(":pw").is_none());
        assert!(
            !format!("{c:?}").contains("pw"),
            "the password is not printed"
        );
    }
}
