//! [`Phones`]: the user apps connected to this pod, and their live feed
//! (`GET /api/me/live`, a WebSocket): what happens on a user's key reaches
//! their phone the moment it is recorded, and the durable inbox covers a
//! phone that was offline.
//!
//! The socket authenticates with its first message, `{"token": DEVICE,
//! "after": ID}` (a secret in a message, never in a URL a proxy logs);
//! then it gets `{"notifications": [...]}` with every notification after
//! `after`, and again whenever the person's inbox changes on any pod
//! ([`crate::sessions::AgentEvent::InboxChanged`]) or every
//! [`REREAD_INTERVAL`] (a lost signal delays, never loses). A device token
//! revoked meanwhile closes the feed at the next read. Close codes: 1008
//! for a missing, unknown or revoked token (the app forgets it), 1013 past
//! the feed limits, 1011 when the directory did not answer (the app
//! reconnects). A silent phone is closed after [`SILENCE_LIMIT`].
//!
//! Must not write anything: deciding approvals stays with the HTTP API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{CloseCode, CloseReason, Message};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::broadcast;

use crate::auth;
use crate::directory::Person;
use crate::directory::notifications::NOTIFICATION_PAGE;
use crate::state::AppState;

/// A phone that says nothing first is closed after this long.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// The inbox is read again this often even without a signal.
pub const REREAD_INTERVAL: Duration = Duration::from_secs(15);
/// The relay pings each phone this often, and closes a feed that has
/// answered nothing (no pong, no message) for [`SILENCE_LIMIT`].
pub const PING_INTERVAL: Duration = Duration::from_secs(30);
pub const SILENCE_LIMIT: Duration = Duration::from_secs(75);
/// Feeds one person may hold open on one relay (their phones and tabs),
/// and feeds one relay holds in all; more are refused with 1013.
pub const MAX_FEEDS_PER_PERSON: usize = 4;
pub const MAX_FEEDS: usize = 10_000;
/// The largest message a phone may send.
const MAX_FRAME: usize = 4 * 1024;
/// Signals buffered per connected phone.
const SIGNALS: usize = 256;

/// Which people's inbox changed, for the feeds on this pod; and how many
/// feeds each person holds here.
#[derive(Clone)]
pub struct Phones {
    changed: broadcast::Sender<Changed>,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// One open feed, counted until it is dropped.
struct Counted {
    open: Arc<Mutex<HashMap<String, usize>>>,
    person_id: String,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.person_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.person_id);
            }
        }
    }
}

/// Why a feed closes: the close code and what it says.
enum Refusal {
    /// Not a device token, or no longer one (1008: the app forgets it).
    Unknown(&'static str),
    /// Too many feeds (1013: try again later).
    Full(&'static str),
    /// The directory did not answer (1011: the app reconnects).
    Unavailable,
    /// The phone went away.
    Gone,
}

#[derive(Clone, Debug)]
enum Changed {
    Person(String),
    /// Signals may have been lost: every feed re-reads.
    Everyone,
}

impl Default for Phones {
    fn default() -> Self {
        Self {
            changed: broadcast::channel(SIGNALS).0,
            open: Arc::default(),
        }
    }
}

impl Phones {
    /// `person_id`'s inbox changed (on any pod).
    pub fn wake(&self, person_id: &str) {
        let _ = self.changed.send(Changed::Person(person_id.to_owned()));
    }

    /// Feeds open on this relay.
    pub fn count(&self) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.values().sum()
    }

    /// Every feed re-reads (after a lost subscription).
    pub fn wake_all(&self) {
        let _ = self.changed.send(Changed::Everyone);
    }

    /// Count one more feed of `person_id`, within the limits.
    fn open(&self, person_id: &str) -> Result<Counted, Refusal> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.values().sum::<usize>() >= MAX_FEEDS {
            return Err(Refusal::Full("this relay holds as many feeds as it may"));
        }
        let n = open.entry(person_id.to_owned()).or_insert(0);
        if *n >= MAX_FEEDS_PER_PERSON {
            return Err(Refusal::Full("too many feeds open for this person"));
        }
        *n += 1;
        Ok(Counted {
            open: self.open.clone(),
            person_id: person_id.to_owned(),
        })
    }
}

#[derive(Deserialize)]
struct Hello {
    token: String,
    #[serde(default)]
    after: i64,
}

/// `GET /api/me/live`: the user app's live feed (see the module).
#[utoipa::path(get, path = "/api/me/live", tag = "me", security(()),
    description = "A WebSocket. The first message is `{\"token\": DEVICE_TOKEN, \"after\": ID}`; \
        the relay answers with the notifications after `after`, then each new one as it happens. \
        Closes with 1008 for an unknown or revoked token, 1013 when too many phones are connected.",
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket handshake"),
    ))]
pub async fn live(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let stream = stream.max_frame_size(MAX_FRAME);
    actix_web::rt::spawn(feed(state, session, stream));
    Ok(response)
}

async fn feed(
    state: web::Data<AppState>,
    mut session: actix_ws::Session,
    mut stream: actix_ws::MessageStream,
) {
    let refusal = serve(&state, &mut session, &mut stream).await;
    let (code, why) = match refusal {
        Refusal::Unknown(why) => (CloseCode::Policy, why),
        Refusal::Full(why) => (CloseCode::Again, why),
        Refusal::Unavailable => (CloseCode::Error, "directory unavailable: reconnect"),
        Refusal::Gone => return,
    };
    let _ = session
        .close(Some(CloseReason {
            code,
            description: Some(why.into()),
        }))
        .await;
}

/// The feed of one phone, until it must close (why).
async fn serve(
    state: &AppState,
    session: &mut actix_ws::Session,
    stream: &mut actix_ws::MessageStream,
) -> Refusal {
    let (person, token_hash, mut after) = match hello(state, stream).await {
        Ok(hello) => hello,
        Err(refusal) => return refusal,
    };
    let _counted = match state.phones.open(&person.id) {
        Ok(counted) => counted,
        Err(refusal) => return refusal,
    };
    // Subscribed before the first read: nothing written in between is missed.
    let mut changed = state.phones.changed.subscribe();
    let mut reread = tokio::time::interval(REREAD_INTERVAL);
    let mut ping = tokio::time::interval(PING_INTERVAL);
    let mut heard = tokio::time::Instant::now();
    loop {
        match send_new(state, session, &person, &token_hash, after).await {
            Ok(last) => after = last,
            Err(refusal) => return refusal,
        }
        // Wait for a reason to read again.
        loop {
            tokio::select! {
                signal = changed.recv() => match signal {
                    Ok(Changed::Person(id)) if id != person.id => continue,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return Refusal::Gone,
                },
                _ = reread.tick() => break,
                _ = ping.tick() => {
                    if heard.elapsed() > SILENCE_LIMIT || session.ping(b"").await.is_err() {
                        return Refusal::Gone;
                    }
                }
                message = stream.next() => match message {
                    Some(Ok(Message::Ping(bytes))) => {
                        heard = tokio::time::Instant::now();
                        if session.pong(&bytes).await.is_err() {
                            return Refusal::Gone;
                        }
                    }
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return Refusal::Gone,
                    Some(Ok(_)) => heard = tokio::time::Instant::now(),
                },
            }
        }
    }
}

/// The first message: a device token that names a person, and where their
/// app left off.
async fn hello(
    state: &AppState,
    stream: &mut actix_ws::MessageStream,
) -> Result<(Person, String, i64), Refusal> {
    const FIRST: &str = "send {\"token\": DEVICE_TOKEN} first";
    let first = match tokio::time::timeout(HELLO_TIMEOUT, stream.next()).await {
        Ok(Some(Ok(message))) => message,
        Ok(Some(Err(_)) | None) => return Err(Refusal::Gone),
        Err(_) => return Err(Refusal::Unknown(FIRST)),
    };
    let Message::Text(text) = first else {
        return Err(Refusal::Unknown(FIRST));
    };
    let hello: Hello = serde_json::from_str(&text).map_err(|_| Refusal::Unknown(FIRST))?;
    let token_hash = auth::token_hash(&hello.token);
    match state.directory.device_token_owner(&token_hash).await {
        Ok(Some(person)) => Ok((person, token_hash, hello.after.max(0))),
        Ok(None) => Err(Refusal::Unknown("not a device token")),
        Err(_) => Err(Refusal::Unavailable),
    }
}

/// Send `person`'s notifications after `after`, a page at a time; the
/// last id sent (`after` if none). An error says why the feed must close.
async fn send_new(
    state: &AppState,
    session: &mut actix_ws::Session,
    person: &Person,
    token_hash: &str,
    mut after: i64,
) -> Result<i64, Refusal> {
    // The token may have been revoked since the hello.
    match state.directory.device_token_owner(token_hash).await {
        Ok(Some(owner)) if owner.id == person.id => {}
        Ok(_) => return Err(Refusal::Unknown("device token revoked")),
        Err(_) => return Err(Refusal::Unavailable),
    }
    loop {
        let page = state
            .directory
            .notifications(&person.id, after)
            .await
            .map_err(|_| Refusal::Unavailable)?;
        let Some(last) = page.last().map(|n| n.id) else {
            return Ok(after);
        };
        let full = i64::try_from(page.len()).is_ok_and(|n| n >= NOTIFICATION_PAGE);
        let frame = serde_json::json!({ "notifications": page }).to_string();
        session.text(frame).await.map_err(|_| Refusal::Gone)?;
        after = last;
        if !full {
            return Ok(after);
        }
    }
}
