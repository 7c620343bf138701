//! Black-box tests of the native registry API (`roster.v1.Registry`) on a
//! three-node cluster, through gRPC on followers and the leader and through the
//! `roster service` CLI: registration on an own, shared or no lease, heartbeats,
//! expiry, graceful and forced removal with the audit log, draining, discovery
//! by selector, and typed watch events. (Roster's own API: not for etcd.)

mod harness;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use harness::{parse_lease_grant, Cluster};
use roster_proto::registry::register_request::Lease;
use roster_proto::registry::registry_client::RegistryClient;
use roster_proto::registry::{
    AuditListRequest, DiscoverRequest, DrainRequest, Endpoint, EventKind, ForceDeregisterRequest,
    HealthFilter, HeartbeatRequest, InstanceRequest, InstanceState, RegisterRequest, RemovalReason,
    SetStatusRequest, WatchServicesRequest, WatchServicesResponse,
};
use tonic::transport::Channel;
use tonic::Code;
use tonic::Streaming;

async fn client(c: &Cluster, i: usize) -> RegistryClient<Channel> {
    RegistryClient::new(c.channel(i).await)
}

fn instance(service: &str, id: &str, lease: Lease, metadata: &[(&str, &str)]) -> RegisterRequest {
    RegisterRequest {
        service: service.into(),
        id: id.into(),
        endpoints: vec![Endpoint {
            address: "10.0.0.1".into(),
            port: 8080,
            protocol: "http".into(),
        }],
        metadata: metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
        tags: vec!["web".into()],
        weight: 1,
        lease: Some(lease),
        ..Default::default()
    }
}

fn which(service: &str, id: &str) -> InstanceRequest {
    InstanceRequest {
        service: service.into(),
        id: id.into(),
    }
}

fn discover(service: &str, selector: &str) -> DiscoverRequest {
    DiscoverRequest {
        service: service.into(),
        selector: selector.into(),
        ..Default::default()
    }
}

async fn ids(registry: &mut RegistryClient<Channel>, request: DiscoverRequest) -> Vec<String> {
    let found = registry
        .discover(request)
        .await
        .expect("discover")
        .into_inner();
    found.instances.into_iter().map(|i| i.id).collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

#[test]
fn register_discover_and_deregister_with_an_own_lease() {
    let c = Cluster::start(3);
    runtime().block_on(async {
        let mut registry = client(&c, c.followers()[0]).await;
        let registered = registry
            .register(instance(
                "web",
                "1",
                Lease::TtlSeconds(30),
                &[("zone", "a")],
            ))
            .await
            .expect("register")
            .into_inner();
        assert_ne!(registered.lease, 0);
        // Idempotent: the same lease again.
        let again = registry
            .register(instance(
                "web",
                "1",
                Lease::TtlSeconds(30),
                &[("zone", "a")],
            ))
            .await
            .expect("register again")
            .into_inner();
        assert_eq!(again.lease, registered.lease);
        // Visible on another node, and through the etcd API.
        let mut other = client(&c, c.leader()).await;
        let found = other
            .discover(discover("web", ""))
            .await
            .expect("discover")
            .into_inner();
        assert_eq!(found.instances.len(), 1);
        let web1 = &found.instances[0];
        assert_eq!(
            (web1.id.as_str(), web1.lease, web1.lease_owned),
            ("1", registered.lease, true)
        );
        assert_eq!(web1.state, InstanceState::Up as i32);
        let out = c
            .ctl(0, &["get", "/roster/registry/web/1", "--print-value-only"])
            .expect_ok();
        assert!(out.stdout.contains(r#""service":"web""#), "{out}");
        // The heartbeat renews the registry's own lease.
        let beat = registry
            .heartbeat(HeartbeatRequest {
                lease: registered.lease,
            })
            .await
            .expect("heartbeat")
            .into_inner();
        assert_eq!(beat.ttl, 30);
        // Deregistering the last instance revokes the lease it owned.
        registry
            .deregister(which("web", "1"))
            .await
            .expect("deregister");
        assert!(ids(&mut other, discover("web", "")).await.is_empty());
        let gone = registry
            .heartbeat(HeartbeatRequest {
                lease: registered.lease,
            })
            .await;
        assert_eq!(
            gone.map(|r| r.into_inner().ttl).ok(),
            Some(0),
            "the owned lease is revoked"
        );
        let missing = registry
            .deregister(which("web", "1"))
            .await
            .expect_err("gone");
        assert_eq!(missing.code(), Code::NotFound);
    });
}

#[test]
fn instances_on_a_shared_lease_and_forced_removal_with_audit() {
    let c = Cluster::start(3);
    let lease = parse_lease_grant(&c.ctl(0, &["lease", "grant", "60"]).expect_ok());
    runtime().block_on(async {
        let mut registry = client(&c, 1).await;
        for id in ["a", "b"] {
            let got = registry
                .register(instance("api", id, Lease::LeaseId(lease), &[]))
                .await
                .expect("register")
                .into_inner();
            assert_eq!(got.lease, lease);
        }
        let force = |reason: &str, id: &str| ForceDeregisterRequest {
            service: "api".into(),
            id: id.into(),
            actor: "alice".into(),
            reason: reason.into(),
        };
        let refused = registry
            .force_deregister(force("", "a"))
            .await
            .expect_err("no reason");
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(refused.message().contains("reason"), "{refused:?}");
        let done = registry
            .force_deregister(force("bad host", "a"))
            .await
            .expect("force")
            .into_inner();
        let unknown = registry
            .force_deregister(force("again", "zz"))
            .await
            .expect_err("unknown");
        assert_eq!(unknown.code(), Code::NotFound);
        assert_eq!(
            ids(&mut registry, discover("api", "")).await,
            vec!["b".to_string()]
        );
        let audit = registry
            .audit_list(AuditListRequest {})
            .await
            .expect("audit")
            .into_inner();
        assert_eq!(audit.entries.len(), 1);
        let entry = &audit.entries[0];
        assert_eq!(
            (
                entry.actor.as_str(),
                entry.reason.as_str(),
                entry.id.as_str(),
                entry.revision
            ),
            ("alice", "bad host", "a", done.revision)
        );
        // The caller's lease is the caller's: it stays after its instances go.
        registry
            .deregister(which("api", "b"))
            .await
            .expect("deregister");
        let out = c
            .ctl(2, &["lease", "timetolive", &format!("{lease:x}")])
            .expect_ok();
        assert!(out.stdout.contains("remaining"), "{out}");
    });
}

#[test]
fn an_instance_whose_heartbeats_stop_expires_and_can_register_again_at_once() {
    let c = Cluster::start(3);
    runtime().block_on(async {
        let mut registry = client(&c, c.followers()[0]).await;
        let first = registry
            .register(instance("job", "w", Lease::TtlSeconds(2), &[]))
            .await
            .expect("register")
            .into_inner();
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(700)).await;
            let beat = registry
                .heartbeat(HeartbeatRequest { lease: first.lease })
                .await
                .expect("heartbeat");
            assert!(beat.into_inner().ttl > 0);
        }
        assert_eq!(
            ids(&mut registry, discover("job", "")).await,
            vec!["w".to_string()],
            "kept alive"
        );
        let stopped = Instant::now();
        let mut gone = false;
        while stopped.elapsed() < Duration::from_secs(10) && !gone {
            tokio::time::sleep(Duration::from_millis(100)).await;
            gone = ids(&mut registry, discover("job", "")).await.is_empty();
        }
        assert!(gone, "expired within 10 s");
        assert!(
            stopped.elapsed() >= Duration::from_millis(1500),
            "not before its TTL: {:?}",
            stopped.elapsed()
        );
        let second = registry
            .register(instance("job", "w", Lease::TtlSeconds(2), &[]))
            .await
            .expect("register again")
            .into_inner();
        assert_ne!(second.lease, first.lease);
    });
}

#[test]
fn discovery_filters_by_selector_draining_and_lease_less_instances_stay() {
    let c = Cluster::start(3);
    runtime().block_on(async {
        let mut registry = client(&c, 2).await;
        let members = [
            ("1", vec![("zone", "a"), ("tier", "web")]),
            ("2", vec![("zone", "b"), ("tier", "api")]),
            ("3", vec![("zone", "a"), ("tier", "api"), ("canary", "yes")]),
        ];
        for (id, metadata) in &members {
            registry
                .register(instance("svc", id, Lease::NoLease(true), metadata))
                .await
                .expect("register");
        }
        let cases = [
            ("", vec!["1", "2", "3"]),
            ("zone=a", vec!["1", "3"]),
            ("zone=a,!canary", vec!["1"]),
            ("tier in (api),zone!=a", vec!["2"]),
            ("tag:web", vec!["1", "2", "3"]),
            ("!tag:web", vec![]),
        ];
        for (selector, want) in cases {
            assert_eq!(
                ids(&mut registry, discover("svc", selector)).await,
                want,
                "{selector:?}"
            );
        }
        let bad = registry
            .discover(discover("svc", "zone in a"))
            .await
            .expect_err("bad selector");
        assert_eq!(bad.code(), Code::InvalidArgument);
        assert!(bad.message().contains("position 8"), "{bad:?}");

        registry
            .drain(DrainRequest {
                service: "svc".into(),
                id: "1".into(),
                deadline_ms: 0,
            })
            .await
            .expect("drain");
        assert_eq!(
            ids(&mut registry, discover("svc", "zone=a")).await,
            vec!["3"]
        );
        let with_draining = DiscoverRequest {
            include_draining: true,
            health: HealthFilter::Any as i32,
            ..discover("svc", "zone=a")
        };
        assert_eq!(ids(&mut registry, with_draining).await, vec!["1", "3"]);
        // Lease-less instances have no lease to expire.
        let all = registry
            .discover(discover("svc", ""))
            .await
            .expect("discover")
            .into_inner();
        assert_eq!(all.instances.len(), 2, "the draining one is left out");
        assert!(all.instances.iter().all(|i| i.lease == 0), "{all:?}");
    });
}

#[test]
fn a_drain_deadline_removes_the_instance() {
    let c = Cluster::start(3);
    runtime().block_on(async {
        let mut registry = client(&c, c.followers()[0]).await;
        registry
            .register(instance("web", "d", Lease::TtlSeconds(60), &[]))
            .await
            .expect("register");
        let drained_at = Instant::now();
        registry
            .drain(DrainRequest {
                service: "web".into(),
                id: "d".into(),
                deadline_ms: 1000,
            })
            .await
            .expect("drain");
        let everything = DiscoverRequest {
            include_draining: true,
            health: HealthFilter::Any as i32,
            ..discover("web", "")
        };
        let listed = registry
            .discover(everything.clone())
            .await
            .expect("discover")
            .into_inner();
        assert_eq!(listed.instances[0].state, InstanceState::Draining as i32);
        assert!(listed.instances[0].drain_deadline_ms > 0);
        assert!(
            ids(&mut registry, discover("web", "")).await.is_empty(),
            "not discovered by default"
        );
        let mut gone = false;
        while !gone && drained_at.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            gone = ids(&mut registry, everything.clone()).await.is_empty();
        }
        assert!(gone, "removed at its deadline");
        assert!(
            drained_at.elapsed() >= Duration::from_millis(900),
            "{:?}",
            drained_at.elapsed()
        );
    });
}

#[test]
fn bad_registrations_are_refused_with_the_field_named() {
    let c = Cluster::start(1);
    runtime().block_on(async {
        let mut registry = client(&c, 0).await;
        let mut no_port = instance("web", "1", Lease::TtlSeconds(10), &[]);
        no_port.endpoints[0].port = 70000;
        let mut slash = instance("web", "a/b", Lease::TtlSeconds(10), &[]);
        slash.lease = Some(Lease::NoLease(true));
        let mut no_lease = instance("web", "1", Lease::TtlSeconds(10), &[]);
        no_lease.lease = None;
        let cases = [
            (no_port, "endpoints[0].port"),
            (slash, "instance id"),
            (no_lease, "lease"),
            (instance("", "1", Lease::TtlSeconds(10), &[]), "service"),
            (
                instance("web", "1", Lease::TtlSeconds(0), &[]),
                "ttl_seconds",
            ),
        ];
        for (request, field) in cases {
            let err = registry.register(request).await.expect_err(field);
            assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
            assert!(err.message().contains(field), "{field}: {err:?}");
        }
        let unknown_lease = registry
            .register(instance("web", "1", Lease::LeaseId(12345), &[]))
            .await
            .expect_err("unknown lease");
        assert_eq!(unknown_lease.code(), Code::NotFound);
        assert!(
            ids(&mut registry, discover("", "")).await.is_empty(),
            "nothing registered"
        );
    });
}

/// (kind, instance id, reason) of the next `n` events of a WatchServices stream.
async fn next_events(
    stream: &mut Streaming<WatchServicesResponse>,
    n: usize,
) -> Vec<(EventKind, String, RemovalReason)> {
    let mut out = Vec::new();
    while out.len() < n {
        let response = next_response(stream).await;
        for e in response.events {
            let id = e.instance.map(|i| i.id).unwrap_or_default();
            let kind = EventKind::try_from(e.kind).expect("kind");
            let reason = RemovalReason::try_from(e.reason).expect("reason");
            out.push((kind, id, reason));
        }
    }
    out
}

#[test]
fn watchers_see_every_way_in_and_out_with_its_reason() {
    let c = Cluster::start(3);
    runtime().block_on(async {
        let mut registry = client(&c, c.followers()[0]).await;
        registry
            .register(instance("web", "0", Lease::NoLease(true), &[]))
            .await
            .expect("register");
        let watch = WatchServicesRequest {
            service: "web".into(),
            snapshot: true,
            ..Default::default()
        };
        let mut stream = client(&c, c.followers()[1])
            .await
            .watch_services(watch)
            .await
            .expect("watch")
            .into_inner();
        let snapshot = stream.message().await.expect("snapshot").expect("open");
        assert!(snapshot.snapshot);
        assert_eq!(
            snapshot
                .events
                .iter()
                .map(|e| e.instance.as_ref().map(|i| i.id.clone()))
                .collect::<Vec<_>>(),
            vec![Some("0".to_string())]
        );

        use EventKind::{Deregistered, Draining, Registered, Updated};
        use RemovalReason::{Drained, Expired, Forced, Graceful, Unspecified};
        let s = |v: &str| v.to_string();
        // Graceful, after draining.
        registry
            .register(instance("web", "1", Lease::TtlSeconds(30), &[]))
            .await
            .expect("register");
        registry
            .drain(DrainRequest {
                service: s("web"),
                id: s("1"),
                deadline_ms: 0,
            })
            .await
            .expect("drain");
        registry
            .deregister(which("web", "1"))
            .await
            .expect("deregister");
        assert_eq!(
            next_events(&mut stream, 3).await,
            vec![
                (Registered, s("1"), Unspecified),
                (Draining, s("1"), Unspecified),
                (Deregistered, s("1"), Graceful)
            ]
        );
        // Forced.
        registry
            .register(instance("web", "2", Lease::NoLease(true), &[]))
            .await
            .expect("register");
        let force = ForceDeregisterRequest {
            service: s("web"),
            id: s("2"),
            actor: s("ops"),
            reason: s("broken"),
        };
        registry.force_deregister(force).await.expect("force");
        assert_eq!(
            next_events(&mut stream, 2).await,
            vec![
                (Registered, s("2"), Unspecified),
                (Deregistered, s("2"), Forced)
            ]
        );
        // Drained at the deadline.
        registry
            .register(instance("web", "3", Lease::NoLease(true), &[]))
            .await
            .expect("register");
        registry
            .drain(DrainRequest {
                service: s("web"),
                id: s("3"),
                deadline_ms: 300,
            })
            .await
            .expect("drain");
        assert_eq!(
            next_events(&mut stream, 3).await,
            vec![
                (Registered, s("3"), Unspecified),
                (Draining, s("3"), Unspecified),
                (Deregistered, s("3"), Drained)
            ]
        );
        // Expired: no heartbeat for a 2 s lease.
        registry
            .register(instance("web", "4", Lease::TtlSeconds(2), &[]))
            .await
            .expect("register");
        assert_eq!(
            next_events(&mut stream, 2).await,
            vec![
                (Registered, s("4"), Unspecified),
                (Deregistered, s("4"), Expired)
            ]
        );
        // Status numbers: an update.
        let status = SetStatusRequest {
            service: s("web"),
            id: s("0"),
            status: [(s("load"), 0.5)].into_iter().collect(),
        };
        registry.set_status(status).await.expect("status");
        assert_eq!(
            next_events(&mut stream, 1).await,
            vec![(Updated, s("0"), Unspecified)]
        );
        // Another service's changes are not this stream's.
        registry
            .register(instance("other", "x", Lease::NoLease(true), &[]))
            .await
            .expect("register");
        let quiet = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
        assert!(quiet.is_err(), "{quiet:?}");
    });
}

#[test]
fn list_then_watch_has_no_gap_while_registrations_happen() {
    let c = Cluster::start(3);
    let rt = runtime();
    rt.block_on(async {
        let mut writer = client(&c, c.leader()).await;
        let total = 150;
        let writes = tokio::spawn(async move {
            for n in 0..total {
                writer
                    .register(instance("load", &n.to_string(), Lease::NoLease(true), &[]))
                    .await
                    .expect("register");
            }
        });
        // Start the list-then-watch while the registrations are under way.
        let mut registry = client(&c, c.followers()[0]).await;
        let started = Instant::now();
        while ids(&mut registry, discover("load", "")).await.len() < 20 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "registrations under way"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let watch = WatchServicesRequest {
            service: "load".into(),
            snapshot: true,
            ..Default::default()
        };
        let mut stream = registry
            .watch_services(watch)
            .await
            .expect("watch")
            .into_inner();
        let mut seen: Vec<String> = Vec::new();
        while seen.len() < total {
            let response = next_response(&mut stream).await;
            seen.extend(
                response
                    .events
                    .into_iter()
                    .filter_map(|e| e.instance.map(|i| i.id)),
            );
        }
        writes.await.expect("writer");
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), seen.len(), "no instance twice");
        assert_eq!(sorted.len(), total, "no instance missing");
    });
}

#[test]
fn the_service_cli_registers_lists_watches_and_removes() {
    let c = Cluster::start(3);
    let mut watch = std::process::Command::new(env!("CARGO_BIN_EXE_roster"))
        .args(["service", "watch", "--service", "cli", "-o", "json"])
        .arg(format!("--endpoints={}", c.endpoint(2)))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("roster service watch");
    let stdout = watch.stdout.take().expect("stdout");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    // The watch is registered once a first event arrives; register until then.
    let register = "service register --service cli --id a --endpoint http://10.0.0.1:8080 \
                    --ttl 30s --meta zone=a --tag web";
    let started = Instant::now();
    let first = loop {
        let (ok, out, err) = c.roster_line(0, register);
        assert!(ok, "{out}{err}");
        assert!(out.starts_with("registered cli/a on lease "), "{out}");
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(500)) {
            break line;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the watch saw nothing"
        );
    };
    let event: serde_json::Value = serde_json::from_str(&first).expect("json line");
    assert_eq!(event["instance"]["id"], "a", "{event}");

    let list = "service list --service cli --selector zone=a,tag:web -o json";
    let (ok, out, err) = c.roster_line(1, list);
    assert!(ok, "{err}");
    let listed: serde_json::Value = serde_json::from_str(out.trim()).expect("one json line");
    assert_eq!(listed["endpoints"][0], "http://10.0.0.1:8080", "{listed}");
    assert_eq!(listed["metadata"]["zone"], "a");

    for (i, line) in [
        (1, "service drain --service cli --id a --deadline 300ms"),
        (0, "service register --service cli --id b --no-lease"),
        (
            0,
            "service force-deregister --service cli --id b --reason retired --actor bob",
        ),
    ] {
        let (ok, _, err) = c.roster_line(i, line);
        assert!(ok, "{line}: {err}");
    }
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let line = lines
            .recv_timeout(Duration::from_secs(10))
            .expect("an event line");
        let event: serde_json::Value = serde_json::from_str(&line).expect("json line");
        let seen_line = format!(
            "{} {} {}",
            event["kind"].as_str().unwrap_or(""),
            event["instance"]["id"].as_str().unwrap_or(""),
            event["reason"].as_str().unwrap_or("")
        );
        // Re-registrations of "a" from the loop above may still be on their way.
        if seen_line != "updated a " && seen_line != "registered a " {
            seen.push(seen_line);
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            "deregistered a drained",
            "deregistered b forced",
            "draining a ",
            "registered b "
        ]
    );
    let _ = watch.kill();
    let _ = watch.wait();

    let (ok, out, _) = c.roster_line(2, "audit list -o json");
    assert!(ok);
    let entry: serde_json::Value = serde_json::from_str(out.trim()).expect("one entry");
    assert_eq!(
        (entry["actor"].as_str(), entry["reason"].as_str()),
        (Some("bob"), Some("retired"))
    );

    // Bad input: a precise error and a failing exit status.
    let (ok, _, err) = c.roster(0, &["service", "list", "--selector", "zone in a"]);
    assert!(!ok && err.contains("position 8"), "{err}");
    let bad_endpoint = "service register --service cli --id c --endpoint nohost --no-lease";
    let (ok, _, err) = c.roster_line(0, bad_endpoint);
    assert!(!ok && err.contains("--endpoint \"nohost\""), "{err}");
    let (ok, _, err) = c.roster_line(0, "service deregister --service cli --id zz");
    assert!(!ok && err.contains("instance not found"), "{err}");
}

async fn next_response(stream: &mut Streaming<WatchServicesResponse>) -> WatchServicesResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("in time")
        .expect("open")
        .expect("not ended")
}

#[test]
fn a_registry_watch_resumes_on_another_node_after_a_kill() {
    let mut c = Cluster::start(3);
    let victim = c.followers()[0];
    let survivor = (0..3)
        .find(|&i| i != victim && i != c.leader())
        .expect("third node");
    let rt = runtime();
    let leader = c.leader();
    let mut writer = rt.block_on(client(&c, leader));
    let register_range = |writer: &mut RegistryClient<Channel>, range: std::ops::Range<usize>| {
        rt.block_on(async {
            for n in range {
                writer
                    .register(instance("r", &n.to_string(), Lease::NoLease(true), &[]))
                    .await
                    .expect("register");
            }
        })
    };
    let watch = |from_revision: i64| WatchServicesRequest {
        service: "r".into(),
        from_revision,
        ..Default::default()
    };
    let mut first = rt.block_on(async {
        client(&c, victim)
            .await
            .watch_services(watch(0))
            .await
            .expect("watch")
            .into_inner()
    });
    register_range(&mut writer, 0..5);
    let mut events = Vec::new();
    while events.len() < 5 {
        let response = rt.block_on(next_response(&mut first));
        events.extend(response.events);
    }
    c.kill(victim);
    let last = events.last().expect("events").revision;
    register_range(&mut writer, 5..10);
    let mut resumed = rt.block_on(async {
        client(&c, survivor)
            .await
            .watch_services(watch(last + 1))
            .await
            .expect("watch")
            .into_inner()
    });
    while events.len() < 10 {
        let response = rt.block_on(next_response(&mut resumed));
        events.extend(response.events);
    }
    let ids: Vec<String> = events
        .iter()
        .filter_map(|e| e.instance.as_ref().map(|i| i.id.clone()))
        .collect();
    assert_eq!(
        ids,
        (0..10).map(|n| n.to_string()).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    assert!(events.windows(2).all(|p| p[0].revision < p[1].revision));
}
