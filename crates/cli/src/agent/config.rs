//! What the agent registers: a TOML file, or flags for one instance.
//!
//! ```toml
//! endpoints = ["127.0.0.1:2379", "127.0.0.1:22379"]
//! drain = "5s"                       # default for every instance
//!
//! [[instance]]
//! service = "web"
//! id = "web-1"
//! endpoints = ["http://10.0.0.1:8080"]   # [PROTOCOL://]HOST:PORT
//! metadata = { zone = "a" }
//! tags = ["api"]
//! weight = 1
//! ttl = "10s"
//! deregistration_handler = "cmdb"
//! check = { http = "http://127.0.0.1:8080/healthz", interval = "2s", timeout = "1s" }
//! ```
//!
//! Errors name the file, and for a TOML error its line, column and field
//! (the parser says which); duplicate instances are refused by name.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use roster_proto::registry::Endpoint;
use roster_state::check::{CheckKind, CheckSpec};
use serde::Deserialize;

use crate::service::parse_endpoint;

/// One instance the agent keeps registered.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentInstance {
    pub service: String,
    pub id: String,
    pub endpoints: Vec<Endpoint>,
    pub metadata: BTreeMap<String, String>,
    pub tags: Vec<String>,
    pub weight: u32,
    pub ttl: Duration,
    pub drain: Duration,
    pub deregistration_handler: String,
    /// Run locally by the agent and reported to the cluster as a ttl check.
    pub check: Option<CheckSpec>,
}

/// Everything the agent was told.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    pub endpoints: Vec<String>,
    pub instances: Vec<AgentInstance>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    endpoints: Vec<String>,
    drain: Option<String>,
    #[serde(default, rename = "instance")]
    instances: Vec<FileInstance>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileInstance {
    service: String,
    id: String,
    #[serde(default)]
    endpoints: Vec<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    tags: Vec<String>,
    weight: Option<u32>,
    ttl: Option<String>,
    drain: Option<String>,
    #[serde(default)]
    deregistration_handler: String,
    check: Option<FileCheck>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCheck {
    http: Option<String>,
    tcp: Option<String>,
    grpc: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
}

/// Default TTL of an agent's instance.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// Default interval of a local check.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(2);

fn duration(text: Option<&str>, what: &str, default: Duration) -> anyhow::Result<Duration> {
    match text {
        None => Ok(default),
        Some(text) => crate::duration::parse(text).map_err(|e| anyhow::anyhow!("{what}: {e}")),
    }
}

/// A local check of one kind at `target`.
pub fn local_check(
    kind: CheckKind,
    target: &str,
    interval: Duration,
    timeout: Option<Duration>,
) -> CheckSpec {
    let interval_ms = interval.as_millis().max(1) as u64;
    let timeout_ms = timeout.map_or(interval_ms.min(5_000), |t| t.as_millis() as u64);
    CheckSpec {
        interval_ms,
        timeout_ms,
        ..CheckSpec::new(kind, target)
    }
}

fn file_check(check: &FileCheck) -> anyhow::Result<CheckSpec> {
    let (kind, target) = match (&check.http, &check.tcp, &check.grpc) {
        (Some(url), None, None) => (CheckKind::Http, url),
        (None, Some(address), None) => (CheckKind::Tcp, address),
        (None, None, Some(address)) => (CheckKind::Grpc, address),
        _ => bail!("check: give exactly one of http, tcp or grpc"),
    };
    let interval = duration(
        check.interval.as_deref(),
        "check.interval",
        DEFAULT_CHECK_INTERVAL,
    )?;
    let timeout = check
        .timeout
        .as_deref()
        .map(|t| duration(Some(t), "check.timeout", Duration::ZERO))
        .transpose()?;
    let spec = local_check(kind, target, interval, timeout);
    roster_state::check::validate_check(&spec).map_err(|e| anyhow::anyhow!("check: {e}"))?;
    Ok(spec)
}

impl AgentConfig {
    /// Reads and checks a config file.
    pub fn from_file(path: &Path) -> anyhow::Result<AgentConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("invalid agent config {}", path.display()))
    }

    pub fn from_toml(text: &str) -> anyhow::Result<AgentConfig> {
        let file: FileConfig = toml::from_str(text)?;
        let drain = duration(file.drain.as_deref(), "drain", Duration::ZERO)?;
        let mut instances = Vec::new();
        for (n, i) in file.instances.into_iter().enumerate() {
            let instance = file_instance(i, drain)
                .with_context(|| format!("[[instance]] number {}", n + 1))?;
            instances.push(instance);
        }
        let config = AgentConfig {
            endpoints: file.endpoints,
            instances,
        };
        config.check()?;
        Ok(config)
    }

    /// Refuses a config with no instance or the same instance twice.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.instances.is_empty() {
            bail!("no instance to register");
        }
        for (n, a) in self.instances.iter().enumerate() {
            let twin = self.instances[..n]
                .iter()
                .position(|b| a.service == b.service && a.id == b.id);
            if let Some(first) = twin {
                bail!(
                    "instance {}/{} appears twice (instances {} and {})",
                    a.service,
                    a.id,
                    first + 1,
                    n + 1
                );
            }
        }
        Ok(())
    }
}

fn file_instance(i: FileInstance, default_drain: Duration) -> anyhow::Result<AgentInstance> {
    Ok(AgentInstance {
        endpoints: i
            .endpoints
            .iter()
            .map(|e| parse_endpoint("endpoint", e))
            .collect::<anyhow::Result<_>>()?,
        weight: i.weight.unwrap_or(1),
        ttl: duration(i.ttl.as_deref(), "ttl", DEFAULT_TTL)?,
        drain: duration(i.drain.as_deref(), "drain", default_drain)?,
        check: i.check.as_ref().map(file_check).transpose()?,
        service: i.service,
        id: i.id,
        metadata: i.metadata,
        tags: i.tags,
        deregistration_handler: i.deregistration_handler,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_config_reads() {
        let config = AgentConfig::from_toml(
            r#"
endpoints = ["127.0.0.1:2379"]
drain = "3s"

[[instance]]
service = "web"
id = "web-1"
endpoints = ["http://10.0.0.1:8080", "10.0.0.1:9090"]
metadata = { zone = "a" }
tags = ["api"]
ttl = "15s"
check = { http = "http://127.0.0.1:8080/healthz", interval = "500ms" }

[[instance]]
service = "web"
id = "web-2"
drain = "0s"
"#,
        )
        .expect("valid");
        assert_eq!(config.endpoints, vec!["127.0.0.1:2379"]);
        let web1 = &config.instances[0];
        let endpoint = |protocol: &str, port| Endpoint {
            address: "10.0.0.1".into(),
            port,
            protocol: protocol.into(),
        };
        assert_eq!(
            web1.endpoints,
            vec![endpoint("http", 8080), endpoint("", 9090)]
        );
        assert_eq!(
            (web1.ttl, web1.drain),
            (Duration::from_secs(15), Duration::from_secs(3))
        );
        let check = web1.check.as_ref().expect("check");
        assert_eq!(
            (check.kind, check.interval_ms, check.timeout_ms),
            (CheckKind::Http, 500, 500)
        );
        assert_eq!(config.instances[1].drain, Duration::ZERO);
        assert_eq!(config.instances[1].ttl, DEFAULT_TTL);
    }

    #[test]
    fn errors_name_the_line_the_field_and_the_instance() {
        let unknown =
            AgentConfig::from_toml("[[instance]]\nservice = \"a\"\nid = \"b\"\nsevrice = 1\n")
                .expect_err("unknown field");
        let text = format!("{unknown:#}");
        assert!(
            text.contains("line 4") && text.contains("sevrice"),
            "{text}"
        );
        let missing = AgentConfig::from_toml("[[instance]]\nservice = \"a\"\n").expect_err("no id");
        assert!(
            format!("{missing:#}").contains("missing field `id`"),
            "{missing:#}"
        );
        let twice = AgentConfig::from_toml(
            "[[instance]]\nservice = \"a\"\nid = \"b\"\n[[instance]]\nservice = \"a\"\nid = \"b\"\n",
        )
        .expect_err("duplicate");
        assert!(format!("{twice:#}").contains("a/b appears twice (instances 1 and 2)"));
        let port = AgentConfig::from_toml(
            "[[instance]]\nservice = \"a\"\nid = \"b\"\nendpoints = [\"h:0\"]\n",
        )
        .expect_err("port");
        let text = format!("{port:#}");
        assert!(
            text.contains("[[instance]] number 1") && text.contains("port"),
            "{text}"
        );
        let ttl =
            AgentConfig::from_toml("[[instance]]\nservice = \"a\"\nid = \"b\"\nttl = \"5x\"\n")
                .expect_err("ttl");
        assert!(
            format!("{ttl:#}").contains("ttl: invalid duration unit"),
            "{ttl:#}"
        );
        let check = AgentConfig::from_toml(
            "[[instance]]\nservice = \"a\"\nid = \"b\"\ncheck = { tcp = \"x\" }\n",
        )
        .expect_err("check");
        assert!(
            format!("{check:#}").contains("a tcp check needs HOST:PORT"),
            "{check:#}"
        );
    }
}
