//! One simulated run: a 3- or 5-node cluster and a client host inside one
//! turmoil simulation, driven by a seed.
//!
//! Every node is a real [`RunningNode`] (the same code as `roster serve`) on
//! [`MemoryStorage`] and the simulated network ([`SimTransport`]); the
//! client host runs the [`Workload`]. The simulation owns the clock: tokio's
//! time on every host is turmoil's virtual time, the wall clock the nodes
//! stamp into commands is turmoil's epoch plus that time, and openraft's
//! election timeouts come from a generator seeded by the run's seed. With
//! tokio's own random source seeded too (`--cfg tokio_unstable`, set in
//! `.cargo/config.toml`) the same seed replays the same run.
//!
//! The nemesis acts between simulation steps, from the same seed: it crashes
//! the leader or any node and restarts it, restarts every node at once,
//! isolates the leader, splits the cluster in two, cuts links one way, stalls
//! every link of the leader (as a long pause would: nothing in, nothing out,
//! all delivered at once afterwards), drops messages, and raises message
//! latency. A crash loses what the node's raft log had not flushed (memory
//! storage flushes a log append 2 ms after it; the vote at once), as a machine
//! crash would; the state machine's keys survive it.
//!
//! After the faults the network heals, every crashed node restarts, the
//! workload runs on until a stopped holder's lease is due, every node
//! restarts once more, and the checkers judge the history.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use openraft::ServerState;
use roster_check::Nanos;
use roster_raft::MemoryStorage;
use roster_server::{Backend, InitialMember, NodeConfig, RunningNode};
use roster_state::splitmix64;
use serde::{Deserialize, Serialize};

use crate::net::{sim_connect, SimTransport};
use crate::workload::{Judgement, Mix, Rng, Workload};

/// What to simulate.
#[derive(Debug, Clone, Copy)]
pub struct SimOptions {
    pub seed: u64,
    /// 3 or 5.
    pub nodes: usize,
    /// Virtual seconds of faults.
    pub fault_secs: u64,
}

/// One fault the nemesis injected, at a virtual time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultLog {
    pub at_ms: u64,
    pub fault: String,
}

/// The result of one run.
pub struct Outcome {
    pub options: SimOptions,
    pub faults: Vec<FaultLog>,
    pub judgement: Judgement,
    /// Virtual time the run took.
    pub virtual_ms: u64,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.judgement.ok()
    }
}

/// A run's figures in a form that crosses process boundaries: each run of a
/// soak or a test is its own process (see [`Summary::LINE_PREFIX`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub seed: u64,
    pub nodes: usize,
    pub fault_secs: u64,
    pub faults: Vec<String>,
    pub ops: usize,
    pub unknown: usize,
    pub keepalives: usize,
    pub watch_segments: usize,
    pub virtual_ms: u64,
    pub digest: u64,
    /// One line per checker, as printed.
    pub verdicts: Vec<String>,
    pub anomalies: usize,
    /// The run could not be judged at all, and why.
    pub error: Option<String>,
}

impl Summary {
    /// How a child process marks the line that carries its summary as JSON.
    ///
    /// Why a process per run: tokio numbers tasks from one counter per
    /// process and, when a runtime is dropped (a crashed host), shuts its
    /// tasks down in an order that depends on those numbers; the order in
    /// which a crashed node's connections close then differs between the
    /// first run in a process and later ones. A run that is the first in its
    /// process replays exactly.
    pub const LINE_PREFIX: &'static str = "sim-summary: ";

    pub fn ok(&self) -> bool {
        self.error.is_none() && self.anomalies == 0
    }

    /// The summary of a run's result.
    pub fn of(options: SimOptions, result: &Result<Outcome, SimError>) -> Self {
        let mut summary = Summary {
            seed: options.seed,
            nodes: options.nodes,
            fault_secs: options.fault_secs,
            faults: Vec::new(),
            ops: 0,
            unknown: 0,
            keepalives: 0,
            watch_segments: 0,
            virtual_ms: 0,
            digest: 0,
            verdicts: Vec::new(),
            anomalies: 0,
            error: None,
        };
        match result {
            Ok(o) => {
                let j = &o.judgement;
                summary.faults = o
                    .faults
                    .iter()
                    .map(|f| format!("at {} ms: {}", f.at_ms, f.fault))
                    .collect();
                summary.ops = j.ops;
                summary.unknown = j.unknown;
                summary.keepalives = j.keepalives;
                summary.watch_segments = j.watch_segments;
                summary.virtual_ms = o.virtual_ms;
                summary.digest = j.digest;
                summary.verdicts = j.verdicts.iter().map(|v| v.to_string()).collect();
                summary.anomalies = j.verdicts.iter().map(|v| v.anomalies.len()).sum();
            }
            Err(e) => summary.error = Some(e.to_string()),
        }
        summary
    }

    /// The line a child prints.
    pub fn line(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        format!("{}{json}", Self::LINE_PREFIX)
    }

    /// The summary in a child's output, if it printed one (anywhere in a
    /// line: a test harness may have begun the line).
    pub fn parse(output: &str) -> Option<Self> {
        output
            .lines()
            .find_map(|l| l.split_once(Self::LINE_PREFIX))
            .and_then(|(_, json)| serde_json::from_str(json).ok())
    }

    /// The command that replays this run.
    pub fn replay(&self) -> String {
        format!(
            "cargo run -p roster-sim --example sim -- --seed {} --nodes {} --secs {}",
            self.seed, self.nodes, self.fault_secs
        )
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let j = &self.judgement;
        write!(
            f,
            "sim: seed {} nodes {}: {} faults, {} kv operations ({} unknown), {} keepalives, {} watch segments, {} virtual ms, digest {:016x}",
            self.options.seed,
            self.options.nodes,
            self.faults.len(),
            j.ops,
            j.unknown,
            j.keepalives,
            j.watch_segments,
            self.virtual_ms,
            j.digest
        )?;
        for verdict in &j.verdicts {
            write!(f, "\nsim: {verdict}")?;
        }
        Ok(())
    }
}

/// Why a run could not be judged at all.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("seed {seed}: simulation failed: {reason}")]
    Simulation { seed: u64, reason: String },
    #[error("seed {seed}: {reason}")]
    Judge { seed: u64, reason: String },
}

const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;
/// Simulated 2023-11-14T22:13:20Z: any fixed instant will do.
const EPOCH_SECS: u64 = 1_700_000_000;

fn host(i: usize) -> String {
    format!("n{i}")
}

fn config(i: usize, nodes: usize) -> NodeConfig {
    let peer_url = |j: usize| format!("http://{}:{PEER_PORT}", host(j));
    let mut config = NodeConfig::single(&host(i), "unused-in-memory".into());
    config.listen_client_urls = vec![format!("http://0.0.0.0:{CLIENT_PORT}")];
    config.advertise_client_urls = vec![format!("http://{}:{CLIENT_PORT}", host(i))];
    config.listen_peer_urls = vec![format!("http://0.0.0.0:{PEER_PORT}")];
    config.initial_advertise_peer_urls = vec![peer_url(i)];
    config.initial_cluster = (0..nodes)
        .map(|j| InitialMember {
            name: host(j),
            peer_urls: vec![peer_url(j)],
        })
        .collect();
    config.initial_cluster_token = "sim".into();
    config
}

/// What each node last said of itself: its term and whether it leads.
type Views = Arc<Mutex<Vec<Option<(u64, bool)>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The software of node `i`: start it over its storage, report its raft
/// state until the host is crashed.
async fn node_software(
    i: usize,
    nodes: usize,
    storage: MemoryStorage,
    views: Views,
) -> turmoil::Result {
    // A restart follows a crash (the first start has nothing to lose).
    storage
        .lose_unflushed()
        .map_err(|e| format!("node {i}: {e}"))?;
    let transport = Arc::new(SimTransport);
    let node = RunningNode::start_with(config(i, nodes), transport, Backend::Memory(storage))
        .await
        .map_err(|e| format!("node {i} did not start: {e}"))?;
    let mut metrics = node.raft.metrics();
    loop {
        let (term, leads) = {
            let m = metrics.borrow_and_update();
            (m.current_term, m.state == ServerState::Leader)
        };
        lock(&views)[i] = Some((term, leads));
        if metrics.changed().await.is_err() {
            return Ok(());
        }
    }
}

/// What the client host and the nemesis tell each other.
#[derive(Default)]
struct Phase {
    /// Set by the client: stop faults and heal everything.
    quiet: bool,
    /// Set by the client: restart every node now.
    restart_all: bool,
    /// Set by the nemesis once every node was restarted.
    restarted: bool,
    judgement: Option<Result<Judgement, String>>,
}

/// The simulated wall clock of the thread running a simulation.
fn simulated_now_ms() -> u64 {
    let since_epoch = turmoil::since_epoch().unwrap_or_default();
    since_epoch.as_millis() as u64
}

/// Runs one simulation to its verdicts.
///
/// Replays exactly only as the first run of its process (see
/// [`Summary::LINE_PREFIX`]); [`crate::child::run_child`] runs one so.
pub fn run(options: SimOptions) -> Result<Outcome, SimError> {
    /// Gives the thread back its real clock and randomness, also on a panic.
    struct Seeded;
    impl Drop for Seeded {
        fn drop(&mut self) {
            roster_server::wall_clock::simulate(None);
            roster_raft::runtime::unseed_thread_rng();
        }
    }
    roster_raft::runtime::seed_thread_rng(options.seed);
    roster_server::wall_clock::simulate(Some(simulated_now_ms));
    let _seeded = Seeded;
    run_seeded(options)
}

fn run_seeded(options: SimOptions) -> Result<Outcome, SimError> {
    let SimOptions {
        seed,
        nodes,
        fault_secs,
    } = options;
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(fault_secs + 300))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_micros(200))
        .max_message_latency(Duration::from_millis(3))
        .epoch(UNIX_EPOCH + Duration::from_secs(EPOCH_SECS))
        // Connection attempts held by a stall arrive together when it ends:
        // room for all of them in a listener's queue (turmoil panics past it).
        .tcp_capacity(4_096)
        .rng_seed(seed)
        .build();
    let views: Views = Arc::new(Mutex::new(vec![None; nodes]));
    for i in 0..nodes {
        let storage = MemoryStorage::new();
        let views = views.clone();
        sim.host(host(i), move || {
            node_software(i, nodes, storage.clone(), views.clone())
        });
    }
    let phase: Rc<RefCell<Phase>> = Rc::default();
    let urls: Vec<String> = (0..nodes)
        .map(|i| format!("http://{}:{CLIENT_PORT}", host(i)))
        .collect();
    sim.client("client", client(seed, fault_secs, urls, phase.clone()));
    let mut nemesis = Nemesis::new(seed, nodes);
    let progress = std::env::var_os("ROSTER_SIM_PROGRESS").is_some();
    loop {
        let finished = sim.step().map_err(|e| SimError::Simulation {
            seed,
            reason: e.to_string(),
        })?;
        if finished {
            break;
        }
        let now_ms = sim.elapsed().as_millis() as u64;
        if progress && now_ms.is_multiple_of(1_000) {
            eprintln!("sim: seed {seed}: {now_ms} virtual ms");
        }
        let mut p = phase.borrow_mut();
        if p.restart_all && !p.restarted {
            nemesis.heal(&mut sim);
            nemesis.restart_all(&mut sim, &views);
            p.restarted = true;
        } else if p.quiet {
            nemesis.heal(&mut sim);
        } else {
            nemesis.act(&mut sim, &views, now_ms);
        }
    }
    let virtual_ms = sim.elapsed().as_millis() as u64;
    let judgement = phase
        .borrow_mut()
        .judgement
        .take()
        .unwrap_or_else(|| Err("the client ended without a verdict".into()))
        .map_err(|reason| SimError::Judge { seed, reason })?;
    Ok(Outcome {
        options,
        faults: nemesis.log,
        judgement,
        virtual_ms,
    })
}

/// The client host: the workload through the faults, then the verdict.
async fn client(
    seed: u64,
    fault_secs: u64,
    urls: Vec<String>,
    phase: Rc<RefCell<Phase>>,
) -> turmoil::Result {
    let quarter = Duration::from_secs(fault_secs / 4).as_nanos() as Nanos;
    let mix = Mix {
        kv_clients: 4,
        lease_holders: 3,
        stop_one_holder_at: Some(quarter),
    };
    let connect = Arc::new(sim_connect(urls));
    let mut workload = Workload::spawn(connect, splitmix64(seed), mix);
    tokio::time::sleep(Duration::from_secs(fault_secs)).await;
    let quiet_since = workload.now();
    phase.borrow_mut().quiet = true;
    let due = Workload::leases_due(quiet_since);
    let left = due.saturating_sub(workload.now());
    tokio::time::sleep(Duration::from_nanos(left)).await;
    let end = workload.stop().await;
    phase.borrow_mut().restart_all = true;
    while !phase.borrow().restarted {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let judgement = judge_when_ready(&workload, quiet_since, end).await;
    phase.borrow_mut().judgement = Some(judgement);
    Ok(())
}

/// Judges once the restarted cluster answers (60 virtual seconds at most).
async fn judge_when_ready(
    workload: &Workload,
    quiet_since: Nanos,
    end: Nanos,
) -> Result<Judgement, String> {
    let mut last = String::new();
    for attempt in 0..60 {
        match workload.judge(attempt, quiet_since, end).await {
            Ok(judgement) => return Ok(judgement),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(format!("no verdict after every node restarted: {last}"))
}

/// What a fault did (for the log), how to undo it, and after how many
/// virtual milliseconds.
type Injected = (String, Option<Active>, u64);

/// A fault that is undone later.
#[derive(Debug, Clone)]
enum Active {
    Crashed(usize),
    Partitioned(Vec<(usize, usize)>),
    OneWay(usize, usize),
    Held(usize),
    Slow,
    Lossy,
}

/// Sets the chance that a message breaks its link, on every link between
/// nodes and between each node and the client.
fn set_fail_rate(sim: &mut turmoil::Sim<'_>, nodes: usize, rate: f64) {
    for a in 0..nodes {
        for b in a + 1..nodes {
            sim.set_link_fail_rate(host(a), host(b), rate);
        }
        sim.set_link_fail_rate(host(a), "client", rate);
    }
}

/// The fault injector: picks a fault every 1-2 virtual seconds, undoes it
/// after a while, all from the run's seed.
struct Nemesis {
    rng: Rng,
    nodes: usize,
    next_at: u64,
    undo_at: u64,
    active: Option<Active>,
    log: Vec<FaultLog>,
}

impl Nemesis {
    fn new(seed: u64, nodes: usize) -> Self {
        Nemesis {
            rng: Rng(splitmix64(seed ^ 0x006e_656d_6573_6973)),
            nodes,
            next_at: 2_000,
            undo_at: 0,
            active: None,
            log: Vec::new(),
        }
    }

    /// The node that leads in the highest term, if any says it does.
    fn leader(views: &Views) -> Option<usize> {
        let views = lock(views);
        let best = views
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.filter(|(_, leads)| *leads).map(|(term, _)| (term, i)))
            .max()?;
        Some(best.1)
    }

    /// The leader if `leader_first` and one is known, else a random node;
    /// and how to name it in the log.
    fn victim(&mut self, views: &Views, leader_first: bool) -> (usize, String) {
        match Self::leader(views) {
            Some(leader) if leader_first => (leader, format!("leader n{leader}")),
            _ => {
                let v = self.rng.below(self.nodes as u64) as usize;
                (v, format!("n{v}"))
            }
        }
    }

    fn act(&mut self, sim: &mut turmoil::Sim<'_>, views: &Views, now_ms: u64) {
        if self.active.is_some() && now_ms >= self.undo_at {
            self.undo(sim);
            self.next_at = now_ms + 1_000 + self.rng.below(1_000);
        }
        if self.active.is_some() || now_ms < self.next_at {
            return;
        }
        let (fault, active, lasts) = self.pick(sim, views);
        self.log.push(FaultLog {
            at_ms: now_ms,
            fault,
        });
        self.active = active;
        self.undo_at = now_ms + lasts;
        if self.active.is_none() {
            self.next_at = now_ms + 1_000 + self.rng.below(1_000);
        }
    }

    /// Injects one fault; what it did, how to undo it, and after how long.
    fn pick(&mut self, sim: &mut turmoil::Sim<'_>, views: &Views) -> Injected {
        match self.rng.below(9) {
            0 | 1 => {
                let leader_first = self.rng.below(2) == 0;
                self.crash(sim, views, leader_first)
            }
            2 => self.restart_all(sim, views),
            3 => self.isolate_leader(sim, views),
            4 => self.split(sim),
            5 => self.cut_one_way(sim, views),
            6 => self.stall_leader(sim, views),
            7 => self.lose_messages(sim),
            _ => self.slow_down(sim),
        }
    }

    fn crash(&mut self, sim: &mut turmoil::Sim<'_>, views: &Views, leader_first: bool) -> Injected {
        let (v, name) = self.victim(views, leader_first);
        sim.crash(host(v));
        lock(views)[v] = None;
        let lasts = 500 + self.rng.below(2_000);
        (format!("crash {name}"), Some(Active::Crashed(v)), lasts)
    }

    fn restart_all(&mut self, sim: &mut turmoil::Sim<'_>, views: &Views) -> Injected {
        for i in 0..self.nodes {
            sim.crash(host(i));
            lock(views)[i] = None;
        }
        for i in 0..self.nodes {
            sim.bounce(host(i));
        }
        ("restart all".into(), None, 0)
    }

    fn isolate_leader(&mut self, sim: &mut turmoil::Sim<'_>, views: &Views) -> Injected {
        let (v, name) = self.victim(views, true);
        let pairs: Vec<(usize, usize)> = (0..self.nodes)
            .filter(|&j| j != v)
            .map(|j| (v, j))
            .collect();
        for &(a, b) in &pairs {
            sim.partition(host(a), host(b));
        }
        let lasts = 1_000 + self.rng.below(4_000);
        (
            format!("isolate {name}"),
            Some(Active::Partitioned(pairs)),
            lasts,
        )
    }

    /// A minority of one or two nodes against the rest.
    fn split(&mut self, sim: &mut turmoil::Sim<'_>) -> Injected {
        let n = self.nodes;
        let minority = 1 + self.rng.below((n as u64 - 1) / 2) as usize;
        let mut side: Vec<usize> = Vec::new();
        while side.len() < minority {
            let j = self.rng.below(n as u64) as usize;
            if !side.contains(&j) {
                side.push(j);
            }
        }
        let mut pairs = Vec::new();
        for &a in &side {
            for b in (0..n).filter(|b| !side.contains(b)) {
                sim.partition(host(a), host(b));
                pairs.push((a, b));
            }
        }
        let lasts = 1_000 + self.rng.below(4_000);
        let what = format!("split {side:?} from the rest");
        (what, Some(Active::Partitioned(pairs)), lasts)
    }

    fn cut_one_way(&mut self, sim: &mut turmoil::Sim<'_>, views: &Views) -> Injected {
        let leader_first = self.rng.below(2) == 0;
        let (from, name) = self.victim(views, leader_first);
        let to = (from + 1 + self.rng.below(self.nodes as u64 - 1) as usize) % self.nodes;
        sim.partition_oneway(host(from), host(to));
        let lasts = 1_000 + self.rng.below(3_000);
        let what = format!("cut {name} -> n{to} one way");
        (what, Some(Active::OneWay(from, to)), lasts)
    }

    /// Holds every message to and from the leader, the client's too, as a
    /// long pause would; all are delivered when it ends.
    fn stall_leader(&mut self, sim: &mut turmoil::Sim<'_>, views: &Views) -> Injected {
        let (v, name) = self.victim(views, true);
        for j in (0..self.nodes).filter(|&j| j != v) {
            sim.hold(host(v), host(j));
        }
        sim.hold(host(v), "client");
        let lasts = 2_000 + self.rng.below(2_000);
        (format!("stall {name}"), Some(Active::Held(v)), lasts)
    }

    /// Each message may break its link, dropping it and all in flight on it;
    /// the next message repairs the link. TCP connections that lost a
    /// segment stall until HTTP/2 pings or call deadlines give up on them.
    fn lose_messages(&mut self, sim: &mut turmoil::Sim<'_>) -> Injected {
        let percent = 1 + self.rng.below(5);
        set_fail_rate(sim, self.nodes, percent as f64 / 100.0);
        let lasts = 2_000 + self.rng.below(3_000);
        (
            format!("lose {percent}% of messages"),
            Some(Active::Lossy),
            lasts,
        )
    }

    fn slow_down(&mut self, sim: &mut turmoil::Sim<'_>) -> Injected {
        let max = 50 + self.rng.below(300);
        sim.set_max_message_latency(Duration::from_millis(max));
        let lasts = 2_000 + self.rng.below(3_000);
        (format!("latency up to {max} ms"), Some(Active::Slow), lasts)
    }

    fn undo(&mut self, sim: &mut turmoil::Sim<'_>) {
        match self.active.take() {
            Some(Active::Crashed(v)) => sim.bounce(host(v)),
            Some(Active::Partitioned(pairs)) => {
                for (a, b) in pairs {
                    sim.repair(host(a), host(b));
                }
            }
            Some(Active::OneWay(from, to)) => sim.repair_oneway(host(from), host(to)),
            Some(Active::Held(v)) => {
                for j in (0..self.nodes).filter(|&j| j != v) {
                    sim.release(host(v), host(j));
                }
                sim.release(host(v), "client");
            }
            Some(Active::Slow) => sim.set_max_message_latency(Duration::from_millis(3)),
            Some(Active::Lossy) => set_fail_rate(sim, self.nodes, 0.0),
            None => {}
        }
    }

    /// Ends the fault in progress, if any: the quiet phase has begun.
    fn heal(&mut self, sim: &mut turmoil::Sim<'_>) {
        if self.active.is_some() {
            self.undo(sim);
        }
    }
}

/// Counts of what a set of runs injected, by kind of fault.
pub fn fault_counts(faults: &[FaultLog]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for f in faults {
        let kind: String = f
            .fault
            .split_whitespace()
            .take_while(|w| {
                let named = w.starts_with('n') && w[1..].chars().all(|c| c.is_ascii_digit());
                !named && !w.starts_with('[') && !w.chars().any(|c| c.is_ascii_digit())
            })
            .collect::<Vec<_>>()
            .join(" ");
        *counts.entry(kind).or_insert(0) += 1;
    }
    counts
}
