//! Agents: the WebSocket tunnel from each admin workstation.
//!
//! - [`identity`]: the challenge an agent signs with its key; an agent is
//!   known by nothing else.
//! - [`session`]: the [`AgentSession`] actor, one per connected agent,
//!   that speaks the `obr.agent.v1` frames and hands CTAP requests to
//!   [`crate::calls`].
//! - [`registry`]: which agents have a socket on *this* pod, and the pump
//!   that delivers [`AgentEvent`](crate::sessions::AgentEvent)s from the
//!   session store (published by any pod) to them.

pub mod identity;
pub mod registry;
pub mod session;

pub use self::registry::AgentRegistry;
pub use self::session::agent_socket;
