//! A TCP proxy for fault injection between a replica and etcd. `cut` resets every
//! connection through it and refuses new ones (the replica sees errors at once); `partition`
//! keeps every connection open but stops forwarding in both directions, as a network
//! partition does (the replica sees silence, never an error); `restore` and `heal` undo them.
//! Bytes held during a partition are delivered after it heals, as TCP retransmission would.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    cut: AtomicBool,
    partitioned: AtomicBool,
    closed: AtomicBool,
    /// Both ends of every open connection, to shut them down on `cut`.
    links: Mutex<Vec<TcpStream>>,
}

impl Shared {
    /// Blocks while partitioned; false once the proxy is closed.
    fn wait_while_partitioned(&self) -> bool {
        while self.partitioned.load(Ordering::Acquire) {
            if self.closed.load(Ordering::Acquire) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        !self.closed.load(Ordering::Acquire)
    }
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:target`.
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy binds");
        let port = listener.local_addr().expect("bound").port();
        let shared = Arc::new(Shared::default());
        let accepting = shared.clone();
        std::thread::spawn(move || {
            for inbound in listener.incoming() {
                if accepting.closed.load(Ordering::Acquire) {
                    return;
                }
                let Ok(inbound) = inbound else { continue };
                // A connection opened during a partition waits, as a SYN would be retried.
                if !accepting.wait_while_partitioned() {
                    return;
                }
                // Checked and recorded under the lock `cut` takes, so no connection slips past a cut.
                let mut links = accepting.links.lock().unwrap();
                if accepting.cut.load(Ordering::Acquire) {
                    continue;
                }
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                for stream in [&inbound, &outbound] {
                    let _ = stream.set_nodelay(true);
                    links.push(stream.try_clone().expect("socket clones"));
                }
                pump(
                    inbound.try_clone().expect("socket clones"),
                    outbound.try_clone().expect("socket clones"),
                    accepting.clone(),
                );
                pump(outbound, inbound, accepting.clone());
            }
        });
        Proxy { port, shared }
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Resets every connection and refuses new ones until `restore`.
    pub fn cut(&self) {
        let mut links = self.shared.links.lock().unwrap();
        self.shared.cut.store(true, Ordering::Release);
        for stream in links.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::Release);
    }

    /// Stops forwarding in both directions; connections stay open and silent.
    pub fn partition(&self) {
        self.shared.partitioned.store(true, Ordering::Release);
    }

    /// Forwards again, held bytes first.
    pub fn heal(&self) {
        self.shared.partitioned.store(false, Ordering::Release);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, shared: Arc<Shared>) {
    std::thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if !shared.wait_while_partitioned() || to.write_all(&buffer[..n]).is_err() {
                break;
            }
        }
        let _ = to.flush();
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.partitioned.store(false, Ordering::Release);
        self.cut();
        // Wake the accept loop so it sees `closed`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
