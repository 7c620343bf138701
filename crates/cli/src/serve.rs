//! `roster serve`: one node, configured with etcd's flag names so that scripts
//! written for etcd start Roster unchanged.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use roster_server::tls::TlsFiles;
use roster_server::{AutoCompaction, ClusterState, InitialMember, NodeConfig, RunningNode};
use tracing_subscriber::EnvFilter;

/// As with etcd (Go's flag package), a flag given twice takes its last value.
#[derive(Args, Debug)]
#[command(args_override_self = true)]
pub struct ServeArgs {
    /// Human-readable name of this member.
    #[arg(long, default_value = "default")]
    name: String,
    /// Path to the data directory [default: ./<name>.roster].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic (comma-separated).
    #[arg(long, default_value = "http://127.0.0.1:2379", value_delimiter = ',')]
    listen_client_urls: Vec<String>,
    /// Client URLs of this member advertised to the cluster [default: --listen-client-urls].
    #[arg(long, value_delimiter = ',')]
    advertise_client_urls: Vec<String>,
    /// URLs to listen on for peer traffic (comma-separated).
    #[arg(long, default_value = "http://127.0.0.1:2380", value_delimiter = ',')]
    listen_peer_urls: Vec<String>,
    /// URLs to serve /metrics (Prometheus) and /health on (comma-separated; none by default).
    #[arg(long, value_delimiter = ',')]
    listen_metrics_urls: Vec<String>,
    /// Peer URLs of this member advertised to the cluster [default: --listen-peer-urls].
    #[arg(long, value_delimiter = ',')]
    initial_advertise_peer_urls: Vec<String>,
    /// Initial cluster configuration: name=peer-url,... [default: <name>=<advertised peer URL>].
    #[arg(long)]
    initial_cluster: Option<String>,
    /// `new` to bootstrap a new cluster, `existing` to join one.
    #[arg(long, default_value = "new")]
    initial_cluster_state: String,
    /// Initial cluster token, part of member and cluster ids.
    #[arg(long, default_value = "etcd-cluster")]
    initial_cluster_token: String,
    /// Time (ms) of a heartbeat interval.
    #[arg(long, default_value_t = 100)]
    heartbeat_interval: u64,
    /// Time (ms) for an election to time out.
    #[arg(long, default_value_t = 1000)]
    election_timeout: u64,
    /// How often the leader checkpoints the remaining TTL of long leases: a
    /// failover extends a dead holder's lease by at most this (plus the
    /// election), and a holder renewing less often than every half of it has
    /// each keepalive wait for a log write.
    #[arg(long, default_value = "60s", value_parser = crate::duration::parse)]
    lease_checkpoint_interval: Duration,
    /// How often watchers that asked for progress notifications get one.
    #[arg(long = "experimental-watch-progress-notify-interval", default_value = "10m", value_parser = crate::duration::parse)]
    watch_progress_notify_interval: Duration,
    /// Token kind: `simple` (Roster signs its own tokens; see docs/operations.md).
    /// etcd's `jwt` is not supported.
    #[arg(long, default_value = "simple")]
    auth_token: String,
    /// Seconds a token from Authenticate stays valid.
    #[arg(long, default_value_t = 300)]
    auth_token_ttl: u64,
    /// `periodic` (keep a time span of history) or `revision` (keep a number of revisions).
    #[arg(long, default_value = "periodic")]
    auto_compaction_mode: String,
    /// History to keep: for `periodic` a duration (a bare number is hours, as in
    /// etcd), for `revision` a count; 0 turns automatic compaction off.
    #[arg(long, default_value = "0")]
    auto_compaction_retention: String,
    /// Allow pipe handlers (commands run on this server with each registry
    /// event on stdin); a pipe handler is accepted only if every member allows them.
    #[arg(long)]
    allow_pipe_handlers: bool,
    /// Local address that connections to peers leave from (default: the
    /// system's choice). Lets firewall rules between members on one host
    /// tell them apart.
    #[arg(long)]
    peer_source_ip: Option<std::net::IpAddr>,
    /// Log entries applied between two snapshots of the state machine; a
    /// restart re-applies at most this many, and a follower further behind
    /// catches up from the snapshot.
    #[arg(long, default_value_t = roster_server::NodeConfig::DEFAULT_SNAPSHOT_COUNT)]
    snapshot_count: u64,
    /// sled page cache per node, MiB.
    #[arg(long, default_value_t = roster_server::NodeConfig::DEFAULT_CACHE_MB)]
    cache_mb: u64,
    /// Log level: debug, info, warn, error, or per module
    /// (`info,roster_server::lessor=debug`); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Certificate (PEM) for https:// client URLs.
    #[arg(long)]
    cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// CA (PEM) that signs the client certificates to accept.
    #[arg(long)]
    trusted_ca_file: Option<PathBuf>,
    /// Accept only clients with a certificate --trusted-ca-file signed.
    #[arg(long)]
    client_cert_auth: bool,
    /// Certificate (PEM) for https:// peer URLs, served and presented to peers.
    #[arg(long)]
    peer_cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long)]
    peer_key_file: Option<PathBuf>,
    /// CA (PEM) that signs the members' certificates.
    #[arg(long)]
    peer_trusted_ca_file: Option<PathBuf>,
    /// Accept only peers with a certificate --peer-trusted-ca-file signed.
    #[arg(long)]
    peer_client_cert_auth: bool,
    /// Log lines as `text` or `json` (one object per line).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

/// `name=url,name=url` (a name may repeat for several URLs).
pub(crate) fn parse_initial_cluster(text: &str) -> anyhow::Result<Vec<InitialMember>> {
    let mut members: Vec<InitialMember> = Vec::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let Some((name, url)) = part.split_once('=') else {
            bail!("--initial-cluster: {part:?} is not name=peer-url");
        };
        match members.iter_mut().find(|m| m.name == name) {
            Some(m) => m.peer_urls.push(url.to_string()),
            None => members.push(InitialMember {
                name: name.to_string(),
                peer_urls: vec![url.to_string()],
            }),
        }
    }
    if members.is_empty() {
        bail!("--initial-cluster is empty");
    }
    Ok(members)
}

/// One port's TLS flags (`prefix` is `""` or `"peer-"`), if any was given.
fn tls_files(
    prefix: &'static str,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    trusted_ca: Option<PathBuf>,
    client_cert_auth: bool,
) -> anyhow::Result<Option<TlsFiles>> {
    match (cert, key) {
        (None, None) if trusted_ca.is_none() && !client_cert_auth => Ok(None),
        (Some(cert), Some(key)) => {
            if client_cert_auth && trusted_ca.is_none() {
                bail!("--{prefix}client-cert-auth needs --{prefix}trusted-ca-file");
            }
            Ok(Some(TlsFiles {
                cert,
                key,
                trusted_ca,
                client_cert_auth,
                prefix,
            }))
        }
        _ => bail!("--{prefix}cert-file and --{prefix}key-file go together"),
    }
}

impl ServeArgs {
    fn into_config(self) -> anyhow::Result<NodeConfig> {
        if self.election_timeout < 5 * self.heartbeat_interval {
            bail!(
                "--election-timeout ({} ms) should be at least 5 times --heartbeat-interval ({} ms)",
                self.election_timeout,
                self.heartbeat_interval
            );
        }
        for (flag, every) in [
            (
                "--lease-checkpoint-interval",
                self.lease_checkpoint_interval,
            ),
            (
                "--experimental-watch-progress-notify-interval",
                self.watch_progress_notify_interval,
            ),
        ] {
            if every.is_zero() {
                bail!("{flag} must be longer than 0");
            }
        }
        let state = match self.initial_cluster_state.as_str() {
            "new" => ClusterState::New,
            "existing" => ClusterState::Existing,
            other => bail!("--initial-cluster-state must be new or existing, not {other:?}"),
        };
        let advertise_peer = or_default(self.initial_advertise_peer_urls, &self.listen_peer_urls);
        let initial_cluster = match &self.initial_cluster {
            Some(text) => parse_initial_cluster(text)?,
            None => vec![InitialMember {
                name: self.name.clone(),
                peer_urls: advertise_peer.clone(),
            }],
        };
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| PathBuf::from(format!("{}.roster", self.name)));
        let mut config = NodeConfig::single(&self.name, data_dir);
        config.advertise_client_urls =
            or_default(self.advertise_client_urls, &self.listen_client_urls);
        config.listen_client_urls = self.listen_client_urls;
        config.listen_peer_urls = self.listen_peer_urls;
        config.listen_metrics_urls = self.listen_metrics_urls;
        config.initial_advertise_peer_urls = advertise_peer;
        config.initial_cluster = initial_cluster;
        config.initial_cluster_state = state;
        config.initial_cluster_token = self.initial_cluster_token;
        config.heartbeat_interval = Duration::from_millis(self.heartbeat_interval);
        config.election_timeout = Duration::from_millis(self.election_timeout);
        config.lease_checkpoint_interval = self.lease_checkpoint_interval;
        config.watch_progress_notify_interval = self.watch_progress_notify_interval;
        if !self.auth_token.starts_with("simple") {
            bail!(
                "--auth-token {:?} is not supported: Roster signs its own tokens; use simple",
                self.auth_token
            );
        }
        if self.auth_token_ttl == 0 {
            bail!("--auth-token-ttl must be at least 1 (seconds)");
        }
        config.auth_token_ttl = Duration::from_secs(self.auth_token_ttl);
        config.auto_compaction =
            auto_compaction(&self.auto_compaction_mode, &self.auto_compaction_retention)?;
        if self.snapshot_count == 0 {
            bail!("--snapshot-count must be at least 1");
        }
        config.snapshot_count = self.snapshot_count;
        config.cache_capacity = self.cache_mb * 1024 * 1024;
        config.allow_pipe_handlers = self.allow_pipe_handlers;
        config.peer_source_ip = self.peer_source_ip;
        config.client_tls = tls_files(
            "",
            self.cert_file,
            self.key_file,
            self.trusted_ca_file,
            self.client_cert_auth,
        )?;
        config.peer_tls = tls_files(
            "peer-",
            self.peer_cert_file,
            self.peer_key_file,
            self.peer_trusted_ca_file,
            self.peer_client_cert_auth,
        )?;
        Ok(config)
    }
}

/// etcd's two auto-compaction flags as one policy.
fn auto_compaction(mode: &str, retention: &str) -> anyhow::Result<AutoCompaction> {
    let retention = retention.trim();
    let policy = match mode {
        "periodic" => {
            // A bare number is hours, as in etcd.
            let text = match retention.parse::<f64>() {
                Ok(hours) => format!("{}s", hours * 3600.0),
                Err(_) => retention.to_string(),
            };
            let keep = crate::duration::parse(&text)
                .map_err(|e| anyhow::anyhow!("--auto-compaction-retention: {e}"))?;
            if keep.is_zero() {
                AutoCompaction::Off
            } else {
                AutoCompaction::Periodic(keep)
            }
        }
        "revision" => match retention.parse::<i64>() {
            Ok(0) => AutoCompaction::Off,
            Ok(n) if n > 0 => AutoCompaction::Revision(n),
            _ => bail!("--auto-compaction-retention: {retention:?} is not a revision count"),
        },
        other => bail!("--auto-compaction-mode must be periodic or revision, not {other:?}"),
    };
    Ok(policy)
}

fn or_default(given: Vec<String>, fallback: &[String]) -> Vec<String> {
    if given.is_empty() {
        fallback.to_vec()
    } else {
        given
    }
}

fn init_tracing(level: &str, format: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("openraft=warn,sled=warn,h2=warn,{level}")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        builder.with_ansi(ansi).try_init()
    };
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_tracing(&args.log_level, &args.log_format);
    let config = args.into_config()?;
    let node = RunningNode::start(config)
        .await
        .context("cannot start the node")?;
    tokio::select! {
        signal = wait_for_signal() => {
            signal?;
            tracing::info!("stopping on signal");
            node.shutdown().await;
            Ok(())
        }
        why = node.removed() => {
            tracing::warn!(%why, "the member has been permanently removed from the cluster; exiting");
            // A moment for the answer to the removal to reach its client.
            tokio::time::sleep(Duration::from_secs(1)).await;
            node.shutdown().await;
            Ok(())
        }
        why = node.raft_stopped() => {
            tracing::error!(%why, "raft stopped on its own; exiting");
            node.shutdown().await;
            anyhow::bail!("raft stopped: {why}")
        }
    }
}

/// Returns on SIGTERM or SIGINT.
async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn config(args: &[&str]) -> anyhow::Result<NodeConfig> {
        use clap::Parser;
        let args = std::iter::once("roster").chain(args.iter().copied());
        Cli::try_parse_from(args)?.serve.into_config()
    }

    /// A zero interval would panic the task that ticks at it (tokio's
    /// `interval`), leaving the node running without it.
    #[test]
    fn a_zero_interval_is_an_error_naming_the_flag() {
        assert!(config(&[]).is_ok());
        for flag in [
            "--lease-checkpoint-interval",
            "--experimental-watch-progress-notify-interval",
        ] {
            let err = config(&[flag, "0s"]).expect_err("zero");
            assert_eq!(err.to_string(), format!("{flag} must be longer than 0"));
            assert!(config(&[flag, "1ms"]).is_ok());
        }
    }

    #[test]
    fn initial_cluster_parses_and_rejects_garbage() {
        let members = parse_initial_cluster("a=http://1:2,b=http://3:4").expect("valid");
        assert_eq!(members.len(), 2);
        assert_eq!(members[1].peer_urls, vec!["http://3:4".to_string()]);
        let err = parse_initial_cluster("a").expect_err("invalid");
        assert!(err.to_string().contains("name=peer-url"));
    }

    #[test]
    fn auto_compaction_flags_read_as_etcd_reads_them() {
        let hours = |h: u64| AutoCompaction::Periodic(Duration::from_secs(h * 3600));
        assert_eq!(
            auto_compaction("periodic", "0").ok(),
            Some(AutoCompaction::Off)
        );
        assert_eq!(auto_compaction("periodic", "1").ok(), Some(hours(1)));
        assert_eq!(
            auto_compaction("periodic", "30m").ok(),
            Some(AutoCompaction::Periodic(Duration::from_secs(1800)))
        );
        assert_eq!(
            auto_compaction("revision", "1000").ok(),
            Some(AutoCompaction::Revision(1000))
        );
        let err = auto_compaction("revision", "1h").expect_err("not a count");
        assert!(
            err.to_string().contains("--auto-compaction-retention"),
            "{err}"
        );
        let err = auto_compaction("hourly", "1").expect_err("unknown mode");
        assert!(err.to_string().contains("--auto-compaction-mode"), "{err}");
    }
}
