//! `HashPool`: the only way the async server runs password hashing. A few dedicated threads
//! at a lowered CPU priority (nice) do the work, so cached logins and every other request win
//! the CPU when hashing competes for it.
//!
//! Admission is bounded: at most `concurrent` jobs run and `queued` wait; anything beyond is
//! refused at once with [`HashError::Busy`]. The admission slot travels *with the job* and
//! is released only when the job has run or been dropped — never when the caller's future is
//! dropped while its job still waits — so the queue can never hold more than the bound. A job
//! whose caller is gone (a cancelled login: the client reset its stream) is not computed: a
//! worker skips it when it reaches the front, and a caller that finds the pool full first
//! sweeps such jobs out of the queue. A storm of cancelled bad logins therefore leaves no
//! hashing behind for the logins that wait for an answer.
//!
//! Fair shares: every job belongs to a [`Class`] — the peer address of the login it verifies,
//! or none (hashing new passwords, rehashes). One peer holds at most `per_peer` admitted jobs
//! (running or waiting); threads take the classes in turn (round robin), so a login from
//! another address waits for at most the jobs already running, however many one address has
//! queued; and one address computes on at most half of the threads (at least one), so hashing
//! for one address leaves the other threads — and the CPU they would take from every other
//! request — free. When the whole pool is full, a newcomer holding fewer jobs than the largest holder
//! pushes out that holder's newest waiting job (its caller gets `Busy`): one address cannot
//! keep everyone else out by filling the queue first. A login takes its admission before it
//! reads the user from the store ([`HashPool::reserve`], then [`Slot::verify`]), so an address
//! over its share costs no store read either.
//!
//! Passwords handed to the pool are wiped when the job is dropped (`zeroize`).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;
use zeroize::Zeroizing;

use crate::password::{HashError, HashScheme, Hasher, Password, PasswordHash};

/// Whose work a job is: the peer address of the login it verifies, or `None` for work that
/// is nobody's login (new passwords of admin calls, rehashes), which has no per-peer bound.
pub type Class = Option<IpAddr>;

/// Bounded, low-priority, fairly shared hashing; clones share the threads, which end when the
/// last clone drops.
#[derive(Clone)]
pub struct HashPool {
    /// The scheme and parameters every job uses.
    hasher: Hasher,
    /// Closes the queue (ending the threads) when the last clone is dropped.
    handle: Arc<Handle>,
}

/// What the pool is doing, for status lines, benchmarks and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Jobs being computed now.
    pub running: usize,
    /// Jobs admitted and waiting for a thread (including abandoned ones not yet skipped).
    pub queued: usize,
    /// The most jobs seen running at once.
    pub peak_running: usize,
    /// Jobs ever admitted.
    pub admitted: u64,
    /// Jobs computed.
    pub completed: u64,
    /// Admissions given back without computing: the caller had gone, or a reserved slot was
    /// not used (its login ended before its hash, e.g. at the store read).
    pub skipped: u64,
    /// Calls refused because their peer already held its share.
    pub refused_peer: u64,
    /// Waiting jobs pushed out (answered `Busy`) to make room for a peer holding fewer.
    pub pushed_out: u64,
}

struct Handle {
    queue: Arc<Queue>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.queue.closed.store(true, Ordering::Release);
        let _guard = self.queue.lock();
        self.queue.ready.notify_all();
    }
}

/// The admitted jobs and the counters.
struct Queue {
    state: Mutex<Fair>,
    ready: Condvar,
    closed: AtomicBool,
    /// Threads started; none means every job would wait forever, so calls fail instead.
    workers: AtomicUsize,
    /// Most jobs admitted at once: `concurrent + queued`.
    capacity: usize,
    /// Most jobs one peer may hold at once.
    per_peer: AtomicUsize,
    /// Most jobs of one peer computed at once: half the threads, at least one.
    running_per_peer: usize,
    peak: AtomicUsize,
    admitted: AtomicU64,
    completed: AtomicU64,
    skipped: AtomicU64,
    refused_peer: AtomicU64,
    pushed_out: AtomicU64,
    /// Told how long each computed job took (metrics); set at most once.
    observer: std::sync::OnceLock<Observer>,
}

/// Called on a hashing thread with the duration of each computed job.
pub type Observer = Box<dyn Fn(std::time::Duration) + Send + Sync>;

/// The admitted jobs by class, the round-robin turn and the counts admission reads. Every
/// count changes under the queue's lock only.
#[derive(Default)]
struct Fair {
    /// Waiting jobs of each class, oldest first; a class with none has no entry.
    waiting: HashMap<Class, VecDeque<Job>>,
    /// Classes with waiting jobs, in the order threads serve them.
    turn: VecDeque<Class>,
    /// Jobs admitted and not yet finished or dropped (waiting and running), in all.
    held: usize,
    /// The same per class; a class holding none has no entry.
    held_by: HashMap<Class, usize>,
    waiting_count: usize,
    running: usize,
    /// Jobs being computed, per class; a class computing none has no entry.
    running_by: HashMap<Class, usize>,
}

impl Fair {
    fn held_by(&self, class: &Class) -> usize {
        self.held_by.get(class).copied().unwrap_or(0)
    }

    fn hold(&mut self, class: Class) {
        self.held += 1;
        *self.held_by.entry(class).or_default() += 1;
    }

    /// Gives back one admission of `class` (a job finished, was skipped or refused).
    fn release(&mut self, class: &Class) {
        self.held = self.held.saturating_sub(1);
        if let Some(count) = self.held_by.get_mut(class) {
            *count -= 1;
            if *count == 0 {
                self.held_by.remove(class);
            }
        }
    }

    fn push(&mut self, job: Job) {
        let class = job.class;
        let waiting = self.waiting.entry(class).or_default();
        if waiting.is_empty() {
            self.turn.push_back(class);
        }
        waiting.push_back(job);
        self.waiting_count += 1;
    }

    /// The next job in turn: the oldest of the first class in turn that computes fewer than
    /// `cap` jobs now (a peer's; work that is nobody's login has no cap).
    fn pop_next(&mut self, cap: usize) -> Option<Job> {
        for _ in 0..self.turn.len() {
            let class = self.turn.pop_front()?;
            if class.is_some() && self.running_by.get(&class).is_some_and(|n| *n >= cap) {
                self.turn.push_back(class);
                continue;
            }
            let waiting = self.waiting.get_mut(&class)?;
            let job = waiting.pop_front();
            match waiting.is_empty() {
                true => {
                    self.waiting.remove(&class);
                }
                false => self.turn.push_back(class),
            }
            self.waiting_count -= usize::from(job.is_some());
            return job;
        }
        None
    }

    fn start(&mut self, class: Class) -> usize {
        self.running += 1;
        *self.running_by.entry(class).or_default() += 1;
        self.running
    }

    fn stop(&mut self, class: &Class) {
        self.running -= 1;
        if let Some(count) = self.running_by.get_mut(class) {
            *count -= 1;
            if *count == 0 {
                self.running_by.remove(class);
            }
        }
    }

    /// Removes the waiting jobs whose callers have gone, releasing their admissions.
    fn sweep(&mut self) -> Vec<Job> {
        let mut swept = Vec::new();
        for waiting in self.waiting.values_mut() {
            let (gone, live): (VecDeque<Job>, VecDeque<Job>) =
                waiting.drain(..).partition(|job| job.task.abandoned());
            *waiting = live;
            swept.extend(gone);
        }
        self.waiting.retain(|_, waiting| !waiting.is_empty());
        let waiting = &self.waiting;
        self.turn.retain(|class| waiting.contains_key(class));
        for job in &swept {
            self.waiting_count -= 1;
            self.release(&job.class);
        }
        swept
    }

    /// Pushes out the newest waiting job of the class that holds the most, if it holds more
    /// than one job more than `class` (so taking one never makes the two trade places).
    fn push_out_for(&mut self, class: &Class) -> Option<Job> {
        let mine = self.held_by(class);
        let victim = self
            .waiting
            .keys()
            .filter(|c| *c != class)
            .map(|c| (self.held_by(c), *c))
            .max()
            .filter(|(held, _)| *held > mine + 1)
            .map(|(_, c)| c)?;
        let waiting = self.waiting.get_mut(&victim)?;
        let job = waiting.pop_back()?;
        if waiting.is_empty() {
            self.waiting.remove(&victim);
            self.turn.retain(|c| *c != victim);
        }
        self.waiting_count -= 1;
        self.release(&victim);
        Some(job)
    }
}

impl Queue {
    /// Nothing panics while holding the lock, but a poisoned queue is still a valid queue.
    fn lock(&self) -> MutexGuard<'_, Fair> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One admitted computation and the class that holds its admission.
struct Job {
    task: Box<dyn Task>,
    class: Class,
}

trait Task: Send {
    /// Whether nobody waits for the answer any more.
    fn abandoned(&self) -> bool;
    /// Computes, calls `finished` (which releases admission), then answers.
    fn run(self: Box<Self>, finished: &mut dyn FnMut());
    /// Answers `Busy` without computing (pushed out of the queue).
    fn refuse(self: Box<Self>);
}

struct Pending<T, F> {
    work: F,
    answer: oneshot::Sender<Result<T, HashError>>,
}

impl<T, F> Task for Pending<T, F>
where
    T: Send,
    F: FnOnce() -> Result<T, HashError> + Send,
{
    fn abandoned(&self) -> bool {
        self.answer.is_closed()
    }

    fn run(self: Box<Self>, finished: &mut dyn FnMut()) {
        let Pending { work, answer } = *self;
        let result = std::panic::catch_unwind(AssertUnwindSafe(work))
            .unwrap_or_else(|_| Err(HashError::Hashing("a hash computation panicked".into())));
        // Admission is released before the answer, so a caller that got its answer can be
        // admitted again at once.
        finished();
        let _ = answer.send(result);
    }

    fn refuse(self: Box<Self>) {
        let _ = self.answer.send(Err(HashError::Busy));
    }
}

/// The pool's settings by name (`config::Config::hash_pool` derives them from the file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashPoolConfig {
    /// The scheme new hashes are written with.
    pub scheme: HashScheme,
    /// Hashing threads (at least one).
    pub concurrent: usize,
    /// Computations allowed to wait for a thread.
    pub queued: usize,
    /// Computations one peer address may hold, running or waiting (at least one;
    /// `usize::MAX`: no per-peer bound).
    pub per_peer: usize,
    /// CPU priority of the hashing threads (0 = as the rest of the process).
    pub niceness: i32,
}

impl HashPoolConfig {
    /// One thread, a queue of 64, no per-peer bound, normal priority: a starting point for
    /// tests and tools, which name what they change (`..HashPoolConfig::new(scheme)`).
    pub fn new(scheme: HashScheme) -> HashPoolConfig {
        HashPoolConfig {
            scheme,
            concurrent: 1,
            queued: 64,
            per_peer: usize::MAX,
            niceness: 0,
        }
    }
}

impl HashPool {
    /// Starts `config.concurrent` hashing threads at niceness `config.niceness`; at most
    /// `config.queued` further jobs wait, and one peer address holds at most `config.per_peer`
    /// (running or waiting; beyond it its calls get `Busy` while other peers are still
    /// admitted: `credstore.password.maxQueuedHashesPerPeer`).
    pub fn new(config: HashPoolConfig) -> HashPool {
        let HashPoolConfig {
            scheme,
            concurrent,
            queued,
            per_peer,
            niceness: nice,
        } = config;
        let hasher = Hasher::new(scheme);
        let concurrent = concurrent.max(1);
        let queue = Arc::new(Queue {
            state: Mutex::new(Fair::default()),
            ready: Condvar::new(),
            closed: AtomicBool::new(false),
            workers: AtomicUsize::new(0),
            capacity: concurrent + queued,
            per_peer: AtomicUsize::new(per_peer.max(1)),
            running_per_peer: (concurrent / 2).max(1),
            peak: AtomicUsize::new(0),
            admitted: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            refused_peer: AtomicU64::new(0),
            pushed_out: AtomicU64::new(0),
            observer: std::sync::OnceLock::new(),
        });
        for i in 0..concurrent {
            let shared = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("credstore-hash-{i}"))
                .spawn(move || worker(&shared, nice));
            match spawned {
                Ok(_) => {
                    queue.workers.fetch_add(1, Ordering::Release);
                }
                Err(e) => tracing::error!(error = %e, "cannot start a hashing thread"),
            }
        }
        HashPool {
            hasher,
            handle: Arc::new(Handle { queue }),
        }
    }

    pub fn hasher(&self) -> &Hasher {
        &self.hasher
    }

    /// The most computations seen running at once (for status lines and benchmarks).
    pub fn peak_running(&self) -> usize {
        self.handle.queue.peak.load(Ordering::Relaxed)
    }

    /// Has `observer` told the duration of every job computed from now on (a second observer
    /// is ignored: the pool has one set of metrics).
    pub fn observe_durations(&self, observer: Observer) {
        let _ = self.handle.queue.observer.set(observer);
    }

    pub fn stats(&self) -> PoolStats {
        let queue = &self.handle.queue;
        let (running, queued) = {
            let state = queue.lock();
            (state.running, state.waiting_count)
        };
        PoolStats {
            running,
            queued,
            peak_running: queue.peak.load(Ordering::Relaxed),
            admitted: queue.admitted.load(Ordering::Relaxed),
            completed: queue.completed.load(Ordering::Relaxed),
            skipped: queue.skipped.load(Ordering::Relaxed),
            refused_peer: queue.refused_peer.load(Ordering::Relaxed),
            pushed_out: queue.pushed_out.load(Ordering::Relaxed),
        }
    }

    pub async fn hash(&self, password: Password) -> Result<PasswordHash, HashError> {
        let hasher = self.hasher.clone();
        self.run(None, move || hasher.hash(&password)).await
    }

    /// Whether `password` matches `hash`, as nobody's login (no per-peer bound).
    pub async fn verify(&self, hash: PasswordHash, password: Vec<u8>) -> Result<bool, HashError> {
        self.verify_for(None, hash, password).await
    }

    /// Whether `password` matches `hash`, as a login from `peer` (its fair share). The copy of
    /// the password is wiped when the job ends, whether it ran, was skipped or was refused.
    pub async fn verify_for(
        &self,
        peer: Class,
        hash: PasswordHash,
        password: Vec<u8>,
    ) -> Result<bool, HashError> {
        let password = Zeroizing::new(password);
        let hasher = self.hasher.clone();
        self.run(peer, move || hasher.verify(&hash, &password))
            .await
    }

    /// Admits a verification from `peer` now and computes it later ([`Slot::verify`]): a
    /// login reserves its hash before it reads the user, so an address over its share costs
    /// no store read either. Dropping the slot unused gives the admission back.
    pub fn reserve(&self, peer: Class) -> Result<Slot, HashError> {
        self.check_workers()?;
        self.admit(peer)?;
        Ok(Slot {
            pool: self.clone(),
            class: peer,
            held: true,
        })
    }

    /// `Busy` when `peer` holds its whole share now: a cheap early refusal for a login that
    /// would be refused admission anyway (admission itself decides, under the lock).
    pub fn refuse_full_peer(&self, peer: Class) -> Result<(), HashError> {
        let queue = &self.handle.queue;
        let per_peer = queue.per_peer.load(Ordering::Relaxed);
        if peer.is_none() || per_peer == usize::MAX || queue.lock().held_by(&peer) < per_peer {
            return Ok(());
        }
        queue.refused_peer.fetch_add(1, Ordering::Relaxed);
        Err(HashError::Busy)
    }

    fn check_workers(&self) -> Result<(), HashError> {
        match self.handle.queue.workers.load(Ordering::Acquire) {
            0 => Err(HashError::Hashing(
                "no hashing thread could be started".into(),
            )),
            _ => Ok(()),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        class: Class,
        work: impl FnOnce() -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        self.check_workers()?;
        self.admit(class)?;
        self.submit(class, work).await
    }

    /// Queues `work` on an admission `class` already holds, and waits for its answer.
    async fn submit<T: Send + 'static>(
        &self,
        class: Class,
        work: impl FnOnce() -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        let queue = &self.handle.queue;
        let (answer, answered) = oneshot::channel();
        let job = Job {
            task: Box::new(Pending { work, answer }),
            class,
        };
        queue.lock().push(job);
        queue.ready.notify_one();
        // If this future is dropped here, the job stays queued with its admission until a
        // worker or a sweep sees that `answered` is gone and drops it uncomputed.
        answered
            .await
            .map_err(|_| HashError::Hashing("a hashing thread failed".into()))?
    }

    /// Admits one job of `class`, or refuses with `Busy`: when the class holds its share, or
    /// when the pool is full even after sweeping out abandoned jobs and pushing out one job
    /// of a class that holds more than it. Whatever leaves the queue is dropped (or
    /// answered) outside the lock.
    fn admit(&self, class: Class) -> Result<(), HashError> {
        let queue = &self.handle.queue;
        let per_peer = queue.per_peer.load(Ordering::Relaxed);
        let (admitted, swept, pushed) = {
            let mut state = queue.lock();
            let mut swept = Vec::new();
            let mut pushed = None;
            let over_share = |state: &Fair| class.is_some() && state.held_by(&class) >= per_peer;
            if state.held >= queue.capacity || over_share(&state) {
                swept = state.sweep();
            }
            if state.held >= queue.capacity && !over_share(&state) {
                pushed = state.push_out_for(&class);
            }
            let admitted = state.held < queue.capacity && !over_share(&state);
            if admitted {
                state.hold(class);
            }
            (admitted, swept, pushed)
        };
        queue
            .skipped
            .fetch_add(swept.len() as u64, Ordering::Relaxed);
        // Dropped outside the lock: this wipes their passwords.
        drop(swept);
        if let Some(pushed) = pushed {
            queue.pushed_out.fetch_add(1, Ordering::Relaxed);
            pushed.task.refuse();
        }
        match admitted {
            true => {
                queue.admitted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            false => {
                let full = queue.lock().held >= queue.capacity;
                if !full {
                    queue.refused_peer.fetch_add(1, Ordering::Relaxed);
                }
                Err(HashError::Busy)
            }
        }
    }
}

/// An admission reserved with [`HashPool::reserve`]: counts against its peer's share and the
/// pool's bound until its verification has run, or until it is dropped unused.
pub struct Slot {
    pool: HashPool,
    class: Class,
    /// Still this slot's to give back (not yet handed to a queued job).
    held: bool,
}

impl Slot {
    /// Whether `password` matches `hash`, computed on this slot's admission.
    pub async fn verify(
        mut self,
        hash: PasswordHash,
        password: Vec<u8>,
    ) -> Result<bool, HashError> {
        let password = Zeroizing::new(password);
        let hasher = self.pool.hasher.clone();
        // From here the queued job holds the admission (it is pushed before the first await).
        self.held = false;
        let pool = self.pool.clone();
        pool.submit(self.class, move || hasher.verify(&hash, &password))
            .await
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.held {
            let queue = &self.pool.handle.queue;
            queue.lock().release(&self.class);
            queue.skipped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn worker(queue: &Queue, nice: i32) {
    if nice != 0 {
        // On Linux a thread id addresses one thread, so only the hashing threads are lowered.
        let tid = rustix::thread::gettid();
        if let Err(e) = rustix::process::setpriority_process(Some(tid), nice) {
            tracing::warn!(error = %e, nice, "cannot lower the hashing thread's priority");
        }
    }
    loop {
        let mut abandoned = Vec::new();
        let job = {
            let mut state = queue.lock();
            loop {
                match state.pop_next(queue.running_per_peer) {
                    Some(job) if job.task.abandoned() => {
                        state.release(&job.class);
                        abandoned.push(job);
                    }
                    Some(job) => {
                        let running = state.start(job.class);
                        break Some((job, running));
                    }
                    None if queue.closed.load(Ordering::Acquire) => break None,
                    None if !abandoned.is_empty() => break None,
                    None => {
                        state = queue
                            .ready
                            .wait(state)
                            .unwrap_or_else(PoisonError::into_inner);
                    }
                }
            }
        };
        queue
            .skipped
            .fetch_add(abandoned.len() as u64, Ordering::Relaxed);
        // Dropped outside the lock: this wipes their passwords.
        drop(abandoned);
        let Some((Job { task, class }, running)) = job else {
            match queue.closed.load(Ordering::Acquire) {
                true => return,
                false => continue,
            }
        };
        queue.peak.fetch_max(running, Ordering::Relaxed);
        let started = std::time::Instant::now();
        task.run(&mut || {
            if let Some(observe) = queue.observer.get() {
                observe(started.elapsed());
            }
            let mut state = queue.lock();
            state.stop(&class);
            state.release(&class);
            drop(state);
            queue.completed.fetch_add(1, Ordering::Relaxed);
        });
        // A job a peer's cap held back may now run on another thread.
        queue.ready.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::password::{HashScheme, Limits};
    use std::net::Ipv4Addr;
    use std::time::{Duration, Instant};

    fn peer(last: u8) -> Class {
        Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
    }

    /// ~10 ms per verification: long enough for every spawned call to ask for admission
    /// before the first finishes.
    fn slowish() -> HashScheme {
        HashScheme::Argon2id {
            memory_kib: 8192,
            iterations: 2,
            parallelism: 1,
        }
    }

    #[tokio::test]
    async fn refuses_beyond_its_queue() {
        let pool = HashPool::new(HashPoolConfig {
            queued: 1,
            niceness: 10,
            ..HashPoolConfig::new(HashScheme::Bcrypt { cost: 10 })
        });
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

    /// Spawns one verification per entry of `classes` (all ask for admission before the
    /// first finishes) and returns, per call, its result and its place in the order answers
    /// came back (0 first).
    async fn flood(
        pool: &HashPool,
        hash: &PasswordHash,
        classes: &[Class],
    ) -> Vec<(Result<bool, HashError>, usize)> {
        let order = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = classes
            .iter()
            .map(|class| {
                let (pool, hash, order, class) =
                    (pool.clone(), hash.clone(), order.clone(), *class);
                tokio::spawn(async move {
                    let result = pool.verify_for(class, hash, b"secret1".to_vec()).await;
                    (result, order.fetch_add(1, Ordering::SeqCst))
                })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        results
    }

    /// Issue 18: one address cannot hold more than its share, and a login from another
    /// address is served next, not after everything that address queued.
    #[tokio::test]
    async fn one_peer_holds_its_share_and_another_is_served_in_turn() {
        let pool = HashPool::new(HashPoolConfig {
            concurrent: 1,
            queued: 16,
            per_peer: 4,
            ..HashPoolConfig::new(slowish())
        });
        let hash = pool.hash(Password::new(b"secret1".to_vec(), &Limits::default()).unwrap());
        let hash = hash.await.unwrap();
        let mut classes = vec![peer(2); 10];
        classes.push(peer(1));
        let results = flood(&pool, &hash, &classes).await;
        let (attacker, legit) = results.split_at(10);
        let busy = attacker
            .iter()
            .filter(|(r, _)| matches!(r, Err(HashError::Busy)))
            .count();
        assert_eq!(busy, 6, "the flooding peer got its share of 4: {results:?}");
        assert_eq!(pool.stats().refused_peer, 6);
        assert!(matches!(legit[0].0, Ok(true)), "{results:?}");
        // The busy answers come back at once. Among the computed ones, the other peer's job
        // went at most after the flooder's first two (the one a thread took first, and the
        // next in turn if the thread took it before the other peer's arrived), not after all 4.
        let later = attacker
            .iter()
            .filter(|(r, at)| r.is_ok() && *at > legit[0].1)
            .count();
        assert!(later >= 2, "served in turn, not last: {results:?}");
    }

    /// A full pool makes room for a peer holding fewer jobs by pushing out the newest waiting
    /// job of the largest holder, which gets `Busy`.
    #[tokio::test]
    async fn a_full_pool_pushes_out_the_largest_holder() {
        let pool = HashPool::new(HashPoolConfig {
            concurrent: 1,
            queued: 4,
            per_peer: 8,
            ..HashPoolConfig::new(slowish())
        });
        let hash = pool.hash(Password::new(b"secret1".to_vec(), &Limits::default()).unwrap());
        let hash = hash.await.unwrap();
        let mut classes = vec![peer(2); 5];
        classes.extend([peer(3), peer(4)]);
        let results = flood(&pool, &hash, &classes).await;
        let outcome: Vec<bool> = results.iter().map(|(r, _)| r.is_ok()).collect();
        assert_eq!(
            outcome,
            [true, true, true, false, false, true, true],
            "the flooder's two newest made room: {results:?}"
        );
        assert_eq!(pool.stats().pushed_out, 2);
        assert_eq!(pool.stats().queued, 0);
    }

    /// One address computes on at most half of the threads: with two threads, its jobs run one
    /// at a time, and another address's run beside them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_peer_computes_on_half_of_the_threads() {
        let pool = HashPool::new(HashPoolConfig {
            concurrent: 2,
            queued: 16,
            per_peer: 8,
            ..HashPoolConfig::new(slowish())
        });
        let hash = pool.hash(Password::new(b"secret1".to_vec(), &Limits::default()).unwrap());
        let hash = hash.await.unwrap();
        let peak = pool.peak_running();
        let results = flood(&pool, &hash, &[peer(2); 4]).await;
        assert!(results.iter().all(|(r, _)| r.is_ok()), "{results:?}");
        assert_eq!(
            pool.peak_running().max(peak),
            1,
            "one thread for one address"
        );
        let mut both = vec![peer(2); 3];
        both.extend([peer(3); 3]);
        let results = flood(&pool, &hash, &both).await;
        assert!(results.iter().all(|(r, _)| r.is_ok()), "{results:?}");
        assert_eq!(pool.peak_running(), 2, "two addresses use both threads");
    }

    /// Polls `future` until the pool has admitted its job, then drops it: a client that sent a
    /// login and reset the stream while the job waited.
    async fn cancel_once_admitted<F: std::future::Future>(pool: &HashPool, future: F) -> bool {
        let before = pool.stats().admitted;
        let mut future = std::pin::pin!(future);
        loop {
            tokio::select! {
                biased;
                _ = &mut future => return false,
                _ = tokio::task::yield_now() => {
                    if pool.stats().admitted > before {
                        return true;
                    }
                }
            }
        }
    }

    /// Issue 9.10: cancelled logins leave no work behind. The old pool released admission with
    /// the caller's future and kept the job, so 300 cancelled calls queued 300 hashes in front
    /// of the next real login.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancelled_jobs_hold_their_slot_and_are_skipped() {
        // ~10 ms per hash, 2 threads, a queue of 16.
        let pool = HashPool::new(HashPoolConfig {
            concurrent: 2,
            queued: 16,
            ..HashPoolConfig::new(HashScheme::Argon2id {
                memory_kib: 8192,
                iterations: 2,
                parallelism: 1,
            })
        });
        let password = Password::new(b"secret1".to_vec(), &Limits::default()).unwrap();
        let hash = pool.hash(password).await.unwrap();
        let started = Instant::now();
        assert!(
            pool.verify(hash.clone(), b"secret1".to_vec())
                .await
                .unwrap()
        );
        let one_hash = started.elapsed();

        let mut admitted = 0;
        for i in 0..300 {
            let wrong = format!("wrong-{i}").into_bytes();
            if cancel_once_admitted(&pool, pool.verify(hash.clone(), wrong)).await {
                admitted += 1;
            }
            let stats = pool.stats();
            assert!(
                stats.running + stats.queued <= 2 + 16,
                "the bound holds while callers cancel: {stats:?}"
            );
        }
        let before = pool.stats();
        let started = Instant::now();
        assert!(
            pool.verify(hash.clone(), b"secret1".to_vec())
                .await
                .unwrap()
        );
        let elapsed = started.elapsed();
        // A cancelled job a thread took just before the valid one may still be finishing.
        let mut after = pool.stats();
        for _ in 0..500 {
            if after.running == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            after = pool.stats();
        }
        // Every cancelled job was either computed because a thread took it before its caller
        // left, or skipped; none waits in the queue, and the valid call ran right after at
        // most the jobs that were already running.
        assert_eq!(after.queued, 0, "{after:?}");
        assert!(
            after.completed - before.completed <= 1 + 2,
            "only the running jobs went before it: {before:?} -> {after:?}"
        );
        assert_eq!(
            after.skipped + (after.completed - 3),
            admitted,
            "each cancelled job was skipped or computed, once: {after:?}"
        );
        assert!(after.skipped > 0, "{after:?}");
        eprintln!(
            "one hash {one_hash:?}; after 300 cancelled calls ({admitted} admitted): valid verify {elapsed:?}; {after:?}"
        );
        // Backstop only: the counters above are the real check.
        assert!(
            elapsed < one_hash * 6 + Duration::from_secs(1),
            "{elapsed:?} vs one hash {one_hash:?}"
        );
    }
}
