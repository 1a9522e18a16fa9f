//! [`SignerCore`]: the signer's public face, what the gRPC service and an
//! in-process relay call. Owns the actor runtime, the activation registry
//! and the store, and the types that cross its API ([`CtapCall`],
//! [`CtapReply`], [`CredentialInfo`], ...).
//!
//! Callable from any tokio task on any runtime: the actix machinery runs on
//! its own threads. Never sees key material itself.

use std::sync::Arc;
use std::time::Duration;

use passkey_types::ctap2::Ctap2Error;
use tokio::time::Instant;

use crate::actor::{ActorRuntime, Registry};
use crate::config::SignerConfig;
use crate::ctap::Shared;
use crate::ctap::attestation::Attestation;
use crate::error::SignerError;
use crate::ids::{CredentialId, UserId};
use crate::store::Store;

/// The admin acting on the key owner's behalf (on-behalf registration).
/// The relay has already checked that they may.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObrActing {
    pub admin_id: String,
    pub obr_session_id: String,
}

/// The key owner's approval of one call, given on their own device: it
/// stands for user verification in normal mode (the `uv` option, or the
/// pinUvAuthToken that authenticatorClientPIN issues on it), as the
/// admin's OBR session does in on-behalf mode.
///
/// A proof value: the relay creates one only after the user approved the
/// request on their phone, and nothing in the signer creates one. `Debug`
/// names the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserApproval {
    device_id: String,
}

impl UserApproval {
    /// The user approved on device `device_id` (the relay calls this once
    /// the device channel has confirmed the approval).
    pub fn granted_by_device(device_id: impl Into<String>) -> Self {
        Self {
            device_id: device_id.into(),
        }
    }

    /// The device that approved.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }
}

/// One CTAP message for a user's security key.
#[derive(Clone, Debug)]
pub struct CtapCall {
    pub user_id: String,
    /// Set when an admin acts for the user: a request asking for user
    /// verification (option `uv`) is verified by the admin's session, and a
    /// created credential records who made it.
    pub obr: Option<ObrActing>,
    /// Set when the key's owner approved this call on their device: a
    /// request asking for user verification is verified by it. (The gRPC
    /// service sets none yet: the device approval path is not built.)
    pub approval: Option<UserApproval>,
    /// CTAP command byte + CBOR parameters.
    pub payload: Vec<u8>,
    /// When the caller stops waiting; past it the answer is
    /// `CTAP2_ERR_USER_ACTION_TIMEOUT` (0x2F).
    pub deadline: tokio::time::Instant,
}

/// The answer to a [`CtapCall`].
#[derive(Clone, Debug)]
pub struct CtapReply {
    /// CTAP status byte + CBOR.
    pub payload: Vec<u8>,
    /// Set when the call created a credential.
    pub created: Option<CreatedCredential>,
    /// Time spent waiting for the user's actor.
    pub queue: Duration,
    /// Time the actor spent on the call.
    pub work: Duration,
    /// Set when another pod holds the user's lease: its endpoint. The
    /// payload is then empty and the caller should ask that pod.
    pub owner: Option<String>,
    /// Set when the call needs the key owner's approval on their device and
    /// carried none: what to ask. The payload is then empty.
    pub approval_needed: Option<ApprovalNeeded>,
    /// Set for an on-behalf assertion with user presence: what was signed
    /// or refused, for the audit log.
    pub obr_assertion: Option<ObrAssertion>,
}

/// An on-behalf getAssertion (or getNextAssertion) that asked for user
/// presence. An OBR session may create credentials, not sign in: the key
/// signs only with a credential created in that same session (a site may
/// verify a new key at once) and refuses every other one
/// (`CTAP2_ERR_OPERATION_DENIED`). Either way the relay audits it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObrAssertion {
    pub credential_id: Vec<u8>,
    pub rp_id: String,
    pub refused: bool,
}

/// What the key's owner is asked to approve on their device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalNeeded {
    pub rp_id: String,
    pub operation: Operation,
    /// The platform asked for user verification, not just presence.
    pub user_verification: bool,
}

/// The kind of call awaiting approval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// authenticatorMakeCredential.
    Register,
    /// authenticatorGetAssertion.
    SignIn,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Register => "register",
            Operation::SignIn => "sign_in",
        }
    }
}

impl CtapReply {
    /// The CTAP status byte.
    pub fn status(&self) -> u8 {
        self.payload
            .first()
            .copied()
            .unwrap_or(Ctap2Error::Other.into())
    }

    /// A bare status answer after `queue` of waiting.
    pub(crate) fn failure(status: Ctap2Error, queue: Duration) -> Self {
        Self {
            payload: vec![status.into()],
            created: None,
            queue,
            work: Duration::ZERO,
            owner: None,
            approval_needed: None,
            obr_assertion: None,
        }
    }

    /// "Not mine: ask `owner`."
    pub(crate) fn redirect(owner: String, queue: Duration) -> Self {
        Self {
            payload: Vec::new(),
            created: None,
            queue,
            work: Duration::ZERO,
            owner: Some(owner),
            approval_needed: None,
            obr_assertion: None,
        }
    }
}

/// What a makeCredential created (for the audit log and the user's
/// notification).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedCredential {
    pub credential_id: Vec<u8>,
    pub rp_id: String,
    pub user_name: String,
    pub user_display_name: String,
    pub discoverable: bool,
}

/// An on-behalf credential waiting for its record (the outbox row written
/// with it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObrRecord {
    pub credential_id: Vec<u8>,
    pub user_id: String,
    pub admin_id: String,
    pub obr_session_id: String,
    pub rp_id: String,
    pub user_name: String,
    pub user_display_name: String,
    pub discoverable: bool,
    pub created_at_ms: i64,
}

/// A credential as the panel lists it (public data only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialInfo {
    pub credential_id: Vec<u8>,
    pub rp_id: String,
    pub user_handle: Vec<u8>,
    pub user_name: String,
    pub user_display_name: String,
    pub discoverable: bool,
    /// "ES256".
    pub algorithm: String,
    pub sign_count: u32,
    pub created_at_ms: i64,
    /// Set when an admin created it on the user's behalf.
    pub created_by_admin: Option<String>,
    pub obr_session_id: Option<String>,
    pub last_used_at_ms: Option<i64>,
}

/// A running signer: every user's security key, activated on demand.
/// Cheap to clone; the actor threads stop when the last clone is dropped
/// (or on [`SignerCore::shutdown`]).
#[derive(Clone, Debug)]
pub struct SignerCore {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Arc<Registry>,
    store: Store,
    runtime: ActorRuntime,
    approval_key: Option<ring::hmac::Key>,
    /// authenticatorGetInfo, the same for every user.
    get_info: Vec<u8>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("registry", &self.registry)
            .field("store", &self.store)
            .field("approval_key", &self.approval_key.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.registry.close();
        self.runtime.stop();
    }
}

impl SignerCore {
    /// Open the database (running migrations) and start the actor threads.
    pub async fn open(config: SignerConfig) -> Result<Self, SignerError> {
        let store = Store::open(&config.database_url, config.db_max_connections).await?;
        let kek_id = config.kek.id().to_owned();
        let attestation = Attestation::new(&config.attestation, config.aaguid)?;
        let mut shared = Shared::new(store.clone(), config.kek, config.aaguid, attestation)
            .map_err(|e| SignerError::Internal(e.to_string()))?;
        shared.obr_stands_for_uv = config.obr_stands_for_uv;
        let threads = match config.actor_threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let runtime = ActorRuntime::start(threads).await?;
        let get_info = shared.get_info().to_vec();
        let registry = Registry::new(
            Arc::new(shared),
            runtime.arbiters().to_vec(),
            config.idle_passivation,
            config.placement.clone(),
        );
        tracing::info!(
            actor_threads = threads,
            %kek_id,
            idle_passivation = ?config.idle_passivation,
            "signer open"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                registry,
                store,
                runtime,
                approval_key: config
                    .approval_key
                    .map(|key| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key)),
                get_info,
            }),
        })
    }

    /// The key's authenticatorGetInfo answer (status byte + CBOR), the same
    /// for every user: no user's key is activated to give it.
    pub fn get_info(&self) -> Vec<u8> {
        self.inner.get_info.clone()
    }

    /// The owner's approval of exactly this call, if `mac` is the relay's
    /// MAC over it (`obr_proto::approval`); `None` for anything else — a
    /// made-up id, another user's or another request's approval, or no
    /// approval key configured.
    pub fn approval_for(
        &self,
        approval_id: &str,
        user_id: &str,
        payload: &[u8],
        mac: &[u8],
    ) -> Option<UserApproval> {
        let key = self.inner.approval_key.as_ref()?;
        let input = obr_proto::approval::mac_input(approval_id, user_id, payload);
        ring::hmac::verify(key, &input, mac).ok()?;
        Some(UserApproval::granted_by_device(format!(
            "approval:{approval_id}"
        )))
    }

    /// Answer one CTAP message. Never fails: every failure is a CTAP status
    /// byte in the reply (a malformed user id is
    /// `CTAP1_ERR_INVALID_PARAMETER`, an oversized message
    /// `CTAP1_ERR_INVALID_LENGTH`, a passed deadline
    /// `CTAP2_ERR_USER_ACTION_TIMEOUT`, our own faults `CTAP1_ERR_OTHER`).
    pub async fn ctap(&self, call: CtapCall) -> CtapReply {
        let received = Instant::now();
        let user = match UserId::new(call.user_id) {
            Ok(user) => user,
            Err(error) => {
                tracing::debug!(%error, "CTAP call for an invalid user id");
                return CtapReply::failure(Ctap2Error::InvalidParameter, Duration::ZERO);
            }
        };
        // CTAP 2.1 §6: nothing longer than maxMsgSize is accepted.
        if call.payload.len() > obr_proto::MAX_CTAP_MESSAGE {
            return CtapReply::failure(Ctap2Error::InvalidLength, Duration::ZERO);
        }
        self.inner
            .registry
            .ctap(
                &user,
                call.payload,
                call.obr,
                call.approval,
                received,
                call.deadline,
            )
            .await
    }

    /// On-behalf credentials whose record no relay has confirmed yet,
    /// created at or before `created_before_ms`, oldest first, at most
    /// `limit` (the outbox, migration 0003). Shared by every signer pod on
    /// the database; activates nothing.
    pub async fn pending_obr_records(
        &self,
        created_before_ms: i64,
        limit: u32,
    ) -> Result<Vec<ObrRecord>, SignerError> {
        Ok(self
            .inner
            .store
            .pending_obr_records(created_before_ms, i64::from(limit))
            .await?)
    }

    /// A relay recorded `credential_id`'s creation (audit and the user's
    /// notification): it leaves the outbox. Returns whether it was there.
    pub async fn ack_obr_record(&self, credential_id: &[u8]) -> Result<bool, SignerError> {
        Ok(self.inner.store.ack_obr_record(credential_id).await?)
    }

    /// `user_id`'s credentials, oldest first. A read: activates nothing.
    pub async fn list_credentials(
        &self,
        user_id: &str,
    ) -> Result<Vec<CredentialInfo>, SignerError> {
        let user = UserId::new(user_id)?;
        Ok(self.inner.store.list_credentials(&user).await?)
    }

    /// Delete one of `user_id`'s credentials; `Ok(false)` if there was no
    /// such credential. The delete goes through the user's actor, fenced
    /// like every other write.
    pub async fn delete_credential(
        &self,
        user_id: &str,
        credential_id: &[u8],
    ) -> Result<bool, SignerError> {
        let user = UserId::new(user_id)?;
        let credential = CredentialId::new(credential_id.to_vec())?;
        // Nothing to delete: do not claim the user for nothing.
        if !self.inner.store.has_credential(&user, &credential).await? {
            return Ok(false);
        }
        self.inner
            .registry
            .delete_credential(&user, credential)
            .await
    }

    /// Reset `user_id`'s whole security key (an admin's action from the
    /// panel, audited by the relay): delete every credential and replace
    /// the user's data key, fenced through the user's actor like every
    /// other write. Returns how many credentials were deleted.
    pub async fn reset_user_key(&self, user_id: &str) -> Result<u64, SignerError> {
        let user = UserId::new(user_id)?;
        self.inner.registry.reset_user_key(&user).await
    }

    /// How many users have an active actor in this process.
    pub fn active_users(&self) -> usize {
        self.inner.registry.active_users()
    }

    /// Whether `user_id` has an active actor in this process.
    pub fn is_active(&self, user_id: &str) -> bool {
        UserId::new(user_id).is_ok_and(|user| self.inner.registry.is_active(&user))
    }

    /// Stop every actor and wait for the actor threads to finish. Calls made
    /// afterwards answer `CTAP1_ERR_OTHER`.
    pub async fn shutdown(&self) {
        self.inner.registry.close();
        self.inner.runtime.shutdown().await;
    }
}
