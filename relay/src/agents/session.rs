//! [`AgentSession`]: the actor behind one agent's WebSocket.
//!
//! It moves frames and keeps what this connection knows: the agent it
//! proved to be, who that agent is logged in as, and a cached copy of its
//! OBR session (refreshed on `AgentEvent`s and at least every
//! [`OBR_REFRESH`] while a session is on, so the per-request path does no
//! store round trip). What a CTAP request may reach is decided by
//! [`crate::calls`], not here.
//!
//! When the relay drains, the actor takes nothing new from the agent (it
//! will send it again to another relay), answers what is in flight, then
//! closes with 1012 ([`AgentSession::close_if_drained`]).
//!
//! The connection opens with a [`Challenge`]; nothing is filed (registry,
//! login, session) until the agent's `Hello` proves its key
//! ([`super::identity`]). Peer input is checked here: non-binary frames,
//! frames that are not an `AgentFrame`, a Hello that proves nothing,
//! oversized payloads and out-of-order frames get a `ProtocolError` frame
//! and the socket is closed. Limits: [`MAX_IN_FLIGHT`] CTAP requests and
//! one pending device-code login per connection. It never writes the audit
//! log or notifications itself: that is [`crate::obr`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Handler, SpawnHandle, StreamHandler,
    WrapFuture,
};
use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, ProtocolError};
use bytes::Bytes;
use obr_proto::agent::{
    AgentFrame, Challenge, CtapRequest, CtapResponse, CtapStatus, EndObr, Hello, HopTimings,
    KeepaliveState, LoginPending, Mode, ModeChanged, ModeKind, ObrEndResult, Pair, PairResult,
    ProtocolError as ProtocolErrorFrame, RelayFrame, Welcome, agent_frame, relay_frame,
};
use obr_proto::ctap::{
    DEFAULT_CTAP_BUDGET, HEARTBEAT_INTERVAL, MAX_CTAP_BUDGET, SILENCE_LIMIT, StatusCode,
};
use obr_proto::identity::NONCE_LEN;
use prost::Message as _;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use super::identity::{self, ProvenAgent};
use super::registry::{Deliver, Drain, Replaced};
use crate::auth;
use crate::calls::{Answer, CachedObr, CtapCall, StatusSink};
use crate::clock::now_ms;
use crate::obr::{EndReason, ObrError};
use crate::sessions::{AgentEvent, DeviceGrant, ObrSession, Principal, StoreError};
use crate::state::AppState;

/// Largest frame we accept: one CTAP message plus protobuf overhead.
const MAX_FRAME: usize = obr_proto::MAX_CTAP_MESSAGE + 1024;
/// Frames queued towards a slow agent before it is disconnected.
const OUTBOUND_QUEUE: usize = 256;
/// How long an agent has to answer the challenge with its Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// While a session is on, the socket re-reads it at least this often, so
/// an end the pod missed (lost event, store restarted empty) shows on the
/// agent within about a second. Below [`calls::OBR_MAX_STALENESS`], so a
/// request rarely pays for a store read itself.
const OBR_REFRESH: Duration = Duration::from_millis(500);
/// CTAP requests one agent may have in flight. The CTAPHID engine already
/// serialises each channel, so this is the number of channels (browser
/// tabs, libfido2 tools, a load test's 16 clients) using the key at once:
/// twice the 16 the load test drives, and bounded so one agent cannot hold
/// more than 32 requests × 120 s of budget. More get
/// `CTAP1_ERR_CHANNEL_BUSY`. A request holds its slot until its work is
/// over: an on-behalf call the browser cancelled still runs to its record
/// (`calls`), and keeps its slot meanwhile, so cancelling does not free
/// room for more.
pub const MAX_IN_FLIGHT: usize = 32;
/// How long a device-code login may wait for approval (RFC 8628 `expires_in`).
pub const LOGIN_CODE_TTL: Duration = Duration::from_secs(600);

// CTAP status codes the socket answers with itself (CTAP 2.1 §8.2).

static CONNECTIONS: AtomicU64 = AtomicU64::new(1);

/// `GET /agent/ws`: upgrade and start an [`AgentSession`].
pub async fn agent_socket(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    if state.is_draining() {
        // Not here: the agent tries its next relay.
        return Ok(HttpResponse::ServiceUnavailable()
            .insert_header((actix_web::http::header::RETRY_AFTER, "1"))
            .body("this relay is draining: connect to another one"));
    }
    let nonce = identity::new_nonce().map_err(actix_web::error::ErrorInternalServerError)?;
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
            nonce,
            agent: None,
            principal: None,
            obr: None,
            pending_login: None,
            in_flight: HashMap::new(),
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            approval_gate: Arc::new(Semaphore::new(1)),
            last_seen: Instant::now(),
            reads_started: 0,
            read_applied: 0,
            draining: false,
            closing: false,
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
    /// This connection's challenge.
    nonce: [u8; NONCE_LEN],
    /// Set once the Hello proved the agent's key.
    agent: Option<ProvenAgent>,
    principal: Option<Principal>,
    obr: Option<CachedObr>,
    /// The device-code login this connection asked for, until it expires.
    pending_login: Option<(LoginPending, Instant)>,
    /// Requests by id, to cancel them.
    in_flight: HashMap<u64, SpawnHandle>,
    /// [`MAX_IN_FLIGHT`] permits; each request's work holds one.
    slots: Arc<Semaphore>,
    approval_gate: Arc<Semaphore>,
    last_seen: Instant,
    /// Store reads of login and session started, and the newest applied.
    reads_started: u64,
    read_applied: u64,
    /// The relay is draining: close once nothing is in flight.
    draining: bool,
    /// The close is sent: frames that still arrive are not served (the
    /// agent sends them again to its next relay).
    closing: bool,
}

impl Actor for AgentSession {
    type Context = actix::Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let nonce = self.nonce.to_vec();
        self.send(ctx, relay_frame::Kind::Challenge(Challenge { nonce }));
        ctx.run_later(HELLO_TIMEOUT, |act, ctx| {
            if act.agent.is_none() {
                act.refuse(
                    ctx,
                    &format!("no Hello answered the challenge within {HELLO_TIMEOUT:?}"),
                );
            }
        });
        ctx.run_interval(HEARTBEAT_INTERVAL, |act, ctx| {
            if act.last_seen.elapsed() > SILENCE_LIMIT {
                tracing::info!(agent = ?act.agent_id(), silent_for = ?SILENCE_LIMIT,
                    "agent silent past the limit; closing");
                ctx.stop();
                return;
            }
            act.push(ctx, Outgoing::Ping);
        });
        ctx.run_interval(OBR_REFRESH, |act, ctx| {
            if act.obr.is_some() {
                act.refresh(ctx);
            }
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if let Some(agent) = &self.agent {
            self.state
                .agents
                .unregister(agent.agent_id(), self.connection);
            tracing::info!(agent = %agent.agent_id(), "agent disconnected");
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
            AgentEvent::LoginChanged { .. } => {
                self.pending_login = None;
                self.refresh(ctx);
            }
            AgentEvent::ModeChanged { .. } | AgentEvent::Resync => self.refresh(ctx),
            AgentEvent::InboxChanged { .. } => {}
        }
    }
}

impl Handler<Drain> for AgentSession {
    type Result = ();

    fn handle(&mut self, _: Drain, ctx: &mut Self::Context) {
        self.draining = true;
        self.close_if_drained(ctx);
    }
}

impl Handler<Replaced> for AgentSession {
    type Result = ();

    fn handle(&mut self, _: Replaced, ctx: &mut Self::Context) {
        self.refuse(ctx, "a newer connection of this agent replaced this one");
    }
}

impl AgentSession {
    fn agent_id(&self) -> Option<&str> {
        self.agent.as_ref().map(ProvenAgent::agent_id)
    }

    fn on_frame(&mut self, frame: agent_frame::Kind, ctx: &mut actix::Context<Self>) {
        // Draining: only a cancel of what is in flight still counts; the
        // agent sends anything else again to its next relay after the 1012.
        if self.closing || (self.draining && !matches!(frame, agent_frame::Kind::CtapCancel(_))) {
            return;
        }
        match frame {
            agent_frame::Kind::Hello(hello) => {
                if self.agent.is_some() {
                    return self.refuse(ctx, "duplicate Hello");
                }
                self.hello(&hello, ctx);
            }
            _ if self.agent.is_none() => self.refuse(ctx, "the first frame must be Hello"),
            agent_frame::Kind::LoginStart(_) => self.login_start(ctx),
            agent_frame::Kind::CtapRequest(request) => self.ctap(request, ctx),
            agent_frame::Kind::CtapCancel(cancel) => {
                if let Some(handle) = self.in_flight.remove(&cancel.id) {
                    ctx.run_later(Duration::ZERO, |act, ctx| act.close_if_drained(ctx));
                    // Dropping the request's future withdraws it at the signer.
                    ctx.cancel_future(handle);
                }
            }
            agent_frame::Kind::EndObr(end) => self.end_obr(end, ctx),
            agent_frame::Kind::Pair(pair) => self.pair(pair, ctx),
        }
    }

    /// The agent proves its key, then is filed and told its mode.
    fn hello(&mut self, hello: &Hello, ctx: &mut actix::Context<Self>) {
        let agent = match identity::verify(&self.nonce, hello) {
            Ok(agent) => agent,
            Err(e) => return self.refuse(ctx, &e.to_string()),
        };
        self.state.agents.register(
            agent.agent_id(),
            self.connection,
            ctx.address().recipient(),
            ctx.address().recipient(),
            ctx.address().recipient(),
        );
        tracing::info!(agent = %agent.agent_id(), version = %hello.agent_version, "agent connected");
        let agent_id = agent.agent_id().to_owned();
        self.agent = Some(agent);
        if self.state.is_draining() {
            // Connected while the relay began to drain: move on at once.
            self.draining = true;
            return self.close_if_drained(ctx);
        }
        let state = self.state.clone();
        self.reads_started += 1;
        let (read, started) = (self.reads_started, Instant::now());
        ctx.wait(
            async move { load(&state, &agent_id).await }
                .into_actor(self)
                .map(move |loaded, act, ctx| {
                    act.read_applied = read;
                    act.apply(loaded, started);
                    let mode = act.mode();
                    act.send(
                        ctx,
                        relay_frame::Kind::Welcome(Welcome { mode: Some(mode) }),
                    );
                }),
        );
    }

    /// Re-read login and session from the store; tell the agent if its
    /// mode changed. Reads may finish out of order: only a newer one than
    /// the last applied counts, and its freshness is when it started.
    fn refresh(&mut self, ctx: &mut actix::Context<Self>) {
        let Some(agent_id) = self.agent_id().map(str::to_owned) else {
            return;
        };
        self.reads_started += 1;
        let (read, started) = (self.reads_started, Instant::now());
        let state = self.state.clone();
        ctx.spawn(
            async move { load(&state, &agent_id).await }
                .into_actor(self)
                .map(move |loaded, act, ctx| {
                    if read <= act.read_applied {
                        return;
                    }
                    act.read_applied = read;
                    let before = act.mode();
                    act.apply(loaded, started);
                    if act.mode() != before {
                        act.send_mode(ctx);
                    }
                }),
        );
    }

    fn apply(&mut self, loaded: Result<Loaded, StoreError>, started: Instant) {
        match loaded {
            Ok(loaded) => {
                self.principal = loaded.principal;
                self.obr = loaded.obr.map(|session| CachedObr {
                    session,
                    checked_at: started,
                });
            }
            // Fail closed: a session that cannot be confirmed is not
            // served; the login stays as it was.
            Err(e) => {
                tracing::warn!(agent = ?self.agent_id(), error = %e, "cannot read the agent's state; dropping its OBR session");
                self.obr = None;
            }
        }
    }

    fn login_start(&mut self, ctx: &mut actix::Context<Self>) {
        // One pending grant per connection: asking again shows the same code.
        if let Some((pending, until)) = &self.pending_login
            && *until > Instant::now()
        {
            let pending = pending.clone();
            return self.send(ctx, relay_frame::Kind::LoginPending(pending));
        }
        let Some(agent_id) = self.agent_id().map(str::to_owned) else {
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
                verification_uri: format!("{}/panel/#approve", state.config.public_url),
                user_code,
                expires_in_s: u32::try_from(LOGIN_CODE_TTL.as_secs()).unwrap_or(u32::MAX),
            })
        };
        ctx.spawn(start.into_actor(self).map(|result, act, ctx| match result {
            Ok(pending) => {
                act.pending_login = Some((pending.clone(), Instant::now() + LOGIN_CODE_TTL));
                act.send(ctx, relay_frame::Kind::LoginPending(pending));
            }
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
            return self.answer(ctx, id, StatusCode::InvalidLength.response(), None);
        }
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            return self.answer(ctx, id, StatusCode::ChannelBusy.response(), None);
        };
        let (Some(agent_id), Some(principal)) = (self.agent_id(), self.principal.clone()) else {
            // Not logged in: this key belongs to nobody yet (getInfo only).
            let (state, payload) = (self.state.clone(), request.payload);
            let describe = async move {
                let answer = state.calls.serve_anonymous(&payload).await;
                drop(slot);
                answer
            };
            ctx.spawn(describe.into_actor(self).map(move |answer, act, ctx| {
                let (payload, _) = answer.into_payload();
                act.answer(ctx, id, payload, None);
            }));
            return;
        };
        let budget = match request.budget_ms {
            0 => DEFAULT_CTAP_BUDGET,
            ms => Duration::from_millis(u64::from(ms)).min(MAX_CTAP_BUDGET),
        };
        let out = self.out.clone();
        let status: StatusSink = Arc::new(move |state: KeepaliveState| {
            let frame = RelayFrame {
                kind: Some(relay_frame::Kind::CtapStatus(CtapStatus {
                    id,
                    state: state as i32,
                })),
            };
            // Best effort: a full queue only means the agent keeps the old status.
            let _ = out.try_send(Outgoing::Frame(frame));
        });
        let call = CtapCall {
            agent_id: agent_id.to_owned(),
            principal,
            obr: self.obr.clone(),
            agent_obr_session: request.obr_session_id,
            payload: request.payload,
            budget,
            status,
            approval_gate: self.approval_gate.clone(),
            slot,
        };
        let state = self.state.clone();
        let received = Instant::now();
        let command = call.payload.first().copied();
        let serve = async move { state.calls.serve(call).await };
        let handle = ctx.spawn(serve.into_actor(self).map(move |result, act, ctx| {
            act.in_flight.remove(&id);
            ctx.run_later(Duration::ZERO, |act, ctx| act.close_if_drained(ctx));
            match result {
                Ok(Answer::ModeMismatch) => {
                    act.answer(ctx, id, StatusCode::OperationDenied.response(), None);
                    act.send_mode(ctx);
                    act.refresh(ctx);
                }
                Ok(answer) => {
                    let (payload, response) = answer.into_payload();
                    let elapsed = received.elapsed();
                    let timings = response.map(|r| {
                        let total_us = duration_us(elapsed);
                        HopTimings {
                            relay_us: total_us.saturating_sub(r.queue_us.saturating_add(r.work_us)),
                            signer_queue_us: r.queue_us,
                            signer_us: r.work_us,
                        }
                    });
                    let seconds = |us: u32| f64::from(us) / 1e6;
                    act.state.metrics.ctap(
                        command,
                        payload.first().copied(),
                        elapsed.as_secs_f64(),
                        timings.as_ref().map(|t| {
                            (
                                seconds(t.relay_us),
                                seconds(t.signer_queue_us),
                                seconds(t.signer_us),
                            )
                        }),
                    );
                    act.answer(ctx, id, payload, timings);
                }
                Err(e) => {
                    act.state
                        .metrics
                        .ctap(command, None, received.elapsed().as_secs_f64(), None);
                    tracing::warn!(agent = ?act.agent_id(), error = %e, "CTAP request failed");
                    act.answer(ctx, id, e.status().response(), None);
                }
            }
        }));
        self.in_flight.insert(id, handle);
    }

    /// "Back to normal mode" from the agent: end the session it names, and
    /// say whether it is over.
    fn end_obr(&mut self, end: EndObr, ctx: &mut actix::Context<Self>) {
        let (Some(agent_id), Some(principal)) =
            (self.agent_id().map(str::to_owned), self.principal.clone())
        else {
            return self.send_end_result(ctx, end.obr_session_id, true, String::new());
        };
        let state = self.state.clone();
        let wanted = end.obr_session_id;
        let session_id = wanted.clone();
        let ending = async move {
            let session = (!session_id.is_empty()).then_some(session_id.as_str());
            state
                .obr
                .end_session(&principal, &agent_id, session, EndReason::BackToNormal)
                .await
        };
        ctx.spawn(ending.into_actor(self).map(move |result, act, ctx| {
            let (ended, message) = match result {
                Ok(_) => (true, String::new()),
                // Nothing to end: the agent is in normal mode either way.
                Err(ObrError::NotActive(_)) => (true, String::new()),
                Err(e) => (false, e.to_string()),
            };
            act.send_end_result(ctx, wanted, ended, message);
            act.refresh(ctx);
        }));
    }

    /// "Open Pairing Tool": start the session the panel's pairing link
    /// names on this agent, if it is logged in as the admin who made it.
    fn pair(&mut self, pair: Pair, ctx: &mut actix::Context<Self>) {
        let (Some(agent_id), Some(principal)) =
            (self.agent_id().map(str::to_owned), self.principal.clone())
        else {
            return self.send(
                ctx,
                relay_frame::Kind::PairResult(PairResult {
                    code: pair.code,
                    message: "log this agent in first (obr-agent login)".into(),
                    ..PairResult::default()
                }),
            );
        };
        let state = self.state.clone();
        let code = pair.code.clone();
        let claiming = async move {
            let admin = state.grants.admin(&principal.person_id).await?;
            state
                .obr
                .claim_pairing(&code, &agent_id, &principal, admin.as_ref())
                .await
        };
        ctx.spawn(claiming.into_actor(self).map(move |result, act, ctx| {
            let result = match result {
                Ok(session) => PairResult {
                    code: pair.code,
                    started: session.awaiting.is_none(),
                    message: session.awaiting.map_or_else(String::new, |who| {
                        format!(
                            "the session for {} waits for {} to approve it",
                            session.user_email,
                            match who {
                                crate::sessions::Approver::User => "the user",
                                crate::sessions::Approver::SecondAdmin => "a second admin",
                            }
                        )
                    }),
                    target_user: session.user_email,
                },
                Err(e) => {
                    tracing::info!(error = %e, "a pairing link was refused");
                    PairResult {
                        code: pair.code,
                        message: e.to_string(),
                        ..PairResult::default()
                    }
                }
            };
            act.send(ctx, relay_frame::Kind::PairResult(result));
            act.refresh(ctx);
        }));
    }

    fn send_end_result(
        &mut self,
        ctx: &mut actix::Context<Self>,
        obr_session_id: String,
        ended: bool,
        message: String,
    ) {
        self.send(
            ctx,
            relay_frame::Kind::EndObrResult(ObrEndResult {
                obr_session_id,
                ended,
                message,
            }),
        );
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
        if let Some(CachedObr { session, .. }) = &self.obr {
            mode.kind = ModeKind::Obr as i32;
            mode.target_user = session.user_email.clone();
            mode.obr_session_id = session.id.clone();
            mode.obr_expires_at_ms = session.expires_at_ms;
        }
        mode
    }

    fn send_mode(&mut self, ctx: &mut actix::Context<Self>) {
        let mode = self.mode();
        self.send(
            ctx,
            relay_frame::Kind::ModeChanged(ModeChanged { mode: Some(mode) }),
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
            tracing::warn!(agent = ?self.agent_id(), "agent not reading; disconnecting");
            ctx.stop();
        }
    }

    /// Draining and nothing in flight: close with 1012 ("service restart")
    /// so that the agent reconnects to another relay at once. Frames the
    /// agent sent meanwhile are not served ([`Self::closing`]); it sends
    /// them again there.
    fn close_if_drained(&mut self, ctx: &mut actix::Context<Self>) {
        if !self.draining || self.closing || !self.in_flight.is_empty() {
            return;
        }
        self.closing = true;
        tracing::info!(agent = ?self.agent_id(), "relay draining: moving the agent");
        let _ = self.out.try_send(Outgoing::Close(CloseReason {
            code: CloseCode::Restart,
            description: Some("relay draining: reconnect to another relay".into()),
        }));
        ctx.stop();
    }

    /// Tell the agent what it did wrong, then close the socket.
    fn refuse(&mut self, ctx: &mut actix::Context<Self>, why: &str) {
        tracing::info!(agent = ?self.agent_id(), why, "refusing agent frame");
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

/// What the store says about a proven agent.
struct Loaded {
    principal: Option<Principal>,
    /// Only a session that serves this agent and its principal now.
    obr: Option<ObrSession>,
}

async fn load(state: &AppState, agent_id: &str) -> Result<Loaded, StoreError> {
    let principal = state.store.agent_login(agent_id).await?;
    let obr = match &principal {
        Some(p) => state
            .store
            .get_obr(agent_id)
            .await?
            .filter(|s| crate::obr::serves(s, agent_id, p, now_ms())),
        None => None,
    };
    Ok(Loaded { principal, obr })
}

fn duration_us(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}
