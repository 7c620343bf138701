//! `roster kv|lease|member|status`: the etcd API from the shell, for operators
//! without etcdctl. Same `--endpoints` and `-o table|json` as `roster service`;
//! lease ids are hex, as etcdctl prints them.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use roster_proto::etcdserverpb::cluster_client::ClusterClient;
use roster_proto::etcdserverpb::kv_client::KvClient;
use roster_proto::etcdserverpb::lease_client::LeaseClient;
use roster_proto::etcdserverpb::watch_client::WatchClient;
use roster_proto::etcdserverpb::watch_request::RequestUnion;
use roster_proto::etcdserverpb::{
    DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest,
    LeaseRevokeRequest, LeaseTimeToLiveRequest, MemberAddRequest, MemberListRequest,
    MemberPromoteRequest, MemberRemoveRequest, MemberUpdateRequest, PutRequest, RangeRequest,
    WatchCreateRequest, WatchRequest,
};
use roster_proto::mvccpb::event::EventType;
use roster_proto::mvccpb::KeyValue;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::service::{connect_channel, print, status_error, Connection};

#[derive(Args, Debug)]
pub struct KvArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: KvCommand,
}

#[derive(Args, Debug)]
pub struct LeaseArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: LeaseCommand,
}

#[derive(Args, Debug)]
pub struct MemberArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: MemberCommand,
}

#[derive(Subcommand, Debug)]
enum KvCommand {
    Get {
        key: String,
        #[arg(long)]
        prefix: bool,
        /// Read as of this revision.
        #[arg(long, default_value_t = 0)]
        rev: i64,
    },
    Put {
        key: String,
        value: String,
        /// Attach to this lease (hex).
        #[arg(long)]
        lease: Option<String>,
    },
    Del {
        key: String,
        #[arg(long)]
        prefix: bool,
    },
    /// Follow changes (Ctrl-C stops).
    Watch {
        key: String,
        #[arg(long)]
        prefix: bool,
        #[arg(long, default_value_t = 0)]
        rev: i64,
    },
}

#[derive(Subcommand, Debug)]
enum LeaseCommand {
    /// Grant a lease of TTL (10s, 5m; a bare number is seconds).
    Grant {
        #[arg(value_parser = crate::duration::parse)]
        ttl: Duration,
    },
    /// Keep a lease alive (once, or until Ctrl-C).
    Keepalive {
        id: String,
        #[arg(long)]
        once: bool,
    },
    Revoke {
        id: String,
    },
    /// Remaining TTL (and attached keys with --keys).
    Ttl {
        id: String,
        #[arg(long)]
        keys: bool,
    },
    List,
}

#[derive(Subcommand, Debug)]
enum MemberCommand {
    List,
    /// Add a member; then start it with `roster serve` and the flags printed.
    Add {
        /// The new member's name (for the flags printed; the cluster learns
        /// it when the member starts).
        name: String,
        /// Its peer URLs (comma-separated).
        #[arg(long, value_delimiter = ',', required = true)]
        peer_urls: Vec<String>,
        /// Add it as a learner: it catches up without voting; promote it after.
        #[arg(long)]
        learner: bool,
    },
    /// Remove a member (hex id); it stops once it learns of it.
    Remove {
        id: String,
    },
    /// Make a learner (hex id) that has caught up a voter.
    Promote {
        id: String,
    },
    /// Change a member's (hex id) peer URLs; then restart it on them.
    Update {
        id: String,
        #[arg(long, value_delimiter = ',', required = true)]
        peer_urls: Vec<String>,
    },
}

fn member_id(text: &str) -> anyhow::Result<u64> {
    u64::from_str_radix(text.trim_start_matches("0x"), 16)
        .with_context(|| format!("{text:?} is not a hex member id"))
}

fn hex_id(text: &str) -> anyhow::Result<i64> {
    i64::from_str_radix(text.trim_start_matches("0x"), 16)
        .with_context(|| format!("{text:?} is not a hex lease id"))
}

fn range_end(key: &str, prefix: bool) -> Vec<u8> {
    if prefix {
        roster_state::prefix_range_end(key.as_bytes())
    } else {
        Vec::new()
    }
}

fn kv_line(output: crate::service::Output, kv: &KeyValue) {
    let key = String::from_utf8_lossy(&kv.key);
    let value = String::from_utf8_lossy(&kv.value);
    print(
        output,
        json!({"key": key, "value": value, "create_revision": kv.create_revision, "mod_revision": kv.mod_revision, "version": kv.version, "lease": format!("{:x}", kv.lease)}),
        || format!("{key}\n{value}"),
    );
}

pub async fn run_kv(args: KvArgs) -> anyhow::Result<()> {
    let channel = connect_channel(&args.connection).await?;
    kv(args.connection.output, channel, args.command).await
}

pub async fn run_lease(args: LeaseArgs) -> anyhow::Result<()> {
    let channel = connect_channel(&args.connection).await?;
    lease(args.connection.output, channel, args.command).await
}

pub async fn run_member(args: MemberArgs) -> anyhow::Result<()> {
    let output = args.connection.output;
    let channel = connect_channel(&args.connection).await?;
    let mut client = ClusterClient::new(channel);
    match args.command {
        MemberCommand::List => {
            let answer = client
                .member_list(MemberListRequest { linearizable: true })
                .await
                .map_err(status_error)?
                .into_inner();
            print_members(output, &answer.members);
        }
        MemberCommand::Add {
            name,
            peer_urls,
            learner,
        } => {
            let request = MemberAddRequest {
                peer_ur_ls: peer_urls.clone(),
                is_learner: learner,
            };
            let answer = client
                .member_add(request)
                .await
                .map_err(status_error)?
                .into_inner();
            let id = answer.member.map_or(0, |m| m.id);
            let initial_cluster: Vec<String> = answer
                .members
                .iter()
                .flat_map(|m| {
                    let name = if m.id == id {
                        name.as_str()
                    } else {
                        m.name.as_str()
                    };
                    m.peer_ur_ls.iter().map(move |u| format!("{name}={u}"))
                })
                .collect();
            let flags = format!(
                "--name {name} --initial-advertise-peer-urls {} --initial-cluster {} --initial-cluster-state existing",
                peer_urls.join(","),
                initial_cluster.join(",")
            );
            print(
                output,
                json!({"id": format!("{id:x}"), "learner": learner, "serve_flags": flags}),
                || {
                    let role = if learner { "learner" } else { "voter" };
                    format!(
                        "added {name} ({id:x}) as a {role}; start it with:\n  roster serve {flags}"
                    )
                },
            );
        }
        MemberCommand::Remove { id } => {
            let id = member_id(&id)?;
            client
                .member_remove(MemberRemoveRequest { id })
                .await
                .map_err(status_error)?;
            member_changed(output, "removed", id);
        }
        MemberCommand::Promote { id } => {
            let id = member_id(&id)?;
            client
                .member_promote(MemberPromoteRequest { id })
                .await
                .map_err(status_error)?;
            member_changed(output, "promoted", id);
        }
        MemberCommand::Update { id, peer_urls } => {
            let id = member_id(&id)?;
            let request = MemberUpdateRequest {
                id,
                peer_ur_ls: peer_urls,
            };
            client.member_update(request).await.map_err(status_error)?;
            member_changed(output, "updated", id);
        }
    }
    Ok(())
}

/// `<what> <hex id>`, or `{"<what>": "<hex id>"}`.
fn member_changed(output: crate::service::Output, what: &str, id: u64) {
    let hex = format!("{id:x}");
    print(output, json!({ what: hex }), || format!("{what} {hex}"));
}

fn print_members(output: crate::service::Output, members: &[roster_proto::etcdserverpb::Member]) {
    for m in members {
        let name = if m.name.is_empty() {
            "unstarted"
        } else {
            &m.name
        };
        print(
            output,
            json!({"id": format!("{:x}", m.id), "name": m.name, "peer_urls": m.peer_ur_ls,
                   "client_urls": m.client_ur_ls, "learner": m.is_learner}),
            || {
                let role = if m.is_learner { "learner" } else { "voter" };
                format!(
                    "{:x}, {name}, {role}, {}, {}",
                    m.id,
                    m.peer_ur_ls.join(","),
                    m.client_ur_ls.join(",")
                )
            },
        );
    }
}

async fn kv(
    output: crate::service::Output,
    channel: roster_client::AuthChannel,
    command: KvCommand,
) -> anyhow::Result<()> {
    let mut client = KvClient::new(channel.clone());
    match command {
        KvCommand::Get { key, prefix, rev } => {
            let request = RangeRequest {
                range_end: range_end(&key, prefix),
                key: key.into_bytes(),
                revision: rev,
                ..Default::default()
            };
            let answer = client
                .range(request)
                .await
                .map_err(status_error)?
                .into_inner();
            answer.kvs.iter().for_each(|kv| kv_line(output, kv));
        }
        KvCommand::Put { key, value, lease } => {
            let lease = lease.as_deref().map(hex_id).transpose()?.unwrap_or(0);
            let request = PutRequest {
                key: key.into_bytes(),
                value: value.into_bytes(),
                lease,
                ..Default::default()
            };
            let answer = client
                .put(request)
                .await
                .map_err(status_error)?
                .into_inner();
            let revision = answer.header.map_or(0, |h| h.revision);
            print(output, json!({"revision": revision}), || "OK".to_string());
        }
        KvCommand::Del { key, prefix } => {
            let request = DeleteRangeRequest {
                range_end: range_end(&key, prefix),
                key: key.into_bytes(),
                ..Default::default()
            };
            let answer = client
                .delete_range(request)
                .await
                .map_err(status_error)?
                .into_inner();
            print(output, json!({"deleted": answer.deleted}), || {
                answer.deleted.to_string()
            });
        }
        KvCommand::Watch { key, prefix, rev } => {
            let create = WatchCreateRequest {
                range_end: range_end(&key, prefix),
                key: key.into_bytes(),
                start_revision: rev,
                ..Default::default()
            };
            let (tx, rx) = mpsc::channel(1);
            tx.send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(create)),
            })
            .await
            .context("queueing the watch")?;
            let mut stream = WatchClient::new(channel)
                .watch(ReceiverStream::new(rx))
                .await
                .map_err(status_error)?
                .into_inner();
            while let Some(response) = stream.message().await.map_err(status_error)? {
                if response.canceled {
                    anyhow::bail!(
                        "watch canceled: {} (compacted at {})",
                        response.cancel_reason,
                        response.compact_revision
                    );
                }
                for event in response.events {
                    let kind = if event.r#type == EventType::Delete as i32 {
                        "DELETE"
                    } else {
                        "PUT"
                    };
                    let kv = event.kv.unwrap_or_default();
                    print(
                        output,
                        json!({"type": kind, "key": String::from_utf8_lossy(&kv.key), "value": String::from_utf8_lossy(&kv.value), "revision": kv.mod_revision}),
                        || {
                            format!(
                                "{kind}\n{}\n{}",
                                String::from_utf8_lossy(&kv.key),
                                String::from_utf8_lossy(&kv.value)
                            )
                        },
                    );
                }
            }
        }
    }
    Ok(())
}

async fn lease(
    output: crate::service::Output,
    channel: roster_client::AuthChannel,
    command: LeaseCommand,
) -> anyhow::Result<()> {
    let mut client = LeaseClient::new(channel);
    match command {
        LeaseCommand::Grant { ttl } => {
            let request = LeaseGrantRequest {
                ttl: ttl.as_secs_f64().ceil() as i64,
                id: 0,
            };
            let answer = client
                .lease_grant(request)
                .await
                .map_err(status_error)?
                .into_inner();
            print(
                output,
                json!({"id": format!("{:x}", answer.id), "ttl": answer.ttl}),
                || format!("lease {:x} granted with TTL({}s)", answer.id, answer.ttl),
            );
        }
        LeaseCommand::Keepalive { id, once } => {
            let id = hex_id(&id)?;
            let (tx, rx) = mpsc::channel(1);
            tx.send(LeaseKeepAliveRequest { id })
                .await
                .context("queueing the keepalive")?;
            let mut answers = client
                .lease_keep_alive(ReceiverStream::new(rx))
                .await
                .map_err(status_error)?
                .into_inner();
            loop {
                let Some(answer) = answers.message().await.map_err(status_error)? else {
                    return Ok(());
                };
                if answer.ttl <= 0 {
                    anyhow::bail!("lease {id:x} expired or revoked");
                }
                print(
                    output,
                    json!({"id": format!("{id:x}"), "ttl": answer.ttl}),
                    || format!("lease {id:x} keepalived with TTL({})", answer.ttl),
                );
                if once {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_secs((answer.ttl as u64 / 3).max(1))).await;
                tx.send(LeaseKeepAliveRequest { id })
                    .await
                    .context("the keepalive stream closed")?;
            }
        }
        LeaseCommand::Revoke { id } => {
            let id = hex_id(&id)?;
            client
                .lease_revoke(LeaseRevokeRequest { id })
                .await
                .map_err(status_error)?;
            print(
                output,
                json!({"id": format!("{id:x}"), "revoked": true}),
                || format!("lease {id:x} revoked"),
            );
        }
        LeaseCommand::Ttl { id, keys } => {
            let id = hex_id(&id)?;
            let answer = client
                .lease_time_to_live(LeaseTimeToLiveRequest { id, keys })
                .await
                .map_err(status_error)?
                .into_inner();
            if answer.ttl < 0 {
                anyhow::bail!("lease {id:x} not found");
            }
            let names: Vec<String> = answer
                .keys
                .iter()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect();
            print(
                output,
                json!({"id": format!("{id:x}"), "ttl": answer.ttl, "granted_ttl": answer.granted_ttl, "keys": names}),
                || {
                    format!(
                        "lease {id:x} granted with TTL({}s), remaining({}s), keys: {}",
                        answer.granted_ttl,
                        answer.ttl,
                        names.join(",")
                    )
                },
            );
        }
        LeaseCommand::List => {
            let answer = client
                .lease_leases(LeaseLeasesRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            for lease in answer.leases {
                print(output, json!({"id": format!("{:x}", lease.id)}), || {
                    format!("{:x}", lease.id)
                });
            }
        }
    }
    Ok(())
}
