//! One probe of an http, tcp or grpc check, bounded by the check's timeout,
//! answering healthy or not and a line of output for the record.
//!
//! The HTTP probe is a plain HTTP/1.1 `GET` (see `http1`). `https://` is not
//! supported yet: it needs the TLS stack that arrives with client TLS.

use std::time::Duration;

use roster_proto::grpc_health::health_check_response::ServingStatus;
use roster_proto::grpc_health::health_client::HealthClient;
use roster_proto::grpc_health::HealthCheckRequest;
use roster_state::check::{CheckKind, CheckSpec};

use crate::http1;
use tokio::net::TcpStream;

/// Most bytes of a body quoted in the output.
const QUOTED_BODY: usize = 256;

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub ok: bool,
    pub output: String,
}

impl Outcome {
    fn fail(output: impl Into<String>) -> Self {
        Outcome {
            ok: false,
            output: output.into(),
        }
    }
}

/// Runs one probe of `check` (not a TTL check: those are reported, not run).
pub async fn run(check: &CheckSpec) -> Outcome {
    let timeout = Duration::from_millis(check.timeout_ms);
    let probe = async {
        match check.kind {
            CheckKind::Http => http(&check.target, &check.expect_body).await,
            CheckKind::Tcp => tcp(&check.target).await,
            CheckKind::Grpc => {
                let (address, service) = check.address_and_service();
                grpc(address, service, timeout).await
            }
            CheckKind::Ttl => Outcome::fail("a ttl check is reported, not probed"),
        }
    };
    match tokio::time::timeout(timeout, probe).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::fail(format!(
            "{} {}: timed out after {} ms",
            kind_name(check.kind),
            check.target,
            check.timeout_ms
        )),
    }
}

fn kind_name(kind: CheckKind) -> &'static str {
    match kind {
        CheckKind::Http => "GET",
        CheckKind::Tcp => "TCP connect",
        CheckKind::Grpc => "gRPC health",
        CheckKind::Ttl => "TTL",
    }
}

async fn tcp(address: &str) -> Outcome {
    match TcpStream::connect(address).await {
        Ok(_) => Outcome {
            ok: true,
            output: format!("TCP connect {address}: success"),
        },
        Err(e) => Outcome::fail(format!("TCP connect {address}: {e}")),
    }
}

async fn grpc(address: &str, service: &str, timeout: Duration) -> Outcome {
    let what = format!("gRPC health {address}/{service}");
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{address}")) {
        Ok(endpoint) => endpoint.connect_timeout(timeout).timeout(timeout),
        Err(e) => return Outcome::fail(format!("{what}: {e}")),
    };
    let channel = match endpoint.connect().await {
        Ok(channel) => channel,
        Err(e) => return Outcome::fail(format!("{what}: connect: {e}")),
    };
    let request = HealthCheckRequest {
        service: service.to_string(),
    };
    match HealthClient::new(channel).check(request).await {
        Ok(answer) => {
            let status = answer.into_inner().status();
            Outcome {
                ok: status == ServingStatus::Serving,
                output: format!("{what}: {}", status.as_str_name()),
            }
        }
        Err(status) => Outcome::fail(format!("{what}: {:?}: {}", status.code(), status.message())),
    }
}

async fn http(url: &str, expect_body: &str) -> Outcome {
    let Some((address, host, path)) = http1::split_url(url) else {
        return Outcome::fail(format!("GET {url}: not an http:// URL"));
    };
    let answer = match http1::request(&address, host, "GET", path, None).await {
        Ok(answer) => answer,
        Err(e) => return Outcome::fail(format!("GET {url}: {e}")),
    };
    let Some((status, reason, body)) = http1::parse_answer(&answer) else {
        return Outcome::fail(format!("GET {url}: malformed HTTP answer"));
    };
    let body_ok = expect_body.is_empty() || body.contains(expect_body);
    let mut output = format!("GET {url}: {status} {reason}");
    if !body.is_empty() {
        let quoted: String = body.chars().take(QUOTED_BODY).collect();
        output.push_str(&format!("; body: {}", quoted.trim()));
    }
    if !body_ok {
        output.push_str(&format!("; expected body to contain {expect_body:?}"));
    }
    Outcome {
        ok: (200..300).contains(&status) && body_ok,
        output,
    }
}
