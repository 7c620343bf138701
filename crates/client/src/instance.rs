//! What to register, built up field by field.

use roster_proto::registry::{Check, Endpoint, RegisterRequest};

/// An instance to register: service, id, endpoints, metadata, tags, weight,
/// an optional health check and handler choices.
#[derive(Debug, Clone)]
pub struct InstanceBuilder {
    request: RegisterRequest,
}

impl InstanceBuilder {
    pub fn new(service: impl Into<String>, id: impl Into<String>) -> Self {
        InstanceBuilder {
            request: RegisterRequest {
                service: service.into(),
                id: id.into(),
                weight: 1,
                ..Default::default()
            },
        }
    }

    pub fn endpoint(mut self, address: impl Into<String>, port: u16, protocol: &str) -> Self {
        self.request.endpoints.push(Endpoint {
            address: address.into(),
            port: u32::from(port),
            protocol: protocol.to_string(),
        });
        self
    }

    /// An endpoint as the registry API spells it.
    pub fn raw_endpoint(mut self, endpoint: Endpoint) -> Self {
        self.request.endpoints.push(endpoint);
        self
    }

    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.request.metadata.insert(key.into(), value.into());
        self
    }

    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.request.tags.push(tag.into());
        self
    }

    pub fn weight(mut self, weight: u32) -> Self {
        self.request.weight = weight;
        self
    }

    /// A health check the leader runs (or, for a ttl check, awaits).
    pub fn check(mut self, check: Check) -> Self {
        self.request.check = Some(check);
        self
    }

    /// `false`: keep the record (critical) if the lease ever expires.
    pub fn deregister_on_expiry(mut self, deregister: bool) -> Self {
        self.request.deregister = Some(deregister);
        self
    }

    pub fn deregistration_handler(mut self, name: impl Into<String>) -> Self {
        self.request.deregistration_handler = name.into();
        self
    }

    pub(crate) fn into_request(self) -> RegisterRequest {
        self.request
    }
}
