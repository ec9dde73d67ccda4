//! A TCP proxy in front of Redis that makes one client's path slow and nobody else's.
//!
//! While held, the bytes a client sends are kept here instead of being forwarded; on
//! release they go on in order. Replies flow back at once. When the client closes its
//! connection while bytes are held, those bytes are discarded, as a connection reset
//! discards data not yet delivered: this is the network a fence relies on (bytes that never
//! reached Redis never run once the connection is gone).
//!
//! With [`HoldingProxy::deliver_after_close`] a closed client's held bytes are delivered
//! on release instead, as the kernel does for a process that died with data in its send
//! buffer and no unread replies (a graceful close): the late bytes of a dead writer.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

#[derive(Default)]
struct State {
    held: AtomicBool,
    released: Notify,
    /// Bytes that were held at some point.
    bytes_held: AtomicU64,
    /// Held bytes thrown away because their client closed first.
    bytes_discarded: AtomicU64,
    connections: AtomicU64,
    upstream: AtomicU16,
    /// Bumped by every switch: a connection opened under an older value is cut. A counter,
    /// not only a wake-up, since a connection busy reading when the wake-up came would
    /// miss it (`notify_waiters` keeps no permit) and forward to the old server.
    switches: AtomicU64,
    /// Wakes every connection to look at `switches`.
    cut: Notify,
    /// A closed client's held bytes are delivered on release (see the module doc).
    deliver_after_close: AtomicBool,
    /// Held bytes of a closed client delivered later, and those Redis would not take.
    bytes_delivered_late: AtomicU64,
}

pub struct HoldingProxy {
    pub port: u16,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl HoldingProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`127.0.0.1:port`).
    pub async fn start(upstream: u16) -> HoldingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let port = listener.local_addr().expect("proxy address").port();
        let state = Arc::new(State::default());
        state.upstream.store(upstream, Ordering::SeqCst);
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let state = Arc::clone(&shared);
                state.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    // Read before the upstream: a switch in between cuts this one too.
                    let switches = state.switches.load(Ordering::SeqCst);
                    let upstream = state.upstream.load(Ordering::SeqCst);
                    if let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await {
                        pipe(client, server, state, switches).await;
                    }
                });
            }
        });
        HoldingProxy { port, state, task }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn hold(&self) {
        self.state.held.store(true, Ordering::SeqCst);
    }

    pub fn release(&self) {
        self.state.held.store(false, Ordering::SeqCst);
        self.state.released.notify_waiters();
    }

    /// Points the address at another server and closes every open connection, as a
    /// failover that moves a service address does.
    pub fn switch_to(&self, upstream: u16) {
        self.state.upstream.store(upstream, Ordering::SeqCst);
        self.state.switches.fetch_add(1, Ordering::SeqCst);
        self.state.cut.notify_waiters();
    }

    pub fn bytes_held(&self) -> u64 {
        self.state.bytes_held.load(Ordering::Relaxed)
    }

    /// Held bytes of a client that closes are delivered on release, not discarded.
    pub fn deliver_after_close(&self) {
        self.state.deliver_after_close.store(true, Ordering::SeqCst);
    }

    pub fn bytes_delivered_late(&self) -> u64 {
        self.state.bytes_delivered_late.load(Ordering::Relaxed)
    }

    pub fn bytes_discarded(&self) -> u64 {
        self.state.bytes_discarded.load(Ordering::Relaxed)
    }

    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }
}

impl Drop for HoldingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(client: TcpStream, server: TcpStream, state: Arc<State>, switches: u64) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Replies: straight through.
    let back = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
    });
    let mut buffer: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let cut = state.cut.notified();
        if state.switches.load(Ordering::SeqCst) != switches {
            // The address moved: what this connection still holds never reaches the old
            // server, as with a connection reset.
            break;
        }
        let held = state.held.load(Ordering::SeqCst);
        if !held && !buffer.is_empty() {
            if server_write.write_all(&buffer).await.is_err() {
                break;
            }
            buffer.clear();
        }
        let released = state.released.notified();
        tokio::select! {
            biased;
            _ = cut => break,
            read = client_read.read(&mut chunk) => match read {
                Ok(0) | Err(_) => {
                    if state.deliver_after_close.load(Ordering::SeqCst) && !buffer.is_empty() {
                        // A graceful close: the bytes still go, once released.
                        while state.held.load(Ordering::SeqCst) {
                            let released = state.released.notified();
                            if !state.held.load(Ordering::SeqCst) {
                                break;
                            }
                            released.await;
                        }
                        let n = buffer.len() as u64;
                        match server_write.write_all(&buffer).await {
                            Ok(()) => state.bytes_delivered_late.fetch_add(n, Ordering::Relaxed),
                            Err(_) => state.bytes_discarded.fetch_add(n, Ordering::Relaxed),
                        };
                        // Let Redis read them before the close reaches it.
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        break;
                    }
                    // The client is gone: what it sent and Redis never saw is dropped.
                    state.bytes_discarded.fetch_add(buffer.len() as u64, Ordering::Relaxed);
                    break;
                }
                Ok(n) => {
                    if state.held.load(Ordering::SeqCst) {
                        state.bytes_held.fetch_add(n as u64, Ordering::Relaxed);
                        buffer.extend_from_slice(&chunk[..n]);
                    } else {
                        buffer.extend_from_slice(&chunk[..n]);
                    }
                }
            },
            _ = released, if held => {}
        }
    }
    let _ = server_write.shutdown().await;
    back.abort();
}
