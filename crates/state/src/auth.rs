//! Authentication records and role-based access, decided inside apply.
//!
//! Users, roles and the auth switch are replicated state (`xu/`, `xr/`,
//! `s/auth`), changed only by [`AuthOp`] commands, so every member agrees on
//! who may do what at every log position. A client's write reaches the log as
//! `Command::As { caller, command }` when the client presented a token, or bare
//! when it did not. Apply checks it against the state *at that position*
//! ([`authorize`]): a permission revoked, or auth turned on, between the API's
//! own check and the commit still stops the write, on every member alike, so
//! there is no window like the one etcd closes with its auth-revision retry.
//!
//! The rules follow etcd 3.4 (`auth/store.go`, `etcdserver/apply_auth.go`):
//! - a user holding role `root` may do anything;
//! - auth administration (every [`AuthOp`]) and handler configuration need root;
//! - a key range must lie inside the union of the caller's permissions of the
//!   right kind, over all its roles (a point permission covers one key);
//! - a put with a lease, and a lease revoke, also need write on every key
//!   already attached to that lease; `prev_kv` also needs read;
//! - a txn needs read on each compare and the rights of every operation of
//!   *both* branches, so whether it may run does not depend on the data.
//!
//! Lease grants and keepalives, compaction and the leader's own decisions
//! (expiry, health, drains, handler delivery) are never checked, as in etcd.
//!
//! Passwords arrive hashed ([`PasswordHash`], computed by the member that took
//! the request): apply stays deterministic and no plaintext reaches the log.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::command::{Command, Response};
use crate::engine::{Engine, EngineError};
use crate::error::{Fail, StateError};
use crate::keyspace::Put;
use crate::layout;
use crate::registry::{self, LeaseChoice};
use crate::tx::{Tx, View};
use crate::txn::{Txn, TxnOp};

/// The role that may do anything.
pub const ROOT: &str = "root";

/// Keys under this prefix are never stored: they name rights that are not on
/// a key (`force-deregister/<service>/<id>`), so that etcd's key permissions
/// can grant them.
pub const PERMISSION_PREFIX: &[u8] = b"/roster/perm/";

/// The virtual key whose write permission allows force-deregistering
/// instance `id` of `service`.
pub fn force_deregister_key(service: &str, id: &str) -> Vec<u8> {
    let mut key = PERMISSION_PREFIX.to_vec();
    key.extend_from_slice(b"force-deregister/");
    key.extend_from_slice(service.as_bytes());
    key.push(b'/');
    key.extend_from_slice(id.as_bytes());
    key
}

/// The virtual key whose read permission allows listing the audit log.
pub fn audit_key() -> Vec<u8> {
    let mut key = PERMISSION_PREFIX.to_vec();
    key.extend_from_slice(b"audit");
    key
}

/// A salted PBKDF2-HMAC-SHA256 hash of a password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordHash {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub hash: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    /// `None`: the user cannot authenticate with a password.
    pub password: Option<PasswordHash>,
    pub roles: BTreeSet<String>,
    /// The auth revision at which the credentials last changed: a token names
    /// it, so a password change or a delete-and-add again voids old tokens.
    pub generation: u64,
}

impl User {
    pub fn is_root(&self) -> bool {
        self.roles.contains(ROOT)
    }
}

/// etcd's permission types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PermKind {
    Read,
    Write,
    ReadWrite,
}

/// What a request does to a range of keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl PermKind {
    fn allows(self, access: Access) -> bool {
        matches!(
            (self, access),
            (PermKind::ReadWrite, _)
                | (PermKind::Read, Access::Read)
                | (PermKind::Write, Access::Write)
        )
    }
}

/// A permission on `[key, range_end)` with etcd's range rules (empty
/// `range_end`: `key` alone; `[0]`: every key from `key` on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    pub kind: PermKind,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub name: String,
    /// Sorted by key, at most one per `(key, range_end)`.
    pub perms: Vec<Permission>,
}

/// The auth switch, stored at `s/auth`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthStatus {
    pub enabled: bool,
    /// Bumped by every change of users or roles (etcd's auth revision).
    pub revision: u64,
    /// The key tokens are signed with while auth is enabled (empty when off).
    pub token_key: Vec<u8>,
}

/// Who sent a command: a user as of the credentials' generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub user: String,
    pub generation: u64,
}

/// A change of the auth records (etcd's Auth API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthOp {
    /// Turn auth on (a no-op when on). Needs user `root` with role `root`.
    /// `token_key`: random bytes from the proposer, kept while auth stays on.
    Enable {
        token_key: Vec<u8>,
    },
    /// Turn auth off; users and roles stay.
    Disable,
    UserAdd {
        name: String,
        password: Option<PasswordHash>,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password: PasswordHash,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        user: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    RoleGrantPermission {
        role: String,
        perm: Permission,
    },
    RoleRevokePermission {
        role: String,
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
}

// ---- reading the records ------------------------------------------------------

/// The record stored under `key`, decoded, if there is one.
fn record<V: View + ?Sized, T: serde::de::DeserializeOwned>(
    view: &V,
    key: &[u8],
) -> Result<Option<T>, EngineError> {
    view.read(key)?.map(|v| layout::decode(&v)).transpose()
}

pub(crate) fn status<V: View + ?Sized>(view: &V) -> Result<AuthStatus, EngineError> {
    Ok(record(view, layout::AUTH)?.unwrap_or_default())
}

pub(crate) fn user<V: View + ?Sized>(view: &V, name: &str) -> Result<Option<User>, EngineError> {
    record(view, &layout::user_key(name))
}

pub(crate) fn role<V: View + ?Sized>(view: &V, name: &str) -> Result<Option<Role>, EngineError> {
    record(view, &layout::role_key(name))
}

/// Every record under `prefix`, decoded, in name order.
pub(crate) fn all<V: View + ?Sized, T: serde::de::DeserializeOwned>(
    view: &V,
    prefix: &[u8],
) -> Result<Vec<T>, EngineError> {
    let end = layout::prefix_end(prefix);
    view.read_range(prefix, end.as_deref())
        .map(|item| layout::decode(&item?.1))
        .collect()
}

// ---- applying changes --------------------------------------------------------

/// Applies one [`AuthOp`] with etcd's checks and errors.
pub(crate) fn apply<E: Engine>(tx: &mut Tx<'_, E>, op: &AuthOp) -> Result<Response, Fail> {
    let mut st = status(tx)?;
    match op {
        // A no-op when on: the key, and every token signed with it, stay.
        AuthOp::Enable { .. } if st.enabled => {}
        AuthOp::Enable { token_key } => {
            let root = user(tx, ROOT)?.ok_or(StateError::RootUserMissing)?;
            if !root.is_root() {
                return Err(StateError::RootRoleMissing.into());
            }
            st.enabled = true;
            st.token_key = token_key.clone();
        }
        AuthOp::Disable => {
            st.enabled = false;
            st.token_key.clear();
        }
        _ => {
            st.revision += 1;
            change_records(tx, op, &st)?;
        }
    }
    tx.put(layout::AUTH.to_vec(), layout::encode(&st)?);
    Ok(Response::Done {
        revision: tx.revision(),
    })
}

/// The user and role changes of `op`, at auth revision `st.revision`.
fn change_records<E: Engine>(tx: &mut Tx<'_, E>, op: &AuthOp, st: &AuthStatus) -> Result<(), Fail> {
    match op {
        // The switch itself: `apply`.
        AuthOp::Enable { .. } | AuthOp::Disable => {}
        AuthOp::UserAdd { name, password } => {
            if name.is_empty() {
                return Err(StateError::UserEmpty.into());
            }
            if user(tx, name)?.is_some() {
                return Err(StateError::UserExists.into());
            }
            let new = User {
                name: name.clone(),
                password: password.clone(),
                roles: BTreeSet::new(),
                generation: st.revision,
            };
            save_user(tx, &new)?;
        }
        AuthOp::UserDelete { name } => {
            if st.enabled && name == ROOT {
                return Err(StateError::InvalidAuthMgmt.into());
            }
            existing_user(tx, name)?;
            tx.delete(layout::user_key(name));
        }
        AuthOp::UserChangePassword { name, password } => {
            let mut u = existing_user(tx, name)?;
            u.password = Some(password.clone());
            u.generation = st.revision;
            save_user(tx, &u)?;
        }
        AuthOp::UserGrantRole {
            user: name,
            role: r,
        } => {
            let mut u = existing_user(tx, name)?;
            if r != ROOT && role(tx, r)?.is_none() {
                return Err(StateError::RoleNotFound.into());
            }
            u.roles.insert(r.clone());
            save_user(tx, &u)?;
        }
        AuthOp::UserRevokeRole {
            user: name,
            role: r,
        } => {
            if st.enabled && name == ROOT && r == ROOT {
                return Err(StateError::InvalidAuthMgmt.into());
            }
            let mut u = existing_user(tx, name)?;
            if !u.roles.remove(r) {
                return Err(StateError::RoleNotGranted.into());
            }
            save_user(tx, &u)?;
        }
        AuthOp::RoleAdd { name } => {
            if name.is_empty() {
                return Err(StateError::RoleEmpty.into());
            }
            if role(tx, name)?.is_some() {
                return Err(StateError::RoleExists.into());
            }
            let new = Role {
                name: name.clone(),
                perms: Vec::new(),
            };
            tx.put(layout::role_key(name), layout::encode(&new)?);
        }
        AuthOp::RoleDelete { name } => role_delete(tx, name, st)?,
        AuthOp::RoleGrantPermission { role: r, perm } => {
            let mut found = existing_role(tx, r)?;
            found
                .perms
                .retain(|p| (&p.key, &p.range_end) != (&perm.key, &perm.range_end));
            found.perms.push(perm.clone());
            found
                .perms
                .sort_by(|a, b| (&a.key, &a.range_end).cmp(&(&b.key, &b.range_end)));
            tx.put(layout::role_key(r), layout::encode(&found)?);
        }
        AuthOp::RoleRevokePermission {
            role: r,
            key,
            range_end,
        } => {
            let mut found = existing_role(tx, r)?;
            let before = found.perms.len();
            found
                .perms
                .retain(|p| (&p.key, &p.range_end) != (key, range_end));
            if found.perms.len() == before {
                return Err(StateError::PermissionNotGranted.into());
            }
            tx.put(layout::role_key(r), layout::encode(&found)?);
        }
    }
    Ok(())
}

/// Deletes a role and takes it from every user holding it (etcd 3.4).
fn role_delete<E: Engine>(tx: &mut Tx<'_, E>, name: &str, st: &AuthStatus) -> Result<(), Fail> {
    if st.enabled && name == ROOT {
        return Err(StateError::InvalidAuthMgmt.into());
    }
    existing_role(tx, name)?;
    tx.delete(layout::role_key(name));
    let users: Vec<User> = all(tx, layout::USER)?;
    for mut u in users {
        if u.roles.remove(name) {
            save_user(tx, &u)?;
        }
    }
    Ok(())
}

fn existing_user<V: View + ?Sized>(view: &V, name: &str) -> Result<User, Fail> {
    Ok(user(view, name)?.ok_or(StateError::UserNotFound)?)
}

fn existing_role<V: View + ?Sized>(view: &V, name: &str) -> Result<Role, Fail> {
    Ok(role(view, name)?.ok_or(StateError::RoleNotFound)?)
}

fn save_user<E: Engine>(tx: &mut Tx<'_, E>, u: &User) -> Result<(), Fail> {
    tx.put(layout::user_key(&u.name), layout::encode(u)?);
    Ok(())
}

// ---- deciding access ----------------------------------------------------------

/// What a command needs of its caller while auth is on.
#[derive(Debug)]
pub(crate) enum Needs {
    /// Nothing is checked (no caller needed).
    Nothing,
    /// Only root may do it.
    Root,
    /// These accesses to key ranges.
    Keys(KeyNeeds),
}

/// `(access, key, range_end)` with etcd's range rules.
#[derive(Debug, Default)]
pub(crate) struct KeyNeeds(Vec<(Access, Vec<u8>, Vec<u8>)>);

impl KeyNeeds {
    fn key(&mut self, access: Access, key: &[u8], range_end: &[u8]) {
        self.0.push((access, key.to_vec(), range_end.to_vec()));
    }

    /// A put: write on its key, read too for `prev_kv`, and the lease rule.
    fn put<V: View + ?Sized>(&mut self, view: &V, put: &Put) -> Result<(), EngineError> {
        self.key(Access::Write, &put.key, &[]);
        if put.prev_kv {
            self.key(Access::Read, &put.key, &[]);
        }
        if put.lease != 0 {
            self.lease_keys(view, put.lease)?;
        }
        Ok(())
    }

    /// A delete: write on its range, read too for `prev_kv`.
    fn delete(&mut self, key: &[u8], range_end: &[u8], prev_kv: bool) {
        self.key(Access::Write, key, range_end);
        if prev_kv {
            self.key(Access::Read, key, range_end);
        }
    }

    /// Write on every key attached to lease `id` (etcd's rule for puts with
    /// a lease and for revokes: whoever changes a lease changes its keys).
    fn lease_keys<V: View + ?Sized>(&mut self, view: &V, id: i64) -> Result<(), EngineError> {
        let prefix = layout::attach_prefix(id);
        let end = layout::prefix_end(&prefix);
        for item in view.read_range(&prefix, end.as_deref()) {
            let key = item?.0[prefix.len()..].to_vec();
            self.0.push((Access::Write, key, Vec::new()));
        }
        Ok(())
    }

    /// A txn: read on each compare, and the rights of every operation of
    /// both branches.
    fn txn<V: View + ?Sized>(&mut self, view: &V, txn: &Txn) -> Result<(), EngineError> {
        for c in &txn.compare {
            self.key(Access::Read, &c.key, &c.range_end);
        }
        for op in txn.success.iter().chain(&txn.failure) {
            match op {
                TxnOp::Range(r) => self.key(Access::Read, &r.key, &r.range_end),
                TxnOp::Put(put) => self.put(view, put)?,
                TxnOp::DeleteRange {
                    key,
                    range_end,
                    prev_kv,
                } => self.delete(key, range_end, *prev_kv),
                TxnOp::Txn(inner) => self.txn(view, inner)?,
            }
        }
        Ok(())
    }
}

/// The rights `cmd` needs (see the module docs).
pub(crate) fn needs<V: View + ?Sized>(view: &V, cmd: &Command) -> Result<Needs, EngineError> {
    let mut keys = KeyNeeds::default();
    match cmd {
        Command::Put(put) => keys.put(view, put)?,
        Command::DeleteRange {
            key,
            range_end,
            prev_kv,
        } => keys.delete(key, range_end, *prev_kv),
        Command::Txn(txn) => keys.txn(view, txn)?,
        Command::LeaseRevoke { id, .. } => keys.lease_keys(view, *id)?,
        Command::Auth(_)
        | Command::SetHandler(_)
        | Command::DeleteHandler { .. }
        | Command::UseHandler { .. } => return Ok(Needs::Root),
        Command::Register { spec, lease, .. } => {
            let key = registry::instance_key(&spec.service, &spec.id);
            keys.key(Access::Write, &key, &[]);
            if let LeaseChoice::Shared { id } = lease {
                keys.lease_keys(view, *id)?;
            }
        }
        Command::Deregister { service, id, .. }
        | Command::Drain { service, id, .. }
        | Command::SetStatus { service, id, .. } => {
            keys.key(Access::Write, &registry::instance_key(service, id), &[]);
        }
        Command::ForceDeregister { service, id, .. } => {
            keys.key(Access::Write, &force_deregister_key(service, id), &[]);
        }
        _ => return Ok(Needs::Nothing),
    }
    Ok(Needs::Keys(keys))
}

/// The caller's user record if its credentials are still current: a user
/// deleted, or whose password changed, since the token was made is refused as
/// an invalid token (clients then authenticate again). No caller: `NoToken`.
pub(crate) fn current_user<V: View + ?Sized>(
    view: &V,
    caller: Option<&Caller>,
) -> Result<User, Fail> {
    let caller = caller.ok_or(StateError::NoToken)?;
    match user(view, &caller.user)? {
        Some(u) if u.generation == caller.generation => Ok(u),
        _ => Err(StateError::InvalidToken.into()),
    }
}

/// Whether `caller` may run `cmd` against `view` (always, while auth is off).
/// The switch is read first: with auth off nothing else is.
pub(crate) fn authorize<V: View + ?Sized>(
    view: &V,
    caller: Option<&Caller>,
    cmd: &Command,
) -> Result<(), Fail> {
    if !status(view)?.enabled {
        return Ok(());
    }
    check_on(view, caller, needs(view, cmd)?)
}

/// Whether `caller` has `needs`, with auth known to be on.
fn check_on<V: View + ?Sized>(view: &V, caller: Option<&Caller>, needs: Needs) -> Result<(), Fail> {
    if matches!(needs, Needs::Nothing) {
        return Ok(());
    }
    let user = current_user(view, caller)?;
    if user.is_root() {
        return Ok(());
    }
    let Needs::Keys(keys) = needs else {
        return Err(StateError::PermissionDenied.into());
    };
    let grants = Grants::of(view, &user)?;
    for (access, key, range_end) in &keys.0 {
        if !grants.covers(*access, key, range_end) {
            return Err(StateError::PermissionDenied.into());
        }
    }
    Ok(())
}

/// Whether `caller` has `needs` (always, while auth is off).
fn check<V: View + ?Sized>(view: &V, caller: Option<&Caller>, needs: Needs) -> Result<(), Fail> {
    if !status(view)?.enabled {
        return Ok(());
    }
    check_on(view, caller, needs)
}

/// Whether `caller` may do `access` on `[key, range_end)` (reads served
/// without a command).
pub(crate) fn authorize_keys<V: View + ?Sized>(
    view: &V,
    caller: Option<&Caller>,
    access: Access,
    key: &[u8],
    range_end: &[u8],
) -> Result<(), Fail> {
    let mut keys = KeyNeeds::default();
    keys.key(access, key, range_end);
    check(view, caller, Needs::Keys(keys))
}

/// Whether `caller` may run `txn` (a read-only txn served without a command).
pub(crate) fn authorize_txn<V: View + ?Sized>(
    view: &V,
    caller: Option<&Caller>,
    txn: &Txn,
) -> Result<(), Fail> {
    let mut keys = KeyNeeds::default();
    keys.txn(view, txn)?;
    check(view, caller, Needs::Keys(keys))
}

/// Whether `caller` is root (always true while auth is off).
pub(crate) fn authorize_admin<V: View + ?Sized>(
    view: &V,
    caller: Option<&Caller>,
) -> Result<(), Fail> {
    check(view, caller, Needs::Root)
}

/// Whether `caller` is root or `allowed` holds of its record (always true
/// while auth is off): a user may read its own record and its roles'.
pub(crate) fn authorize_admin_or<V: View + ?Sized>(
    view: &V,
    caller: Option<&Caller>,
    allowed: impl Fn(&User) -> bool,
) -> Result<(), Fail> {
    if !status(view)?.enabled {
        return Ok(());
    }
    let user = current_user(view, caller)?;
    if user.is_root() || allowed(&user) {
        Ok(())
    } else {
        Err(StateError::PermissionDenied.into())
    }
}

/// A user's permissions over all its roles, as half-open intervals per kind
/// of access (`None` as an end: no upper bound).
pub struct Grants {
    read: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    write: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// etcd's `[key, range_end)` as a half-open interval: a single key `k` is
/// `[k, k\0)`, the smallest key above it.
fn interval(key: &[u8], range_end: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    match range_end {
        [] => {
            let mut end = key.to_vec();
            end.push(0);
            (key.to_vec(), Some(end))
        }
        [0] => (key.to_vec(), None),
        end => (key.to_vec(), Some(end.to_vec())),
    }
}

impl Grants {
    pub(crate) fn of<V: View + ?Sized>(view: &V, user: &User) -> Result<Grants, EngineError> {
        let mut grants = Grants {
            read: Vec::new(),
            write: Vec::new(),
        };
        for name in &user.roles {
            let Some(r) = role(view, name)? else { continue };
            for p in r.perms {
                let iv = interval(&p.key, &p.range_end);
                if p.kind.allows(Access::Read) {
                    grants.read.push(iv.clone());
                }
                if p.kind.allows(Access::Write) {
                    grants.write.push(iv);
                }
            }
        }
        grants.read.sort();
        grants.write.sort();
        Ok(grants)
    }

    /// Whether the union of the grants of `access` holds all of
    /// `[key, range_end)`.
    pub fn covers(&self, access: Access, key: &[u8], range_end: &[u8]) -> bool {
        let grants = match access {
            Access::Read => &self.read,
            Access::Write => &self.write,
        };
        let (start, end) = interval(key, range_end);
        if end.as_ref().is_some_and(|e| *e <= start) {
            return true; // an empty range reads or writes nothing
        }
        // Sweep: `reach` is how far from `start` the grants seen so far cover
        // without a gap (intervals come sorted by start).
        let mut reach = start;
        for (s, e) in grants {
            if *s > reach {
                break;
            }
            match e {
                None => return true,
                Some(e) if *e > reach => reach = e.clone(),
                Some(_) => {}
            }
            if end.as_ref().is_some_and(|end| reach >= *end) {
                return true;
            }
        }
        false
    }
}
