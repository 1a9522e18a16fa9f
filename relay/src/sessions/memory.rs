//! [`MemoryStore`]: the session store for a single relay process.
//!
//! A mutex over plain maps, with lazily enforced TTLs, and a tokio broadcast
//! channel for events. It gives the same answers as the Redis store (the
//! contract suite checks it), but nothing is shared with other processes.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::{
    AgentEvent, Approval, ApprovalState, DeviceGrant, ObrConflict, ObrSession, Pairing, Principal,
    SessionStore, StoreResult,
};

/// Events buffered per subscriber before a slow one starts losing them.
const EVENT_BUFFER: usize = 1024;
/// How often expired entries are swept out, so that a flood of logins or
/// tokens that nobody reads again cannot grow the maps without bound.
const PURGE_INTERVAL: Duration = Duration::from_secs(10);

pub struct MemoryStore {
    state: Mutex<State>,
    events: broadcast::Sender<AgentEvent>,
}

#[derive(Default)]
struct State {
    tokens: HashMap<String, (Principal, Instant)>,
    grants: HashMap<String, (DeviceGrant, Instant)>,
    agent_logins: HashMap<String, (Principal, Instant)>,
    /// agent id -> session
    obr: HashMap<String, ObrSession>,
    /// user id -> agent id, for every live session
    obr_users: HashMap<String, String>,
    /// (expires_at_ms, agent id) of every live session
    expiring: BTreeSet<(i64, String)>,
    approvals: HashMap<String, (Approval, Instant)>,
    pairings: HashMap<String, (Pairing, Instant)>,
    /// session id -> registrations counted, for every live session
    registrations: HashMap<String, u32>,
    last_purge: Option<Instant>,
}

impl State {
    /// Drop every entry past its TTL (sessions expire through
    /// `claim_expired`, which audits them).
    fn purge_expired(&mut self, now: Instant) {
        self.tokens.retain(|_, (_, until)| *until > now);
        self.grants.retain(|_, (_, until)| *until > now);
        self.agent_logins.retain(|_, (_, until)| *until > now);
        self.approvals.retain(|_, (_, until)| *until > now);
        self.pairings.retain(|_, (_, until)| *until > now);
        self.last_purge = Some(now);
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Self {
            state: Mutex::new(State::default()),
            events,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        // A poisoned lock only means another thread panicked mid-update of
        // plain maps; every update here leaves them consistent, so go on.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if state
            .last_purge
            .is_none_or(|at| now.duration_since(at) >= PURGE_INTERVAL)
        {
            state.purge_expired(now);
        }
        f(&mut state)
    }
}

/// The time from now until `at_ms` (zero if it has passed).
fn remaining(at_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(at_ms.saturating_sub(crate::clock::now_ms())).unwrap_or(0))
}

fn live<T: Clone>(map: &mut HashMap<String, (T, Instant)>, key: &str) -> Option<T> {
    match map.get(key) {
        Some((value, until)) if *until > Instant::now() => Some(value.clone()),
        Some(_) => {
            map.remove(key);
            None
        }
        None => None,
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn put_token(
        &self,
        token_hash: &str,
        principal: &Principal,
        lifetime: Duration,
        idle: Duration,
    ) -> StoreResult<()> {
        self.with(|s| {
            s.tokens.insert(
                token_hash.to_owned(),
                (principal.clone(), Instant::now() + lifetime.min(idle)),
            )
        });
        Ok(())
    }

    async fn touch_token(
        &self,
        token_hash: &str,
        idle: Duration,
        expires_at_ms: i64,
    ) -> StoreResult<bool> {
        let left = remaining(expires_at_ms);
        Ok(self.with(|s| {
            if live(&mut s.tokens, token_hash).is_none() {
                return false;
            }
            if let Some((_, until)) = s.tokens.get_mut(token_hash) {
                *until = Instant::now() + idle.min(left);
            }
            true
        }))
    }

    async fn tokens_of(&self, person_id: &str) -> StoreResult<Vec<(String, Principal)>> {
        Ok(self.with(|s| {
            let now = Instant::now();
            let mut tokens: Vec<(String, Principal)> = s
                .tokens
                .iter()
                .filter(|(_, (p, until))| p.person_id == person_id && *until > now)
                .map(|(hash, (p, _))| (hash.clone(), p.clone()))
                .collect();
            tokens.sort_by_key(|(_, p)| p.session.as_ref().map(|s| s.created_at_ms));
            tokens
        }))
    }

    async fn get_token(&self, token_hash: &str) -> StoreResult<Option<Principal>> {
        Ok(self.with(|s| live(&mut s.tokens, token_hash)))
    }

    async fn delete_token(&self, token_hash: &str) -> StoreResult<bool> {
        Ok(self.with(|s| {
            let was_live = live(&mut s.tokens, token_hash).is_some();
            s.tokens.remove(token_hash);
            was_live
        }))
    }

    async fn put_grant(&self, grant: &DeviceGrant, ttl: Duration) -> StoreResult<()> {
        self.with(|s| {
            s.grants.insert(
                grant.user_code.clone(),
                (grant.clone(), Instant::now() + ttl),
            )
        });
        Ok(())
    }

    async fn take_grant(&self, user_code: &str) -> StoreResult<Option<DeviceGrant>> {
        Ok(self.with(|s| {
            let grant = live(&mut s.grants, user_code);
            s.grants.remove(user_code);
            grant
        }))
    }

    async fn put_agent_login(
        &self,
        agent_id: &str,
        principal: &Principal,
        ttl: Duration,
    ) -> StoreResult<()> {
        self.with(|s| {
            s.agent_logins.insert(
                agent_id.to_owned(),
                (principal.clone(), Instant::now() + ttl),
            )
        });
        Ok(())
    }

    async fn agent_login(&self, agent_id: &str) -> StoreResult<Option<Principal>> {
        Ok(self.with(|s| live(&mut s.agent_logins, agent_id)))
    }

    async fn delete_agent_login(&self, agent_id: &str) -> StoreResult<bool> {
        Ok(self.with(|s| {
            let was_live = live(&mut s.agent_logins, agent_id).is_some();
            s.agent_logins.remove(agent_id);
            was_live
        }))
    }

    async fn agents_of(&self, person_id: &str) -> StoreResult<Vec<String>> {
        Ok(self.with(|s| {
            let now = Instant::now();
            let mut agents: Vec<String> = s
                .agent_logins
                .iter()
                .filter(|(_, (p, until))| p.person_id == person_id && *until > now)
                .map(|(agent, _)| agent.clone())
                .collect();
            agents.sort();
            agents
        }))
    }

    async fn create_obr(&self, session: &ObrSession) -> StoreResult<Result<(), ObrConflict>> {
        Ok(self.with(|s| {
            if s.obr.contains_key(&session.agent_id) {
                return Err(ObrConflict::Agent);
            }
            if s.obr_users.contains_key(&session.user_id) {
                return Err(ObrConflict::User);
            }
            s.obr.insert(session.agent_id.clone(), session.clone());
            s.obr_users
                .insert(session.user_id.clone(), session.agent_id.clone());
            s.expiring
                .insert((session.expires_at_ms, session.agent_id.clone()));
            Ok(())
        }))
    }

    async fn get_obr(&self, agent_id: &str) -> StoreResult<Option<ObrSession>> {
        Ok(self.with(|s| s.obr.get(agent_id).cloned()))
    }

    async fn end_obr(&self, agent_id: &str, session_id: &str) -> StoreResult<Option<ObrSession>> {
        Ok(self.with(|s| {
            if s.obr.get(agent_id).is_none_or(|o| o.id != session_id) {
                return None;
            }
            let session = s.obr.remove(agent_id)?;
            s.expiring
                .remove(&(session.expires_at_ms, session.agent_id.clone()));
            s.obr_users.remove(&session.user_id);
            s.registrations.remove(&session.id);
            Some(session)
        }))
    }

    async fn claim_expired(&self, now_ms: i64) -> StoreResult<Vec<ObrSession>> {
        Ok(self.with(|s| {
            let due: Vec<(i64, String)> = s
                .expiring
                .iter()
                .take_while(|(at, _)| *at <= now_ms)
                .cloned()
                .collect();
            due.into_iter()
                .filter_map(|key| {
                    s.expiring.remove(&key);
                    let session = s.obr.remove(&key.1)?;
                    s.obr_users.remove(&session.user_id);
                    s.registrations.remove(&session.id);
                    Some(session)
                })
                .collect()
        }))
    }

    async fn obr_by_id(&self, session_id: &str) -> StoreResult<Option<ObrSession>> {
        Ok(self.with(|s| s.obr.values().find(|o| o.id == session_id).cloned()))
    }

    async fn start_awaiting_obr(&self, session_id: &str) -> StoreResult<Option<ObrSession>> {
        Ok(self.with(|s| {
            let session = s
                .obr
                .values_mut()
                .find(|o| o.id == session_id && o.awaiting.is_some())?;
            session.awaiting = None;
            Some(session.clone())
        }))
    }

    async fn count_registration(
        &self,
        session: &ObrSession,
        limit: u32,
    ) -> StoreResult<Option<u32>> {
        Ok(self.with(|s| {
            if s.obr
                .get(&session.agent_id)
                .is_none_or(|o| o.id != session.id)
            {
                return None;
            }
            let count = s.registrations.entry(session.id.clone()).or_insert(0);
            if *count >= limit {
                return None;
            }
            *count += 1;
            Some(*count)
        }))
    }

    async fn uncount_registration(&self, session_id: &str) -> StoreResult<()> {
        self.with(|s| {
            if let Some(count) = s.registrations.get_mut(session_id) {
                *count = count.saturating_sub(1);
            }
        });
        Ok(())
    }

    async fn put_pairing(
        &self,
        code_hash: &str,
        pairing: &Pairing,
        ttl: Duration,
    ) -> StoreResult<()> {
        self.with(|s| {
            s.pairings.insert(
                code_hash.to_owned(),
                (pairing.clone(), Instant::now() + ttl),
            )
        });
        Ok(())
    }

    async fn take_pairing(&self, code_hash: &str) -> StoreResult<Option<Pairing>> {
        Ok(self.with(|s| {
            let pairing = live(&mut s.pairings, code_hash);
            s.pairings.remove(code_hash);
            pairing
        }))
    }

    async fn put_approval(&self, approval: &Approval, ttl: Duration) -> StoreResult<()> {
        self.with(|s| {
            s.approvals.insert(
                approval.id.clone(),
                (approval.clone(), Instant::now() + ttl),
            )
        });
        Ok(())
    }

    async fn get_approval(&self, id: &str) -> StoreResult<Option<Approval>> {
        Ok(self.with(|s| live(&mut s.approvals, id)))
    }

    async fn decide_approval(
        &self,
        id: &str,
        person_id: &str,
        approve: bool,
    ) -> StoreResult<Option<Approval>> {
        Ok(self.with(|s| {
            let current = live(&mut s.approvals, id)?;
            if current.person_id != person_id || current.state != ApprovalState::Pending {
                return None;
            }
            let (approval, _) = s.approvals.get_mut(id)?;
            approval.state = if approve {
                ApprovalState::Approved
            } else {
                ApprovalState::Denied
            };
            Some(approval.clone())
        }))
    }

    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn publish(&self, event: &AgentEvent) -> StoreResult<()> {
        // No subscriber is not an error: nobody holds that agent's socket.
        let _ = self.events.send(event.clone());
        Ok(())
    }

    async fn subscribe(&self) -> StoreResult<BoxStream<'static, AgentEvent>> {
        let rx = self.events.subscribe();
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(event) => Some((event, rx)),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(lost = n, "agent event subscriber lagged; resyncing");
                    Some((AgentEvent::Resync, rx))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
        });
        Ok(stream.boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn expired_entries_do_not_pile_up() {
        let store = MemoryStore::new();
        for i in 0..1000 {
            let grant = DeviceGrant {
                user_code: format!("code-{i}"),
                agent_id: "agent".into(),
                created_at_ms: 0,
            };
            store
                .put_grant(&grant, Duration::from_secs(1))
                .await
                .unwrap();
        }
        assert_eq!(store.with(|s| s.grants.len()), 1000);
        tokio::time::advance(PURGE_INTERVAL + Duration::from_secs(1)).await;
        // Any later use sweeps them out, read or not.
        assert_eq!(store.get_token("unrelated").await.unwrap(), None);
        assert_eq!(store.with(|s| s.grants.len()), 0);
    }
}
