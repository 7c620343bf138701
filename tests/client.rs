//! Black-box tests of the Rust client library (`crates/client`) against a
//! real three-node cluster: a registration survives a leader kill without
//! expiring or doubling; a lease lost during a partition (a TCP proxy the
//! test cuts) is registered again by itself; the discovery cache converges
//! after a node restart and after a compaction of the revision it held.
//! (Roster's own API: not for etcd.)

mod harness;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::Cluster;
use roster_client::{Client, Discovery, InstanceBuilder, RegistrationEvent, RegistrationOptions};
use roster_proto::registry::register_request::Lease;
use roster_proto::registry::{EventKind, RegisterRequest, RemovalReason};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

fn cached_ids(cache: &Discovery) -> Vec<String> {
    cache.instances().into_iter().map(|i| i.id).collect()
}

/// Polls `check` every 50 ms until it holds or `limit` passes.
async fn eventually(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn a_registration_survives_a_leader_kill_without_expiry_or_duplicate() {
    let mut c = Cluster::start(3);
    let leader = c.leader();
    let rt = runtime();
    // The leader first: the client's connection goes to the node that dies.
    let mut endpoints = vec![c.endpoint(leader)];
    endpoints.extend(c.followers().into_iter().map(|i| c.endpoint(i)));
    let watcher = c.followers()[0];
    let (registration, mut watch, first_lease) = rt.block_on(async {
        let client = Client::connect(endpoints.clone()).await.expect("connect");
        let options = RegistrationOptions {
            ttl: Duration::from_secs(3),
            drain: Duration::ZERO,
        };
        let instance = InstanceBuilder::new("api", "a1").endpoint("10.0.0.1", 80, "http");
        let registration = client.register(instance, options).await.expect("register");
        let lease = registration.lease();
        assert_eq!(c.instance_ids(watcher, "api").await, vec!["a1".to_string()]);
        let watch = c.watch_services(watcher, "api").await;
        (registration, watch, lease)
    });
    c.kill(leader);
    let new_leader = c.leader();
    rt.block_on(async {
        // Three TTLs under the new leader: any expiry or re-registration
        // would show as an event.
        let window = tokio::time::timeout(Duration::from_secs(9), watch.message()).await;
        assert!(
            window.is_err(),
            "no event while kept alive across the failover: {window:?}"
        );
        assert_eq!(
            c.instance_ids(new_leader, "api").await,
            vec!["a1".to_string()]
        );
        assert_eq!(
            registration.lease(),
            first_lease,
            "the same lease, never lost"
        );
        registration.shutdown().await.expect("shutdown");
        let event = watch.message().await.expect("stream").expect("event");
        let gone = &event.events[0];
        assert_eq!(
            (gone.kind(), gone.reason()),
            (EventKind::Deregistered, RemovalReason::Graceful)
        );
    });
}

/// A TCP proxy to one node that the test can cut (every connection closed,
/// new ones refused) and restore.
struct Proxy {
    address: String,
    open: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(upstream: &str) -> Proxy {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("addr").to_string();
        let open = Arc::new(AtomicBool::new(true));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (is_open, all) = (open.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !is_open.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection close
                }
                let upstream = upstream.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                all.lock().expect("lock").push(link);
            }
        });
        Proxy {
            address,
            open,
            links,
        }
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for link in self.links.lock().expect("lock").drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_lease_lost_in_a_partition_is_registered_again_by_itself() {
    let c = Cluster::start(3);
    let rt = runtime();
    rt.block_on(async {
        let proxy = Proxy::start(&c.endpoint(0)).await;
        let client = Client::connect_with([proxy.address.clone()], Duration::from_secs(30))
            .await
            .expect("connect");
        let options = RegistrationOptions {
            ttl: Duration::from_secs(2),
            drain: Duration::ZERO,
        };
        let instance = InstanceBuilder::new("job", "j1").endpoint("10.0.0.2", 80, "");
        let registration = client.register(instance, options).await.expect("register");
        let mut events = registration.events();
        let lost = registration.lease();
        assert_eq!(c.instance_ids(1, "job").await, vec!["j1".to_string()]);
        let mut watch = c.watch_services(1, "job").await;
        proxy.cut();
        // The cluster expires the lease the client can no longer renew.
        let expired = tokio::time::timeout(Duration::from_secs(15), watch.message())
            .await
            .expect("expiry in time")
            .expect("stream")
            .expect("event");
        assert_eq!(
            (expired.events[0].kind(), expired.events[0].reason()),
            (EventKind::Deregistered, RemovalReason::Expired)
        );
        proxy.restore();
        let event = tokio::time::timeout(Duration::from_secs(15), events.recv())
            .await
            .expect("re-registered in time")
            .expect("event");
        let RegistrationEvent::Reregistered { lost_lease, lease } = event else {
            panic!("{event:?}");
        };
        assert_eq!(lost_lease, lost);
        assert_ne!(lease, lost, "a new lease; the expired one never comes back");
        assert_eq!(registration.lease(), lease);
        let back = watch.message().await.expect("stream").expect("event");
        assert_eq!(back.events[0].kind(), EventKind::Registered);
        eventually(Duration::from_secs(5), "listed again", async || {
            c.instance_ids(2, "job").await == vec!["j1".to_string()]
        })
        .await;
    });
}

#[test]
fn the_discovery_cache_converges_after_a_node_restart_and_a_compaction() {
    let mut c = Cluster::start(3);
    let rt = runtime();
    let node = c.followers()[0];
    let writer_node = c.leader();
    // `direct` follows one node that will restart; `proxied` follows the
    // leader through a proxy the test cuts while the history is compacted.
    let (direct, proxied, proxy) = rt.block_on(async {
        let writer = Client::connect([c.endpoint(writer_node)])
            .await
            .expect("writer");
        let mut registry = writer.registry().await.expect("registry");
        for n in 0..5 {
            let request = RegisterRequest {
                service: "db".into(),
                id: format!("d{n}"),
                weight: 1 + n,
                lease: Some(Lease::NoLease(true)),
                ..Default::default()
            };
            registry.register(request).await.expect("register");
        }
        let client = Client::connect([c.endpoint(node)]).await.expect("connect");
        let direct = client.discover("db", "").await.expect("discover");
        let proxy = Proxy::start(&c.endpoint(writer_node)).await;
        let through = Client::connect([proxy.address.clone()])
            .await
            .expect("connect");
        let proxied = through.discover("db", "").await.expect("discover");
        for cache in [&direct, &proxied] {
            eventually(Duration::from_secs(5), "first listing", async || {
                cached_ids(cache).len() == 5
            })
            .await;
        }
        (direct, proxied, proxy)
    });
    let change = |c: &Cluster, line: &str| {
        let (ok, out, err) = c.roster_line(writer_node, line);
        assert!(ok, "{line}: {out}{err}");
    };
    // Changes while the direct cache's only node is down: it serves the last
    // view, says it is cut off, and catches up from its revision on restart.
    c.kill(node);
    change(&c, "service register --service db --id d5 --no-lease");
    change(&c, "service deregister --service db --id d0");
    rt.block_on(eventually(Duration::from_secs(5), "cut off", async || {
        direct.staleness().is_some()
    }));
    assert_eq!(
        cached_ids(&direct).len(),
        5,
        "the last view is still served"
    );
    c.restart(node);
    rt.block_on(eventually(
        Duration::from_secs(15),
        "converged after restart",
        async || cached_ids(&direct) == c.instance_ids(writer_node, "db").await,
    ));
    assert_eq!(direct.relists(), 0, "resumed, not listed again");
    assert!(direct.staleness().is_none());
    // Changes and a compaction past the proxied cache's revision while it is
    // cut off: it lists again, once, and converges.
    proxy.cut();
    rt.block_on(eventually(
        Duration::from_secs(5),
        "proxied cut off",
        async || proxied.staleness().is_some(),
    ));
    change(&c, "service deregister --service db --id d1");
    change(&c, "service register --service db --id d6 --no-lease");
    let revision = c.status(writer_node).expect("status").revision;
    c.ctl(writer_node, &["compact", &revision.to_string()])
        .expect_ok();
    proxy.restore();
    rt.block_on(eventually(
        Duration::from_secs(15),
        "converged after compaction",
        async || cached_ids(&proxied) == c.instance_ids(writer_node, "db").await,
    ));
    assert_eq!(proxied.relists(), 1, "listed again once");
    // Picks go round the usable instances, by weight.
    let picks: Vec<String> = (0..40)
        .filter_map(|_| proxied.pick().map(|i| i.id))
        .collect();
    let ids = rt.block_on(c.instance_ids(writer_node, "db"));
    assert!(
        ids.iter().all(|id| picks.contains(id)),
        "{picks:?} covers {ids:?}"
    );
}
