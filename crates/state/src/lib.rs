//! The deterministic state machine of Roster.
//!
//! Everything that every node must agree on lives here: the MVCC keyspace (etcd's
//! revision model), the lease table, and the removal reason of every deleted key.
//! It is driven only by [`Command`]s applied in log order, so it knows nothing of
//! networks, clocks or Raft: `apply` is a pure function of (stored state, command).
//! Time enters only as values inside commands, stamped by the proposing leader.
//!
//! Storage goes through the small [`Engine`] trait (get / scan / atomic batch /
//! flush) so that the keyspace need not fit in memory: sled implements it on real
//! nodes (in `roster-raft`), [`MemEngine`] in tests and simulation.
//!
//! Layout of the engine's keys (one flat ordered keyspace, prefixes keep the parts
//! apart; all integers big-endian so that byte order is numeric order):
//!
//! | prefix            | value                                                        |
//! |-------------------|--------------------------------------------------------------|
//! | `k/<key>`         | [`KeyValue`], the live version of a key                      |
//! | `e/<rev><sub>`    | the key that changed and its previous version's revision     |
//! | `h/<esc key><rev>`| the key's version at `rev` (put, or delete with its reason)  |
//! | `l/<id>`          | [`Lease`]                                                    |
//! | `a/<id><key>`     | empty: the keys attached to a lease                          |
//! | `p/<id>`          | [`MemberAttrs`] a member published                          |
//! | `u/<rev>`         | [`registry::AuditEntry`]: a forced removal, who and why      |
//! | `d/<ms><svc>/<id>`| empty: a drain deadline (ms since the epoch), soonest first  |
//! | `hd/<name>`       | [`handlers::HandlerDef`]                                     |
//! | `hu/<event type>` | the name of the cluster-wide handler of that event type      |
//! | `o/<seq>`         | [`handlers::HandlerEvent`]: the outbox, undelivered events   |
//! | `f/<seq>`         | [`handlers::DeliveryFailure`]: events no attempt delivered   |
//! | `m/<name>`        | the caller's opaque metadata (`apply`'s `meta`), any name    |
//! | `s/revision`      | the store revision, i64; absent = 1 (an empty store)         |
//! | `s/lease_seq`     | u64 counter behind generated lease ids (`LeaseGrant{id: 0}`) |
//! | `s/compacted`     | the revision of the last `Compact`, i64; absent = 0          |
//! | `s/outbox_seq`    | u64: the last handler event id                               |
//! | `s/auth`          | [`auth::AuthStatus`]: auth on or off, its revision, token key |
//! | `xu/<name>`       | [`auth::User`]: roles and password hash                      |
//! | `xr/<name>`       | [`auth::Role`]: key-range permissions                        |
//!
//! Values of `k/`, `e/`, `h/`, `l/` are bincode 1.3 (default options). `<rev>` and
//! `<sub>` are 8-byte big-endian (`<sub>` numbers the events of one revision from
//! 0); `<id>` is the lease id with its sign bit flipped, big-endian, so leases sort
//! by signed id. `<esc key>` is the key with each `0x00` escaped as `0x00 0xff`
//! and `0x00 0x01` appended, so versions sort by key, then revision (see
//! `history`). The state machine's own entries live under `s/`, apart from the
//! caller's `m/`, so no metadata name can collide with them.

pub mod auth;
pub mod check;
mod command;
mod engine;
mod error;
pub mod handlers;
mod history;
mod keyspace;
mod layout;
mod lease;
mod machine;
mod members;
mod mix;
pub mod registry;
mod restore;
pub mod selector;
mod snapshot;
#[cfg(test)]
mod tests;
mod tx;
mod txn;

pub use command::{Command, Response};
pub use engine::{Batch, DynEngine, Engine, EngineError, MemEngine, ScanItem};
pub use error::{Fail, StateError};
pub use keyspace::{
    prefix_range_end, range_contains, Event, EventKind, KeyValue, Put, RangeRequest, RangeResult,
    RemovalReason,
};
pub use lease::{Lease, MAX_LEASE_TTL};
pub use machine::{Applied, StateMachine};
pub use members::MemberAttrs;
pub use mix::splitmix64;
pub use restore::SnapshotSummary;
pub use snapshot::SnapshotData;
pub use txn::{Compare, CompareOp, CompareTarget, Txn, TxnOp, TxnOpResponse};
