//! Placement: which signer pod owns which user, decided in Redis.
//!
//! - **Membership**: every pod heartbeats its endpoint into the sorted set
//!   `signers` (score = last beat, ms). Relays route by rendezvous hashing
//!   over the members seen within [`MEMBER_WINDOW`].
//! - **Lease**: before a user's actor activates, the pod takes
//!   `lease:{user}` (`SET NX PX`, or renews it when it already holds it); a
//!   pod that finds another holder answers with that owner so the relay
//!   retries there. The actor renews while it lives and releases
//!   (compare-and-delete) when it passivates; a paused pod's lease simply
//!   runs out.
//!
//! A lease is *advice*, not a guarantee: a pod paused past its lease still
//! believes it owns the user when it wakes. What makes a stale owner
//! harmless is the fencing epoch in the durable store (`store`): every
//! write carries the epoch claimed at activation and is refused once a
//! newer owner has claimed. This module never touches the database.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::redis_endpoint::RedisEndpoint;

/// How long a lease lasts without renewal.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// Heartbeat period of a pod's membership.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// A member that has not beaten for this long is not routed to.
pub const MEMBER_WINDOW: Duration = Duration::from_secs(2);
/// Bound on every Redis round trip of the placement protocol.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

const ACQUIRE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return cur
"#;

const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#;

#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("placement store unavailable: {0}")]
    Unavailable(String),
}

impl From<redis::RedisError> for PlacementError {
    fn from(e: redis::RedisError) -> Self {
        PlacementError::Unavailable(e.to_string())
    }
}

/// Who holds a user's lease after an acquire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// This pod: go ahead and activate.
    Owned,
    /// Another pod, by its endpoint: send the caller there.
    HeldBy(String),
}

/// One pod's handle on the placement protocol.
#[derive(Clone)]
pub struct Placement {
    conn: ConnectionManager,
    prefix: String,
    me: String,
    lease_ttl: Duration,
}

impl std::fmt::Debug for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placement")
            .field("prefix", &self.prefix)
            .field("me", &self.me)
            .field("lease_ttl", &self.lease_ttl)
            .finish_non_exhaustive()
    }
}

impl Placement {
    /// `me` is the endpoint relays use to reach this pod (`http://ip:port`).
    pub async fn connect(
        redis: &RedisEndpoint,
        prefix: &str,
        me: &str,
        lease_ttl: Duration,
    ) -> Result<Self, PlacementError> {
        let client = redis
            .client()
            .map_err(|e| PlacementError::Unavailable(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_connection_timeout(Some(REDIS_TIMEOUT));
        let conn = client.get_connection_manager_with_config(config).await?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            me: me.to_owned(),
            lease_ttl,
        })
    }

    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    fn lease_key(&self, user: &str) -> String {
        format!("{}lease:{user}", self.prefix)
    }

    fn members_key(&self) -> String {
        format!("{}signers", self.prefix)
    }

    /// Take (or keep) `user`'s lease.
    pub async fn acquire(&self, user: &str) -> Result<Lease, PlacementError> {
        let mut conn = self.conn.clone();
        let holder: String = Script::new(ACQUIRE)
            .key(self.lease_key(user))
            .arg(&self.me)
            .arg(millis(self.lease_ttl))
            .invoke_async(&mut conn)
            .await?;
        Ok(if holder == self.me {
            Lease::Owned
        } else {
            Lease::HeldBy(holder)
        })
    }

    /// Extend `user`'s lease; `false` if this pod no longer holds it.
    pub async fn renew(&self, user: &str) -> Result<bool, PlacementError> {
        let mut conn = self.conn.clone();
        let renewed: i64 = Script::new(RENEW)
            .key(self.lease_key(user))
            .arg(&self.me)
            .arg(millis(self.lease_ttl))
            .invoke_async(&mut conn)
            .await?;
        Ok(renewed == 1)
    }

    /// Give `user`'s lease up, if this pod still holds it.
    pub async fn release(&self, user: &str) -> Result<bool, PlacementError> {
        let mut conn = self.conn.clone();
        let released: i64 = Script::new(RELEASE)
            .key(self.lease_key(user))
            .arg(&self.me)
            .invoke_async(&mut conn)
            .await?;
        Ok(released == 1)
    }

    /// Record one heartbeat of this pod's membership.
    pub async fn beat(&self) -> Result<(), PlacementError> {
        let mut conn = self.conn.clone();
        let now = now_ms();
        let _: () = redis::pipe()
            .zadd(self.members_key(), &self.me, now)
            // Forget members silent for ten windows: they left or died.
            .zrembyscore(self.members_key(), "-inf", now - 10 * window_ms())
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Heartbeat forever (run as a task for the pod's lifetime).
    pub async fn beat_forever(self) {
        let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.beat().await {
                tracing::warn!(error = %e, "signer heartbeat failed");
            }
        }
    }

    /// A live member other than this pod, if there is one.
    pub async fn another_member(&self) -> Result<Option<String>, PlacementError> {
        let mut conn = self.conn.clone();
        let members = live_members(&mut conn, &self.prefix).await?;
        Ok(members.into_iter().find(|m| *m != self.me))
    }

    /// Leave the membership (clean shutdown).
    pub async fn leave(&self) -> Result<(), PlacementError> {
        let mut conn = self.conn.clone();
        let _: () = redis::cmd("ZREM")
            .arg(self.members_key())
            .arg(&self.me)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }
}

/// The live signer endpoints, for routers (relays).
pub async fn live_members(
    conn: &mut ConnectionManager,
    prefix: &str,
) -> Result<Vec<String>, PlacementError> {
    let members: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(format!("{prefix}signers"))
        .arg(now_ms() - window_ms())
        .arg("+inf")
        .query_async(conn)
        .await?;
    Ok(members)
}

fn window_ms() -> i64 {
    i64::try_from(MEMBER_WINDOW.as_millis()).unwrap_or(i64::MAX)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
