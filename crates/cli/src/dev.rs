//! `roster dev`: a local 3-node cluster for development, as three `roster serve`
//! processes of this same binary (client ports 2379, 22379, 32379 and peer ports
//! 2380, 22380, 32380, etcd's Procfile layout). Ctrl-C or SIGTERM stops all three.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use tokio::process::{Child, Command};

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Where the nodes keep their data [default: a fresh temporary directory].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Client port of the first node; the others add 20000 and 30000.
    #[arg(long, default_value_t = 2379)]
    base_port: u16,
}

struct DevNode {
    name: String,
    client: String,
    peer: String,
}

fn nodes(base: u16) -> anyhow::Result<Vec<DevNode>> {
    let mut nodes = Vec::new();
    for (i, offset) in [0u16, 20000, 30000].into_iter().enumerate() {
        let client = base
            .checked_add(offset)
            .and_then(|p| p.checked_add(1).map(|q| (p, q)))
            .context("--base-port too high: the third node's ports exceed 65535")?;
        nodes.push(DevNode {
            name: format!("n{}", i + 1),
            client: format!("http://127.0.0.1:{}", client.0),
            peer: format!("http://127.0.0.1:{}", client.1),
        });
    }
    Ok(nodes)
}

fn spawn(
    exe: &PathBuf,
    dir: &std::path::Path,
    node: &DevNode,
    cluster: &str,
) -> anyhow::Result<Child> {
    Command::new(exe)
        .arg("serve")
        .args(["--name", &node.name])
        .arg("--data-dir")
        .arg(dir.join(format!("{}.roster", node.name)))
        .args(["--listen-client-urls", &node.client])
        .args(["--listen-peer-urls", &node.peer])
        .args(["--initial-cluster", cluster])
        .args(["--initial-cluster-token", "roster-dev"])
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", node.name))
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the roster binary")?;
    let temp;
    let dir = match args.dir {
        Some(dir) => dir,
        None => {
            temp = tempfile_dir()?;
            temp.clone()
        }
    };
    let nodes = nodes(args.base_port)?;
    let cluster: Vec<String> = nodes
        .iter()
        .map(|n| format!("{}={}", n.name, n.peer))
        .collect();
    let cluster = cluster.join(",");
    let mut children = Vec::new();
    for node in &nodes {
        children.push(spawn(&exe, &dir, node, &cluster)?);
    }
    let endpoints: Vec<String> = nodes
        .iter()
        .map(|n| n.client.trim_start_matches("http://").to_string())
        .collect();
    println!("roster dev: 3 nodes, data in {}", dir.display());
    println!("endpoints: {}", endpoints.join(","));
    println!(
        "try: ETCDCTL_API=3 etcdctl --endpoints={} member list",
        endpoints.join(",")
    );
    println!("Ctrl-C stops the cluster.");
    // SIGTERM too (`kill`, scripts, service managers): without it the nodes
    // outlived `roster dev` and kept its ports.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    let outcome = tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C").map(|_| None),
        _ = terminate.recv() => Ok(None),
        r = first_exit(&mut children) => Ok(Some(r)),
    };
    stop_all(&mut children).await;
    match outcome {
        Ok(None) => Ok(()),
        Ok(Some(name)) => bail!("node {name} exited; stopped the others"),
        Err(e) => Err(e),
    }
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("roster-dev-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Resolves with the name of the first node that exits.
async fn first_exit(children: &mut [Child]) -> String {
    let waits: Vec<_> = children
        .iter_mut()
        .enumerate()
        .map(|(i, c)| {
            Box::pin(async move {
                let _ = c.wait().await;
                format!("n{}", i + 1)
            })
        })
        .collect();
    futures::future::select_all(waits).await.0
}

/// SIGTERM to each node (a clean shutdown), then wait for them.
async fn stop_all(children: &mut [Child]) {
    for child in children.iter() {
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
    // A node that has not stopped by then is killed: `roster dev` must give
    // its ports back.
    let deadline = tokio::time::Instant::now() + STOP_WAIT;
    for child in children.iter_mut() {
        if tokio::time::timeout_at(deadline, child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
}

/// Longest `roster dev` waits for its nodes to stop cleanly.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
