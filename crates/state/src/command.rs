//! Commands: the only way the replicated state changes. Each is applied in log
//! order on every node; anything time-dependent is a value inside the command.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::auth::{AuthOp, Caller};
use crate::error::StateError;
use crate::handlers::{EventType, HandlerDef};
use crate::keyspace::{KeyValue, Put, RemovalReason};
use crate::members::MemberAttrs;
use crate::registry::{DueDrain, Health, InstanceSpec, LeaseChoice};
use crate::txn::{Txn, TxnOpResponse};

/// One entry of the replicated log, as the state machine sees it. (Not `Eq`:
/// instance status numbers are floats.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// etcd `Put`.
    Put(Put),
    /// etcd `DeleteRange` (graceful removal). `range_end` as in etcd: empty for one
    /// key, `[0]` for every key >= `key`, otherwise the half-open range.
    DeleteRange {
        key: Vec<u8>,
        range_end: Vec<u8>,
        prev_kv: bool,
    },
    /// Grant a lease of `ttl` seconds. `id == 0`: the state machine picks an unused
    /// id deterministically.
    LeaseGrant { id: i64, ttl: i64 },
    /// Revoke one lease on request (client revoke: reason `Graceful`); its keys are
    /// deleted in one revision. Unknown id: `StateError::LeaseNotFound`.
    /// `now_ms` dates the handler events of instances removed with it.
    LeaseRevoke {
        id: i64,
        reason: RemovalReason,
        now_ms: u64,
    },
    /// Expire a batch of leases proposed by the leader's lessor: every key of every
    /// listed lease is deleted in one revision with reason `Expired`. Ids that are
    /// already gone are skipped (a revoke may race an expiry), never an error.
    /// Instances registered with `deregister: false` stay, critical since
    /// `now_ms` (the leader's wall clock).
    LeaseExpire { ids: Vec<i64>, now_ms: u64 },
    /// Record the remaining TTL (milliseconds) of long leases, so that a new leader
    /// does not restart them at their full TTL (DESIGN.md lease rule 5).
    LeaseCheckpoint { remaining_ms: Vec<(i64, u64)> },
    /// The leases were kept alive after their last checkpoint: clears it, so a new
    /// leader restarts them at their full TTL. Unknown ids are skipped.
    LeaseRenewed { ids: Vec<i64> },
    /// etcd `Txn`: compares, then the success or the failure branch, at one
    /// revision. A failing operation fails (and undoes) the whole txn.
    Txn(Txn),
    /// etcd `Compact`: discard the history below `revision`. At or below the last
    /// compaction: `Compacted`; above the store revision: `FutureRevision`.
    Compact { revision: i64 },
    /// Registry: upsert an instance (see `registry`). `now_ms`: the proposer's
    /// wall clock, kept as the first registration time.
    Register {
        spec: InstanceSpec,
        lease: LeaseChoice,
        now_ms: u64,
    },
    /// Registry: graceful removal of one instance (`now_ms` dates its
    /// handler event).
    Deregister {
        service: String,
        id: String,
        now_ms: u64,
    },
    /// Registry: an operator's removal, with actor and reason, audited.
    ForceDeregister {
        service: String,
        id: String,
        actor: String,
        reason: String,
        now_ms: u64,
    },
    /// Registry: mark an instance draining, removed at `deadline_ms` if given.
    Drain {
        service: String,
        id: String,
        deadline_ms: Option<u64>,
    },
    /// Registry: remove the instances of the listed drain-index entries whose
    /// deadline is at or before `now_ms` (proposed by the leader), reason
    /// `drained`.
    DrainExpire { due: Vec<DueDrain>, now_ms: u64 },
    /// Registry: a health change of an instance (proposed only on a change),
    /// with the check output that caused it.
    SetHealth {
        service: String,
        id: String,
        health: Health,
        output: String,
        now_ms: u64,
    },
    /// Registry: remove (reason `health`) the listed instances that are still
    /// critical since the listed time (ms since the epoch).
    RemoveUnhealthy {
        instances: Vec<(String, String, u64)>,
        now_ms: u64,
    },
    /// Handlers: define or replace one.
    SetHandler(HandlerDef),
    /// Handlers: delete one (refused while it is a cluster-wide handler).
    DeleteHandler { name: String },
    /// Handlers: the cluster-wide handler of `event` (empty: none).
    UseHandler { event: EventType, name: String },
    /// Handlers: these outbox events were delivered.
    OutboxDelivered { ids: Vec<u64> },
    /// Handlers: every attempt to deliver these events failed: (id, attempts,
    /// last error); they are filed as failures at `now_ms`.
    OutboxFailed {
        failures: Vec<(u64, u32, String)>,
        now_ms: u64,
    },
    /// Registry: replace an instance's status numbers.
    SetStatus {
        service: String,
        id: String,
        status: BTreeMap<String, f64>,
    },
    /// A member publishes its attributes (client URLs) after it starts.
    PublishMember(MemberAttrs),
    /// No change; used by a new leader to commit an entry of its term.
    Noop,
    /// Several commands in one log entry (the leader batches concurrent
    /// proposals so that one append and one flush serve them all). Each is
    /// applied in order as if it were its own entry, with its own revision and
    /// response; one that fails changes nothing and does not affect the others.
    /// A batch inside a batch is an error.
    Batch(Vec<Command>),
    /// A decision the leader of `term` took from clocks only it runs (a lease
    /// expiry, checkpoint or renewal; a health verdict): applied only from an
    /// entry appended in that same term. A node can queue such a proposal while
    /// leader of one term and append it after winning a later one, when another
    /// leader's clocks ran in between and may have renewed what it expires; then
    /// it answers `StaleTerm` and changes nothing (DESIGN.md, lease rule 3).
    /// `command` may not be a batch or another `InTerm`.
    InTerm { term: u64, command: Box<Command> },
    /// A change of users, roles or the auth switch (see `auth`).
    Auth(AuthOp),
    /// `command` sent by `caller` (a client that presented a token): while auth
    /// is on, applied only if the caller's credentials are current and its
    /// roles allow it. A client command not wrapped is refused while auth is on.
    /// `command` may not be a batch, an `InTerm` or another `As`.
    As {
        caller: Caller,
        command: Box<Command>,
    },
}

impl Command {
    /// This command as a decision of the leader of `term` (see `Command::InTerm`).
    pub fn in_term(self, term: u64) -> Command {
        Command::InTerm {
            term,
            command: Box::new(self),
        }
    }

    /// This command as sent by `caller` (`None`: no token; left bare).
    pub fn sent_by(self, caller: Option<Caller>) -> Command {
        match caller {
            Some(caller) => Command::As {
                caller,
                command: Box::new(self),
            },
            None => self,
        }
    }

    /// The command itself, without the sender it may be wrapped with.
    pub fn unwrapped(&self) -> &Command {
        match self {
            Command::As { command, .. } => command,
            other => other,
        }
    }
}

/// The result of applying one command. Logical failures are `Error`, applied on
/// every node alike (and change nothing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Put {
        revision: i64,
        prev_kv: Option<KeyValue>,
    },
    DeleteRange {
        revision: i64,
        deleted: i64,
        prev_kvs: Vec<KeyValue>,
    },
    LeaseGranted {
        revision: i64,
        id: i64,
        ttl: i64,
    },
    /// Revoke or expire: the ids actually removed.
    LeaseRevoked {
        revision: i64,
        revoked: Vec<i64>,
    },
    Txn {
        revision: i64,
        succeeded: bool,
        responses: Vec<TxnOpResponse>,
    },
    /// A registry command: the lease the instance lives on, a lease it granted
    /// (id, TTL) and the leases it revoked, so the lessor can follow them.
    Registry {
        revision: i64,
        lease: i64,
        granted: Option<(i64, i64)>,
        revoked: Vec<i64>,
    },
    /// Checkpoint, renewed, publish, compact, noop.
    Done {
        revision: i64,
    },
    Error {
        revision: i64,
        error: StateError,
    },
    /// The responses of a `Command::Batch`, in order.
    Batch(Vec<Response>),
}

impl Response {
    /// The store revision after the command (unchanged by commands that write no
    /// key); for a batch, after its last command (0 for an empty batch).
    pub fn revision(&self) -> i64 {
        match self {
            Response::Batch(responses) => responses.last().map_or(0, Response::revision),
            Response::Put { revision, .. }
            | Response::DeleteRange { revision, .. }
            | Response::LeaseGranted { revision, .. }
            | Response::LeaseRevoked { revision, .. }
            | Response::Txn { revision, .. }
            | Response::Registry { revision, .. }
            | Response::Done { revision }
            | Response::Error { revision, .. } => *revision,
        }
    }
}
