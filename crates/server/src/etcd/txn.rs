//! etcd `Txn`: validated as etcd validates it, translated to the state machine's
//! [`Txn`], and its answer translated back beside the request it answers (range
//! results get the request's sort and filters there, as in a plain Range).
//!
//! A txn that writes nothing is answered from the local state after a read-index
//! confirmation (none if all its ranges are serializable), as etcd does; any other
//! goes through the log.

use roster_proto::etcdserverpb::compare::{CompareResult, CompareTarget as PbTarget, TargetUnion};
use roster_proto::etcdserverpb::request_op::Request as PbRequest;
use roster_proto::etcdserverpb::response_op::Response as PbResponse;
use roster_proto::etcdserverpb::{
    Compare as PbCompare, DeleteRangeResponse, PutResponse, RequestOp, ResponseOp, TxnRequest,
    TxnResponse,
};
use roster_state::auth::Caller;
use roster_state::{
    Command, Compare, CompareOp, CompareTarget, Response, Txn, TxnOp, TxnOpResponse,
};
use tonic::Status;

use super::errors::{empty_key, fail_status, state_status};
use super::kv::{
    check_put, check_writable, range_query, range_response, to_proto_kv, to_put, unexpected,
};
use super::EtcdApi;

/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;

impl EtcdApi {
    pub(crate) async fn txn_request(
        &self,
        caller: Option<Caller>,
        req: TxnRequest,
    ) -> Result<TxnResponse, Status> {
        check_txn(&req, MAX_TXN_OPS)?;
        let txn = to_txn(&req);
        txn.check_duplicates().map_err(|e| state_status(&e))?;
        let response = if txn.is_read_only() {
            self.before_read(all_serializable(&req)).await?;
            self.read(|sm| {
                sm.authorize_txn(caller.as_ref(), &txn)
                    .map_err(fail_status)?;
                sm.read_txn(&txn).map_err(fail_status)
            })?
        } else {
            self.write(caller, Command::Txn(txn)).await?
        };
        match response {
            Response::Txn {
                revision,
                succeeded,
                responses,
            } => Ok(self.txn_response(&req, revision, succeeded, responses)),
            Response::Error { error, .. } => Err(state_status(&error)),
            other => Err(unexpected(&other)),
        }
    }

    fn txn_response(
        &self,
        req: &TxnRequest,
        revision: i64,
        succeeded: bool,
        responses: Vec<TxnOpResponse>,
    ) -> TxnResponse {
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let responses = ops
            .iter()
            .zip(responses)
            .map(|(op, response)| ResponseOp {
                response: Some(self.op_response(op, revision, response)),
            })
            .collect();
        TxnResponse {
            header: self.header(revision),
            succeeded,
            responses,
        }
    }

    fn op_response(&self, op: &RequestOp, revision: i64, response: TxnOpResponse) -> PbResponse {
        match (response, &op.request) {
            (TxnOpResponse::Range(result), Some(PbRequest::RequestRange(req))) => {
                PbResponse::ResponseRange(range_response(self, req, result))
            }
            (
                TxnOpResponse::Txn {
                    succeeded,
                    responses,
                },
                Some(PbRequest::RequestTxn(req)),
            ) => PbResponse::ResponseTxn(self.txn_response(req, revision, succeeded, responses)),
            (TxnOpResponse::Put { prev_kv }, _) => PbResponse::ResponsePut(PutResponse {
                header: self.header(revision),
                prev_kv: prev_kv.map(to_proto_kv),
            }),
            (TxnOpResponse::DeleteRange { deleted, prev_kvs }, _) => {
                PbResponse::ResponseDeleteRange(DeleteRangeResponse {
                    header: self.header(revision),
                    deleted,
                    prev_kvs: prev_kvs.into_iter().map(to_proto_kv).collect(),
                })
            }
            // The state machine answers each op with its own kind, so a range or
            // txn answer always meets a range or txn request.
            (TxnOpResponse::Range(result), _) => {
                PbResponse::ResponseRange(range_response(self, &Default::default(), result))
            }
            (TxnOpResponse::Txn { succeeded, .. }, _) => PbResponse::ResponseTxn(TxnResponse {
                header: self.header(revision),
                succeeded,
                responses: Vec::new(),
            }),
        }
    }
}

/// etcd's `checkTxnRequest`: at most `max_ops` compares and ops per branch (nested
/// txns share what is left), keys present, puts well formed.
fn check_txn(req: &TxnRequest, max_ops: usize) -> Result<(), Status> {
    let ops = req
        .compare
        .len()
        .max(req.success.len())
        .max(req.failure.len());
    if ops > max_ops {
        return Err(Status::invalid_argument(
            "etcdserver: too many operations in txn request",
        ));
    }
    if req.compare.iter().any(|c| c.key.is_empty()) {
        return Err(empty_key());
    }
    for op in req.success.iter().chain(&req.failure) {
        match &op.request {
            Some(PbRequest::RequestRange(r)) if r.key.is_empty() => return Err(empty_key()),
            Some(PbRequest::RequestDeleteRange(d)) if d.key.is_empty() => return Err(empty_key()),
            Some(PbRequest::RequestDeleteRange(d)) => check_writable(&d.key, &d.range_end)?,
            Some(PbRequest::RequestPut(p)) => check_put(p)?,
            Some(PbRequest::RequestTxn(t)) => check_txn(t, max_ops - ops)?,
            Some(_) => {}
            None => return Err(Status::invalid_argument("etcdserver: request op is empty")),
        }
    }
    Ok(())
}

/// Whether every range of the txn (nested ones too) asks for a serializable read.
fn all_serializable(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .all(|op| match &op.request {
            Some(PbRequest::RequestRange(r)) => r.serializable,
            Some(PbRequest::RequestTxn(t)) => all_serializable(t),
            _ => true,
        })
}

/// Translates a checked request.
fn to_txn(req: &TxnRequest) -> Txn {
    Txn {
        compare: req.compare.iter().map(to_compare).collect(),
        success: req.success.iter().filter_map(to_op).collect(),
        failure: req.failure.iter().filter_map(to_op).collect(),
    }
}

fn to_op(op: &RequestOp) -> Option<TxnOp> {
    Some(match op.request.as_ref()? {
        PbRequest::RequestRange(r) => TxnOp::Range(range_query(r)),
        PbRequest::RequestPut(p) => TxnOp::Put(to_put(p.clone())),
        PbRequest::RequestDeleteRange(d) => TxnOp::DeleteRange {
            key: d.key.clone(),
            range_end: d.range_end.clone(),
            prev_kv: d.prev_kv,
        },
        PbRequest::RequestTxn(t) => TxnOp::Txn(to_txn(t)),
    })
}

/// The compared field is `target`; its value comes from the union member of that
/// field (etcd reads a missing or other member as zero / empty).
fn to_compare(c: &PbCompare) -> Compare {
    let union = c.target_union.as_ref();
    let number = |want: fn(&TargetUnion) -> Option<i64>| union.and_then(want).unwrap_or(0);
    let target = match PbTarget::try_from(c.target).unwrap_or(PbTarget::Version) {
        PbTarget::Version => CompareTarget::Version(number(|u| match u {
            TargetUnion::Version(v) => Some(*v),
            _ => None,
        })),
        PbTarget::Create => CompareTarget::CreateRevision(number(|u| match u {
            TargetUnion::CreateRevision(v) => Some(*v),
            _ => None,
        })),
        PbTarget::Mod => CompareTarget::ModRevision(number(|u| match u {
            TargetUnion::ModRevision(v) => Some(*v),
            _ => None,
        })),
        PbTarget::Lease => CompareTarget::Lease(number(|u| match u {
            TargetUnion::Lease(v) => Some(*v),
            _ => None,
        })),
        PbTarget::Value => CompareTarget::Value(match union {
            Some(TargetUnion::Value(v)) => v.clone(),
            _ => Vec::new(),
        }),
    };
    let op = match CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal) {
        CompareResult::Equal => CompareOp::Equal,
        CompareResult::NotEqual => CompareOp::NotEqual,
        CompareResult::Less => CompareOp::Less,
        CompareResult::Greater => CompareOp::Greater,
    };
    Compare {
        key: c.key.clone(),
        range_end: c.range_end.clone(),
        op,
        target,
    }
}
