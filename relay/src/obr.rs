//! On-behalf registration: the rules and the record of every transition.
//!
//! [`Obr`] is the only place that starts, ends or expires an OBR session.
//! Each transition is one compare-and-set in the session store, then an
//! audit record, then (when it concerns a user) a notification in that
//! user's inbox, then an [`AgentEvent`] so the agent's socket hears of it
//! wherever it is connected. It never talks to signers or sockets itself.

use std::sync::Arc;
use std::time::Duration;

use obr_proto::signer::{CredentialCreated, ObrAssertion, ObrRecord};
use serde_json::json;

use crate::clock::now_ms;
use crate::directory::Person;
use crate::directory::audit::RegistrationRecord;
use crate::directory::grants::{Admin, Power};
use crate::directory::{Directory, DirectoryError, KeyStatus};
use crate::sessions::{
    AgentEvent, Approver, ObrConflict, ObrPolicy, ObrSession, Pairing, Principal, SessionStore,
    StoreError,
};

/// DESIGN: "A session has a hard TTL (default 15 min)".
pub const DEFAULT_OBR_TTL: Duration = Duration::from_secs(15 * 60);
/// How long a pairing link (+Passkey → Other platforms) may wait for the
/// admin's agent to open it.
pub const PAIRING_TTL: Duration = Duration::from_secs(5 * 60);
/// The shortest TTL a session may be given.
pub const MIN_OBR_TTL: Duration = Duration::from_secs(10);
/// RP IDs an allow-list may name, and passkeys a session may be limited to.
pub const MAX_ALLOWED_RPS: usize = 32;
pub const MAX_REGISTRATION_LIMIT: u32 = 100;
/// An RP ID is a domain name (WebAuthn §5.1.2 "RP ID"), at most 253 bytes.
const MAX_RP_ID_LEN: usize = 253;

/// What "Select as OBR" asks for beyond the user: the session's limits
/// and, if shorter than the relay's, its TTL.
#[derive(Clone, Debug, Default)]
pub struct ObrRequest {
    pub policy: ObrPolicy,
    pub ttl: Option<Duration>,
}

/// A registration's place under its session's limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistrationSlot {
    /// The session has no limit.
    Unlimited,
    /// Counted as the `nth` of at most `limit`.
    Counted { nth: u32, limit: u32 },
    /// The limit is reached: refused.
    Full,
}

/// Who decides on a session awaiting approval.
pub enum Decider<'a> {
    /// The user, from the user app.
    User(&'a Person),
    /// Another admin, from the panel.
    Admin(&'a Admin),
}

#[derive(Debug, thiserror::Error)]
pub enum ObrError {
    #[error("no such user")]
    UserNotFound,
    #[error(
        "the user's security key is {0}, not active: the user must accept the invitation first"
    )]
    KeyNotActive(&'static str),
    #[error("an admin cannot act on behalf of themself")]
    SelfObr,
    #[error("{0} is an admin: no admin may act on another admin's key")]
    TargetIsAdmin(String),
    #[error("{0} is not in your scope (the groups you may provision)")]
    OutOfScope(String),
    #[error("no admin changes their own grant: another owner must")]
    OwnGrant,
    #[error("the {role} role may not {power}")]
    RoleForbids {
        role: &'static str,
        power: &'static str,
    },
    #[error("no agent is logged in as you: run `obr-agent login` and approve its code first")]
    NoAgent,
    #[error("several agents are logged in as you ({0}): say which one with agent_id")]
    AgentAmbiguous(String),
    #[error("agent {0} is not logged in as you")]
    AgentNotYours(String),
    #[error("agent {agent} is already acting for {user}: end that session first")]
    AlreadyActive { agent: String, user: String },
    #[error("an on-behalf registration on {0}'s key is already in progress: one at a time")]
    UserBusy(String),
    #[error("agent {0} has no on-behalf registration in progress")]
    NotActive(String),
    #[error("{0}")]
    BadPolicy(String),
    #[error("no on-behalf registration awaits your approval with that id")]
    NotAwaiting,
    #[error("an admin cannot approve their own on-behalf registration: another admin must")]
    OwnRequest,
    #[error("unknown, expired or already used pairing link: make a new one in the panel")]
    UnknownPairing,
    #[error("this pairing link was made by another admin: log this agent in as yourself")]
    PairingNotYours,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Directory(#[from] DirectoryError),
}

/// Why a session ended.
#[derive(Clone, Copy, Debug)]
pub enum EndReason {
    /// "Back to normal mode" in the agent.
    BackToNormal,
    /// "Done" in the panel.
    Done,
    /// The hard TTL passed.
    Expired,
    /// Somebody else logged the agent in: the session was bound to the
    /// admin who started it.
    LoginChanged,
    /// The directory no longer lets the admin act on the user (their
    /// grant, its scope, or the user's key changed), seen on a request.
    Withdrawn,
    /// The agent was logged out from the panel.
    LoggedOut,
    /// The session made as many passkeys as its policy allows.
    LimitReached,
    /// The user, or the second admin, said no before it started.
    Denied,
}

impl EndReason {
    fn action(self) -> &'static str {
        match self {
            EndReason::BackToNormal
            | EndReason::Done
            | EndReason::LoginChanged
            | EndReason::Withdrawn
            | EndReason::LoggedOut
            | EndReason::LimitReached
            | EndReason::Denied => "obr.ended",
            EndReason::Expired => "obr.expired",
        }
    }

    fn label(self) -> &'static str {
        match self {
            EndReason::BackToNormal => "back_to_normal",
            EndReason::Done => "done",
            EndReason::Expired => "expired",
            EndReason::LoginChanged => "login_changed",
            EndReason::Withdrawn => "grant_withdrawn",
            EndReason::LoggedOut => "agent_logged_out",
            EndReason::LimitReached => "registration_limit_reached",
            EndReason::Denied => "denied",
        }
    }
}

#[derive(Clone)]
pub struct Obr {
    directory: Directory,
    store: Arc<dyn SessionStore>,
    /// The longest a session may last (and the default).
    ttl: Duration,
    /// Four eyes the organisation requires on every session, if any.
    required_approver: Option<Approver>,
}

impl Obr {
    pub fn new(
        directory: Directory,
        store: Arc<dyn SessionStore>,
        ttl: Duration,
        required_approver: Option<Approver>,
    ) -> Self {
        Self {
            directory,
            store,
            ttl,
            required_approver,
        }
    }

    /// The panel's "Select as OBR": `admin` will act for `user_id` through
    /// `agent_id` (or their only logged-in agent), within `request`'s
    /// limits. With four eyes (asked for, or required by the relay) the
    /// session waits for that approval before it starts.
    pub async fn select(
        &self,
        admin: &Admin,
        user_id: &str,
        agent_id: Option<&str>,
        request: ObrRequest,
    ) -> Result<ObrSession, ObrError> {
        let (user, policy, ttl) = self.target_within(admin, user_id, request).await?;
        let admin = &admin.person;
        let agent_id = self.admin_agent(&admin.id, agent_id).await?;
        let now = now_ms();
        let session = ObrSession {
            id: uuid::Uuid::new_v4().to_string(),
            agent_id: agent_id.clone(),
            admin_id: admin.id.clone(),
            admin_email: admin.email.clone(),
            user_id: user.id.clone(),
            user_email: user.email.clone(),
            started_at_ms: now,
            expires_at_ms: now + crate::directory::duration_ms(ttl),
            awaiting: policy.four_eyes,
            policy,
        };
        match self.store.create_obr(&session).await? {
            Ok(()) => {}
            Err(ObrConflict::Agent) => {
                let user = match self.store.get_obr(&agent_id).await? {
                    Some(existing) => existing.user_email,
                    None => "another user".to_owned(),
                };
                return Err(ObrError::AlreadyActive {
                    agent: agent_id,
                    user,
                });
            }
            Err(ObrConflict::User) => return Err(ObrError::UserBusy(user.email)),
        }
        if let Some(approver) = session.awaiting {
            self.record_request(&session, approver).await?;
        } else {
            self.record_start(&admin.email, &session, None).await?;
        }
        Ok(session)
    }

    /// "+Passkey → Other platforms": an OBR session for `user_id` within
    /// `request`, to start on whichever agent of `admin`'s opens the link
    /// with the returned code (within [`PAIRING_TTL`]). Checked as
    /// [`Obr::select`] checks, now and again when the link is opened.
    pub async fn offer_pairing(
        &self,
        admin: &Admin,
        user_id: &str,
        request: ObrRequest,
    ) -> Result<String, ObrError> {
        let (user, policy, ttl) = self.target_within(admin, user_id, request).await?;
        let code = crate::auth::new_token()
            .map_err(|e| ObrError::Directory(DirectoryError::Corrupt(e.to_string())))?;
        let pairing = Pairing {
            admin_id: admin.person.id.clone(),
            user_id: user.id.clone(),
            policy,
            ttl_ms: Some(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
            created_at_ms: now_ms(),
        };
        self.store
            .put_pairing(&crate::auth::token_hash(&code), &pairing, PAIRING_TTL)
            .await?;
        self.directory
            .audit(
                &admin.person.email,
                "obr.pairing_offered",
                &user.email,
                json!({ "user_id": user.id, "policy": pairing.policy,
                        "expires_in_s": PAIRING_TTL.as_secs() }),
            )
            .await?;
        Ok(code)
    }

    /// The agent `agent_id`, logged in as `principal`, opened the pairing
    /// link with `code`: the pairing is taken (once), and if it is that
    /// admin's, the session starts on this agent as "Select as OBR" would
    /// start it (`admin`: the principal's verified grant, if any).
    pub async fn claim_pairing(
        &self,
        code: &str,
        agent_id: &str,
        principal: &Principal,
        admin: Option<&Admin>,
    ) -> Result<ObrSession, ObrError> {
        let pairing = self
            .store
            .take_pairing(&crate::auth::token_hash(code))
            .await?
            .ok_or(ObrError::UnknownPairing)?;
        let Some(admin) = admin
            .filter(|a| a.person.id == pairing.admin_id && principal.person_id == pairing.admin_id)
        else {
            let detail = json!({ "action": "claim_pairing", "agent": agent_id,
                                 "reason": ObrError::PairingNotYours.to_string(),
                                 "offered_by": pairing.admin_id });
            self.directory
                .audit(&principal.email, "access.refused", &pairing.user_id, detail)
                .await?;
            return Err(ObrError::PairingNotYours);
        };
        let request = ObrRequest {
            policy: pairing.policy,
            ttl: pairing.ttl_ms.map(Duration::from_millis),
        };
        self.select(admin, &pairing.user_id, Some(agent_id), request)
            .await
    }

    /// The user `admin` may act on, and `request`'s policy (with the
    /// relay's four eyes) and TTL, checked.
    async fn target_within(
        &self,
        admin: &Admin,
        user_id: &str,
        request: ObrRequest,
    ) -> Result<(Person, ObrPolicy, Duration), ObrError> {
        let user = self
            .directory
            .person(user_id)
            .await?
            .ok_or(ObrError::UserNotFound)?;
        check_target(admin, &user)?;
        let (mut policy, ttl) = self.checked(request)?;
        if let Some(required) = self.required_approver {
            // The organisation's rule, not the requester's choice.
            if policy.four_eyes.is_some_and(|asked| asked != required) {
                return Err(ObrError::BadPolicy(format!(
                    "this relay requires four_eyes \"{}\" on every session",
                    required.as_str()
                )));
            }
            policy.four_eyes = Some(required);
        }
        Ok((user, policy, ttl))
    }

    /// `request`'s policy and TTL, checked against the relay's bounds.
    fn checked(&self, request: ObrRequest) -> Result<(ObrPolicy, Duration), ObrError> {
        let bad = |why: String| Err(ObrError::BadPolicy(why));
        let ttl = request.ttl.unwrap_or(self.ttl);
        if ttl < MIN_OBR_TTL.min(self.ttl) || ttl > self.ttl {
            return bad(format!(
                "ttl_s must be {}-{} seconds",
                MIN_OBR_TTL.min(self.ttl).as_secs(),
                self.ttl.as_secs()
            ));
        }
        let mut policy = request.policy;
        if policy.rp_ids.len() > MAX_ALLOWED_RPS {
            return bad(format!("rp_ids may name at most {MAX_ALLOWED_RPS} RP IDs"));
        }
        for rp_id in &mut policy.rp_ids {
            *rp_id = rp_id.trim().to_ascii_lowercase();
            let valid = !rp_id.is_empty()
                && rp_id.len() <= MAX_RP_ID_LEN
                && rp_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !valid {
                return bad(format!("{rp_id:?} is not an RP ID (a domain name)"));
            }
        }
        policy.rp_ids.sort();
        policy.rp_ids.dedup();
        if policy
            .max_registrations
            .is_some_and(|n| n == 0 || n > MAX_REGISTRATION_LIMIT)
        {
            return bad(format!(
                "max_registrations must be 1-{MAX_REGISTRATION_LIMIT}"
            ));
        }
        Ok((policy, ttl))
    }

    /// A session starts: audited, the user told, the agent in OBR mode.
    async fn record_start(
        &self,
        actor: &str,
        session: &ObrSession,
        approved_by: Option<&str>,
    ) -> Result<(), ObrError> {
        self.directory
            .audit(
                actor,
                "obr.started",
                &session.user_email,
                json!({ "session": session.id, "agent": session.agent_id,
                        "user_id": session.user_id, "admin": session.admin_email,
                        "expires_at_ms": session.expires_at_ms, "policy": session.policy,
                        "approved_by": approved_by }),
            )
            .await?;
        let within = if session.policy.rp_ids.is_empty() {
            String::new()
        } else {
            format!(" (for {} only)", session.policy.rp_ids.join(", "))
        };
        self.directory
            .notify(
                &session.user_id,
                "obr.started",
                &format!(
                    "{} started an on-behalf registration on your security key{within}",
                    session.admin_email
                ),
                json!({ "admin": session.admin_email, "session": session.id,
                        "agent": session.agent_id, "rp_ids": session.policy.rp_ids }),
            )
            .await?;
        self.store
            .publish(&AgentEvent::ModeChanged {
                agent_id: session.agent_id.clone(),
            })
            .await?;
        Ok(())
    }

    /// A session waits for `approver`: audited, and the user told (asked,
    /// when they are the one to approve).
    async fn record_request(
        &self,
        session: &ObrSession,
        approver: Approver,
    ) -> Result<(), ObrError> {
        self.directory
            .audit(
                &session.admin_email,
                "obr.requested",
                &session.user_email,
                json!({ "session": session.id, "agent": session.agent_id,
                        "user_id": session.user_id, "expires_at_ms": session.expires_at_ms,
                        "policy": session.policy, "approver": approver.as_str() }),
            )
            .await?;
        let (kind, message) = match approver {
            Approver::User => (
                "obr.approval_requested",
                format!(
                    "{} asks to register passkeys on your security key: approve or deny",
                    session.admin_email
                ),
            ),
            Approver::SecondAdmin => (
                "obr.requested",
                format!(
                    "{} asked to register passkeys on your security key; a second admin must \
                     approve before it starts",
                    session.admin_email
                ),
            ),
        };
        self.directory
            .notify(
                &session.user_id,
                kind,
                &message,
                json!({ "admin": session.admin_email, "session": session.id,
                        "approver": approver.as_str(), "rp_ids": session.policy.rp_ids,
                        "expires_at_ms": session.expires_at_ms }),
            )
            .await?;
        Ok(())
    }

    /// The four-eyes decision on the session `session_id` by `decider`:
    /// approved, it starts (the agent is told at once); denied, it ends.
    /// Only the approver the session awaits may decide: its user, or an
    /// admin other than the requester who may provision that user.
    pub async fn decide(
        &self,
        session_id: &str,
        decider: Decider<'_>,
        approve: bool,
    ) -> Result<ObrSession, ObrError> {
        let session = self
            .store
            .obr_by_id(session_id)
            .await?
            .filter(|s| s.expires_at_ms > now_ms())
            .ok_or(ObrError::NotAwaiting)?;
        let actor = match (&decider, session.awaiting) {
            (Decider::User(person), Some(Approver::User)) if person.id == session.user_id => {
                person.email.clone()
            }
            (Decider::Admin(admin), Some(Approver::SecondAdmin)) => {
                if admin.person.id == session.admin_id {
                    return Err(ObrError::OwnRequest);
                }
                let user = self
                    .directory
                    .person(&session.user_id)
                    .await?
                    .ok_or(ObrError::UserNotFound)?;
                check_target(admin, &user)?;
                admin.person.email.clone()
            }
            _ => return Err(ObrError::NotAwaiting),
        };
        if approve {
            let started = self
                .store
                .start_awaiting_obr(session_id)
                .await?
                .ok_or(ObrError::NotAwaiting)?;
            self.record_start(&actor, &started, Some(&actor)).await?;
            return Ok(started);
        }
        // Whatever ends it here is on record, even a session another
        // approver started a moment ago: this one said no.
        let ended = self
            .store
            .end_obr(&session.agent_id, &session.id)
            .await?
            .ok_or(ObrError::NotAwaiting)?;
        self.record_end(&actor, &ended, EndReason::Denied).await?;
        Ok(ended)
    }

    /// Whether a registration in `session` may go ahead, counted against
    /// its limit if it has one.
    pub async fn reserve_registration(
        &self,
        session: &ObrSession,
    ) -> Result<RegistrationSlot, ObrError> {
        let Some(limit) = session.policy.max_registrations else {
            return Ok(RegistrationSlot::Unlimited);
        };
        Ok(match self.store.count_registration(session, limit).await? {
            Some(n) => RegistrationSlot::Counted { nth: n, limit },
            None => RegistrationSlot::Full,
        })
    }

    /// A counted registration did not happen: its count is given back.
    pub async fn release_registration(&self, session: &ObrSession) -> Result<(), ObrError> {
        Ok(self.store.uncount_registration(&session.id).await?)
    }

    /// A request `session`'s policy refuses (an RP not on its allow-list,
    /// a registration past its limit): audited; the key never saw it.
    pub async fn refused_by_policy(
        &self,
        session: &ObrSession,
        rp_id: &str,
        reason: &str,
    ) -> Result<(), ObrError> {
        self.directory
            .audit(
                &session.admin_email,
                "obr.refused",
                &session.user_email,
                json!({ "session": session.id, "agent": session.agent_id, "rp_id": rp_id,
                        "reason": reason, "policy": session.policy }),
            )
            .await?;
        Ok(())
    }

    /// End the agent's session (by its admin, from the panel or the agent).
    pub async fn end(
        &self,
        actor: &Principal,
        agent_id: &str,
        reason: EndReason,
    ) -> Result<ObrSession, ObrError> {
        self.end_session(actor, agent_id, None, reason).await
    }

    /// End the agent's session if it is `session_id` (a late "Back to
    /// normal mode" for an earlier session must not end a newer one).
    pub async fn end_session(
        &self,
        actor: &Principal,
        agent_id: &str,
        session_id: Option<&str>,
        reason: EndReason,
    ) -> Result<ObrSession, ObrError> {
        let session = self
            .store
            .get_obr(agent_id)
            .await?
            .filter(|s| session_id.is_none_or(|id| s.id == id))
            .ok_or_else(|| ObrError::NotActive(agent_id.to_owned()))?;
        if session.admin_id != actor.person_id {
            return Err(ObrError::AgentNotYours(agent_id.to_owned()));
        }
        let ended = self
            .store
            .end_obr(agent_id, &session.id)
            .await?
            .ok_or_else(|| ObrError::NotActive(agent_id.to_owned()))?;
        self.record_end(&actor.email, &ended, reason).await?;
        Ok(ended)
    }

    /// The agent was just logged in as `principal`: a session it was in
    /// for somebody else ends (a session is bound to the admin who started
    /// it). Returns the ended session.
    pub async fn end_for_new_login(
        &self,
        agent_id: &str,
        principal: &Principal,
    ) -> Result<Option<ObrSession>, ObrError> {
        let Some(session) = self.store.get_obr(agent_id).await? else {
            return Ok(None);
        };
        if session.admin_id == principal.person_id {
            return Ok(None);
        }
        let Some(ended) = self.store.end_obr(agent_id, &session.id).await? else {
            return Ok(None);
        };
        self.record_end("system", &ended, EndReason::LoginChanged)
            .await?;
        Ok(Some(ended))
    }

    /// End `session` for `reason`, by the relay rather than its admin
    /// (the directory no longer grants it, seen by the call path on a
    /// request; its agent was logged out): recorded, told, and the agent
    /// back to normal mode. `None` if it had ended already.
    pub async fn end_by_relay(
        &self,
        session: &ObrSession,
        reason: EndReason,
    ) -> Result<Option<ObrSession>, ObrError> {
        let Some(ended) = self.store.end_obr(&session.agent_id, &session.id).await? else {
            return Ok(None);
        };
        self.record_end("system", &ended, reason).await?;
        Ok(Some(ended))
    }

    /// Claim and record every session past its TTL. Run periodically by
    /// every relay pod; the store hands each expired session to one of them.
    pub async fn expire_due(&self) -> Result<usize, ObrError> {
        let expired = self.store.claim_expired(now_ms()).await?;
        for session in &expired {
            self.record_end("system", session, EndReason::Expired)
                .await?;
        }
        Ok(expired.len())
    }

    /// A credential was created on the user's key during `session`:
    /// audited and the user told, exactly once (the outbox sweep may have
    /// recorded it already).
    pub async fn registration_done(
        &self,
        session: &ObrSession,
        created: &CredentialCreated,
    ) -> Result<(), ObrError> {
        let credential_id = base64_url(&created.credential_id);
        self.directory
            .record_registration(&RegistrationRecord {
                audit_detail: json!({ "session": session.id, "agent": session.agent_id,
                    "rp_id": created.rp_id, "account": created.user_name,
                    "credential_id": credential_id, "discoverable": created.discoverable }),
                message: registration_message(
                    &session.admin_email,
                    &created.rp_id,
                    &created.user_name,
                ),
                notification_detail: json!({ "admin": session.admin_email, "rp_id": created.rp_id,
                    "account": created.user_name, "credential_id": credential_id,
                    "session": session.id }),
                credential_id,
                admin_email: session.admin_email.clone(),
                user_id: session.user_id.clone(),
                user_email: session.user_email.clone(),
            })
            .await?;
        Ok(())
    }

    /// A credential the signers' outbox holds with no confirmed record:
    /// its request was cancelled, timed out, or its relay died after the
    /// key created it. Recorded now, marked `recovered`. Returns whether
    /// this call recorded it (false: it already was).
    pub async fn registration_recovered(&self, record: &ObrRecord) -> Result<bool, ObrError> {
        let email =
            |person: Option<Person>, id: &str| person.map_or_else(|| id.to_owned(), |p| p.email);
        let admin_email = email(
            self.directory.person(&record.admin_id).await?,
            &record.admin_id,
        );
        let user_email = email(
            self.directory.person(&record.user_id).await?,
            &record.user_id,
        );
        let credential_id = base64_url(&record.credential_id);
        let recorded = self
            .directory
            .record_registration(&RegistrationRecord {
                audit_detail: json!({ "session": record.obr_session_id, "rp_id": record.rp_id,
                    "account": record.user_name, "credential_id": credential_id,
                    "discoverable": record.discoverable, "created_at_ms": record.created_at_ms,
                    "recovered": true }),
                message: registration_message(&admin_email, &record.rp_id, &record.user_name),
                notification_detail: json!({ "admin": admin_email, "rp_id": record.rp_id,
                    "account": record.user_name, "credential_id": credential_id,
                    "session": record.obr_session_id }),
                credential_id,
                admin_email,
                user_id: record.user_id.clone(),
                user_email,
            })
            .await?;
        Ok(recorded)
    }

    /// The key signed for `session` with user presence: only ever a
    /// credential created in that same session (the signer refuses any
    /// other). Audited, and the user is told.
    pub async fn assertion_done(
        &self,
        session: &ObrSession,
        assertion: &ObrAssertion,
    ) -> Result<(), ObrError> {
        let credential_id = base64_url(&assertion.credential_id);
        self.directory
            .audit(
                &session.admin_email,
                "obr.assertion",
                &session.user_email,
                json!({ "session": session.id, "agent": session.agent_id,
                        "rp_id": assertion.rp_id, "credential_id": credential_id }),
            )
            .await?;
        self.directory
            .notify(
                &session.user_id,
                "obr.assertion",
                &format!(
                    "{} verified the passkey they just registered for {} on your security key",
                    session.admin_email, assertion.rp_id
                ),
                json!({ "admin": session.admin_email, "rp_id": assertion.rp_id,
                        "credential_id": credential_id, "session": session.id }),
            )
            .await?;
        Ok(())
    }

    /// The key refused to sign in `session` with a credential the session
    /// did not create: an attempt to use the user's passkeys. Audited.
    pub async fn assertion_refused(
        &self,
        session: &ObrSession,
        assertion: &ObrAssertion,
    ) -> Result<(), ObrError> {
        self.directory
            .audit(
                &session.admin_email,
                "obr.assertion_refused",
                &session.user_email,
                json!({ "session": session.id, "agent": session.agent_id,
                        "rp_id": assertion.rp_id,
                        "credential_id": base64_url(&assertion.credential_id) }),
            )
            .await?;
        Ok(())
    }

    async fn record_end(
        &self,
        actor: &str,
        session: &ObrSession,
        reason: EndReason,
    ) -> Result<(), ObrError> {
        self.directory
            .audit(
                actor,
                reason.action(),
                &session.user_email,
                json!({ "session": session.id, "agent": session.agent_id, "reason": reason.label() }),
            )
            .await?;
        let message = match reason {
            EndReason::Expired => format!(
                "The on-behalf registration by {} expired; your key is no longer attached to their computer",
                session.admin_email
            ),
            EndReason::Withdrawn => format!(
                "The on-behalf registration by {} ended: they may no longer act on your key",
                session.admin_email
            ),
            EndReason::LimitReached => format!(
                "The on-behalf registration by {} ended: it made the passkeys it was allowed to",
                session.admin_email
            ),
            EndReason::Denied => format!(
                "{actor} denied the on-behalf registration {} asked for; nothing happened on \
                 your key",
                session.admin_email
            ),
            _ => format!(
                "{} ended the on-behalf registration; your key is no longer attached to their computer",
                session.admin_email
            ),
        };
        self.directory
            .notify(
                &session.user_id,
                reason.action(),
                &message,
                json!({ "admin": session.admin_email, "session": session.id, "reason": reason.label() }),
            )
            .await?;
        self.store
            .publish(&AgentEvent::ModeChanged {
                agent_id: session.agent_id.clone(),
            })
            .await?;
        Ok(())
    }

    async fn admin_agent(
        &self,
        admin_id: &str,
        agent_id: Option<&str>,
    ) -> Result<String, ObrError> {
        if let Some(agent_id) = agent_id {
            return match self.store.agent_login(agent_id).await? {
                Some(p) if p.person_id == admin_id => Ok(agent_id.to_owned()),
                _ => Err(ObrError::AgentNotYours(agent_id.to_owned())),
            };
        }
        let mut agents = self.store.agents_of(admin_id).await?;
        match agents.len() {
            0 => Err(ObrError::NoAgent),
            1 => Ok(agents.remove(0)),
            _ => Err(ObrError::AgentAmbiguous(agents.join(", "))),
        }
    }
}

/// Whether `session` may serve a request from the agent `agent_id`, logged
/// in as `principal`, at `now_ms`: the session was started on that agent
/// (its key) by that admin, awaits no approval, and has not expired.
/// Checked on every request.
pub fn serves(session: &ObrSession, agent_id: &str, principal: &Principal, now_ms: i64) -> bool {
    session.awaiting.is_none()
        && session.agent_id == agent_id
        && session.admin_id == principal.person_id
        && principal.is_admin
        && now_ms < session.expires_at_ms
}

/// Whether `actor` may use `power` on `target`'s key at all (OBR, reset,
/// delete a passkey): their role carries it; never on their own key, never
/// on another admin's — an admin's power over a key must not become power
/// over the people who hold it; and only on users in their scope.
pub fn may_act_on(actor: &Admin, power: Power, target: &Person) -> Result<(), ObrError> {
    if !actor.may(power) {
        return Err(ObrError::RoleForbids {
            role: actor.grant.role.as_str(),
            power: power.as_str(),
        });
    }
    if target.id == actor.person.id {
        return Err(ObrError::SelfObr);
    }
    if target.is_admin {
        return Err(ObrError::TargetIsAdmin(target.email.clone()));
    }
    if !actor.covers(target) {
        return Err(ObrError::OutOfScope(target.email.clone()));
    }
    Ok(())
}

/// The seed's prerequisites for OBR, checked before anything changes and
/// again on every CTAP request of the session.
pub(crate) fn check_target(admin: &Admin, user: &Person) -> Result<(), ObrError> {
    may_act_on(admin, Power::Provision, user)?;
    match user.key_status {
        KeyStatus::Active => Ok(()),
        other => Err(ObrError::KeyNotActive(other.as_str())),
    }
}

fn registration_message(admin_email: &str, rp_id: &str, account: &str) -> String {
    format!("{admin_email} registered a passkey for {rp_id} ({account}) on your security key")
}

pub(crate) fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
