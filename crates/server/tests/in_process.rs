//! A node is a library: three nodes in one process, on in-memory storage, with
//! no data dir and no global state, talking over real gRPC on loopback. A node
//! stopped and started again on the same `MemoryStorage` keeps what it had, and
//! so does the whole cluster.

use std::time::{Duration, Instant};

use roster_proto::etcdserverpb::kv_client::KvClient;
use roster_proto::etcdserverpb::lease_client::LeaseClient;
use roster_proto::etcdserverpb::{LeaseGrantRequest, PutRequest, RangeRequest};
use roster_server::{Backend, InitialMember, MemoryStorage, NodeConfig, RunningNode};
use tonic::transport::Channel;

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

struct Ports {
    client: u16,
    peer: u16,
}

fn config(i: usize, ports: &[Ports]) -> NodeConfig {
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let mut config = NodeConfig::single(&format!("n{i}"), "unused-in-memory".into());
    config.listen_client_urls = vec![url(ports[i].client)];
    config.advertise_client_urls = config.listen_client_urls.clone();
    config.listen_peer_urls = vec![url(ports[i].peer)];
    config.initial_advertise_peer_urls = config.listen_peer_urls.clone();
    config.initial_cluster = ports
        .iter()
        .enumerate()
        .map(|(j, p)| InitialMember {
            name: format!("n{j}"),
            peer_urls: vec![url(p.peer)],
        })
        .collect();
    config.initial_cluster_token = "in-process".into();
    config
}

async fn start(config: NodeConfig, memory: &MemoryStorage) -> RunningNode {
    let transport = std::sync::Arc::new(roster_raft::transport::TcpTransport::default());
    RunningNode::start_with(config, transport, Backend::Memory(memory.clone()))
        .await
        .expect("node starts")
}

async fn kv(port: u16) -> KvClient<Channel> {
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("uri")
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connect");
    KvClient::new(channel)
}

async fn get(port: u16, key: &str, serializable: bool) -> Option<Vec<u8>> {
    let req = RangeRequest {
        key: key.as_bytes().to_vec(),
        serializable,
        ..Default::default()
    };
    let resp = kv(port).await.range(req).await.ok()?.into_inner();
    resp.kvs.into_iter().next().map(|kv| kv.value)
}

/// Polls `check` every 50 ms until it holds or `limit` passes.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_in_one_process_on_memory_storage() {
    let ports: Vec<Ports> = (0..3)
        .map(|_| Ports {
            client: free_port(),
            peer: free_port(),
        })
        .collect();
    let memories: Vec<MemoryStorage> = (0..3).map(|_| MemoryStorage::new()).collect();
    let mut nodes = Vec::new();
    for (i, memory) in memories.iter().enumerate() {
        nodes.push(Some(start(config(i, &ports), memory).await));
    }

    // A write through one node is read linearizably through another.
    let put = |port: u16, key: &'static str, value: &'static str| async move {
        let req = PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        };
        kv(port).await.put(req).await.is_ok()
    };
    eventually(Duration::from_secs(10), "a first write", || {
        put(ports[1].client, "k", "v1")
    })
    .await;
    assert_eq!(
        get(ports[2].client, "k", false).await.as_deref(),
        Some(&b"v1"[..])
    );
    let channel = Channel::from_shared(format!("http://127.0.0.1:{}", ports[0].client))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let lease = LeaseClient::new(channel)
        .lease_grant(LeaseGrantRequest { ttl: 30, id: 0 })
        .await
        .expect("grant")
        .into_inner();
    assert!(lease.id != 0 && lease.ttl == 30);

    // Stop node 2, write, start it again on the same memory: it kept its data
    // and catches up.
    if let Some(node) = nodes[2].take() {
        node.shutdown().await;
    }
    assert!(
        put(ports[0].client, "k", "v2").await,
        "a majority still writes"
    );
    nodes[2] = Some(start(config(2, &ports), &memories[2]).await);
    eventually(
        Duration::from_secs(10),
        "the restarted node to catch up",
        || async { get(ports[2].client, "k", true).await.as_deref() == Some(&b"v2"[..]) },
    )
    .await;

    // Stop all three and start them again: only what the memory kept can answer.
    for node in nodes.iter_mut().filter_map(Option::take) {
        node.shutdown().await;
    }
    for (i, memory) in memories.iter().enumerate() {
        nodes[i] = Some(start(config(i, &ports), memory).await);
    }
    eventually(
        Duration::from_secs(10),
        "the restarted cluster to serve",
        || async { get(ports[0].client, "k", false).await.as_deref() == Some(&b"v2"[..]) },
    )
    .await;

    for node in nodes.into_iter().flatten() {
        node.shutdown().await;
    }
}

/// The term node 0 leads, once it leads.
async fn led_term(node: &RunningNode) -> u64 {
    let mut metrics = node.raft.metrics();
    let led = metrics
        .wait_for(|m| m.state == openraft::ServerState::Leader)
        .await
        .expect("metrics");
    led.current_term
}

/// openraft 0.9 would start a node that led a term as that term's leader
/// again, with no entry of its own (so what its previous life left in the log
/// could commit after its new lease clocks started); Roster makes it win a new
/// term instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_leads_only_a_new_term() {
    let ports = [Ports {
        client: free_port(),
        peer: free_port(),
    }];
    let memory = MemoryStorage::new();
    let node = start(config(0, &ports), &memory).await;
    let before = tokio::time::timeout(Duration::from_secs(10), led_term(&node))
        .await
        .expect("a leader within 10 s");
    node.shutdown().await;
    let node = start(config(0, &ports), &memory).await;
    let after = tokio::time::timeout(Duration::from_secs(10), led_term(&node))
        .await
        .expect("a leader again within 10 s");
    assert!(
        after > before,
        "led term {before}, then term {after} after the restart"
    );
    node.shutdown().await;
}
