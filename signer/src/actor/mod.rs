//! One actix actor per active user ([`UserKey`]), and the registry that
//! activates them on demand and forgets them when they passivate.
//!
//! A user's actor *is* that user's security key while it is active: it
//! owns the user's [`Authenticator`] and handles the user's CTAP calls one
//! at a time (`AtomicResponse`: a call starts only after the previous one
//! has answered — sign counters depend on it). It passivates after
//! `idle_passivation` without traffic, or at once when another signer has
//! claimed the user (fencing). Requests whose deadline passed while they
//! waited answer `CTAP2_ERR_USER_ACTION_TIMEOUT`.
//!
//! Never inspects CTAP payloads itself; never touches the database except
//! through the authenticator.

mod registry;
mod runtime;

use std::sync::{Arc, Weak};
use std::time::Duration;

use actix::{
    Actor, ActorContext as _, ActorFutureExt as _, AsyncContext as _, AtomicResponse, Context,
    Handler, Message, SpawnHandle, WrapFuture as _,
};
use passkey_types::ctap2::Ctap2Error;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::call::{CtapReply, ObrActing, UserApproval};
use crate::ctap::{Authenticator, Caller, CommandError, Outcome};
use crate::ids::{CredentialId, UserId};

pub(crate) use self::registry::Registry;
pub(crate) use self::runtime::ActorRuntime;

/// Messages a user's mailbox holds before senders wait (actix's default is
/// 16); a user rarely has more than a few browsers talking to their key.
const USER_MAILBOX_CAPACITY: usize = 64;

/// One CTAP call for the user.
#[derive(Debug)]
pub(crate) struct Ctap {
    pub payload: Vec<u8>,
    pub obr: Option<ObrActing>,
    pub approval: Option<UserApproval>,
    /// When the signer received the call (queue time is measured from here).
    pub received: Instant,
    /// When the caller stops waiting.
    pub deadline: Instant,
}

impl Message for Ctap {
    type Result = CtapReply;
}

/// The panel deletes one of the user's credentials.
#[derive(Debug)]
pub(crate) struct DeleteCredential(pub CredentialId);

impl Message for DeleteCredential {
    type Result = Result<bool, CommandError>;
}

/// The pod drains: stop once the calls queued before this are answered.
#[derive(Debug)]
pub(crate) struct HandOver;

impl Message for HandOver {
    type Result = ();
}

/// An admin resets the user's whole key.
#[derive(Debug)]
pub(crate) struct ResetKey;

impl Message for ResetKey {
    type Result = Result<u64, CommandError>;
}

/// A user's security key while it is active.
pub(crate) struct UserKey {
    user: UserId,
    /// Distinguishes this activation from a later one of the same user.
    generation: u64,
    /// Locked by one call at a time (the handlers are atomic, so the lock
    /// is never contended; it lets the state cross `.await`).
    authenticator: Arc<Mutex<Authenticator>>,
    registry: Weak<Registry>,
    idle_passivation: Duration,
    idle_timer: Option<SpawnHandle>,
}

impl UserKey {
    fn new(
        user: UserId,
        generation: u64,
        authenticator: Authenticator,
        registry: Weak<Registry>,
        idle_passivation: Duration,
    ) -> Self {
        Self {
            user,
            generation,
            authenticator: Arc::new(Mutex::new(authenticator)),
            registry,
            idle_passivation,
            idle_timer: None,
        }
    }

    /// (Re)start the countdown to passivation.
    fn arm_idle_timer(&mut self, ctx: &mut Context<Self>) {
        self.disarm_idle_timer(ctx);
        self.idle_timer = Some(ctx.run_later(self.idle_passivation, |act, ctx| {
            tracing::debug!(user = %act.user, "idle: passivating");
            ctx.stop();
        }));
    }

    fn disarm_idle_timer(&mut self, ctx: &mut Context<Self>) {
        if let Some(timer) = self.idle_timer.take() {
            ctx.cancel_future(timer);
        }
    }

    /// Renew the user's lease (when placement is on) every third of its
    /// TTL; a renewal that finds another holder passivates at once — the
    /// fencing epoch would refuse this actor's next write anyway.
    fn keep_lease(&mut self, ctx: &mut Context<Self>) {
        let Some(placement) = self.registry.upgrade().and_then(|r| r.placement().cloned()) else {
            return;
        };
        let every = placement.lease_ttl() / 3;
        ctx.run_interval(every, move |act, ctx| {
            let placement = placement.clone();
            let user = act.user.clone();
            let renew = async move { placement.renew(user.as_str()).await };
            ctx.spawn(renew.into_actor(act).map(|renewed, act, ctx| match renewed {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(user = %act.user, "lease lost to another signer: passivating");
                    if let Some(registry) = act.registry.upgrade() {
                        registry.forget(&act.user, act.generation);
                    }
                    ctx.stop();
                }
                // Redis is unreachable: keep serving; fencing still holds.
                Err(e) => tracing::warn!(user = %act.user, error = %e, "lease renewal failed"),
            }));
        });
    }

    /// After a call: passivate now if another signer owns the user, else
    /// start counting idle time again.
    fn after_call(&mut self, fenced: bool, ctx: &mut Context<Self>) {
        if fenced {
            tracing::warn!(user = %self.user, "another signer claimed this user: passivating");
            // Forget at once, so the next call activates afresh rather than
            // reaching this stopping actor.
            if let Some(registry) = self.registry.upgrade() {
                registry.forget(&self.user, self.generation);
            }
            ctx.stop();
        } else {
            self.arm_idle_timer(ctx);
        }
    }
}

impl Actor for UserKey {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(USER_MAILBOX_CAPACITY);
        tracing::debug!(user = %self.user, generation = self.generation, "activated");
        self.arm_idle_timer(ctx);
        self.keep_lease(ctx);
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        if let Some(registry) = self.registry.upgrade() {
            registry.forget(&self.user, self.generation);
            if let Some(placement) = registry.placement().cloned() {
                let user = self.user.clone();
                actix_rt::spawn(async move {
                    if let Err(e) = placement.release(user.as_str()).await {
                        tracing::warn!(%user, error = %e, "cannot release the user's lease");
                    }
                });
            }
        }
        tracing::debug!(user = %self.user, generation = self.generation, "passivated");
    }
}

impl Handler<Ctap> for UserKey {
    type Result = AtomicResponse<Self, CtapReply>;

    fn handle(&mut self, call: Ctap, ctx: &mut Context<Self>) -> Self::Result {
        self.disarm_idle_timer(ctx);
        let authenticator = Arc::clone(&self.authenticator);
        let work = async move {
            let started = Instant::now();
            let queue = started.saturating_duration_since(call.received);
            if started >= call.deadline {
                return (
                    CtapReply::failure(Ctap2Error::UserActionTimeout, queue),
                    false,
                );
            }
            let mut authenticator = authenticator.lock().await;
            let deadline = call.deadline;
            let outcome = match tokio::time::timeout_at(
                deadline,
                authenticator.handle(
                    &call.payload,
                    Caller {
                        obr: call.obr.as_ref(),
                        approval: call.approval.as_ref(),
                        ..Caller::default()
                    },
                ),
            )
            .await
            {
                Ok(outcome) => outcome,
                Err(_elapsed) => {
                    authenticator.forget_pending();
                    Outcome::status(Ctap2Error::UserActionTimeout)
                }
            };
            let fenced = outcome.fenced;
            (outcome.into_reply(queue, started.elapsed()), fenced)
        };
        AtomicResponse::new(Box::pin(work.into_actor(self).map(
            |(reply, fenced), act, ctx| {
                act.after_call(fenced, ctx);
                reply
            },
        )))
    }
}

impl Handler<DeleteCredential> for UserKey {
    type Result = AtomicResponse<Self, Result<bool, CommandError>>;

    fn handle(&mut self, message: DeleteCredential, ctx: &mut Context<Self>) -> Self::Result {
        self.disarm_idle_timer(ctx);
        let authenticator = Arc::clone(&self.authenticator);
        let work = async move {
            let mut authenticator = authenticator.lock().await;
            authenticator.delete_credential(&message.0).await
        };
        AtomicResponse::new(Box::pin(work.into_actor(self).map(|result, act, ctx| {
            act.after_call(result.as_ref().is_err_and(CommandError::is_fenced), ctx);
            result
        })))
    }
}

impl Handler<HandOver> for UserKey {
    type Result = ();

    fn handle(&mut self, _message: HandOver, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<ResetKey> for UserKey {
    type Result = AtomicResponse<Self, Result<u64, CommandError>>;

    fn handle(&mut self, _message: ResetKey, ctx: &mut Context<Self>) -> Self::Result {
        self.disarm_idle_timer(ctx);
        let authenticator = Arc::clone(&self.authenticator);
        let work = async move {
            let mut authenticator = authenticator.lock().await;
            authenticator.reset().await
        };
        AtomicResponse::new(Box::pin(work.into_actor(self).map(|result, act, ctx| {
            act.after_call(result.as_ref().is_err_and(CommandError::is_fenced), ctx);
            result
        })))
    }
}
