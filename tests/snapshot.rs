//! Backup and restore, black-box: `etcdctl snapshot save` and `roster snapshot
//! save|status|restore` against real clusters, a restored cluster's keys,
//! revisions, history and leases, and the files a restore refuses.
//!
//! Tests that do not say "Roster only" run against etcd too
//! (`ROSTER_TEST_BINARY=/usr/bin/etcd`): there the backup is saved and restored
//! with etcdctl.

mod harness;

use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::{
    is_etcd, json_i64, json_u64, kvs, lease_hex, parse_lease_grant, roster, wait_for, Cluster,
    ClusterOptions,
};
use sha2::{Digest, Sha256};

/// A put through etcdctl on node `i`; the store revision after it.
fn put(c: &Cluster, i: usize, key: &str, value: &str) -> i64 {
    c.ctl(i, &["put", key, value]).expect_ok();
    revision(c, i)
}

/// The store revision node `i` reports (a linearizable read).
fn revision(c: &Cluster, i: usize) -> i64 {
    let j = c.ctl_json(i, &["get", "no-such-key"]);
    json_i64(&j["header"], "revision")
}

/// The remaining TTL of lease `id`, seen through node `i`.
fn ttl_left(c: &Cluster, i: usize, id: i64) -> i64 {
    let j = c.ctl_json(i, &["lease", "timetolive", &lease_hex(id)]);
    json_i64(&j, "ttl")
}

/// Saves a backup from node `i` into `file`: `roster snapshot save`, or
/// etcdctl against etcd.
fn save(c: &Cluster, i: usize, file: &Path) {
    let path = file.display().to_string();
    if is_etcd() {
        c.ctl(i, &["snapshot", "save", &path]).expect_ok();
    } else {
        let (ok, out, err) = c.roster(i, &["snapshot", "save", &path]);
        assert!(ok, "roster snapshot save: {out}{err}");
        assert!(out.contains(&format!("Snapshot saved at {path}")), "{out}");
    }
}

#[test]
fn etcdctl_snapshot_save_writes_a_file_that_ends_with_its_sha256() {
    let c = Cluster::start(3);
    for n in 0..20 {
        put(&c, n % 3, &format!("key{n}"), "value");
    }
    let rev = revision(&c, 0);
    let follower = c.followers()[0];
    let file = c.dir().join("backup.db");
    let path = file.display().to_string();
    let out = c.ctl(follower, &["snapshot", "save", &path]).expect_ok();
    assert!(
        out.stdout.contains(&format!("Snapshot saved at {path}")),
        "{}",
        out.stdout
    );
    let bytes = std::fs::read(&file).expect("read the saved file");
    // What etcd's restore checks before it trusts a file: the hash of all
    // before the last 32 bytes is the last 32 bytes, 32 past a 512 multiple.
    assert_eq!(bytes.len() % 512, 32, "{} bytes", bytes.len());
    let (body, hash) = bytes.split_at(bytes.len() - 32);
    assert_eq!(Sha256::digest(body).as_slice(), hash);
    if is_etcd() {
        return;
    }
    let (ok, out, err) = roster(&["snapshot", "status", &path, "-o", "json"]);
    assert!(ok, "{out}{err}");
    let status: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(json_i64(&status, "revision"), rev, "{status}");
    assert_eq!(json_u64(&status, "total_keys"), 20, "{status}");
    assert_eq!(json_u64(&status, "total_size"), bytes.len() as u64);
}

#[test]
fn a_restored_cluster_has_the_keys_revisions_history_and_leases_of_the_backup() {
    // Roster checkpoints every second, so the lease below has a checkpoint of
    // its remaining TTL when it is saved; the restored cluster must not use it.
    let mut opts = ClusterOptions::new(3);
    if !is_etcd() {
        opts.extra_args = vec!["--lease-checkpoint-interval".into(), "1s".into()];
    }
    let mut old = Cluster::start_with(opts);
    let first_a = put(&old, 0, "a", "1");
    put(&old, 1, "b", "2");
    put(&old, 2, "a", "3");
    old.ctl(0, &["del", "b"]).expect_ok();
    let lease = parse_lease_grant(&old.ctl(0, &["lease", "grant", "30"]));
    old.ctl(0, &["put", "held", "x", "--lease", &lease_hex(lease)])
        .expect_ok();
    // Let a checkpoint happen: it records about 24 s left.
    wait_for(
        Duration::from_secs(20),
        "the lease to run down to 24 s",
        || (ttl_left(&old, 0, lease) <= 24).then_some(()),
    );
    let rev = revision(&old, 0);
    let old_cluster = json_u64(
        &old.ctl_json(0, &["member", "list"])["header"],
        "cluster_id",
    );
    let file = old.dir().join("backup.db");
    save(&old, old.followers()[0], &file);
    for i in 0..3 {
        old.kill(i);
    }

    let restored = Cluster::start_with(ClusterOptions {
        restore_from: Some(file),
        ..ClusterOptions::new(3)
    });
    // The whole TTL again, not the checkpointed 24 s.
    let left = ttl_left(&restored, 1, lease);
    assert!(left >= 26, "restored lease has {left} s left, not its 30");
    let held = restored.ctl_json(2, &["get", "held"]);
    assert_eq!(json_i64(&held["kvs"][0], "lease"), lease, "{held}");
    let a = restored.ctl_json(1, &["get", "a"]);
    assert_eq!(kvs(&a), vec![("a".to_string(), "3".to_string())]);
    assert_eq!(json_i64(&a["header"], "revision"), rev);
    assert_eq!(
        restored.ctl_json(0, &["get", "b"])["count"],
        serde_json::Value::Null
    );
    // History: `a` as it was at its first revision.
    let then = restored.ctl_json(0, &["get", "a", &format!("--rev={first_a}")]);
    assert_eq!(kvs(&then), vec![("a".to_string(), "1".to_string())]);
    // Writes go on from the backup's revision.
    assert_eq!(put(&restored, 2, "c", "4"), rev + 1);
    // A new cluster: its own members and id.
    let members = restored.ctl_json(0, &["member", "list"]);
    assert_ne!(json_u64(&members["header"], "cluster_id"), old_cluster);
    let ids: Vec<u64> = members["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| json_u64(m, "ID"))
        .collect();
    assert_eq!(ids.len(), 3, "{members}");
    for i in 0..3 {
        assert!(ids.contains(&restored.member_id(i)), "{members}");
    }
}

/// Roster only: a cluster of one with a snapshot every 10 entries, and a
/// backup saved from it.
fn one_node_with_a_backup() -> (Cluster, PathBuf) {
    let c = Cluster::start_with(ClusterOptions {
        extra_args: vec!["--snapshot-count".into(), "10".into()],
        ..ClusterOptions::new(1)
    });
    for n in 0..30 {
        put(&c, 0, &format!("key{n}"), "value");
    }
    let file = c.dir().join("backup.db");
    save(&c, 0, &file);
    (c, file)
}

fn restore_into(file: &Path, data_dir: &Path, extra: &[&str]) -> (bool, String) {
    let (file, dir) = (file.display().to_string(), data_dir.display().to_string());
    let mut args = vec!["snapshot", "restore", &file, "--data-dir", &dir];
    args.extend(extra);
    let (ok, out, err) = roster(&args);
    (ok, format!("{out}{err}"))
}

#[test]
fn restore_refuses_a_damaged_or_truncated_file_and_a_used_data_dir() {
    if is_etcd() {
        return;
    }
    let (c, file) = one_node_with_a_backup();
    let bytes = std::fs::read(&file).expect("read backup");
    let target = c.dir().join("restored.data");

    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x01;
    let damaged = c.dir().join("damaged.db");
    std::fs::write(&damaged, &flipped).expect("write");
    let (ok, out) = restore_into(&damaged, &target, &[]);
    assert!(!ok && out.contains("SHA-256 mismatch"), "{out}");
    assert!(out.contains("damaged.db"), "names the file: {out}");
    assert!(!target.exists(), "a refused restore writes nothing");

    let truncated = c.dir().join("truncated.db");
    std::fs::write(&truncated, &bytes[..bytes.len() - 700]).expect("write");
    let (ok, out) = restore_into(&truncated, &target, &["--skip-hash-check"]);
    assert!(!ok && out.contains("truncated"), "{out}");
    let (ok, out, err) = roster(&["snapshot", "status", &truncated.display().to_string()]);
    assert!(!ok && err.contains("truncated.db"), "{out}{err}");

    let used = c.config(0).data_dir.clone();
    let (ok, out) = restore_into(&file, &used, &[]);
    assert!(!ok && out.contains("is not empty"), "{out}");

    let (ok, out) = restore_into(&file, &target, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("at revision 31"), "{out}");
}

#[test]
fn a_snapshot_file_from_a_data_dir_restores_with_the_hash_check_skipped() {
    if is_etcd() {
        return;
    }
    let (c, _) = one_node_with_a_backup();
    let snap_dir = c.config(0).data_dir.join("snap");
    let raw = std::fs::read_dir(&snap_dir)
        .expect("snap dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "snap"))
        .expect("a snapshot file after 30 entries with --snapshot-count 10");
    // Kept apart: the cluster's dir goes with the cluster.
    let keep = tempfile::tempdir().expect("temp dir");
    let copy = keep.path().join("copied.snap");
    std::fs::copy(&raw, &copy).expect("copy");
    let (ok, out) = restore_into(&copy, &c.dir().join("refused.data"), &[]);
    assert!(!ok && out.contains("--skip-hash-check"), "{out}");
    drop(c);

    let restored = Cluster::start_with(ClusterOptions {
        restore_from: Some(copy),
        restore_args: vec!["--skip-hash-check".into()],
        ..ClusterOptions::new(1)
    });
    // The snapshot was taken at some entry between 10 and 31: the keys up to
    // it are there.
    let got = restored.ctl_json(0, &["get", "key0"]);
    assert_eq!(kvs(&got), vec![("key0".to_string(), "value".to_string())]);
}
