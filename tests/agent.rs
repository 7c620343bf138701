//! Black-box tests of `roster agent` against a real three-node cluster:
//! SIGTERM drains then deregisters gracefully (a watcher sees both, in that
//! order) and exits 0; SIGKILL leaves the lease to expire; a supervised
//! process is registered only once its check passes, and its own exit
//! deregisters it and becomes the agent's exit code; bad configs and an
//! unreachable cluster are reported clearly. (Roster's own API: not for etcd.)

mod harness;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use harness::{free_port, wait_for, wait_until, Cluster};
use roster_proto::registry::{EventKind, RemovalReason, WatchServicesResponse};
use tonic::Streaming;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

/// A running agent whose stderr goes to a file.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn start(dir: &Path, args: &[&str]) -> Agent {
        let log = dir.join(format!("agent-{}.log", free_port()));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_roster"))
            .arg("agent")
            .args(args)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start agent");
        Agent { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "agent still running; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn endpoints(c: &Cluster) -> String {
    (0..c.size())
        .map(|i| c.endpoint(i).trim_start_matches("http://").to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The next `n` (kind, reason) events, within 20 s.
async fn next(
    stream: &mut Streaming<WatchServicesResponse>,
    n: usize,
) -> Vec<(EventKind, RemovalReason)> {
    let mut out = Vec::new();
    while out.len() < n {
        let response = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("event in time")
            .expect("stream")
            .expect("open");
        out.extend(response.events.iter().map(|e| (e.kind(), e.reason())));
    }
    out
}

fn registered(rt: &tokio::runtime::Runtime, c: &Cluster, service: &str, id: &str) {
    wait_until(Duration::from_secs(20), "registered", || {
        rt.block_on(c.instance_ids(0, service))
            .contains(&id.to_string())
    });
}

#[test]
fn sigterm_drains_then_deregisters_and_exits_zero() {
    let c = Cluster::start(3);
    let rt = runtime();
    let eps = endpoints(&c);
    let mut agent = Agent::start(
        c.dir(),
        &[
            "--endpoints",
            &eps,
            "--service",
            "web",
            "--id",
            "w1",
            "--endpoint",
            "http://10.0.0.1:80",
            "--ttl",
            "3s",
            "--drain",
            "1s",
        ],
    );
    registered(&rt, &c, "web", "w1");
    let mut stream = rt.block_on(c.watch_services(0, "web"));
    agent.signal("TERM");
    let events = rt.block_on(next(&mut stream, 2));
    assert_eq!(
        events,
        vec![
            (EventKind::Draining, RemovalReason::Unspecified),
            (EventKind::Deregistered, RemovalReason::Graceful)
        ],
        "log:\n{}",
        agent.log()
    );
    let status = agent.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "log:\n{}", agent.log());
}

#[test]
fn sigkill_leaves_the_lease_to_expire() {
    let c = Cluster::start(3);
    let rt = runtime();
    let eps = endpoints(&c);
    let agent = Agent::start(
        c.dir(),
        &[
            "--endpoints",
            &eps,
            "--service",
            "job",
            "--id",
            "j1",
            "--ttl",
            "2s",
        ],
    );
    registered(&rt, &c, "job", "j1");
    let mut stream = rt.block_on(c.watch_services(0, "job"));
    agent.signal("KILL");
    let killed = Instant::now();
    let events = rt.block_on(next(&mut stream, 1));
    assert_eq!(
        events,
        vec![(EventKind::Deregistered, RemovalReason::Expired)]
    );
    assert!(
        killed.elapsed() >= Duration::from_millis(1500),
        "not before the TTL: {:?}",
        killed.elapsed()
    );
}

#[test]
fn a_supervised_process_is_registered_once_its_check_passes_and_its_exit_deregisters() {
    let c = Cluster::start(3);
    let rt = runtime();
    let eps = endpoints(&c);
    // The supervised server: a one-node roster that starts listening only
    // once the test creates READY.
    let ready = c.dir().join("READY");
    let (client_port, peer_port) = (free_port(), free_port());
    let server = format!(
        "while [ ! -f {ready} ]; do sleep 0.1; done; exec {bin} serve --name s --data-dir {dir} \
         --listen-client-urls http://127.0.0.1:{client_port} --listen-peer-urls http://127.0.0.1:{peer_port} \
         --initial-cluster s=http://127.0.0.1:{peer_port}",
        ready = ready.display(),
        bin = env!("CARGO_BIN_EXE_roster"),
        dir = c.dir().join("supervised").display(),
    );
    let check = format!("127.0.0.1:{client_port}");
    let endpoint = format!("grpc://127.0.0.1:{client_port}");
    let mut agent = Agent::start(
        c.dir(),
        &[
            "--endpoints",
            &eps,
            "--service",
            "kv",
            "--id",
            "k1",
            "--endpoint",
            &endpoint,
            "--check-tcp",
            &check,
            "--check-interval",
            "200ms",
            "--ttl",
            "3s",
            "--",
            "sh",
            "-c",
            &server,
        ],
    );
    // Observed for a while: the process runs but does not listen yet, so the
    // agent must not register it.
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline {
        assert!(
            rt.block_on(c.instance_ids(0, "kv")).is_empty(),
            "registered before its check passed"
        );
        assert!(
            agent.child.try_wait().expect("try_wait").is_none(),
            "agent exited: {}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        agent.log().contains("waiting for its check"),
        "{}",
        agent.log()
    );
    std::fs::write(&ready, b"").expect("READY");
    registered(&rt, &c, "kv", "k1");
    let mut stream = rt.block_on(c.watch_services(0, "kv"));
    // SIGTERM: drain (none asked), deregister, stop the process, exit 0.
    agent.signal("TERM");
    let events = rt.block_on(next(&mut stream, 1));
    assert_eq!(
        events,
        vec![(EventKind::Deregistered, RemovalReason::Graceful)]
    );
    assert_eq!(
        agent.wait(Duration::from_secs(20)).code(),
        Some(0),
        "{}",
        agent.log()
    );

    // A process that exits by itself: deregistered at once, its code kept.
    let mut short = Agent::start(
        c.dir(),
        &[
            "--endpoints",
            &eps,
            "--service",
            "once",
            "--id",
            "o1",
            "--",
            "sh",
            "-c",
            "sleep 4; exit 3",
        ],
    );
    registered(&rt, &c, "once", "o1");
    assert_eq!(
        short.wait(Duration::from_secs(20)).code(),
        Some(3),
        "{}",
        short.log()
    );
    assert!(
        rt.block_on(c.instance_ids(0, "once")).is_empty(),
        "deregistered when the process exited"
    );
}

/// Writes `text` as the agent config at `path` and runs `roster agent
/// --config` on it; whether it succeeded, and its stderr.
fn run_with_config(path: &Path, text: &str) -> (bool, String) {
    std::fs::write(path, text).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_roster"))
        .args(["agent", "--config"])
        .arg(path)
        .output()
        .expect("run");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configs_and_an_unreachable_cluster_are_reported() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("agent.toml");
    let (ok, err) = run_with_config(
        &config,
        "[[instance]]\nservice = \"a\"\nid = \"b\"\nttl = 5\n",
    );
    assert!(!ok, "{err}");
    assert!(
        err.contains(&config.display().to_string())
            && err.contains("line 4")
            && err.contains("ttl"),
        "{err}"
    );
    let twice = "[[instance]]\nservice = \"a\"\nid = \"b\"\n".repeat(2);
    let (ok, err) = run_with_config(&config, &twice);
    assert!(!ok && err.contains("a/b appears twice"), "{err}");
    // Nothing listens there: the agent says so, keeps trying, and still
    // stops cleanly on SIGTERM.
    let closed = format!("127.0.0.1:{}", free_port());
    let mut agent = Agent::start(
        dir.path(),
        &["--endpoints", &closed, "--service", "a", "--id", "b"],
    );
    let line = wait_for(Duration::from_secs(10), "a retry line", || {
        agent
            .log()
            .lines()
            .find(|l| l.contains("cluster unreachable") && l.contains(&closed))
            .map(str::to_string)
    });
    assert!(line.contains("retrying"), "{line}");
    agent.signal("TERM");
    assert_eq!(
        agent.wait(Duration::from_secs(10)).code(),
        Some(0),
        "{}",
        agent.log()
    );
}
