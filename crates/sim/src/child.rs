//! One simulated run in a child process of its own, watched from outside.
//!
//! A run replays exactly only as the first of its process (see
//! [`Summary::LINE_PREFIX`]), and a regression that stops virtual time would
//! spin for ever, so the CI test and the soak both run each seed as a child:
//! its output is read while it runs (a full pipe cannot block it), its real
//! time is bounded, and its summary line is parsed back.

use std::io::Read;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::cluster::Summary;

/// What a child run left.
#[derive(Debug)]
pub struct ChildRun {
    /// Its summary, if it printed one.
    pub summary: Option<Summary>,
    /// The last lines of its stderr (a panic message, for one).
    pub stderr_tail: String,
    /// It was still running after the limit, and was killed.
    pub timed_out: bool,
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Runs `command` (which must print a [`Summary`] line) for at most `limit`
/// of real time.
pub fn run_child(mut command: Command, limit: Duration) -> Result<ChildRun, String> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {command:?}: {e}"))?;
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let started = Instant::now();
    let mut timed_out = false;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() > limit => {
                timed_out = true;
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            Ok(None) => thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("waiting for {command:?}: {e}")),
        }
    }
    let join =
        |h: Option<thread::JoinHandle<String>>| h.and_then(|h| h.join().ok()).unwrap_or_default();
    let out = join(stdout);
    let err = join(stderr);
    let lines: Vec<&str> = err.lines().collect();
    Ok(ChildRun {
        summary: Summary::parse(&out),
        stderr_tail: lines[lines.len().saturating_sub(20)..].join("\n"),
        timed_out,
    })
}
