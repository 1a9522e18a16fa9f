//! [`run`]: the agent process wired together — the tunnel to the relay,
//! the CTAPHID engine on a HID backend, and the control socket.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;

use crate::control::{ControlError, ControlSocket};
use crate::ctaphid::{self, EngineConfig};
use crate::hid::uhid::{UhidDevice, UhidSerial};
use crate::hid::{HidError, SocketHid};
use crate::tunnel::{SetupError, Tunnel, TunnelConfig, TunnelHandle};

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub tunnel: TunnelConfig,
    /// The `SOCK_SEQPACKET` HID socket CTAPHID clients attach to ([`HidSetup::Socket`]).
    pub hid_socket: PathBuf,
    pub control_socket: PathBuf,
    pub engine: EngineConfig,
}

/// Which HID backend presents the security key.
#[derive(Clone, Debug)]
pub enum HidSetup {
    /// The socket at [`AgentConfig::hid_socket`], for CTAPHID clients and tests.
    Socket,
    /// A USB security key that browsers see, through the kernel's uhid driver.
    Uhid {
        /// The uhid character device, usually [`crate::hid::uhid::DEFAULT_DEVICE`].
        device: PathBuf,
        /// The key's USB serial number; by default [`UhidSerial::for_agent`] of the agent id
        /// from the state file (derived one way, not the id, which the relay knows the agent
        /// by), so it stays the same for one agent installation.
        serial: Option<UhidSerial>,
    },
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
    hid: AgentHid,
    control: ControlSocket,
    engine: EngineConfig,
}

/// The HID backend an [`Agent`] serves CTAPHID on. Its `Display` is what the agent's ready
/// line says about it.
#[derive(Debug)]
pub enum AgentHid {
    Socket(SocketHid),
    Uhid(UhidDevice),
}

impl Agent {
    /// Starts an agent on the HID socket at [`AgentConfig::hid_socket`].
    pub fn start(config: AgentConfig) -> Result<Self, AgentError> {
        Self::start_with(config, HidSetup::Socket)
    }

    /// Starts an agent on the HID backend `hid`.
    pub fn start_with(config: AgentConfig, hid: HidSetup) -> Result<Self, AgentError> {
        let hid = match hid {
            HidSetup::Socket => AgentHid::Socket(SocketHid::bind(&config.hid_socket)?),
            HidSetup::Uhid { device, serial } => {
                let serial = match serial {
                    Some(serial) => serial,
                    None => UhidSerial::for_agent(&Tunnel::agent_id(&config.tunnel)?),
                };
                AgentHid::Uhid(UhidDevice::create(&device, serial).map_err(HidError::from)?)
            }
        };
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

    pub fn hid(&self) -> &AgentHid {
        &self.hid
    }

    /// Serve until `shutdown` resolves or the HID backend fails.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
        let forwarder = self.tunnel.forwarder();
        let control = tokio::spawn(self.control.serve(self.tunnel.clone()));
        let result = match self.hid {
            AgentHid::Socket(hid) => ctaphid::run(hid, forwarder, self.engine, shutdown).await,
            AgentHid::Uhid(hid) => ctaphid::run(hid, forwarder, self.engine, shutdown).await,
        };
        control.abort();
        Ok(result?)
    }
}

impl fmt::Display for AgentHid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Socket(hid) => write!(f, "HID socket {}", hid.path().display()),
            Self::Uhid(hid) => hid.fmt(f),
        }
    }
}
