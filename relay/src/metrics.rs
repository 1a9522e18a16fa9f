//! The relay's Prometheus metrics, served at `/metrics` (OpenMetrics text)
//! when the relay runs with `--metrics`: the latency ledger of CTAP
//! requests (the whole relay-side time, and each hop's share: relay,
//! signer queue, signer work), HTTP requests by status class, and the
//! connections a pod holds (agents, user apps), which an autoscaler can
//! follow. Owns the registry and its instruments; callers record into them.
//! Labels never name a user, an agent, an admin or a path: a scrape tells
//! nothing about who, and the series stay few.

use std::sync::atomic::AtomicI64;

use actix_web::{HttpResponse, web};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::state::AppState;

/// 100 µs to about 13 s, doubling.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_1, 2.0, 18)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CtapLabels {
    /// `make_credential`, `get_assertion`, `get_next_assertion`,
    /// `get_info`, `client_pin`, `selection` or `other`.
    pub command: &'static str,
    /// `ok` (CTAP2_OK) or `error` (any other status).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HopLabels {
    /// `relay`, `signer_queue` or `signer`.
    pub hop: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// `2xx`, `3xx`, `4xx` or `5xx`.
    pub class: &'static str,
}

pub struct Metrics {
    registry: Registry,
    ctap_seconds: Family<CtapLabels, Histogram>,
    hop_seconds: Family<HopLabels, Histogram>,
    http_requests: Family<HttpLabels, Counter>,
    agents: Gauge<i64, AtomicI64>,
    phones: Gauge<i64, AtomicI64>,
    draining: Gauge<i64, AtomicI64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("obr_relay");
        let ctap_seconds = Family::<CtapLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register(
            "ctap_request_seconds",
            "CTAP requests from agents: time from arrival at the relay to the answer",
            ctap_seconds.clone(),
        );
        let hop_seconds = Family::<HopLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register(
            "ctap_hop_seconds",
            "Each hop's share of a CTAP request that reached a signer: relay, signer queue, signer work",
            hop_seconds.clone(),
        );
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered",
            http_requests.clone(),
        );
        let (agents, phones, draining) = (Gauge::default(), Gauge::default(), Gauge::default());
        registry.register(
            "agent_connections",
            "Agents connected to this relay",
            agents.clone(),
        );
        registry.register(
            "phone_feeds",
            "User apps' live feeds on this relay",
            phones.clone(),
        );
        registry.register("draining", "1 while this relay drains", draining.clone());
        Self {
            registry,
            ctap_seconds,
            hop_seconds,
            http_requests,
            agents,
            phones,
            draining,
        }
    }
}

impl Metrics {
    /// One CTAP request answered: its command byte, its answer's status
    /// byte, the relay-side time, and the hops when a signer answered.
    pub fn ctap(
        &self,
        command: Option<u8>,
        status: Option<u8>,
        seconds: f64,
        hops: Option<(f64, f64, f64)>,
    ) {
        let labels = CtapLabels {
            command: command_name(command),
            outcome: if status == Some(0) { "ok" } else { "error" },
        };
        self.ctap_seconds.get_or_create(&labels).observe(seconds);
        if let Some((relay, queue, signer)) = hops {
            for (hop, seconds) in [
                ("relay", relay),
                ("signer_queue", queue),
                ("signer", signer),
            ] {
                self.hop_seconds
                    .get_or_create(&HopLabels { hop })
                    .observe(seconds);
            }
        }
    }

    /// One HTTP answer with this status.
    pub fn http(&self, status: u16) {
        let class = match status {
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.http_requests
            .get_or_create(&HttpLabels { class })
            .inc();
    }
}

/// CTAP 2.1 §6 command bytes by name.
fn command_name(command: Option<u8>) -> &'static str {
    match command {
        Some(0x01) => "make_credential",
        Some(0x02) => "get_assertion",
        Some(0x04) => "get_info",
        Some(0x06) => "client_pin",
        Some(0x08) => "get_next_assertion",
        Some(0x0b) => "selection",
        _ => "other",
    }
}

/// `GET /metrics`: the OpenMetrics text, when the relay runs with
/// `--metrics` (404 otherwise: keep it off the public listener's routes,
/// or reach it only from inside the cluster).
pub async fn scrape(state: web::Data<AppState>) -> HttpResponse {
    if !state.config.metrics {
        return HttpResponse::NotFound().finish();
    }
    let metrics = &state.metrics;
    metrics
        .agents
        .set(i64::try_from(state.agents.count()).unwrap_or(i64::MAX));
    metrics
        .phones
        .set(i64::try_from(state.phones.count()).unwrap_or(i64::MAX));
    metrics.draining.set(i64::from(state.is_draining()));
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &metrics.registry) {
        tracing::error!(error = %e, "cannot encode the metrics");
        return HttpResponse::InternalServerError().finish();
    }
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(text)
}
