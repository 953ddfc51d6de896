//! Prometheus metrics (OpenMetrics text) on `metrics_address` (default `127.0.0.1:9963`).
//!
//! Every scrape builds the exposition from what is already counted elsewhere, without taking
//! the daemon's state lock: the datapath's per-CPU counters are read from their **pinned** map
//! (a map of its own, opened from bpffs), the agent's health from `Daemon::health` (its own
//! small lock, never held across a map write), and the few values only this room keeps
//! ([`Metrics`]: the policy implementation delay histogram, verdict-log lost records, policy
//! changes by outcome) from atomics. Names follow docs/metrics.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aya::maps::{Map, MapData, PerCpuArray};
use policy_compiler::abi::{self, map_name};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use crate::daemon::Health;

/// What only the metrics room keeps; cheap to clone (shared atomics and histogram).
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Source change reaching the agent -> maps written, in seconds.
    pub implementation_delay: Histogram,
    /// Verdict-log records lost (ring buffer full), as the log accounts for them.
    pub verdict_log_lost: Arc<AtomicU64>,
    /// Policy changes applied / refused (capacity, invalid) / failed (map write).
    pub changes_applied: Arc<AtomicU64>,
    pub changes_refused: Arc<AtomicU64>,
    pub changes_failed: Arc<AtomicU64>,
    /// The policy revision the maps hold.
    pub revision: Arc<AtomicU64>,
    /// Unix time the agent started.
    pub start_time: f64,
    /// The L7 proxy's counters, when it runs.
    pub proxy: Option<Arc<crate::proxy::ProxyShared>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            // 0.5 ms .. ~16 s
            implementation_delay: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            verdict_log_lost: Arc::default(),
            changes_applied: Arc::default(),
            changes_refused: Arc::default(),
            changes_failed: Arc::default(),
            revision: Arc::default(),
            start_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            proxy: None,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: String,
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirLabels {
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    direction: String,
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

fn direction_name(d: u32) -> &'static str {
    if d == u32::from(abi::DIRECTION_INGRESS) {
        "ingress"
    } else {
        "egress"
    }
}

/// The datapath counters, summed over CPUs, from the pinned map: (direction, code) -> (packets,
/// bytes). An error (no pins yet) gives no datapath series rather than a failed scrape.
fn read_counters(pin_dir: &Path) -> Result<Vec<(u32, u32, u64, u64)>, String> {
    let path = pin_dir.join(map_name::COUNTERS);
    let data = MapData::from_pin(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let map: PerCpuArray<MapData, [u64; 2]> = PerCpuArray::try_from(Map::PerCpuArray(data))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for idx in 0..abi::COUNTER_MAX {
        let vals = map
            .get(&idx, 0)
            .map_err(|e| format!("counter {idx}: {e}"))?;
        let (p, b) = vals
            .iter()
            .fold((0u64, 0u64), |(p, b), v| (p + v[0], b + v[1]));
        if p != 0 || b != 0 {
            out.push((
                idx / abi::COUNTER_DIR_STRIDE,
                idx % abi::COUNTER_DIR_STRIDE,
                p,
                b,
            ));
        }
    }
    Ok(out)
}

/// One scrape: the OpenMetrics exposition.
pub fn render(pin_dir: &Path, health: &Health, m: &Metrics) -> String {
    let mut r = Registry::default();
    let drops = Family::<DropLabels, Counter>::default();
    let drop_bytes = Family::<DropLabels, Counter>::default();
    let forwards = Family::<DirLabels, Counter>::default();
    let forward_bytes = Family::<DirLabels, Counter>::default();
    let verdicts = Family::<VerdictLabels, Counter>::default();
    let ct = Family::<DirLabels, Counter>::default();
    let ring_lost = Counter::<u64>::default();
    r.register(
        "palisade_drop_count",
        "Packets dropped by the datapath, by Hubble drop reason and direction",
        drops.clone(),
    );
    r.register(
        "palisade_drop_bytes",
        "Bytes dropped by the datapath, by Hubble drop reason and direction",
        drop_bytes.clone(),
    );
    r.register(
        "palisade_forward_count",
        "New flows forwarded by policy, by direction",
        forwards.clone(),
    );
    r.register(
        "palisade_forward_bytes",
        "Bytes of new flows forwarded by policy, by direction",
        forward_bytes.clone(),
    );
    r.register(
        "palisade_verdicts",
        "Policy verdicts of new flows, by direction and action (forwarded, redirected, audit, dropped)",
        verdicts.clone(),
    );
    r.register(
        "palisade_conntrack_packets",
        "Packets of established flows passed by conntrack, by direction",
        ct.clone(),
    );
    r.register(
        "palisade_datapath_events_lost",
        "Verdict events the datapath could not queue (ring buffer full)",
        ring_lost.clone(),
    );
    match read_counters(pin_dir) {
        Ok(counters) => {
            for (dir, code, packets, bytes) in counters {
                let direction = direction_name(dir).to_string();
                let dl = DirLabels {
                    direction: direction.clone(),
                };
                let verdict = |action: &str| {
                    verdicts
                        .get_or_create(&VerdictLabels {
                            direction: direction.clone(),
                            action: action.to_string(),
                        })
                        .inc_by(packets);
                };
                match code {
                    abi::COUNTER_FORWARDED => {
                        forwards.get_or_create(&dl).inc_by(packets);
                        forward_bytes.get_or_create(&dl).inc_by(bytes);
                        verdict("forwarded");
                    }
                    abi::COUNTER_REDIRECTED => verdict("redirected"),
                    abi::COUNTER_AUDIT => verdict("audit"),
                    abi::COUNTER_CT_ESTABLISHED | abi::COUNTER_CT_REPLY => {
                        ct.get_or_create(&dl).inc_by(packets);
                    }
                    abi::COUNTER_EVENTS_LOST => {
                        ring_lost.inc_by(packets);
                    }
                    c if abi::drop_reason_name(c) != "DROP_REASON_UNKNOWN" => {
                        let l = DropLabels {
                            reason: abi::drop_reason_name(c).to_string(),
                            direction: direction.clone(),
                        };
                        drops.get_or_create(&l).inc_by(packets);
                        drop_bytes.get_or_create(&l).inc_by(bytes);
                        if c == abi::DROP_POLICY_DENIED || c == abi::DROP_POLICY_DENY {
                            verdict("dropped");
                        }
                    }
                    _ => {}
                }
            }
        }
        Err(e) => warn!(error = e.as_str(), "metrics: datapath counters unreadable"),
    }

    let revision = Gauge::<i64>::default();
    revision.set(m.revision.load(Ordering::Relaxed) as i64);
    r.register(
        "palisade_policy_revision",
        "The policy revision the maps hold",
        revision,
    );
    let endpoints = Family::<StateLabels, Gauge>::default();
    endpoints
        .get_or_create(&StateLabels {
            state: if health.dirty { "not-ready" } else { "ready" }.into(),
        })
        .set(i64::from(health.endpoints));
    r.register(
        "palisade_endpoints",
        "Registered endpoints, by the agent's readiness",
        endpoints,
    );
    let pressure = Family::<MapLabels, Gauge<f64, AtomicU64>>::default();
    for (map, n, cap) in [
        (
            map_name::POLICY,
            health.usage.policy,
            health.capacity.policy,
        ),
        (
            map_name::IPCACHE,
            health.usage.ipcache,
            health.capacity.ipcache,
        ),
        (
            map_name::ENDPOINTS,
            health.usage.endpoints,
            health.capacity.endpoints,
        ),
    ] {
        pressure
            .get_or_create(&MapLabels {
                map: map.to_string(),
            })
            .set(n as f64 / cap.max(1) as f64);
    }
    r.register(
        "palisade_bpf_map_pressure",
        "Entries over capacity of each BPF map the agent writes",
        pressure,
    );
    let changes = Family::<OutcomeLabels, Counter>::default();
    for (outcome, v) in [
        ("applied", &m.changes_applied),
        ("refused", &m.changes_refused),
        ("failed", &m.changes_failed),
    ] {
        changes
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc_by(v.load(Ordering::Relaxed));
    }
    r.register(
        "palisade_policy_changes",
        "Batches of policy-source changes, by outcome",
        changes,
    );
    r.register(
        "palisade_policy_implementation_delay_seconds",
        "From a batch of source changes reaching the agent to the maps written",
        m.implementation_delay.clone(),
    );
    let failed = Counter::<u64>::default();
    failed.inc_by(health.failed_updates);
    r.register(
        "palisade_map_update_failures",
        "Map updates that failed partway (the agent then reconciles)",
        failed,
    );
    let reconciles = Counter::<u64>::default();
    reconciles.inc_by(health.reconciles);
    r.register(
        "palisade_reconciles",
        "Successful reconciles after a failed map update",
        reconciles,
    );
    let lost = Counter::<u64>::default();
    lost.inc_by(m.verdict_log_lost.load(Ordering::Relaxed));
    r.register(
        "palisade_verdict_log_lost",
        "Verdict-log records lost, as the log accounts for them",
        lost,
    );
    if let Some(p) = &m.proxy {
        for (name, help, v) in [
            (
                "palisade_l7_connections",
                "Connections the L7 proxy accepted",
                &p.connections,
            ),
            (
                "palisade_l7_requests",
                "HTTP requests the L7 proxy judged",
                &p.requests,
            ),
            (
                "palisade_l7_connections_over_cap",
                "Connections closed at accept: their client identity held every slot",
                &p.over_cap,
            ),
            (
                "palisade_l7_upstream_connections_opened",
                "Upstream connections the L7 proxy opened",
                &p.upstreams.opened,
            ),
            (
                "palisade_l7_upstream_connections_reused",
                "Requests' upstream connections taken from those kept after an earlier client connection of the same client address",
                &p.upstreams.reused,
            ),
            (
                "palisade_l7_records_lost",
                "L7 records not written: the queue to the verdict log was full",
                &p.records_lost,
            ),
        ] {
            let c = Counter::<u64>::default();
            c.inc_by(v.load(Ordering::Relaxed));
            r.register(name, help, c);
        }
    }
    let start = Gauge::<f64, AtomicU64>::default();
    start.set(m.start_time);
    r.register(
        "palisade_start_time_seconds",
        "Unix time the agent started",
        start,
    );
    let mut out = String::new();
    if encode(&mut out, &r).is_err() {
        out.clear();
    }
    out
}

/// The same exposition in the Prometheus text format 0.0.4, for clients that do not ask for
/// OpenMetrics (`promtool`, `curl`): counter families are named with their `_total` suffix
/// and there is no `# EOF`.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for l in openmetrics.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.insert(name.to_string());
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for l in openmetrics.lines() {
        if l == "# EOF" || l.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = l.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(l));
        out.push('\n');
    }
    out
}

/// Longest request head read.
const MAX_REQUEST: usize = 8 * 1024;

/// Serves `GET /metrics` until `stop` resolves. Anything else is 404; a request head must
/// arrive within 5 s and fit 8 KiB.
pub async fn serve(
    addr: SocketAddr,
    pin_dir: PathBuf,
    health: Arc<dyn Fn() -> Health + Send + Sync>,
    metrics: Metrics,
    stop: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(metrics.address = addr.to_string(), "serving metrics");
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return Ok(()),
            accepted = listener.accept() => {
                let Ok((mut conn, _)) = accepted else { continue };
                let (pin_dir, health, metrics) = (pin_dir.clone(), health.clone(), metrics.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::with_capacity(512);
                    let read = tokio::time::timeout(Duration::from_secs(5), async {
                        let mut chunk = [0u8; 1024];
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
                            let n = conn.read(&mut chunk).await?;
                            if n == 0 {
                                break;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                        }
                        Ok::<(), std::io::Error>(())
                    })
                    .await;
                    if !matches!(read, Ok(Ok(()))) {
                        return;
                    }
                    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
                    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                    let openmetrics = head
                        .lines()
                        .any(|l| l.starts_with("accept:") && l.contains("application/openmetrics-text"));
                    let reply = if line.starts_with(b"GET /metrics ") || line.starts_with(b"GET /metrics?") {
                        let h = health();
                        let body = tokio::task::spawn_blocking(move || render(&pin_dir, &h, &metrics))
                            .await
                            .unwrap_or_default();
                        let (body, content_type) = if openmetrics {
                            (body, "application/openmetrics-text; version=1.0.0; charset=utf-8")
                        } else {
                            (to_prometheus_text(&body), "text/plain; version=0.0.4; charset=utf-8")
                        };
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    } else {
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
                    };
                    let _ = conn.write_all(reply.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        }
    }
}
