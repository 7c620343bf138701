//! The client workload of the fault tests: clients that use a cluster the
//! way services do and record what they saw, for the checkers of
//! `roster-check`. The same workload runs against real processes
//! (`tests/chaos.rs`, over TCP) and inside the deterministic simulation (over
//! turmoil's network): how [`Connect`] dials is the only difference.
//!
//! - Key-value clients: random put / get / delete / compare-and-set on a few
//!   keys, linearizable reads, a deadline per operation (past it the outcome is
//!   unknown), moving to another node after a failure.
//! - Lease holders: a lease with one key attached, renewed every 300 ms; one
//!   may stop renewing on purpose so that its lease must go.
//! - Watchers: a prefix watch that resumes after the last revision it saw, on
//!   another node, whenever its stream breaks.
//!
//! Times are on tokio's clock, so that the simulation's virtual time is the
//! recorder's clock there.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use roster_check::lease::{Keepalive, LeaseHistory};
use roster_check::linear::{Input, Op, Output};
use roster_check::watch::{WatchEvent, WatcherHistory};
use roster_check::{durability, lease, linear, watch, Nanos, Verdict};
use roster_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use roster_proto::etcdserverpb::kv_client::KvClient;
use roster_proto::etcdserverpb::lease_client::LeaseClient;
use roster_proto::etcdserverpb::request_op::Request as TxnRequestOp;
use roster_proto::etcdserverpb::watch_client::WatchClient;
use roster_proto::etcdserverpb::watch_request::RequestUnion;
use roster_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest,
};
use roster_state::splitmix64;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// How long a client waits for a connection before it tries another node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The endpoint of a client channel to `url`: `connect_timeout`, and
/// `call_timeout` on each call.
pub fn client_endpoint(
    url: String,
    call_timeout: Option<Duration>,
    connect_timeout: Duration,
) -> Option<Endpoint> {
    let endpoint = Endpoint::from_shared(url)
        .ok()?
        .connect_timeout(connect_timeout);
    let endpoint = roster_raft::network::forget_reset_streams(endpoint);
    Some(match call_timeout {
        Some(timeout) => endpoint.timeout(timeout),
        None => endpoint,
    })
}

/// The channel `connect` makes, or `None` if it fails or takes more than
/// twice `connect_timeout` (a frozen node's kernel still accepts the
/// connection, then nothing answers).
pub async fn connect_within<F>(connect_timeout: Duration, connect: F) -> Option<Channel>
where
    F: std::future::Future<Output = Result<Channel, tonic::transport::Error>>,
{
    tokio::time::timeout(connect_timeout * 2, connect)
        .await
        .ok()?
        .ok()
}

/// A TCP channel to `url` (`http://host:port`), or `None` if it does not
/// connect in time.
pub async fn tcp_channel(
    url: String,
    call_timeout: Option<Duration>,
    connect_timeout: Duration,
) -> Option<Channel> {
    let endpoint = client_endpoint(url, call_timeout, connect_timeout)?;
    connect_within(connect_timeout, endpoint.connect()).await
}

/// Opens a client channel to a URL, with a timeout on each call.
pub type Dial = fn(String, Option<Duration>) -> BoxFuture<'static, Option<Channel>>;

/// How the workload reaches the nodes: their client URLs and how to dial
/// one (real TCP, or the simulation's network).
pub struct Connect {
    urls: Vec<String>,
    dial: Dial,
}

impl Connect {
    pub fn new(urls: Vec<String>, dial: Dial) -> Self {
        Connect { urls, dial }
    }

    /// Real TCP to `http://host:port` client URLs.
    pub fn tcp(urls: Vec<String>) -> Self {
        Self::new(urls, |url, call_timeout| {
            Box::pin(tcp_channel(url, call_timeout, CONNECT_TIMEOUT))
        })
    }

    /// A channel to node `i % nodes`, or `None` if it does not connect within
    /// a second (a dead, frozen or cut-off node); `call_timeout` bounds each
    /// call on it.
    pub fn channel(
        &self,
        i: usize,
        call_timeout: Option<Duration>,
    ) -> BoxFuture<'static, Option<Channel>> {
        (self.dial)(self.urls[i % self.urls.len()].clone(), call_timeout)
    }
}

/// The recorder's clock: nanoseconds since the workload began.
#[derive(Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn start() -> Self {
        Clock(Instant::now())
    }

    pub fn now(&self) -> Nanos {
        self.0.elapsed().as_nanos() as Nanos
    }
}

/// Deadline of one client operation; past it the outcome is unknown.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
const KEYS: u64 = 5;
const LEASE_TTL: i64 = 3;
/// How late a lease of a stopped holder may be seen gone, beyond its TTL
/// after the later of its last keepalive and the last fault: an election
/// after the last fault, and the watcher's reconnection.
const LEASE_LATE_BOUND: Duration = Duration::from_secs(4);

/// A tiny deterministic random source (splitmix64 over a counter).
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(1);
        splitmix64(self.0) % n.max(1)
    }
}

/// The nodes, for the clients' rotation.
#[derive(Clone)]
struct Endpoints(Arc<Connect>);

impl Endpoints {
    async fn channel(&self, i: usize, call_timeout: Option<Duration>) -> Option<Channel> {
        self.0.channel(i, call_timeout).await
    }

    async fn kv(&self, i: usize) -> Option<KvClient<Channel>> {
        Some(KvClient::new(self.channel(i, Some(OP_TIMEOUT)).await?))
    }
}

/// What every recorder adds to.
#[derive(Default)]
struct Record {
    ops: Vec<Op>,
    acked: Vec<durability::AckedWrite>,
    /// Each holder's number (its key is `lease/<n>`) and lease.
    leases: Vec<(u64, LeaseHistory)>,
    watchers: Vec<WatcherHistory>,
}

fn key(n: u64) -> String {
    format!("k/{n}")
}

/// One key-value client: random operations on a few keys until `stop`.
async fn kv_client(
    id: u64,
    seed: u64,
    endpoints: Endpoints,
    clock: Clock,
    record: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = Rng(seed ^ splitmix64(id));
    let mut node = id as usize;
    let mut client = None;
    let mut count = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if client.is_none() {
            client = endpoints.kv(node).await;
            if client.is_none() {
                node += 1;
                continue;
            }
        }
        let Some(kv) = client.as_mut() else { continue };
        count += 1;
        let k = key(rng.below(KEYS));
        let value = format!("c{id}-{count}");
        let input = match rng.below(10) {
            0..=3 => Input::Put { value },
            4..=6 => Input::Get,
            7 => Input::Delete,
            _ => Input::Cas {
                expected: (rng.below(2) == 0)
                    .then(|| format!("c{}-{}", rng.below(4), rng.below(count))),
                new: value,
            },
        };
        let call = clock.now();
        let result = tokio::time::timeout(OP_TIMEOUT, run_kv(kv, &k, &input)).await;
        let ret = clock.now();
        let (output, revision) = match result {
            Ok(Ok(answer)) => (Some(answer.0), answer.1),
            _ => {
                // Unknown: it may or may not have applied. Try another node next.
                client = None;
                node += 1;
                (None, 0)
            }
        };
        let mut record = lock(&record);
        if let Some(output) = &output {
            if let Some(write) = acked_write(&k, &input, output, revision) {
                record.acked.push(write);
            }
        } else if matches!(input, Input::Get) {
            continue; // an unanswered read constrains nothing
        }
        let done = output.is_some();
        record.ops.push(Op {
            client: id,
            key: k,
            input,
            call,
            ret: done.then_some(ret),
            output,
        });
    }
}

fn acked_write(
    k: &str,
    input: &Input,
    output: &Output,
    revision: i64,
) -> Option<durability::AckedWrite> {
    let value = match (input, output) {
        (Input::Put { value }, _) => Some(value.clone()),
        (Input::Cas { new, .. }, Output::Cas { succeeded: true }) => Some(new.clone()),
        (Input::Delete, Output::Delete { deleted: true }) => None,
        _ => return None,
    };
    Some(durability::AckedWrite {
        key: k.to_string(),
        revision,
        value,
    })
}

/// Runs one operation; its output and the revision it was answered at.
async fn run_kv(
    kv: &mut KvClient<tonic::transport::Channel>,
    k: &str,
    input: &Input,
) -> Result<(Output, i64), tonic::Status> {
    let revision =
        |h: Option<roster_proto::etcdserverpb::ResponseHeader>| h.map_or(0, |h| h.revision);
    match input {
        Input::Put { value } => {
            let request = PutRequest {
                key: k.into(),
                value: value.clone().into_bytes(),
                ..Default::default()
            };
            let answer = kv.put(request).await?.into_inner();
            Ok((Output::Put, revision(answer.header)))
        }
        Input::Get => {
            let request = RangeRequest {
                key: k.into(),
                ..Default::default()
            };
            let answer = kv.range(request).await?.into_inner();
            let value = answer
                .kvs
                .first()
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
            Ok((Output::Get(value), revision(answer.header)))
        }
        Input::Delete => {
            let request = DeleteRangeRequest {
                key: k.into(),
                ..Default::default()
            };
            let answer = kv.delete_range(request).await?.into_inner();
            Ok((
                Output::Delete {
                    deleted: answer.deleted > 0,
                },
                revision(answer.header),
            ))
        }
        Input::Cas { expected, new } => {
            let compare = match expected {
                Some(value) => Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Value as i32,
                    key: k.into(),
                    target_union: Some(TargetUnion::Value(value.clone().into_bytes())),
                    ..Default::default()
                },
                None => Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Create as i32,
                    key: k.into(),
                    target_union: Some(TargetUnion::CreateRevision(0)),
                    ..Default::default()
                },
            };
            let put = RequestOp {
                request: Some(TxnRequestOp::RequestPut(PutRequest {
                    key: k.into(),
                    value: new.clone().into_bytes(),
                    ..Default::default()
                })),
            };
            let request = TxnRequest {
                compare: vec![compare],
                success: vec![put],
                failure: Vec::new(),
            };
            let answer = kv.txn(request).await?.into_inner();
            Ok((
                Output::Cas {
                    succeeded: answer.succeeded,
                },
                revision(answer.header),
            ))
        }
    }
}

/// One lease holder: grants a lease, attaches its key, renews every second
/// until `stop` (or until `stop_at` for the one that lets its lease go).
async fn lease_holder(
    n: u64,
    endpoints: Endpoints,
    clock: Clock,
    record: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
    stop_at: Option<Nanos>,
) {
    let mut node = n as usize;
    // Grant and attach (retried until it works: nothing to check before).
    let (lease_id, mut history) = loop {
        let Some(mut kv) = endpoints.kv(node).await else {
            node += 1;
            continue;
        };
        let Some(channel) = endpoints.channel(node, Some(OP_TIMEOUT)).await else {
            node += 1;
            continue;
        };
        // The lease is promised from when the grant was sent (the leader
        // starts its clock when it applies the grant, later), not from when
        // the attach below returns, which may be seconds later.
        let grant_sent = clock.now();
        let grant = LeaseClient::new(channel)
            .lease_grant(LeaseGrantRequest {
                ttl: LEASE_TTL,
                id: 0,
            })
            .await;
        let Ok(grant) = grant else {
            node += 1;
            continue;
        };
        let id = grant.into_inner().id;
        let put = PutRequest {
            key: format!("lease/{n}").into_bytes(),
            value: b"held".to_vec(),
            lease: id,
            ..Default::default()
        };
        if kv.put(put).await.is_ok() {
            let history = LeaseHistory {
                id,
                ttl: LEASE_TTL,
                keepalives: vec![Keepalive {
                    sent: grant_sent,
                    ttl: Some(LEASE_TTL),
                }],
                ..Default::default()
            };
            break (id, history);
        }
        node += 1;
    };
    while !stop.load(Ordering::Relaxed) {
        if stop_at.is_some_and(|at| clock.now() >= at) {
            history.stopped = Some(clock.now());
            break;
        }
        let sent = clock.now();
        let ttl = async {
            let channel = endpoints.channel(node, None).await?;
            let (tx, rx) = mpsc::channel(1);
            tx.send(LeaseKeepAliveRequest { id: lease_id }).await.ok()?;
            let mut answers = LeaseClient::new(channel)
                .lease_keep_alive(ReceiverStream::new(rx))
                .await
                .ok()?
                .into_inner();
            answers.message().await.ok()?.map(|a| a.ttl)
        };
        let ttl = tokio::time::timeout(Duration::from_millis(900), ttl)
            .await
            .ok()
            .flatten();
        if ttl.is_none() {
            node += 1;
        }
        history.keepalives.push(Keepalive { sent, ttl });
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    lock(&record).leases.push((n, history));
}

/// A watcher on `prefix` that resumes after the last revision it saw,
/// on the next node, whenever its stream breaks; each stream is one
/// watcher history.
async fn watcher(
    name: String,
    prefix: &'static str,
    endpoints: Endpoints,
    clock: Clock,
    record: Arc<Mutex<Record>>,
    deletes_seen: Arc<Mutex<BTreeMap<String, Nanos>>>,
    stop: Arc<AtomicBool>,
) {
    let mut node = 0usize;
    // From the first revision (nothing is compacted in this run), so that no
    // event falls between a stream that broke before its first event and the
    // next one.
    let mut next_revision = 1i64;
    let mut segment = 0;
    while !stop.load(Ordering::Relaxed) {
        let Some(channel) = endpoints.channel(node, None).await else {
            node += 1;
            continue;
        };
        let (tx, rx) = mpsc::channel(4);
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: prefix.into(),
                range_end: roster_state::prefix_range_end(prefix.as_bytes()),
                start_revision: next_revision,
                ..Default::default()
            })),
        };
        let _ = tx.send(create).await;
        let Ok(Ok(stream)) = tokio::time::timeout(
            OP_TIMEOUT,
            WatchClient::new(channel).watch(ReceiverStream::new(rx)),
        )
        .await
        else {
            node += 1;
            continue;
        };
        let mut stream = stream.into_inner();
        segment += 1;
        let mut history = WatcherHistory {
            name: format!("{name}#{segment}"),
            prefix: prefix.to_string(),
            start_revision: next_revision,
            events: Vec::new(),
        };
        loop {
            // A stream that says nothing for 3 s may be on a frozen node.
            let message = tokio::time::timeout(Duration::from_secs(3), stream.message()).await;
            let Ok(Ok(Some(response))) = message else {
                break;
            };
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if response.canceled || response.compact_revision > 0 {
                break;
            }
            for event in response.events {
                let Some(kv) = event.kv else { continue };
                let key = String::from_utf8_lossy(&kv.key).into_owned();
                let delete = event.r#type == 1;
                if delete {
                    lock(&deletes_seen)
                        .entry(key.clone())
                        .or_insert(clock.now());
                }
                next_revision = kv.mod_revision + 1;
                history.events.push(WatchEvent {
                    revision: kv.mod_revision,
                    key,
                    delete,
                });
            }
        }
        drop(tx);
        lock(&record).watchers.push(history);
        node += 1;
    }
}

/// Every event of `prefix` from revision 1 up to `until` (the store's
/// revision), read after the run: a watch from revision 1, and progress
/// requests until one says every event up to `until` has been sent (a
/// watcher still catching up answers with a lower revision).
async fn full_history(
    channel: Channel,
    prefix: &str,
    until: i64,
) -> Result<Vec<WatchEvent>, String> {
    let closed = |_| "the watch request stream closed".to_string();
    let (tx, rx) = mpsc::channel(2);
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: prefix.into(),
            range_end: roster_state::prefix_range_end(prefix.as_bytes()),
            start_revision: 1,
            ..Default::default()
        })),
    };
    tx.send(create).await.map_err(closed)?;
    let mut stream = WatchClient::new(channel)
        .watch(ReceiverStream::new(rx))
        .await
        .map_err(|e| format!("watch {prefix}: {e}"))?
        .into_inner();
    let progress = || WatchRequest {
        request_union: Some(RequestUnion::ProgressRequest(Default::default())),
    };
    tx.send(progress()).await.map_err(closed)?;
    let mut events = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), stream.message()).await;
        let response = match message {
            Ok(Ok(Some(response))) => response,
            Ok(Ok(None)) => return Err(format!("watch {prefix}: stream ended")),
            Ok(Err(e)) => return Err(format!("watch {prefix}: {e}")),
            Err(_) => return Err(format!("watch {prefix}: no answer in 30 s")),
        };
        if response.created {
            continue;
        }
        if response.events.is_empty() {
            if response.header.is_some_and(|h| h.revision >= until) {
                break; // everything up to `until` was sent before this
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send(progress()).await.map_err(closed)?;
            continue;
        }
        for event in response.events {
            let Some(kv) = event.kv else { continue };
            events.push(WatchEvent {
                revision: kv.mod_revision,
                key: String::from_utf8_lossy(&kv.key).into_owned(),
                delete: event.r#type == 1,
            });
        }
    }
    drop(tx);
    Ok(events)
}

/// The store as read after the run: each `k/` key's mod revision and value,
/// the store's revision, and every event of `k/` and `lease/` up to it.
struct FinalState {
    state: BTreeMap<String, (i64, String)>,
    revision: i64,
    history: Vec<WatchEvent>,
}

async fn final_state(connect: &Connect, node: usize) -> Result<FinalState, String> {
    let channel = connect
        .channel(node, None)
        .await
        .ok_or_else(|| format!("node {node} does not connect after the run"))?;
    let answer = KvClient::new(channel.clone())
        .range(RangeRequest {
            key: b"k/".to_vec(),
            range_end: roster_state::prefix_range_end(b"k/"),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("final read: {e}"))?
        .into_inner();
    let revision = answer.header.map_or(0, |h| h.revision);
    let state = answer
        .kvs
        .into_iter()
        .map(|kv| {
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            let value = String::from_utf8_lossy(&kv.value).into_owned();
            (key, (kv.mod_revision, value))
        })
        .collect();
    let mut history = full_history(channel.clone(), "k/", revision).await?;
    history.extend(full_history(channel, "lease/", revision).await?);
    history.sort_by_key(|e| e.revision);
    Ok(FinalState {
        state,
        revision,
        history,
    })
}

/// How many clients of each kind a run has.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    pub kv_clients: u64,
    pub lease_holders: u64,
    /// The holder (its number) that stops renewing at this time.
    pub stop_one_holder_at: Option<Nanos>,
}

/// A running workload: spawn it, let faults happen, then stop and judge it.
pub struct Workload {
    connect: Arc<Connect>,
    clock: Clock,
    record: Arc<Mutex<Record>>,
    deletes_seen: Arc<Mutex<BTreeMap<String, Nanos>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

/// What a run found: one verdict per checker, and the counts to report.
pub struct Judgement {
    pub verdicts: Vec<Verdict>,
    pub ops: usize,
    pub unknown: usize,
    pub keepalives: usize,
    pub watch_segments: usize,
    /// The whole history of each key that failed linearizability (JSON), for
    /// `cargo run -p roster-check --example replay`.
    pub failing_ops: Option<String>,
    /// A fingerprint of everything the clients recorded (operations with
    /// their times and answers, keepalives, watch events): two runs that
    /// recorded the same history have the same digest.
    pub digest: u64,
}

impl Judgement {
    pub fn ok(&self) -> bool {
        self.verdicts.iter().all(Verdict::ok)
    }
}

/// FNV-1a, 64 bits: a fingerprint that is the same in every process (std's
/// hasher is seeded per process).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Recorders only push whole entries, so a panic elsewhere leaves a usable
    // record behind.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Workload {
    /// Starts the clients (tokio tasks on the current runtime); `seed` picks
    /// the key-value operations.
    pub fn spawn(connect: Arc<Connect>, seed: u64, mix: Mix) -> Self {
        let clock = Clock::start();
        let endpoints = Endpoints(connect.clone());
        let record: Arc<Mutex<Record>> = Arc::default();
        let deletes_seen: Arc<Mutex<BTreeMap<String, Nanos>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for id in 0..mix.kv_clients {
            let task = kv_client(
                id,
                seed,
                endpoints.clone(),
                clock,
                record.clone(),
                stop.clone(),
            );
            tasks.push(tokio::spawn(task));
        }
        for n in 0..mix.lease_holders {
            let stop_at = (n + 1 == mix.lease_holders)
                .then_some(mix.stop_one_holder_at)
                .flatten();
            let task = lease_holder(
                n,
                endpoints.clone(),
                clock,
                record.clone(),
                stop.clone(),
                stop_at,
            );
            tasks.push(tokio::spawn(task));
        }
        for (name, prefix) in [("kv-watch", "k/"), ("lease-watch", "lease/")] {
            let task = watcher(
                name.into(),
                prefix,
                endpoints.clone(),
                clock,
                record.clone(),
                deletes_seen.clone(),
                stop.clone(),
            );
            tasks.push(tokio::spawn(task));
        }
        Workload {
            connect,
            clock,
            record,
            deletes_seen,
            stop,
            tasks,
        }
    }

    /// The recorder's clock.
    pub fn now(&self) -> Nanos {
        self.clock.now()
    }

    /// When a lease whose holder stopped must be seen gone, if faults
    /// stopped at `quiet_since`.
    pub fn leases_due(quiet_since: Nanos) -> Nanos {
        let bound = Duration::from_secs(LEASE_TTL as u64) + LEASE_LATE_BOUND;
        quiet_since + bound.as_nanos() as Nanos
    }

    /// Stops the clients and waits (10 s at most) for each to hand in its
    /// record.
    pub async fn stop(&mut self) -> Nanos {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        self.clock.now()
    }

    /// Reads the final state through `node` (after every node restarted) and
    /// runs the four checkers; faults stopped at `quiet_since`, recording at
    /// `end`.
    pub async fn judge(
        &self,
        node: usize,
        quiet_since: Nanos,
        end: Nanos,
    ) -> Result<Judgement, String> {
        let after = final_state(self.connect.as_ref(), node).await?;
        let record = lock(&self.record);
        let deletes = lock(&self.deletes_seen).clone();
        let leases: Vec<LeaseHistory> = record
            .leases
            .iter()
            .map(|(n, lease)| LeaseHistory {
                seen_gone: deletes.get(&format!("lease/{n}")).copied(),
                ..lease.clone()
            })
            .collect();
        let linearizable = linear::check(&record.ops);
        let failing_ops = (!linearizable.failures.is_empty()).then(|| {
            let failing: Vec<&Op> = record
                .ops
                .iter()
                .filter(|o| linearizable.failures.iter().any(|(k, _)| *k == o.key))
                .collect();
            serde_json::to_string(&failing).unwrap_or_default()
        });
        let lateness = lease::Lateness {
            late: LEASE_LATE_BOUND.as_nanos() as Nanos,
            quiet_since,
        };
        let maybe_deleted: BTreeSet<String> = record
            .ops
            .iter()
            .filter(|o| matches!(o.input, Input::Delete) && o.output.is_none())
            .map(|o| o.key.clone())
            .collect();
        let verdicts = vec![
            linearizable.verdict(),
            lease::check(&leases, lateness, end),
            watch::check(&record.watchers, &after.history),
            durability::check(&record.acked, &maybe_deleted, &after.state, after.revision),
        ];
        let recorded = serde_json::to_vec(&(&record.ops, &leases, &record.watchers));
        Ok(Judgement {
            digest: fnv1a(&recorded.unwrap_or_default()),
            verdicts,
            ops: record.ops.len(),
            unknown: record.ops.iter().filter(|o| o.output.is_none()).count(),
            keepalives: leases.iter().map(|l| l.keepalives.len()).sum(),
            watch_segments: record.watchers.len(),
            failing_ops,
        })
    }
}
