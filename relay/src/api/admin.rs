//! Admin sign-in and logout, the admins and their grants (list, change,
//! revoke), and the audit log.

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{ApiError, audited, bearer, client_address, require_power};
use crate::auth;
use crate::directory::grants::{Admin, Grant, GrantError, Power};
use crate::limits::{ARGON2_QUEUE_WAIT, TooMany};
use crate::obr::ObrError;
use crate::sessions::{Principal, TokenScope};
use crate::state::AppState;

/// Admin panel tokens are short-lived (DESIGN: "tokens scoped and short-lived").
pub const ADMIN_TOKEN_TTL: Duration = Duration::from_secs(3600);
const MAX_AUDIT_PAGE: i64 = 1000;

#[derive(Deserialize)]
pub struct LoginRequest {
    email: String,
    password: String,
}

#[derive(Serialize)]
pub struct LoginResponse {
    token: String,
    expires_in_s: u64,
    person_id: String,
}

/// `POST /api/admin/login`. Failures back off per account and per client
/// address (429 with `Retry-After`); argon2 runs a bounded number at once.
pub async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<LoginRequest>,
) -> Result<HttpResponse, ApiError> {
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
    let person = match (person, ok) {
        (Some(p), true) => p,
        _ => {
            tracing::info!(email = %body.email, %address, "admin login refused");
            limits.login_accounts.failed(&account, Instant::now());
            limits.login_addresses.failed(&address, Instant::now());
            return Err(ApiError::Unauthorized);
        }
    };
    limits.login_accounts.succeeded(&account);
    // The password is theirs; the power is their sealed grant's.
    if state.grants.admin(&person.id).await?.is_none() {
        tracing::warn!(email = %person.email, "admin login without a verified grant refused");
        return Err(ApiError::Forbidden(
            "this account holds no verified admin grant: an owner must grant it again \
             (obr-relay admin create)"
                .into(),
        ));
    }
    let token = auth::new_token()?;
    let principal = Principal {
        person_id: person.id.clone(),
        email: person.email.clone(),
        is_admin: true,
        scope: TokenScope::Admin,
    };
    state
        .store
        .put_token(&auth::token_hash(&token), &principal, ADMIN_TOKEN_TTL)
        .await?;
    state
        .directory
        .audit(
            &person.email,
            "admin.login",
            &person.email,
            serde_json::json!({}),
        )
        .await?;
    Ok(HttpResponse::Ok().json(LoginResponse {
        token,
        expires_in_s: ADMIN_TOKEN_TTL.as_secs(),
        person_id: person.id,
    }))
}

/// An argon2id hash of a random password, verified against when the email
/// is unknown so that both paths cost the same.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$2ebC7Dv9oS3BgmNFrSv1zk5Y3v7QJc5c5ZQeuDcZJ6A";

#[derive(Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    after: i64,
    limit: Option<i64>,
}

/// `GET /api/audit?after=SEQ&limit=N`: records and whether the chain holds.
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
    let records = state.directory.audit_records(query.after, limit).await?;
    let broken_at = state.directory.verify_audit_chain().await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "records": records,
        "chain_intact": broken_at.is_none(),
        "chain_broken_at": broken_at,
    })))
}

#[derive(Serialize)]
struct AdminView {
    id: String,
    email: String,
    display_name: String,
    grant: crate::directory::grants::Grant,
}

/// `GET /api/admins`: every admin whose grant verifies, with role and scope.
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
