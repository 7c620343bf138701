//! Black-box tests of a three-node cluster: membership, requests through
//! followers, leases across nodes, leader failure (SIGKILL), restart and
//! catch-up, and a lease kept alive through a failover.
//!
//! Run with `ROSTER_TEST_BINARY=/usr/bin/etcd` to check the tests against etcd.

mod harness;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use harness::{
    etcdctl_timeout, json_i64, json_u64, kvs, lease_hex, parse_lease_grant, poll_for, wait_for,
    wait_until, Cluster, ClusterOptions,
};
use roster_proto::etcdserverpb::{
    kv_client::KvClient, lease_client::LeaseClient, maintenance_client::MaintenanceClient,
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest,
    StatusRequest,
};

/// Writes must succeed again this long after the leader is killed.
const FAILOVER_BOUND: Duration = Duration::from_secs(5);

/// Serializable (local) read of a key on node `i`: its value, or `None`.
fn local_value(c: &Cluster, i: usize, key: &str) -> Option<String> {
    let j = c.ctl_json(i, &["get", key, "--consistency=s"]);
    kvs(&j).into_iter().next().map(|(_, v)| v)
}

#[test]
fn members_and_status_agree() {
    let c = Cluster::start(3);

    let ids: BTreeSet<u64> = (0..3).map(|i| c.member_id(i)).collect();
    assert_eq!(ids.len(), 3, "three distinct member ids: {ids:?}");

    let mut cluster_ids = BTreeSet::new();
    let mut leaders = BTreeSet::new();
    for i in 0..3 {
        // Member list through every node: the same three members.
        let j = c.ctl_json(i, &["member", "list"]);
        cluster_ids.insert(json_u64(&j["header"], "cluster_id"));
        assert_eq!(json_u64(&j["header"], "member_id"), c.member_id(i));
        let members = j["members"].as_array().expect("members");
        assert_eq!(members.len(), 3, "{j}");
        let listed: BTreeSet<u64> = members.iter().map(|m| json_u64(m, "ID")).collect();
        assert_eq!(listed, ids, "member list ids = endpoint status ids");
        for m in members {
            let id = json_u64(m, "ID");
            let node = (0..3)
                .find(|&n| c.member_id(n) == id)
                .expect("member is a node");
            let cfg = c.config(node);
            assert_eq!(m["name"], cfg.name.as_str(), "{m}");
            assert_eq!(m["peerURLs"], serde_json::json!([cfg.peer_url()]), "{m}");
            assert_eq!(
                m["clientURLs"],
                serde_json::json!([cfg.client_url()]),
                "{m}"
            );
        }

        let st = c.status(i).expect("status");
        assert_eq!(st.member_id, c.member_id(i));
        cluster_ids.insert(st.cluster_id);
        leaders.insert(st.leader);
        assert!(st.raft_term >= 1 && st.raft_index >= 1, "{:?}", st.raw);
    }
    assert_eq!(cluster_ids.len(), 1, "one cluster id: {cluster_ids:?}");
    assert_eq!(leaders.len(), 1, "one leader: {leaders:?}");
    let leader = leaders.into_iter().next().unwrap_or_default();
    assert!(ids.contains(&leader));
    assert_eq!(c.member_id(c.leader()), leader);

    // The simple format lists the same members on every node:
    // `<id hex>, started, <name>, <peer url>, <client url>, false`.
    let lines = |i: usize| -> BTreeSet<String> {
        let out = c.ctl(i, &["member", "list"]).expect_ok();
        out.lines().iter().map(|s| s.to_string()).collect()
    };
    let expected: BTreeSet<String> = (0..3)
        .map(|n| {
            let cfg = c.config(n);
            format!(
                "{:x}, started, {}, {}, {}, false",
                c.member_id(n),
                cfg.name,
                cfg.peer_url(),
                cfg.client_url()
            )
        })
        .collect();
    for i in 0..3 {
        assert_eq!(lines(i), expected, "member list through node {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_headers_name_the_answering_member() {
    let c = Cluster::start(3);
    let leader = c.member_id(c.leader());
    let mut cluster_ids = BTreeSet::new();
    for i in 0..3 {
        let ch = c.channel(i).await;
        let r = KvClient::new(ch.clone())
            .range(RangeRequest {
                key: b"k".to_vec(),
                ..Default::default()
            })
            .await
            .expect("range")
            .into_inner();
        let h = r.header.expect("header");
        assert_eq!(h.member_id, c.member_id(i));
        assert!(h.raft_term >= 1);
        cluster_ids.insert(h.cluster_id);
        let st = MaintenanceClient::new(ch)
            .status(StatusRequest::default())
            .await
            .expect("status")
            .into_inner();
        assert_eq!(st.header.expect("header").member_id, c.member_id(i));
        assert_eq!(st.leader, leader);
    }
    assert_eq!(cluster_ids.len(), 1);
    assert!(!cluster_ids.contains(&0));
}

#[test]
fn writes_through_followers_are_read_everywhere() {
    let c = Cluster::start(3);
    let followers = c.followers();
    assert_eq!(followers.len(), 2);

    let mut want = Vec::new();
    let mut revisions = Vec::new();
    for &f in &followers {
        let key = format!("/fw/{f}");
        let value = format!("via-{}", c.config(f).name);
        let j = c.ctl_json(f, &["put", &key, &value]);
        assert_eq!(json_u64(&j["header"], "member_id"), c.member_id(f));
        revisions.push(json_i64(&j["header"], "revision"));
        want.push((key, value));
    }
    assert_eq!(
        revisions[1],
        revisions[0] + 1,
        "one revision per put: {revisions:?}"
    );
    let last = revisions[1];

    // A linearizable read on any node, right after the acknowledgement,
    // sees both writes.
    for i in 0..3 {
        let j = c.ctl_json(i, &["get", "/fw/", "--prefix"]);
        assert_eq!(kvs(&j), want, "linearizable read on node {i}");
        assert_eq!(json_i64(&j["header"], "revision"), last, "node {i}");
    }
    // Serializable reads catch up.
    for i in 0..3 {
        wait_until(
            Duration::from_secs(5),
            "serializable read to catch up",
            || kvs(&c.ctl_json(i, &["get", "/fw/", "--prefix", "--consistency=s"])) == want,
        );
    }

    // Delete through a follower.
    let out = c
        .ctl(followers[0], &["del", "/fw/", "--prefix"])
        .expect_ok();
    assert_eq!(out.stdout, "2\n");
    for i in 0..3 {
        assert!(
            kvs(&c.ctl_json(i, &["get", "/fw/", "--prefix"])).is_empty(),
            "node {i}"
        );
    }
}

#[test]
fn leases_work_across_followers() {
    let c = Cluster::start(3);
    let leader = c.leader();
    let f = c.followers();
    let (f1, f2) = (f[0], f[1]);

    // Grant on one follower, attach and keep alive on the other, read the
    // lease on the leader.
    let out = c.ctl(f1, &["lease", "grant", "30"]).expect_ok();
    let id = parse_lease_grant(&out);
    let hex = lease_hex(id);
    let lease_flag = format!("--lease={hex}");
    c.ctl(f2, &["put", "/lf/a", "1", &lease_flag]).expect_ok();
    let out = c
        .ctl(f2, &["lease", "keep-alive", "--once", &hex])
        .expect_ok();
    assert_eq!(out.stdout, format!("lease {hex} keepalived with TTL(30)\n"));
    let j = c.ctl_json(leader, &["lease", "timetolive", &hex, "--keys"]);
    assert_eq!(json_i64(&j, "granted-ttl"), 30);
    assert!((25..=30).contains(&json_i64(&j, "ttl")), "{j}");
    assert_eq!(j["keys"], serde_json::json!(["L2xmL2E="])); // "/lf/a"
    for i in 0..3 {
        let out = c.ctl(i, &["lease", "list"]).expect_ok();
        assert_eq!(out.stdout, format!("found 1 leases\n{hex}\n"), "node {i}");
    }

    // Revoke through a follower: keys gone on every node.
    let out = c.ctl(f1, &["lease", "revoke", &hex]).expect_ok();
    assert_eq!(out.stdout, format!("lease {hex} revoked\n"));
    for i in 0..3 {
        assert!(
            kvs(&c.ctl_json(i, &["get", "/lf/", "--prefix"])).is_empty(),
            "node {i}"
        );
    }

    // A short lease granted through a follower expires with its keys on
    // every node, not before its TTL.
    const TTL: u64 = 3;
    let granted = Instant::now();
    let out = c.ctl(f1, &["lease", "grant", &TTL.to_string()]).expect_ok();
    let hex = lease_hex(parse_lease_grant(&out));
    let lease_flag = format!("--lease={hex}");
    c.ctl(f2, &["put", "/lf/short", "s", &lease_flag])
        .expect_ok();
    c.ctl(f1, &["put", "/lf/short2", "s", &lease_flag])
        .expect_ok();
    for i in 0..3 {
        wait_until(Duration::from_secs(2), "leased key replicated", || {
            local_value(&c, i, "/lf/short").is_some()
        });
    }
    let gone_at = wait_for(
        Duration::from_secs(TTL + 3).saturating_sub(granted.elapsed()),
        "short lease to expire",
        || {
            let j = c.ctl_json(leader, &["get", "/lf/", "--prefix"]);
            let done = Instant::now();
            kvs(&j).is_empty().then_some(done)
        },
    );
    assert!(
        gone_at - granted >= Duration::from_secs(TTL),
        "lease expired early: {:?} after the grant of a {TTL}s lease",
        gone_at - granted
    );
    for i in 0..3 {
        wait_until(Duration::from_secs(2), "expiry replicated", || {
            kvs(&c.ctl_json(i, &["get", "/lf/", "--prefix", "--consistency=s"])).is_empty()
        });
    }
}

#[test]
fn leader_killed_writes_resume_nothing_lost_and_node_catches_up() {
    let mut c = Cluster::start(3);
    let old_leader = c.leader();

    // Acknowledged writes through every node.
    let mut acked: Vec<(String, String)> = Vec::new();
    for n in 0..15 {
        let (key, value) = (format!("/ack/{n:03}"), format!("v{n}"));
        c.ctl(n % 3, &["put", &key, &value]).expect_ok();
        acked.push((key, value));
    }

    let killed_at = Instant::now();
    c.kill(old_leader);
    let survivors = c.running();
    assert_eq!(survivors.len(), 2);

    // Writes through the survivors succeed again within the bound.
    let mut attempt = 0;
    let resumed = poll_for(FAILOVER_BOUND + Duration::from_secs(5), || {
        attempt += 1;
        let node = survivors[attempt % 2];
        let out = etcdctl_timeout(
            &[c.endpoint(node)],
            Duration::from_millis(1000),
            &["put", "/after-kill", "first"],
        );
        out.success().then(Instant::now)
    })
    .map(|t| t - killed_at);
    let Some(after) = resumed else {
        panic!("no write succeeded within {FAILOVER_BOUND:?} + 5 s after the leader was killed");
    };
    eprintln!("writes resumed {after:?} after the leader was killed");
    assert!(
        after <= FAILOVER_BOUND,
        "writes resumed {after:?} after the leader was killed (bound {FAILOVER_BOUND:?})"
    );
    acked.push(("/after-kill".into(), "first".into()));

    let new_leader = c.leader();
    assert_ne!(new_leader, old_leader);
    assert!(c.status(new_leader).expect("status").leader == c.member_id(new_leader));

    // Nothing acknowledged is lost.
    for &i in &survivors {
        let j = c.ctl_json(i, &["get", "/a", "--prefix"]);
        assert_eq!(
            kvs(&j),
            acked,
            "acknowledged writes on node {i} after failover"
        );
    }

    // More writes while the old leader is down.
    for n in 15..30 {
        let (key, value) = (format!("/ack/{n:03}"), format!("v{n}"));
        c.ctl(survivors[n % 2], &["put", &key, &value]).expect_ok();
        acked.push((key, value));
    }
    acked.sort();
    let latest = c.ctl_json(survivors[0], &["put", "/latest", "final"]);
    let latest_rev = json_i64(&latest["header"], "revision");

    // The killed node restarts with its data dir and catches up.
    c.restart(old_leader);
    wait_until(
        Duration::from_secs(10),
        "restarted node to catch up",
        || local_value(&c, old_leader, "/latest").as_deref() == Some("final"),
    );
    let j = c.ctl_json(old_leader, &["get", "/a", "--prefix", "--consistency=s"]);
    assert_eq!(kvs(&j), acked, "restarted node has every write");
    assert!(json_i64(&j["header"], "revision") >= latest_rev);
    // It serves linearizable reads and writes again, and is a member.
    assert_eq!(
        c.ctl(old_leader, &["get", "/latest"]).expect_ok().stdout,
        "/latest\nfinal\n"
    );
    c.ctl(old_leader, &["put", "/latest", "again"]).expect_ok();
    for i in 0..3 {
        wait_until(
            Duration::from_secs(5),
            "write through the restarted node",
            || local_value(&c, i, "/latest").as_deref() == Some("again"),
        );
    }
    let st = c.status(old_leader).expect("status");
    assert_eq!(
        st.member_id,
        c.member_id(old_leader),
        "same member id after restart"
    );
    assert_ne!(st.leader, 0);
}

#[test]
fn killed_follower_restarts_and_catches_up() {
    let mut c = Cluster::start(3);
    let follower = c.followers()[0];
    c.ctl(follower, &["put", "/f/before", "1"]).expect_ok();
    c.kill(follower);

    // The two remaining nodes are a quorum: writes go on.
    let up = c.running();
    for n in 0..100 {
        c.ctl(up[n % 2], &["put", &format!("/f/{n:03}"), &n.to_string()])
            .expect_ok();
    }
    let last = c.ctl_json(up[0], &["put", "/f/last", "x"]);
    let last_rev = json_i64(&last["header"], "revision");

    c.restart(follower);
    wait_until(Duration::from_secs(10), "follower to catch up", || {
        local_value(&c, follower, "/f/last").as_deref() == Some("x")
    });
    let j = c.ctl_json(
        follower,
        &["get", "/f/", "--prefix", "--consistency=s", "--keys-only"],
    );
    assert_eq!(json_i64(&j, "count"), 102);
    assert_eq!(json_i64(&j["header"], "revision"), last_rev);
}

/// Keeps a lease alive with `etcdctl lease keep-alive --once` every `period`
/// through `endpoint`, from a thread, until dropped. Records when each
/// acknowledged keepalive was sent.
struct KeepAliver {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Instant>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl KeepAliver {
    fn start(endpoint: String, hex: String, period: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, acks) = (stop.clone(), acks.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let out = etcdctl_timeout(
                        std::slice::from_ref(&endpoint),
                        Duration::from_millis(1000),
                        &["lease", "keep-alive", "--once", &hex],
                    );
                    if out.success() {
                        acks.lock().expect("acks").push(sent);
                    }
                    // Next keepalive one period after this one was sent.
                    let next = sent + period;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < next {
                        thread::sleep(Duration::from_millis(20));
                    }
                }
            })
        };
        KeepAliver {
            stop,
            acks,
            thread: Some(thread),
        }
    }

    fn acks(&self) -> Vec<Instant> {
        self.acks.lock().expect("acks").clone()
    }
}

impl Drop for KeepAliver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn lease_kept_alive_through_leader_failover_does_not_expire() {
    const TTL: u64 = 5;
    let mut c = Cluster::start(3);
    let leader = c.leader();
    let f = c.followers();
    let (keeper, other) = (f[0], f[1]);

    let out = c
        .ctl(keeper, &["lease", "grant", &TTL.to_string()])
        .expect_ok();
    let hex = lease_hex(parse_lease_grant(&out));
    c.ctl(
        keeper,
        &["put", "/held", "alive", &format!("--lease={hex}")],
    )
    .expect_ok();

    let keepalive = KeepAliver::start(
        c.endpoint(keeper),
        hex.clone(),
        Duration::from_secs(TTL) / 3,
    );
    wait_until(
        Duration::from_secs(3),
        "a first keepalive acknowledged",
        || !keepalive.acks().is_empty(),
    );

    let killed_at = Instant::now();
    c.kill(leader);

    // For 2 x TTL after the kill, the key never disappears on either survivor.
    let watch_until = killed_at + Duration::from_secs(2 * TTL);
    let mut reads = 0;
    while Instant::now() < watch_until {
        for i in [keeper, other] {
            let value = local_value(&c, i, "/held");
            assert_eq!(
                value.as_deref(),
                Some("alive"),
                "lease expired on node {i} {:?} after the leader was killed, although kept alive (acks sent at {:?} after the kill)",
                killed_at.elapsed(),
                keepalive
                    .acks()
                    .iter()
                    .filter(|&&t| t > killed_at)
                    .map(|&t| t - killed_at)
                    .collect::<Vec<_>>()
            );
            reads += 1;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert!(reads > 10);

    // Keepalives were acknowledged again after the failover.
    let acks_after: Vec<Duration> = keepalive
        .acks()
        .iter()
        .filter(|&&t| t > killed_at)
        .map(|&t| t - killed_at)
        .collect();
    eprintln!("keepalives acknowledged after the kill, sent at: {acks_after:?}");
    assert!(
        acks_after.len() >= 2,
        "keepalives acknowledged after the kill (sent at): {acks_after:?}"
    );
    drop(keepalive);

    // A linearizable read through the new cluster still has it, and the
    // lease is live.
    assert_eq!(
        c.ctl(other, &["get", "/held"]).expect_ok().stdout,
        "/held\nalive\n"
    );
    let j = c.ctl_json(other, &["lease", "timetolive", &hex]);
    assert!(json_i64(&j, "ttl") > 0, "lease still live: {j}");
    assert_eq!(json_i64(&j, "granted-ttl"), TTL as i64);

    // Once the keepalives stop, it does expire (within TTL + election + slack).
    wait_until(
        Duration::from_secs(TTL + 5),
        "lease to expire once keepalives stopped",
        || kvs(&c.ctl_json(other, &["get", "/held"])).is_empty(),
    );
}

/// Five members: everyone agrees on the membership, and with two members killed
/// (the leader among them) the remaining majority of three keeps accepting writes.
#[test]
fn five_nodes_survive_two_failures() {
    let mut c = Cluster::start(5);
    let members = c.ctl(0, &["member", "list"]).expect_ok();
    assert_eq!(members.lines().len(), 5, "{members}");
    c.ctl(1, &["put", "/five", "before"]).expect_ok();

    let leader = c.leader();
    let other = (leader + 1) % 5;
    c.kill(leader);
    c.kill(other);
    let survivors = c.running();
    assert_eq!(survivors.len(), 3);
    let mut attempt = 0;
    let wrote = poll_for(FAILOVER_BOUND + Duration::from_secs(5), || {
        attempt += 1;
        let node = survivors[attempt % 3];
        let out = etcdctl_timeout(
            &[c.endpoint(node)],
            Duration::from_millis(1000),
            &["put", "/five", "after"],
        );
        out.success().then_some(())
    });
    assert!(wrote.is_some(), "no write succeeded on the 3 survivors");
    for &i in &survivors {
        assert_eq!(
            c.ctl(i, &["get", "/five"]).expect_ok().stdout,
            "/five\nafter\n"
        );
    }
}

/// DESIGN.md lease rule 5: a lease whose holder is gone must not be kept alive by
/// repeated failovers (etcd #9395, #9888: every election reset the TTL). The
/// leader checkpoints remaining TTLs every 500 ms; the leader is killed every
/// cycle, more often than the TTL, so without checkpoints the lease would never
/// expire. It must go within TTL + failovers x (election + checkpoint interval),
/// and never before its TTL.
#[test]
fn repeated_failovers_do_not_keep_a_dead_lease_alive() {
    if harness::is_etcd() {
        return; // roster's own flags
    }
    const TTL: Duration = Duration::from_secs(4);
    // Failover with a 500 ms election timeout takes about 1 s; allow for load.
    const ELECTION: Duration = Duration::from_millis(2500);
    const CHECKPOINT: Duration = Duration::from_millis(500);
    const MAX_FAILOVERS: u32 = 10;
    let mut opts = ClusterOptions::new(3);
    opts.extra_args = ["--heartbeat-interval", "50", "--election-timeout", "500"]
        .into_iter()
        .chain(["--lease-checkpoint-interval", "500ms"])
        .map(String::from)
        .collect();
    let mut c = Cluster::start_with(opts);

    let granted_at = Instant::now();
    let grant = c
        .ctl(0, &["lease", "grant", &TTL.as_secs().to_string()])
        .expect_ok();
    let lease = lease_hex(parse_lease_grant(&grant));
    c.ctl(
        0,
        &["put", "/dead-holder", "x", &format!("--lease={lease}")],
    )
    .expect_ok();

    let gone = |c: &Cluster| {
        let node = c.running()[0];
        let out = etcdctl_timeout(
            &[c.endpoint(node)],
            Duration::from_secs(2),
            &["get", "/dead-holder", "--consistency=s"],
        );
        out.success() && out.stdout.is_empty()
    };
    let mut failovers = 0;
    let mut last_failover = granted_at;
    let gone_at = loop {
        // Pace the faults by polling for the outcome: one cycle is at most 1.5 s
        // of waiting, less than the TTL.
        if let Some(at) = poll_for(Duration::from_millis(1500), || gone(&c).then(Instant::now)) {
            break at;
        }
        assert!(
            failovers < MAX_FAILOVERS,
            "lease still alive after {failovers} failovers and {:?}",
            granted_at.elapsed()
        );
        let leader = c.leader();
        c.kill(leader);
        last_failover = Instant::now();
        c.restart(leader);
        failovers += 1;
    };
    let lived = gone_at - granted_at;
    let bound = TTL + (ELECTION + CHECKPOINT) * failovers;
    eprintln!("lease gone after {lived:?} and {failovers} failovers (bound {bound:?})");
    assert!(lived >= TTL, "expired early: after {lived:?}, TTL {TTL:?}");
    assert!(lived <= bound, "lived {lived:?} > bound {bound:?}");
    assert!(
        failovers >= 2,
        "the test must fail over at least twice to mean anything"
    );
    // A leader that restarted the lease at its full TTL could not have expired
    // it before this: the checkpoint is what made it go.
    assert!(
        gone_at < last_failover + TTL,
        "gone {:?} after the last failover: the TTL was reset",
        gone_at - last_failover
    );
}

/// Concurrent writes through a follower travel to the leader together; each
/// still gets its own revision and its own answer, an error included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_through_a_follower_get_their_own_revisions_and_answers() {
    const PUTS: usize = 200;
    let c = Cluster::start(3);
    let ch = c.channel(c.followers()[0]).await;
    let start = KvClient::new(ch.clone())
        .range(RangeRequest {
            key: b"x".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner()
        .header
        .expect("header")
        .revision;
    let put = |key: String, lease: i64| {
        let mut kv = KvClient::new(ch.clone());
        tokio::spawn(async move {
            kv.put(PutRequest {
                key: key.into_bytes(),
                value: b"v".to_vec(),
                lease,
                ..Default::default()
            })
            .await
        })
    };
    let puts: Vec<_> = (0..PUTS).map(|n| put(format!("/fb/{n:03}"), 0)).collect();
    // Among them, one put on a lease that does not exist.
    let bad = put("/fb/bad".into(), 0x7eadbeef);
    let mut revisions = BTreeSet::new();
    for p in puts {
        let r = p.await.expect("task").expect("put").into_inner();
        revisions.insert(r.header.expect("header").revision);
    }
    let err = bad
        .await
        .expect("task")
        .expect_err("a put on an unknown lease");
    assert_eq!(err.message(), "etcdserver: requested lease not found");
    let want: BTreeSet<i64> = (start + 1..=start + PUTS as i64).collect();
    assert_eq!(
        revisions, want,
        "one revision per put, none shared or skipped"
    );
    let all = KvClient::new(ch)
        .range(RangeRequest {
            key: b"/fb/".to_vec(),
            range_end: b"/fb0".to_vec(),
            count_only: true,
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    assert_eq!(
        all.count, PUTS as i64,
        "every put is there, the bad one is not"
    );
}

/// Leases granted concurrently through every node reach the leader together and
/// are committed in shared log entries: each must still get its own clock (be
/// renewable) and expire with its keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_granted_concurrently_are_kept_alive_and_expire() {
    const LEASES: usize = 60;
    let c = Cluster::start(3);
    let mut channels = Vec::new();
    for i in 0..3 {
        channels.push(c.channel(i).await);
    }
    let mut grants = Vec::new();
    for n in 0..LEASES {
        let ch = channels[n % 3].clone();
        grants.push(tokio::spawn(async move {
            let mut lease = LeaseClient::new(ch.clone());
            let id = lease
                .lease_grant(LeaseGrantRequest { ttl: 3, id: 0 })
                .await
                .expect("grant")
                .into_inner()
                .id;
            KvClient::new(ch)
                .put(PutRequest {
                    key: format!("/conc/{n:03}").into_bytes(),
                    value: b"v".to_vec(),
                    lease: id,
                    ..Default::default()
                })
                .await
                .expect("put on the lease");
            id
        }));
    }
    let mut ids = Vec::new();
    for g in grants {
        ids.push(g.await.expect("grant task"));
    }
    let distinct: BTreeSet<i64> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), LEASES, "every grant got its own id");

    // One keepalive each, through a follower: every lease is known to the leader.
    let follower = c.followers()[0];
    let mut lease = LeaseClient::new(channels[follower].clone());
    let requests: Vec<LeaseKeepAliveRequest> =
        ids.iter().map(|&id| LeaseKeepAliveRequest { id }).collect();
    let mut answers = lease
        .lease_keep_alive(tokio_stream::iter(requests))
        .await
        .expect("keepalive stream")
        .into_inner();
    let mut renewed = BTreeSet::new();
    while renewed.len() < LEASES {
        let r = answers
            .message()
            .await
            .expect("keepalive answer")
            .expect("stream ended early");
        assert!(r.ttl > 0, "lease {:x} answered TTL {}", r.id, r.ttl);
        renewed.insert(r.id);
    }
    assert_eq!(renewed, distinct);

    // Then nobody keeps them alive: all of them, and their keys, go.
    let mut kv = KvClient::new(channels[0].clone());
    let deadline = Instant::now() + Duration::from_secs(12);
    loop {
        let left = kv
            .range(RangeRequest {
                key: b"/conc/".to_vec(),
                range_end: b"/conc0".to_vec(),
                count_only: true,
                ..Default::default()
            })
            .await
            .expect("range")
            .into_inner()
            .count;
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} keys outlived their leases"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in ids {
        let ttl = lease
            .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false })
            .await
            .expect("ttl")
            .into_inner()
            .ttl;
        assert_eq!(ttl, -1, "lease {id:x} still exists");
    }
}

/// etcd #15247, #12528: a leader frozen (SIGSTOP, as by a stuck fsync or a
/// starved CPU) and then resumed must not act on its stale view: the lease kept
/// alive through the new leader must not expire, and the resumed old leader's
/// overdue deadlines must not revoke anything. A lease whose holder stopped
/// still expires under the new leader.
#[test]
fn a_frozen_leader_resumed_does_not_expire_leases_kept_alive_elsewhere() {
    const TTL: u64 = 3;
    let c = Cluster::start(3);
    let old_leader = c.leader();
    let f = c.followers();
    let (keeper, other) = (f[0], f[1]);
    let grant = |c: &Cluster| {
        let out = c
            .ctl(keeper, &["lease", "grant", &TTL.to_string()])
            .expect_ok();
        lease_hex(parse_lease_grant(&out))
    };
    let (kept, dead) = (grant(&c), grant(&c));
    c.ctl(
        keeper,
        &["put", "/kept", "alive", &format!("--lease={kept}")],
    )
    .expect_ok();
    c.ctl(keeper, &["put", "/dead", "x", &format!("--lease={dead}")])
        .expect_ok();
    let keepalive = KeepAliver::start(c.endpoint(keeper), kept, Duration::from_secs(TTL) / 3);
    wait_until(
        Duration::from_secs(3),
        "a first keepalive acknowledged",
        || !keepalive.acks().is_empty(),
    );

    c.signal(old_leader, "STOP");
    let frozen_at = Instant::now();
    let new_leader_elected = || {
        [keeper, other].iter().any(|&i| {
            c.status(i)
                .is_ok_and(|s| s.leader != 0 && s.leader != c.member_id(old_leader))
        })
    };
    let kept_everywhere = |c: &Cluster| {
        for i in [keeper, other] {
            assert_eq!(
                local_value(c, i, "/kept").as_deref(),
                Some("alive"),
                "kept-alive lease expired on node {i}, {:?} after the freeze",
                frozen_at.elapsed()
            );
        }
    };
    wait_until(Duration::from_secs(10), "a new leader", new_leader_elected);
    // Frozen for two TTLs: every deadline the old leader knew is long past.
    while frozen_at.elapsed() < Duration::from_secs(2 * TTL) {
        kept_everywhere(&c);
        thread::sleep(Duration::from_millis(100));
    }
    c.signal(old_leader, "CONT");
    let resumed_at = Instant::now();
    // For a TTL after the resume, the kept lease stays, on every node.
    while resumed_at.elapsed() < Duration::from_secs(TTL) {
        kept_everywhere(&c);
        thread::sleep(Duration::from_millis(100));
    }
    wait_until(
        Duration::from_secs(10),
        "the old leader to catch up",
        || local_value(&c, old_leader, "/kept").as_deref() == Some("alive"),
    );
    // The stopped holder's lease went, under the new leader.
    wait_until(
        Duration::from_secs(10),
        "the dead holder's key to go",
        || local_value(&c, keeper, "/dead").is_none(),
    );
    assert!(c.leader() != old_leader || new_leader_elected());
    drop(keepalive);
}

/// A follower that was down while the log moved past a snapshot, and the log
/// under it was purged, catches up from the snapshot however long installing
/// it takes. The RPC carrying the last chunk answers only once the follower
/// has decoded, saved and fsynced the whole snapshot; openraft's default
/// timeout for it (200 ms) was too short for a state of tens of MB, so the
/// leader sent it again and again and the follower never caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_purged_log_catches_up_from_a_large_snapshot() {
    if harness::is_etcd() {
        return; // the purge point depends on roster's own snapshot settings
    }
    // Entries are written one at a time, so each is its own log entry: one
    // snapshot at 1,200 entries, the log purged up to the 1,000 entries kept
    // behind it, so the follower (down since about entry 5) needs the
    // snapshot, then 100 entries of 24 KB from the log.
    const PUTS: usize = 1_300;
    const VALUE: usize = 24 * 1024;
    let mut opts = ClusterOptions::new(3);
    // A 5 s election timeout: the follower does not hear from the leader
    // while it installs the snapshot, and in a debug build on a busy machine
    // that can take longer than the usual 1 s; it then campaigns, the leader
    // steps down and the snapshot starts over (found in CI; see the note of
    // session 19). What this test checks is that it catches up at all.
    opts.extra_args = ["--snapshot-count", "1200", "--election-timeout", "5000"]
        .map(String::from)
        .to_vec();
    let mut c = Cluster::start_with(opts);
    let follower = c.followers()[0];
    c.kill(follower);
    let writer = c.running()[0];
    let mut kv = KvClient::new(c.channel(writer).await);
    let value = vec![b'v'; VALUE];
    let mut last = 0;
    for n in 0..PUTS {
        let put = kv
            .put(PutRequest {
                key: format!("/big/{n:05}").into_bytes(),
                value: value.clone(),
                ..Default::default()
            })
            .await
            .expect("put");
        last = put.into_inner().header.expect("header").revision;
    }
    // Not `restart`: its 30 s readiness wait would bound the catching up,
    // which takes a debug build on a busy machine about that long.
    c.restart_no_wait(follower);
    let status = |i: usize| c.status(i).map(|s| s.revision).unwrap_or(0);
    wait_until(Duration::from_secs(120), "the follower to catch up", || {
        status(follower) >= last
    });
    let log = std::fs::read_to_string(&c.config(follower).log_path).expect("the follower's log");
    assert!(
        log.contains("installed a snapshot from the leader"),
        "caught up from the snapshot, not from the log"
    );
    let key = format!("/big/{:05}", PUTS - 1);
    let got = local_value(&c, follower, &key).expect("the last key, read on the follower");
    assert_eq!(got.len(), VALUE);
}
