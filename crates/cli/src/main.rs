//! The `roster` binary: a thin shell over `roster-server`. It parses flags (etcd's
//! names for `serve`), sets up tracing (process-global state belongs here, not in
//! the library), and runs the chosen command.

mod agent;
mod bench;
mod bench_expiry;
mod bench_failover;
mod bench_health;
mod bench_kv;
mod bench_registry;
mod bench_rotor;
mod bench_scale;
mod bench_storm;
mod check;
mod dev;
mod duration;
mod handler;
mod ops;
mod serve;
mod service;
mod snapshot;
mod status;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: the write path allocates and frees many
/// short-lived buffers on several threads (sled pages, gRPC frames, entries),
/// and glibc spent about a sixth of a node's CPU in malloc, free and
/// consolidation under a put load (perf, docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "roster",
    version,
    about = "Roster: a replicated service registry that speaks the etcd v3 API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node (etcd's flag names). With no flags: a one-node cluster on
    /// 127.0.0.1:2379 (clients) and 2380 (peers), data in ./default.roster.
    Serve(Box<serve::ServeArgs>),
    /// Run a local 3-node cluster (three `roster serve` processes) until Ctrl-C.
    Dev(dev::DevArgs),
    /// Measure a cluster through the etcd API (works against etcd too).
    Bench(bench::BenchArgs),
    /// The service registry: register, deregister, drain, force-deregister, list, watch.
    Service(service::ServiceArgs),
    /// Handlers told of registrations and deregistrations: set, list, delete, use, failures.
    Handler(handler::HandlerArgs),
    /// Keep instances registered for a process that knows nothing of Roster
    /// (drain and deregister on SIGTERM); optionally supervise it (-- COMMAND).
    Agent(Box<agent::AgentArgs>),
    /// Report a ttl health check: pass, warn, fail.
    Check(check::CheckCommandArgs),
    /// The audit log of forced removals.
    Audit(service::AuditArgs),
    /// Keys and values through the etcd API: get, put, del, watch.
    Kv(ops::KvArgs),
    /// Leases: grant, keepalive, revoke, ttl, list.
    Lease(ops::LeaseArgs),
    /// Cluster members: list.
    Member(ops::MemberArgs),
    /// Every member: role, term, indexes, lag behind the leader, data size.
    Status(status::StatusArgs),
    /// Backups: save one from a member, show what one holds, restore one
    /// into the data dir of a member of a new cluster.
    Snapshot(snapshot::SnapshotArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("roster: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let done = match cli.command {
            // The agent exits with its supervised process's code.
            Command::Agent(args) => return agent::run(*args).await,
            Command::Serve(args) => serve::run(*args).await,
            Command::Dev(args) => dev::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Service(args) => service::run_service(args).await,
            Command::Check(args) => check::run_check(args).await,
            Command::Handler(args) => handler::run_handler(args).await,
            Command::Audit(args) => service::run_audit(args).await,
            Command::Kv(args) => ops::run_kv(args).await,
            Command::Lease(args) => ops::run_lease(args).await,
            Command::Member(args) => ops::run_member(args).await,
            Command::Status(args) => status::run_status(args).await,
            Command::Snapshot(args) => snapshot::run_snapshot(args).await,
        };
        done.map(|()| std::process::ExitCode::SUCCESS)
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("roster: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
