//! Pins the generated names the rest of the workspace relies on, and spot-checks
//! a few wire encodings against etcd's field numbers.

use prost::Message;
use roster_proto::{authpb, etcdserverpb as pb, mvccpb, raftpb};

#[allow(dead_code, clippy::type_complexity)]
fn _generated_names_exist() {
    fn exists<T>() {}
    exists::<pb::kv_server::KvServer<()>>();
    exists::<pb::kv_client::KvClient<()>>();
    exists::<pb::lease_server::LeaseServer<()>>();
    exists::<pb::lease_client::LeaseClient<()>>();
    exists::<pb::watch_server::WatchServer<()>>();
    exists::<pb::watch_client::WatchClient<()>>();
    exists::<pb::cluster_server::ClusterServer<()>>();
    exists::<pb::cluster_client::ClusterClient<()>>();
    exists::<pb::maintenance_server::MaintenanceServer<()>>();
    exists::<pb::maintenance_client::MaintenanceClient<()>>();
    exists::<pb::auth_server::AuthServer<()>>();
    exists::<pb::auth_client::AuthClient<()>>();
    exists::<raftpb::raft_peer_server::RaftPeerServer<()>>();
    exists::<raftpb::raft_peer_client::RaftPeerClient<()>>();

    fn traits<K, L, W, C, M, A, R>()
    where
        K: pb::kv_server::Kv,
        L: pb::lease_server::Lease,
        W: pb::watch_server::Watch,
        C: pb::cluster_server::Cluster,
        M: pb::maintenance_server::Maintenance,
        A: pb::auth_server::Auth,
        R: raftpb::raft_peer_server::RaftPeer,
    {
    }
}

#[test]
fn compare_decodes_with_etcd_tags() {
    // target=MOD(2), key="k", mod_revision(6)=5, range_end(64)="z"
    let wire = [
        0x10, 0x02, 0x1a, 0x01, b'k', 0x30, 0x05, 0x82, 0x04, 0x01, b'z',
    ];
    let cmp = pb::Compare::decode(&wire[..]).expect("decode Compare");
    assert_eq!(cmp.result(), pb::compare::CompareResult::Equal);
    assert_eq!(cmp.target(), pb::compare::CompareTarget::Mod);
    assert_eq!(cmp.key, b"k");
    assert_eq!(
        cmp.target_union,
        Some(pb::compare::TargetUnion::ModRevision(5))
    );
    assert_eq!(cmp.range_end, b"z");
}

#[test]
fn lease_and_watch_encodings() {
    let grant = pb::LeaseGrantRequest { ttl: 10, id: 0 };
    assert_eq!(grant.encode_to_vec(), vec![0x08, 0x0a]);

    let resp = pb::WatchResponse {
        events: vec![mvccpb::Event {
            r#type: mvccpb::event::EventType::Delete as i32,
            ..Default::default()
        }],
        ..Default::default()
    };
    // events is field 11 (length-delimited), the event's type field 1.
    assert_eq!(resp.encode_to_vec(), vec![0x5a, 0x02, 0x08, 0x01]);

    let req = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::ProgressRequest(
            pb::WatchProgressRequest {},
        )),
    };
    assert_eq!(req.encode_to_vec(), vec![0x1a, 0x00]);
}

#[test]
fn auth_and_member_field_numbers() {
    let perm = authpb::Permission {
        perm_type: authpb::permission::Type::Readwrite as i32,
        key: b"a".to_vec(),
        range_end: Vec::new(),
    };
    assert_eq!(perm.encode_to_vec(), vec![0x08, 0x02, 0x12, 0x01, b'a']);

    let member = pb::Member {
        peer_ur_ls: vec!["p".into()],
        is_learner: true,
        ..Default::default()
    };
    assert_eq!(member.encode_to_vec(), vec![0x1a, 0x01, b'p', 0x28, 0x01]);
}

#[test]
fn descriptor_set_is_embedded() {
    let fds = roster_proto::FILE_DESCRIPTOR_SET;
    assert!(!fds.is_empty());
    for name in [
        "etcd/etcdserverpb/rpc.proto",
        "etcd/mvccpb/kv.proto",
        "etcd/authpb/auth.proto",
        "raft/raft.proto",
    ] {
        assert!(
            fds.windows(name.len()).any(|w| w == name.as_bytes()),
            "{name} missing from FILE_DESCRIPTOR_SET"
        );
    }
}
