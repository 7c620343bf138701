//! TLS, black-box, with certificates made by `openssl` for each run: TLS and
//! client certificates on the client port (etcdctl and `roster` with
//! `--cacert`, `--cert`, `--key`), members that talk to each other over
//! mutual TLS, and the refusals of a bad TLS setup. Roster only (the flags
//! are etcd's, but the harness starts etcd with plain URLs).

mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::{
    binary, etcdctl_path, free_port, is_etcd, kvs, poll_for, roster, spawn_server, tail, Cluster,
    ClusterOptions,
};

/// A CA, a certificate for 127.0.0.1 (server and client use, as members
/// need), and a client certificate, all signed by the CA.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn new() -> Certs {
        let dir = tempfile::tempdir().expect("temp dir");
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let ca: Vec<&str> = ["req", "-x509"]
            .into_iter()
            .chain(ec)
            .chain([
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=roster-test-ca",
            ])
            .collect();
        run(&ca);
        for (name, usage) in [("node", "serverAuth,clientAuth"), ("client", "clientAuth")] {
            let (key, csr, crt, ext, subject) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
                format!("{name}.ext"),
                format!("/CN={name}"),
            );
            let req: Vec<&str> = ["req"]
                .into_iter()
                .chain(ec)
                .chain(["-keyout", &key, "-out", &csr, "-subj"])
                .chain([subject.as_str()])
                .collect();
            run(&req);
            let extensions = format!("subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n");
            std::fs::write(dir.path().join(&ext), extensions).expect("write ext");
            run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &ext,
            ]);
        }
        Certs { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

/// etcdctl against `endpoint` with `tls` flags; (success, stdout, stderr).
fn ctl(endpoint: &str, tls: &[String], args: &[&str]) -> (bool, String, String) {
    let out = Command::new(etcdctl_path())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=3s")
        .arg("--dial-timeout=2s")
        .args(tls)
        .args(args)
        .output()
        .expect("run etcdctl");
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (out.status.success(), text(out.stdout), text(out.stderr))
}

/// One node whose client port is `https://` with `tls_flags`; its endpoint.
fn tls_node(dir: &Path, tls_flags: &[String]) -> (std::process::Child, String, PathBuf) {
    let (client, peer) = (free_port(), free_port());
    let endpoint = format!("https://127.0.0.1:{client}");
    let mut args: Vec<String> = [
        "--name=t1".to_string(),
        format!("--data-dir={}", dir.join("t1.data").display()),
        format!("--listen-client-urls={endpoint}"),
        format!("--advertise-client-urls={endpoint}"),
        format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-cluster=t1=http://127.0.0.1:{peer}"),
    ]
    .into();
    args.extend(tls_flags.iter().cloned());
    let log = dir.join("t1.log");
    (spawn_server(&binary(), &args, &log), endpoint, log)
}

#[test]
fn the_client_port_serves_tls_and_asks_for_client_certificates() {
    if is_etcd() {
        return;
    }
    let certs = Certs::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut child, endpoint, log) = tls_node(
        dir.path(),
        &[
            format!("--cert-file={}", certs.arg("node.crt")),
            format!("--key-file={}", certs.arg("node.key")),
            format!("--trusted-ca-file={}", certs.arg("ca.crt")),
            "--client-cert-auth".into(),
        ],
    );
    let client_tls = [
        format!("--cacert={}", certs.arg("ca.crt")),
        format!("--cert={}", certs.arg("client.crt")),
        format!("--key={}", certs.arg("client.key")),
    ];
    let up = poll_for(Duration::from_secs(30), || {
        ctl(&endpoint, &client_tls, &["put", "k", "v"])
            .0
            .then_some(())
    });
    if up.is_none() {
        let _ = child.kill();
        panic!("no TLS put within 30 s; log:\n{}", tail(&log, 30));
    }
    let (ok, out, _) = ctl(&endpoint, &client_tls, &["get", "k", "-w", "json"]);
    assert!(ok && out.contains("\"count\":1"), "{out}");

    // A client without a certificate, and one speaking plain HTTP, get nothing.
    let no_cert = [format!("--cacert={}", certs.arg("ca.crt"))];
    assert!(
        !ctl(&endpoint, &no_cert, &["get", "k"]).0,
        "no client certificate"
    );
    let plain = endpoint.replace("https://", "http://");
    assert!(!ctl(&plain, &[], &["get", "k"]).0, "plain HTTP");

    // roster's own commands take etcdctl's TLS flags.
    let mut args: Vec<String> = ["kv", "get", "k"].map(String::from).into();
    args.push(format!(
        "--endpoints={}",
        endpoint.trim_start_matches("https://")
    ));
    args.extend(client_tls.iter().cloned());
    let (ok, out, err) = roster(&args);
    assert!(ok && out.contains('v'), "{out}{err}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn members_talk_to_each_other_over_mutual_tls() {
    if is_etcd() {
        return;
    }
    let certs = Certs::new();
    let c = Cluster::start_with(ClusterOptions {
        https_peers: true,
        extra_args: vec![
            format!("--peer-cert-file={}", certs.arg("node.crt")),
            format!("--peer-key-file={}", certs.arg("node.key")),
            format!("--peer-trusted-ca-file={}", certs.arg("ca.crt")),
            "--peer-client-cert-auth".into(),
        ],
        ..ClusterOptions::new(3)
    });
    let follower = c.followers()[0];
    c.ctl(follower, &["put", "over", "tls"]).expect_ok();
    for i in 0..3 {
        let got = poll_for(Duration::from_secs(10), || {
            let j = c.ctl_json(i, &["get", "over", "--consistency=s"]);
            (!kvs(&j).is_empty()).then_some(())
        });
        assert!(got.is_some(), "node {i} never applied the write");
    }
    let members = c.ctl_json(0, &["member", "list"]);
    for m in members["members"].as_array().expect("members") {
        let peer = m["peerURLs"][0].as_str().unwrap_or_default();
        assert!(peer.starts_with("https://127.0.0.1:"), "{m}");
    }
}

#[test]
fn a_bad_tls_setup_is_refused_naming_the_flag_or_file() {
    if is_etcd() {
        return;
    }
    let certs = Certs::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let cases: [(Vec<String>, &str); 3] = [
        (Vec::new(), "TLS needs --cert-file and --key-file"),
        (
            vec![
                format!("--cert-file={}", certs.arg("node.crt")),
                format!("--key-file={}", dir.path().join("missing.key").display()),
            ],
            "missing.key",
        ),
        (
            vec![
                format!("--cert-file={}", certs.arg("node.crt")),
                format!("--key-file={}", certs.arg("node.key")),
                "--client-cert-auth".into(),
            ],
            "--client-cert-auth needs --trusted-ca-file",
        ),
    ];
    for (flags, expected) in cases {
        let (mut child, _, log) = tls_node(dir.path(), &flags);
        let status = poll_for(Duration::from_secs(20), || child.try_wait().expect("wait"));
        let Some(status) = status else {
            let _ = child.kill();
            panic!("{flags:?}: still running");
        };
        assert!(!status.success(), "{flags:?}");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            text.contains(expected),
            "{flags:?}: expected {expected:?} in:\n{text}"
        );
        let data = dir.path().join("t1.data");
        assert!(!data.exists(), "{flags:?}: a refused start writes nothing");
        let _ = std::fs::remove_file(&log);
    }
}
