//! etcd `KV`: Range, Put, DeleteRange. Txn and Compact arrive with the history
//! work (issue 3) and answer `Unimplemented` until then.

use roster_proto::etcdserverpb::kv_server::Kv;
use roster_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use roster_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use roster_proto::mvccpb;
use roster_state::{Command, KeyValue, Response};
use tonic::{Request, Response as GrpcResponse, Status};

use super::errors::{empty_key, engine_status, future_revision, state_status, too_large};
use super::{EtcdApi, MAX_REQUEST_BYTES};

pub(crate) fn to_proto_kv(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

impl EtcdApi {
    /// Proposes a write command and maps an applied logical error to etcd's.
    pub(crate) async fn write(&self, command: Command) -> Result<Response, Status> {
        let response = self
            .router
            .propose(command)
            .await
            .map_err(super::route_status)?;
        match response {
            Response::Error { error, .. } => Err(state_status(&error)),
            ok => Ok(ok),
        }
    }
}

/// Whether the request asks for an order other than ascending by key (which the
/// store returns by itself).
fn needs_sort(req: &RangeRequest) -> bool {
    let order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    !(order == SortOrder::None || (order == SortOrder::Ascend && target == SortTarget::Key))
}

fn has_filters(req: &RangeRequest) -> bool {
    req.min_mod_revision > 0
        || req.max_mod_revision > 0
        || req.min_create_revision > 0
        || req.max_create_revision > 0
}

/// etcd's post-read filters and sort, applied to a full (unlimited) read.
fn filter_and_sort(req: &RangeRequest, kvs: &mut Vec<KeyValue>) {
    let within = |v: i64, min: i64, max: i64| (min == 0 || v >= min) && (max == 0 || v <= max);
    kvs.retain(|kv| {
        within(kv.mod_revision, req.min_mod_revision, req.max_mod_revision)
            && within(
                kv.create_revision,
                req.min_create_revision,
                req.max_create_revision,
            )
    });
    if !needs_sort(req) {
        return;
    }
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    match target {
        SortTarget::Key => {}
        SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
        SortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
        SortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
        SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
    }
    if SortOrder::try_from(req.sort_order) == Ok(SortOrder::Descend) {
        kvs.reverse();
    }
}

impl EtcdApi {
    fn range_local(&self, req: &RangeRequest) -> Result<RangeResponse, Status> {
        let post = needs_sort(req) || has_filters(req);
        let query = roster_state::RangeRequest {
            key: req.key.clone(),
            range_end: req.range_end.clone(),
            limit: if post { 0 } else { req.limit },
            count_only: req.count_only && !post,
            keys_only: req.keys_only,
        };
        let mut result = self.read(|sm| sm.range(&query).map_err(engine_status))?;
        if req.revision > result.revision {
            return Err(future_revision());
        }
        if req.revision > 0 && req.revision < result.revision {
            return Err(Status::unimplemented(
                "roster: reads at a past revision are not supported yet",
            ));
        }
        let mut more = result.more;
        if post {
            filter_and_sort(req, &mut result.kvs);
            result.count = result.kvs.len() as i64;
            if req.limit > 0 && result.kvs.len() > req.limit as usize {
                result.kvs.truncate(req.limit as usize);
                more = true;
            }
            if req.count_only {
                result.kvs.clear();
            }
        }
        Ok(RangeResponse {
            header: self.header(result.revision),
            kvs: result.kvs.into_iter().map(to_proto_kv).collect(),
            more,
            count: result.count,
        })
    }
}

#[tonic::async_trait]
impl Kv for EtcdApi {
    async fn range(
        &self,
        req: Request<RangeRequest>,
    ) -> Result<GrpcResponse<RangeResponse>, Status> {
        let req = req.into_inner();
        if req.key.is_empty() {
            return Err(empty_key());
        }
        self.before_read(req.serializable).await?;
        self.range_local(&req).map(GrpcResponse::new)
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<GrpcResponse<PutResponse>, Status> {
        let req = req.into_inner();
        if req.key.is_empty() {
            return Err(empty_key());
        }
        if req.key.len() + req.value.len() > MAX_REQUEST_BYTES {
            return Err(too_large());
        }
        let command = Command::Put {
            key: req.key,
            value: req.value,
            lease: req.lease,
            prev_kv: req.prev_kv,
            ignore_value: req.ignore_value,
            ignore_lease: req.ignore_lease,
        };
        match self.write(command).await? {
            Response::Put { revision, prev_kv } => Ok(GrpcResponse::new(PutResponse {
                header: self.header(revision),
                prev_kv: prev_kv.map(to_proto_kv),
            })),
            other => Err(unexpected(&other)),
        }
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<GrpcResponse<DeleteRangeResponse>, Status> {
        let req = req.into_inner();
        if req.key.is_empty() {
            return Err(empty_key());
        }
        let command = Command::DeleteRange {
            key: req.key,
            range_end: req.range_end,
            prev_kv: req.prev_kv,
        };
        match self.write(command).await? {
            Response::DeleteRange {
                revision,
                deleted,
                prev_kvs,
            } => Ok(GrpcResponse::new(DeleteRangeResponse {
                header: self.header(revision),
                deleted,
                prev_kvs: prev_kvs.into_iter().map(to_proto_kv).collect(),
            })),
            other => Err(unexpected(&other)),
        }
    }

    async fn txn(&self, _req: Request<TxnRequest>) -> Result<GrpcResponse<TxnResponse>, Status> {
        Err(Status::unimplemented("roster: Txn is not supported yet"))
    }

    async fn compact(
        &self,
        _req: Request<CompactionRequest>,
    ) -> Result<GrpcResponse<CompactionResponse>, Status> {
        Err(Status::unimplemented(
            "roster: Compact is not supported yet",
        ))
    }
}

/// A response of the wrong kind for its command: a bug, reported as internal.
pub(crate) fn unexpected(response: &Response) -> Status {
    tracing::error!(?response, "response does not match its command");
    Status::internal("roster: unexpected response to a command")
}
