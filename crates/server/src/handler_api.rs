//! `roster.v1.Handlers`: defining handlers, choosing the cluster-wide ones,
//! and reading what could not be delivered. Each change is one command; what
//! the state machine cannot judge (whether every member allows pipe
//! handlers, whether a pipe command exists) is checked here first, on the
//! node that takes the request, so a bad definition is refused at once.

use std::path::Path;

use roster_proto::registry::handlers_server::Handlers;
use roster_proto::registry::{
    ChangeResponse, DeleteHandlerRequest, Handler as PbHandler, HandlerFailure,
    HandlerFailuresRequest, HandlerFailuresResponse, HandlerKind as PbKind, HandlerUse,
    ListHandlersRequest, ListHandlersResponse, SetHandlerRequest, UseHandlerRequest,
};
use roster_state::auth::Caller;
use roster_state::handlers::{validate_handler, HandlerDef, HandlerKind};
use roster_state::Command;
use tonic::{Request, Response as GrpcResponse, Status};

use crate::etcd::{fail_engine, state_status, EtcdApi};
use crate::handlers::{event_json, parse_event_type};

/// Default timeout and attempts of a handler that gives none.
const DEFAULT_TIMEOUT_MS: u64 = 10_000;
const DEFAULT_MAX_ATTEMPTS: u32 = 5;

#[derive(Clone)]
pub struct HandlerApi {
    api: EtcdApi,
}

impl HandlerApi {
    pub fn new(api: EtcdApi) -> Self {
        HandlerApi { api }
    }

    /// Proposes a handler change sent by `caller` (root only, while auth is on).
    async fn change(
        &self,
        caller: Option<Caller>,
        command: Command,
    ) -> Result<GrpcResponse<ChangeResponse>, Status> {
        let revision = self
            .api
            .write_mapped(caller, command, crate::etcd::roster_status)
            .await?
            .revision();
        Ok(GrpcResponse::new(ChangeResponse { revision }))
    }

    /// Pipe handlers run commands on the servers: every member must allow it.
    fn check_pipe_allowed(&self) -> Result<(), Status> {
        let voters: Vec<u64> = {
            let metrics = self.api.raft.metrics();
            let m = metrics.borrow();
            m.membership_config.membership().voter_ids().collect()
        };
        let members = self.api.read(|sm| sm.members().map_err(fail_engine))?;
        let refusing: Vec<String> = voters
            .iter()
            .filter(|id| {
                !members
                    .iter()
                    .any(|m| m.id == **id && m.allow_pipe_handlers)
            })
            .map(|id| {
                members
                    .iter()
                    .find(|m| m.id == *id)
                    .map_or_else(|| format!("{id:x}"), |m| m.name.clone())
            })
            .collect();
        match refusing.is_empty() {
            true => Ok(()),
            false => Err(Status::failed_precondition(format!(
                "roster: pipe handlers need every member started with --allow-pipe-handlers; \
                 these are not: {}",
                refusing.join(", ")
            ))),
        }
    }
}

fn to_def(handler: PbHandler) -> Result<HandlerDef, Status> {
    let kind = match PbKind::try_from(handler.kind) {
        Ok(PbKind::Pipe) => HandlerKind::Pipe,
        Ok(PbKind::Http) => HandlerKind::Http,
        _ => {
            return Err(Status::invalid_argument(format!(
                "handler.kind {} is not pipe or http",
                handler.kind
            )))
        }
    };
    let or = |value: u64, default: u64| if value == 0 { default } else { value };
    Ok(HandlerDef {
        name: handler.name,
        kind,
        target: handler.target,
        timeout_ms: or(handler.timeout_ms, DEFAULT_TIMEOUT_MS),
        max_attempts: match handler.max_attempts {
            0 => DEFAULT_MAX_ATTEMPTS,
            n => n,
        },
    })
}

fn to_proto(def: HandlerDef) -> PbHandler {
    let kind = match def.kind {
        HandlerKind::Pipe => PbKind::Pipe,
        HandlerKind::Http => PbKind::Http,
    };
    PbHandler {
        name: def.name,
        kind: kind as i32,
        target: def.target,
        timeout_ms: def.timeout_ms,
        max_attempts: def.max_attempts,
    }
}

/// The program a pipe command starts, if it can be found on this node's
/// `PATH` (or at its path); an error naming it otherwise. A command starting
/// with a variable assignment is not checked.
fn check_program(command: &str) -> Result<(), Status> {
    let Some(program) = command.split_whitespace().next() else {
        return Err(Status::invalid_argument(
            "roster: a pipe handler needs a command",
        ));
    };
    if program.contains('=') {
        return Ok(());
    }
    let found = if program.contains('/') {
        Path::new(program).is_file()
    } else {
        std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|dir| dir.join(program).is_file())
        })
    };
    match found {
        true => Ok(()),
        false => Err(Status::invalid_argument(format!(
            "roster: pipe handler command {program:?} not found on this server's PATH"
        ))),
    }
}

#[tonic::async_trait]
impl Handlers for HandlerApi {
    async fn set_handler(
        &self,
        req: Request<SetHandlerRequest>,
    ) -> Result<GrpcResponse<ChangeResponse>, Status> {
        let caller = self.api.caller(&req)?;
        let handler = req
            .into_inner()
            .handler
            .ok_or_else(|| Status::invalid_argument("handler: required"))?;
        let def = to_def(handler)?;
        validate_handler(&def).map_err(|e| state_status(&e))?;
        if def.kind == HandlerKind::Pipe {
            self.check_pipe_allowed()?;
            check_program(&def.target)?;
        }
        self.change(caller, Command::SetHandler(def)).await
    }

    async fn delete_handler(
        &self,
        req: Request<DeleteHandlerRequest>,
    ) -> Result<GrpcResponse<ChangeResponse>, Status> {
        let caller = self.api.caller(&req)?;
        let name = req.into_inner().name;
        self.change(caller, Command::DeleteHandler { name }).await
    }

    async fn use_handler(
        &self,
        req: Request<UseHandlerRequest>,
    ) -> Result<GrpcResponse<ChangeResponse>, Status> {
        let caller = self.api.caller(&req)?;
        let req = req.into_inner();
        let event = parse_event_type(&req.event).ok_or_else(|| {
            Status::invalid_argument(format!(
                "event {:?}: expected registration, deregistration or keepalive-failure",
                req.event
            ))
        })?;
        let command = Command::UseHandler {
            event,
            name: req.name,
        };
        self.change(caller, command).await
    }

    async fn list_handlers(
        &self,
        req: Request<ListHandlersRequest>,
    ) -> Result<GrpcResponse<ListHandlersResponse>, Status> {
        // Handler targets (URLs, commands) are configuration: root only.
        let caller = self.api.caller(&req)?;
        self.api
            .authorize_admin_mapped(caller.as_ref(), crate::etcd::roster_status)?;
        self.api.before_read(false).await?;
        let (handlers, uses, undelivered, revision) = self.api.read(|sm| {
            Ok((
                sm.handlers().map_err(fail_engine)?,
                sm.handler_uses().map_err(fail_engine)?,
                sm.outbox(usize::MAX).map_err(fail_engine)?.len(),
                sm.revision(),
            ))
        })?;
        Ok(GrpcResponse::new(ListHandlersResponse {
            revision,
            handlers: handlers.into_iter().map(to_proto).collect(),
            uses: uses
                .into_iter()
                .map(|(event, name)| HandlerUse {
                    event: event.name().to_string(),
                    name,
                })
                .collect(),
            undelivered: undelivered as u64,
        }))
    }

    async fn handler_failures(
        &self,
        req: Request<HandlerFailuresRequest>,
    ) -> Result<GrpcResponse<HandlerFailuresResponse>, Status> {
        // Handler targets (URLs, commands) are configuration: root only.
        let caller = self.api.caller(&req)?;
        self.api
            .authorize_admin_mapped(caller.as_ref(), crate::etcd::roster_status)?;
        self.api.before_read(false).await?;
        let (failures, revision) = self
            .api
            .read(|sm| Ok((sm.delivery_failures().map_err(fail_engine)?, sm.revision())))?;
        Ok(GrpcResponse::new(HandlerFailuresResponse {
            revision,
            failures: failures
                .into_iter()
                .map(|f| HandlerFailure {
                    event_id: f.event.id,
                    handler: f.event.handler.clone(),
                    event_json: event_json(&f.event).to_string(),
                    attempts: f.attempts,
                    error: f.error,
                    failed_at_ms: f.failed_at_ms,
                })
                .collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_programs_are_looked_up_on_the_path() {
        assert!(check_program("sh -c 'cat'").is_ok());
        assert!(check_program("/bin/sh").is_ok());
        assert!(check_program("FOO=1 anything").is_ok());
        let missing = check_program("no-such-program-here --flag").expect_err("missing");
        assert!(missing
            .message()
            .contains("\"no-such-program-here\" not found"));
        assert!(check_program("   ").is_err());
    }
}
