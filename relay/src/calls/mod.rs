//! One CTAP request's use case, from an agent's socket to a user's key and
//! back: **check the session → route → call the signer → ask the owner →
//! record**. The socket actor (`agents::session`) only moves frames; every
//! rule about *whose* key a request may reach, and what must be on record
//! before the browser hears the answer, is here, in this order:
//!
//! 1. The OBR session is re-read from the store when the socket's copy is
//!    older than [`OBR_MAX_STALENESS`], and serves only the agent (key) and
//!    admin it was started by, until its expiry ([`crate::obr::serves`]).
//!    The agent must believe in the same session: a request the agent sent
//!    in normal mode never reaches the user's key, nor one sent for a
//!    session the relay no longer has ([`Answer::ModeMismatch`]).
//!    Who is logged in on the agent is re-read from the directory too: on
//!    behalf, the admin must still be an admin; in normal mode, the person
//!    must still exist. A login or session kept in the store carries no
//!    power the directory has withdrawn.
//! 2. The key is the session's user's, else the principal's own. On
//!    behalf, the session's policy comes first ([`request`]): an RP off
//!    its allow-list, or a registration past its limit, is refused and
//!    audited without reaching the key; the registration that reaches
//!    the limit ends the session.
//! 3. The signer answers over the user's link ([`crate::routing`]).
//! 4. Normal mode: the key's owner approves on their device
//!    ([`approval`]); one pending approval per agent.
//! 5. On behalf: a created credential, and any assertion the key signed
//!    or refused, is audited (and the user told) *before* the answer
//!    leaves. If the record cannot be written the browser gets
//!    `CTAP1_ERR_OTHER`, never an unrecorded credential or signature.
//!    Steps 3 and 5 of an on-behalf call run in a task of their own, to
//!    their end: a browser's CANCEL (which drops [`Calls::serve`]) can no
//!    longer come between the key's answer and its record. (On behalf
//!    the key waits for nobody, so there is nothing to stop early; the
//!    signer's outbox still covers a relay that dies in between.)
//!
//! It never touches sockets or the registry of connected agents.

mod approval;
mod request;

use std::sync::Arc;
use std::time::Duration;

use obr_proto::agent::KeepaliveState;
use obr_proto::ctap::{StatusCode, command};
use obr_proto::signer::{Acting, LinkResponse};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use self::approval::{AskUser, Decision};
use self::request::Request;
use crate::clock::now_ms;
use crate::directory::grants::Grants;
use crate::directory::{Directory, KeyStatus};
use crate::obr::{self, EndReason, Obr, RegistrationSlot};
use crate::routing::{LinkError, Router};
use crate::sessions::{ObrSession, Principal, SessionStore, StoreError};

/// How old a socket's copy of its OBR session may be when it serves a
/// request: older, and the store is asked again first. A session ended
/// anywhere — by another pod, by its TTL, or lost with the store — stops
/// serving within this time even if no event reached this pod.
pub const OBR_MAX_STALENESS: Duration = Duration::from_secs(1);

/// Tells the agent what a request's KEEPALIVEs should say meanwhile.
pub type StatusSink = Arc<dyn Fn(KeepaliveState) + Send + Sync>;

/// What every call needs; one per relay process.
#[derive(Clone)]
pub struct Calls {
    store: Arc<dyn SessionStore>,
    router: Router,
    obr: Obr,
    directory: Directory,
    grants: Grants,
    /// What owner approvals are MACed with for the signers.
    approval_key: Option<ring::hmac::Key>,
}

/// A socket's copy of its OBR session, and when the store last agreed.
#[derive(Clone, Debug)]
pub struct CachedObr {
    pub session: ObrSession,
    pub checked_at: Instant,
}

/// One CTAP request, as the agent's socket knows it.
pub struct CtapCall {
    /// Proven by the connection's challenge (`agents::identity`).
    pub agent_id: String,
    pub principal: Principal,
    pub obr: Option<CachedObr>,
    /// The session the agent believes it acts in ("" in normal mode).
    pub agent_obr_session: String,
    /// CTAP command byte + CBOR.
    pub payload: Vec<u8>,
    pub budget: Duration,
    pub status: StatusSink,
    /// One permit: at most one owner approval pending per agent.
    pub approval_gate: Arc<Semaphore>,
    /// One of the agent's in-flight slots, held until the work is over.
    pub slot: OwnedSemaphorePermit,
}

/// How a call ended.
#[derive(Debug)]
pub enum Answer {
    /// The signer's answer (or the relay's refusal) for the browser.
    Reply(Box<LinkResponse>),
    /// The agent and the relay disagree about the OBR session: refused
    /// with `CTAP2_ERR_OPERATION_DENIED`; the socket tells the agent its
    /// mode again.
    ModeMismatch,
}

impl Answer {
    fn status(status: StatusCode) -> Self {
        Answer::Reply(Box::new(LinkResponse {
            payload: status.response(),
            ..LinkResponse::default()
        }))
    }

    /// The bytes for the browser.
    pub fn into_payload(self) -> (Vec<u8>, Option<Box<LinkResponse>>) {
        match self {
            Answer::Reply(mut response) => {
                let payload = std::mem::take(&mut response.payload);
                (payload, Some(response))
            }
            Answer::ModeMismatch => (StatusCode::OperationDenied.response(), None),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("cannot check the OBR session: {0}")]
    Store(#[from] StoreError),
    #[error("cannot check who is logged in: {0}")]
    Directory(#[from] crate::directory::DirectoryError),
}

impl CallError {
    /// The status the browser gets.
    pub fn status(&self) -> StatusCode {
        match self {
            CallError::Link(LinkError::Timeout { .. }) => StatusCode::UserActionTimeout,
            _ => StatusCode::Other,
        }
    }
}

impl Calls {
    pub fn new(
        store: Arc<dyn SessionStore>,
        router: Router,
        obr: Obr,
        grants: Grants,
        approval_key: Option<[u8; obr_proto::approval::KEY_LEN]>,
    ) -> Self {
        Self {
            store,
            router,
            obr,
            directory: grants.directory().clone(),
            grants,
            approval_key: approval_key.map(|k| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &k)),
        }
    }

    /// Serve one request; see the module's steps.
    pub async fn serve(&self, call: CtapCall) -> Result<Answer, CallError> {
        let deadline = tokio::time::Instant::now() + call.budget;
        // 1. The session, fresh enough, bound to this agent and admin.
        let session = self.current_session(&call).await?;
        let believed = session.as_ref().map_or("", |s| s.id.as_str());
        if believed != call.agent_obr_session {
            tracing::info!(agent = %call.agent_id, relay = believed,
                agent_believes = %call.agent_obr_session, "OBR mode mismatch; request refused");
            return Ok(Answer::ModeMismatch);
        }
        if !self
            .still_granted(&call.principal, session.as_ref(), &call.payload)
            .await?
        {
            tracing::warn!(agent = %call.agent_id, person = %call.principal.person_id,
                on_behalf = session.is_some(), "the directory no longer grants this; refused");
            // On behalf, the session ends with it: one audit record, the
            // user told, the agent back to normal mode. Refused either way.
            if let Some(session) = &session
                && let Err(error) = self.obr.end_by_relay(session, EndReason::Withdrawn).await
            {
                tracing::error!(session = %session.id, %error,
                    "cannot end a session the directory no longer grants");
            }
            return Ok(Answer::status(StatusCode::OperationDenied));
        }
        // 2. Whose key: on behalf, the session's user's (steps 3 and 5 in
        // `on_behalf`); else the principal's own.
        if let Some(session) = session {
            let calls = self.clone();
            let (payload, budget, slot) = (call.payload, call.budget, call.slot);
            let work = tokio::spawn(async move {
                let answer = calls.on_behalf(&session, payload, budget).await;
                drop(slot);
                answer
            });
            return work.await.unwrap_or_else(|e| {
                tracing::error!(error = %e, "an on-behalf call's task failed");
                Ok(Answer::status(StatusCode::Other))
            });
        }
        let user_id = call.principal.person_id.clone();
        // 3. The signer.
        let mut response = self
            .router
            .ctap(&user_id, call.payload.clone(), call.budget, None, None)
            .await?;
        // 4. Normal mode: the owner approves on their device.
        if let Some(needed) = response.approval_needed.take() {
            let Ok(_permit) = call.approval_gate.clone().try_acquire_owned() else {
                tracing::info!(agent = %call.agent_id, "a second owner approval while one is pending");
                return Ok(Answer::status(StatusCode::ChannelBusy));
            };
            let asking = AskUser {
                calls: self,
                status: &call.status,
                person_id: &user_id,
                agent_id: &call.agent_id,
            };
            match asking.ask(&needed, deadline).await {
                Decision::Approved(approval_id) => {
                    // The directory again: the key may have been suspended
                    // (or the person removed) while the owner was asked.
                    if !self
                        .still_granted(&call.principal, None, &call.payload)
                        .await?
                    {
                        tracing::warn!(person = %user_id,
                            "approved, but the directory no longer grants this: refused");
                        return Ok(Answer::status(StatusCode::OperationDenied));
                    }
                    let Some(key) = &self.approval_key else {
                        tracing::error!(
                            "an owner approved, but this relay has no approval key for \
                            its signers (--approval-key-file): refused"
                        );
                        return Ok(Answer::status(StatusCode::OperationDenied));
                    };
                    // The approval is good for this user's this request only.
                    let input =
                        obr_proto::approval::mac_input(&approval_id, &user_id, &call.payload);
                    let mac = ring::hmac::sign(key, &input).as_ref().to_vec();
                    let budget = deadline.saturating_duration_since(tokio::time::Instant::now());
                    response = self
                        .router
                        .ctap(
                            &user_id,
                            call.payload,
                            budget,
                            None,
                            Some((approval_id, mac)),
                        )
                        .await?;
                    if response.approval_needed.is_some() {
                        // The signer did not take it (another approval key).
                        tracing::error!(
                            "the signer refused the owner's approval: do relays and \
                            signers share one approval key?"
                        );
                        return Ok(Answer::status(StatusCode::OperationDenied));
                    }
                }
                Decision::Refused(status) => return Ok(Answer::status(status)),
            }
        }
        Ok(Answer::Reply(Box::new(response)))
    }

    /// Step 1, the directory's half: the person logged in still exists,
    /// and in normal mode their key is active (a suspended key answers
    /// nothing but getInfo, `payload`); on behalf, they are still an admin
    /// and may still act on the session's user (not an admin now, in
    /// scope, key still active).
    async fn still_granted(
        &self,
        principal: &Principal,
        session: Option<&ObrSession>,
        payload: &[u8],
    ) -> Result<bool, CallError> {
        let Some(session) = session else {
            let person = self.directory.person(&principal.person_id).await?;
            return Ok(person.is_some_and(|person| {
                person.key_status == KeyStatus::Active || payload == [command::GET_INFO]
            }));
        };
        // On behalf: the admin's grant as the directory holds it now (role
        // and scope), and the user still a target it reaches.
        let Some(admin) = self.grants.admin(&principal.person_id).await? else {
            return Ok(false);
        };
        let target = self.directory.person(&session.user_id).await?;
        Ok(target.is_some_and(|target| obr::check_target(&admin, &target).is_ok()))
    }

    /// Steps 3 and 5 on behalf of `session`: the key's answer, then its
    /// record, before the browser hears of it. Run to its end whatever
    /// happens to the request (see the module's step 5).
    async fn on_behalf(
        &self,
        session: &ObrSession,
        payload: Vec<u8>,
        budget: Duration,
    ) -> Result<Answer, CallError> {
        let slot = match self.within_policy(session, &payload).await {
            Ok(Ok(slot)) => slot,
            Ok(Err(refused)) => return Ok(refused),
            Err(e) => {
                tracing::error!(error = %e, session = %session.id,
                    "cannot apply the session's policy; the browser gets an error");
                return Ok(Answer::status(StatusCode::Other));
            }
        };
        let acting = Acting {
            admin_id: session.admin_id.clone(),
            obr_session_id: session.id.clone(),
        };
        let response = self
            .router
            .ctap(&session.user_id, payload, budget, Some(acting), None)
            .await;
        let created = response.as_ref().is_ok_and(|r| r.created.is_some());
        // Counted, and the key answered without a passkey (excluded,
        // refused…): the count is given back. On a link error the key may
        // still have made one (the outbox records it): the count stays.
        if slot != RegistrationSlot::Unlimited
            && response.is_ok()
            && !created
            && let Err(e) = self.obr.release_registration(session).await
        {
            tracing::warn!(error = %e, session = %session.id, "cannot give a registration count back");
        }
        let response = response?;
        if response.approval_needed.is_some() {
            // The signer asks no owner on behalf; a signer that does is
            // not one this relay knows how to serve.
            tracing::error!(session = %session.id, "the signer asked for an owner's approval on behalf");
            return Ok(Answer::status(StatusCode::OperationDenied));
        }
        if let Err(e) = self.record(session, &response).await {
            tracing::error!(error = %e, session = %session.id,
                "cannot record an on-behalf operation; the browser gets an error");
            return Ok(Answer::status(StatusCode::Other));
        }
        if let RegistrationSlot::Counted { nth, limit } = slot
            && created
            && nth >= limit
        {
            // The last passkey it may make: the agent returns to normal
            // mode by itself.
            if let Err(e) = self
                .obr
                .end_by_relay(session, EndReason::LimitReached)
                .await
            {
                tracing::error!(error = %e, session = %session.id,
                    "cannot end a session that reached its registration limit");
            }
        }
        Ok(Answer::Reply(Box::new(response)))
    }

    /// Step 2 on behalf: the session's policy on this request. A request
    /// for an RP off its allow-list, or a registration past its limit, is
    /// refused (`CTAP2_ERR_OPERATION_DENIED`) and audited without reaching
    /// the key; a registration within its limit is counted.
    async fn within_policy(
        &self,
        session: &ObrSession,
        payload: &[u8],
    ) -> Result<Result<RegistrationSlot, Answer>, obr::ObrError> {
        let (rp_id, registers) = match Request::read(payload) {
            Request::MakeCredential { rp_id } => (rp_id, true),
            Request::GetAssertion { rp_id } => (rp_id, false),
            Request::Other => return Ok(Ok(RegistrationSlot::Unlimited)),
        };
        let rp_id = rp_id.unwrap_or_default();
        let reason = if !session.policy.allows_rp(&rp_id) {
            "rp_not_allowed"
        } else if !registers {
            return Ok(Ok(RegistrationSlot::Unlimited));
        } else {
            match self.obr.reserve_registration(session).await? {
                RegistrationSlot::Full => "registration_limit_reached",
                slot => return Ok(Ok(slot)),
            }
        };
        tracing::info!(session = %session.id, rp_id, reason, "refused by the session's policy");
        self.obr.refused_by_policy(session, &rp_id, reason).await?;
        Ok(Err(Answer::status(StatusCode::OperationDenied)))
    }

    /// A request from an agent nobody is logged in on: the key belongs to
    /// nobody yet, but still says what it is — authenticatorGetInfo (CTAP
    /// 2.1 §6.4 gives it no failure, and hosts enumerate keys with it),
    /// from the signers' description, touching no user's key. Anything
    /// else is refused with `CTAP2_ERR_OPERATION_DENIED`.
    pub async fn serve_anonymous(&self, payload: &[u8]) -> Answer {
        if payload != [command::GET_INFO] {
            return Answer::status(StatusCode::OperationDenied);
        }
        match self.router.get_info().await {
            Ok(payload) => Answer::Reply(Box::new(LinkResponse {
                payload,
                ..LinkResponse::default()
            })),
            Err(e) => {
                tracing::warn!(error = %e, "cannot describe the key to an agent not logged in");
                Answer::status(StatusCode::Other)
            }
        }
    }

    /// Step 1: the cached session if the store agreed recently, else the
    /// store's; either way only if it serves this agent and admin now.
    async fn current_session(&self, call: &CtapCall) -> Result<Option<ObrSession>, CallError> {
        // No session known: normal mode, the principal's own key. (A
        // session started meanwhile whose event was lost only leaves the
        // admin on their own key; no store round trip on this path.)
        let session = match &call.obr {
            None => None,
            Some(cached) if cached.checked_at.elapsed() <= OBR_MAX_STALENESS => {
                Some(cached.session.clone())
            }
            Some(_) => self.store.get_obr(&call.agent_id).await?,
        };
        Ok(session.filter(|s| obr::serves(s, &call.agent_id, &call.principal, now_ms())))
    }

    async fn record(
        &self,
        session: &ObrSession,
        response: &LinkResponse,
    ) -> Result<(), obr::ObrError> {
        if let Some(created) = &response.created {
            self.obr.registration_done(session, created).await?;
            // Recorded: the signers' outbox may let it go. If this is lost
            // the outbox sweep finds it recorded and acks it then.
            let router = self.router.clone();
            let (user, credential) = (session.user_id.clone(), created.credential_id.clone());
            tokio::spawn(async move {
                if let Err(e) = router.ack_record(&user, credential).await {
                    tracing::debug!(error = %e, "outbox ack deferred to the sweep");
                }
            });
        }
        if let Some(assertion) = &response.obr_assertion {
            if assertion.refused {
                self.obr.assertion_refused(session, assertion).await?;
            } else {
                self.obr.assertion_done(session, assertion).await?;
            }
        }
        Ok(())
    }
}
