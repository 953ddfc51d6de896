//! Upstream connections kept between client connections (docs/l7.md, "Upstream
//! connections").
//!
//! A client that opens a new connection per request would otherwise cost the proxy a new
//! upstream connection (handshake, the server's `to_pod` decision, teardown, a TIME_WAIT
//! socket) per request. When a client connection ends and its upstream's last response
//! ended cleanly, the connection is kept here for the next connection **of the same client
//! address to the same server address**, and only:
//!
//! - under the same [`L7View`]: a connection opened under one policy view never carries a
//!   request of another (the upstream leg was admitted by the datapath under that view);
//! - for `idle_for` at most (shorter than the usual servers' keep-alive timeouts), and only
//!   while the server has neither closed it nor sent anything unasked (checked without
//!   blocking when it is taken);
//! - up to [`MAX_IDLE_PER_PAIR`] per (client, server) pair and [`MAX_IDLE`] in all.
//!
//! Every request is still judged by the rules; only the socket is shared, never between two
//! client addresses (each upstream connection carries its client's address, so the server's
//! own policy sees the same identity either way) and never by two client connections at
//! once.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use palisade_l7proxy::proxy::Upstreams;
use tokio::net::TcpStream;

use super::ProxyShared;
use super::view::L7View;

/// Idle upstream connections kept per (client address, server address).
pub const MAX_IDLE_PER_PAIR: usize = 64;
/// Idle upstream connections kept in all.
pub const MAX_IDLE: usize = 1024;
/// How long an idle upstream connection is kept by default.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(4);

struct Idle {
    conn: TcpStream,
    since: Instant,
    view: Weak<L7View>,
}

/// The kept connections per (client, server) pair, and how many in all.
#[derive(Debug, Default)]
struct Kept {
    by_pair: HashMap<(IpAddr, SocketAddr), Vec<Idle>>,
    total: usize,
}

impl Kept {
    /// Keeps in `pair`'s list only what `keep` accepts, counting what leaves.
    fn retain_pair(&mut self, pair: (IpAddr, SocketAddr), keep: impl Fn(&Idle) -> bool) {
        if let Some(list) = self.by_pair.get_mut(&pair) {
            let before = list.len();
            list.retain(|c| keep(c));
            self.total -= before - list.len();
            if list.is_empty() {
                self.by_pair.remove(&pair);
            }
        }
    }
}

/// The kept connections, and how often one was used.
#[derive(Debug)]
pub struct UpstreamPool {
    idle: Mutex<Kept>,
    idle_for: Duration,
    /// Requests' upstream connections taken from the pool / opened.
    pub reused: AtomicU64,
    pub opened: AtomicU64,
}

impl std::fmt::Debug for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idle").field("since", &self.since).finish()
    }
}

impl UpstreamPool {
    /// A pool keeping connections for `idle_for`; zero keeps none.
    pub fn new(idle_for: Duration) -> UpstreamPool {
        UpstreamPool {
            idle: Mutex::new(Kept::default()),
            idle_for,
            reused: AtomicU64::new(0),
            opened: AtomicU64::new(0),
        }
    }

    fn usable(&self, idle: &Idle, view: &Arc<L7View>) -> bool {
        idle.since.elapsed() < self.idle_for
            && idle.view.upgrade().is_some_and(|v| Arc::ptr_eq(&v, view))
    }

    /// A kept connection from `client` to `server` under `view`, if one is still open and
    /// quiet.
    fn take(&self, client: IpAddr, server: SocketAddr, view: &Arc<L7View>) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let kept = &mut *idle;
        let list = kept.by_pair.get_mut(&(client, server))?;
        let mut found = None;
        // The most recently kept first: the least likely to have been closed meanwhile.
        while let Some(c) = list.pop() {
            kept.total -= 1;
            if !self.usable(&c, view) {
                continue;
            }
            let mut probe = [0u8; 1];
            match c.conn.try_read(&mut probe) {
                // Open, and nothing unasked arrived.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    found = Some(c.conn);
                    break;
                }
                // Closed (0), bytes nobody asked for, or an error: dropped.
                _ => {}
            }
        }
        if list.is_empty() {
            kept.by_pair.remove(&(client, server));
        }
        found
    }

    /// Keeps `conn` if the view it was opened under is still in force and there is room.
    fn keep(&self, client: IpAddr, server: SocketAddr, conn: TcpStream, view: &Arc<L7View>) {
        if self.idle_for.is_zero() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain_pair((client, server), |c| self.usable(c, view));
        if idle.total >= MAX_IDLE {
            return;
        }
        let list = idle.by_pair.entry((client, server)).or_default();
        if list.len() < MAX_IDLE_PER_PAIR {
            list.push(Idle {
                conn,
                since: Instant::now(),
                view: Arc::downgrade(view),
            });
            idle.total += 1;
        }
    }

    /// Drops the connections kept too long or under an earlier view.
    pub fn sweep(&self, current: Option<&Arc<L7View>>) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let pairs: Vec<_> = idle.by_pair.keys().copied().collect();
        for pair in pairs {
            idle.retain_pair(pair, |c| current.is_some_and(|v| self.usable(c, v)));
        }
    }
}

/// One client connection's way to its server: kept connections of the same client address
/// first, else a new transparent connection from that address.
#[derive(Debug)]
pub struct ClientUpstream {
    pub shared: Arc<ProxyShared>,
    pub client: IpAddr,
    pub server: SocketAddr,
    /// The view in force when the current upstream connection was opened (a client
    /// connection has one upstream at a time).
    opened_under: Mutex<Option<Arc<L7View>>>,
}

impl ClientUpstream {
    pub fn new(shared: Arc<ProxyShared>, client: IpAddr, server: SocketAddr) -> ClientUpstream {
        ClientUpstream {
            shared,
            client,
            server,
            opened_under: Mutex::new(None),
        }
    }

    fn set_opened_under(&self, view: Option<Arc<L7View>>) {
        *self
            .opened_under
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = view;
    }
}

impl Upstreams<TcpStream> for ClientUpstream {
    async fn open(&self, fresh: bool) -> io::Result<(TcpStream, bool)> {
        let pool = &self.shared.upstreams;
        let view = self.shared.views.get();
        if !fresh
            && let Some(v) = &view
            && let Some(conn) = pool.take(self.client, self.server, v)
        {
            pool.reused.fetch_add(1, Ordering::Relaxed);
            self.set_opened_under(view);
            return Ok((conn, true));
        }
        let conn = super::sockets::connect_upstream(self.client, self.server).await?;
        pool.opened.fetch_add(1, Ordering::Relaxed);
        self.set_opened_under(view);
        Ok((conn, false))
    }

    /// Kept only while the view it was opened under is still in force.
    fn release(&self, conn: TcpStream) {
        let opened = self
            .opened_under
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let (Some(opened), Some(now)) = (opened, self.shared.views.get())
            && Arc::ptr_eq(&opened, &now)
        {
            self.shared
                .upstreams
                .keep(self.client, self.server, conn, &now);
        }
    }
}
