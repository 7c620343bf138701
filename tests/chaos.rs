//! Real-process chaos: a three-node cluster of real `roster` processes with
//! real sled data, under a nemesis that SIGKILLs the leader or a random node,
//! SIGSTOPs and SIGCONTs nodes (the leader too), and restarts every node at
//! once, while clients record what they saw: key-value operations, lease
//! keepalives and their acknowledged TTLs, and watch events. At the end every
//! node restarts once more, and the checkers of `roster-check` judge the
//! history: linearizability, lease safety, watch order and completeness,
//! durability. Each prints one verdict line with its counts.
//!
//! Bounded for CI: `ROSTER_CHAOS_SECS` (default 20) seconds of faults,
//! `ROSTER_CHAOS_SEED` (default: from the clock, printed) for the random
//! choices; `scripts/chaos.sh` runs it longer. Network partitions are not
//! injected here yet (they need network namespaces; see docs/reliability.md).
//! (Roster's own flags: not for etcd.)

mod harness;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{try_grpc_channel, Cluster};
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
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Deadline of one client operation; past it the outcome is unknown.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
const KEYS: u64 = 5;
const LEASE_TTL: i64 = 3;
/// How late a lease of a stopped holder may be seen gone, beyond its TTL
/// after the later of its last keepalive and the last fault: an election
/// after the last fault, and the watcher's reconnection.
const LEASE_LATE_BOUND: Duration = Duration::from_secs(4);

struct Clock(Instant);

impl Clock {
    fn now(&self) -> Nanos {
        self.0.elapsed().as_nanos() as Nanos
    }
}

/// A tiny deterministic random source (splitmix64 over a counter).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(1);
        splitmix64(self.0) % n.max(1)
    }
}

/// A channel to `endpoint` (`http://host:port`), or `None` if it does not
/// connect within a second (a dead or frozen node); `call_timeout` bounds
/// each call on it.
async fn channel(endpoint: &str, call_timeout: Option<Duration>) -> Option<Channel> {
    try_grpc_channel(endpoint.to_string(), call_timeout, Duration::from_secs(1)).await
}

/// The cluster's client URLs, for the clients' rotation.
#[derive(Clone)]
struct Endpoints(Arc<Vec<String>>);

impl Endpoints {
    fn at(&self, i: usize) -> &str {
        &self.0[i % self.0.len()]
    }

    async fn kv(&self, i: usize) -> Option<KvClient<Channel>> {
        Some(KvClient::new(channel(self.at(i), Some(OP_TIMEOUT)).await?))
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
    clock: Arc<Clock>,
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
        let mut record = record.lock().expect("lock");
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
    clock: Arc<Clock>,
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
        let Some(channel) = channel(endpoints.at(node), Some(OP_TIMEOUT)).await else {
            node += 1;
            continue;
        };
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
                    sent: clock.now(),
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
        let endpoint = endpoints.at(node).to_string();
        let sent = clock.now();
        let ttl = async {
            let channel = channel(&endpoint, None).await?;
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
    record.lock().expect("lock").leases.push((n, history));
}

/// A watcher on `prefix` that resumes after the last revision it saw,
/// on the next node, whenever its stream breaks; each stream is one
/// watcher history.
async fn watcher(
    name: String,
    prefix: &'static str,
    endpoints: Endpoints,
    clock: Arc<Clock>,
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
        let Some(channel) = channel(endpoints.at(node), None).await else {
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
                    deletes_seen
                        .lock()
                        .expect("lock")
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
        record.lock().expect("lock").watchers.push(history);
        node += 1;
    }
}

/// Every event of `prefix` from revision 1 up to `until` (the store's
/// revision), read after the run: a watch from revision 1, and progress
/// requests until one says every event up to `until` has been sent (a
/// watcher still catching up answers with a lower revision).
async fn full_history(endpoint: &str, prefix: &str, until: i64) -> Vec<WatchEvent> {
    let channel = channel(endpoint, None)
        .await
        .expect("connect after the run");
    let (tx, rx) = mpsc::channel(2);
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: prefix.into(),
            range_end: roster_state::prefix_range_end(prefix.as_bytes()),
            start_revision: 1,
            ..Default::default()
        })),
    };
    tx.send(create).await.expect("send");
    let mut stream = WatchClient::new(channel)
        .watch(ReceiverStream::new(rx))
        .await
        .expect("watch")
        .into_inner();
    let progress = WatchRequest {
        request_union: Some(RequestUnion::ProgressRequest(Default::default())),
    };
    tx.send(progress).await.expect("send");
    let mut events = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), stream.message()).await;
        let response = message
            .expect("history in time")
            .expect("stream")
            .expect("open");
        if response.created {
            continue;
        }
        if response.events.is_empty() {
            if response.header.is_some_and(|h| h.revision >= until) {
                break; // everything up to `until` was sent before this
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            let again = WatchRequest {
                request_union: Some(RequestUnion::ProgressRequest(Default::default())),
            };
            tx.send(again).await.expect("send");
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
    events
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillLeader,
    KillOne,
    PauseLeader,
    PauseOne,
    RestartAll,
}

fn nemesis(c: &mut Cluster, rng: &mut Rng, faults: &AtomicU64) {
    let fault = match rng.below(5) {
        0 => Fault::KillLeader,
        1 => Fault::KillOne,
        2 => Fault::PauseLeader,
        3 => Fault::PauseOne,
        _ => Fault::RestartAll,
    };
    faults.fetch_add(1, Ordering::Relaxed);
    let victim = match fault {
        Fault::KillLeader | Fault::PauseLeader => c.leader(),
        _ => rng.below(c.size() as u64) as usize,
    };
    eprintln!("chaos: {fault:?} (node {victim})");
    match fault {
        Fault::KillLeader | Fault::KillOne => {
            c.kill(victim);
            std::thread::sleep(Duration::from_millis(1000));
            c.restart(victim);
        }
        Fault::PauseLeader | Fault::PauseOne => {
            c.signal(victim, "STOP");
            std::thread::sleep(Duration::from_millis(2500));
            c.signal(victim, "CONT");
        }
        Fault::RestartAll => restart_all(c),
    }
}

fn restart_all(c: &mut Cluster) {
    c.kill_all();
    for i in 0..c.size() {
        c.restart_no_wait(i);
    }
    for i in 0..c.size() {
        c.wait_node_ready(i, Duration::from_secs(30));
    }
}

#[test]
fn chaos_histories_are_linearizable_and_leases_safe() {
    let secs: u64 = std::env::var("ROSTER_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("ROSTER_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("chaos: seed {seed} for {secs} s (replay: ROSTER_CHAOS_SEED={seed} ROSTER_CHAOS_SECS={secs})");
    let mut c = Cluster::start(3);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let clock = Arc::new(Clock(Instant::now()));
    let endpoints = Endpoints(Arc::new((0..3).map(|i| c.endpoint(i)).collect()));
    let record = Arc::new(Mutex::new(Record::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let deletes_seen: Arc<Mutex<BTreeMap<String, Nanos>>> = Arc::default();
    let mut tasks = Vec::new();
    for id in 0..4 {
        tasks.push(rt.spawn(kv_client(
            id,
            seed,
            endpoints.clone(),
            clock.clone(),
            record.clone(),
            stop.clone(),
        )));
    }
    // One holder stops early enough for its lease to be due before the end.
    let quarter = Duration::from_secs(secs / 4).as_nanos() as Nanos;
    for n in 0..3 {
        let stop_at = (n == 2).then_some(quarter);
        tasks.push(rt.spawn(lease_holder(
            n,
            endpoints.clone(),
            clock.clone(),
            record.clone(),
            stop.clone(),
            stop_at,
        )));
    }
    for (name, prefix) in [("kv-watch", "k/"), ("lease-watch", "lease/")] {
        tasks.push(rt.spawn(watcher(
            name.into(),
            prefix,
            endpoints.clone(),
            clock.clone(),
            record.clone(),
            deletes_seen.clone(),
            stop.clone(),
        )));
    }
    let faults = AtomicU64::new(0);
    let mut rng = Rng(seed);
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1000 + rng.below(1000)));
        nemesis(&mut c, &mut rng, &faults);
    }
    let quiet_since = clock.now();
    // The stopped holder's lease is due within its TTL and the bound after the
    // last fault; the watchers stay until then.
    let due = quiet_since
        + (Duration::from_secs(LEASE_TTL as u64) + LEASE_LATE_BOUND).as_nanos() as Nanos;
    while clock.now() < due {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for task in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    });
    let end = clock.now();
    // Durability: every node restarts, then the state is read.
    restart_all(&mut c);
    let leader = c.leader();
    let (state, revision_after, history) = rt.block_on(async {
        let mut kv = KvClient::new(channel(&c.endpoint(leader), None).await.expect("connect"));
        let answer = kv
            .range(RangeRequest {
                key: b"k/".to_vec(),
                range_end: roster_state::prefix_range_end(b"k/"),
                ..Default::default()
            })
            .await
            .expect("final read")
            .into_inner();
        let revision = answer.header.map_or(0, |h| h.revision);
        let state: BTreeMap<String, (i64, String)> = answer
            .kvs
            .into_iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    (
                        kv.mod_revision,
                        String::from_utf8_lossy(&kv.value).into_owned(),
                    ),
                )
            })
            .collect();
        let mut history = full_history(&c.endpoint(leader), "k/", revision).await;
        history.extend(full_history(&c.endpoint(leader), "lease/", revision).await);
        history.sort_by_key(|e| e.revision);
        (state, revision, history)
    });
    let record = record.lock().expect("lock");
    let deletes = deletes_seen.lock().expect("lock").clone();
    let leases: Vec<LeaseHistory> = record
        .leases
        .iter()
        .map(|(n, lease)| LeaseHistory {
            seen_gone: deletes.get(&format!("lease/{n}")).copied(),
            ..lease.clone()
        })
        .collect();
    let linearizable = linear::check(&record.ops);
    if !linearizable.failures.is_empty() {
        // The whole history of each failing key, for replaying the check.
        let failing: Vec<&Op> = record
            .ops
            .iter()
            .filter(|o| linearizable.failures.iter().any(|(k, _)| *k == o.key))
            .collect();
        let path = std::env::temp_dir().join(format!("roster-chaos-{seed}.json"));
        let written = std::fs::write(&path, serde_json::to_vec(&failing).unwrap_or_default());
        eprintln!(
            "chaos: failing histories written to {} ({written:?})",
            path.display()
        );
    }
    let verdicts: Vec<Verdict> = vec![
        linearizable.verdict(),
        lease::check(
            &leases,
            lease::Lateness {
                late: LEASE_LATE_BOUND.as_nanos() as Nanos,
                quiet_since,
            },
            end,
        ),
        watch::check(&record.watchers, &history),
        durability::check(&record.acked, &state, revision_after),
    ];
    let unknown = record.ops.iter().filter(|o| o.output.is_none()).count();
    eprintln!(
        "chaos: seed {seed}, {secs} s, {} faults, {} kv operations ({unknown} with unknown outcome), {} keepalives, {} watch segments",
        faults.load(Ordering::Relaxed),
        record.ops.len(),
        leases.iter().map(|l| l.keepalives.len()).sum::<usize>(),
        record.watchers.len()
    );
    for verdict in &verdicts {
        eprintln!("chaos: {verdict}");
    }
    assert!(
        record.ops.len() > 50,
        "the workload ran: {} operations",
        record.ops.len()
    );
    assert!(
        verdicts.iter().all(Verdict::ok),
        "anomalies found with seed {seed} (replay: ROSTER_CHAOS_SEED={seed} ROSTER_CHAOS_SECS={secs})"
    );
}
