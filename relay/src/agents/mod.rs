//! Agents: the WebSocket tunnel from each admin workstation.
//!
//! - [`session`]: the [`AgentSession`] actor, one per connected agent,
//!   that speaks the `obr.agent.v1` frames and routes CTAP requests.
//! - `approval`: in normal mode, asking the key's owner to approve a call
//!   on their device while the browser hears "user presence needed".
//! - [`registry`]: which agents have a socket on *this* pod, and the pump
//!   that delivers [`AgentEvent`](crate::sessions::AgentEvent)s from the
//!   session store (published by any pod) to them.

mod approval;
pub mod registry;
pub mod session;

pub use self::registry::AgentRegistry;
pub use self::session::agent_socket;
