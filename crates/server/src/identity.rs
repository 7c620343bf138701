//! Member and cluster identity, etcd's scheme: a member id is derived from the
//! member's peer URLs, name and the cluster token; the cluster id from the member
//! ids and the token. Both are written to the data dir at bootstrap, and a node
//! whose data dir belongs to another cluster or member refuses to start.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::InitialMember;

/// 64-bit FNV-1a over the parts, separated so that ("ab","c") != ("a","bc"),
/// then mixed (splitmix64) so that ids spread over the whole range.
fn hash_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.iter().chain(std::iter::once(&0xffu8)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    roster_state::splitmix64(h)
}

/// The member id of one member of the initial cluster. Never 0.
pub fn member_id(member: &InitialMember, token: &str) -> u64 {
    let mut urls = member.peer_urls.clone();
    urls.sort();
    let parts = urls
        .iter()
        .map(|u| u.as_bytes())
        .chain([member.name.as_bytes(), token.as_bytes()]);
    hash_parts(parts).max(1)
}

/// The cluster id: from the sorted member ids and the token. Never 0.
pub fn cluster_id(member_ids: &[u64], token: &str) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let bytes: Vec<[u8; 8]> = ids.iter().map(|id| id.to_be_bytes()).collect();
    let parts = bytes.iter().map(|b| b.as_slice()).chain([token.as_bytes()]);
    hash_parts(parts).max(1)
}

/// The id of a member added to a running cluster (`MemberAdd`): from its
/// peer URLs, the cluster, the time and a nonce the caller bumps while the id
/// is taken, like etcd's (which salts with the time). Never 0.
pub fn added_member_id(peer_urls: &[String], cluster_id: u64, now_ms: u64, nonce: u64) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let numbers = [
        cluster_id.to_be_bytes(),
        now_ms.to_be_bytes(),
        nonce.to_be_bytes(),
    ];
    let parts = urls
        .iter()
        .map(|u| u.as_bytes())
        .chain(numbers.iter().map(|n| n.as_slice()));
    hash_parts(parts).max(1)
}

/// What the data dir records about whose data it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub name: String,
    pub member_id: u64,
    pub cluster_id: u64,
    /// The member joined a running cluster (`--initial-cluster-state
    /// existing` after `MemberAdd`): its ids came from the cluster, not from
    /// `--initial-cluster`, so a restart takes them from this file.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub joined: bool,
}

/// Errors of reading or checking the identity file.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    // Not a `source`: the CLI prints the chain of sources, which would say
    // it twice.
    #[error("data dir {dir}: {error}")]
    Io { dir: String, error: std::io::Error },
    #[error("data dir {dir}: identity file is corrupt: {reason}")]
    Corrupt { dir: String, reason: String },
    #[error(
        "data dir {dir} belongs to member {found_name} ({found_member:x}) of cluster {found_cluster:x}, \
         but this node is {name} ({member:x}) of cluster {cluster:x}: check --name, \
         --initial-cluster and --initial-cluster-token, or use another --data-dir"
    )]
    Mismatch {
        dir: String,
        found_name: String,
        found_member: u64,
        found_cluster: u64,
        name: String,
        member: u64,
        cluster: u64,
    },
}

const FILE: &str = "member.json";

/// Reads the identity stored in `dir`, or `None` for a fresh data dir.
pub fn load(dir: &Path) -> Result<Option<Identity>, IdentityError> {
    let path = dir.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(io_err(dir, source)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| IdentityError::Corrupt {
            dir: dir.display().to_string(),
            reason: e.to_string(),
        })
}

/// Checks that `dir` is ours (or fresh) and records `id` in it durably.
pub fn check_and_store(dir: &Path, id: &Identity) -> Result<bool, IdentityError> {
    if let Some(found) = load(dir)? {
        if &found != id {
            return Err(IdentityError::Mismatch {
                dir: dir.display().to_string(),
                found_name: found.name,
                found_member: found.member_id,
                found_cluster: found.cluster_id,
                name: id.name.clone(),
                member: id.member_id,
                cluster: id.cluster_id,
            });
        }
        return Ok(false);
    }
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let text = serde_json::to_string_pretty(id).map_err(|e| IdentityError::Corrupt {
        dir: dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let tmp = dir.join(format!("{FILE}.tmp"));
    write_synced(&tmp, text.as_bytes()).map_err(|e| io_err(dir, e))?;
    std::fs::rename(&tmp, dir.join(FILE)).map_err(|e| io_err(dir, e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))?;
    Ok(true)
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn io_err(dir: &Path, error: std::io::Error) -> IdentityError {
    IdentityError::Io {
        dir: dir.display().to_string(),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, url: &str) -> InitialMember {
        InitialMember {
            name: name.into(),
            peer_urls: vec![url.into()],
        }
    }

    #[test]
    fn ids_are_deterministic_and_depend_on_every_part() {
        let a = member_id(&member("n1", "http://127.0.0.1:2380"), "t");
        assert_eq!(a, member_id(&member("n1", "http://127.0.0.1:2380"), "t"));
        assert_ne!(a, member_id(&member("n2", "http://127.0.0.1:2380"), "t"));
        assert_ne!(a, member_id(&member("n1", "http://127.0.0.1:2381"), "t"));
        assert_ne!(a, member_id(&member("n1", "http://127.0.0.1:2380"), "u"));
        assert_eq!(cluster_id(&[1, 2], "t"), cluster_id(&[2, 1], "t"));
        let urls = vec!["http://127.0.0.1:2380".to_string()];
        let added = added_member_id(&urls, 7, 1000, 0);
        assert_eq!(added, added_member_id(&urls, 7, 1000, 0));
        assert_ne!(added, added_member_id(&urls, 7, 1001, 0));
        assert_ne!(added, added_member_id(&urls, 7, 1000, 1));
        assert_ne!(added, added_member_id(&urls, 8, 1000, 0));
        assert_ne!(cluster_id(&[1, 2], "t"), cluster_id(&[1, 2], "u"));
    }

    #[test]
    fn a_data_dir_of_another_cluster_is_refused_and_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ours = Identity {
            name: "n1".into(),
            member_id: 1,
            cluster_id: 10,
            joined: false,
        };
        assert!(check_and_store(dir.path(), &ours).expect("fresh"));
        assert!(!check_and_store(dir.path(), &ours).expect("same"));
        let other = Identity {
            cluster_id: 11,
            ..ours.clone()
        };
        let err = check_and_store(dir.path(), &other).expect_err("mismatch");
        assert!(err.to_string().contains("belongs to member n1"), "{err}");
        assert_eq!(load(dir.path()).expect("load"), Some(ours));
    }
}
