//! `HashPool`: the only way the async server runs password hashing. A few dedicated threads
//! at a lowered CPU priority (nice) do the work, so cached logins and every other request win
//! the CPU when hashing competes for it; admission is bounded (`concurrent` running plus
//! `queued` waiting), and anything beyond is refused at once with [`HashError::Busy`] — a storm
//! of bad logins can neither queue unbounded work nor starve the rest of the server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, oneshot};

use crate::password::{HashError, Hasher, Password, PasswordHash};

type Job = Box<dyn FnOnce() + Send>;

/// Bounded, low-priority hashing; clones share the threads, which end when the last clone drops.
#[derive(Clone)]
pub struct HashPool {
    hasher: Hasher,
    jobs: mpsc::Sender<Job>,
    admitted: Arc<Semaphore>,
    peak: Arc<AtomicUsize>,
}

impl HashPool {
    /// Starts `concurrent` hashing threads at niceness `nice` (0 = as the rest of the process).
    pub fn new(hasher: Hasher, concurrent: usize, queued: usize, nice: i32) -> HashPool {
        let concurrent = concurrent.max(1);
        let (jobs, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        for i in 0..concurrent {
            let (receiver, running, peak) = (receiver.clone(), running.clone(), peak.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("credstore-hash-{i}"))
                .spawn(move || worker(receiver, running, peak, nice));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a hashing thread");
            }
        }
        HashPool {
            hasher,
            jobs,
            admitted: Arc::new(Semaphore::new(concurrent + queued)),
            peak,
        }
    }

    pub fn hasher(&self) -> &Hasher {
        &self.hasher
    }

    /// The most computations seen running at once (for status lines and benchmarks).
    pub fn peak_running(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    pub async fn hash(&self, password: Password) -> Result<PasswordHash, HashError> {
        let hasher = self.hasher.clone();
        self.run(move || hasher.hash(&password)).await
    }

    pub async fn verify(&self, hash: PasswordHash, password: Vec<u8>) -> Result<bool, HashError> {
        let hasher = self.hasher.clone();
        self.run(move || hasher.verify(&hash, &password)).await
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        // Held until the answer arrives: running plus waiting never exceed the bound.
        let _admitted = self.admitted.try_acquire().map_err(|_| HashError::Busy)?;
        let (answer, answered) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = answer.send(work());
        });
        self.jobs
            .send(job)
            .map_err(|_| HashError::Hashing("hashing threads are gone".into()))?;
        answered
            .await
            .map_err(|_| HashError::Hashing("a hashing thread failed".into()))?
    }
}

fn worker(
    receiver: Arc<Mutex<mpsc::Receiver<Job>>>,
    running: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    nice: i32,
) {
    if nice != 0 {
        // On Linux a thread id addresses one thread, so only the hashing threads are lowered.
        let tid = rustix::thread::gettid();
        if let Err(e) = rustix::process::setpriority_process(Some(tid), nice) {
            tracing::warn!(error = %e, nice, "cannot lower the hashing thread's priority");
        }
    }
    loop {
        // A poisoned lock means another hashing thread panicked while taking a job: stop too.
        let job = match receiver.lock().map(|r| r.recv()) {
            Ok(Ok(job)) => job,
            _ => return,
        };
        let now = running.fetch_add(1, Ordering::AcqRel) + 1;
        peak.fetch_max(now, Ordering::Relaxed);
        job();
        running.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::password::{HashScheme, Limits};

    #[tokio::test]
    async fn refuses_beyond_its_queue() {
        let pool = HashPool::new(Hasher::new(HashScheme::Bcrypt { cost: 10 }), 1, 1, 10);
        let password = Password::new(b"secret1".to_vec(), &Limits::default()).unwrap();
        let hash = pool.hasher().hash(&password).unwrap();
        // Spawned on the current-thread test runtime, all six ask for admission before any finishes.
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let (pool, hash) = (pool.clone(), hash.clone());
                tokio::spawn(async move { pool.verify(hash, b"secret1".to_vec()).await })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        let busy = results
            .iter()
            .filter(|r| matches!(r, Err(HashError::Busy)))
            .count();
        let ok = results.iter().filter(|r| matches!(r, Ok(true))).count();
        assert_eq!((ok, busy), (2, 4), "one running + one queued are admitted");
        assert_eq!(pool.peak_running(), 1);
        // Admission frees up once the work is done.
        assert!(pool.verify(hash, b"secret1".to_vec()).await.unwrap());
    }
}
