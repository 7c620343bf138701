//! Scenario tests of the state machine: every command and every error path,
//! driven through the public API over a [`MemEngine`]. Each test reads as a list of
//! commands and the answers (and state) they must produce.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::*;

mod auth;
mod handlers;
mod history;
mod registry;
mod txn;

type Machine = StateMachine<MemEngine>;

// ---- building commands ---------------------------------------------------------

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn put_args(key: &str, value: &str) -> Put {
    Put {
        key: b(key),
        value: b(value),
        lease: 0,
        prev_kv: false,
        ignore_value: false,
        ignore_lease: false,
    }
}

fn put(key: &str, value: &str) -> Command {
    Command::Put(put_args(key, value))
}

/// Options of a `put(..)`, chained: `put("a", "1").on(7).prev()`.
trait PutOpts {
    fn on(self, lease_id: i64) -> Command;
    fn prev(self) -> Command;
    fn keep_value(self) -> Command;
    fn keep_lease(self) -> Command;
}

impl PutOpts for Command {
    fn on(mut self, lease_id: i64) -> Command {
        if let Command::Put(put) = &mut self {
            put.lease = lease_id;
        }
        self
    }
    fn prev(mut self) -> Command {
        if let Command::Put(put) = &mut self {
            put.prev_kv = true;
        }
        self
    }
    fn keep_value(mut self) -> Command {
        if let Command::Put(put) = &mut self {
            put.ignore_value = true;
        }
        self
    }
    fn keep_lease(mut self) -> Command {
        if let Command::Put(put) = &mut self {
            put.ignore_lease = true;
        }
        self
    }
}

fn del(key: &str, range_end: &[u8], prev_kv: bool) -> Command {
    Command::DeleteRange {
        key: b(key),
        range_end: range_end.to_vec(),
        prev_kv,
    }
}

fn grant(id: i64, ttl: i64) -> Command {
    Command::LeaseGrant { id, ttl }
}

fn revoke(id: i64) -> Command {
    Command::LeaseRevoke {
        id,
        reason: RemovalReason::Graceful,
        now_ms: 0,
    }
}

fn expire(ids: &[i64]) -> Command {
    Command::LeaseExpire {
        ids: ids.to_vec(),
        now_ms: 0,
    }
}

// ---- expected values -------------------------------------------------------------

fn kv(key: &str, value: &str, create: i64, modr: i64, version: i64, lease: i64) -> KeyValue {
    KeyValue {
        key: b(key),
        create_revision: create,
        mod_revision: modr,
        version,
        value: b(value),
        lease,
    }
}

fn put_ok(revision: i64, prev_kv: Option<KeyValue>) -> Response {
    Response::Put { revision, prev_kv }
}

fn deleted(revision: i64, deleted: i64, prev_kvs: Vec<KeyValue>) -> Response {
    Response::DeleteRange {
        revision,
        deleted,
        prev_kvs,
    }
}

fn granted(revision: i64, id: i64, ttl: i64) -> Response {
    Response::LeaseGranted { revision, id, ttl }
}

fn revoked(revision: i64, ids: &[i64]) -> Response {
    Response::LeaseRevoked {
        revision,
        revoked: ids.to_vec(),
    }
}

fn done(revision: i64) -> Response {
    Response::Done { revision }
}

fn lease(id: i64, ttl: i64, checkpoint_ms: Option<u64>) -> Lease {
    Lease {
        id,
        ttl,
        checkpoint_ms,
    }
}

// ---- driving the machine ---------------------------------------------------------

fn machine() -> Machine {
    StateMachine::open(MemEngine::new()).expect("open")
}

fn apply(sm: &mut Machine, cmd: &Command) -> Applied {
    sm.apply(1, cmd, Vec::new()).expect("apply")
}

fn run(sm: &mut Machine, cmds: &[Command]) -> Vec<Applied> {
    cmds.iter().map(|cmd| apply(sm, cmd)).collect()
}

/// Applies each command in turn and checks its answer.
fn steps(sm: &mut Machine, steps: Vec<(Command, Response)>) {
    for (i, (cmd, want)) in steps.into_iter().enumerate() {
        let got = apply(sm, &cmd).response;
        assert_eq!(got, want, "step {i}: {cmd:?}");
    }
}

/// Applies `cmd`, which must fail with `error` and change nothing at all.
fn fails(sm: &mut Machine, cmd: Command, error: StateError) {
    let before = sm.snapshot().expect("snapshot");
    let revision = sm.revision();
    let applied = apply(sm, &cmd);
    let want = Response::Error { revision, error };
    assert_eq!(applied.response, want, "{cmd:?}");
    assert!(applied.events.is_empty(), "{cmd:?}");
    assert_eq!(sm.revision(), revision);
    assert_eq!(
        sm.snapshot().expect("snapshot"),
        before,
        "{cmd:?} changed state"
    );
}

fn range_req(key: &str, range_end: &[u8]) -> RangeRequest {
    RangeRequest {
        key: b(key),
        range_end: range_end.to_vec(),
        ..RangeRequest::default()
    }
}

fn range(sm: &Machine, req: &RangeRequest) -> RangeResult {
    sm.range(req).expect("range")
}

fn get(sm: &Machine, key: &str) -> Option<KeyValue> {
    range(sm, &range_req(key, &[])).kvs.into_iter().next()
}

fn all_keys(sm: &Machine) -> Vec<Vec<u8>> {
    let all = range(sm, &range_req("\0", &[0]));
    all.kvs.into_iter().map(|kv| kv.key).collect()
}

fn keys(list: &[&str]) -> Vec<Vec<u8>> {
    list.iter().map(|k| b(k)).collect()
}

/// Engine keys under `prefix` (to check indexes are cleaned up).
fn engine_keys(sm: &Machine, prefix: &[u8]) -> Vec<Vec<u8>> {
    let snap = sm.snapshot().expect("snapshot");
    snap.pairs()
        .map(|(k, _)| k.to_vec())
        .filter(|k| k.starts_with(prefix))
        .collect()
}

fn reasons(events: &[Event]) -> Vec<(EventKind, Vec<u8>, Option<RemovalReason>)> {
    events
        .iter()
        .map(|e| (e.kind, e.kv.key.clone(), e.reason))
        .collect()
}

// ---- put ---------------------------------------------------------------------------

#[test]
fn empty_store_is_at_revision_one() {
    let sm = machine();
    assert_eq!(sm.revision(), 1);
    let all = range(&sm, &range_req("\0", &[0]));
    assert_eq!((all.count, all.kvs.len(), all.revision), (0, 0, 1));
    assert_eq!(sm.leases().expect("leases"), Vec::new());
}

#[test]
fn put_creates_then_updates_with_versions_and_revisions() {
    let mut sm = machine();
    steps(
        &mut sm,
        vec![
            (put("a", "1"), put_ok(2, None)),
            (put("b", "x"), put_ok(3, None)),
            (put("a", "2"), put_ok(4, None)),
            (put("a", "2"), put_ok(5, None)),
        ],
    );
    assert_eq!(get(&sm, "a"), Some(kv("a", "2", 2, 5, 3, 0)));
    assert_eq!(get(&sm, "b"), Some(kv("b", "x", 3, 3, 1, 0)));
    assert_eq!(sm.revision(), 5);
}

#[test]
fn put_returns_prev_kv_only_when_asked() {
    let mut sm = machine();
    steps(
        &mut sm,
        vec![
            (put("a", "1").prev(), put_ok(2, None)),
            (put("a", "2"), put_ok(3, None)),
            (
                put("a", "3").prev(),
                put_ok(4, Some(kv("a", "2", 2, 3, 2, 0))),
            ),
        ],
    );
}

#[test]
fn put_event_carries_the_new_and_previous_value() {
    let mut sm = machine();
    apply(&mut sm, &put("a", "1"));
    let applied = apply(&mut sm, &put("a", "2"));
    let want = Event {
        kind: EventKind::Put,
        kv: kv("a", "2", 2, 3, 2, 0),
        prev_kv: Some(kv("a", "1", 2, 2, 1, 0)),
        reason: None,
    };
    assert_eq!(applied.events, vec![want.clone()]);
    assert_eq!(sm.events(3, 10).expect("events"), vec![want]);
}

#[test]
fn put_ignore_value_keeps_the_value_and_may_change_the_lease() {
    let mut sm = machine();
    steps(
        &mut sm,
        vec![
            (grant(7, 60), granted(1, 7, 60)),
            (put("a", "keep"), put_ok(2, None)),
            (put("a", "").keep_value().on(7), put_ok(3, None)),
        ],
    );
    assert_eq!(get(&sm, "a"), Some(kv("a", "keep", 2, 3, 2, 7)));
    assert_eq!(sm.lease_keys(7).expect("lease keys"), keys(&["a"]));
}

#[test]
fn put_ignore_lease_keeps_the_lease_and_changes_the_value() {
    let mut sm = machine();
    steps(
        &mut sm,
        vec![
            (grant(7, 60), granted(1, 7, 60)),
            (put("a", "1").on(7), put_ok(2, None)),
            (put("a", "2").keep_lease(), put_ok(3, None)),
            (put("a", "").keep_value().keep_lease(), put_ok(4, None)),
        ],
    );
    assert_eq!(get(&sm, "a"), Some(kv("a", "2", 2, 4, 3, 7)));
    assert_eq!(sm.lease_keys(7).expect("lease keys"), keys(&["a"]));
}

#[test]
fn put_errors_change_nothing() {
    let mut sm = machine();
    run(&mut sm, &[grant(7, 60), put("a", "1").on(7), put("b", "1")]);
    let cases = [
        (put("", "v"), StateError::EmptyKey),
        (put("missing", "v").keep_value(), StateError::KeyNotFound),
        (put("missing", "v").keep_lease(), StateError::KeyNotFound),
        (
            put("missing", "v").keep_value().keep_lease(),
            StateError::KeyNotFound,
        ),
        (put("new", "v").on(99), StateError::LeaseNotFound),
        (put("a", "v").on(99), StateError::LeaseNotFound),
        (put("b", "v").keep_value().on(99), StateError::LeaseNotFound),
    ];
    for (cmd, error) in cases {
        fails(&mut sm, cmd, error);
    }
    assert_eq!(get(&sm, "a"), Some(kv("a", "1", 2, 2, 1, 7)));
}

#[test]
fn key_moved_between_leases_survives_revoke_of_the_old_one() {
    let mut sm = machine();
    run(
        &mut sm,
        &[
            grant(1, 60),
            grant(2, 60),
            put("a", "1").on(1),
            put("b", "1").on(1),
            put("a", "2").on(2),
            put("b", "2"),
        ],
    );
    assert_eq!(sm.lease_keys(1).expect("keys"), Vec::<Vec<u8>>::new());
    assert_eq!(sm.lease_keys(2).expect("keys"), keys(&["a"]));
    let applied = apply(&mut sm, &revoke(1));
    assert_eq!(applied.response, revoked(5, &[1]));
    assert!(applied.events.is_empty());
    assert_eq!(all_keys(&sm), keys(&["a", "b"]));
    assert_eq!(get(&sm, "b").map(|kv| kv.lease), Some(0));
}

// ---- delete ------------------------------------------------------------------------

fn abcde() -> Machine {
    let mut sm = machine();
    run(
        &mut sm,
        &["a", "b", "c", "d", "e"].map(|k| put(k, &k.to_uppercase())),
    );
    assert_eq!(sm.revision(), 6);
    sm
}

#[test]
fn delete_ranges_follow_etcd_range_end_semantics() {
    // (key, range_end, keys deleted)
    let cases: [(&str, &[u8], &[&str]); 7] = [
        ("c", b"", &["c"]),
        ("b", b"d", &["b", "c"]),
        ("c", &[0], &["c", "d", "e"]),
        ("\0", &[0], &["a", "b", "c", "d", "e"]),
        ("a", b"b", &["a"]),
        ("a", b"\xff", &["a", "b", "c", "d", "e"]),
        ("bb", b"cc", &["c"]),
    ];
    for (key, end, gone) in cases {
        let mut sm = abcde();
        let applied = apply(&mut sm, &del(key, end, false));
        let want = deleted(7, gone.len() as i64, Vec::new());
        assert_eq!(applied.response, want, "{key:?}..{end:?}");
        let removed: Vec<_> = applied.events.iter().map(|e| e.kv.key.clone()).collect();
        assert_eq!(removed, keys(gone), "{key:?}..{end:?}");
        assert_eq!(sm.revision(), 7);
        assert_eq!(all_keys(&sm).len(), 5 - gone.len());
    }
}

#[test]
fn delete_prefix_removes_only_that_prefix() {
    let mut sm = machine();
    run(
        &mut sm,
        &[
            put("p/1", "x"),
            put("p/2", "y"),
            put("p0", "z"),
            put("q", "w"),
        ],
    );
    // etcd's prefix end of "p/" is "p0".
    let applied = apply(&mut sm, &del("p/", b"p0", true));
    let prev = vec![kv("p/1", "x", 2, 2, 1, 0), kv("p/2", "y", 3, 3, 1, 0)];
    assert_eq!(applied.response, deleted(6, 2, prev));
    assert_eq!(all_keys(&sm), keys(&["p0", "q"]));
}

#[test]
fn delete_with_prev_kv_events_and_tombstones() {
    let mut sm = machine();
    run(&mut sm, &[grant(5, 60), put("a", "1").on(5), put("b", "2")]);
    let applied = apply(&mut sm, &del("a", b"c", true));
    let prev = vec![kv("a", "1", 2, 2, 1, 5), kv("b", "2", 3, 3, 1, 0)];
    assert_eq!(applied.response, deleted(4, 2, prev.clone()));
    let tombstone = |key: &str| kv(key, "", 0, 4, 0, 0);
    let want: Vec<Event> = prev
        .into_iter()
        .map(|p| Event {
            kind: EventKind::Delete,
            kv: tombstone(std::str::from_utf8(&p.key).expect("utf8")),
            prev_kv: Some(p),
            reason: Some(RemovalReason::Graceful),
        })
        .collect();
    assert_eq!(applied.events, want);
    assert_eq!(sm.events(4, 10).expect("events"), want);
    assert_eq!(sm.lease_keys(5).expect("keys"), Vec::<Vec<u8>>::new());
    assert_eq!(engine_keys(&sm, b"a/"), Vec::<Vec<u8>>::new());
}

#[test]
fn delete_of_nothing_keeps_the_revision() {
    let mut sm = abcde();
    steps(
        &mut sm,
        vec![
            (del("zz", b"", true), deleted(6, 0, Vec::new())),
            (del("c", b"c", true), deleted(6, 0, Vec::new())),
            (del("d", b"b", true), deleted(6, 0, Vec::new())),
            (del("f", &[0], true), deleted(6, 0, Vec::new())),
        ],
    );
    assert_eq!(all_keys(&sm).len(), 5);
    assert_eq!(sm.events(7, 10).expect("events"), Vec::new());
}

#[test]
fn delete_of_empty_key_is_an_error() {
    let mut sm = abcde();
    fails(&mut sm, del("", &[0], false), StateError::EmptyKey);
}

// ---- range -------------------------------------------------------------------------

#[test]
fn range_reads() {
    let sm = abcde();
    let all = ["A", "B", "C", "D", "E"];
    // (request, values returned, count, more)
    let limit = |mut r: RangeRequest, n| {
        r.limit = n;
        r
    };
    let cases: Vec<(RangeRequest, Vec<&str>, i64, bool)> = vec![
        (range_req("c", b""), vec!["C"], 1, false),
        (range_req("cc", b""), vec![], 0, false),
        (range_req("\0", &[0]), all.to_vec(), 5, false),
        (range_req("b", &[0]), all[1..].to_vec(), 4, false),
        (range_req("b", b"d"), vec!["B", "C"], 2, false),
        (range_req("d", b"b"), vec![], 0, false),
        (range_req("d", b"d"), vec![], 0, false),
        (limit(range_req("\0", &[0]), 2), vec!["A", "B"], 5, true),
        (limit(range_req("\0", &[0]), 5), all.to_vec(), 5, false),
        (limit(range_req("\0", &[0]), 9), all.to_vec(), 5, false),
        (limit(range_req("c", &[0]), 1), vec!["C"], 3, true),
    ];
    for (req, values, count, more) in cases {
        let got = range(&sm, &req);
        let got_values: Vec<_> = got.kvs.iter().map(|kv| kv.value.clone()).collect();
        assert_eq!(got_values, keys(&values), "{req:?}");
        assert_eq!(
            (got.count, got.more, got.revision),
            (count, more, 6),
            "{req:?}"
        );
    }
}

#[test]
fn range_keys_only_and_count_only() {
    let sm = abcde();
    let keys_only = RangeRequest {
        keys_only: true,
        limit: 2,
        ..range_req("\0", &[0])
    };
    let got = range(&sm, &keys_only);
    assert_eq!(
        got.kvs,
        vec![kv("a", "", 2, 2, 1, 0), kv("b", "", 3, 3, 1, 0)]
    );
    assert_eq!((got.count, got.more), (5, true));

    let count_only = RangeRequest {
        count_only: true,
        ..range_req("b", b"e")
    };
    let got = range(&sm, &count_only);
    assert_eq!((got.kvs.len(), got.count, got.more), (0, 3, false));
}

#[test]
fn range_sees_only_user_keys() {
    let mut sm = machine();
    run(&mut sm, &[grant(3, 10), put("k", "v").on(3)]);
    sm.apply(1, &Command::Noop, vec![(b("applied"), b("9"))])
        .expect("apply");
    assert_eq!(all_keys(&sm), keys(&["k"]));
}

// ---- leases ------------------------------------------------------------------------

#[test]
fn lease_grant_with_explicit_ids() {
    let mut sm = machine();
    steps(
        &mut sm,
        vec![
            (grant(20, 60), granted(1, 20, 60)),
            (grant(-3, 5), granted(1, -3, 5)),
            (grant(4, MAX_LEASE_TTL), granted(1, 4, MAX_LEASE_TTL)),
        ],
    );
    let want = vec![
        lease(-3, 5, None),
        lease(4, MAX_LEASE_TTL, None),
        lease(20, 60, None),
    ];
    assert_eq!(sm.leases().expect("leases"), want);
    assert_eq!(sm.lease(20).expect("lease"), Some(lease(20, 60, None)));
    assert_eq!(sm.lease(21).expect("lease"), None);
    assert_eq!(sm.revision(), 1);
}

#[test]
fn lease_grant_errors_change_nothing() {
    let mut sm = machine();
    apply(&mut sm, &grant(20, 60));
    fails(&mut sm, grant(20, 5), StateError::LeaseExists);
    let too_long = MAX_LEASE_TTL + 1;
    fails(
        &mut sm,
        grant(21, too_long),
        StateError::LeaseTtlTooLarge(too_long),
    );
    fails(
        &mut sm,
        grant(0, too_long),
        StateError::LeaseTtlTooLarge(too_long),
    );
}

fn granted_id(applied: &Applied) -> i64 {
    match applied.response {
        Response::LeaseGranted { id, .. } => id,
        ref other => panic!("not a grant: {other:?}"),
    }
}

#[test]
fn generated_lease_ids_are_deterministic_positive_and_distinct() {
    let script = [grant(0, 10), put("x", "1"), grant(0, 10), grant(0, 10)];
    let mut one = machine();
    let mut two = machine();
    let ids_one: Vec<i64> = run(&mut one, &script)
        .iter()
        .filter(|a| matches!(a.response, Response::LeaseGranted { .. }))
        .map(granted_id)
        .collect();
    let ids_two: Vec<i64> = run(&mut two, &script)
        .iter()
        .filter(|a| matches!(a.response, Response::LeaseGranted { .. }))
        .map(granted_id)
        .collect();
    assert_eq!(ids_one, ids_two);
    assert!(ids_one.iter().all(|&id| id > 0));
    let mut unique = ids_one.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 3);
}

#[test]
fn generated_lease_id_skips_ids_in_use() {
    let first = granted_id(&apply(&mut machine(), &grant(0, 10)));
    let mut sm = machine();
    apply(&mut sm, &grant(first, 10));
    let next = granted_id(&apply(&mut sm, &grant(0, 10)));
    assert_ne!(next, first);
    assert_eq!(sm.leases().expect("leases").len(), 2);
}

#[test]
fn revoke_deletes_keys_in_one_revision() {
    let mut sm = machine();
    run(
        &mut sm,
        &[
            grant(9, 60),
            put("a", "1").on(9),
            put("b", "2"),
            put("c", "3").on(9),
        ],
    );
    let applied = apply(&mut sm, &revoke(9));
    assert_eq!(applied.response, revoked(5, &[9]));
    let graceful = Some(RemovalReason::Graceful);
    assert_eq!(
        reasons(&applied.events),
        vec![
            (EventKind::Delete, b("a"), graceful),
            (EventKind::Delete, b("c"), graceful),
        ]
    );
    assert!(applied.events.iter().all(|e| e.kv.mod_revision == 5));
    assert_eq!(sm.events(5, 10).expect("events"), applied.events);
    assert_eq!(all_keys(&sm), keys(&["b"]));
    assert_eq!(sm.lease(9).expect("lease"), None);
    assert_eq!(engine_keys(&sm, b"a/"), Vec::<Vec<u8>>::new());
    assert_eq!(engine_keys(&sm, b"l/"), Vec::<Vec<u8>>::new());
}

#[test]
fn revoke_of_a_lease_without_keys_keeps_the_revision() {
    let mut sm = machine();
    run(&mut sm, &[put("a", "1"), grant(9, 60)]);
    steps(&mut sm, vec![(revoke(9), revoked(2, &[9]))]);
    assert_eq!(sm.leases().expect("leases"), Vec::new());
}

#[test]
fn revoke_keeps_the_proposed_reason() {
    let mut sm = machine();
    run(&mut sm, &[grant(9, 60), put("a", "1").on(9)]);
    let cmd = Command::LeaseRevoke {
        id: 9,
        reason: RemovalReason::Forced,
        now_ms: 0,
    };
    let applied = apply(&mut sm, &cmd);
    assert_eq!(applied.events[0].reason, Some(RemovalReason::Forced));
}

#[test]
fn revoke_of_unknown_lease_is_an_error() {
    let mut sm = machine();
    run(&mut sm, &[grant(9, 60), put("a", "1").on(9)]);
    fails(&mut sm, revoke(8), StateError::LeaseNotFound);
    apply(&mut sm, &revoke(9));
    fails(&mut sm, revoke(9), StateError::LeaseNotFound);
}

#[test]
fn expire_removes_a_batch_in_one_revision_skipping_missing_ids() {
    let mut sm = machine();
    run(
        &mut sm,
        &[
            grant(1, 10),
            grant(2, 10),
            grant(3, 10),
            grant(4, 10),
            put("x", "1").on(2),
            put("y", "1").on(1),
            put("z", "1").on(2),
            put("keep", "1").on(4),
        ],
    );
    let applied = apply(&mut sm, &expire(&[1, 99, 2, 3, 1]));
    assert_eq!(applied.response, revoked(6, &[1, 2, 3]));
    let expired = Some(RemovalReason::Expired);
    assert_eq!(
        reasons(&applied.events),
        vec![
            (EventKind::Delete, b("y"), expired),
            (EventKind::Delete, b("x"), expired),
            (EventKind::Delete, b("z"), expired),
        ]
    );
    assert_eq!(sm.events(6, 10).expect("events"), applied.events);
    assert_eq!(all_keys(&sm), keys(&["keep"]));
    assert_eq!(sm.leases().expect("leases"), vec![lease(4, 10, None)]);
}

#[test]
fn expire_of_keyless_or_missing_leases_keeps_the_revision() {
    let mut sm = machine();
    run(&mut sm, &[put("a", "1"), grant(1, 10)]);
    steps(
        &mut sm,
        vec![
            (expire(&[1, 2]), revoked(2, &[1])),
            (expire(&[1, 2]), revoked(2, &[])),
            (expire(&[]), revoked(2, &[])),
        ],
    );
}

/// A lessor decision taken while leader of one term, appended by the leader of
/// a later term (the node lost and won leadership while it sat in a queue):
/// another leader's clocks ran in between, so it must change nothing.
#[test]
fn in_term_commands_apply_only_in_the_term_they_were_decided_in() {
    let mut sm = machine();
    run(&mut sm, &[grant(1, 10), put("a", "1").on(1)]);
    let in_term = |term, command| Command::InTerm {
        term,
        command: Box::new(command),
    };
    let stale = sm
        .apply(4, &in_term(2, expire(&[1])), Vec::new())
        .expect("apply");
    assert_eq!(
        stale.response,
        Response::Error {
            revision: 2,
            error: StateError::StaleTerm {
                decided: 2,
                appended: 4
            }
        }
    );
    assert!(stale.events.is_empty());
    assert_eq!(all_keys(&sm), keys(&["a"]));
    let batch = Command::Batch(vec![
        in_term(4, Command::Noop),
        in_term(4, Command::Batch(vec![])),
    ]);
    let nested = sm.apply(4, &batch, Vec::new()).expect("apply");
    assert_eq!(
        nested.response,
        Response::Batch(vec![
            Response::Done { revision: 2 },
            Response::Error {
                revision: 2,
                error: StateError::NestedBatch
            }
        ])
    );
    let current = sm
        .apply(4, &in_term(4, expire(&[1])), Vec::new())
        .expect("apply");
    assert_eq!(current.response, revoked(3, &[1]));
    assert_eq!(all_keys(&sm), keys(&[]));
}

#[test]
fn checkpoint_and_renewed_set_and_clear_the_remaining_ttl() {
    let mut sm = machine();
    run(&mut sm, &[put("a", "1"), grant(1, 600), grant(2, 600)]);
    let checkpoint = Command::LeaseCheckpoint {
        remaining_ms: vec![(1, 5_000), (2, 7_000), (99, 1), (2, 6_000)],
    };
    steps(&mut sm, vec![(checkpoint, done(2))]);
    assert_eq!(
        sm.leases().expect("leases"),
        vec![lease(1, 600, Some(5_000)), lease(2, 600, Some(6_000))]
    );
    let renewed = Command::LeaseRenewed { ids: vec![2, 99] };
    steps(&mut sm, vec![(renewed, done(2))]);
    assert_eq!(
        sm.leases().expect("leases"),
        vec![lease(1, 600, Some(5_000)), lease(2, 600, None)]
    );
}

#[test]
fn noop_changes_nothing() {
    let mut sm = abcde();
    let before = sm.snapshot().expect("snapshot");
    steps(&mut sm, vec![(Command::Noop, done(6))]);
    assert_eq!(sm.snapshot().expect("snapshot"), before);
}

#[test]
fn published_member_attributes_are_kept_by_id_and_replaced() {
    let mut sm = abcde();
    let attrs = |id: u64, url: &str| crate::MemberAttrs {
        id,
        name: format!("n{id}"),
        client_urls: vec![url.to_string()],
        allow_pipe_handlers: false,
    };
    steps(
        &mut sm,
        vec![
            (Command::PublishMember(attrs(2, "http://b")), done(6)),
            (Command::PublishMember(attrs(1, "http://a")), done(6)),
            (Command::PublishMember(attrs(2, "http://c")), done(6)),
        ],
    );
    assert_eq!(
        sm.members().expect("members"),
        vec![attrs(1, "http://a"), attrs(2, "http://c")]
    );
}

// ---- metadata, atomicity, storage failures -----------------------------------------

/// A [`MemEngine`] that counts batches and can be told to fail writes.
#[derive(Default)]
struct Watched {
    inner: MemEngine,
    writes: AtomicUsize,
    fail_writes: std::sync::atomic::AtomicBool,
}

impl Engine for Watched {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        self.inner.get(key)
    }
    fn scan(&self, start: &[u8], end: Option<&[u8]>) -> Box<dyn Iterator<Item = ScanItem> + '_> {
        self.inner.scan(start, end)
    }
    fn write(&self, batch: Batch) -> Result<(), EngineError> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(EngineError("disk on fire".into()));
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.write(batch)
    }
    fn snapshot(&self) -> Result<SnapshotData, EngineError> {
        self.inner.snapshot()
    }
    fn install(&self, snap: SnapshotData) -> Result<(), EngineError> {
        self.inner.install(snap)
    }
}

fn meta(name: &str, value: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    vec![(b(name), b(value))]
}

#[test]
fn meta_is_written_in_the_same_batch_as_the_effects() {
    let mut sm = StateMachine::open(Watched::default()).expect("open");
    let applied = sm
        .apply(1, &put("a", "1"), meta("applied", "1"))
        .expect("apply");
    assert_eq!(applied.response, put_ok(2, None));
    assert_eq!(sm.engine().writes.load(Ordering::SeqCst), 1);
    assert_eq!(sm.meta(b"applied").expect("meta"), Some(b("1")));
    assert_eq!(sm.meta(b"other").expect("meta"), None);
}

#[test]
fn meta_is_written_also_on_an_error_response() {
    let mut sm = machine();
    let applied = sm
        .apply(1, &revoke(5), meta("applied", "7"))
        .expect("apply");
    assert_eq!(
        applied.response,
        Response::Error {
            revision: 1,
            error: StateError::LeaseNotFound
        }
    );
    assert_eq!(sm.meta(b"applied").expect("meta"), Some(b("7")));
    let snap = sm.snapshot().expect("snapshot");
    let pairs: Vec<_> = snap
        .pairs()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    assert_eq!(pairs, vec![(b("m/applied"), b("7"))]);
}

#[test]
fn meta_names_cannot_clobber_the_revision() {
    let mut sm = machine();
    let evil = vec![
        (b("revision"), vec![0xff; 8]),
        (b("_rev"), vec![0xff; 8]),
        (b("lease_seq"), vec![0xff; 8]),
    ];
    sm.apply(1, &put("a", "1"), evil).expect("apply");
    let reopened = StateMachine::open(sm.into_engine()).expect("open");
    assert_eq!(reopened.revision(), 2);
}

#[test]
fn reopen_restores_revision_and_lease_counter() {
    let script = [grant(0, 10), put("a", "1"), del("a", b"", false)];
    let mut sm = machine();
    run(&mut sm, &script);
    let mut reopened = StateMachine::open(sm.into_engine()).expect("open");
    assert_eq!(reopened.revision(), 3);
    let mut straight = machine();
    run(&mut straight, &script);
    let a = granted_id(&apply(&mut reopened, &grant(0, 10)));
    let b = granted_id(&apply(&mut straight, &grant(0, 10)));
    assert_eq!(a, b);
}

#[test]
fn storage_failure_is_an_err_and_leaves_the_machine_unchanged() {
    let mut sm = StateMachine::open(Watched::default()).expect("open");
    sm.apply(1, &put("a", "1"), Vec::new()).expect("apply");
    sm.engine().fail_writes.store(true, Ordering::SeqCst);
    assert!(sm.apply(1, &put("a", "2"), meta("applied", "2")).is_err());
    assert_eq!(sm.revision(), 2);
    sm.engine().fail_writes.store(false, Ordering::SeqCst);
    assert_eq!(sm.meta(b"applied").expect("meta"), None);
    let applied = sm.apply(1, &put("a", "2"), Vec::new()).expect("apply");
    assert_eq!(applied.response, put_ok(3, None));
}

#[test]
fn corrupt_revision_is_a_storage_error() {
    let engine = MemEngine::new();
    let mut batch = Batch::default();
    batch.put(b("s/revision"), b("bad"));
    engine.write(batch).expect("write");
    assert!(StateMachine::open(engine).is_err());
}

// ---- snapshots and determinism -----------------------------------------------------

/// A history touching every command kind.
fn busy_script() -> Vec<Command> {
    vec![
        grant(0, 30),
        grant(100, 600),
        grant(200, 5),
        put("svc/a", "1").on(100),
        put("svc/b", "1").on(200),
        put("plain", "x"),
        put("svc/a", "2").keep_lease(),
        put("plain", "").keep_value().on(200),
        Command::LeaseCheckpoint {
            remaining_ms: vec![(100, 9_000)],
        },
        del("none", b"", true),
        put("", "bad"),
        expire(&[200, 999]),
        Command::LeaseRenewed { ids: vec![100] },
        grant(0, 30),
        put("z", "1"),
        del("svc/", b"svc0", true),
        revoke(100),
        Command::Noop,
    ]
}

#[test]
fn snapshot_installs_onto_a_fresh_engine_identically() {
    let mut source = machine();
    run(&mut source, &busy_script());
    source
        .apply(1, &Command::Noop, meta("applied", "42"))
        .expect("apply");
    let snap = source.snapshot().expect("snapshot");
    let shipped = SnapshotData::decode(&snap.encode()).expect("decode");

    let mut target = machine();
    target.install(shipped).expect("install");
    assert_eq!(target.snapshot().expect("snapshot"), snap);
    assert_eq!(target.revision(), source.revision());
    assert_eq!(target.meta(b"applied").expect("meta"), Some(b("42")));
    // Both continue identically afterwards.
    let next = [grant(0, 1), put("after", "1")];
    assert_eq!(run(&mut target, &next), run(&mut source, &next));
}

#[test]
fn install_replaces_existing_content() {
    let mut target = abcde();
    run(&mut target, &[grant(5, 10)]);
    let mut source = machine();
    run(&mut source, &[put("only", "1")]);
    target
        .install(source.snapshot().expect("snapshot"))
        .expect("install");
    assert_eq!(
        target.snapshot().expect("snapshot"),
        source.snapshot().expect("snapshot")
    );
    assert_eq!(all_keys(&target), keys(&["only"]));
    assert_eq!(target.revision(), 2);

    target.install(SnapshotData::default()).expect("install");
    assert_eq!(target.revision(), 1);
    assert_eq!(
        target.snapshot().expect("snapshot"),
        SnapshotData::default()
    );
}

#[test]
fn same_commands_give_identical_state_and_answers() {
    let mut one = machine();
    let mut two = machine();
    let answers_one = run(&mut one, &busy_script());
    let answers_two = run(&mut two, &busy_script());
    assert_eq!(answers_one, answers_two);
    assert_eq!(
        one.snapshot().expect("snapshot"),
        two.snapshot().expect("snapshot")
    );
    assert_eq!(one.revision(), two.revision());
}

#[test]
fn history_keeps_every_event_in_revision_order() {
    let mut sm = machine();
    let applied = run(&mut sm, &busy_script());
    let all: Vec<Event> = applied.into_iter().flat_map(|a| a.events).collect();
    assert_eq!(sm.events(0, usize::MAX).expect("events"), all);
    let revisions: Vec<i64> = all.iter().map(|e| e.kv.mod_revision).collect();
    assert!(revisions.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(revisions.last().copied(), Some(sm.revision()));
    assert_eq!(sm.events(0, 2).expect("events"), all[..2].to_vec());
}

// ---- batches: one log entry, many commands ----------------------------------------

/// The commands of a mixed batch: grants, puts on leases, an error in the middle
/// (unknown lease) and after a write (put on a key, then the same key again),
/// deletes and a revoke.
fn mixed_commands() -> Vec<Command> {
    vec![
        grant(7, 60),
        put("a", "1").on(7),
        put("b", "2").on(99), // unknown lease: fails alone
        put("a", "3").prev(),
        put("z", "z").keep_value(), // missing key: fails alone
        del("a", b"", true),
        put("c", "4").on(7),
        revoke(7),
        Command::Noop,
    ]
}

#[test]
fn a_batch_is_the_same_as_its_commands_one_by_one() {
    let mut one_by_one = machine();
    let single: Vec<Applied> = run(&mut one_by_one, &mixed_commands());
    let mut batched = machine();
    let applied = apply(&mut batched, &Command::Batch(mixed_commands()));

    let expected: Vec<Response> = single.iter().map(|a| a.response.clone()).collect();
    assert_eq!(applied.response, Response::Batch(expected));
    let events: Vec<Event> = single.into_iter().flat_map(|a| a.events).collect();
    assert_eq!(applied.events, events);
    assert_eq!(batched.revision(), one_by_one.revision());
    assert_eq!(
        batched.snapshot().expect("snapshot"),
        one_by_one.snapshot().expect("snapshot")
    );
}

#[test]
fn a_failing_command_in_a_batch_changes_nothing_and_spares_the_others() {
    let mut sm = machine();
    let applied = apply(
        &mut sm,
        &Command::Batch(vec![put("x", "1"), put("y", "2").on(5), put("z", "3")]),
    );
    assert_eq!(
        applied.response,
        Response::Batch(vec![
            put_ok(2, None),
            Response::Error {
                revision: 2,
                error: StateError::LeaseNotFound
            },
            put_ok(3, None),
        ])
    );
    assert_eq!(all_keys(&sm), keys(&["x", "z"]));
    assert_eq!(sm.revision(), 3);
}

#[test]
fn a_batch_inside_a_batch_is_refused_alone() {
    let mut sm = machine();
    let applied = apply(
        &mut sm,
        &Command::Batch(vec![Command::Batch(vec![put("x", "1")]), put("y", "2")]),
    );
    assert_eq!(
        applied.response,
        Response::Batch(vec![
            Response::Error {
                revision: 1,
                error: StateError::NestedBatch
            },
            put_ok(2, None),
        ])
    );
    assert_eq!(all_keys(&sm), keys(&["y"]));
}
