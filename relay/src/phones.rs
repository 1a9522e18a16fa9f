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
//! revoked meanwhile closes the feed at the next read.
//!
//! Must not write anything: deciding approvals stays with the HTTP API.

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{CloseCode, CloseReason, Message};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::broadcast;

use crate::auth;
use crate::directory::Person;
use crate::state::AppState;

/// A phone that says nothing first is closed after this long.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// The inbox is read again this often even without a signal.
pub const REREAD_INTERVAL: Duration = Duration::from_secs(15);
/// The largest message a phone may send.
const MAX_FRAME: usize = 4 * 1024;
/// Signals buffered per connected phone.
const SIGNALS: usize = 256;

/// Which people's inbox changed, for the feeds on this pod.
#[derive(Clone)]
pub struct Phones {
    changed: broadcast::Sender<Changed>,
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
        }
    }
}

impl Phones {
    /// `person_id`'s inbox changed (on any pod).
    pub fn wake(&self, person_id: &str) {
        let _ = self.changed.send(Changed::Person(person_id.to_owned()));
    }

    /// Every feed re-reads (after a lost subscription).
    pub fn wake_all(&self) {
        let _ = self.changed.send(Changed::Everyone);
    }
}

#[derive(Deserialize)]
struct Hello {
    token: String,
    #[serde(default)]
    after: i64,
}

/// `GET /api/me/live`: the user app's live feed (see the module).
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
    let Some((person, token_hash, mut after)) = hello(&state, &mut stream).await else {
        let _ = session
            .close(Some(CloseReason {
                code: CloseCode::Policy,
                description: Some("send {\"token\": DEVICE_TOKEN} first".into()),
            }))
            .await;
        return;
    };
    // Subscribed before the first read: nothing written in between is missed.
    let mut changed = state.phones.changed.subscribe();
    let mut reread = tokio::time::interval(REREAD_INTERVAL);
    loop {
        match send_new(&state, &mut session, &person, &token_hash, after).await {
            Ok(Some(last)) => after = last,
            Ok(None) => {}
            Err(why) => {
                tracing::debug!(person = %person.id, why, "user app feed closed");
                let _ = session
                    .close(Some(CloseReason {
                        code: CloseCode::Policy,
                        description: Some(why.into()),
                    }))
                    .await;
                return;
            }
        }
        // Wait for a reason to read again.
        loop {
            tokio::select! {
                signal = changed.recv() => match signal {
                    Ok(Changed::Person(id)) if id != person.id => continue,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = reread.tick() => break,
                message = stream.next() => match message {
                    Some(Ok(Message::Ping(bytes))) => {
                        if session.pong(&bytes).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                    Some(Ok(_)) => {}
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
) -> Option<(Person, String, i64)> {
    let first = tokio::time::timeout(HELLO_TIMEOUT, stream.next())
        .await
        .ok()??
        .ok()?;
    let Message::Text(text) = first else {
        return None;
    };
    let hello: Hello = serde_json::from_str(&text).ok()?;
    let token_hash = auth::token_hash(&hello.token);
    let person = state
        .directory
        .device_token_owner(&token_hash)
        .await
        .ok()??;
    Some((person, token_hash, hello.after.max(0)))
}

/// Send `person`'s notifications after `after`; the last id sent, if any.
/// An error says why the feed must close.
async fn send_new(
    state: &AppState,
    session: &mut actix_ws::Session,
    person: &Person,
    token_hash: &str,
    after: i64,
) -> Result<Option<i64>, &'static str> {
    // The token may have been revoked since the hello.
    match state.directory.device_token_owner(token_hash).await {
        Ok(Some(owner)) if owner.id == person.id => {}
        Ok(_) => return Err("device token revoked"),
        Err(_) => return Err("directory unavailable"),
    }
    let fresh = state
        .directory
        .notifications(&person.id, after)
        .await
        .map_err(|_| "directory unavailable")?;
    let Some(last) = fresh.last().map(|n| n.id) else {
        return Ok(None);
    };
    let frame = serde_json::json!({ "notifications": fresh }).to_string();
    session.text(frame).await.map_err(|_| "closed")?;
    Ok(Some(last))
}
