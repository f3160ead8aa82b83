//! The test harness shared by the integration tests: real etcd processes (`etcd.rs`), real
//! `credstore serve` processes (`replica.rs`), an in-process server (`inprocess.rs`), a tonic client that authenticates the way
//! pymilvus does (`client.rs`) and test configs built as values (`config.rs`). This file holds
//! what every test needs besides: time limits, the cluster lock, unique root paths, patient
//! polling and external tools. Everything started here is stopped when its handle drops, so
//! nothing outlives a failed test; a test that runs over its time limit stops its whole test
//! binary and every process the harness started.
//!
//! Time limits and the cluster lock (decided here, for every test file):
//! - every test that uses this harness starts with one line,
//!   `let _watchdog = common::watchdog(common::TEST_LIMIT);`, or, if it starts a cluster
//!   (several replicas or etcd members), `let _cluster = common::cluster_test(common::CLUSTER_TEST_LIMIT);`
//!   (tests/tidy.rs checks that every such test has a limit);
//! - `cluster_test` first takes a process-wide lock, so cluster tests of one binary run one
//!   after the other (a 2-core CI machine cannot run two clusters and keep their timing
//!   assumptions); the time limit starts once the lock is held. `cargo test` runs the test
//!   binaries one after another, so no two clusters run at once anywhere.
//! - The watchdog is a thread, not a future timeout: it also catches a test stuck in a
//!   blocking call, which no `tokio::time::timeout` can interrupt. `time_limit(limit, future)`
//!   bounds a future where a test wants that instead.

#![allow(dead_code)] // each test binary uses its own part of the harness

mod client;
mod config;
mod etcd;
mod inprocess;
mod metrics;
pub mod proxy;
pub mod raw;
mod replica;
pub mod upstream;

// A test binary that uses no name of a part would warn about its re-export.
#[allow(unused_imports)]
pub use {client::*, config::*, etcd::*, inprocess::*, metrics::*, replica::*};

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

/// The time limit of a test that starts an etcd and at most one replica.
pub const TEST_LIMIT: Duration = Duration::from_secs(180);
/// The time limit of a test that starts a cluster (several replicas or etcd members), counted
/// from when it holds the cluster lock.
pub const CLUSTER_TEST_LIMIT: Duration = Duration::from_secs(300);

/// Child processes the harness started and has not stopped yet, so a test that runs over its
/// time limit can stop them before the test binary exits (drops do not run on exit).
static CHILDREN: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

fn children() -> MutexGuard<'static, BTreeSet<u32>> {
    CHILDREN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Records a child process the harness started (etcd, credstore).
pub(crate) fn register_child(pid: u32) {
    children().insert(pid);
}

/// Forgets a child process once it has been waited for.
pub(crate) fn forget_child(pid: u32) {
    children().remove(&pid);
}

/// A running watchdog; dropping it (the test ended, passed or failed) disarms it.
#[must_use = "the watchdog lasts as long as this value: bind it with `let _watchdog = …`"]
pub struct Watchdog {
    _disarm: mpsc::Sender<()>,
}

/// Starts a time limit for the calling test. If the test still runs when `limit` is over, the
/// harness prints which test ran over, kills every process it started, and exits the test
/// binary with a failure: a hung RPC or a stuck blocking call fails CI in minutes.
pub fn watchdog(limit: Duration) -> Watchdog {
    let test = std::thread::current()
        .name()
        .filter(|name| *name != "main")
        .unwrap_or("a test of this binary")
        .to_string();
    let (disarm, disarmed) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = disarmed.recv_timeout(limit) {
            eprintln!(
                "\n==== TIME LIMIT: {test} ran over its limit of {} s; stopping the processes \
                 the harness started and this test binary (pid {}) ====\n",
                limit.as_secs(),
                std::process::id()
            );
            for pid in children().iter() {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            std::process::exit(101);
        }
    });
    Watchdog { _disarm: disarm }
}

static CLUSTER_LOCK: Mutex<()> = Mutex::new(());

/// Held by a test that starts a cluster: the lock that runs cluster tests one at a time, and
/// the test's time limit, which starts once the lock is held.
#[must_use = "the lock and the limit last as long as this value: bind it with `let _cluster = …`"]
pub struct ClusterTest {
    // Declared first so it is disarmed before the lock is released.
    _watchdog: Watchdog,
    _lock: MutexGuard<'static, ()>,
}

/// Waits until no other cluster test of this binary runs, then starts a time limit of `limit`.
pub fn cluster_test(limit: Duration) -> ClusterTest {
    // A test that failed while holding the lock poisons it; the next one may still run.
    let lock = CLUSTER_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    ClusterTest {
        _watchdog: watchdog(limit),
        _lock: lock,
    }
}

/// Runs `future` for at most `limit`; past it the test fails. For a test body or a bounded
/// step inside one (`watchdog` also catches a test stuck in a blocking call).
pub async fn time_limit<T>(limit: Duration, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(value) => value,
        Err(_) => panic!("ran over its time limit of {} s", limit.as_secs_f32()),
    }
}

/// A root path no other test uses.
pub fn unique_root(name: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "t-{name}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Retries `check` until it returns true or the patience (env `CREDSTORE_TEST_PATIENCE_MS`,
/// default 10 s) runs out. Only for *unacknowledged* propagation; after an acknowledged write,
/// assert at once.
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let patience = std::env::var("CREDSTORE_TEST_PATIENCE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let deadline = Instant::now() + Duration::from_millis(patience);
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "gave up waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A throw-away CA and a server certificate for 127.0.0.1 (made with openssl), in `dir`:
/// returns (ca.pem, server.pem, server.key).
pub fn test_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| run_tool(Command::new("openssl").current_dir(dir).args(args));
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=credstore-test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// Runs an external tool to completion and fails the test, with its stderr, if it failed.
pub fn run_tool(command: &mut Command) -> std::process::Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?} cannot run: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// What an in-test `Authenticator` runs with unless a test changes a field: authentication
/// on, no super users, Milvus's limits, a 1 000-entry cache without expiry, the default
/// lockout.
pub fn authenticator_config() -> credstore::auth::AuthenticatorConfig {
    credstore::auth::AuthenticatorConfig {
        enabled: true,
        super_users: vec![],
        limits: credstore::password::Limits::default(),
        cache_capacity: 1000,
        cache_ttl: None,
        lockout: credstore::auth::LockoutPolicy::default(),
    }
}
