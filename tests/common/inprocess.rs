//! A credstore server in this test process (`server::run` on a loopback listener), for tests
//! that need no second process: one config file, no metrics port, no drain. Dropping it
//! aborts the server; `shutdown` stops it cleanly and fails the test if that hangs.

use std::net::SocketAddr;
use std::time::Duration;

use credstore::config::{Config, Overrides};
use credstore::server::{self, State};
use tokio::sync::oneshot;

/// An in-process server; dropping it aborts it.
pub struct InProcess {
    pub address: SocketAddr,
    pub uri: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Loads `yaml` the way `credstore serve --config` does.
pub fn load_config(yaml: &str) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, yaml).unwrap();
    Config::load(Some(&path), [], &Overrides::default()).expect("test config is valid")
}

impl InProcess {
    /// Starts a server with the config `yaml`.
    pub async fn start(yaml: &str) -> InProcess {
        let mut config = load_config(yaml);
        // In-process servers run side by side: none opens the metrics port or drains.
        config.credstore.http.port = 0;
        config.credstore.shutdown.drain_ms = 0;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let state = State::build(config, address)
            .await
            .expect("server state builds");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server::run(listener, state, async move { drop(stopped.await) })
                .await
                .expect("server runs");
        });
        InProcess {
            address,
            uri: format!("http://{address}"),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the server and waits (at most 10 s) until it has.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("clean shutdown")
                .unwrap();
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
