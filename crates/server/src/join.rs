//! Whose data dir this is, at start: a member of a new cluster computes its
//! ids from `--initial-cluster` (etcd's scheme, see `identity`); a member
//! joining a running cluster (`--initial-cluster-state existing`, after
//! `MemberAdd`) cannot, because `MemberAdd` gave it an id of the cluster's
//! choosing. It asks the other members listed in `--initial-cluster` for the
//! membership, finds itself by its peer URLs, and keeps the ids it got in its
//! data dir; a restart reads them from there.
//!
//! A member that already ran (it published its attributes) is refused when it
//! comes with an empty data dir: it has lost what it acknowledged, and raft
//! would treat its empty log as a broken promise (openraft's leader panics on
//! a follower whose log went back). It must be removed and added again.

use std::sync::Arc;
use std::time::Duration;

use roster_raft::transport::Transport;

use crate::config::{ClusterState, NodeConfig};
use crate::identity::{self, Identity, IdentityError};
use crate::node::StartError;
use crate::route::fetch_cluster;

/// How long a joining member keeps asking for the membership.
const JOIN_WAIT: Duration = Duration::from_secs(10);
const JOIN_PAUSE: Duration = Duration::from_millis(200);

/// The identity this node runs as, stored in its data dir. `computed` is the
/// identity of a member of a new cluster of these flags.
pub(crate) async fn resolve(
    config: &NodeConfig,
    computed: Identity,
    transport: Arc<dyn Transport>,
) -> Result<Identity, StartError> {
    let stored = identity::load(&config.data_dir)?;
    if let Some(found) = stored.as_ref().filter(|f| f.joined) {
        if found.name != config.name {
            return Err(IdentityError::Mismatch {
                dir: config.data_dir.display().to_string(),
                found_name: found.name.clone(),
                found_member: found.member_id,
                found_cluster: found.cluster_id,
                name: config.name.clone(),
                member: found.member_id,
                cluster: found.cluster_id,
            }
            .into());
        }
        return Ok(found.clone());
    }
    let ident = match (&stored, config.initial_cluster_state) {
        (None, ClusterState::Existing) => join(config, transport).await?,
        _ => computed,
    };
    identity::check_and_store(&config.data_dir, &ident)?;
    Ok(ident)
}

fn sorted(urls: &[String]) -> Vec<String> {
    let mut urls = urls.to_vec();
    urls.sort();
    urls
}

/// Asks the running members who this node is.
async fn join(config: &NodeConfig, transport: Arc<dyn Transport>) -> Result<Identity, StartError> {
    let own = sorted(&config.initial_advertise_peer_urls);
    let peers: Vec<Vec<String>> = config
        .initial_cluster
        .iter()
        .filter(|m| sorted(&m.peer_urls) != own)
        .map(|m| m.peer_urls.clone())
        .collect();
    if peers.is_empty() {
        return Err(StartError::Join(
            "--initial-cluster-state existing needs the running members in --initial-cluster"
                .into(),
        ));
    }
    // The newest membership among the members' answers (see
    // `fetch_cluster`): a follower that has not yet applied the MemberAdd
    // would not know this member, or would still list an earlier one with
    // these URLs. Until the deadline, a membership without it is asked again.
    let deadline = tokio::time::Instant::now() + JOIN_WAIT;
    let (info, me) = loop {
        let newest = fetch_cluster(transport.clone(), &peers).await;
        let expired = tokio::time::Instant::now() >= deadline;
        match newest {
            Ok(info) => {
                let me = info
                    .members
                    .iter()
                    .find(|m| sorted(&m.member.peer_urls) == own)
                    .cloned();
                match me {
                    Some(me) => break (info, me),
                    None if expired => {
                        return Err(StartError::Join(format!(
                            "cluster {:x} has no member with peer URLs {}: add it first \
                             (roster member add {} --peer-urls {})",
                            info.cluster_id,
                            own.join(","),
                            config.name,
                            own.join(",")
                        )))
                    }
                    None => {}
                }
            }
            Err(e) if expired => {
                return Err(StartError::Join(format!(
                    "no member of --initial-cluster answered: {e}"
                )))
            }
            Err(_) => {}
        }
        tokio::time::sleep(JOIN_PAUSE).await;
    };
    if me.started {
        return Err(StartError::Join(format!(
            "member {:x} with peer URLs {} ran before, and this data dir ({}) is empty: \
             its data is lost. Remove the member and add it again",
            me.id,
            own.join(","),
            config.data_dir.display()
        )));
    }
    tracing::info!(
        member_id = format!("{:x}", me.id),
        cluster_id = format!("{:x}", info.cluster_id),
        learner = !me.voter,
        "joining a running cluster"
    );
    Ok(Identity {
        name: config.name.clone(),
        member_id: me.id,
        cluster_id: info.cluster_id,
        joined: true,
    })
}
