//! `roster bench range|lease-grant`: the read path and lease grants, which
//! `put` and `keepalive` leave unmeasured; plus the batched writes that fill a
//! keyspace for `range` and `scale`.
//!
//! - `range`: first writes `--keys` keys `range/<n>` with `--value-size`-byte
//!   values (in Txns of [`FILL_BATCH`] puts; setup, not timed), then the
//!   `--clients` workers each read one random key of them per Range:
//!   linearizable (a read-index round through the leader) unless
//!   `--serializable` (the endpoint answers from its own store). A Range that
//!   does not return exactly that key counts as an error.
//! - `lease-grant`: the workers grant leases of `--ttl` seconds; the leases are
//!   left to expire by themselves.

use std::time::Instant;

use crate::bench::Channel;
use anyhow::{bail, Context};
use clap::Args;
use futures::{stream, StreamExt, TryStreamExt};
use roster_proto::etcdserverpb::kv_client::KvClient;
use roster_proto::etcdserverpb::lease_client::LeaseClient;
use roster_proto::etcdserverpb::request_op::Request;
use roster_proto::etcdserverpb::{
    LeaseGrantRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

use crate::bench::{report, run_ops, BenchArgs};

/// Puts per Txn when a keyspace is filled for `range`.
pub(crate) const FILL_BATCH: usize = 64;

#[derive(Args, Debug)]
pub struct RangeArgs {
    /// Keys written first and read at random.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Serializable reads (the endpoint's own store) instead of linearizable.
    #[arg(long)]
    serializable: bool,
}

fn range_key(n: u64) -> Vec<u8> {
    format!("range/{n:08}").into_bytes()
}

pub async fn range(
    args: &BenchArgs,
    channels: &[Channel],
    range: &RangeArgs,
) -> anyhow::Result<()> {
    if range.keys == 0 {
        bail!("--keys must be at least 1");
    }
    let started = Instant::now();
    let value = vec![b'v'; range.value_size];
    let make = |n| (range_key(n), value.clone());
    put_batches(channels, range.keys, FILL_BATCH, args.clients, make).await?;
    eprintln!(
        "filled {} keys in {:.1} s",
        range.keys,
        started.elapsed().as_secs_f64()
    );
    let (keys, serializable) = (range.keys, range.serializable);
    let (tallies, elapsed) = run_ops(args, channels, KvClient::new, move |mut kv, n| {
        let request = RangeRequest {
            key: range_key(roster_state::splitmix64(n) % keys),
            serializable,
            ..Default::default()
        };
        async move {
            kv.range(request)
                .await
                .is_ok_and(|r| r.get_ref().kvs.len() == 1)
        }
    })
    .await?;
    let name = if serializable {
        "range (serializable)"
    } else {
        "range (linearizable)"
    };
    report(name, tallies, elapsed);
    Ok(())
}

pub async fn lease_grant(args: &BenchArgs, channels: &[Channel], ttl: i64) -> anyhow::Result<()> {
    let (tallies, elapsed) = run_ops(
        args,
        channels,
        LeaseClient::new,
        move |mut lease, _| async move {
            let granted = lease.lease_grant(LeaseGrantRequest { ttl, id: 0 }).await;
            granted.is_ok_and(|g| g.get_ref().error.is_empty() && g.get_ref().id != 0)
        },
    )
    .await?;
    report(&format!("lease-grant (TTL {ttl} s)"), tallies, elapsed);
    Ok(())
}

/// Writes the keys and values `make(n)` for `n` in `0..count`, `batch` puts
/// per Txn and `concurrency` Txns at a time, round robin over `channels`
/// (setup: fails on the first error).
pub(crate) async fn put_batches(
    channels: &[Channel],
    count: u64,
    batch: usize,
    concurrency: usize,
    make: impl Fn(u64) -> (Vec<u8>, Vec<u8>),
) -> anyhow::Result<()> {
    let batch = batch.max(1) as u64;
    let txns = (0..count.div_ceil(batch)).map(|b| {
        let success = (b * batch..count.min((b + 1) * batch))
            .map(|n| {
                let (key, value) = make(n);
                let put = PutRequest {
                    key,
                    value,
                    ..Default::default()
                };
                RequestOp {
                    request: Some(Request::RequestPut(put)),
                }
            })
            .collect();
        let mut kv = KvClient::new(channels[b as usize % channels.len()].clone());
        async move {
            let txn = TxnRequest {
                success,
                ..Default::default()
            };
            kv.txn(txn).await.map(|_| ())
        }
    });
    stream::iter(txns)
        .buffer_unordered(concurrency.max(1))
        .try_collect::<()>()
        .await
        .context("writing the keys")
}
