//! The native registry API (`roster.v1.Registry`): each call is one registry
//! command through the log, or a read of the local state (linearizable unless
//! the caller asks otherwise). Times are stamped here, on the node that takes
//! the request, and travel inside the command.

use std::collections::{BTreeMap, BTreeSet};

use roster_proto::registry::register_request::Lease as LeaseField;
use roster_proto::registry::registry_server::Registry;
use roster_proto::registry::{
    AuditEntry as PbAuditEntry, AuditListRequest, AuditListResponse, ChangeResponse,
    Check as PbCheck, CheckKind as PbCheckKind, CheckResult, DiscoverRequest, DiscoverResponse,
    DrainRequest, Endpoint as PbEndpoint, ForceDeregisterRequest, Health as PbHealth, HealthFilter,
    HeartbeatRequest, HeartbeatResponse, Instance as PbInstance, InstanceRequest,
    InstanceState as PbState, RegisterRequest, RegisterResponse, ReportCheckRequest,
    ReportCheckResponse, SetStatusRequest, WatchServicesRequest,
};
use roster_state::check::{CheckKind, CheckSpec};
use roster_state::registry::{
    Endpoint, Health, Instance, InstanceSpec, InstanceState, LeaseChoice,
};
use roster_state::selector::Selector;
use roster_state::{Command, Response};
use tonic::{Request, Response as GrpcResponse, Status};

use crate::etcd::{fail_engine, roster_status, route_status, state_status, EtcdApi};
use crate::health::Report;
use crate::wall_clock::now_ms;
use roster_state::auth::{Access, Caller};

/// The registry service of one node; shares the etcd API's plumbing.
#[derive(Clone)]
pub struct RegistryApi {
    api: EtcdApi,
}

impl RegistryApi {
    pub fn new(api: EtcdApi) -> Self {
        RegistryApi { api }
    }

    /// Proposes a registry command sent by `caller`; its revision and lease.
    async fn change(&self, caller: Option<Caller>, command: Command) -> Result<(i64, i64), Status> {
        match self
            .api
            .write_mapped(caller, command, roster_status)
            .await?
        {
            Response::Registry {
                revision, lease, ..
            } => Ok((revision, lease)),
            other => Err(crate::etcd::unexpected(&other)),
        }
    }

    /// Proposes a registry command answered with its revision alone.
    async fn changed(
        &self,
        caller: Option<Caller>,
        command: Command,
    ) -> Result<GrpcResponse<ChangeResponse>, Status> {
        let (revision, _) = self.change(caller, command).await?;
        Ok(GrpcResponse::new(ChangeResponse { revision }))
    }
}

fn to_spec(req: &RegisterRequest) -> Result<InstanceSpec, Status> {
    let mut endpoints = Vec::with_capacity(req.endpoints.len());
    for (i, e) in req.endpoints.iter().enumerate() {
        let port = u16::try_from(e.port).map_err(|_| {
            Status::invalid_argument(format!("endpoints[{i}].port {} is not 1-65535", e.port))
        })?;
        endpoints.push(Endpoint {
            address: e.address.clone(),
            port,
            protocol: e.protocol.clone(),
        });
    }
    Ok(InstanceSpec {
        endpoints,
        metadata: req.metadata.clone().into_iter().collect(),
        tags: req.tags.clone(),
        weight: req.weight,
        check: req.check.as_ref().map(to_check).transpose()?,
        deregister: req.deregister.unwrap_or(true),
        deregistration_handler: req.deregistration_handler.clone(),
        ..InstanceSpec::new(req.service.clone(), req.id.clone())
    })
}

/// A check from the wire, with the defaults for fields left 0 (the state
/// machine validates the result).
fn to_check(check: &PbCheck) -> Result<CheckSpec, Status> {
    let kind = match PbCheckKind::try_from(check.kind) {
        Ok(PbCheckKind::Http) => CheckKind::Http,
        Ok(PbCheckKind::Tcp) => CheckKind::Tcp,
        Ok(PbCheckKind::Grpc) => CheckKind::Grpc,
        Ok(PbCheckKind::Ttl) => CheckKind::Ttl,
        _ => {
            return Err(Status::invalid_argument(format!(
                "check.kind {} is not http, tcp, grpc or ttl",
                check.kind
            )))
        }
    };
    let defaults = CheckSpec::new(kind, check.target.clone());
    let or = |value: u64, default: u64| if value == 0 { default } else { value };
    let or32 = |value: u32, default: u32| if value == 0 { default } else { value };
    let interval_ms = or(check.interval_ms, defaults.interval_ms);
    Ok(CheckSpec {
        expect_body: check.expect_body.clone(),
        interval_ms,
        timeout_ms: or(check.timeout_ms, defaults.timeout_ms.min(interval_ms)),
        failures_before_warning: or32(
            check.failures_before_warning,
            defaults.failures_before_warning,
        ),
        failures_before_critical: or32(
            check.failures_before_critical,
            defaults.failures_before_critical,
        ),
        successes_before_passing: or32(
            check.successes_before_passing,
            defaults.successes_before_passing,
        ),
        deregister_critical_after_ms: check.deregister_critical_after_ms,
        ..defaults
    })
}

fn check_to_proto(check: CheckSpec) -> PbCheck {
    let kind = match check.kind {
        CheckKind::Http => PbCheckKind::Http,
        CheckKind::Tcp => PbCheckKind::Tcp,
        CheckKind::Grpc => PbCheckKind::Grpc,
        CheckKind::Ttl => PbCheckKind::Ttl,
    };
    PbCheck {
        kind: kind as i32,
        target: check.target,
        expect_body: check.expect_body,
        interval_ms: check.interval_ms,
        timeout_ms: check.timeout_ms,
        failures_before_warning: check.failures_before_warning,
        failures_before_critical: check.failures_before_critical,
        successes_before_passing: check.successes_before_passing,
        deregister_critical_after_ms: check.deregister_critical_after_ms,
    }
}

fn health_to_proto(health: Health) -> PbHealth {
    match health {
        Health::Passing => PbHealth::Passing,
        Health::Warning => PbHealth::Warning,
        Health::Critical => PbHealth::Critical,
    }
}

pub(crate) fn to_proto(instance: Instance, mod_revision: i64) -> PbInstance {
    let state = match instance.state {
        InstanceState::Up => PbState::Up,
        InstanceState::Draining => PbState::Draining,
    };
    let health = health_to_proto(instance.health);
    let spec = instance.spec;
    PbInstance {
        service: spec.service,
        id: spec.id,
        endpoints: spec
            .endpoints
            .into_iter()
            .map(|e| PbEndpoint {
                address: e.address,
                port: u32::from(e.port),
                protocol: e.protocol,
            })
            .collect(),
        metadata: spec.metadata.into_iter().collect(),
        tags: spec.tags,
        weight: spec.weight,
        status: instance.status.into_iter().collect(),
        state: state as i32,
        drain_deadline_ms: instance.drain_deadline_ms.unwrap_or(0),
        health: health as i32,
        registered_at_ms: instance.registered_at_ms,
        lease: instance.lease,
        lease_owned: instance.lease_owned,
        mod_revision,
        health_output: instance.health_output,
        critical_since_ms: instance.critical_since_ms.unwrap_or(0),
        check: spec.check.map(check_to_proto),
        deregister: spec.deregister,
        deregistration_handler: spec.deregistration_handler,
        keepalive_expired: instance.keepalive_expired,
    }
}

/// The services among `selected` with fewer than `threshold` of their
/// instances passing (none when the threshold is 0).
fn protected_services(selected: &[(Instance, i64)], threshold: f64) -> BTreeSet<String> {
    let mut counts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (instance, _) in selected {
        let entry = counts.entry(&instance.spec.service).or_default();
        entry.0 += 1;
        entry.1 += usize::from(instance.health == Health::Passing);
    }
    counts
        .into_iter()
        .filter(|(_, (total, passing))| {
            threshold > 0.0 && (*passing as f64) < threshold * *total as f64
        })
        .map(|(service, _)| service.to_string())
        .collect()
}

#[tonic::async_trait]
impl Registry for RegistryApi {
    type WatchServicesStream = crate::registry_watch::WatchServicesStream;

    async fn watch_services(
        &self,
        req: Request<WatchServicesRequest>,
    ) -> Result<GrpcResponse<Self::WatchServicesStream>, Status> {
        let caller = self.api.caller(&req)?;
        crate::registry_watch::watch_services(&self.api, caller, req.into_inner())
            .await
            .map(GrpcResponse::new)
    }

    async fn register(
        &self,
        req: Request<RegisterRequest>,
    ) -> Result<GrpcResponse<RegisterResponse>, Status> {
        let caller = self.api.caller(&req)?;
        let req = req.into_inner();
        let spec = to_spec(&req)?;
        let lease = match req.lease {
            Some(LeaseField::TtlSeconds(ttl)) if ttl <= 0 => {
                return Err(Status::invalid_argument(format!(
                    "ttl_seconds must be positive, not {ttl}"
                )))
            }
            Some(LeaseField::TtlSeconds(ttl)) => LeaseChoice::Own {
                ttl: ttl.max(self.api.min_lease_ttl),
            },
            Some(LeaseField::LeaseId(id)) => LeaseChoice::Shared { id },
            Some(LeaseField::NoLease(_)) => LeaseChoice::None,
            None => {
                return Err(Status::invalid_argument(
                    "lease: give ttl_seconds, lease_id or no_lease",
                ))
            }
        };
        let command = Command::Register {
            spec,
            lease,
            now_ms: now_ms(),
        };
        let (revision, lease) = self.change(caller, command).await?;
        Ok(GrpcResponse::new(RegisterResponse { revision, lease }))
    }

    async fn deregister(
        &self,
        req: Request<InstanceRequest>,
    ) -> Result<GrpcResponse<ChangeResponse>, Status> {
        let caller = self.api.caller(&req)?;
        let InstanceRequest { service, id } = req.into_inner();
        let command = Command::Deregister {
            service,
            id,
            now_ms: now_ms(),
        };
        self.changed(caller, command).await
    }

    async fn drain(
        &self,
        req: Request<DrainRequest>,
    ) -> Result<GrpcResponse<ChangeResponse>, Status> {
        let caller = self.api.caller(&req)?;
        let req = req.into_inner();
        let deadline_ms = (req.deadline_ms > 0).then(|| now_ms().saturating_add(req.deadline_ms));
        let command = Command::Drain {
            service: req.service,
            id: req.id,
            deadline_ms,
        };
        self.changed(caller, command).await
    }

    async fn force_deregister(
        &self,
        req: Request<ForceDeregisterRequest>,
    ) -> Result<GrpcResponse<ChangeResponse>, Status> {
        let caller = self.api.caller(&req)?;
        let req = req.into_inner();
        // With auth on, the audit log records the authenticated user.
        let actor = match &caller {
            Some(c) if req.actor.is_empty() || req.actor == c.user => c.user.clone(),
            Some(c) => {
                return Err(Status::invalid_argument(format!(
                    "actor {:?}: with auth on the actor is the authenticated user ({:?}); leave it empty",
                    req.actor, c.user
                )))
            }
            None => req.actor,
        };
        let command = Command::ForceDeregister {
            service: req.service,
            id: req.id,
            actor,
            reason: req.reason,
            now_ms: now_ms(),
        };
        self.changed(caller, command).await
    }

    async fn set_status(
        &self,
        req: Request<SetStatusRequest>,
    ) -> Result<GrpcResponse<ChangeResponse>, Status> {
        let caller = self.api.caller(&req)?;
        let req = req.into_inner();
        let command = Command::SetStatus {
            service: req.service,
            id: req.id,
            status: req.status.into_iter().collect(),
        };
        self.changed(caller, command).await
    }

    async fn report_check(
        &self,
        req: Request<ReportCheckRequest>,
    ) -> Result<GrpcResponse<ReportCheckResponse>, Status> {
        let caller = self.api.caller(&req)?;
        let req = req.into_inner();
        // Checked here only (a report is forwarded, not a command): write on
        // the instance's key, like the other changes of an instance.
        let key = roster_state::registry::instance_key(&req.service, &req.id);
        self.api
            .authorize_keys(caller.as_ref(), Access::Write, (&key, &[]), roster_status)?;
        let report = match CheckResult::try_from(req.result) {
            Ok(CheckResult::Pass) => Report::Pass,
            Ok(CheckResult::Warn) => Report::Warn,
            Ok(CheckResult::Fail) => Report::Fail,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "result {} is not pass, warn or fail",
                    req.result
                )))
            }
        };
        let health = self
            .api
            .router
            .report_check(&req.service, &req.id, report, &req.output)
            .await
            .map_err(route_status)?
            .map_err(|e| state_status(&e))?;
        Ok(GrpcResponse::new(ReportCheckResponse {
            health: health_to_proto(health) as i32,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<GrpcResponse<HeartbeatResponse>, Status> {
        let lease = req.into_inner().lease;
        let ttl = self
            .api
            .router
            .keepalive(lease)
            .await
            .map_err(route_status)?;
        Ok(GrpcResponse::new(HeartbeatResponse { ttl }))
    }

    async fn discover(
        &self,
        req: Request<DiscoverRequest>,
    ) -> Result<GrpcResponse<DiscoverResponse>, Status> {
        let caller = self.api.caller(&req)?;
        let req = req.into_inner();
        let selector =
            Selector::parse(&req.selector).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let range = crate::registry_watch::key_range(&req.service);
        self.api.authorize_keys(
            caller.as_ref(),
            Access::Read,
            (&range.key, &range.range_end),
            roster_status,
        )?;
        let passing_only = HealthFilter::try_from(req.health).unwrap_or(HealthFilter::PassingOnly)
            == HealthFilter::PassingOnly;
        self.api.before_read(req.serializable).await?;
        let service = Some(req.service.as_str()).filter(|s| !s.is_empty());
        let (instances, revision) = self.api.read(|sm| {
            let all = sm.instances(service).map_err(fail_engine)?;
            Ok((all, sm.revision()))
        })?;
        let selected: Vec<(Instance, i64)> = instances
            .into_iter()
            .filter(|(i, _)| selector.matches(&i.spec.metadata, &i.spec.tags))
            .filter(|(i, _)| req.include_draining || i.state == InstanceState::Up)
            .collect();
        let protected = protected_services(&selected, req.protection_threshold);
        let instances = selected
            .into_iter()
            .filter(|(i, _)| {
                !passing_only || i.health == Health::Passing || protected.contains(&i.spec.service)
            })
            .map(|(i, rev)| to_proto(i, rev))
            .collect();
        Ok(GrpcResponse::new(DiscoverResponse {
            revision,
            instances,
            protected_services: protected.into_iter().collect(),
        }))
    }

    async fn audit_list(
        &self,
        req: Request<AuditListRequest>,
    ) -> Result<GrpcResponse<AuditListResponse>, Status> {
        let caller = self.api.caller(&req)?;
        self.api.before_read(false).await?;
        let key = roster_state::auth::audit_key();
        self.api
            .authorize_keys(caller.as_ref(), Access::Read, (&key, &[]), roster_status)?;
        let (entries, revision) = self
            .api
            .read(|sm| Ok((sm.audit_log().map_err(fail_engine)?, sm.revision())))?;
        let entries = entries
            .into_iter()
            .map(|e| PbAuditEntry {
                revision: e.revision,
                at_ms: e.at_ms,
                actor: e.actor,
                reason: e.reason,
                service: e.service,
                id: e.id,
            })
            .collect();
        Ok(GrpcResponse::new(AuditListResponse { revision, entries }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(service: &str, id: &str, health: Health) -> (Instance, i64) {
        let instance = Instance {
            health,
            ..Instance::new(InstanceSpec::new(service, id), 0)
        };
        (instance, 1)
    }

    #[test]
    fn protection_covers_services_with_too_few_passing() {
        let selected = vec![
            instance("a", "1", Health::Passing),
            instance("a", "2", Health::Critical),
            instance("a", "3", Health::Critical),
            instance("b", "1", Health::Passing),
            instance("b", "2", Health::Warning),
        ];
        let names = |t: f64| {
            protected_services(&selected, t)
                .into_iter()
                .collect::<Vec<_>>()
        };
        assert_eq!(names(0.0), Vec::<String>::new(), "off");
        assert_eq!(names(0.4), vec!["a".to_string()], "a: 1 of 3 passing");
        assert_eq!(
            names(0.6),
            vec!["a".to_string(), "b".to_string()],
            "b: 1 of 2"
        );
        assert_eq!(
            names(0.5),
            vec!["a".to_string()],
            "exactly half is not fewer"
        );
    }
}
