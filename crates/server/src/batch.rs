//! Gathering requests into batches: wait for one, then take every other one
//! already queued, up to a count and a weight. The proposer (commands into one
//! log entry), the lessor (keepalives under one leadership confirmation) and the
//! router's forwarders (keepalives, and proposals, into one RPC to the leader)
//! all batch this way, through [`spawn_batches`]: under no load a request goes
//! alone at once; under load batches grow by themselves while the previous ones
//! are in flight.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};

/// A queue's receiving end, bounded or not.
pub(crate) trait Queue<T> {
    async fn next(&mut self) -> Option<T>;
    fn ready(&mut self) -> Option<T>;
}

impl<T> Queue<T> for mpsc::Receiver<T> {
    async fn next(&mut self) -> Option<T> {
        self.recv().await
    }
    fn ready(&mut self) -> Option<T> {
        self.try_recv().ok()
    }
}

impl<T> Queue<T> for mpsc::UnboundedReceiver<T> {
    async fn next(&mut self) -> Option<T> {
        self.recv().await
    }
    fn ready(&mut self) -> Option<T> {
        self.try_recv().ok()
    }
}

/// The next batch: at least one item (`None` once the queue is closed), then
/// whatever is queued until `max_items` or `max_weight` is reached.
pub(crate) async fn next_batch<T>(
    queue: &mut impl Queue<T>,
    max_items: usize,
    max_weight: usize,
    weight: impl Fn(&T) -> usize,
) -> Option<Vec<T>> {
    let first = queue.next().await?;
    let mut total = weight(&first);
    let mut batch = vec![first];
    while batch.len() < max_items && total < max_weight {
        match queue.ready() {
            Some(item) => {
                total += weight(&item);
                batch.push(item);
            }
            None => break,
        }
    }
    Some(batch)
}

/// Serves `queue` in batches ([`next_batch`]), each handed to `handle` and run
/// on a task of its own, at most `in_flight` at once: while they run, what
/// queues up forms the next, larger batch. Returns once the queue is closed.
pub(crate) async fn spawn_batches<T, Fut>(
    mut queue: impl Queue<T>,
    in_flight: usize,
    max_items: usize,
    max_weight: usize,
    weight: impl Fn(&T) -> usize,
    handle: impl Fn(Vec<T>) -> Fut,
) where
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(in_flight));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(batch) = next_batch(&mut queue, max_items, max_weight, &weight).await else {
            return;
        };
        let work = handle(batch);
        tokio::spawn(async move {
            work.await;
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_takes_what_is_queued_up_to_the_limits() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for n in 1..=5usize {
            tx.send(n).expect("send");
        }
        assert_eq!(
            next_batch(&mut rx, 3, usize::MAX, |_| 1).await,
            Some(vec![1, 2, 3])
        );
        // Weight: 4 reaches the budget of 4, so 5 waits for the next batch.
        assert_eq!(next_batch(&mut rx, 10, 4, |n| *n).await, Some(vec![4]));
        assert_eq!(next_batch(&mut rx, 10, 100, |n| *n).await, Some(vec![5]));
        drop(tx);
        assert_eq!(next_batch(&mut rx, 10, 100, |n| *n).await, None);
    }
}
