//! The relay's access log: one line per HTTP request (method, path without
//! its query, status, duration, client address) under a request id that
//! every log line written while the request is served carries (a tracing
//! span), and that the answer returns as `X-Request-Id`. A caller's own
//! `X-Request-Id` is kept when it is a plain token (so a trace can cross a
//! proxy); anything else gets a fresh one. Probes (`/healthz`, `/readyz`)
//! are logged at DEBUG. Never logs a header, a query or a body: tokens
//! travel there.

use actix_web::Error;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use tokio::time::Instant;
use tracing::Instrument;

/// The header a request id travels in, both ways.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The longest caller-chosen request id kept.
const MAX_REQUEST_ID: usize = 64;

/// The middleware (`actix_web::middleware::from_fn(access_log)`).
pub async fn access_log(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let id = request_id(&req);
    let span = tracing::info_span!("request", request_id = %id);
    let (method, path) = (req.method().clone(), req.path().to_owned());
    let peer = req
        .peer_addr()
        .map_or_else(|| "unknown".to_owned(), |a| a.ip().to_string());
    let started = Instant::now();
    let mut response = next.call(req).instrument(span.clone()).await?;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let status = response.status().as_u16();
    if let Some(state) = response
        .request()
        .app_data::<actix_web::web::Data<crate::state::AppState>>()
    {
        state.metrics.http(status);
    }
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    span.in_scope(|| {
        if path == "/healthz" || path == "/readyz" {
            tracing::debug!(target: "obr::access", %method, %path, status, micros, %peer, "http");
        } else {
            tracing::info!(target: "obr::access", %method, %path, status, micros, %peer, "http");
        }
    });
    Ok(response)
}

/// The caller's id if it is 1-64 characters of `[A-Za-z0-9._-]`, else a
/// new one.
fn request_id(req: &ServiceRequest) -> String {
    req.headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            !id.is_empty()
                && id.len() <= MAX_REQUEST_ID
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned)
}
