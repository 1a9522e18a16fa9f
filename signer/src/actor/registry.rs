//! The activation registry: which users have an active [`UserKey`] actor in
//! this process, keyed by user id. Activates an actor on demand (on the
//! arbiter the user's id hashes to, so a user always lands on the same
//! thread), delivers calls to it, and forgets it when it passivates.
//!
//! Holds addresses only; the per-user state lives in the actors.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use actix::{Actor as _, Addr, MailboxError};
use actix_rt::ArbiterHandle;
use passkey_types::ctap2::Ctap2Error;
use tokio::time::Instant;

use crate::call::{CtapReply, ObrActing, UserApproval};
use crate::ctap::{Authenticator, Shared};
use crate::error::SignerError;
use crate::ids::{CredentialId, UserId};
use crate::placement::{Lease, Placement};

use super::{Ctap, DeleteCredential, HandOver, ResetKey, UserKey};

/// A call whose actor stopped before answering (it passivated between
/// lookup and delivery) is delivered once more, to a fresh activation.
const MAX_DELIVERY_ATTEMPTS: usize = 2;
/// How long the panel's delete waits for the user's actor.
const DELETE_TIMEOUT: Duration = Duration::from_secs(10);

/// The users active in this process.
#[derive(Debug)]
pub(crate) struct Registry {
    shared: Arc<Shared>,
    arbiters: Vec<ArbiterHandle>,
    idle_passivation: Duration,
    actors: Mutex<HashMap<UserId, Activation>>,
    next_generation: AtomicU64,
    closed: AtomicBool,
    /// The pod drains and has handed its users over: a call that still
    /// comes is sent on to another live signer, never activated here.
    handed_over: AtomicBool,
    /// Leases in Redis, when this signer is one of several pods.
    placement: Option<Placement>,
}

#[derive(Debug)]
struct Activation {
    addr: Addr<UserKey>,
    generation: u64,
}

impl Registry {
    pub(crate) fn new(
        shared: Arc<Shared>,
        arbiters: Vec<ArbiterHandle>,
        idle_passivation: Duration,
        placement: Option<Placement>,
    ) -> Arc<Self> {
        Arc::new(Self {
            shared,
            arbiters,
            idle_passivation,
            actors: Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            handed_over: AtomicBool::new(false),
            placement,
        })
    }

    pub(super) fn placement(&self) -> Option<&Placement> {
        self.placement.as_ref()
    }

    /// With placement on, a user not active here is activated only under
    /// this pod's lease; `Err(owner)` names the pod that holds it.
    async fn take_lease(&self, user: &UserId) -> Result<(), Option<String>> {
        let Some(placement) = &self.placement else {
            return Ok(());
        };
        if self.lock().get(user).is_some_and(|a| a.addr.connected()) {
            return Ok(());
        }
        match placement.acquire(user.as_str()).await {
            Ok(Lease::Owned) => Ok(()),
            Ok(Lease::HeldBy(owner)) => Err(Some(owner)),
            Err(error) => {
                tracing::warn!(%user, %error, "cannot take the user's lease");
                Err(None)
            }
        }
    }

    /// Answer one CTAP call for `user` by its actor, activating it if
    /// needed. `caller_deadline` bounds the whole wait.
    pub(crate) async fn ctap(
        self: &Arc<Self>,
        user: &UserId,
        payload: Vec<u8>,
        obr: Option<ObrActing>,
        approval: Option<UserApproval>,
        received: Instant,
        caller_deadline: tokio::time::Instant,
    ) -> CtapReply {
        // The actor compares against wall-clock `Instant`s on its own
        // runtime, so it gets the remaining budget, not the caller's clock.
        let deadline =
            received + caller_deadline.saturating_duration_since(tokio::time::Instant::now());
        for _ in 0..MAX_DELIVERY_ATTEMPTS {
            // Checked on every attempt: a call queued behind the hand-over
            // must not take the lease back or start an actor here.
            if self.handed_over.load(Ordering::Acquire) {
                return self.elsewhere(received).await;
            }
            match self.take_lease(user).await {
                Ok(()) => {}
                Err(Some(owner)) => return CtapReply::redirect(owner, received.elapsed()),
                Err(None) => return CtapReply::failure(Ctap2Error::Other, received.elapsed()),
            }
            let addr = match self.activate(user) {
                Ok(addr) => addr,
                Err(error) => {
                    tracing::warn!(%user, %error, "cannot activate user");
                    return CtapReply::failure(Ctap2Error::Other, received.elapsed());
                }
            };
            let call = Ctap {
                payload: payload.clone(),
                obr: obr.clone(),
                approval: approval.clone(),
                received,
                deadline,
            };
            match tokio::time::timeout_at(caller_deadline, addr.send(call)).await {
                Ok(Ok(reply)) => return reply,
                Ok(Err(MailboxError::Closed)) => {
                    tracing::debug!(%user, "actor stopped before answering: re-activating");
                }
                Ok(Err(MailboxError::Timeout)) | Err(_) => {
                    return CtapReply::failure(Ctap2Error::UserActionTimeout, received.elapsed());
                }
            }
        }
        CtapReply::failure(Ctap2Error::Other, received.elapsed())
    }

    /// A call this draining pod no longer takes: sent on to another live
    /// signer, which takes the user's lease.
    async fn elsewhere(&self, received: Instant) -> CtapReply {
        match self.placement.as_ref() {
            Some(placement) => match placement.another_member().await {
                Ok(Some(other)) => CtapReply::redirect(other, received.elapsed()),
                _ => CtapReply::failure(Ctap2Error::Other, received.elapsed()),
            },
            None => CtapReply::failure(Ctap2Error::Other, received.elapsed()),
        }
    }

    /// Delete one of `user`'s credentials through the user's actor (the
    /// write is fenced like every other).
    pub(crate) async fn delete_credential(
        self: &Arc<Self>,
        user: &UserId,
        credential: CredentialId,
    ) -> Result<bool, SignerError> {
        for _ in 0..MAX_DELIVERY_ATTEMPTS {
            let addr = self.activate(user)?;
            let message = DeleteCredential(credential.clone());
            match tokio::time::timeout(DELETE_TIMEOUT, addr.send(message)).await {
                Ok(Ok(result)) => return result.map_err(SignerError::from),
                Ok(Err(MailboxError::Closed)) => {}
                Ok(Err(MailboxError::Timeout)) | Err(_) => {
                    return Err(SignerError::Internal(format!(
                        "deleting a credential took longer than {DELETE_TIMEOUT:?}"
                    )));
                }
            }
        }
        Err(SignerError::ShutDown)
    }

    /// Whether `user` has a live actor in this process.
    pub(crate) fn is_active(&self, user: &UserId) -> bool {
        self.lock().get(user).is_some_and(|a| a.addr.connected())
    }

    /// Reset `user`'s whole key through the user's actor (fenced like
    /// every write).
    pub(crate) async fn reset_user_key(
        self: &Arc<Self>,
        user: &UserId,
    ) -> Result<u64, SignerError> {
        for _ in 0..MAX_DELIVERY_ATTEMPTS {
            let addr = self.activate(user)?;
            match tokio::time::timeout(DELETE_TIMEOUT, addr.send(ResetKey)).await {
                Ok(Ok(result)) => return result.map_err(SignerError::from),
                Ok(Err(MailboxError::Closed)) => {}
                Ok(Err(MailboxError::Timeout)) | Err(_) => {
                    return Err(SignerError::Internal(format!(
                        "resetting a key took longer than {DELETE_TIMEOUT:?}"
                    )));
                }
            }
        }
        Err(SignerError::ShutDown)
    }

    /// How many users have an active actor.
    pub(crate) fn active_users(&self) -> usize {
        self.lock().len()
    }

    /// Drain: activate nobody more here, stop every user's actor once the
    /// calls queued to it are answered, and give its lease up, so that
    /// another signer takes the user at its next call. Returns how many
    /// users were handed over.
    pub(crate) async fn hand_over(&self) -> usize {
        self.handed_over.store(true, Ordering::Release);
        let actors: Vec<(UserId, Addr<UserKey>)> = self
            .lock()
            .iter()
            .map(|(user, active)| (user.clone(), active.addr.clone()))
            .collect();
        for (user, addr) in &actors {
            // Queued after the user's calls: answered first, then it stops.
            let _ = addr.send(HandOver).await;
            if let Some(placement) = &self.placement
                && let Err(error) = placement.release(user.as_str()).await
            {
                tracing::warn!(%user, %error, "cannot release the user's lease");
            }
        }
        actors.len()
    }

    /// Refuse further activations and forget every actor (they stop with
    /// their arbiters).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.lock().clear();
    }

    /// Forget `user`'s activation `generation` (a later one stays).
    pub(super) fn forget(&self, user: &UserId, generation: u64) {
        let mut actors = self.lock();
        if actors.get(user).is_some_and(|a| a.generation == generation) {
            actors.remove(user);
        }
    }

    /// The address of `user`'s actor, started if there is none (or the one
    /// recorded has stopped).
    fn activate(self: &Arc<Self>, user: &UserId) -> Result<Addr<UserKey>, SignerError> {
        if self.closed.load(Ordering::Acquire) || self.handed_over.load(Ordering::Acquire) {
            return Err(SignerError::ShutDown);
        }
        let mut actors = self.lock();
        if let Some(active) = actors.get(user)
            && active.addr.connected()
        {
            return Ok(active.addr.clone());
        }
        let arbiter = self.arbiter_for(user).ok_or(SignerError::ShutDown)?;
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let authenticator = Authenticator::new(user.clone(), Arc::clone(&self.shared));
        let registry = Arc::downgrade(self);
        let idle_passivation = self.idle_passivation;
        let actor_user = user.clone();
        let addr = UserKey::start_in_arbiter(arbiter, move |_ctx| {
            UserKey::new(
                actor_user,
                generation,
                authenticator,
                registry,
                idle_passivation,
            )
        });
        actors.insert(
            user.clone(),
            Activation {
                addr: addr.clone(),
                generation,
            },
        );
        Ok(addr)
    }

    /// The arbiter `user` always runs on.
    fn arbiter_for(&self, user: &UserId) -> Option<&ArbiterHandle> {
        let count = u64::try_from(self.arbiters.len()).ok().filter(|&n| n > 0)?;
        let mut hasher = DefaultHasher::new();
        user.hash(&mut hasher);
        let index = usize::try_from(hasher.finish() % count).ok()?;
        self.arbiters.get(index)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<UserId, Activation>> {
        // The map stays consistent even if a holder panicked: each
        // operation is a single insert or remove.
        self.actors.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
