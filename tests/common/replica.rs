//! Real `credstore serve` processes for the tests: started with a config file, ready when
//! their log says so, frozen and thawed with signals, killed when their handle drops. Each
//! replica listens on a port the kernel picks (`127.0.0.1:0`) and reports it in its ready
//! line, so replica ports never race.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use super::{forget_child, register_child};

/// How long a replica may take to print its ready line.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// A `credstore serve` process.
pub struct Replica {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Replica {
    /// Starts `credstore serve` with `yaml` (see `TestConfig`) and waits for its ready line.
    pub fn start(yaml: &str) -> Replica {
        let dir = tempfile::tempdir().expect("a temp dir for the replica");
        let config = dir.path().join("credstore.yaml");
        std::fs::write(&config, yaml).expect("config written");
        let mut command = Command::new(env!("CARGO_BIN_EXE_credstore"));
        command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .args(["--listen", "127.0.0.1:0"]);
        Replica::spawn(command, dir)
    }

    /// `start` on a blocking thread, for async tests: the runtime's workers keep running
    /// (a writer, a watch) while the replica starts.
    pub async fn start_blocking(yaml: String) -> Replica {
        tokio::task::spawn_blocking(move || Replica::start(&yaml))
            .await
            .expect("the replica starts")
    }

    /// Starts `credstore serve` with `config` and a metrics port of its own; returns the port.
    /// The port is free when chosen, but another process can bind it before the replica
    /// does: then the start is tried again on another port.
    pub fn start_with_metrics(config: &super::TestConfig) -> (Replica, u16) {
        for attempt in 1.. {
            let port = super::free_port();
            let yaml = config.clone().set("credstore.http.port", port).yaml();
            let started =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Replica::start(&yaml)));
            match started {
                Ok(replica) => return (replica, port),
                Err(panic) => {
                    let message = panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .unwrap_or_default();
                    if attempt == 3 || !message.contains("credstore.http.port") {
                        std::panic::resume_unwind(panic);
                    }
                }
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// Starts `credstore bench-upstream` (an empty MilvusService: fixed answers to
    /// GetVersion, Connect and HasCollection, UNIMPLEMENTED "bench-upstream: no METHOD" to
    /// the rest, no credentials checked), an upstream for proxy-tier tests.
    pub fn bench_upstream() -> Replica {
        let dir = tempfile::tempdir().expect("a temp dir for the upstream");
        let mut command = Command::new(env!("CARGO_BIN_EXE_credstore"));
        command.args(["bench-upstream", "--listen", "127.0.0.1:0"]);
        Replica::spawn(command, dir)
    }

    /// Runs `command` in `dir` and waits for its "ready on ADDRESS" line.
    fn spawn(mut command: Command, dir: tempfile::TempDir) -> Replica {
        let mut child = command
            .env("RUST_LOG", "info")
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("credstore starts");
        register_child(child.id());
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("ready on ").nth(1) {
                    let _ = ready_tx.send(
                        addr.split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_string(),
                    );
                }
                let mut log = sink.lock().unwrap_or_else(|p| p.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = match ready_rx.recv_timeout(READY_WITHIN) {
            Ok(addr) => addr.parse().expect("a socket address in the ready line"),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                forget_child(child.id());
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "credstore did not become ready; its log:\n{}",
                    log.lock().unwrap_or_else(|p| p.into_inner())
                );
            }
        };
        Replica {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    /// The config file `start` wrote and the replica runs with, for CLI commands that must
    /// read the same config (`admin reset-root`, `admin import`); it lives as long as the
    /// replica. (`bench_upstream` has none.)
    pub fn config_path(&self) -> std::path::PathBuf {
        self._dir.path().join("credstore.yaml")
    }

    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
    }

    /// SIGSTOP: the process freezes, sockets stay open.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    /// SIGHUP: reopen the audit log (log rotation).
    pub fn hangup(&self) {
        self.signal("-HUP");
    }

    /// SIGTERM and wait: a clean shutdown. A hang guard of 30 s, not a timing check: it
    /// covers the drain (`credstore.shutdown.drainMs`, up to 10 s in the tests) and the
    /// lease revoke on a loaded machine.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                forget_child(self.child.id());
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("credstore did not stop on SIGTERM");
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        forget_child(self.child.id());
    }
}

/// Starts replicas at once, one per YAML config.
pub fn start_replicas_from<const N: usize>(yamls: [String; N]) -> [Replica; N] {
    // Replica::start blocks until the ready line; keep the runtime's other worker free.
    tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let started = yamls
                .each_ref()
                .map(|yaml| scope.spawn(move || Replica::start(yaml)));
            started.map(|handle| handle.join().expect("replica started"))
        })
    })
}
