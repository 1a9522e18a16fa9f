//! On-behalf registration from the panel: approve an agent's login code,
//! list your agents, "Select as OBR", and "Done" (end the session).

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use utoipa::ToSchema;

use super::{
    ApiError, Decision, ErrorBody, MAX_BODY, audited, bearer, client_address, principal,
    read_at_most, require_admin, require_device,
};
use crate::auth;
use crate::directory::grants::Power;
use crate::obr::{Decider, EndReason, ObrRequest};
use crate::sessions::{AgentEvent, Approver, ObrPolicy, ObrSession, Principal, TokenScope};
use crate::state::AppState;

/// How long an agent stays logged in without logging in again.
pub const AGENT_LOGIN_TTL: Duration = Duration::from_secs(12 * 3600);

#[derive(Deserialize, ToSchema)]
pub struct ApproveRequest {
    /// The code the agent shows, e.g. `WDJB-MJHT`.
    user_code: String,
}

#[derive(Serialize, ToSchema)]
pub struct Approved {
    agent_id: String,
    principal: String,
}

/// `POST /api/agent-logins/approve`: the device-code grant (RFC 8628).
/// With an admin token the agent becomes that admin's ("ready for on
/// behalf registration"); with a user's device token, that user's own key.
#[utoipa::path(post, path = "/api/agent-logins/approve", tag = "agents",
    security(("admin" = []), ("device" = [])),
    request_body = ApproveRequest,
    responses(
        (status = 200, description = "The agent is logged in as you", body = Approved),
        (status = 404, description = "Unknown or expired code", body = ErrorBody),
        (status = 429, description = "Too many wrong codes", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ))]
pub async fn approve_login(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<ApproveRequest>,
) -> Result<HttpResponse, ApiError> {
    let mut provisions = false;
    let approver = match require_admin(&req, &state).await {
        Ok(admin) => {
            provisions = admin.may(Power::Provision);
            principal(&admin)
        }
        Err(ApiError::Unauthorized | ApiError::Forbidden(_)) if bearer(&req).is_some() => {
            let person = require_device(&req, &state).await?;
            Principal {
                person_id: person.id,
                email: person.email,
                is_admin: false,
                scope: TokenScope::Agent,
                session: None,
            }
        }
        Err(e) => return Err(e),
    };
    // Guessing codes backs off per approver and per address.
    let approver_key = auth::token_hash(bearer(&req).unwrap_or_default());
    let address = client_address(&req);
    let now = Instant::now();
    state.limits.approvers.check(&approver_key, now)?;
    state.limits.approve_addresses.check(&address, now)?;
    let code = auth::normalize_user_code(&body.user_code);
    let Some(grant) = state.store.take_grant(&code).await? else {
        state.limits.approvers.failed(&approver_key, Instant::now());
        state
            .limits
            .approve_addresses
            .failed(&address, Instant::now());
        return Err(ApiError::NotFound("unknown or expired login code".into()));
    };
    let principal = Principal {
        scope: TokenScope::Agent,
        ..approver
    };
    // The grant names the agent (its key) that asked for it; the login is
    // bound to that key and reaches no other. No token is handed out: the
    // agent proves its key on every connection instead.
    state
        .store
        .put_agent_login(&grant.agent_id, &principal, AGENT_LOGIN_TTL)
        .await?;
    // An admin who may provision makes the agent ready for OBR; anyone
    // else (a user, an auditor) just logs it in.
    let action = if provisions {
        "obr.ready"
    } else {
        "agent.login"
    };
    state
        .directory
        .audit(
            &principal.email,
            action,
            &grant.agent_id,
            serde_json::json!({ "agent": grant.agent_id }),
        )
        .await?;
    // Somebody else's session on this agent ends with the change of login.
    state
        .obr
        .end_for_new_login(&grant.agent_id, &principal)
        .await?;
    state
        .store
        .publish(&AgentEvent::LoginChanged {
            agent_id: grant.agent_id.clone(),
        })
        .await?;
    Ok(HttpResponse::Ok().json(Approved {
        agent_id: grant.agent_id,
        principal: principal.email,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct AgentView {
    agent_id: String,
    /// Its tunnel ends on the relay that answered.
    connected_here: bool,
    /// Its OBR session, if it has one.
    obr: Option<ObrSession>,
}

/// `GET /api/agents`: the caller's logged-in agents and their OBR sessions.
#[utoipa::path(get, path = "/api/agents", tag = "agents", security(("admin" = [])),
    responses((status = 200, description = "Your agents", body = Vec<AgentView>)))]
pub async fn agents(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let admin = require_admin(&req, &state).await?;
    let mut views = Vec::new();
    for agent_id in state.store.agents_of(&admin.person.id).await? {
        let obr = state.store.get_obr(&agent_id).await?;
        views.push(AgentView {
            connected_here: state.agents.is_connected(&agent_id),
            agent_id,
            obr,
        });
    }
    Ok(HttpResponse::Ok().json(views))
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SelectRequest {
    /// Which of your agents (needed only when you have several).
    agent_id: Option<String>,
    /// Only these RP IDs (e.g. `login.microsoft.com`); none: any.
    #[serde(default)]
    rp_ids: Vec<String>,
    /// At most this many passkeys; the session ends when they are made.
    max_registrations: Option<u32>,
    /// Shorter than the relay's OBR TTL, if wanted.
    ttl_s: Option<u64>,
    /// `user` or `second_admin` must approve before the session starts.
    four_eyes: Option<Approver>,
}

/// `POST /api/users/{id}/pairing` (the limits of `/obr`, no `agent_id`):
/// "+Passkey → Other platforms". The answer's `link` (`obr://pair?code=…`)
/// opens the admin's agent on this computer, which then acts for the
/// user; the code works once, within five minutes, and only for an agent
/// logged in as this admin.
#[utoipa::path(post, path = "/api/users/{id}/pairing", tag = "obr", security(("admin" = [])),
    params(("id" = String, Path, description = "The user's id")),
    request_body(content = Option<SelectRequest>, description = "Limits (no `agent_id`); none: no limits"),
    responses(
        (status = 201, description = "The link for your agent", body = PairingOffer),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "The user's key is not active, or busy", body = ErrorBody),
        (status = 413, description = "A body larger than 16 KiB", body = ErrorBody),
    ))]
pub async fn offer_pairing(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let admin = require_admin(&req, &state).await?;
    let body = select_body(&read_at_most(body, MAX_BODY).await?)?;
    if body.agent_id.is_some() {
        return Err(ApiError::BadRequest(
            "a pairing goes to whichever of your agents opens its link: no agent_id".into(),
        ));
    }
    let user_id = path.into_inner();
    let offered = state
        .obr
        .offer_pairing(&admin, &user_id, body.request())
        .await;
    let code = audited(&state, &admin, "offer_pairing", &user_id, offered).await?;
    Ok(HttpResponse::Created().json(PairingOffer {
        link: format!("obr://pair?code={code}"),
        expires_in_s: crate::obr::PAIRING_TTL.as_secs(),
    }))
}

/// "+Passkey → Other platforms": the link that opens your agent.
#[derive(Serialize, ToSchema)]
pub struct PairingOffer {
    /// `obr://pair?code=…`, once, for an agent logged in as you.
    link: String,
    expires_in_s: u64,
}

/// A "Select as OBR" body: none is no limits; one that does not parse is
/// refused, never read as "no limits" (a misspelt `rp_ids` must not widen
/// a session).
fn select_body(body: &[u8]) -> Result<SelectRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(SelectRequest::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

impl SelectRequest {
    fn request(self) -> ObrRequest {
        ObrRequest {
            policy: ObrPolicy {
                rp_ids: self.rp_ids,
                max_registrations: self.max_registrations,
                four_eyes: self.four_eyes,
            },
            ttl: self.ttl_s.map(Duration::from_secs),
        }
    }
}

/// `POST /api/users/{id}/obr`: "Select as OBR", with optional limits.
/// 201 with the session when it starts; 202 when it awaits four eyes.
#[utoipa::path(post, path = "/api/users/{id}/obr", tag = "obr", security(("admin" = [])),
    params(("id" = String, Path, description = "The user's id")),
    request_body(content = Option<SelectRequest>, description = "Limits; none: no limits"),
    responses(
        (status = 201, description = "Started: the agent is in OBR mode", body = ObrSession),
        (status = 202, description = "Waits for four eyes before it starts", body = ObrSession),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "The key is not active, no agent, or one is busy", body = ErrorBody),
        (status = 413, description = "A body larger than 16 KiB", body = ErrorBody),
    ))]
pub async fn select(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let admin = require_admin(&req, &state).await?;
    let mut body = select_body(&read_at_most(body, MAX_BODY).await?)?;
    let user_id = path.into_inner();
    let agent_id = body.agent_id.take();
    let selected = state
        .obr
        .select(&admin, &user_id, agent_id.as_deref(), body.request())
        .await;
    let session = audited(&state, &admin, "select_obr", &user_id, selected).await?;
    Ok(if session.awaiting.is_some() {
        HttpResponse::Accepted().json(session)
    } else {
        HttpResponse::Created().json(session)
    })
}

/// `POST /api/obr-sessions/{id}/decision` `{approve}`: a second admin's
/// four eyes on another admin's session (not their own; only on a user
/// they may provision themself). Refusals are audited.
#[utoipa::path(post, path = "/api/obr-sessions/{id}/decision", tag = "obr",
    security(("admin" = [])),
    params(("id" = String, Path, description = "The OBR session's id")),
    request_body = Decision,
    responses(
        (status = 200, description = "Decided: started, or ended if denied", body = ObrSession),
        (status = 404, description = "No session waits for a second admin", body = ErrorBody),
    ))]
pub async fn decide_as_admin(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<Decision>,
) -> Result<HttpResponse, ApiError> {
    let admin = require_admin(&req, &state).await?;
    let session_id = path.into_inner();
    let decided = state
        .obr
        .decide(&session_id, Decider::Admin(&admin), body.approve)
        .await;
    let session = audited(&state, &admin, "decide_obr", &session_id, decided).await?;
    Ok(HttpResponse::Ok().json(session))
}

/// `DELETE /api/agents/{id}/obr`: "Done" — back to normal mode.
#[utoipa::path(delete, path = "/api/agents/{id}/obr", tag = "obr", security(("admin" = [])),
    params(("id" = String, Path, description = "The agent's id")),
    responses(
        (status = 200, description = "The session that ended", body = ObrSession),
        (status = 409, description = "The agent has no OBR session", body = ErrorBody),
    ))]
pub async fn end(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let admin = require_admin(&req, &state).await?;
    let session = state
        .obr
        .end(&principal(&admin), &path.into_inner(), EndReason::Done)
        .await?;
    Ok(HttpResponse::Ok().json(session))
}

/// `DELETE /api/agents/{id}/login`: log an agent out — your own, or (an
/// owner) anyone's. An OBR session on it ends; the agent hears of it at
/// once and is "not logged in". Audited.
#[utoipa::path(delete, path = "/api/agents/{id}/login", tag = "agents", security(("admin" = [])),
    params(("id" = String, Path, description = "The agent's id")),
    responses(
        (status = 204, description = "Logged out"),
        (status = 404, description = "The agent is not logged in", body = ErrorBody),
    ))]
pub async fn log_out(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let admin = require_admin(&req, &state).await?;
    let agent_id = path.into_inner();
    let login = state
        .store
        .agent_login(&agent_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("agent {agent_id} is not logged in")))?;
    let allowed = if login.person_id == admin.person.id || admin.may(Power::ManageAdmins) {
        Ok(())
    } else {
        Err(crate::obr::ObrError::AgentNotYours(agent_id.clone()))
    };
    audited(&state, &admin, "log_out_agent", &agent_id, allowed).await?;
    if let Some(session) = state.store.get_obr(&agent_id).await? {
        state
            .obr
            .end_by_relay(&session, EndReason::LoggedOut)
            .await?;
    }
    state.store.delete_agent_login(&agent_id).await?;
    state
        .directory
        .audit(
            &admin.person.email,
            "agent.logged_out",
            &agent_id,
            serde_json::json!({ "agent": agent_id, "was_logged_in_as": login.email }),
        )
        .await?;
    state
        .store
        .publish(&AgentEvent::LoginChanged {
            agent_id: agent_id.clone(),
        })
        .await?;
    Ok(HttpResponse::NoContent().finish())
}
