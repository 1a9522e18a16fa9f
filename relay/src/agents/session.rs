//! [`AgentSession`]: the actor behind one agent's WebSocket.
//!
//! It owns what this connection knows: the agent's id, who it is logged in
//! as, and a cached copy of its OBR session (refreshed when an
//! `AgentEvent::ModeChanged` arrives, so the per-request path does no store
//! round trip). For each `CtapRequest` it picks the key — the OBR target's
//! while a session is active, else the principal's own — and sends the
//! request down that user's [`SignerLink`](crate::routing::SignerLink).
//!
//! Peer input is checked here: non-binary frames, frames that are not an
//! `AgentFrame`, oversized payloads and out-of-order frames (CTAP before
//! `Hello`) get a `ProtocolError` frame and the socket is closed. It never
//! writes the audit log or notifications itself: that is [`crate::obr`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Handler, SpawnHandle, StreamHandler,
    WrapFuture,
};
use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, ProtocolError};
use bytes::Bytes;
use obr_proto::agent::{
    AgentFrame, CtapRequest, CtapResponse, HopTimings, LoginPending, Mode, ModeChanged, ModeKind,
    ProtocolError as ProtocolErrorFrame, RelayFrame, Welcome, agent_frame, relay_frame,
};
use obr_proto::signer::{Acting, LinkResponse};
use prost::Message as _;
use tokio::sync::mpsc;

use super::approval::{AskUser, Decision};
use super::registry::Deliver;
use crate::auth;
use crate::clock::now_ms;
use crate::obr::EndReason;
use crate::routing::LinkError;
use crate::sessions::{AgentEvent, DeviceGrant, ObrSession, Principal, TokenScope};
use crate::state::AppState;

/// Largest frame we accept: one CTAP message plus protobuf overhead.
const MAX_FRAME: usize = obr_proto::MAX_CTAP_MESSAGE + 1024;
/// Frames queued towards a slow agent before it is disconnected.
const OUTBOUND_QUEUE: usize = 256;
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
/// An agent silent for this long (no frame, no pong) is gone.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(35);
/// Budget for a CTAP request when the agent sent none.
pub const DEFAULT_CTAP_BUDGET: Duration = Duration::from_secs(30);
/// Upper bound on any budget an agent asks for.
const MAX_CTAP_BUDGET: Duration = Duration::from_secs(120);
/// How long a device-code login may wait for approval (RFC 8628 `expires_in`).
pub const LOGIN_CODE_TTL: Duration = Duration::from_secs(600);
const MAX_AGENT_ID_LEN: usize = 64;

// CTAP status codes the relay itself may answer with (CTAP 2.1 §8.2).
const CTAP1_ERR_INVALID_LENGTH: u8 = 0x03;
const CTAP1_ERR_OTHER: u8 = 0x7F;
const CTAP2_ERR_OPERATION_DENIED: u8 = 0x27;
const CTAP2_ERR_TIMEOUT: u8 = 0x2F;

static CONNECTIONS: AtomicU64 = AtomicU64::new(1);

/// `GET /agent/ws`: upgrade and start an [`AgentSession`].
pub async fn agent_socket(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let stream = stream
        .max_frame_size(MAX_FRAME)
        .aggregate_continuations()
        .max_continuation_size(MAX_FRAME);
    let (out, rx) = mpsc::channel(OUTBOUND_QUEUE);
    actix_rt::spawn(write_frames(session, rx));
    AgentSession::create(|ctx| {
        ctx.add_stream(stream);
        AgentSession {
            state,
            connection: CONNECTIONS.fetch_add(1, Ordering::Relaxed),
            out,
            agent_id: None,
            principal: None,
            obr: None,
            in_flight: HashMap::new(),
            last_seen: Instant::now(),
        }
    });
    Ok(response)
}

pub(super) enum Outgoing {
    Frame(RelayFrame),
    Ping,
    Close(CloseReason),
}

/// Writes frames in order; ends (closing the socket) when the actor stops.
async fn write_frames(mut session: actix_ws::Session, mut rx: mpsc::Receiver<Outgoing>) {
    while let Some(item) = rx.recv().await {
        let sent = match item {
            Outgoing::Frame(frame) => session.binary(Bytes::from(frame.encode_to_vec())).await,
            Outgoing::Ping => session.ping(b"").await,
            Outgoing::Close(reason) => {
                let _ = session.close(Some(reason)).await;
                return;
            }
        };
        if sent.is_err() {
            return;
        }
    }
    let _ = session.close(None).await;
}

pub struct AgentSession {
    state: web::Data<AppState>,
    connection: u64,
    out: mpsc::Sender<Outgoing>,
    agent_id: Option<String>,
    principal: Option<Principal>,
    obr: Option<ObrSession>,
    in_flight: HashMap<u64, SpawnHandle>,
    last_seen: Instant,
}

impl Actor for AgentSession {
    type Context = actix::Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(HEARTBEAT_INTERVAL, |act, ctx| {
            if act.last_seen.elapsed() > CLIENT_TIMEOUT {
                tracing::info!(agent = ?act.agent_id, "agent timed out");
                ctx.stop();
                return;
            }
            act.push(ctx, Outgoing::Ping);
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if let Some(agent_id) = &self.agent_id {
            self.state.agents.unregister(agent_id, self.connection);
            tracing::info!(agent = %agent_id, "agent disconnected");
        }
    }
}

impl StreamHandler<Result<AggregatedMessage, ProtocolError>> for AgentSession {
    fn handle(&mut self, msg: Result<AggregatedMessage, ProtocolError>, ctx: &mut Self::Context) {
        self.last_seen = Instant::now();
        match msg {
            Ok(AggregatedMessage::Binary(bytes)) => match AgentFrame::decode(bytes.as_ref()) {
                Ok(AgentFrame { kind: Some(kind) }) => self.on_frame(kind, ctx),
                Ok(AgentFrame { kind: None }) => self.refuse(ctx, "empty frame"),
                Err(e) => self.refuse(ctx, &format!("malformed frame: {e}")),
            },
            Ok(AggregatedMessage::Text(_)) => {
                self.refuse(ctx, "text frames are not part of the protocol")
            }
            Ok(AggregatedMessage::Ping(_)) | Ok(AggregatedMessage::Pong(_)) => {
                // actix-ws answers pings itself; both count as liveness.
            }
            Ok(AggregatedMessage::Close(_)) => ctx.stop(),
            Err(e) => self.refuse(ctx, &format!("websocket protocol error: {e}")),
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<Deliver> for AgentSession {
    type Result = ();

    fn handle(&mut self, Deliver(event): Deliver, ctx: &mut Self::Context) {
        match event {
            AgentEvent::LoginApproved {
                token, principal, ..
            } => {
                tracing::info!(agent = ?self.agent_id, principal = %principal.email, "agent login approved");
                self.principal = Some(principal);
                self.obr = None;
                self.send_mode(ctx, token);
            }
            AgentEvent::ModeChanged { .. } => self.refresh_obr(ctx),
        }
    }
}

impl AgentSession {
    fn on_frame(&mut self, frame: agent_frame::Kind, ctx: &mut actix::Context<Self>) {
        match frame {
            agent_frame::Kind::Hello(hello) => {
                if self.agent_id.is_some() {
                    return self.refuse(ctx, "duplicate Hello");
                }
                if !valid_agent_id(&hello.agent_id) {
                    return self.refuse(ctx, "agent_id must be 1-64 characters of [A-Za-z0-9_-]");
                }
                self.hello(hello.agent_id, hello.token, ctx);
            }
            _ if self.agent_id.is_none() => self.refuse(ctx, "the first frame must be Hello"),
            agent_frame::Kind::LoginStart(_) => self.login_start(ctx),
            agent_frame::Kind::CtapRequest(request) => self.ctap(request, ctx),
            agent_frame::Kind::CtapCancel(cancel) => {
                if let Some(handle) = self.in_flight.remove(&cancel.id) {
                    // Dropping the request's future withdraws it at the signer.
                    ctx.cancel_future(handle);
                }
            }
            agent_frame::Kind::EndObr(_) => self.end_obr(ctx),
        }
    }

    fn hello(&mut self, agent_id: String, token: String, ctx: &mut actix::Context<Self>) {
        self.state
            .agents
            .register(&agent_id, self.connection, ctx.address().recipient());
        self.agent_id = Some(agent_id.clone());
        tracing::info!(agent = %agent_id, "agent connected");
        let state = self.state.clone();
        let restore = async move {
            if token.is_empty() {
                return Ok::<_, crate::sessions::StoreError>((None, None));
            }
            let principal = match state.store.get_token(&auth::token_hash(&token)).await? {
                Some(p) if p.scope == TokenScope::Agent => p,
                _ => return Ok((None, None)),
            };
            // The token must still be this agent's login.
            match state.store.agent_login(&agent_id).await? {
                Some(login) if login.person_id == principal.person_id => {}
                _ => return Ok((None, None)),
            }
            let obr = state.store.get_obr(&agent_id).await?;
            Ok((Some(principal), obr))
        };
        ctx.wait(restore.into_actor(self).map(|result, act, ctx| {
            match result {
                Ok((principal, obr)) => {
                    act.principal = principal;
                    act.obr = obr;
                }
                Err(e) => tracing::warn!(error = %e, "cannot restore agent login"),
            }
            let mode = act.mode();
            act.send(
                ctx,
                relay_frame::Kind::Welcome(Welcome { mode: Some(mode) }),
            );
        }));
    }

    fn login_start(&mut self, ctx: &mut actix::Context<Self>) {
        let Some(agent_id) = self.agent_id.clone() else {
            return;
        };
        let state = self.state.clone();
        let start = async move {
            let user_code = auth::new_user_code().map_err(|e| e.to_string())?;
            let grant = DeviceGrant {
                user_code: user_code.clone(),
                agent_id,
                created_at_ms: now_ms(),
            };
            state
                .store
                .put_grant(&grant, LOGIN_CODE_TTL)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(LoginPending {
                // Where the code is approved. The panel page is not built
                // yet: this is the API the panel will call.
                verification_uri: format!("{}/api/agent-logins/approve", state.config.public_url),
                user_code,
                expires_in_s: u32::try_from(LOGIN_CODE_TTL.as_secs()).unwrap_or(u32::MAX),
            })
        };
        ctx.spawn(start.into_actor(self).map(|result, act, ctx| match result {
            Ok(pending) => act.send(ctx, relay_frame::Kind::LoginPending(pending)),
            Err(e) => act.send(
                ctx,
                relay_frame::Kind::Error(ProtocolErrorFrame {
                    message: format!("cannot start login: {e}"),
                }),
            ),
        }));
    }

    fn ctap(&mut self, request: CtapRequest, ctx: &mut actix::Context<Self>) {
        let id = request.id;
        if self.in_flight.contains_key(&id) {
            return self.refuse(ctx, "CtapRequest id reused while in flight");
        }
        if request.payload.is_empty() || request.payload.len() > obr_proto::MAX_CTAP_MESSAGE {
            return self.answer(ctx, id, vec![CTAP1_ERR_INVALID_LENGTH], None);
        }
        let Some(principal) = &self.principal else {
            // Not logged in: this key belongs to nobody yet.
            return self.answer(ctx, id, vec![CTAP2_ERR_OPERATION_DENIED], None);
        };
        if self
            .obr
            .as_ref()
            .is_some_and(|o| o.expires_at_ms <= now_ms())
        {
            // Past its TTL: the sweeper records the expiry; act normal now.
            self.obr = None;
        }
        let (user_id, acting) = match &self.obr {
            Some(obr) => (
                obr.user_id.clone(),
                Some(Acting {
                    admin_id: obr.admin_id.clone(),
                    obr_session_id: obr.id.clone(),
                }),
            ),
            None => (principal.person_id.clone(), None),
        };
        let budget = match request.budget_ms {
            0 => DEFAULT_CTAP_BUDGET,
            ms => Duration::from_millis(u64::from(ms)).min(MAX_CTAP_BUDGET),
        };
        let obr = self.obr.clone();
        let state = self.state.clone();
        let received = Instant::now();
        let agent_id = self.agent_id.clone().unwrap_or_default();
        let out = self.out.clone();
        let call = async move {
            let deadline = tokio::time::Instant::now() + budget;
            let mut response = state
                .router
                .ctap(&user_id, request.payload.clone(), budget, acting, None)
                .await?;
            if let Some(needed) = response.approval_needed.take() {
                // Normal mode: the key's owner approves on their device.
                let asking = AskUser {
                    state: &state,
                    out: &out,
                    request_id: id,
                    person_id: &user_id,
                    agent_id: &agent_id,
                };
                match asking.ask(&needed, deadline).await? {
                    Decision::Approved(approval_id) => {
                        let budget =
                            deadline.saturating_duration_since(tokio::time::Instant::now());
                        response = state
                            .router
                            .ctap(&user_id, request.payload, budget, None, Some(approval_id))
                            .await?;
                    }
                    Decision::Refused(status) => {
                        return Ok(LinkResponse {
                            id: 0,
                            payload: vec![status],
                            ..LinkResponse::default()
                        });
                    }
                }
            }
            // Record the registration before the browser hears of it: the
            // audit log and the user's inbox never miss a credential the
            // RP has seen.
            if let (Some(created), Some(obr)) = (&response.created, &obr)
                && let Err(e) = state.obr.registration_done(obr, created).await
            {
                tracing::error!(error = %e, session = %obr.id, "failed to record OBR registration");
            }
            Ok::<_, LinkError>(response)
        };
        let handle = ctx.spawn(call.into_actor(self).map(move |result, act, ctx| {
            act.in_flight.remove(&id);
            match result {
                Ok(response) => {
                    let total_us = duration_us(received.elapsed());
                    let timings = HopTimings {
                        relay_us: total_us
                            .saturating_sub(response.queue_us.saturating_add(response.work_us)),
                        signer_queue_us: response.queue_us,
                        signer_us: response.work_us,
                    };
                    act.answer(ctx, id, response.payload, Some(timings));
                }
                Err(e) => {
                    tracing::warn!(agent = ?act.agent_id, error = %e, "CTAP request failed");
                    let status = match e {
                        LinkError::Timeout => CTAP2_ERR_TIMEOUT,
                        _ => CTAP1_ERR_OTHER,
                    };
                    act.answer(ctx, id, vec![status], None);
                }
            }
        }));
        self.in_flight.insert(id, handle);
    }

    fn end_obr(&mut self, ctx: &mut actix::Context<Self>) {
        let (Some(agent_id), Some(principal)) = (self.agent_id.clone(), self.principal.clone())
        else {
            return;
        };
        let state = self.state.clone();
        let end = async move {
            state
                .obr
                .end(&principal, &agent_id, EndReason::BackToNormal)
                .await
        };
        ctx.spawn(end.into_actor(self).map(|result, act, ctx| match result {
            // The ModeChanged event refreshes us; refresh now as well so the
            // agent sees "normal" even if pub/sub is slow.
            Ok(_) => act.refresh_obr(ctx),
            Err(e) => act.send(
                ctx,
                relay_frame::Kind::Error(ProtocolErrorFrame {
                    message: e.to_string(),
                }),
            ),
        }));
    }

    fn refresh_obr(&mut self, ctx: &mut actix::Context<Self>) {
        let Some(agent_id) = self.agent_id.clone() else {
            return;
        };
        let store = self.state.store.clone();
        let load = async move { store.get_obr(&agent_id).await };
        ctx.spawn(load.into_actor(self).map(|result, act, ctx| match result {
            Ok(obr) => {
                if obr != act.obr {
                    act.obr = obr;
                    act.send_mode(ctx, String::new());
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot refresh OBR session"),
        }));
    }

    fn mode(&self) -> Mode {
        let Some(principal) = &self.principal else {
            return Mode::default();
        };
        let mut mode = Mode {
            kind: ModeKind::Normal as i32,
            principal: principal.email.clone(),
            principal_is_admin: principal.is_admin,
            ..Mode::default()
        };
        if let Some(obr) = &self.obr {
            mode.kind = ModeKind::Obr as i32;
            mode.target_user = obr.user_email.clone();
            mode.obr_session_id = obr.id.clone();
            mode.obr_expires_at_ms = obr.expires_at_ms;
        }
        mode
    }

    fn send_mode(&mut self, ctx: &mut actix::Context<Self>, token: String) {
        let mode = self.mode();
        self.send(
            ctx,
            relay_frame::Kind::ModeChanged(ModeChanged {
                mode: Some(mode),
                token,
            }),
        );
    }

    fn answer(
        &mut self,
        ctx: &mut actix::Context<Self>,
        id: u64,
        payload: Vec<u8>,
        timings: Option<HopTimings>,
    ) {
        self.send(
            ctx,
            relay_frame::Kind::CtapResponse(CtapResponse {
                id,
                payload,
                timings,
            }),
        );
    }

    fn send(&mut self, ctx: &mut actix::Context<Self>, kind: relay_frame::Kind) {
        self.push(ctx, Outgoing::Frame(RelayFrame { kind: Some(kind) }));
    }

    fn push(&mut self, ctx: &mut actix::Context<Self>, item: Outgoing) {
        if self.out.try_send(item).is_err() {
            tracing::warn!(agent = ?self.agent_id, "agent not reading; disconnecting");
            ctx.stop();
        }
    }

    /// Tell the agent what it did wrong, then close the socket.
    fn refuse(&mut self, ctx: &mut actix::Context<Self>, why: &str) {
        tracing::info!(agent = ?self.agent_id, why, "refusing agent frame");
        self.send(
            ctx,
            relay_frame::Kind::Error(ProtocolErrorFrame {
                message: why.to_owned(),
            }),
        );
        let _ = self.out.try_send(Outgoing::Close(CloseReason {
            code: CloseCode::Policy,
            description: Some(why.chars().take(120).collect()),
        }));
        ctx.stop();
    }
}

fn valid_agent_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_AGENT_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn duration_us(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}
