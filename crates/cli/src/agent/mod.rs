//! `roster agent`: a sidecar that keeps instances registered for a process
//! that knows nothing of Roster.
//!
//! It registers each instance once its local check first passes (at once if
//! it has none), keeps the leases alive through the client library, runs the
//! checks itself and reports them as ttl checks (so the cluster does not
//! probe), and on SIGTERM or SIGINT drains every instance for its drain
//! period, deregisters it gracefully and exits 0. If it dies (SIGKILL), the
//! leases simply expire, which is the point. With `-- COMMAND ARGS` it also
//! supervises the process: starts it, forwards the stop signal to it after
//! the drain, and when the process exits by itself deregisters at once and
//! exits with its code.

mod config;

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use roster_client::{
    Client, Credentials, InstanceBuilder, Registration, RegistrationOptions, DEFAULT_RETRY_FOR,
};
use roster_proto::registry::{Check, CheckKind, CheckResult, ReportCheckRequest};
use roster_server::health::probe;
use roster_state::check::CheckKind as LocalKind;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use config::{AgentConfig, AgentInstance};

use crate::service::{parse_endpoint, parse_metadata};

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Cluster endpoints, host:port (comma-separated) [default: the config
    /// file's, else 127.0.0.1:2379].
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// NAME:PASSWORD to authenticate as on a cluster with auth on; the user
    /// needs write on `/roster/registry/<service>/` (docs/operations.md).
    #[arg(long, value_parser = crate::service::parse_credentials)]
    user: Option<Credentials>,
    /// A TOML file listing the instances (see docs/agent.md).
    #[arg(long, conflicts_with = "service")]
    config: Option<PathBuf>,
    /// One instance from flags: its service...
    #[arg(long, requires = "id")]
    service: Option<String>,
    /// ... and id.
    #[arg(long, requires = "service")]
    id: Option<String>,
    /// [PROTOCOL://]HOST:PORT (repeatable).
    #[arg(long)]
    endpoint: Vec<String>,
    /// Metadata, k=v (repeatable).
    #[arg(long = "meta")]
    metadata: Vec<String>,
    /// Tag / capability (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse)]
    ttl: Duration,
    /// How long to drain before deregistering on SIGTERM / SIGINT.
    #[arg(long, default_value = "0s", value_parser = crate::duration::parse)]
    drain: Duration,
    /// Local HTTP check: GET this URL, healthy on 2xx.
    #[arg(long, group = "check")]
    check_http: Option<String>,
    /// Local TCP check: connect to HOST:PORT.
    #[arg(long, group = "check")]
    check_tcp: Option<String>,
    /// Local gRPC check: grpc.health.v1 at HOST:PORT[/SERVICE].
    #[arg(long, group = "check")]
    check_grpc: Option<String>,
    #[arg(long, default_value = "2s", value_parser = crate::duration::parse)]
    check_interval: Duration,
    #[arg(long, default_value = "")]
    deregistration_handler: String,
    /// The process to supervise.
    #[arg(last = true)]
    command: Vec<String>,
}

impl AgentArgs {
    fn config(&self) -> anyhow::Result<AgentConfig> {
        let mut config = match (&self.config, &self.service, &self.id) {
            (Some(path), _, _) => AgentConfig::from_file(path)?,
            (None, Some(service), Some(id)) => AgentConfig {
                endpoints: Vec::new(),
                instances: vec![self.flag_instance(service, id)?],
            },
            _ => bail!("give --config FILE, or --service and --id for one instance"),
        };
        if !self.endpoints.is_empty() {
            config.endpoints = self.endpoints.clone();
        }
        if config.endpoints.is_empty() {
            config.endpoints = vec!["127.0.0.1:2379".into()];
        }
        config.check()?;
        Ok(config)
    }

    fn flag_instance(&self, service: &str, id: &str) -> anyhow::Result<AgentInstance> {
        let check = match (&self.check_http, &self.check_tcp, &self.check_grpc) {
            (Some(url), _, _) => Some((LocalKind::Http, url)),
            (_, Some(address), _) => Some((LocalKind::Tcp, address)),
            (_, _, Some(address)) => Some((LocalKind::Grpc, address)),
            _ => None,
        }
        .map(|(kind, target)| config::local_check(kind, target, self.check_interval, None));
        if let Some(check) = &check {
            roster_state::check::validate_check(check).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(AgentInstance {
            service: service.to_string(),
            id: id.to_string(),
            endpoints: self
                .endpoint
                .iter()
                .map(|e| parse_endpoint("--endpoint", e))
                .collect::<anyhow::Result<_>>()?,
            metadata: parse_metadata(&self.metadata)?,
            tags: self.tags.clone(),
            weight: 1,
            ttl: self.ttl,
            drain: self.drain,
            deregistration_handler: self.deregistration_handler.clone(),
            check,
        })
    }
}

/// How the agent's instances are to stop.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stop {
    Running,
    /// A stop signal: drain for each instance's period, then deregister.
    Drain,
    /// The supervised process is gone: deregister at once.
    Now,
}

pub async fn run(args: AgentArgs) -> anyhow::Result<std::process::ExitCode> {
    let config = args.config()?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut child = match args.command.split_first() {
        Some((program, rest)) => Some(
            tokio::process::Command::new(program)
                .args(rest)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot start {program:?}"))?,
        ),
        None => None,
    };
    let (stop_tx, stop) = watch::channel(Stop::Running);
    let mut tasks = JoinSet::new();
    let cluster = Target {
        endpoints: config.endpoints.clone(),
        user: args.user.clone(),
    };
    for instance in config.instances {
        tasks.spawn(keep(cluster.clone(), instance, stop.clone()));
    }
    let (child_status, received) = tokio::select! {
        _ = terminate.recv() => (None, "TERM"),
        _ = interrupt.recv() => (None, "INT"),
        status = wait(&mut child) => (Some(status?), ""),
    };
    if child_status.is_none() {
        eprintln!("roster agent: SIG{received}; draining");
    }
    let _ = stop_tx.send(if child_status.is_some() {
        Stop::Now
    } else {
        Stop::Drain
    });
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(e)) = done {
            eprintln!("roster agent: {e:#}");
        }
    }
    match child_status {
        Some(status) => {
            eprintln!("roster agent: the process exited ({status}); deregistered");
            Ok(std::process::ExitCode::from(
                status.code().unwrap_or(1).clamp(0, 255) as u8,
            ))
        }
        None => {
            if let Some(child) = &mut child {
                stop_child(child, received).await;
            }
            eprintln!("roster agent: deregistered; exiting");
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

/// The supervised process's exit (never, without one).
async fn wait(child: &mut Option<tokio::process::Child>) -> anyhow::Result<ExitStatus> {
    match child {
        Some(child) => Ok(child.wait().await?),
        None => std::future::pending().await,
    }
}

/// Passes the stop signal the agent got (`TERM` or `INT`) on to the
/// supervised process, then kills it if it is still there after 10 s.
async fn stop_child(child: &mut tokio::process::Child, signal: &str) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status();
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// The cluster an agent registers into, and who it is there.
#[derive(Clone)]
struct Target {
    endpoints: Vec<String>,
    user: Option<Credentials>,
}

/// Connects, retrying with backoff (and saying so) until it works or a stop comes.
async fn connect(target: &Target, stop: &mut watch::Receiver<Stop>) -> Option<Client> {
    let mut backoff = Duration::from_millis(200);
    loop {
        let endpoints = target.endpoints.clone();
        match Client::connect_as(endpoints, DEFAULT_RETRY_FOR, target.user.clone()).await {
            Ok(client) => return Some(client),
            Err(e) => eprintln!(
                "roster agent: cluster unreachable at {} ({e}); retrying in {backoff:?}",
                target.endpoints.join(",")
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return None,
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// One instance's life: wait for its check, register, report, stop.
async fn keep(
    target: Target,
    instance: AgentInstance,
    mut stop: watch::Receiver<Stop>,
) -> anyhow::Result<()> {
    let name = format!("{}/{}", instance.service, instance.id);
    let Some(client) = connect(&target, &mut stop).await else {
        return Ok(());
    };
    if let Some(check) = &instance.check {
        loop {
            let outcome = probe::run(check).await;
            if outcome.ok {
                break;
            }
            eprintln!(
                "roster agent: {name}: waiting for its check: {}",
                outcome.output
            );
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(check.interval_ms)) => {}
                _ = stop.changed() => return Ok(()),
            }
        }
    }
    let registration = register(&client, &instance, &mut stop).await;
    let Some(registration) = registration else {
        return Ok(());
    };
    eprintln!(
        "roster agent: {name}: registered on lease {:x}",
        registration.lease()
    );
    if let Some(check) = &instance.check {
        report_until_stop(&client, &instance, check, &mut stop).await;
    } else {
        while *stop.borrow() == Stop::Running {
            if stop.changed().await.is_err() {
                break;
            }
        }
    }
    let drain = match *stop.borrow() {
        Stop::Now => Duration::ZERO,
        _ => instance.drain,
    };
    registration
        .shutdown_with(drain)
        .await
        .with_context(|| format!("{name}: deregistration"))?;
    eprintln!("roster agent: {name}: deregistered");
    Ok(())
}

async fn register(
    client: &Client,
    instance: &AgentInstance,
    stop: &mut watch::Receiver<Stop>,
) -> Option<Registration> {
    let mut builder = InstanceBuilder::new(&instance.service, &instance.id)
        .weight(instance.weight)
        .deregistration_handler(&instance.deregistration_handler);
    for endpoint in &instance.endpoints {
        builder = builder.raw_endpoint(endpoint.clone());
    }
    for (k, v) in &instance.metadata {
        builder = builder.meta(k.clone(), v.clone());
    }
    for tag in &instance.tags {
        builder = builder.tag(tag.clone());
    }
    if let Some(check) = &instance.check {
        // Reported every interval; two missed reports are tolerated.
        builder = builder.check(Check {
            kind: CheckKind::Ttl as i32,
            interval_ms: (check.interval_ms * 3).max(1_000),
            ..Default::default()
        });
    }
    let options = RegistrationOptions {
        ttl: instance.ttl,
        drain: instance.drain,
    };
    loop {
        match client.register(builder.clone(), options.clone()).await {
            Ok(registration) => return Some(registration),
            Err(e) => eprintln!(
                "roster agent: {}/{}: cannot register ({e}); retrying",
                instance.service, instance.id
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return None,
        }
    }
}

/// Probes every interval and reports each result, until a stop.
async fn report_until_stop(
    client: &Client,
    instance: &AgentInstance,
    check: &roster_state::check::CheckSpec,
    stop: &mut watch::Receiver<Stop>,
) {
    let interval = Duration::from_millis(check.interval_ms);
    loop {
        let outcome = probe::run(check).await;
        let request = ReportCheckRequest {
            service: instance.service.clone(),
            id: instance.id.clone(),
            result: match outcome.ok {
                true => CheckResult::Pass,
                false => CheckResult::Fail,
            } as i32,
            output: outcome.output,
        };
        let reported = match client.registry().await {
            Ok(mut registry) => registry
                .report_check(request)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = reported {
            eprintln!(
                "roster agent: {}/{}: report not taken: {e}",
                instance.service, instance.id
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
    }
}
