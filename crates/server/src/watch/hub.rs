//! The watch hub: one per node, between the applied log and every watcher on it.
//!
//! Every node serves watches from its own applied state, so watch load spreads
//! over the cluster. A watcher is in one of two states:
//!
//! - **synced**: it has seen every event up to the hub's `published` revision, and
//!   the apply path hands it new events as they are applied (`publish`, called by
//!   the node's apply observer). Handing over never waits: each watch stream has a
//!   bounded queue, and a watcher whose queue is full is not skipped but demoted.
//! - **catching up**: a task of its own reads the history from the state machine,
//!   page by page, from the first revision the watcher has not seen, and sends it
//!   (waiting for room in the queue: a slow client slows only itself). Once it has
//!   read past `published`, it rejoins the synced watchers under the hub's lock, so
//!   no event falls between the two paths and none is sent twice. A watcher that
//!   starts at a past revision begins here too.
//!
//! So a slow watcher costs a bounded queue and a read of the history, never
//! memory that grows with its lag, never a stalled writer, and never a lost event.
//! If its next revision is compacted away meanwhile, it is canceled with the
//! compaction revision, as etcd does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use roster_raft::SharedState;
use roster_state::{Event, EventKind, Fail, StateError};
use tokio::sync::mpsc;

/// Events read from the history per page while catching up (a page never splits
/// a revision, so it may hold a few more).
const CATCH_UP_PAGE: usize = 1000;

/// Identifies one watch stream (one gRPC call) on this node.
pub type StreamId = u64;

/// The keys a watcher selects and the event kinds it drops, in etcd's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub key: Vec<u8>,
    /// Empty: `key` alone. `[0]`: every key `>= key`. Otherwise `[key, range_end)`.
    pub range_end: Vec<u8>,
    pub no_put: bool,
    pub no_delete: bool,
}

impl Selector {
    pub fn matches(&self, event: &Event) -> bool {
        let dropped = match event.kind {
            EventKind::Put => self.no_put,
            EventKind::Delete => self.no_delete,
        };
        !dropped && roster_state::range_contains(&self.key, &self.range_end, &event.kv.key)
    }
}

/// What a watcher asked for beyond its selection; carried with its events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchOptions {
    pub prev_kv: bool,
    pub fragment: bool,
    pub progress_notify: bool,
}

/// What the hub (and the stream's own session) queue for one watch stream, in
/// the order the client must see it.
#[derive(Debug)]
pub enum Outbound {
    Created {
        watch_id: i64,
        revision: i64,
    },
    /// Created and canceled at once (a request etcd refuses this way).
    Rejected {
        watch_id: i64,
        reason: String,
    },
    /// Events of whole revisions, at most `revision`. Shared between the
    /// watchers they go to: the apply path copies nothing per watcher.
    Events {
        watch_id: i64,
        revision: i64,
        events: Vec<Arc<Event>>,
        options: WatchOptions,
    },
    /// Every event up to `revision` has been queued (`watch_id` -1: for the stream).
    Progress {
        watch_id: i64,
        revision: i64,
    },
    Canceled {
        watch_id: i64,
        revision: i64,
    },
    /// The watcher's next revision was compacted away.
    Compacted {
        watch_id: i64,
        compacted: i64,
    },
    /// Reading the history failed; the watcher is canceled with the reason.
    Failed {
        watch_id: i64,
        reason: String,
    },
    /// The stream must end: its node has had no leader for too long.
    NoLeader,
}

/// One registered watcher.
#[derive(Debug)]
pub struct Watcher {
    pub selector: Selector,
    pub options: WatchOptions,
    /// The first revision this watcher has not been given (or examined).
    next_revision: i64,
    out: mpsc::Sender<Outbound>,
}

enum Slot {
    Synced(Watcher),
    /// A task owns the watcher; it started from `from`.
    CatchingUp {
        from: i64,
    },
}

struct Entry {
    /// Tells a watcher from a later one that reuses its id.
    token: u64,
    slot: Slot,
}

type WatchKey = (StreamId, i64);

#[derive(Default)]
struct Registry {
    /// Every event up to this revision has been handed to the synced watchers.
    published: i64,
    entries: BTreeMap<WatchKey, Entry>,
}

/// See the module docs.
#[derive(Default)]
pub struct WatchHub {
    registry: Mutex<Registry>,
    state: OnceLock<SharedState>,
    tokens: AtomicU64,
    streams: AtomicU64,
}

/// A stream id whose watchers are all removed when the guard is dropped.
pub struct StreamGuard {
    hub: Arc<WatchHub>,
    pub id: StreamId,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.hub.remove_stream(self.id);
    }
}

impl WatchHub {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock leaves a consistent registry (every
        // change is one map operation), so a poisoned lock is still usable.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new stream id, its watchers removed when the guard goes.
    pub fn open_stream(self: &Arc<Self>) -> StreamGuard {
        StreamGuard {
            hub: self.clone(),
            id: self.streams.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Connects the hub to the node's state machine, once it is open.
    pub fn attach_state(&self, state: SharedState) {
        let revision = state.read().map(|sm| sm.revision()).unwrap_or(0);
        let _ = self.state.set(state);
        let mut registry = self.lock();
        registry.published = registry.published.max(revision);
    }

    /// The revision up to which every event has been handed out.
    pub fn published(&self) -> i64 {
        self.lock().published
    }

    /// Registers a watcher starting at `start_revision` (0: after the current
    /// revision) and queues its `Created` answer first, so nothing of it can
    /// precede that.
    pub async fn add(
        self: &Arc<Self>,
        key: WatchKey,
        selector: Selector,
        options: WatchOptions,
        start_revision: i64,
        out: &mpsc::Sender<Outbound>,
    ) {
        let Ok(permit) = out.reserve().await else {
            return;
        };
        let mut registry = self.lock();
        let published = registry.published;
        let next_revision = if start_revision == 0 {
            published + 1
        } else {
            start_revision.max(1)
        };
        permit.send(Outbound::Created {
            watch_id: key.1,
            revision: published,
        });
        let watcher = Watcher {
            selector,
            options,
            next_revision,
            out: out.clone(),
        };
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        let slot = if next_revision > published {
            Slot::Synced(watcher)
        } else {
            self.spawn_catch_up(key, token, watcher)
        };
        registry.entries.insert(key, Entry { token, slot });
    }

    /// Watches registered (registry watches too), for the metrics.
    pub fn watchers(&self) -> usize {
        self.lock().entries.len()
    }

    /// Removes a watcher; false if there was none.
    pub fn remove(&self, key: WatchKey) -> bool {
        self.lock().entries.remove(&key).is_some()
    }

    /// Removes every watcher of a stream that ended.
    pub fn remove_stream(&self, stream: StreamId) {
        self.lock().entries.retain(|(s, _), _| *s != stream);
    }

    /// Hands the events of one applied command to the synced watchers. Called in
    /// apply order; never waits.
    pub fn publish(self: &Arc<Self>, events: &[Event]) {
        let Some(revision) = events.iter().map(|e| e.kv.mod_revision).max() else {
            return;
        };
        let mut registry = self.lock();
        let registry = &mut *registry;
        // One copy of the events, made only if someone may want them.
        let shared: Vec<Arc<Event>> = if registry.entries.is_empty() {
            Vec::new()
        } else {
            events.iter().cloned().map(Arc::new).collect()
        };
        for (key, entry) in registry.entries.iter_mut() {
            let Slot::Synced(watcher) = &mut entry.slot else {
                continue;
            };
            if revision < watcher.next_revision {
                continue;
            }
            let matching: Vec<Arc<Event>> = shared
                .iter()
                .filter(|e| {
                    e.kv.mod_revision >= watcher.next_revision && watcher.selector.matches(e)
                })
                .cloned()
                .collect();
            let delivered = matching.is_empty()
                || watcher
                    .out
                    .try_send(Outbound::Events {
                        watch_id: key.1,
                        revision,
                        events: matching,
                        options: watcher.options,
                    })
                    .is_ok();
            if delivered {
                watcher.next_revision = revision + 1;
            } else {
                // Queue full (or the stream gone): catch up from the history.
                entry.slot = self.demote(*key, entry.token, &mut entry.slot);
            }
        }
        registry.published = registry.published.max(revision);
    }

    /// The state was replaced by a snapshot: watchers behind it catch up from the
    /// history it brought.
    pub fn installed_snapshot(self: &Arc<Self>) {
        let Some(revision) = self
            .state
            .get()
            .and_then(|s| s.read().ok().map(|sm| sm.revision()))
        else {
            return;
        };
        let mut registry = self.lock();
        for (key, entry) in registry.entries.iter_mut() {
            if matches!(&entry.slot, Slot::Synced(w) if w.next_revision <= revision) {
                entry.slot = self.demote(*key, entry.token, &mut entry.slot);
            }
        }
        registry.published = registry.published.max(revision);
    }

    /// Queues the answer to a progress request: the revision up to which every
    /// event of every watcher of the stream has been queued.
    pub async fn progress(&self, stream: StreamId, out: &mpsc::Sender<Outbound>) {
        let Ok(permit) = out.reserve().await else {
            return;
        };
        let registry = self.lock();
        let revision = registry
            .entries
            .iter()
            .filter(|((s, _), _)| *s == stream)
            .filter_map(|(_, entry)| match &entry.slot {
                Slot::CatchingUp { from } => Some(from - 1),
                Slot::Synced(_) => None,
            })
            .fold(registry.published, i64::min);
        permit.send(Outbound::Progress {
            watch_id: -1,
            revision,
        });
    }

    /// Periodic progress notification to the synced watchers of `stream` that
    /// asked for it. Skipped for a watcher whose queue is full: events are
    /// flowing to it anyway.
    pub fn notify_progress(&self, stream: StreamId) {
        let registry = self.lock();
        for ((s, watch_id), entry) in registry.entries.iter() {
            if let (true, Slot::Synced(watcher)) = (*s == stream, &entry.slot) {
                if watcher.options.progress_notify {
                    let _ = watcher.out.try_send(Outbound::Progress {
                        watch_id: *watch_id,
                        revision: registry.published,
                    });
                }
            }
        }
    }

    /// Takes a synced watcher out of `slot` and starts its catch-up task.
    fn demote(self: &Arc<Self>, key: WatchKey, token: u64, slot: &mut Slot) -> Slot {
        match std::mem::replace(slot, Slot::CatchingUp { from: 0 }) {
            Slot::Synced(watcher) => self.spawn_catch_up(key, token, watcher),
            catching_up => catching_up,
        }
    }

    fn spawn_catch_up(self: &Arc<Self>, key: WatchKey, token: u64, watcher: Watcher) -> Slot {
        let from = watcher.next_revision;
        tokio::spawn(catch_up(self.clone(), key, token, watcher));
        Slot::CatchingUp { from }
    }

    /// Whether the watcher with this token is still registered.
    fn registered(&self, key: WatchKey, token: u64) -> bool {
        self.lock()
            .entries
            .get(&key)
            .is_some_and(|e| e.token == token)
    }

    /// Ends a catch-up: back among the synced watchers if it has read past
    /// `published`, else hands the watcher back to keep reading.
    fn rejoin(&self, key: WatchKey, token: u64, watcher: Watcher) -> Option<Watcher> {
        let mut registry = self.lock();
        let published = registry.published;
        match registry.entries.get_mut(&key) {
            Some(entry) if entry.token == token => {
                if watcher.next_revision > published {
                    entry.slot = Slot::Synced(watcher);
                    None
                } else {
                    entry.slot = Slot::CatchingUp {
                        from: watcher.next_revision,
                    };
                    Some(watcher)
                }
            }
            // Canceled meanwhile.
            _ => None,
        }
    }

    /// A page of events from `from` on, and the store revision it was read at.
    fn read_page(&self, from: i64) -> Result<(Vec<Event>, i64), Fail> {
        let state = self.state.get().ok_or_else(|| {
            Fail::Engine(roster_state::EngineError("watch hub not attached".into()))
        })?;
        let sm = state.read().map_err(|_| {
            Fail::Engine(roster_state::EngineError(
                "state machine lock poisoned".into(),
            ))
        })?;
        Ok((sm.events(from, CATCH_UP_PAGE)?, sm.revision()))
    }
}

/// The catch-up task of one watcher (see the module docs).
async fn catch_up(hub: Arc<WatchHub>, key: WatchKey, token: u64, mut watcher: Watcher) {
    let watch_id = key.1;
    loop {
        let (page, read_at) = match hub.read_page(watcher.next_revision) {
            Ok(read) => read,
            Err(fail) => {
                let message = match fail {
                    Fail::State(StateError::Compacted { compacted }) => Outbound::Compacted {
                        watch_id,
                        compacted,
                    },
                    other => Outbound::Failed {
                        watch_id,
                        reason: other.to_string(),
                    },
                };
                if hub.remove(key) {
                    let _ = watcher.out.send(message).await;
                }
                return;
            }
        };
        if let Some(last) = page.last().map(|e| e.kv.mod_revision) {
            let matching: Vec<Arc<Event>> = page
                .into_iter()
                .filter(|e| watcher.selector.matches(e))
                .map(Arc::new)
                .collect();
            if !matching.is_empty() {
                if !hub.registered(key, token) {
                    return;
                }
                let events = Outbound::Events {
                    watch_id,
                    revision: last,
                    events: matching,
                    options: watcher.options,
                };
                if watcher.out.send(events).await.is_err() {
                    hub.remove(key);
                    return;
                }
            }
            watcher.next_revision = last + 1;
        } else {
            // Nothing from `next_revision` up to the revision the page was
            // read at: the watcher is past it. (Without this, revisions that
            // wrote no event left it "behind" forever, and its loop, which
            // never awaited, took a runtime thread: the chaos test found two
            // such loops starving a restarted node of both its threads.)
            watcher.next_revision = watcher.next_revision.max(read_at + 1);
        }
        match hub.rejoin(key, token, watcher) {
            Some(behind) => {
                watcher = behind;
                tokio::task::yield_now().await;
            }
            None => return,
        }
    }
}
