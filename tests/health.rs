//! Black-box tests of health checks on a three-node cluster: small real HTTP,
//! TCP and gRPC servers started by the test are probed by the leader; their
//! failures move instances to warning and critical at the configured counts
//! (seen as typed watch events with the check output), a long critical spell
//! removes the instance with reason health, recovery returns it to passing,
//! ttl checks follow reports, `deregister=false` keeps an expired instance,
//! and a new leader takes the checks over without false failures.
//! (Roster's own API: not for etcd.)

mod harness;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicI32, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use harness::Cluster;
use roster_proto::grpc_health::health_check_response::ServingStatus;
use roster_proto::grpc_health::health_server::{Health as HealthService, HealthServer};
use roster_proto::grpc_health::{HealthCheckRequest, HealthCheckResponse};
use roster_proto::registry::register_request::Lease;
use roster_proto::registry::registry_client::RegistryClient;
use roster_proto::registry::{
    Check, CheckKind, CheckResult, EventKind, Health, Instance, RegisterRequest, RemovalReason,
    ReportCheckRequest, WatchServicesResponse,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

async fn client(c: &Cluster, i: usize) -> RegistryClient<Channel> {
    RegistryClient::new(c.channel(i).await)
}

/// An HTTP server answering every request with the status it is set to.
struct HttpTarget {
    url: String,
    status: Arc<AtomicU16>,
}

async fn http_target() -> HttpTarget {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/healthz", listener.local_addr().expect("addr"));
    let status = Arc::new(AtomicU16::new(200));
    let answer = status.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let status = answer.load(Ordering::SeqCst);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let body = if status == 200 { "ok" } else { "failing" };
                let reply = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    });
    HttpTarget { url, status }
}

/// A gRPC server whose health service answers the status it is set to.
#[derive(Clone)]
struct GrpcTarget {
    status: Arc<AtomicI32>,
}

#[tonic::async_trait]
impl HealthService for GrpcTarget {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        if request.into_inner().service != "orders" {
            return Err(Status::not_found("unknown service"));
        }
        Ok(Response::new(HealthCheckResponse {
            status: self.status.load(Ordering::SeqCst),
        }))
    }

    type WatchStream =
        Pin<Box<dyn futures::Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("watch"))
    }
}

async fn grpc_target() -> (String, Arc<AtomicI32>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    let status = Arc::new(AtomicI32::new(ServingStatus::Serving as i32));
    let service = GrpcTarget {
        status: status.clone(),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(HealthServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (address, status)
}

fn check(kind: CheckKind, target: &str) -> Check {
    Check {
        kind: kind as i32,
        target: target.into(),
        interval_ms: 300,
        timeout_ms: 250,
        failures_before_warning: 1,
        failures_before_critical: 1,
        successes_before_passing: 1,
        ..Default::default()
    }
}

fn checked(service: &str, id: &str, check: Check) -> RegisterRequest {
    RegisterRequest {
        service: service.into(),
        id: id.into(),
        weight: 1,
        lease: Some(Lease::NoLease(true)),
        check: Some(check),
        ..Default::default()
    }
}

/// One typed event: kind, instance id, health after it, output, reason.
#[derive(Debug, Clone)]
struct Seen {
    kind: EventKind,
    id: String,
    health: Health,
    output: String,
    reason: RemovalReason,
}

/// The events of the next response, or `None` if none comes within `wait`.
async fn next_events(
    stream: &mut Streaming<WatchServicesResponse>,
    wait: Duration,
) -> Option<Vec<Seen>> {
    let response = tokio::time::timeout(wait, stream.message()).await.ok()?;
    let response = response.expect("stream open").expect("not ended");
    Some(
        response
            .events
            .into_iter()
            .map(|e| {
                let instance = e.instance.unwrap_or_default();
                Seen {
                    kind: EventKind::try_from(e.kind).expect("kind"),
                    health: Health::try_from(instance.health).expect("health"),
                    id: instance.id,
                    output: instance.health_output,
                    reason: RemovalReason::try_from(e.reason).expect("reason"),
                }
            })
            .collect(),
    )
}

/// Collects events until `done` holds of everything seen (at most 20 s).
async fn events_until(
    stream: &mut Streaming<WatchServicesResponse>,
    done: impl Fn(&[Seen]) -> bool,
) -> Vec<Seen> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while !done(&seen) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_events(stream, left).await {
            Some(events) => seen.extend(events),
            None => panic!("events did not arrive in 20 s; seen: {seen:#?}"),
        }
    }
    seen
}

/// The health-change events of `id`, in order.
fn changes<'a>(seen: &'a [Seen], id: &str) -> Vec<&'a Seen> {
    seen.iter()
        .filter(|s| s.id == id && s.kind == EventKind::HealthChanged)
        .collect()
}

/// The health changes of `id`, in order.
fn health_trail(seen: &[Seen], id: &str) -> Vec<Health> {
    changes(seen, id).iter().map(|s| s.health).collect()
}

/// Instance `id` of `service` as node `i` lists it (a linearizable read).
async fn one(c: &Cluster, i: usize, service: &str, id: &str) -> Option<Instance> {
    let instances = c.instances(i, service).await;
    instances.into_iter().find(|instance| instance.id == id)
}

#[test]
fn a_failing_http_check_goes_warning_then_critical_then_is_removed_and_recovers() {
    let c = Cluster::start(3);
    let rt = runtime();
    rt.block_on(async {
        let target = http_target().await;
        let reader = c.followers()[0];
        let mut registry = client(&c, reader).await;
        let mut stream = c.watch_services(c.followers()[1], "web").await;
        let damped = Check {
            failures_before_warning: 2,
            failures_before_critical: 4,
            successes_before_passing: 2,
            ..check(CheckKind::Http, &target.url)
        };
        let removed = Check {
            deregister_critical_after_ms: 1_000,
            ..damped.clone()
        };
        for request in [
            checked("web", "kept", damped),
            checked("web", "removed", removed),
        ] {
            registry.register(request).await.expect("register");
        }
        events_until(&mut stream, |s| s.len() >= 2).await;
        target.status.store(500, Ordering::SeqCst);
        let seen = events_until(&mut stream, |s| {
            health_trail(s, "kept").ends_with(&[Health::Critical])
                && s.iter()
                    .any(|e| e.id == "removed" && e.kind == EventKind::Deregistered)
        })
        .await;
        for id in ["kept", "removed"] {
            assert_eq!(
                health_trail(&seen, id),
                vec![Health::Warning, Health::Critical],
                "{id}: warning after 2 failures, critical after 4: {seen:#?}"
            );
        }
        let critical = seen
            .iter()
            .find(|s| s.id == "kept" && s.health == Health::Critical)
            .expect("critical event");
        assert!(
            critical.output.contains("500") && critical.output.contains(&target.url),
            "the output that caused it: {}",
            critical.output
        );
        let removal = seen
            .iter()
            .find(|s| s.kind == EventKind::Deregistered)
            .expect("removal");
        assert_eq!(
            (removal.id.as_str(), removal.reason),
            ("removed", RemovalReason::Health)
        );
        assert!(one(&c, reader, "web", "removed").await.is_none());

        target.status.store(200, Ordering::SeqCst);
        let seen = events_until(&mut stream, |s| !health_trail(s, "kept").is_empty()).await;
        assert_eq!(
            health_trail(&seen, "kept"),
            vec![Health::Passing],
            "{seen:#?}"
        );
        let kept = one(&c, reader, "web", "kept").await.expect("still there");
        assert_eq!(
            (kept.health(), kept.critical_since_ms),
            (Health::Passing, 0)
        );
    });
}

#[test]
fn grpc_not_serving_and_a_closed_tcp_port_are_detected() {
    let c = Cluster::start(3);
    let rt = runtime();
    rt.block_on(async {
        let (grpc_address, grpc_status) = grpc_target().await;
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let tcp_address = tcp.local_addr().expect("addr").to_string();
        let mut registry = client(&c, c.leader()).await;
        let mut stream = c.watch_services(c.leader(), "svc").await;
        let requests = [
            checked(
                "svc",
                "grpc",
                check(CheckKind::Grpc, &format!("{grpc_address}/orders")),
            ),
            checked("svc", "tcp", check(CheckKind::Tcp, &tcp_address)),
        ];
        for request in requests {
            registry.register(request).await.expect("register");
        }
        events_until(&mut stream, |s| s.len() >= 2).await;
        grpc_status.store(ServingStatus::NotServing as i32, Ordering::SeqCst);
        drop(tcp);
        let seen = events_until(&mut stream, |s| {
            ["grpc", "tcp"]
                .iter()
                .all(|id| health_trail(s, id).contains(&Health::Critical))
        })
        .await;
        let output = |id: &str| {
            seen.iter()
                .rev()
                .find(|s| s.id == id && s.health == Health::Critical)
                .map(|s| s.output.clone())
                .unwrap_or_default()
        };
        assert!(output("grpc").contains("NOT_SERVING"), "{}", output("grpc"));
        assert!(output("tcp").contains("TCP connect"), "{}", output("tcp"));
        grpc_status.store(ServingStatus::Serving as i32, Ordering::SeqCst);
        events_until(&mut stream, |s| {
            health_trail(s, "grpc").contains(&Health::Passing)
        })
        .await;
    });
}

fn report(id: &str, result: CheckResult, output: &str) -> ReportCheckRequest {
    ReportCheckRequest {
        service: "batch".into(),
        id: id.into(),
        result: result as i32,
        output: output.into(),
    }
}

#[test]
fn ttl_checks_follow_reports_and_turn_critical_without_them() {
    let c = Cluster::start(3);
    let rt = runtime();
    rt.block_on(async {
        let follower = c.followers()[0];
        let mut registry = client(&c, follower).await;
        let ttl = Check {
            interval_ms: 1_500,
            ..check(CheckKind::Ttl, "")
        };
        registry
            .register(checked("batch", "job", ttl))
            .await
            .expect("register");
        // Reports reach the leader's checker from any node, and answer the
        // health after them.
        let (ok, out, err) = c.roster(
            follower,
            &[
                "check",
                "warn",
                "--service",
                "batch",
                "--id",
                "job",
                "--output",
                "queue deep",
            ],
        );
        assert!(ok && out.contains("batch/job is warning"), "{out}{err}");
        let job = one(&c, follower, "batch", "job").await.expect("job");
        assert_eq!(
            (job.health(), job.health_output.as_str()),
            (Health::Warning, "queue deep")
        );
        let answer = registry
            .report_check(report("job", CheckResult::Pass, "fine"))
            .await
            .expect("report")
            .into_inner();
        assert_eq!(answer.health(), Health::Passing);
        // No report within the TTL: critical. (A linearizable read first, so
        // the follower's watch starts after the change to passing.)
        let job = one(&c, follower, "batch", "job").await.expect("job");
        assert_eq!(job.health(), Health::Passing);
        let mut stream = c.watch_services(follower, "batch").await;
        let seen = events_until(&mut stream, |s| !health_trail(s, "job").is_empty()).await;
        assert_eq!(health_trail(&seen, "job"), vec![Health::Critical]);
        let output = &changes(&seen, "job")[0].output;
        assert!(output.contains("no report within 1500 ms"), "{output}");
        registry
            .report_check(report("job", CheckResult::Pass, "back"))
            .await
            .expect("report");
        assert_eq!(
            one(&c, follower, "batch", "job").await.map(|i| i.health()),
            Some(Health::Passing)
        );
        // Refusals.
        let unknown = registry
            .report_check(report("nobody", CheckResult::Pass, ""))
            .await
            .expect_err("unknown instance");
        assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
        registry
            .register(checked(
                "batch",
                "http",
                check(CheckKind::Http, "http://127.0.0.1:9/"),
            ))
            .await
            .expect("register");
        let not_ttl = registry
            .report_check(report("http", CheckResult::Pass, ""))
            .await
            .expect_err("not a ttl check");
        assert_eq!(not_ttl.code(), Code::FailedPrecondition, "{not_ttl:?}");
    });
}

#[test]
fn deregister_false_keeps_an_expired_instance_critical_until_it_registers_again() {
    let mut c = Cluster::start(3);
    let register = [
        "service",
        "register",
        "--service",
        "agent",
        "--id",
        "a1",
        "--endpoint",
        "10.0.0.9:22",
        "--ttl",
        "2s",
        "--deregister=false",
        "-o",
        "json",
    ];
    let (ok, out, err) = c.roster(0, &register);
    assert!(ok, "{out}{err}");
    let first: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    let rt = runtime();
    rt.block_on(async {
        let mut stream = c.watch_services(2, "agent").await;
        let seen = events_until(&mut stream, |s| !health_trail(s, "a1").is_empty()).await;
        assert_eq!(health_trail(&seen, "a1"), vec![Health::Critical]);
        assert_eq!(changes(&seen, "a1")[0].output, "keepalive expired");
        assert!(seen.iter().all(|s| s.kind != EventKind::Deregistered));
        let kept = one(&c, 1, "agent", "a1").await.expect("kept");
        assert!(
            kept.keepalive_expired && kept.lease == 0 && !kept.deregister,
            "{kept:?}"
        );
    });
    // The keepalive state is replicated: a restart of every node keeps it
    // (sensu/sensu-go#2584 lost it).
    c.kill_all();
    for i in 0..3 {
        c.restart_no_wait(i);
    }
    for i in 0..3 {
        c.wait_node_ready(i, Duration::from_secs(30));
    }
    rt.block_on(async {
        let kept = one(&c, 1, "agent", "a1")
            .await
            .expect("kept across restarts");
        assert!(
            kept.keepalive_expired && kept.health() == Health::Critical,
            "{kept:?}"
        );
    });
    let lease = first["lease"].as_str().expect("lease");
    let ttl = c.ctl(0, &["lease", "timetolive", lease]);
    assert!(ttl.stdout.contains("already expired"), "{}", ttl.stdout);
    let (ok, out, err) = c.roster(0, &register);
    assert!(ok, "{out}{err}");
    let second: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_ne!(
        second["lease"], first["lease"],
        "an expired lease never comes back"
    );
    rt.block_on(async {
        let again = one(&c, 1, "agent", "a1").await.expect("registered");
        assert_eq!(
            (
                again.health(),
                again.keepalive_expired,
                again.critical_since_ms
            ),
            (Health::Passing, false, 0)
        );
    });
}

#[test]
fn bad_check_definitions_are_refused_with_the_reason() {
    let c = Cluster::start(1);
    let base = "service register --service x --id y --no-lease";
    let cases = [
        (
            "--check-http http://127.0.0.1:1/ --check-interval 0",
            "interval must be positive",
        ),
        (
            "--check-tcp 127.0.0.1:1 --check-interval 1s --check-timeout 5s",
            "timeout 5000 ms must be positive and at most the interval 1000 ms",
        ),
        ("--check-tcp nohost", "a tcp check needs HOST:PORT"),
        (
            "--check-http https://example/",
            "an http check needs an http://",
        ),
        (
            "--check-tcp 127.0.0.1:1 --failures-before-warning 5",
            "failures_before_warning must be from 1 to failures_before_critical (3)",
        ),
        (
            "--check-tcp 127.0.0.1:1 --check-grpc 127.0.0.1:2",
            "cannot be used with",
        ),
    ];
    for (flags, message) in cases {
        let line = format!("{base} {flags}");
        let args: Vec<&str> = line.split_whitespace().collect();
        let (ok, out, err) = c.roster(0, &args);
        assert!(!ok && err.contains(message), "{flags}: {out}{err}");
    }
    let (ok, out, _) = c.roster(0, &["service", "list", "--health", "any", "-o", "json"]);
    assert!(ok && out.trim().is_empty(), "nothing registered: {out}");
}

#[test]
fn a_new_leader_takes_the_checks_over_without_false_failures() {
    let mut c = Cluster::start(3);
    let rt = runtime();
    let target = rt.block_on(http_target());
    let old = c.leader();
    let watcher = c.followers()[0];
    let mut stream = rt.block_on(async {
        let mut registry = client(&c, old).await;
        let mut stream = c.watch_services(watcher, "fleet").await;
        for n in 0..20 {
            let request = checked(
                "fleet",
                &format!("i{n}"),
                check(CheckKind::Http, &target.url),
            );
            registry.register(request).await.expect("register");
        }
        events_until(&mut stream, |s| s.len() >= 20).await;
        stream
    });
    c.kill(old);
    assert_ne!(c.leader(), old, "a new leader");
    rt.block_on(async {
        // Five intervals under the new leader: every probe passes, so nothing
        // may change (a burst of false failures would show here).
        let quiet = next_events(&mut stream, Duration::from_millis(1_500)).await;
        assert!(
            quiet.is_none(),
            "no health change after the takeover: {quiet:#?}"
        );
        target.status.store(503, Ordering::SeqCst);
        let seen = events_until(&mut stream, |s| {
            (0..20).all(|n| health_trail(s, &format!("i{n}")).contains(&Health::Critical))
        })
        .await;
        let changes: BTreeMap<&str, usize> = seen.iter().fold(BTreeMap::new(), |mut m, s| {
            *m.entry(s.id.as_str()).or_default() += 1;
            m
        });
        assert!(
            changes.values().all(|&n| n == 1),
            "one change each: {changes:?}"
        );
    });
}
