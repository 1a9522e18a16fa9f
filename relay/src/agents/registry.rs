//! [`AgentRegistry`]: agent id → the local actor holding its socket.
//! Only a connection whose agent proved its key (`identity`) is filed.
//!
//! Events reach an agent through the session store's pub/sub, so the pod
//! that changes an OBR session need not be the pod holding the agent's
//! socket. An agent that reconnects replaces its older registration; the
//! older actor's unregistration then leaves the newer one in place.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ring::rand::{SecureRandom, SystemRandom};

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

/// This relay is going away: once nothing of the agent's is in flight,
/// close with 1012 so that it reconnects to another relay.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub struct Drain;

/// One agent's connection on this pod.
struct Connection {
    number: u64,
    events: Recipient<Deliver>,
    replaced: Recipient<Replaced>,
    drain: Recipient<Drain>,
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
        drain: Recipient<Drain>,
    ) {
        let previous = self.lock().insert(
            agent_id.to_owned(),
            Connection {
                number: connection,
                events,
                replaced,
                drain,
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

    /// Agents with a socket on this pod.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// Tell every local agent to move to another relay, spread over
    /// `spread` in [`DRAIN_BATCHES`] batches in random order, so that they
    /// do not all land on the other relays in the same instant.
    pub async fn drain(&self, spread: std::time::Duration) {
        let mut agents: Vec<Recipient<Drain>> =
            self.lock().values().map(|c| c.drain.clone()).collect();
        shuffle(&mut agents);
        let batch = agents.len().div_ceil(DRAIN_BATCHES).max(1);
        let pause = spread / u32::try_from(DRAIN_BATCHES).unwrap_or(1);
        for (n, chunk) in agents.chunks(batch).enumerate() {
            if n > 0 {
                tokio::time::sleep(pause).await;
            }
            for agent in chunk {
                agent.do_send(Drain);
            }
        }
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

/// Batches a drain is spread over.
pub const DRAIN_BATCHES: usize = 10;

/// Fisher-Yates with the system's randomness (a failed read leaves the
/// order as it is: the spread still holds, only not shuffled).
fn shuffle<T>(items: &mut [T]) {
    let rng = SystemRandom::new();
    for i in (1..items.len()).rev() {
        let mut bytes = [0u8; 8];
        if rng.fill(&mut bytes).is_err() {
            return;
        }
        let j = usize::try_from(u64::from_le_bytes(bytes) % (i as u64 + 1)).unwrap_or(0);
        items.swap(i, j);
    }
}
