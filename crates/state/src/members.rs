//! Member attributes published through the log: what raft's membership does not
//! hold because members learn it only when they start (their client URLs), as
//! etcd members publish theirs. Every node then answers `MemberList` alike.

use serde::{Deserialize, Serialize};

use crate::command::Response;
use crate::error::Fail;
use crate::layout;
use crate::tx::Tx;
use crate::Engine;

/// What a member published about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAttrs {
    pub id: u64,
    pub name: String,
    pub client_urls: Vec<String>,
    /// The member was started with `--allow-pipe-handlers`.
    #[serde(default)]
    pub allow_pipe_handlers: bool,
}

pub(crate) fn publish<E: Engine>(
    tx: &mut Tx<'_, E>,
    attrs: &MemberAttrs,
) -> Result<Response, Fail> {
    tx.put(layout::member_key(attrs.id), layout::encode(attrs)?);
    Ok(Response::Done {
        revision: tx.revision(),
    })
}
