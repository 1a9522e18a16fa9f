//! The user's side: what their phone (the user app, or any client holding
//! their device token) reads and answers: the notification inbox,
//! approvals of normal-mode sign-ins and registrations on their key, and
//! four eyes on an on-behalf registration that waits for them.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use super::{ApiError, Decision, require_device};
use crate::obr::Decider;
use crate::state::AppState;

#[derive(Deserialize)]
pub struct InboxQuery {
    #[serde(default)]
    after: i64,
}

/// `GET /api/me/notifications?after=ID`.
pub async fn notifications(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<InboxQuery>,
) -> Result<HttpResponse, ApiError> {
    let me = require_device(&req, &state).await?;
    let inbox = state.directory.notifications(&me.id, query.after).await?;
    Ok(HttpResponse::Ok().json(inbox))
}

/// `POST /api/me/approvals/{id}` `{"approve": bool}`: the owner's answer to
/// an `approval.requested` notification. 404 when there is no such pending
/// approval of theirs (unknown, expired, already decided, or not theirs).
pub async fn decide_approval(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<Decision>,
) -> Result<HttpResponse, ApiError> {
    let me = require_device(&req, &state).await?;
    let id = path.into_inner();
    let approval = state
        .store
        .decide_approval(&id, &me.id, body.approve)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such pending approval".into()))?;
    let action = if body.approve {
        "approval.approved"
    } else {
        "approval.denied"
    };
    state
        .directory
        .audit(
            &me.email,
            action,
            &approval.rp_id,
            serde_json::json!({ "approval_id": approval.id, "operation": approval.operation,
                                "agent": approval.agent_id }),
        )
        .await?;
    Ok(HttpResponse::Ok().json(approval))
}

/// `POST /api/me/obr-sessions/{id}/decision` `{"approve": bool}`: the user
/// approves or denies an on-behalf registration that waits for them
/// (`obr.approval_requested`). 404 when no session of theirs awaits them.
pub async fn decide_obr(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<Decision>,
) -> Result<HttpResponse, ApiError> {
    let me = require_device(&req, &state).await?;
    let session = state
        .obr
        .decide(&path.into_inner(), Decider::User(&me), body.approve)
        .await?;
    Ok(HttpResponse::Ok().json(session))
}
