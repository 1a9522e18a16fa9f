//! The tunnel: the agent's one WebSocket to the relay.
//!
//! [`Tunnel::spawn`] starts a task that connects (TLS via rustls for
//! `wss://`), proves the agent's key ([`identity`]), and then carries frames
//! both ways; on loss it reconnects with jittered exponential backoff.
//! Callers talk to it through [`TunnelHandle`]: CTAP requests (the
//! [`CborForwarder`](crate::ctaphid::CborForwarder) the CTAPHID engine
//! uses), login, and "Back to normal mode". It never parses CTAP: payloads
//! pass through untouched, except that getInfo answers are cached per mode.

mod connection;
mod forwarder;
pub mod identity;

pub use self::connection::{END_OBR_CONFIRM_TIMEOUT, SetupError};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use obr_proto::agent::LoginPending;
use tokio::sync::{mpsc, oneshot, watch};

pub use self::forwarder::TunnelForwarder;
use crate::status::AgentStatus;

pub use obr_proto::ctap::{DEFAULT_CTAP_BUDGET, MAX_CTAP_BUDGET};
/// Commands queued towards the connection task.
const COMMAND_QUEUE: usize = 256;

#[derive(Clone, Debug)]
pub struct TunnelConfig {
    /// The relays, `ws://…/agent/ws` or `wss://…/agent/ws`, tried in turn:
    /// the agent moves to the next when one cannot be reached, fails, or
    /// drains (closes with 1012). At least one.
    pub relays: Vec<String>,
    /// Extra PEM CA certificates to trust for `wss://` (else web PKI roots).
    pub ca_file: Option<PathBuf>,
    /// Where the agent's key pair (and so its id) is kept between runs.
    pub state_file: PathBuf,
    pub ctap_budget: Duration,
}

impl TunnelConfig {
    /// The agent speaks to the relay over TLS, except on this machine
    /// (loopback) or when told `insecure`.
    pub fn check_transport(url: &str, insecure: bool) -> Result<(), TransportError> {
        let parsed = url::Url::parse(url).map_err(|_| TransportError::Scheme(url.to_owned()))?;
        match parsed.scheme() {
            "wss" => Ok(()),
            "ws" if insecure || is_loopback(&parsed) => Ok(()),
            "ws" => Err(TransportError::Plaintext(url.to_owned())),
            _ => Err(TransportError::Scheme(url.to_owned())),
        }
    }

    /// Accept `http(s)://relay` as well as the WebSocket URL itself.
    pub fn normalize_url(relay: &str) -> String {
        let trimmed = relay.trim_end_matches('/');
        let url = if let Some(rest) = trimmed.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = trimmed.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            trimmed.to_owned()
        };
        if url.ends_with("/agent/ws") {
            url
        } else {
            format!("{url}/agent/ws")
        }
    }
}

/// A relay URL the agent will not use.
fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error(
        "refusing to tunnel to {0} unencrypted: use https:// (wss://), or --insecure for a test setup"
    )]
    Plaintext(String),
    #[error("{0} is not a ws:// or wss:// URL")]
    Scheme(String),
}

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("the agent is not connected to the relay")]
    NotConnected,
    #[error("the agent is not logged in")]
    NotLoggedIn,
    #[error("the relay refused: {0}")]
    Refused(String),
    #[error("the agent is shutting down")]
    Stopped,
}

pub(crate) enum Command {
    Ctap {
        id: u64,
        payload: Vec<u8>,
        reply: oneshot::Sender<Vec<u8>>,
        /// What the request's KEEPALIVEs report; the relay may change it.
        status: crate::ctaphid::KeepaliveStatus,
    },
    Cancel {
        id: u64,
    },
    Login {
        reply: oneshot::Sender<Result<LoginPending, TunnelError>>,
    },
    EndObr {
        reply: oneshot::Sender<Result<EndOutcome, TunnelError>>,
    },
    Pair {
        code: String,
        reply: oneshot::Sender<Result<obr_proto::agent::PairResult, TunnelError>>,
    },
}

/// What "Back to normal mode" achieved. Either way the agent no longer
/// acts for the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndOutcome {
    /// The relay ended the session.
    Confirmed,
    /// The relay has not confirmed (why); the agent keeps asking.
    Unconfirmed(String),
}

/// A cheap, cloneable handle on the tunnel task.
#[derive(Clone)]
pub struct TunnelHandle {
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<AgentStatus>,
    /// The relay's budget for each CTAP request (`TunnelConfig`); the
    /// forwarder's own deadline follows it.
    ctap_budget: Duration,
}

pub struct Tunnel;

impl Tunnel {
    /// This agent's id (what the relay knows it by: a hash of its public
    /// key), read from the state file without starting the tunnel; the key
    /// is made when the file does not exist yet.
    pub fn agent_id(config: &TunnelConfig) -> Result<String, SetupError> {
        Ok(identity::AgentKey::load_or_create(&config.state_file)?
            .agent_id()
            .to_owned())
    }

    /// Start the connection task; it runs until every handle is dropped.
    pub fn spawn(config: TunnelConfig) -> Result<TunnelHandle, SetupError> {
        let (commands, rx) = mpsc::channel(COMMAND_QUEUE);
        let (status_tx, status) = watch::channel(AgentStatus::default());
        let ctap_budget = config.ctap_budget;
        let task = connection::Connection::new(config, rx, status_tx)?;
        tokio::spawn(task.run());
        Ok(TunnelHandle {
            commands,
            status,
            ctap_budget,
        })
    }
}

impl TunnelHandle {
    pub fn status(&self) -> AgentStatus {
        self.status.borrow().clone()
    }

    /// Start a device-code login; the relay answers with the code to approve.
    pub async fn login(&self) -> Result<LoginPending, TunnelError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Login { reply })
            .await
            .map_err(|_| TunnelError::Stopped)?;
        rx.await.map_err(|_| TunnelError::Stopped)?
    }

    /// "Back to normal mode": stop acting for the user at once, and end the
    /// OBR session at the relay; says whether the relay confirmed.
    pub async fn back_to_normal(&self) -> Result<EndOutcome, TunnelError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::EndObr { reply })
            .await
            .map_err(|_| TunnelError::Stopped)?;
        rx.await.map_err(|_| TunnelError::Stopped)?
    }

    /// "Open Pairing Tool": hand the relay a pairing code from the panel's
    /// obr:// link; says whom the agent now acts for, or why not.
    pub async fn pair(&self, code: &str) -> Result<obr_proto::agent::PairResult, TunnelError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Pair {
                code: code.to_owned(),
                reply,
            })
            .await
            .map_err(|_| TunnelError::Stopped)?;
        rx.await.map_err(|_| TunnelError::Stopped)?
    }

    /// What the CTAPHID engine forwards requests through, with the budget
    /// this tunnel gives the relay (`--ctap-budget-ms`).
    pub fn forwarder(&self) -> Arc<TunnelForwarder> {
        Arc::new(TunnelForwarder::new(self.clone(), self.ctap_budget))
    }

    pub(crate) fn commands(&self) -> &mpsc::Sender<Command> {
        &self.commands
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_websockets_only_on_this_machine_or_when_told() {
        for url in [
            "wss://relay.example.com/agent/ws",
            "ws://127.0.0.1:8080/agent/ws",
            "ws://127.9.9.9/agent/ws",
            "ws://localhost:8080/agent/ws",
            "ws://[::1]:8080/agent/ws",
        ] {
            assert_eq!(TunnelConfig::check_transport(url, false), Ok(()), "{url}");
        }
        for url in [
            "ws://relay.example.com/agent/ws",
            "ws://10.0.0.7:8080/agent/ws",
            "ws://localhost.example.com/agent/ws",
        ] {
            assert_eq!(
                TunnelConfig::check_transport(url, false),
                Err(TransportError::Plaintext(url.to_owned())),
                "{url}"
            );
            assert_eq!(TunnelConfig::check_transport(url, true), Ok(()), "{url}");
        }
        assert!(matches!(
            TunnelConfig::check_transport("ftp://relay/agent/ws", true),
            Err(TransportError::Scheme(_))
        ));
    }
}
