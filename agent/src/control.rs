//! The control socket: how `obr-agent status|login|back-to-normal` (or a
//! tray UI, or a deep-link handler) talk to the running agent.
//!
//! A UNIX stream socket, mode 0600 (only the workstation user who runs the
//! agent may drive it). One JSON request line in, one JSON reply line out:
//! `{"cmd":"status"}`, `{"cmd":"login"}`, `{"cmd":"back_to_normal"}`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::status::{AgentStatus, LoginView};
use crate::tunnel::{EndOutcome, TunnelHandle};

/// A request line longer than this is refused.
const MAX_REQUEST: usize = 4096;
/// How long a control client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a pairing waits for the relay's answer.
const PAIR_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum ControlRequest {
    Status,
    Login,
    BackToNormal,
    /// "Open Pairing Tool": the code from the panel's obr:// link.
    Pair {
        code: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ControlReply {
    Status {
        status: AgentStatus,
        display: String,
    },
    Login {
        login: LoginView,
    },
    /// The relay started an OBR session on this agent for `target_user`.
    Paired {
        target_user: String,
    },
    /// Back to normal mode is in effect on the agent; `confirmed` says
    /// whether the relay ended the session too.
    Ended {
        confirmed: bool,
        message: String,
    },
    Error {
        message: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot use control socket {path}: {source}")]
    Bind {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot reach the agent at {path}: {source} (is `obr-agent run` running?)")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("the agent answered badly: {0}")]
    Protocol(String),
}

pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    pub fn bind(path: &Path) -> Result<Self, ControlError> {
        let err = |source| ControlError::Bind {
            path: path.display().to_string(),
            source,
        };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }

    /// Serve control clients forever.
    pub async fn serve(self, tunnel: TunnelHandle) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    let tunnel = tunnel.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve_one(stream, tunnel).await {
                            tracing::debug!(error = %e, "control client failed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve_one(stream: UnixStream, tunnel: TunnelHandle) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64));
    let reply = match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => ControlReply::Error {
            message: format!("no complete request line within {REQUEST_TIMEOUT:?}"),
        },
        Ok(read) => {
            read?;
            match serde_json::from_str::<ControlRequest>(line.trim()) {
                Ok(request) => handle(request, &tunnel).await,
                Err(e) => ControlReply::Error {
                    message: format!("bad request: {e}"),
                },
            }
        }
    };
    let mut out = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await
}

async fn handle(request: ControlRequest, tunnel: &TunnelHandle) -> ControlReply {
    match request {
        ControlRequest::Status => {
            let status = tunnel.status();
            ControlReply::Status {
                display: status.display(),
                status,
            }
        }
        ControlRequest::Login => match tunnel.login().await {
            Ok(pending) => ControlReply::Login {
                login: pending.into(),
            },
            Err(e) => ControlReply::Error {
                message: e.to_string(),
            },
        },
        ControlRequest::Pair { code } => {
            match tokio::time::timeout(PAIR_WAIT, tunnel.pair(&code)).await {
                Ok(Ok(result)) if result.started => ControlReply::Paired {
                    target_user: result.target_user,
                },
                Ok(Ok(result)) => ControlReply::Error {
                    message: result.message,
                },
                Ok(Err(e)) => ControlReply::Error {
                    message: e.to_string(),
                },
                Err(_) => ControlReply::Error {
                    message: format!("the relay did not answer within {} s", PAIR_WAIT.as_secs()),
                },
            }
        }
        ControlRequest::BackToNormal => match tunnel.back_to_normal().await {
            Ok(EndOutcome::Confirmed) => ControlReply::Ended {
                confirmed: true,
                message: String::new(),
            },
            Ok(EndOutcome::Unconfirmed(message)) => ControlReply::Ended {
                confirmed: false,
                message,
            },
            Err(e) => ControlReply::Error {
                message: e.to_string(),
            },
        },
    }
}

/// The client side, for the CLI and tests.
pub async fn request(path: &Path, request: &ControlRequest) -> Result<ControlReply, ControlError> {
    let mut stream = UnixStream::connect(path)
        .await
        .map_err(|source| ControlError::Connect {
            path: path.display().to_string(),
            source,
        })?;
    let mut line =
        serde_json::to_vec(request).map_err(|e| ControlError::Protocol(e.to_string()))?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .await
        .map_err(|e| ControlError::Protocol(e.to_string()))?;
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .await
        .map_err(|e| ControlError::Protocol(e.to_string()))?;
    serde_json::from_str(reply.trim()).map_err(|e| ControlError::Protocol(e.to_string()))
}
