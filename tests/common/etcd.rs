//! Real etcd processes for the tests: one member or a three-member cluster on loopback ports,
//! each with its own data directory and log, killed when its handle drops.
//!
//! Ports: `free_port` checks that nothing listens on a port, but etcd binds it a moment
//! later, so another process can take it in between. Two things make that harmless: ports
//! come from a window below the kernel's ephemeral range (where outgoing connections take
//! their source ports) starting at an offset of this process's own, so a collision is rare;
//! and a start that finds its port taken (etcd exits with "address already in use") starts
//! again on fresh ports, so a collision recovers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{forget_child, register_child};

/// Ports handed out by `free_port`: below Linux's default ephemeral range (32768–60999).
const PORT_WINDOW: std::ops::Range<u32> = 20_000..32_000;
/// How many times a start is tried on fresh ports when its ports turn out to be taken.
const START_ATTEMPTS: usize = 5;
/// How long a member may take to answer `/health` (a member of a forming cluster needs its
/// peers).
const HEALTHY_WITHIN: Duration = Duration::from_secs(30);

/// A loopback port nobody listens on right now, from this process's part of the port window.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = PORT_WINDOW.end - PORT_WINDOW.start;
    // Test binaries run one after another with different pids: each starts elsewhere.
    let offset = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = PORT_WINDOW.start + (offset + step) % span;
        let port = u16::try_from(port).expect("the window is below 65536");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn etcd_binary() -> String {
    let found = Command::new("sh")
        .arg("-c")
        .arg("command -v etcd")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "the `etcd` binary is not on PATH: run scripts/setup.sh (Debian package etcd-server)"
    );
    "etcd".to_string()
}

/// Why a member did not come up.
#[derive(Debug)]
enum StartFailure {
    /// One of its ports was taken before it could bind it: try again on fresh ports.
    PortTaken(String),
    /// Anything else, with the member's log.
    Failed(String),
}

/// One etcd member.
pub struct Etcd {
    name: String,
    child: Option<Child>,
    pub client_port: u16,
    peer_port: u16,
    initial_cluster: String,
    /// An extra `https://127.0.0.1:PORT` client listener with this (cert, key).
    tls: Option<(u16, PathBuf, PathBuf)>,
    dir: tempfile::TempDir,
}

impl Etcd {
    /// A single-member cluster, started and answering.
    pub fn start() -> Etcd {
        Etcd::start_single(None, None)
    }

    /// A single member that also serves clients over TLS; returns it and the TLS port.
    pub fn start_with_tls(cert: &Path, key: &Path) -> (Etcd, u16) {
        let etcd = Etcd::start_single(Some((cert, key)), None);
        let tls_port = etcd.tls.as_ref().map(|(port, _, _)| *port).unwrap_or(0);
        (etcd, tls_port)
    }

    /// `start`, trying the (client, peer) `ports` first: the harness's own test hands it a
    /// port something else holds, to see the start recover.
    pub fn start_trying_first(ports: (u16, u16)) -> Etcd {
        Etcd::start_single(None, Some(ports))
    }

    fn start_single(tls: Option<(&Path, &Path)>, mut first: Option<(u16, u16)>) -> Etcd {
        let mut taken = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let (client_port, peer_port) =
                first.take().unwrap_or_else(|| (free_port(), free_port()));
            let initial_cluster = format!("m0=http://127.0.0.1:{peer_port}");
            let mut etcd = Etcd::new("m0", client_port, peer_port, initial_cluster);
            if let Some((cert, key)) = tls {
                etcd.tls = Some((free_port(), cert.to_path_buf(), key.to_path_buf()));
            }
            etcd.spawn();
            match await_healthy(std::slice::from_mut(&mut etcd)) {
                Ok(()) => return etcd,
                Err(StartFailure::PortTaken(log)) => taken.push(log),
                Err(StartFailure::Failed(log)) => {
                    panic!("etcd on port {client_port} did not become healthy; its log:\n{log}")
                }
            }
        }
        panic!(
            "etcd found its ports taken {START_ATTEMPTS} times; the last log:\n{}",
            taken.last().map(String::as_str).unwrap_or_default()
        );
    }

    fn new(name: &str, client_port: u16, peer_port: u16, initial_cluster: String) -> Etcd {
        let dir = tempfile::tempdir().expect("a temp dir for etcd");
        Etcd {
            name: name.into(),
            child: None,
            client_port,
            peer_port,
            initial_cluster,
            tls: None,
            dir,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// A client of this member through `credstore::meta` (5 s per request), for tests that
    /// drive the store or the catalog directly.
    pub async fn kv(&self) -> credstore::meta::EtcdKv {
        let options = credstore::meta::EtcdOptions {
            endpoints: vec![self.endpoint()],
            request_timeout: Duration::from_secs(5),
            ..Default::default()
        };
        credstore::meta::EtcdKv::connect(&options)
            .await
            .expect("etcd connects")
    }

    /// [`Etcd::kv`] as a `Store`.
    pub async fn store(&self) -> credstore::meta::Store {
        credstore::meta::Store::Etcd(self.kv().await)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let mut client = format!("http://127.0.0.1:{}", self.client_port);
        let mut tls_args = Vec::new();
        if let Some((port, cert, key)) = &self.tls {
            client = format!("{client},https://127.0.0.1:{port}");
            tls_args = vec![
                "--cert-file".into(),
                cert.clone(),
                "--key-file".into(),
                key.clone(),
            ];
        }
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.log_path()).expect("etcd log file");
        let child = Command::new(etcd_binary())
            .args(["--name", &self.name, "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args([
                "--initial-cluster",
                &self.initial_cluster,
                "--initial-cluster-state",
                "new",
            ])
            .args(["--initial-cluster-token", "credstore-test"])
            .args(&tls_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd starts");
        register_child(child.id());
        self.child = Some(child);
    }

    /// One look at a starting member: exited (and why), healthy, or not yet.
    fn poll(&mut self) -> Option<Result<(), StartFailure>> {
        let running = matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)));
        if !running {
            self.kill();
            let log = self.log();
            return Some(Err(if log.contains("address already in use") {
                StartFailure::PortTaken(log)
            } else {
                StartFailure::Failed(log)
            }));
        }
        // Our own log must say it serves clients, so a stranger on its port cannot answer.
        let healthy = http_get(self.client_port, "/health").is_some_and(|b| b.contains("true"))
            && self.log().contains("ready to serve client requests");
        healthy.then_some(Ok(()))
    }

    /// Waits until `/health` answers true (a member of a forming cluster needs its peers).
    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + HEALTHY_WITHIN;
        while Instant::now() < deadline {
            if http_get(self.client_port, "/health").is_some_and(|body| body.contains("true")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "etcd on port {} did not become healthy; its log:\n{}",
            self.client_port,
            self.log()
        );
    }

    /// SIGKILL: no clean shutdown, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            forget_child(child.id());
        }
    }

    /// Starts the same member again on its data directory and ports (it cannot move: clients
    /// know its address; ports from the window are not taken by outgoing connections).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three etcd members on loopback.
pub struct EtcdCluster {
    pub members: Vec<Etcd>,
}

impl EtcdCluster {
    pub fn start() -> EtcdCluster {
        EtcdCluster::start_trying_first(Vec::new())
    }

    /// `start`, trying these (client, peer) ports for the first members first: the harness's
    /// own test hands it a port something else holds, to see the start recover.
    pub fn start_trying_first(mut first: Vec<(u16, u16)>) -> EtcdCluster {
        let mut taken = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let mut ports: Vec<(u16, u16)> = std::mem::take(&mut first);
            while ports.len() < 3 {
                ports.push((free_port(), free_port()));
            }
            let initial = ports
                .iter()
                .enumerate()
                .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
                .collect::<Vec<_>>()
                .join(",");
            let mut members: Vec<Etcd> = ports
                .iter()
                .enumerate()
                .map(|(i, (c, p))| Etcd::new(&format!("m{i}"), *c, *p, initial.clone()))
                .collect();
            for member in &mut members {
                member.spawn();
            }
            match await_healthy(&mut members) {
                Ok(()) => return EtcdCluster { members },
                Err(StartFailure::PortTaken(log)) => taken.push(log),
                Err(StartFailure::Failed(log)) => {
                    panic!("an etcd member did not become healthy; its log:\n{log}")
                }
            }
            // Dropping `members` kills the others; the next round uses fresh ports and dirs.
        }
        panic!(
            "an etcd member found its ports taken {START_ATTEMPTS} times; the last log:\n{}",
            taken.last().map(String::as_str).unwrap_or_default()
        );
    }

    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(Etcd::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the current leader, asked of any running member.
    pub fn leader(&self) -> usize {
        // etcdctl comes with Debian's etcd packages (scripts/setup.sh installs etcd-client).
        for (i, member) in self
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.is_running())
        {
            let output = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args([
                    "--endpoints",
                    &member.endpoint(),
                    "endpoint",
                    "status",
                    "-w",
                    "json",
                ])
                .output();
            if let Ok(output) = output {
                let text = String::from_utf8_lossy(&output.stdout);
                let member_id = json_number(&text, "member_id");
                let leader = json_number(&text, "leader");
                if member_id.is_some() && member_id == leader {
                    return i;
                }
            }
        }
        panic!("no etcd leader found");
    }
}

/// Waits until every member of a starting cluster is healthy, or one of them has exited.
fn await_healthy(members: &mut [Etcd]) -> Result<(), StartFailure> {
    let deadline = Instant::now() + HEALTHY_WITHIN;
    loop {
        let mut all_healthy = true;
        for member in members.iter_mut() {
            match member.poll() {
                Some(Ok(())) => {}
                Some(Err(failure)) => return Err(failure),
                None => all_healthy = false,
            }
        }
        if all_healthy {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let logs: Vec<String> = members
                .iter()
                .map(|m| format!("{}:\n{}", m.name, m.log()))
                .collect();
            return Err(StartFailure::Failed(logs.join("\n")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn json_number(text: &str, field: &str) -> Option<u64> {
    let at = text.find(&format!("\"{field}\":"))? + field.len() + 3;
    text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    Some(body)
}
