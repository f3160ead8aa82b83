//! The test harness: real etcd processes on free loopback ports with their own data
//! directories, real `credstore serve` processes, and a tonic client that authenticates the
//! way pymilvus does. Everything started here is stopped when its handle drops, so nothing
//! outlives a failed test. Each test gets its own etcd root path.

#![allow(dead_code)]

pub mod proxy;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use base64::Engine;
use credstore::proto::milvus::milvus_service_client::MilvusServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
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
        let (client_port, peer_port) = (free_port(), free_port());
        let initial_cluster = format!("m0=http://127.0.0.1:{peer_port}");
        let mut etcd = Etcd::new("m0", client_port, peer_port, initial_cluster);
        etcd.spawn();
        etcd.wait_healthy();
        etcd
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

    /// A single member that also serves clients over TLS; returns it and the TLS port.
    pub fn start_with_tls(cert: &Path, key: &Path) -> (Etcd, u16) {
        let (client_port, peer_port, tls_port) = (free_port(), free_port(), free_port());
        let initial_cluster = format!("m0=http://127.0.0.1:{peer_port}");
        let mut etcd = Etcd::new("m0", client_port, peer_port, initial_cluster);
        etcd.tls = Some((tls_port, cert.to_path_buf(), key.to_path_buf()));
        etcd.spawn();
        etcd.wait_healthy();
        (etcd, tls_port)
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
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
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).expect("etcd log file");
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
        self.child = Some(child);
    }

    /// Waits until `/health` answers true (a member of a forming cluster needs its peers).
    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if http_get(self.client_port, "/health").is_some_and(|body| body.contains("true")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
        panic!(
            "etcd on port {} did not become healthy; its log:\n{log}",
            self.client_port
        );
    }

    /// SIGKILL: no clean shutdown, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the same member again on its data directory and ports.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
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
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
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
        for member in &members {
            member.wait_healthy();
        }
        EtcdCluster { members }
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

/// Test config: fast (weak) hashing, which production refuses unless switched on explicitly.
pub fn config_yaml(endpoints: &str, root: &str, extra: &str) -> String {
    format!(
        "etcd:\n  endpoints: \"{endpoints}\"\n  rootPath: {root}\ncommon:\n  security:\n    superUsers: root, foo\n\
credstore:\n  failedAuthDelayMs: 0\n  password:\n    allowWeakParameters: true\n    argon2: {{memoryKiB: 64, iterations: 1, parallelism: 1}}\n{extra}"
    )
}

/// A `credstore serve` process.
pub struct Replica {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Replica {
    /// Starts `credstore serve` with `yaml` and waits for its ready line.
    pub fn start(yaml: &str) -> Replica {
        let dir = tempfile::tempdir().expect("a temp dir for the replica");
        let config = dir.path().join("credstore.yaml");
        std::fs::write(&config, yaml).expect("config written");
        let mut child = Command::new(env!("CARGO_BIN_EXE_credstore"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("credstore starts");
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
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = match ready_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr.parse().expect("a socket address in the ready line"),
            Err(_) => {
                let _ = child.kill();
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "credstore did not become ready; its log:\n{}",
                    log.lock().unwrap()
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

    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
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

    /// SIGTERM and wait: a clean shutdown.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
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
    }
}

pub type Interceptor =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
pub type Client = MilvusServiceClient<InterceptedService<Channel, Interceptor>>;

pub fn b64(raw: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// A client sending `authorization` exactly as given (None: no header).
pub async fn client_with_header(uri: &str, header: Option<&str>) -> Client {
    let channel = Channel::from_shared(uri.to_string())
        .unwrap()
        .connect()
        .await
        .expect("server reachable");
    let header: Option<tonic::metadata::MetadataValue<_>> =
        header.map(|h| h.parse().expect("ASCII header"));
    let interceptor: Interceptor = Box::new(move |mut request| {
        if let Some(value) = &header {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    });
    MilvusServiceClient::with_interceptor(channel, interceptor)
}

/// A client authenticating as `user` with `password`, as pymilvus does.
pub async fn client(uri: &str, user: &str, password: &str) -> Client {
    client_with_header(uri, Some(&b64(&format!("{user}:{password}")))).await
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
