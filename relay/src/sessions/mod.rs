//! The session store: everything ephemeral that all relay pods share.
//!
//! Owns OBR sessions (one per agent and per user, with a hard expiry), agent logins
//! (which principal an agent acts as), device-code grants, bearer tokens,
//! and the fan-out of [`AgentEvent`]s to whichever pod holds an agent's
//! socket. Every key carries a TTL so that a crashed relay leaves nothing
//! behind; state changes are compare-and-set so two pods never both win.
//!
//! Two implementations behind one trait, held to one contract suite
//! (`tests/tests/session_store_contract.rs`): [`MemoryStore`] for the single-process
//! embedded mode and [`RedisStore`] for a horizontally scaled relay. This
//! module never touches the durable database: losing the store loses only
//! sessions, never users, credentials or audit records.

mod memory;
mod redis;
pub mod seal;

use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;
pub use self::seal::Sealer;

/// Who a bearer token (or a logged-in agent) stands for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub person_id: String,
    pub email: String,
    pub is_admin: bool,
    pub scope: TokenScope,
    /// An admin token's sign-in: what lists and revokes it (agent logins
    /// have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<AdminSession>,
}

/// One sign-in of an admin, as their token records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminSession {
    /// Names the session in lists and revocations (never the token).
    pub id: String,
    pub created_at_ms: i64,
    /// The absolute end: no use extends a session past it.
    pub expires_at_ms: i64,
    /// The TCP peer and the `User-Agent` it signed in with.
    pub address: String,
    pub user_agent: String,
}

/// What a token may be used for; a token of one scope is refused elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenScope {
    /// The admin panel and admin REST API.
    Admin,
    /// An agent's tunnel.
    Agent,
}

/// An on-behalf registration in progress: `admin` acts for `user` through
/// the agent `agent_id` until `expires_at_ms` or until it is ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ObrSession {
    pub id: String,
    pub agent_id: String,
    pub admin_id: String,
    pub admin_email: String,
    pub user_id: String,
    pub user_email: String,
    pub started_at_ms: i64,
    pub expires_at_ms: i64,
    /// The limits it was started with.
    #[serde(default)]
    pub policy: ObrPolicy,
    /// Whose approval it still waits for before it starts (four eyes);
    /// until then it serves nothing and the agent stays in normal mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awaiting: Option<Approver>,
}

/// What an OBR session may do, set when it is selected.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ObrPolicy {
    /// The only RP IDs it may register or sign in at; empty: any.
    #[serde(default)]
    pub rp_ids: Vec<String>,
    /// At most this many passkeys; the session ends when it has made them.
    #[serde(default)]
    pub max_registrations: Option<u32>,
    /// Who must approve before it starts.
    #[serde(default)]
    pub four_eyes: Option<Approver>,
}

impl ObrPolicy {
    /// Whether a request for `rp_id` is within the allow-list.
    pub fn allows_rp(&self, rp_id: &str) -> bool {
        self.rp_ids.is_empty() || self.rp_ids.iter().any(|allowed| allowed == rp_id)
    }
}

/// The second pair of eyes on an OBR session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Approver {
    /// The user, on their phone (the user app).
    User,
    /// Another admin who may provision that user.
    SecondAdmin,
}

impl Approver {
    pub fn as_str(self) -> &'static str {
        match self {
            Approver::User => "user",
            Approver::SecondAdmin => "second_admin",
        }
    }
}

/// A pending device-code login, keyed by its `user_code` (RFC 8628 §3.2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceGrant {
    pub user_code: String,
    pub agent_id: String,
    pub created_at_ms: i64,
}

/// "+Passkey → Other platforms": an OBR session an admin asked for in the
/// panel, waiting for their agent on this computer to claim it with the
/// code from the obr:// link (kept under the code's hash, taken once).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pairing {
    pub admin_id: String,
    pub user_id: String,
    pub policy: ObrPolicy,
    /// The session's TTL, if shorter than the relay's.
    pub ttl_ms: Option<u64>,
    pub created_at_ms: i64,
}

/// A normal-mode call waiting for the key owner's approval on their device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Approval {
    pub id: String,
    /// Whose key, and so whose device must decide.
    pub person_id: String,
    pub agent_id: String,
    pub rp_id: String,
    /// `register` or `sign_in`.
    pub operation: String,
    pub user_verification: bool,
    pub state: ApprovalState,
    pub created_at_ms: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalState {
    Pending,
    Approved,
    Denied,
}

/// Something an agent's socket must hear about, wherever it is connected.
/// Events carry no secret: each tells the agent's socket to re-read its
/// state from the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AgentEvent {
    /// Who the agent is logged in as changed (a device-code login was
    /// approved): re-read its login.
    LoginChanged { agent_id: String },
    /// The agent's OBR session started or ended: re-read it.
    ModeChanged { agent_id: String },
    /// A person's notification inbox got something: their connected user
    /// apps re-read it. (Not for agents.)
    InboxChanged { person_id: String },
    /// Events may have been lost (the subscription was re-established):
    /// every local agent and user app re-reads its state. Made by the
    /// subscriber, never published.
    Resync,
}

impl AgentEvent {
    /// The agent this event is for; `None` for every local agent (or, for
    /// [`AgentEvent::InboxChanged`], none).
    pub fn agent_id(&self) -> Option<&str> {
        match self {
            AgentEvent::LoginChanged { agent_id } | AgentEvent::ModeChanged { agent_id } => {
                Some(agent_id)
            }
            AgentEvent::InboxChanged { .. } | AgentEvent::Resync => None,
        }
    }
}

/// Why an OBR session could not be created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObrConflict {
    /// The agent is already in a session.
    Agent,
    /// Somebody is already acting on the user's key.
    User,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    #[error("session store returned malformed data: {0}")]
    Corrupt(String),
}

impl From<::redis::RedisError> for StoreError {
    fn from(e: ::redis::RedisError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Ephemeral shared state. Every method is one atomic step.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Store `principal` under the token's hash until `lifetime` has
    /// passed, or `idle` without a [`Self::touch_token`], whichever is
    /// first.
    async fn put_token(
        &self,
        token_hash: &str,
        principal: &Principal,
        lifetime: Duration,
        idle: Duration,
    ) -> StoreResult<()>;
    async fn get_token(&self, token_hash: &str) -> StoreResult<Option<Principal>>;
    /// The token was used: it lives `idle` more, never past
    /// `expires_at_ms`. Whether it was still there.
    async fn touch_token(
        &self,
        token_hash: &str,
        idle: Duration,
        expires_at_ms: i64,
    ) -> StoreResult<bool>;
    /// Forget the token (logout). Whether it was there.
    async fn delete_token(&self, token_hash: &str) -> StoreResult<bool>;
    /// The live tokens of `person_id`, each with its hash, oldest first.
    async fn tokens_of(&self, person_id: &str) -> StoreResult<Vec<(String, Principal)>>;

    async fn put_grant(&self, grant: &DeviceGrant, ttl: Duration) -> StoreResult<()>;
    /// Remove and return the grant: a code can be approved at most once.
    async fn take_grant(&self, user_code: &str) -> StoreResult<Option<DeviceGrant>>;

    /// Record that `agent_id` is logged in as `principal` for `ttl`.
    async fn put_agent_login(
        &self,
        agent_id: &str,
        principal: &Principal,
        ttl: Duration,
    ) -> StoreResult<()>;
    async fn agent_login(&self, agent_id: &str) -> StoreResult<Option<Principal>>;
    /// Log the agent out. Whether it was logged in.
    async fn delete_agent_login(&self, agent_id: &str) -> StoreResult<bool>;
    /// The agents currently logged in as `person_id`.
    async fn agents_of(&self, person_id: &str) -> StoreResult<Vec<String>>;

    /// Start `session` unless its agent is already in one or its user's
    /// key already has one: one session per agent and per user.
    async fn create_obr(&self, session: &ObrSession) -> StoreResult<Result<(), ObrConflict>>;
    /// The agent's OBR session, if one exists and has not been ended or
    /// claimed as expired (it may be past `expires_at_ms` until claimed).
    async fn get_obr(&self, agent_id: &str) -> StoreResult<Option<ObrSession>>;
    /// End the agent's session if it is still `session_id`; returns it.
    async fn end_obr(&self, agent_id: &str, session_id: &str) -> StoreResult<Option<ObrSession>>;
    /// Remove and return sessions whose `expires_at_ms <= now_ms`. Each
    /// expired session is returned to exactly one caller, across all pods.
    async fn claim_expired(&self, now_ms: i64) -> StoreResult<Vec<ObrSession>>;
    /// The session `session_id`, whatever its agent.
    async fn obr_by_id(&self, session_id: &str) -> StoreResult<Option<ObrSession>>;
    /// Start a session still awaiting its approval; the started session,
    /// or `None` if it is not (any more) awaiting one.
    async fn start_awaiting_obr(&self, session_id: &str) -> StoreResult<Option<ObrSession>>;
    /// Count one more registration in `session` if fewer than `limit` are
    /// counted: the count it now holds, or `None` at the limit.
    async fn count_registration(
        &self,
        session: &ObrSession,
        limit: u32,
    ) -> StoreResult<Option<u32>>;
    /// Take back a count whose registration did not happen.
    async fn uncount_registration(&self, session_id: &str) -> StoreResult<()>;

    /// Keep `pairing` under `code_hash` for `ttl`.
    async fn put_pairing(
        &self,
        code_hash: &str,
        pairing: &Pairing,
        ttl: Duration,
    ) -> StoreResult<()>;
    /// Remove and return the pairing: a code is claimed at most once.
    async fn take_pairing(&self, code_hash: &str) -> StoreResult<Option<Pairing>>;

    /// Store a pending approval for `ttl` (the call's remaining budget).
    async fn put_approval(&self, approval: &Approval, ttl: Duration) -> StoreResult<()>;
    async fn get_approval(&self, id: &str) -> StoreResult<Option<Approval>>;
    /// Decide a *pending* approval of `person_id`'s; `None` if there is no
    /// such pending approval (unknown, expired, decided, or someone else's).
    async fn decide_approval(
        &self,
        id: &str,
        person_id: &str,
        approve: bool,
    ) -> StoreResult<Option<Approval>>;

    /// Deliver `event` to every subscriber (every relay pod).
    async fn publish(&self, event: &AgentEvent) -> StoreResult<()>;
    /// Events published from now on, by any pod.
    async fn subscribe(&self) -> StoreResult<BoxStream<'static, AgentEvent>>;

    /// Whether the store answers (readiness).
    async fn ping(&self) -> StoreResult<()>;
}

/// How long a session's keys outlive its expiry, so the sweeper still finds
/// (and audits) a session whose relay died.
pub const EXPIRED_SESSION_GRACE: Duration = Duration::from_secs(300);
