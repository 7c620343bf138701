//! Scenarios of authentication and access: etcd's admin rules, key-range
//! grants over several roles, who a command is from at its log position, and
//! a refused command changing nothing.

use super::*;
use crate::auth::{Access, AuthOp, Caller, Grants, PermKind, Permission, User};

fn op(op: AuthOp) -> Command {
    Command::Auth(op)
}

fn pw() -> Option<crate::auth::PasswordHash> {
    Some(crate::auth::PasswordHash {
        iterations: 1,
        salt: vec![1; 16],
        hash: vec![2; 32],
    })
}

fn user_add(name: &str) -> Command {
    op(AuthOp::UserAdd {
        name: name.into(),
        password: pw(),
    })
}

fn role_add(name: &str) -> Command {
    op(AuthOp::RoleAdd { name: name.into() })
}

fn grant_role(user: &str, role: &str) -> Command {
    op(AuthOp::UserGrantRole {
        user: user.into(),
        role: role.into(),
    })
}

fn perm(kind: PermKind, key: &str, range_end: &[u8]) -> Permission {
    Permission {
        kind,
        key: b(key),
        range_end: range_end.to_vec(),
    }
}

fn grant_perm(role: &str, p: Permission) -> Command {
    op(AuthOp::RoleGrantPermission {
        role: role.into(),
        perm: p,
    })
}

fn enable() -> Command {
    op(AuthOp::Enable {
        token_key: vec![7; 32],
    })
}

/// `cmd` as sent by `user` with its current credentials.
fn as_user(sm: &Machine, user: &str, cmd: Command) -> Command {
    let generation = sm.user(user).expect("read").expect("user").generation;
    cmd.sent_by(Some(Caller {
        user: user.into(),
        generation,
    }))
}

/// root (role root) and alice (role app: readwrite `app/`, read `ro`), auth on.
fn secured() -> Machine {
    let mut sm = machine();
    let ok = Response::Done { revision: 1 };
    steps(
        &mut sm,
        vec![
            (user_add("root"), ok.clone()),
            (grant_role("root", "root"), ok.clone()),
            (user_add("alice"), ok.clone()),
            (role_add("app"), ok.clone()),
            (
                grant_perm("app", perm(PermKind::ReadWrite, "app/", b"app0")),
                ok.clone(),
            ),
            (
                grant_perm("app", perm(PermKind::Read, "ro", b"")),
                ok.clone(),
            ),
            (grant_role("alice", "app"), ok.clone()),
            (enable(), ok),
        ],
    );
    sm
}

#[test]
fn enable_needs_root_holding_role_root() {
    let mut sm = machine();
    fails(&mut sm, enable(), StateError::RootUserMissing);
    apply(&mut sm, &user_add("root"));
    fails(&mut sm, enable(), StateError::RootRoleMissing);
    apply(&mut sm, &grant_role("root", "root"));
    steps(&mut sm, vec![(enable(), done(1))]);
    assert!(sm.auth_status().expect("status").enabled);
}

#[test]
fn admin_changes_follow_etcds_rules() {
    let mut sm = secured();
    let root = |sm: &Machine, cmd| as_user(sm, "root", cmd);
    let cmd = root(&sm, user_add("alice"));
    fails(&mut sm, cmd, StateError::UserExists);
    let cmd = root(&sm, user_add(""));
    fails(&mut sm, cmd, StateError::UserEmpty);
    let cmd = root(
        &sm,
        op(AuthOp::UserDelete {
            name: "root".into(),
        }),
    );
    fails(&mut sm, cmd, StateError::InvalidAuthMgmt);
    let cmd = root(
        &sm,
        op(AuthOp::RoleDelete {
            name: "root".into(),
        }),
    );
    fails(&mut sm, cmd, StateError::InvalidAuthMgmt);
    let cmd = root(&sm, grant_role("alice", "ghost"));
    fails(&mut sm, cmd, StateError::RoleNotFound);
    let cmd = root(
        &sm,
        op(AuthOp::RoleRevokePermission {
            role: "app".into(),
            key: b("nope"),
            range_end: Vec::new(),
        }),
    );
    fails(&mut sm, cmd, StateError::PermissionNotGranted);
    // Not root: refused whatever the change.
    let cmd = as_user(&sm, "alice", role_add("mine"));
    fails(&mut sm, cmd, StateError::PermissionDenied);
    // A deleted role leaves its holders.
    let cmd = root(&sm, op(AuthOp::RoleDelete { name: "app".into() }));
    apply(&mut sm, &cmd);
    assert!(sm
        .user("alice")
        .expect("read")
        .expect("alice")
        .roles
        .is_empty());
}

#[test]
fn keys_are_checked_against_the_union_of_grants_at_apply() {
    let mut sm = secured();
    let alice = |sm: &Machine, cmd| as_user(sm, "alice", cmd);
    let cmd = alice(&sm, put("app/a", "1"));
    steps(&mut sm, vec![(cmd, put_ok(2, None))]);
    for denied in [
        put("ro", "1"),
        put("other", "1"),
        del("app/", &[0], false),
        del("app/", b"b", false),
    ] {
        let cmd = alice(&sm, denied);
        fails(&mut sm, cmd, StateError::PermissionDenied);
    }
    // No token while auth is on.
    fails(&mut sm, put("app/a", "2"), StateError::NoToken);
    // The lessor's own decisions are never checked.
    apply(&mut sm, &expire(&[1]));
}

#[test]
fn stale_credentials_are_an_invalid_token() {
    let mut sm = secured();
    let old = as_user(&sm, "alice", put("app/a", "1"));
    let root_change = as_user(
        &sm,
        "root",
        op(AuthOp::UserChangePassword {
            name: "alice".into(),
            password: pw().expect("hash"),
        }),
    );
    apply(&mut sm, &root_change);
    fails(&mut sm, old, StateError::InvalidToken);
    let fresh = as_user(&sm, "alice", put("app/a", "1"));
    steps(&mut sm, vec![(fresh, put_ok(2, None))]);
}

#[test]
fn a_grant_earlier_in_a_batch_counts_for_the_commands_after_it() {
    let mut sm = secured();
    let root_grant = as_user(
        &sm,
        "root",
        grant_perm("app", perm(PermKind::Write, "other", b"")),
    );
    let write = as_user(&sm, "alice", put("other", "1"));
    let applied = apply(
        &mut sm,
        &Command::Batch(vec![write.clone(), root_grant, write]),
    );
    let Response::Batch(answers) = applied.response else {
        panic!("not a batch answer")
    };
    assert_eq!(
        answers[0],
        Response::Error {
            revision: 1,
            error: StateError::PermissionDenied
        }
    );
    assert_eq!(answers[2], put_ok(2, None));
}

#[test]
fn auth_off_checks_nothing_and_wrapping_cannot_nest() {
    let mut sm = machine();
    let caller = Some(Caller {
        user: "nobody".into(),
        generation: 9,
    });
    steps(
        &mut sm,
        vec![(put("k", "v").sent_by(caller.clone()), put_ok(2, None))],
    );
    let nested = put("k", "w").sent_by(caller.clone()).sent_by(caller);
    fails(&mut sm, nested, StateError::NestedBatch);
}

#[test]
fn grants_cover_a_range_only_without_gaps() {
    let user = User {
        name: "u".into(),
        password: None,
        roles: ["a".to_string(), "b".to_string()].into(),
        generation: 0,
    };
    let mut sm = machine();
    for (role, p) in [
        ("a", perm(PermKind::Read, "a", b"c")),
        ("b", perm(PermKind::ReadWrite, "c", b"e")),
        ("b", perm(PermKind::Write, "x", b"")),
        ("a", perm(PermKind::Read, "z", &[0])),
    ] {
        apply(&mut sm, &role_add(role));
        apply(&mut sm, &grant_perm(role, p));
    }
    let grants = Grants::of(sm.engine(), &user).expect("grants");
    let read = |k: &str, e: &[u8]| grants.covers(Access::Read, k.as_bytes(), e);
    let write = |k: &str, e: &[u8]| grants.covers(Access::Write, k.as_bytes(), e);
    assert!(read("a", b"e"), "two adjacent grants from two roles");
    assert!(read("b", b""));
    assert!(!read("a", b"f"), "past the end");
    assert!(!read("0", b"b"), "before the start");
    assert!(read("zz", &[0]) && read("z", &[0]), "from-key");
    assert!(!read("y", &[0]));
    assert!(write("x", b"") && !write("x", b"y") && !write("xa", b""));
    assert!(!write("a", b""), "read only");
    assert!(read("d", b"d"), "an empty range needs nothing");
}
