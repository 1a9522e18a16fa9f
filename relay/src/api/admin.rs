//! Admin sign-in and logout, the admins and their grants (list, change,
//! revoke), and the audit log.

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, ErrorBody, audited, bearer, client_address, require_admin, require_power};
use crate::auth;
use crate::clock::now_ms;
use crate::directory::audit::{AuditFilter, AuditRecord};
use crate::directory::grants::{Admin, Grant, GrantError, Power};
use crate::directory::second_factor::SecondFactorError;
use crate::limits::{ARGON2_QUEUE_WAIT, TooMany};
use crate::obr::ObrError;
use crate::sessions::{AdminSession, Principal, TokenScope};
use crate::state::AppState;

const MAX_AUDIT_PAGE: i64 = 1000;
/// The largest audit export one request returns (a SIEM pages with `after`).
const MAX_EXPORT_BYTES: usize = 64 << 20;
/// How much of a `User-Agent` a session keeps.
const MAX_USER_AGENT_LEN: usize = 256;

#[derive(Deserialize, ToSchema)]
pub struct LoginRequest {
    email: String,
    password: String,
    /// The 6-digit code from the admin's authenticator app.
    #[schema(value_type = String, required = true)]
    totp: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct LoginResponse {
    token: String,
    /// Until the session's absolute end.
    expires_in_s: u64,
    /// Unused this long, the token ends sooner.
    idle_timeout_s: u64,
    session_id: String,
    person_id: String,
}

/// `POST /api/admin/login` `{email, password, totp}`: password and
/// one-time code, checked together (a refusal does not say which was
/// wrong). Failures back off per account and per client address (429 with
/// `Retry-After`); argon2 runs a bounded number at once.
#[utoipa::path(post, path = "/api/admin/login", tag = "admins", security(()),
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Signed in: the bearer token for this session", body = LoginResponse),
        (status = 401, description = "Wrong email, password or one-time code; or a code already used (`totp_replayed`)", body = ErrorBody),
        (status = 403, description = "The account holds no verified admin grant, or no second factor", body = ErrorBody),
        (status = 429, description = "Too many failures from this account or address", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ))]
pub async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<LoginRequest>,
) -> Result<HttpResponse, ApiError> {
    // Asked for before anything is checked, so it tells nobody anything.
    let Some(code) = body.totp.as_deref().filter(|c| !c.trim().is_empty()) else {
        return Err(ApiError::BadRequest(
            "totp is required: the 6-digit code from your authenticator app".into(),
        ));
    };
    let account = body.email.trim().to_lowercase();
    let address = client_address(&req);
    let limits = &state.limits;
    let now = Instant::now();
    limits.login_accounts.check(&account, now)?;
    limits.login_addresses.check(&address, now)?;
    let _slot = tokio::time::timeout(ARGON2_QUEUE_WAIT, limits.argon2.acquire())
        .await
        .map_err(|_| TooMany(Duration::from_secs(1)))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    // Again now that it is our turn: guesses sent in parallel all passed the
    // first check while earlier ones were still being verified.
    let now = Instant::now();
    limits.login_accounts.check(&account, now)?;
    limits.login_addresses.check(&address, now)?;
    let found = state.directory.admin_credentials(&body.email).await?;
    let password = body.password.clone();
    // argon2 is deliberately slow: keep it off the async workers.
    let (person, ok) = web::block(move || match found {
        Some((person, hash)) => {
            let ok = auth::verify_password(&password, &hash);
            (Some(person), ok)
        }
        None => {
            // Spend the same time for unknown emails (no user enumeration).
            let _ = auth::verify_password(&password, DUMMY_HASH);
            (None, false)
        }
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let refused = |why: &str| {
        tracing::info!(email = %body.email, %address, why, "admin login refused");
        limits.login_accounts.failed(&account, Instant::now());
        limits.login_addresses.failed(&address, Instant::now());
    };
    let Some(person) = person.filter(|_| ok) else {
        refused("email or password");
        return Err(ApiError::SignInRefused);
    };
    // The password is theirs; the power is their sealed grant's (checked
    // before the code, so a refused account does not spend one).
    if state.grants.admin(&person.id).await?.is_none() {
        tracing::warn!(email = %person.email, "admin login without a verified grant refused");
        return Err(ApiError::Forbidden(
            "this account holds no verified admin grant: an owner must grant it again \
             (obr-relay admin create)"
                .into(),
        ));
    }
    if let Err(e) = state
        .second_factor
        .verify(&person, code, unix_now_s())
        .await
    {
        refused("one-time code");
        return Err(match e {
            SecondFactorError::Wrong => ApiError::SignInRefused,
            SecondFactorError::Replayed => ApiError::TotpReplayed,
            SecondFactorError::NotEnrolled => ApiError::Forbidden(e.to_string()),
            SecondFactorError::Directory(e) => e.into(),
        });
    }
    limits.login_accounts.succeeded(&account);
    let token = auth::new_token()?;
    let (lifetime, idle) = (
        state.config.admin_session_lifetime,
        state.config.admin_idle_timeout,
    );
    let created_at_ms = now_ms();
    let session = AdminSession {
        id: uuid::Uuid::new_v4().to_string(),
        created_at_ms,
        expires_at_ms: created_at_ms
            .saturating_add(i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX)),
        address: address.clone(),
        user_agent: user_agent(&req),
    };
    let principal = Principal {
        person_id: person.id.clone(),
        email: person.email.clone(),
        is_admin: true,
        scope: TokenScope::Admin,
        session: Some(session.clone()),
    };
    state
        .store
        .put_token(&auth::token_hash(&token), &principal, lifetime, idle)
        .await?;
    state
        .directory
        .audit(
            &person.email,
            "admin.login",
            &person.email,
            serde_json::json!({ "session": session.id, "address": address }),
        )
        .await?;
    Ok(HttpResponse::Ok().json(LoginResponse {
        token,
        expires_in_s: lifetime.as_secs(),
        idle_timeout_s: idle.as_secs(),
        session_id: session.id,
        person_id: person.id,
    }))
}

fn unix_now_s() -> u64 {
    u64::try_from(now_ms() / 1000).unwrap_or(0)
}

/// The request's `User-Agent`, cut to [`MAX_USER_AGENT_LEN`] characters.
fn user_agent(req: &HttpRequest) -> String {
    req.headers()
        .get(actix_web::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .chars()
        .take(MAX_USER_AGENT_LEN)
        .collect()
}

/// An argon2id hash of a random password, verified against when the email
/// is unknown so that both paths cost the same.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$2ebC7Dv9oS3BgmNFrSv1zk5Y3v7QJc5c5ZQeuDcZJ6A";

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Records after this `seq` (paging).
    #[serde(default)]
    after: i64,
    /// At most this many records (1-1000; the default is 1000).
    limit: Option<i64>,
    /// Who did it: an email, an agent id, `system`.
    actor: Option<String>,
    /// Whom it concerns.
    subject: Option<String>,
    /// An action (`obr.started`) or a family of them (`obr`).
    action: Option<String>,
    /// The relying party a record names.
    rp_id: Option<String>,
    /// From this time on (Unix ms).
    since_ms: Option<i64>,
    /// Before this time (Unix ms).
    until_ms: Option<i64>,
}

/// A page of the audit log.
#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    records: Vec<AuditRecord>,
    /// Whether the whole hash chain verifies.
    chain_intact: bool,
    /// The first record whose link does not verify.
    chain_broken_at: Option<i64>,
}

impl AuditQuery {
    fn filter(&self) -> AuditFilter {
        AuditFilter {
            actor: self.actor.clone(),
            subject: self.subject.clone(),
            action: self.action.clone(),
            rp_id: self.rp_id.clone(),
            since_ms: self.since_ms,
            until_ms: self.until_ms,
        }
    }
}

/// `GET /api/audit?after=SEQ&limit=N&actor=…&subject=…&action=…&rp_id=…&since_ms=…&until_ms=…`:
/// records the filters select, and whether the whole chain holds.
#[utoipa::path(get, path = "/api/audit", tag = "audit", security(("admin" = [])),
    params(AuditQuery),
    responses((status = 200, description = "Records, oldest first", body = AuditPage)))]
pub async fn audit(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse, ApiError> {
    require_power(&req, &state, Power::Read, "read_audit").await?;
    let limit = query
        .limit
        .unwrap_or(MAX_AUDIT_PAGE)
        .clamp(1, MAX_AUDIT_PAGE);
    let records = state
        .directory
        .audit_search(&query.filter(), query.after, limit)
        .await?;
    let broken_at = state.directory.verify_audit_chain().await?;
    Ok(HttpResponse::Ok().json(AuditPage {
        records,
        chain_intact: broken_at.is_none(),
        chain_broken_at: broken_at,
    }))
}

/// `GET /api/audit/export?…` (the filters of `/api/audit`): every record
/// they select as JSON lines (`application/x-ndjson`, one record per line,
/// oldest first), for a SIEM. The export itself is audited.
#[utoipa::path(get, path = "/api/audit/export", tag = "audit", security(("admin" = [])),
    params(AuditQuery),
    responses(
        (status = 200, description = "One `AuditRecord` as JSON per line, oldest first",
            content_type = "application/x-ndjson", body = String),
        (status = 400, description = "A query that does not parse, or an export larger than 64 MiB (narrow it)", body = ErrorBody),
    ))]
pub async fn export_audit(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse, ApiError> {
    let admin = require_power(&req, &state, Power::Read, "export_audit").await?;
    let filter = query.filter();
    let mut lines = Vec::new();
    let mut after = query.after;
    loop {
        let page = state
            .directory
            .audit_search(&filter, after, MAX_AUDIT_PAGE)
            .await?;
        let Some(last) = page.last().map(|r| r.seq) else {
            break;
        };
        for record in &page {
            serde_json::to_writer(&mut lines, record)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            lines.push(b'\n');
        }
        if lines.len() > MAX_EXPORT_BYTES {
            return Err(ApiError::BadRequest(format!(
                "the export is larger than {} MiB: narrow it (since_ms, until_ms, after)",
                MAX_EXPORT_BYTES >> 20
            )));
        }
        after = last;
    }
    state
        .directory
        .audit(
            &admin.person.email,
            "audit.exported",
            "audit_log",
            serde_json::json!({ "after": query.after, "up_to": after,
                                "bytes": lines.len() }),
        )
        .await?;
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .insert_header((
            actix_web::http::header::CONTENT_DISPOSITION,
            "attachment; filename=\"obr-audit.jsonl\"",
        ))
        .body(lines))
}

#[derive(Serialize, ToSchema)]
pub struct AdminView {
    id: String,
    email: String,
    display_name: String,
    grant: crate::directory::grants::Grant,
}

/// `GET /api/admins`: every admin whose grant verifies, with role and scope.
#[utoipa::path(get, path = "/api/admins", tag = "admins", security(("admin" = [])),
    responses((status = 200, description = "The admins", body = Vec<AdminView>)))]
pub async fn admins(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_power(&req, &state, Power::Read, "list_admins").await?;
    let admins: Vec<AdminView> = state
        .grants
        .admins()
        .await?
        .into_iter()
        .map(|admin| AdminView {
            id: admin.person.id,
            email: admin.person.email,
            display_name: admin.person.display_name,
            grant: admin.grant,
        })
        .collect();
    Ok(HttpResponse::Ok().json(admins))
}

/// The admin `id` names, for an owner about to change their grant: not the
/// owner themself (refused and audited), and an admin indeed.
async fn other_admin(
    state: &AppState,
    owner: &Admin,
    action: &str,
    id: &str,
) -> Result<crate::directory::Person, ApiError> {
    let own = if id == owner.person.id {
        Err(ObrError::OwnGrant)
    } else {
        Ok(())
    };
    audited(state, owner, action, id, own).await?;
    match state.directory.person(id).await? {
        Some(person) if state.grants.is_verified_admin(id).await? => Ok(person),
        _ => Err(ApiError::NotFound("no such admin".into())),
    }
}

/// `PUT /api/admins/{id}/grant` `{role, scope}`: give another admin a new
/// role or scope (owners). Audited.
#[utoipa::path(put, path = "/api/admins/{id}/grant", tag = "admins", security(("admin" = [])),
    params(("id" = String, Path, description = "The admin's person id")),
    request_body = Grant,
    responses(
        (status = 200, description = "The admin with the new grant", body = AdminView),
        (status = 404, description = "No such admin", body = ErrorBody),
        (status = 409, description = "The grant changed meanwhile", body = ErrorBody),
    ))]
pub async fn set_grant(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<Grant>,
) -> Result<HttpResponse, ApiError> {
    let owner = require_power(&req, &state, Power::ManageAdmins, "set_grant").await?;
    let target = other_admin(&state, &owner, "set_grant", &path.into_inner()).await?;
    let grant = body.into_inner();
    state.grants.set_grant(&target.id, &grant).await?;
    state
        .directory
        .audit(
            &owner.person.email,
            "admin.grant_set",
            &target.email,
            serde_json::json!({ "admin_id": target.id, "grant": grant }),
        )
        .await?;
    Ok(HttpResponse::Ok().json(AdminView {
        id: target.id,
        email: target.email,
        display_name: target.display_name,
        grant,
    }))
}

/// `DELETE /api/admins/{id}/grant`: take another admin's power away
/// (owners). They stay an admin nobody may act on; their tokens, agents
/// and sessions lose their power at their next use. Audited.
#[utoipa::path(delete, path = "/api/admins/{id}/grant", tag = "admins", security(("admin" = [])),
    params(("id" = String, Path, description = "The admin's person id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such admin, or no grant", body = ErrorBody),
        (status = 409, description = "The grant changed meanwhile", body = ErrorBody),
    ))]
pub async fn revoke(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let owner = require_power(&req, &state, Power::ManageAdmins, "revoke").await?;
    let target = other_admin(&state, &owner, "revoke", &path.into_inner()).await?;
    state.grants.revoke(&target.id).await.map_err(|e| match e {
        GrantError::Unverified => ApiError::NotFound("that admin holds no grant".into()),
        other => other.into(),
    })?;
    state
        .directory
        .audit(
            &owner.person.email,
            "admin.revoked",
            &target.email,
            serde_json::json!({ "admin_id": target.id }),
        )
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /api/admin/logout`: the bearer token ends now (any admin, whatever
/// their grant). Audited.
#[utoipa::path(post, path = "/api/admin/logout", tag = "admins", security(("admin" = [])),
    responses((status = 204, description = "The token is void")))]
pub async fn logout(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let token = bearer(&req).ok_or(ApiError::Unauthorized)?;
    let hash = auth::token_hash(token);
    let principal = match state.store.get_token(&hash).await? {
        Some(p) if p.scope == TokenScope::Admin => p,
        Some(_) => {
            return Err(ApiError::Forbidden(
                "this token is not an admin token".into(),
            ));
        }
        None => return Err(ApiError::Unauthorized),
    };
    if !state.store.delete_token(&hash).await? {
        // Another logout with the same token came first.
        return Err(ApiError::Unauthorized);
    }
    state
        .directory
        .audit(
            &principal.email,
            "admin.logout",
            &principal.email,
            serde_json::json!({}),
        )
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Serialize, ToSchema)]
pub struct SessionView {
    id: String,
    created_at_ms: i64,
    expires_at_ms: i64,
    address: String,
    user_agent: String,
    /// The session this request was made with.
    current: bool,
}

#[derive(Serialize, ToSchema)]
pub struct AgentLogin {
    agent_id: String,
    connected_here: bool,
}

#[derive(Serialize, ToSchema)]
pub struct SessionsView {
    admin_id: String,
    email: String,
    sessions: Vec<SessionView>,
    /// Agents logged in as this admin (log one out with
    /// `DELETE /api/agents/{id}/login`).
    agents: Vec<AgentLogin>,
}

/// The admin whose sessions `id` names (`me`: the caller): the caller
/// themself, or anyone for an owner; another admin's are refused and
/// audited.
async fn sessions_owner(
    state: &AppState,
    caller: &Admin,
    action: &str,
    id: &str,
) -> Result<(String, String), ApiError> {
    if id == "me" || id == caller.person.id {
        return Ok((caller.person.id.clone(), caller.person.email.clone()));
    }
    let allowed = if caller.may(Power::ManageAdmins) {
        Ok(())
    } else {
        Err(ObrError::RoleForbids {
            role: caller.grant.role.as_str(),
            power: Power::ManageAdmins.as_str(),
        })
    };
    audited(state, caller, action, id, allowed).await?;
    match state.directory.person(id).await? {
        Some(person) if person.is_admin => Ok((person.id, person.email)),
        _ => Err(ApiError::NotFound("no such admin".into())),
    }
}

/// `GET /api/admins/{id}/sessions` (`me` for yourself): an admin's signed-in
/// sessions (never their tokens) and logged-in agents.
#[utoipa::path(get, path = "/api/admins/{id}/sessions", tag = "admins", security(("admin" = [])),
    params(("id" = String, Path, description = "The admin's person id, or `me`")),
    responses(
        (status = 200, description = "Their sessions and agents", body = SessionsView),
        (status = 404, description = "No such admin", body = ErrorBody),
    ))]
pub async fn sessions(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = require_admin(&req, &state).await?;
    let (admin_id, email) =
        sessions_owner(&state, &caller, "list_sessions", &path.into_inner()).await?;
    let current = bearer(&req).map(auth::token_hash);
    let sessions = state
        .store
        .tokens_of(&admin_id)
        .await?
        .into_iter()
        .filter(|(_, p)| p.scope == TokenScope::Admin)
        .filter_map(|(hash, p)| {
            let s = p.session?;
            Some(SessionView {
                current: current.as_deref() == Some(hash.as_str()),
                id: s.id,
                created_at_ms: s.created_at_ms,
                expires_at_ms: s.expires_at_ms,
                address: s.address,
                user_agent: s.user_agent,
            })
        })
        .collect();
    let agents = state
        .store
        .agents_of(&admin_id)
        .await?
        .into_iter()
        .map(|agent_id| AgentLogin {
            connected_here: state.agents.is_connected(&agent_id),
            agent_id,
        })
        .collect();
    Ok(HttpResponse::Ok().json(SessionsView {
        admin_id,
        email,
        sessions,
        agents,
    }))
}

/// `DELETE /api/admins/{id}/sessions/{session_id}`: end one session (yours,
/// or anyone's for an owner); its token is refused from now on. Audited.
#[utoipa::path(delete, path = "/api/admins/{id}/sessions/{session_id}", tag = "admins",
    security(("admin" = [])),
    params(("id" = String, Path, description = "The admin's person id, or `me`"),
        ("session_id" = String, Path, description = "A session's id")),
    responses(
        (status = 200, description = "The sessions ended", body = Ended),
        (status = 404, description = "No such admin or session", body = ErrorBody),
    ))]
pub async fn end_session(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, session_id) = path.into_inner();
    end_sessions(&req, &state, &id, Some(&session_id)).await
}

/// `DELETE /api/admins/{id}/sessions`: sign an admin out everywhere. Audited.
#[utoipa::path(delete, path = "/api/admins/{id}/sessions", tag = "admins",
    security(("admin" = [])),
    params(("id" = String, Path, description = "The admin's person id, or `me`")),
    responses(
        (status = 200, description = "The sessions ended", body = Ended),
        (status = 404, description = "No such admin", body = ErrorBody),
    ))]
pub async fn end_all_sessions(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    end_sessions(&req, &state, &path.into_inner(), None).await
}

/// End `only` or every session of the admin `id` names.
async fn end_sessions(
    req: &HttpRequest,
    state: &AppState,
    id: &str,
    only: Option<&str>,
) -> Result<HttpResponse, ApiError> {
    let caller = require_admin(req, state).await?;
    let (admin_id, email) = sessions_owner(state, &caller, "end_sessions", id).await?;
    let mut ended = Vec::new();
    for (hash, principal) in state.store.tokens_of(&admin_id).await? {
        let Some(session) = principal.session else {
            continue;
        };
        if only.is_none_or(|wanted| wanted == session.id) && state.store.delete_token(&hash).await?
        {
            ended.push(session.id);
        }
    }
    if only.is_some() && ended.is_empty() {
        return Err(ApiError::NotFound(
            "no such session: it ended or never existed".into(),
        ));
    }
    state
        .directory
        .audit(
            &caller.person.email,
            "admin.sessions_ended",
            &email,
            serde_json::json!({ "admin_id": admin_id, "sessions": ended }),
        )
        .await?;
    Ok(HttpResponse::Ok().json(Ended { ended }))
}

/// Sessions that a `DELETE` ended.
#[derive(Serialize, ToSchema)]
pub struct Ended {
    /// Their ids.
    ended: Vec<String>,
}
