//! openraft's async runtime for Roster: tokio, with one difference, the source
//! of randomness.
//!
//! openraft draws each election timeout from the runtime's thread-local random
//! generator. The stock tokio runtime uses `rand::thread_rng()`, seeded by the
//! operating system, so two runs of the same simulated cluster would elect at
//! different moments. [`RosterRuntime`] reads a generator that a thread can
//! seed with [`seed_thread_rng`]: the deterministic simulation seeds it (all
//! its simulated nodes run on one thread) and a seed then replays the same
//! elections. A thread that never seeds it, every thread of a real node, gets
//! `thread_rng()` as before.

use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

use openraft::{AsyncRuntime, OptionalSend, TokioInstant, TokioRuntime};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

thread_local! {
    static SEEDED: RefCell<Option<StdRng>> = const { RefCell::new(None) };
}

/// Makes this thread's raft randomness a pure function of `seed` from now on.
pub fn seed_thread_rng(seed: u64) {
    SEEDED.with(|rng| *rng.borrow_mut() = Some(StdRng::seed_from_u64(seed)));
}

/// Returns this thread to the operating system's randomness.
pub fn unseed_thread_rng() {
    SEEDED.with(|rng| *rng.borrow_mut() = None);
}

/// A handle on this thread's generator: the seeded one if the thread has one,
/// else `rand::thread_rng()`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ThreadRng;

impl ThreadRng {
    fn with<R>(f: impl FnOnce(&mut dyn RngCore) -> R) -> R {
        SEEDED.with(|seeded| match seeded.borrow_mut().as_mut() {
            Some(rng) => f(rng),
            None => f(&mut rand::thread_rng()),
        })
    }
}

impl RngCore for ThreadRng {
    fn next_u32(&mut self) -> u32 {
        Self::with(|rng| rng.next_u32())
    }

    fn next_u64(&mut self) -> u64 {
        Self::with(|rng| rng.next_u64())
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        Self::with(|rng| rng.fill_bytes(dest))
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        Self::with(|rng| rng.try_fill_bytes(dest))
    }
}

/// Tokio, with [`ThreadRng`] as the random source (see the module docs).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RosterRuntime;

impl AsyncRuntime for RosterRuntime {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = TokioInstant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> =
        <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = ThreadRng;
    type OneshotSender<T: OptionalSend> = <TokioRuntime as AsyncRuntime>::OneshotSender<T>;
    type OneshotReceiverError = <TokioRuntime as AsyncRuntime>::OneshotReceiverError;
    type OneshotReceiver<T: OptionalSend> = <TokioRuntime as AsyncRuntime>::OneshotReceiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        TokioRuntime::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        ThreadRng
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        TokioRuntime::oneshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seeded_thread_draws_the_same_numbers_again() {
        seed_thread_rng(7);
        let first: Vec<u64> = (0..4).map(|_| ThreadRng.next_u64()).collect();
        seed_thread_rng(7);
        let again: Vec<u64> = (0..4).map(|_| ThreadRng.next_u64()).collect();
        unseed_thread_rng();
        let unseeded: Vec<u64> = (0..4).map(|_| ThreadRng.next_u64()).collect();
        assert_eq!(first, again);
        assert_ne!(first, unseeded);
    }
}
