//! etcd `Cluster`: the member list, from the raft membership. Membership changes
//! (add, remove, promote, update) arrive with issue 9.

use roster_proto::etcdserverpb::cluster_server::Cluster;
use roster_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use super::EtcdApi;

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

fn later(what: &str) -> Status {
    Status::unimplemented(format!("roster: {what} is not supported yet"))
}

#[tonic::async_trait]
impl Cluster for EtcdApi {
    async fn member_add(
        &self,
        _req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(later("MemberAdd"))
    }

    async fn member_remove(
        &self,
        _req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(later("MemberRemove"))
    }

    async fn member_update(
        &self,
        _req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(later("MemberUpdate"))
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
        _req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(later("MemberPromote"))
    }
}
