//! Durability: every acknowledged write is still there after the cluster
//! restarted. A put acknowledged at revision r leaves its key at r or later
//! (with its value if exactly at r); a delete acknowledged at r leaves it
//! absent or rewritten after r; the store's revision is at least every
//! acknowledged one. A delete whose outcome is unknown may have been applied
//! after any acknowledged write of its key, so a key with one may be absent
//! (found by the simulation, seed 1 on 5 nodes: a put acknowledged, then two
//! deletes that timed out; the key was gone, rightly).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::Verdict;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckedWrite {
    pub key: String,
    pub revision: i64,
    /// `None`: a delete.
    pub value: Option<String>,
}

/// `state`: each key's (mod revision, value) read after the restart;
/// `maybe_deleted`: the keys of deletes whose outcome is unknown.
pub fn check(
    acked: &[AckedWrite],
    maybe_deleted: &BTreeSet<String>,
    state: &BTreeMap<String, (i64, String)>,
    revision_after: i64,
) -> Verdict {
    let mut anomalies = Vec::new();
    let mut last: BTreeMap<&str, &AckedWrite> = BTreeMap::new();
    for write in acked {
        let slot = last.entry(&write.key).or_insert(write);
        if write.revision > slot.revision {
            *slot = write;
        }
    }
    if let Some(max) = acked.iter().map(|w| w.revision).max() {
        if revision_after < max {
            anomalies.push(format!(
                "store revision {revision_after} after the restart is below acknowledged revision {max}"
            ));
        }
    }
    for (key, write) in last {
        let now = state.get(key);
        let lost = match (&write.value, now) {
            (Some(_), None) => !maybe_deleted.contains(key),
            (Some(value), Some((rev, now))) => {
                *rev < write.revision || (*rev == write.revision && now != value)
            }
            (None, Some((rev, _))) => *rev <= write.revision,
            (None, None) => false,
        };
        if lost {
            anomalies.push(format!(
                "key {key:?}: acknowledged {:?} at revision {}, found {now:?} after the restart",
                write.value, write.revision
            ));
        }
    }
    Verdict {
        checker: "durability",
        checked: acked.len(),
        anomalies,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(key: &str, revision: i64, value: Option<&str>) -> AckedWrite {
        AckedWrite {
            key: key.into(),
            revision,
            value: value.map(str::to_string),
        }
    }

    #[test]
    fn kept_writes_pass_and_lost_ones_are_named() {
        let acked = [
            w("a", 2, Some("1")),
            w("a", 5, Some("2")),
            w("b", 3, Some("x")),
            w("c", 4, None),
        ];
        let state: BTreeMap<String, (i64, String)> = [
            ("a".to_string(), (5, "2".to_string())),
            ("b".to_string(), (7, "y".to_string())),
        ]
        .into();
        let none = BTreeSet::new();
        assert!(check(&acked, &none, &state, 7).ok());
        let lost: BTreeMap<String, (i64, String)> =
            [("a".to_string(), (2, "1".to_string()))].into();
        let verdict = check(&acked, &none, &lost, 4);
        let text = verdict.anomalies.join("\n");
        assert!(text.contains("below acknowledged revision 5"), "{text}");
        assert!(text.contains("key \"a\""), "{text}");
        assert!(text.contains("key \"b\""), "{text}");
        assert!(!text.contains("key \"c\""), "{text}");
    }

    #[test]
    fn a_delete_of_unknown_outcome_may_explain_an_absent_key_only() {
        let acked = [w("a", 5, Some("2")), w("b", 6, Some("3"))];
        let maybe: BTreeSet<String> = ["a".to_string(), "b".to_string()].into();
        let state: BTreeMap<String, (i64, String)> =
            [("b".to_string(), (4, "1".to_string()))].into();
        let verdict = check(&acked, &maybe, &state, 9);
        let text = verdict.anomalies.join("\n");
        assert!(!text.contains("key \"a\""), "{text}");
        assert!(
            text.contains("key \"b\""),
            "an older version is lost: {text}"
        );
        let absent = check(&acked, &BTreeSet::new(), &state, 9);
        assert!(absent.anomalies.join("\n").contains("key \"a\""));
    }
}
