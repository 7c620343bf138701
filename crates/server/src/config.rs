//! A node's configuration, in etcd's terms (the CLI maps etcd's flag names onto
//! it), and how those settings become openraft's.
//!
//! Timing: etcd's `--election-timeout E` becomes openraft's randomized election
//! timeout in `[E/3, 2E/3)`. openraft's leader lease (a follower refuses to vote
//! for another candidate for `election_timeout_max = 2E/3` after a leader's
//! heartbeat) is what makes rule 2 of DESIGN.md sound. A follower that stops
//! hearing from its leader campaigns after that lease plus its election
//! timeout, `2E/3 + [E/3, 2E/3)`: between E and 4E/3 after the last heartbeat,
//! where an etcd follower campaigns between E and 2E. (Until Dec 2026 the
//! bounds were `[E/2, E)`, so a follower waited 1.5E to 2E and failover took
//! about twice etcd's.)

use std::path::PathBuf;
use std::time::Duration;

/// Whether this node bootstraps a new cluster or joins an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

/// One entry of `--initial-cluster`: `name=peer-url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialMember {
    pub name: String,
    pub peer_urls: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client_urls: Vec<String>,
    pub advertise_client_urls: Vec<String>,
    pub listen_peer_urls: Vec<String>,
    /// Where `/metrics` and `/health` are served (none by default).
    pub listen_metrics_urls: Vec<String>,
    pub initial_advertise_peer_urls: Vec<String>,
    pub initial_cluster: Vec<InitialMember>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub heartbeat_interval: Duration,
    pub election_timeout: Duration,
    /// How often the leader checkpoints the remaining TTL of long leases.
    pub lease_checkpoint_interval: Duration,
    /// How often a watcher that asked for progress notifications gets one
    /// (etcd's `--experimental-watch-progress-notify-interval`, 10 minutes).
    pub watch_progress_notify_interval: Duration,
    /// How long a token from Authenticate is valid (etcd's `--auth-token-ttl`).
    pub auth_token_ttl: Duration,
    /// What history the leader compacts away by itself (default: none, as etcd).
    pub auto_compaction: crate::compactor::AutoCompaction,
    /// Log entries applied between two snapshots (etcd's `--snapshot-count`).
    pub snapshot_count: u64,
    /// sled page cache budget, bytes.
    pub cache_capacity: u64,
    /// This node may run `pipe` handlers (commands on the server). A pipe
    /// handler is accepted only when every member allows them.
    pub allow_pipe_handlers: bool,
    /// Where connections to peers leave from; `None`: the system picks.
    pub peer_source_ip: Option<std::net::IpAddr>,
    /// TLS for `https://` client URLs (`--cert-file` and the like).
    pub client_tls: Option<crate::tls::TlsFiles>,
    /// TLS for `https://` peer URLs, both ways (`--peer-cert-file`...).
    pub peer_tls: Option<crate::tls::TlsFiles>,
}

impl NodeConfig {
    /// etcd's default `--snapshot-count`. A snapshot encodes the whole state
    /// (off the apply path, but a full pass over it), and a restart re-applies
    /// at most this many entries after it.
    pub const DEFAULT_SNAPSHOT_COUNT: u64 = 100_000;

    /// How long the RPC that carries a snapshot's last chunk may take: the
    /// follower installs the whole snapshot (decodes it, saves and fsyncs its
    /// file) before answering. openraft's default, 200 ms, is far too short
    /// for a state of tens of megabytes: the leader timed out, sent the
    /// snapshot again from the start, and a follower behind the purged log
    /// never caught up.
    const INSTALL_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);

    /// The default sled page cache, MiB (the CLI's `--cache-mb`).
    pub const DEFAULT_CACHE_MB: u64 = roster_raft::DEFAULT_CACHE_CAPACITY / (1024 * 1024);

    /// etcd's defaults: a one-node cluster on 127.0.0.1:2379 / 2380.
    pub fn single(name: &str, data_dir: PathBuf) -> Self {
        let peer = "http://127.0.0.1:2380".to_string();
        NodeConfig {
            name: name.to_string(),
            data_dir,
            listen_client_urls: vec!["http://127.0.0.1:2379".into()],
            advertise_client_urls: vec!["http://127.0.0.1:2379".into()],
            listen_peer_urls: vec![peer.clone()],
            listen_metrics_urls: Vec::new(),
            initial_advertise_peer_urls: vec![peer.clone()],
            initial_cluster: vec![InitialMember {
                name: name.to_string(),
                peer_urls: vec![peer],
            }],
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: "etcd-cluster".into(),
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            lease_checkpoint_interval: Duration::from_secs(60),
            watch_progress_notify_interval: Duration::from_secs(600),
            auth_token_ttl: crate::auth::DEFAULT_TOKEN_TTL,
            auto_compaction: crate::compactor::AutoCompaction::Off,
            snapshot_count: Self::DEFAULT_SNAPSHOT_COUNT,
            cache_capacity: roster_raft::DEFAULT_CACHE_CAPACITY,
            allow_pipe_handlers: false,
            peer_source_ip: None,
            client_tls: None,
            peer_tls: None,
        }
    }

    /// The smallest TTL a lease gets: ceil(1.5 x election timeout), in seconds, as
    /// in etcd. Shorter requested TTLs are raised to it.
    pub fn min_lease_ttl(&self) -> i64 {
        let ms = self.election_timeout.as_millis() as i64 * 3 / 2;
        (ms + 999) / 1000
    }

    /// openraft's election timeout bounds, ms: `[E/3, 2E/3)` (see the module doc).
    fn election_bounds(&self) -> (u64, u64) {
        let et = self.election_timeout.as_millis() as u64;
        ((et / 3).max(2), (et * 2 / 3).max(3))
    }

    /// How long after a quorum confirmed our leadership we may still act as leader:
    /// followers that confirmed will not vote for anyone else for openraft's
    /// leader lease (`election_timeout_max`) after the heartbeat; keep a margin
    /// for clock drift and scheduling.
    pub fn leader_lease_window(&self) -> Duration {
        let lease = Duration::from_millis(self.election_bounds().1);
        (lease.saturating_sub(lease / 5)).saturating_sub(Duration::from_millis(20))
    }

    /// The openraft configuration these settings imply.
    pub fn raft_config(&self) -> openraft::Config {
        let (election_min, election_max) = self.election_bounds();
        openraft::Config {
            cluster_name: self.initial_cluster_token.clone(),
            heartbeat_interval: self.heartbeat_interval.as_millis() as u64,
            election_timeout_min: election_min,
            election_timeout_max: election_max,
            max_payload_entries: 512,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_count),
            max_in_snapshot_log_to_keep: 1_000,
            install_snapshot_timeout: Self::INSTALL_SNAPSHOT_TIMEOUT.as_millis() as u64,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A follower campaigns `max + [min, max)` after its leader's last
    /// heartbeat: between E and 4E/3, as early as etcd's (E to 2E). The
    /// keepalive window stays inside openraft's leader lease (`max`).
    #[test]
    fn followers_campaign_between_one_and_four_thirds_election_timeouts() {
        let mut config = NodeConfig::single("n", PathBuf::from("unused"));
        for (et, hb) in [(1000, 100), (500, 50), (300, 60)] {
            config.election_timeout = Duration::from_millis(et);
            config.heartbeat_interval = Duration::from_millis(hb);
            let raft = config.raft_config();
            let (min, max) = (raft.election_timeout_min, raft.election_timeout_max);
            assert!(max + min >= et * 99 / 100, "{et}: {min}..{max}");
            assert!(max + max <= et * 4 / 3, "{et}: {min}..{max}");
            assert!(raft.heartbeat_interval < min, "{et}: heartbeat {hb}");
            let window = config.leader_lease_window();
            assert!(
                window < Duration::from_millis(max),
                "{et}: window {window:?}"
            );
            assert!(
                window >= Duration::from_millis(max / 2),
                "{et}: window {window:?}"
            );
        }
    }
}
