//! Black-box test harness: real server processes on loopback, driven with
//! `etcdctl` and gRPC.
//!
//! Each test file says `mod harness;`. A [`Cluster`] starts 1 or 3 processes of
//! the server binary, each with its own data dir inside a fresh temp dir, its
//! stdout/stderr in a per-node log file, and loopback ports picked free at run
//! time, so tests run in parallel. Every wait polls a condition with a deadline;
//! every child is SIGKILLed when the cluster is dropped, also when the test
//! panics, and the node logs are then printed (set `ROSTER_TEST_KEEP=1` to keep
//! the temp dir as well).
//!
//! The binary is the `roster` that cargo built for this test run
//! (`CARGO_BIN_EXE_roster`, started as `roster serve ...`), unless
//! `ROSTER_TEST_BINARY` names another one. Because `roster serve` takes etcd's
//! flags, `ROSTER_TEST_BINARY=/usr/bin/etcd` runs the same tests against real
//! etcd: that is how the tests themselves are validated. Checks that only make
//! sense for roster ask [`is_etcd`] and skip.
//!
//! `etcdctl` is taken from `ETCDCTL_BIN`, else from `PATH`.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use roster_proto::registry::registry_client::RegistryClient;
use roster_proto::registry::{
    DiscoverRequest, HealthFilter, Instance, WatchServicesRequest, WatchServicesResponse,
};
use serde_json::Value;
use tonic::Streaming;

/// Heartbeat interval passed to every node (ms), etcd's default.
pub const HEARTBEAT_MS: u64 = 100;
/// Election timeout passed to every node (ms), etcd's default. The minimum lease
/// TTL follows from it: ceil(1.5 x 1000 ms) = 2 s.
pub const ELECTION_MS: u64 = 1000;
/// How long a cluster may take to start and elect a leader.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval between two polls of a condition.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Lines of each node log printed when a test fails.
const LOG_TAIL_LINES: usize = 150;

// ---------------------------------------------------------------------------
// Waiting on conditions
// ---------------------------------------------------------------------------

/// Polls `cond` until it returns true; panics naming `what` if `timeout` passes
/// first. Returns the time it took.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    wait_for(timeout, what, || cond().then_some(()));
    start.elapsed()
}

/// Polls `f` until it returns `Some`; panics naming `what` if `timeout` passes
/// first.
pub fn wait_for<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    match poll_for(timeout, f) {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting for: {what}"),
    }
}

/// Polls `f` until it returns `Some`, or returns `None` once `timeout` has
/// passed. `f` is always called at least once, and once more after the
/// deadline has passed if the previous call started before it.
pub fn poll_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let started = Instant::now();
        if let Some(v) = f() {
            return Some(v);
        }
        if started >= deadline {
            return None;
        }
        thread::sleep(POLL_INTERVAL.min(deadline.saturating_duration_since(Instant::now())));
    }
}

// ---------------------------------------------------------------------------
// The server binary
// ---------------------------------------------------------------------------

/// Which server the tests run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// `roster serve ...`
    Roster,
    /// Real etcd (`ROSTER_TEST_BINARY=/usr/bin/etcd`), used to validate the tests.
    Etcd,
}

/// The server binary under test and how to start it.
#[derive(Clone, Debug)]
pub struct Binary {
    pub path: PathBuf,
    pub flavor: Flavor,
}

impl Binary {
    /// A command that starts one node; `args` are etcd-style flags.
    pub fn command(&self, args: &[String]) -> Command {
        let mut cmd = Command::new(&self.path);
        if self.flavor == Flavor::Roster {
            cmd.arg("serve");
        }
        cmd.args(args);
        cmd.stdin(Stdio::null());
        cmd
    }
}

/// The binary under test: `ROSTER_TEST_BINARY` if set (a file name starting
/// with `etcd` means real etcd), else the `roster` cargo built.
pub fn binary() -> Binary {
    match std::env::var_os("ROSTER_TEST_BINARY").filter(|p| !p.is_empty()) {
        Some(path) => {
            let path = PathBuf::from(path);
            let is_etcd = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("etcd"));
            let flavor = if is_etcd {
                Flavor::Etcd
            } else {
                Flavor::Roster
            };
            Binary { path, flavor }
        }
        None => Binary {
            path: PathBuf::from(env!("CARGO_BIN_EXE_roster")),
            flavor: Flavor::Roster,
        },
    }
}

/// True when the tests run against real etcd rather than roster.
pub fn is_etcd() -> bool {
    binary().flavor == Flavor::Etcd
}

// ---------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------

/// A loopback port that was free a moment ago (bound to port 0, then released).
/// Never hands out the same port twice within one test process.
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// A port free on `ip` a moment ago. (A port free on 127.0.0.1 may still be
/// held on another loopback address, e.g. by a closing connection of an
/// earlier run whose peer is cut off.)
pub fn free_port_on(ip: &str) -> u16 {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(|| Mutex::new(HashSet::new()));
    loop {
        let listener = TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {ip}:0: {e}"));
        let port = listener.local_addr().expect("local_addr").port();
        drop(listener);
        let mut set = handed_out.lock().unwrap_or_else(|e| e.into_inner());
        if set.insert(port) {
            return port;
        }
    }
}

/// A cluster token unique to this process and call.
pub fn unique_token(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

// ---------------------------------------------------------------------------
// etcdctl
// ---------------------------------------------------------------------------

/// What one `etcdctl` run produced.
#[derive(Debug)]
pub struct CtlOutput {
    pub args: Vec<String>,
    /// `None` if etcdctl was killed because it ran past its hard deadline.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl CtlOutput {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// Panics with the whole output unless etcdctl exited 0.
    #[track_caller]
    pub fn expect_ok(self) -> Self {
        assert!(self.success(), "etcdctl failed: {self}");
        self
    }

    /// Panics with the whole output unless etcdctl exited non-zero.
    #[track_caller]
    pub fn expect_err(self) -> Self {
        assert!(
            self.status.is_some() && !self.success(),
            "etcdctl should have failed: {self}"
        );
        self
    }

    /// stdout parsed as JSON (use with `-w json`); panics on failure.
    #[track_caller]
    pub fn json(&self) -> Value {
        assert!(self.success(), "etcdctl failed: {self}");
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("etcdctl output is not JSON ({e}): {self}"))
    }

    /// Non-empty stdout lines.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().filter(|l| !l.is_empty()).collect()
    }
}

impl fmt::Display for CtlOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "etcdctl {}\n  status: {:?}\n  stdout: {:?}\n  stderr: {:?}",
            self.args.join(" "),
            self.status,
            self.stdout,
            self.stderr
        )
    }
}

/// The etcdctl binary: `ETCDCTL_BIN`, else `etcdctl` from `PATH`.
pub fn etcdctl_path() -> OsString {
    std::env::var_os("ETCDCTL_BIN")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "etcdctl".into())
}

/// A gRPC channel to `endpoint`, connected within 5 s; `call_timeout` bounds
/// each call (`None` for streams, which may last longer).
pub async fn grpc_channel(
    endpoint: String,
    call_timeout: Option<Duration>,
) -> tonic::transport::Channel {
    try_grpc_channel(endpoint, call_timeout, Duration::from_secs(5))
        .await
        .expect("connect")
}

/// As [`grpc_channel`], but `None` if it is not connected within
/// `connect_timeout` (a dead node), or twice that (a frozen one, whose kernel
/// still accepts the connection).
pub async fn try_grpc_channel(
    endpoint: String,
    call_timeout: Option<Duration>,
    connect_timeout: Duration,
) -> Option<tonic::transport::Channel> {
    roster_sim::workload::tcp_channel(endpoint, call_timeout, connect_timeout).await
}

/// Runs `etcdctl --endpoints=... --command-timeout=5s <args>` (API v3).
pub fn etcdctl(endpoints: &[String], args: &[&str]) -> CtlOutput {
    etcdctl_timeout(endpoints, Duration::from_secs(5), args)
}

/// Runs etcdctl with the given `--command-timeout`; killed if it runs
/// `command_timeout` + 10 s (streaming commands such as `lease keep-alive`
/// without `--once` are bounded the same way).
pub fn etcdctl_timeout(
    endpoints: &[String],
    command_timeout: Duration,
    args: &[&str],
) -> CtlOutput {
    etcdctl_with_input(endpoints, command_timeout, args, None)
}

/// Runs etcdctl with `input` on its standard input (for `txn`); none: empty.
pub fn etcdctl_with_input(
    endpoints: &[String],
    command_timeout: Duration,
    args: &[&str],
    input: Option<&str>,
) -> CtlOutput {
    let mut full: Vec<String> = vec![
        format!("--endpoints={}", endpoints.join(",")),
        format!("--command-timeout={}ms", command_timeout.as_millis()),
        "--dial-timeout=2s".to_string(),
    ];
    full.extend(args.iter().map(|a| a.to_string()));

    let mut cmd = Command::new(etcdctl_path());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ETCDCTL_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("ETCDCTL_API", "3")
        .args(&full)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "cannot run {:?} ({e}); install it (apt-get install etcd-client) or run scripts/test",
            etcdctl_path()
        )
    });
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .expect("write etcdctl input");
    }
    let out = read_in_background(child.stdout.take());
    let err = read_in_background(child.stderr.take());
    let deadline = Instant::now() + command_timeout + Duration::from_secs(10);
    let status = loop {
        match child.try_wait().expect("wait for etcdctl") {
            Some(status) => break Some(status),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => thread::sleep(Duration::from_millis(5)),
        }
    };
    CtlOutput {
        args: full,
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

fn read_in_background(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

// ---------------------------------------------------------------------------
// Parsed etcdctl answers
// ---------------------------------------------------------------------------

/// `etcdctl endpoint status -w json` for one endpoint.
#[derive(Clone, Debug)]
pub struct Status {
    pub cluster_id: u64,
    pub member_id: u64,
    pub revision: i64,
    pub raft_term: u64,
    pub leader: u64,
    pub raft_index: u64,
    pub version: String,
    pub db_size: i64,
    pub raw: Value,
}

/// Reads a JSON number that Go's encoder omitted when zero.
pub fn json_u64(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// Reads a JSON number that Go's encoder omitted when zero.
pub fn json_i64(v: &Value, key: &str) -> i64 {
    v.get(key).and_then(Value::as_i64).unwrap_or(0)
}

/// Asks one endpoint for its status; `Err` with etcdctl's output if it did not answer.
pub fn endpoint_status(endpoint: &str, timeout: Duration) -> Result<Status, String> {
    let out = etcdctl_timeout(
        &[endpoint.to_string()],
        timeout,
        &["endpoint", "status", "-w", "json"],
    );
    if !out.success() {
        return Err(out.to_string());
    }
    let v: Value = serde_json::from_str(out.stdout.trim()).map_err(|e| format!("{e}: {out}"))?;
    let s = v
        .get(0)
        .and_then(|e| e.get("Status"))
        .ok_or_else(|| format!("no Status in {out}"))?;
    let header = s.get("header").cloned().unwrap_or(Value::Null);
    Ok(Status {
        cluster_id: json_u64(&header, "cluster_id"),
        member_id: json_u64(&header, "member_id"),
        revision: json_i64(&header, "revision"),
        raft_term: json_u64(&header, "raft_term"),
        leader: json_u64(s, "leader"),
        raft_index: json_u64(s, "raftIndex"),
        version: s
            .get("version")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        db_size: json_i64(s, "dbSize"),
        raw: s.clone(),
    })
}

/// `etcdctl endpoint health` on one endpoint (a linearizable read through it).
/// With auth on, etcdctl's token-less read is refused ("user name is empty"),
/// which still shows the member answering: that counts as healthy too.
pub fn endpoint_healthy(endpoint: &str, timeout: Duration) -> bool {
    let out = etcdctl_timeout(&[endpoint.to_string()], timeout, &["endpoint", "health"]);
    out.success() || out.stderr.contains("etcdserver: user name is empty")
}

/// Decodes a base64 string as printed by `etcdctl -w json` (keys and values).
pub fn b64(s: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits: u32 = 0;
    let mut nbits = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .unwrap_or_else(|| panic!("not base64: {s:?}")) as u32;
        bits = (bits << 6) | v;
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    String::from_utf8(out).unwrap_or_else(|e| panic!("not UTF-8: {e}"))
}

/// `(key, value)` pairs of a `get -w json` answer, base64 decoded.
pub fn kvs(json: &Value) -> Vec<(String, String)> {
    json.get("kvs")
        .and_then(Value::as_array)
        .map(|kvs| {
            kvs.iter()
                .map(|kv| {
                    let field = |name: &str| kv.get(name).and_then(Value::as_str).map(b64);
                    (
                        field("key").unwrap_or_default(),
                        field("value").unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A lease id as etcdctl prints it: 16 lowercase hex digits.
pub fn lease_hex(id: i64) -> String {
    format!("{id:016x}")
}

/// Parses the id out of `lease 694d7a1d5b1e2c0b granted with TTL(60s)`.
#[track_caller]
pub fn parse_lease_grant(out: &CtlOutput) -> i64 {
    let hex = out
        .stdout
        .strip_prefix("lease ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected lease grant output: {out}"));
    i64::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("bad lease id {hex:?} ({e}): {out}"))
}

// ---------------------------------------------------------------------------
// Nodes and clusters
// ---------------------------------------------------------------------------

/// The addresses and paths of one node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub name: String,
    /// The loopback address it listens on (and, for peers, talks from).
    pub ip: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
}

impl NodeConfig {
    /// A node named `name` whose files live in `dir`, on fresh ports.
    pub fn new(dir: &Path, name: &str) -> Self {
        NodeConfig {
            name: name.to_string(),
            ip: "127.0.0.1".to_string(),
            client_port: free_port(),
            peer_port: free_port(),
            data_dir: dir.join(format!("{name}.data")),
            log_path: dir.join(format!("{name}.log")),
        }
    }

    pub fn client_url(&self) -> String {
        format!("http://{}:{}", self.ip, self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("http://{}:{}", self.ip, self.peer_port)
    }

    /// The etcd-style flags that start this node as a member of `initial_cluster`.
    pub fn serve_args(&self, initial_cluster: &str, token: &str) -> Vec<String> {
        [
            ("--name", self.name.clone()),
            ("--data-dir", self.data_dir.display().to_string()),
            ("--listen-client-urls", self.client_url()),
            ("--advertise-client-urls", self.client_url()),
            ("--listen-peer-urls", self.peer_url()),
            ("--initial-advertise-peer-urls", self.peer_url()),
            ("--initial-cluster", initial_cluster.to_string()),
            ("--initial-cluster-state", "new".to_string()),
            ("--initial-cluster-token", token.to_string()),
            ("--heartbeat-interval", HEARTBEAT_MS.to_string()),
            ("--election-timeout", ELECTION_MS.to_string()),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_string(), value])
        .collect()
    }
}

/// Runs the `roster` binary cargo built with `args` (no endpoint added);
/// (success, stdout, stderr).
pub fn roster<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_roster"))
        .args(args)
        .output()
        .expect("run roster");
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (out.status.success(), text(out.stdout), text(out.stderr))
}

/// Returns `args` with the value following `flag` replaced by `value`.
pub fn with_flag(args: &[String], flag: &str, value: &str) -> Vec<String> {
    let mut args = args.to_vec();
    let at = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("{flag} not in {args:?}"));
    args[at + 1] = value.to_string();
    args
}

/// Appends a marker line to a node's log (e.g. before a restart).
fn log_marker(path: &Path, line: &str) {
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "\n===== harness: {line} =====");
    }
}

/// Starts `binary` with `args`, stdout and stderr appended to `log_path`.
pub fn spawn_server(binary: &Binary, args: &[String], log_path: &Path) -> Child {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .unwrap_or_else(|e| panic!("open {}: {e}", log_path.display()));
    let log2 = log.try_clone().expect("clone log file handle");
    binary
        .command(args)
        .stdout(log)
        .stderr(log2)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.path.display()))
}

/// The last `n` lines of a file, or a note saying why it could not be read.
pub fn tail(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// How a server run that was expected to stop by itself ended.
#[derive(Debug)]
pub struct ServerExit {
    /// `None`: still running at the deadline (then it was killed).
    pub status: Option<ExitStatus>,
    /// Everything it wrote to stdout and stderr.
    pub output: String,
}

/// Starts the server with `args` and waits up to `timeout` for it to exit by
/// itself (for startup errors). Its output goes to `log_path` and is returned.
pub fn run_server_to_exit(args: &[String], log_path: &Path, timeout: Duration) -> ServerExit {
    let mut child = spawn_server(&binary(), args, log_path);
    let status = poll_for(timeout, || child.try_wait().expect("try_wait"));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    ServerExit {
        status,
        output: fs::read_to_string(log_path).unwrap_or_default(),
    }
}

struct Node {
    cfg: NodeConfig,
    args: Vec<String>,
    child: Option<Child>,
    member_id: u64,
}

/// How to start a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub size: usize,
    pub token: String,
    /// Extra `serve` flags for every node (roster's own, so tests using them
    /// must not run against etcd).
    pub extra_args: Vec<String>,
    /// Node `i` (from 0) listens on `127.0.7.<i+1>` instead of 127.0.0.1 and
    /// talks to its peers from it (`--peer-source-ip`), so that firewall rules
    /// can cut links between nodes. Roster's own flag: not for etcd. One such
    /// cluster per machine at a time.
    pub own_ips: bool,
    /// Each node's data dir is restored from this backup before it starts
    /// (`roster snapshot restore`, or `etcdctl snapshot restore` for etcd),
    /// with the node's name, URLs and the cluster's token.
    pub restore_from: Option<PathBuf>,
    /// Extra flags for that restore.
    pub restore_args: Vec<String>,
    /// Peer URLs are `https://` (the TLS flags go in `extra_args`).
    pub https_peers: bool,
}

impl ClusterOptions {
    pub fn new(size: usize) -> Self {
        ClusterOptions {
            size,
            token: unique_token("roster-test"),
            extra_args: Vec::new(),
            own_ips: false,
            restore_from: None,
            restore_args: Vec::new(),
            https_peers: false,
        }
    }
}

/// Restores `backup` into `cfg`'s data dir as a member of `initial_cluster`;
/// panics with the tool's output if the restore fails.
pub fn restore_data_dir(
    binary: &Binary,
    backup: &Path,
    cfg: &NodeConfig,
    initial_cluster: &str,
    token: &str,
    extra: &[String],
) {
    let mut cmd = match binary.flavor {
        Flavor::Roster => {
            let mut cmd = Command::new(&binary.path);
            cmd.args(["snapshot", "restore"]);
            cmd
        }
        Flavor::Etcd => {
            let mut cmd = Command::new(etcdctl_path());
            cmd.env("ETCDCTL_API", "3").args(["snapshot", "restore"]);
            cmd
        }
    };
    cmd.arg(backup)
        .args(["--name", &cfg.name])
        .arg(format!("--data-dir={}", cfg.data_dir.display()))
        .arg(format!("--initial-cluster={initial_cluster}"))
        .arg(format!("--initial-cluster-token={token}"))
        .arg(format!("--initial-advertise-peer-urls={}", cfg.peer_url()))
        .args(extra);
    let out = cmd.output().expect("run snapshot restore");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(
        out.status.success(),
        "snapshot restore of {} failed: {}{}",
        cfg.name,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Real server processes forming one cluster. Dropping it SIGKILLs them all.
pub struct Cluster {
    binary: Binary,
    nodes: Vec<Node>,
    token: String,
    dir: Option<tempfile::TempDir>,
}

impl Cluster {
    /// Starts `size` nodes and waits until every one answers and they agree on a leader.
    pub fn start(size: usize) -> Cluster {
        Cluster::start_with(ClusterOptions::new(size))
    }

    pub fn start_with(opts: ClusterOptions) -> Cluster {
        // A port picked free can be taken by someone else before the node
        // binds it; then start again on other ports.
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            let mut cluster = Cluster::spawn(&opts);
            match cluster.wait_ready(STARTUP_TIMEOUT) {
                Ok(()) => return cluster,
                Err(e) if attempt < ATTEMPTS && cluster.port_clash() => {
                    eprintln!("harness: port clash on attempt {attempt}, retrying: {e}");
                    cluster.kill_all();
                }
                Err(e) => panic!("cluster did not start: {e}"),
            }
        }
        unreachable!()
    }

    fn spawn(opts: &ClusterOptions) -> Cluster {
        let binary = binary();
        let dir = tempfile::Builder::new()
            .prefix("roster-test-")
            .tempdir()
            .expect("create temp dir");
        let configs: Vec<NodeConfig> = (1..=opts.size)
            .map(|i| {
                let mut cfg = NodeConfig::new(dir.path(), &format!("n{i}"));
                if opts.own_ips {
                    cfg.ip = format!("127.0.7.{i}");
                    cfg.client_port = free_port_on(&cfg.ip);
                    cfg.peer_port = free_port_on(&cfg.ip);
                }
                cfg
            })
            .collect();
        let initial_cluster = configs
            .iter()
            .map(|c| format!("{}={}", c.name, c.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = configs
            .into_iter()
            .map(|cfg| {
                let mut args = cfg.serve_args(&initial_cluster, &opts.token);
                if opts.https_peers {
                    args = args
                        .iter()
                        .map(|a| a.replace("http://", "https://"))
                        .collect();
                    // The client port stays plain: the harness talks to it.
                    args = with_flag(&args, "--listen-client-urls", &cfg.client_url());
                    args = with_flag(&args, "--advertise-client-urls", &cfg.client_url());
                }
                if opts.own_ips {
                    args.extend(["--peer-source-ip".to_string(), cfg.ip.clone()]);
                }
                args.extend(opts.extra_args.iter().cloned());
                if let Some(backup) = &opts.restore_from {
                    restore_data_dir(
                        &binary,
                        backup,
                        &cfg,
                        &initial_cluster,
                        &opts.token,
                        &opts.restore_args,
                    );
                }
                log_marker(&cfg.log_path, &format!("start {}", args.join(" ")));
                let child = spawn_server(&binary, &args, &cfg.log_path);
                Node {
                    cfg,
                    args,
                    child: Some(child),
                    member_id: 0,
                }
            })
            .collect();
        Cluster {
            binary,
            nodes,
            token: opts.token.clone(),
            dir: Some(dir),
        }
    }

    /// Waits until every running node answers a linearizable read and all of
    /// them name the same leader, which is one of them.
    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let last_problem = match self.check_ready() {
                Ok(ids) => {
                    for (node, id) in self.nodes.iter_mut().zip(ids) {
                        if let Some(id) = id {
                            node.member_id = id;
                        }
                    }
                    return Ok(());
                }
                Err(Fatal(e)) => return Err(e),
                Err(Retry(e)) => e,
            };
            if Instant::now() >= deadline {
                return Err(format!("not ready after {timeout:?}: {last_problem}"));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    fn check_ready(&mut self) -> Result<Vec<Option<u64>>, ReadyError> {
        let mut ids = Vec::new();
        let mut leaders = HashSet::new();
        for i in 0..self.nodes.len() {
            if self.nodes[i].child.is_none() {
                ids.push(None);
                continue;
            }
            if let Some(status) = self.exited(i) {
                return Err(Fatal(format!(
                    "{} exited with {status} during startup",
                    self.nodes[i].cfg.name
                )));
            }
            let endpoint = self.endpoint(i);
            let st = endpoint_status(&endpoint, Duration::from_secs(1)).map_err(Retry)?;
            if st.leader == 0 || st.member_id == 0 {
                return Err(Retry(format!("{endpoint} has no leader yet")));
            }
            if !endpoint_healthy(&endpoint, Duration::from_secs(1)) {
                return Err(Retry(format!("{endpoint} not healthy yet")));
            }
            leaders.insert(st.leader);
            ids.push(Some(st.member_id));
        }
        if leaders.len() != 1 {
            return Err(Retry(format!("nodes disagree on the leader: {leaders:?}")));
        }
        let leader = leaders.into_iter().next().unwrap_or_default();
        if !ids.contains(&Some(leader)) {
            return Err(Retry(format!("leader {leader:x} is not a running node")));
        }
        Ok(ids)
    }

    /// `Some(status)` if node `i` was started and has exited since.
    fn exited(&mut self, i: usize) -> Option<ExitStatus> {
        self.nodes[i]
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn port_clash(&self) -> bool {
        self.nodes.iter().any(|n| {
            fs::read_to_string(&n.cfg.log_path)
                .map(|log| log.to_lowercase().contains("address already in use"))
                .unwrap_or(false)
        })
    }

    // --- what tests use -------------------------------------------------

    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    pub fn binary(&self) -> &Binary {
        &self.binary
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// The temp dir holding every node's data dir and log.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map(|d| d.path()).expect("temp dir")
    }

    pub fn config(&self, i: usize) -> &NodeConfig {
        &self.nodes[i].cfg
    }

    /// The flags node `i` was started with.
    pub fn args(&self, i: usize) -> &[String] {
        &self.nodes[i].args
    }

    /// The address node `i` listens on.
    pub fn ip(&self, i: usize) -> &str {
        &self.nodes[i].cfg.ip
    }

    /// Client endpoint of node `i`, `http://IP:port` (for etcdctl and gRPC).
    pub fn endpoint(&self, i: usize) -> String {
        self.nodes[i].cfg.client_url()
    }

    /// A gRPC channel to node `i` for unary calls (each bounded to 10 s).
    pub async fn channel(&self, i: usize) -> tonic::transport::Channel {
        grpc_channel(self.endpoint(i), Some(Duration::from_secs(10))).await
    }

    /// Runs `roster <args> --endpoints <node i>` (the registry CLI);
    /// (success, stdout, stderr).
    pub fn roster(&self, i: usize, args: &[&str]) -> (bool, String, String) {
        let endpoints = format!("--endpoints={}", self.endpoint(i));
        let args: Vec<&str> = args.iter().copied().chain([endpoints.as_str()]).collect();
        roster(&args)
    }

    /// [`Cluster::roster`] with the arguments written as one line (none
    /// contains a space).
    pub fn roster_line(&self, i: usize, line: &str) -> (bool, String, String) {
        self.roster(i, &line.split_whitespace().collect::<Vec<_>>())
    }

    /// The instances node `i` lists for `service`, any health, draining too.
    /// A linearizable read: the node has applied every change acknowledged
    /// before the call.
    pub async fn instances(&self, i: usize, service: &str) -> Vec<Instance> {
        let request = DiscoverRequest {
            service: service.into(),
            health: HealthFilter::Any as i32,
            include_draining: true,
            ..Default::default()
        };
        RegistryClient::new(self.channel(i).await)
            .discover(request)
            .await
            .expect("discover")
            .into_inner()
            .instances
    }

    /// The ids of [`Cluster::instances`].
    pub async fn instance_ids(&self, i: usize, service: &str) -> Vec<String> {
        let instances = self.instances(i, service).await;
        instances.into_iter().map(|instance| instance.id).collect()
    }

    /// A `WatchServices` stream of `service` on node `i` from now. A
    /// linearizable read comes first, so a follower's watch starts after every
    /// change acknowledged before the call, not before one it has yet to apply.
    pub async fn watch_services(
        &self,
        i: usize,
        service: &str,
    ) -> Streaming<WatchServicesResponse> {
        self.instances(i, service).await;
        let request = WatchServicesRequest {
            service: service.into(),
            ..Default::default()
        };
        RegistryClient::new(grpc_channel(self.endpoint(i), None).await)
            .watch_services(request)
            .await
            .expect("watch")
            .into_inner()
    }

    /// Client endpoints of every node.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.endpoint(i)).collect()
    }

    /// Member id of node `i`, as its own `endpoint status` reported it.
    pub fn member_id(&self, i: usize) -> u64 {
        self.nodes[i].member_id
    }

    /// Process id of node `i`, if it is running.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(Child::id)
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// Indices of the nodes that have not been killed.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.is_running(i))
            .collect()
    }

    /// Runs etcdctl against node `i` only.
    pub fn ctl(&self, i: usize, args: &[&str]) -> CtlOutput {
        etcdctl(&[self.endpoint(i)], args)
    }

    /// Runs etcdctl against node `i` and parses its `-w json` output.
    #[track_caller]
    pub fn ctl_json(&self, i: usize, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["-w", "json"]);
        self.ctl(i, &args).json()
    }

    /// `endpoint status` of node `i`.
    pub fn status(&self, i: usize) -> Result<Status, String> {
        endpoint_status(&self.endpoint(i), Duration::from_secs(2))
    }

    /// The index of the leader: a running node that reports itself as leader.
    pub fn leader(&self) -> usize {
        wait_for(Duration::from_secs(10), "a leader", || {
            self.running().into_iter().find(|&i| {
                self.status(i)
                    .is_ok_and(|s| s.leader != 0 && s.leader == s.member_id)
            })
        })
    }

    /// Running nodes other than the leader.
    pub fn followers(&self) -> Vec<usize> {
        let leader = self.leader();
        self.running()
            .into_iter()
            .filter(|&i| i != leader)
            .collect()
    }

    /// SIGKILLs node `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            log_marker(&node.cfg.log_path, "SIGKILL");
        }
    }

    /// Sends `signal` (e.g. "STOP", "CONT") to node `i` with `kill -<signal>`.
    pub fn signal(&self, i: usize, signal: &str) {
        let node = &self.nodes[i];
        let child = node
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", node.cfg.name));
        log_marker(&node.cfg.log_path, &format!("SIG{signal}"));
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} {} failed", child.id());
    }

    /// Sends SIGTERM to node `i` (with `kill -TERM <pid>`) and waits up to
    /// `timeout` for it to exit; panics if it does not.
    pub fn terminate(&mut self, i: usize, timeout: Duration) -> ExitStatus {
        let name = self.nodes[i].cfg.name.clone();
        let mut child = self.nodes[i]
            .child
            .take()
            .unwrap_or_else(|| panic!("{name} is not running"));
        log_marker(&self.nodes[i].cfg.log_path, "SIGTERM");
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(sent.success(), "kill -TERM {} failed", child.id());
        match poll_for(timeout, || child.try_wait().expect("try_wait")) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{name} still running {timeout:?} after SIGTERM");
            }
        }
    }

    /// The `--initial-cluster` of the running nodes plus a node `name` at
    /// `peer_url`: what a member added to this cluster starts with.
    pub fn initial_cluster_with(&self, name: &str, peer_url: &str) -> String {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| format!("{}={}", n.cfg.name, n.cfg.peer_url()))
            .chain(std::iter::once(format!("{name}={peer_url}")))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts `cfg` as a member joining this cluster (`--initial-cluster-state
    /// existing`), with `extra` flags, without waiting; its index.
    pub fn start_joining(&mut self, cfg: NodeConfig, extra: &[&str]) -> usize {
        let initial = self.initial_cluster_with(&cfg.name, &cfg.peer_url());
        let mut args = with_flag(
            &cfg.serve_args(&initial, &self.token),
            "--initial-cluster-state",
            "existing",
        );
        args.extend(extra.iter().map(|a| a.to_string()));
        log_marker(&cfg.log_path, &format!("start {}", args.join(" ")));
        let child = spawn_server(&self.binary, &args, &cfg.log_path);
        self.nodes.push(Node {
            cfg,
            args,
            child: Some(child),
            member_id: 0,
        });
        self.nodes.len() - 1
    }

    /// Waits up to `timeout` for node `i` to exit by itself; its status.
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> ExitStatus {
        let name = self.nodes[i].cfg.name.clone();
        let status = poll_for(timeout, || self.exited(i));
        match status {
            Some(status) => {
                self.nodes[i].child = None;
                status
            }
            None => panic!("{name} still running after {timeout:?}"),
        }
    }

    /// Starts node `i` again with the same flags and data dir (it must have been
    /// killed), without waiting.
    pub fn restart_no_wait(&mut self, i: usize) {
        assert!(!self.is_running(i), "node {i} is still running");
        let node = &mut self.nodes[i];
        log_marker(&node.cfg.log_path, "restart");
        node.child = Some(spawn_server(&self.binary, &node.args, &node.cfg.log_path));
    }

    /// Restarts node `i` and waits until it answers a linearizable read.
    pub fn restart(&mut self, i: usize) {
        self.restart_no_wait(i);
        self.wait_node_ready(i, STARTUP_TIMEOUT);
    }

    /// Waits until node `i` is running and answers `endpoint health`.
    pub fn wait_node_ready(&mut self, i: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited(i) {
                panic!("{} exited with {status}", self.nodes[i].cfg.name);
            }
            if endpoint_healthy(&self.endpoint(i), Duration::from_secs(1)) {
                return;
            }
            if Instant::now() >= deadline {
                panic!("{} not healthy after {timeout:?}", self.nodes[i].cfg.name);
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// SIGKILLs every node.
    pub fn kill_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }

    /// The tail of every node's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for node in &self.nodes {
            s.push_str(&format!(
                "----- {} ({}), last {LOG_TAIL_LINES} lines -----\n{}\n",
                node.cfg.name,
                node.cfg.log_path.display(),
                tail(&node.cfg.log_path, LOG_TAIL_LINES)
            ));
        }
        s
    }
}

enum ReadyError {
    /// A node died: starting again will not help.
    Fatal(String),
    /// Not yet; poll again.
    Retry(String),
}
use ReadyError::{Fatal, Retry};

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
        if thread::panicking() {
            eprintln!("{}", self.logs());
            if std::env::var_os("ROSTER_TEST_KEEP").is_some() {
                if let Some(dir) = self.dir.take() {
                    eprintln!("harness: keeping {}", dir.keep().display());
                }
            }
        }
    }
}

/// Reads a whole file as text (empty if missing), e.g. a node log.
pub fn read_text(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}
