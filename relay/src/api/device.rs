//! The user's side: what their phone (the user app, or any client holding
//! their device token) reads and answers: the notification inbox,
//! approvals of normal-mode sign-ins and registrations on their key, and
//! four eyes on an on-behalf registration that waits for them.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiError, Decision, ErrorBody, require_device};
use crate::directory::notifications::Notification;
use crate::obr::Decider;
use crate::sessions::{Approval, ObrSession};
use crate::state::AppState;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct InboxQuery {
    /// Notifications after this id (the last one you have).
    #[serde(default)]
    after: i64,
}

/// `GET /api/me/notifications?after=ID`.
#[utoipa::path(get, path = "/api/me/notifications", tag = "me", security(("device" = [])),
    params(InboxQuery),
    responses((status = 200, description = "Up to 200, oldest first", body = Vec<Notification>)))]
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
#[utoipa::path(post, path = "/api/me/approvals/{id}", tag = "me", security(("device" = [])),
    params(("id" = String, Path, description = "The approval's id")),
    request_body = Decision,
    responses(
        (status = 200, description = "Decided", body = Approval),
        (status = 404, description = "No such pending approval of yours", body = ErrorBody),
    ))]
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
#[utoipa::path(post, path = "/api/me/obr-sessions/{id}/decision", tag = "me",
    security(("device" = [])),
    params(("id" = String, Path, description = "The OBR session's id")),
    request_body = Decision,
    responses(
        (status = 200, description = "Decided: started, or ended if denied", body = ObrSession),
        (status = 404, description = "No session of yours waits for you", body = ErrorBody),
    ))]
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
