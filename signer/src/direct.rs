//! [`DirectKey`]: one user's CTAP2 core driven directly — no actor, no
//! activation registry, no gRPC, no deadline — and [`open_shared`], which
//! builds what every user's authenticator shares from a [`SignerConfig`]
//! (the running signer, [`crate::api::SignerCore`], opens it the same way).
//!
//! For exercising the CTAP commands alone: `signer/fuzz` drives a
//! `DirectKey` over an in-memory store (`sqlite::memory:`). Calls are
//! serialized by `&mut self`, as the user's actor serializes them; the key
//! claims its user's fencing epoch like any activation, so it must not
//! share a database with a serving signer. Must not know of actors, Redis
//! or the wire.

use std::sync::Arc;
use std::time::Duration;

use passkey_types::ctap2::Ctap2Error;
use tokio::time::Instant;

use crate::call::{CtapReply, ObrActing, UserApproval};
use crate::config::SignerConfig;
use crate::ctap::attestation::Attestation;
use crate::ctap::{Authenticator, Caller, Shared};
use crate::error::SignerError;
use crate::ids::UserId;
use crate::store::Store;

/// What every user's authenticator shares, from `config`: the store (open,
/// migrated), the KEK, the AAGUID, the attestation and the UV policy.
pub(crate) async fn open_shared(config: &SignerConfig) -> Result<Shared, SignerError> {
    let store = Store::open(&config.database_url, config.db_max_connections).await?;
    let attestation = Attestation::new(&config.attestation, config.aaguid)?;
    let mut shared = Shared::new(store, config.kek.clone(), config.aaguid, attestation)
        .map_err(|e| SignerError::Internal(e.to_string()))?;
    shared.obr_stands_for_uv = config.obr_stands_for_uv;
    Ok(shared)
}

/// One user's security key without the machinery around it.
pub struct DirectKey {
    authenticator: Authenticator,
}

/// Shows nothing of the key's state (data key, tokens).
impl std::fmt::Debug for DirectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectKey").finish_non_exhaustive()
    }
}

impl DirectKey {
    /// `user_id`'s key over the store `config.database_url` names.
    pub async fn open(config: &SignerConfig, user_id: &str) -> Result<Self, SignerError> {
        let user = UserId::new(user_id)?;
        let shared = open_shared(config).await?;
        Ok(Self {
            authenticator: Authenticator::new(user, Arc::new(shared)),
        })
    }

    /// Answer one CTAP message (command byte + CBOR), as
    /// [`crate::api::SignerCore::ctap`] does for a call that reached the
    /// user's actor: every failure is a status byte, `obr` and `approval`
    /// stand for user verification as they do there.
    pub async fn ctap(
        &mut self,
        payload: &[u8],
        obr: Option<&ObrActing>,
        approval: Option<&UserApproval>,
    ) -> CtapReply {
        // CTAP 2.1 §6: nothing longer than maxMsgSize is accepted.
        if payload.len() > obr_proto::MAX_CTAP_MESSAGE {
            return CtapReply::failure(Ctap2Error::InvalidLength, Duration::ZERO);
        }
        let started = Instant::now();
        let caller = Caller {
            obr,
            approval,
            ..Caller::default()
        };
        let outcome = self.authenticator.handle(payload, caller).await;
        outcome.into_reply(Duration::ZERO, started.elapsed())
    }
}
