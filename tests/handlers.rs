//! Black-box tests of registration / deregistration handlers on a three-node
//! cluster: a pipe handler appends every event to a file and none is missing
//! after the leader is killed mid-stream (duplicates allowed, each with its
//! id); reasons are right for each way out; an HTTP handler answering 500 is
//! retried and then recorded as failed; a hung one times out; an instance's
//! own deregistration handler wins; events survive compaction and a restart
//! of every node until delivered; bad definitions are refused. (Roster's own API: not for etcd.)

mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::{wait_for, wait_until, Cluster, ClusterOptions};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// [`Cluster::roster_line`] that must succeed; its stdout.
fn ok(c: &Cluster, i: usize, line: &str) -> String {
    let (ok, out, err) = c.roster_line(i, line);
    assert!(ok, "roster {line}: {out}{err}");
    out
}

/// The events a pipe handler wrote, one JSON object per line.
fn read_events(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("event json"))
        .collect()
}

fn key(e: &Value) -> (String, String, String) {
    let text = |k: &str| e[k].as_str().unwrap_or_default().to_string();
    (text("type"), text("instance"), text("reason"))
}

#[test]
fn a_pipe_handler_gets_every_event_with_its_reason_across_a_leader_kill() {
    let mut c = Cluster::start_with(ClusterOptions {
        extra_args: vec!["--allow-pipe-handlers".into()],
        ..ClusterOptions::new(3)
    });
    let file = c.dir().join("events.jsonl");
    let (refused, _, err) = c.roster(
        0,
        &[
            "handler",
            "set",
            "missing",
            "--pipe",
            "no-such-program-xyz --now",
        ],
    );
    assert!(
        !refused && err.contains("\"no-such-program-xyz\" not found"),
        "{err}"
    );
    let pipe = format!("cat >> {}", file.display());
    let (set, out, err) = c.roster(
        0,
        &["handler", "set", "file", "--pipe", &pipe, "--timeout", "5s"],
    );
    assert!(set, "{out}{err}");
    for event in ["registration", "deregistration", "keepalive-failure"] {
        ok(&c, 1, &format!("handler use {event} file"));
    }
    // Register 12 instances through a follower, killing the leader halfway.
    let old_leader = c.leader();
    let writer = (0..3).find(|&i| i != old_leader).expect("a follower");
    for n in 0..12 {
        if n == 6 {
            c.kill(old_leader);
        }
        let ttl = if n >= 8 { "2s" } else { "60s" };
        let keep = if n == 11 { "false" } else { "true" };
        let line = format!(
            "service register --service pay --id p{n} --endpoint 10.0.0.{n}:80 \
             --meta zone=z{n} --ttl {ttl} --deregister={keep}"
        );
        // A registration cut off by the kill is simply tried again (it is an
        // idempotent upsert: a second apply writes no second event).
        wait_until(Duration::from_secs(20), "registration", || {
            let args: Vec<&str> = line.split_whitespace().collect();
            c.roster(writer, &args).0
        });
    }
    for n in 0..4 {
        ok(
            &c,
            writer,
            &format!("service deregister --service pay --id p{n}"),
        );
    }
    for n in 4..8 {
        ok(
            &c,
            writer,
            &format!("service force-deregister --service pay --id p{n} --reason gone --actor ops"),
        );
    }
    // p8..p10 expire (removed); p11 expires but stays (keepalive failure).
    let mut expected: BTreeSet<(String, String, String)> = BTreeSet::new();
    for n in 0..12 {
        let id = format!("p{n}");
        expected.insert(("registration".into(), id.clone(), String::new()));
        let way_out = match n {
            0..=3 => ("deregistration", "graceful"),
            4..=7 => ("deregistration", "forced"),
            8..=10 => ("deregistration", "expired"),
            _ => ("keepalive-failure", ""),
        };
        expected.insert((way_out.0.into(), id, way_out.1.into()));
    }
    let events = wait_for(Duration::from_secs(30), "every event in the file", || {
        let events = read_events(&file);
        let seen: BTreeSet<_> = events.iter().map(key).collect();
        expected.is_subset(&seen).then_some(events)
    });
    let seen: BTreeSet<_> = events.iter().map(key).collect();
    assert_eq!(seen, expected, "no event missing, none invented");
    // Duplicates (a delivery the dead leader made but did not record) carry
    // the same id and are the same event.
    let mut by_id: BTreeMap<u64, &Value> = BTreeMap::new();
    for e in &events {
        let id = e["id"].as_u64().expect("id");
        if let Some(first) = by_id.insert(id, e) {
            assert_eq!(first, e, "one id, one event");
        }
    }
    assert_eq!(by_id.len(), expected.len(), "one id per event");
    let forced = events
        .iter()
        .find(|e| e["instance"] == "p4" && e["type"] == "deregistration")
        .expect("forced event");
    assert_eq!(
        (forced["actor"].as_str(), forced["note"].as_str()),
        (Some("ops"), Some("gone"))
    );
    assert_eq!(forced["service"], "pay");
    assert_eq!(forced["endpoints"][0]["address"], "10.0.0.4");
    assert_eq!(forced["metadata"]["zone"], "z4");
    assert!(forced["revision"].as_i64() > Some(0) && forced["time_ms"].as_u64() > Some(0));
    let kept = events
        .iter()
        .find(|e| e["type"] == "keepalive-failure")
        .expect("keepalive failure");
    assert_eq!(kept["output"], "keepalive expired");
    wait_until(Duration::from_secs(10), "every delivery recorded", || {
        let list = ok(&c, writer, "handler list -o json");
        serde_json::from_str::<Value>(list.trim()).expect("json")["undelivered"] == 0
    });
}

/// An HTTP server that answers with the status it is set to (0: never
/// answers), counting requests and keeping the bodies it accepted.
struct Receiver {
    url: String,
    status: Arc<AtomicU16>,
    requests: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<Value>>>,
}

async fn receiver(status: u16) -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let status = Arc::new(AtomicU16::new(status));
    let requests = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let (answer, count, kept) = (status.clone(), requests.clone(), bodies.clone());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let (answer, count, kept) = (answer.clone(), count.clone(), kept.clone());
            tokio::spawn(async move {
                let mut data = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&data[..at]).to_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if data.len() >= at + 4 + length {
                            break;
                        }
                    }
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => data.extend_from_slice(&buf[..n]),
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                let status = answer.load(Ordering::SeqCst);
                let at = data.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0);
                let body = data.get(at + 4..).unwrap_or_default();
                match serde_json::from_slice::<Value>(body) {
                    Ok(value) if (200..300).contains(&status) => {
                        kept.lock().expect("lock").push(value)
                    }
                    _ => {}
                }
                if status == 0 {
                    // Hang: hold the connection until the client gives up.
                    let _ = conn.read(&mut buf).await;
                    return;
                }
                let reply = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    });
    Receiver {
        url,
        status,
        requests,
        bodies,
    }
}

/// The handler failures, as `roster handler failures -o json` prints them.
fn failures(c: &Cluster) -> Vec<Value> {
    ok(c, 0, "handler failures -o json")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

#[test]
fn http_handlers_retry_record_failures_and_survive_compaction_and_restarts() {
    let mut c = Cluster::start(3);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let failing = rt.block_on(receiver(500));
    let hung = rt.block_on(receiver(0));
    let own = rt.block_on(receiver(200));
    let later = rt.block_on(receiver(503));
    let (refused, _, err) = c.roster(0, &["handler", "set", "p", "--pipe", "cat"]);
    assert!(
        !refused && err.contains("every member started with --allow-pipe-handlers"),
        "{err}"
    );
    let (unknown, _, err) = c.roster(0, &["handler", "use", "registration", "nobody"]);
    assert!(
        !unknown && err.contains("handler \"nobody\" not found"),
        "{err}"
    );
    ok(
        &c,
        0,
        &format!(
            "handler set failing --http {} --max-attempts 3 --timeout 1s",
            failing.url
        ),
    );
    ok(
        &c,
        0,
        &format!(
            "handler set hung --http {} --max-attempts 1 --timeout 300ms",
            hung.url
        ),
    );
    ok(
        &c,
        0,
        &format!("handler set own --http {} --max-attempts 2", own.url),
    );
    ok(
        &c,
        0,
        &format!("handler set later --http {} --max-attempts 100", later.url),
    );
    ok(&c, 1, "handler use registration failing");
    ok(&c, 1, "handler use keepalive-failure hung");
    ok(&c, 1, "handler use deregistration later");
    let (in_use, _, err) = c.roster(2, &["handler", "delete", "failing"]);
    assert!(
        !in_use && err.contains("cluster-wide registration handler"),
        "{err}"
    );

    // Retried three times, then recorded with the last error.
    ok(
        &c,
        2,
        "service register --service api --id a1 --no-lease --deregistration-handler own",
    );
    let failure = wait_for(Duration::from_secs(20), "a recorded failure", || {
        failures(&c).into_iter().find(|f| f["handler"] == "failing")
    });
    assert_eq!(failure["attempts"], 3);
    assert!(
        failure["error"].as_str().is_some_and(|e| e.contains("500")),
        "{failure}"
    );
    assert_eq!(failure["event"]["type"], "registration");
    assert_eq!(failure["event"]["instance"], "a1");
    assert_eq!(
        failing.requests.load(Ordering::SeqCst),
        3,
        "three attempts, no more"
    );

    // The instance's own deregistration handler wins over the cluster's.
    ok(&c, 2, "service deregister --service api --id a1");
    wait_until(Duration::from_secs(20), "own handler called", || {
        !own.bodies.lock().expect("lock").is_empty()
    });
    let body = own.bodies.lock().expect("lock")[0].clone();
    assert_eq!(
        (
            body["type"].as_str(),
            body["instance"].as_str(),
            body["reason"].as_str()
        ),
        (Some("deregistration"), Some("a1"), Some("graceful"))
    );
    assert!(body["id"].as_u64().is_some(), "{body}");

    // A hung receiver: the attempt times out and is recorded.
    ok(
        &c,
        0,
        "service register --service api --id k1 --ttl 2s --deregister=false",
    );
    let hang = wait_for(
        Duration::from_secs(20),
        "the hung delivery recorded",
        || failures(&c).into_iter().find(|f| f["handler"] == "hung"),
    );
    assert!(
        hang["error"]
            .as_str()
            .is_some_and(|e| e.contains("timed out")),
        "{hang}"
    );

    // Waiting events outlive a compaction and arrive once the receiver is back.
    ok(&c, 0, "service register --service api --id z1 --no-lease");
    ok(&c, 0, "service deregister --service api --id z1");
    wait_until(Duration::from_secs(20), "a failed attempt", || {
        later.requests.load(Ordering::SeqCst) > 0
    });
    let revision = c.status(0).expect("status").revision;
    c.ctl(0, &["compact", &revision.to_string()]).expect_ok();
    // ... and a restart of every node: the outbox is on disk.
    c.kill_all();
    for i in 0..3 {
        c.restart_no_wait(i);
    }
    for i in 0..3 {
        c.wait_node_ready(i, Duration::from_secs(30));
    }
    later.status.store(200, Ordering::SeqCst);
    wait_until(
        Duration::from_secs(20),
        "delivered after the compaction",
        || {
            later
                .bodies
                .lock()
                .expect("lock")
                .iter()
                .any(|b| b["instance"] == "z1" && b["reason"] == "graceful")
        },
    );
    let list = ok(&c, 1, "handler list -o json");
    let list: Value = serde_json::from_str(list.trim()).expect("json");
    assert_eq!(list["uses"]["deregistration"], "later", "{list}");
    wait_until(Duration::from_secs(10), "outbox empty", || {
        let list = ok(&c, 1, "handler list -o json");
        serde_json::from_str::<Value>(list.trim()).expect("json")["undelivered"] == 0
    });
}
