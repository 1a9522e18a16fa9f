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
use crate::sessions::{AgentEvent, ObrConflict, ObrSession, Principal, SessionStore, StoreError};

/// DESIGN: "A session has a hard TTL (default 15 min)".
pub const DEFAULT_OBR_TTL: Duration = Duration::from_secs(15 * 60);

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
}

impl EndReason {
    fn action(self) -> &'static str {
        match self {
            EndReason::BackToNormal
            | EndReason::Done
            | EndReason::LoginChanged
            | EndReason::Withdrawn
            | EndReason::LoggedOut => "obr.ended",
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
        }
    }
}

#[derive(Clone)]
pub struct Obr {
    directory: Directory,
    store: Arc<dyn SessionStore>,
    ttl: Duration,
}

impl Obr {
    pub fn new(directory: Directory, store: Arc<dyn SessionStore>, ttl: Duration) -> Self {
        Self {
            directory,
            store,
            ttl,
        }
    }

    /// The panel's "Select as OBR": `admin` will act for `user_id` through
    /// `agent_id` (or their only logged-in agent).
    pub async fn select(
        &self,
        admin: &Admin,
        user_id: &str,
        agent_id: Option<&str>,
    ) -> Result<ObrSession, ObrError> {
        let user = self
            .directory
            .person(user_id)
            .await?
            .ok_or(ObrError::UserNotFound)?;
        check_target(admin, &user)?;
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
            expires_at_ms: now + crate::directory::duration_ms(self.ttl),
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
        self.directory
            .audit(
                &admin.email,
                "obr.started",
                &user.email,
                json!({ "session": session.id, "agent": agent_id, "user_id": user.id,
                        "expires_at_ms": session.expires_at_ms }),
            )
            .await?;
        self.directory
            .notify(
                &user.id,
                "obr.started",
                &format!(
                    "{} started an on-behalf registration on your security key",
                    admin.email
                ),
                json!({ "admin": admin.email, "session": session.id, "agent": agent_id }),
            )
            .await?;
        self.store
            .publish(&AgentEvent::ModeChanged { agent_id })
            .await?;
        Ok(session)
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
/// (its key) by that admin, and has not expired. Checked on every request.
pub fn serves(session: &ObrSession, agent_id: &str, principal: &Principal, now_ms: i64) -> bool {
    session.agent_id == agent_id
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
