//! One user's CTAP2 authenticator: command dispatch and the state a user's
//! security key keeps between commands (its fencing claim, its unwrapped
//! data key, its getNextAssertion enumeration, its signing-key cache, its
//! key-agreement key and pinUvAuthToken).
//!
//! [`Authenticator::handle`] takes a CTAP message (command byte + CBOR, CTAP
//! 2.1 §6 and §8) and always produces a status byte + CBOR answer: every
//! failure is mapped to its status in exactly one place
//! ([`CommandError::status`]). Commands live in their own modules
//! (`get_info`, `make_credential`, `get_assertion`, `client_pin`); request
//! decoding and response encoding in `codec`, keys in `keys`, the
//! credProtect and hmac-secret extensions in `extensions`, attestation
//! statements in `attestation`, the pinUvAuthToken in `pin_uv_auth_token`.
//!
//! Knows nothing of actors, threads or gRPC: the caller serializes calls
//! (one `&mut self` at a time). Never logs key material or request payloads.

pub(crate) mod attestation;
mod client_pin;
mod codec;
mod extensions;
mod get_assertion;
mod get_info;
mod keys;
mod make_credential;
mod pin_uv_auth_token;

use std::sync::Arc;
use std::time::Duration;

use passkey_crypto::rust_crypto::RustCryptoBackend;
use passkey_types::ctap2::{Aaguid, AuthenticatorData, Ctap2Error, Flags};
use ring::rand::SystemRandom;

use crate::call::{
    ApprovalNeeded, CreatedCredential, CtapReply, ObrActing, ObrAssertion, Operation, UserApproval,
};
use crate::ids::{CredentialId, UserId};
use crate::store::{Store, StoreError, StoredCredential};
use crate::vault::{DataKey, Kek, VaultError, WrappedKey};

use self::attestation::Attestation;
use self::client_pin::{KeyAgreementKey, PinUvAuthProtocol};
use self::codec::{DecodeError, EncodeError, STATUS_OK};
use self::extensions::CredRandom;
use self::get_assertion::PendingAssertions;
use self::keys::{Algorithm, KeyCache, KeyError, SigningKey};
use self::pin_uv_auth_token::{Grant, Holder, Permissions, PinUvAuthToken, TokenUse, Tokens};

/// CTAP 2.1 §6: authenticator API command bytes.
const CMD_MAKE_CREDENTIAL: u8 = 0x01;
const CMD_GET_ASSERTION: u8 = 0x02;
const CMD_GET_INFO: u8 = 0x04;
const CMD_CLIENT_PIN: u8 = 0x06;
const CMD_RESET: u8 = 0x07;
const CMD_GET_NEXT_ASSERTION: u8 = 0x08;
const CMD_SELECTION: u8 = 0x0B;

/// An RP ID is a domain name (at most 253 characters in DNS); longer or
/// empty ones are `CTAP1_ERR_INVALID_LENGTH`.
const MAX_RP_ID_LEN: usize = 253;

/// What every user's authenticator shares within one signer process.
#[derive(Debug)]
pub(crate) struct Shared {
    pub store: Store,
    pub kek: Kek,
    pub aaguid: Aaguid,
    pub rng: SystemRandom,
    /// How makeCredential attests new credentials.
    pub attestation: Attestation,
    /// See [`crate::SignerConfig::obr_stands_for_uv`].
    pub obr_stands_for_uv: bool,
    /// The authenticatorGetInfo answer, which never changes: encoded once.
    get_info: Vec<u8>,
}

impl Shared {
    /// The encoded authenticatorGetInfo answer (status byte + CBOR).
    pub(crate) fn get_info(&self) -> &[u8] {
        &self.get_info
    }

    pub(crate) fn new(
        store: Store,
        kek: Kek,
        aaguid: [u8; 16],
        attestation: Attestation,
    ) -> Result<Self, EncodeError> {
        let aaguid = Aaguid::from(aaguid);
        Ok(Self {
            store,
            kek,
            aaguid,
            rng: SystemRandom::new(),
            attestation,
            obr_stands_for_uv: true,
            get_info: get_info::encode(aaguid)?,
        })
    }
}

/// Who stands behind a call, for user verification (see
/// [`Caller::verified`] and [`Caller::verify_for_token`]).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Caller<'a> {
    /// The admin acting on the user's behalf (on-behalf registration).
    pub obr: Option<&'a ObrActing>,
    /// The user approved this call on their device.
    pub approval: Option<&'a UserApproval>,
    /// Policy: the OBR session does *not* stand for user verification.
    pub obr_uv_forbidden: bool,
}

impl Caller<'_> {
    /// CTAP 2.1 §6.1.2 step 11 / §6.2.2 step 7 ("uv" option): this key's
    /// built-in user verification, which the admin's authenticated, audited
    /// OBR session stands for, or the owner's approval on their device. In
    /// normal mode the approval is asked for *after* the request is found
    /// answerable ([`Caller::require_consent`]), so this says whether the
    /// user is verified if the call goes ahead: exactly when asked.
    fn verified(self, uv_requested: bool) -> Result<bool, CommandError> {
        let only_obr = self.obr.is_some() && self.approval.is_none();
        if uv_requested && only_obr && self.obr_uv_forbidden {
            // Policy: nobody can verify the user on this call.
            return Err(Ctap2Error::OperationDenied.into());
        }
        Ok(uv_requested)
    }

    /// CTAP 2.1 §6.5.5.7.3 steps 8–10, performBuiltInUv() for a
    /// pinUvAuthToken: the same built-in user verification as the `uv`
    /// option ([`Caller::verified`]). On-behalf, the admin's OBR session
    /// (unless policy forbids it: `CTAP2_ERR_OPERATION_DENIED`, as for
    /// `uv`; not UV_INVALID, which platforms answer by asking again); in
    /// normal mode, the owner's approval on their device, asked for with
    /// "approval needed" when the call carries none. Returns who holds the
    /// token.
    fn verify_for_token(
        self,
        rp_id: Option<&str>,
        operation: Operation,
    ) -> Result<Holder, CommandError> {
        if self.approval.is_none() {
            if self.obr.is_none() {
                // The owner is asked on their device and must be told which
                // site the token is for: one without an RP ID (optional in
                // §6.5.5.7.3, bound at first use) would be approved blind.
                let rp_id = rp_id
                    .filter(|rp_id| !rp_id.is_empty())
                    .ok_or(Ctap2Error::MissingParameter)?;
                return Err(CommandError::ApprovalNeeded(ApprovalNeeded {
                    rp_id: rp_id.to_owned(),
                    operation,
                    user_verification: true,
                }));
            }
            if self.obr_uv_forbidden {
                return Err(Ctap2Error::OperationDenied.into());
            }
        }
        Ok(self.holder())
    }

    /// Who a token obtained on this call belongs to, and who a call using
    /// one must be: the OBR session it runs in, or the owner.
    fn holder(self) -> Holder {
        match self.obr {
            Some(obr) => Holder::Obr {
                session_id: obr.obr_session_id.clone(),
            },
            None => Holder::Owner,
        }
    }

    /// Normal mode (no OBR session): a cloud-held key has no button, so
    /// user presence — and verification, when asked — is the owner's
    /// approval on their device. Without one yet, the call answers
    /// "approval needed" (the relay asks the device and calls again with
    /// the approval); a silent pre-flight (`up` false, no `uv`) needs none.
    /// On-behalf calls need none: the admin's audited session stands for it.
    fn require_consent(
        self,
        user_present: bool,
        uv_requested: bool,
        rp_id: &str,
        operation: Operation,
    ) -> Result<(), CommandError> {
        if self.obr.is_some() || self.approval.is_some() || !(user_present || uv_requested) {
            return Ok(());
        }
        Err(CommandError::ApprovalNeeded(ApprovalNeeded {
            rp_id: rp_id.to_owned(),
            operation,
            user_verification: uv_requested,
        }))
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
    /// Normal mode: the owner must approve on their device first; the
    /// payload is empty.
    pub approval_needed: Option<ApprovalNeeded>,
    /// On behalf: an assertion with user presence, signed or refused.
    pub obr_assertion: Option<ObrAssertion>,
}

impl Outcome {
    /// The reply to the caller, after `queue` of waiting and `work` on it.
    pub(crate) fn into_reply(self, queue: Duration, work: Duration) -> CtapReply {
        CtapReply {
            payload: self.payload,
            created: self.created,
            queue,
            work,
            owner: None,
            approval_needed: self.approval_needed,
            obr_assertion: self.obr_assertion,
        }
    }

    pub(crate) fn status(status: Ctap2Error) -> Self {
        Self {
            payload: vec![status.into()],
            created: None,
            fenced: false,
            approval_needed: None,
            obr_assertion: None,
        }
    }
}

/// A successful command's answer.
#[derive(Debug)]
struct Success {
    payload: Vec<u8>,
    created: Option<CreatedCredential>,
    obr_assertion: Option<ObrAssertion>,
}

impl Success {
    fn payload(payload: Vec<u8>) -> Self {
        Self {
            payload,
            created: None,
            obr_assertion: None,
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
    /// Not a failure: the owner's approval is needed before going on.
    #[error("waiting for the owner's approval")]
    ApprovalNeeded(ApprovalNeeded),
    /// An OBR session asked to sign in with a credential it did not
    /// create (least privilege: it may create credentials, not use them).
    #[error("an on-behalf session may not sign with this credential")]
    ObrSignInRefused(ObrAssertion),
}

impl CommandError {
    /// The status byte this failure answers with.
    pub(crate) fn status(&self) -> Ctap2Error {
        match self {
            Self::Refused(status) => *status,
            Self::Decode(e) => e.status(),
            // Our own faults, fencing included: CTAP1_ERR_OTHER.
            Self::Store(_) | Self::Vault(_) | Self::Key(_) | Self::Encode(_) => Ctap2Error::Other,
            // Only reached outside the CTAP path (the relay gets the
            // request for approval instead of a status).
            Self::ApprovalNeeded(_) => Ctap2Error::OperationDenied,
            // CTAP 2.1 §8.2: "Not authorized for requested operation."
            Self::ObrSignInRefused(_) => Ctap2Error::OperationDenied,
        }
    }

    pub(crate) fn is_fenced(&self) -> bool {
        matches!(self, Self::Store(StoreError::Fenced))
    }

    /// Whether the peer caused it (worth a debug line, not a warning).
    fn is_peer_fault(&self) -> bool {
        matches!(
            self,
            Self::Refused(_)
                | Self::Decode(_)
                | Self::ApprovalNeeded(_)
                | Self::ObrSignInRefused(_)
        )
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
        algorithm: i64,
        rng: &SystemRandom,
    ) -> Result<&SigningKey, CommandError> {
        let data_key = &self.data_key;
        self.keys.get_or_load(&credential.id, || {
            let algorithm =
                Algorithm::from_cose(algorithm).ok_or(KeyError::Algorithm(algorithm))?;
            let pkcs8 =
                data_key.open_private_key(user, &credential.id, &credential.wrapped_private_key)?;
            Ok(keys::load(algorithm, &pkcs8, rng)?)
        })
    }

    /// Seal a credential's hmac-secret CredRandoms under the data key.
    /// They are bound to the user and to [`cred_random_binding`] of the
    /// credential, so they never open as that credential's private key.
    fn seal_cred_random(
        &self,
        user: &UserId,
        credential: &CredentialId,
        cred_random: &CredRandom,
        rng: &SystemRandom,
    ) -> Result<WrappedKey, CommandError> {
        let binding = cred_random_binding(credential)?;
        Ok(self
            .data_key
            .seal_private_key(user, &binding, cred_random.as_bytes(), rng)?)
    }

    fn open_cred_random(
        &self,
        user: &UserId,
        credential: &CredentialId,
        wrapped: &WrappedKey,
    ) -> Result<CredRandom, CommandError> {
        let binding = cred_random_binding(credential)?;
        let plain = self.data_key.open_private_key(user, &binding, wrapped)?;
        CredRandom::from_unwrapped(plain).ok_or(CommandError::Vault(VaultError::Malformed))
    }
}

/// Suffix that separates a credential's CredRandom ciphertext from its
/// private-key ciphertext in the vault's associated data.
const CRED_RANDOM_BINDING_SUFFIX: &[u8] = b"/hmac-secret";

/// The id a credential's CredRandoms are sealed under: its id followed by
/// [`CRED_RANDOM_BINDING_SUFFIX`]. Never a credential id itself: ours are
/// exactly `CREDENTIAL_ID_LEN` random bytes.
fn cred_random_binding(credential: &CredentialId) -> Result<CredentialId, CommandError> {
    let mut binding = credential.as_bytes().to_vec();
    binding.extend_from_slice(CRED_RANDOM_BINDING_SUFFIX);
    CredentialId::new(binding).map_err(|_| Ctap2Error::Other.into())
}

/// One user's security key.
pub(crate) struct Authenticator {
    user: UserId,
    shared: Arc<Shared>,
    owner: Option<Owner>,
    pending: Option<PendingAssertions>,
    /// The key-agreement key (CTAP 2.1 §6.5.6), made by this activation's
    /// first getKeyAgreement and kept until the actor passivates or the key
    /// is reset.
    key_agreement: Option<KeyAgreementKey>,
    /// The pinUvAuthTokens issued, one per holder (owner, on-behalf
    /// session), each until replaced, expired or forgotten with this actor.
    tokens: Tokens,
}

impl Authenticator {
    pub(crate) fn new(user: UserId, shared: Arc<Shared>) -> Self {
        Self {
            user,
            shared,
            owner: None,
            pending: None,
            key_agreement: None,
            tokens: Tokens::default(),
        }
    }

    /// Answer one CTAP message (command byte + CBOR parameters).
    pub(crate) async fn handle(&mut self, message: &[u8], caller: Caller<'_>) -> Outcome {
        let caller = Caller {
            obr_uv_forbidden: !self.shared.obr_stands_for_uv,
            ..caller
        };
        let Some((&command, params)) = message.split_first() else {
            return Outcome::status(Ctap2Error::InvalidCommand);
        };
        // CTAP 2.1 §6.3: the getNextAssertion state only survives until the
        // next command that is not authenticatorGetNextAssertion.
        if command != CMD_GET_NEXT_ASSERTION {
            self.pending = None;
        }
        let result = match command {
            CMD_MAKE_CREDENTIAL => self.make_credential(params, caller).await,
            CMD_GET_ASSERTION => self.get_assertion(params, caller).await,
            CMD_GET_INFO => Ok(Success::payload(self.shared.get_info.clone())),
            CMD_GET_NEXT_ASSERTION => self.get_next_assertion(caller).await,
            // CTAP 2.1 §6.9: nothing to select among; presence is implied.
            CMD_SELECTION => Ok(Success::payload(vec![STATUS_OK])),
            // CTAP 2.1 §6.6 lets an authenticator refuse a reset; an admin
            // resets a user's key through the panel, never a browser.
            CMD_RESET => Err(Ctap2Error::OperationDenied.into()),
            CMD_CLIENT_PIN => self.client_pin(params, caller),
            _ => Err(Ctap2Error::InvalidCommand.into()),
        };
        match result {
            Ok(success) => Outcome {
                payload: success.payload,
                created: success.created,
                fenced: false,
                approval_needed: None,
                obr_assertion: success.obr_assertion,
            },
            Err(CommandError::ApprovalNeeded(needed)) => Outcome {
                payload: Vec::new(),
                created: None,
                fenced: false,
                approval_needed: Some(needed),
                obr_assertion: None,
            },
            Err(CommandError::ObrSignInRefused(refused)) => {
                tracing::info!(user = %self.user, rp_id = %refused.rp_id,
                    "on-behalf sign-in with a credential the session did not create refused");
                Outcome {
                    payload: vec![Ctap2Error::OperationDenied.into()],
                    created: None,
                    fenced: false,
                    approval_needed: None,
                    obr_assertion: Some(refused),
                }
            }
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
                    approval_needed: None,
                    obr_assertion: None,
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

    /// Reset the whole key (the panel's action, by an admin): delete every
    /// credential and replace the user's data key, fenced like every write.
    /// Returns how many credentials were deleted.
    pub(crate) async fn reset(&mut self) -> Result<u64, CommandError> {
        self.pending = None;
        self.key_agreement = None;
        self.tokens.clear();
        let owner = claimed(&mut self.owner, &self.user, &self.shared).await?;
        let fresh_key = DataKey::generate(&self.shared.rng)?;
        let wrapped = self
            .shared
            .kek
            .wrap_data_key(&self.user, &fresh_key, &self.shared.rng)?;
        let reset = self
            .shared
            .store
            .reset_user_key(&self.user, owner.epoch, &wrapped, self.shared.kek.id())
            .await;
        match reset {
            Ok(deleted) => {
                owner.data_key = fresh_key;
                owner.keys = KeyCache::default();
                tracing::info!(user = %self.user, deleted, "security key reset");
                Ok(deleted)
            }
            Err(error) => {
                // Fenced, or not written: forget the claim either way; the
                // next call reads the data key afresh.
                self.owner = None;
                Err(error.into())
            }
        }
    }

    /// Drop any getNextAssertion state (the caller gave up on a command).
    pub(crate) fn forget_pending(&mut self) {
        self.pending = None;
    }

    /// CTAP 2.1 §6.1.2 step 11.1 / §6.2.2 step 6.1: the request's
    /// pinUvAuthParam against this key's pinUvAuthToken
    /// ([`PinUvAuthToken::authorize`]). No token, or one past its usage
    /// timer (which is then forgotten): `CTAP2_ERR_PIN_AUTH_INVALID`.
    fn authorize_token(
        &mut self,
        auth: PinUvAuth<'_>,
        client_data_hash: &[u8],
        permission: Permissions,
        rp_id: &str,
        caller: Caller<'_>,
    ) -> Result<Grant, CommandError> {
        let now = tokio::time::Instant::now();
        let holder = caller.holder();
        let slot = self.tokens.slot(&holder);
        if slot.as_ref().is_some_and(|token| !token.in_use(now)) {
            *slot = None;
        }
        let token = slot.as_mut().ok_or(Ctap2Error::PinAuthInvalid)?;
        token.authorize(
            TokenUse {
                param: auth.param,
                protocol: auth.protocol,
                client_data_hash,
                permission,
                rp_id,
                holder: &holder,
            },
            now,
        )
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
/// `user_verified` is set only when the platform asked for it — with the
/// `uv` option ([`Caller::verified`]: the admin's OBR session or the
/// user's own device approval stands for it) or with a pinUvAuthToken
/// obtained the same way ([`Authenticator::authorize_token`]). Unasked, UV
/// stays clear: the flag says what was verified, and an RP that saw UV at
/// registration demands it at every later sign-in.
fn response_flags(user_present: bool, user_verified: bool) -> Flags {
    // BE | BS: the key is held by the cloud signer and its wrapped form sits
    // in the replicated durable database, so it is backup-eligible and
    // backed up (WebAuthn L3 §6.1, "multi-device credential"); RPs should
    // treat it as a synced passkey, not a device-bound one.
    let mut flags = Flags::BE | Flags::BS;
    if user_present {
        flags |= Flags::UP;
    }
    if user_verified {
        flags |= Flags::UV;
    }
    flags
}

/// CTAP 2.1 §6.1.2 step 14.4 / §6.2.2 step 9.4, once user presence was
/// established: clearUserPresentFlag(), clearUserVerifiedFlag() and
/// clearPinUvAuthTokenPermissionsExceptLbw() on `token` (an
/// [`Authenticator`]'s; "no-ops if there is not an in-use
/// pinUvAuthToken").
fn user_presence_used(token: &mut Option<PinUvAuthToken>) {
    if let Some(token) = token.as_mut() {
        token.consume();
    }
}

/// A request's nonempty pinUvAuthParam and its protocol.
#[derive(Debug, Clone, Copy)]
struct PinUvAuth<'a> {
    param: &'a [u8],
    protocol: PinUvAuthProtocol,
}

/// CTAP 2.1 §6.1.2 steps 1–2 (and §6.2.2 steps 1–2 alike). Step 1: a
/// zero-length pinUvAuthParam is a platform's touch probe; presence is the
/// browser action that reached us, and no PIN exists:
/// `CTAP2_ERR_PIN_NOT_SET`. Step 2: a pinUvAuthParam without its protocol
/// is `CTAP2_ERR_MISSING_PARAMETER`, with an unsupported one
/// `CTAP1_ERR_INVALID_PARAMETER`. What is left is checked against the
/// token in step 11.1 / 6.1 ([`Authenticator::authorize_token`]).
fn pin_uv_auth_request<'a>(
    pin_uv_auth_param: Option<&'a passkey_types::Bytes>,
    pin_uv_auth_protocol: Option<u8>,
) -> Result<Option<PinUvAuth<'a>>, CommandError> {
    let Some(param) = pin_uv_auth_param else {
        return Ok(None);
    };
    if param.is_empty() {
        return Err(Ctap2Error::PinNotSet.into());
    }
    let protocol = pin_uv_auth_protocol.ok_or(Ctap2Error::MissingParameter)?;
    let protocol = PinUvAuthProtocol::from_wire(u64::from(protocol))?;
    Ok(Some(PinUvAuth {
        param: param.as_slice(),
        protocol,
    }))
}

#[cfg(test)]
mod tests;
