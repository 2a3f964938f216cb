//! Prometheus metrics: requests by route and status, and their latency.

use std::sync::Mutex;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::app::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    /// The route pattern (`/v1/grids/{id}`), never the raw path, to bound cardinality.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JudgedLabels {
    /// `view` (as its sync left it in memory) or `store` (loaded from the change store).
    pub from: &'static str,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    grids: Gauge,
    /// Patrols the compliance worker judged, by where it read them from.
    pub judged: Family<JudgedLabels, Counter>,
    snapshots_owed: Gauge,
    /// Syncs turned away with 503 `server_busy` (admission control).
    pub sync_busy: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("gridpatrol");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let grids = Gauge::default();
        registry.register("http_requests", "HTTP requests handled", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "Time to handle an HTTP request",
            latency.clone(),
        );
        registry.register(
            "grids",
            "Grids in the in-memory spatial index",
            grids.clone(),
        );
        let judged = Family::<JudgedLabels, Counter>::default();
        registry.register(
            "patrols_judged",
            "Patrols judged by the compliance worker, from a sync's view or from the store",
            judged.clone(),
        );
        let snapshots_owed = Gauge::default();
        registry.register(
            "snapshots_owed",
            "Document snapshots owed by patrols judged from views, written when syncs pause",
            snapshots_owed.clone(),
        );
        let sync_busy = Counter::default();
        registry.register(
            "syncs_turned_away",
            "Syncs answered 503 server_busy by admission control (the phone comes back after Retry-After)",
            sync_busy.clone(),
        );
        Metrics {
            sync_busy,
            registry: Mutex::new(registry),
            requests,
            latency,
            grids,
            judged,
            snapshots_owed,
        }
    }
}

impl Metrics {
    pub fn render(&self, grids: usize, snapshots_owed: usize) -> String {
        self.grids.set(grids as i64);
        self.snapshots_owed.set(snapshots_owed as i64);
        let mut out = String::new();
        let registry = match self.registry.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            tracing::error!("metrics encoding failed");
        }
        out
    }
}

/// Middleware counting every request.
pub async fn record(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = req.method().to_string();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let res = next.call(req).await?;
    if let Some(state) = state {
        let status = res.status().as_u16();
        state
            .metrics
            .requests
            .get_or_create(&RequestLabels {
                method,
                route: route.clone(),
                status,
            })
            .inc();
        state
            .metrics
            .latency
            .get_or_create(&RouteLabels { route })
            .observe(started.elapsed().as_secs_f64());
    }
    Ok(res)
}
