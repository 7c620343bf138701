//! The service registry's replicated part: instance records and their life cycle.
//!
//! An instance is an ordinary key of the keyspace, `/roster/registry/<service>/<id>`,
//! holding the [`Instance`] as JSON and attached to the instance's lease, so the
//! etcd API can read it, one watch mechanism serves both APIs, and an expiring
//! lease removes its instances like any other key (reason `expired`). Every change
//! is one command, applied at one revision:
//!
//! - `Register`: an idempotent upsert. It grants the instance a lease of its own
//!   (kept across re-registrations with the same TTL), attaches it to a lease the
//!   caller holds (several instances of one process may share one), or gives it
//!   none (an external service, removed only explicitly).
//! - `Deregister` (reason `graceful`), `ForceDeregister` (reason `forced`, with an
//!   entry in the audit log), `Drain` (state `draining`, optionally with a
//!   deadline, indexed under `d/<deadline>` so the leader finds the due ones
//!   without scanning every instance) and `DrainExpire` (reason `drained`,
//!   proposed by the leader once a deadline has passed). A lease that `Register` granted goes with the last
//!   instance on it.
//! - `SetStatus`: the free-form numbers (load, queue depth), a write of its own so
//!   heartbeats never are.
//!
//! Times (`registered_at_ms`, deadlines, audit times) are milliseconds since the
//! Unix epoch stamped by the proposing node into the command, never read here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::check::{validate_check, CheckSpec};
use crate::command::Response;
use crate::engine::{Engine, EngineError};
use crate::error::{Fail, StateError};
use crate::handlers::{self, Cause, EventType};
use crate::keyspace::{self, KeyValue, Put, RemovalReason};
use crate::layout;
use crate::lease;
use crate::tx::Tx;

/// Every registry key starts with this; the etcd API may read it, not write it.
pub const REGISTRY_PREFIX: &[u8] = b"/roster/registry/";
/// Longest service name or instance id, in bytes.
pub const MAX_NAME_LEN: usize = 253;
/// Most bytes of metadata (keys and values) and of tags, each.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Check output kept with a health change, at most (longer output is cut).
pub const MAX_HEALTH_OUTPUT: usize = 1024;

/// One network endpoint of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Host name or IP address.
    pub address: String,
    pub port: u16,
    /// Free-form: `http`, `grpc`, `tcp`... (Always written, even empty: an
    /// endpoint travels as bincode in the log, where a skipped field would
    /// make the entry unreadable.)
    #[serde(default)]
    pub protocol: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    Up,
    Draining,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Passing,
    Warning,
    Critical,
}

/// What a client registers: everything but what the registry decides. (It
/// travels as bincode in the log too, so no field may be skipped when
/// serialized; new fields have serde defaults so older records still read.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceSpec {
    pub service: String,
    pub id: String,
    pub endpoints: Vec<Endpoint>,
    pub metadata: BTreeMap<String, String>,
    pub tags: Vec<String>,
    pub weight: u32,
    /// The health check the leader runs (or awaits, for TTL checks), if any.
    #[serde(default)]
    pub check: Option<CheckSpec>,
    /// `true`: an expiring lease removes the instance (reason `expired`).
    /// `false` (Sensu's keepalive rule): the record stays, off the lease,
    /// critical with "keepalive expired", until it registers again or is removed.
    #[serde(default = "yes")]
    pub deregister: bool,
    /// Handler told of this instance's deregistration instead of the
    /// cluster-wide one; empty: the cluster-wide one.
    #[serde(default)]
    pub deregistration_handler: String,
}

fn yes() -> bool {
    true
}

impl InstanceSpec {
    /// An instance with no endpoints, metadata, tags or check, weight 1,
    /// removed when its lease expires.
    pub fn new(service: impl Into<String>, id: impl Into<String>) -> Self {
        InstanceSpec {
            service: service.into(),
            id: id.into(),
            endpoints: Vec::new(),
            metadata: BTreeMap::new(),
            tags: Vec::new(),
            weight: 1,
            check: None,
            deregister: true,
            deregistration_handler: String::new(),
        }
    }
}

/// The health output of an instance whose lease expired under `deregister: false`.
pub const KEEPALIVE_EXPIRED: &str = "keepalive expired";

/// The stored record (`docs/registry.md` documents its JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    #[serde(flatten)]
    pub spec: InstanceSpec,
    /// Free-form numbers set by `SetStatus`.
    pub status: BTreeMap<String, f64>,
    pub state: InstanceState,
    /// When a draining instance is removed (ms since the epoch), if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_deadline_ms: Option<u64>,
    pub health: Health,
    /// The check output (truncated) that caused the last health change.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub health_output: String,
    /// Since when (ms since the epoch) the instance has been critical.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical_since_ms: Option<u64>,
    /// Its lease expired and it was kept (`deregister: false`); the next
    /// registration makes it passing again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keepalive_expired: bool,
    /// First registration (ms since the epoch); kept by re-registrations.
    pub registered_at_ms: u64,
    /// 0: no lease (removed only explicitly).
    pub lease: i64,
    /// The lease was granted by `Register` for this instance (and goes with the
    /// last instance on it).
    pub lease_owned: bool,
}

impl Instance {
    /// A fresh record of `spec`: up, passing, no status, no lease.
    pub fn new(spec: InstanceSpec, registered_at_ms: u64) -> Self {
        Instance {
            spec,
            status: BTreeMap::new(),
            state: InstanceState::Up,
            drain_deadline_ms: None,
            health: Health::Passing,
            health_output: String::new(),
            critical_since_ms: None,
            keepalive_expired: false,
            registered_at_ms,
            lease: 0,
            lease_owned: false,
        }
    }
}

/// Which lease a registration lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseChoice {
    /// A lease of the instance's own with this TTL (seconds).
    Own { ttl: i64 },
    /// An existing lease the caller holds.
    Shared { id: i64 },
    /// None: an external service.
    None,
}

/// An instance whose drain deadline has come, as the drain index lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DueDrain {
    pub deadline_ms: u64,
    pub service: String,
    pub id: String,
}

/// One entry of the audit log of forced removals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub revision: i64,
    pub at_ms: u64,
    pub actor: String,
    pub reason: String,
    pub service: String,
    pub id: String,
}

/// The keyspace key of an instance.
pub fn instance_key(service: &str, id: &str) -> Vec<u8> {
    let mut key = REGISTRY_PREFIX.to_vec();
    key.extend_from_slice(service.as_bytes());
    key.push(b'/');
    key.extend_from_slice(id.as_bytes());
    key
}

/// The service and instance id of a registry key (`None`: not one).
pub fn parse_instance_key(key: &[u8]) -> Option<(&str, &str)> {
    std::str::from_utf8(key.strip_prefix(REGISTRY_PREFIX)?)
        .ok()?
        .split_once('/')
}

/// Parses a stored record.
pub fn decode_instance(value: &[u8]) -> Result<Instance, EngineError> {
    serde_json::from_slice(value).map_err(|e| EngineError(format!("corrupt instance record: {e}")))
}

fn encode_instance(instance: &Instance) -> Result<Vec<u8>, EngineError> {
    serde_json::to_vec(instance).map_err(|e| EngineError(format!("encode instance: {e}")))
}

/// Checks a name (service, instance id, actor, handler): non-empty, bounded,
/// no `/`, printable.
pub(crate) fn check_name(what: &'static str, name: &str) -> Result<(), StateError> {
    let bad = name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name.contains('/')
        || name.chars().any(|c| c.is_control() || c.is_whitespace());
    if bad {
        return Err(StateError::InvalidName {
            what: what.to_string(),
            name: name.chars().take(64).collect(),
        });
    }
    Ok(())
}

/// Everything about a spec that can be checked without the store.
pub fn validate_spec(spec: &InstanceSpec) -> Result<(), StateError> {
    check_name("service", &spec.service)?;
    check_name("instance id", &spec.id)?;
    for endpoint in &spec.endpoints {
        if endpoint.address.is_empty()
            || endpoint.port == 0
            || endpoint.address.contains(char::is_whitespace)
        {
            return Err(StateError::InvalidEndpoint(format!(
                "{}:{}",
                endpoint.address, endpoint.port
            )));
        }
    }
    let metadata: usize = spec.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    let tags: usize = spec.tags.iter().map(String::len).sum();
    if metadata > MAX_METADATA_BYTES || tags > MAX_METADATA_BYTES {
        return Err(StateError::MetadataTooLarge(metadata.max(tags)));
    }
    if spec.metadata.keys().any(String::is_empty) || spec.tags.iter().any(String::is_empty) {
        return Err(StateError::InvalidName {
            what: "metadata key or tag".to_string(),
            name: String::new(),
        });
    }
    if !spec.deregistration_handler.is_empty() {
        check_name("deregistration handler", &spec.deregistration_handler)?;
    }
    spec.check.as_ref().map_or(Ok(()), validate_check)
}

pub(crate) fn load<E: Engine>(
    tx: &Tx<'_, E>,
    service: &str,
    id: &str,
) -> Result<Option<(KeyValue, Instance)>, EngineError> {
    let Some(value) = tx.get(&layout::key_key(&instance_key(service, id)))? else {
        return Ok(None);
    };
    let kv: KeyValue = layout::decode(&value)?;
    let instance = decode_instance(&kv.value)?;
    Ok(Some((kv, instance)))
}

/// Drops the drain-index entry of `instance`'s deadline, if it has one.
fn unindex_drain<E: Engine>(tx: &mut Tx<'_, E>, instance: &Instance) {
    if let Some(deadline) = instance.drain_deadline_ms {
        tx.delete(layout::drain_key(
            deadline,
            &instance.spec.service,
            &instance.spec.id,
        ));
    }
}

/// Writes the record (a put event), keeping its lease attachment.
fn store<E: Engine>(tx: &mut Tx<'_, E>, instance: &Instance) -> Result<(), Fail> {
    let put = Put {
        key: instance_key(&instance.spec.service, &instance.spec.id),
        value: encode_instance(instance)?,
        lease: instance.lease,
        prev_kv: false,
        ignore_value: false,
        ignore_lease: false,
    };
    keyspace::put_kv(tx, &put)?;
    Ok(())
}

/// `Register`: see the module docs. Answers the lease the instance lives on.
pub(crate) fn register<E: Engine>(
    tx: &mut Tx<'_, E>,
    spec: &InstanceSpec,
    choice: LeaseChoice,
    now_ms: u64,
) -> Result<Response, Fail> {
    validate_spec(spec)?;
    if !spec.deregistration_handler.is_empty() {
        handlers::require(tx, &spec.deregistration_handler)?;
    }
    let existing = load(tx, &spec.service, &spec.id)?.map(|(_, i)| i);
    let mut granted = None;
    let (lease, lease_owned) = match choice {
        LeaseChoice::None => (0, false),
        LeaseChoice::Shared { id } => {
            if id == 0 || !lease::exists(tx, id)? {
                return Err(StateError::LeaseNotFound.into());
            }
            (id, false)
        }
        LeaseChoice::Own { ttl } => match &existing {
            Some(old)
                if old.lease_owned && lease::load(tx, old.lease)?.is_some_and(|l| l.ttl == ttl) =>
            {
                (old.lease, true)
            }
            _ => {
                let id = lease::grant_new(tx, ttl)?;
                granted = Some((id, ttl));
                (id, true)
            }
        },
    };
    // A record kept after its lease expired is new again: passing, as a fresh
    // registration would be; any other keeps the health its checks gave it.
    let kept_health = existing.as_ref().filter(|o| !o.keepalive_expired);
    let registered_at_ms = existing.as_ref().map_or(now_ms, |o| o.registered_at_ms);
    let mut instance = Instance {
        lease,
        lease_owned,
        ..Instance::new(spec.clone(), registered_at_ms)
    };
    if let Some(old) = &existing {
        instance.status = old.status.clone();
    }
    if let Some(old) = kept_health {
        instance.health = old.health;
        instance.health_output = old.health_output.clone();
        instance.critical_since_ms = old.critical_since_ms;
    }
    store(tx, &instance)?;
    // New, or back after its lease expired under `deregister: false`.
    if existing.as_ref().is_none_or(|o| o.keepalive_expired) {
        handlers::enqueue(tx, EventType::Registration, &instance, None, "", now_ms)?;
    }
    if let Some(old) = &existing {
        unindex_drain(tx, old);
    }
    let mut revoked = Vec::new();
    if let Some(old) = existing.filter(|o| o.lease_owned && o.lease != lease) {
        revoked.extend(release_owned_lease(tx, old.lease)?);
    }
    Ok(answer(tx, lease, granted, revoked))
}

/// The answer to a registry command: the revision after it, the lease the
/// instance lives on, and the lease changes the lessor must follow.
fn answer<E: Engine>(
    tx: &Tx<'_, E>,
    lease: i64,
    granted: Option<(i64, i64)>,
    revoked: Vec<i64>,
) -> Response {
    Response::Registry {
        revision: tx.revision(),
        lease,
        granted,
        revoked,
    }
}

/// Revokes an owned lease that no key is attached to any more; its id if so.
fn release_owned_lease<E: Engine>(tx: &mut Tx<'_, E>, id: i64) -> Result<Option<i64>, Fail> {
    let prefix = layout::attach_prefix(id);
    let end = layout::prefix_end(&prefix);
    if !tx.scan(&prefix, end.as_deref())?.is_empty() || !lease::exists(tx, id)? {
        return Ok(None);
    }
    // No key is attached, so no instance: the time dates nothing.
    lease::remove(tx, id, RemovalReason::Graceful, 0)?;
    Ok(Some(id))
}

/// Removes one instance for `cause`, and its owned lease if it was the last on
/// it; the instance's lease and the lease revoked with it, if any.
fn remove<E: Engine>(
    tx: &mut Tx<'_, E>,
    service: &str,
    id: &str,
    cause: Cause<'_>,
) -> Result<(i64, Option<i64>), Fail> {
    let Some((kv, instance)) = load(tx, service, id)? else {
        return Err(StateError::InstanceNotFound.into());
    };
    removed(tx, kv, &instance, cause)?;
    let revoked = match instance.lease_owned {
        true => release_owned_lease(tx, instance.lease)?,
        false => None,
    };
    Ok((instance.lease, revoked))
}

/// Deletes the record `kv` of `instance` for `cause`, with its drain-index
/// entry, and tells the deregistration handler.
fn removed<E: Engine>(
    tx: &mut Tx<'_, E>,
    kv: KeyValue,
    instance: &Instance,
    cause: Cause<'_>,
) -> Result<(), Fail> {
    keyspace::remove(tx, kv, cause.reason)?;
    unindex_drain(tx, instance);
    let output = match cause.reason {
        RemovalReason::Health => instance.health_output.as_str(),
        _ => "",
    };
    handlers::enqueue(
        tx,
        EventType::Deregistration,
        instance,
        Some(cause),
        output,
        cause.now_ms,
    )?;
    Ok(())
}

/// Removes one instance and answers for it.
fn remove_one<E: Engine>(
    tx: &mut Tx<'_, E>,
    service: &str,
    id: &str,
    cause: Cause<'_>,
) -> Result<Response, Fail> {
    let (lease, revoked) = remove(tx, service, id, cause)?;
    Ok(answer(tx, lease, None, revoked.into_iter().collect()))
}

/// Removes instances a leader listed and the state still finds due.
fn remove_all<E: Engine>(
    tx: &mut Tx<'_, E>,
    due: &[(&str, &str)],
    cause: Cause<'_>,
) -> Result<Response, Fail> {
    let mut revoked = Vec::new();
    for (service, id) in due {
        revoked.extend(remove(tx, service, id, cause)?.1);
    }
    Ok(answer(tx, 0, None, revoked))
}

/// `Deregister`: graceful removal.
pub(crate) fn deregister<E: Engine>(
    tx: &mut Tx<'_, E>,
    service: &str,
    id: &str,
    now_ms: u64,
) -> Result<Response, Fail> {
    remove_one(
        tx,
        service,
        id,
        Cause::plain(RemovalReason::Graceful, now_ms),
    )
}

/// `ForceDeregister`: an operator's removal, recorded in the audit log.
pub(crate) fn force_deregister<E: Engine>(
    tx: &mut Tx<'_, E>,
    service: &str,
    id: &str,
    actor: &str,
    reason: &str,
    now_ms: u64,
) -> Result<Response, Fail> {
    if reason.trim().is_empty() {
        return Err(StateError::MissingReason.into());
    }
    check_name("actor", actor)?;
    let cause = Cause {
        reason: RemovalReason::Forced,
        actor,
        note: reason,
        now_ms,
    };
    let response = remove_one(tx, service, id, cause)?;
    let entry = AuditEntry {
        revision: tx.write_revision(),
        at_ms: now_ms,
        actor: actor.to_string(),
        reason: reason.to_string(),
        service: service.to_string(),
        id: id.to_string(),
    };
    tx.put(layout::audit_key(entry.revision), layout::encode(&entry)?);
    Ok(response)
}

/// Changes an existing instance's record with `change`, which may refuse, may
/// stage more (it gets the transaction), and answers whether the record changed:
/// an unchanged record is not written again.
fn update<E: Engine>(
    tx: &mut Tx<'_, E>,
    service: &str,
    id: &str,
    change: impl FnOnce(&mut Tx<'_, E>, &mut Instance) -> Result<bool, Fail>,
) -> Result<Response, Fail> {
    let Some((_, mut instance)) = load(tx, service, id)? else {
        return Err(StateError::InstanceNotFound.into());
    };
    if change(tx, &mut instance)? {
        store(tx, &instance)?;
    }
    Ok(answer(tx, instance.lease, None, Vec::new()))
}

/// `Drain`: marks the instance draining, with an optional removal deadline.
pub(crate) fn drain<E: Engine>(
    tx: &mut Tx<'_, E>,
    service: &str,
    id: &str,
    deadline_ms: Option<u64>,
) -> Result<Response, Fail> {
    update(tx, service, id, |tx, instance| {
        unindex_drain(tx, instance);
        if let Some(deadline) = deadline_ms {
            tx.put(layout::drain_key(deadline, service, id), Vec::new());
        }
        instance.state = InstanceState::Draining;
        instance.drain_deadline_ms = deadline_ms;
        Ok(true)
    })
}

/// `DrainExpire`: for each listed index entry whose deadline is at or before
/// `now_ms`, drops the entry and removes the instance (reason `drained`) if it is
/// still draining with that deadline; a re-registration or another way out may
/// have come first, which leaves nothing to do.
pub(crate) fn drain_expire<E: Engine>(
    tx: &mut Tx<'_, E>,
    due: &[DueDrain],
    now_ms: u64,
) -> Result<Response, Fail> {
    let mut still_due = Vec::new();
    for entry in due.iter().filter(|d| d.deadline_ms <= now_ms) {
        tx.delete(layout::drain_key(
            entry.deadline_ms,
            &entry.service,
            &entry.id,
        ));
        let still = load(tx, &entry.service, &entry.id)?.is_some_and(|(_, i)| {
            i.state == InstanceState::Draining && i.drain_deadline_ms == Some(entry.deadline_ms)
        });
        if still {
            still_due.push((entry.service.as_str(), entry.id.as_str()));
        }
    }
    remove_all(tx, &still_due, Cause::plain(RemovalReason::Drained, now_ms))
}

/// `SetStatus`: replaces the instance's status numbers.
pub(crate) fn set_status<E: Engine>(
    tx: &mut Tx<'_, E>,
    service: &str,
    id: &str,
    status: &BTreeMap<String, f64>,
) -> Result<Response, Fail> {
    update(tx, service, id, |_, instance| {
        let size = status.keys().map(String::len).sum::<usize>() + status.len() * 8;
        if size > MAX_METADATA_BYTES {
            return Err(StateError::MetadataTooLarge(size).into());
        }
        if let Some((name, _)) = status.iter().find(|(_, v)| !v.is_finite()) {
            return Err(StateError::InvalidStatus(name.clone()).into());
        }
        instance.status = status.clone();
        Ok(true)
    })
}

/// `SetHealth`: records a health change (only changes are proposed: a command
/// that repeats the current health changes nothing and writes no event). The
/// output is kept, cut to [`MAX_HEALTH_OUTPUT`] bytes; entering `critical`
/// starts the clock that `RemoveUnhealthy` reads.
pub(crate) fn set_health<E: Engine>(
    tx: &mut Tx<'_, E>,
    service: &str,
    id: &str,
    health: Health,
    output: &str,
    now_ms: u64,
) -> Result<Response, Fail> {
    update(tx, service, id, |_, instance| {
        if instance.health == health {
            return Ok(false);
        }
        instance.health = health;
        instance.health_output = truncate(output, MAX_HEALTH_OUTPUT);
        instance.critical_since_ms = (health == Health::Critical).then_some(now_ms);
        Ok(true)
    })
}

/// `RemoveUnhealthy`: removes (reason `health`) each listed instance that is
/// still critical since the listed time (the leader lists those critical for
/// longer than their `deregister_critical_after`); others are skipped.
pub(crate) fn remove_unhealthy<E: Engine>(
    tx: &mut Tx<'_, E>,
    instances: &[(String, String, u64)],
    now_ms: u64,
) -> Result<Response, Fail> {
    let mut still_due = Vec::new();
    for (service, id, since) in instances {
        let still = load(tx, service, id)?.is_some_and(|(_, i)| {
            i.health == Health::Critical && i.critical_since_ms == Some(*since)
        });
        if still {
            still_due.push((service.as_str(), id.as_str()));
        }
    }
    remove_all(tx, &still_due, Cause::plain(RemovalReason::Health, now_ms))
}

/// The lease of the instance record `kv` ended (revoked or expired, as
/// `reason` says). An expiry under `deregister: false` keeps the record,
/// detached from the lease, critical with [`KEEPALIVE_EXPIRED`] since `now_ms`,
/// and raises a keepalive failure; otherwise the record goes.
pub(crate) fn lease_ended<E: Engine>(
    tx: &mut Tx<'_, E>,
    kv: KeyValue,
    reason: RemovalReason,
    now_ms: u64,
) -> Result<(), Fail> {
    let mut instance = decode_instance(&kv.value)?;
    if reason != RemovalReason::Expired || instance.spec.deregister {
        return removed(tx, kv, &instance, Cause::plain(reason, now_ms));
    }
    instance.lease = 0;
    instance.lease_owned = false;
    instance.keepalive_expired = true;
    if instance.health != Health::Critical {
        instance.critical_since_ms = Some(now_ms);
    }
    instance.health = Health::Critical;
    instance.health_output = KEEPALIVE_EXPIRED.to_string();
    store(tx, &instance)?;
    let event = EventType::KeepaliveFailure;
    handlers::enqueue(tx, event, &instance, None, KEEPALIVE_EXPIRED, now_ms)?;
    Ok(())
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}
