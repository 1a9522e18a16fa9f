//! [`RedisStore`]: the session store shared by every relay pod.
//!
//! Layout (all keys under a configurable prefix, all with TTLs):
//! - `token:{hash}`, `grant:{code}`, `agent:{id}`, `pairing:{hash}` — JSON values;
//! - `agents_of:{person}` — a set of agent ids (members checked against
//!   `agent:{id}` on read, so a stale member is harmless), and
//!   `tokens_of:{person}` of token hashes, likewise;
//! - `obr:agent:{agent}` and `obr:user:{user}` → session id (one session
//!   per agent and per user), `obr:session:{id}` → JSON, and the
//!   sorted set `obr:expiring` (score = expires_at_ms) that the sweeper
//!   claims from. Multi-key changes are Lua scripts, so each is atomic.
//! - `obr:registrations:{session}` — passkeys counted against a session's
//!   limit (a plain counter: a Redis writer who resets it gets more
//!   registrations, each still audited and notified);
//! - events are published on the `events` channel.
//!
//! Every value and event is sealed ([`super::seal`]): a MAC under the
//! deployment's cluster key, bound to its key or channel. What does not
//! verify is dropped and logged, so a Redis writer cannot grant power.
//!
//! Connections: one `ConnectionManager` (multiplexed, reconnects by itself)
//! and one pub/sub connection per subscriber, re-established on loss.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use obr_signer::RedisEndpoint;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

use super::seal::{Forged, Sealer, unverified_json};
use super::{
    AgentEvent, Approval, ApprovalState, DeviceGrant, EXPIRED_SESSION_GRACE, ObrConflict,
    ObrSession, Pairing, Principal, SessionStore, StoreError, StoreResult,
};
use crate::clock::now_ms;

/// Bound on every Redis round trip; the relay answers 503 past it.
pub const DEFAULT_REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause before re-subscribing after the pub/sub connection was lost.
const RESUBSCRIBE_BACKOFF: Duration = Duration::from_millis(500);
/// How long a published event stays valid (a replay later is dropped).
const EVENT_LIFETIME: Duration = Duration::from_secs(60);
/// Sessions claimed per sweep; the sweeper runs again soon after.
const CLAIM_BATCH: usize = 100;

const CREATE_OBR: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 'agent' end
if redis.call('EXISTS', KEYS[4]) == 1 then return 'user' end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[4])
redis.call('SET', KEYS[4], ARGV[1], 'PX', ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return 'created'
"#;

const GET_OBR: &str = r#"
local id = redis.call('GET', KEYS[1])
if not id then return false end
return redis.call('GET', ARGV[1] .. id)
"#;

const END_OBR: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
local session = redis.call('GET', KEYS[2])
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
local dot = session and string.find(session, '.', 1, true)
dot = dot and string.find(session, '.', dot + 1, true)
local ok, decoded = false, nil
if dot then ok, decoded = pcall(cjson.decode, string.sub(session, dot + 1)) end
if ok and type(decoded) == 'table' and type(decoded['user_id']) == 'string' then
  local ukey = ARGV[2] .. 'obr:user:' .. decoded['user_id']
  if redis.call('GET', ukey) == ARGV[1] then redis.call('DEL', ukey) end
end
return session
"#;

const CLAIM_EXPIRED: &str = r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  if redis.call('ZREM', KEYS[1], id) == 1 then
    local skey = ARGV[2] .. 'obr:session:' .. id
    local session = redis.call('GET', skey)
    if session then
      redis.call('DEL', skey)
      -- Sealed values are "tag.expiry.json"; a forged one may not decode:
      -- skip its pointers, and let the relay drop it (it checks the seal).
      local dot = string.find(session, '.', 1, true)
      dot = dot and string.find(session, '.', dot + 1, true)
      local ok, decoded = false, nil
      if dot then ok, decoded = pcall(cjson.decode, string.sub(session, dot + 1)) end
      if ok and type(decoded) == 'table' then
        if type(decoded['agent_id']) == 'string' then
          local akey = ARGV[2] .. 'obr:agent:' .. decoded['agent_id']
          if redis.call('GET', akey) == id then redis.call('DEL', akey) end
        end
        if type(decoded['user_id']) == 'string' then
          local ukey = ARGV[2] .. 'obr:user:' .. decoded['user_id']
          if redis.call('GET', ukey) == id then redis.call('DEL', ukey) end
        end
      end
      table.insert(out, session)
    end
  end
end
return out
"#;

/// Count a registration in a live session (KEYS[2]) below the limit
/// (ARGV[1]); the counter lives as long as the session (ARGV[2] ms).
const COUNT_REGISTRATION: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if n > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return -1
end
return n
"#;

const UNCOUNT_REGISTRATION: &str = r#"
if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then redis.call('DECR', KEYS[1]) end
return 1
"#;

/// Replace a value only if it is still what was read (KEEPTTL): the
/// decision is made and sealed in Rust, never by rewriting JSON in Lua.
const COMPARE_AND_SET: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 1
"#;

#[derive(Clone)]
pub struct RedisStore {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    sealer: Arc<Sealer>,
}

impl RedisStore {
    /// Connect to `redis` (`redis://host:port/db`, or `rediss://` with its
    /// TLS files); keys are namespaced under `prefix` so several
    /// deployments (or test runs) can share a server.
    pub async fn connect(redis: &RedisEndpoint, prefix: &str, sealer: Sealer) -> StoreResult<Self> {
        let client = redis
            .client()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(DEFAULT_REDIS_RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(DEFAULT_REDIS_CONNECT_TIMEOUT));
        let conn = client.get_connection_manager_with_config(config).await?;
        Ok(Self {
            client,
            conn,
            prefix: prefix.to_owned(),
            sealer: Arc::new(sealer),
        })
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut key = self.prefix.clone();
        key.push_str(&parts.concat());
        key
    }

    async fn put_json<T: serde::Serialize>(
        &self,
        key: String,
        value: &T,
        ttl: Duration,
    ) -> StoreResult<()> {
        let expires = now_ms().saturating_add(i64::try_from(ttl_ms(ttl)).unwrap_or(i64::MAX));
        let sealed = self
            .sealer
            .seal(&key, &serde_json::to_string(value)?, expires);
        let mut conn = self.conn.clone();
        let _: () = conn.pset_ex(key, sealed, ttl_ms(ttl)).await?;
        Ok(())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: String,
    ) -> StoreResult<Option<T>> {
        let mut conn = self.conn.clone();
        let sealed: Option<String> = conn.get(&key).await?;
        sealed.map_or(Ok(None), |s| self.open(&key, &s, now_ms()))
    }

    /// The value sealed for `key`, unexpired at `now_ms`; a forged or
    /// expired one is logged and read as absent (fail closed).
    fn open<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        sealed: &str,
        now_ms: i64,
    ) -> StoreResult<Option<T>> {
        match self.sealer.open(key, sealed, now_ms) {
            Ok((json, _)) => Ok(Some(serde_json::from_str(json)?)),
            Err(Forged) => {
                tracing::warn!(key, "dropped a Redis value the cluster key did not seal");
                Ok(None)
            }
        }
    }

    /// A sealed OBR session, checked against the key it says it lives at
    /// and its seal's expiry at `now_ms`; `agent_id`, when given, must be
    /// the session's.
    fn open_session(
        &self,
        sealed: &str,
        agent_id: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<Option<ObrSession>> {
        let Ok(json) = unverified_json(sealed) else {
            tracing::warn!("dropped an unsealed OBR session from Redis");
            return Ok(None);
        };
        let claimed: ObrSession = match serde_json::from_str(json) {
            Ok(session) => session,
            Err(e) => {
                tracing::warn!(error = %e, "dropped a malformed OBR session from Redis");
                return Ok(None);
            }
        };
        let key = self.key(&["obr:session:", &claimed.id]);
        let session: Option<ObrSession> = self.open(&key, sealed, now_ms)?;
        Ok(session.filter(|s| {
            let matches = agent_id.is_none_or(|agent| s.agent_id == agent);
            if !matches {
                tracing::warn!(session = %s.id, "dropped an OBR session filed under another agent");
            }
            matches
        }))
    }
}

impl RedisStore {
    /// Change the sealed value at `key` with `change` (which says whether
    /// it changed anything), sealed again with its expiry, if nobody changed
    /// it meanwhile (compare-and-set); the new value, or `None` when it is
    /// absent, forged, unchanged, or lost a race (another decision, an end,
    /// its expiry). The decision is made and sealed here, never by
    /// rewriting JSON in Lua.
    async fn update_sealed<T>(
        &self,
        key: &str,
        change: impl FnOnce(&mut T) -> bool,
    ) -> StoreResult<Option<T>>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        let mut conn = self.conn.clone();
        let Some(sealed): Option<String> = conn.get(key).await? else {
            return Ok(None);
        };
        let Ok((json, expires)) = self.sealer.open(key, &sealed, now_ms()) else {
            tracing::warn!(key, "dropped a Redis value the cluster key did not seal");
            return Ok(None);
        };
        let mut value: T = serde_json::from_str(json)?;
        if !change(&mut value) {
            return Ok(None);
        }
        let changed = self
            .sealer
            .seal(key, &serde_json::to_string(&value)?, expires);
        let swapped: i64 = Script::new(COMPARE_AND_SET)
            .key(key)
            .arg(&sealed)
            .arg(&changed)
            .invoke_async(&mut conn)
            .await?;
        Ok((swapped == 1).then_some(value))
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[async_trait]
impl SessionStore for RedisStore {
    /// (The seal expires with `lifetime`; the key with `idle`, extended by
    /// each touch. `tokens_of:{person}` lists the token for its owner.)
    async fn put_token(
        &self,
        token_hash: &str,
        principal: &Principal,
        lifetime: Duration,
        idle: Duration,
    ) -> StoreResult<()> {
        let key = self.key(&["token:", token_hash]);
        let expires = now_ms().saturating_add(i64::try_from(ttl_ms(lifetime)).unwrap_or(i64::MAX));
        let sealed = self
            .sealer
            .seal(&key, &serde_json::to_string(principal)?, expires);
        let set = self.key(&["tokens_of:", &principal.person_id]);
        let mut conn = self.conn.clone();
        let _: () = redis::pipe()
            .atomic()
            .pset_ex(&key, sealed, ttl_ms(lifetime.min(idle)))
            .sadd(&set, token_hash)
            .pexpire(&set, i64::try_from(ttl_ms(lifetime)).unwrap_or(i64::MAX))
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn touch_token(
        &self,
        token_hash: &str,
        idle: Duration,
        expires_at_ms: i64,
    ) -> StoreResult<bool> {
        let left = u64::try_from(expires_at_ms.saturating_sub(now_ms())).unwrap_or(0);
        let ttl = ttl_ms(idle).min(left).max(1);
        let mut conn = self.conn.clone();
        let touched: bool = conn
            .pexpire(
                self.key(&["token:", token_hash]),
                i64::try_from(ttl).unwrap_or(i64::MAX),
            )
            .await?;
        Ok(touched)
    }

    async fn tokens_of(&self, person_id: &str) -> StoreResult<Vec<(String, Principal)>> {
        let mut conn = self.conn.clone();
        let set = self.key(&["tokens_of:", person_id]);
        let members: Vec<String> = conn.smembers(&set).await?;
        let mut live = Vec::with_capacity(members.len());
        for hash in members {
            match self.get_token(&hash).await? {
                Some(p) if p.person_id == person_id => live.push((hash, p)),
                _ => {
                    let _: () = conn.srem(&set, &hash).await?;
                }
            }
        }
        live.sort_by_key(|(_, p)| p.session.as_ref().map(|s| s.created_at_ms));
        Ok(live)
    }

    async fn get_token(&self, token_hash: &str) -> StoreResult<Option<Principal>> {
        self.get_json(self.key(&["token:", token_hash])).await
    }

    async fn delete_token(&self, token_hash: &str) -> StoreResult<bool> {
        let mut conn = self.conn.clone();
        let deleted: u64 = conn.del(self.key(&["token:", token_hash])).await?;
        Ok(deleted == 1)
    }

    async fn put_grant(&self, grant: &DeviceGrant, ttl: Duration) -> StoreResult<()> {
        self.put_json(self.key(&["grant:", &grant.user_code]), grant, ttl)
            .await
    }

    async fn take_grant(&self, user_code: &str) -> StoreResult<Option<DeviceGrant>> {
        let key = self.key(&["grant:", user_code]);
        let mut conn = self.conn.clone();
        let sealed: Option<String> = conn.get_del(&key).await?;
        sealed.map_or(Ok(None), |s| self.open(&key, &s, now_ms()))
    }

    async fn put_agent_login(
        &self,
        agent_id: &str,
        principal: &Principal,
        ttl: Duration,
    ) -> StoreResult<()> {
        self.put_json(self.key(&["agent:", agent_id]), principal, ttl)
            .await?;
        let set = self.key(&["agents_of:", &principal.person_id]);
        let mut conn = self.conn.clone();
        let _: () = redis::pipe()
            .atomic()
            .sadd(&set, agent_id)
            .pexpire(&set, i64::try_from(ttl_ms(ttl)).unwrap_or(i64::MAX))
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn agent_login(&self, agent_id: &str) -> StoreResult<Option<Principal>> {
        self.get_json(self.key(&["agent:", agent_id])).await
    }

    /// (`agents_of` drops the agent from its owner's set when it next reads it.)
    async fn delete_agent_login(&self, agent_id: &str) -> StoreResult<bool> {
        let mut conn = self.conn.clone();
        let deleted: u64 = conn.del(self.key(&["agent:", agent_id])).await?;
        Ok(deleted == 1)
    }

    async fn agents_of(&self, person_id: &str) -> StoreResult<Vec<String>> {
        let mut conn = self.conn.clone();
        let set = self.key(&["agents_of:", person_id]);
        let members: Vec<String> = conn.smembers(&set).await?;
        let mut live = Vec::with_capacity(members.len());
        for agent in members {
            match self.agent_login(&agent).await? {
                Some(p) if p.person_id == person_id => live.push(agent),
                _ => {
                    let _: () = conn.srem(&set, &agent).await?;
                }
            }
        }
        live.sort();
        Ok(live)
    }

    async fn create_obr(&self, session: &ObrSession) -> StoreResult<Result<(), ObrConflict>> {
        let ttl = Duration::from_millis(
            u64::try_from(session.expires_at_ms - session.started_at_ms).unwrap_or(0),
        ) + EXPIRED_SESSION_GRACE;
        let mut conn = self.conn.clone();
        let outcome: String = Script::new(CREATE_OBR)
            .key(self.key(&["obr:agent:", &session.agent_id]))
            .key(self.key(&["obr:session:", &session.id]))
            .key(self.key(&["obr:expiring"]))
            .key(self.key(&["obr:user:", &session.user_id]))
            .arg(&session.id)
            .arg(
                self.sealer.seal(
                    &self.key(&["obr:session:", &session.id]),
                    &serde_json::to_string(session)?,
                    session
                        .expires_at_ms
                        .saturating_add(crate::directory::duration_ms(EXPIRED_SESSION_GRACE)),
                ),
            )
            .arg(session.expires_at_ms)
            .arg(ttl_ms(ttl))
            .invoke_async(&mut conn)
            .await?;
        match outcome.as_str() {
            "created" => Ok(Ok(())),
            "agent" => Ok(Err(ObrConflict::Agent)),
            "user" => Ok(Err(ObrConflict::User)),
            other => Err(StoreError::Corrupt(format!(
                "create_obr answered {other:?}"
            ))),
        }
    }

    async fn get_obr(&self, agent_id: &str) -> StoreResult<Option<ObrSession>> {
        let mut conn = self.conn.clone();
        let sealed: Option<String> = Script::new(GET_OBR)
            .key(self.key(&["obr:agent:", agent_id]))
            .arg(self.key(&["obr:session:"]))
            .invoke_async(&mut conn)
            .await?;
        sealed.map_or(Ok(None), |s| {
            self.open_session(&s, Some(agent_id), now_ms())
        })
    }

    async fn end_obr(&self, agent_id: &str, session_id: &str) -> StoreResult<Option<ObrSession>> {
        let mut conn = self.conn.clone();
        let sealed: Option<String> = Script::new(END_OBR)
            .key(self.key(&["obr:agent:", agent_id]))
            .key(self.key(&["obr:session:", session_id]))
            .key(self.key(&["obr:expiring"]))
            .arg(session_id)
            .arg(&self.prefix)
            .invoke_async(&mut conn)
            .await?;
        sealed.map_or(Ok(None), |s| {
            self.open_session(&s, Some(agent_id), now_ms())
        })
    }

    async fn obr_by_id(&self, session_id: &str) -> StoreResult<Option<ObrSession>> {
        let mut conn = self.conn.clone();
        let sealed: Option<String> = conn.get(self.key(&["obr:session:", session_id])).await?;
        sealed.map_or(Ok(None), |s| self.open_session(&s, None, now_ms()))
    }

    async fn start_awaiting_obr(&self, session_id: &str) -> StoreResult<Option<ObrSession>> {
        let key = self.key(&["obr:session:", session_id]);
        self.update_sealed(&key, |session: &mut ObrSession| {
            session.awaiting.take().is_some()
        })
        .await
    }

    async fn count_registration(
        &self,
        session: &ObrSession,
        limit: u32,
    ) -> StoreResult<Option<u32>> {
        let lives = Duration::from_millis(
            u64::try_from(session.expires_at_ms.saturating_sub(now_ms())).unwrap_or(0),
        ) + EXPIRED_SESSION_GRACE;
        let mut conn = self.conn.clone();
        let count: i64 = Script::new(COUNT_REGISTRATION)
            .key(self.key(&["obr:registrations:", &session.id]))
            .key(self.key(&["obr:session:", &session.id]))
            .arg(limit)
            .arg(ttl_ms(lives))
            .invoke_async(&mut conn)
            .await?;
        Ok(u32::try_from(count).ok())
    }

    async fn uncount_registration(&self, session_id: &str) -> StoreResult<()> {
        let mut conn = self.conn.clone();
        let _: i64 = Script::new(UNCOUNT_REGISTRATION)
            .key(self.key(&["obr:registrations:", session_id]))
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn claim_expired(&self, now_ms: i64) -> StoreResult<Vec<ObrSession>> {
        let mut conn = self.conn.clone();
        let sessions: Vec<String> = Script::new(CLAIM_EXPIRED)
            .key(self.key(&["obr:expiring"]))
            .arg(now_ms)
            .arg(&self.prefix)
            .arg(CLAIM_BATCH)
            .invoke_async(&mut conn)
            .await?;
        let mut claimed = Vec::with_capacity(sessions.len());
        for sealed in &sessions {
            // The sweeper's clock: what it claims expired must still open.
            claimed.extend(self.open_session(sealed, None, now_ms)?);
        }
        Ok(claimed)
    }

    async fn put_pairing(
        &self,
        code_hash: &str,
        pairing: &Pairing,
        ttl: Duration,
    ) -> StoreResult<()> {
        self.put_json(self.key(&["pairing:", code_hash]), pairing, ttl)
            .await
    }

    async fn take_pairing(&self, code_hash: &str) -> StoreResult<Option<Pairing>> {
        let key = self.key(&["pairing:", code_hash]);
        let mut conn = self.conn.clone();
        let sealed: Option<String> = conn.get_del(&key).await?;
        sealed.map_or(Ok(None), |s| self.open(&key, &s, now_ms()))
    }

    async fn put_approval(&self, approval: &Approval, ttl: Duration) -> StoreResult<()> {
        self.put_json(self.key(&["approval:", &approval.id]), approval, ttl)
            .await
    }

    async fn get_approval(&self, id: &str) -> StoreResult<Option<Approval>> {
        self.get_json(self.key(&["approval:", id])).await
    }

    async fn decide_approval(
        &self,
        id: &str,
        person_id: &str,
        approve: bool,
    ) -> StoreResult<Option<Approval>> {
        let key = self.key(&["approval:", id]);
        self.update_sealed(&key, |approval: &mut Approval| {
            if approval.person_id != person_id || approval.state != ApprovalState::Pending {
                return false;
            }
            approval.state = if approve {
                ApprovalState::Approved
            } else {
                ApprovalState::Denied
            };
            true
        })
        .await
    }

    async fn publish(&self, event: &AgentEvent) -> StoreResult<()> {
        let mut conn = self.conn.clone();
        let channel = self.key(&["events"]);
        let sealed = self.sealer.seal(
            &channel,
            &serde_json::to_string(event)?,
            now_ms().saturating_add(crate::directory::duration_ms(EVENT_LIFETIME)),
        );
        let _: i64 = conn.publish(&channel, sealed).await?;
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    async fn subscribe(&self) -> StoreResult<BoxStream<'static, AgentEvent>> {
        let channel = self.key(&["events"]);
        // Subscribe once now so that events published after this call
        // returns are never missed; later losses re-subscribe.
        let first = subscribe_once(&self.client, &channel).await?;
        let client = self.client.clone();
        let sealer = self.sealer.clone();
        let stream = futures_util::stream::unfold(
            (Some(first), client, channel),
            move |(mut current, client, channel)| {
                let sealer = sealer.clone();
                async move {
                    loop {
                        if let Some(messages) = current.as_mut() {
                            match messages.next().await {
                                Some(msg) => {
                                    let payload = String::from_utf8_lossy(msg.get_payload_bytes());
                                    let Ok((json, _)) = sealer.open(&channel, &payload, now_ms())
                                    else {
                                        tracing::warn!(
                                            "dropped an agent event the cluster key did not seal"
                                        );
                                        continue;
                                    };
                                    match serde_json::from_str::<AgentEvent>(json) {
                                        Ok(AgentEvent::Resync) => {
                                            tracing::warn!(
                                                "dropped a published Resync (never published)"
                                            );
                                        }
                                        Ok(event) => {
                                            return Some((event, (current, client, channel)));
                                        }
                                        Err(e) => {
                                            tracing::warn!(error = %e, "malformed agent event")
                                        }
                                    }
                                    continue;
                                }
                                None => {
                                    tracing::warn!("redis pub/sub connection lost; re-subscribing");
                                    current = None;
                                }
                            }
                        }
                        tokio::time::sleep(RESUBSCRIBE_BACKOFF).await;
                        match subscribe_once(&client, &channel).await {
                            Ok(s) => {
                                // Whatever was published while we were away is
                                // lost: every local agent re-reads its state.
                                tracing::info!(
                                    "redis pub/sub re-subscribed; resyncing local agents"
                                );
                                return Some((AgentEvent::Resync, (Some(s), client, channel)));
                            }
                            Err(e) => tracing::warn!(error = %e, "redis re-subscribe failed"),
                        }
                    }
                }
            },
        );
        Ok(stream.boxed())
    }
}

async fn subscribe_once(
    client: &redis::Client,
    channel: &str,
) -> StoreResult<redis::aio::PubSubStream> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub.into_on_message())
}
