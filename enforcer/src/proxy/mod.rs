//! The in-process L7 proxy (docs/l7.md): the listener the datapath's redirect hands
//! connections to, and for each connection the HTTP/1 loop of `palisade_l7proxy::proxy`
//! judging every request with the rules of the current [`view::L7View`].
//!
//! Start order (fail closed, reliability row 4): routing → listener → the listener into the
//! datapath's socket map and the `sk_lookup` program attached → `pal_proxy` ready. Before the
//! last step every redirected flow drops in the datapath (`DROP_PROXY_UNAVAILABLE`); a
//! listener that dies leaves the socket map by itself, so redirected SYNs then find no
//! socket. Requests are judged against the view published after the last successful map
//! update; a connection accepted before the first view is closed unanswered.

pub mod pool;
pub mod sockets;
pub mod view;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use palisade_l7proxy::proxy::{ProxyConfig, RequestRecord, Rules, Sink, serve};
use palisade_l7proxy::{Decision, NormalizedRequest};
use tracing::{debug, warn};

use crate::events::{L7Event, L7Side};
use view::{ConnectionRules, Judgement, L7View, ViewCell};

/// Records on their way to the verdict log; full → counted as lost.
pub const RECORD_QUEUE: usize = 65_536;

/// Open proxied connections one client identity may hold by default (reliability row 19):
/// one workload cannot exhaust the proxy for every other.
pub const DEFAULT_CONNECTIONS_PER_IDENTITY: usize = 4096;

/// What the proxy shares with the agent.
#[derive(Debug)]
pub struct ProxyShared {
    pub views: ViewCell,
    /// L7 records not written because the queue to the verdict log was full.
    pub records_lost: AtomicU64,
    /// Connections accepted and requests judged (for status and metrics).
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    /// Connections closed at accept because their client identity held its cap.
    pub over_cap: AtomicU64,
    /// Open connections per client identity.
    open: Mutex<std::collections::HashMap<u32, usize>>,
    /// The cap per client identity.
    pub per_identity: usize,
    /// Upstream connections kept between client connections of one client address.
    pub upstreams: pool::UpstreamPool,
}

impl ProxyShared {
    /// `upstream_idle`: how long an upstream connection is kept for the next connection of
    /// the same client (zero keeps none).
    pub fn new(per_identity: usize, upstream_idle: std::time::Duration) -> ProxyShared {
        ProxyShared {
            upstreams: pool::UpstreamPool::new(upstream_idle),
            views: ViewCell::default(),
            records_lost: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            over_cap: AtomicU64::new(0),
            open: Mutex::new(std::collections::HashMap::new()),
            per_identity,
        }
    }

    /// Takes one of `identity`'s connection slots; `None` when it holds all of them.
    fn admit(self: &Arc<Self>, identity: u32) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(identity).or_insert(0);
        if *n >= self.per_identity {
            self.over_cap.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *n += 1;
        Some(Slot {
            shared: self.clone(),
            identity,
        })
    }

    /// Open proxied connections of one client identity.
    pub fn open_connections(&self, identity: u32) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&identity)
            .copied()
            .unwrap_or(0)
    }
}

impl Default for ProxyShared {
    fn default() -> Self {
        ProxyShared::new(DEFAULT_CONNECTIONS_PER_IDENTITY, pool::DEFAULT_IDLE)
    }
}

/// A connection slot of one identity, given back when the connection ends.
struct Slot {
    shared: Arc<ProxyShared>,
    identity: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .shared
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.identity) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.identity);
            }
        }
    }
}

/// One connection's rules: re-derived when a new view is published, so the next request
/// of a kept-alive connection is judged by the policy in force.
struct Connection {
    shared: Arc<ProxyShared>,
    client: SocketAddr,
    server: SocketAddr,
    cached: Mutex<Option<(Arc<L7View>, Arc<ConnectionRules>)>>,
    /// The judgement of the request being handled, taken by the record.
    last: Mutex<Option<(Judgement, u64, u32, u32)>>,
    records: tokio::sync::mpsc::Sender<L7Event>,
}

impl Connection {
    fn rules(&self) -> Option<(Arc<L7View>, Arc<ConnectionRules>)> {
        let view = self.shared.views.get()?;
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        match &*cached {
            Some((v, r)) if Arc::ptr_eq(v, &view) => Some((v.clone(), r.clone())),
            _ => {
                let r = Arc::new(view.connection(
                    self.client.ip(),
                    self.server.ip(),
                    self.server.port(),
                ));
                *cached = Some((view.clone(), r.clone()));
                Some((view, r))
            }
        }
    }
}

impl Rules for Connection {
    fn decide(&self, req: &NormalizedRequest) -> Result<Decision, String> {
        self.shared.requests.fetch_add(1, Ordering::Relaxed);
        let (view, rules) = self
            .rules()
            .ok_or_else(|| "the agent has no policy view yet".to_string())?;
        let j = rules.judge(req)?;
        let decision = j.decision;
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some((
            j,
            view.revision,
            rules.client_identity,
            rules.server_identity,
        ));
        Ok(decision)
    }
}

impl Sink for Connection {
    fn request(&self, record: RequestRecord) {
        let last = self
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let (sides, revision, ci, si) = match last {
            Some((j, rev, ci, si)) => (j.sides, rev, ci, si),
            // Refused before the rules were asked: on behalf of the sides that inspect
            // the connection (no rule decided).
            None => match self.rules() {
                Some((v, r)) => (
                    r.sides
                        .iter()
                        .map(|(direction, _)| L7Side {
                            direction: *direction,
                            origin: None,
                            audit: None,
                        })
                        .collect(),
                    v.revision,
                    r.client_identity,
                    r.server_identity,
                ),
                None => (Vec::new(), 0, 0, 0),
            },
        };
        let ev = L7Event {
            client: self.client,
            server: self.server,
            client_identity: ci,
            server_identity: si,
            sides,
            revision,
            record,
        };
        if self.records.try_send(ev).is_err() {
            self.shared.records_lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Serves redirected connections from `listener` until `stop` fires.
pub async fn run(
    listener: tokio::net::TcpListener,
    shared: Arc<ProxyShared>,
    config: Arc<ProxyConfig>,
    records: tokio::sync::mpsc::Sender<L7Event>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut sweep = tokio::time::interval(std::time::Duration::from_secs(1));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let accepted = tokio::select! {
            () = async { let _ = stop.wait_for(|s| *s).await; } => return,
            _ = sweep.tick() => {
                shared.upstreams.sweep(shared.views.get().as_ref());
                continue;
            }
            a = listener.accept() => a,
        };
        let (client_io, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = e.to_string(), "proxy accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = client_io.set_nodelay(true);
        let local = match client_io.local_addr() {
            Ok(a) => a,
            Err(_) => continue,
        };
        // The original destination is the accepted socket's own address (nothing was
        // translated); IPv4 peers arrive v4-mapped on the dual-stack listener.
        let client = sockets::unmap(peer);
        let server = sockets::unmap(local);
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Connection {
            shared: shared.clone(),
            client,
            server,
            cached: Mutex::new(None),
            last: Mutex::new(None),
            records: records.clone(),
        });
        // Only connections the datapath redirected are served: one whose rules, under the
        // current view, inspect nothing (a direct connection to the listener's port, or no
        // view yet) is closed unanswered.
        let identity = match conn.rules() {
            Some((_, r)) if r.inspects() => r.client_identity,
            other => {
                debug!(
                    client = client.to_string(),
                    server = server.to_string(),
                    reason = other
                        .and_then(|(_, r)| r.refused.clone())
                        .unwrap_or_else(|| "no HTTP rules apply to it".into()),
                    "proxy connection closed: not a redirected flow"
                );
                continue;
            }
        };
        let Some(slot) = shared.admit(identity) else {
            warn!(
                client = client.to_string(),
                server = server.to_string(),
                identity,
                cap = shared.per_identity,
                "proxy connection closed: its client identity holds every connection slot it may"
            );
            continue;
        };
        let config = config.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let c = conn.clone();
            let upstream = pool::ClientUpstream::new(c.shared.clone(), client.ip(), server);
            let _ = serve(client_io, &upstream, &*c, &*conn, &config).await;
        });
    }
}
