//! Scenarios of the revision history: reads at past revisions, event replay with
//! `prev_kv` and removal reasons, and compaction.

use super::*;

/// a=1 @2, b=1 @3, a=2 @4, delete a @5, a=3 @6.
fn history() -> Machine {
    let mut sm = machine();
    run(
        &mut sm,
        &[
            put("a", "1"),
            put("b", "1"),
            put("a", "2"),
            del("a", &[], false),
            put("a", "3"),
        ],
    );
    assert_eq!(sm.revision(), 6);
    sm
}

fn at(key: &str, range_end: &[u8], revision: i64) -> RangeRequest {
    RangeRequest {
        revision,
        ..range_req(key, range_end)
    }
}

fn read_at(sm: &Machine, revision: i64) -> Vec<KeyValue> {
    let result = range(sm, &at("\0", &[0], revision));
    assert_eq!(
        result.revision,
        sm.revision(),
        "headers carry the current revision"
    );
    result.kvs
}

fn read_fails(sm: &Machine, req: &RangeRequest, error: StateError) {
    match sm.range(req) {
        Err(Fail::State(got)) => assert_eq!(got, error, "{req:?}"),
        other => panic!("{req:?}: expected {error:?}, got {other:?}"),
    }
}

#[test]
fn reads_at_each_past_revision_see_the_keyspace_as_it_was() {
    let sm = history();
    assert_eq!(read_at(&sm, 1), vec![]);
    assert_eq!(read_at(&sm, 2), vec![kv("a", "1", 2, 2, 1, 0)]);
    assert_eq!(
        read_at(&sm, 3),
        vec![kv("a", "1", 2, 2, 1, 0), kv("b", "1", 3, 3, 1, 0)]
    );
    assert_eq!(
        read_at(&sm, 4),
        vec![kv("a", "2", 2, 4, 2, 0), kv("b", "1", 3, 3, 1, 0)]
    );
    assert_eq!(read_at(&sm, 5), vec![kv("b", "1", 3, 3, 1, 0)]);
    assert_eq!(
        read_at(&sm, 6),
        vec![kv("a", "3", 6, 6, 1, 0), kv("b", "1", 3, 3, 1, 0)]
    );
    assert_eq!(read_at(&sm, 0), read_at(&sm, 6));
}

#[test]
fn past_reads_honour_single_keys_ranges_limits_and_counts() {
    let sm = history();
    assert_eq!(
        range(&sm, &at("a", &[], 4)).kvs,
        vec![kv("a", "2", 2, 4, 2, 0)]
    );
    assert_eq!(range(&sm, &at("a", &[], 5)).kvs, vec![]);
    assert_eq!(range(&sm, &at("b", b"c", 2)).kvs, vec![]);
    assert_eq!(
        range(&sm, &at("b", b"a", 4)).kvs,
        vec![],
        "range_end before key"
    );
    let limited = range(
        &sm,
        &RangeRequest {
            limit: 1,
            ..at("a", b"z", 4)
        },
    );
    assert_eq!(
        (limited.kvs.len(), limited.count, limited.more),
        (1, 2, true)
    );
    let counted = range(
        &sm,
        &RangeRequest {
            count_only: true,
            ..at("a", b"z", 3)
        },
    );
    assert_eq!((counted.kvs.len(), counted.count), (0, 2));
    let keys_only = range(
        &sm,
        &RangeRequest {
            keys_only: true,
            ..at("a", &[], 2)
        },
    );
    assert_eq!(keys_only.kvs, vec![kv("a", "", 2, 2, 1, 0)]);
}

#[test]
fn keys_with_zero_bytes_and_prefixes_keep_their_own_history() {
    let mut sm = machine();
    run(
        &mut sm,
        &[
            put("k", "1"),
            put("k\0", "2"),
            put("k\0\0", "3"),
            put("kk", "4"),
        ],
    );
    run(&mut sm, &[del("k", &[0], false)]);
    let names = |kvs: Vec<KeyValue>| kvs.into_iter().map(|kv| kv.key).collect::<Vec<_>>();
    assert_eq!(names(read_at(&sm, 5)), keys(&["k", "k\0", "k\0\0", "kk"]));
    assert_eq!(names(range(&sm, &at("k\0", &[], 5)).kvs), keys(&["k\0"]));
    assert_eq!(
        names(range(&sm, &at("k", b"k\0\0", 5)).kvs),
        keys(&["k", "k\0"])
    );
    assert_eq!(read_at(&sm, 6), vec![]);
}

#[test]
fn a_future_revision_is_refused() {
    let sm = history();
    read_fails(&sm, &at("a", &[], 7), StateError::FutureRevision);
}

#[test]
fn events_replay_in_order_with_prev_kv_and_reasons() {
    let sm = history();
    let events = sm.events(2, usize::MAX).expect("events");
    let summary: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.kind,
                e.kv.key.clone(),
                e.kv.mod_revision,
                e.prev_kv.clone(),
                e.reason,
            )
        })
        .collect();
    use EventKind::{Delete, Put};
    assert_eq!(
        summary,
        vec![
            (Put, b("a"), 2, None, None),
            (Put, b("b"), 3, None, None),
            (Put, b("a"), 4, Some(kv("a", "1", 2, 2, 1, 0)), None),
            (
                Delete,
                b("a"),
                5,
                Some(kv("a", "2", 2, 4, 2, 0)),
                Some(RemovalReason::Graceful)
            ),
            (Put, b("a"), 6, None, None),
        ]
    );
    assert_eq!(sm.events(4, 2).expect("events"), events[2..4].to_vec());
}

#[test]
fn expiry_is_replayed_as_deletes_of_one_revision_with_reason_expired() {
    let mut sm = machine();
    run(
        &mut sm,
        &[grant(7, 60), put("x", "1").on(7), put("y", "2").on(7)],
    );
    let expired = apply(&mut sm, &expire(&[7]));
    let replayed = sm.events(sm.revision(), usize::MAX).expect("events");
    assert_eq!(replayed, expired.events);
    assert_eq!(
        reasons(&replayed),
        vec![
            (EventKind::Delete, b("x"), Some(RemovalReason::Expired)),
            (EventKind::Delete, b("y"), Some(RemovalReason::Expired)),
        ]
    );
    assert_eq!(replayed[0].prev_kv, Some(kv("x", "1", 2, 2, 1, 7)));
    // A page never splits a revision: a limit of one still brings both deletes.
    assert_eq!(sm.events(sm.revision(), 1).expect("events"), expired.events);
    assert_eq!(sm.events(2, 1).expect("events").len(), 1);
}

#[test]
fn compaction_keeps_reads_and_events_from_its_revision_on() {
    let mut sm = history();
    let before: Vec<_> = (4..=6).map(|r| read_at(&sm, r)).collect();
    let events_before = sm.events(4, usize::MAX).expect("events");
    steps(&mut sm, vec![(Command::Compact { revision: 4 }, done(6))]);
    assert_eq!(sm.compacted().expect("compacted"), 4);
    let after: Vec<_> = (4..=6).map(|r| read_at(&sm, r)).collect();
    assert_eq!(after, before);
    // Events at the compaction revision lose a `prev_kv` compacted away (as in
    // etcd); later ones are untouched.
    let events_after = sm.events(4, usize::MAX).expect("events");
    assert_eq!(events_after[1..], events_before[1..]);
    assert_eq!(
        events_after[0],
        Event {
            prev_kv: None,
            ..events_before[0].clone()
        }
    );
    read_fails(
        &sm,
        &at("a", &[], 3),
        StateError::Compacted { compacted: 4 },
    );
    assert!(matches!(
        sm.events(3, 1),
        Err(Fail::State(StateError::Compacted { compacted: 4 }))
    ));
    // Of a's versions at or below 4 only a@4 is left; b@3 is b's newest.
    let versions = engine_keys(&sm, b"h/");
    assert_eq!(versions.len(), 4, "a@4, a@5 (tombstone), a@6, b@3");
    assert_eq!(engine_keys(&sm, b"e/").len(), 3, "events at 4, 5, 6");
}

#[test]
fn compaction_drops_tombstones_below_it_and_keeps_one_at_it() {
    let mut sm = history();
    apply(&mut sm, &Command::Compact { revision: 5 });
    // The delete at 5 is still replayable (its previous version is gone, as in etcd).
    let events = sm.events(5, usize::MAX).expect("events");
    assert_eq!(events.len(), 2);
    assert_eq!(
        (events[0].kind, events[0].prev_kv.clone()),
        (EventKind::Delete, None)
    );
    apply(&mut sm, &Command::Compact { revision: 6 });
    let left: Vec<_> = engine_keys(&sm, b"h/")
        .iter()
        .map(|k| crate::layout::parse_history_key(k).expect("history key"))
        .collect();
    assert_eq!(left, vec![(b("a"), 6), (b("b"), 3)]);
    assert_eq!(
        read_at(&sm, 6),
        vec![kv("a", "3", 6, 6, 1, 0), kv("b", "1", 3, 3, 1, 0)]
    );
}

#[test]
fn compaction_errors_change_nothing() {
    let mut sm = history();
    fails(
        &mut sm,
        Command::Compact { revision: 7 },
        StateError::FutureRevision,
    );
    apply(&mut sm, &Command::Compact { revision: 3 });
    fails(
        &mut sm,
        Command::Compact { revision: 3 },
        StateError::Compacted { compacted: 3 },
    );
    fails(
        &mut sm,
        Command::Compact { revision: 2 },
        StateError::Compacted { compacted: 3 },
    );
}

#[test]
fn history_survives_snapshot_and_install() {
    let mut sm = history();
    apply(&mut sm, &Command::Compact { revision: 3 });
    let mut copy = machine();
    copy.install(sm.snapshot().expect("snapshot"))
        .expect("install");
    for r in 3..=6 {
        assert_eq!(read_at(&copy, r), read_at(&sm, r));
    }
    assert_eq!(copy.compacted().expect("compacted"), 3);
    assert_eq!(
        copy.events(3, usize::MAX).expect("events"),
        sm.events(3, usize::MAX).expect("events")
    );
}
