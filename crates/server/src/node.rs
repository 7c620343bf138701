//! Starting and stopping one node.
//!
//! A node is built from its [`NodeConfig`], its storage (sled, in the data dir) and
//! a peer-network factory; it holds no process-global state (the binary sets up
//! tracing), so several nodes can run in one process. Startup order: check the
//! data dir's identity, bind both listeners (so a port in use is reported before
//! anything is written), open storage, start raft, bootstrap the initial
//! membership on a fresh data dir, then serve.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use openraft::error::{InitializeError, RaftError};
use openraft::storage::RaftLogStorage;
use roster_proto::etcdserverpb::auth_server::AuthServer;
use roster_proto::etcdserverpb::cluster_server::ClusterServer;
use roster_proto::etcdserverpb::kv_server::KvServer;
use roster_proto::etcdserverpb::lease_server::LeaseServer;
use roster_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use roster_proto::etcdserverpb::watch_server::WatchServer;
use roster_proto::grpc_health::health_server::HealthServer;
use roster_proto::registry::handlers_server::HandlersServer;
use roster_proto::registry::registry_server::RegistryServer;
use roster_raft::network::{GrpcNetworkFactory, RaftPeerService};
use roster_raft::transport::{Incoming, TcpTransport, Transport};
use roster_raft::{
    open_storage, ApplyObserver, LogStore, Member, MemoryStorage, NodeId, Raft, Storage,
    StorageOptions,
};
use roster_state::{Command, MemberAttrs};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tonic::transport::server::Connected;
use tonic_reflection::server::{Builder, Error as ReflectionError};

use crate::config::{ClusterState, InitialMember, NodeConfig};
use crate::etcd::{EtcdApi, WatchSettings, MAX_GRPC_MESSAGE};
use crate::grpc_health::HealthService;
use crate::handler_api::HandlerApi;
use crate::health::HealthChecker;
use crate::identity::{self, Identity};
use crate::lessor::{Lessor, LessorConfig};
use crate::metrics::{self, MetricsSource};
use crate::observer::NodeObserver;
use crate::proposer::Proposer;
use crate::registry_api::RegistryApi;
use crate::removal;
use crate::route::{ClusterContext, Router};
use crate::tls::{self, TlsError, TlsFiles};
use crate::url_authority::AuthorityRewrite;
use crate::watch::WatchHub;
use crate::{compactor, drainer, handlers};
use tokio_rustls::TlsAcceptor;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("--initial-cluster has no member named {name:?} (--name); it lists: {listed}")]
    NotInInitialCluster { name: String, listed: String },
    #[error("invalid URL {url:?} in {flag}: expected http://HOST:PORT")]
    BadUrl { flag: &'static str, url: String },
    #[error("{flag} {url}: cannot listen: {source}")]
    Listen {
        flag: &'static str,
        url: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error("storage in {dir}: {reason}")]
    Storage { dir: String, reason: String },
    #[error("raft: {0}")]
    Raft(String),
    #[error("joining a running cluster: {0}")]
    Join(String),
    #[error(
        "{flag} {url} is https: TLS needs --{}cert-file and --{}key-file",
        tls_prefix(flag),
        tls_prefix(flag)
    )]
    NoTls { flag: &'static str, url: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The prefix of the TLS flags for the port of listen flag `flag`.
fn tls_prefix(flag: &str) -> &'static str {
    if flag.contains("peer") {
        "peer-"
    } else {
        ""
    }
}

/// Where a node keeps its raft log and state machine.
pub enum Backend {
    /// sled in `<data-dir>/sled`: durable; what `roster serve` uses.
    Sled,
    /// Memory that outlives the node (for tests and simulation only): starting
    /// a node again with the same `MemoryStorage` is a restart that kept
    /// everything. No data dir is touched.
    Memory(MemoryStorage),
}

/// A running node. Dropping it does not stop it: call [`RunningNode::shutdown`].
/// Entries applied since the last snapshot that make a clean stop save one.
const EXIT_SNAPSHOT_AFTER: u64 = 1_000;
/// Longest a clean stop waits for that snapshot.
const EXIT_SNAPSHOT_WAIT: Duration = Duration::from_secs(20);
/// Longest a clean stop waits for open calls to finish.
const SERVER_DRAIN_WAIT: Duration = Duration::from_secs(3);

pub struct RunningNode {
    pub member_id: NodeId,
    pub cluster_id: u64,
    pub raft: Raft,
    router: Router,
    election_timeout: Duration,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<Result<(), tonic::transport::Error>>>,
}

/// The host:port of an `http://host:port` or `https://host:port` URL.
fn socket_addr(flag: &'static str, url: &str) -> Result<SocketAddr, StartError> {
    let bad = || StartError::BadUrl {
        flag,
        url: url.to_string(),
    };
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(bad)?;
    rest.trim_end_matches('/').parse().map_err(|_| bad())
}

async fn bind(
    transport: &dyn Transport,
    flag: &'static str,
    url: &str,
) -> Result<Incoming, StartError> {
    let addr = socket_addr(flag, url)?;
    transport
        .listen(addr)
        .await
        .map_err(|source| StartError::Listen {
            flag,
            url: url.to_string(),
            source,
        })
}

/// The initial membership, keyed by member id, and this node's id.
fn initial_members(config: &NodeConfig) -> Result<(BTreeMap<NodeId, Member>, NodeId), StartError> {
    membership_of(
        &config.initial_cluster,
        &config.name,
        &config.initial_cluster_token,
    )
}

/// The membership a new cluster of `initial_cluster` starts with, keyed by
/// member id, and the id of the member named `name` (which must be listed).
/// A restored cluster starts with it too (`restore`).
pub fn membership_of(
    initial_cluster: &[InitialMember],
    name: &str,
    token: &str,
) -> Result<(BTreeMap<NodeId, Member>, NodeId), StartError> {
    let mut members = BTreeMap::new();
    let mut own = None;
    for m in initial_cluster {
        let id = identity::member_id(m, token);
        if m.name == name {
            own = Some(id);
        }
        // Every member bootstraps the same membership, so it holds only what all
        // of them know.
        let member = Member {
            name: m.name.clone(),
            peer_urls: m.peer_urls.clone(),
        };
        members.insert(id, member);
    }
    let own = own.ok_or_else(|| StartError::NotInInitialCluster {
        name: name.to_string(),
        listed: initial_cluster
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(","),
    })?;
    Ok((members, own))
}

impl RunningNode {
    /// Starts a node on real TCP with sled storage in its data dir.
    pub async fn start(config: NodeConfig) -> Result<Self, StartError> {
        let tls = match &config.peer_tls {
            Some(files) => Some(files.peer_client()?),
            None => None,
        };
        let transport = TcpTransport {
            source: config.peer_source_ip,
            tls,
        };
        Self::start_with(config, Arc::new(transport), Backend::Sled).await
    }

    /// Starts a node whose connections (raft traffic, forwarded requests, both
    /// listeners) go through `transport` and whose state lives in `backend`.
    pub async fn start_with(
        config: NodeConfig,
        transport: Arc<dyn Transport>,
        backend: Backend,
    ) -> Result<Self, StartError> {
        // TLS first: a bad setup is refused before anything is written.
        let client_tls = acceptor_for(
            "--listen-client-urls",
            &config.listen_client_urls,
            config.client_tls.as_ref(),
        )?;
        let peer_tls = acceptor_for(
            "--listen-peer-urls",
            &config.listen_peer_urls,
            config.peer_tls.as_ref(),
        )?;
        let (members, member_id) = initial_members(&config)?;
        let ids: Vec<NodeId> = members.keys().copied().collect();
        let computed = Identity {
            name: config.name.clone(),
            member_id,
            cluster_id: identity::cluster_id(&ids, &config.initial_cluster_token),
            joined: false,
        };
        let ident = match backend {
            Backend::Sled => crate::join::resolve(&config, computed, transport.clone()).await?,
            Backend::Memory(_) => computed,
        };
        let (member_id, cluster_id) = (ident.member_id, ident.cluster_id);
        let peer_listeners = bind_all(
            &*transport,
            "--listen-peer-urls",
            &config.listen_peer_urls,
            peer_tls.as_ref(),
        )
        .await?;
        let client_listeners = bind_all(
            &*transport,
            "--listen-client-urls",
            &config.listen_client_urls,
            client_tls.as_ref(),
        )
        .await?;
        let metrics_listeners = bind_metrics(&config.listen_metrics_urls).await?;
        let hub = WatchHub::new();
        let observer = Arc::new(NodeObserver::new(hub.clone()));
        let storage = open_backend(&config, backend, observer.clone()).await?;
        let shared = storage.state.shared();
        hub.attach_state(shared.clone());
        let raft_config = config
            .raft_config()
            .validate()
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let network = GrpcNetworkFactory::new(transport.clone());
        let mut log = storage.log;
        forget_stored_leadership(&mut log, member_id).await?;
        let raft = Raft::new(
            member_id,
            Arc::new(raft_config),
            network,
            log,
            storage.state,
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
        // Keyed on raft's own state, not on the identity file, so that a crash
        // between writing the identity and the membership is recovered on restart.
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        // A member that joined a running cluster never bootstraps one, even
        // when restarted with `new` before it received anything: its id is
        // not among those `--initial-cluster` gives.
        if !initialized && config.initial_cluster_state == ClusterState::New && !ident.joined {
            bootstrap(&raft, members).await?;
        }

        let proposer = Proposer::start(raft.clone());
        let lessor = Lessor::start(
            raft.clone(),
            proposer.clone(),
            shared.clone(),
            LessorConfig {
                leader_lease_window: config.leader_lease_window(),
                checkpoint_interval: config.lease_checkpoint_interval,
            },
        );
        observer.attach(lessor.clone());
        compactor::start(
            raft.clone(),
            proposer.clone(),
            shared.clone(),
            config.auto_compaction,
        );
        drainer::start(raft.clone(), proposer.clone(), shared.clone());
        handlers::start(
            raft.clone(),
            proposer.clone(),
            shared.clone(),
            config.allow_pipe_handlers,
        );
        let health =
            HealthChecker::start(raft.clone(), proposer.clone(), shared.clone(), hub.clone());
        let cluster = ClusterContext {
            cluster_id,
            state: shared.clone(),
        };
        let router = Router::new(
            member_id,
            raft.clone(),
            lessor,
            proposer,
            health,
            transport.clone(),
            cluster,
        );
        let api = EtcdApi {
            raft: raft.clone(),
            state: shared,
            router: router.clone(),
            cluster_id,
            member_id,
            min_lease_ttl: config.min_lease_ttl(),
            data_dir: config.data_dir.clone(),
            watch: WatchSettings {
                hub,
                progress_interval: config.watch_progress_notify_interval,
                no_leader_after: config.election_timeout * 3,
            },
            token_ttl: config.auth_token_ttl,
        };
        tokio::spawn(publish_attributes(
            router.clone(),
            MemberAttrs {
                id: member_id,
                name: config.name.clone(),
                client_urls: config.advertise_client_urls.clone(),
                allow_pipe_handlers: config.allow_pipe_handlers,
            },
        ));
        let (stop, stopped) = watch::channel(false);
        let mut servers = Vec::new();
        for listener in peer_listeners {
            let peer = RaftPeerService::new(raft.clone(), Arc::new(router.clone()));
            let router = tonic::transport::Server::builder().add_service(peer.into_server());
            servers.push(spawn_server(router, listener, stopped.clone()));
        }
        let source = MetricsSource {
            raft: raft.clone(),
            state: api.state.clone(),
            hub: api.watch.hub.clone(),
            member_id,
        };
        for listener in metrics_listeners {
            tokio::spawn(metrics::serve(listener, source.clone(), stopped.clone()));
        }
        metrics::count_leader_changes(raft.clone());
        for listener in client_listeners {
            // etcdctl 3.4 may send the endpoint URL as :authority; see url_authority.
            let incoming = listener.map(|conn| conn.map(AuthorityRewrite::new));
            servers.push(spawn_server(client_router(&api), incoming, stopped.clone()));
        }
        tracing::info!(
            name = %config.name,
            member_id = format!("{member_id:x}"),
            cluster_id = format!("{cluster_id:x}"),
            "node started"
        );
        Ok(RunningNode {
            member_id,
            cluster_id,
            raft,
            router,
            election_timeout: config.election_timeout,
            stop,
            servers,
        })
    }

    /// Resolves if raft stops on its own: openraft stops a node on a storage
    /// failure it cannot recover from (a write to the data dir failed). Such
    /// a node takes no further part in the cluster, while its services would
    /// still answer from its last state (a status saying "leader" of a term
    /// long over), so the process should exit and be restarted or replaced.
    /// The answer says why raft stopped.
    pub async fn raft_stopped(&self) -> String {
        let mut metrics = self.raft.metrics();
        loop {
            if let Err(fatal) = &metrics.borrow_and_update().running_state {
                return fatal.to_string();
            }
            if metrics.changed().await.is_err() {
                return "raft stopped".into();
            }
        }
    }

    /// Resolves once this member knows it was removed from the cluster (see
    /// `removal`); says how it knows. The process should then exit.
    pub async fn removed(&self) -> String {
        let router = self.router.clone();
        removal::removed(
            self.raft.clone(),
            router,
            self.member_id,
            self.election_timeout,
        )
        .await
    }

    /// Stops serving, then stops raft (which flushes nothing it has not already
    /// made durable: every acknowledged write is on disk already).
    /// On a clean stop, saves a snapshot if at least [`EXIT_SNAPSHOT_AFTER`]
    /// entries were applied since the last one, so the next start loads it
    /// instead of re-applying them (8.7 s after a million keys and leases).
    /// Bounded by [`EXIT_SNAPSHOT_WAIT`]: a stop never waits longer.
    async fn snapshot_before_exit(&self) {
        let m = self.raft.metrics().borrow().clone();
        let applied = m.last_applied.map_or(0, |l| l.index);
        let snapshot = m.snapshot.map_or(0, |l| l.index);
        if m.running_state.is_err() || applied < snapshot + EXIT_SNAPSHOT_AFTER {
            return;
        }
        if let Err(e) = self.raft.trigger().snapshot().await {
            tracing::warn!(error = %e, "no snapshot before exiting");
            return;
        }
        let saved = self
            .raft
            .wait(Some(EXIT_SNAPSHOT_WAIT))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= applied),
                "a snapshot before exiting",
            )
            .await;
        match saved {
            Ok(_) => tracing::info!(last_log = applied, "saved a snapshot before exiting"),
            Err(e) => tracing::warn!(error = %e, "no snapshot before exiting"),
        }
    }

    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        // A graceful stop waits for open calls, and a call forwarded here by a
        // peer may wait on a commit that peers, stopping too, no longer serve:
        // past the grace period the servers are dropped with their calls.
        let deadline = tokio::time::Instant::now() + SERVER_DRAIN_WAIT;
        for server in std::mem::take(&mut self.servers) {
            let abort = server.abort_handle();
            if tokio::time::timeout_at(deadline, server).await.is_err() {
                abort.abort();
            }
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("calls still open after {SERVER_DRAIN_WAIT:?}; dropped them");
        }
        self.snapshot_before_exit().await;
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        tracing::info!("node stopped");
    }
}

/// The metrics listeners: plain TCP, not the node's transport (a simulation
/// has no use for them).
async fn bind_metrics(urls: &[String]) -> Result<Vec<tokio::net::TcpListener>, StartError> {
    let mut listeners = Vec::with_capacity(urls.len());
    for url in urls {
        let flag = "--listen-metrics-urls";
        if !url.starts_with("http://") {
            // Plain HTTP only: an https:// URL would promise TLS it does not get.
            return Err(StartError::BadUrl {
                flag,
                url: url.clone(),
            });
        }
        let addr = socket_addr(flag, url)?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Listen {
                flag,
                url: url.clone(),
                source,
            })?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// The TLS server side of the port of listen flag `flag`, if `files` are
/// given; refuses an `https://` URL without them.
fn acceptor_for(
    flag: &'static str,
    urls: &[String],
    files: Option<&TlsFiles>,
) -> Result<Option<TlsAcceptor>, StartError> {
    if files.is_none() {
        if let Some(url) = urls.iter().find(|u| u.starts_with("https://")) {
            return Err(StartError::NoTls {
                flag,
                url: url.clone(),
            });
        }
    }
    Ok(files.map(TlsFiles::acceptor).transpose()?)
}

/// Binds every URL of `flag`; an `https://` one gets TLS from `tls` (which
/// `acceptor_for` made sure of).
async fn bind_all(
    transport: &dyn Transport,
    flag: &'static str,
    urls: &[String],
    tls: Option<&TlsAcceptor>,
) -> Result<Vec<Incoming>, StartError> {
    let mut listeners = Vec::with_capacity(urls.len());
    for url in urls {
        let listener = bind(transport, flag, url).await?;
        let listener = match (url.starts_with("https://"), tls) {
            (true, Some(acceptor)) => tls::accept(listener, acceptor.clone()),
            _ => listener,
        };
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Opens the raft log and state machine. Opening sled and fsyncing its files
/// blocks, so it runs off the runtime.
async fn open_backend(
    config: &NodeConfig,
    backend: Backend,
    observer: Arc<NodeObserver>,
) -> Result<Storage, StartError> {
    let storage_error = |reason: String| StartError::Storage {
        dir: config.data_dir.display().to_string(),
        reason,
    };
    let observer: Arc<dyn ApplyObserver> = observer;
    match backend {
        Backend::Memory(memory) => memory
            .open(observer)
            .map_err(|e| storage_error(e.to_string())),
        Backend::Sled => {
            let options = StorageOptions {
                dir: config.data_dir.clone(),
                cache_capacity: config.cache_capacity,
            };
            tokio::task::spawn_blocking(move || open_storage(options, observer))
                .await
                .map_err(|e| storage_error(e.to_string()))?
                .map_err(|e| storage_error(e.to_string()))
        }
    }
}

/// openraft 0.9 starts a node whose stored vote says it led a term as that
/// term's leader again, with no entry of its own. Two things then break: after
/// a machine crash its log may lack entries it had already sent to followers
/// (they are sent before its own flush), and it would write different ones
/// under the same log ids, breaking raft's log matching; and decisions of its
/// previous life's lessor still in its log could commit after its new clocks
/// started and acknowledged keepalives (a lease expired 0.16 s after a
/// keepalive was acknowledged, in a chaos run). Storing the vote as not
/// committed (still for itself, so it votes for no one else in that term)
/// starts it as a follower: it leads again only by winning a new term, whose
/// first entry commits everything before it ahead of the lessor's clocks.
async fn forget_stored_leadership(log: &mut LogStore, id: NodeId) -> Result<(), StartError> {
    let raft_error = |e: openraft::StorageError<NodeId>| StartError::Raft(e.to_string());
    let Some(vote) = log.read_vote().await.map_err(raft_error)? else {
        return Ok(());
    };
    if vote.is_committed() && vote.leader_id().voted_for() == Some(id) {
        let term = vote.leader_id().term;
        tracing::info!(
            term,
            "was leader before the restart: starting as a follower"
        );
        log.save_vote(&openraft::Vote::new(term, id))
            .await
            .map_err(raft_error)?;
    }
    Ok(())
}

/// Writes the initial membership. Every member of a new cluster does this with the
/// same membership, so they agree; one already initialized answers `NotAllowed`.
async fn bootstrap(raft: &Raft, members: BTreeMap<NodeId, Member>) -> Result<(), StartError> {
    match raft.initialize(members).await {
        Ok(()) => Ok(()),
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(StartError::Raft(e.to_string())),
    }
}

/// Publishes this member's client URLs through the log, retrying until a leader
/// commits them (a node may start long before a quorum is up).
async fn publish_attributes(router: Router, attrs: MemberAttrs) {
    loop {
        match router.propose(Command::PublishMember(attrs.clone())).await {
            Ok(_) => return,
            Err(e) => tracing::debug!(error = %e, "publishing member attributes, retrying"),
        }
    }
}

fn client_router(api: &EtcdApi) -> tonic::transport::server::Router {
    tonic::transport::Server::builder()
        .add_service(
            KvServer::new(api.clone())
                .max_decoding_message_size(MAX_GRPC_MESSAGE)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(LeaseServer::new(api.clone()))
        .add_service(ClusterServer::new(api.clone()))
        .add_service(MaintenanceServer::new(api.clone()))
        .add_service(WatchServer::new(api.clone()))
        .add_service(AuthServer::new(api.clone()))
        .add_service(RegistryServer::new(RegistryApi::new(api.clone())))
        .add_service(HandlersServer::new(HandlerApi::new(api.clone())))
        .add_service(HealthServer::new(HealthService::new(api.raft.clone())))
        .add_optional_service(reflection(Builder::build_v1))
        .add_optional_service(reflection(Builder::build_v1alpha))
}

/// gRPC server reflection (v1, and v1alpha for older tools), so grpcurl-style
/// tools list and call the API without the .proto files. `None` (logged) if
/// the descriptor set compiled into `roster-proto` does not parse, which its
/// own test rules out.
fn reflection<S>(build: fn(Builder<'static>) -> Result<S, ReflectionError>) -> Option<S> {
    let builder = Builder::configure()
        .register_encoded_file_descriptor_set(roster_proto::FILE_DESCRIPTOR_SET);
    build(builder)
        .map_err(|e| tracing::error!(error = %e, "gRPC reflection is off"))
        .ok()
}

fn spawn_server<S, IO>(
    router: tonic::transport::server::Router,
    incoming: S,
    mut stopped: watch::Receiver<bool>,
) -> JoinHandle<Result<(), tonic::transport::Error>>
where
    S: Stream<Item = std::io::Result<IO>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            })
            .await
    })
}
