//! Black-box tests of transactions, reads at past revisions and compaction on a
//! three-node cluster, through the stock etcdctl and a gRPC client, on followers
//! as well as the leader.
//!
//! Run with `ROSTER_TEST_BINARY=/usr/bin/etcd` to check the tests against etcd.

mod harness;

use std::time::Duration;

use harness::{etcdctl_with_input, json_i64, kvs, wait_for, Cluster, ClusterOptions};
use roster_proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    kv_client::KvClient,
    request_op::Request,
    response_op::Response,
    Compare, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use tonic::transport::Channel;
use tonic::Code;

/// `etcdctl txn` on node `i` with the three sections (compares, success ops,
/// failure ops), one line per entry.
fn txn(
    c: &Cluster,
    i: usize,
    compares: &[&str],
    success: &[&str],
    failure: &[&str],
) -> harness::CtlOutput {
    let section = |lines: &[&str]| lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    let input = format!(
        "{}\n{}\n{}\n",
        section(compares),
        section(success),
        section(failure)
    );
    etcdctl_with_input(
        &[c.endpoint(i)],
        Duration::from_secs(5),
        &["txn"],
        Some(&input),
    )
}

/// The revision a write through etcdctl answered with.
fn put_rev(c: &Cluster, i: usize, key: &str, value: &str) -> i64 {
    json_i64(&c.ctl_json(i, &["put", key, value])["header"], "revision")
}

fn value_at(c: &Cluster, i: usize, key: &str, rev: i64) -> Option<String> {
    let j = c.ctl_json(i, &["get", key, &format!("--rev={rev}")]);
    kvs(&j).into_iter().next().map(|(_, v)| v)
}

async fn kv_client(c: &Cluster, i: usize) -> KvClient<Channel> {
    KvClient::new(c.channel(i).await)
}

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })),
    }
}

#[test]
fn txn_runs_the_branch_its_compares_choose() {
    let c = Cluster::start(3);
    let follower = c.followers()[0];
    c.ctl(c.leader(), &["put", "k", "v"]).expect_ok();

    let out = txn(
        &c,
        follower,
        &[r#"value("k") = "v""#],
        &["put k2 yes", "get k"],
        &["put k2 no"],
    )
    .expect_ok();
    assert_eq!(out.stdout, "SUCCESS\n\nOK\n\nk\nv\n", "{out}");
    let out = txn(
        &c,
        follower,
        &[r#"mod("k") > "1000""#],
        &["put k3 no"],
        &["put k3 failed", "del k2"],
    )
    .expect_ok();
    assert_eq!(out.stdout, "FAILURE\n\nOK\n\n1\n", "{out}");

    let j = c.ctl_json(follower, &["get", "k", "--prefix"]);
    assert_eq!(
        kvs(&j),
        vec![("k".into(), "v".into()), ("k3".into(), "failed".into())]
    );

    // Both writes of a txn share one revision.
    let out = txn(&c, 0, &[], &["put t1 a", "put t2 b"], &[]).expect_ok();
    assert!(out.stdout.starts_with("SUCCESS"), "{out}");
    let j = c.ctl_json(0, &["get", "t", "--prefix"]);
    let mods: Vec<i64> = j["kvs"]
        .as_array()
        .expect("kvs")
        .iter()
        .map(|kv| json_i64(kv, "mod_revision"))
        .collect();
    assert_eq!(mods.len(), 2);
    assert_eq!(mods[0], mods[1], "{j}");

    // etcd's refusals, changing nothing.
    let out = txn(&c, follower, &[], &["put d 1", "put d 2"], &[]).expect_err();
    assert!(
        out.stderr.contains("duplicate key given in txn request"),
        "{out}"
    );
    assert!(c.ctl(0, &["get", "d"]).expect_ok().stdout.is_empty());
}

#[test]
fn txn_limits_and_nesting_over_grpc() {
    let c = Cluster::start(3);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut kv = kv_client(&c, c.followers()[0]).await;
        let too_many = TxnRequest {
            success: (0..129).map(|i| put_op(&format!("m{i}"), "x")).collect(),
            ..Default::default()
        };
        let err = kv.txn(too_many).await.expect_err("129 ops");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(
            err.message(),
            "etcdserver: too many operations in txn request"
        );

        let missing_value = Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Value as i32,
            key: b"absent".to_vec(),
            target_union: Some(TargetUnion::Value(Vec::new())),
            range_end: Vec::new(),
        };
        let nested = TxnRequest {
            compare: vec![missing_value],
            success: vec![put_op("inner", "success")],
            failure: vec![put_op("inner", "failure")],
        };
        let outer = TxnRequest {
            success: vec![
                put_op("outer", "1"),
                RequestOp {
                    request: Some(Request::RequestTxn(nested)),
                },
            ],
            ..Default::default()
        };
        let answer = kv.txn(outer).await.expect("nested txn").into_inner();
        assert!(answer.succeeded);
        let Some(Response::ResponseTxn(inner)) = &answer.responses[1].response else {
            panic!("{answer:?}");
        };
        assert!(!inner.succeeded, "a value never matches a missing key");
        let got = kv
            .range(RangeRequest {
                key: b"inner".to_vec(),
                ..Default::default()
            })
            .await
            .expect("range")
            .into_inner();
        assert_eq!(got.kvs[0].value, b"failure");
        assert_eq!(
            got.kvs[0].mod_revision,
            answer.header.expect("header").revision
        );
    });
}

#[test]
fn past_revisions_are_readable_until_compacted_on_every_node() {
    let c = Cluster::start(3);
    let r1 = put_rev(&c, 0, "k", "one");
    let r2 = put_rev(&c, 1, "k", "two");
    let deleted = c.ctl_json(2, &["del", "k"]);
    let r3 = json_i64(&deleted["header"], "revision");
    for i in 0..3 {
        assert_eq!(value_at(&c, i, "k", r1).as_deref(), Some("one"), "node {i}");
        assert_eq!(value_at(&c, i, "k", r2).as_deref(), Some("two"), "node {i}");
        assert_eq!(value_at(&c, i, "k", r3), None, "node {i}");
    }
    let out = c
        .ctl(0, &["get", "k", &format!("--rev={}", r3 + 100)])
        .expect_err();
    assert!(
        out.stderr
            .contains("etcdserver: mvcc: required revision is a future revision"),
        "{out}"
    );

    let out = c.ctl(1, &["compact", &r2.to_string()]).expect_ok();
    assert_eq!(out.stdout, format!("compacted revision {r2}\n"));
    for i in 0..3 {
        let out = c.ctl(i, &["get", "k", &format!("--rev={r1}")]).expect_err();
        assert!(
            out.stderr
                .contains("etcdserver: mvcc: required revision has been compacted"),
            "node {i}: {out}"
        );
        assert_eq!(value_at(&c, i, "k", r2).as_deref(), Some("two"), "node {i}");
    }
    let out = c.ctl(2, &["compact", &r1.to_string()]).expect_err();
    assert!(
        out.stderr
            .contains("etcdserver: mvcc: required revision has been compacted"),
        "{out}"
    );
    let out = c.ctl(2, &["compact", &(r3 + 100).to_string()]).expect_err();
    assert!(
        out.stderr
            .contains("etcdserver: mvcc: required revision is a future revision"),
        "{out}"
    );
}

#[test]
fn revision_auto_compaction_keeps_the_last_revisions() {
    if harness::is_etcd() {
        return; // etcd checks every five minutes; this test needs roster's one second
    }
    let mut opts = ClusterOptions::new(3);
    opts.extra_args = [
        "--auto-compaction-mode",
        "revision",
        "--auto-compaction-retention",
        "10",
    ]
    .map(String::from)
    .to_vec();
    let c = Cluster::start_with(opts);
    let mut last = 0;
    for n in 0..40 {
        last = put_rev(&c, n % 3, "auto", &n.to_string());
    }
    let first_gone = wait_for(
        Duration::from_secs(15),
        "history below the retention compacted",
        || {
            let out = c.ctl(1, &["get", "auto", &format!("--rev={}", last - 20)]);
            (!out.success()).then_some(out)
        },
    );
    assert!(
        first_gone
            .stderr
            .contains("required revision has been compacted"),
        "{first_gone}"
    );
    for i in 0..3 {
        assert_eq!(
            value_at(&c, i, "auto", last - 10).as_deref(),
            Some("29"),
            "node {i}"
        );
    }
}
