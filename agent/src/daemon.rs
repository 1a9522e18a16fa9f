//! [`run`]: the agent process wired together — the tunnel to the relay,
//! the CTAPHID engine on a HID backend, and the control socket.

use std::future::Future;
use std::path::PathBuf;

use crate::control::{ControlError, ControlSocket};
use crate::ctaphid::{self, EngineConfig};
use crate::hid::{HidError, SocketHid};
use crate::tunnel::{SetupError, Tunnel, TunnelConfig, TunnelHandle};

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub tunnel: TunnelConfig,
    /// The `SOCK_SEQPACKET` HID socket CTAPHID clients attach to.
    pub hid_socket: PathBuf,
    pub control_socket: PathBuf,
    pub engine: EngineConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    Hid(#[from] HidError),
    #[error(transparent)]
    Control(#[from] ControlError),
}

/// A started agent: its sockets are bound and the tunnel is connecting.
pub struct Agent {
    tunnel: TunnelHandle,
    hid: SocketHid,
    control: ControlSocket,
    engine: EngineConfig,
}

impl Agent {
    pub fn start(config: AgentConfig) -> Result<Self, AgentError> {
        let hid = SocketHid::bind(&config.hid_socket)?;
        let control = ControlSocket::bind(&config.control_socket)?;
        let tunnel = Tunnel::spawn(config.tunnel)?;
        Ok(Self {
            tunnel,
            hid,
            control,
            engine: config.engine,
        })
    }

    pub fn tunnel(&self) -> &TunnelHandle {
        &self.tunnel
    }

    /// Serve until `shutdown` resolves or the HID backend fails.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
        let forwarder = self.tunnel.forwarder(crate::tunnel::DEFAULT_CTAP_BUDGET);
        let control = tokio::spawn(self.control.serve(self.tunnel.clone()));
        let result = ctaphid::run(self.hid, forwarder, self.engine, shutdown).await;
        control.abort();
        Ok(result?)
    }
}
