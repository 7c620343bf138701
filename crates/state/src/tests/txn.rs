//! Scenarios of transactions: compares, branches, one revision for all writes,
//! atomic failure, and etcd's duplicate-key rule.

use super::*;

fn cmp(key: &str, op: CompareOp, target: CompareTarget) -> Compare {
    Compare {
        key: b(key),
        range_end: Vec::new(),
        op,
        target,
    }
}

fn value_is(key: &str, value: &str) -> Compare {
    cmp(key, CompareOp::Equal, CompareTarget::Value(b(value)))
}

fn op_put(key: &str, value: &str) -> TxnOp {
    TxnOp::Put(Put {
        prev_kv: true,
        ..put_args(key, value)
    })
}

fn op_del(key: &str, range_end: &[u8]) -> TxnOp {
    TxnOp::DeleteRange {
        key: b(key),
        range_end: range_end.to_vec(),
        prev_kv: true,
    }
}

fn op_get(key: &str) -> TxnOp {
    TxnOp::Range(range_req(key, &[]))
}

fn txn(compare: Vec<Compare>, success: Vec<TxnOp>, failure: Vec<TxnOp>) -> Command {
    Command::Txn(Txn {
        compare,
        success,
        failure,
    })
}

fn txn_ok(revision: i64, succeeded: bool, responses: Vec<TxnOpResponse>) -> Response {
    Response::Txn {
        revision,
        succeeded,
        responses,
    }
}

fn got(revision: i64, kvs: Vec<KeyValue>) -> TxnOpResponse {
    let count = kvs.len() as i64;
    TxnOpResponse::Range(RangeResult {
        kvs,
        count,
        more: false,
        revision,
    })
}

#[test]
fn the_branch_follows_the_compares_and_all_writes_share_one_revision() {
    let mut sm = machine();
    run(&mut sm, &[put("a", "1")]);
    let a1 = kv("a", "1", 2, 2, 1, 0);
    steps(
        &mut sm,
        vec![
            (
                txn(
                    vec![value_is("a", "1")],
                    vec![op_put("b", "2"), op_put("c", "3"), op_get("a")],
                    vec![],
                ),
                txn_ok(
                    3,
                    true,
                    vec![
                        TxnOpResponse::Put { prev_kv: None },
                        TxnOpResponse::Put { prev_kv: None },
                        got(3, vec![a1.clone()]),
                    ],
                ),
            ),
            (
                txn(
                    vec![value_is("a", "x")],
                    vec![op_put("z", "no")],
                    vec![op_del("a", &[])],
                ),
                txn_ok(
                    4,
                    false,
                    vec![TxnOpResponse::DeleteRange {
                        deleted: 1,
                        prev_kvs: vec![a1],
                    }],
                ),
            ),
        ],
    );
    assert_eq!(get(&sm, "b"), Some(kv("b", "2", 3, 3, 1, 0)));
    assert_eq!(get(&sm, "c"), Some(kv("c", "3", 3, 3, 1, 0)));
    assert_eq!(all_keys(&sm), keys(&["b", "c"]));
    let events = sm.events(3, usize::MAX).expect("events");
    assert_eq!(
        events.iter().map(|e| e.kv.mod_revision).collect::<Vec<_>>(),
        vec![3, 3, 4]
    );
}

#[test]
fn compares_on_every_target_and_on_missing_keys() {
    let mut sm = machine();
    run(
        &mut sm,
        &[
            grant(9, 60),
            put("a", "m").on(9),
            put("a", "n").on(9),
            put("b", "x"),
        ],
    );
    use CompareOp::{Equal, Greater, Less, NotEqual};
    use CompareTarget::{CreateRevision, Lease, ModRevision, Value, Version};
    let cases = [
        (cmp("a", Equal, Version(2)), true),
        (cmp("a", Greater, Version(1)), true),
        (cmp("a", Less, CreateRevision(2)), false),
        (cmp("a", Equal, CreateRevision(2)), true),
        (cmp("a", Equal, ModRevision(3)), true),
        (cmp("a", NotEqual, ModRevision(3)), false),
        (cmp("a", Less, Value(b("o"))), true),
        (cmp("a", Greater, Value(b("o"))), false),
        (cmp("a", Equal, Lease(9)), true),
        (cmp("b", Equal, Lease(0)), true),
        // A missing key: numbers are zero, a value never matches.
        (cmp("zz", Equal, Version(0)), true),
        (cmp("zz", Equal, CreateRevision(0)), true),
        (cmp("zz", Equal, Value(Vec::new())), false),
        (cmp("zz", NotEqual, Value(b("q"))), false),
        // A range: every key must hold.
        (
            Compare {
                range_end: b("c"),
                ..cmp("a", Greater, Version(0))
            },
            true,
        ),
        (
            Compare {
                range_end: b("c"),
                ..cmp("a", Equal, Version(2))
            },
            false,
        ),
        (
            Compare {
                range_end: vec![0],
                ..cmp("b", Equal, Value(b("x")))
            },
            true,
        ),
    ];
    for (compare, want) in cases {
        let read = Txn {
            compare: vec![compare.clone()],
            ..Txn::default()
        };
        match sm.read_txn(&read).expect("read txn") {
            Response::Txn { succeeded, .. } => assert_eq!(succeeded, want, "{compare:?}"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn operations_see_the_writes_before_them_in_the_same_txn() {
    let mut sm = machine();
    run(&mut sm, &[put("a", "1"), put("b", "1")]);
    let applied = apply(
        &mut sm,
        &txn(
            vec![],
            vec![op_put("a", "2"), op_get("a"), op_del("b", &[]), op_get("b")],
            vec![],
        ),
    );
    let Response::Txn { responses, .. } = applied.response else {
        panic!("{:?}", applied.response);
    };
    assert_eq!(responses[1], got(4, vec![kv("a", "2", 2, 4, 2, 0)]));
    assert_eq!(responses[3], got(4, vec![]));
    assert_eq!(
        responses[0],
        TxnOpResponse::Put {
            prev_kv: Some(kv("a", "1", 2, 2, 1, 0))
        }
    );
}

#[test]
fn a_failing_operation_undoes_the_whole_txn() {
    let mut sm = machine();
    run(&mut sm, &[put("a", "1")]);
    let on_missing_lease = TxnOp::Put(Put {
        lease: 42,
        ..put_args("b", "2")
    });
    fails(
        &mut sm,
        txn(vec![], vec![op_put("c", "3"), on_missing_lease], vec![]),
        StateError::LeaseNotFound,
    );
    fails(
        &mut sm,
        txn(
            vec![],
            vec![
                op_put("c", "3"),
                TxnOp::Range(RangeRequest {
                    revision: 9,
                    ..range_req("a", &[])
                }),
            ],
            vec![],
        ),
        StateError::FutureRevision,
    );
}

#[test]
fn duplicate_writes_on_one_path_are_refused() {
    let mut sm = machine();
    run(&mut sm, &[put("a", "1")]);
    let nested = |ops: Vec<TxnOp>| {
        TxnOp::Txn(Txn {
            compare: vec![],
            success: ops,
            failure: vec![],
        })
    };
    let refused = [
        vec![op_put("k", "1"), op_put("k", "2")],
        vec![op_put("k", "1"), op_del("a", b"z")],
        vec![op_del("k", &[]), op_put("k", "1")],
        vec![op_put("k", "1"), nested(vec![op_put("k", "2")])],
        vec![op_del("a", &[0]), nested(vec![op_put("q", "2")])],
    ];
    for ops in refused {
        fails(&mut sm, txn(vec![], ops, vec![]), StateError::DuplicateKey);
    }
    // The same key in both branches, in sibling nested txns, or deleted twice is fine.
    let allowed = txn(
        vec![],
        vec![
            op_del("a", &[]),
            op_del("a", b"b"),
            nested(vec![op_put("k", "1")]),
            nested(vec![op_put("k", "2")]),
        ],
        vec![op_put("k", "3")],
    );
    let response = apply(&mut sm, &allowed).response;
    assert!(
        matches!(
            response,
            Response::Txn {
                succeeded: true,
                ..
            }
        ),
        "{response:?}"
    );
    assert_eq!(get(&sm, "k").map(|kv| kv.value), Some(b("2")));
}

#[test]
fn nested_txns_evaluate_their_own_compares() {
    let mut sm = machine();
    run(&mut sm, &[put("a", "1")]);
    let inner = Txn {
        compare: vec![value_is("a", "nope")],
        success: vec![op_put("s", "1")],
        failure: vec![op_put("f", "1")],
    };
    let response = apply(
        &mut sm,
        &txn(vec![value_is("a", "1")], vec![TxnOp::Txn(inner)], vec![]),
    )
    .response;
    assert_eq!(
        response,
        txn_ok(
            3,
            true,
            vec![TxnOpResponse::Txn {
                succeeded: false,
                responses: vec![TxnOpResponse::Put { prev_kv: None }],
            }]
        )
    );
    assert_eq!(all_keys(&sm), keys(&["a", "f"]));
}

#[test]
fn read_only_txns_are_answered_without_a_log_entry() {
    let mut sm = machine();
    run(&mut sm, &[put("a", "1"), put("a", "2")]);
    let read = Txn {
        compare: vec![value_is("a", "2")],
        success: vec![
            op_get("a"),
            TxnOp::Range(RangeRequest {
                revision: 2,
                ..range_req("a", &[])
            }),
        ],
        failure: vec![],
    };
    assert!(read.is_read_only());
    assert!(!Txn {
        failure: vec![op_del("a", &[])],
        ..read.clone()
    }
    .is_read_only());
    let before = sm.snapshot().expect("snapshot");
    let response = sm.read_txn(&read).expect("read txn");
    assert_eq!(
        response,
        txn_ok(
            3,
            true,
            vec![
                got(3, vec![kv("a", "2", 2, 3, 2, 0)]),
                got(3, vec![kv("a", "1", 2, 2, 1, 0)])
            ]
        )
    );
    assert_eq!(sm.snapshot().expect("snapshot"), before);
}
