//! Watches: the node-local fan-out of applied events to watchers ([`hub`]).
//! The etcd `Watch` service on top of it lives in `etcd::watch`.

mod hub;

pub use hub::{Outbound, Selector, StreamGuard, StreamId, WatchHub, WatchOptions};

#[cfg(test)]
mod tests;
