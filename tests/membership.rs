//! Membership changes, black-box, with etcdctl: a learner added, moved to
//! another address, started with `--initial-cluster-state existing`, caught
//! up from a snapshot and promoted; followers and the leader removed while
//! the cluster keeps writing; and the refusals, with etcd's messages.
//!
//! Roster only: etcd 3.4 refuses client requests on a learner, which the
//! harness uses to tell that a node is up.

mod harness;

use std::time::Duration;

use harness::{
    etcdctl, grpc_channel, is_etcd, json_u64, kvs, poll_for, wait_for, Cluster, ClusterOptions,
    NodeConfig,
};
use roster_proto::etcdserverpb::kv_client::KvClient;
use roster_proto::etcdserverpb::PutRequest;

/// A removed member stops within this.
const EXIT_BOUND: Duration = Duration::from_secs(20);

/// The member id in the first `Member <hex> ...` line of etcdctl's output.
fn member_in(out: &str) -> u64 {
    let hex = out
        .split_whitespace()
        .skip_while(|w| *w != "Member")
        .nth(1)
        .unwrap_or_else(|| panic!("no member id in {out:?}"));
    u64::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("{hex:?} in {out:?}"))
}

/// `(id, name, is learner)` of each member, as node `i` lists them.
fn members(c: &Cluster, i: usize) -> Vec<(u64, String, bool)> {
    let j = c.ctl_json(i, &["member", "list"]);
    j["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            let name = m["name"].as_str().unwrap_or_default().to_string();
            (json_u64(m, "ID"), name, m["isLearner"] == true)
        })
        .collect()
}

/// Many puts quickly, over one gRPC connection to node `i`.
fn put_many(c: &Cluster, i: usize, count: usize) {
    let endpoint = c.endpoint(i);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut kv = KvClient::new(grpc_channel(endpoint, Some(Duration::from_secs(5))).await);
        for n in 0..count {
            let put = PutRequest {
                key: format!("bulk/{n:05}").into_bytes(),
                value: vec![b'v'; 200],
                ..Default::default()
            };
            kv.put(put).await.expect("put");
        }
    });
}

/// Node `i`'s own value of `key` (a serializable read: what it has applied).
fn local_value(c: &Cluster, i: usize, key: &str) -> Option<String> {
    let out = etcdctl(
        &[c.endpoint(i)],
        &["get", key, "--consistency=s", "-w", "json"],
    );
    if !out.success() {
        return None;
    }
    kvs(&out.json()).into_iter().next().map(|(_, v)| v)
}

#[test]
fn a_learner_joins_catches_up_from_a_snapshot_and_is_promoted() {
    if is_etcd() {
        return;
    }
    let mut c = Cluster::start_with(ClusterOptions {
        extra_args: vec!["--snapshot-count".into(), "100".into()],
        ..ClusterOptions::new(3)
    });
    // More than the 1,000 entries kept behind a snapshot: the learner cannot
    // catch up from the log alone.
    put_many(&c, 0, 1_500);

    let cfg = NodeConfig::new(c.dir(), "n4");
    let wrong = format!("http://127.0.0.1:{}", harness::free_port());
    let out = c
        .ctl(
            1,
            &[
                "member",
                "add",
                "n4",
                &format!("--peer-urls={wrong}"),
                "--learner",
            ],
        )
        .expect_ok();
    // etcdctl 3.4 prints the same line for a learner as for a voter.
    assert!(out.stdout.contains("added to cluster"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{}",
        out.stdout
    );
    let id = member_in(&out.stdout);
    assert!(
        members(&c, 2).contains(&(id, String::new(), true)),
        "unstarted learner"
    );

    // Not started, so not in sync.
    let early = c.ctl(0, &["member", "promote", &format!("{id:x}")]);
    assert!(
        !early.success() && early.stderr.contains("in sync with leader"),
        "{}",
        early.stderr
    );
    // A second learner while one is there: refused.
    let other = format!("http://127.0.0.1:{}", harness::free_port());
    let second = c.ctl(
        0,
        &[
            "member",
            "add",
            "n5",
            &format!("--peer-urls={other}"),
            "--learner",
        ],
    );
    assert!(
        second.stderr.contains("too many learner members"),
        "{}",
        second.stderr
    );

    // It was added at the wrong address: move it, then start it there.
    c.ctl(
        2,
        &[
            "member",
            "update",
            &format!("{id:x}"),
            &format!("--peer-urls={}", cfg.peer_url()),
        ],
    )
    .expect_ok();
    let n4 = c.start_joining(cfg, &["--snapshot-count", "100"]);
    c.wait_node_ready(n4, Duration::from_secs(60));
    let status = c.ctl_json(n4, &["endpoint", "status"]);
    assert_eq!(status[0]["Status"]["isLearner"], true, "{status}");
    wait_for(Duration::from_secs(60), "n4 to apply the last put", || {
        local_value(&c, n4, "bulk/01499")
    });
    let log = std::fs::read_to_string(&c.config(n4).log_path).expect("n4 log");
    assert!(
        log.contains("installed a snapshot from the leader"),
        "n4 log:\n{log}"
    );
    assert!(log.contains("joining a running cluster"), "n4 log:\n{log}");

    let promoted = poll_for(Duration::from_secs(20), || {
        let out = c.ctl(0, &["member", "promote", &format!("{id:x}")]);
        out.success().then_some(out.stdout)
    })
    .expect("the caught-up learner is promoted");
    assert!(promoted.contains("promoted in cluster"), "{promoted}");
    let again = c.ctl(0, &["member", "promote", &format!("{id:x}")]);
    assert!(
        again.stderr.contains("can only promote a learner member"),
        "{}",
        again.stderr
    );
    let listed = members(&c, n4);
    assert_eq!(listed.len(), 4, "{listed:?}");
    assert!(
        listed.contains(&(id, "n4".to_string(), false)),
        "{listed:?}"
    );
    // A restart keeps the id it was given.
    c.kill(n4);
    c.restart(n4);
    c.ctl(n4, &["put", "after", "restart"]).expect_ok();
    let status = c.ctl_json(n4, &["endpoint", "status"]);
    assert_eq!(
        json_u64(&status[0]["Status"]["header"], "member_id"),
        id,
        "{status}"
    );
    // A voter now (etcdctl's JSON leaves out a false field).
    assert_eq!(
        status[0]["Status"]["isLearner"],
        serde_json::Value::Null,
        "{status}"
    );
}

#[test]
fn removed_followers_and_a_removed_leader_stop_and_the_rest_keep_writing() {
    if is_etcd() {
        return;
    }
    let mut c = Cluster::start(4);
    c.ctl(0, &["put", "before", "1"]).expect_ok();

    // A learner is never told either: it asks the leader.
    let cfg = NodeConfig::new(c.dir(), "n5");
    let url = format!("--peer-urls={}", cfg.peer_url());
    let out = c
        .ctl(0, &["member", "add", "n5", &url, "--learner"])
        .expect_ok();
    let learner = c.start_joining(cfg, &[]);
    c.wait_node_ready(learner, Duration::from_secs(60));
    let id = format!("{:x}", member_in(&out.stdout));
    c.ctl(1, &["member", "remove", &id]).expect_ok();
    let status = c.wait_exit(learner, EXIT_BOUND);
    assert!(
        status.success(),
        "a removed learner exits cleanly: {status}"
    );

    let followers = c.followers();
    let (gone, via) = (followers[0], followers[1]);
    let out = c
        .ctl(
            via,
            &["member", "remove", &format!("{:x}", c.member_id(gone))],
        )
        .expect_ok();
    assert!(
        out.stdout.contains("removed from cluster"),
        "{}",
        out.stdout
    );
    let status = c.wait_exit(gone, EXIT_BOUND);
    assert!(status.success(), "a removed member exits cleanly: {status}");
    // Started again on its data dir, it finds out again and stops.
    c.restart_no_wait(gone);
    let status = c.wait_exit(gone, EXIT_BOUND);
    assert!(
        status.success(),
        "a removed member restarted exits: {status}"
    );

    let leader = c.leader();
    let via = c
        .followers()
        .into_iter()
        .find(|&f| f != gone)
        .expect("a follower");
    c.ctl(
        via,
        &["member", "remove", &format!("{:x}", c.member_id(leader))],
    )
    .expect_ok();
    let status = c.wait_exit(leader, EXIT_BOUND);
    assert!(
        status.success(),
        "the removed leader exits cleanly: {status}"
    );

    // The two left elect a leader and take writes.
    wait_for(
        Duration::from_secs(15),
        "a write after the leader left",
        || c.ctl(via, &["put", "after", "2"]).success().then_some(()),
    );
    let left = members(&c, via);
    assert_eq!(left.len(), 2, "{left:?}");
    assert_eq!(local_value(&c, via, "before").as_deref(), Some("1"));
}

#[test]
fn refused_changes_answer_as_etcd_and_a_member_not_added_cannot_join() {
    if is_etcd() {
        return;
    }
    let mut c = Cluster::start(3);
    let unknown = c.ctl(0, &["member", "remove", "1234abcd"]);
    assert!(
        unknown.stderr.contains("member not found"),
        "{}",
        unknown.stderr
    );
    let update = c.ctl(
        0,
        &[
            "member",
            "update",
            "1234abcd",
            "--peer-urls=http://127.0.0.1:1",
        ],
    );
    assert!(
        update.stderr.contains("member not found"),
        "{}",
        update.stderr
    );
    let voter = c.ctl(1, &["member", "promote", &format!("{:x}", c.member_id(2))]);
    assert!(
        voter.stderr.contains("can only promote a learner member"),
        "{}",
        voter.stderr
    );
    let taken = c.config(2).peer_url();
    let dup = c.ctl(
        0,
        &["member", "add", "dup", &format!("--peer-urls={taken}")],
    );
    assert!(
        dup.stderr.contains("Peer URLs already exists"),
        "{}",
        dup.stderr
    );
    let (ok, _, err) = c.roster(0, &["member", "add", "bad", "--peer-urls", "127.0.0.1:9"]);
    assert!(
        !ok && err.contains("given member URLs are invalid"),
        "{err}"
    );
    assert_eq!(members(&c, 0).len(), 3, "nothing changed");

    // A node that was never added is told so and exits.
    let stranger = NodeConfig::new(c.dir(), "n9");
    let i = c.start_joining(stranger, &[]);
    let status = c.wait_exit(i, EXIT_BOUND);
    assert!(!status.success());
    let log = std::fs::read_to_string(&c.config(i).log_path).expect("log");
    assert!(log.contains("has no member with peer URLs"), "{log}");
}

/// Adds a member as a learner through node `via`, starts it, waits until it
/// is promoted; its index and id.
fn grow(c: &mut Cluster, via: usize, name: &str) -> (usize, u64) {
    let cfg = NodeConfig::new(c.dir(), name);
    let url = format!("--peer-urls={}", cfg.peer_url());
    let out = c
        .ctl(via, &["member", "add", name, &url, "--learner"])
        .expect_ok();
    let id = member_in(&out.stdout);
    let i = c.start_joining(cfg, &[]);
    c.wait_node_ready(i, Duration::from_secs(60));
    poll_for(Duration::from_secs(30), || {
        let out = c.ctl(via, &["member", "promote", &format!("{id:x}")]);
        out.success().then_some(())
    })
    .unwrap_or_else(|| panic!("{name} was not promoted"));
    (i, id)
}

#[test]
fn growing_to_five_and_back_to_three_under_writes_loses_no_acknowledged_write() {
    if is_etcd() {
        return;
    }
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let mut c = Cluster::start(3);
    let endpoint = c.endpoint(0);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let (stop, acked, failed) = (stop.clone(), acked.clone(), failed.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async {
                let channel = grpc_channel(endpoint, Some(Duration::from_secs(10))).await;
                let mut kv = KvClient::new(channel);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("load/{n:06}");
                    let put = PutRequest {
                        key: key.clone().into_bytes(),
                        value: b"v".to_vec(),
                        ..Default::default()
                    };
                    match kv.put(put).await {
                        Ok(_) => acked.lock().expect("lock").push(key),
                        Err(e) => failed.lock().expect("lock").push(format!("{key}: {e}")),
                    }
                    n += 1;
                }
            });
        })
    };
    let (n4, id4) = grow(&mut c, 1, "n4");
    let (n5, id5) = grow(&mut c, 2, "n5");
    assert_eq!(members(&c, 0).iter().filter(|m| !m.2).count(), 5);
    for (i, id) in [(n4, id4), (n5, id5)] {
        c.ctl(0, &["member", "remove", &format!("{id:x}")])
            .expect_ok();
        assert!(c.wait_exit(i, EXIT_BOUND).success());
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");

    let failed = failed.lock().expect("lock").clone();
    assert!(failed.is_empty(), "failed writes: {failed:?}");
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() > 100, "only {} writes in the run", acked.len());
    let j = c.ctl_json(0, &["get", "load/", "--prefix", "--keys-only"]);
    let count = j["count"].as_u64().unwrap_or(0) as usize;
    assert_eq!(count, acked.len(), "every acknowledged write is there");
    assert_eq!(members(&c, 1).len(), 3);
}
