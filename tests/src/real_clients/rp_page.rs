//! A small relying party for the browser: one page on `http://localhost:<port>` (a secure
//! context, RP ID `localhost`) whose script calls `navigator.credentials.create()` then
//! `navigator.credentials.get()` on load, and a JSON API that webauthn-rs verifies
//! server-side. When the script is done, successful or not, it posts what it saw to
//! `/api/report`, which the driver reads with [`RpPage::next_report`]: any browser can run the
//! page without a browser driver.
//!
//! The RP is what a real site (Entra ID, Okta…) would be; it does not know obr. Only for the
//! test's benefit does it also look, after a verified registration, into the registered user's
//! obr inbox (through the relay's user-app API, with that user's device token) and show the
//! notification on the page, so the screenshot shows both halves of the on-behalf registration.
//!
//! `?uv=discouraged` registers a UP-only security key (webauthn-rs's security-key flow with
//! user verification discouraged); `?uv=required` registers a passkey, for which webauthn-rs
//! requires user verification at registration and at sign-in.

use std::net::TcpListener;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::bail;

use actix_web::http::StatusCode;
use actix_web::{App, HttpResponse, HttpServer, ResponseError, web};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde::Deserialize;
use serde_json::{Value, json};
use webauthn_rs::prelude::*;

use crate::api::Api;

/// The page: its script drives both ceremonies and leaves its result in `window.obrRun`.
const PAGE: &str = include_str!("rp_page.html");

/// The relying party's display name, shown in the page header.
pub const RP_NAME: &str = "Example RP";

/// A running RP page; the server stops when the driver exits.
pub struct RpPage {
    pub url: String,
    /// What the page's script posted to `/api/report`, one per page load.
    reports: Receiver<Value>,
    _server: JoinHandle<()>,
}

/// The obr user the RP's account belongs to, and how to read their inbox.
#[derive(Clone)]
pub struct InboxAccess {
    pub relay_url: String,
    pub user_email: String,
    pub device_token: String,
}

impl RpPage {
    /// Serves the page on a free loopback port.
    pub fn start(inbox: InboxAccess) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let (report_sender, reports) = channel();
        let origin = Url::parse(&format!("http://localhost:{port}"))?;
        let state = web::Data::new(RpState {
            security_keys: WebauthnBuilder::new("localhost", &origin)?
                .rp_name(RP_NAME)
                .danger_set_user_presence_only_security_keys(true)
                .build()?,
            passkeys: WebauthnBuilder::new("localhost", &origin)?
                .rp_name(RP_NAME)
                .build()?,
            inbox,
            ceremony: Mutex::new(Ceremony::default()),
            reports: report_sender,
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(web::JsonConfig::default().limit(64 * 1024))
                .route("/", web::get().to(page))
                .route("/api/register/begin", web::post().to(register_begin))
                .route("/api/register/finish", web::post().to(register_finish))
                .route("/api/login/begin", web::post().to(login_begin))
                .route("/api/login/finish", web::post().to(login_finish))
                .route("/api/report", web::post().to(page_report))
        })
        .workers(1)
        .listen(listener)?
        .run();
        let handle = std::thread::spawn(move || {
            if let Err(error) = actix_web::rt::System::new().block_on(server) {
                eprintln!("RP page server failed: {error}");
            }
        });
        Ok(Self {
            url: origin.to_string(),
            reports,
            _server: handle,
        })
    }

    /// What the next page load's script reported (its `window.obrRun` value), waiting at most
    /// `timeout` — a browser stuck on a prompt nobody answers never reports.
    pub fn next_report(&self, timeout: Duration) -> anyhow::Result<Value> {
        match self.reports.recv_timeout(timeout) {
            Ok(report) => Ok(report),
            Err(RecvTimeoutError::Timeout) => bail!(
                "the RP page reported nothing within {timeout:?} (is the browser waiting on a \
                 prompt? see its log)"
            ),
            Err(RecvTimeoutError::Disconnected) => bail!("the RP page's server has stopped"),
        }
    }
}

struct RpState {
    /// UP-only security keys (`userVerification: "discouraged"`).
    security_keys: Webauthn,
    /// Passkeys (`userVerification: "required"`).
    passkeys: Webauthn,
    inbox: InboxAccess,
    ceremony: Mutex<Ceremony>,
    reports: Sender<Value>,
}

/// The one account's state between the page's calls.
#[derive(Default)]
struct Ceremony {
    registering: Option<Registering>,
    registered: Option<Registered>,
    signing_in: Option<SigningIn>,
}

enum Registering {
    SecurityKey(SecurityKeyRegistration),
    Passkey(PasskeyRegistration),
}

enum Registered {
    SecurityKey(SecurityKey),
    Passkey(Passkey),
}

enum SigningIn {
    SecurityKey(SecurityKeyAuthentication),
    Passkey(PasskeyAuthentication),
}

/// An RP refusal: HTTP 400 with `{"error": …}`, shown on the page.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

impl ResponseError for Refused {
    fn status_code(&self) -> StatusCode {
        StatusCode::BAD_REQUEST
    }
    fn error_response(&self) -> HttpResponse {
        HttpResponse::BadRequest().json(json!({ "error": self.0 }))
    }
}

impl From<WebauthnError> for Refused {
    fn from(error: WebauthnError) -> Self {
        Self(format!("webauthn-rs refused: {error}"))
    }
}

type Answer = Result<HttpResponse, Refused>;

async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(PAGE)
}

#[derive(Deserialize)]
struct Begin {
    uv: String,
}

async fn register_begin(state: web::Data<RpState>, body: web::Json<Begin>) -> Answer {
    let user_id = Uuid::new_v4();
    let user = state.inbox.user_email.as_str();
    let (options, registering) = match body.uv.as_str() {
        "discouraged" => {
            let (options, reg) = state
                .security_keys
                .start_securitykey_registration(user_id, user, user, None, None, None)?;
            (options, Registering::SecurityKey(reg))
        }
        "required" => {
            let (options, reg) = state
                .passkeys
                .start_passkey_registration(user_id, user, user, None)?;
            (options, Registering::Passkey(reg))
        }
        other => return Err(Refused(format!("unknown uv requirement {other:?}"))),
    };
    lock(&state).registering = Some(registering);
    Ok(HttpResponse::Ok().json(options))
}

async fn register_finish(
    state: web::Data<RpState>,
    credential: web::Json<RegisterPublicKeyCredential>,
) -> Answer {
    let registering = lock(&state)
        .registering
        .take()
        .ok_or_else(|| Refused("no registration in progress".into()))?;
    let (registered, cred_id) = match registering {
        Registering::SecurityKey(reg) => {
            let key = state
                .security_keys
                .finish_securitykey_registration(&credential, &reg)?;
            let id = key.cred_id().clone();
            (Registered::SecurityKey(key), id)
        }
        Registering::Passkey(reg) => {
            let key = state
                .passkeys
                .finish_passkey_registration(&credential, &reg)?;
            let id = key.cred_id().clone();
            (Registered::Passkey(key), id)
        }
    };
    lock(&state).registered = Some(registered);
    let notification = inbox_notification(&state.inbox).await?;
    Ok(HttpResponse::Ok().json(json!({
        "verified": true,
        "credential_id": B64URL.encode(cred_id.as_slice()),
        "obr_notification": notification,
    })))
}

async fn login_begin(state: web::Data<RpState>) -> Answer {
    let mut ceremony = lock(&state);
    let (options, signing_in) = match ceremony.registered.as_ref() {
        Some(Registered::SecurityKey(key)) => {
            let (options, auth) = state
                .security_keys
                .start_securitykey_authentication(std::slice::from_ref(key))?;
            (options, SigningIn::SecurityKey(auth))
        }
        Some(Registered::Passkey(key)) => {
            let (options, auth) = state
                .passkeys
                .start_passkey_authentication(std::slice::from_ref(key))?;
            (options, SigningIn::Passkey(auth))
        }
        None => return Err(Refused("register first".into())),
    };
    ceremony.signing_in = Some(signing_in);
    Ok(HttpResponse::Ok().json(options))
}

async fn login_finish(
    state: web::Data<RpState>,
    credential: web::Json<PublicKeyCredential>,
) -> Answer {
    let signing_in = lock(&state)
        .signing_in
        .take()
        .ok_or_else(|| Refused("no sign-in in progress".into()))?;
    let result = match signing_in {
        SigningIn::SecurityKey(auth) => state
            .security_keys
            .finish_securitykey_authentication(&credential, &auth)?,
        SigningIn::Passkey(auth) => state
            .passkeys
            .finish_passkey_authentication(&credential, &auth)?,
    };
    Ok(HttpResponse::Ok().json(json!({
        "verified": true,
        "credential_id": B64URL.encode(result.cred_id().as_slice()),
        "user_verified": result.user_verified(),
        "counter": result.counter(),
    })))
}

async fn page_report(state: web::Data<RpState>, report: web::Json<Value>) -> HttpResponse {
    // The driver may have stopped waiting; the report is then nobody's.
    let _ = state.reports.send(report.into_inner());
    HttpResponse::NoContent().finish()
}

/// The newest `obr.registration` notification for RP ID `localhost` in the user's inbox.
async fn inbox_notification(inbox: &InboxAccess) -> Result<Value, Refused> {
    let inbox = inbox.clone();
    let notifications = web::block(move || {
        Api::new(&inbox.relay_url)
            .notifications(&inbox.device_token)
            .map_err(|error| error.to_string())
    })
    .await
    .map_err(|error| Refused(error.to_string()))?
    .map_err(Refused)?;
    notifications
        .into_iter()
        .rev()
        .find(|n| n["kind"] == "obr.registration" && n["detail"]["rp_id"] == "localhost")
        .ok_or_else(|| Refused("the user has no obr notification of this registration".into()))
}

fn lock(state: &RpState) -> std::sync::MutexGuard<'_, Ceremony> {
    state.ceremony.lock().unwrap_or_else(|e| e.into_inner())
}
