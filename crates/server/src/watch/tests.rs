//! Scenarios of the watch hub over a memory engine: commands are applied to a
//! state machine and their events published, as the apply observer does, and the
//! hub's queue is read as a stream would read it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use roster_state::{Command, DynEngine, MemEngine, Put, StateMachine};
use tokio::sync::mpsc;

use super::*;

struct Fixture {
    hub: Arc<WatchHub>,
    state: roster_raft::SharedState,
}

impl Fixture {
    fn new() -> Fixture {
        let engine: DynEngine = Box::new(MemEngine::new());
        let state = Arc::new(RwLock::new(StateMachine::open(engine).expect("open")));
        let hub = WatchHub::new();
        hub.attach_state(state.clone());
        Fixture { hub, state }
    }

    /// Applies a put and publishes its events; returns its revision.
    fn put(&self, key: &str, value: &str) -> i64 {
        let command = Command::Put(Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
            prev_kv: false,
            ignore_value: false,
            ignore_lease: false,
        });
        let applied = self
            .state
            .write()
            .expect("lock")
            .apply(1, &command, Vec::new())
            .expect("apply");
        self.hub.publish(&applied.events);
        applied.response.revision()
    }

    async fn watch(
        &self,
        id: i64,
        prefix: &str,
        start: i64,
        queue: usize,
    ) -> mpsc::Receiver<Outbound> {
        let (out, rx) = mpsc::channel(queue);
        let selector = prefix_selector(prefix);
        self.hub
            .add((1, id), selector, WatchOptions::default(), start, &out)
            .await;
        rx
    }
}

/// Every key under `prefix`, puts and deletes.
fn prefix_selector(prefix: &str) -> Selector {
    Selector {
        key: prefix.into(),
        range_end: roster_state::prefix_range_end(prefix.as_bytes()),
        no_put: false,
        no_delete: false,
    }
}

/// Revisions of the events in the next messages, until `n` events have come.
async fn revisions(rx: &mut mpsc::Receiver<Outbound>, n: usize) -> Vec<i64> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(Outbound::Events { events, .. })) => {
                out.extend(events.iter().map(|e| e.kv.mod_revision))
            }
            Ok(Some(Outbound::Created { .. })) => {}
            other => panic!("expected events, got {other:?}"),
        }
    }
    out
}

#[tokio::test]
async fn created_comes_first_then_live_events_of_the_selection_only() {
    let f = Fixture::new();
    f.put("a/0", "before");
    let mut rx = f.watch(0, "a/", 0, 16).await;
    match rx.recv().await {
        Some(Outbound::Created {
            watch_id: 0,
            revision: 2,
        }) => {}
        other => panic!("{other:?}"),
    }
    let r1 = f.put("a/1", "v");
    f.put("b/1", "v");
    let r3 = f.put("a/2", "v");
    assert_eq!(revisions(&mut rx, 2).await, vec![r1, r3]);
}

#[tokio::test]
async fn a_past_start_replays_the_history_then_continues_live() {
    let f = Fixture::new();
    let first = f.put("k/1", "v");
    for n in 2..=2500 {
        f.put(&format!("k/{n}"), "v");
    }
    let mut rx = f.watch(3, "k/", first, 16).await;
    let live = tokio::spawn({
        let hub = f.hub.clone();
        let state = f.state.clone();
        async move {
            let f = Fixture { hub, state };
            let mut last = None;
            for n in 0..100 {
                last = Some(f.put(&format!("k/live{n}"), "v"));
            }
            last
        }
    });
    let last = live.await.expect("writer").expect("writes");
    let got = revisions(&mut rx, (last - first + 1) as usize).await;
    assert_eq!(
        got,
        (first..=last).collect::<Vec<_>>(),
        "every revision once, in order"
    );
}

#[tokio::test]
async fn a_watcher_whose_queue_fills_catches_up_without_loss_or_duplicates() {
    let f = Fixture::new();
    // A queue of two messages and nobody reading: the third publish demotes it.
    let mut rx = f.watch(9, "s/", 0, 2).await;
    let first = f.put("s/0", "v");
    let mut last = first;
    for n in 1..500 {
        last = f.put(&format!("s/{}", n % 7), "v");
    }
    let got = revisions(&mut rx, 500).await;
    assert_eq!(got, (first..=last).collect::<Vec<_>>());
    // Back among the synced: a new write is delivered live.
    let next = f.put("s/x", "v");
    assert_eq!(revisions(&mut rx, 1).await, vec![next]);
}

#[tokio::test]
async fn a_compacted_start_is_answered_with_the_compact_revision() {
    let f = Fixture::new();
    let r1 = f.put("c/1", "v");
    let r2 = f.put("c/1", "w");
    let compact = Command::Compact { revision: r2 };
    f.state
        .write()
        .expect("lock")
        .apply(1, &compact, Vec::new())
        .expect("apply");
    let mut rx = f.watch(4, "c/", r1, 4).await;
    assert!(matches!(
        rx.recv().await,
        Some(Outbound::Created { watch_id: 4, .. })
    ));
    match rx.recv().await {
        Some(Outbound::Compacted {
            watch_id: 4,
            compacted,
        }) => assert_eq!(compacted, r2),
        other => panic!("{other:?}"),
    }
    assert!(!f.hub.remove((1, 4)), "the watcher is gone");
}

#[tokio::test]
async fn progress_never_claims_more_than_was_queued() {
    let f = Fixture::new();
    for n in 0..10 {
        f.put(&format!("p/{n}"), "v");
    }
    let (out, mut rx) = mpsc::channel(64);
    let selector = prefix_selector("p/");
    f.hub
        .add((1, 0), selector, WatchOptions::default(), 0, &out)
        .await;
    f.hub.progress(1, &out).await;
    assert!(matches!(rx.recv().await, Some(Outbound::Created { .. })));
    match rx.recv().await {
        Some(Outbound::Progress {
            watch_id: -1,
            revision,
        }) => assert_eq!(revision, f.hub.published()),
        other => panic!("{other:?}"),
    }
}

/// etcd #20221: a watch from a future revision sees nothing before it.
#[tokio::test]
async fn a_future_start_sees_nothing_before_it() {
    let f = Fixture::new();
    let now = f.put("f/0", "v");
    let mut rx = f.watch(1, "f/", now + 5, 16).await;
    let mut last = now;
    for n in 1..=8 {
        last = f.put(&format!("f/{n}"), "v");
    }
    assert_eq!(
        revisions(&mut rx, 4).await,
        (now + 5..=last).collect::<Vec<_>>()
    );
}

/// etcd #17529: many watches on one stream with a queue far too small; every
/// watch still gets every event, in order.
#[tokio::test]
async fn many_watches_on_one_congested_stream_all_get_everything() {
    let f = Fixture::new();
    let (out, mut rx) = mpsc::channel(4);
    for id in 0..50 {
        let selector = prefix_selector("m/");
        f.hub
            .add((7, id), selector, WatchOptions::default(), 0, &out)
            .await;
        assert!(matches!(rx.recv().await, Some(Outbound::Created { .. })));
    }
    let first = f.put("m/0", "v");
    let mut last = first;
    for n in 1..200 {
        last = f.put(&format!("m/{}", n % 3), "v");
    }
    let mut seen: HashMap<i64, Vec<i64>> = HashMap::new();
    while seen.values().map(Vec::len).sum::<usize>() < 50 * 200 {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(Outbound::Events {
                watch_id, events, ..
            })) => {
                seen.entry(watch_id)
                    .or_default()
                    .extend(events.iter().map(|e| e.kv.mod_revision));
            }
            other => panic!(
                "{other:?} after {} events",
                seen.values().map(Vec::len).sum::<usize>()
            ),
        }
    }
    let all: Vec<i64> = (first..=last).collect();
    for id in 0..50 {
        assert_eq!(seen.get(&id), Some(&all), "watch {id}");
    }
}

/// etcd #15220: a progress answer is in step with the events before it: every
/// event up to its revision has been queued ahead of it, also while a watcher is
/// catching up.
#[tokio::test]
async fn progress_is_in_step_with_the_events_queued_before_it() {
    let f = Fixture::new();
    let (out, mut rx) = mpsc::channel(2);
    let selector = prefix_selector("p/");
    f.hub
        .add((3, 0), selector, WatchOptions::default(), 0, &out)
        .await;
    let first = f.put("p/0", "v");
    let mut last = first;
    for n in 1..300 {
        last = f.put(&format!("p/{n}"), "v");
    }
    let progress = tokio::spawn({
        let (hub, out) = (f.hub.clone(), out.clone());
        async move { hub.progress(3, &out).await }
    });
    let mut received = Vec::new();
    let mut progress_seen = None;
    while received.len() < 300 {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(Outbound::Events { events, .. })) => {
                received.extend(events.iter().map(|e| e.kv.mod_revision))
            }
            Ok(Some(Outbound::Progress { revision, .. })) => {
                let upto: Vec<i64> = (first..=revision).collect();
                assert!(
                    revision < first || received.starts_with(&upto),
                    "progress {revision} ahead of events {received:?}"
                );
                progress_seen = Some(revision);
            }
            Ok(Some(Outbound::Created { .. })) => {}
            other => panic!("{other:?}"),
        }
    }
    progress.await.expect("progress task");
    assert_eq!(received, (first..=last).collect::<Vec<_>>());
    if progress_seen.is_none() {
        match rx.recv().await {
            Some(Outbound::Progress { revision, .. }) => assert!(revision <= last),
            other => panic!("{other:?}"),
        }
    }
}
