//! One user's CTAP2 authenticator: command dispatch and the state a user's
//! security key keeps between commands (its fencing claim, its unwrapped
//! data key, its getNextAssertion enumeration, its signing-key cache).
//!
//! [`Authenticator::handle`] takes a CTAP message (command byte + CBOR, CTAP
//! 2.1 §6 and §8) and always produces a status byte + CBOR answer: every
//! failure is mapped to its status in exactly one place
//! ([`CommandError::status`]). Commands live in their own modules
//! (`get_info`, `make_credential`, `get_assertion`); request decoding and
//! response encoding in `codec`, keys in `keys`.
//!
//! Knows nothing of actors, threads or gRPC: the caller serializes calls
//! (one `&mut self` at a time). Never logs key material or request payloads.

mod codec;
mod get_assertion;
mod get_info;
mod keys;
mod make_credential;

use std::sync::Arc;

use passkey_crypto::rust_crypto::RustCryptoBackend;
use passkey_types::ctap2::{Aaguid, AuthenticatorData, Ctap2Error, Flags};
use ring::rand::SystemRandom;
use ring::signature::EcdsaKeyPair;

use crate::api::{CreatedCredential, ObrActing};
use crate::error::SignerError;
use crate::ids::{CredentialId, UserId};
use crate::store::{Store, StoreError, StoredCredential};
use crate::vault::{DataKey, Kek, VaultError};

use self::codec::{DecodeError, EncodeError, STATUS_OK};
use self::get_assertion::PendingAssertions;
use self::keys::{KeyCache, KeyError};

/// CTAP 2.1 §6: authenticator API command bytes.
const CMD_MAKE_CREDENTIAL: u8 = 0x01;
const CMD_GET_ASSERTION: u8 = 0x02;
const CMD_GET_INFO: u8 = 0x04;
const CMD_CLIENT_PIN: u8 = 0x06;
const CMD_RESET: u8 = 0x07;
const CMD_GET_NEXT_ASSERTION: u8 = 0x08;
const CMD_SELECTION: u8 = 0x0B;

/// What every user's authenticator shares within one signer process.
#[derive(Debug)]
pub(crate) struct Shared {
    pub store: Store,
    pub kek: Kek,
    pub aaguid: Aaguid,
    pub rng: SystemRandom,
    /// The authenticatorGetInfo answer, which never changes: encoded once.
    get_info: Vec<u8>,
}

impl Shared {
    pub(crate) fn new(store: Store, kek: Kek, aaguid: [u8; 16]) -> Result<Self, EncodeError> {
        let aaguid = Aaguid::from(aaguid);
        Ok(Self {
            store,
            kek,
            aaguid,
            rng: SystemRandom::new(),
            get_info: get_info::encode(aaguid)?,
        })
    }
}

/// The answer to one CTAP message.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// Status byte + CBOR.
    pub payload: Vec<u8>,
    pub created: Option<CreatedCredential>,
    /// Another signer claimed this user: the caller must passivate.
    pub fenced: bool,
}

impl Outcome {
    pub(crate) fn status(status: Ctap2Error) -> Self {
        Self {
            payload: vec![status.into()],
            created: None,
            fenced: false,
        }
    }
}

/// A successful command's answer.
#[derive(Debug)]
struct Success {
    payload: Vec<u8>,
    created: Option<CreatedCredential>,
}

impl Success {
    fn payload(payload: Vec<u8>) -> Self {
        Self {
            payload,
            created: None,
        }
    }
}

/// Why a command failed, by fault; [`CommandError::status`] is the one
/// mapping to the wire.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CommandError {
    /// The request is refused with this status (the peer's doing, or a
    /// protocol rule such as "no credentials").
    #[error("refused with {0:?}")]
    Refused(Ctap2Error),
    #[error("request parameters: {0}")]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

impl CommandError {
    /// The status byte this failure answers with.
    pub(crate) fn status(&self) -> Ctap2Error {
        match self {
            Self::Refused(status) => *status,
            Self::Decode(e) => e.status(),
            // Our own faults, fencing included: CTAP1_ERR_OTHER.
            Self::Store(_) | Self::Vault(_) | Self::Key(_) | Self::Encode(_) => Ctap2Error::Other,
        }
    }

    /// The same failure outside the CTAP path (the panel's delete).
    pub(crate) fn into_signer_error(self) -> SignerError {
        match self {
            Self::Store(e) => e.into(),
            Self::Vault(e) => SignerError::Vault(e),
            other => SignerError::Internal(other.to_string()),
        }
    }

    pub(crate) fn is_fenced(&self) -> bool {
        matches!(self, Self::Store(StoreError::Fenced))
    }

    /// Whether the peer caused it (worth a debug line, not a warning).
    fn is_peer_fault(&self) -> bool {
        matches!(self, Self::Refused(_) | Self::Decode(_))
    }
}

impl From<Ctap2Error> for CommandError {
    fn from(status: Ctap2Error) -> Self {
        Self::Refused(status)
    }
}

/// This activation's claim on the user: the epoch every write carries, the
/// user's unwrapped data key, and the signing keys unwrapped with it. All of
/// it is forgotten when the claim is lost.
struct Owner {
    epoch: i64,
    data_key: DataKey,
    keys: KeyCache,
}

impl Owner {
    /// The signing key of `credential`, unwrapped on first use.
    fn signing_key(
        &mut self,
        user: &UserId,
        credential: &StoredCredential,
        rng: &SystemRandom,
    ) -> Result<&EcdsaKeyPair, CommandError> {
        let data_key = &self.data_key;
        self.keys.get_or_load(&credential.id, || {
            let pkcs8 =
                data_key.open_private_key(user, &credential.id, &credential.wrapped_private_key)?;
            Ok(keys::load(&pkcs8, rng)?)
        })
    }
}

/// One user's security key.
pub(crate) struct Authenticator {
    user: UserId,
    shared: Arc<Shared>,
    owner: Option<Owner>,
    pending: Option<PendingAssertions>,
}

impl Authenticator {
    pub(crate) fn new(user: UserId, shared: Arc<Shared>) -> Self {
        Self {
            user,
            shared,
            owner: None,
            pending: None,
        }
    }

    /// Answer one CTAP message (command byte + CBOR parameters).
    pub(crate) async fn handle(&mut self, message: &[u8], obr: Option<&ObrActing>) -> Outcome {
        let Some((&command, params)) = message.split_first() else {
            return Outcome::status(Ctap2Error::InvalidCommand);
        };
        // CTAP 2.1 §6.3: the getNextAssertion state only survives until the
        // next command that is not authenticatorGetNextAssertion.
        if command != CMD_GET_NEXT_ASSERTION {
            self.pending = None;
        }
        let result = match command {
            CMD_MAKE_CREDENTIAL => self.make_credential(params, obr).await,
            CMD_GET_ASSERTION => self.get_assertion(params, obr).await,
            CMD_GET_INFO => Ok(Success::payload(self.shared.get_info.clone())),
            CMD_GET_NEXT_ASSERTION => self.get_next_assertion().await,
            // CTAP 2.1 §6.9: nothing to select among; presence is implied.
            CMD_SELECTION => Ok(Success::payload(vec![STATUS_OK])),
            // CTAP 2.1 §6.6 lets an authenticator refuse a reset; an admin
            // resets a user's key through the panel, never a browser.
            CMD_RESET => Err(Ctap2Error::OperationDenied.into()),
            // No PIN/UV auth protocol is implemented (getInfo does not
            // advertise clientPin), so authenticatorClientPIN is as unknown
            // as any other command.
            CMD_CLIENT_PIN => Err(Ctap2Error::InvalidCommand.into()),
            _ => Err(Ctap2Error::InvalidCommand.into()),
        };
        match result {
            Ok(success) => Outcome {
                payload: success.payload,
                created: success.created,
                fenced: false,
            },
            Err(error) => {
                let status = error.status();
                if error.is_peer_fault() {
                    tracing::debug!(user = %self.user, command, ?status, %error, "CTAP command refused");
                } else {
                    tracing::warn!(user = %self.user, command, ?status, %error, "CTAP command failed");
                }
                let fenced = error.is_fenced();
                if fenced {
                    self.owner = None;
                }
                Outcome {
                    payload: vec![status.into()],
                    created: None,
                    fenced,
                }
            }
        }
    }

    /// Delete one of the user's credentials (the panel's action).
    pub(crate) async fn delete_credential(
        &mut self,
        credential: &CredentialId,
    ) -> Result<bool, CommandError> {
        self.pending = None;
        let owner = claimed(&mut self.owner, &self.user, &self.shared).await?;
        owner.keys.remove(credential);
        let deleted = self
            .shared
            .store
            .delete_credential(&self.user, owner.epoch, credential)
            .await;
        if matches!(deleted, Err(StoreError::Fenced)) {
            self.owner = None;
        }
        Ok(deleted?)
    }

    /// Drop any getNextAssertion state (the caller gave up on a command).
    pub(crate) fn forget_pending(&mut self) {
        self.pending = None;
    }
}

/// This activation's claim on `user`, made on first need: a fresh epoch
/// from the store (every later write is fenced by it) and the user's data
/// key, created and wrapped under the KEK on the very first claim.
async fn claimed<'a>(
    slot: &'a mut Option<Owner>,
    user: &UserId,
    shared: &Shared,
) -> Result<&'a mut Owner, CommandError> {
    let owner = match slot.take() {
        Some(owner) => owner,
        None => claim(user, shared).await?,
    };
    Ok(slot.insert(owner))
}

async fn claim(user: &UserId, shared: &Shared) -> Result<Owner, CommandError> {
    let fresh_key = DataKey::generate(&shared.rng)?;
    let wrapped = shared.kek.wrap_data_key(user, &fresh_key, &shared.rng)?;
    let claim = shared.store.claim(user, &wrapped, shared.kek.id()).await?;
    let data_key = shared
        .kek
        .unwrap_data_key(user, &claim.kek_id, &claim.wrapped_data_key)?;
    tracing::debug!(%user, epoch = claim.epoch, "claimed user");
    Ok(Owner {
        epoch: claim.epoch,
        data_key,
        keys: KeyCache::default(),
    })
}

/// authenticatorData for `rp_id` with exactly `flags` and `counter`.
fn authenticator_data(rp_id: &str, counter: u32, flags: Flags) -> AuthenticatorData {
    // passkey-types hashes the RP id through a `CryptoBackend`; the
    // RustCrypto backend is used for that SHA-256 only. Keys are generated
    // and used with ring (`keys`), never through this backend.
    let mut data = AuthenticatorData::new(rp_id, Some(counter), &RustCryptoBackend);
    data.flags = flags;
    data
}

/// The authenticatorData flags of a makeCredential or getAssertion answer.
fn response_flags(user_present: bool, uv_requested: bool, obr: Option<&ObrActing>) -> Flags {
    // BE | BS: the key is held by the cloud signer and its wrapped form sits
    // in the replicated durable database, so it is backup-eligible and
    // backed up (WebAuthn L3 §6.1, "multi-device credential"); RPs should
    // treat it as a synced passkey, not a device-bound one.
    let mut flags = Flags::BE | Flags::BS;
    if user_present {
        flags |= Flags::UP;
    }
    // On-behalf registration: the admin's authenticated, audited OBR session
    // stands for user verification when the platform asks for it (the "uv"
    // option). Unasked, UV stays clear: the flag says what was verified, and
    // an RP that saw UV at registration demands it at every later sign-in.
    // Nothing else sets UV yet.
    if uv_requested && obr.is_some() {
        flags |= Flags::UV;
    }
    flags
}

/// CTAP 2.1 §6.1.2 steps 1–2 (and §6.2.2 alike): this authenticator
/// implements no PIN/UV auth protocol, so a pinUvAuthParam is either
/// missing its protocol or names one that is not supported.
fn refuse_pin_uv_auth(
    pin_uv_auth_param: Option<&passkey_types::Bytes>,
    pin_uv_auth_protocol: Option<u8>,
) -> Result<(), CommandError> {
    match (pin_uv_auth_param, pin_uv_auth_protocol) {
        (None, _) => Ok(()),
        (Some(_), None) => Err(Ctap2Error::MissingParameter.into()),
        (Some(_), Some(_)) => Err(Ctap2Error::InvalidParameter.into()),
    }
}

/// CTAP 2.1 §6.1.2 step 5 / §6.2.2 options processing: "If the "uv" option
/// is true then: If the authenticator does not support a built-in user
/// verification method end the operation by returning
/// CTAP2_ERR_INVALID_OPTION." An OBR call is verified by the admin's
/// session, so it is accepted there.
fn check_uv_option(uv: bool, obr: Option<&ObrActing>) -> Result<(), CommandError> {
    if uv && obr.is_none() {
        return Err(Ctap2Error::InvalidOption.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
