//! The revision history: every version of every key until compaction, so that a
//! read can see the keyspace as of a past revision and a watch can replay the
//! events it missed.
//!
//! Two indexes over one set of versions:
//! - `h/<escaped key><rev>` holds the [`Version`] of a key written at `rev` (a put
//!   or a tombstone with its removal reason). Key-major, so a past read scans the
//!   versions of the keys in its range. A key changes at most once per revision
//!   (a txn may not touch a key twice), so `<rev>` alone names a version.
//! - `e/<rev><sub>` holds an [`EventRef`]: which key changed at `rev` and the
//!   revision of its previous version. Revision-major, so a watch replays events
//!   in order; the event itself is rebuilt from `h/`.
//!
//! `Compact(c)` keeps, for each key, only its newest version at or below `c` (and
//! drops it too if it is a tombstone older than `c`), and drops every event below
//! `c`. Reads at a revision `>= c` and watches from `>= c` stay exact.

use std::borrow::Cow;
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::command::Response;
use crate::engine::{Engine, EngineError};
use crate::error::{Fail, StateError};
use crate::keyspace::{self, Event, EventKind, KeyValue, RangeRequest, RangeResult, RemovalReason};
use crate::layout;
use crate::tx::{Tx, View};

/// One version of one key, as stored under `h/`. Borrowed when written (apply
/// stages it from the event without copying the value), owned when read.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Version<'a> {
    kind: EventKind,
    /// For a delete: the key and the deleting revision, the rest zero.
    kv: Cow<'a, KeyValue>,
    reason: Option<RemovalReason>,
}

/// One event, as stored under `e/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EventRef<'a> {
    key: Cow<'a, [u8]>,
    /// Revision of the key's version before this event; 0 if the key did not exist.
    prev_revision: i64,
}

/// Stages `event` (the `sub`-th of its revision) in both indexes.
pub(crate) fn stage<E: Engine>(
    tx: &mut Tx<'_, E>,
    event: &Event,
    sub: u64,
) -> Result<(), EngineError> {
    let revision = event.kv.mod_revision;
    let version = Version {
        kind: event.kind,
        kv: Cow::Borrowed(&event.kv),
        reason: event.reason,
    };
    let reference = EventRef {
        key: Cow::Borrowed(&event.kv.key),
        prev_revision: event.prev_kv.as_ref().map_or(0, |p| p.mod_revision),
    };
    tx.put(
        layout::history_key(&event.kv.key, revision),
        layout::encode(&version)?,
    );
    tx.put(
        layout::event_key(revision, sub),
        layout::encode(&reference)?,
    );
    Ok(())
}

/// The revision history was last compacted at (0: never).
pub(crate) fn compacted(view: &impl View) -> Result<i64, EngineError> {
    match view.read(layout::COMPACTED)? {
        None => Ok(0),
        Some(bytes) => Ok(layout::decode_u64(&bytes, "compacted revision")? as i64),
    }
}

/// Checks that the history can answer at `revision` (given the store's current
/// one): not compacted away, not in the future.
pub(crate) fn check_readable(view: &impl View, revision: i64, current: i64) -> Result<(), Fail> {
    if revision > current {
        return Err(StateError::FutureRevision.into());
    }
    let compacted = compacted(view)?;
    if revision < compacted {
        return Err(StateError::Compacted { compacted }.into());
    }
    Ok(())
}

/// Serves `req` from `view`, whose store revision is `current`: the live keys, or
/// the history when `req.revision` names an earlier revision.
pub(crate) fn read(
    view: &impl View,
    req: &RangeRequest,
    current: i64,
) -> Result<RangeResult, Fail> {
    if req.revision <= 0 || req.revision == current {
        return Ok(keyspace::range(view, current, req)?);
    }
    check_readable(view, req.revision, current)?;
    Ok(range_at(view, req, req.revision, current)?)
}

fn load_version(
    view: &impl View,
    key: &[u8],
    revision: i64,
) -> Result<Option<Version<'static>>, EngineError> {
    view.read(&layout::history_key(key, revision))?
        .map(|bytes| layout::decode(&bytes))
        .transpose()
}

/// The events of revisions `>= from_revision`, in revision order, each with the
/// key's previous version as `prev_kv` (as etcd's watch sends it): at least
/// `limit` if there are that many, and then the rest of the last revision, so a
/// page never splits a revision.
pub(crate) fn events(
    view: &impl View,
    from_revision: i64,
    limit: usize,
) -> Result<Vec<Event>, EngineError> {
    let start = layout::event_key(from_revision.max(0), 0);
    let end = layout::prefix_end(layout::EVENT);
    let mut events: Vec<Event> = Vec::new();
    for item in view.read_range(&start, end.as_deref()) {
        let (stored, value) = item?;
        let revision = event_revision(&stored)?;
        if events.len() >= limit && events.last().is_none_or(|e| e.kv.mod_revision != revision) {
            break;
        }
        let reference: EventRef<'static> = layout::decode(&value)?;
        events.push(load_event(view, reference, revision)?);
    }
    Ok(events)
}

/// Rebuilds one event from its reference and the versions it names.
fn load_event(
    view: &impl View,
    reference: EventRef<'_>,
    revision: i64,
) -> Result<Event, EngineError> {
    let version = load_version(view, &reference.key, revision)?
        .ok_or_else(|| EngineError(format!("event at {revision} has no version")))?;
    let prev_kv = match reference.prev_revision {
        0 => None,
        prev => load_version(view, &reference.key, prev)?
            .filter(|v| v.kind == EventKind::Put)
            .map(|v| v.kv.into_owned()),
    };
    Ok(Event {
        kind: version.kind,
        kv: version.kv.into_owned(),
        prev_kv,
        reason: version.reason,
    })
}

fn event_revision(stored: &[u8]) -> Result<i64, EngineError> {
    let bytes = stored
        .get(layout::EVENT.len()..layout::EVENT.len() + 8)
        .ok_or_else(|| EngineError(format!("corrupt event key {stored:?}")))?;
    Ok(layout::decode_u64(bytes, "event revision")? as i64)
}

/// The `h/` bounds `[start, end)` holding every version of the keys `req` selects,
/// or `None` for an empty selection.
fn history_bounds(key: &[u8], range_end: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    match range_end {
        [] => {
            let prefix = layout::history_prefix(key);
            let end = layout::prefix_end(&prefix)?;
            Some((prefix, end))
        }
        [0] => Some((
            layout::history_bound(key),
            layout::prefix_end(layout::HISTORY)?,
        )),
        end if end <= key => None,
        end => Some((layout::history_bound(key), layout::history_bound(end))),
    }
}

/// Reads the keys `req` selects as they were at revision `at` (already checked
/// readable); `current` is the store revision reported with the result.
pub(crate) fn range_at(
    view: &impl View,
    req: &RangeRequest,
    at: i64,
    current: i64,
) -> Result<RangeResult, EngineError> {
    let Some((start, end)) = history_bounds(&req.key, &req.range_end) else {
        return keyspace::collect_range(std::iter::empty(), Ok, req, current);
    };
    let mut live = Vec::new();
    // The newest version at or below `at` of the key being scanned.
    let mut newest: Option<(Vec<u8>, Vec<u8>)> = None;
    for item in view.read_range(&start, Some(&end)) {
        let (stored, value) = item?;
        let (key, revision) = layout::parse_history_key(&stored)?;
        if newest.as_ref().is_some_and(|(k, _)| *k != key) {
            live.extend(newest.take());
        }
        if revision <= at {
            newest = Some((key, value));
        }
    }
    live.extend(newest);
    let mut kvs = Vec::new();
    for (_, value) in live {
        let version: Version<'static> = layout::decode(&value)?;
        if version.kind == EventKind::Put {
            kvs.push(Ok(version.kv.into_owned()));
        }
    }
    keyspace::collect_range(kvs.into_iter(), Ok, req, current)
}

/// `Compact`: discards the history below `revision` (see the module docs).
pub(crate) fn compact<E: Engine>(tx: &mut Tx<'_, E>, revision: i64) -> Result<Response, Fail> {
    let done = compacted(tx)?;
    if revision <= done {
        return Err(StateError::Compacted { compacted: done }.into());
    }
    if revision > tx.revision() {
        return Err(StateError::FutureRevision.into());
    }
    let mut touched = BTreeSet::new();
    let start = layout::event_key(done, 0);
    for (stored, value) in tx.scan(&start, Some(&layout::event_key(revision, 0)))? {
        let reference: EventRef<'static> = layout::decode(&value)?;
        touched.insert(reference.key.into_owned());
        tx.delete(stored);
    }
    for key in touched {
        drop_old_versions(tx, &key, revision)?;
    }
    tx.put(layout::COMPACTED.to_vec(), revision.to_be_bytes().to_vec());
    Ok(Response::Done {
        revision: tx.revision(),
    })
}

/// Deletes the versions of `key` at or below `revision` except the newest, and
/// that one too if it is a tombstone older than `revision`.
fn drop_old_versions<E: Engine>(
    tx: &mut Tx<'_, E>,
    key: &[u8],
    revision: i64,
) -> Result<(), EngineError> {
    let start = layout::history_prefix(key);
    let end = layout::history_key(key, revision.saturating_add(1));
    let mut versions = tx.scan(&start, Some(&end))?;
    let Some((newest_key, newest)) = versions.pop() else {
        return Ok(());
    };
    for (stored, _) in versions {
        tx.delete(stored);
    }
    let newest: Version<'static> = layout::decode(&newest)?;
    if newest.kind == EventKind::Delete && newest.kv.mod_revision < revision {
        tx.delete(newest_key);
    }
    Ok(())
}
