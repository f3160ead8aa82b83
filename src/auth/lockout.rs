//! `Lockout`: failed logins counted per (user name, peer address) and per user name, shared by
//! every replica through the store, and the locks they lead to. It stops *guessing* only:
//! the authenticator asks it nothing on a cache hit (a password this replica verified before
//! stays usable while its user is locked), and on a miss it answers before any hash is
//! computed. It never reads the store on a login; it keeps a mirror of every record (filled
//! by the watch `coherence` runs, [`Lockout::replace`] and [`Lockout::apply`]) and writes
//! only failures and resets, in coalesced conditional batches from one task
//! ([`Lockout::write_loop`]).
//!
//! The policy (`credstore.lockout.*`): `threshold` failures of one (name, peer) lock that
//! pair, `account_threshold` failures of one name from any peers lock the name (never root's:
//! break-glass stays possible, root is only pair-locked), both for `duration`; a count lapses
//! `reset` after its newest failure, and a lock's end starts the count from zero; a freshly
//! verified password resets its pair (not the account). Names that do not exist are counted
//! and locked exactly like names that do, so lock answers say nothing about who exists.
//!
//! Races: a replica admits at most its share of the remaining budget (`remaining / replicas`,
//! at least one) of attempts in flight per pair and per name; the rest are told to retry
//! (`Throttled`). Its own failures count at once; other replicas' within the time of a
//! store write and a watch event. So concurrent guesses spread over the replicas exceed a
//! threshold by about the number of replicas, not by a multiple of it.
//!
//! Memory is bounded: at most [`MAX_TRACKED`] records are kept; lapsed ones go first, then
//! the oldest unlocked ones. Times shared with other replicas are wall-clock milliseconds
//! (taken once at start and advanced by the monotonic, test-pausable tokio clock), so
//! replicas whose clocks disagree disagree by as much on when a count lapses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::audit::Audit;
use crate::auth::AuthError;
use crate::catalog::{
    Catalog, CatalogError, LockoutRecord, LockoutSubject, LockoutWrite, MAX_LOCKOUT_WRITES,
    ROOT_USER,
};
use crate::meta::Revision;
use crate::metrics::LockoutEvent;
use crate::password::Username;

/// Most records a replica keeps in memory (its own and those the watch brings).
pub const MAX_TRACKED: usize = 200_000;

/// How often a replica deletes lapsed records from the store (with some jitter, so the
/// replicas rarely sweep at once; a sweep that loses a race changes nothing).
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// `credstore.lockout.*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockoutPolicy {
    pub enabled: bool,
    /// Failures of one (name, peer) that lock the pair.
    pub threshold: u32,
    /// Failures of one name, from any peers, that lock the name (root excepted).
    pub account_threshold: u32,
    /// How long a lock lasts.
    pub duration: Duration,
    /// A count lapses this long after its newest failure.
    pub reset: Duration,
    /// Failed verifications one peer address may cost a replica per second (4× as a burst;
    /// see `pace`); 0: unpaced.
    pub peer_failures_per_second: u32,
}

impl Default for LockoutPolicy {
    /// Vault's userpass default for pairs (5 failures, 15 minutes) and NIST SP 800-63B's
    /// ceiling of 100 consecutive failures for accounts. The pace: 2 failed verifications a
    /// second cost a replica ~5 % of one core (argon2id, 23.5 ms each); 5 cost 12 %, which an
    /// address storming with made-up names took from everyone else (BENCHMARKS.md, issue 18).
    fn default() -> Self {
        LockoutPolicy {
            enabled: true,
            threshold: 5,
            account_threshold: 100,
            duration: Duration::from_secs(900),
            reset: Duration::from_secs(900),
            peer_failures_per_second: 2,
        }
    }
}

/// Told of every lock this replica's writes made and every unlock it served.
pub type LockoutObserver = Box<dyn Fn(LockoutEvent) + Send + Sync>;

/// The lockout state of one replica; cheap to clone.
#[derive(Clone)]
pub struct Lockout {
    inner: Arc<Inner>,
}

struct Inner {
    policy: LockoutPolicy,
    catalog: Catalog,
    clock: Clock,
    table: Mutex<Table>,
    /// Woken when a record has changes to write.
    dirty: Notify,
    /// Live replicas (sessions), for each one's share of a budget; set by `coherence`.
    replicas: AtomicUsize,
    report: OnceLock<Report>,
}

struct Report {
    audit: Audit,
    observer: LockoutObserver,
}

/// Wall-clock milliseconds, read from the system clock once and advanced by tokio's.
struct Clock {
    wall_ms: u64,
    start: Instant,
}

impl Clock {
    /// Reads the two clocks back to back, again if something came between them (a
    /// preempted thread would put this replica's times behind the others').
    fn new() -> Clock {
        loop {
            let before = Instant::now();
            let wall_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let start = Instant::now();
            if start.duration_since(before) < Duration::from_millis(2) {
                return Clock { wall_ms, start };
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.wall_ms + self.start.elapsed().as_millis() as u64
    }
}

/// Failures or a reset that happened here and are not yet in the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Delta {
    /// A verified password started the count over (before `failures`).
    reset: bool,
    failures: u32,
    last_ms: u64,
}

impl Delta {
    fn is_empty(&self) -> bool {
        !self.reset && self.failures == 0
    }

    /// `self` as of `now`: failures whose newest is `reset` old have lapsed (a write that
    /// was held up must not add them to a count that started since).
    fn lapsed(self, limits: Limits, now: u64) -> Delta {
        let stale = now >= self.last_ms.saturating_add(limits.reset_ms);
        match self.failures > 0 && stale {
            true => Delta {
                failures: 0,
                last_ms: 0,
                ..self
            },
            false => self,
        }
    }

    /// `self`, then `later`.
    fn then(self, later: Delta) -> Delta {
        match later.reset {
            true => later,
            false => Delta {
                reset: self.reset,
                failures: self.failures + later.failures,
                last_ms: self.last_ms.max(later.last_ms),
            },
        }
    }
}

/// What one replica knows of one subject.
#[derive(Debug, Default)]
struct Entry {
    /// The record as stored (as of `revision`); `None`: absent.
    stored: Option<LockoutRecord>,
    /// The newest store revision this entry reflects: the record's mod revision, or the
    /// revision at which it was seen absent. Older watch events are ignored.
    revision: Revision,
    /// Changes not yet sent.
    pending: Delta,
    /// Changes being written now, and the revision of the record they are written on.
    sending: Option<(Delta, Revision)>,
    /// Attempts this replica is verifying now.
    in_flight: u32,
    /// Listed in `Table::dirty`.
    queued: bool,
}

impl Entry {
    fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.sending.is_none() && self.in_flight == 0
    }

    /// The count as this replica sees it now: the stored record (lapsed as of `now`), then
    /// what is being sent, then what is pending — lapsed as a whole as of `now` too. What is
    /// being sent counts only while the record is still the one it is written on: once the
    /// record moved (the watch may bring the write before the writer hears it landed), it
    /// either holds those failures or the write loses its race and they are pending again.
    fn view(&self, limits: Limits, now: u64) -> LockoutRecord {
        let base = self
            .stored
            .map(|r| lapsed(r, limits, now))
            .unwrap_or_default();
        let sending = self
            .sending
            .filter(|(_, on)| *on == self.revision)
            .map(|(delta, _)| delta);
        let local = sending.unwrap_or_default().then(self.pending);
        lapsed(with(base, local.lapsed(limits, now), limits), limits, now)
    }
}

/// The threshold and times that apply to one subject.
#[derive(Clone, Copy, Debug)]
struct Limits {
    threshold: u32,
    duration_ms: u64,
    reset_ms: u64,
}

/// `record` as of `now`: a lock in force stays; an ended lock, or a count whose newest
/// failure is `reset` old, is zero.
fn lapsed(record: LockoutRecord, limits: Limits, now: u64) -> LockoutRecord {
    if record.locked_until_ms > now {
        return record;
    }
    let ended = record.locked_until_ms != 0;
    let stale = now >= record.last_failure_ms.saturating_add(limits.reset_ms);
    match ended || stale {
        true => LockoutRecord::default(),
        false => record,
    }
}

/// `record` after `delta`; the failure that reaches the threshold starts a lock.
fn with(record: LockoutRecord, delta: Delta, limits: Limits) -> LockoutRecord {
    let mut record = match delta.reset {
        true => LockoutRecord::default(),
        false => record,
    };
    if delta.failures > 0 {
        record.failures = record.failures.saturating_add(delta.failures);
        record.last_failure_ms = record.last_failure_ms.max(delta.last_ms);
        if record.locked_until_ms == 0 && record.failures >= limits.threshold {
            record.locked_until_ms = record.last_failure_ms + limits.duration_ms;
        }
    }
    record
}

fn is_locked(record: &LockoutRecord, now: u64) -> bool {
    record.locked_until_ms > now
}

fn is_zero(record: &LockoutRecord) -> bool {
    record.failures == 0 && record.locked_until_ms == 0
}

#[derive(Default)]
struct Table {
    entries: HashMap<LockoutSubject, Entry>,
    /// Subjects with pending changes, oldest first.
    dirty: Vec<LockoutSubject>,
}

impl Table {
    fn mark_dirty(&mut self, subject: &LockoutSubject) {
        if let Some(entry) = self.entries.get_mut(subject)
            && !entry.queued
        {
            entry.queued = true;
            self.dirty.push(subject.clone());
        }
    }

    /// Forgets an entry that holds nothing worth keeping.
    fn drop_if_empty(&mut self, subject: &LockoutSubject) {
        let empty = self
            .entries
            .get(subject)
            .is_some_and(|e| e.stored.is_none() && e.is_idle() && !e.queued);
        if empty {
            self.entries.remove(subject);
        }
    }
}

/// How one attempt ended, for [`Attempt`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Failed,
    Succeeded,
    /// Neither: the store or the hash pool could not answer. Nothing is counted.
    Undecided,
}

/// An admitted attempt at a (user, peer) pair: holds its place in the in-flight budgets
/// until it is told how it ended (or dropped: nothing counted).
pub(crate) struct Attempt {
    lockout: Option<Lockout>,
    subjects: Vec<LockoutSubject>,
}

impl Attempt {
    /// A wrong password (or an unknown name): counted for the pair and the account.
    pub(crate) fn failed(mut self) {
        self.finish(Outcome::Failed);
    }

    /// A freshly verified password: the pair starts from zero (the account does not).
    pub(crate) fn succeeded(mut self) {
        self.finish(Outcome::Succeeded);
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(lockout) = self.lockout.take() {
            lockout.finish(&self.subjects, outcome);
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.finish(Outcome::Undecided);
    }
}

/// A batch the writer is sending: per subject, what it read and what it adds.
struct Sending {
    subject: LockoutSubject,
    stored: Option<LockoutRecord>,
    revision: Revision,
    delta: Delta,
}

impl Lockout {
    pub fn new(policy: LockoutPolicy, catalog: Catalog) -> Lockout {
        Lockout {
            inner: Arc::new(Inner {
                policy,
                catalog,
                clock: Clock::new(),
                table: Mutex::new(Table::default()),
                dirty: Notify::new(),
                replicas: AtomicUsize::new(1),
                report: OnceLock::new(),
            }),
        }
    }

    pub fn policy(&self) -> &LockoutPolicy {
        &self.inner.policy
    }

    /// Writes lock lines to `audit` and tells `observer` of locks and unlocks (set once).
    pub fn report_to(&self, audit: Audit, observer: LockoutObserver) {
        let _ = self.inner.report.set(Report { audit, observer });
    }

    /// How many replicas share the budgets (at least one).
    pub fn set_replicas(&self, replicas: usize) {
        self.inner
            .replicas
            .store(replicas.max(1), Ordering::Relaxed);
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // Nothing panics while holding it; a poisoned table is still a valid table.
        self.inner
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn limits(&self, subject: &LockoutSubject) -> Limits {
        let policy = &self.inner.policy;
        Limits {
            threshold: match subject {
                LockoutSubject::Pair(..) => policy.threshold,
                LockoutSubject::Account(_) => policy.account_threshold,
            },
            duration_ms: policy.duration.as_millis() as u64,
            reset_ms: policy.reset.as_millis() as u64,
        }
    }

    /// What a login of `user` from `peer` counts towards: its pair, and its name unless it
    /// is root's (root is never account-locked).
    fn subjects(user: &Username, peer: Option<IpAddr>) -> Vec<LockoutSubject> {
        let pair = LockoutSubject::Pair(user.clone(), peer);
        match user.as_str() == ROOT_USER {
            true => vec![pair],
            false => vec![pair, LockoutSubject::Account(user.clone())],
        }
    }

    /// The lock answer, if `subjects` (account first) are locked as of `now`.
    fn lock_answer(
        &self,
        table: &Table,
        subjects: &[LockoutSubject],
        now: u64,
    ) -> Option<AuthError> {
        subjects.iter().rev().find_map(|subject| {
            let view = table.entries.get(subject)?.view(self.limits(subject), now);
            is_locked(&view, now).then(|| AuthError::Locked {
                account: matches!(subject, LockoutSubject::Account(_)),
                seconds: (view.locked_until_ms - now).div_ceil(1000),
            })
        })
    }

    /// Refuses a login of `user` from `peer` that is locked (before it may join a
    /// verification already running for the same password from elsewhere).
    pub(crate) fn check(&self, user: &Username, peer: Option<IpAddr>) -> Result<(), AuthError> {
        if !self.inner.policy.enabled {
            return Ok(());
        }
        let now = self.inner.clock.now_ms();
        let subjects = Lockout::subjects(user, peer);
        match self.lock_answer(&self.table(), &subjects, now) {
            Some(answer) => Err(answer),
            None => Ok(()),
        }
    }

    /// Admits one verification of `user`'s password from `peer`: refused with the lock
    /// answer while locked, or told to retry (`Throttled`) while this replica's share of the
    /// remaining budget is already being verified.
    pub(crate) fn attempt(
        &self,
        user: &Username,
        peer: Option<IpAddr>,
    ) -> Result<Attempt, AuthError> {
        if !self.inner.policy.enabled {
            return Ok(Attempt {
                lockout: None,
                subjects: Vec::new(),
            });
        }
        let now = self.inner.clock.now_ms();
        let subjects = Lockout::subjects(user, peer);
        let replicas = self.inner.replicas.load(Ordering::Relaxed) as u32;
        let mut table = self.table();
        if let Some(answer) = self.lock_answer(&table, &subjects, now) {
            return Err(answer);
        }
        for subject in &subjects {
            let Some(entry) = table.entries.get(subject) else {
                continue;
            };
            let limits = self.limits(subject);
            let remaining = limits
                .threshold
                .saturating_sub(entry.view(limits, now).failures);
            if entry.in_flight >= remaining.div_ceil(replicas).max(1) {
                return Err(AuthError::Throttled);
            }
        }
        if table.entries.len() + subjects.len() > MAX_TRACKED {
            self.make_room(&mut table, now);
        }
        for subject in &subjects {
            table.entries.entry(subject.clone()).or_default().in_flight += 1;
        }
        Ok(Attempt {
            lockout: Some(self.clone()),
            subjects,
        })
    }

    fn finish(&self, subjects: &[LockoutSubject], outcome: Outcome) {
        let now = self.inner.clock.now_ms();
        let mut table = self.table();
        let mut wrote = false;
        for subject in subjects {
            let Some(entry) = table.entries.get_mut(subject) else {
                continue;
            };
            entry.in_flight = entry.in_flight.saturating_sub(1);
            if outcome == Outcome::Failed && is_zero(&entry.view(self.limits(subject), now)) {
                // Everything counted here has lapsed (or its lock ended): count anew, so
                // failures not yet written cannot add up across a lapse.
                entry.pending.failures = 0;
            }
            let change = match (outcome, subject) {
                (Outcome::Failed, _) => Some(Delta {
                    reset: false,
                    failures: 1,
                    last_ms: now,
                }),
                // Only a pair with something counted has anything to reset.
                (Outcome::Succeeded, LockoutSubject::Pair(..))
                    if entry.stored.is_some() || !entry.is_idle() =>
                {
                    Some(Delta {
                        reset: true,
                        ..Delta::default()
                    })
                }
                _ => None,
            };
            if let Some(change) = change {
                entry.pending = entry.pending.then(change);
                table.mark_dirty(subject);
                wrote = true;
            }
            table.drop_if_empty(subject);
        }
        drop(table);
        if wrote {
            self.inner.dirty.notify_one();
        }
    }

    /// Keeps the table under [`MAX_TRACKED`]: drops records that have lapsed, then the
    /// oldest that are not locked, then the oldest locks (only entries with nothing local in
    /// flight; a record dropped here that is still stored is re-read if it is written again).
    fn make_room(&self, table: &mut Table, now: u64) {
        let target = MAX_TRACKED * 9 / 10;
        let mut candidates: Vec<(bool, u64, LockoutSubject)> = table
            .entries
            .iter()
            .filter(|(_, e)| e.is_idle() && !e.queued)
            .map(|(s, e)| {
                let view = e.view(self.limits(s), now);
                (
                    is_locked(&view, now),
                    view.last_failure_ms * u64::from(!is_zero(&view)),
                    s.clone(),
                )
            })
            .collect();
        candidates.sort_unstable_by_key(|(locked, last, _)| (*locked, *last));
        let excess = table.entries.len().saturating_sub(target);
        for (_, _, subject) in candidates.into_iter().take(excess) {
            table.entries.remove(&subject);
        }
    }

    /// Replaces the mirror with a listing read at `revision` (the watch's start, or after a
    /// compaction). Entries this replica knows newer than the listing keep what they have.
    pub fn replace(
        &self,
        records: Vec<(LockoutSubject, LockoutRecord, Revision)>,
        revision: Revision,
    ) {
        let mut table = self.table();
        let mut listed = std::collections::HashSet::new();
        for (subject, record, mod_revision) in records {
            listed.insert(subject.clone());
            Lockout::store(&mut table, subject, Some(record), mod_revision);
        }
        let absent: Vec<LockoutSubject> = table
            .entries
            .keys()
            .filter(|s| !listed.contains(*s))
            .cloned()
            .collect();
        for subject in absent {
            Lockout::store(&mut table, subject, None, revision);
        }
        let now = self.inner.clock.now_ms();
        if table.entries.len() > MAX_TRACKED {
            self.make_room(&mut table, now);
        }
    }

    /// Applies one watched change of `subject`'s record (`None`: deleted) at `revision`.
    pub fn apply(
        &self,
        subject: LockoutSubject,
        record: Option<LockoutRecord>,
        revision: Revision,
    ) {
        let mut table = self.table();
        let known = table.entries.contains_key(&subject);
        if !known && table.entries.len() >= MAX_TRACKED {
            let now = self.inner.clock.now_ms();
            self.make_room(&mut table, now);
        }
        if known || record.is_some() {
            Lockout::store(&mut table, subject, record, revision);
        }
    }

    /// Records that the store holds `record` for `subject` as of `revision`, unless this
    /// replica already knows a newer state.
    fn store(
        table: &mut Table,
        subject: LockoutSubject,
        record: Option<LockoutRecord>,
        revision: Revision,
    ) {
        let entry = table.entries.entry(subject.clone()).or_default();
        if revision > entry.revision {
            entry.stored = record;
            entry.revision = revision;
        }
        table.drop_if_empty(&subject);
    }

    /// Takes up to one transaction's worth of pending changes and marks them as being sent.
    fn take_batch(&self) -> Vec<Sending> {
        let mut table = self.table();
        let Table { entries, dirty } = &mut *table;
        let take = dirty.len().min(MAX_LOCKOUT_WRITES);
        let mut batch = Vec::with_capacity(take);
        for subject in dirty.drain(..take) {
            let Some(entry) = entries.get_mut(&subject) else {
                continue;
            };
            entry.queued = false;
            if entry.pending.is_empty() {
                continue;
            }
            let delta = std::mem::take(&mut entry.pending);
            entry.sending = Some((delta, entry.revision));
            batch.push(Sending {
                subject,
                stored: entry.stored,
                revision: entry.revision,
                delta,
            });
        }
        batch
    }

    /// Puts a batch that could not be written back in front of what arrived meanwhile.
    fn requeue(&self, batch: &[Sending]) {
        let mut table = self.table();
        for sent in batch {
            if let Some(entry) = table.entries.get_mut(&sent.subject) {
                let sending = entry.sending.take().map(|(d, _)| d).unwrap_or_default();
                entry.pending = sending.then(entry.pending);
            }
            table.mark_dirty(&sent.subject);
        }
    }

    /// Writes pending failures and resets until the task is stopped (its owner aborts it),
    /// a batch at a time; deletes lapsed records now and then.
    pub async fn write_loop(self) {
        let mut backoff = Duration::from_millis(50);
        let mut sweep_at = Instant::now() + jittered(SWEEP_EVERY);
        loop {
            let batch = self.take_batch();
            if batch.is_empty() {
                tokio::select! {
                    _ = self.inner.dirty.notified() => {}
                    _ = tokio::time::sleep_until(sweep_at) => {
                        self.sweep().await;
                        sweep_at = Instant::now() + jittered(SWEEP_EVERY);
                    }
                }
                continue;
            }
            match self.write(&batch).await {
                Ok(()) => backoff = Duration::from_millis(50),
                Err(e) => {
                    self.requeue(&batch);
                    tracing::warn!(error = %e, "cannot record failed logins; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Writes whatever is pending now (a clean shutdown), for at most `within`.
    pub async fn flush(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let batch = self.take_batch();
            if batch.is_empty() {
                return;
            }
            match tokio::time::timeout_at(deadline, self.write(&batch)).await {
                Ok(Ok(())) => {}
                _ => {
                    self.requeue(&batch);
                    return;
                }
            }
        }
    }

    /// One conditional transaction for `batch`. Lost a race (a key changed since it was
    /// seen): re-reads those keys and puts the batch back, to be counted on the new values.
    async fn write(&self, batch: &[Sending]) -> Result<(), CatalogError> {
        let now = self.inner.clock.now_ms();
        let mut writes = Vec::with_capacity(batch.len());
        let mut results = Vec::with_capacity(batch.len());
        for sent in batch {
            let limits = self.limits(&sent.subject);
            let before = sent
                .stored
                .map(|r| lapsed(r, limits, now))
                .unwrap_or_default();
            let after = with(before, sent.delta.lapsed(limits, now), limits);
            let value = (!is_zero(&after)).then_some(after);
            let expected = sent.stored.map(|_| sent.revision);
            if value.is_some() || expected.is_some() {
                writes.push(LockoutWrite {
                    subject: sent.subject.clone(),
                    expected,
                    value,
                });
            }
            results.push((before, value));
        }
        let outcome = match writes.is_empty() {
            true => None,
            false => Some(self.inner.catalog.write_lockouts(&writes).await?),
        };
        if let Some(outcome) = outcome
            && !outcome.succeeded
        {
            for sent in batch {
                let read = self.inner.catalog.get_lockout(&sent.subject).await?;
                let (record, revision) = match read.value {
                    Some((record, mod_revision)) => (Some(record), mod_revision),
                    None => (None, read.revision),
                };
                let mut table = self.table();
                Lockout::store(&mut table, sent.subject.clone(), record, revision);
            }
            self.requeue(batch);
            return Ok(());
        }
        let mut table = self.table();
        for (sent, (before, after)) in batch.iter().zip(results) {
            if let Some(entry) = table.entries.get_mut(&sent.subject) {
                entry.sending = None;
                // Unless the watch already brought this write, or a newer one.
                if let Some(outcome) = outcome
                    && outcome.revision > entry.revision
                {
                    entry.stored = after;
                    entry.revision = outcome.revision;
                }
            }
            table.drop_if_empty(&sent.subject);
            if let Some(after) = after
                && !is_locked(&before, now)
                && is_locked(&after, now)
            {
                self.report_lock(&sent.subject, &after);
            }
        }
        Ok(())
    }

    fn report_lock(&self, subject: &LockoutSubject, record: &LockoutRecord) {
        let (peer, event, scope) = match subject {
            LockoutSubject::Pair(_, peer) => (*peer, LockoutEvent::PairLocked, "pair"),
            LockoutSubject::Account(_) => (None, LockoutEvent::AccountLocked, "account"),
        };
        let user = subject.user().as_str();
        tracing::warn!(
            user,
            ?peer,
            scope,
            failures = record.failures,
            "login attempts locked after repeated failures"
        );
        if let Some(report) = self.inner.report.get() {
            (report.observer)(event);
            report
                .audit
                .lockout(user, peer, scope, record.failures, record.locked_until_ms);
        }
    }

    /// Deletes records that have lapsed from the store (conditional on their revision: a
    /// record written meanwhile stays), and forgets them here.
    async fn sweep(&self) {
        let now = self.inner.clock.now_ms();
        let lapsed: Vec<LockoutWrite> = {
            let table = self.table();
            table
                .entries
                .iter()
                .filter(|(s, e)| {
                    e.is_idle()
                        && !e.queued
                        && e.stored.is_some()
                        && is_zero(&e.view(self.limits(s), now))
                })
                .map(|(subject, e)| LockoutWrite {
                    subject: subject.clone(),
                    expected: Some(e.revision),
                    value: None,
                })
                .collect()
        };
        for batch in lapsed.chunks(MAX_LOCKOUT_WRITES) {
            match self.inner.catalog.write_lockouts(batch).await {
                Ok(outcome) if outcome.succeeded => {
                    let mut table = self.table();
                    for write in batch {
                        Lockout::store(&mut table, write.subject.clone(), None, outcome.revision);
                    }
                }
                // Another replica swept (or counted) first: its events update the mirror.
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "cannot delete lapsed lockout records");
                    return;
                }
            }
        }
    }

    /// Lifts every lock and count of `user` (its account and every pair) in the store and
    /// here; other replicas follow through the watch. Returns the revision and whether
    /// anything was locked.
    pub async fn unlock(&self, user: &Username) -> Result<(Revision, bool), CatalogError> {
        let now = self.inner.clock.now_ms();
        let was_locked = {
            let table = self.table();
            table.entries.iter().any(|(subject, entry)| {
                subject.user() == user && is_locked(&entry.view(self.limits(subject), now), now)
            })
        };
        let revision = self.inner.catalog.clear_lockouts(user).await?;
        {
            let mut table = self.table();
            let mine: Vec<LockoutSubject> = table
                .entries
                .keys()
                .filter(|s| s.user() == user)
                .cloned()
                .collect();
            for subject in mine {
                if let Some(entry) = table.entries.get_mut(&subject) {
                    entry.pending = Delta::default();
                }
                Lockout::store(&mut table, subject, None, revision);
            }
        }
        if let Some(report) = self.inner.report.get() {
            (report.observer)(LockoutEvent::Unlocked);
        }
        tracing::info!(user = %user, was_locked, "login lockout lifted");
        Ok((revision, was_locked))
    }

    /// Pairs and names locked now, as this replica sees them (for `/metrics`).
    pub fn locked_counts(&self) -> LockedCounts {
        let now = self.inner.clock.now_ms();
        let table = self.table();
        let mut counts = LockedCounts::default();
        for (subject, entry) in &table.entries {
            if is_locked(&entry.view(self.limits(subject), now), now) {
                match subject {
                    LockoutSubject::Pair(..) => counts.pairs += 1,
                    LockoutSubject::Account(_) => counts.accounts += 1,
                }
            }
        }
        counts.tracked = table.entries.len();
        counts
    }
}

/// What [`Lockout::locked_counts`] reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockedCounts {
    pub pairs: usize,
    pub accounts: usize,
    /// Records held in memory.
    pub tracked: usize,
}

/// `every` plus up to half of it, so replicas started together do not act together.
fn jittered(every: Duration) -> Duration {
    let mut random = [0u8; 2];
    let _ = getrandom::fill(&mut random);
    every + every.mul_f64(f64::from(u16::from_le_bytes(random)) / f64::from(u16::MAX) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{EmbeddedKv, Store};
    use crate::password::Limits as NameLimits;

    const LIMITS: Limits = Limits {
        threshold: 5,
        duration_ms: 900_000,
        reset_ms: 900_000,
    };

    fn record(failures: u32, last: u64, until: u64) -> LockoutRecord {
        LockoutRecord {
            failures,
            last_failure_ms: last,
            locked_until_ms: until,
        }
    }

    fn fails(n: u32, last: u64) -> Delta {
        Delta {
            reset: false,
            failures: n,
            last_ms: last,
        }
    }

    /// (stored, delta, now) → the count a replica sees.
    fn check(stored: LockoutRecord, delta: Delta, now: u64, expected: LockoutRecord) {
        let got = with(lapsed(stored, LIMITS, now), delta, LIMITS);
        assert_eq!(got, expected, "{stored:?} + {delta:?} at {now}");
    }

    #[test]
    fn counts_lock_lapse_and_reset() {
        let none = Delta::default();
        let reset = Delta {
            reset: true,
            ..Delta::default()
        };
        // Four failures are a count; the fifth locks for the duration, from that failure.
        check(record(4, 10, 0), none, 20, record(4, 10, 0));
        check(record(4, 10, 0), fails(1, 20), 20, record(5, 20, 900_020));
        check(record(0, 0, 0), fails(7, 30), 30, record(7, 30, 900_030));
        // A count lapses `reset` after its newest failure; a lock lasts its duration.
        check(record(4, 10, 0), none, 900_010, LockoutRecord::default());
        check(
            record(4, 10, 0),
            fails(1, 900_010),
            900_010,
            record(1, 900_010, 0),
        );
        check(
            record(5, 20, 900_020),
            none,
            900_019,
            record(5, 20, 900_020),
        );
        // An ended lock starts the count from zero.
        check(
            record(5, 20, 900_020),
            fails(1, 900_020),
            900_020,
            record(1, 900_020, 0),
        );
        // A verified password starts the pair over; failures after it count.
        check(record(4, 10, 0), reset, 20, LockoutRecord::default());
        let reset_then_two = reset.then(fails(2, 40));
        check(record(4, 10, 0), reset_then_two, 40, record(2, 40, 0));
        // Failures before a reset are gone; a lock is lifted only by its end or an unlock,
        // never by a reset (a locked pair is never verified).
        assert_eq!(fails(3, 5).then(reset), reset);
        // More failures during a lock do not extend it.
        check(
            record(5, 20, 900_020),
            fails(1, 25),
            25,
            record(6, 25, 900_020),
        );
        // Failures held up (not written) until they lapsed add nothing to a newer count.
        let held_up = fails(3, 10).lapsed(LIMITS, 900_010);
        check(
            record(1, 900_005, 0),
            held_up,
            900_010,
            record(1, 900_005, 0),
        );
        assert_eq!(fails(3, 10).lapsed(LIMITS, 900_009), fails(3, 10));
    }

    fn name(raw: &str) -> Username {
        Username::parse_exact(raw, &NameLimits::default()).unwrap()
    }

    fn lockout(dir: &tempfile::TempDir, policy: LockoutPolicy) -> (Lockout, Catalog) {
        let store = Store::Embedded(EmbeddedKv::open(&dir.path().join("kv.redb")).unwrap());
        let catalog = Catalog::new(store, "t/meta");
        (Lockout::new(policy, catalog.clone()), catalog)
    }

    fn peer(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([127, 0, 0, last]))
    }

    fn fail(lockout: &Lockout, user: &str, from: Option<IpAddr>) -> Result<(), AuthError> {
        lockout.attempt(&name(user), from).map(Attempt::failed)
    }

    #[tokio::test(start_paused = true)]
    async fn a_pair_locks_at_the_threshold_and_lapses_after_the_duration() {
        let dir = tempfile::tempdir().unwrap();
        let (lockout, _) = lockout(&dir, LockoutPolicy::default());
        for _ in 0..5 {
            fail(&lockout, "alice", peer(2)).unwrap();
        }
        let answer = lockout.check(&name("alice"), peer(2)).unwrap_err();
        assert_eq!(
            answer,
            AuthError::Locked {
                account: false,
                seconds: 900
            }
        );
        assert!(answer.to_string().contains("locked"), "{answer}");
        // Another address, and the same address for another name, are not locked.
        assert_eq!(lockout.check(&name("alice"), peer(3)), Ok(()));
        assert_eq!(lockout.check(&name("bob"), peer(2)), Ok(()));
        assert_eq!(lockout.locked_counts().pairs, 1);
        tokio::time::advance(Duration::from_secs(900)).await;
        assert_eq!(lockout.check(&name("alice"), peer(2)), Ok(()));
        // The lock's end started the count over: one failure does not lock again.
        fail(&lockout, "alice", peer(2)).unwrap();
        assert_eq!(lockout.check(&name("alice"), peer(2)), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_locks_across_addresses_but_root_only_per_address() {
        let dir = tempfile::tempdir().unwrap();
        let policy = LockoutPolicy {
            account_threshold: 10,
            ..LockoutPolicy::default()
        };
        let (lockout, _) = lockout(&dir, policy);
        for last in 10..20 {
            fail(&lockout, "ghost", peer(last)).unwrap();
            fail(&lockout, ROOT_USER, peer(last)).unwrap();
        }
        assert_eq!(
            lockout.check(&name("ghost"), peer(99)),
            Err(AuthError::Locked {
                account: true,
                seconds: 900
            })
        );
        assert_eq!(lockout.check(&name(ROOT_USER), peer(99)), Ok(()));
        let counts = lockout.locked_counts();
        assert_eq!((counts.pairs, counts.accounts), (0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_verified_password_resets_its_pair_only_and_counts_lapse() {
        let dir = tempfile::tempdir().unwrap();
        let policy = LockoutPolicy {
            account_threshold: 8,
            ..LockoutPolicy::default()
        };
        let (lockout, _) = lockout(&dir, policy);
        for _ in 0..4 {
            fail(&lockout, "alice", peer(2)).unwrap();
        }
        lockout
            .attempt(&name("alice"), peer(2))
            .unwrap()
            .succeeded();
        for _ in 0..4 {
            fail(&lockout, "alice", peer(2)).unwrap();
        }
        // 4 since the reset: the pair is open; 8 on the name: the account is locked.
        let answer = lockout.check(&name("alice"), peer(3)).unwrap_err();
        assert!(matches!(answer, AuthError::Locked { account: true, .. }));
        let dir = tempfile::tempdir().unwrap();
        let (lockout, _) = self::lockout(&dir, LockoutPolicy::default());
        for _ in 0..4 {
            fail(&lockout, "alice", peer(2)).unwrap();
        }
        tokio::time::advance(Duration::from_secs(900)).await;
        for _ in 0..4 {
            fail(&lockout, "alice", peer(2)).unwrap();
        }
        assert_eq!(lockout.check(&name("alice"), peer(2)), Ok(()));
    }

    /// A replica keeps at most its share of what is left of a budget in flight, so guesses
    /// sent all at once cannot overshoot a threshold by more than a few.
    #[tokio::test(start_paused = true)]
    async fn attempts_in_flight_take_shares_of_what_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let (lockout, _) = lockout(&dir, LockoutPolicy::default());
        lockout.set_replicas(2);
        let held: Vec<Attempt> = (0..3)
            .map(|_| lockout.attempt(&name("alice"), peer(2)).unwrap())
            .collect();
        assert_eq!(
            lockout.attempt(&name("alice"), peer(2)).err(),
            Some(AuthError::Throttled),
            "ceil(5 / 2) = 3 in flight"
        );
        for attempt in held {
            attempt.failed();
        }
        // 3 failures: ceil(2 / 2) = 1 more at a time.
        let one = lockout.attempt(&name("alice"), peer(2)).unwrap();
        assert!(lockout.attempt(&name("alice"), peer(2)).is_err());
        drop(one);
        assert!(lockout.attempt(&name("alice"), peer(2)).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_writer_stores_counts_and_another_replica_sees_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, catalog) = lockout(&dir, LockoutPolicy::default());
        let reader = Lockout::new(LockoutPolicy::default(), catalog.clone());
        for _ in 0..5 {
            fail(&writer, "alice", peer(2)).unwrap();
        }
        writer.flush(Duration::from_secs(5)).await;
        let listed = catalog.list_lockouts().await.unwrap();
        let pair = LockoutSubject::Pair(name("alice"), peer(2));
        let stored = listed.value.iter().find(|(s, ..)| *s == pair).unwrap();
        assert_eq!(stored.1.failures, 5);
        reader.replace(listed.value.clone(), listed.revision);
        assert!(matches!(
            reader.check(&name("alice"), peer(2)),
            Err(AuthError::Locked { account: false, .. })
        ));
        // A second writer counting on a stale view loses the race, re-reads, and adds.
        fail(&reader, "bob", peer(2)).unwrap();
        fail(&writer, "bob", peer(2)).unwrap();
        writer.flush(Duration::from_secs(5)).await;
        reader.flush(Duration::from_secs(5)).await;
        let bob = LockoutSubject::Pair(name("bob"), peer(2));
        let stored = catalog.get_lockout(&bob).await.unwrap().value.unwrap();
        assert_eq!(stored.0.failures, 2, "no count lost");
        // Unlock clears the store and the unlocking replica at once.
        let (_, was_locked) = writer.unlock(&name("alice")).await.unwrap();
        assert!(was_locked);
        assert_eq!(writer.check(&name("alice"), peer(2)), Ok(()));
        assert!(catalog.get_lockout(&pair).await.unwrap().value.is_none());
    }
}
