//! A TCP fault proxy (on loopback, or on the host's LAN address for a real board), put between the board and a server (mock GitHub or broker).
//!
//! ```text
//!  board ──TCP──▶ proxy (mode: Pass | Refuse | Down | ResetAfter | Stall | Blackhole) ──TCP──▶ server
//! ```
//!
//! The mode is switched at run time with [`ProxyHandle::set_mode`] and applies to open connections
//! as well as new ones, so a test can cut the network in the middle of a download. Faults here are
//! transport faults (RST, refused, silence); HTTP-level faults belong to [`crate::github`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Errors of starting the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The listening socket could not be bound or inspected.
    #[error("proxy cannot listen on {addr}: {source}")]
    Bind {
        /// The requested address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward both ways.
    Pass,
    /// Accept, then reset at once (SO_LINGER 0): the client sees ECONNRESET. Open connections
    /// are reset too ("broker down" while connected).
    Refuse,
    /// Stop listening: new connects get ECONNREFUSED; open connections are reset. Switching to
    /// another mode listens again on the same port.
    Down,
    /// Forward, but reset a connection once it has delivered `bytes` bytes to the client (the
    /// server-to-client direction, where downloads flow), in the middle of a chunk if need be.
    ResetAfter {
        /// Bytes of the server's answer the client receives before the RST.
        bytes: u64,
    },
    /// Keep connections open but forward nothing; data is held and flows again on `Pass`.
    Stall,
    /// Accept and read everything, forward and answer nothing; data is lost. A connection
    /// accepted in this mode stays a black hole.
    Blackhole,
}

/// Counters since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted (including refused and black-holed ones).
    pub connections: u64,
    /// Connections reset at accept ([`ProxyMode::Refuse`]) or because the server was unreachable.
    pub refused: u64,
    /// Established connections reset by a mode ([`ProxyMode::ResetAfter`], `Refuse`, `Down`).
    pub resets: u64,
    /// Bytes forwarded client → server.
    pub bytes_up: u64,
    /// Bytes forwarded server → client.
    pub bytes_down: u64,
    /// Bytes swallowed by [`ProxyMode::Blackhole`].
    pub bytes_dropped: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    refused: AtomicU64,
    resets: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    bytes_dropped: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Entry point.
pub struct Proxy;

impl Proxy {
    /// Listens on 127.0.0.1 (ephemeral port) and forwards to `upstream`, starting in `Pass`.
    pub async fn start(upstream: SocketAddr) -> Result<ProxyHandle, ProxyError> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), upstream).await
    }

    /// As [`Proxy::start`], listening on `listen` (port 0: an ephemeral one). HIL binds the
    /// host's LAN address here, so that a board on WiFi reaches the servers behind the proxy.
    pub async fn start_on(
        listen: SocketAddr,
        upstream: SocketAddr,
    ) -> Result<ProxyHandle, ProxyError> {
        let bind_err = |source| ProxyError::Bind {
            addr: listen,
            source,
        };
        let listener = TcpListener::bind(listen).await.map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        let (mode_tx, mode_rx) = watch::channel(ProxyMode::Pass);
        let counters = Arc::new(Counters::default());
        tokio::spawn(accept_loop(
            listener,
            addr,
            upstream,
            mode_rx,
            counters.clone(),
        ));
        Ok(ProxyHandle {
            addr,
            upstream,
            mode: Arc::new(mode_tx),
            counters,
        })
    }
}

/// Control of a running proxy. Dropping every clone stops accepting (open connections finish).
#[derive(Clone)]
pub struct ProxyHandle {
    addr: SocketAddr,
    upstream: SocketAddr,
    mode: Arc<watch::Sender<ProxyMode>>,
    counters: Arc<Counters>,
}

impl ProxyHandle {
    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Switches the mode for new and open connections.
    pub fn set_mode(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        *self.mode.borrow()
    }

    /// Counters since start.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProxyStats {
            connections: get(&c.connections),
            refused: get(&c.refused),
            resets: get(&c.resets),
            bytes_up: get(&c.bytes_up),
            bytes_down: get(&c.bytes_down),
            bytes_dropped: get(&c.bytes_dropped),
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    upstream: SocketAddr,
    mut mode: watch::Receiver<ProxyMode>,
    counters: Arc<Counters>,
) {
    let mut listener = Some(listener);
    loop {
        let current = *mode.borrow_and_update();
        if current == ProxyMode::Down {
            // Closing the socket is what makes the kernel answer RST to SYN (ECONNREFUSED).
            listener = None;
            if mode.changed().await.is_err() {
                return;
            }
            continue;
        }
        let l = match &listener {
            Some(l) => l,
            None => match rebind(addr).await {
                Some(l) => &*listener.insert(l),
                None => return,
            },
        };
        tokio::select! {
            accepted = l.accept() => {
                if let Ok((client, _)) = accepted {
                    add(&counters.connections, 1);
                    tokio::spawn(serve(client, upstream, mode.clone(), counters.clone()));
                }
            }
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// Listens again on the port we gave up for [`ProxyMode::Down`]. Tokio sets SO_REUSEADDR, so
/// only another process taking the port in the meantime can make this fail.
async fn rebind(addr: SocketAddr) -> Option<TcpListener> {
    for _ in 0..50 {
        if let Ok(l) = TcpListener::bind(addr).await {
            return Some(l);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Closes with RST instead of FIN: SO_LINGER 0 makes close() abort the connection.
fn reset(s: TcpStream) {
    let _ = s.set_zero_linger();
    drop(s);
}

/// Why a connection ended abnormally.
struct Abort;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Up,
    Down,
}

async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    mode: watch::Receiver<ProxyMode>,
    counters: Arc<Counters>,
) {
    // Copied out: a watch borrow held across an await would block `set_mode`.
    let initial = *mode.borrow();
    match initial {
        ProxyMode::Refuse | ProxyMode::Down => {
            add(&counters.refused, 1);
            reset(client);
            return;
        }
        ProxyMode::Blackhole => {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n @ 1..) = client.read(&mut buf).await {
                add(&counters.bytes_dropped, n as u64);
            }
            return;
        }
        _ => {}
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        // The server is down: the client should see its connection fail, not hang.
        add(&counters.refused, 1);
        reset(client);
        return;
    };
    // Small writes (MQTT packets, HTTP headers) must not wait for Nagle.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let outcome = {
        let (cr, cw) = client.split();
        let (sr, sw) = server.split();
        let up = pump(cr, sw, Dir::Up, mode.clone(), &counters);
        let down = pump(sr, cw, Dir::Down, mode.clone(), &counters);
        let mut killer = mode.clone();
        tokio::select! {
            r = async { tokio::try_join!(up, down) } => r.map(|_| ()),
            _ = async {
                // `is_ok()` drops the returned borrow at once (it holds the channel's lock).
                let hit = killer
                    .wait_for(|m| matches!(m, ProxyMode::Refuse | ProxyMode::Down))
                    .await
                    .is_ok();
                if !hit {
                    // The handle is gone: no one can ask for a kill any more.
                    std::future::pending::<()>().await;
                }
            } => Err(Abort),
        }
    };
    if outcome.is_err() {
        add(&counters.resets, 1);
        reset(client);
        reset(server);
    }
}

/// Copies one direction, obeying the mode before every write.
async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    dir: Dir,
    mut mode: watch::Receiver<ProxyMode>,
    counters: &Counters,
) -> Result<(), Abort> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut delivered = 0u64;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => {
                // Pass the FIN on: a half-close is the peer's business, not a fault.
                let _ = to.shutdown().await;
                return Ok(());
            }
            Ok(n) => n,
            Err(_) => return Err(Abort),
        };
        let mut len = n;
        let mut then_reset = false;
        loop {
            let current = *mode.borrow_and_update();
            match current {
                ProxyMode::Pass => break,
                ProxyMode::Stall => {
                    if mode.changed().await.is_err() {
                        // No handle left to un-stall us: this connection is dead for good.
                        return Err(Abort);
                    }
                }
                ProxyMode::Blackhole => {
                    add(&counters.bytes_dropped, n as u64);
                    len = 0;
                    break;
                }
                ProxyMode::ResetAfter { bytes } => {
                    if dir == Dir::Down && delivered + n as u64 >= bytes {
                        len = bytes.saturating_sub(delivered) as usize;
                        then_reset = true;
                    }
                    break;
                }
                ProxyMode::Refuse | ProxyMode::Down => return Err(Abort),
            }
        }
        if len > 0 {
            to.write_all(&buf[..len]).await.map_err(|_| Abort)?;
            delivered += len as u64;
            let counter = match dir {
                Dir::Up => &counters.bytes_up,
                Dir::Down => &counters.bytes_down,
            };
            add(counter, len as u64);
        }
        if then_reset {
            // Let the bytes already written leave before the RST discards the send queue.
            let _ = to.flush().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
            return Err(Abort);
        }
    }
}
