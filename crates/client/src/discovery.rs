//! A discovery cache: the instances of one service (optionally narrowed by a
//! selector) held in memory and kept current by a registry watch, so a
//! lookup is a local read.
//!
//! It lists then watches in one call (`WatchServices` with a snapshot: the
//! server sends the matching instances at revision R, then every change
//! after R). When the stream breaks it resumes on another node from the last
//! revision seen, missing nothing; when that revision was compacted away it
//! lists again. While no node can be reached it keeps serving the last view
//! and says since when it has been cut off.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use roster_proto::registry::registry_client::RegistryClient;
use roster_proto::registry::{
    EventKind, Health, Instance, InstanceState, WatchServicesRequest, WatchServicesResponse,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Code;

use crate::error::ClientError;
use crate::pool::Pool;

/// Pause before reconnecting a broken watch.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

#[derive(Default)]
struct View {
    instances: BTreeMap<String, Instance>,
    /// Everything up to this revision is in `instances`.
    revision: i64,
    /// Since when no node has been reachable (`None`: the watch is live).
    cut_off_since: Option<Instant>,
    /// Smooth weighted round-robin state per instance id.
    credit: BTreeMap<String, i64>,
}

struct Shared {
    view: RwLock<View>,
    changes: watch::Sender<i64>,
    relists: AtomicU64,
}

/// The cache of one service. Dropping it stops its watch.
pub struct Discovery {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shared {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, View> {
        // Every update replaces whole entries, so a poisoned lock is still sound.
        self.view.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, View> {
        self.view.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether discovery should hand out `instance`: up and passing.
fn usable(instance: &Instance) -> bool {
    instance.state == InstanceState::Up as i32 && instance.health == Health::Passing as i32
}

impl Discovery {
    /// Starts the cache and returns once the first listing is in.
    pub(crate) async fn start(
        pool: Arc<Pool>,
        service: String,
        selector: String,
    ) -> Result<Discovery, ClientError> {
        let (changes, mut first) = watch::channel(0);
        let shared = Arc::new(Shared {
            view: RwLock::new(View::default()),
            changes,
            relists: AtomicU64::new(0),
        });
        let request = WatchServicesRequest {
            service,
            selector,
            ..Default::default()
        };
        let task = tokio::spawn(follow(pool.clone(), shared.clone(), request));
        let discovery = Discovery { shared, task };
        let listed = tokio::time::timeout(pool.retry_for, first.changed()).await;
        match listed {
            Ok(Ok(())) => Ok(discovery),
            _ => Err(ClientError::Unreachable("no listing of the service".into())),
        }
    }

    /// Every cached instance (draining and unhealthy ones too), by id.
    pub fn instances(&self) -> Vec<Instance> {
        self.shared.read().instances.values().cloned().collect()
    }

    /// One cached instance.
    pub fn get(&self, id: &str) -> Option<Instance> {
        self.shared.read().instances.get(id).cloned()
    }

    /// The revision the cache is current to.
    pub fn revision(&self) -> i64 {
        self.shared.read().revision
    }

    /// How long the cache has been cut off from every node (`None`: live).
    pub fn staleness(&self) -> Option<Duration> {
        self.shared
            .read()
            .cut_off_since
            .map(|since| since.elapsed())
    }

    /// How many times the cache listed the service again (compaction).
    pub fn relists(&self) -> u64 {
        self.shared.relists.load(Ordering::Relaxed)
    }

    /// Changes: the receiver sees the revision after each update.
    pub fn changes(&self) -> watch::Receiver<i64> {
        self.shared.changes.subscribe()
    }

    /// The next instance to send work to: smooth weighted round-robin over
    /// the instances that are up and passing (weight 0 counts as 1).
    pub fn pick(&self) -> Option<Instance> {
        let mut view = self.shared.write();
        let View {
            instances, credit, ..
        } = &mut *view;
        choose(instances, credit)
    }
}

/// Smooth weighted round-robin (as nginx's): every usable instance earns its
/// weight in credit, the richest is chosen and pays the total, so over any
/// run of picks each gets its share, interleaved rather than in bursts.
fn choose(
    instances: &BTreeMap<String, Instance>,
    credit: &mut BTreeMap<String, i64>,
) -> Option<Instance> {
    let usable: Vec<&Instance> = instances.values().filter(|i| usable(i)).collect();
    let total: i64 = usable.iter().map(|i| i64::from(i.weight.max(1))).sum();
    let mut best: Option<(&Instance, i64)> = None;
    for instance in usable {
        let entry = credit.entry(instance.id.clone()).or_insert(0);
        *entry += i64::from(instance.weight.max(1));
        if best.is_none_or(|(_, c)| *entry > c) {
            best = Some((instance, *entry));
        }
    }
    let (chosen, _) = best?;
    if let Some(c) = credit.get_mut(&chosen.id) {
        *c -= total;
    }
    Some(chosen.clone())
}

/// Keeps the view current for as long as the cache lives.
async fn follow(pool: Arc<Pool>, shared: Arc<Shared>, base: WatchServicesRequest) {
    let mut need_listing = true;
    loop {
        let from = shared.read().revision + 1;
        let request = WatchServicesRequest {
            snapshot: need_listing,
            from_revision: if need_listing { 0 } else { from },
            ..base.clone()
        };
        let opened = pool
            .once(
                |channel| async move { RegistryClient::new(channel).watch_services(request).await },
            )
            .await;
        let mut stream = match opened {
            Ok(stream) => {
                shared.write().cut_off_since = None;
                stream.into_inner()
            }
            Err(e) => {
                cut_off(&shared, &e);
                tokio::time::sleep(RECONNECT_PAUSE).await;
                continue;
            }
        };
        let mut listing = BTreeMap::new();
        loop {
            match stream.message().await {
                Ok(Some(response)) => {
                    need_listing &= !take(&shared, response, &mut listing);
                }
                Ok(None) => break,
                Err(status) if status.code() == Code::OutOfRange => {
                    tracing::info!("roster client: cached revision compacted; listing again");
                    shared.relists.fetch_add(1, Ordering::Relaxed);
                    need_listing = true;
                    break;
                }
                Err(status) => {
                    cut_off(&shared, &ClientError::Status(status));
                    break;
                }
            }
        }
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}

fn cut_off(shared: &Shared, error: &ClientError) {
    let mut view = shared.write();
    if view.cut_off_since.is_none() {
        tracing::warn!(%error, "roster client: discovery watch lost; serving the last view");
        view.cut_off_since = Some(Instant::now());
    }
}

/// Applies one response; `true` once a listing is complete.
fn take(
    shared: &Shared,
    response: WatchServicesResponse,
    listing: &mut BTreeMap<String, Instance>,
) -> bool {
    if response.snapshot {
        for event in response.events {
            if let Some(instance) = event.instance {
                listing.insert(instance.id.clone(), instance);
            }
        }
        if !response.snapshot_end {
            return false;
        }
        let mut view = shared.write();
        view.instances = std::mem::take(listing);
        view.revision = response.revision;
        view.cut_off_since = None;
        drop(view);
        shared.changes.send_replace(response.revision);
        return true;
    }
    let mut view = shared.write();
    for event in response.events {
        let Some(instance) = event.instance else {
            continue;
        };
        let gone = event.kind == EventKind::Deregistered as i32 || !event.selected;
        if gone {
            view.instances.remove(&instance.id);
            view.credit.remove(&instance.id);
        } else {
            view.instances.insert(instance.id.clone(), instance);
        }
    }
    view.revision = view.revision.max(response.revision);
    view.cut_off_since = None;
    let revision = view.revision;
    drop(view);
    shared.changes.send_replace(revision);
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str, weight: u32, state: InstanceState, health: Health) -> (String, Instance) {
        let instance = Instance {
            id: id.into(),
            weight,
            state: state as i32,
            health: health as i32,
            ..Default::default()
        };
        (id.to_string(), instance)
    }

    #[test]
    fn picks_follow_weights_interleaved_and_skip_draining_and_unhealthy() {
        let instances: BTreeMap<String, Instance> = [
            instance("a", 1, InstanceState::Up, Health::Passing),
            instance("b", 2, InstanceState::Up, Health::Passing),
            instance("c", 3, InstanceState::Up, Health::Passing),
            instance("d", 5, InstanceState::Draining, Health::Passing),
            instance("e", 5, InstanceState::Up, Health::Critical),
        ]
        .into_iter()
        .collect();
        let mut credit = BTreeMap::new();
        let picks: String = (0..12)
            .filter_map(|_| choose(&instances, &mut credit).map(|i| i.id))
            .collect();
        assert_eq!(picks, "cbacbccbacbc");
        let counts = |id: char| picks.chars().filter(|c| *c == id).count();
        assert_eq!((counts('a'), counts('b'), counts('c')), (2, 4, 6));
        assert!(choose(&BTreeMap::new(), &mut credit).is_none());
    }
}
