//! Replicas that agree, proven with real processes: a real etcd (one member, or a three-member
//! cluster), three `credstore serve` replicas A, B and C, and a gRPC client that authenticates
//! the way pymilvus does.
//!
//! The promise under test (DESIGN, "Consistency promises"): once UpdateCredential or
//! DeleteCredential returns success on replica A, B and C reject the old password on the very
//! next request — whether their caches were warm, a request was racing the change, B was frozen,
//! etcd restarted, B's watch was cut off and compacted past, or etcd lost a member and then its
//! leader. So after an acknowledged write these tests check at once, with no retry and no
//! sleep, and count every stale acceptance; the count must be zero. `common::eventually` is only
//! for what nobody acknowledged: a write retried while etcd comes back, a thawed replica
//! re-syncing.

mod common;

use common::proxy::Proxy;
use common::{Admin, Login, Probe, Reply, assert_ok, start_replicas_from, succeeded};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tonic::Code;

/// Starts replicas at once, one per `extra` config (A, B, C, …), all on `endpoints`.
fn start_replicas<const N: usize>(
    endpoints: &str,
    root: &str,
    extra: [&str; N],
) -> [common::Replica; N] {
    start_replicas_from(extra.map(|extra| common::config_yaml(endpoints, root, extra)))
}

/// Runs blocking harness code (etcd start, kill, health waits) off the async workers.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Prints a replica's log if the test fails while this guard lives: the log says what the
/// replica thought it was doing (session, watch, compaction).
struct LogOnFailure<'r>(&'static str, &'r common::Replica);

impl Drop for LogOnFailure<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- log of replica {} ----\n{}", self.0, self.1.log());
        }
    }
}

/// Collects violations and reports them together, so a failure shows how many and where.
#[derive(Default)]
struct Tally {
    checks: usize,
    stale: Vec<String>,
    wrong: Vec<String>,
}

impl Tally {
    /// Right after an acknowledged change: the old password must be refused as wrong.
    fn old_refused(&mut self, at: &str, probe: &Probe, got: Login) {
        self.checks += 1;
        match got {
            Login::Rejected => {}
            Login::Accepted => self
                .stale
                .push(format!("{at}: {} accepted the old password", probe.name)),
            other => self.wrong.push(format!(
                "{at}: {} answered {other:?} to the old password",
                probe.name
            )),
        }
    }

    fn new_accepted(&mut self, at: &str, probe: &Probe, got: Login) {
        if got != Login::Accepted {
            self.wrong.push(format!(
                "{at}: {} answered {got:?} to the current password",
                probe.name
            ));
        }
    }

    #[track_caller]
    fn assert_clean(&self) {
        let first = |v: &[String]| v.iter().take(10).cloned().collect::<Vec<_>>();
        assert!(
            self.stale.is_empty(),
            "{} stale acceptances in {} checks right after an acknowledged write; first: {:#?}",
            self.stale.len(),
            self.checks,
            first(&self.stale)
        );
        assert!(
            self.wrong.is_empty(),
            "{} unexpected answers; first: {:#?}",
            self.wrong.len(),
            first(&self.wrong)
        );
    }
}

/// Logs in twice with `password` on each probe: the first load fills the cache, the second
/// is a hit — so what a later check tests is the cache, not a fresh read.
async fn warm(probes: &[&Probe], user: &str, password: &str) {
    for probe in probes {
        for attempt in 0..2 {
            assert_eq!(
                probe.login(user, password).await,
                Login::Accepted,
                "{user} logs in on {} (attempt {attempt})",
                probe.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_change_is_refused_by_every_replica_on_the_next_request() {
    let _cluster = common::cluster_test(common::CLUSTER_TEST_LIMIT);
    let etcd = blocking(common::Etcd::start);
    let root = common::unique_root("change");
    let [a, b, c] = start_replicas(&etcd.endpoint(), &root, ["", "", ""]);
    let mut admin = Admin::connect(&a).await;
    let (pb, pc) = (Probe::connect("B", &b).await, Probe::connect("C", &c).await);

    // Created via A, acknowledged: B and C know alice at once.
    assert_ok(admin.create("alice", "pw-0000").await, "create alice via A");
    warm(&[&pb, &pc], "alice", "pw-0000").await;

    const CHANGES: usize = 200;
    let mut tally = Tally::default();
    let mut old = "pw-0000".to_string();
    for i in 1..=CHANGES {
        let new = format!("pw-{i:04}");
        assert_ok(
            admin.change("alice", &old, &new).await,
            &format!("change {i} via A"),
        );
        let at = format!("change {i}");
        // The very next request to each of B and C. The old password is cached on both (the
        // previous round's new-password check put it there).
        tally.old_refused(&at, &pb, pb.login("alice", &old).await);
        tally.old_refused(&at, &pc, pc.login("alice", &old).await);
        tally.new_accepted(&at, &pb, pb.login("alice", &new).await);
        tally.new_accepted(&at, &pc, pc.login("alice", &new).await);
        old = new;
    }
    assert_eq!(tally.checks, 2 * CHANGES);
    tally.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_user_is_refused_by_every_replica_on_the_next_request() {
    let _cluster = common::cluster_test(common::CLUSTER_TEST_LIMIT);
    let etcd = blocking(common::Etcd::start);
    let root = common::unique_root("delete");
    let [a, b, c] = start_replicas(&etcd.endpoint(), &root, ["", "", ""]);
    let mut admin = Admin::connect(&a).await;
    let (pb, pc) = (Probe::connect("B", &b).await, Probe::connect("C", &c).await);

    const USERS: usize = 20;
    let mut tally = Tally::default();
    for i in 0..USERS {
        let (user, password) = (format!("gone_{i:02}"), format!("first-{i:02}"));
        assert_ok(
            admin.create(&user, &password).await,
            &format!("create {user} via A"),
        );
        warm(&[&pb, &pc], &user, &password).await;
        assert_ok(admin.delete(&user).await, &format!("delete {user} via A"));
        let at = format!("delete {user}");
        tally.old_refused(&at, &pb, pb.login(&user, &password).await);
        tally.old_refused(&at, &pc, pc.login(&user, &password).await);
    }
    // The same names created again with other passwords: the deleted password stays refused
    // (no cache entry survives the delete), the new one works.
    for i in 0..5 {
        let (user, old, new) = (
            format!("gone_{i:02}"),
            format!("first-{i:02}"),
            format!("second-{i:02}"),
        );
        assert_ok(
            admin.create(&user, &new).await,
            &format!("create {user} again via A"),
        );
        let at = format!("re-create {user}");
        tally.old_refused(&at, &pb, pb.login(&user, &old).await);
        tally.old_refused(&at, &pc, pc.login(&user, &old).await);
        tally.new_accepted(&at, &pb, pb.login(&user, &new).await);
        tally.new_accepted(&at, &pc, pc.login(&user, &new).await);
    }
    let listed = admin.users().await;
    for i in 0..USERS {
        let user = format!("gone_{i:02}");
        assert_eq!(listed.contains(&user), i < 5, "{user} listed: {listed:?}");
    }
    tally.assert_clean();
}

/// One request of the hammer: when it was sent and what it got.
struct Shot {
    replica: &'static str,
    sent: Instant,
    got: Login,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hammer_sees_no_old_password_accepted_after_the_acknowledgement() {
    let _cluster = common::cluster_test(common::CLUSTER_TEST_LIMIT);
    hammer("hammer", Load::Idle).await;
}

/// The same with B and C busy: heavier hashes, one hash at a time, and other clients'
/// failing logins queueing in front — so a verification of the old password that started
/// before the change can still be running when A acknowledges it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hammer_on_busy_replicas_sees_no_old_password_accepted_after_the_acknowledgement() {
    let _cluster = common::cluster_test(common::CLUSTER_TEST_LIMIT);
    hammer("busy", Load::Busy).await;
}

/// What else B and C are doing while the hammer runs.
#[derive(Clone, Copy)]
enum Load {
    Idle,
    /// Heavier hashes, one at a time, with other clients' verifications queued in front.
    Busy,
}

/// `common::config_yaml` with argon2 at `memory_kib` (verifying takes real time) and at most
/// one hash computation at a time (verifications queue).
fn one_hash_at_a_time_yaml(endpoints: &str, root: &str, memory_kib: u32) -> String {
    common::TestConfig::on_etcd(endpoints, root)
        .set("credstore.password.maxConcurrentHashes", 1)
        .set("credstore.password.argon2.memoryKiB", memory_kib)
        .yaml()
}

/// Rounds of: tasks send logins with the current password to B and C every millisecond while
/// A changes it; every request sent after A's answer arrived must be refused. At least
/// `MIN_ROUNDS` rounds, then more until 40 rounds or 25 s.
async fn hammer(name: &str, load: Load) {
    let etcd = blocking(common::Etcd::start);
    let root = common::unique_root(name);
    let [a, b, c] = match load {
        Load::Idle => start_replicas(&etcd.endpoint(), &root, ["", "", ""]),
        Load::Busy => start_replicas_from(std::array::from_fn(|_| {
            one_hash_at_a_time_yaml(&etcd.endpoint(), &root, 4096)
        })),
    };
    let _logs = (LogOnFailure("B", &b), LogOnFailure("C", &c));
    let mut admin = Admin::connect(&a).await;
    let probes = [Probe::connect("B", &b).await, Probe::connect("C", &c).await];
    assert_ok(
        admin.create("hammered", "round-000").await,
        "create hammered via A",
    );
    assert_ok(
        admin.create("noisy", "noisy-pw").await,
        "create noisy via A",
    );

    // Busy replicas: other clients' wrong passwords (all different, so never coalesced) keep
    // about ten verifications queued on each of B and C.
    let stop = Arc::new(AtomicBool::new(false));
    let noise: Vec<_> = match load {
        Load::Idle => Vec::new(),
        Load::Busy => (0..20)
            .map(|n| {
                let (probe, stop) = (probes[n % 2].clone(), stop.clone());
                tokio::spawn(async move {
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        assert_eq!(
                            probe.login("noisy", &format!("wrong-{n}-{i}")).await,
                            Login::Rejected
                        );
                    }
                })
            })
            .collect(),
    };

    const ROUNDS: usize = 40;
    // Wall-clock time only adds rounds beyond these: on a loaded 2-core machine (busy
    // replicas hash with 4 MiB argon2, one at a time) a round can take seconds, and a test
    // that counted rounds within a fixed 25 s would fail for being slow, not for a stale
    // acceptance. The cluster test's time limit bounds the whole.
    const MIN_ROUNDS: usize = 10;
    const TASKS_PER_REPLICA: usize = 3;
    // Each task keeps going until it has this many answers to requests sent after the ack.
    const AFTER_ACK: usize = 8;
    let started = Instant::now();
    let (mut rounds, mut after_ack, mut accepted_before) = (0, 0, 0);
    let mut stale = Vec::new();
    let mut wrong = Vec::new();
    for round in 0..ROUNDS {
        if rounds >= MIN_ROUNDS && started.elapsed() > Duration::from_secs(25) {
            break;
        }
        let (old, new) = (
            format!("round-{round:03}"),
            format!("round-{:03}", round + 1),
        );
        // Even rounds start from warm caches (the change races cache hits); odd rounds start
        // cold (the change races the first loads of the old password).
        if round % 2 == 0 {
            warm(&probes.iter().collect::<Vec<_>>(), "hammered", &old).await;
        }
        let ack: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
        // Open loop: a request every millisecond whatever the answers, so new requests keep
        // arriving while earlier ones wait (a closed loop would stall behind a slow answer).
        let tasks: Vec<_> = probes
            .iter()
            .flat_map(|probe| std::iter::repeat_n(probe.clone(), TASKS_PER_REPLICA))
            .map(|probe| {
                let (ack, old) = (ack.clone(), old.clone());
                tokio::spawn(async move {
                    let mut requests = Vec::new();
                    let mut after = 0;
                    // A hang guard, not a timing check: counted from A's answer (5 s to send
                    // AFTER_ACK more requests), so a change that takes long on a loaded
                    // machine still gets its requests after the ack; 60 s without an answer.
                    let began = Instant::now();
                    while after < AFTER_ACK {
                        let limit = match ack.get() {
                            Some(acked) => *acked + Duration::from_secs(5),
                            None => began + Duration::from_secs(60),
                        };
                        if Instant::now() > limit {
                            break;
                        }
                        let sent = Instant::now();
                        let (probe, old) = (probe.clone(), old.clone());
                        requests.push((
                            sent,
                            tokio::spawn(async move { probe.login("hammered", &old).await }),
                        ));
                        if ack.get().is_some_and(|acked| sent > *acked) {
                            after += 1;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    let mut shots = Vec::new();
                    for (sent, request) in requests {
                        shots.push(Shot {
                            replica: probe.name,
                            sent,
                            got: request.await.expect("login task"),
                        });
                    }
                    shots
                })
            })
            .collect();
        // Vary where in the hammering the change lands.
        match round % 4 {
            0 => tokio::task::yield_now().await,
            n => tokio::time::sleep(Duration::from_millis(n as u64 * 2)).await,
        }
        let reply = admin.change("hammered", &old, &new).await;
        let acked = Instant::now();
        ack.set(acked).expect("set once");
        assert_ok(reply, &format!("round {round}: change via A"));
        for task in tasks {
            for shot in task.await.expect("hammer task") {
                match (shot.sent > acked, shot.got) {
                    (false, Login::Accepted) => accepted_before += 1,
                    (false, _) => {}
                    (true, Login::Rejected) => after_ack += 1,
                    (true, Login::Accepted) => {
                        after_ack += 1;
                        let late = shot.sent - acked;
                        stale.push(format!("round {round}: {} accepted the old password sent {late:?} after the ack", shot.replica));
                    }
                    (true, other) => wrong.push(format!(
                        "round {round}: {} answered {other:?} after the ack",
                        shot.replica
                    )),
                }
            }
        }
        rounds += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for task in noise {
        task.await.expect("noise task: wrong passwords are refused");
    }
    println!(
        "{name}: {rounds} rounds, {accepted_before} acceptances before acks, {after_ack} requests after acks, {:?}",
        started.elapsed()
    );
    assert!(rounds >= MIN_ROUNDS, "only {rounds} rounds ran");
    assert!(
        accepted_before > 0,
        "the hammer never saw the old password accepted before a change"
    );
    assert!(
        after_ack >= rounds * 2 * TASKS_PER_REPLICA * AFTER_ACK / 2,
        "too few requests after acks: {after_ack}"
    );
    assert!(
        stale.is_empty(),
        "{} stale acceptances of {after_ack} requests sent after an ack: {:#?}",
        stale.len(),
        &stale[..stale.len().min(10)]
    );
    assert!(
        wrong.is_empty(),
        "unexpected answers after acks: {:#?}",
        &wrong[..wrong.len().min(10)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_replica_never_accepts_a_password_revoked_while_it_slept() {
    let _cluster = common::cluster_test(common::CLUSTER_TEST_LIMIT);
    let etcd = blocking(common::Etcd::start);
    let root = common::unique_root("frozen");
    // B's lease lasts 3 s; A waits up to its default ack timeout (its own TTL, 10 s, plus a
    // margin), so it outlives B's lease.
    let [a, b, c] = start_replicas(
        &etcd.endpoint(),
        &root,
        ["", "  session:\n    ttlSeconds: 3\n", ""],
    );
    let mut admin = Admin::connect(&a).await;
    let (pb, pc) = (Probe::connect("B", &b).await, Probe::connect("C", &c).await);
    let _logs = (LogOnFailure("A", &a), LogOnFailure("B", &b));
    assert_ok(
        admin.create("sleeper", "before-1").await,
        "create sleeper via A",
    );
    warm(&[&pb, &pc], "sleeper", "before-1").await;

    b.freeze();
    let asked = Instant::now();
    let reply = admin.change("sleeper", "before-1", "after-2").await;
    let took = asked.elapsed();
    b.thaw();
    assert_ok(
        reply,
        "change via A while B is frozen (confirmed once B's lease expired)",
    );
    // B could not apply the change; only its lease expiring (3 s TTL, renewed every second)
    // lets A answer, so the answer cannot have come early.
    assert!(
        took >= Duration::from_millis(1500),
        "A acknowledged after {took:?}, before B's lease could expire"
    );
    assert!(took < Duration::from_secs(8), "A took {took:?}");

    let mut tally = Tally::default();
    tally.old_refused(
        "after the change",
        &pc,
        pc.login("sleeper", "before-1").await,
    );
    tally.new_accepted(
        "after the change",
        &pc,
        pc.login("sleeper", "after-2").await,
    );
    // B woke up with a cache entry for the old password; its first answer must not use it.
    let first = pb.login("sleeper", "before-1").await;
    assert!(
        matches!(first, Login::Rejected | Login::Unavailable),
        "B's first answer after SIGCONT: {first:?}"
    );
    // While B re-syncs it may refuse everything (UNAVAILABLE); it may never accept the old one.
    let mut tries = 0;
    common::eventually("B accepts the new password after re-syncing", async || {
        tries += 1;
        let old = pb.login("sleeper", "before-1").await;
        assert_ne!(
            old,
            Login::Accepted,
            "B accepted the revoked password on try {tries} after waking"
        );
        let new = pb.login("sleeper", "after-2").await;
        if tries % 20 == 0 {
            eprintln!("try {tries}: B answers {new:?} to the new password, {old:?} to the old");
        }
        new == Login::Accepted
    })
    .await;
    tally.old_refused("B re-synced", &pb, pb.login("sleeper", "before-1").await);

    // B's new session counts again: the next change waits for it, and B refuses at once.
    assert_ok(
        admin.change("sleeper", "after-2", "later-3").await,
        "change via A after B re-joined",
    );
    tally.old_refused("second change", &pb, pb.login("sleeper", "after-2").await);
    tally.old_refused("second change", &pc, pc.login("sleeper", "after-2").await);
    tally.new_accepted("second change", &pb, pb.login("sleeper", "later-3").await);
    tally.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restart_under_load_loses_no_invalidation() {
    let _cluster = common::cluster_test(common::CLUSTER_TEST_LIMIT);
    let mut etcd = blocking(common::Etcd::start);
    let root = common::unique_root("restart");
    let [a, b, c] = start_replicas(&etcd.endpoint(), &root, ["", "", ""]);
    let mut admin = Admin::connect(&a).await;
    let (pb, pc) = (Probe::connect("B", &b).await, Probe::connect("C", &c).await);
    assert_ok(admin.create("steady", "steady-0").await, "create steady");
    assert_ok(admin.create("loaded", "loaded-pw").await, "create loaded");
    assert_ok(admin.create("churned", "churn-0").await, "create churned");
    warm(&[&pb, &pc], "steady", "steady-0").await;

    // Load: logins on B and C, and password changes via A, for as long as the test runs.
    let stop = Arc::new(AtomicBool::new(false));
    let logins: Vec<_> = [pb.clone(), pc.clone()]
        .into_iter()
        .map(|probe| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    answers.push(probe.login("loaded", "loaded-pw").await);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                answers
            })
        })
        .collect();
    let writer = {
        let (stop, mut writer) = (stop.clone(), Admin::connect(&a).await);
        tokio::spawn(async move {
            let mut replies = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let (old, new) = (format!("churn-{}", n - 1), format!("churn-{n}"));
                let reply = writer.change("churned", &old, &new).await;
                replies.push((Instant::now(), reply));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            replies
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A crash and a second of downtime, then the same member on the same data.
    let killed = Instant::now();
    blocking(|| etcd.kill());
    tokio::time::sleep(Duration::from_secs(1)).await;
    blocking(|| {
        etcd.restart();
        etcd.wait_healthy();
    });
    let healthy = Instant::now();

    // Only the write may need retries while the replicas reconnect; once it is acknowledged,
    // B and C refuse the old password on their next request. A write that is stored but not
    // confirmed within the ack timeout (5 s, far above the watch's 2 s reconnect back-off)
    // means a replica's resumed watch skipped it: that must not happen.
    let mut unconfirmed = Vec::new();
    common::eventually(
        "a change via A is acknowledged after etcd restarted",
        async || {
            let reply = admin.change("steady", "steady-0", "steady-1").await;
            if let Ok(status) = &reply
                && status.reason.contains("not yet confirmed")
            {
                unconfirmed.push(status.reason.clone());
            }
            succeeded(&reply)
        },
    )
    .await;
    assert!(
        unconfirmed.is_empty(),
        "a replica did not apply a change after etcd restarted: {unconfirmed:?}"
    );
    let mut tally = Tally::default();
    tally.old_refused(
        "first change after restart",
        &pb,
        pb.login("steady", "steady-0").await,
    );
    tally.old_refused(
        "first change after restart",
        &pc,
        pc.login("steady", "steady-0").await,
    );
    tally.new_accepted(
        "first change after restart",
        &pb,
        pb.login("steady", "steady-1").await,
    );
    tally.new_accepted(
        "first change after restart",
        &pc,
        pc.login("steady", "steady-1").await,
    );
    for i in 2..=21 {
        let (old, new) = (format!("steady-{}", i - 1), format!("steady-{i}"));
        assert_ok(
            admin.change("steady", &old, &new).await,
            &format!("change {i} after restart"),
        );
        let at = format!("change {i} after restart");
        tally.old_refused(&at, &pb, pb.login("steady", &old).await);
        tally.old_refused(&at, &pc, pc.login("steady", &old).await);
        tally.new_accepted(&at, &pb, pb.login("steady", &new).await);
        tally.new_accepted(&at, &pc, pc.login("steady", &new).await);
    }

    stop.store(true, Ordering::Relaxed);
    for (probe, task) in [&pb, &pc].into_iter().zip(logins) {
        let answers = task.await.expect("login load");
        assert_eq!(
            answers.last(),
            Some(&Login::Accepted),
            "{} serves the load user again; answers: {}",
            probe.name,
            answers.len()
        );
        let odd: Vec<_> = answers
            .iter()
            .filter(|a| matches!(a, Login::Rejected | Login::Other(_)))
            .collect();
        assert!(
            odd.is_empty(),
            "{} refused a valid password or failed oddly under load: {odd:?}",
            probe.name
        );
    }
    // The writer ran before and after the outage. Writes that failed meanwhile failed with an
    // error pymilvus retries (UNAVAILABLE) or that says retrying is safe — never one that looks
    // like a deterministic refusal. (A write may also simply wait out the outage.)
    let replies = writer.await.expect("writer load");
    assert!(
        replies
            .iter()
            .any(|(at, reply)| *at < killed && succeeded(reply)),
        "no write succeeded before the kill"
    );
    assert!(
        replies
            .iter()
            .any(|(at, reply)| *at > healthy && succeeded(reply)),
        "no write succeeded after the restart"
    );
    let failed: Vec<_> = replies
        .iter()
        .filter(|(_, reply)| !succeeded(reply))
        .map(|(_, reply)| reply)
        .collect();
    let unclear: Vec<_> = failed
        .iter()
        .filter(|reply| match reply {
            Err(status) => status.code() != Code::Unavailable,
            Ok(status) => !status.reason.contains("retrying is safe"),
        })
        .collect();
    println!(
        "restart: writer load {} writes, {} failed",
        replies.len(),
        failed.len()
    );
    assert!(
        unclear.is_empty(),
        "writes failed with a non-retryable error while etcd restarted: {unclear:#?}"
    );
    tally.assert_clean();
}

/// The revision at which `key` was last written (0: absent).
async fn mod_revision(etcd: &mut etcd_client::Client, key: &str) -> i64 {
    let response = etcd.get(key, None).await.expect("etcd get");
    response.kvs().first().map_or(0, |kv| kv.mod_revision())
}

/// Cuts B off, changes `user`'s password via A (which then waits for B), lets `meanwhile` run
/// once the change is stored, restores B, and returns A's answer.
async fn change_while_cut_off(
    proxy: &Proxy,
    a: &common::Replica,
    etcd: &mut etcd_client::Client,
    key: &str,
    (user, old, new): (&str, &str, &str),
    meanwhile: impl AsyncFnOnce(&mut etcd_client::Client),
) -> Reply {
    let before = mod_revision(etcd, key).await;
    proxy.cut();
    let mut writer = Admin::connect(a).await;
    let (user, old, new) = (user.to_string(), old.to_string(), new.to_string());
    let change = tokio::spawn(async move { writer.change(&user, &old, &new).await });
    common::eventually("the change is stored in etcd", async || {
        mod_revision(etcd, key).await > before
    })
    .await;
    assert!(
        !change.is_finished(),
        "A answered while B was cut off: {:?}",
        change.await
    );
    meanwhile(etcd).await;
    proxy.restore();
    change.await.expect("the change task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_off_watch_resumes_and_flushes_after_compaction() {
    let _cluster = common::cluster_test(common::CLUSTER_TEST_LIMIT);
    let etcd = blocking(common::Etcd::start);
    let proxy = Proxy::start(etcd.client_port);
    let root = common::unique_root("compact");
    // B reaches etcd only through the proxy. A waits long enough for B to reconnect; B's
    // lease (10 s) outlives each cut, so only B's watch can bring its cache up to date.
    let [a, c] = start_replicas(&etcd.endpoint(), &root, ["  ackTimeoutMs: 15000\n", ""]);
    let b = blocking(|| common::Replica::start(&common::config_yaml(&proxy.endpoint(), &root, "")));
    let mut admin = Admin::connect(&a).await;
    let (pb, pc) = (Probe::connect("B", &b).await, Probe::connect("C", &c).await);
    let mut kv = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .expect("etcd connects");
    let key = format!("{root}/meta/root-coord/credential/users/carol");
    assert_ok(admin.create("carol", "carol-0").await, "create carol via A");
    warm(&[&pb, &pc], "carol", "carol-0").await;
    let mut tally = Tally::default();

    // 1. The watch breaks, the change happens meanwhile, the watch resumes from where it was.
    let reply = change_while_cut_off(
        &proxy,
        &a,
        &mut kv,
        &key,
        ("carol", "carol-0", "carol-1"),
        async |_| {},
    )
    .await;
    assert_ok(reply, "change via A while B was cut off");
    tally.old_refused("resumed watch", &pb, pb.login("carol", "carol-0").await);
    tally.old_refused("resumed watch", &pc, pc.login("carol", "carol-0").await);
    tally.new_accepted("resumed watch", &pb, pb.login("carol", "carol-1").await);
    warm(&[&pb, &pc], "carol", "carol-1").await;

    // 2. Same, but etcd compacts past the change before B is back: B's watch cannot resume
    //    from its applied revision, so it must flush its cache and start again.
    let filler = format!("{root}/filler");
    let reply = change_while_cut_off(
        &proxy,
        &a,
        &mut kv,
        &key,
        ("carol", "carol-1", "carol-2"),
        async |kv| {
            for i in 0..3 {
                kv.put(filler.as_str(), format!("{i}"), None)
                    .await
                    .expect("etcd put");
            }
            let now = kv
                .get(filler.as_str(), None)
                .await
                .expect("etcd get")
                .header()
                .expect("a header")
                .revision();
            kv.compact(
                now,
                Some(etcd_client::CompactionOptions::new().with_physical()),
            )
            .await
            .expect("etcd compacts");
        },
    )
    .await;
    assert_ok(reply, "change via A while B was cut off and etcd compacted");
    tally.old_refused("compacted watch", &pb, pb.login("carol", "carol-1").await);
    tally.old_refused("compacted watch", &pc, pc.login("carol", "carol-1").await);
    tally.new_accepted("compacted watch", &pb, pb.login("carol", "carol-2").await);
    tally.new_accepted("compacted watch", &pc, pc.login("carol", "carol-2").await);
    tally.assert_clean();

    // Guard against passing for the wrong reason: B went through the compaction path, and its
    // session never lapsed (a lapsed session would have flushed the cache on its own).
    let log = b.log();
    assert!(
        log.contains("compaction"),
        "B never saw its watch compacted; its log:\n{log}"
    );
    assert!(
        !log.contains("session lease expired"),
        "B lost its session; its log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_member_etcd_survives_a_member_then_the_leader() {
    let _cluster = common::cluster_test(common::CLUSTER_TEST_LIMIT);
    let mut cluster = blocking(common::EtcdCluster::start);
    let root = common::unique_root("cluster");
    let [a, b, c] = start_replicas(&cluster.endpoints(), &root, ["", "", ""]);
    let _logs = (
        LogOnFailure("A", &a),
        LogOnFailure("B", &b),
        LogOnFailure("C", &c),
    );
    let mut admin = Admin::connect(&a).await;
    let (pb, pc) = (Probe::connect("B", &b).await, Probe::connect("C", &c).await);
    // Every user written, with their current password.
    let mut users: Vec<(String, String)> = Vec::new();
    for i in 0..5 {
        let (user, password) = (format!("early_{i}"), format!("early-pw-{i}"));
        assert_ok(
            admin.create(&user, &password).await,
            &format!("create {user}"),
        );
        users.push((user, password));
    }
    let mut tally = Tally::default();

    let leader = blocking(|| cluster.leader());
    let follower = (leader + 1) % 3;
    blocking(|| cluster.members[follower].kill());
    // Two of three members still form a quorum with its leader: no retries.
    verify(
        &mut admin,
        (&pb, &pc),
        &mut users,
        "follower_down",
        FirstWrite::AtOnce,
        &mut tally,
    )
    .await;

    blocking(|| {
        cluster.members[follower].restart();
        cluster.members[follower].wait_healthy();
    });
    let leader = blocking(|| cluster.leader());
    blocking(|| cluster.members[leader].kill());
    // The survivors elect a new leader; the first write may have to wait for that.
    verify(
        &mut admin,
        (&pb, &pc),
        &mut users,
        "leader_down",
        FirstWrite::AfterElection,
        &mut tally,
    )
    .await;
    tally.assert_clean();
}

/// What the first write after a member was killed may run into.
#[derive(Clone, Copy)]
enum FirstWrite {
    /// The quorum and its leader survived: the write succeeds at once.
    AtOnce,
    /// The leader died: writes fail (retryably) until the survivors have elected a new one.
    AfterElection,
}

/// Changes the first user's password and checks B and C refuse the old one at once, creates a
/// user, and checks that every user written so far is listed and logs in on both.
async fn verify(
    admin: &mut Admin,
    (pb, pc): (&Probe, &Probe),
    users: &mut Vec<(String, String)>,
    phase: &str,
    first: FirstWrite,
    tally: &mut Tally,
) {
    let (changed, old) = users[0].clone();
    let new = format!("{phase}-changed");
    match first {
        FirstWrite::AtOnce => assert_ok(
            admin.change(&changed, &old, &new).await,
            &format!("{phase}: change {changed}"),
        ),
        // Setting the same password again is idempotent, so retrying it is safe.
        FirstWrite::AfterElection => {
            common::eventually(
                "a password change is acknowledged once etcd has a leader again",
                async || succeeded(&admin.change(&changed, &old, &new).await),
            )
            .await
        }
    }
    users[0].1 = new;
    tally.old_refused(phase, pb, pb.login(&changed, &old).await);
    tally.old_refused(phase, pc, pc.login(&changed, &old).await);

    let (user, password) = (format!("{phase}_user"), format!("{phase}-pw"));
    assert_ok(
        admin.create(&user, &password).await,
        &format!("{phase}: create {user}"),
    );
    users.push((user, password));

    let listed = admin.users().await;
    for (user, password) in users.iter() {
        assert!(
            listed.contains(user),
            "{phase}: {user} is missing from {listed:?}"
        );
        tally.new_accepted(phase, pb, pb.login(user, password).await);
        tally.new_accepted(phase, pc, pc.login(user, password).await);
    }
}
