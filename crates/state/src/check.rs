//! Health-check definitions: what an instance registers so that the registry can
//! tell whether it works, not only whether it runs.
//!
//! A definition is part of the instance's spec (so it is replicated, survives
//! failover and is updated by re-registering); running the checks is the
//! leader's job (the server's `health` module), which proposes only the health
//! *changes* (`SetHealth`) and the removals (`RemoveUnhealthy`). Nothing here
//! runs a check: this is the shape and the rules of a valid definition.
//!
//! The type is flat (a kind and a target string rather than an enum with
//! payloads) because the same value travels as bincode in the log, as JSON in
//! the record and as protobuf on the wire, and a flat struct reads the same in
//! all three.

use serde::{Deserialize, Serialize};

use crate::error::StateError;

/// Longest check target (URL or address) or expected body, in bytes.
pub const MAX_CHECK_TEXT: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// `GET target` (an `http://` URL): healthy on a 2xx answer whose body holds
    /// `expect_body` (if not empty).
    Http,
    /// Connect to `target` (`HOST:PORT`): healthy if the connection opens.
    Tcp,
    /// `grpc.health.v1.Health/Check` at `target` (`HOST:PORT[/SERVICE]`):
    /// healthy on `SERVING`.
    Grpc,
    /// The instance (or its agent) reports pass, warn or fail at least every
    /// `interval_ms`; no report in time is a failure.
    Ttl,
}

/// One health check of an instance. Thresholds count consecutive probe results:
/// `failures_before_warning` failures make it warning, `failures_before_critical`
/// make it critical, `successes_before_passing` successes make it passing again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSpec {
    pub kind: CheckKind,
    /// URL (http), `HOST:PORT` (tcp), `HOST:PORT[/SERVICE]` (grpc), empty (ttl).
    pub target: String,
    /// http: a substring the body must contain; empty: any body.
    pub expect_body: String,
    /// Time between probes; for a TTL check, the report deadline.
    pub interval_ms: u64,
    /// Longest a probe may take (at most the interval); unused by TTL checks.
    pub timeout_ms: u64,
    pub failures_before_warning: u32,
    pub failures_before_critical: u32,
    pub successes_before_passing: u32,
    /// Remove the instance (reason `health`) once it has been critical this
    /// long; 0: never.
    pub deregister_critical_after_ms: u64,
}

impl CheckSpec {
    /// A check of `kind` at `target` with the defaults: every 10 s, a 5 s
    /// timeout, warning after 1 failure, critical after 3, passing after 1
    /// success, never removed for being critical.
    pub fn new(kind: CheckKind, target: impl Into<String>) -> Self {
        CheckSpec {
            kind,
            target: target.into(),
            expect_body: String::new(),
            interval_ms: 10_000,
            timeout_ms: 5_000,
            failures_before_warning: 1,
            failures_before_critical: 3,
            successes_before_passing: 1,
            deregister_critical_after_ms: 0,
        }
    }

    /// The `HOST:PORT` a tcp or grpc check connects to, and the gRPC service
    /// name (empty: the server as a whole).
    pub fn address_and_service(&self) -> (&str, &str) {
        match self.target.split_once('/') {
            Some((address, service)) => (address, service),
            None => (&self.target, ""),
        }
    }
}

/// Everything that makes a definition unusable, found before it is stored.
pub fn validate_check(check: &CheckSpec) -> Result<(), StateError> {
    let invalid = |why: String| Err(StateError::InvalidCheck(why));
    if check.interval_ms == 0 {
        return invalid("interval must be positive".into());
    }
    if check.kind != CheckKind::Ttl
        && (check.timeout_ms == 0 || check.timeout_ms > check.interval_ms)
    {
        return invalid(format!(
            "timeout {} ms must be positive and at most the interval {} ms",
            check.timeout_ms, check.interval_ms
        ));
    }
    if check.failures_before_critical == 0 || check.successes_before_passing == 0 {
        return invalid(
            "failures_before_critical and successes_before_passing must be at least 1".into(),
        );
    }
    if check.failures_before_warning == 0
        || check.failures_before_warning > check.failures_before_critical
    {
        return invalid(format!(
            "failures_before_warning must be from 1 to failures_before_critical ({})",
            check.failures_before_critical
        ));
    }
    if check.target.len() > MAX_CHECK_TEXT || check.expect_body.len() > MAX_CHECK_TEXT {
        return invalid(format!(
            "target and expected body are limited to {MAX_CHECK_TEXT} bytes"
        ));
    }
    validate_target(check)
}

fn validate_target(check: &CheckSpec) -> Result<(), StateError> {
    let bad = |what: &str| {
        Err(StateError::InvalidCheck(format!(
            "{what}, not {:?}",
            check.target.chars().take(64).collect::<String>()
        )))
    };
    match check.kind {
        CheckKind::Http => match check.target.strip_prefix("http://") {
            Some(rest) if host_port(rest.split('/').next().unwrap_or_default(), true) => Ok(()),
            _ => bad("an http check needs an http://HOST[:PORT]/PATH URL"),
        },
        CheckKind::Tcp if host_port(&check.target, false) => Ok(()),
        CheckKind::Tcp => bad("a tcp check needs HOST:PORT"),
        CheckKind::Grpc if host_port(check.address_and_service().0, false) => Ok(()),
        CheckKind::Grpc => bad("a grpc check needs HOST:PORT[/SERVICE]"),
        CheckKind::Ttl if check.target.is_empty() => Ok(()),
        CheckKind::Ttl => bad("a ttl check has no target"),
    }
}

/// `HOST:PORT` (or bare `HOST` if `port_optional`) with a non-empty host
/// without spaces and a port from 1 to 65535; an IPv6 host in brackets
/// (`[::1]:9`), since a bare one cannot be told from its port.
fn host_port(text: &str, port_optional: bool) -> bool {
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (text, None),
    };
    let port_ok = match port {
        Some(port) => port.parse::<u16>().is_ok_and(|p| p != 0),
        None => port_optional,
    };
    let bracketed = host.starts_with('[') && host.ends_with(']') && host.len() > 2;
    port_ok
        && !host.is_empty()
        && !host.contains(char::is_whitespace)
        && (bracketed || !host.contains([':', '[', ']']))
}
