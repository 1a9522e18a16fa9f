//! [`SignerCore`]: the signer's public face, what the gRPC service and an
//! in-process relay call. Owns the actor runtime, the activation registry
//! and the store; the types that cross it ([`CtapCall`], [`CtapReply`],
//! [`CredentialInfo`], ...) are the crate's vocabulary, `call`.
//!
//! Callable from any tokio task on any runtime: the actix machinery runs on
//! its own threads. Never sees key material itself.

use std::sync::Arc;
use std::time::Duration;

use passkey_types::ctap2::Ctap2Error;
use tokio::time::Instant;

use crate::actor::{ActorRuntime, Registry};
use crate::call::{CredentialInfo, CtapCall, CtapReply, ObrRecord, UserApproval};
use crate::config::SignerConfig;
use crate::direct::open_shared;
use crate::error::SignerError;
use crate::ids::{CredentialId, UserId};
use crate::store::Store;

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
    /// Set when the pod drains: links end once idle.
    links_closing: tokio::sync::watch::Sender<bool>,
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
        let shared = open_shared(&config).await?;
        let store = shared.store.clone();
        let kek_id = config.kek.id().to_owned();
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
                links_closing: tokio::sync::watch::Sender::new(false),
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

    /// Drain step: hand every active user over to another signer (see
    /// `Registry::hand_over`). Returns how many there were.
    pub async fn hand_over(&self) -> usize {
        self.inner.registry.hand_over().await
    }

    /// Links end once they have been quiet a moment with nothing in
    /// flight (drain; see `service::run_link`).
    pub fn close_links(&self) {
        self.inner.links_closing.send_replace(true);
    }

    /// Turns true when links are to end (see [`Self::close_links`]).
    pub fn links_closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.links_closing.subscribe()
    }

    /// Stop every actor and wait for the actor threads to finish. Calls made
    /// afterwards answer `CTAP1_ERR_OTHER`.
    pub async fn shutdown(&self) {
        self.inner.registry.close();
        self.inner.runtime.shutdown().await;
    }
}
