//! The relay's HTTP API: JSON over `/api/*`, used by the admin panel, the
//! user app and scripts. Every handler authenticates first (bearer token of
//! the right scope), then calls into [`crate::obr`], the directory or the
//! router; errors leave through one type, [`ApiError`], with a stable
//! machine-readable `error` code and a sentence for people. Each handler
//! carries its part of the OpenAPI document ([`openapi`]).

mod admin;
mod device;
mod import;
mod obr;
mod openapi;
pub(crate) mod users;

pub(crate) use self::users::{accept, invite_user};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use futures_util::StreamExt;
use serde::Serialize;

use crate::auth;
use crate::directory::grants::{Admin, GrantError, Power};
use crate::directory::{DirectoryError, Person};
use crate::obr::ObrError;
use crate::routing::LinkError;
use crate::sessions::{Principal, StoreError, TokenScope};
use crate::state::AppState;

/// The largest request body the API reads (but a CSV import's).
const MAX_BODY: usize = 16 * 1024;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api")
            .app_data(web::PayloadConfig::new(MAX_BODY))
            .app_data(
                web::QueryConfig::default().error_handler(|e, _| {
                    ApiError::BadRequest(format!("invalid query: {e}")).into()
                }),
            )
            .app_data(
                web::JsonConfig::default()
                    .limit(MAX_BODY)
                    .error_handler(|e, _| {
                        ApiError::BadRequest(format!("invalid JSON body: {e}")).into()
                    }),
            )
            .route("/openapi.json", web::get().to(openapi::document))
            .route("/admin/login", web::post().to(admin::login))
            .route("/admin/logout", web::post().to(admin::logout))
            .route("/users", web::get().to(users::list))
            .route("/users", web::post().to(users::invite))
            .route("/users/import", web::post().to(import::import))
            .route("/users/{id}/passkeys", web::get().to(users::passkeys))
            .route(
                "/users/{id}/passkeys/{credential_id}",
                web::delete().to(users::delete_passkey),
            )
            .route("/users/{id}/reset-key", web::post().to(users::reset_key))
            .route("/users/{id}/invitation", web::post().to(users::reinvite))
            .route("/users/{id}/groups", web::put().to(users::set_groups))
            .route("/users/{id}/suspend", web::post().to(users::suspend))
            .route("/users/{id}/resume", web::post().to(users::resume))
            .route("/admins", web::get().to(admin::admins))
            .route("/admins/{id}/grant", web::put().to(admin::set_grant))
            .route("/admins/{id}/grant", web::delete().to(admin::revoke))
            .route("/admins/{id}/sessions", web::get().to(admin::sessions))
            .route(
                "/admins/{id}/sessions",
                web::delete().to(admin::end_all_sessions),
            )
            .route(
                "/admins/{id}/sessions/{session_id}",
                web::delete().to(admin::end_session),
            )
            .route("/users/{id}/obr", web::post().to(obr::select))
            .route("/users/{id}/pairing", web::post().to(obr::offer_pairing))
            .route(
                "/invitations/accept",
                web::post().to(users::accept_invitation),
            )
            .route(
                "/obr-sessions/{id}/decision",
                web::post().to(obr::decide_as_admin),
            )
            .route(
                "/me/obr-sessions/{id}/decision",
                web::post().to(device::decide_obr),
            )
            .route("/agents", web::get().to(obr::agents))
            .route("/agents/{id}/obr", web::delete().to(obr::end))
            .route("/agents/{id}/login", web::delete().to(obr::log_out))
            .route("/agent-logins/approve", web::post().to(obr::approve_login))
            .route("/audit", web::get().to(admin::audit))
            .route("/audit/export", web::get().to(admin::export_audit))
            .route("/me/notifications", web::get().to(device::notifications))
            .route("/me/live", web::get().to(crate::phones::live))
            .route("/me/passkeys", web::get().to(users::my_passkeys))
            .route(
                "/me/approvals/{id}",
                web::post().to(device::decide_approval),
            ),
    );
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("this one-time code was already used: wait for the next one")]
    TotpReplayed,
    /// A sign-in refused: which of the three was wrong is not said.
    #[error("wrong email, password or one-time code")]
    SignInRefused,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    TooMany(#[from] crate::limits::TooMany),
    #[error("internal error")]
    Internal(String),
}

/// Every error the API answers: a stable code and a sentence for people.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// `bad_request`, `unauthorized`, `totp_replayed`, `forbidden`,
    /// `not_found`, `conflict`, `payload_too_large`, `unavailable`,
    /// `too_many_requests` or `internal`.
    #[schema(example = "forbidden")]
    error: &'static str,
    message: String,
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized | ApiError::SignInRefused => "unauthorized",
            ApiError::TotpReplayed => "totp_replayed",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::TooLarge(_) => "payload_too_large",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::TooMany(_) => "too_many_requests",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized | ApiError::TotpReplayed | ApiError::SignInRefused => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(detail) = self {
            tracing::error!(%detail, "internal error answering an API call");
        }
        let mut response = HttpResponse::build(self.status_code());
        if let ApiError::TooMany(crate::limits::TooMany(wait)) = self {
            response.insert_header((
                actix_web::http::header::RETRY_AFTER,
                crate::limits::retry_after_s(*wait),
            ));
        }
        response.json(ErrorBody {
            error: self.code(),
            message: self.to_string(),
        })
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Unavailable(e.to_string())
    }
}

impl From<GrantError> for ApiError {
    fn from(e: GrantError) -> Self {
        match e {
            GrantError::Directory(e) => e.into(),
            GrantError::Unverified => ApiError::NotFound(e.to_string()),
            GrantError::Changed => ApiError::Conflict(e.to_string()),
            GrantError::BadGroups | GrantError::EmptyScope | GrantError::OwnerScope => {
                ApiError::BadRequest(e.to_string())
            }
        }
    }
}

impl From<DirectoryError> for ApiError {
    fn from(e: DirectoryError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<auth::SecretError> for ApiError {
    fn from(e: auth::SecretError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<LinkError> for ApiError {
    fn from(e: LinkError) -> Self {
        ApiError::Unavailable(e.to_string())
    }
}

impl From<ObrError> for ApiError {
    fn from(e: ObrError) -> Self {
        match e {
            ObrError::UserNotFound => ApiError::NotFound(e.to_string()),
            ObrError::SelfObr
            | ObrError::TargetIsAdmin(_)
            | ObrError::OutOfScope(_)
            | ObrError::RoleForbids { .. }
            | ObrError::OwnGrant
            | ObrError::OwnRequest
            | ObrError::AgentNotYours(_) => ApiError::Forbidden(e.to_string()),
            ObrError::BadPolicy(_) => ApiError::BadRequest(e.to_string()),
            ObrError::NotAwaiting | ObrError::UnknownPairing => ApiError::NotFound(e.to_string()),
            ObrError::PairingNotYours => ApiError::Forbidden(e.to_string()),
            ObrError::KeyNotActive(_)
            | ObrError::NoAgent
            | ObrError::AgentAmbiguous(_)
            | ObrError::AlreadyActive { .. }
            | ObrError::UserBusy(_)
            | ObrError::NotActive(_) => ApiError::Conflict(e.to_string()),
            ObrError::Store(e) => e.into(),
            ObrError::Directory(e) => e.into(),
        }
    }
}

/// A yes or no: an owner's approval, four eyes on a session.
#[derive(serde::Deserialize, utoipa::ToSchema)]
pub struct Decision {
    pub approve: bool,
}

/// The TCP peer's address (never a forwarded header a client could write).
fn client_address(req: &HttpRequest) -> String {
    req.peer_addr()
        .map_or_else(|| "unknown".to_owned(), |a| a.ip().to_string())
}

fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The admin this request's bearer token belongs to, with the grant their
/// directory entry holds now.
async fn require_admin(req: &HttpRequest, state: &AppState) -> Result<Admin, ApiError> {
    let token = bearer(req).ok_or(ApiError::Unauthorized)?;
    let hash = auth::token_hash(token);
    match state.store.get_token(&hash).await? {
        Some(p) if p.scope == TokenScope::Admin && p.is_admin => {
            // Used now: idle expiry starts again, the absolute end stays.
            let ends = p.session.as_ref().map_or(0, |s| s.expires_at_ms);
            let idle = state.config.admin_idle_timeout;
            if !state.store.touch_token(&hash, idle, ends).await? {
                return Err(ApiError::Unauthorized);
            }
            // Power is where it is used: the directory's sealed grant, not
            // the token's copy, says whether this person is an admin now.
            state
                .grants
                .admin(&p.person_id)
                .await?
                .ok_or_else(|| ApiError::Forbidden("no longer an admin".into()))
        }
        Some(_) => Err(ApiError::Forbidden(
            "this token is not an admin token".into(),
        )),
        None => Err(ApiError::Unauthorized),
    }
}

/// [`require_admin`], whose role carries `power` (to do `action`); a
/// refusal is audited.
async fn require_power(
    req: &HttpRequest,
    state: &AppState,
    power: Power,
    action: &str,
) -> Result<Admin, ApiError> {
    let admin = require_admin(req, state).await?;
    if admin.may(power) {
        return Ok(admin);
    }
    let refusal = ObrError::RoleForbids {
        role: admin.grant.role.as_str(),
        power: power.as_str(),
    };
    Err(refuse(state, &admin, action, "-", refusal).await)
}

/// `result` as the API answers it, a refusal audited ([`refuse`]).
async fn audited<T>(
    state: &AppState,
    admin: &Admin,
    action: &str,
    subject: &str,
    result: Result<T, ObrError>,
) -> Result<T, ApiError> {
    match result {
        Ok(value) => Ok(value),
        Err(error) => Err(refuse(state, admin, action, subject, error).await),
    }
}

/// `error` as the API answers it. When it refuses `admin` a power (their
/// role, their own key, another admin's, a user out of scope), it is
/// audited first: who tried `action` on `subject`, and why not. (If the
/// record cannot be written, the answer is that failure: still a refusal.)
async fn refuse(
    state: &AppState,
    admin: &Admin,
    action: &str,
    subject: &str,
    error: ObrError,
) -> ApiError {
    let refusal = matches!(
        error,
        ObrError::SelfObr
            | ObrError::TargetIsAdmin(_)
            | ObrError::OutOfScope(_)
            | ObrError::RoleForbids { .. }
            | ObrError::OwnGrant
            | ObrError::OwnRequest
            | ObrError::AgentNotYours(_)
    );
    if refusal {
        let detail = serde_json::json!({ "action": action, "reason": error.to_string(),
                                         "role": admin.grant.role.as_str() });
        if let Err(failed) = state
            .directory
            .audit(&admin.person.email, "access.refused", subject, detail)
            .await
        {
            return failed.into();
        }
    }
    error.into()
}

/// The session-store view of a verified admin (what agent logins record).
fn principal(admin: &Admin) -> Principal {
    Principal {
        person_id: admin.person.id.clone(),
        email: admin.person.email.clone(),
        is_admin: true,
        scope: TokenScope::Admin,
        session: None,
    }
}

/// The user whose device (user app) token this request carries.
async fn require_device(req: &HttpRequest, state: &AppState) -> Result<Person, ApiError> {
    let token = bearer(req).ok_or(ApiError::Unauthorized)?;
    state
        .directory
        .device_token_owner(&auth::token_hash(token))
        .await?
        .ok_or(ApiError::Unauthorized)
}

/// The request body, refused (413) past `limit` bytes.
pub(super) async fn read_at_most(
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("cannot read the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge(format!(
                "the file is larger than {} MiB: split it",
                limit >> 20
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
