//! Black-box tests of a one-node cluster: the etcd v3 KV, Lease, Cluster and
//! Maintenance APIs through `etcdctl` and through a gRPC client, restarts, and
//! startup errors.
//!
//! Expected outputs and error messages are those of etcd 3.4 / etcdctl 3.4;
//! run with `ROSTER_TEST_BINARY=/usr/bin/etcd` to check the tests against etcd.

mod harness;

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use harness::{
    b64, endpoint_healthy, etcdctl, is_etcd, json_i64, json_u64, kvs, lease_hex, parse_lease_grant,
    run_server_to_exit, wait_for, wait_until, with_flag, Cluster, NodeConfig,
};
use roster_proto::etcdserverpb::{
    cluster_client::ClusterClient, kv_client::KvClient, lease_client::LeaseClient,
    maintenance_client::MaintenanceClient, DeleteRangeRequest, LeaseGrantRequest,
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseRevokeRequest,
    LeaseTimeToLiveRequest, MemberListRequest, PutRequest, RangeRequest, ResponseHeader,
    StatusRequest,
};
use tonic::transport::Channel;
use tonic::Code;

/// etcd's message for a lease id it does not know (gRPC NotFound).
const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
/// etcd's message for an empty key (gRPC InvalidArgument).
const KEY_NOT_PROVIDED: &str = "etcdserver: key is not provided";

// ---------------------------------------------------------------------------
// KV through etcdctl
// ---------------------------------------------------------------------------

#[test]
fn put_get_prefix_delete() {
    let c = Cluster::start(1);
    let ctl = |args: &[&str]| c.ctl(0, args).expect_ok().stdout;

    assert_eq!(ctl(&["put", "foo", "bar"]), "OK\n");
    assert_eq!(ctl(&["put", "foo2", "bar2"]), "OK\n");
    assert_eq!(ctl(&["put", "fop", "x"]), "OK\n");
    assert_eq!(ctl(&["put", "fo", "short"]), "OK\n");

    // Single key, missing key (no output, exit 0), value only.
    assert_eq!(ctl(&["get", "foo"]), "foo\nbar\n");
    assert_eq!(ctl(&["get", "missing"]), "");
    assert_eq!(ctl(&["get", "foo", "--print-value-only"]), "bar\n");

    // Prefix, keys only (etcdctl prints an empty value line), limit.
    assert_eq!(ctl(&["get", "foo", "--prefix"]), "foo\nbar\nfoo2\nbar2\n");
    assert_eq!(
        ctl(&["get", "foo", "--prefix", "--keys-only"]),
        "foo\n\nfoo2\n\n"
    );
    assert_eq!(
        ctl(&["get", "foo", "--prefix", "--limit", "1"]),
        "foo\nbar\n"
    );

    // Explicit range [key, range_end); a range_end before the key is an
    // empty result, not an error; --from-key; every key ("" --prefix).
    assert_eq!(ctl(&["get", "foo", "fop"]), "foo\nbar\nfoo2\nbar2\n");
    assert_eq!(ctl(&["get", "fop", "foo"]), "");
    assert_eq!(ctl(&["get", "foo2", "--from-key"]), "foo2\nbar2\nfop\nx\n");
    assert_eq!(
        ctl(&["get", "", "--prefix", "--keys-only"]),
        "fo\n\nfoo\n\nfoo2\n\nfop\n\n"
    );

    // prev_kv on put and delete.
    assert_eq!(ctl(&["put", "foo", "bar-2", "--prev-kv"]), "OK\nfoo\nbar\n");
    assert_eq!(ctl(&["del", "foo", "--prev-kv"]), "1\nfoo\nbar-2\n");

    // Delete: single, missing, prefix.
    assert_eq!(ctl(&["del", "missing"]), "0\n");
    assert_eq!(ctl(&["get", "foo"]), "");
    assert_eq!(ctl(&["del", "foo", "--prefix"]), "1\n"); // foo2 only
    assert_eq!(ctl(&["del", "fo", "--prefix"]), "2\n"); // fo, fop
    assert_eq!(ctl(&["get", "", "--prefix"]), "");
}

#[test]
fn get_json_revisions_and_counts() {
    let c = Cluster::start(1);
    let put = |k: &str, v: &str| {
        let j = c.ctl_json(0, &["put", k, v]);
        json_i64(&j["header"], "revision")
    };

    let r1 = put("/app/a", "1");
    let r2 = put("/app/b", "2");
    let r3 = put("/app/a", "1b");
    assert_eq!(r2, r1 + 1, "one revision per put");
    assert_eq!(r3, r2 + 1, "one revision per put");

    let j = c.ctl_json(0, &["get", "/app/a"]);
    assert_eq!(json_i64(&j["header"], "revision"), r3);
    assert_ne!(json_u64(&j["header"], "cluster_id"), 0);
    assert_ne!(json_u64(&j["header"], "member_id"), 0);
    assert!(json_u64(&j["header"], "raft_term") >= 1);
    assert_eq!(json_i64(&j, "count"), 1);
    let kv = &j["kvs"][0];
    assert_eq!(b64(kv["key"].as_str().expect("key")), "/app/a");
    assert_eq!(b64(kv["value"].as_str().expect("value")), "1b");
    assert_eq!(json_i64(kv, "create_revision"), r1);
    assert_eq!(json_i64(kv, "mod_revision"), r3);
    assert_eq!(json_i64(kv, "version"), 2);
    assert_eq!(json_i64(kv, "lease"), 0);

    // count is the number of keys in the range, not the number returned.
    let j = c.ctl_json(0, &["get", "/app/", "--prefix", "--limit", "1"]);
    assert_eq!(json_i64(&j, "count"), 2);
    assert_eq!(j["more"], true);
    assert_eq!(kvs(&j), vec![("/app/a".to_string(), "1b".to_string())]);

    // Serializable read of the same state.
    let j = c.ctl_json(0, &["get", "/app/", "--prefix", "--consistency=s"]);
    assert_eq!(json_i64(&j["header"], "revision"), r3);
    assert_eq!(
        kvs(&j),
        vec![
            ("/app/a".to_string(), "1b".to_string()),
            ("/app/b".to_string(), "2".to_string())
        ]
    );

    // A missing key: header only, count omitted (0), no kvs.
    let j = c.ctl_json(0, &["get", "/nothing"]);
    assert_eq!(json_i64(&j, "count"), 0);
    assert!(kvs(&j).is_empty());

    // Deleting bumps the revision once for the whole range.
    let j = c.ctl_json(0, &["del", "/app/", "--prefix"]);
    assert_eq!(json_i64(&j, "deleted"), 2);
    assert_eq!(json_i64(&j["header"], "revision"), r3 + 1);
    // Deleting nothing does not.
    let j = c.ctl_json(0, &["del", "/app/", "--prefix"]);
    assert_eq!(json_i64(&j, "deleted"), 0);
    assert_eq!(json_i64(&j["header"], "revision"), r3 + 1);
}

#[test]
fn kv_errors() {
    let c = Cluster::start(1);

    // Empty key.
    let out = c.ctl(0, &["put", "", "v"]).expect_err();
    assert!(
        out.stderr.contains(&format!("Error: {KEY_NOT_PROVIDED}")),
        "{out}"
    );
    let out = c.ctl(0, &["get", ""]).expect_err();
    assert!(
        out.stderr.contains(&format!("Error: {KEY_NOT_PROVIDED}")),
        "{out}"
    );

    // --ignore-value on a key that does not exist.
    let out = c.ctl(0, &["put", "nokey", "--ignore-value"]).expect_err();
    assert!(
        out.stderr.contains("Error: etcdserver: key not found"),
        "{out}"
    );

    // Nothing was written by the failed requests.
    assert_eq!(c.ctl(0, &["get", "", "--prefix"]).expect_ok().stdout, "");
}

// ---------------------------------------------------------------------------
// Leases through etcdctl
// ---------------------------------------------------------------------------

#[test]
fn lease_lifecycle() {
    let c = Cluster::start(1);

    let out = c.ctl(0, &["lease", "grant", "60"]).expect_ok();
    let id = parse_lease_grant(&out);
    let hex = lease_hex(id);
    assert_eq!(out.stdout, format!("lease {hex} granted with TTL(60s)\n"));
    let lease_flag = format!("--lease={hex}");

    assert_eq!(
        c.ctl(0, &["put", "/svc/a", "1", &lease_flag])
            .expect_ok()
            .stdout,
        "OK\n"
    );
    assert_eq!(
        c.ctl(0, &["put", "/svc/b", "2", &lease_flag])
            .expect_ok()
            .stdout,
        "OK\n"
    );
    assert_eq!(c.ctl(0, &["put", "/other", "3"]).expect_ok().stdout, "OK\n");

    // The key records its lease.
    let j = c.ctl_json(0, &["get", "/svc/a"]);
    assert_eq!(json_i64(&j["kvs"][0], "lease"), id);

    // keep-alive --once.
    let out = c
        .ctl(0, &["lease", "keep-alive", "--once", &hex])
        .expect_ok();
    assert_eq!(out.stdout, format!("lease {hex} keepalived with TTL(60)\n"));
    let j = c.ctl_json(0, &["lease", "keep-alive", "--once", &hex]);
    assert_eq!(json_i64(&j, "ID"), id);
    assert_eq!(json_i64(&j, "TTL"), 60);

    // timetolive, with and without keys.
    let out = c.ctl(0, &["lease", "timetolive", &hex]).expect_ok();
    let remaining = parse_remaining(&out.stdout);
    assert!((55..=60).contains(&remaining), "{out}");
    assert_eq!(
        out.stdout,
        format!("lease {hex} granted with TTL(60s), remaining({remaining}s)\n")
    );
    // (etcd lists a lease's keys in no particular order.)
    let out = c
        .ctl(0, &["lease", "timetolive", &hex, "--keys"])
        .expect_ok();
    let remaining = parse_remaining(&out.stdout);
    let line = |keys: &str| {
        format!(
            "lease {hex} granted with TTL(60s), remaining({remaining}s), attached keys([{keys}])\n"
        )
    };
    assert!(
        out.stdout == line("/svc/a /svc/b") || out.stdout == line("/svc/b /svc/a"),
        "{out}"
    );
    let j = c.ctl_json(0, &["lease", "timetolive", &hex, "--keys"]);
    assert_eq!(json_i64(&j, "id"), id);
    assert_eq!(json_i64(&j, "granted-ttl"), 60);
    let mut keys: Vec<String> = j["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| b64(k.as_str().expect("key")))
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["/svc/a", "/svc/b"]);

    // lease list.
    let other = parse_lease_grant(&c.ctl(0, &["lease", "grant", "100"]).expect_ok());
    let out = c.ctl(0, &["lease", "list"]).expect_ok();
    let mut lines = out.lines();
    assert_eq!(lines.remove(0), "found 2 leases", "{out}");
    lines.sort_unstable();
    let mut expected = vec![hex.clone(), lease_hex(other)];
    expected.sort_unstable();
    assert_eq!(lines, expected, "{out}");
    let j = c.ctl_json(0, &["lease", "list"]);
    let mut ids: Vec<i64> = j["leases"]
        .as_array()
        .expect("leases")
        .iter()
        .map(|l| json_i64(l, "id"))
        .collect();
    ids.sort_unstable();
    let mut expected = vec![id, other];
    expected.sort_unstable();
    assert_eq!(ids, expected);

    // revoke: the lease's keys go, other keys stay.
    let out = c.ctl(0, &["lease", "revoke", &hex]).expect_ok();
    assert_eq!(out.stdout, format!("lease {hex} revoked\n"));
    assert_eq!(
        c.ctl(0, &["get", "/svc/", "--prefix"]).expect_ok().stdout,
        ""
    );
    assert_eq!(
        c.ctl(0, &["get", "/other"]).expect_ok().stdout,
        "/other\n3\n"
    );
    let out = c.ctl(0, &["lease", "timetolive", &hex]).expect_ok();
    assert_eq!(out.stdout, format!("lease {hex} already expired\n"));
    let out = c.ctl(0, &["lease", "list"]).expect_ok();
    assert_eq!(
        out.lines(),
        vec!["found 1 leases".to_string(), lease_hex(other)]
    );
}

/// `remaining(57s)` out of a timetolive line.
fn parse_remaining(line: &str) -> i64 {
    let start = line.find("remaining(").expect("remaining(") + "remaining(".len();
    let end = start + line[start..].find("s)").expect("s)");
    line[start..end].parse().expect("remaining seconds")
}

#[test]
fn short_lease_expires_with_its_keys() {
    const TTL: u64 = 3;
    let c = Cluster::start(1);

    let granted = Instant::now();
    let out = c.ctl(0, &["lease", "grant", &TTL.to_string()]).expect_ok();
    let hex = lease_hex(parse_lease_grant(&out));
    assert_eq!(
        out.stdout,
        format!("lease {hex} granted with TTL({TTL}s)\n")
    );
    let lease_flag = format!("--lease={hex}");
    c.ctl(0, &["put", "/ttl/a", "1", &lease_flag]).expect_ok();
    c.ctl(0, &["put", "/ttl/b", "2", &lease_flag]).expect_ok();
    c.ctl(0, &["put", "/ttl/keep", "3"]).expect_ok();

    // Still there right after attaching.
    assert_eq!(
        c.ctl(0, &["get", "/ttl/a"]).expect_ok().stdout,
        "/ttl/a\n1\n",
        "key gone right after attaching it to a {TTL}s lease"
    );

    // Poll until gone; every read that completed before the TTL had passed
    // since the grant was sent must still see the keys.
    let gone_at = wait_for(
        Duration::from_secs(TTL + 3) - granted.elapsed(),
        "lease keys to expire",
        || {
            let out = c
                .ctl(0, &["get", "/ttl/", "--prefix", "--keys-only"])
                .expect_ok();
            let done = Instant::now();
            if out.stdout.contains("/ttl/a") {
                assert!(
                    out.stdout.contains("/ttl/b"),
                    "keys of one lease expire together: {out}"
                );
                None
            } else {
                assert!(
                    !out.stdout.contains("/ttl/b"),
                    "keys of one lease expire together: {out}"
                );
                Some(done)
            }
        },
    );
    let after = gone_at - granted;
    assert!(
        after >= Duration::from_secs(TTL),
        "lease expired early: keys gone {after:?} after the grant of a {TTL}s lease"
    );
    assert_eq!(
        c.ctl(0, &["get", "/ttl/keep"]).expect_ok().stdout,
        "/ttl/keep\n3\n"
    );
    let out = c.ctl(0, &["lease", "timetolive", &hex]).expect_ok();
    assert_eq!(out.stdout, format!("lease {hex} already expired\n"));
    assert_eq!(
        c.ctl(0, &["lease", "list"]).expect_ok().stdout,
        "found 0 leases\n"
    );
}

#[test]
fn lease_ttl_limits() {
    let c = Cluster::start(1);
    // Under the minimum, ceil(1.5 x election timeout) = 2 s, it is raised.
    let out = c.ctl(0, &["lease", "grant", "1"]).expect_ok();
    let hex = lease_hex(parse_lease_grant(&out));
    assert_eq!(out.stdout, format!("lease {hex} granted with TTL(2s)\n"));
    // Over the maximum (9,000,000,000 s) it is an error.
    let out = c.ctl(0, &["lease", "grant", "9000000001"]).expect_err();
    assert!(
        out.stderr
            .contains("Error: failed to grant lease (etcdserver: too large lease TTL)"),
        "{out}"
    );
}

#[test]
fn lease_errors() {
    let c = Cluster::start(1);
    c.ctl(0, &["put", "k", "before"]).expect_ok();

    // Put with a lease that does not exist: nothing written.
    let out = c
        .ctl(0, &["put", "k", "v", "--lease=1234abcd"])
        .expect_err();
    assert!(
        out.stderr.contains(&format!("Error: {LEASE_NOT_FOUND}")),
        "{out}"
    );
    assert_eq!(c.ctl(0, &["get", "k"]).expect_ok().stdout, "k\nbefore\n");

    // Revoke an unknown lease.
    let out = c.ctl(0, &["lease", "revoke", "1234abcd"]).expect_err();
    assert!(
        out.stderr.contains(&format!(
            "Error: failed to revoke lease ({LEASE_NOT_FOUND})"
        )),
        "{out}"
    );

    // Keepalive of an unknown lease: the server answers TTL 0, which the
    // client reports as not found (--once) or as "expired or revoked".
    let out = c
        .ctl(0, &["lease", "keep-alive", "--once", "1234abcd"])
        .expect_err();
    assert!(
        out.stderr.contains(&format!("Error: {LEASE_NOT_FOUND}")),
        "{out}"
    );
    let out = c.ctl(0, &["lease", "keep-alive", "1234abcd"]).expect_ok();
    assert_eq!(out.stdout, "lease 000000001234abcd expired or revoked.\n");

    // timetolive of an unknown lease is not an error: TTL -1.
    let out = c.ctl(0, &["lease", "timetolive", "1234abcd"]).expect_ok();
    assert_eq!(out.stdout, "lease 000000001234abcd already expired\n");
    let j = c.ctl_json(0, &["lease", "timetolive", "1234abcd"]);
    assert_eq!(json_i64(&j, "ttl"), -1);
    assert_eq!(json_i64(&j, "granted-ttl"), 0);
}

// ---------------------------------------------------------------------------
// Cluster and Maintenance through etcdctl
// ---------------------------------------------------------------------------

#[test]
fn member_list_and_endpoint_status() {
    let c = Cluster::start(1);
    let cfg = c.config(0);
    let id = c.member_id(0);
    assert_ne!(id, 0);

    let out = c.ctl(0, &["member", "list"]).expect_ok();
    assert_eq!(
        out.stdout,
        format!(
            "{id:x}, started, {}, {}, {}, false\n",
            cfg.name,
            cfg.peer_url(),
            cfg.client_url()
        )
    );
    let j = c.ctl_json(0, &["member", "list"]);
    let cluster_id = json_u64(&j["header"], "cluster_id");
    assert_ne!(cluster_id, 0);
    assert_eq!(json_u64(&j["header"], "member_id"), id);
    let members = j["members"].as_array().expect("members");
    assert_eq!(members.len(), 1, "{j}");
    assert_eq!(json_u64(&members[0], "ID"), id);
    assert_eq!(members[0]["name"], cfg.name.as_str());
    assert_eq!(members[0]["peerURLs"], serde_json::json!([cfg.peer_url()]));
    assert_eq!(
        members[0]["clientURLs"],
        serde_json::json!([cfg.client_url()])
    );

    // Status: the node is its own leader; the revision is the last write's.
    let put = c.ctl_json(0, &["put", "k", "v"]);
    let rev = json_i64(&put["header"], "revision");
    let st = c.status(0).expect("status");
    assert_eq!(st.member_id, id);
    assert_eq!(st.leader, id);
    assert_eq!(st.cluster_id, cluster_id);
    assert_eq!(st.revision, rev);
    assert!(st.raft_term >= 1, "{:?}", st.raw);
    assert!(st.raft_index >= 1, "{:?}", st.raw);
    assert!(json_u64(&st.raw, "raftTerm") >= 1, "{:?}", st.raw);
    assert!(!st.version.is_empty(), "{:?}", st.raw);
    assert!(st.db_size > 0, "{:?}", st.raw);

    // Simple format: endpoint, id, version, db size, is leader, is learner,
    // raft term, raft index, raft applied index, errors.
    let out = c.ctl(0, &["endpoint", "status"]).expect_ok();
    let fields: Vec<&str> = out.stdout.trim_end().split(", ").collect();
    assert!(fields.len() >= 8, "{out}");
    assert_eq!(fields[0], c.endpoint(0));
    assert_eq!(fields[1], format!("{id:x}"));
    assert_eq!(fields[2], st.version);
    assert_eq!(fields[4], "true", "is leader: {out}");
    assert_eq!(fields[5], "false", "is learner: {out}");

    // Health is a linearizable read through the node (etcdctl 3.4 prints
    // the verdict on stderr).
    let out = c.ctl(0, &["endpoint", "health"]).expect_ok();
    assert!(
        out.stderr.contains(&format!(
            "{} is healthy: successfully committed proposal: took = ",
            c.endpoint(0)
        )),
        "{out}"
    );
}

/// etcdctl 3.4 sends a URL endpoint as the HTTP/2 `:authority` of the commands that
/// dial each endpoint on its own; both spellings of one endpoint must answer.
#[test]
fn endpoint_commands_accept_urls_and_bare_addresses() {
    let c = Cluster::start(1);
    let url = c.endpoint(0);
    let bare = url.trim_start_matches("http://").to_string();
    assert_ne!(url, bare, "client URLs carry a scheme");
    let both = [url.clone(), bare.clone()];

    let out = etcdctl(&both, &["endpoint", "status", "-w", "json"]).expect_ok();
    let statuses = out.json();
    let statuses = statuses.as_array().expect("one status per endpoint");
    let answered: Vec<(&str, u64)> = statuses
        .iter()
        .map(|s| {
            let endpoint = s["Endpoint"].as_str().unwrap_or_default();
            (endpoint, json_u64(&s["Status"]["header"], "member_id"))
        })
        .collect();
    let id = c.member_id(0);
    assert_eq!(
        answered,
        vec![(url.as_str(), id), (bare.as_str(), id)],
        "{out}"
    );

    let out = etcdctl(&both, &["endpoint", "health"]).expect_ok();
    for endpoint in &both {
        assert!(
            out.stderr.contains(&format!("{endpoint} is healthy")),
            "{out}"
        );
    }

    // Ordinary requests on a URL endpoint still work after the rewritten ones.
    etcdctl(std::slice::from_ref(&url), &["put", "url-key", "v"]).expect_ok();
    let got = etcdctl(&[url], &["get", "url-key", "--print-value-only"]).expect_ok();
    assert_eq!(got.stdout, "v\n");
}

// ---------------------------------------------------------------------------
// gRPC client
// ---------------------------------------------------------------------------

async fn channel(c: &Cluster, i: usize) -> Channel {
    c.channel(i).await
}

#[track_caller]
fn header(h: Option<ResponseHeader>) -> ResponseHeader {
    let h = h.expect("response has a header");
    assert_ne!(h.cluster_id, 0, "header.cluster_id");
    assert_ne!(h.member_id, 0, "header.member_id");
    assert!(h.raft_term >= 1, "header.raft_term: {h:?}");
    h
}

fn put_req(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_kv_headers_and_options() {
    let c = Cluster::start(1);
    let ch = channel(&c, 0).await;
    let mut kv = KvClient::new(ch.clone());

    // Every put: one revision more, same cluster and member.
    let first = header(
        kv.put(put_req("/g/a", "1"))
            .await
            .expect("put")
            .into_inner()
            .header,
    );
    assert_eq!(first.member_id, c.member_id(0));
    let mut rev = first.revision;
    for (k, v) in [("/g/b", "2"), ("/g/c", "3"), ("/g/a", "1b")] {
        let h = header(
            kv.put(put_req(k, v))
                .await
                .expect("put")
                .into_inner()
                .header,
        );
        assert_eq!(h.revision, rev + 1, "revision +1 per put");
        assert_eq!(h.cluster_id, first.cluster_id);
        assert_eq!(h.member_id, first.member_id);
        assert!(h.raft_term >= first.raft_term);
        rev = h.revision;
    }

    // Put with prev_kv.
    let resp = kv
        .put(PutRequest {
            prev_kv: true,
            ..put_req("/g/c", "3b")
        })
        .await
        .expect("put")
        .into_inner();
    let prev = resp.prev_kv.expect("prev_kv");
    assert_eq!(
        (prev.key.as_slice(), prev.value.as_slice()),
        (&b"/g/c"[..], &b"3"[..])
    );
    rev += 1;

    // Range: prefix, limit/more/count, keys_only, count_only.
    let prefix = |extra: RangeRequest| RangeRequest {
        key: b"/g/".to_vec(),
        range_end: b"/g0".to_vec(),
        ..extra
    };
    let resp = kv
        .range(prefix(RangeRequest::default()))
        .await
        .expect("range")
        .into_inner();
    assert_eq!(header(resp.header).revision, rev);
    assert_eq!(resp.count, 3);
    assert!(!resp.more);
    let got: Vec<(&[u8], &[u8])> = resp
        .kvs
        .iter()
        .map(|kv| (kv.key.as_slice(), kv.value.as_slice()))
        .collect();
    assert_eq!(
        got,
        [
            (&b"/g/a"[..], &b"1b"[..]),
            (&b"/g/b"[..], &b"2"[..]),
            (&b"/g/c"[..], &b"3b"[..])
        ]
    );
    let a = &resp.kvs[0];
    assert_eq!(
        (a.create_revision, a.mod_revision, a.version),
        (first.revision, first.revision + 3, 2)
    );

    let resp = kv
        .range(prefix(RangeRequest {
            limit: 2,
            ..Default::default()
        }))
        .await
        .expect("range")
        .into_inner();
    assert_eq!((resp.kvs.len(), resp.count, resp.more), (2, 3, true));

    let resp = kv
        .range(prefix(RangeRequest {
            keys_only: true,
            ..Default::default()
        }))
        .await
        .expect("range")
        .into_inner();
    assert_eq!(resp.kvs.len(), 3);
    assert!(
        resp.kvs.iter().all(|kv| kv.value.is_empty()),
        "keys_only returns no values"
    );

    let resp = kv
        .range(prefix(RangeRequest {
            count_only: true,
            ..Default::default()
        }))
        .await
        .expect("range")
        .into_inner();
    assert_eq!(resp.count, 3);
    assert!(resp.kvs.is_empty(), "count_only returns no kvs");

    let resp = kv
        .range(prefix(RangeRequest {
            serializable: true,
            ..Default::default()
        }))
        .await
        .expect("range")
        .into_inner();
    assert_eq!((resp.count, header(resp.header).revision), (3, rev));

    // All keys: key "\0", range_end "\0".
    let resp = kv
        .range(RangeRequest {
            key: vec![0],
            range_end: vec![0],
            count_only: true,
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    assert_eq!(resp.count, 3);

    // range_end before key: empty, not an error.
    let resp = kv
        .range(RangeRequest {
            key: b"/g/c".to_vec(),
            range_end: b"/g/a".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range with range_end < key is not an error")
        .into_inner();
    assert_eq!((resp.count, resp.kvs.len()), (0, 0));

    // DeleteRange with prev_kv: one revision for the range.
    let resp = kv
        .delete_range(DeleteRangeRequest {
            key: b"/g/a".to_vec(),
            range_end: b"/g/c".to_vec(),
            prev_kv: true,
        })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(resp.deleted, 2);
    assert_eq!(resp.prev_kvs.len(), 2);
    assert_eq!(header(resp.header).revision, rev + 1);
    rev += 1;

    // Errors: gRPC code and message as etcd's.
    let err = kv.put(put_req("", "v")).await.expect_err("empty key");
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, KEY_NOT_PROVIDED)
    );
    let err = kv
        .range(RangeRequest::default())
        .await
        .expect_err("empty key");
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, KEY_NOT_PROVIDED)
    );
    let err = kv
        .put(PutRequest {
            lease: 0x1234_abcd,
            ..put_req("/g/x", "v")
        })
        .await
        .expect_err("unknown lease");
    assert_eq!(
        (err.code(), err.message()),
        (Code::NotFound, LEASE_NOT_FOUND)
    );
    let err = kv
        .put(PutRequest {
            ignore_value: true,
            ..put_req("/g/missing", "")
        })
        .await
        .expect_err("ignore_value of a missing key");
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "etcdserver: key not found")
    );
    // Over etcd's 1.5 MiB request limit.
    let big = "x".repeat(1_600_000);
    let err = kv
        .put(put_req("/g/big", &big))
        .await
        .expect_err("too large");
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "etcdserver: request is too large")
    );
    // Just under it works.
    let ok = "y".repeat(1_000_000);
    let h = header(
        kv.put(put_req("/g/ok", &ok))
            .await
            .expect("1 MB put")
            .into_inner()
            .header,
    );
    assert_eq!(h.revision, rev + 1, "failed requests wrote nothing");

    // Cluster and Maintenance agree with the headers.
    let members = ClusterClient::new(ch.clone())
        .member_list(MemberListRequest::default())
        .await
        .expect("member list")
        .into_inner();
    let mh = header(members.header);
    assert_eq!(mh.cluster_id, first.cluster_id);
    assert_eq!(members.members.len(), 1);
    assert_eq!(members.members[0].id, first.member_id);
    assert_eq!(members.members[0].name, "n1");
    assert_eq!(members.members[0].peer_ur_ls, [c.config(0).peer_url()]);
    assert_eq!(members.members[0].client_ur_ls, [c.config(0).client_url()]);

    let st = MaintenanceClient::new(ch)
        .status(StatusRequest::default())
        .await
        .expect("status")
        .into_inner();
    let sh = header(st.header);
    assert_eq!(st.leader, sh.member_id);
    assert_eq!(sh.member_id, first.member_id);
    assert_eq!(sh.revision, rev + 1);
    assert!(st.raft_term >= 1 && st.raft_index >= 1, "{st:?}");
    assert!(st.db_size > 0 && !st.version.is_empty(), "{st:?}");
}

/// A keepalive stream whose first request, for `first`, is queued before the
/// call is awaited (etcd sends the response headers with the first answer).
async fn keepalive_stream(
    lease: &mut LeaseClient<Channel>,
    first: i64,
) -> (
    tokio::sync::mpsc::Sender<LeaseKeepAliveRequest>,
    tonic::Streaming<LeaseKeepAliveResponse>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(LeaseKeepAliveRequest { id: first })
        .await
        .expect("send");
    let answers = lease
        .lease_keep_alive(tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(
            rx,
        ))
        .await
        .expect("keepalive stream")
        .into_inner();
    (tx, answers)
}

async fn next_keepalive_answer(
    answers: &mut tonic::Streaming<LeaseKeepAliveResponse>,
) -> LeaseKeepAliveResponse {
    tokio::time::timeout(Duration::from_secs(5), answers.message())
        .await
        .expect("keepalive answer within 5 s")
        .expect("stream ok")
        .expect("stream open")
}

/// Rule 2 under the default settings: a holder that renews every third of its
/// TTL, as etcd's and Roster's clients do, writes nothing to the log. With a
/// checkpoint interval shorter than such a lease's TTL (the old default of 5 s
/// against a TTL of 15 s), the lease was checkpointed while idle and each
/// keepalive then waited for a renewal record: two log entries per keepalive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_at_a_third_of_the_ttl_write_nothing_to_the_log() {
    let c = Cluster::start(1);
    let mut lease = LeaseClient::new(channel(&c, 0).await);
    let id = lease
        .lease_grant(LeaseGrantRequest { ttl: 15, id: 0 })
        .await
        .expect("grant")
        .into_inner()
        .id;
    let before = c.status(0).expect("status").raft_index;
    // The holder's cadence, not a wait for a condition. (Under the old
    // default a checkpoint pass every 2.5 s found the lease idle for 2.5 s
    // within these 5 s.)
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_tx, mut answers) = keepalive_stream(&mut lease, id).await;
    let answer = next_keepalive_answer(&mut answers).await;
    assert_eq!((answer.id, answer.ttl), (id, 15));
    let after = c.status(0).expect("status").raft_index;
    assert_eq!(
        after,
        before,
        "keepalives wrote {} log entries",
        after - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_leases_and_keepalive_stream() {
    let c = Cluster::start(1);
    let ch = channel(&c, 0).await;
    let mut lease = LeaseClient::new(ch.clone());
    let mut kv = KvClient::new(ch);

    // Server-chosen id.
    let g = lease
        .lease_grant(LeaseGrantRequest { ttl: 30, id: 0 })
        .await
        .expect("grant")
        .into_inner();
    header(g.header);
    assert_ne!(g.id, 0);
    assert_eq!(g.ttl, 30);
    assert_eq!(g.error, "");
    let id = g.id;

    // Client-chosen id, and the same id again.
    let g2 = lease
        .lease_grant(LeaseGrantRequest { ttl: 30, id: 0x77 })
        .await
        .expect("grant with id")
        .into_inner();
    assert_eq!(g2.id, 0x77);
    let err = lease
        .lease_grant(LeaseGrantRequest { ttl: 30, id: 0x77 })
        .await
        .expect_err("lease id in use");
    assert_eq!(
        (err.code(), err.message()),
        (Code::FailedPrecondition, "etcdserver: lease already exists")
    );
    let err = lease
        .lease_grant(LeaseGrantRequest {
            ttl: 9_000_000_001,
            id: 0,
        })
        .await
        .expect_err("ttl too large");
    assert_eq!(
        (err.code(), err.message()),
        (Code::OutOfRange, "etcdserver: too large lease TTL")
    );

    kv.put(PutRequest {
        lease: id,
        ..put_req("/l/a", "1")
    })
    .await
    .expect("put with lease");

    // The keepalive stream: one response per request, in order, with the
    // granted TTL; an unknown lease answers TTL 0 on the same stream.
    // (etcd sends the response headers with the first message, so the
    // first request must be queued before the call is awaited.)
    let (tx, mut responses) = keepalive_stream(&mut lease, id).await;
    for (n, want) in [id, id, 0x77, 0x1234_abcd, id].into_iter().enumerate() {
        if n > 0 {
            tx.send(LeaseKeepAliveRequest { id: want })
                .await
                .expect("send");
        }
        let resp = next_keepalive_answer(&mut responses).await;
        header(resp.header);
        assert_eq!(resp.id, want);
        let ttl = if want == 0x1234_abcd { 0 } else { 30 };
        assert_eq!(resp.ttl, ttl, "keepalive of {want:x}");
    }

    // TimeToLive with keys.
    let t = lease
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true })
        .await
        .expect("ttl")
        .into_inner();
    header(t.header);
    assert_eq!((t.id, t.granted_ttl), (id, 30));
    assert!((25..=30).contains(&t.ttl), "{t:?}");
    assert_eq!(t.keys, [b"/l/a".to_vec()]);

    // Leases.
    let l = lease
        .lease_leases(LeaseLeasesRequest::default())
        .await
        .expect("leases")
        .into_inner();
    header(l.header);
    let mut ids: Vec<i64> = l.leases.iter().map(|s| s.id).collect();
    ids.sort_unstable();
    let mut want = vec![id, 0x77];
    want.sort_unstable();
    assert_eq!(ids, want);

    // Revoke: keys gone, keepalive on the open stream answers TTL 0,
    // TimeToLive answers TTL -1, a second revoke is NotFound.
    let r = lease
        .lease_revoke(LeaseRevokeRequest { id })
        .await
        .expect("revoke")
        .into_inner();
    header(r.header);
    let resp = kv
        .range(RangeRequest {
            key: b"/l/a".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    assert_eq!(resp.count, 0, "key of a revoked lease is gone");
    tx.send(LeaseKeepAliveRequest { id }).await.expect("send");
    let resp = tokio::time::timeout(Duration::from_secs(5), responses.message())
        .await
        .expect("keepalive response within 5 s")
        .expect("stream ok")
        .expect("stream open");
    assert_eq!((resp.id, resp.ttl), (id, 0));
    let t = lease
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true })
        .await
        .expect("ttl of a revoked lease is not an error")
        .into_inner();
    assert_eq!((t.id, t.ttl), (id, -1));
    let err = lease
        .lease_revoke(LeaseRevokeRequest { id })
        .await
        .expect_err("revoke twice");
    assert_eq!(
        (err.code(), err.message()),
        (Code::NotFound, LEASE_NOT_FOUND)
    );
    drop(tx);
}

// ---------------------------------------------------------------------------
// Restarts and startup errors
// ---------------------------------------------------------------------------

#[test]
fn restart_keeps_data() {
    let mut c = Cluster::start(1);
    c.ctl(0, &["put", "/r/a", "1"]).expect_ok();
    c.ctl(0, &["put", "/r/b", "2"]).expect_ok();
    c.ctl(0, &["put", "/r/a", "1b"]).expect_ok();
    c.ctl(0, &["del", "/r/b"]).expect_ok();
    let lease = parse_lease_grant(&c.ctl(0, &["lease", "grant", "600"]).expect_ok());
    let hex = lease_hex(lease);
    c.ctl(0, &["put", "/r/leased", "x", &format!("--lease={hex}")])
        .expect_ok();
    let before = c.ctl_json(0, &["get", "/r/", "--prefix"]);
    let id_before = c.member_id(0);

    c.kill(0);
    c.restart(0);

    let after = c.ctl_json(0, &["get", "/r/", "--prefix"]);
    assert_eq!(
        after["kvs"], before["kvs"],
        "keys, revisions and versions survive a restart"
    );
    assert_eq!(after["header"]["revision"], before["header"]["revision"]);
    assert_eq!(
        json_u64(&after["header"], "cluster_id"),
        json_u64(&before["header"], "cluster_id")
    );
    assert_eq!(json_u64(&after["header"], "member_id"), id_before);
    let out = c
        .ctl(0, &["lease", "timetolive", &hex, "--keys"])
        .expect_ok();
    assert!(
        out.stdout
            .starts_with(&format!("lease {hex} granted with TTL(600s), remaining(")),
        "lease survives a restart: {out}"
    );
    assert!(out.stdout.contains("attached keys([/r/leased])"), "{out}");
    // Writes continue from the old revision.
    let j = c.ctl_json(0, &["put", "/r/c", "3"]);
    assert_eq!(
        json_i64(&j["header"], "revision"),
        json_i64(&before["header"], "revision") + 1
    );
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let mut c = Cluster::start(1);
    c.ctl(0, &["put", "k", "v"]).expect_ok();
    let status = c.terminate(0, Duration::from_secs(10));
    assert!(
        status.success() || status.signal() == Some(15),
        "exit after SIGTERM: {status}"
    );
    c.restart(0);
    assert_eq!(c.ctl(0, &["get", "k"]).expect_ok().stdout, "k\nv\n");
}

#[test]
fn unknown_flag_is_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = NodeConfig::new(dir.path(), "n1");
    let mut args = cfg.serve_args(&format!("n1={}", cfg.peer_url()), "t");
    args.push("--no-such-flag".into());
    let exit = run_server_to_exit(&args, &cfg.log_path, Duration::from_secs(10));
    let status = exit
        .status
        .unwrap_or_else(|| panic!("still running 10 s after an unknown flag:\n{}", exit.output));
    assert!(!status.success(), "{status}: {}", exit.output);
    assert!(
        exit.output.contains("no-such-flag"),
        "the error names the flag: {}",
        exit.output
    );
}

#[test]
fn port_in_use_is_an_error() {
    let c = Cluster::start(1);
    c.ctl(0, &["put", "k", "v"]).expect_ok();
    let taken = c.config(0);

    // Peer port taken, then client port taken.
    for (what, port) in [("peer", taken.peer_port), ("client", taken.client_port)] {
        let mut cfg = NodeConfig::new(c.dir(), &format!("other-{what}"));
        match what {
            "peer" => cfg.peer_port = port,
            _ => cfg.client_port = port,
        }
        let args = cfg.serve_args(&format!("{}={}", cfg.name, cfg.peer_url()), "other");
        let exit = run_server_to_exit(&args, &cfg.log_path, Duration::from_secs(15));
        let status = exit.status.unwrap_or_else(|| {
            panic!(
                "still running 15 s after its {what} port was taken:\n{}",
                exit.output
            )
        });
        assert!(!status.success(), "{status}: {}", exit.output);
        let output = exit.output.to_lowercase();
        assert!(
            output.contains(&format!("127.0.0.1:{port}"))
                && output.contains("address already in use"),
            "the error names the {what} address and the problem: {}",
            exit.output
        );
    }

    // The running node and its data are untouched.
    assert_eq!(c.ctl(0, &["get", "k"]).expect_ok().stdout, "k\nv\n");
    let st = c.status(0).expect("status");
    assert_eq!(st.leader, c.member_id(0));
}

#[test]
fn data_dir_of_another_cluster_is_refused() {
    if is_etcd() {
        eprintln!("skipped: etcd ignores --initial-cluster-token once its data dir exists");
        return;
    }
    let mut c = Cluster::start(1);
    c.ctl(0, &["put", "k", "v"]).expect_ok();
    let before = c.ctl_json(0, &["get", "k"]);
    c.kill(0);

    let args = with_flag(c.args(0), "--initial-cluster-token", "another-cluster");
    let log = c.dir().join("foreign.log");
    let exit = run_server_to_exit(&args, &log, Duration::from_secs(15));
    let status = exit.status.unwrap_or_else(|| {
        panic!(
            "still running 15 s after being given another cluster's data dir:\n{}",
            exit.output
        )
    });
    assert!(!status.success(), "{status}: {}", exit.output);
    let output = exit.output.to_lowercase();
    assert!(
        output.contains("token") || output.contains("cluster id"),
        "the error says the data dir belongs to another cluster: {}",
        exit.output
    );

    // The data is intact: the right flags start it again with the key.
    c.restart(0);
    let after = c.ctl_json(0, &["get", "k"]);
    assert_eq!(after["kvs"], before["kvs"]);
    assert_eq!(after["header"]["revision"], before["header"]["revision"]);
    wait_until(Duration::from_secs(5), "the node to lead again", || {
        c.status(0).is_ok_and(|s| s.leader == c.member_id(0))
    });
}

/// The registry's prefix is read-only through the etcd API (roster only: etcd
/// has no such prefix).
#[test]
fn registry_keys_are_read_only_through_the_etcd_api() {
    if is_etcd() {
        return;
    }
    let c = Cluster::start(1);
    let refused = "keys under /roster/registry/ belong to the registry";
    for args in [
        vec!["put", "/roster/registry/web/1", "x"],
        vec!["del", "/roster/registry/", "--prefix"],
        vec!["del", "/", "--prefix"],
        vec!["del", "", "--from-key"],
    ] {
        let out = c.ctl(0, &args).expect_err();
        assert!(out.stderr.contains(refused), "{args:?}: {out}");
    }
    // Reads are allowed, and keys beside the prefix stay writable.
    c.ctl(0, &["get", "/roster/registry/", "--prefix"])
        .expect_ok();
    c.ctl(0, &["put", "/roster/other", "x"]).expect_ok();
    c.ctl(0, &["del", "/roster/other"]).expect_ok();
}

/// `roster kv|lease|member|status`: the etcd API from roster's own CLI.
#[test]
fn roster_cli_speaks_kv_lease_member_and_status() {
    if is_etcd() {
        return; // roster's own CLI
    }
    let c = Cluster::start(1);
    let roster = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_roster"))
            .args(args)
            .arg(format!("--endpoints={}", c.endpoint(0)))
            .output()
            .expect("run roster");
        let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
        (out.status.success(), text(out.stdout), text(out.stderr))
    };
    assert_eq!(roster(&["kv", "put", "a", "1"]).1, "OK\n");
    assert_eq!(roster(&["kv", "get", "a"]).1, "a\n1\n");
    let (ok, granted, err) = roster(&["lease", "grant", "30s", "-o", "json"]);
    assert!(ok, "{err}");
    let granted: serde_json::Value = serde_json::from_str(granted.trim()).expect("json");
    let id = granted["id"].as_str().expect("hex id").to_string();
    assert_eq!(granted["ttl"], 30);
    assert!(roster(&["kv", "put", "k", "v", "--lease", &id]).0);
    let (_, ttl, _) = roster(&["lease", "ttl", &id, "--keys"]);
    assert!(ttl.contains("keys: k"), "{ttl}");
    assert!(roster(&["lease", "list"]).1.contains(&id));
    let (ok, kept, _) = roster(&["lease", "keepalive", &id, "--once"]);
    assert!(ok && kept.contains("keepalived with TTL(30)"), "{kept}");
    assert!(roster(&["lease", "revoke", &id]).0);
    assert_eq!(roster(&["kv", "get", "k"]).1, "", "the lease took its key");
    let (ok, _, err) = roster(&["lease", "ttl", &id]);
    assert!(!ok && err.contains("not found"), "{err}");
    let (_, members, _) = roster(&["member", "list"]);
    assert_eq!(members.lines().count(), 1, "{members}");
    assert!(
        members.starts_with(&format!("{:x}, ", c.member_id(0))),
        "{members}"
    );
    let (ok, status, _) = roster(&["status"]);
    let row = status
        .lines()
        .find(|l| l.contains(&format!("{:x}", c.member_id(0))))
        .unwrap_or_default();
    assert!(ok && status.starts_with("NAME "), "{status}");
    assert!(row.contains(" leader ") && row.contains(" 0 "), "{status}");
    assert_eq!(roster(&["kv", "del", "a"]).1, "1\n");
}

/// A base port for `roster dev` whose six ports (client and peer of base,
/// base + 20000, base + 30000) are free now.
fn free_dev_base() -> u16 {
    let start = 10_000 + (std::process::id() % 5_000) as u16;
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    (0..1_000u16)
        .map(|i| 10_000 + (start - 10_000 + i * 7) % 5_000)
        .find(|&b| {
            [b, b + 1, b + 20_000, b + 20_001, b + 30_000, b + 30_001]
                .into_iter()
                .all(free)
        })
        .expect("no free base port for roster dev")
}

/// `roster dev` stops its nodes on SIGTERM as on Ctrl-C. It used to wait for
/// Ctrl-C only, so `kill` left its three nodes running on its ports.
#[test]
fn dev_stops_its_nodes_on_sigterm() {
    let base = free_dev_base();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut dev = std::process::Command::new(env!("CARGO_BIN_EXE_roster"))
        .args(["dev", "--base-port", &base.to_string(), "--dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start roster dev");
    let endpoint = format!("127.0.0.1:{base}");
    wait_until(
        Duration::from_secs(30),
        "roster dev's first node healthy",
        || endpoint_healthy(&endpoint, Duration::from_secs(1)),
    );
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &dev.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(sent.success());
    let status = wait_for(
        Duration::from_secs(20),
        "roster dev to exit after SIGTERM",
        || dev.try_wait().expect("wait for roster dev"),
    );
    assert!(status.success(), "roster dev after SIGTERM: {status}");
    for port in [base, base + 20_000, base + 30_000] {
        wait_until(
            Duration::from_secs(10),
            "a dev node's client port free again",
            || std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        );
    }
}

/// A node whose storage fails under it stops raft, and the process then exits
/// with an error rather than going on answering from a state it no longer
/// advances (a status still naming it leader of a term long over). The
/// failure here: its WAL directory is deleted, so when the 64 MiB segment
/// fills, the next one cannot be created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_storage_fails_exits_with_an_error() {
    if is_etcd() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = NodeConfig::new(dir.path(), "n1");
    let args = cfg.serve_args(&format!("n1={}", cfg.peer_url()), "storage-fails");
    let mut node = harness::spawn_server(&harness::binary(), &args, &cfg.log_path);
    let endpoint = format!("127.0.0.1:{}", cfg.client_port);
    wait_until(Duration::from_secs(20), "the node healthy", || {
        endpoint_healthy(&endpoint, Duration::from_secs(1))
    });
    std::fs::remove_dir_all(cfg.data_dir.join("wal")).expect("delete the WAL dir");
    let channel = harness::grpc_channel(cfg.client_url(), Some(Duration::from_secs(5))).await;
    let mut kv = KvClient::new(channel);
    let value = vec![b'x'; 1 << 20];
    for n in 0..100 {
        let put = PutRequest {
            key: format!("big/{n}").into_bytes(),
            value: value.clone(),
            ..Default::default()
        };
        if kv.put(put).await.is_err() {
            break;
        }
    }
    let status = harness::poll_for(Duration::from_secs(20), || {
        node.try_wait().expect("wait for the node")
    });
    let Some(status) = status else {
        let _ = node.kill();
        panic!(
            "the node still runs after its storage failed:\n{}",
            harness::tail(&cfg.log_path, 20)
        );
    };
    assert!(!status.success(), "exit status {status}");
    let log = std::fs::read_to_string(&cfg.log_path).expect("read the log");
    assert!(
        log.contains("raft stopped"),
        "{}",
        harness::tail(&cfg.log_path, 20)
    );
}

/// A clean stop (SIGTERM) after many entries since the last snapshot saves one,
/// and the next start loads the state from it instead of re-applying the log
/// (a node restarted after a million keys and leases re-applied 38,000
/// entries for 8.7 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_saves_a_snapshot_that_the_next_start_loads() {
    if is_etcd() {
        return; // roster's own snapshot files and log lines
    }
    let mut c = Cluster::start(1);
    let mut kv = KvClient::new(channel(&c, 0).await);
    // One at a time, so each is its own log entry: past the 1,000 entries
    // that make a stop save a snapshot.
    for n in 0..1_100 {
        kv.put(put_req(&format!("/stop/{n:04}"), "v"))
            .await
            .expect("put");
    }
    let applied = c.status(0).expect("status").raft_index;
    let status = c.terminate(0, Duration::from_secs(30));
    assert!(status.success(), "{status}");
    let log_path = c.config(0).log_path.clone();
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(log.contains("saved a snapshot before exiting"), "{log}");

    c.restart(0);
    let log = std::fs::read_to_string(&log_path).expect("log");
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("state loaded from the snapshot file"))
        .expect("the restart loaded a snapshot");
    let index: u64 = line
        .split("last_log=Some(")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no index in {line}"));
    assert!(index >= applied, "snapshot at {index}, applied {applied}");
    let got = KvClient::new(channel(&c, 0).await)
        .range(RangeRequest {
            key: b"/stop/1099".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    assert_eq!(got.kvs.len(), 1);
}
