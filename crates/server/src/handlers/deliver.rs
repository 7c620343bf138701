//! One delivery of one event to one handler, bounded by the handler's
//! timeout: `Ok` if the handler took it, otherwise the reason (recorded with
//! the failure). A hung command is killed; a hung server is abandoned.

use std::process::Stdio;
use std::time::Duration;

use roster_state::handlers::{HandlerDef, HandlerKind};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::http1;

/// Most bytes of a command's output or a server's answer kept in a log line
/// or an error.
const QUOTED: usize = 512;

pub async fn deliver(handler: &HandlerDef, body: &str, allow_pipe: bool) -> Result<(), String> {
    let timeout = Duration::from_millis(handler.timeout_ms);
    let attempt = async {
        match handler.kind {
            HandlerKind::Pipe if !allow_pipe => Err(
                "pipe handlers are not allowed on this node (start it with --allow-pipe-handlers)"
                    .to_string(),
            ),
            HandlerKind::Pipe => pipe(handler, body).await,
            HandlerKind::Http => http(&handler.target, body).await,
        }
    };
    let result = match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("timed out after {} ms", handler.timeout_ms)),
    };
    let outcome = if result.is_ok() {
        "delivered"
    } else {
        "failed"
    };
    roster_metrics::HANDLER_DELIVERIES.add(outcome, 1);
    result
}

fn quote(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.trim().chars().take(QUOTED).collect()
}

/// `sh -c <command>` with the event on stdin; killed if dropped (timeout).
async fn pipe(handler: &HandlerDef, body: &str) -> Result<(), String> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(&handler.target)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start sh: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let mut line = body.as_bytes().to_vec();
        line.push(b'\n');
        // A command that does not read its input is its own business.
        let _ = stdin.write_all(&line).await;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| format!("waiting for the command: {e}"))?;
    let mut text = quote(&output.stdout);
    let stderr = quote(&output.stderr);
    if !stderr.is_empty() {
        text = format!("{text} {stderr}").trim().to_string();
    }
    let code = output.status.code();
    tracing::info!(handler = %handler.name, ?code, output = %text, "handlers: pipe ran");
    match output.status.success() {
        true => Ok(()),
        false => Err(format!("exit status {:?}: {text}", code)),
    }
}

async fn http(url: &str, body: &str) -> Result<(), String> {
    let (address, host, path) =
        http1::split_url(url).ok_or_else(|| format!("not an http:// URL: {url}"))?;
    let content = Some(("application/json", body.as_bytes()));
    let answer = http1::request(&address, host, "POST", path, content)
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let (status, reason, answer_body) =
        http1::parse_answer(&answer).ok_or_else(|| format!("POST {url}: malformed HTTP answer"))?;
    match (200..300).contains(&status) {
        true => Ok(()),
        false => Err(format!(
            "POST {url}: {status} {reason} {}",
            quote(answer_body.as_bytes())
        )),
    }
}
