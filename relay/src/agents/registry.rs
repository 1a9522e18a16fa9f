//! [`AgentRegistry`]: agent id → the local actor holding its socket.
//! Only a connection whose agent proved its key (`identity`) is filed.
//!
//! Events reach an agent through the session store's pub/sub, so the pod
//! that changes an OBR session need not be the pod holding the agent's
//! socket. An agent that reconnects replaces its older registration; the
//! older actor's unregistration then leaves the newer one in place.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::sessions::AgentEvent;
use actix::{Message, Recipient};

/// An event for one agent's actor.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct Deliver(pub AgentEvent);

/// A newer connection of the same agent (key) took over: this one closes,
/// so an agent's limits and login checks are never split over sockets.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub struct Replaced;

/// One agent's connection on this pod.
struct Connection {
    number: u64,
    events: Recipient<Deliver>,
    replaced: Recipient<Replaced>,
}

/// agent id → the actor holding its connection
type Local = HashMap<String, Connection>;

#[derive(Clone, Default)]
pub struct AgentRegistry {
    local: Arc<Mutex<Local>>,
}

impl AgentRegistry {
    /// File `connection` as `agent_id`'s; an older connection of the same
    /// agent on this pod is told it was replaced.
    pub fn register(
        &self,
        agent_id: &str,
        connection: u64,
        events: Recipient<Deliver>,
        replaced: Recipient<Replaced>,
    ) {
        let previous = self.lock().insert(
            agent_id.to_owned(),
            Connection {
                number: connection,
                events,
                replaced,
            },
        );
        if let Some(previous) = previous.filter(|p| p.number != connection) {
            previous.replaced.do_send(Replaced);
        }
    }

    pub fn unregister(&self, agent_id: &str, connection: u64) {
        let mut local = self.lock();
        if local.get(agent_id).is_some_and(|c| c.number == connection) {
            local.remove(agent_id);
        }
    }

    pub fn is_connected(&self, agent_id: &str) -> bool {
        self.lock().contains_key(agent_id)
    }

    /// Hand `event` to the local actor of its agent (every local actor for
    /// a resync; none for a person's inbox).
    pub fn deliver(&self, event: AgentEvent) {
        if matches!(event, AgentEvent::InboxChanged { .. }) {
            return;
        }
        let local = self.lock();
        match event.agent_id() {
            Some(agent_id) => {
                if let Some(connection) = local.get(agent_id) {
                    connection.events.do_send(Deliver(event));
                }
            }
            None => {
                for connection in local.values() {
                    connection.events.do_send(Deliver(event.clone()));
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Local> {
        // Only single inserts/removes happen under the lock: never torn.
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }
}
