//! `/metrics` (Prometheus text format) and `/health` on `--listen-metrics-urls`,
//! as etcd serves them there.
//!
//! A scrape renders the process-wide counters and histograms of
//! `roster_metrics` (bumped where things happen), then what this node knows
//! at that moment: its raft role, term and indexes, its watches, and the
//! registry's instances by service and health. The server is a few lines of
//! HTTP/1.1 (one request per connection, `Connection: close`): scrapers need
//! no more, and a web framework would cost more to build than this file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use roster_raft::{NodeId, Raft, SharedState};
use roster_state::registry::Health;
use roster_state::{MemEngine, StateMachine};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::watch::WatchHub;

/// Most bytes of a request read before answering.
const MAX_REQUEST: usize = 8 * 1024;
/// A connection that sends no whole request in this long is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What a scrape reads.
#[derive(Clone)]
pub struct MetricsSource {
    pub raft: Raft,
    pub state: SharedState,
    pub hub: Arc<WatchHub>,
    pub member_id: NodeId,
}

impl MetricsSource {
    /// The whole `/metrics` answer.
    pub fn render(&self) -> String {
        let mut out = String::new();
        roster_metrics::render(&mut out);
        self.render_raft(&mut out);
        gauge(
            &mut out,
            "roster_watchers",
            "Watches open on this member.",
            self.hub.watchers() as u64,
        );
        self.render_instances(&mut out);
        out
    }

    fn render_raft(&self, out: &mut String) {
        let m = self.raft.metrics().borrow().clone();
        let voter = m
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == self.member_id);
        let values = [
            (
                "roster_server_has_leader",
                "1 if this member knows a leader.",
                u64::from(m.current_leader.is_some()),
            ),
            (
                "roster_server_is_leader",
                "1 if this member is the leader.",
                u64::from(m.state == ServerState::Leader),
            ),
            (
                "roster_server_is_learner",
                "1 if this member is a learner.",
                u64::from(!voter),
            ),
            (
                "roster_raft_term",
                "The raft term this member is in.",
                m.current_term,
            ),
            (
                "roster_raft_last_log_index",
                "The index of the last entry in this member's log.",
                m.last_log_index.unwrap_or(0),
            ),
            (
                "roster_raft_applied_index",
                "The index of the last entry this member applied.",
                m.last_applied.map_or(0, |l| l.index),
            ),
            (
                "roster_raft_snapshot_index",
                "The last index of this member's current snapshot.",
                m.snapshot.map_or(0, |l| l.index),
            ),
        ];
        for (name, help, value) in values {
            gauge(out, name, help, value);
        }
    }

    /// Registry instances by service and health (draining ones too).
    fn render_instances(&self, out: &mut String) {
        let name = "roster_registry_instances";
        roster_metrics::header(
            out,
            name,
            "Registered instances, by service and health.",
            "gauge",
        );
        // A frozen copy (O(1) under the lock); decoding the instances then
        // holds up no apply.
        let frozen = match self.state.read() {
            Ok(sm) => sm.snapshot(),
            Err(_) => return,
        };
        let instances = frozen
            .and_then(|data| StateMachine::open(MemEngine::from_snapshot(data)))
            .and_then(|sm| sm.instances(None));
        let instances = match instances {
            Ok(instances) => instances,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: cannot read the registry");
                let _ = writeln!(out, "# roster_registry_instances unavailable: {e}");
                return;
            }
        };
        let mut counts: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
        for (instance, _) in instances {
            let health = match instance.health {
                Health::Passing => "passing",
                Health::Warning => "warning",
                Health::Critical => "critical",
            };
            *counts.entry((instance.spec.service, health)).or_insert(0) += 1;
        }
        for ((service, health), n) in counts {
            let service = escape(&service);
            let _ = writeln!(
                out,
                "{name}{{service=\"{service}\",health=\"{health}\"}} {n}"
            );
        }
    }
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    roster_metrics::header(out, name, help, "gauge");
    let _ = writeln!(out, "{name} {value}");
}

/// A label value as the text format wants it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Counts the leader changes this member sees, for as long as raft runs.
pub fn count_leader_changes(raft: Raft) {
    tokio::spawn(async move {
        let mut metrics = raft.metrics();
        let mut seen = metrics.borrow_and_update().current_leader;
        while metrics.changed().await.is_ok() {
            let leader = metrics.borrow_and_update().current_leader;
            if leader.is_some() && leader != seen {
                roster_metrics::LEADER_CHANGES.inc();
            }
            if leader.is_some() {
                seen = leader;
            }
        }
    });
}

/// Serves `/metrics` and `/health` on `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, source: MetricsSource, mut stop: watch::Receiver<bool>) {
    loop {
        let conn = tokio::select! {
            conn = listener.accept() => conn,
            _ = stop.wait_for(|s| *s) => return,
        };
        match conn {
            Ok((stream, _)) => {
                let source = source.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &source)).await;
                });
            }
            Err(e) => tracing::debug!(error = %e, "metrics listener: accept failed"),
        }
    }
}

/// Reads one request and answers it.
async fn answer(mut stream: TcpStream, source: &MetricsSource) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&request);
    let mut words = text.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, kind, body) = match (method, path) {
        ("GET", "/metrics") => {
            let source = source.clone();
            // Rendering reads the registry: off the async workers.
            let body = tokio::task::spawn_blocking(move || source.render())
                .await
                .unwrap_or_else(|e| format!("# render failed: {e}\n"));
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body)
        }
        ("GET", "/health") => {
            let has_leader = source.raft.metrics().borrow().current_leader.is_some();
            let (status, health) = if has_leader {
                ("200 OK", "true")
            } else {
                ("503 Service Unavailable", "false")
            };
            (
                status,
                "application/json",
                format!("{{\"health\":\"{health}\"}}\n"),
            )
        }
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
