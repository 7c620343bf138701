//! Fault testing for Roster: the client workload whose histories the
//! checkers of `roster-check` judge, and a deterministic simulation of whole
//! clusters.
//!
//! - [`workload`]: key-value clients, lease holders and watchers that record
//!   what they saw. The real-process chaos test (`tests/chaos.rs`) runs them
//!   over TCP against `roster` processes; the simulation runs them over
//!   turmoil's network.
//! - [`cluster`]: one simulated run. Nodes are real [`roster_server`] nodes
//!   on memory storage; the network, the clocks and every random choice
//!   belong to the simulation and come from one seed, so a failing seed
//!   replays the same run (`examples/sim.rs`).
//! - [`net`]: Roster's transport seam over turmoil's TCP.
//! - [`child`]: one run in a child process of its own, bounded in real time
//!   (what the CI test and the soak do with every seed).

pub mod child;
pub mod cluster;
pub mod net;
pub mod workload;

pub use cluster::{run, FaultLog, Outcome, SimError, SimOptions};
