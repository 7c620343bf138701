//! Health checks from the shell: the check flags of `roster service register`
//! and `roster check pass|warn|fail`, which reports a ttl check.

use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use roster_proto::registry::{Check, CheckKind, CheckResult, ReportCheckRequest};

use crate::service::{connect, health_name, status_error, Connection, Output, Which};

/// The check flags of `roster service register` (at most one kind).
#[derive(Args, Debug, Default)]
pub struct CheckArgs {
    /// HTTP check: GET this http:// URL, healthy on 2xx.
    #[arg(long, group = "check_kind")]
    check_http: Option<String>,
    /// TCP check: connect to HOST:PORT.
    #[arg(long, group = "check_kind")]
    check_tcp: Option<String>,
    /// gRPC check: grpc.health.v1 Check at HOST:PORT[/SERVICE], healthy on SERVING.
    #[arg(long, group = "check_kind")]
    check_grpc: Option<String>,
    /// TTL check: the instance reports (`roster check pass|warn|fail`) at
    /// least this often, or turns critical.
    #[arg(long, group = "check_kind", value_parser = crate::duration::parse)]
    check_ttl: Option<Duration>,
    /// HTTP check: the body must contain this text.
    #[arg(long, requires = "check_http")]
    check_body: Option<String>,
    /// Time between probes [default: 10s].
    #[arg(long, value_parser = crate::duration::parse, requires = "check_kind")]
    check_interval: Option<Duration>,
    /// Longest a probe may take [default: 5s, at most the interval].
    #[arg(long, value_parser = crate::duration::parse, requires = "check_kind")]
    check_timeout: Option<Duration>,
    /// Consecutive failures before warning [default: 1].
    #[arg(long, requires = "check_kind")]
    failures_before_warning: Option<u32>,
    /// Consecutive failures before critical [default: 3].
    #[arg(long, requires = "check_kind")]
    failures_before_critical: Option<u32>,
    /// Consecutive successes before passing again [default: 1].
    #[arg(long, requires = "check_kind")]
    successes_before_passing: Option<u32>,
    /// Remove the instance (reason health) once critical this long [default: never].
    #[arg(long, value_parser = crate::duration::parse, requires = "check_kind")]
    deregister_critical_after: Option<Duration>,
}

fn millis(duration: Option<Duration>) -> u64 {
    duration.map_or(0, |d| d.as_millis() as u64)
}

impl CheckArgs {
    /// The check the flags define, if any (zeros: the server's defaults).
    pub fn to_proto(&self) -> anyhow::Result<Option<Check>> {
        let (kind, target) = match (
            &self.check_http,
            &self.check_tcp,
            &self.check_grpc,
            self.check_ttl,
        ) {
            (Some(url), _, _, _) => (CheckKind::Http, url.clone()),
            (_, Some(address), _, _) => (CheckKind::Tcp, address.clone()),
            (_, _, Some(address), _) => (CheckKind::Grpc, address.clone()),
            (_, _, _, Some(_)) => {
                if self.check_interval.is_some() {
                    bail!(
                        "--check-interval does not apply to --check-ttl (the TTL is the deadline)"
                    );
                }
                (CheckKind::Ttl, String::new())
            }
            _ => return Ok(None),
        };
        let interval = match kind {
            CheckKind::Ttl => self.check_ttl,
            _ => self.check_interval,
        };
        if interval == Some(Duration::ZERO) {
            bail!("the check interval must be positive");
        }
        Ok(Some(Check {
            kind: kind as i32,
            target,
            expect_body: self.check_body.clone().unwrap_or_default(),
            interval_ms: millis(interval),
            timeout_ms: millis(self.check_timeout),
            failures_before_warning: self.failures_before_warning.unwrap_or(0),
            failures_before_critical: self.failures_before_critical.unwrap_or(0),
            successes_before_passing: self.successes_before_passing.unwrap_or(0),
            deregister_critical_after_ms: millis(self.deregister_critical_after),
        }))
    }
}

/// (No `-o`: `--output` is the check's output text here, as the CLI
/// names it; the answer is one line.)
#[derive(Args, Debug)]
pub struct CheckCommandArgs {
    /// Client endpoints, host:port (comma-separated), tried in order.
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:2379",
        value_delimiter = ','
    )]
    endpoints: Vec<String>,
    #[command(subcommand)]
    command: CheckCommand,
}

#[derive(Args, Debug)]
struct ReportArgs {
    #[command(flatten)]
    which: Which,
    /// Kept with a health change (cut to 1 KiB).
    #[arg(long, default_value = "")]
    output: String,
}

#[derive(Subcommand, Debug)]
enum CheckCommand {
    /// Report a ttl check passing (and restart its deadline).
    Pass(ReportArgs),
    /// Report a ttl check warning.
    Warn(ReportArgs),
    /// Report a ttl check failing (critical).
    Fail(ReportArgs),
}

pub async fn run_check(args: CheckCommandArgs) -> anyhow::Result<()> {
    let (result, report) = match args.command {
        CheckCommand::Pass(r) => (CheckResult::Pass, r),
        CheckCommand::Warn(r) => (CheckResult::Warn, r),
        CheckCommand::Fail(r) => (CheckResult::Fail, r),
    };
    let connection = Connection {
        endpoints: args.endpoints,
        output: Output::Table,
        ..Connection::default()
    };
    let mut client = connect(&connection).await?;
    let request = ReportCheckRequest {
        service: report.which.service.clone(),
        id: report.which.id.clone(),
        result: result as i32,
        output: report.output,
    };
    let answer = client
        .report_check(request)
        .await
        .map_err(status_error)?
        .into_inner();
    let health = health_name(answer.health);
    println!("{}/{} is {health}", report.which.service, report.which.id);
    Ok(())
}
