//! Users & security keys: list, invite, accept an invitation (which makes
//! the key `active`), groups, suspend and resume, reset, and a user's
//! passkeys as their signer holds them (list, delete). Every change on a
//! user's key checks the admin's power on it (`target`) first.

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiError, ErrorBody, audited, require_admin, require_power};
use crate::auth;
use crate::directory::grants::{Admin, Power, valid_groups};
use crate::directory::{KeyStatus, Person};
use crate::mail::Mail;
use crate::obr::{base64_url, may_act_on};
use crate::state::AppState;

pub const INVITATION_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The user app's token: long-lived, revocable by deleting its row.
pub const DEVICE_TOKEN_TTL: Duration = Duration::from_secs(180 * 24 * 3600);
const MAX_EMAIL_LEN: usize = 254;
const MAX_NAME_LEN: usize = 128;

/// `GET /api/users`.
#[utoipa::path(get, path = "/api/users", tag = "users", security(("admin" = [])),
    responses((status = 200, description = "Every person in the directory", body = Vec<Person>)))]
pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    require_power(&req, &state, Power::Read, "list_users").await?;
    Ok(HttpResponse::Ok().json(state.directory.people().await?))
}

#[derive(Deserialize, ToSchema)]
pub struct InviteRequest {
    /// One bare address, where the invitation goes.
    #[schema(max_length = 254)]
    email: String,
    #[schema(min_length = 1, max_length = 128)]
    display_name: String,
}

#[derive(Serialize, ToSchema)]
pub struct Invited {
    user: Person,
    /// Where the invitation went. Its secret reaches the user only.
    invitation_sent_to: String,
}

/// `POST /api/users`: add a user with an `invited` key; the invitation is
/// mailed to them (the answer never carries its secret).
#[utoipa::path(post, path = "/api/users", tag = "users", security(("admin" = [])),
    request_body = InviteRequest,
    responses(
        (status = 201, description = "Invited; the invitation is mailed", body = Invited),
        (status = 409, description = "A user with this email exists", body = ErrorBody),
        (status = 503, description = "Invited, but the mail could not be sent", body = ErrorBody),
    ))]
pub async fn invite(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<InviteRequest>,
) -> Result<HttpResponse, ApiError> {
    let admin = require_power(&req, &state, Power::ManageUsers, "invite").await?;
    let user = match invite_and_mail(&state, &admin, &body.email, &body.display_name, true).await {
        Ok(user) => user,
        Err(InviteError::Api(e)) => return Err(e),
        Err(InviteError::Unmailed(user, why)) => {
            return Err(ApiError::Unavailable(format!(
                "{} is invited, but {why}: send it again with POST /api/users/{}/invitation",
                user.email, user.id
            )));
        }
    };
    Ok(HttpResponse::Created().json(Invited {
        invitation_sent_to: user.email.clone(),
        user,
    }))
}

/// Check `email` and `display_name`, make the invited user and mail them
/// the invitation (never returned): what inviting one user is, from the
/// form or from a CSV row.
pub(super) async fn invite_and_mail(
    state: &AppState,
    admin: &Admin,
    email: &str,
    display_name: &str,
    mail: bool,
) -> Result<Person, InviteError> {
    let (email, display_name) = (email.trim(), display_name.trim());
    // A bare address a mail can go to (no display name, no second
    // address): what is stored is where the invitation goes.
    if email.is_empty() || email.len() > MAX_EMAIL_LEN || email.parse::<lettre::Address>().is_err()
    {
        return Err(ApiError::BadRequest("email must look like name@domain".into()).into());
    }
    if display_name.is_empty() || display_name.len() > MAX_NAME_LEN {
        return Err(ApiError::BadRequest(format!(
            "display_name must be 1-{MAX_NAME_LEN} characters"
        ))
        .into());
    }
    let (user, invitation_token) = invite_user(state, &admin.person.email, email, display_name)
        .await
        .map_err(|e| match e {
            crate::directory::DirectoryError::Db(sqlx::Error::Database(db))
                if db.is_unique_violation() =>
            {
                ApiError::Conflict(format!("a user with email {email} already exists"))
            }
            other => other.into(),
        })?;
    if !mail {
        return Err(InviteError::Unmailed(
            user,
            "not mailed: an earlier mail of this import failed".into(),
        ));
    }
    match mail_invitation(state, &admin.person.email, &user, &invitation_token).await {
        Ok(_) => Ok(user),
        Err(e) => {
            let why = format!("the invitation mail could not be sent ({e})");
            Err(InviteError::Unmailed(user, why))
        }
    }
}

/// Why inviting one user did not end with a mail on its way.
pub(super) enum InviteError {
    /// The user is invited; their mail did not go (why).
    Unmailed(Person, String),
    /// Nothing happened (bad input, an existing user, the directory).
    Api(ApiError),
}

impl From<ApiError> for InviteError {
    fn from(e: ApiError) -> Self {
        InviteError::Api(e)
    }
}

/// Mail `user` the invitation `token` (the link to the user app).
async fn mail_invitation(
    state: &AppState,
    inviter: &str,
    user: &Person,
    invitation_token: &str,
) -> Result<String, crate::mail::MailError> {
    let mail = Mail {
        to: user.email.clone(),
        subject: "Your security key: accept the invitation".to_owned(),
        body: format!(
            "{} added you to obr: your security key lives in the cloud, and the obr app \
             on your phone tells you whenever anyone uses it.\n\n\
             Open this link on your phone to accept:\n\n  {}/app/#invite={invitation_token}\n\n\
             (or type the code {invitation_token} in the obr app).\n\
             The invitation expires in {} days and works once.",
            inviter,
            state.config.public_url,
            INVITATION_TTL.as_secs() / 86_400
        ),
    };
    state.mail.send(&mail).await
}

/// `POST /api/users/{id}/invitation` (owners): a new invitation for a user
/// whose key is still `invited` (the mail was lost, or it expired), mailed
/// to them; earlier links stop working. Audited.
#[utoipa::path(post, path = "/api/users/{id}/invitation", tag = "users", security(("admin" = [])),
    params(("id" = String, Path, description = "The user's id")),
    responses(
        (status = 200, description = "A new invitation is mailed", body = Invited),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "The user's key is not invited", body = ErrorBody),
        (status = 503, description = "The mail could not be sent", body = ErrorBody),
    ))]
pub async fn reinvite(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let admin = require_power(&req, &state, Power::ManageUsers, "reinvite").await?;
    let user = person(&state, &path.into_inner()).await?;
    if user.key_status != KeyStatus::Invited {
        return Err(ApiError::Conflict(format!(
            "{}'s key is {}: there is no invitation to send",
            user.email,
            user.key_status.as_str()
        )));
    }
    let token = auth::new_token()?;
    state
        .directory
        .create_invitation(&user.id, &auth::token_hash(&token), INVITATION_TTL)
        .await?;
    state
        .directory
        .audit(
            &admin.person.email,
            "user.reinvited",
            &user.email,
            serde_json::json!({ "user_id": user.id }),
        )
        .await?;
    mail_invitation(&state, &admin.person.email, &user, &token)
        .await
        .map_err(|e| ApiError::Unavailable(format!("cannot send the invitation mail: {e}")))?;
    Ok(HttpResponse::Ok().json(Invited {
        invitation_sent_to: user.email.clone(),
        user,
    }))
}

/// Create an invited user and their invitation; returns the invitation token.
pub async fn invite_user(
    state: &AppState,
    actor: &str,
    email: &str,
    display_name: &str,
) -> Result<(Person, String), crate::directory::DirectoryError> {
    let user = state
        .directory
        .create_person(email, display_name, false, None, KeyStatus::Invited)
        .await?;
    let token =
        auth::new_token().map_err(|e| crate::directory::DirectoryError::Corrupt(e.to_string()))?;
    state
        .directory
        .create_invitation(&user.id, &auth::token_hash(&token), INVITATION_TTL)
        .await?;
    state
        .directory
        .audit(
            actor,
            "user.invited",
            email,
            serde_json::json!({ "user_id": user.id }),
        )
        .await?;
    Ok((user, token))
}

#[derive(Deserialize, ToSchema)]
pub struct AcceptRequest {
    token: String,
}

#[derive(Serialize, ToSchema)]
pub struct Accepted {
    user: Person,
    /// The user app keeps this to read notifications.
    device_token: String,
}

/// `POST /api/invitations/accept`: the user accepts; their key is active.
#[utoipa::path(post, path = "/api/invitations/accept", tag = "me", security(()),
    request_body = AcceptRequest,
    responses(
        (status = 200, description = "Accepted: the user app's device token", body = Accepted),
        (status = 404, description = "Unknown, expired or used invitation", body = ErrorBody),
    ))]
pub async fn accept_invitation(
    state: web::Data<AppState>,
    body: web::Json<AcceptRequest>,
) -> Result<HttpResponse, ApiError> {
    let (user, device_token) = accept(&state, &body.token)
        .await?
        .ok_or_else(|| ApiError::NotFound("unknown, expired or already used invitation".into()))?;
    Ok(HttpResponse::Ok().json(Accepted { user, device_token }))
}

/// Accept an invitation; `None` if it is not valid.
pub async fn accept(
    state: &AppState,
    invitation: &str,
) -> Result<Option<(Person, String)>, ApiError> {
    let device_token = auth::new_token()?;
    let Some(user) = state
        .directory
        .accept_invitation(
            &auth::token_hash(invitation),
            &auth::token_hash(&device_token),
            DEVICE_TOKEN_TTL,
        )
        .await?
    else {
        return Ok(None);
    };
    debug_assert_eq!(user.key_status, KeyStatus::Active);
    state
        .directory
        .audit(
            &user.email,
            "user.key_activated",
            &user.email,
            serde_json::json!({ "user_id": user.id }),
        )
        .await?;
    Ok(Some((user, device_token)))
}

#[derive(Serialize, ToSchema)]
pub struct Passkey {
    credential_id: String,
    rp_id: String,
    user_name: String,
    user_display_name: String,
    discoverable: bool,
    created_at_ms: i64,
    created_by_admin: String,
    /// The email of the admin who created it ("" when the user did).
    created_by: String,
    obr_session_id: String,
    sign_count: u32,
    last_used_at_ms: i64,
    algorithm: String,
}

/// `GET /api/users/{id}/passkeys`: what the user's key holds.
#[utoipa::path(get, path = "/api/users/{id}/passkeys", tag = "users", security(("admin" = [])),
    params(("id" = String, Path, description = "The user's id")),
    responses(
        (status = 200, description = "The passkeys on the user's key", body = Vec<Passkey>),
        (status = 404, description = "No such user", body = ErrorBody),
    ))]
pub async fn passkeys(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require_power(&req, &state, Power::Read, "list_passkeys").await?;
    let user_id = path.into_inner();
    if state.directory.person(&user_id).await?.is_none() {
        return Err(ApiError::NotFound("no such user".into()));
    }
    Ok(HttpResponse::Ok().json(passkeys_of(&state, &user_id).await?))
}

/// `GET /api/me/passkeys` (device token): the user's own passkeys, as
/// their key holds them.
#[utoipa::path(get, path = "/api/me/passkeys", tag = "me", security(("device" = [])),
    responses((status = 200, description = "The passkeys on your key", body = Vec<Passkey>)))]
pub async fn my_passkeys(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let me = super::require_device(&req, &state).await?;
    Ok(HttpResponse::Ok().json(passkeys_of(&state, &me.id).await?))
}

async fn passkeys_of(state: &AppState, user_id: &str) -> Result<Vec<Passkey>, ApiError> {
    let credentials = state.router.list_credentials(user_id).await?;
    let mut admins = std::collections::HashMap::new();
    for id in credentials.iter().map(|c| &c.created_by_admin) {
        if !id.is_empty() && !admins.contains_key(id) {
            let email = state.directory.person(id).await?.map(|p| p.email);
            admins.insert(id.clone(), email.unwrap_or_else(|| id.clone()));
        }
    }
    Ok(credentials
        .into_iter()
        .map(|c| Passkey {
            created_by: admins.get(&c.created_by_admin).cloned().unwrap_or_default(),
            credential_id: base64_url(&c.credential_id),
            rp_id: c.rp_id,
            user_name: c.user_name,
            user_display_name: c.user_display_name,
            discoverable: c.discoverable,
            created_at_ms: c.created_at_ms,
            created_by_admin: c.created_by_admin,
            obr_session_id: c.obr_session_id,
            sign_count: c.sign_count,
            last_used_at_ms: c.last_used_at_ms,
            algorithm: c.algorithm,
        })
        .collect())
}

/// `DELETE /api/users/{id}/passkeys/{credential_id}` (base64url id): remove
/// one credential from the user's key. Audited; the user is told.
#[utoipa::path(delete, path = "/api/users/{id}/passkeys/{credential_id}", tag = "users",
    security(("admin" = [])),
    params(("id" = String, Path, description = "The user's id"),
        ("credential_id" = String, Path, description = "The credential id, base64url")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "The credential id is not base64url", body = ErrorBody),
        (status = 404, description = "No such user or passkey", body = ErrorBody),
    ))]
pub async fn delete_passkey(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let admin = require_admin(&req, &state).await?;
    let (user_id, credential) = path.into_inner();
    let user = target(&state, &admin, Power::Provision, "delete_passkey", &user_id).await?;
    let credential_id = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(credential.trim_end_matches('='))
            .map_err(|_| ApiError::BadRequest("credential id must be base64url".into()))?
    };
    if !state
        .router
        .delete_credential(&admin.person.id, &user_id, credential_id)
        .await?
    {
        return Err(ApiError::NotFound(
            "the user's key has no such passkey".into(),
        ));
    }
    let detail = serde_json::json!({ "user_id": user.id, "credential_id": credential });
    state
        .directory
        .audit(
            &admin.person.email,
            "passkey.deleted",
            &user.email,
            detail.clone(),
        )
        .await?;
    state
        .directory
        .notify(
            &user.id,
            "passkey.deleted",
            &format!(
                "{} deleted a passkey from your security key",
                admin.person.email
            ),
            detail,
        )
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Serialize, ToSchema)]
pub struct ResetDone {
    deleted_credentials: u64,
}

/// `POST /api/users/{id}/reset-key`: delete every passkey on the user's key
/// and replace its data key. Admins only; audited; the user is told.
#[utoipa::path(post, path = "/api/users/{id}/reset-key", tag = "users", security(("admin" = [])),
    params(("id" = String, Path, description = "The user's id")),
    responses(
        (status = 200, description = "Reset", body = ResetDone),
        (status = 404, description = "No such user", body = ErrorBody),
    ))]
pub async fn reset_key(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let admin = require_admin(&req, &state).await?;
    let user = target(
        &state,
        &admin,
        Power::ManageUsers,
        "reset_key",
        &path.into_inner(),
    )
    .await?;
    let deleted_credentials = state.router.reset_key(&admin.person.id, &user.id).await?;
    let detail =
        serde_json::json!({ "user_id": user.id, "deleted_credentials": deleted_credentials });
    state
        .directory
        .audit(
            &admin.person.email,
            "key.reset",
            &user.email,
            detail.clone(),
        )
        .await?;
    state
        .directory
        .notify(
            &user.id,
            "key.reset",
            &format!(
                "{} reset your security key: {deleted_credentials} passkeys were removed",
                admin.person.email
            ),
            detail,
        )
        .await?;
    Ok(HttpResponse::Ok().json(ResetDone {
        deleted_credentials,
    }))
}

#[derive(Deserialize, ToSchema)]
pub struct GroupsRequest {
    groups: Vec<String>,
}

/// `PUT /api/users/{id}/groups`: the user's groups, which admins' scopes
/// name. Audited.
#[utoipa::path(put, path = "/api/users/{id}/groups", tag = "users", security(("admin" = [])),
    params(("id" = String, Path, description = "The user's id")),
    request_body = GroupsRequest,
    responses(
        (status = 200, description = "The user with their new groups", body = Person),
        (status = 404, description = "No such user", body = ErrorBody),
    ))]
pub async fn set_groups(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<GroupsRequest>,
) -> Result<HttpResponse, ApiError> {
    let admin = require_power(&req, &state, Power::ManageUsers, "set_groups").await?;
    let user = person(&state, &path.into_inner()).await?;
    let groups = valid_groups(body.groups.iter().map(String::as_str))
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    set_groups_audited(&state, &admin.person.email, &user, &groups).await?;
    Ok(HttpResponse::Ok().json(person(&state, &user.id).await?))
}

/// Give `user` these groups, on record as `actor`'s doing.
pub(super) async fn set_groups_audited(
    state: &AppState,
    actor: &str,
    user: &Person,
    groups: &std::collections::BTreeSet<String>,
) -> Result<(), ApiError> {
    state.directory.set_groups(&user.id, groups).await?;
    state
        .directory
        .audit(
            actor,
            "user.groups_set",
            &user.email,
            serde_json::json!({ "user_id": user.id, "groups": groups }),
        )
        .await?;
    Ok(())
}

/// `POST /api/users/{id}/suspend` and `/resume` (owners): a suspended key
/// refuses everything but getInfo — OBR, the user's own sign-ins — until
/// resumed; a session on it ends at its next request. Audited; the user
/// is told.
#[utoipa::path(post, path = "/api/users/{id}/suspend", tag = "users", security(("admin" = [])),
    params(("id" = String, Path, description = "The user's id")),
    responses(
        (status = 200, description = "Suspended", body = Person),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "The key is not active", body = ErrorBody),
    ))]
pub async fn suspend(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    change_key_status(req, state, path, KeyStatus::Active, KeyStatus::Suspended).await
}

/// See [`suspend`].
#[utoipa::path(post, path = "/api/users/{id}/resume", tag = "users", security(("admin" = [])),
    params(("id" = String, Path, description = "The user's id")),
    responses(
        (status = 200, description = "Active again", body = Person),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "The key is not suspended", body = ErrorBody),
    ))]
pub async fn resume(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    change_key_status(req, state, path, KeyStatus::Suspended, KeyStatus::Active).await
}

async fn change_key_status(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    from: KeyStatus,
    to: KeyStatus,
) -> Result<HttpResponse, ApiError> {
    let (attempt, action, verb) = match to {
        KeyStatus::Suspended => ("suspend", "user.suspended", "suspended"),
        KeyStatus::Active | KeyStatus::Invited => ("resume", "user.resumed", "resumed"),
    };
    let admin = require_admin(&req, &state).await?;
    let user = target(
        &state,
        &admin,
        Power::ManageUsers,
        attempt,
        &path.into_inner(),
    )
    .await?;
    if !state
        .directory
        .change_key_status(&user.id, from, to)
        .await?
    {
        return Err(ApiError::Conflict(format!(
            "{}'s key is {}, not {}",
            user.email,
            user.key_status.as_str(),
            from.as_str()
        )));
    }
    let detail = serde_json::json!({ "user_id": user.id, "key_status": to.as_str() });
    state
        .directory
        .audit(&admin.person.email, action, &user.email, detail.clone())
        .await?;
    state
        .directory
        .notify(
            &user.id,
            action,
            &format!("{} {verb} your security key", admin.person.email),
            detail,
        )
        .await?;
    Ok(HttpResponse::Ok().json(person(&state, &user.id).await?))
}

/// The person `id` names.
async fn person(state: &AppState, id: &str) -> Result<Person, ApiError> {
    state
        .directory
        .person(id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such user".into()))
}

/// The user `id` names, once `admin` may use `power` on their key (a
/// refusal audited as `action`).
async fn target(
    state: &AppState,
    admin: &Admin,
    power: Power,
    action: &str,
    id: &str,
) -> Result<Person, ApiError> {
    let user = person(state, id).await?;
    let allowed = may_act_on(admin, power, &user);
    audited(state, admin, action, &user.email, allowed).await?;
    Ok(user)
}
