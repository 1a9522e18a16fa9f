//! The connection task behind [`Tunnel`](super::Tunnel): connect, answer
//! the relay's challenge with a `Hello` signed by the agent key
//! ([`AgentKey`]), carry frames, and on loss move to the next relay of its
//! list at once; once every relay failed in turn, wait with jittered
//! exponential backoff (full jitter: a fleet of agents restarting together
//! does not stampede the relays). Requests in flight when the socket drops
//! are answered with CTAP1_ERR_OTHER — the browser retries — rather than
//! left hanging. A relay that drains closes with 1012 only once it has
//! answered everything it took: requests that crossed its close were not
//! served there, so they are sent again to the next relay.
//!
//! "Back to normal mode" takes effect here at once: from that moment no
//! request is forwarded for the session being ended (the browser gets
//! CTAP2_ERR_OPERATION_DENIED), whatever the relay answers; the caller is
//! told whether the relay confirmed within [`END_OBR_CONFIRM_TIMEOUT`], and
//! the end is sent again on every reconnect until the relay confirms.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use obr_proto::agent::{
    AgentFrame, CtapCancel, CtapRequest, EndObr, Hello, KeepaliveState, LoginPending, LoginStart,
    ObrEndResult, Pair, PairResult, RelayFrame, agent_frame, relay_frame,
};
use obr_proto::ctap::{SILENCE_LIMIT, StatusCode};
use prost::Message as _;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::identity::{AgentKey, StateFileError};
use super::{Command, EndOutcome, TunnelConfig, TunnelError};
use crate::ctaphid::KeepaliveStatus;
use crate::status::{AgentStatus, LoginView, ModeView};

const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// DESIGN: tungstenite's default 128 KiB read buffer costs 2x throughput
/// and 20x memory here; frames are at most ~8.6 KiB.
const READ_BUFFER: usize = 4096;
const MAX_MESSAGE: usize = 64 * 1024;
const MAX_WRITE_BUFFER: usize = 256 * 1024;
/// How long the relay has to open a connection with its challenge.
const CHALLENGE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long "Back to normal mode" waits for the relay's confirmation
/// before telling the admin it is not confirmed (it is in effect locally
/// either way).
pub const END_OBR_CONFIRM_TIMEOUT: Duration = Duration::from_secs(3);

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    StateFile(#[from] StateFileError),
    #[error("cannot load CA certificates from {path}: {reason}")]
    CaFile { path: String, reason: String },
}

/// A "Back to normal mode" the relay has not confirmed yet.
struct Ending {
    session_id: String,
    target_user: String,
    waiters: Vec<oneshot::Sender<Result<EndOutcome, TunnelError>>>,
    /// When the waiters are told the relay has not confirmed.
    answer_by: tokio::time::Instant,
}

pub(crate) struct Connection {
    config: TunnelConfig,
    commands: mpsc::Receiver<Command>,
    status: watch::Sender<AgentStatus>,
    key: AgentKey,
    connector: Option<Connector>,
    pending: HashMap<u64, Pending>,
    /// Which of `config.relays` is in use.
    current: usize,
    login_waiters: Vec<oneshot::Sender<Result<LoginPending, TunnelError>>>,
    /// Pairings sent to the relay, by code, waiting for its answer.
    pairing: HashMap<String, oneshot::Sender<Result<PairResult, TunnelError>>>,
    ending: Option<Ending>,
}

/// A CTAP request sent to the relay, until it answers.
struct Pending {
    reply: oneshot::Sender<Vec<u8>>,
    status: KeepaliveStatus,
    /// As sent, to send again to the next relay after a drain.
    request: CtapRequest,
    sent_at: tokio::time::Instant,
}

enum SessionEnd {
    Lost(String),
    /// The relay drains (close 1012): on to the next, keeping requests.
    Moved(String),
    Stopped,
}

impl Connection {
    pub(crate) fn new(
        config: TunnelConfig,
        commands: mpsc::Receiver<Command>,
        status: watch::Sender<AgentStatus>,
    ) -> Result<Self, SetupError> {
        let key = AgentKey::load_or_create(&config.state_file)?;
        let connector = config.ca_file.as_deref().map(tls_connector).transpose()?;
        status.send_modify(|s| {
            s.agent_id = key.agent_id().to_owned();
            s.relay = config.relays.first().cloned().unwrap_or_default();
        });
        Ok(Self {
            config,
            commands,
            status,
            key,
            connector,
            pending: HashMap::new(),
            current: 0,
            login_waiters: Vec::new(),
            pairing: HashMap::new(),
            ending: None,
        })
    }

    /// The relay in use.
    fn url(&self) -> &str {
        self.config
            .relays
            .get(self.current)
            .map_or("", String::as_str)
    }

    /// On to the next relay of the list (round and round).
    fn next_relay(&mut self) {
        self.current = (self.current + 1) % self.config.relays.len().max(1);
        let url = self.url().to_owned();
        self.status.send_modify(|s| s.relay = url);
    }

    pub(crate) async fn run(mut self) {
        let mut failures: u32 = 0;
        let relays = u32::try_from(self.config.relays.len()).unwrap_or(1).max(1);
        loop {
            let end = match self.connect().await {
                Ok(socket) => {
                    failures = 0;
                    self.session(socket).await
                }
                Err(e) => SessionEnd::Lost(e),
            };
            match end {
                SessionEnd::Stopped => {
                    self.fail_in_flight();
                    return;
                }
                SessionEnd::Moved(why) => {
                    tracing::info!(relay = %self.url(), %why, "relay draining; moving to the next");
                    self.fail_waiters();
                    self.status.send_modify(|s| s.connected = false);
                    self.next_relay();
                    continue;
                }
                SessionEnd::Lost(why) => {
                    self.fail_in_flight();
                    tracing::warn!(relay = %self.url(), %why, "relay link down");
                    self.status.send_modify(|s| {
                        s.connected = false;
                        s.last_error = Some(why);
                    });
                    self.next_relay();
                }
            }
            failures = failures.saturating_add(1);
            // Every relay in turn first; then back off.
            if failures < relays {
                continue;
            }
            let pause = backoff(failures + 1 - relays);
            if !self.wait_offline(pause).await {
                return;
            }
        }
    }

    async fn connect(&self) -> Result<Socket, String> {
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .max_write_buffer_size(MAX_WRITE_BUFFER)
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let connecting = tokio_tungstenite::connect_async_tls_with_config(
            self.url(),
            Some(config),
            true,
            self.connector.clone(),
        );
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok((socket, _))) => Ok(socket),
            Ok(Err(e)) => Err(format!("cannot connect to {}: {e}", self.url())),
            Err(_) => Err(format!(
                "connecting to {} got no answer within {CONNECT_TIMEOUT:?}",
                self.url()
            )),
        }
    }

    /// Prove the agent key, then carry frames until the socket drops or
    /// every handle is gone.
    async fn session(&mut self, socket: Socket) -> SessionEnd {
        let (mut sink, mut stream) = socket.split();
        let nonce = match tokio::time::timeout(CHALLENGE_TIMEOUT, next_frame(&mut stream)).await {
            Ok(Ok(relay_frame::Kind::Challenge(challenge))) => challenge.nonce,
            Ok(Ok(other)) => {
                return SessionEnd::Lost(format!(
                    "the relay opened with {other:?}, not a challenge"
                ));
            }
            Ok(Err(end)) => return end,
            Err(_) => return SessionEnd::Lost("the relay sent no challenge".into()),
        };
        let proof = match self.key.prove(&nonce) {
            Ok(proof) => proof,
            Err(_) => return SessionEnd::Lost("cannot sign the relay's challenge".into()),
        };
        let hello = agent_frame::Kind::Hello(Hello {
            agent_id: self.key.agent_id().to_owned(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            public_key: self.key.public_key(),
            proof,
        });
        if let Err(e) = sink.send(encode(hello)).await {
            return SessionEnd::Lost(e.to_string());
        }
        // "Back to normal mode" first, and nothing of the session it ends
        // goes out again: it is over here whatever the relay says.
        if let Some(ending) = &self.ending {
            let end = agent_frame::Kind::EndObr(EndObr {
                obr_session_id: ending.session_id.clone(),
            });
            if let Err(e) = sink.send(encode(end)).await {
                return SessionEnd::Lost(e.to_string());
            }
            let ended = ending.session_id.clone();
            let refused: Vec<u64> = self
                .pending
                .iter()
                .filter(|(_, p)| p.request.obr_session_id == ended)
                .map(|(id, _)| *id)
                .collect();
            for id in refused {
                if let Some(pending) = self.pending.remove(&id) {
                    let _ = pending.reply.send(StatusCode::OperationDenied.response());
                }
            }
        }
        // Requests the last relay did not take (it drained), oldest first,
        // with what is left of their budget.
        let mut resend: Vec<&Pending> = self.pending.values().collect();
        resend.sort_by_key(|p| p.sent_at);
        for pending in resend {
            let spent = u32::try_from(pending.sent_at.elapsed().as_millis()).unwrap_or(u32::MAX);
            let request = CtapRequest {
                budget_ms: pending.request.budget_ms.saturating_sub(spent).max(1),
                ..pending.request.clone()
            };
            if let Err(e) = sink
                .send(encode(agent_frame::Kind::CtapRequest(request)))
                .await
            {
                return SessionEnd::Lost(e.to_string());
            }
        }
        loop {
            let answer_by = self.ending.as_ref().map(|e| e.answer_by);
            tokio::select! {
                incoming = tokio::time::timeout(SILENCE_LIMIT, next_frame(&mut stream)) => {
                    let frame = match incoming {
                        Err(_) => return SessionEnd::Lost("relay silent for too long".into()),
                        Ok(Err(end)) => return end,
                        Ok(Ok(frame)) => frame,
                    };
                    if let Some(reply) = self.on_frame(frame)
                        && let Err(e) = sink.send(encode(reply)).await
                    {
                        return SessionEnd::Lost(e.to_string());
                    }
                }
                command = self.commands.recv() => {
                    let Some(command) = command else {
                        let _ = sink.close().await;
                        return SessionEnd::Stopped;
                    };
                    if let Some(frame) = self.on_command(command)
                        && let Err(e) = sink.send(encode(frame)).await
                    {
                        return SessionEnd::Lost(e.to_string());
                    }
                }
                () = sleep_until_some(answer_by) => self.end_unconfirmed("the relay has not answered yet"),
            }
        }
    }

    fn on_frame(&mut self, frame: relay_frame::Kind) -> Option<agent_frame::Kind> {
        match frame {
            relay_frame::Kind::Welcome(welcome) => {
                let mode = ModeView::from(&welcome.mode.unwrap_or_default());
                return self.relay_mode(mode);
            }
            relay_frame::Kind::Challenge(_) => {
                tracing::warn!("a second challenge from the relay ignored");
            }
            relay_frame::Kind::LoginPending(pending) => {
                self.status
                    .send_modify(|s| s.login = Some(LoginView::from(pending.clone())));
                for waiter in self.login_waiters.drain(..) {
                    let _ = waiter.send(Ok(pending.clone()));
                }
            }
            relay_frame::Kind::ModeChanged(changed) => {
                let mode = ModeView::from(&changed.mode.unwrap_or_default());
                if !matches!(mode, ModeView::NotLoggedIn) {
                    self.status.send_modify(|s| s.login = None);
                }
                tracing::info!(mode = %mode.display(), "mode changed");
                return self.relay_mode(mode);
            }
            relay_frame::Kind::EndObrResult(result) => self.on_end_result(result),
            relay_frame::Kind::PairResult(result) => {
                if let Some(waiter) = self.pairing.remove(&result.code) {
                    let _ = waiter.send(Ok(result));
                }
            }
            relay_frame::Kind::CtapResponse(response) => {
                if let Some(pending) = self.pending.remove(&response.id) {
                    let _ = pending.reply.send(response.payload);
                }
            }
            relay_frame::Kind::CtapStatus(update) => {
                if let Some(pending) = self.pending.get(&update.id) {
                    match KeepaliveState::try_from(update.state) {
                        Ok(KeepaliveState::UserPresenceNeeded) => {
                            pending.status.user_presence_needed()
                        }
                        _ => pending.status.processing(),
                    }
                }
            }
            relay_frame::Kind::Error(error) => {
                tracing::warn!(message = %error.message, "relay reported an error");
                for waiter in self.login_waiters.drain(..) {
                    let _ = waiter.send(Err(TunnelError::Refused(error.message.clone())));
                }
                self.status
                    .send_modify(|s| s.last_error = Some(error.message.clone()));
            }
        }
        None
    }

    /// The relay says what mode the agent is in. A session the admin ended
    /// here stays ended here: it is shown as ending, and the end is sent
    /// again, until the relay no longer has it.
    fn relay_mode(&mut self, mode: ModeView) -> Option<agent_frame::Kind> {
        if let Some(ending) = &self.ending {
            match &mode {
                ModeView::Obr { session_id, .. } if *session_id == ending.session_id => {
                    let resend = agent_frame::Kind::EndObr(EndObr {
                        obr_session_id: ending.session_id.clone(),
                    });
                    let shown = ModeView::EndingObr {
                        target_user: ending.target_user.clone(),
                        session_id: ending.session_id.clone(),
                    };
                    self.set_mode(shown, true);
                    return Some(resend);
                }
                _ => self.end_confirmed(),
            }
        }
        self.set_mode(mode, true);
        None
    }

    fn on_end_result(&mut self, result: ObrEndResult) {
        let ours = self
            .ending
            .as_ref()
            .is_some_and(|e| e.session_id == result.obr_session_id);
        if !ours {
            return;
        }
        if result.ended {
            // The ModeChanged that follows shows the new mode.
            self.end_confirmed();
        } else {
            self.end_unconfirmed(&result.message);
        }
    }

    /// The relay confirmed the end (or no longer has the session).
    fn end_confirmed(&mut self) {
        if let Some(ending) = self.ending.take() {
            for waiter in ending.waiters {
                let _ = waiter.send(Ok(EndOutcome::Confirmed));
            }
        }
    }

    /// Tell whoever waits that the relay has not confirmed; the end stays
    /// in effect here and is sent again on the next connection.
    fn end_unconfirmed(&mut self, why: &str) {
        if let Some(ending) = self.ending.as_mut() {
            for waiter in ending.waiters.drain(..) {
                let _ = waiter.send(Ok(EndOutcome::Unconfirmed(why.to_owned())));
            }
            ending.answer_by = far_future();
        }
    }

    /// Turn a command into a frame to send (or answer it right away).
    fn on_command(&mut self, command: Command) -> Option<agent_frame::Kind> {
        match command {
            Command::Ctap {
                id,
                payload,
                reply,
                status,
            } => {
                if self.ending.is_some() {
                    // Back to normal mode is in effect here at once.
                    let _ = reply.send(StatusCode::OperationDenied.response());
                    return None;
                }
                let obr_session_id = match &self.status.borrow().mode {
                    ModeView::Obr { session_id, .. } => session_id.clone(),
                    _ => String::new(),
                };
                let request = CtapRequest {
                    id,
                    payload,
                    budget_ms: u32::try_from(self.config.ctap_budget.as_millis())
                        .unwrap_or(u32::MAX),
                    obr_session_id,
                };
                self.pending.insert(
                    id,
                    Pending {
                        reply,
                        status,
                        request: request.clone(),
                        sent_at: tokio::time::Instant::now(),
                    },
                );
                Some(agent_frame::Kind::CtapRequest(request))
            }
            Command::Cancel { id } => self
                .pending
                .remove(&id)
                .map(|_| agent_frame::Kind::CtapCancel(CtapCancel { id })),
            Command::Login { reply } => {
                self.login_waiters.push(reply);
                Some(agent_frame::Kind::LoginStart(LoginStart {}))
            }
            Command::Pair { code, reply } => {
                self.pairing.insert(code.clone(), reply);
                Some(agent_frame::Kind::Pair(Pair { code }))
            }
            Command::EndObr { reply } => self.begin_end(reply).map(|session_id| {
                agent_frame::Kind::EndObr(EndObr {
                    obr_session_id: session_id,
                })
            }),
        }
    }

    /// "Back to normal mode": stop acting for the user now; returns the
    /// session to end at the relay (`None` when there is none).
    fn begin_end(
        &mut self,
        reply: oneshot::Sender<Result<EndOutcome, TunnelError>>,
    ) -> Option<String> {
        let answer_by = tokio::time::Instant::now() + END_OBR_CONFIRM_TIMEOUT;
        if let Some(ending) = self.ending.as_mut() {
            ending.waiters.push(reply);
            ending.answer_by = answer_by;
            return Some(ending.session_id.clone());
        }
        let (target_user, session_id) = match &self.status.borrow().mode {
            ModeView::Obr {
                target_user,
                session_id,
                ..
            } => (target_user.clone(), session_id.clone()),
            _ => {
                let _ = reply.send(Err(TunnelError::Refused(
                    "no on-behalf registration in progress".into(),
                )));
                return None;
            }
        };
        tracing::info!(%target_user, "back to normal mode: no longer acting for the user");
        // (Not `self.status.borrow()` inline: its read guard would still be
        // held when `set_mode` takes the write lock.)
        let connected = self.status.borrow().connected;
        self.set_mode(
            ModeView::EndingObr {
                target_user: target_user.clone(),
                session_id: session_id.clone(),
            },
            connected,
        );
        self.ending = Some(Ending {
            session_id: session_id.clone(),
            target_user,
            waiters: vec![reply],
            answer_by,
        });
        Some(session_id)
    }

    /// Sit out a backoff pause, refusing commands meanwhile. Returns false
    /// when every handle has been dropped.
    async fn wait_offline(&mut self, pause: Duration) -> bool {
        let sleep = tokio::time::sleep(pause);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return true,
                command = self.commands.recv() => match command {
                    None => return false,
                    Some(Command::Ctap { reply, .. }) => { let _ = reply.send(StatusCode::Other.response()); }
                    Some(Command::Cancel { .. }) => {}
                    Some(Command::Login { reply }) => { let _ = reply.send(Err(TunnelError::NotConnected)); }
                    Some(Command::Pair { reply, .. }) => { let _ = reply.send(Err(TunnelError::NotConnected)); }
                    Some(Command::EndObr { reply }) => {
                        // In effect here now; sent when the relay is back.
                        if self.begin_end(reply).is_some() {
                            self.end_unconfirmed("the agent is not connected to the relay");
                        }
                    }
                },
            }
        }
    }

    fn fail_in_flight(&mut self) {
        for (_, pending) in self.pending.drain() {
            let _ = pending.reply.send(StatusCode::Other.response());
        }
        self.fail_waiters();
    }

    /// Logins, pairings and an unconfirmed end wait for an answer the old
    /// link will not bring.
    fn fail_waiters(&mut self) {
        for (_, waiter) in self.pairing.drain() {
            let _ = waiter.send(Err(TunnelError::NotConnected));
        }
        for waiter in self.login_waiters.drain(..) {
            let _ = waiter.send(Err(TunnelError::NotConnected));
        }
        self.end_unconfirmed("the connection to the relay was lost");
    }

    fn set_mode(&self, mode: ModeView, connected: bool) {
        self.status.send_modify(|s| {
            if s.mode != mode {
                s.generation += 1;
            }
            s.mode = mode;
            s.connected = connected;
            s.last_error = None;
        });
    }
}

/// The next relay frame, skipping pings; an error says why the link is
/// done (a close with 1012: the relay drains, move on).
async fn next_frame<S>(stream: &mut S) -> Result<relay_frame::Kind, SessionEnd>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match stream.next().await {
            None => return Err(SessionEnd::Lost("relay closed the connection".into())),
            Some(Err(e)) => return Err(SessionEnd::Lost(e.to_string())),
            Some(Ok(Message::Binary(bytes))) => match RelayFrame::decode(bytes.as_ref()) {
                Ok(RelayFrame { kind: Some(kind) }) => return Ok(kind),
                Ok(RelayFrame { kind: None }) => tracing::debug!("empty relay frame"),
                Err(e) => {
                    return Err(SessionEnd::Lost(format!("malformed relay frame: {e}")));
                }
            },
            Some(Ok(Message::Close(Some(frame)))) if frame.code == CloseCode::Restart => {
                return Err(SessionEnd::Moved(frame.reason.to_string()));
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(SessionEnd::Lost(format!(
                    "relay closed the connection: {frame:?}"
                )));
            }
            // Pings are answered by tungstenite; text is not ours.
            Some(Ok(_)) => {}
        }
    }
}

/// Sleep until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// An instant no waiter reaches (about 30 years on).
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

fn encode(kind: agent_frame::Kind) -> Message {
    Message::Binary(AgentFrame { kind: Some(kind) }.encode_to_vec().into())
}

/// Full-jitter exponential backoff: uniform in [0, min(max, base·2^n)].
fn backoff(failures: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32 << failures.min(16))
        .min(BACKOFF_MAX);
    let mut byte = [0u8; 2];
    let fraction = match SystemRandom::new().fill(&mut byte) {
        Ok(()) => f64::from(u16::from_be_bytes(byte)) / f64::from(u16::MAX),
        Err(_) => 1.0,
    };
    ceiling.mul_f64(fraction).max(Duration::from_millis(50))
}

fn tls_connector(ca_file: &Path) -> Result<Connector, SetupError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let err = |reason: String| SetupError::CaFile {
        path: ca_file.display().to_string(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| err(e.to_string()))? {
        roots
            .add(cert.map_err(|e| err(e.to_string()))?)
            .map_err(|e| err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(err("no certificates found".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Connector::Rustls(Arc::new(config)))
}
