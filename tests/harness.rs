//! Tests of the test harness itself (tests/common): a start whose etcd port was taken in the
//! meantime recovers on fresh ports, a test over its time limit stops its binary and every
//! process the harness started, cluster tests run one at a time, and configs built as values
//! load exactly as the old text templates did; `time_limit` bounds a future.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use credstore::config::{Config, Overrides};

fn load(yaml: &str) -> Config {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, yaml).expect("config written");
    Config::load(Some(&path), [], &Overrides::default())
        .unwrap_or_else(|e| panic!("config does not load ({e}):\n{yaml}"))
}

/// The text template `config_yaml` was before configs were built as values (plus the lockout
/// switched off, as `TestConfig::on_etcd` does since the lockout exists).
fn old_template(endpoints: &str, root: &str, extra: &str) -> String {
    format!(
        "etcd:\n  endpoints: \"{endpoints}\"\n  rootPath: {root}\ncommon:\n  security:\n    superUsers: root, foo\n\
credstore:\n  failedAuthDelayMs: 0\n  lockout:\n    enabled: false\n  password:\n    allowWeakParameters: true\n    argon2: {{memoryKiB: 64, iterations: 1, parallelism: 1}}\n  http:\n    port: 0\n  shutdown:\n    drainMs: 0\n{extra}"
    )
}

#[test]
fn configs_built_as_values_load_as_the_old_templates_did() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let endpoints = "127.0.0.1:2379,127.0.0.1:2380";
    for extra in [
        "",
        "  ackTimeoutMs: 18000\n",
        "  session:\n    ttlSeconds: 3\n",
        "  etcdTimeoutMs: 1000\n",
    ] {
        assert_eq!(
            load(&common::config_yaml(endpoints, "t-root", extra)),
            load(&old_template(endpoints, "t-root", extra)),
            "extra: {extra:?}"
        );
    }
    let built = common::TestConfig::on_etcd(endpoints, "t-root")
        .set("credstore.session.ttlSeconds", 3)
        .set("credstore.password.maxConcurrentHashes", 1)
        .set("credstore.password.argon2.memoryKiB", 4096);
    let text = old_template(endpoints, "t-root", "  session:\n    ttlSeconds: 3\n").replace(
        "argon2: {memoryKiB: 64,",
        "maxConcurrentHashes: 1\n    argon2: {memoryKiB: 4096,",
    );
    assert_eq!(load(&built.yaml()), load(&text));
    assert_eq!(
        load(&built.clone().remove("credstore.session").yaml()),
        load(
            &common::TestConfig::on_etcd(endpoints, "t-root")
                .set("credstore.password.maxConcurrentHashes", 1)
                .set("credstore.password.argon2.memoryKiB", 4096)
                .yaml()
        )
    );
}

#[test]
fn free_ports_are_free_and_distinct() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let ports: Vec<u16> = (0..50).map(|_| common::free_port()).collect();
    let held: Vec<TcpListener> = ports
        .iter()
        .map(|p| TcpListener::bind(("127.0.0.1", *p)).expect("a free port binds"))
        .collect();
    let mut distinct = ports.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), ports.len(), "free_port repeated a port");
    for _ in 0..50 {
        let port = common::free_port();
        assert!(
            !ports.contains(&port),
            "free_port handed out {port}, which is in use"
        );
    }
    drop(held);
}

#[test]
fn etcd_start_recovers_when_its_port_was_taken() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    // Another process took the client port between free_port and etcd's bind.
    let thief = TcpListener::bind("127.0.0.1:0").expect("a port to take");
    let taken = thief.local_addr().expect("bound").port();
    let etcd = common::Etcd::start_trying_first((taken, common::free_port()));
    assert_ne!(etcd.client_port, taken);
    let answer = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &etcd.endpoint(), "put", "k", "v"])
        .output()
        .expect("etcdctl runs");
    assert!(answer.status.success(), "the restarted etcd answers");
}

#[test]
fn etcd_cluster_start_recovers_when_a_peer_port_was_taken() {
    let _cluster = common::cluster_test(common::CLUSTER_TEST_LIMIT);
    let thief = TcpListener::bind("127.0.0.1:0").expect("a port to take");
    let taken = thief.local_addr().expect("bound").port();
    let cluster = common::EtcdCluster::start_trying_first(vec![
        (common::free_port(), common::free_port()),
        (common::free_port(), taken),
    ]);
    assert_eq!(cluster.members.len(), 3);
    assert!(cluster.members.iter().all(|m| m.is_running()));
    assert!(cluster.leader() < 3);
}

#[test]
fn cluster_tests_run_one_at_a_time() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let inside = Arc::new(AtomicBool::new(false));
    let entered = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (inside, entered) = (inside.clone(), entered.clone());
            std::thread::spawn(move || {
                let _cluster = common::cluster_test(common::CLUSTER_TEST_LIMIT);
                assert!(
                    !inside.swap(true, Ordering::SeqCst),
                    "two cluster tests at once"
                );
                entered.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
                inside.store(false, Ordering::SeqCst);
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("no overlap");
    }
    assert_eq!(entered.load(Ordering::SeqCst), 4);
}

const CHILD_ENV: &str = "CREDSTORE_HARNESS_OVER_THE_LIMIT";

/// Run only by `a_test_over_its_time_limit_stops_its_binary_and_its_processes`, in a child.
#[test]
#[ignore = "run in a child process by a_test_over_its_time_limit_stops_its_binary_and_its_processes"]
fn runs_over_its_time_limit() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let etcd = common::Etcd::start();
    println!("etcd pid {}", etcd.pid().expect("running"));
    let _watchdog = common::watchdog(Duration::from_secs(1));
    std::thread::sleep(Duration::from_secs(120));
}

fn gone(pid: u32) -> bool {
    // Gone, or a zombie waiting for init to reap it.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn a_test_over_its_time_limit_stops_its_binary_and_its_processes() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    let started = Instant::now();
    let output = Command::new(std::env::current_exe().expect("this test binary"))
        .args([
            "--exact",
            "runs_over_its_time_limit",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .expect("the test binary runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the limit did not stop the test"
    );
    assert_eq!(
        output.status.code(),
        Some(101),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stderr.contains("TIME LIMIT"), "stderr:\n{stderr}");
    let pid: u32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("etcd pid "))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("the child printed its etcd's pid:\n{stdout}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gone(pid) {
        assert!(
            Instant::now() < deadline,
            "etcd {pid} outlived its test binary"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
#[should_panic(expected = "ran over its time limit of 0.1 s")]
async fn time_limit_fails_a_future_that_runs_over() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    common::time_limit(
        Duration::from_millis(100),
        tokio::time::sleep(Duration::from_secs(30)),
    )
    .await;
}

#[tokio::test]
async fn time_limit_returns_what_the_future_gives() {
    let _watchdog = common::watchdog(common::TEST_LIMIT);
    assert_eq!(
        common::time_limit(Duration::from_secs(10), async { 7 }).await,
        7
    );
}
