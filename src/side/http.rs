//! The side server operators and Kubernetes talk to: `/healthz`, `/readyz`, `/stats` and
//! `/metrics`. Every handler reads atomics and the monitor's last snapshot; none touches
//! Redis or Kafka, so a slow dependency never makes a probe slow, and scraping never slows
//! the pipeline. It serves GET only: nothing here can change the daemon.
//!
//! It faces whatever can reach the port, so it defends itself: a client must send its
//! request head within [`HEADER_READ_TIMEOUT`] (idle keep-alive connections are closed after
//! the same time), a head larger than [`MAX_HEAD_BYTES`] is refused with 431, request
//! bodies are never read, and at most [`MAX_CONNECTIONS`] connections are open at once, so
//! slow or hostile clients cannot pile up sockets or memory. When all are taken, the
//! oldest is closed to admit the new one: turning new clients away instead let a few
//! hundred stalled connections starve the kubelet's probes (2 of 57 answered under such a
//! flood), while a probe, which sends its request at once, is done long before 512 newer
//! connections push it out. `http.probe_listen` adds a listener with slots of its own
//! that serves only the probes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::config::Settings;
use crate::shutdown::Shutdown;
use crate::side::health::{self, Inputs, Status, Thresholds};
use crate::side::monitor::{CacheFigures, Observed};
use crate::stats::{PartitionFigures, Stats, StatsSnapshot};

/// How long a client may take to send a request head (and how long an idle keep-alive
/// connection stays open). Probes and scrapers send theirs at once.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest request head accepted (request line and headers); larger ones get 431.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Connections open at once, per listener; a new one beyond closes the oldest. Kept well
/// below the common 1,024 open-files soft limit, with the Kafka and Redis sockets beside.
pub const MAX_CONNECTIONS: usize = 512;

struct AppState {
    stats: Arc<Stats>,
    observed: Arc<Observed>,
    registry: Registry,
    thresholds: Thresholds,
    topics: [String; 2],
}

/// A listener that could not be bound: the address asked for, and why.
#[derive(Debug)]
pub struct BindError {
    pub listen: String,
    pub error: std::io::Error,
}

async fn bind(listen: &str) -> Result<(tokio::net::TcpListener, SocketAddr), BindError> {
    let failed = |error| BindError {
        listen: listen.to_owned(),
        error,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(failed)?;
    let addr = listener.local_addr().map_err(failed)?;
    Ok((listener, addr))
}

/// Binds `http.listen` and `http.probe_listen` if set (so a port in use stops start-up
/// with a clear error) and serves until shutdown. Returns the main address.
pub async fn start(
    settings: &Settings,
    stats: Arc<Stats>,
    observed: Arc<Observed>,
    shutdown: Shutdown,
) -> Result<SocketAddr, BindError> {
    let (listener, addr) = bind(&settings.http.listen).await?;
    let probes = match settings.http.probe_listen.as_str() {
        "" => None,
        listen => Some(bind(listen).await?),
    };
    let _ = stats.http_addr.set(addr);
    let topics = [
        settings.kafka.device_topic.clone(),
        settings.kafka.metric_topic.clone(),
    ];
    let state = Arc::new(AppState {
        registry: crate::side::metrics::registry(
            Arc::clone(&stats),
            Arc::clone(&observed),
            topics.clone(),
            thresholds(settings),
        ),
        stats,
        observed,
        thresholds: thresholds(settings),
        topics,
    });
    let evicted = Arc::clone(&state.stats);
    let probe_routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    let mut app = probe_routes
        .clone()
        .route("/stats", get(stats_json))
        .route("/metrics", get(metrics))
        .with_state(Arc::clone(&state));
    // The read API, when a token is configured (settings validation read the file once
    // already; a file gone since start-up leaves the API off, said in the log).
    let api = match settings.api.token() {
        Ok(Some(token)) => Some(token),
        Ok(None) => None,
        Err(e) => {
            tracing::error!(error = %e, "api.token_file unreadable: the /v1 read API is off");
            None
        }
    };
    if let Some(token) = api {
        let api = crate::side::api::ApiState::new(
            token,
            settings.api.max_page,
            settings.redis.clone(),
            Arc::clone(&state.stats),
            Arc::clone(&state.observed),
            state.topics.clone(),
        );
        app = app.merge(crate::side::api::routes(Arc::new(api)));
        tracing::info!(%addr, "serving the read API under /v1");
    }
    if let Some((listener, probe_addr)) = probes {
        let _ = state.stats.probe_addr.set(probe_addr);
        let app = probe_routes.with_state(Arc::clone(&state));
        tokio::spawn(serve(listener, app, Arc::clone(&evicted), shutdown.clone()));
        tracing::info!(addr = %probe_addr, "serving /healthz /readyz (http.probe_listen)");
    }
    tokio::spawn(serve(listener, app, evicted, shutdown));
    tracing::info!(%addr, "serving /healthz /readyz /stats /metrics");
    Ok(addr)
}

/// The open connections of one listener, oldest first, each with the means to close it.
#[derive(Default)]
struct Slots {
    open: Mutex<(u64, BTreeMap<u64, Arc<Notify>>)>,
}

/// One admitted connection: closed when notified, forgotten when dropped.
struct Slot {
    id: u64,
    close: Arc<Notify>,
    slots: Arc<Slots>,
}

impl Slots {
    /// Admits a connection, closing the oldest when all [`MAX_CONNECTIONS`] are taken.
    /// Returns whether one was closed.
    fn admit(self: &Arc<Self>) -> (Slot, bool) {
        let close = Arc::new(Notify::new());
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let evicted = if open.1.len() >= MAX_CONNECTIONS {
            // `notify_one` keeps a permit, so a connection not yet waiting closes too.
            open.1
                .pop_first()
                .inspect(|(_, oldest)| oldest.notify_one())
        } else {
            None
        };
        let id = open.0;
        open.0 += 1;
        open.1.insert(id, Arc::clone(&close));
        let slot = Slot {
            id,
            close,
            slots: Arc::clone(self),
        };
        (slot, evicted.is_some())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.1.remove(&self.id);
    }
}

/// The accept loop: one task per connection, each bounded in time and size.
async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    stats: Arc<Stats>,
    shutdown: Shutdown,
) {
    let slots = Arc::new(Slots::default());
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(64);
    let builder = Arc::new(builder);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: back off instead of spinning.
                tracing::warn!(error = %e, "http accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (slot, evicted) = slots.admit();
        if evicted {
            stats.http_evicted.fetch_add(1, Relaxed);
            tracing::debug!("http: all connections taken; closed the oldest");
        }
        let service = TowerToHyperService::new(app.clone());
        let builder = Arc::clone(&builder);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = slot.close.notified() => {}
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
                }
            }
        });
    }
}

pub fn thresholds(settings: &Settings) -> Thresholds {
    Thresholds {
        redis_grace: Duration::from_secs(settings.http.redis_grace_secs),
        wedged_after: Duration::from_secs(settings.http.wedged_after_secs),
        lag_degraded: settings.http.lag_degraded,
        window: Duration::from_secs(settings.http.degraded_window_secs),
    }
}

/// Collects what the health verdicts need.
pub fn inputs(stats: &Stats, observed: &Observed) -> Inputs {
    let o = observed.get();
    let max_lag = stats.partitions.lock().ok().and_then(|p| {
        p.iter()
            .max_by_key(|(_, f)| f.lag)
            .map(|((t, p), f)| (t.clone(), *p, f.lag))
    });
    Inputs {
        assigned_partitions: stats.kafka_assigned.load(Relaxed),
        kafka_stats_seen: stats.kafka_stats_seen.load(Relaxed),
        kafka_brokers_up: stats.kafka_brokers_up.load(Relaxed),
        redis_reachable: o.redis_reachable,
        redis_down_for: o.redis_down_since.map(|t| t.elapsed()),
        redis_error: o.redis_error,
        recent_redis_errors: o.recent_redis_errors,
        last_redis_error: stats.last_redis_error(),
        redis_primary: stats.redis_primary(),
        recent_dead_letters: o.recent_dead_letters,
        dead_letter_error: stats.dead_letter_failing(),
        max_lag,
        eviction_warning: o.eviction_warning,
        paused: stats.paused.load(Relaxed),
        pending_records: stats.pending_records.load(Relaxed),
        since_last_ack: Duration::from_millis(stats.since_last_ack_ms()),
    }
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    let live = health::liveness(&inputs(&state.stats, &state.observed), &state.thresholds);
    let code = if live.alive {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(live)).into_response()
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let ready = health::readiness(&inputs(&state.stats, &state.observed), &state.thresholds);
    let code = if ready.status == Status::Unhealthy {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(ready)).into_response()
}

/// The `/stats` document.
#[derive(Debug, Serialize)]
pub struct StatsReport {
    pub version: &'static str,
    pub uptime_secs: f64,
    pub topics: std::collections::BTreeMap<String, crate::stats::TopicSnapshot>,
    pub writer: WriterReport,
    pub kafka: KafkaReport,
    pub redis: RedisReport,
    pub cache: Option<CacheFigures>,
}

#[derive(Debug, Serialize)]
pub struct WriterReport {
    pub batches: u64,
    pub mean_batch_size: f64,
    pub max_batch_size: u64,
    pub pipeline_ms_p50: f64,
    pub pipeline_ms_p99: f64,
    pub pipeline_ms_max: f64,
    pub retries: u64,
    pub in_flight_pipelines: u64,
    pub pending_records: u64,
    /// Other writers' connections closed before writing under a new assignment.
    pub writers_fenced: u64,
    /// New Redis connections on which this member proved it still owns its partitions.
    pub ownership_proofs: u64,
    /// Proofs the coordinator refused (this member was evicted) or could not answer.
    pub ownership_refused: u64,
}

#[derive(Debug, Serialize)]
pub struct KafkaReport {
    pub assigned_partitions: u64,
    pub brokers_up: u64,
    pub paused: bool,
    pub commits: u64,
    /// Partition assignments received (the first join counts as one).
    pub rebalances: u64,
    pub partitions: Vec<PartitionReport>,
}

#[derive(Debug, Serialize)]
pub struct PartitionReport {
    pub topic: String,
    pub partition: i32,
    #[serde(flatten)]
    pub figures: PartitionFigures,
}

#[derive(Debug, Serialize)]
pub struct RedisReport {
    pub reachable: Option<bool>,
    pub error: Option<String>,
    pub eviction_warning: Option<String>,
}

pub fn report(stats: &Stats, observed: &Observed, topics: &[String; 2]) -> StatsReport {
    let s: StatsSnapshot = stats.snapshot();
    let o = observed.get();
    let partitions = stats
        .partitions
        .lock()
        .map(|p| {
            p.iter()
                .map(|((topic, partition), f)| PartitionReport {
                    topic: topic.clone(),
                    partition: *partition,
                    figures: *f,
                })
                .collect()
        })
        .unwrap_or_default();
    StatsReport {
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: s.uptime_secs,
        topics: [
            (topics[0].clone(), s.devices.clone()),
            (topics[1].clone(), s.metrics.clone()),
        ]
        .into_iter()
        .collect(),
        writer: WriterReport {
            batches: s.batches,
            mean_batch_size: if s.batches == 0 {
                0.0
            } else {
                s.batched_events as f64 / s.batches as f64
            },
            max_batch_size: s.max_batch,
            pipeline_ms_p50: s.pipeline_micros_p50 as f64 / 1000.0,
            pipeline_ms_p99: s.pipeline_micros_p99 as f64 / 1000.0,
            pipeline_ms_max: s.pipeline_micros_max as f64 / 1000.0,
            retries: s.retries,
            in_flight_pipelines: s.in_flight,
            pending_records: s.pending_records,
            writers_fenced: stats.writers_fenced.load(Relaxed),
            ownership_proofs: stats.ownership_proofs.load(Relaxed),
            ownership_refused: stats.ownership_refused.load(Relaxed),
        },
        kafka: KafkaReport {
            assigned_partitions: s.kafka_assigned_partitions,
            brokers_up: s.kafka_brokers_up,
            paused: s.paused,
            commits: s.commits,
            rebalances: s.rebalances,
            partitions,
        },
        redis: RedisReport {
            reachable: o.redis_reachable,
            error: o.redis_error,
            eviction_warning: o.eviction_warning,
        },
        cache: o.cache,
    }
}

async fn stats_json(State(state): State<Arc<AppState>>) -> Json<StatsReport> {
    Json(report(&state.stats, &state.observed, &state.topics))
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut body = String::with_capacity(16 * 1024);
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
