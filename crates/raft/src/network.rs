//! The peer transport: openraft's three RPCs carried over gRPC on the peer port.
//!
//! Each openraft request and response travels as one bincode blob inside a
//! `roster.raftpb` message, so the wire format follows openraft's own types and the
//! proto stays a thin envelope. The client side ([`GrpcNetworkFactory`]) connects
//! lazily and maps transport failures to `Unreachable` (openraft then backs off) and
//! remote raft errors to `RemoteError`; the server side ([`RaftPeerService`]) hands
//! each request to the local [`Raft`].
//!
//! The factory is one implementation of openraft's `RaftNetworkFactory`: the node is
//! generic over it so that a simulated network can replace it in tests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use roster_proto::raftpb::raft_peer_client::RaftPeerClient;
use roster_proto::raftpb::raft_peer_server::RaftPeer;
use roster_proto::raftpb::{RaftReply, RaftRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use crate::transport::{TcpTransport, Transport};
use crate::types::{Member, NodeId, Raft, TypeConfig};

/// Largest raft message accepted on the peer port (snapshot chunks and entry batches).
const MAX_PEER_MESSAGE: usize = 64 * 1024 * 1024;

/// A failure to encode or decode a peer message.
#[derive(Debug, thiserror::Error)]
#[error("peer message codec: {0}")]
pub struct CodecError(String);

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serialize(value).map_err(|e| CodecError(e.to_string()))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    bincode::deserialize(bytes).map_err(|e| CodecError(e.to_string()))
}

/// One client per peer, made lazily over a transport and shared: clones of a
/// tonic channel share its HTTP/2 connection. openraft asks for a new network
/// client for every replication session, election and leadership check (each
/// lessor keepalive batch, each linearizable read); a connection per ask cost
/// a TCP and HTTP/2 handshake each, and while a peer refused connections ran
/// the simulation's hosts out of ports. [`PeerClients::forget`] drops a client
/// after a call on it failed on the wire, so the next connects afresh rather
/// than wait on a connection that may be stuck until HTTP/2 pings give up on it
/// (seconds after a partition heals). Raft traffic and forwarded requests each
/// have their own.
#[derive(Clone)]
pub struct PeerClients {
    transport: Arc<dyn Transport>,
    cache: Arc<Mutex<PeerCache>>,
}

/// A peer's client and which one it is (so a failure drops only the client it
/// happened on).
pub type PeerClient = (RaftPeerClient<Channel>, u64);

/// One peer's cached client and the member address it was made for.
struct CachedPeer {
    member: Member,
    client: RaftPeerClient<Channel>,
    made: u64,
}

#[derive(Default)]
struct PeerCache {
    peers: BTreeMap<NodeId, CachedPeer>,
    made: u64,
}

impl PeerClients {
    pub fn new(transport: Arc<dyn Transport>) -> Self {
        PeerClients {
            transport,
            cache: Arc::default(),
        }
    }

    /// A poisoned lock only means a panic elsewhere while it was held; the map
    /// is always whole, so keep using it.
    fn lock(&self) -> MutexGuard<'_, PeerCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached client of `target`, or a new one if there is none or the
    /// member's address changed.
    pub fn get(&self, target: NodeId, node: &Member) -> Result<PeerClient, String> {
        let mut cache = self.lock();
        if let Some(peer) = cache.peers.get(&target) {
            if peer.member == *node {
                return Ok((peer.client.clone(), peer.made));
            }
        }
        let client = peer_client(node, self.transport.as_ref())?;
        cache.made += 1;
        let made = cache.made;
        let peer = CachedPeer {
            member: node.clone(),
            client: client.clone(),
            made,
        };
        cache.peers.insert(target, peer);
        Ok((client, made))
    }

    /// Drops client `made` of `target` if it is still the cached one.
    pub fn forget(&self, target: NodeId, made: u64) {
        let mut cache = self.lock();
        if cache.peers.get(&target).is_some_and(|p| p.made == made) {
            cache.peers.remove(&target);
        }
    }
}

/// Builds [`GrpcNetwork`]s over the peers' shared clients.
#[derive(Clone)]
pub struct GrpcNetworkFactory {
    clients: PeerClients,
}

impl GrpcNetworkFactory {
    pub fn new(transport: Arc<dyn Transport>) -> Self {
        GrpcNetworkFactory {
            clients: PeerClients::new(transport),
        }
    }
}

impl Default for GrpcNetworkFactory {
    /// Over real TCP.
    fn default() -> Self {
        Self::new(Arc::new(TcpTransport::default()))
    }
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetworkFactory {
    type Network = GrpcNetwork;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> GrpcNetwork {
        GrpcNetwork {
            target,
            client: self.clients.get(target, node),
            clients: self.clients.clone(),
        }
    }
}

/// The client half of the transport, talking to one peer.
pub struct GrpcNetwork {
    target: NodeId,
    client: Result<PeerClient, String>,
    clients: PeerClients,
}

impl GrpcNetwork {
    /// Sends one request and decodes the remote `Result<Resp, RaftError<E>>`.
    async fn call<Req, Resp, E>(
        &mut self,
        kind: RpcKind,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let (client, made) = match &mut self.client {
            Ok((client, made)) => (client, *made),
            Err(reason) => {
                let err = std::io::Error::other(reason.clone());
                return Err(RPCError::Unreachable(Unreachable::new(&err)));
            }
        };
        let payload = encode(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut req = tonic::Request::new(RaftRequest { payload });
        req.set_timeout(option.hard_ttl());
        let reply = match kind {
            RpcKind::Append => client.append_entries(req).await,
            RpcKind::Vote => client.vote(req).await,
            RpcKind::Snapshot => client.install_snapshot(req).await,
        };
        let reply = match reply {
            Ok(reply) => reply.into_inner(),
            Err(status) => {
                // The peer service answers raft's errors inside the reply, so
                // a status is the transport's, a deadline's or an undecodable
                // request's: start afresh. Not for a connection that could not
                // be made: the channel retries that itself on its next call,
                // and a new channel per attempt while a peer was down only
                // multiplied connections.
                if !never_sent(&status) {
                    self.clients.forget(self.target, made);
                }
                return Err(status_to_rpc_error(status));
            }
        };
        if !reply.error.is_empty() {
            let err = std::io::Error::other(reply.error);
            return Err(RPCError::Network(NetworkError::new(&err)));
        }
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(&reply.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[derive(Clone, Copy)]
enum RpcKind {
    Append,
    Vote,
    Snapshot,
}

/// Whether a failed call provably never reached the peer: the connection
/// could not be made (tonic marks that with `ConnectError` in the source chain).
pub fn never_sent(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        if error.downcast_ref::<tonic::ConnectError>().is_some() {
            return true;
        }
        source = error.source();
    }
    false
}

/// A peer that cannot be reached is `Unreachable` (openraft backs off); anything
/// else is a retryable network error.
fn status_to_rpc_error<E: std::error::Error>(
    status: tonic::Status,
) -> RPCError<NodeId, Member, RaftError<NodeId, E>> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
            RPCError::Unreachable(Unreachable::new(&status))
        }
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

impl RaftNetwork<TypeConfig> for GrpcNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call(RpcKind::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(RpcKind::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call(RpcKind::Vote, &rpc, &option).await
    }
}

/// Handles client requests that a follower forwards to this node (the leader).
/// The payload format belongs to the server crate; the transport only carries it.
#[tonic::async_trait]
pub trait ForwardHandler: Send + Sync + 'static {
    /// Answers one forwarded request; an `Err` text goes back as the reply's error.
    async fn forward(&self, payload: Vec<u8>) -> Result<Vec<u8>, String>;
}

/// The server half: peer RPCs handed to the local raft node.
#[derive(Clone)]
pub struct RaftPeerService {
    raft: Raft,
    forward: Arc<dyn ForwardHandler>,
}

impl RaftPeerService {
    pub fn new(raft: Raft, forward: Arc<dyn ForwardHandler>) -> Self {
        RaftPeerService { raft, forward }
    }

    /// The tonic service, with message limits large enough for entry batches.
    pub fn into_server(self) -> roster_proto::raftpb::raft_peer_server::RaftPeerServer<Self> {
        roster_proto::raftpb::raft_peer_server::RaftPeerServer::new(self)
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE)
    }
}

/// Encodes a local raft result as the reply payload; a codec failure is the
/// reply's error text.
fn reply<T: Serialize>(result: &T) -> Result<tonic::Response<RaftReply>, tonic::Status> {
    Ok(tonic::Response::new(match encode(result) {
        Ok(payload) => RaftReply {
            payload,
            error: String::new(),
        },
        Err(e) => RaftReply {
            payload: Vec::new(),
            error: e.to_string(),
        },
    }))
}

fn request<T: DeserializeOwned>(req: tonic::Request<RaftRequest>) -> Result<T, tonic::Status> {
    decode(&req.into_inner().payload).map_err(|e| tonic::Status::invalid_argument(e.to_string()))
}

#[tonic::async_trait]
impl RaftPeer for RaftPeerService {
    async fn append_entries(
        &self,
        req: tonic::Request<RaftRequest>,
    ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = request(req)?;
        reply(&self.raft.append_entries(rpc).await)
    }

    async fn vote(
        &self,
        req: tonic::Request<RaftRequest>,
    ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        let rpc: VoteRequest<NodeId> = request(req)?;
        reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: tonic::Request<RaftRequest>,
    ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = request(req)?;
        reply(&self.raft.install_snapshot(rpc).await)
    }

    async fn forward(
        &self,
        req: tonic::Request<RaftRequest>,
    ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        let reply = match self.forward.forward(req.into_inner().payload).await {
            Ok(payload) => RaftReply {
                payload,
                error: String::new(),
            },
            Err(error) => RaftReply {
                payload: Vec::new(),
                error,
            },
        };
        Ok(tonic::Response::new(reply))
    }
}

/// A client for another member's peer port (raft traffic, forwarded requests);
/// [`PeerClients`] keeps them.
fn peer_client(
    member: &Member,
    transport: &dyn Transport,
) -> Result<RaftPeerClient<Channel>, String> {
    let url = member
        .peer_urls
        .first()
        .ok_or_else(|| format!("member {member} has no peer URL"))?;
    let endpoint =
        Endpoint::from_shared(url.clone()).map_err(|e| format!("peer URL {url}: {e}"))?;
    // HTTP/2 pings find a connection whose peer vanished without a reset (a
    // partition, a frozen host) within seconds instead of TCP's hours, so
    // the channel reconnects once the peer is back.
    let endpoint = endpoint
        .connect_timeout(Duration::from_millis(500))
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    let channel = transport.channel(forget_reset_streams(endpoint));
    Ok(RaftPeerClient::new(channel)
        .max_decoding_message_size(MAX_PEER_MESSAGE)
        .max_encoding_message_size(MAX_PEER_MESSAGE))
}

/// HTTP/2 remembers a stream it reset (a call that timed out) for 30 s of
/// real time (`std::time::Instant`), to drop late frames for it quietly; the
/// simulation's virtual time cannot reach that clock, so on a long-lived
/// connection a slower build took another course. Remembering none makes a
/// late frame answered with a stream reset at any speed; the limit on such
/// answers, meant for hostile peers, is lifted for our own peers and clients.
pub fn forget_reset_streams(endpoint: Endpoint) -> Endpoint {
    endpoint
        .http2_max_concurrent_reset_streams(0)
        .http2_max_local_error_reset_streams(None)
}
