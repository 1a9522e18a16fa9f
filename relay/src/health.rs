//! What `/healthz` and `/readyz` answer, for a load balancer or Kubernetes.
//! `/healthz` (liveness) says the process serves HTTP: it depends on
//! nothing else, so a Redis outage never gets every relay restarted.
//! `/readyz` (readiness) says this relay should get new traffic: it is not
//! draining, and the session store and the directory each answer within
//! [`DEPENDENCY_TIMEOUT`]. Owns no state; reads [`AppState`].

use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde::Serialize;

use crate::state::AppState;

/// How long a dependency has to answer a readiness check.
pub const DEPENDENCY_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    why: Option<String>,
}

/// `GET /healthz`: the process serves HTTP.
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().body("ok")
}

/// `GET /readyz`: 200 `{"ready": true}`, or 503 with why not.
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    match why_not_ready(&state).await {
        None => HttpResponse::Ok().json(Readiness {
            ready: true,
            why: None,
        }),
        Some(why) => HttpResponse::ServiceUnavailable().json(Readiness {
            ready: false,
            why: Some(why),
        }),
    }
}

async fn why_not_ready(state: &AppState) -> Option<String> {
    if state.is_draining() {
        return Some("draining".into());
    }
    match tokio::time::timeout(DEPENDENCY_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Some(format!("session store: {e}")),
        Err(_) => {
            return Some(format!(
                "session store: no answer within {DEPENDENCY_TIMEOUT:?}"
            ));
        }
    }
    match tokio::time::timeout(DEPENDENCY_TIMEOUT, state.directory.ping()).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("directory: {e}")),
        Err(_) => Some(format!(
            "directory: no answer within {DEPENDENCY_TIMEOUT:?}"
        )),
    }
}
