//! Prometheus metrics, on a listener of their own (local-only by default:
//! `coordinator serve --metrics-listen [ADDR]`, default 127.0.0.1:9464).
//!
//! Gauges are computed from the coordinator's state at scrape time; counters
//! are fed by the coordinator's event stream, so there is no second
//! bookkeeping to keep in step with the first.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tracing::{info, warn};

use crate::api::tunnel::TunnelHub;
use crate::core::Coordinator;
use crate::events::{Event, EventKind};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: String,
}

pub struct Metrics {
    registry: Registry,
    nodes: Family<State, Gauge>,
    connected: Gauge,
    enrollments: Counter,
    drift_repairs: Counter,
    events: Family<Kind, Counter>,
    checks_failing: Gauge,
    checks_paths: Gauge,
    tunnel_bytes: Counter,
    tunnel_seen: Mutex<u64>,
    tunnel_open: Gauge,
    heartbeat_interval: Gauge<f64, std::sync::atomic::AtomicU64>,
    database_servers: Gauge,
    database_connected: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            nodes: Family::default(),
            connected: Gauge::default(),
            enrollments: Counter::default(),
            drift_repairs: Counter::default(),
            events: Family::default(),
            checks_failing: Gauge::default(),
            checks_paths: Gauge::default(),
            tunnel_bytes: Counter::default(),
            tunnel_seen: Mutex::new(0),
            tunnel_open: Gauge::default(),
            heartbeat_interval: Gauge::default(),
            database_servers: Gauge::default(),
            database_connected: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "apiary_nodes",
            "Nodes by state (ready, down)",
            m.nodes.clone(),
        );
        registry.register(
            "apiary_sessions",
            "Agent sessions currently connected",
            m.connected.clone(),
        );
        registry.register(
            "apiary_enrollments",
            "Agents enrolled (first time or again)",
            m.enrollments.clone(),
        );
        registry.register(
            "apiary_drift_repairs",
            "Host configuration drifts found and repaired",
            m.drift_repairs.clone(),
        );
        registry.register("apiary_events", "Cluster events by kind", m.events.clone());
        registry.register(
            "apiary_checks_failing",
            "Reachability paths failing in the latest check round",
            m.checks_failing.clone(),
        );
        registry.register(
            "apiary_checks_paths",
            "Reachability paths in the latest check round",
            m.checks_paths.clone(),
        );
        registry.register(
            "apiary_tunnel_bytes",
            "Bytes carried through tunnels, both directions",
            m.tunnel_bytes.clone(),
        );
        registry.register(
            "apiary_tunnel_connections_open",
            "Tunnel and Docker engine connections open now",
            m.tunnel_open.clone(),
        );
        registry.register(
            "apiary_heartbeat_interval_seconds",
            "Configured agent heartbeat interval",
            m.heartbeat_interval.clone(),
        );
        registry.register(
            "apiary_database_servers",
            "Database servers the spec asks for",
            m.database_servers.clone(),
        );
        registry.register(
            "apiary_database_servers_connected",
            "Database servers answering (quorum read)",
            m.database_connected.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Metrics whose state lives in the coordinator itself.
    fn with_coordinator(mut self, coord: &Coordinator) -> Self {
        self.registry.register(
            "apiary_heartbeat_rtt_seconds",
            "Heartbeat round trip (agent to coordinator and back), as agents measure it",
            coord.heartbeat_rtt.clone(),
        );
        self
    }

    fn refresh(&self, coord: &Coordinator, tunnels: &TunnelHub) {
        if let Ok(status) = crate::api::status::status(coord) {
            self.database_servers
                .set(i64::from(status.database_servers));
            self.database_connected
                .set(i64::from(status.database_connected));
            for state in ["ready", "down"] {
                let n = status.nodes.iter().filter(|x| x.state == state).count();
                self.nodes
                    .get_or_create(&State {
                        state: state.into(),
                    })
                    .set(n as i64);
            }
        }
        self.connected
            .set(coord.sessions.registry.connected() as i64);
        let checks = coord.view.checks();
        let failing = checks.matrix().failures().len() + checks.down.len();
        self.checks_failing.set(failing as i64);
        self.checks_paths.set(checks.cells.len() as i64);
        let total = tunnels.bytes.load(Ordering::Relaxed);
        let mut seen = self.tunnel_seen.lock().unwrap_or_else(|p| p.into_inner());
        self.tunnel_bytes.inc_by(total.saturating_sub(*seen));
        *seen = total;
        self.tunnel_open
            .set(tunnels.open.load(Ordering::Relaxed) as i64);
        self.heartbeat_interval
            .set(coord.config().heartbeat_interval.as_secs_f64());
    }

    fn count(&self, event: &Event) {
        self.events
            .get_or_create(&Kind {
                kind: event.kind.as_str().to_string(),
            })
            .inc();
        match event.kind {
            EventKind::NodeEnrolled => {
                self.enrollments.inc();
            }
            EventKind::DriftRepaired => {
                self.drift_repairs.inc();
            }
            _ => {}
        }
    }

    pub fn render(&self, coord: &Coordinator, tunnels: &TunnelHub) -> String {
        self.refresh(coord, tunnels);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves `GET /metrics` on `addr` until the task is aborted.
pub async fn serve(addr: SocketAddr, coord: Arc<Coordinator>, tunnels: Arc<TunnelHub>) {
    let metrics = Arc::new(Metrics::new().with_coordinator(&coord));
    {
        let (metrics, mut events) = (metrics.clone(), coord.events.subscribe());
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(e) => metrics.count(&e),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                }
            }
        });
    }
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            warn!(%addr, error = %e, "metrics listener not started");
            return;
        }
    };
    info!(%addr, "metrics at http://{addr}/metrics");
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (metrics, coord, tunnels) = (metrics.clone(), coord.clone(), tunnels.clone());
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.render(&coord, &tunnels),
                )
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        warn!(error = %e, "metrics listener stopped");
    }
}
