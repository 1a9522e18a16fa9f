//! The connection task behind [`Tunnel`](super::Tunnel): connect, `Hello`,
//! carry frames, and on loss reconnect with jittered exponential backoff
//! (full jitter: a fleet of agents restarting together does not stampede
//! the relay). Requests in flight when the socket drops are answered with
//! CTAP1_ERR_OTHER — the browser retries — rather than left hanging.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use obr_proto::agent::{
    AgentFrame, CtapCancel, CtapRequest, EndObr, Hello, KeepaliveState, LoginPending, LoginStart,
    ModeKind, RelayFrame, agent_frame, relay_frame,
};
use prost::Message as _;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::{Command, TunnelConfig, TunnelError};
use crate::ctaphid::KeepaliveStatus;
use crate::status::{AgentStatus, LoginView, ModeView};

const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The relay pings every 10 s; this much silence means the link is dead.
const RELAY_SILENCE_LIMIT: Duration = Duration::from_secs(35);
/// DESIGN: tungstenite's default 128 KiB read buffer costs 2x throughput
/// and 20x memory here; frames are at most ~8.6 KiB.
const READ_BUFFER: usize = 4096;
const MAX_MESSAGE: usize = 64 * 1024;
const MAX_WRITE_BUFFER: usize = 256 * 1024;
const CTAP1_ERR_OTHER: u8 = 0x7F;

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot use state file {path}: {reason}")]
    StateFile { path: String, reason: String },
    #[error("cannot load CA certificates from {path}: {reason}")]
    CaFile { path: String, reason: String },
}

/// What survives a restart: who this agent is, and its login token.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct SavedState {
    agent_id: String,
    #[serde(default)]
    token: String,
}

pub(crate) struct Connection {
    config: TunnelConfig,
    commands: mpsc::Receiver<Command>,
    status: watch::Sender<AgentStatus>,
    saved: SavedState,
    connector: Option<Connector>,
    pending: HashMap<u64, (oneshot::Sender<Vec<u8>>, KeepaliveStatus)>,
    login_waiters: Vec<oneshot::Sender<Result<LoginPending, TunnelError>>>,
}

enum SessionEnd {
    Lost(String),
    Stopped,
}

impl Connection {
    pub(crate) fn new(
        config: TunnelConfig,
        commands: mpsc::Receiver<Command>,
        status: watch::Sender<AgentStatus>,
    ) -> Result<Self, SetupError> {
        let saved = load_or_create_state(&config.state_file)?;
        let connector = config.ca_file.as_deref().map(tls_connector).transpose()?;
        status.send_modify(|s| {
            s.agent_id = saved.agent_id.clone();
            s.relay = config.url.clone();
        });
        Ok(Self {
            config,
            commands,
            status,
            saved,
            connector,
            pending: HashMap::new(),
            login_waiters: Vec::new(),
        })
    }

    pub(crate) async fn run(mut self) {
        let mut failures: u32 = 0;
        loop {
            let end = match self.connect().await {
                Ok(socket) => {
                    failures = 0;
                    self.session(socket).await
                }
                Err(e) => SessionEnd::Lost(e),
            };
            self.fail_in_flight();
            match end {
                SessionEnd::Stopped => return,
                SessionEnd::Lost(why) => {
                    tracing::warn!(relay = %self.config.url, %why, "relay link down");
                    self.status.send_modify(|s| {
                        s.connected = false;
                        s.last_error = Some(why);
                    });
                }
            }
            failures = failures.saturating_add(1);
            let pause = backoff(failures);
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
            self.config.url.as_str(),
            Some(config),
            true,
            self.connector.clone(),
        );
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok((socket, _))) => Ok(socket),
            Ok(Err(e)) => Err(format!("cannot connect to {}: {e}", self.config.url)),
            Err(_) => Err(format!("connecting to {} timed out", self.config.url)),
        }
    }

    /// Carry frames until the socket drops or every handle is gone.
    async fn session(&mut self, socket: Socket) -> SessionEnd {
        let (mut sink, mut stream) = socket.split();
        let hello = agent_frame::Kind::Hello(Hello {
            agent_id: self.saved.agent_id.clone(),
            token: self.saved.token.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        });
        if let Err(e) = sink.send(encode(hello)).await {
            return SessionEnd::Lost(e.to_string());
        }
        loop {
            tokio::select! {
                incoming = tokio::time::timeout(RELAY_SILENCE_LIMIT, stream.next()) => {
                    let message = match incoming {
                        Err(_) => return SessionEnd::Lost("relay silent for too long".into()),
                        Ok(None) => return SessionEnd::Lost("relay closed the connection".into()),
                        Ok(Some(Err(e))) => return SessionEnd::Lost(e.to_string()),
                        Ok(Some(Ok(m))) => m,
                    };
                    match message {
                        Message::Binary(bytes) => match RelayFrame::decode(bytes.as_ref()) {
                            Ok(RelayFrame { kind: Some(kind) }) => self.on_frame(kind),
                            Ok(RelayFrame { kind: None }) => tracing::debug!("empty relay frame"),
                            Err(e) => return SessionEnd::Lost(format!("malformed relay frame: {e}")),
                        },
                        Message::Close(frame) => {
                            return SessionEnd::Lost(format!("relay closed the connection: {frame:?}"));
                        }
                        // Pings are answered by tungstenite; text is not ours.
                        _ => {}
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
            }
        }
    }

    fn on_frame(&mut self, frame: relay_frame::Kind) {
        match frame {
            relay_frame::Kind::Welcome(welcome) => {
                let mode = welcome.mode.unwrap_or_default();
                if mode.kind == ModeKind::NotLoggedIn as i32 && !self.saved.token.is_empty() {
                    tracing::info!("saved login is no longer valid; log in again");
                    self.saved.token.clear();
                    self.persist();
                }
                self.set_mode(ModeView::from(&mode), true);
            }
            relay_frame::Kind::LoginPending(pending) => {
                self.status
                    .send_modify(|s| s.login = Some(LoginView::from(pending.clone())));
                for waiter in self.login_waiters.drain(..) {
                    let _ = waiter.send(Ok(pending.clone()));
                }
            }
            relay_frame::Kind::ModeChanged(changed) => {
                if !changed.token.is_empty() {
                    self.saved.token = changed.token;
                    self.persist();
                    self.status.send_modify(|s| s.login = None);
                }
                let mode = changed.mode.unwrap_or_default();
                tracing::info!(mode = %ModeView::from(&mode).display(), "mode changed");
                self.set_mode(ModeView::from(&mode), true);
            }
            relay_frame::Kind::CtapResponse(response) => {
                if let Some((waiter, _)) = self.pending.remove(&response.id) {
                    let _ = waiter.send(response.payload);
                }
            }
            relay_frame::Kind::CtapStatus(update) => {
                if let Some((_, status)) = self.pending.get(&update.id) {
                    match KeepaliveState::try_from(update.state) {
                        Ok(KeepaliveState::UserPresenceNeeded) => status.user_presence_needed(),
                        _ => status.processing(),
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
                self.pending.insert(id, (reply, status));
                Some(agent_frame::Kind::CtapRequest(CtapRequest {
                    id,
                    payload,
                    budget_ms: u32::try_from(self.config.ctap_budget.as_millis())
                        .unwrap_or(u32::MAX),
                }))
            }
            Command::Cancel { id } => self
                .pending
                .remove(&id)
                .map(|_| agent_frame::Kind::CtapCancel(CtapCancel { id })),
            Command::Login { reply } => {
                self.login_waiters.push(reply);
                Some(agent_frame::Kind::LoginStart(LoginStart {}))
            }
            Command::EndObr { reply } => {
                let in_obr = matches!(self.status.borrow().mode, ModeView::Obr { .. });
                if in_obr {
                    let _ = reply.send(Ok(()));
                    Some(agent_frame::Kind::EndObr(EndObr {}))
                } else {
                    let _ = reply.send(Err(TunnelError::Refused(
                        "no on-behalf registration in progress".into(),
                    )));
                    None
                }
            }
        }
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
                    Some(Command::Ctap { reply, .. }) => { let _ = reply.send(vec![CTAP1_ERR_OTHER]); }
                    Some(Command::Cancel { .. }) => {}
                    Some(Command::Login { reply }) => { let _ = reply.send(Err(TunnelError::NotConnected)); }
                    Some(Command::EndObr { reply }) => { let _ = reply.send(Err(TunnelError::NotConnected)); }
                },
            }
        }
    }

    fn fail_in_flight(&mut self) {
        for (_, (waiter, _)) in self.pending.drain() {
            let _ = waiter.send(vec![CTAP1_ERR_OTHER]);
        }
        for waiter in self.login_waiters.drain(..) {
            let _ = waiter.send(Err(TunnelError::NotConnected));
        }
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

    fn persist(&self) {
        if let Err(e) = save_state(&self.config.state_file, &self.saved) {
            tracing::warn!(error = %e, "cannot save the agent's login");
        }
    }
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

/// This agent's id, from the state file at `path`, which is created (with a new id) when it
/// does not exist yet.
pub(crate) fn agent_id(path: &Path) -> Result<String, SetupError> {
    load_or_create_state(path).map(|state| state.agent_id)
}

fn load_or_create_state(path: &Path) -> Result<SavedState, SetupError> {
    let err = |reason: String| SetupError::StateFile {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| err(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let state = SavedState {
                agent_id: uuid::Uuid::new_v4().simple().to_string(),
                token: String::new(),
            };
            save_state(path, &state).map_err(|e| err(e.to_string()))?;
            Ok(state)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

fn save_state(path: &Path, state: &SavedState) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&serde_json::to_vec_pretty(state)?)?;
    file.sync_all()?;
    std::fs::rename(tmp, path)
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
