//! The user's side: what their phone (the user app, or any client holding
//! their device token) reads. Today that is the notification inbox.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use super::{ApiError, require_device};
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
