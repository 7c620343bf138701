//! `roster snapshot save|status|restore`: backups of a cluster's state, and new
//! clusters seeded from them. `save` speaks only the etcd API, so it saves
//! from etcd too; `status` and `restore` read Roster's backup format (see
//! `roster_raft::backup`), which etcd's tools cannot open, as Roster's cannot
//! open etcd's bbolt files.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use roster_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use roster_proto::etcdserverpb::SnapshotRequest;
use roster_server::restore::{restore, RestoreOptions};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::serve::parse_initial_cluster;
use crate::service::{connect_channel, print, status_error, Connection, Output};

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    command: SnapshotCommand,
}

#[derive(Subcommand, Debug)]
enum SnapshotCommand {
    /// Save a backup of one member's state to FILE (from etcd too).
    Save {
        file: PathBuf,
        #[command(flatten)]
        connection: Connection,
    },
    /// What a backup holds: its hash, revision, keys and size.
    Status {
        file: PathBuf,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Build the data dir of one member of a new cluster from a backup; then
    /// start it with `roster serve` and the same flags.
    Restore(RestoreArgs),
}

/// etcdctl's `snapshot restore` flags, and `roster serve`'s defaults.
#[derive(Args, Debug)]
struct RestoreArgs {
    file: PathBuf,
    /// The new member's name.
    #[arg(long, default_value = "default")]
    name: String,
    /// Data dir to create (must not exist or be empty) [default: ./<name>.roster].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The new cluster: name=peer-url,... [default: <name>=<advertised peer URL>].
    #[arg(long)]
    initial_cluster: Option<String>,
    /// The new cluster's token.
    #[arg(long, default_value = "etcd-cluster")]
    initial_cluster_token: String,
    /// This member's peer URLs; must be what --initial-cluster lists for it.
    #[arg(long, default_value = "http://127.0.0.1:2380", value_delimiter = ',')]
    initial_advertise_peer_urls: Vec<String>,
    /// Accept a file without a SHA-256: a snapshot file copied out of a data
    /// dir (`<data-dir>/snap/*.snap`).
    #[arg(long)]
    skip_hash_check: bool,
}

pub async fn run_snapshot(args: SnapshotArgs) -> anyhow::Result<()> {
    match args.command {
        SnapshotCommand::Save { file, connection } => save(&connection, &file).await,
        SnapshotCommand::Status { file, output } => status(&file, output),
        SnapshotCommand::Restore(args) => {
            tokio::task::spawn_blocking(move || restore_member(args)).await?
        }
    }
}

/// Streams the backup into `<file>.part`, checks that it ends with the
/// SHA-256 of the rest, syncs it and renames it into place: a file at `file`
/// is always whole.
async fn save(connection: &Connection, file: &Path) -> anyhow::Result<()> {
    if connection.endpoints.len() != 1 {
        bail!("snapshot must be requested from one endpoint (--endpoints), not several");
    }
    let channel = connect_channel(connection).await?;
    let mut stream = MaintenanceClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .snapshot(SnapshotRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let part = PathBuf::from(format!("{}.part", file.display()));
    let saved = receive(&mut stream, &part).await;
    if saved.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    let total = saved?;
    std::fs::rename(&part, file).with_context(|| format!("{}", file.display()))?;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("{}", dir.display()))?;
    }
    println!("Snapshot saved at {} ({total} bytes)", file.display());
    Ok(())
}

/// Writes the stream into `part`, checks its hash and syncs it; its size.
async fn receive(
    stream: &mut tonic::Streaming<roster_proto::etcdserverpb::SnapshotResponse>,
    part: &Path,
) -> anyhow::Result<u64> {
    let mut out = File::create(part).with_context(|| format!("{}", part.display()))?;
    // The hash covers every message but the last, which is the hash: each
    // blob is hashed once the next one has arrived.
    let mut hasher = Sha256::new();
    let mut last: Vec<u8> = Vec::new();
    let mut total = 0u64;
    while let Some(message) = stream.message().await.map_err(status_error)? {
        hasher.update(&last);
        out.write_all(&message.blob)
            .with_context(|| format!("{}", part.display()))?;
        total += message.blob.len() as u64;
        last = message.blob;
    }
    if last.len() != roster_raft::backup::HASH_LEN || hasher.finalize().as_slice() != last {
        bail!("the snapshot stream did not end with the SHA-256 of its contents: nothing saved");
    }
    out.sync_all()
        .with_context(|| format!("{}", part.display()))?;
    Ok(total)
}

fn status(file: &Path, output: Output) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("{}", file.display()))?;
    let total_size = bytes.len();
    let backup = match roster_raft::backup::read_backup(&bytes, false) {
        Err(roster_raft::backup::BackupError::NoHash) => {
            roster_raft::backup::read_backup(&bytes, true)
        }
        other => other,
    }
    .with_context(|| format!("{}", file.display()))?;
    drop(bytes);
    let s = backup.summary()?;
    let index = backup.meta.last_log_id.map_or(0, |l| l.index);
    print(
        output,
        json!({"hash": format!("{:08x}", backup.crc), "revision": s.revision,
               "compact_revision": s.compact_revision, "total_keys": s.keys,
               "leases": s.leases, "total_size": total_size, "raft_index": index}),
        || {
            format!(
                "hash {:08x}, revision {}, compacted at {}, {} keys, {} leases, {} bytes, raft index {index}",
                backup.crc, s.revision, s.compact_revision, s.keys, s.leases, total_size
            )
        },
    );
    Ok(())
}

fn restore_member(args: RestoreArgs) -> anyhow::Result<()> {
    let initial_cluster = match &args.initial_cluster {
        Some(text) => parse_initial_cluster(text)?,
        None => vec![roster_server::InitialMember {
            name: args.name.clone(),
            peer_urls: args.initial_advertise_peer_urls.clone(),
        }],
    };
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.roster", args.name)));
    let opts = RestoreOptions {
        backup: args.file.clone(),
        data_dir: data_dir.clone(),
        name: args.name.clone(),
        initial_cluster,
        initial_cluster_token: args.initial_cluster_token.clone(),
        initial_advertise_peer_urls: args.initial_advertise_peer_urls.clone(),
        skip_hash_check: args.skip_hash_check,
    };
    let restored = restore(&opts)?;
    println!(
        "restored member {} ({:x}) of cluster {:x} at revision {} into {}",
        args.name,
        restored.member_id,
        restored.cluster_id,
        restored.summary.revision,
        data_dir.display()
    );
    Ok(())
}
