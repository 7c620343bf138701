//! Scenarios of the registry commands: registration with an own, shared or no
//! lease, each way out (graceful, expired, forced with audit, drained) with its
//! reason, and every refusal changing nothing.

use std::collections::BTreeMap;

use super::*;
use crate::check::{CheckKind, CheckSpec};
use crate::registry::{
    Endpoint, Health, Instance, InstanceSpec, InstanceState, LeaseChoice, KEEPALIVE_EXPIRED,
};

pub(super) fn spec(service: &str, id: &str) -> InstanceSpec {
    InstanceSpec {
        endpoints: vec![Endpoint {
            address: "10.0.0.1".into(),
            port: 8080,
            protocol: "http".into(),
        }],
        metadata: BTreeMap::from([("zone".to_string(), "a".to_string())]),
        tags: vec!["web".into()],
        ..InstanceSpec::new(service, id)
    }
}

pub(super) fn register(spec: InstanceSpec, lease: LeaseChoice, now_ms: u64) -> Command {
    Command::Register {
        spec,
        lease,
        now_ms,
    }
}

pub(super) fn deregister(service: &str, id: &str) -> Command {
    Command::Deregister {
        service: service.into(),
        id: id.into(),
        now_ms: 0,
    }
}

/// Applies a registry command; its (lease, granted, revoked).
fn registry_ok(sm: &mut Machine, cmd: Command) -> (i64, Option<(i64, i64)>, Vec<i64>) {
    match apply(sm, &cmd).response {
        Response::Registry {
            lease,
            granted,
            revoked,
            ..
        } => (lease, granted, revoked),
        other => panic!("{cmd:?}: {other:?}"),
    }
}

fn instance(sm: &Machine, service: &str, id: &str) -> Option<Instance> {
    sm.instances(Some(service))
        .expect("instances")
        .into_iter()
        .map(|(i, _)| i)
        .find(|i| i.spec.id == id)
}

#[test]
fn registering_with_a_ttl_grants_a_lease_and_writes_the_record_at_one_revision() {
    let mut sm = machine();
    let applied = apply(
        &mut sm,
        &register(spec("web", "1"), LeaseChoice::Own { ttl: 10 }, 1_000),
    );
    let Response::Registry {
        revision,
        lease,
        granted,
        ..
    } = applied.response
    else {
        panic!("{:?}", applied.response);
    };
    assert_eq!((revision, granted), (2, Some((lease, 10))));
    assert_eq!(sm.lease(lease).expect("lease").map(|l| l.ttl), Some(10));
    let record = instance(&sm, "web", "1").expect("registered");
    assert_eq!(
        (record.lease, record.lease_owned, record.registered_at_ms),
        (lease, true, 1_000)
    );
    assert_eq!(
        (record.state, record.health),
        (InstanceState::Up, Health::Passing)
    );
    // An ordinary key of the keyspace, on the lease, readable as JSON.
    let kv = get(&sm, "/roster/registry/web/1").expect("key");
    assert_eq!(kv.lease, lease);
    let json: serde_json::Value = serde_json::from_slice(&kv.value).expect("json");
    assert_eq!(json["service"], "web");
    assert_eq!(json["endpoints"][0]["port"], 8080);
    assert_eq!(json["metadata"]["zone"], "a");
    assert_eq!(applied.events.len(), 1);
}

#[test]
fn re_registering_is_an_upsert_that_keeps_the_lease_and_first_time() {
    let mut sm = machine();
    let (lease, ..) = registry_ok(
        &mut sm,
        register(spec("web", "1"), LeaseChoice::Own { ttl: 10 }, 1_000),
    );
    let mut changed = spec("web", "1");
    changed.weight = 5;
    let (again, granted, revoked) = registry_ok(
        &mut sm,
        register(changed, LeaseChoice::Own { ttl: 10 }, 2_000),
    );
    assert_eq!((again, granted, revoked), (lease, None, vec![]));
    let record = instance(&sm, "web", "1").expect("registered");
    assert_eq!((record.spec.weight, record.registered_at_ms), (5, 1_000));
    // A new TTL: a new lease, and the old one (now empty) goes.
    let (new_lease, granted, revoked) = registry_ok(
        &mut sm,
        register(spec("web", "1"), LeaseChoice::Own { ttl: 30 }, 3_000),
    );
    assert_ne!(new_lease, lease);
    assert_eq!((granted, revoked), (Some((new_lease, 30)), vec![lease]));
    assert_eq!(sm.lease(lease).expect("lease"), None);
}

#[test]
fn instances_share_a_lease_and_deregistering_one_keeps_the_others() {
    let mut sm = machine();
    run(&mut sm, &[grant(7, 60)]);
    registry_ok(
        &mut sm,
        register(spec("api", "a"), LeaseChoice::Shared { id: 7 }, 1),
    );
    registry_ok(
        &mut sm,
        register(spec("api", "b"), LeaseChoice::Shared { id: 7 }, 1),
    );
    let applied = apply(&mut sm, &deregister("api", "a"));
    assert_eq!(
        reasons(&applied.events),
        vec![(
            EventKind::Delete,
            b("/roster/registry/api/a"),
            Some(RemovalReason::Graceful)
        )]
    );
    assert!(instance(&sm, "api", "b").is_some());
    assert!(
        sm.lease(7).expect("lease").is_some(),
        "a shared lease is the caller's"
    );
    // The lease expiring takes the rest, reason expired.
    let applied = apply(&mut sm, &expire(&[7]));
    assert_eq!(
        reasons(&applied.events),
        vec![(
            EventKind::Delete,
            b("/roster/registry/api/b"),
            Some(RemovalReason::Expired)
        )]
    );
}

#[test]
fn the_last_instance_takes_its_own_lease_with_it() {
    let mut sm = machine();
    let (lease, ..) = registry_ok(
        &mut sm,
        register(spec("web", "1"), LeaseChoice::Own { ttl: 10 }, 1),
    );
    let (_, _, revoked) = registry_ok(&mut sm, deregister("web", "1"));
    assert_eq!(revoked, vec![lease]);
    assert_eq!(sm.lease(lease).expect("lease"), None);
    assert!(sm.instances(None).expect("instances").is_empty());
}

#[test]
fn after_expiry_a_registration_works_at_once_with_a_new_lease() {
    let mut sm = machine();
    let (lease, ..) = registry_ok(
        &mut sm,
        register(spec("web", "1"), LeaseChoice::Own { ttl: 10 }, 1),
    );
    apply(&mut sm, &expire(&[lease]));
    assert!(instance(&sm, "web", "1").is_none());
    let (fresh, granted, _) = registry_ok(
        &mut sm,
        register(spec("web", "1"), LeaseChoice::Own { ttl: 10 }, 2),
    );
    assert_ne!(fresh, lease);
    assert_eq!(granted, Some((fresh, 10)));
    assert_eq!(
        instance(&sm, "web", "1").map(|i| i.registered_at_ms),
        Some(2)
    );
}

#[test]
fn a_forced_removal_is_audited_and_needs_a_reason() {
    let mut sm = machine();
    registry_ok(&mut sm, register(spec("web", "1"), LeaseChoice::None, 1));
    let force = |reason: &str| Command::ForceDeregister {
        service: "web".into(),
        id: "1".into(),
        actor: "alice".into(),
        reason: reason.into(),
        now_ms: 99,
    };
    fails(&mut sm, force("  "), StateError::MissingReason);
    let applied = apply(&mut sm, &force("host decommissioned"));
    assert_eq!(
        reasons(&applied.events),
        vec![(
            EventKind::Delete,
            b("/roster/registry/web/1"),
            Some(RemovalReason::Forced)
        )]
    );
    let audit = sm.audit_log().expect("audit");
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (
            audit[0].actor.as_str(),
            audit[0].reason.as_str(),
            audit[0].revision,
            audit[0].at_ms
        ),
        ("alice", "host decommissioned", sm.revision(), 99)
    );
    // Forcing out what is not there is an error, and audits nothing.
    fails(&mut sm, force("again"), StateError::InstanceNotFound);
    assert_eq!(sm.audit_log().expect("audit").len(), 1);
}

#[test]
fn draining_then_the_deadline_removes_with_reason_drained() {
    let mut sm = machine();
    registry_ok(
        &mut sm,
        register(spec("web", "1"), LeaseChoice::Own { ttl: 60 }, 1),
    );
    registry_ok(
        &mut sm,
        register(spec("web", "2"), LeaseChoice::Own { ttl: 60 }, 1),
    );
    let drain = |id: &str| Command::Drain {
        service: "web".into(),
        id: id.into(),
        deadline_ms: Some(5_000),
    };
    registry_ok(&mut sm, drain("1"));
    registry_ok(&mut sm, drain("2"));
    assert_eq!(
        instance(&sm, "web", "1").map(|i| i.state),
        Some(InstanceState::Draining)
    );
    // Instance 2 registers again (up again) before its deadline.
    registry_ok(
        &mut sm,
        register(spec("web", "2"), LeaseChoice::Own { ttl: 60 }, 2),
    );
    // The index lists both deadlines once due; instance 2 is up again, so only
    // instance 1 goes.
    assert!(sm.due_drains(4_999, 10).expect("due").is_empty());
    let listed = sm.due_drains(5_000, 10).expect("due");
    assert_eq!(
        listed.len(),
        1,
        "re-registering dropped instance 2's entry: {listed:?}"
    );
    let early = apply(
        &mut sm,
        &Command::DrainExpire {
            due: listed.clone(),
            now_ms: 4_999,
        },
    );
    assert!(early.events.is_empty(), "not yet due");
    let due = apply(
        &mut sm,
        &Command::DrainExpire {
            due: listed,
            now_ms: 5_000,
        },
    );
    assert_eq!(
        reasons(&due.events),
        vec![(
            EventKind::Delete,
            b("/roster/registry/web/1"),
            Some(RemovalReason::Drained)
        )]
    );
    assert_eq!(
        instance(&sm, "web", "2").map(|i| i.state),
        Some(InstanceState::Up)
    );
}

#[test]
fn instances_without_a_lease_stay_until_removed() {
    let mut sm = machine();
    let (lease, granted, _) =
        registry_ok(&mut sm, register(spec("ext", "db"), LeaseChoice::None, 1));
    assert_eq!((lease, granted), (0, None));
    assert_eq!(
        get(&sm, "/roster/registry/ext/db").map(|kv| kv.lease),
        Some(0)
    );
    registry_ok(&mut sm, deregister("ext", "db"));
    assert!(sm.instances(None).expect("instances").is_empty());
}

#[test]
fn status_numbers_are_a_write_of_their_own() {
    let mut sm = machine();
    registry_ok(&mut sm, register(spec("web", "1"), LeaseChoice::None, 1));
    let set = |load: f64| Command::SetStatus {
        service: "web".into(),
        id: "1".into(),
        status: BTreeMap::from([("load".to_string(), load)]),
    };
    registry_ok(&mut sm, set(0.75));
    assert_eq!(
        instance(&sm, "web", "1").map(|i| i.status["load"]),
        Some(0.75)
    );
    fails(
        &mut sm,
        set(f64::NAN),
        StateError::InvalidStatus("load".into()),
    );
}

#[test]
fn bad_registrations_change_nothing() {
    let mut sm = machine();
    let with = |f: fn(&mut InstanceSpec)| {
        let mut s = spec("web", "1");
        f(&mut s);
        register(s, LeaseChoice::Own { ttl: 10 }, 1)
    };
    let invalid = |what: &str, name: &str| StateError::InvalidName {
        what: what.into(),
        name: name.into(),
    };
    fails(&mut sm, with(|s| s.service.clear()), invalid("service", ""));
    fails(
        &mut sm,
        with(|s| s.id = "a/b".into()),
        invalid("instance id", "a/b"),
    );
    fails(
        &mut sm,
        with(|s| s.id = "x".repeat(254)),
        invalid("instance id", &"x".repeat(64)),
    );
    fails(
        &mut sm,
        with(|s| s.endpoints[0].port = 0),
        StateError::InvalidEndpoint("10.0.0.1:0".into()),
    );
    fails(
        &mut sm,
        with(|s| s.endpoints[0].address.clear()),
        StateError::InvalidEndpoint(":8080".into()),
    );
    fails(
        &mut sm,
        with(|s| {
            s.metadata.insert("big".into(), "v".repeat(17 * 1024));
        }),
        StateError::MetadataTooLarge(17 * 1024 + 8),
    );
    fails(
        &mut sm,
        register(spec("web", "1"), LeaseChoice::Own { ttl: 0 }, 1),
        StateError::InvalidTtl(0),
    );
    fails(
        &mut sm,
        register(spec("web", "1"), LeaseChoice::Shared { id: 42 }, 1),
        StateError::LeaseNotFound,
    );
    fails(
        &mut sm,
        deregister("web", "1"),
        StateError::InstanceNotFound,
    );
}

#[test]
fn the_drain_index_forgets_instances_that_left_another_way() {
    let mut sm = machine();
    let (lease, ..) = registry_ok(
        &mut sm,
        register(spec("web", "1"), LeaseChoice::Own { ttl: 60 }, 1),
    );
    let drain = Command::Drain {
        service: "web".into(),
        id: "1".into(),
        deadline_ms: Some(100),
    };
    registry_ok(&mut sm, drain);
    // Removed by expiry first: the index entry goes with it, and a leader
    // that listed it before is answered with nothing to do.
    let stale = sm.due_drains(u64::MAX, 10).expect("due");
    assert_eq!(stale.len(), 1);
    apply(&mut sm, &expire(&[lease]));
    assert!(sm.due_drains(u64::MAX, 10).expect("due").is_empty());
    let cleaned = apply(
        &mut sm,
        &Command::DrainExpire {
            due: stale,
            now_ms: 200,
        },
    );
    assert!(cleaned.events.is_empty());
    assert!(sm.due_drains(u64::MAX, 10).expect("due").is_empty());
}

fn set_health(id: &str, health: Health, output: &str, now_ms: u64) -> Command {
    Command::SetHealth {
        service: "web".into(),
        id: id.into(),
        health,
        output: output.into(),
        now_ms,
    }
}

#[test]
fn health_changes_are_recorded_with_their_output_and_repeats_write_nothing() {
    let mut sm = machine();
    registry_ok(&mut sm, register(spec("web", "1"), LeaseChoice::None, 1));
    let changed = apply(
        &mut sm,
        &set_health("1", Health::Critical, "HTTP 503", 1_000),
    );
    assert_eq!(changed.events.len(), 1, "a change is one put");
    let record = instance(&sm, "web", "1").expect("registered");
    assert_eq!(
        (
            record.health,
            record.health_output.as_str(),
            record.critical_since_ms
        ),
        (Health::Critical, "HTTP 503", Some(1_000))
    );
    let repeat = apply(
        &mut sm,
        &set_health("1", Health::Critical, "HTTP 503", 2_000),
    );
    assert!(repeat.events.is_empty(), "no change, no write");
    assert_eq!(
        instance(&sm, "web", "1").and_then(|i| i.critical_since_ms),
        Some(1_000)
    );
    registry_ok(&mut sm, set_health("1", Health::Passing, "ok", 3_000));
    let record = instance(&sm, "web", "1").expect("registered");
    assert_eq!(
        (record.health, record.critical_since_ms),
        (Health::Passing, None)
    );
    // Long output is cut, on a character boundary.
    let long = "é".repeat(1_000);
    registry_ok(&mut sm, set_health("1", Health::Warning, &long, 4_000));
    let kept = instance(&sm, "web", "1").expect("registered").health_output;
    assert_eq!(kept.len(), 1_024);
    fails(
        &mut sm,
        set_health("zz", Health::Warning, "", 5_000),
        StateError::InstanceNotFound,
    );
}

#[test]
fn instances_critical_for_too_long_are_removed_with_reason_health() {
    let mut sm = machine();
    let (lease, ..) = registry_ok(
        &mut sm,
        register(spec("web", "1"), LeaseChoice::Own { ttl: 60 }, 1),
    );
    registry_ok(&mut sm, register(spec("web", "2"), LeaseChoice::None, 1));
    registry_ok(&mut sm, set_health("1", Health::Critical, "refused", 1_000));
    registry_ok(&mut sm, set_health("2", Health::Critical, "refused", 1_000));
    // Instance 2 recovered and failed again after the leader listed it.
    registry_ok(&mut sm, set_health("2", Health::Passing, "ok", 1_500));
    registry_ok(&mut sm, set_health("2", Health::Critical, "refused", 2_000));
    let listed = vec![
        ("web".to_string(), "1".to_string(), 1_000),
        ("web".to_string(), "2".to_string(), 1_000),
    ];
    let applied = apply(
        &mut sm,
        &Command::RemoveUnhealthy {
            instances: listed,
            now_ms: 0,
        },
    );
    assert_eq!(
        reasons(&applied.events),
        vec![(
            EventKind::Delete,
            b("/roster/registry/web/1"),
            Some(RemovalReason::Health)
        )]
    );
    let Response::Registry { revoked, .. } = applied.response else {
        panic!("{:?}", applied.response);
    };
    assert_eq!(revoked, vec![lease], "its own lease goes with it");
    assert!(
        instance(&sm, "web", "2").is_some(),
        "critical again since a later time"
    );
}

fn with_check(check: CheckSpec) -> InstanceSpec {
    InstanceSpec {
        check: Some(check),
        ..spec("web", "1")
    }
}

#[test]
fn checks_are_stored_with_the_spec_and_bad_ones_are_refused() {
    let mut sm = machine();
    let check = CheckSpec::new(CheckKind::Http, "http://10.0.0.1:8080/healthz");
    registry_ok(
        &mut sm,
        register(with_check(check.clone()), LeaseChoice::None, 1),
    );
    let record = instance(&sm, "web", "1").expect("registered");
    assert_eq!(record.spec.check, Some(check.clone()));
    let refused = |change: &dyn Fn(&mut CheckSpec)| {
        let mut bad = check.clone();
        change(&mut bad);
        bad
    };
    let cases: Vec<(CheckSpec, &str)> = vec![
        (refused(&|c| c.interval_ms = 0), "interval must be positive"),
        (refused(&|c| c.timeout_ms = 20_000), "at most the interval"),
        (refused(&|c| c.failures_before_critical = 0), "at least 1"),
        (
            refused(&|c| c.failures_before_warning = 4),
            "failures_before_warning",
        ),
        (refused(&|c| c.target = "https://x/".into()), "http://"),
        (refused(&|c| c.target = "http://:80/".into()), "http://"),
        (CheckSpec::new(CheckKind::Tcp, "10.0.0.1"), "HOST:PORT"),
        (CheckSpec::new(CheckKind::Tcp, "10.0.0.1:0"), "HOST:PORT"),
        (CheckSpec::new(CheckKind::Grpc, "h:1:2/svc"), "HOST:PORT"),
        (CheckSpec::new(CheckKind::Ttl, "h:1"), "no target"),
    ];
    for (bad, message) in cases {
        let mut spec = with_check(bad.clone());
        spec.id = "2".into();
        let applied = apply(&mut sm, &register(spec, LeaseChoice::None, 2));
        match applied.response {
            Response::Error {
                error: StateError::InvalidCheck(why),
                ..
            } => assert!(why.contains(message), "{bad:?}: {why}"),
            other => panic!("{bad:?} was not refused: {other:?}"),
        }
        assert!(
            instance(&sm, "web", "2").is_none(),
            "a refusal changes nothing"
        );
    }
    for good in [
        CheckSpec::new(CheckKind::Tcp, "[::1]:9"),
        CheckSpec::new(CheckKind::Grpc, "localhost:50051/my.Service"),
        CheckSpec::new(CheckKind::Http, "http://localhost/"),
        CheckSpec::new(CheckKind::Ttl, ""),
    ] {
        registry_ok(&mut sm, register(with_check(good), LeaseChoice::None, 3));
    }
}

#[test]
fn an_expired_lease_keeps_a_deregister_false_instance_critical_until_it_registers_again() {
    let mut sm = machine();
    let keep = InstanceSpec {
        deregister: false,
        ..spec("web", "1")
    };
    let (lease, ..) = registry_ok(
        &mut sm,
        register(keep.clone(), LeaseChoice::Own { ttl: 5 }, 1),
    );
    let (other, ..) = registry_ok(
        &mut sm,
        register(spec("web", "2"), LeaseChoice::Own { ttl: 5 }, 1),
    );
    let applied = apply(
        &mut sm,
        &Command::LeaseExpire {
            ids: vec![lease, other],
            now_ms: 7_000,
        },
    );
    assert_eq!(
        reasons(&applied.events),
        vec![
            (EventKind::Put, b("/roster/registry/web/1"), None),
            (
                EventKind::Delete,
                b("/roster/registry/web/2"),
                Some(RemovalReason::Expired)
            ),
        ],
        "one revision: the kept record changes, the other goes"
    );
    let record = instance(&sm, "web", "1").expect("kept");
    assert_eq!(
        (
            record.health,
            record.health_output.as_str(),
            record.critical_since_ms,
            record.keepalive_expired,
            record.lease,
        ),
        (Health::Critical, KEEPALIVE_EXPIRED, Some(7_000), true, 0)
    );
    assert_eq!(
        sm.lease(lease).expect("lease"),
        None,
        "the lease never comes back"
    );
    assert_eq!(
        get(&sm, "/roster/registry/web/1").map(|kv| kv.lease),
        Some(0)
    );
    // Registering again: a new lease, passing.
    let (renewed, granted, _) =
        registry_ok(&mut sm, register(keep, LeaseChoice::Own { ttl: 5 }, 9_000));
    assert_ne!(renewed, lease);
    assert_eq!(granted, Some((renewed, 5)));
    let record = instance(&sm, "web", "1").expect("registered");
    assert_eq!(
        (
            record.health,
            record.critical_since_ms,
            record.keepalive_expired
        ),
        (Health::Passing, None, false)
    );
    // A graceful revoke is not an expiry: the instance goes.
    let gone = apply(&mut sm, &revoke(renewed));
    assert_eq!(
        reasons(&gone.events),
        vec![(
            EventKind::Delete,
            b("/roster/registry/web/1"),
            Some(RemovalReason::Graceful)
        )]
    );
}

#[test]
fn a_health_change_survives_a_re_registration_that_does_not_follow_an_expiry() {
    let mut sm = machine();
    registry_ok(&mut sm, register(spec("web", "1"), LeaseChoice::None, 1));
    registry_ok(&mut sm, set_health("1", Health::Critical, "503", 2));
    registry_ok(&mut sm, register(spec("web", "1"), LeaseChoice::None, 3));
    let record = instance(&sm, "web", "1").expect("registered");
    assert_eq!(
        (record.health, record.critical_since_ms),
        (Health::Critical, Some(2))
    );
}

#[test]
fn registry_commands_survive_the_log_encoding() {
    let mut spec = with_check(CheckSpec::new(CheckKind::Ttl, ""));
    spec.deregister = false;
    spec.endpoints[0].protocol.clear();
    let commands = vec![
        register(spec, LeaseChoice::Own { ttl: 5 }, 1),
        set_health("1", Health::Warning, "x", 2),
        Command::LeaseExpire {
            ids: vec![1],
            now_ms: 3,
        },
    ];
    for command in commands {
        let bytes = bincode::serialize(&command).expect("encode");
        let back: Command = bincode::deserialize(&bytes).expect("decode");
        assert_eq!(back, command);
    }
}
