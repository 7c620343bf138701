//! The deploy recipes, checked on this machine: `deploy/compose-check.sh`
//! builds an image from the tested `roster` binary (no base image pulled),
//! starts `deploy/docker-compose.yml`, kills a member, checks that the other
//! two serve, starts it again and checks that it catches up. The Kubernetes
//! manifest and the compose file are parsed as YAML here too. Needs Docker
//! and docker-compose, as this machine has.

use std::path::Path;
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[test]
fn the_compose_cluster_survives_a_killed_member_that_then_catches_up() {
    let out = Command::new(repo().join("deploy/compose-check.sh"))
        .arg(env!("CARGO_BIN_EXE_roster"))
        .output()
        .expect("run deploy/compose-check.sh");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "compose-check failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("n2 back and caught up"), "{stdout}");
}

#[test]
fn the_kubernetes_manifest_and_compose_file_are_well_formed() {
    let check = r#"
import sys, yaml
kinds = [d["kind"] for d in yaml.safe_load_all(open(sys.argv[1]))]
assert kinds == ["Service", "Service", "StatefulSet", "PodDisruptionBudget"], kinds
compose = yaml.safe_load(open(sys.argv[2]))
assert sorted(compose["services"]) == ["n1", "n2", "n3"], compose["services"]
print("ok")
"#;
    let out = Command::new("python3")
        .args(["-c", check])
        .arg(repo().join("deploy/kubernetes/roster.yaml"))
        .arg(repo().join("deploy/docker-compose.yml"))
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
