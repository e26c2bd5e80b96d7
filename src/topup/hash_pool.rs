//! Where password and PIN hashes are computed: a few threads of their own, at a lower
//! priority than the rest of the service, with a bounded queue.
//!
//! An argon2 check takes tens of milliseconds of CPU on purpose, and anyone can ask for one
//! (a login form, an SMS, an API request with a PIN). Run on the async workers, eight parallel
//! wrong logins stalled the media of every call; run on tokio's blocking pool (up to 512
//! threads) they would still take every core. Here at most [`HashPool::threads`] hashes run at
//! once, niced below the media and signalling work, and a request that finds the queue full is
//! refused at once ([`Busy`]) rather than piling up.

use std::sync::OnceLock;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

use tokio::sync::oneshot;

/// The pool is full: the caller should say "try again".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many password checks at once; try again")]
pub struct Busy;

type Job = Box<dyn FnOnce() + Send>;

pub struct HashPool {
    jobs: SyncSender<Job>,
    threads: usize,
}

/// Hash threads run this much nicer than the service (Linux: per thread).
const NICE: i32 = 10;

impl HashPool {
    /// `threads` workers, `queue` jobs waiting at most.
    pub fn new(threads: usize, queue: usize) -> HashPool {
        let (tx, rx) = sync_channel::<Job>(queue);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("hash-{i}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        // One worker takes the next job; the lock is held only while taking it.
                        let job = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a hash thread");
            }
        }
        HashPool { jobs: tx, threads }
    }

    /// The pool the service uses: half the cores (at least one), 64 waiting.
    pub fn global() -> &'static HashPool {
        static POOL: OnceLock<HashPool> = OnceLock::new();
        POOL.get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            HashPool::new((cores / 2).max(1), 64)
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` on the pool and waits for it; [`Busy`] at once when the queue is full.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                metrics::counter!("topup_ivr_hash_refused_total").increment(1);
                return Err(Busy);
            }
            Err(TrySendError::Disconnected(_)) => return Err(Busy),
        }
        rx.await.map_err(|_| Busy)
    }
}

#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: setpriority on this thread's own id (Linux: PRIO_PROCESS with a thread id sets
    // that thread's nice value); no memory is passed.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE);
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn jobs_run_off_the_async_threads_and_a_full_queue_is_refused_at_once() {
        let pool: &'static HashPool = Box::leak(Box::new(HashPool::new(1, 1)));
        let here = std::thread::current().id();
        let there = pool.run(move || std::thread::current().id()).await.unwrap();
        assert_ne!(here, there);
        // One job running (held), one waiting: the next is refused without waiting.
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let running = pool.run(move || {
            let _ = hold_rx.recv_timeout(Duration::from_secs(5));
            1
        });
        let running = tokio::spawn(running);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let waiting = tokio::spawn(pool.run(|| 2));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.run(|| 3).await, Err(Busy));
        hold_tx.send(()).unwrap();
        assert_eq!(running.await.unwrap(), Ok(1));
        assert_eq!(waiting.await.unwrap(), Ok(2));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hash_threads_run_niced() {
        let pool = HashPool::new(1, 4);
        let nice = pool
            .run(|| unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) })
            .await
            .unwrap();
        assert_eq!(nice, NICE);
    }
}
