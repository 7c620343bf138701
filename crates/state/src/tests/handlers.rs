//! Scenarios of handler definitions and the outbox: every way an instance
//! comes and goes writes one event for the handler that serves it, with its
//! reason, in the same apply; events leave only when delivered or filed as
//! failed; compaction leaves them alone.

use super::registry::{deregister, register, spec};
use super::*;
use crate::handlers::{EventType, HandlerDef, HandlerKind};
use crate::registry::{Health, InstanceSpec, LeaseChoice};

fn handler(name: &str) -> HandlerDef {
    HandlerDef {
        name: name.into(),
        kind: HandlerKind::Http,
        target: "http://127.0.0.1:9/events".into(),
        timeout_ms: 1_000,
        max_attempts: 3,
    }
}

fn set(def: HandlerDef) -> Command {
    Command::SetHandler(def)
}

fn use_for(event: EventType, name: &str) -> Command {
    Command::UseHandler {
        event,
        name: name.into(),
    }
}

/// (type, instance, handler, reason, actor, output) of every outbox event.
type Row = (
    EventType,
    String,
    String,
    Option<RemovalReason>,
    String,
    String,
);

fn outbox(sm: &Machine) -> Vec<Row> {
    sm.outbox(usize::MAX)
        .expect("outbox")
        .into_iter()
        .map(|e| (e.event, e.instance, e.handler, e.reason, e.actor, e.output))
        .collect()
}

fn row(event: EventType, id: &str, handler: &str, reason: Option<RemovalReason>) -> Row {
    (
        event,
        id.into(),
        handler.into(),
        reason,
        String::new(),
        String::new(),
    )
}

/// A machine with handlers `cmdb` (registration, deregistration) and `pager`
/// (keepalive failure) in use.
fn wired() -> Machine {
    let mut sm = machine();
    for command in [
        set(handler("cmdb")),
        set(handler("pager")),
        set(handler("own")),
        use_for(EventType::Registration, "cmdb"),
        use_for(EventType::Deregistration, "cmdb"),
        use_for(EventType::KeepaliveFailure, "pager"),
    ] {
        assert!(!matches!(
            apply(&mut sm, &command).response,
            Response::Error { .. }
        ));
    }
    sm
}

#[test]
fn definitions_are_checked_and_a_handler_in_use_cannot_be_deleted() {
    let mut sm = wired();
    let bad_timeout = HandlerDef {
        timeout_ms: 0,
        ..handler("x")
    };
    let bad_url = HandlerDef {
        target: "ftp://x".into(),
        ..handler("x")
    };
    let no_attempts = HandlerDef {
        max_attempts: 0,
        ..handler("x")
    };
    for bad in [bad_timeout, bad_url, no_attempts] {
        let applied = apply(&mut sm, &set(bad.clone()));
        assert!(
            matches!(
                applied.response,
                Response::Error {
                    error: StateError::InvalidHandler(_),
                    ..
                }
            ),
            "{bad:?}: {:?}",
            applied.response
        );
    }
    fails(
        &mut sm,
        use_for(EventType::Registration, "nobody"),
        StateError::UnknownHandler("nobody".into()),
    );
    fails(
        &mut sm,
        Command::DeleteHandler {
            name: "pager".into(),
        },
        StateError::HandlerInUse {
            name: "pager".into(),
            event: "keepalive-failure".into(),
        },
    );
    let unknown_own = InstanceSpec {
        deregistration_handler: "nobody".into(),
        ..spec("web", "1")
    };
    fails(
        &mut sm,
        register(unknown_own, LeaseChoice::None, 1),
        StateError::UnknownHandler("nobody".into()),
    );
    apply(&mut sm, &use_for(EventType::KeepaliveFailure, ""));
    apply(
        &mut sm,
        &Command::DeleteHandler {
            name: "pager".into(),
        },
    );
    let names: Vec<String> = sm
        .handlers()
        .expect("handlers")
        .into_iter()
        .map(|h| h.name)
        .collect();
    assert_eq!(names, vec!["cmdb", "own"]);
    assert_eq!(
        sm.handler_uses().expect("uses"),
        vec![
            (EventType::Registration, "cmdb".to_string()),
            (EventType::Deregistration, "cmdb".to_string())
        ]
    );
}

#[test]
fn every_way_in_and_out_writes_one_event_with_its_reason() {
    let mut sm = wired();
    let (lease, ..) = registry_ok_lease(
        &mut sm,
        register(spec("web", "exp"), LeaseChoice::Own { ttl: 5 }, 1),
    );
    let keep = InstanceSpec {
        deregister: false,
        deregistration_handler: "own".into(),
        ..spec("web", "keep")
    };
    let (kept_lease, ..) = registry_ok_lease(
        &mut sm,
        register(keep.clone(), LeaseChoice::Own { ttl: 5 }, 1),
    );
    for id in ["bye", "forced", "drained", "sick"] {
        apply(&mut sm, &register(spec("web", id), LeaseChoice::None, 1));
    }
    // Re-registering an instance that is there is no new registration.
    apply(&mut sm, &register(spec("web", "bye"), LeaseChoice::None, 2));
    apply(&mut sm, &deregister("web", "bye"));
    apply(
        &mut sm,
        &Command::ForceDeregister {
            service: "web".into(),
            id: "forced".into(),
            actor: "alice".into(),
            reason: "decommissioned".into(),
            now_ms: 3,
        },
    );
    apply(
        &mut sm,
        &Command::Drain {
            service: "web".into(),
            id: "drained".into(),
            deadline_ms: Some(10),
        },
    );
    let due = sm.due_drains(10, 10).expect("due");
    apply(&mut sm, &Command::DrainExpire { due, now_ms: 10 });
    apply(
        &mut sm,
        &Command::SetHealth {
            service: "web".into(),
            id: "sick".into(),
            health: Health::Critical,
            output: "HTTP 503".into(),
            now_ms: 4,
        },
    );
    apply(
        &mut sm,
        &Command::RemoveUnhealthy {
            instances: vec![("web".into(), "sick".into(), 4)],
            now_ms: 20,
        },
    );
    apply(
        &mut sm,
        &Command::LeaseExpire {
            ids: vec![lease, kept_lease],
            now_ms: 30,
        },
    );
    apply(&mut sm, &register(keep, LeaseChoice::Own { ttl: 5 }, 40));
    use EventType::*;
    let mut forced = row(
        Deregistration,
        "forced",
        "cmdb",
        Some(RemovalReason::Forced),
    );
    forced.4 = "alice".into();
    let mut sick = row(Deregistration, "sick", "cmdb", Some(RemovalReason::Health));
    sick.5 = "HTTP 503".into();
    let mut keepalive = row(KeepaliveFailure, "keep", "pager", None);
    keepalive.5 = "keepalive expired".into();
    assert_eq!(
        outbox(&sm),
        vec![
            row(Registration, "exp", "cmdb", None),
            row(Registration, "keep", "cmdb", None),
            row(Registration, "bye", "cmdb", None),
            row(Registration, "forced", "cmdb", None),
            row(Registration, "drained", "cmdb", None),
            row(Registration, "sick", "cmdb", None),
            row(Deregistration, "bye", "cmdb", Some(RemovalReason::Graceful)),
            forced,
            row(
                Deregistration,
                "drained",
                "cmdb",
                Some(RemovalReason::Drained)
            ),
            sick,
            row(Deregistration, "exp", "cmdb", Some(RemovalReason::Expired)),
            keepalive,
            row(Registration, "keep", "cmdb", None),
        ]
    );
    let events = sm.outbox(usize::MAX).expect("outbox");
    let ids: Vec<u64> = events.iter().map(|e| e.id).collect();
    assert_eq!(
        ids,
        (1..=13).collect::<Vec<u64>>(),
        "ids count up, never reused"
    );
    assert_eq!(events[7].note, "decommissioned");
    assert_eq!(events[12].time_ms, 40);
    // The instance's own deregistration handler wins over the cluster's.
    apply(&mut sm, &deregister("web", "keep"));
    let last = sm.outbox(usize::MAX).expect("outbox").pop().expect("event");
    assert_eq!(
        (last.handler.as_str(), last.reason),
        ("own", Some(RemovalReason::Graceful))
    );
}

fn registry_ok_lease(sm: &mut Machine, cmd: Command) -> (i64, ()) {
    match apply(sm, &cmd).response {
        Response::Registry { lease, .. } => (lease, ()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn events_leave_the_outbox_only_when_delivered_or_filed_and_survive_compaction() {
    let mut sm = wired();
    for id in ["a", "b", "c"] {
        apply(&mut sm, &register(spec("web", id), LeaseChoice::None, 1));
    }
    apply(&mut sm, &put("x", "1"));
    let revision = sm.revision();
    apply(&mut sm, &Command::Compact { revision });
    assert_eq!(
        sm.outbox(10).expect("outbox").len(),
        3,
        "compaction keeps the outbox"
    );
    apply(&mut sm, &Command::OutboxDelivered { ids: vec![1, 99] });
    apply(
        &mut sm,
        &Command::OutboxFailed {
            failures: vec![(2, 3, "HTTP 500".into()), (77, 1, "gone".into())],
            now_ms: 50,
        },
    );
    let left: Vec<u64> = sm
        .outbox(10)
        .expect("outbox")
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(left, vec![3]);
    let failures = sm.delivery_failures().expect("failures");
    assert_eq!(failures.len(), 1);
    assert_eq!(
        (
            failures[0].event.id,
            failures[0].attempts,
            failures[0].error.as_str(),
            failures[0].failed_at_ms
        ),
        (2, 3, "HTTP 500", 50)
    );
    assert_eq!(failures[0].event.instance, "b");
}

#[test]
fn no_handler_in_use_writes_no_event() {
    let mut sm = machine();
    apply(&mut sm, &register(spec("web", "1"), LeaseChoice::None, 1));
    apply(&mut sm, &deregister("web", "1"));
    assert!(sm.outbox(10).expect("outbox").is_empty());
}
