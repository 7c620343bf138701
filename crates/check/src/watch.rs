//! Watch delivery: per watcher, events come in revision order, none twice,
//! and none missing against the final history between the revision the
//! watcher started from and the last one it saw. A watch resumed at the last
//! revision seen plus one is a watcher that starts there, so the same check
//! says it continued exactly where the old one stopped.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::Verdict;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WatchEvent {
    pub revision: i64,
    pub key: String,
    /// `true`: a delete.
    pub delete: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatcherHistory {
    pub name: String,
    /// The keys it watched: those starting with this.
    pub prefix: String,
    /// The revision it asked to start from (0: "now", unknown; its first
    /// event then stands for it).
    pub start_revision: i64,
    pub events: Vec<WatchEvent>,
}

/// Checks each watcher against `history`, every event of the run in
/// revision order.
pub fn check(watchers: &[WatcherHistory], history: &[WatchEvent]) -> Verdict {
    let mut anomalies = Vec::new();
    let mut checked = 0;
    for watcher in watchers {
        checked += watcher.events.len();
        check_one(watcher, history, &mut anomalies);
    }
    Verdict {
        checker: "watch",
        checked,
        anomalies,
    }
}

fn check_one(watcher: &WatcherHistory, history: &[WatchEvent], out: &mut Vec<String>) {
    let name = &watcher.name;
    let mut seen = HashSet::new();
    for pair in watcher.events.windows(2) {
        if pair[1].revision < pair[0].revision {
            out.push(format!(
                "{name}: out of order: revision {} after {}",
                pair[1].revision, pair[0].revision
            ));
        }
    }
    for event in &watcher.events {
        if !seen.insert((event.revision, &event.key)) {
            out.push(format!("{name}: duplicate: {event:?}"));
        }
        if !event.key.starts_with(&watcher.prefix) {
            out.push(format!("{name}: outside its prefix: {event:?}"));
        }
    }
    let Some(last) = watcher.events.last().map(|e| e.revision) else {
        return;
    };
    let first = match watcher.start_revision {
        0 => watcher.events[0].revision,
        start => start,
    };
    let expected: Vec<&WatchEvent> = history
        .iter()
        .filter(|e| e.revision >= first && e.revision <= last && e.key.starts_with(&watcher.prefix))
        .collect();
    let got: HashSet<&WatchEvent> = watcher.events.iter().collect();
    let missing: Vec<&&WatchEvent> = expected.iter().filter(|e| !got.contains(**e)).collect();
    if let Some(first_missing) = missing.first() {
        out.push(format!(
            "{name}: {} event(s) missing between revisions {first} and {last}, first {first_missing:?}",
            missing.len()
        ));
    }
    let known: HashSet<&WatchEvent> = expected.into_iter().collect();
    if let Some(invented) = watcher.events.iter().find(|e| !known.contains(e)) {
        out.push(format!("{name}: an event not in the history: {invented:?}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(revision: i64, key: &str) -> WatchEvent {
        WatchEvent {
            revision,
            key: key.into(),
            delete: false,
        }
    }

    fn watcher(start: i64, events: Vec<WatchEvent>) -> WatcherHistory {
        WatcherHistory {
            name: "w".into(),
            prefix: "a/".into(),
            start_revision: start,
            events,
        }
    }

    #[test]
    fn complete_ordered_watchers_pass_and_resumption_is_checked() {
        let history = vec![e(2, "a/1"), e(3, "b/1"), e(4, "a/2"), e(5, "a/1")];
        let full = watcher(2, vec![e(2, "a/1"), e(4, "a/2"), e(5, "a/1")]);
        let resumed = watcher(5, vec![e(5, "a/1")]);
        assert!(check(&[full, resumed], &history).ok());
        // Resumed one revision too late: the event at 4 is missing.
        let skipped = watcher(4, vec![e(5, "a/1")]);
        let verdict = check(&[skipped], &history);
        assert!(
            verdict.anomalies[0].contains("1 event(s) missing"),
            "{verdict}"
        );
    }

    #[test]
    fn disorder_duplicates_and_inventions_are_caught() {
        let history = vec![e(2, "a/1"), e(4, "a/2")];
        let verdict = check(
            &[watcher(
                2,
                vec![e(4, "a/2"), e(2, "a/1"), e(2, "a/1"), e(3, "a/9")],
            )],
            &history,
        );
        let text = verdict.anomalies.join("\n");
        assert!(text.contains("out of order"), "{text}");
        assert!(text.contains("duplicate"), "{text}");
        assert!(text.contains("not in the history"), "{text}");
    }
}
