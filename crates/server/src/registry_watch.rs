//! `Registry.WatchServices`: typed registry events over the node's watch hub.
//!
//! The stream is an ordinary hub watcher on the registry's key prefix (with
//! previous values), whose key events are turned into registry events: a put of
//! a new record is `registered`; a put over an existing one is `draining`,
//! `health_changed` or `updated` as the record changed; a delete is
//! `deregistered` with the removal reason the state machine kept beside it.
//!
//! With `snapshot`, the matching instances are read at one revision R and sent
//! first, and the watcher starts at R + 1: the hub replays from the history
//! whatever was applied meanwhile, so there is no gap and no overlap.

use std::pin::Pin;

use futures::{stream, Stream, StreamExt};
use roster_proto::registry::{
    EventKind as PbKind, Instance as PbInstance, RegistryEvent, RemovalReason as PbReason,
    WatchServicesRequest, WatchServicesResponse,
};
use roster_state::registry::{
    decode_instance, parse_instance_key, Instance, InstanceState, REGISTRY_PREFIX,
};
use roster_state::selector::Selector;
use roster_state::{Event, EventKind, RemovalReason};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::etcd::{fail_engine, EtcdApi};
use crate::registry_api::to_proto;
use crate::watch::{Outbound, Selector as KeySelector, WatchOptions};

/// Instances per snapshot response.
const SNAPSHOT_CHUNK: usize = 500;
const QUEUE: usize = 128;

pub type WatchServicesStream =
    Pin<Box<dyn Stream<Item = Result<WatchServicesResponse, Status>> + Send>>;

/// The keys of one service's instances (all services: empty name).
pub(crate) fn key_range(service: &str) -> KeySelector {
    let mut key = REGISTRY_PREFIX.to_vec();
    if !service.is_empty() {
        key.extend_from_slice(service.as_bytes());
        key.push(b'/');
    }
    KeySelector {
        range_end: roster_state::prefix_range_end(&key),
        key,
        no_put: false,
        no_delete: false,
    }
}

pub async fn watch_services(
    api: &EtcdApi,
    caller: Option<roster_state::auth::Caller>,
    req: WatchServicesRequest,
) -> Result<WatchServicesStream, Status> {
    let selector =
        Selector::parse(&req.selector).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let range = key_range(&req.service);
    api.authorize_keys(
        caller.as_ref(),
        roster_state::auth::Access::Read,
        (&range.key, &range.range_end),
        crate::etcd::roster_status,
    )?;
    let service = Some(req.service.as_str()).filter(|s| !s.is_empty());
    let mut first = Vec::new();
    let start = if req.snapshot {
        api.before_read(false).await?;
        let (instances, revision) =
            api.read(|sm| Ok((sm.instances(service).map_err(fail_engine)?, sm.revision())))?;
        let events: Vec<RegistryEvent> = instances
            .into_iter()
            .filter(|(i, _)| selector.matches(&i.spec.metadata, &i.spec.tags))
            .map(|(i, rev)| RegistryEvent {
                kind: PbKind::Registered as i32,
                instance: Some(to_proto(i, rev)),
                reason: PbReason::Unspecified as i32,
                revision: rev,
                selected: true,
            })
            .collect();
        let mut chunks: Vec<Vec<RegistryEvent>> =
            events.chunks(SNAPSHOT_CHUNK).map(<[_]>::to_vec).collect();
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        let last = chunks.len() - 1;
        first.extend(chunks.into_iter().enumerate().map(|(n, events)| {
            Ok(WatchServicesResponse {
                revision,
                events,
                snapshot: true,
                snapshot_end: n == last,
            })
        }));
        revision + 1
    } else {
        req.from_revision.max(0)
    };
    let hub = api.watch.hub.clone();
    let guard = hub.open_stream();
    let (out, queue) = mpsc::channel(QUEUE);
    let options = WatchOptions {
        prev_kv: true,
        ..WatchOptions::default()
    };
    hub.add((guard.id, 0), key_range(&req.service), options, start, &out)
        .await;
    drop(out);
    let live = ReceiverStream::new(queue).filter_map(move |message| {
        // The guard lives as long as the stream: dropping it removes the watcher.
        let _alive = &guard;
        let answer = typed(message, &selector);
        async move { answer }
    });
    Ok(Box::pin(stream::iter(first).chain(live)))
}

/// The typed answer to one hub message, if it has one for the client.
fn typed(message: Outbound, selector: &Selector) -> Option<Result<WatchServicesResponse, Status>> {
    match message {
        Outbound::Events {
            revision, events, ..
        } => {
            let events: Vec<RegistryEvent> = events
                .iter()
                .filter_map(|e| registry_event(e, selector))
                .collect();
            (!events.is_empty()).then_some(Ok(WatchServicesResponse {
                revision,
                events,
                snapshot: false,
                snapshot_end: false,
            }))
        }
        Outbound::Compacted { compacted, .. } => Some(Err(Status::out_of_range(format!(
            "roster: required revision has been compacted (compacted at {compacted})"
        )))),
        Outbound::Failed { reason, .. } => Some(Err(Status::internal(reason))),
        Outbound::NoLeader => Some(Err(Status::unavailable("etcdserver: no leader"))),
        Outbound::Created { .. }
        | Outbound::Rejected { .. }
        | Outbound::Progress { .. }
        | Outbound::Canceled { .. } => None,
    }
}

fn parse(value: &[u8]) -> Option<Instance> {
    decode_instance(value).ok()
}

/// A key event of the registry prefix as a registry event, if it concerns an
/// instance the selector matches (before or after the change).
fn registry_event(event: &Event, selector: &Selector) -> Option<RegistryEvent> {
    let revision = event.kv.mod_revision;
    let before = event.prev_kv.as_ref().and_then(|kv| parse(&kv.value));
    let matches = |i: &Instance| selector.matches(&i.spec.metadata, &i.spec.tags);
    let (kind, instance, reason, selected) = match event.kind {
        EventKind::Delete => {
            let instance = match before {
                Some(before) if !matches(&before) => return None,
                Some(before) => to_proto(before, revision),
                // The record's last version was compacted away (a delete exactly
                // at the compaction revision): say who left even without it,
                // rather than hide a removal.
                None => named_only(&event.kv.key)?,
            };
            (
                PbKind::Deregistered,
                instance,
                removal_reason(event.reason),
                false,
            )
        }
        EventKind::Put => {
            let after = parse(&event.kv.value)?;
            if !matches(&after) && !before.as_ref().is_some_and(matches) {
                return None;
            }
            let kind = match &before {
                None => PbKind::Registered,
                Some(b) if b.state != after.state && after.state == InstanceState::Draining => {
                    PbKind::Draining
                }
                Some(b) if b.health != after.health => PbKind::HealthChanged,
                Some(_) => PbKind::Updated,
            };
            let selected = matches(&after);
            (
                kind,
                to_proto(after, revision),
                PbReason::Unspecified,
                selected,
            )
        }
    };
    Some(RegistryEvent {
        kind: kind as i32,
        instance: Some(instance),
        reason: reason as i32,
        revision,
        selected,
    })
}

fn removal_reason(reason: Option<RemovalReason>) -> PbReason {
    match reason.unwrap_or(RemovalReason::Graceful) {
        RemovalReason::Graceful => PbReason::Graceful,
        RemovalReason::Expired => PbReason::Expired,
        RemovalReason::Forced => PbReason::Forced,
        RemovalReason::Drained => PbReason::Drained,
        RemovalReason::Health => PbReason::Health,
    }
}

/// An instance known only by its key, `/roster/registry/<service>/<id>`.
fn named_only(key: &[u8]) -> Option<PbInstance> {
    let (service, id) = parse_instance_key(key)?;
    Some(PbInstance {
        service: service.to_string(),
        id: id.to_string(),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use roster_state::registry::{instance_key, Health, InstanceSpec};
    use roster_state::KeyValue;

    use super::*;

    fn record(id: &str, zone: &str, state: InstanceState, health: Health) -> Instance {
        let spec = InstanceSpec {
            metadata: [("zone".to_string(), zone.to_string())].into(),
            ..InstanceSpec::new("web", id)
        };
        Instance {
            state,
            health,
            ..Instance::new(spec, 0)
        }
    }

    fn kv(instance: &Instance, revision: i64) -> KeyValue {
        KeyValue {
            key: instance_key(&instance.spec.service, &instance.spec.id),
            create_revision: 1,
            mod_revision: revision,
            version: 1,
            value: serde_json::to_vec(instance).expect("json"),
            lease: 0,
        }
    }

    fn put(before: Option<&Instance>, after: &Instance) -> Event {
        Event {
            kind: EventKind::Put,
            kv: kv(after, 5),
            prev_kv: before.map(|b| kv(b, 4)),
            reason: None,
        }
    }

    fn kind_of(event: &Event, selector: &str) -> Option<(PbKind, PbReason)> {
        let selector = Selector::parse(selector).expect("selector");
        registry_event(event, &selector).map(|e| {
            (
                PbKind::try_from(e.kind).expect("kind"),
                PbReason::try_from(e.reason).expect("reason"),
            )
        })
    }

    #[test]
    fn puts_become_the_kind_of_change_they_are() {
        let up = record("1", "a", InstanceState::Up, Health::Passing);
        let draining = record("1", "a", InstanceState::Draining, Health::Passing);
        let warning = record("1", "a", InstanceState::Up, Health::Warning);
        let moved = record("1", "b", InstanceState::Up, Health::Passing);
        let none = Some((PbKind::Registered, PbReason::Unspecified));
        assert_eq!(kind_of(&put(None, &up), ""), none);
        assert_eq!(
            kind_of(&put(Some(&up), &draining), "").map(|k| k.0),
            Some(PbKind::Draining)
        );
        assert_eq!(
            kind_of(&put(Some(&up), &warning), "").map(|k| k.0),
            Some(PbKind::HealthChanged)
        );
        assert_eq!(
            kind_of(&put(Some(&draining), &up), "").map(|k| k.0),
            Some(PbKind::Updated)
        );
        // Matching before or after is enough; neither is not.
        assert_eq!(
            kind_of(&put(Some(&up), &moved), "zone=a").map(|k| k.0),
            Some(PbKind::Updated)
        );
        assert_eq!(kind_of(&put(None, &moved), "zone=a"), None);
    }

    #[test]
    fn deletes_carry_their_reason_even_without_the_record() {
        let up = record("1", "a", InstanceState::Up, Health::Passing);
        let mut delete = Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                value: Vec::new(),
                ..kv(&up, 6)
            },
            prev_kv: Some(kv(&up, 5)),
            reason: Some(RemovalReason::Expired),
        };
        assert_eq!(
            kind_of(&delete, "zone=a"),
            Some((PbKind::Deregistered, PbReason::Expired))
        );
        assert_eq!(kind_of(&delete, "zone=b"), None);
        // Compacted away: still reported, by name.
        delete.prev_kv = None;
        let selector = Selector::parse("zone=b").expect("selector");
        let event = registry_event(&delete, &selector).expect("reported");
        let instance = event.instance.expect("named");
        assert_eq!(
            (instance.service.as_str(), instance.id.as_str()),
            ("web", "1")
        );
    }
}
