//! Handlers: operators' systems (a CMDB, a pager, a load balancer) told of
//! every registration, deregistration and keepalive failure, at least once.
//!
//! Everything a new leader needs to carry on is replicated here:
//!
//! - definitions (`hd/<name>`): a `pipe` command run on the leader or an
//!   `http` URL posted to, with a timeout and a number of attempts;
//! - which handler serves each kind of event cluster-wide (`hu/<kind>`), with a
//!   per-instance `deregistration_handler` overriding the cluster-wide one;
//! - the outbox (`o/<seq>`): an event is written in the same apply as the
//!   change that caused it, numbered by a replicated counter (its id, stable
//!   across failovers so receivers can drop duplicates). It leaves the outbox
//!   only by a later command saying it was delivered (`OutboxDelivered`) or
//!   that every attempt failed (`OutboxFailed`, which files it under
//!   `f/<seq>` for `roster handler failures`). A leader that dies between
//!   delivering and recording that leaves the event in the outbox, so its
//!   successor delivers it again: at least once, never lost.
//!
//! The outbox lives apart from the key history, so compaction never touches
//! an undelivered event. Delivering is the server's job (`handlers` module).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::Response;
use crate::engine::{Engine, EngineError};
use crate::error::{Fail, StateError};
use crate::keyspace::RemovalReason;
use crate::layout;
use crate::registry::{self, Endpoint, Instance};
use crate::tx::Tx;

/// Longest handler command or URL, in bytes.
pub const MAX_HANDLER_TARGET: usize = 4096;
/// Most attempts a handler may be given.
pub const MAX_ATTEMPTS: u32 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandlerKind {
    /// `sh -c <target>` on the leader, the event as JSON on stdin; success is
    /// exit code 0.
    Pipe,
    /// `POST <target>` (an `http://` URL) with the event as JSON; success is 2xx.
    Http,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandlerDef {
    pub name: String,
    pub kind: HandlerKind,
    /// The command (pipe) or URL (http).
    pub target: String,
    pub timeout_ms: u64,
    /// Deliveries tried before the event is filed as failed (at least 1).
    pub max_attempts: u32,
}

/// What happened to an instance that a handler is told of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventType {
    Registration,
    Deregistration,
    KeepaliveFailure,
}

impl EventType {
    pub const ALL: [EventType; 3] = [
        EventType::Registration,
        EventType::Deregistration,
        EventType::KeepaliveFailure,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventType::Registration => "registration",
            EventType::Deregistration => "deregistration",
            EventType::KeepaliveFailure => "keepalive-failure",
        }
    }
}

/// One event in the outbox: everything a receiver needs, fixed when it was
/// written (its JSON is what handlers get).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandlerEvent {
    /// Unique and stable: receivers drop an id they have seen.
    pub id: u64,
    #[serde(rename = "type")]
    pub event: EventType,
    pub handler: String,
    pub service: String,
    pub instance: String,
    pub endpoints: Vec<Endpoint>,
    pub metadata: BTreeMap<String, String>,
    pub tags: Vec<String>,
    /// Why it was removed (deregistrations only).
    pub reason: Option<RemovalReason>,
    /// Who removed it and why (forced removals only).
    pub actor: String,
    pub note: String,
    /// The check output behind a health removal or a keepalive failure.
    pub output: String,
    /// The store revision of the change.
    pub revision: i64,
    /// When it happened (ms since the Unix epoch, the proposer's clock).
    pub time_ms: u64,
}

/// An event every attempt failed to deliver, kept for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryFailure {
    pub event: HandlerEvent,
    pub attempts: u32,
    pub error: String,
    pub failed_at_ms: u64,
}

/// Why an instance changed, as the events about it tell it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cause<'a> {
    pub reason: RemovalReason,
    pub actor: &'a str,
    pub note: &'a str,
    pub now_ms: u64,
}

impl Cause<'_> {
    pub(crate) fn plain(reason: RemovalReason, now_ms: u64) -> Cause<'static> {
        Cause {
            reason,
            actor: "",
            note: "",
            now_ms,
        }
    }
}

pub fn validate_handler(def: &HandlerDef) -> Result<(), StateError> {
    registry::check_name("handler name", &def.name)?;
    let invalid = |why: String| Err(StateError::InvalidHandler(why));
    if def.timeout_ms == 0 {
        return invalid("timeout must be positive".into());
    }
    if def.max_attempts == 0 || def.max_attempts > MAX_ATTEMPTS {
        return invalid(format!("max_attempts must be from 1 to {MAX_ATTEMPTS}"));
    }
    if def.target.trim().is_empty() || def.target.len() > MAX_HANDLER_TARGET {
        return invalid(format!(
            "a handler needs a command or URL of 1 to {MAX_HANDLER_TARGET} bytes"
        ));
    }
    if def.kind == HandlerKind::Http && !def.target.starts_with("http://") {
        return invalid(format!(
            "an http handler needs an http:// URL, not {:?}",
            def.target
        ));
    }
    Ok(())
}

pub(crate) fn load<E: Engine>(
    tx: &Tx<'_, E>,
    name: &str,
) -> Result<Option<HandlerDef>, EngineError> {
    tx.get(&layout::handler_key(name))?
        .map(|v| layout::decode(&v))
        .transpose()
}

/// Fails unless handler `name` is defined.
pub(crate) fn require<E: Engine>(tx: &Tx<'_, E>, name: &str) -> Result<(), Fail> {
    match load(tx, name)? {
        Some(_) => Ok(()),
        None => Err(StateError::UnknownHandler(name.to_string()).into()),
    }
}

fn done<E: Engine>(tx: &Tx<'_, E>) -> Response {
    Response::Done {
        revision: tx.revision(),
    }
}

/// `SetHandler`: defines or replaces a handler.
pub(crate) fn set<E: Engine>(tx: &mut Tx<'_, E>, def: &HandlerDef) -> Result<Response, Fail> {
    validate_handler(def)?;
    tx.put(layout::handler_key(&def.name), layout::encode(def)?);
    Ok(done(tx))
}

/// `DeleteHandler`: refused while a cluster-wide use names it. (Instances
/// naming it as their deregistration handler get their events filed as
/// failed, with the reason.)
pub(crate) fn delete<E: Engine>(tx: &mut Tx<'_, E>, name: &str) -> Result<Response, Fail> {
    require(tx, name)?;
    for event in EventType::ALL {
        if used_for(tx, event)?.as_deref() == Some(name) {
            return Err(StateError::HandlerInUse {
                name: name.to_string(),
                event: event.name().to_string(),
            }
            .into());
        }
    }
    tx.delete(layout::handler_key(name));
    Ok(done(tx))
}

fn used_for<E: Engine>(tx: &Tx<'_, E>, event: EventType) -> Result<Option<String>, EngineError> {
    tx.get(&layout::handler_use_key(event.name()))?
        .map(|v| layout::decode(&v))
        .transpose()
}

/// `UseHandler`: the cluster-wide handler of `event` (empty name: none).
pub(crate) fn use_for<E: Engine>(
    tx: &mut Tx<'_, E>,
    event: EventType,
    name: &str,
) -> Result<Response, Fail> {
    let key = layout::handler_use_key(event.name());
    if name.is_empty() {
        tx.delete(key);
    } else {
        require(tx, name)?;
        tx.put(key, layout::encode(&name.to_string())?);
    }
    Ok(done(tx))
}

/// Writes the event of `event` about `instance` to the outbox, if a handler
/// serves it (the instance's own for a deregistration, else the cluster's).
pub(crate) fn enqueue<E: Engine>(
    tx: &mut Tx<'_, E>,
    event: EventType,
    instance: &Instance,
    cause: Option<Cause<'_>>,
    output: &str,
    now_ms: u64,
) -> Result<(), EngineError> {
    let own = &instance.spec.deregistration_handler;
    let handler = match event {
        EventType::Deregistration if !own.is_empty() => Some(own.clone()),
        _ => used_for(tx, event)?,
    };
    let Some(handler) = handler else {
        return Ok(());
    };
    let id = next_id(tx)?;
    let entry = HandlerEvent {
        id,
        event,
        handler,
        service: instance.spec.service.clone(),
        instance: instance.spec.id.clone(),
        endpoints: instance.spec.endpoints.clone(),
        metadata: instance.spec.metadata.clone(),
        tags: instance.spec.tags.clone(),
        reason: cause.map(|c| c.reason),
        actor: cause.map(|c| c.actor.to_string()).unwrap_or_default(),
        note: cause.map(|c| c.note.to_string()).unwrap_or_default(),
        output: output.to_string(),
        revision: tx.write_revision(),
        time_ms: now_ms,
    };
    tx.put(layout::outbox_key(id), layout::encode(&entry)?);
    Ok(())
}

fn next_id<E: Engine>(tx: &mut Tx<'_, E>) -> Result<u64, EngineError> {
    let last = match tx.get(layout::OUTBOX_SEQ)? {
        Some(bytes) => layout::decode_u64(&bytes, "outbox counter")?,
        None => 0,
    };
    let id = last + 1;
    tx.put(layout::OUTBOX_SEQ.to_vec(), id.to_be_bytes().to_vec());
    Ok(id)
}

/// `OutboxDelivered`: drops delivered events (unknown ids: already dropped).
pub(crate) fn delivered<E: Engine>(tx: &mut Tx<'_, E>, ids: &[u64]) -> Result<Response, Fail> {
    for &id in ids {
        tx.delete(layout::outbox_key(id));
    }
    Ok(done(tx))
}

/// `OutboxFailed`: files events whose every attempt failed, with the last
/// error, and drops them from the outbox (unknown ids are skipped).
pub(crate) fn failed<E: Engine>(
    tx: &mut Tx<'_, E>,
    failures: &[(u64, u32, String)],
    now_ms: u64,
) -> Result<Response, Fail> {
    for (id, attempts, error) in failures {
        let Some(value) = tx.get(&layout::outbox_key(*id))? else {
            continue;
        };
        let failure = DeliveryFailure {
            event: layout::decode(&value)?,
            attempts: *attempts,
            error: error.clone(),
            failed_at_ms: now_ms,
        };
        tx.delete(layout::outbox_key(*id));
        tx.put(layout::failure_key(*id), layout::encode(&failure)?);
    }
    Ok(done(tx))
}
