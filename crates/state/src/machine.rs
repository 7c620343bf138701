//! [`StateMachine`]: applies commands to the engine and serves reads.
//!
//! Each `apply` writes all its effects, plus the caller's metadata (the raft adapter
//! passes the applied log id and membership), in ONE atomic engine batch, so a
//! restart never sees half an entry. A `Command::Batch` entry applies its commands
//! one by one inside that same batch, each with its own revision and response.
//! Reads (`range`, `lease`, `leases`, `lease_keys`, `members`, `events`) see the
//! last applied entry.

use crate::auth::{self, AuthStatus, Caller, Role, User};
use crate::command::{Command, Response};
use crate::engine::{Engine, EngineError};
use crate::error::Fail;
use crate::handlers::{self, DeliveryFailure, EventType, HandlerDef, HandlerEvent};
use crate::history;
use crate::keyspace::{self, Event, RangeRequest, RangeResult};
use crate::layout;
use crate::lease::{self, Lease};
use crate::members::{self, MemberAttrs};
use crate::registry::{self, AuditEntry, DueDrain, Instance};
use crate::snapshot::SnapshotData;
use crate::tx::Tx;
use crate::txn::{self, Txn};

/// What applying one command produced: the client's answer and the key events
/// (for watchers), in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub response: Response,
    pub events: Vec<Event>,
}

/// The state machine over an engine.
pub struct StateMachine<E> {
    engine: E,
    revision: i64,
}

impl<E: Engine> StateMachine<E> {
    /// Opens the state machine stored in `engine` (empty: revision 1).
    pub fn open(engine: E) -> Result<Self, EngineError> {
        let revision = layout::read_revision(engine.get(layout::REVISION)?.as_deref())?;
        Ok(Self { engine, revision })
    }

    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// Gives the engine back (e.g. to reopen it).
    pub fn into_engine(self) -> E {
        self.engine
    }

    /// Applies one command, from an entry the leader of `term` appended, and
    /// writes its effects together with `meta` (stored as `m/<name>`) in one
    /// atomic batch. A logical error is an `Ok` answer that changes nothing but
    /// still writes `meta`; `Err` only for storage failure.
    pub fn apply(
        &mut self,
        term: u64,
        cmd: &Command,
        meta: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Applied, EngineError> {
        let mut tx = Tx::new(&self.engine, term, self.revision);
        let response = match cmd {
            Command::Batch(commands) => {
                let mut responses = Vec::with_capacity(commands.len());
                for command in commands {
                    responses.push(run_command(&mut tx, command)?);
                }
                Response::Batch(responses)
            }
            command => run_command(&mut tx, command)?,
        };
        let (mut batch, events, revision) = tx.finish();
        for (name, value) in meta {
            batch.put(layout::meta_key(&name), value);
        }
        self.engine.write(batch)?;
        self.revision = revision;
        Ok(Applied { response, events })
    }

    /// The caller's metadata entry `name`, as last written by `apply`.
    pub fn meta(&self, name: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        self.engine.get(&layout::meta_key(name))
    }

    /// The current store revision (1 for an empty store).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Reads keys at the current revision, or at `req.revision` from the history
    /// (`Compacted` below the last compaction, `FutureRevision` above the store's).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResult, Fail> {
        history::read(&self.engine, req, self.revision)
    }

    /// Answers a read-only txn ([`Txn::is_read_only`]) from the applied state,
    /// without a log entry; a writing txn is answered as if it had no effect.
    pub fn read_txn(&self, txn: &Txn) -> Result<Response, Fail> {
        let mut tx = Tx::new(&self.engine, 0, self.revision);
        txn::apply(&mut tx, txn)
    }

    /// The revision the history was last compacted at (0: never).
    pub fn compacted(&self) -> Result<i64, EngineError> {
        history::compacted(&self.engine)
    }

    pub fn lease(&self, id: i64) -> Result<Option<Lease>, EngineError> {
        self.engine
            .get(&layout::lease_key(id))?
            .map(|v| layout::decode(&v))
            .transpose()
    }

    /// Every lease, by ascending id.
    pub fn leases(&self) -> Result<Vec<Lease>, EngineError> {
        let end = layout::prefix_end(layout::LEASE);
        self.engine
            .scan(layout::LEASE, end.as_deref())
            .map(|item| layout::decode(&item?.1))
            .collect()
    }

    /// The keys attached to lease `id`, in key order.
    pub fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>, EngineError> {
        let prefix = layout::attach_prefix(id);
        let end = layout::prefix_end(&prefix);
        self.engine
            .scan(&prefix, end.as_deref())
            .map(|item| Ok(item?.0[prefix.len()..].to_vec()))
            .collect()
    }

    /// The events of revisions `>= from_revision` in revision order (each event's
    /// `kv.mod_revision` is its revision), with `prev_kv` set: `limit` of them,
    /// and then the rest of the last revision, so a page never splits a
    /// revision. Below the last compaction: `Compacted`.
    pub fn events(&self, from_revision: i64, limit: usize) -> Result<Vec<Event>, Fail> {
        let compacted = history::compacted(&self.engine)?;
        if from_revision < compacted {
            return Err(crate::StateError::Compacted { compacted }.into());
        }
        Ok(history::events(&self.engine, from_revision, limit)?)
    }

    /// The registered instances of `service` (all services: `None`), by service
    /// then id, each with the revision of its record's last change.
    pub fn instances(&self, service: Option<&str>) -> Result<Vec<(Instance, i64)>, EngineError> {
        let mut prefix = registry::REGISTRY_PREFIX.to_vec();
        if let Some(service) = service {
            prefix.extend_from_slice(service.as_bytes());
            prefix.push(b'/');
        }
        let start = layout::key_key(&prefix);
        let end = layout::prefix_end(&start);
        self.engine
            .scan(&start, end.as_deref())
            .map(|item| {
                let kv: crate::KeyValue = layout::decode(&item?.1)?;
                Ok((registry::decode_instance(&kv.value)?, kv.mod_revision))
            })
            .collect()
    }

    /// One instance and the revision of its record's last change, if registered.
    pub fn instance(
        &self,
        service: &str,
        id: &str,
    ) -> Result<Option<(Instance, i64)>, EngineError> {
        let key = layout::key_key(&registry::instance_key(service, id));
        let Some(value) = self.engine.get(&key)? else {
            return Ok(None);
        };
        let kv: crate::KeyValue = layout::decode(&value)?;
        Ok(Some((
            registry::decode_instance(&kv.value)?,
            kv.mod_revision,
        )))
    }

    /// Every handler definition, by name.
    pub fn handlers(&self) -> Result<Vec<HandlerDef>, EngineError> {
        self.decode_all(layout::HANDLER, usize::MAX)
    }

    /// The cluster-wide handler of each event type that has one.
    pub fn handler_uses(&self) -> Result<Vec<(EventType, String)>, EngineError> {
        let mut uses = Vec::new();
        for event in EventType::ALL {
            if let Some(value) = self.engine.get(&layout::handler_use_key(event.name()))? {
                uses.push((event, layout::decode(&value)?));
            }
        }
        Ok(uses)
    }

    /// Up to `limit` undelivered handler events, oldest first.
    pub fn outbox(&self, limit: usize) -> Result<Vec<HandlerEvent>, EngineError> {
        self.decode_all(layout::OUTBOX, limit)
    }

    /// Events every delivery attempt failed for, oldest first.
    pub fn delivery_failures(&self) -> Result<Vec<DeliveryFailure>, EngineError> {
        self.decode_all(layout::FAILURE, usize::MAX)
    }

    fn decode_all<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<T>, EngineError> {
        let end = layout::prefix_end(prefix);
        self.engine
            .scan(prefix, end.as_deref())
            .take(limit)
            .map(|item| layout::decode(&item?.1))
            .collect()
    }

    /// Up to `limit` drain-index entries with a deadline at or before `now_ms`,
    /// soonest first (some may be stale: `DrainExpire` sorts them out).
    pub fn due_drains(&self, now_ms: u64, limit: usize) -> Result<Vec<DueDrain>, EngineError> {
        let end = layout::join(layout::DRAIN, &now_ms.saturating_add(1).to_be_bytes());
        self.engine
            .scan(layout::DRAIN, Some(&end))
            .take(limit)
            .map(|item| {
                let (deadline_ms, service, id) = layout::parse_drain_key(&item?.0)?;
                Ok(DueDrain {
                    deadline_ms,
                    service,
                    id,
                })
            })
            .collect()
    }

    /// The audit log of forced removals, oldest first.
    pub fn audit_log(&self) -> Result<Vec<AuditEntry>, EngineError> {
        self.decode_all(layout::AUDIT, usize::MAX)
    }

    /// The attributes every member published, by id.
    pub fn members(&self) -> Result<Vec<MemberAttrs>, EngineError> {
        self.decode_all(layout::MEMBER, usize::MAX)
    }

    /// The auth switch and revision.
    pub fn auth_status(&self) -> Result<AuthStatus, EngineError> {
        auth::status(&self.engine)
    }

    pub fn user(&self, name: &str) -> Result<Option<User>, EngineError> {
        auth::user(&self.engine, name)
    }

    /// Every user, by name.
    pub fn users(&self) -> Result<Vec<User>, EngineError> {
        auth::all(&self.engine, layout::USER)
    }

    pub fn role(&self, name: &str) -> Result<Option<Role>, EngineError> {
        auth::role(&self.engine, name)
    }

    /// Every role, by name.
    pub fn roles(&self) -> Result<Vec<Role>, EngineError> {
        auth::all(&self.engine, layout::ROLE)
    }

    /// Whether `caller` may send `cmd` now (apply decides again at the
    /// command's log position; this lets a member refuse early).
    pub fn authorize(&self, caller: Option<&Caller>, cmd: &Command) -> Result<(), Fail> {
        auth::authorize(&self.engine, caller, cmd)
    }

    /// Whether `caller` may run `txn` now (a read-only txn served without a
    /// command).
    pub fn authorize_txn(&self, caller: Option<&Caller>, txn: &Txn) -> Result<(), Fail> {
        auth::authorize_txn(&self.engine, caller, txn)
    }

    /// Whether `caller` may read `[key, range_end)` now.
    pub fn authorize_read(
        &self,
        caller: Option<&Caller>,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), Fail> {
        self.authorize_keys(caller, auth::Access::Read, key, range_end)
    }

    /// Whether `caller` may do `access` on `[key, range_end)` now.
    pub fn authorize_keys(
        &self,
        caller: Option<&Caller>,
        access: auth::Access,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), Fail> {
        auth::authorize_keys(&self.engine, caller, access, key, range_end)
    }

    /// Whether `caller` is root while auth is on (anyone, while it is off).
    pub fn authorize_admin(&self, caller: Option<&Caller>) -> Result<(), Fail> {
        auth::authorize_admin(&self.engine, caller)
    }

    /// Whether `caller` is root, or `allowed` holds of its own record.
    pub fn authorize_admin_or(
        &self,
        caller: Option<&Caller>,
        allowed: impl Fn(&User) -> bool,
    ) -> Result<(), Fail> {
        auth::authorize_admin_or(&self.engine, caller, allowed)
    }

    /// Every pair of the engine, frozen: later applies do not change it.
    pub fn snapshot(&self) -> Result<SnapshotData, EngineError> {
        self.engine.snapshot()
    }

    /// Replaces the whole engine content by `snap`, atomically.
    pub fn install(&mut self, snap: SnapshotData) -> Result<(), EngineError> {
        let revision = layout::read_revision(snap.get(layout::REVISION))?;
        self.engine.install(snap)?;
        self.revision = revision;
        Ok(())
    }
}

/// Runs one command as its own unit of `tx`: kept on success, rolled back alone
/// on a logical error (which becomes its response).
fn run_command<E: Engine>(tx: &mut Tx<'_, E>, cmd: &Command) -> Result<Response, EngineError> {
    tx.begin_command();
    match authorized(tx, cmd).and_then(|cmd| execute(tx, cmd)) {
        Ok(response) => {
            tx.end_command();
            Ok(response)
        }
        Err(Fail::Engine(e)) => Err(e),
        Err(Fail::State(error)) => {
            tx.rollback();
            Ok(Response::Error {
                revision: tx.revision(),
                error,
            })
        }
    }
}

/// The command to run once its sender's rights are checked (see `auth`):
/// the inner command of an `As`, or `cmd` itself.
fn authorized<'c, E: Engine>(tx: &Tx<'_, E>, cmd: &'c Command) -> Result<&'c Command, Fail> {
    match cmd {
        Command::As { caller, command } => match command.as_ref() {
            Command::Batch(_) | Command::InTerm { .. } | Command::As { .. } => {
                Err(Fail::State(crate::StateError::NestedBatch))
            }
            inner => auth::authorize(tx, Some(caller), inner).map(|()| inner),
        },
        other => auth::authorize(tx, None, other).map(|()| other),
    }
}

/// Runs one command against the staged transaction.
fn execute<E: Engine>(tx: &mut Tx<'_, E>, cmd: &Command) -> Result<Response, Fail> {
    match cmd {
        Command::Put(put) => keyspace::put(tx, put),
        Command::DeleteRange {
            key,
            range_end,
            prev_kv,
        } => keyspace::delete_range(tx, key, range_end, *prev_kv),
        Command::LeaseGrant { id, ttl } => lease::grant(tx, *id, *ttl),
        Command::LeaseRevoke { id, reason, now_ms } => lease::revoke(tx, *id, *reason, *now_ms),
        Command::LeaseExpire { ids, now_ms } => lease::expire(tx, ids, *now_ms),
        Command::LeaseCheckpoint { remaining_ms } => lease::checkpoint(tx, remaining_ms),
        Command::LeaseRenewed { ids } => lease::renewed(tx, ids),
        Command::Txn(t) => txn::apply(tx, t),
        Command::Compact { revision } => history::compact(tx, *revision),
        Command::Register {
            spec,
            lease,
            now_ms,
        } => registry::register(tx, spec, *lease, *now_ms),
        Command::Deregister {
            service,
            id,
            now_ms,
        } => registry::deregister(tx, service, id, *now_ms),
        Command::ForceDeregister {
            service,
            id,
            actor,
            reason,
            now_ms,
        } => registry::force_deregister(tx, service, id, actor, reason, *now_ms),
        Command::Drain {
            service,
            id,
            deadline_ms,
        } => registry::drain(tx, service, id, *deadline_ms),
        Command::DrainExpire { due, now_ms } => registry::drain_expire(tx, due, *now_ms),
        Command::SetStatus {
            service,
            id,
            status,
        } => registry::set_status(tx, service, id, status),
        Command::SetHealth {
            service,
            id,
            health,
            output,
            now_ms,
        } => registry::set_health(tx, service, id, *health, output, *now_ms),
        Command::RemoveUnhealthy { instances, now_ms } => {
            registry::remove_unhealthy(tx, instances, *now_ms)
        }
        Command::SetHandler(def) => handlers::set(tx, def),
        Command::DeleteHandler { name } => handlers::delete(tx, name),
        Command::UseHandler { event, name } => handlers::use_for(tx, *event, name),
        Command::OutboxDelivered { ids } => handlers::delivered(tx, ids),
        Command::OutboxFailed { failures, now_ms } => handlers::failed(tx, failures, *now_ms),
        Command::PublishMember(attrs) => members::publish(tx, attrs),
        Command::Noop => Ok(Response::Done {
            revision: tx.revision(),
        }),
        Command::Auth(op) => auth::apply(tx, op),
        Command::Batch(_) | Command::As { .. } => Err(Fail::State(crate::StateError::NestedBatch)),
        Command::InTerm { term, command } => match command.as_ref() {
            Command::Batch(_) | Command::InTerm { .. } | Command::As { .. } => {
                Err(Fail::State(crate::StateError::NestedBatch))
            }
            _ if *term != tx.term() => Err(Fail::State(crate::StateError::StaleTerm {
                decided: *term,
                appended: tx.term(),
            })),
            command => execute(tx, command),
        },
    }
}
