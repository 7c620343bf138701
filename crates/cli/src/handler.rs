//! `roster handler ...`: define handlers, choose the cluster-wide ones, list
//! them, and read the events that could not be delivered.

use std::time::Duration;

use clap::{Args, Subcommand};
use roster_proto::registry::handlers_client::HandlersClient;
use roster_proto::registry::{
    DeleteHandlerRequest, Handler, HandlerFailuresRequest, HandlerKind, ListHandlersRequest,
    SetHandlerRequest, UseHandlerRequest,
};
use serde_json::{json, Value};

use crate::service::{connect_channel, print, status_error, Connection, Output};

#[derive(Args, Debug)]
pub struct HandlerArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: HandlerCommand,
}

#[derive(Subcommand, Debug)]
enum HandlerCommand {
    /// Define (or replace) a handler.
    Set {
        name: String,
        /// Run this command on the leader (sh -c), the event as JSON on stdin.
        /// Needs every server started with --allow-pipe-handlers.
        #[arg(long, group = "kind", required = true)]
        pipe: Option<String>,
        /// POST the event as JSON to this http:// URL.
        #[arg(long, group = "kind", required = true)]
        http: Option<String>,
        /// Per delivery attempt [default: 10s].
        #[arg(long, value_parser = crate::duration::parse)]
        timeout: Option<Duration>,
        /// Attempts before the event is recorded as failed [default: 5].
        #[arg(long)]
        max_attempts: Option<u32>,
    },
    /// Handlers, the cluster-wide ones, and how many events wait.
    List,
    /// Delete a handler (not while it is a cluster-wide one).
    Delete { name: String },
    /// Events every delivery attempt failed for.
    Failures,
    /// Make NAME the cluster-wide handler of registration, deregistration or
    /// keepalive-failure events (--none: no handler).
    Use {
        event: String,
        #[arg(required_unless_present = "none")]
        name: Option<String>,
        #[arg(long, conflicts_with = "name")]
        none: bool,
    },
}

pub async fn run_handler(args: HandlerArgs) -> anyhow::Result<()> {
    let output = args.connection.output;
    let mut client = HandlersClient::new(connect_channel(&args.connection).await?);
    match args.command {
        HandlerCommand::Set {
            name,
            pipe,
            http,
            timeout,
            max_attempts,
        } => {
            let (kind, target) = match (pipe, http) {
                (Some(command), _) => (HandlerKind::Pipe, command),
                (_, Some(url)) => (HandlerKind::Http, url),
                // clap requires one of the group.
                (None, None) => anyhow::bail!("give --pipe COMMAND or --http URL"),
            };
            let handler = Handler {
                name: name.clone(),
                kind: kind as i32,
                target,
                timeout_ms: timeout.map_or(0, |d| d.as_millis() as u64),
                max_attempts: max_attempts.unwrap_or(0),
            };
            let request = SetHandlerRequest {
                handler: Some(handler),
            };
            let answer = client.set_handler(request).await.map_err(status_error)?;
            changed(
                output,
                &format!("handler {name} set"),
                answer.into_inner().revision,
            );
        }
        HandlerCommand::Delete { name } => {
            let request = DeleteHandlerRequest { name: name.clone() };
            let answer = client.delete_handler(request).await.map_err(status_error)?;
            changed(
                output,
                &format!("handler {name} deleted"),
                answer.into_inner().revision,
            );
        }
        HandlerCommand::Use { event, name, none } => {
            let name = if none {
                String::new()
            } else {
                name.unwrap_or_default()
            };
            let request = UseHandlerRequest {
                event: event.clone(),
                name: name.clone(),
            };
            let answer = client.use_handler(request).await.map_err(status_error)?;
            let what = match name.is_empty() {
                true => format!("no {event} handler"),
                false => format!("{event} events go to {name}"),
            };
            changed(output, &what, answer.into_inner().revision);
        }
        HandlerCommand::List => list(&mut client, output).await?,
        HandlerCommand::Failures => failures(&mut client, output).await?,
    }
    Ok(())
}

fn changed(output: Output, what: &str, revision: i64) {
    print(output, json!({"revision": revision}), || {
        format!("{what} at revision {revision}")
    });
}

fn kind_name(kind: i32) -> &'static str {
    match HandlerKind::try_from(kind) {
        Ok(HandlerKind::Pipe) => "pipe",
        Ok(HandlerKind::Http) => "http",
        _ => "?",
    }
}

async fn list(
    client: &mut HandlersClient<roster_client::AuthChannel>,
    output: Output,
) -> anyhow::Result<()> {
    let answer = client
        .list_handlers(ListHandlersRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    if output == Output::Json {
        let handlers: Vec<Value> = answer
            .handlers
            .iter()
            .map(|h| {
                json!({"name": h.name, "kind": kind_name(h.kind), "target": h.target,
                       "timeout_ms": h.timeout_ms, "max_attempts": h.max_attempts})
            })
            .collect();
        let uses: serde_json::Map<String, Value> = answer
            .uses
            .iter()
            .map(|u| (u.event.clone(), json!(u.name)))
            .collect();
        println!(
            "{}",
            json!({"handlers": handlers, "uses": uses, "undelivered": answer.undelivered})
        );
        return Ok(());
    }
    println!(
        "{:<16} {:<5} {:<9} {:<8} TARGET",
        "NAME", "KIND", "TIMEOUT", "ATTEMPTS"
    );
    for h in &answer.handlers {
        println!(
            "{:<16} {:<5} {:<9} {:<8} {}",
            h.name,
            kind_name(h.kind),
            format!("{}ms", h.timeout_ms),
            h.max_attempts,
            h.target
        );
    }
    for u in &answer.uses {
        println!("{} events go to {}", u.event, u.name);
    }
    println!("{} event(s) waiting for delivery", answer.undelivered);
    Ok(())
}

async fn failures(
    client: &mut HandlersClient<roster_client::AuthChannel>,
    output: Output,
) -> anyhow::Result<()> {
    let answer = client
        .handler_failures(HandlerFailuresRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    if output == Output::Table {
        println!("{:<8} {:<16} {:<8} ERROR", "EVENT", "HANDLER", "ATTEMPTS");
    }
    for f in answer.failures {
        let event: Value = serde_json::from_str(&f.event_json).unwrap_or(Value::Null);
        print(
            output,
            json!({"event_id": f.event_id, "handler": f.handler, "attempts": f.attempts,
                   "error": f.error, "failed_at_ms": f.failed_at_ms, "event": event}),
            || {
                format!(
                    "{:<8} {:<16} {:<8} {}",
                    f.event_id, f.handler, f.attempts, f.error
                )
            },
        );
    }
    Ok(())
}
