//! `roster status`: every member of the cluster in one table: its role, raft
//! term and indexes, how far it lags the leader, and its data size. The
//! members come from `MemberList` on the first endpoint that answers; each
//! is then asked on its own first client URL.

use clap::Args;
use futures::future::join_all;
use roster_proto::etcdserverpb::cluster_client::ClusterClient;
use roster_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use roster_proto::etcdserverpb::{Member, MemberListRequest, StatusRequest, StatusResponse};
use serde_json::json;

use crate::service::{connect_channel, status_error, Connection, Output};

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    connection: Connection,
}

/// One member's row: its status, or why there is none.
struct Row {
    member: Member,
    endpoint: String,
    status: Result<StatusResponse, String>,
}

pub async fn run_status(args: StatusArgs) -> anyhow::Result<()> {
    let output = args.connection.output;
    let channel = connect_channel(&args.connection).await?;
    let members = ClusterClient::new(channel)
        .member_list(MemberListRequest {
            linearizable: false,
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .members;
    let rows = join_all(members.into_iter().map(|m| row(&args.connection, m))).await;
    let leader_index = rows
        .iter()
        .filter_map(|r| r.status.as_ref().ok())
        .find(|s| s.header.as_ref().is_some_and(|h| h.member_id == s.leader))
        .map(|s| s.raft_index);
    match output {
        Output::Json => rows
            .iter()
            .for_each(|r| println!("{}", json_row(r, leader_index))),
        Output::Table => print_table(&rows, leader_index),
    }
    let failed = rows.iter().filter(|r| r.status.is_err()).count();
    if failed > 0 {
        anyhow::bail!("{failed} member(s) did not answer");
    }
    Ok(())
}

async fn row(connection: &Connection, member: Member) -> Row {
    let Some(url) = member.client_ur_ls.first() else {
        let status = Err("not started".to_string());
        return Row {
            member,
            endpoint: String::new(),
            status,
        };
    };
    let one = connection.single(url);
    // Shown without the scheme when it is plain http.
    let endpoint = url.trim_start_matches("http://").to_string();
    let status = match connect_channel(&one).await {
        Ok(channel) => MaintenanceClient::new(channel)
            .status(StatusRequest {})
            .await
            .map(|s| s.into_inner())
            .map_err(|e| e.message().to_string()),
        Err(e) => Err(format!("{e:#}")),
    };
    Row {
        member,
        endpoint,
        status,
    }
}

fn role(member: &Member, status: &StatusResponse) -> &'static str {
    let own = status.header.as_ref().map_or(0, |h| h.member_id);
    if member.is_learner || status.is_learner {
        "learner"
    } else if own == status.leader {
        "leader"
    } else {
        "follower"
    }
}

fn size(bytes: i64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn json_row(r: &Row, leader_index: Option<u64>) -> serde_json::Value {
    let mut row =
        json!({"name": r.member.name, "id": format!("{:x}", r.member.id), "endpoint": r.endpoint});
    let more = match &r.status {
        Ok(s) => json!({
            "role": role(&r.member, s), "term": s.raft_term, "index": s.raft_index,
            "applied": s.raft_applied_index,
            "lag": leader_index.map(|l| l.saturating_sub(s.raft_applied_index)),
            "db_size": s.db_size,
        }),
        Err(e) => json!({ "error": e }),
    };
    if let (Some(row), Some(more)) = (row.as_object_mut(), more.as_object()) {
        row.extend(more.clone());
    }
    row
}

fn print_table(rows: &[Row], leader_index: Option<u64>) {
    let header = [
        "NAME", "ID", "ENDPOINT", "ROLE", "TERM", "INDEX", "APPLIED", "LAG", "DB SIZE",
    ];
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for r in rows {
        let name = if r.member.name.is_empty() {
            "(unstarted)"
        } else {
            &r.member.name
        };
        let mut line = vec![
            name.to_string(),
            format!("{:x}", r.member.id),
            r.endpoint.clone(),
        ];
        match &r.status {
            Ok(s) => line.extend([
                role(&r.member, s).to_string(),
                s.raft_term.to_string(),
                s.raft_index.to_string(),
                s.raft_applied_index.to_string(),
                leader_index.map_or("?".into(), |l| {
                    l.saturating_sub(s.raft_applied_index).to_string()
                }),
                size(s.db_size),
            ]),
            Err(e) => line.push(format!("({e})")),
        }
        lines.push(line);
    }
    let columns = header.len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            lines
                .iter()
                .filter_map(|l| l.get(c))
                .map(|v| v.len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for line in lines {
        let cells: Vec<String> = line
            .iter()
            .enumerate()
            .map(|(c, v)| format!("{v:<width$}", width = widths[c]))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
}
