//! The openraft type configuration and the node description every member carries.

use std::fmt;
use std::io::Cursor;

use roster_state::{Applied, Command};
use serde::{Deserialize, Serialize};

/// A member id (etcd's scheme: derived from name, peer URLs and cluster token).
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Roster's raft types: the log carries [`Command`]s, applying one answers a
    /// [`roster_state::Response`].
    pub TypeConfig:
        D = Command,
        R = roster_state::Response,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = crate::runtime::RosterRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;

/// What the membership config knows of a member: its name and how to reach its
/// peer port (raft traffic, forwarded requests). Client URLs are published
/// through the state machine once the member runs (`Command::PublishMember`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub peer_urls: Vec<String>,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name, self.peer_urls.join(","))
    }
}

/// Told of every command applied to the local state machine, in log order, right
/// after its batch is written. The server uses it to feed the lessor and watchers.
/// It must not block: it runs inside apply.
pub trait ApplyObserver: Send + Sync + 'static {
    fn applied(&self, index: u64, command: &Command, applied: &Applied);
    /// The whole state was replaced by a snapshot.
    fn installed_snapshot(&self) {}
}
