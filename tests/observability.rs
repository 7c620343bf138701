//! What operators watch, black-box: `/metrics` and `/health` on
//! `--listen-metrics-urls`, the gRPC health service and reflection, JSON
//! logs, and the `roster status` table. Roster only (etcd's metric names differ).

mod harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use harness::{
    free_port, grpc_channel, is_etcd, lease_hex, parse_lease_grant, Cluster, ClusterOptions,
};
use roster_proto::grpc_health::health_check_response::ServingStatus;
use roster_proto::grpc_health::health_client::HealthClient;
use roster_proto::grpc_health::HealthCheckRequest;

/// `GET path` on `port`: (status line, body).
fn http_get(port: u16, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a whole answer");
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

/// The value of the sample `name` (with its labels, if any) in `text`.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

/// Watches key `a` from revision 1 until its first event arrives.
async fn watch_history(endpoint: String) {
    use roster_proto::etcdserverpb::watch_client::WatchClient;
    use roster_proto::etcdserverpb::watch_request::RequestUnion;
    use roster_proto::etcdserverpb::{WatchCreateRequest, WatchRequest};
    let mut client = WatchClient::new(grpc_channel(endpoint, None).await);
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: b"a".to_vec(),
            start_revision: 1,
            ..Default::default()
        })),
    };
    // The sender stays alive until the event came: a closed request stream
    // may end the watch.
    let (requests, queue) = tokio::sync::mpsc::channel(1);
    requests.send(create).await.expect("queue the create");
    let mut stream = client
        .watch(tokio_stream::wrappers::ReceiverStream::new(queue))
        .await
        .expect("watch")
        .into_inner();
    let events = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let message = stream
                .message()
                .await
                .expect("watch stream")
                .expect("a message");
            if !message.events.is_empty() {
                return message.events.len();
            }
        }
    })
    .await
    .expect("the put of a, replayed");
    assert_eq!(events, 1);
    drop(requests);
}

/// The services gRPC reflection lists, as grpcurl asks for them.
async fn reflected_services(endpoint: String) -> Vec<String> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut client = ServerReflectionClient::new(grpc_channel(endpoint, None).await);
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([list]))
        .await
        .expect("reflection")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("answer")
        .expect("one answer");
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("not a service list: {other:?}"),
    }
}

#[test]
fn metrics_health_and_json_logs_of_a_working_node() {
    if is_etcd() {
        return;
    }
    let port = free_port();
    let c = Cluster::start_with(ClusterOptions {
        extra_args: vec![
            "--listen-metrics-urls".into(),
            format!("http://127.0.0.1:{port}"),
            "--log-format".into(),
            "json".into(),
        ],
        ..ClusterOptions::new(1)
    });
    c.ctl(0, &["put", "a", "1"]).expect_ok();
    let lease = parse_lease_grant(&c.ctl(0, &["lease", "grant", "60"]));
    c.ctl(0, &["lease", "keep-alive", "--once", &lease_hex(lease)])
        .expect_ok();
    c.ctl(0, &["lease", "revoke", &lease_hex(lease)])
        .expect_ok();
    let (ok, out, err) = c.roster(
        0,
        &[
            "service",
            "register",
            "--service",
            "web",
            "--id",
            "w1",
            "--endpoint",
            "10.0.0.1:80",
            "--ttl",
            "30s",
        ],
    );
    assert!(ok, "{out}{err}");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(watch_history(c.endpoint(0)));

    let (status, text) = http_get(port, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(sample(&text, "roster_wal_fsync_duration_seconds_count") >= 1.0);
    assert!(sample(&text, "roster_apply_duration_seconds_count") >= 3.0);
    assert!(sample(&text, "roster_proposals_total{outcome=\"committed\"}") >= 3.0);
    assert_eq!(sample(&text, "roster_lease_grants_total"), 1.0);
    assert!(sample(&text, "roster_lease_keepalives_total") >= 1.0);
    assert_eq!(
        sample(&text, "roster_lease_removals_total{reason=\"revoked\"}"),
        1.0
    );
    assert!(sample(&text, "roster_watch_events_sent_total") >= 1.0);
    assert_eq!(sample(&text, "roster_server_is_leader"), 1.0);
    assert!(sample(&text, "roster_leader_changes_seen_total") >= 1.0);
    assert_eq!(
        sample(
            &text,
            "roster_registry_instances{service=\"web\",health=\"passing\"}"
        ),
        1.0
    );
    assert!(
        text.contains("# TYPE roster_wal_fsync_duration_seconds histogram"),
        "{text}"
    );

    let (status, body) = http_get(port, "/health");
    assert_eq!(
        (status.as_str(), body.trim()),
        ("HTTP/1.1 200 OK", "{\"health\":\"true\"}")
    );
    assert_eq!(http_get(port, "/nothing").0, "HTTP/1.1 404 Not Found");

    rt.block_on(async {
        let mut health =
            HealthClient::new(grpc_channel(c.endpoint(0), Some(Duration::from_secs(5))).await);
        for service in ["", "etcdserverpb.KV", "roster.v1.Registry"] {
            let answer = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .expect("check")
                .into_inner();
            assert_eq!(answer.status, ServingStatus::Serving as i32, "{service:?}");
        }
        let unknown = health
            .check(HealthCheckRequest {
                service: "no.Such".into(),
            })
            .await
            .expect_err("unknown service");
        assert_eq!(unknown.code(), tonic::Code::NotFound);
        let services = reflected_services(c.endpoint(0)).await;
        for service in [
            "etcdserverpb.KV",
            "roster.v1.Registry",
            "grpc.health.v1.Health",
        ] {
            assert!(services.iter().any(|s| s == service), "{services:?}");
        }
    });

    let log = std::fs::read_to_string(&c.config(0).log_path).expect("log");
    let started = log
        .lines()
        .find(|l| l.contains("node started"))
        .expect("a node started line");
    let line: serde_json::Value = serde_json::from_str(started).expect("a JSON log line");
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["fields"]["message"], "node started", "{line}");
}

#[test]
fn roster_status_shows_every_member_with_its_role_and_lag() {
    if is_etcd() {
        return;
    }
    let c = Cluster::start(3);
    c.ctl(1, &["put", "k", "v"]).expect_ok();
    let (ok, out, err) = c.roster(2, &["status"]);
    assert!(ok, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("LAG"),
        "{out}"
    );
    let roles = |role: &str| {
        lines
            .iter()
            .filter(|l| l.contains(&format!(" {role} ")))
            .count()
    };
    assert_eq!((roles("leader"), roles("follower")), (1, 2), "{out}");
    for i in 0..3 {
        assert!(out.contains(&format!("{:x}", c.member_id(i))), "{out}");
    }
    let (ok, json, _) = c.roster(0, &["status", "-o", "json"]);
    assert!(ok);
    let rows: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).expect("json row"))
        .collect();
    assert_eq!(rows.len(), 3, "{json}");
    assert!(
        rows.iter()
            .all(|r| r["lag"].as_u64().is_some_and(|lag| lag < 100)),
        "{json}"
    );
}
