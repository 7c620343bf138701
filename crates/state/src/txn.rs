//! etcd transactions: compares, then one of two branches of reads and writes, all
//! at one revision.
//!
//! Compares and operations run in order against the command's staged view, so an
//! operation sees the ones before it (as in etcd). Every write of a txn gets the
//! same revision: the revision only moves when the command ends. A failing
//! operation fails the whole txn, and the command's rollback undoes the rest.
//! A branch may not write one key twice (`DuplicateKey`), which is also what lets
//! the history name a key's version by revision alone.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::command::Response;
use crate::engine::{Engine, EngineError};
use crate::error::{Fail, StateError};
use crate::history;
use crate::keyspace::{self, KeyValue, Put, RangeRequest, RangeResult};
use crate::layout;
use crate::tx::{Tx, View};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

/// One condition: every key in `[key, range_end)` (etcd range rules) must satisfy
/// `target op value`. A missing key compares as zero; its value never matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub op: CompareOp,
    pub target: CompareTarget,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// What to compare, with the value to compare it to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Version(i64),
    CreateRevision(i64),
    ModRevision(i64),
    Value(Vec<u8>),
    Lease(i64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    Range(RangeRequest),
    Put(Put),
    DeleteRange {
        key: Vec<u8>,
        range_end: Vec<u8>,
        prev_kv: bool,
    },
    Txn(Txn),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOpResponse {
    Range(RangeResult),
    Put {
        prev_kv: Option<KeyValue>,
    },
    DeleteRange {
        deleted: i64,
        prev_kvs: Vec<KeyValue>,
    },
    Txn {
        succeeded: bool,
        responses: Vec<TxnOpResponse>,
    },
}

impl Txn {
    /// True if neither branch (nor any nested txn) writes: such a txn can be
    /// answered from a node's applied state without going through the log.
    pub fn is_read_only(&self) -> bool {
        self.success.iter().chain(&self.failure).all(|op| match op {
            TxnOp::Range(_) => true,
            TxnOp::Txn(inner) => inner.is_read_only(),
            TxnOp::Put(_) | TxnOp::DeleteRange { .. } => false,
        })
    }
}

/// Applies `txn` to the staged view.
pub(crate) fn apply<E: Engine>(tx: &mut Tx<'_, E>, txn: &Txn) -> Result<Response, Fail> {
    txn.check_duplicates()?;
    let (succeeded, responses) = run(tx, txn)?;
    Ok(Response::Txn {
        revision: tx.revision(),
        succeeded,
        responses,
    })
}

fn run<E: Engine>(tx: &mut Tx<'_, E>, txn: &Txn) -> Result<(bool, Vec<TxnOpResponse>), Fail> {
    let mut succeeded = true;
    for compare in &txn.compare {
        if !holds(tx, compare)? {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded {
        &txn.success
    } else {
        &txn.failure
    };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        responses.push(run_op(tx, op)?);
    }
    Ok((succeeded, responses))
}

fn run_op<E: Engine>(tx: &mut Tx<'_, E>, op: &TxnOp) -> Result<TxnOpResponse, Fail> {
    Ok(match op {
        TxnOp::Range(req) => {
            let current = tx.revision();
            TxnOpResponse::Range(history::read(tx, req, current)?)
        }
        TxnOp::Put(put) => {
            let old = keyspace::put_kv(tx, put)?;
            TxnOpResponse::Put {
                prev_kv: old.filter(|_| put.prev_kv),
            }
        }
        TxnOp::DeleteRange {
            key,
            range_end,
            prev_kv,
        } => {
            let removed = keyspace::delete_kvs(tx, key, range_end)?;
            TxnOpResponse::DeleteRange {
                deleted: removed.len() as i64,
                prev_kvs: if *prev_kv { removed } else { Vec::new() },
            }
        }
        TxnOp::Txn(inner) => {
            let (succeeded, responses) = run(tx, inner)?;
            TxnOpResponse::Txn {
                succeeded,
                responses,
            }
        }
    })
}

/// Whether `compare` holds for every key it selects.
fn holds(view: &impl View, compare: &Compare) -> Result<bool, EngineError> {
    let mut any = false;
    if let Some((start, end)) = keyspace::engine_bounds(&compare.key, &compare.range_end) {
        for item in view.read_range(&start, Some(&end)) {
            let kv: KeyValue = layout::decode(&item?.1)?;
            any = true;
            if !compare_kv(compare, &kv) {
                return Ok(false);
            }
        }
    }
    if any {
        return Ok(true);
    }
    // etcd: a value never matches a missing key; the numbers compare as zero.
    if matches!(compare.target, CompareTarget::Value(_)) {
        return Ok(false);
    }
    let missing = KeyValue {
        key: compare.key.clone(),
        create_revision: 0,
        mod_revision: 0,
        version: 0,
        value: Vec::new(),
        lease: 0,
    };
    Ok(compare_kv(compare, &missing))
}

fn compare_kv(compare: &Compare, kv: &KeyValue) -> bool {
    let order = match &compare.target {
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::CreateRevision(v) => kv.create_revision.cmp(v),
        CompareTarget::ModRevision(v) => kv.mod_revision.cmp(v),
        CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
        CompareTarget::Lease(v) => kv.lease.cmp(v),
    };
    match compare.op {
        CompareOp::Equal => order == Ordering::Equal,
        CompareOp::NotEqual => order != Ordering::Equal,
        CompareOp::Less => order == Ordering::Less,
        CompareOp::Greater => order == Ordering::Greater,
    }
}

/// The keys a path through a txn writes: single keys put, ranges deleted.
#[derive(Clone, Default)]
struct Writes<'t> {
    puts: Vec<&'t [u8]>,
    deletes: Vec<(&'t [u8], &'t [u8])>,
}

impl Txn {
    /// etcd's rule: along any path through the txn (a branch and the branches of
    /// the txns nested in it), no key is put twice, and no key put is also
    /// deleted. Checked again at apply; a server checks it first to refuse such a
    /// txn without a log entry.
    pub fn check_duplicates(&self) -> Result<(), StateError> {
        for branch in [&self.success, &self.failure] {
            check_branch(branch, Writes::default())?;
        }
        Ok(())
    }
}

fn check_branch<'t>(ops: &'t [TxnOp], mut writes: Writes<'t>) -> Result<(), StateError> {
    for op in ops {
        match op {
            TxnOp::Put(put) => {
                if writes.puts.contains(&put.key.as_slice()) {
                    return Err(StateError::DuplicateKey);
                }
                writes.puts.push(&put.key);
            }
            TxnOp::DeleteRange { key, range_end, .. } => writes.deletes.push((key, range_end)),
            TxnOp::Range(_) | TxnOp::Txn(_) => {}
        }
    }
    let deleted = |key: &[u8]| {
        writes
            .deletes
            .iter()
            .any(|(s, e)| keyspace::range_contains(s, e, key))
    };
    if writes.puts.iter().any(|key| deleted(key)) {
        return Err(StateError::DuplicateKey);
    }
    for op in ops {
        if let TxnOp::Txn(inner) = op {
            check_branch(&inner.success, writes.clone())?;
            check_branch(&inner.failure, writes.clone())?;
        }
    }
    Ok(())
}
