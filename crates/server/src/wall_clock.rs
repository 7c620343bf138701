//! The wall clock, read only by the node that proposes a command: times that
//! the state machine keeps (registration, drain deadlines, health changes,
//! expiries) are stamped into commands from here, never read during apply.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
