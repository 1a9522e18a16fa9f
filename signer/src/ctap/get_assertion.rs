//! authenticatorGetAssertion (CTAP 2.1 §6.2) and
//! authenticatorGetNextAssertion (§6.3): find the user's credentials for an
//! RP that their credProtect policy lets this request see (§12.1), commit
//! the next signature counter, then sign authenticatorData ||
//! clientDataHash with ring, adding the hmac-secret output (§12.5) for
//! credentials that have one.
//!
//! The counter increment is committed to the database (fenced by this
//! activation's epoch) before a signature is computed, so no signature ever
//! leaves with a counter the database does not hold. Never logs keys,
//! signatures or client data.

use std::collections::VecDeque;
use std::time::Duration;

use ciborium::value::Value;
use passkey_types::ctap2::Ctap2Error;
use passkey_types::ctap2::Flags;
use passkey_types::ctap2::get_assertion::{Request, Response};
use passkey_types::ctap2::make_credential::PublicKeyCredentialUserEntity;
use passkey_types::webauthn::{PublicKeyCredentialDescriptor, PublicKeyCredentialType};
use tokio::time::Instant;

use crate::call::{ObrAssertion, Operation};
use crate::store::{CredentialPolicy, StoredCredential};

use super::codec::{Kind, Param, Params, encode_ok, has_text_key};
use super::extensions::{self, CredProtect, HmacSecretRequest};
use super::keys;
use super::pin_uv_auth_token::{Holder, Permissions};
use super::{
    Authenticator, Caller, CommandError, Success, authenticator_data, claimed, pin_uv_auth_request,
    response_flags, user_presence_used,
};

/// CTAP 2.1 §6.2: authenticatorGetAssertion parameters.
const RP_ID: u8 = 0x01;
const CLIENT_DATA_HASH: u8 = 0x02;
const ALLOW_LIST: u8 = 0x03;
const EXTENSIONS: u8 = 0x04;
const OPTIONS: u8 = 0x05;
const PIN_UV_AUTH_PARAM: u8 = 0x06;
const PIN_UV_AUTH_PROTOCOL: u8 = 0x07;

const SCHEMA: &[Param] = &[
    Param::required(RP_ID, Kind::Text),
    Param::required(CLIENT_DATA_HASH, Kind::Bytes),
    Param::optional(ALLOW_LIST, Kind::Array),
    Param::optional(EXTENSIONS, Kind::Map),
    Param::optional(OPTIONS, Kind::Map),
    Param::optional(PIN_UV_AUTH_PARAM, Kind::Bytes),
    Param::optional(PIN_UV_AUTH_PROTOCOL, Kind::Integer),
];

/// CTAP 2.1 §6.3: getNextAssertion must follow within 30 seconds of the
/// previous getAssertion or getNextAssertion.
pub(super) const NEXT_ASSERTION_WINDOW: Duration = Duration::from_secs(30);
/// `numberOfCredentials` is one byte in passkey-types: a discoverable
/// lookup enumerates at most this many credentials, most recent first.
const MAX_ENUMERATED_CREDENTIALS: usize = u8::MAX as usize;

/// What authenticatorGetNextAssertion continues (CTAP 2.1 §6.2.2: the
/// authenticator remembers the request and the credentials not yet used).
#[derive(Debug)]
pub(super) struct PendingAssertions {
    rp_id: String,
    client_data_hash: Vec<u8>,
    flags: Flags,
    remaining: VecDeque<Candidate>,
    /// The request's hmac-secret input, for every credential enumerated.
    hmac_secret: Option<HmacSecretRequest>,
    pub(super) expires_at: Instant,
    /// An on-behalf enumeration with user presence: each assertion is
    /// reported for the audit log.
    on_behalf: bool,
    /// Who started it (the owner, or one OBR session): only they continue.
    caller: Holder,
}

/// A credential an assertion may use, with its algorithm and extension
/// state.
#[derive(Debug)]
struct Candidate {
    credential: StoredCredential,
    policy: CredentialPolicy,
}

impl Authenticator {
    pub(super) async fn get_assertion(
        &mut self,
        params: &[u8],
        caller: Caller<'_>,
    ) -> Result<Success, CommandError> {
        let params = Params::parse(params, SCHEMA)?;
        // Options processing (§6.2.2): "If the "rk" option is present then:
        // Return CTAP2_ERR_UNSUPPORTED_OPTION." passkey-types drops unknown
        // option keys, so look before decoding.
        if params.get(OPTIONS).is_some_and(|o| has_text_key(o, "rk")) {
            return Err(Ctap2Error::UnsupportedOption.into());
        }
        let extensions_input: Option<Value> = params.get(EXTENSIONS).cloned();
        let request: Request = params.decode()?;
        // Steps 1–2: a touch probe, or a pinUvAuthParam with its protocol.
        let pin_uv_auth = pin_uv_auth_request(request.pin_auth.as_ref(), request.pin_protocol)?;
        // Step 4: with a pinUvAuthParam, the "uv" option is treated as
        // false; the token decides.
        let uv_requested = request.options.uv && pin_uv_auth.is_none();
        // Step 6: user verification. 6.1: by the pinUvAuthToken (the UV bit
        // is set, so credProtect 3 credentials are visible); 6.2: built-in,
        // when asked for with "uv".
        let token = match pin_uv_auth {
            Some(auth) => Some(self.authorize_token(
                auth,
                &request.client_data_hash,
                Permissions::GET_ASSERTION,
                &request.rp_id,
                caller,
            )?),
            None => None,
        };
        let user_verified = token.is_some() || caller.verified(uv_requested)?;
        // A silent on-behalf lookup (the exclude-list pre-flight) answers
        // whether a credential exists, nothing more: no UV, no hmac-secret
        // output, no enumeration, and a signature over a labelled hash, not
        // the caller's, so it can never serve as a sign-in anywhere.
        let silent_on_behalf = caller.obr.is_some() && !request.options.up;
        // "up": false asks for a silent assertion, without the UP flag.
        let flags = response_flags(request.options.up, user_verified && !silent_on_behalf);
        // §12.5: salts are authenticated and decrypted before any
        // credential is looked at; a bad input fails the whole request.
        let hmac_secret =
            HmacSecretRequest::parse(extensions_input.as_ref(), self.key_agreement.as_ref())?;

        let allow_list = request.allow_list.filter(|list| !list.is_empty());
        let by_allow_list = allow_list.is_some();
        // Only credentials the RP names (looked up by id), of this user,
        // for this RP; without a list, every one of theirs on the RP.
        let stored = match &allow_list {
            Some(list) => {
                let ids: Vec<&[u8]> = list
                    .iter()
                    .filter(|d| d.is_known())
                    .map(|d| d.id.as_slice())
                    .collect();
                self.shared
                    .store
                    .credentials_by_id(&self.user, &request.rp_id, &ids)
                    .await?
            }
            None => {
                self.shared
                    .store
                    .credentials_for_rp(&self.user, &request.rp_id)
                    .await?
            }
        };
        // credProtect (§12.1) hides the credentials this request may not
        // see, as if they did not exist.
        let visible = stored.into_iter().filter_map(|(credential, policy)| {
            CredProtect::from_stored(policy.cred_protect)
                .permits(user_verified, by_allow_list)
                .then_some(Candidate { credential, policy })
        });
        let candidates: VecDeque<Candidate> = match &allow_list {
            Some(_) => visible.collect(),
            // Discoverable credentials, most recently created first.
            None => visible.filter(|c| c.credential.discoverable).collect(),
        };
        let obr_signs = caller.obr.is_some() && request.options.up;
        let mut candidates =
            on_behalf_candidates(candidates, caller, request.options.up, &request.rp_id)?;
        candidates.truncate(if allow_list.is_some() {
            1
        } else {
            MAX_ENUMERATED_CREDENTIALS
        });
        // A silent on-behalf lookup answers whether a credential exists,
        // nothing more: no hmac-secret output leaves with it.
        let hmac_secret = hmac_secret.filter(|_| caller.obr.is_none() || request.options.up);
        let Some(first) = candidates.pop_front() else {
            return Err(Ctap2Error::NoCredentials.into());
        };
        // §6.2.2 step 9 (user presence) after step 7 (locate credentials):
        // a key without the credential says so at once, unasked. 9.1: a
        // token whose user-present flag is still set stands for presence;
        // otherwise, and without a token (9.2), the admin's session, or in
        // normal mode the owner's approval. A silent pre-flight ("up"
        // false) needs none of them and leaves the token as it is.
        if !token.is_some_and(|grant| grant.user_present) {
            caller.require_consent(
                request.options.up,
                uv_requested,
                &request.rp_id,
                Operation::SignIn,
            )?;
        }
        if request.options.up {
            // 9.4: the token's presence, verification and permissions are
            // spent.
            user_presence_used(self.tokens.slot(&caller.holder()));
        }
        let number_of_credentials =
            if allow_list.is_none() && !candidates.is_empty() && !silent_on_behalf {
                Some(u8::try_from(candidates.len() + 1).unwrap_or(u8::MAX))
            } else {
                None
            };

        let lookup_hash = silent_on_behalf.then(|| silent_lookup_hash(&request.client_data_hash));
        let payload = sign_assertion(
            self,
            Assertion {
                rp_id: &request.rp_id,
                client_data_hash: lookup_hash.as_deref().unwrap_or(&request.client_data_hash),
                flags,
                hmac_secret: hmac_secret.as_ref(),
                number_of_credentials,
            },
            &first,
        )
        .await?;
        let obr_assertion = obr_signs.then(|| signed_on_behalf(&first, &request.rp_id));
        if number_of_credentials.is_some() {
            self.pending = Some(PendingAssertions {
                rp_id: request.rp_id,
                client_data_hash: request.client_data_hash.into(),
                flags,
                remaining: candidates,
                hmac_secret,
                expires_at: Instant::now() + NEXT_ASSERTION_WINDOW,
                on_behalf: obr_signs,
                caller: caller.holder(),
            });
        }
        Ok(Success {
            obr_assertion,
            ..Success::payload(payload)
        })
    }

    /// CTAP 2.1 §6.3: the next credential of the last getAssertion.
    pub(super) async fn get_next_assertion(
        &mut self,
        caller: Caller<'_>,
    ) -> Result<Success, CommandError> {
        // "If authenticator does not remember any authenticatorGetAssertion
        // parameters, return CTAP2_ERR_NOT_ALLOWED."
        let Some(mut pending) = self.pending.take() else {
            return Err(Ctap2Error::NotAllowed.into());
        };
        // The enumeration continues only for whoever started it: the owner's
        // own sign-in is nobody else's to continue (and an OBR session's
        // nobody else's either).
        if pending.caller != caller.holder() {
            return Err(Ctap2Error::NotAllowed.into());
        }
        // "If timer since the last call to authenticatorGetAssertion/
        // authenticatorGetNextAssertion is greater than 30 seconds, discard
        // the current authenticatorGetAssertion state and return
        // CTAP2_ERR_NOT_ALLOWED."
        if Instant::now() > pending.expires_at {
            return Err(Ctap2Error::NotAllowed.into());
        }
        // "If the credentialCounter is equal to or greater than
        // numberOfCredentials, return CTAP2_ERR_NOT_ALLOWED."
        let Some(next) = pending.remaining.pop_front() else {
            return Err(Ctap2Error::NotAllowed.into());
        };
        let payload = sign_assertion(
            self,
            Assertion {
                rp_id: &pending.rp_id,
                client_data_hash: &pending.client_data_hash,
                flags: pending.flags,
                hmac_secret: pending.hmac_secret.as_ref(),
                number_of_credentials: None,
            },
            &next,
        )
        .await?;
        let obr_assertion = pending
            .on_behalf
            .then(|| signed_on_behalf(&next, &pending.rp_id));
        if !pending.remaining.is_empty() {
            pending.expires_at = Instant::now() + NEXT_ASSERTION_WINDOW;
            self.pending = Some(pending);
        }
        Ok(Success {
            obr_assertion,
            ..Success::payload(payload)
        })
    }
}

/// What a silent on-behalf lookup signs instead of the caller's
/// clientDataHash: SHA-256 over a label and it. Platforms read only the
/// credential id of a pre-flight; no relying party's challenge is ever
/// signed without presence on the admin's behalf.
fn silent_lookup_hash(client_data_hash: &[u8]) -> Vec<u8> {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(b"obr on-behalf silent lookup\0");
    context.update(client_data_hash);
    context.finish().as_ref().to_vec()
}

/// Least privilege on behalf (DESIGN, "Least-privilege OBR"): an OBR
/// session creates credentials on the user's key; it does not sign in with
/// them. Silent lookups (`up` false — the pre-flight browsers run against
/// an excludeList) see every credential. With user presence, only the
/// credentials created in this same session remain (a site may verify a
/// new key at once); if the request found only others, it is refused and
/// the first of them is returned for the record. Normal mode: unchanged.
fn on_behalf_candidates(
    candidates: VecDeque<Candidate>,
    caller: Caller<'_>,
    user_present: bool,
    rp_id: &str,
) -> Result<VecDeque<Candidate>, CommandError> {
    let Some(obr) = caller.obr.filter(|_| user_present) else {
        return Ok(candidates);
    };
    let (own, mut others): (VecDeque<_>, VecDeque<_>) = candidates
        .into_iter()
        .partition(|c| c.credential.obr_session_id.as_deref() == Some(obr.obr_session_id.as_str()));
    match others.pop_front() {
        Some(refused) if own.is_empty() => Err(CommandError::ObrSignInRefused(ObrAssertion {
            credential_id: refused.credential.id.as_bytes().to_vec(),
            rp_id: rp_id.to_owned(),
            refused: true,
        })),
        _ => Ok(own),
    }
}

fn signed_on_behalf(candidate: &Candidate, rp_id: &str) -> ObrAssertion {
    ObrAssertion {
        credential_id: candidate.credential.id.as_bytes().to_vec(),
        rp_id: rp_id.to_owned(),
        refused: false,
    }
}

/// What one assertion of a request signs, beyond its credential.
#[derive(Debug, Clone, Copy)]
struct Assertion<'a> {
    rp_id: &'a str,
    client_data_hash: &'a [u8],
    flags: Flags,
    hmac_secret: Option<&'a HmacSecretRequest>,
    /// Set only on the first answer of a discoverable enumeration (CTAP
    /// 2.1 §6.2.2).
    number_of_credentials: Option<u8>,
}

/// Commit the next counter of `candidate`, then sign and encode the
/// assertion.
async fn sign_assertion(
    authenticator: &mut Authenticator,
    assertion: Assertion<'_>,
    candidate: &Candidate,
) -> Result<Vec<u8>, CommandError> {
    let Authenticator {
        user,
        shared,
        owner,
        ..
    } = authenticator;
    let Assertion {
        rp_id,
        client_data_hash,
        flags,
        hmac_secret,
        number_of_credentials,
    } = assertion;
    let Candidate { credential, policy } = candidate;
    let owner = claimed(owner, user, shared).await?;
    // §12.5: a credential made without hmac-secret gives no output.
    let hmac_output = match (hmac_secret, &policy.wrapped_cred_random) {
        (Some(request), Some(wrapped)) => {
            let cred_random = owner.open_cred_random(user, &credential.id, wrapped)?;
            Some(request.output(&cred_random, flags.contains(Flags::UV), &shared.rng)?)
        }
        _ => None,
    };
    let counter = shared
        .store
        .increment_sign_count(user, owner.epoch, &credential.id)
        .await?
        .ok_or(Ctap2Error::NoCredentials)?;

    let mut auth_data = authenticator_data(rp_id, counter, flags);
    if let Some(outputs) = extensions::assertion_outputs(hmac_output)? {
        auth_data.extensions = Some(outputs);
        auth_data = auth_data.set_flags(Flags::ED);
    }
    let mut signed = auth_data.to_vec();
    signed.extend_from_slice(client_data_hash);
    let key_pair = owner.signing_key(user, credential, policy.algorithm, &shared.rng)?;
    let signature = keys::sign(key_pair, &signed, &shared.rng)?;

    // A discoverable credential names its user (at least the id, CTAP 2.1
    // §6.2.2); names only after user verification, which here means an OBR
    // call that asked for it.
    let user_entity = credential.discoverable.then(|| {
        let verified = flags.contains(Flags::UV);
        PublicKeyCredentialUserEntity {
            id: credential.user_handle.clone().into(),
            name: verified
                .then(|| credential.user_name.clone())
                .filter(|name| !name.is_empty()),
            display_name: verified
                .then(|| credential.user_display_name.clone())
                .filter(|name| !name.is_empty()),
            icon_url: None,
        }
    });
    let response = Response {
        credential: Some(PublicKeyCredentialDescriptor {
            ty: PublicKeyCredentialType::PublicKey,
            id: credential.id.as_bytes().into(),
            transports: None,
        }),
        auth_data,
        signature: signature.into(),
        user: user_entity,
        number_of_credentials,
        user_selected: None,
        large_blob_key: None,
        unsigned_extension_outputs: None,
    };
    Ok(encode_ok(&response)?)
}
