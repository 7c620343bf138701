//! One probe of an http, tcp or grpc check, bounded by the check's timeout,
//! answering healthy or not and a line of output for the record.
//!
//! The HTTP probe is a plain HTTP/1.1 `GET` with `Connection: close` written
//! here (no client library: a status line, a few headers and a bounded body
//! are all a health check needs). `https://` is not supported yet: it needs
//! the TLS stack that arrives with client TLS.

use std::time::Duration;

use roster_proto::grpc_health::health_check_response::ServingStatus;
use roster_proto::grpc_health::health_client::HealthClient;
use roster_proto::grpc_health::HealthCheckRequest;
use roster_state::check::{CheckKind, CheckSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most bytes of an HTTP answer read (status, headers and body).
const MAX_ANSWER: usize = 64 * 1024;
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

/// An `http://host[:port][/path]` URL split into the address to connect to,
/// the `Host` header and the request path.
fn split_url(url: &str) -> Option<(String, &str, &str)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.contains(']'));
    let address = match has_port {
        true => authority.to_string(),
        false => format!("{authority}:80"),
    };
    Some((address, authority, path))
}

async fn http(url: &str, expect_body: &str) -> Outcome {
    let Some((address, host, path)) = split_url(url) else {
        return Outcome::fail(format!("GET {url}: not an http:// URL"));
    };
    let answer = match fetch(&address, host, path).await {
        Ok(answer) => answer,
        Err(e) => return Outcome::fail(format!("GET {url}: {e}")),
    };
    let Some((status, reason, body)) = parse_answer(&answer) else {
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

async fn fetch(address: &str, host: &str, path: &str) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: roster-health-check\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 8192];
    while answer.len() < MAX_ANSWER {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
        if answer_complete(&answer) {
            break;
        }
    }
    Ok(answer)
}

/// Whether `answer` holds its whole body by its `Content-Length`, so a server
/// that keeps the connection open need not be waited for.
fn answer_complete(answer: &[u8]) -> bool {
    let Some(head_end) = find(answer, b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&answer[..head_end]);
    header(&head, "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|len| answer.len() >= head_end + 4 + len)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Status code, reason phrase and (de-chunked, lossily decoded) body.
fn parse_answer(answer: &[u8]) -> Option<(u16, String, String)> {
    let head_end = find(answer, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&answer[..head_end]);
    let status_line = head.lines().next()?;
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    let reason = parts.next().unwrap_or_default().to_string();
    let raw = &answer[head_end + 4..];
    let chunked = header(&head, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = match chunked {
        true => dechunk(raw),
        false => raw.to_vec(),
    };
    Some((status, reason, String::from_utf8_lossy(&body).into_owned()))
}

/// The data of a chunked body (as much as arrived).
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(line_end) = find(raw, b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let Ok(size) = usize::from_str_radix(size_hex, 16) else {
            break;
        };
        let data = &raw[line_end + 2..];
        if size == 0 || data.len() < size {
            body.extend_from_slice(&data[..size.min(data.len())]);
            break;
        }
        body.extend_from_slice(&data[..size]);
        raw = data.get(size + 2..).unwrap_or_default();
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_address_host_and_path() {
        assert_eq!(
            split_url("http://10.0.0.1:8080/healthz?x=1"),
            Some(("10.0.0.1:8080".into(), "10.0.0.1:8080", "/healthz?x=1"))
        );
        assert_eq!(
            split_url("http://example"),
            Some(("example:80".into(), "example", "/"))
        );
        assert_eq!(split_url("https://example/"), None);
    }

    #[test]
    fn answers_parse_with_length_or_chunks() {
        let plain = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown";
        assert!(answer_complete(plain));
        assert_eq!(
            parse_answer(plain),
            Some((503, "Service Unavailable".into(), "down".into()))
        );
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nall \r\n2;x=y\r\nok\r\n0\r\n\r\n";
        assert!(!answer_complete(chunked));
        assert_eq!(
            parse_answer(chunked),
            Some((200, "OK".into(), "all ok".into()))
        );
        assert_eq!(parse_answer(b"SSH-2.0-OpenSSH\r\n\r\n"), None);
    }
}
