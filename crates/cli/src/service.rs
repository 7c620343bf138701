//! `roster service ...` and `roster audit list`: the registry API from the shell.
//!
//! Every command takes `--endpoints host:port,...` (tried in order until one
//! answers) and `-o table|json`; JSON output is one object per line, so a
//! `watch` can be piped into `jq`. Errors are the server's, with its message.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use roster_proto::registry::register_request::Lease;
use roster_proto::registry::registry_client::RegistryClient;
use roster_proto::registry::{
    AuditListRequest, DiscoverRequest, DrainRequest, Endpoint, EventKind, ForceDeregisterRequest,
    Health, HealthFilter, Instance, InstanceRequest, InstanceState, RegisterRequest, RegistryEvent,
    RemovalReason, WatchServicesRequest,
};
use serde_json::{json, Value};

use crate::check::CheckArgs;
use roster_client::auth::{authenticated, AuthChannel, Credentials};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint as TonicEndpoint, Identity};

#[derive(Args, Debug, Clone, Default)]
pub struct Connection {
    /// Client endpoints, host:port (comma-separated), tried in order.
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:2379",
        value_delimiter = ','
    )]
    pub(crate) endpoints: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub(crate) output: Output,
    /// CA (PEM) to verify TLS servers with; endpoints without a scheme are
    /// then https.
    #[arg(long, global = true)]
    pub(crate) cacert: Option<std::path::PathBuf>,
    /// Client certificate (PEM), for servers that ask for one.
    #[arg(long = "cert", id = "tls_cert", global = true, requires = "tls_key")]
    pub(crate) cert: Option<std::path::PathBuf>,
    /// Its private key (PEM). (Its id is not `key`: `kv put` has a `key`.)
    #[arg(long = "key", id = "tls_key", global = true, requires = "tls_cert")]
    pub(crate) key: Option<std::path::PathBuf>,
    /// NAME:PASSWORD to authenticate as on a cluster with auth on (etcdctl's
    /// `--user`).
    #[arg(long, global = true, value_parser = parse_credentials)]
    pub(crate) user: Option<Credentials>,
}

/// `--user NAME:PASSWORD`.
pub(crate) fn parse_credentials(text: &str) -> Result<Credentials, String> {
    Credentials::parse(text).ok_or_else(|| "expected NAME:PASSWORD".to_string())
}

impl Connection {
    /// The same connection settings, for just this endpoint.
    pub(crate) fn single(&self, endpoint: &str) -> Connection {
        Connection {
            endpoints: vec![endpoint.to_string()],
            ..self.clone()
        }
    }

    fn tls(&self) -> bool {
        self.cacert.is_some() || self.cert.is_some()
    }

    /// The TLS settings of `--cacert`, `--cert` and `--key`.
    fn tls_config(&self) -> anyhow::Result<ClientTlsConfig> {
        let read = |flag: &str, path: &std::path::Path| {
            std::fs::read(path).with_context(|| format!("--{flag} {}", path.display()))
        };
        let mut config = ClientTlsConfig::new();
        if let Some(ca) = &self.cacert {
            config = config.ca_certificate(Certificate::from_pem(read("cacert", ca)?));
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            let identity = Identity::from_pem(read("cert", cert)?, read("key", key)?);
            config = config.identity(identity);
        }
        Ok(config)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

#[derive(Args, Debug)]
pub struct ServiceArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: ServiceCommand,
}

#[derive(Args, Debug)]
pub struct Which {
    /// Service name.
    #[arg(long)]
    pub(crate) service: String,
    /// Instance id.
    #[arg(long)]
    pub(crate) id: String,
}

#[derive(Subcommand, Debug)]
enum ServiceCommand {
    /// Register (or update) an instance.
    Register {
        #[command(flatten)]
        which: Which,
        // Not named `endpoints`: clap ids are field names, and that one is the
        // cluster's flag.
        /// HOST:PORT, or PROTOCOL://HOST:PORT (repeatable).
        #[arg(long)]
        endpoint: Vec<String>,
        /// Metadata, k=v (repeatable).
        #[arg(long = "meta")]
        metadata: Vec<String>,
        /// Tag / capability (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// A lease of the instance's own with this TTL (500ms, 10s, 5m; a bare number is seconds).
        #[arg(long, value_parser = crate::duration::parse, conflicts_with_all = ["no_lease", "lease"])]
        ttl: Option<Duration>,
        /// Live on an existing lease (hex id, as etcdctl prints it).
        #[arg(long, conflicts_with = "no_lease")]
        lease: Option<String>,
        /// No lease: removed only by deregister or force-deregister.
        #[arg(long)]
        no_lease: bool,
        /// false: when the lease expires, keep the record (critical,
        /// "keepalive expired") instead of removing it.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        deregister: bool,
        /// Handler told of this instance's deregistration instead of the
        /// cluster-wide one.
        #[arg(long, default_value = "")]
        deregistration_handler: String,
        #[command(flatten)]
        check: Box<CheckArgs>,
    },
    /// Remove an instance now (reason graceful).
    Deregister {
        #[command(flatten)]
        which: Which,
    },
    /// Stop discovery returning an instance; remove it at --deadline if given.
    Drain {
        #[command(flatten)]
        which: Which,
        #[arg(long, value_parser = crate::duration::parse)]
        deadline: Option<Duration>,
    },
    /// Remove an instance as an operator (reason forced), recorded in the audit log.
    ForceDeregister {
        #[command(flatten)]
        which: Which,
        #[arg(long)]
        reason: String,
        /// Who removes it [default: with --user, that user (the only one
        /// accepted); else $USER].
        #[arg(long)]
        actor: Option<String>,
    },
    /// List instances.
    List {
        #[arg(long, default_value = "")]
        service: String,
        /// Label selector over metadata, plus tag:NAME.
        #[arg(long, default_value = "")]
        selector: String,
        #[arg(long)]
        include_draining: bool,
        #[arg(long, value_enum, default_value_t = HealthArg::Passing)]
        health: HealthArg,
        /// Below this fraction of passing instances, a service's instances are
        /// all listed (0: off).
        #[arg(long, default_value_t = 0.0)]
        protection_threshold: f64,
    },
    /// Follow registry events (Ctrl-C stops).
    Watch {
        #[arg(long, default_value = "")]
        service: String,
        #[arg(long, default_value = "")]
        selector: String,
        /// Replay from this revision.
        #[arg(long, default_value_t = 0)]
        from_revision: i64,
        /// Start with the current instances.
        #[arg(long)]
        snapshot: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum HealthArg {
    Any,
    Passing,
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// The forced removals, oldest first.
    List,
}

/// Connects to the first endpoint that answers.
pub(crate) async fn connect(
    connection: &Connection,
) -> anyhow::Result<RegistryClient<AuthChannel>> {
    Ok(RegistryClient::new(connect_channel(connection).await?))
}

/// A channel to the first endpoint that answers, its calls carrying a token
/// for `--user`.
pub(crate) async fn connect_channel(connection: &Connection) -> anyhow::Result<AuthChannel> {
    let mut last = None;
    let scheme = if connection.tls() { "https" } else { "http" };
    for ep in &connection.endpoints {
        let url = if ep.contains("://") {
            ep.clone()
        } else {
            format!("{scheme}://{ep}")
        };
        let mut endpoint = TonicEndpoint::from_shared(url.clone())
            .with_context(|| format!("--endpoints: {ep:?} is not host:port"))?
            .connect_timeout(Duration::from_secs(2));
        if url.starts_with("https://") {
            endpoint = endpoint.tls_config(connection.tls_config()?)?;
        }
        let attempt = endpoint.connect().await;
        match attempt {
            Ok(channel) => {
                return authenticated(channel, connection.user.as_ref())
                    .await
                    .map_err(|s| {
                        status_error(s).context(format!("--user: authenticating at {ep}"))
                    })
            }
            Err(e) => last = Some(format!("{ep}: {e}")),
        }
    }
    bail!("no endpoint answered ({})", last.unwrap_or_default())
}

pub(crate) fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", status.message(), status.code())
}

/// `HOST:PORT` or `PROTOCOL://HOST:PORT`; errors name it as `what` (the
/// flag, or the config field).
pub(crate) fn parse_endpoint(what: &str, text: &str) -> anyhow::Result<Endpoint> {
    let (protocol, rest) = match text.split_once("://") {
        Some((p, r)) => (p.to_string(), r),
        None => (String::new(), text),
    };
    let (address, port) = rest
        .rsplit_once(':')
        .with_context(|| format!("{what} {text:?}: expected [PROTOCOL://]HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .with_context(|| format!("{what} {text:?}: port must be 1-65535"))?;
    if address.is_empty() {
        bail!("{what} {text:?}: expected [PROTOCOL://]HOST:PORT");
    }
    Ok(Endpoint {
        address: address.to_string(),
        port: u32::from(port),
        protocol,
    })
}

/// `KEY=VALUE` items (`--meta`), into any map.
pub(crate) fn parse_metadata<M: FromIterator<(String, String)>>(
    items: &[String],
) -> anyhow::Result<M> {
    items
        .iter()
        .map(|item| {
            let (k, v) = item
                .split_once('=')
                .with_context(|| format!("--meta {item:?}: expected key=value"))?;
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

pub async fn run_service(args: ServiceArgs) -> anyhow::Result<()> {
    let output = args.connection.output;
    let mut client = connect(&args.connection).await?;
    match args.command {
        ServiceCommand::Register {
            which,
            endpoint,
            metadata,
            tags,
            weight,
            ttl,
            lease,
            no_lease,
            deregister,
            deregistration_handler,
            check,
        } => {
            let lease = match (ttl, lease, no_lease) {
                (Some(ttl), _, _) => Lease::TtlSeconds(ttl.as_secs_f64().ceil() as i64),
                (None, Some(hex), _) => Lease::LeaseId(
                    i64::from_str_radix(hex.trim_start_matches("0x"), 16)
                        .with_context(|| format!("--lease {hex:?}: expected a hex lease id"))?,
                ),
                (None, None, true) => Lease::NoLease(true),
                (None, None, false) => bail!("give --ttl DURATION, --lease ID or --no-lease"),
            };
            let request = RegisterRequest {
                service: which.service.clone(),
                id: which.id.clone(),
                endpoints: endpoint
                    .iter()
                    .map(|e| parse_endpoint("--endpoint", e))
                    .collect::<anyhow::Result<_>>()?,
                metadata: parse_metadata(&metadata)?,
                tags,
                weight,
                lease: Some(lease),
                check: check.to_proto()?,
                deregister: Some(deregister),
                deregistration_handler,
            };
            let answer = client
                .register(request)
                .await
                .map_err(status_error)?
                .into_inner();
            print(
                output,
                json!({"revision": answer.revision, "lease": format!("{:x}", answer.lease)}),
                || {
                    format!(
                        "registered {}/{} on lease {:x} at revision {}",
                        which.service, which.id, answer.lease, answer.revision
                    )
                },
            );
        }
        ServiceCommand::Deregister { which } => {
            let request = InstanceRequest {
                service: which.service.clone(),
                id: which.id.clone(),
            };
            let answer = client
                .deregister(request)
                .await
                .map_err(status_error)?
                .into_inner();
            changed(output, "deregistered", &which, answer.revision);
        }
        ServiceCommand::Drain { which, deadline } => {
            let request = DrainRequest {
                service: which.service.clone(),
                id: which.id.clone(),
                deadline_ms: deadline.map_or(0, |d| d.as_millis().max(1) as u64),
            };
            let answer = client
                .drain(request)
                .await
                .map_err(status_error)?
                .into_inner();
            changed(output, "draining", &which, answer.revision);
        }
        ServiceCommand::ForceDeregister {
            which,
            reason,
            actor,
        } => {
            // With --user the server records the authenticated user.
            let actor = match (actor, &args.connection.user) {
                (Some(actor), _) => actor,
                (None, Some(_)) => String::new(),
                (None, None) => std::env::var("USER").unwrap_or_else(|_| "cli".to_string()),
            };
            let request = ForceDeregisterRequest {
                service: which.service.clone(),
                id: which.id.clone(),
                actor,
                reason,
            };
            let answer = client
                .force_deregister(request)
                .await
                .map_err(status_error)?
                .into_inner();
            changed(output, "force-deregistered", &which, answer.revision);
        }
        ServiceCommand::List {
            service,
            selector,
            include_draining,
            health,
            protection_threshold,
        } => {
            let request = DiscoverRequest {
                service,
                selector,
                include_draining,
                health: match health {
                    HealthArg::Any => HealthFilter::Any,
                    HealthArg::Passing => HealthFilter::PassingOnly,
                } as i32,
                serializable: false,
                protection_threshold,
            };
            let answer = client
                .discover(request)
                .await
                .map_err(status_error)?
                .into_inner();
            list(output, &answer.instances);
        }
        ServiceCommand::Watch {
            service,
            selector,
            from_revision,
            snapshot,
        } => {
            let request = WatchServicesRequest {
                service,
                selector,
                from_revision,
                snapshot,
            };
            let mut stream = client
                .watch_services(request)
                .await
                .map_err(status_error)?
                .into_inner();
            while let Some(response) = stream.message().await.map_err(status_error)? {
                for event in response.events {
                    print_event(output, &event);
                }
            }
        }
    }
    Ok(())
}

pub async fn run_audit(args: AuditArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.connection).await?;
    let AuditCommand::List = args.command;
    let answer = client
        .audit_list(AuditListRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    if args.connection.output == Output::Table {
        println!(
            "{:<10} {:<16} {:<30} {:<12} REASON",
            "REVISION", "ACTOR", "INSTANCE", "AT (ms)"
        );
    }
    for e in answer.entries {
        print(
            args.connection.output,
            json!({"revision": e.revision, "at_ms": e.at_ms, "actor": e.actor, "service": e.service, "id": e.id, "reason": e.reason}),
            || {
                format!(
                    "{:<10} {:<16} {:<30} {:<12} {}",
                    e.revision,
                    e.actor,
                    format!("{}/{}", e.service, e.id),
                    e.at_ms,
                    e.reason
                )
            },
        );
    }
    Ok(())
}

pub(crate) fn print(output: Output, value: Value, table: impl FnOnce() -> String) {
    match output {
        Output::Json => println!("{value}"),
        Output::Table => println!("{}", table()),
    }
}

fn changed(output: Output, what: &str, which: &Which, revision: i64) {
    print(output, json!({"revision": revision}), || {
        format!(
            "{what} {}/{} at revision {revision}",
            which.service, which.id
        )
    });
}

fn state_name(state: i32) -> &'static str {
    match InstanceState::try_from(state) {
        Ok(InstanceState::Draining) => "draining",
        Ok(InstanceState::Up) => "up",
        _ => "?",
    }
}

pub(crate) fn health_name(health: i32) -> &'static str {
    match Health::try_from(health) {
        Ok(Health::Passing) => "passing",
        Ok(Health::Warning) => "warning",
        Ok(Health::Critical) => "critical",
        _ => "?",
    }
}

fn endpoints_text(instance: &Instance) -> String {
    let list: Vec<String> = instance
        .endpoints
        .iter()
        .map(|e| match e.protocol.as_str() {
            "" => format!("{}:{}", e.address, e.port),
            p => format!("{p}://{}:{}", e.address, e.port),
        })
        .collect();
    list.join(",")
}

fn instance_json(i: &Instance) -> Value {
    let metadata: serde_json::Map<String, Value> = i
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    json!({
        "service": i.service, "id": i.id, "endpoints": endpoints_text(i).split(',').filter(|s| !s.is_empty()).collect::<Vec<_>>(),
        "metadata": metadata, "tags": i.tags, "weight": i.weight, "state": state_name(i.state),
        "health": health_name(i.health), "health_output": i.health_output,
        "keepalive_expired": i.keepalive_expired, "lease": format!("{:x}", i.lease), "revision": i.mod_revision,
    })
}

fn list(output: Output, instances: &[Instance]) {
    if output == Output::Table {
        println!(
            "{:<16} {:<20} {:<9} {:<9} {:<18} ENDPOINTS",
            "SERVICE", "ID", "STATE", "HEALTH", "LEASE"
        );
    }
    for i in instances {
        print(output, instance_json(i), || {
            format!(
                "{:<16} {:<20} {:<9} {:<9} {:<18} {}",
                i.service,
                i.id,
                state_name(i.state),
                health_name(i.health),
                format!("{:x}", i.lease),
                endpoints_text(i)
            )
        });
    }
}

fn print_event(output: Output, event: &RegistryEvent) {
    let kind = match EventKind::try_from(event.kind) {
        Ok(EventKind::Registered) => "registered",
        Ok(EventKind::Updated) => "updated",
        Ok(EventKind::HealthChanged) => "health_changed",
        Ok(EventKind::Draining) => "draining",
        Ok(EventKind::Deregistered) => "deregistered",
        _ => "?",
    };
    let reason = match RemovalReason::try_from(event.reason) {
        Ok(RemovalReason::Graceful) => "graceful",
        Ok(RemovalReason::Expired) => "expired",
        Ok(RemovalReason::Forced) => "forced",
        Ok(RemovalReason::Drained) => "drained",
        Ok(RemovalReason::Health) => "health",
        _ => "",
    };
    let name = event
        .instance
        .as_ref()
        .map_or(String::new(), |i| format!("{}/{}", i.service, i.id));
    let instance = event.instance.as_ref().map_or(Value::Null, instance_json);
    print(
        output,
        json!({"revision": event.revision, "kind": kind, "reason": reason, "instance": instance}),
        || {
            format!(
                "{:<10} {:<15} {:<30} {}",
                event.revision, kind, name, reason
            )
            .trim_end()
            .to_string()
        },
    );
}
