//! Black-box tests of the etcd Watch service on a three-node cluster: replay from
//! a revision, live events on followers, lease expiry, compaction, bad requests,
//! filters and progress, resuming on another node after a kill, slow consumers,
//! the stock `etcdctl watch`, and require-leader.
//!
//! Run with `ROSTER_TEST_BINARY=/usr/bin/etcd` to check the tests against etcd.

mod harness;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::thread;
use std::time::{Duration, Instant};

use harness::{etcdctl_path, json_i64, kvs, parse_lease_grant, Cluster, ClusterOptions};
use roster_proto::etcdserverpb::watch_create_request::FilterType;
use roster_proto::etcdserverpb::watch_request::RequestUnion;
use roster_proto::etcdserverpb::{
    kv_client::KvClient, watch_client::WatchClient, CompactionRequest, PutRequest, RangeRequest,
    WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use roster_proto::mvccpb::event::EventType;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

/// How long a test waits for a response that must come.
const ANSWER: Duration = Duration::from_secs(10);

/// A channel without a call timeout: watch streams last.
async fn channel(c: &Cluster, i: usize) -> Channel {
    harness::grpc_channel(c.endpoint(i), None).await
}

/// One watch stream: requests go in through `tx`, responses come out of `rx`.
struct WatchConn {
    tx: mpsc::Sender<WatchRequest>,
    rx: Streaming<WatchResponse>,
}

impl WatchConn {
    /// Opens a stream whose first request is `first`. (etcd answers the call only
    /// with its first message, so the request goes out before the call returns.)
    async fn open(c: &Cluster, i: usize, first: WatchCreateRequest) -> WatchConn {
        Self::open_with(c, i, first, false)
            .await
            .expect("watch stream")
    }

    /// `require_leader`: the metadata etcd's clients send for `WithRequireLeader`.
    async fn open_with(
        c: &Cluster,
        i: usize,
        first: WatchCreateRequest,
        require_leader: bool,
    ) -> Result<WatchConn, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(first)),
        };
        tx.send(create).await.expect("queue the first request");
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if require_leader {
            request
                .metadata_mut()
                .insert("hasleader", "true".parse().expect("ascii"));
        }
        let rx = WatchClient::new(channel(c, i).await)
            .watch(request)
            .await?
            .into_inner();
        Ok(WatchConn { tx, rx })
    }

    async fn send(&self, request: RequestUnion) {
        let request = WatchRequest {
            request_union: Some(request),
        };
        self.tx.send(request).await.expect("stream open");
    }

    async fn create(&self, create: WatchCreateRequest) {
        self.send(RequestUnion::CreateRequest(create)).await;
    }

    /// The next response; panics if none comes within [`ANSWER`].
    async fn next(&mut self) -> WatchResponse {
        match tokio::time::timeout(ANSWER, self.rx.message()).await {
            Ok(Ok(Some(response))) => response,
            other => panic!("expected a watch response, got {other:?}"),
        }
    }

    /// Whether a response comes within `wait` (for checking that none does).
    async fn quiet_for(&mut self, wait: Duration) -> Option<WatchResponse> {
        tokio::time::timeout(wait, self.rx.message())
            .await
            .ok()
            .and_then(|r| r.ok().flatten())
    }

    /// Events of responses until `n` have come (a response never splits a revision).
    async fn events(&mut self, n: usize) -> Vec<(EventType, String, String, i64, Option<String>)> {
        let mut out = Vec::new();
        while out.len() < n {
            let response = self.next().await;
            assert!(!response.canceled, "{response:?}");
            for event in response.events {
                let kv = event.kv.expect("kv");
                out.push((
                    EventType::try_from(event.r#type).expect("event type"),
                    String::from_utf8(kv.key).expect("utf-8"),
                    String::from_utf8(kv.value).expect("utf-8"),
                    kv.mod_revision,
                    event
                        .prev_kv
                        .map(|p| String::from_utf8(p.value).expect("utf-8")),
                ));
            }
        }
        out
    }
}

fn watch_prefix(prefix: &str, start_revision: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: prefix.into(),
        range_end: roster_state::prefix_range_end(prefix.as_bytes()),
        start_revision,
        ..Default::default()
    }
}

async fn put(kv: &mut KvClient<Channel>, key: &str, value: &str) -> i64 {
    let request = PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    };
    kv.put(request)
        .await
        .expect("put")
        .into_inner()
        .header
        .expect("header")
        .revision
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

use EventType::{Delete as DEL, Put as PUT};

#[test]
fn replay_from_a_revision_with_prev_kv_then_live_events_on_a_follower() {
    let c = Cluster::start(3);
    let (leader, follower) = (c.leader(), c.followers()[0]);
    runtime().block_on(async {
        let mut kv = KvClient::new(channel(&c, leader).await);
        let r1 = put(&mut kv, "w/a", "1").await;
        put(&mut kv, "w/a", "2").await;
        c.ctl(leader, &["del", "w/a"]).expect_ok();
        let r4 = put(&mut kv, "w/b", "1").await;

        let mut w = WatchConn::open(
            &c,
            follower,
            WatchCreateRequest {
                prev_kv: true,
                ..watch_prefix("w/", r1)
            },
        )
        .await;
        let created = w.next().await;
        assert!(created.created && !created.canceled, "{created:?}");
        let s = |v: &str| v.to_string();
        assert_eq!(
            w.events(4).await,
            vec![
                (PUT, s("w/a"), s("1"), r1, None),
                (PUT, s("w/a"), s("2"), r1 + 1, Some(s("1"))),
                (DEL, s("w/a"), s(""), r1 + 2, Some(s("2"))),
                (PUT, s("w/b"), s("1"), r4, None),
            ]
        );
        // Live: a write through another node reaches the follower's watcher.
        let other = (0..3).find(|&i| i != follower).expect("another node");
        let mut kv2 = KvClient::new(channel(&c, other).await);
        let r5 = put(&mut kv2, "w/c", "live").await;
        put(&mut kv2, "elsewhere", "x").await;
        assert_eq!(
            w.events(1).await,
            vec![(PUT, s("w/c"), s("live"), r5, None)]
        );
        assert!(
            w.quiet_for(Duration::from_millis(300)).await.is_none(),
            "only w/ keys"
        );
    });
}

#[test]
fn an_expiring_lease_deletes_each_key_in_one_revision() {
    let c = Cluster::start(3);
    let lease = parse_lease_grant(&c.ctl(0, &["lease", "grant", "2"]).expect_ok());
    let hex = format!("{lease:x}");
    for key in ["x/1", "x/2", "x/3"] {
        c.ctl(1, &["put", key, "v", &format!("--lease={hex}")])
            .expect_ok();
    }
    // A linearizable read on node 2 first: its watch "from now" then starts
    // after the puts (a node serves watches from what it has applied).
    let listed = c.ctl_json(2, &["get", "x/", "--prefix"]);
    assert_eq!(kvs(&listed).len(), 3);
    runtime().block_on(async {
        let mut w = WatchConn::open(&c, 2, watch_prefix("x/", 0)).await;
        assert!(w.next().await.created);
        let response = w.next().await;
        let kinds: Vec<_> = response
            .events
            .iter()
            .map(|e| (e.r#type, e.kv.as_ref().map(|kv| kv.mod_revision)))
            .collect();
        assert_eq!(
            response.events.len(),
            3,
            "all three deletes in one response: {response:?}"
        );
        let revision = kinds[0].1;
        assert!(
            kinds.iter().all(|&(t, r)| t == DEL as i32 && r == revision),
            "{kinds:?}"
        );
    });
}

#[test]
fn a_compacted_start_revision_cancels_the_watch_with_the_compact_revision() {
    let c = Cluster::start(3);
    runtime().block_on(async {
        let mut kv = KvClient::new(channel(&c, 0).await);
        let r1 = put(&mut kv, "c/k", "1").await;
        let r2 = put(&mut kv, "c/k", "2").await;
        kv.compact(CompactionRequest {
            revision: r2,
            physical: true,
        })
        .await
        .expect("compact");
        // Node 1 serves the watch from its own state: a linearizable read there
        // first makes sure it has applied the compaction.
        let mut follower = KvClient::new(channel(&c, 1).await);
        let below = RangeRequest {
            key: b"c/k".to_vec(),
            revision: r1,
            ..Default::default()
        };
        let err = follower
            .range(below)
            .await
            .expect_err("compacted on node 1");
        assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
        let mut w = WatchConn::open(&c, 1, watch_prefix("c/", r1)).await;
        let created = w.next().await;
        assert!(created.created, "{created:?}");
        let canceled = if created.canceled {
            created
        } else {
            w.next().await
        };
        assert!(canceled.canceled, "{canceled:?}");
        assert_eq!(canceled.compact_revision, r2);
        // From the compaction revision on, the same watch works.
        w.create(watch_prefix("c/", r2)).await;
        assert!(w.next().await.created);
        assert_eq!(w.events(1).await[0].3, r2);
    });
}

#[test]
fn bad_requests_are_answered_as_etcd_does_and_the_stream_stays_up() {
    let c = Cluster::start(1);
    runtime().block_on(async {
        // range_end before the key: created and canceled at once.
        let before = WatchCreateRequest {
            key: b"b".to_vec(),
            range_end: b"a".to_vec(),
            ..Default::default()
        };
        let mut w = WatchConn::open(&c, 0, before).await;
        let bad = w.next().await;
        assert!(bad.created && bad.canceled, "{bad:?}");
        assert_eq!(bad.cancel_reason, "mvcc: watcher range is empty");
        // A client-chosen id, then the same id again.
        w.create(WatchCreateRequest {
            watch_id: 7,
            ..watch_prefix("g/", 0)
        })
        .await;
        let first = w.next().await;
        assert!(
            first.created && !first.canceled && first.watch_id == 7,
            "{first:?}"
        );
        w.create(WatchCreateRequest {
            watch_id: 7,
            ..watch_prefix("h/", 0)
        })
        .await;
        let duplicate = w.next().await;
        assert!(duplicate.created && duplicate.canceled, "{duplicate:?}");
        assert_eq!(
            duplicate.cancel_reason,
            "mvcc: duplicate watch ID provided on the WatchStream"
        );
        // Canceling an unknown id says nothing.
        w.send(RequestUnion::CancelRequest(WatchCancelRequest {
            watch_id: 99,
        }))
        .await;
        assert!(w.quiet_for(Duration::from_millis(300)).await.is_none());
        // Watch 7 still works.
        c.ctl(0, &["put", "g/1", "v"]).expect_ok();
        let live = w.next().await;
        assert_eq!((live.watch_id, live.events.len()), (7, 1), "{live:?}");
    });
}

#[test]
fn an_empty_key_watches_the_zero_byte_key_as_in_etcd() {
    let c = Cluster::start(1);
    runtime().block_on(async {
        let all_keys = WatchCreateRequest {
            key: Vec::new(),
            range_end: vec![0],
            ..Default::default()
        };
        let mut w = WatchConn::open(&c, 0, all_keys).await;
        let created = w.next().await;
        assert!(created.created && !created.canceled, "{created:?}");
        c.ctl(0, &["put", "any", "v"]).expect_ok();
        assert_eq!(
            w.events(1).await[0].1,
            "any",
            "empty key with range_end [0]: every key"
        );
    });
}

#[test]
fn large_revisions_come_in_fragments_when_asked() {
    let c = Cluster::start(1);
    let lease = parse_lease_grant(&c.ctl(0, &["lease", "grant", "600"]).expect_ok());
    runtime().block_on(async {
        let mut kv = KvClient::new(channel(&c, 0).await);
        let big = "v".repeat(1024 * 1024);
        for key in ["big/1", "big/2", "big/3"] {
            let request = PutRequest {
                key: key.into(),
                value: big.clone().into(),
                lease,
                ..Default::default()
            };
            kv.put(request).await.expect("put");
        }
        let mut w = WatchConn::open(
            &c,
            0,
            WatchCreateRequest {
                prev_kv: true,
                fragment: true,
                ..watch_prefix("big/", 0)
            },
        )
        .await;
        assert!(w.next().await.created);
        // Revoking deletes all three in one revision: with their previous values
        // about 3 MiB, more than etcd's 1.5 MiB request limit, so fragments.
        c.ctl(0, &["lease", "revoke", &format!("{lease:x}")])
            .expect_ok();
        let mut flags = Vec::new();
        let mut events = 0;
        while events < 3 {
            let part = w.next().await;
            events += part.events.len();
            flags.push(part.fragment);
        }
        assert!(flags.len() > 1, "split: {flags:?}");
        assert_eq!(
            flags.last(),
            Some(&false),
            "the last part ends the revision: {flags:?}"
        );
        assert!(flags[..flags.len() - 1].iter().all(|f| *f), "{flags:?}");
    });
}

#[test]
fn filters_progress_requests_and_cancel() {
    let c = Cluster::start(1);
    runtime().block_on(async {
        let mut kv = KvClient::new(channel(&c, 0).await);
        let mut w = WatchConn::open(
            &c,
            0,
            WatchCreateRequest {
                filters: vec![FilterType::Noput as i32],
                ..watch_prefix("f/", 0)
            },
        )
        .await;
        let created = w.next().await;
        let id = created.watch_id;
        put(&mut kv, "f/1", "v").await;
        c.ctl(0, &["del", "f/1"]).expect_ok();
        let deletes = w.events(1).await;
        assert_eq!(deletes[0].0, DEL, "the put was filtered out: {deletes:?}");

        let revision = put(&mut kv, "other", "v").await;
        w.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
            .await;
        let progress = w.next().await;
        assert!(progress.events.is_empty(), "{progress:?}");
        assert_eq!(progress.watch_id, -1, "{progress:?}");
        assert!(progress.header.expect("header").revision >= revision);

        w.send(RequestUnion::CancelRequest(WatchCancelRequest {
            watch_id: id,
        }))
        .await;
        let canceled = w.next().await;
        assert!(canceled.canceled && canceled.watch_id == id, "{canceled:?}");
        put(&mut kv, "f/2", "v").await;
        c.ctl(0, &["del", "f/2"]).expect_ok();
        assert!(w.quiet_for(Duration::from_millis(300)).await.is_none());
    });
}

#[test]
fn progress_notifications_come_to_watches_that_asked_for_them() {
    // The flag has the same name in etcd 3.4.
    let mut opts = ClusterOptions::new(1);
    opts.extra_args = vec!["--experimental-watch-progress-notify-interval=1s".to_string()];
    let c = Cluster::start_with(opts);
    let revision = json_i64(&c.ctl_json(0, &["put", "n/0", "v"])["header"], "revision");
    runtime().block_on(async {
        let notified = WatchCreateRequest {
            progress_notify: true,
            ..watch_prefix("n/", 0)
        };
        let mut w = WatchConn::open(&c, 0, notified).await;
        let id = w.next().await.watch_id;
        w.create(watch_prefix("other/", 0)).await;
        let quiet_id = w.next().await.watch_id;
        let started = Instant::now();
        let note = w.next().await;
        assert!(note.events.is_empty() && !note.canceled, "{note:?}");
        assert_eq!(note.watch_id, id, "only the watch that asked: {note:?}");
        assert_ne!(note.watch_id, quiet_id);
        assert!(note.header.expect("header").revision >= revision);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    });
}

#[test]
fn a_watch_resumed_on_another_node_after_a_kill_has_no_gap_and_no_duplicate() {
    let mut c = Cluster::start(3);
    let victim = c.followers()[0];
    let survivor = (0..3)
        .find(|&i| i != victim && i != c.leader())
        .expect("third node");
    let rt = runtime();
    let mut w = rt.block_on(async {
        let mut w = WatchConn::open(&c, victim, watch_prefix("r/", 0)).await;
        assert!(w.next().await.created);
        w
    });
    // A writer keeps writing r/0, r/1, ... through the leader.
    let endpoint = c.endpoint(c.leader());
    let (stop_tx, stop_rx) = std_mpsc::channel::<()>();
    let writer = thread::spawn(move || {
        let rt = runtime();
        rt.block_on(async {
            let mut kv = KvClient::new(harness::grpc_channel(endpoint, None).await);
            let mut written = Vec::new();
            for n in 0.. {
                if stop_rx.try_recv().is_ok() {
                    break;
                }
                if let Ok(r) = tokio::time::timeout(
                    Duration::from_secs(2),
                    put(&mut kv, &format!("r/{n}"), "v"),
                )
                .await
                {
                    written.push(r);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            written
        })
    });
    let seen_before = rt.block_on(w.events(20));
    c.kill(victim);
    let last = seen_before.last().expect("events").3;
    let resumed = rt.block_on(async {
        let mut w2 = WatchConn::open(&c, survivor, watch_prefix("r/", last + 1)).await;
        assert!(w2.next().await.created);
        w2.events(20).await
    });
    stop_tx.send(()).expect("writer running");
    let written = writer.join().expect("writer");
    let revisions: Vec<i64> = seen_before.iter().chain(&resumed).map(|e| e.3).collect();
    assert!(
        revisions.windows(2).all(|p| p[1] == p[0] + 1),
        "no gap, no duplicate: {revisions:?}"
    );
    let first = revisions[0];
    let expected: Vec<i64> = written
        .iter()
        .copied()
        .filter(|r| *r >= first)
        .take(revisions.len())
        .collect();
    assert_eq!(revisions, expected);
}

#[test]
fn a_slow_watcher_neither_stalls_writers_nor_loses_events() {
    let c = Cluster::start(3);
    let rt = runtime();
    rt.block_on(async {
        let mut slow = WatchConn::open(&c, c.followers()[0], watch_prefix("s/", 0)).await;
        assert!(slow.next().await.created);
        let mut kv = KvClient::new(channel(&c, c.leader()).await);
        // Never read while 2,000 puts of 4 KiB go through: far more than any buffer.
        let value = "x".repeat(4096);
        let started = Instant::now();
        let mut last = 0;
        for n in 0..2000 {
            last = put(&mut kv, &format!("s/{}", n % 50), &value).await;
        }
        let writing = started.elapsed();
        let events = slow.events(2000).await;
        let revisions: Vec<i64> = events.iter().map(|e| e.3).collect();
        assert_eq!(revisions.len(), 2000);
        assert!(
            revisions.windows(2).all(|p| p[1] == p[0] + 1),
            "in order, none lost"
        );
        assert_eq!(*revisions.last().expect("events"), last);
        eprintln!("2000 puts with an unread watcher took {writing:?}");
    });
}

#[test]
fn etcdctl_watch_prints_history_and_live_events() {
    let c = Cluster::start(3);
    let first = json_i64(&c.ctl_json(0, &["put", "e/k", "one"])["header"], "revision");
    c.ctl(1, &["put", "e/k", "two"]).expect_ok();
    let mut child = Command::new(etcdctl_path())
        .env("ETCDCTL_API", "3")
        .args([
            &format!("--endpoints={}", c.endpoint(2)),
            "watch",
            "--prefix",
            "e/",
            &format!("--rev={first}"),
            "--prev-kv",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcdctl watch");
    let stdout = child.stdout.take().expect("stdout");
    let (lines_tx, lines_rx) = std_mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + ANSWER;
    let want_lines = 3 + 5 + 5;
    let mut wrote_live = false;
    while lines.len() < want_lines && Instant::now() < deadline {
        if let Ok(line) = lines_rx.recv_timeout(Duration::from_millis(100)) {
            lines.push(line);
        }
        if lines.len() >= 8 && !wrote_live {
            c.ctl(0, &["put", "e/k", "three"]).expect_ok();
            wrote_live = true;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        lines,
        vec![
            "PUT", "e/k", "one", "PUT", "e/k", "one", "e/k", "two", "PUT", "e/k", "two", "e/k",
            "three"
        ],
        "history with prev values, then the live write"
    );
}

#[test]
fn a_require_leader_watch_is_canceled_when_its_node_loses_the_leader() {
    let mut c = Cluster::start(3);
    let node = c.followers()[0];
    let rt = runtime();
    let mut w = rt.block_on(async {
        let mut w = WatchConn::open_with(&c, node, watch_prefix("q/", 0), true)
            .await
            .expect("stream");
        assert!(w.next().await.created);
        w
    });
    for other in (0..3).filter(|&i| i != node) {
        c.kill(other);
    }
    let started = Instant::now();
    let end =
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(20), w.rx.message()).await });
    let status = match end {
        Ok(Err(status)) => status,
        other => panic!("expected the stream to end with an error, got {other:?}"),
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "etcdserver: no leader");
    eprintln!(
        "require-leader watch ended {:?} after the kills",
        started.elapsed()
    );
    // A new require-leader stream on the leaderless node is refused at once.
    let refused = rt.block_on(async {
        let w = WatchConn::open_with(&c, node, watch_prefix("q/", 0), true).await;
        match w {
            Err(status) => status,
            Ok(mut w) => match tokio::time::timeout(ANSWER, w.rx.message()).await {
                Ok(Err(status)) => status,
                other => panic!("expected no leader, got {other:?}"),
            },
        }
    });
    assert_eq!(refused.message(), "etcdserver: no leader");
}
