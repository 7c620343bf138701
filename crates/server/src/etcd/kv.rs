//! etcd `KV`: Range (current or past revision), Put, DeleteRange, Txn (see
//! `txn.rs`) and Compact.

use roster_proto::etcdserverpb::kv_server::Kv;
use roster_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use roster_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use roster_proto::mvccpb;
use roster_state::auth::Caller;
use roster_state::{Command, KeyValue, Put, Response, StateError};
use tonic::{Request, Response as GrpcResponse, Status};

use super::errors::{empty_key, fail_status, state_status, too_large};
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
    /// Proposes a write command sent by `caller` and maps an applied logical
    /// error to etcd's. A caller with a token that the local state already
    /// refuses is answered at once, without a log entry; apply decides again
    /// at the entry's place, and alone for a call without a token (so a write
    /// with auth off takes no lock on the state).
    pub(crate) async fn write(
        &self,
        caller: Option<Caller>,
        command: Command,
    ) -> Result<Response, Status> {
        self.write_mapped(caller, command, state_status).await
    }

    /// [`EtcdApi::write`] with the API's own mapping of logical errors.
    pub(crate) async fn write_mapped(
        &self,
        caller: Option<Caller>,
        command: Command,
        error_status: fn(&StateError) -> Status,
    ) -> Result<Response, Status> {
        if caller.is_some() {
            self.read(|sm| {
                sm.authorize(caller.as_ref(), &command)
                    .map_err(|fail| super::errors::fail_status_with(fail, error_status))
            })?;
        }
        let response = self
            .router
            .propose(command.sent_by(caller))
            .await
            .map_err(super::route_status)?;
        match response {
            Response::Error { error, .. } => Err(error_status(&error)),
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

/// The state machine's part of a range: post-read filters and sorts need every
/// key, so they turn the limit and count-only off (see [`range_response`]).
pub(crate) fn range_query(req: &RangeRequest) -> roster_state::RangeRequest {
    let post = needs_sort(req) || has_filters(req);
    roster_state::RangeRequest {
        key: req.key.clone(),
        range_end: req.range_end.clone(),
        limit: if post { 0 } else { req.limit },
        count_only: req.count_only && !post,
        keys_only: req.keys_only,
        revision: req.revision,
    }
}

/// etcd's answer to `req` from what [`range_query`] read.
pub(crate) fn range_response(
    api: &EtcdApi,
    req: &RangeRequest,
    mut result: roster_state::RangeResult,
) -> RangeResponse {
    let mut more = result.more;
    if needs_sort(req) || has_filters(req) {
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
    RangeResponse {
        header: api.header(result.revision),
        kvs: result.kvs.into_iter().map(to_proto_kv).collect(),
        more,
        count: result.count,
    }
}

pub(crate) fn to_put(req: PutRequest) -> Put {
    Put {
        key: req.key,
        value: req.value,
        lease: req.lease,
        prev_kv: req.prev_kv,
        ignore_value: req.ignore_value,
        ignore_lease: req.ignore_lease,
    }
}

/// Refuses a write whose keys reach into a reserved prefix: only the registry
/// API may change instance records, so its invariants hold; and the names
/// under `/roster/perm/` stand for rights (see `roster_state::auth`), never
/// for stored keys.
pub(crate) fn check_writable(key: &[u8], range_end: &[u8]) -> Result<(), Status> {
    for (reserved, why) in [
        (
            roster_state::registry::REGISTRY_PREFIX,
            "belong to the registry; change them through the registry API",
        ),
        (
            roster_state::auth::PERMISSION_PREFIX,
            "name permissions, not keys; grant them with etcdctl role grant-permission",
        ),
    ] {
        let reserved_end = roster_state::prefix_range_end(reserved);
        let touches = match range_end {
            [] => key.starts_with(reserved),
            // Every key >= `key`.
            [0] => key < reserved_end.as_slice(),
            end => key < reserved_end.as_slice() && end > reserved,
        };
        if touches {
            return Err(Status::permission_denied(format!(
                "roster: keys under {} {why}",
                String::from_utf8_lossy(reserved)
            )));
        }
    }
    Ok(())
}

/// etcd's checks of a put: a key, and no value or lease given with the flag that
/// keeps the old one.
pub(crate) fn check_put(req: &PutRequest) -> Result<(), Status> {
    if req.key.is_empty() {
        return Err(empty_key());
    }
    check_writable(&req.key, &[])?;
    if req.ignore_value && !req.value.is_empty() {
        return Err(Status::invalid_argument("etcdserver: value is provided"));
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(Status::invalid_argument("etcdserver: lease is provided"));
    }
    Ok(())
}

#[tonic::async_trait]
impl Kv for EtcdApi {
    async fn range(
        &self,
        req: Request<RangeRequest>,
    ) -> Result<GrpcResponse<RangeResponse>, Status> {
        let caller = self.caller(&req)?;
        let req = req.into_inner();
        if req.key.is_empty() {
            return Err(empty_key());
        }
        self.before_read(req.serializable).await?;
        let query = range_query(&req);
        let result = self.read(|sm| {
            sm.authorize_read(caller.as_ref(), &req.key, &req.range_end)
                .map_err(fail_status)?;
            sm.range(&query).map_err(fail_status)
        })?;
        Ok(GrpcResponse::new(range_response(self, &req, result)))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<GrpcResponse<PutResponse>, Status> {
        let caller = self.caller(&req)?;
        let req = req.into_inner();
        check_put(&req)?;
        if req.key.len() + req.value.len() > MAX_REQUEST_BYTES {
            return Err(too_large());
        }
        match self.write(caller, Command::Put(to_put(req))).await? {
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
        let caller = self.caller(&req)?;
        let req = req.into_inner();
        if req.key.is_empty() {
            return Err(empty_key());
        }
        check_writable(&req.key, &req.range_end)?;
        let command = Command::DeleteRange {
            key: req.key,
            range_end: req.range_end,
            prev_kv: req.prev_kv,
        };
        match self.write(caller, command).await? {
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

    async fn txn(&self, req: Request<TxnRequest>) -> Result<GrpcResponse<TxnResponse>, Status> {
        let caller = self.caller(&req)?;
        self.txn_request(caller, req.into_inner())
            .await
            .map(GrpcResponse::new)
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<GrpcResponse<CompactionResponse>, Status> {
        // Compaction runs as part of applying the entry, so it is always
        // "physical": done when the answer comes.
        // Unchecked while auth is on, as in etcd 3.4.
        let caller = self.caller(&req)?;
        let command = Command::Compact {
            revision: req.into_inner().revision,
        };
        match self.write(caller, command).await? {
            Response::Done { revision } => Ok(GrpcResponse::new(CompactionResponse {
                header: self.header(revision),
            })),
            other => Err(unexpected(&other)),
        }
    }
}

/// A response of the wrong kind for its command: a bug, reported as internal.
pub(crate) fn unexpected(response: &Response) -> Status {
    tracing::error!(?response, "response does not match its command");
    Status::internal("roster: unexpected response to a command")
}
