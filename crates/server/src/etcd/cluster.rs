//! etcd `Cluster`: the member list, from the raft membership, and membership
//! changes (add, remove, promote, update), made on the leader (`membership`).

use roster_proto::etcdserverpb::cluster_server::Cluster;
use roster_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::errors::route_status;
use super::EtcdApi;
use crate::membership::{MemberChange, MemberChanged, MemberError};

impl EtcdApi {
    /// Members of the current membership, voters and learners, by id, with the
    /// client URLs each published.
    fn members(&self) -> Result<Vec<Member>, Status> {
        let published = self.read(|sm| sm.members().map_err(super::errors::engine_status))?;
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let attrs = published.iter().find(|a| a.id == *id);
                Member {
                    id: *id,
                    name: attrs.map_or_else(|| node.name.clone(), |a| a.name.clone()),
                    peer_ur_ls: node.peer_urls.clone(),
                    client_ur_ls: attrs.map_or_else(Vec::new, |a| a.client_urls.clone()),
                    is_learner: !voters.contains(id),
                }
            })
            .collect();
        Ok(members)
    }
}

/// Longest a change's answer waits for this member to see the change, so
/// that the `MemberList` a client sends next to the same member shows it.
const SEEN_WAIT: Duration = Duration::from_secs(5);

/// etcd's status for each refusal.
fn member_status(e: MemberError) -> Status {
    let message = e.to_string();
    match e {
        MemberError::NotFound => Status::not_found(message),
        MemberError::BadUrls => Status::invalid_argument(message),
        MemberError::PeerUrlExists
        | MemberError::NotLearner
        | MemberError::LearnerNotReady
        | MemberError::TooManyLearners
        | MemberError::NotEnoughStarted => Status::failed_precondition(message),
        MemberError::InProgress => Status::unavailable(message),
        MemberError::NotLeader => Status::unavailable("etcdserver: no leader"),
        MemberError::Failed(reason) => Status::unavailable(format!("etcdserver: {reason}")),
    }
}

impl EtcdApi {
    /// Makes `change` on the leader, then waits (boundedly) until this member
    /// has the membership entry that made it.
    async fn change_members(&self, change: MemberChange) -> Result<MemberChanged, Status> {
        let changed = self
            .router
            .member_change(change)
            .await
            .map_err(route_status)?
            .map_err(member_status)?;
        let seen = self
            .raft
            .wait(Some(SEEN_WAIT))
            .metrics(
                |m| m.membership_config.log_id().map_or(0, |l| l.index) >= changed.index,
                "the new membership",
            )
            .await;
        if seen.is_err() {
            tracing::debug!(
                index = changed.index,
                "answering before the new membership arrived here"
            );
        }
        Ok(changed)
    }
}

#[tonic::async_trait]
impl Cluster for EtcdApi {
    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        self.authorize_admin(self.caller(&req)?.as_ref())?;
        let req = req.into_inner();
        let change = MemberChange::Add {
            peer_urls: req.peer_ur_ls.clone(),
            learner: req.is_learner,
        };
        let changed = self.change_members(change).await?;
        Ok(Response::new(MemberAddResponse {
            header: self.header(self.revision()?),
            member: Some(Member {
                id: changed.id,
                name: String::new(),
                peer_ur_ls: req.peer_ur_ls,
                client_ur_ls: Vec::new(),
                is_learner: req.is_learner,
            }),
            members: self.members()?,
        }))
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.authorize_admin(self.caller(&req)?.as_ref())?;
        let id = req.into_inner().id;
        self.change_members(MemberChange::Remove { id }).await?;
        Ok(Response::new(MemberRemoveResponse {
            header: self.header(self.revision()?),
            members: self.members()?,
        }))
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.authorize_admin(self.caller(&req)?.as_ref())?;
        let req = req.into_inner();
        let change = MemberChange::Update {
            id: req.id,
            peer_urls: req.peer_ur_ls,
        };
        self.change_members(change).await?;
        Ok(Response::new(MemberUpdateResponse {
            header: self.header(self.revision()?),
            members: self.members()?,
        }))
    }

    async fn member_list(
        &self,
        req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        self.before_read(!req.into_inner().linearizable).await?;
        Ok(Response::new(MemberListResponse {
            header: self.header(self.revision()?),
            members: self.members()?,
        }))
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.authorize_admin(self.caller(&req)?.as_ref())?;
        let id = req.into_inner().id;
        self.change_members(MemberChange::Promote { id }).await?;
        Ok(Response::new(MemberPromoteResponse {
            header: self.header(self.revision()?),
            members: self.members()?,
        }))
    }
}
