//! The wall clock, read only by the node that proposes a command: times that
//! the state machine keeps (registration, drain deadlines, health changes,
//! expiries) are stamped into commands from here, never read during apply.
//!
//! A simulation replaces it for its thread with [`simulate`]: its nodes all
//! run on that thread, so the times they stamp follow the simulated clock and
//! a seed replays the same commands, byte for byte. A real node never calls
//! [`simulate`] and reads the system clock.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

thread_local! {
    static SIMULATED: Cell<Option<fn() -> u64>> = const { Cell::new(None) };
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    if let Some(clock) = SIMULATED.with(Cell::get) {
        return clock();
    }
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// From now on this thread's [`now_ms`] is `clock()`; `None` restores the
/// system clock.
pub fn simulate(clock: Option<fn() -> u64>) {
    SIMULATED.with(|c| c.set(clock));
}
