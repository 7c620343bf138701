//! Leadership confirmations shared by keepalive batches (DESIGN.md rule 2).
//!
//! A batch of keepalives may be acknowledged while less than the leader-lease
//! window has passed since a quorum confirmation of our leadership *began*:
//! the followers that answered it elect no one else before then, so no new
//! leader can exist when the acknowledgement leaves. Nothing in that argument
//! ties the confirmation to the batch, so batches share them: one quorum round
//! serves every batch acknowledged within its window. Before, each batch ran
//! its own round of heartbeats to every follower, the largest cost of a
//! keepalive after the gRPC stream itself.
//!
//! A batch waits for a round only when the newest confirmation is older than
//! half the window (and one round then serves every batch waiting); a batch
//! that finds one older than a quarter of the window starts the next round in
//! the background, so a steady stream of keepalives never waits for one.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The newest confirmation, and the one quorum round at a time.
pub(super) struct Confirmations {
    window: Duration,
    /// (term, when the round began) of the newest successful round.
    newest: Mutex<Option<(u64, Instant)>>,
    round: tokio::sync::Mutex<()>,
}

impl Confirmations {
    pub(super) fn new(window: Duration) -> Self {
        Confirmations {
            window,
            newest: Mutex::new(None),
            round: tokio::sync::Mutex::new(()),
        }
    }

    /// When a confirmation of `term` usable now began: the newest one if it is
    /// younger than half the window, else one from a new round (`round`),
    /// shared with every batch that waits for it meanwhile.
    pub(super) async fn confirmed<F, Fut, E>(&self, term: u64, round: F) -> Result<Instant, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        if let Some(began) = self.younger_than(term, self.window / 2) {
            return Ok(began);
        }
        let _round = self.round.lock().await;
        // The round that held the lock may have been the one we waited for.
        if let Some(began) = self.younger_than(term, self.window / 2) {
            return Ok(began);
        }
        self.run(term, round).await
    }

    /// Starts a new round unless the newest confirmation of `term` is younger
    /// than a quarter of the window or a round is already running. For a task
    /// of its own: the caller does not wait for it.
    pub(super) async fn refresh<F, Fut, E>(&self, term: u64, round: F)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let Ok(_round) = self.round.try_lock() else {
            return;
        };
        if self.younger_than(term, self.window / 4).is_none() {
            let _ = self.run(term, round).await;
        }
    }

    /// Whether a batch that used a confirmation begun at `began` should start
    /// the next round.
    pub(super) fn aging(&self, began: Instant) -> bool {
        began.elapsed() >= self.window / 4
    }

    /// Forgets every confirmation (this node stopped being primary).
    pub(super) fn clear(&self) {
        *self.newest() = None;
    }

    async fn run<F, Fut, E>(&self, term: u64, round: F) -> Result<Instant, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let began = Instant::now();
        round().await?;
        let mut newest = self.newest();
        if newest.is_none_or(|(t, b)| t != term || b < began) {
            *newest = Some((term, began));
        }
        Ok(began)
    }

    fn younger_than(&self, term: u64, age: Duration) -> Option<Instant> {
        let newest = *self.newest();
        newest
            .filter(|&(t, began)| t == term && began.elapsed() < age)
            .map(|(_, began)| began)
    }

    fn newest(&self) -> std::sync::MutexGuard<'_, Option<(u64, Instant)>> {
        // A panic while holding this lock leaves at worst a stale entry, which
        // `younger_than` judges by its age like any other.
        self.newest.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    const WINDOW: Duration = Duration::from_millis(400);

    fn counting(rounds: &Arc<AtomicUsize>) -> impl Future<Output = Result<(), ()>> {
        let rounds = rounds.clone();
        async move {
            rounds.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn batches_share_a_round_until_it_is_half_a_window_old() {
        let c = Confirmations::new(WINDOW);
        let rounds = Arc::new(AtomicUsize::new(0));
        let first = c.confirmed(1, || counting(&rounds)).await.expect("round");
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(15)).await;
            let began = c.confirmed(1, || counting(&rounds)).await.expect("shared");
            assert_eq!(began, first);
        }
        assert_eq!(rounds.load(Ordering::SeqCst), 1);
        // Half a window after it began, a batch waits for a new round.
        tokio::time::sleep(WINDOW / 2).await;
        let later = c.confirmed(1, || counting(&rounds)).await.expect("round");
        assert!(later >= first + WINDOW / 2);
        assert_eq!(rounds.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn batches_waiting_together_share_one_round() {
        let c = Arc::new(Confirmations::new(WINDOW));
        let rounds = Arc::new(AtomicUsize::new(0));
        let waiting: Vec<_> = (0..8)
            .map(|_| {
                let (c, rounds) = (c.clone(), rounds.clone());
                tokio::spawn(async move { c.confirmed(1, || counting(&rounds)).await })
            })
            .collect();
        let mut began = Vec::new();
        for w in waiting {
            began.push(w.await.expect("task").expect("round"));
        }
        assert_eq!(rounds.load(Ordering::SeqCst), 1);
        assert!(began.windows(2).all(|b| b[0] == b[1]));
    }

    #[tokio::test(start_paused = true)]
    async fn another_term_a_failed_round_or_a_clear_share_nothing() {
        let c = Confirmations::new(WINDOW);
        let rounds = Arc::new(AtomicUsize::new(0));
        c.confirmed(1, || counting(&rounds)).await.expect("round");
        c.confirmed(2, || counting(&rounds))
            .await
            .expect("new term");
        assert_eq!(rounds.load(Ordering::SeqCst), 2);
        c.clear();
        let failed: Result<Instant, &str> = c.confirmed(2, || async { Err("no quorum") }).await;
        assert_eq!(failed, Err("no quorum"));
        c.confirmed(2, || counting(&rounds)).await.expect("round");
        assert_eq!(rounds.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refresh_runs_only_for_an_aging_confirmation() {
        let c = Confirmations::new(WINDOW);
        let rounds = Arc::new(AtomicUsize::new(0));
        let first = c.confirmed(1, || counting(&rounds)).await.expect("round");
        assert!(!c.aging(first));
        c.refresh(1, || counting(&rounds)).await;
        assert_eq!(rounds.load(Ordering::SeqCst), 1, "young: no round");
        tokio::time::sleep(WINDOW / 4).await;
        assert!(c.aging(first));
        c.refresh(1, || counting(&rounds)).await;
        assert_eq!(rounds.load(Ordering::SeqCst), 2);
        let newest = c.confirmed(1, || counting(&rounds)).await.expect("shared");
        assert!(newest > first);
        assert_eq!(rounds.load(Ordering::SeqCst), 2);
    }
}
