//! authenticatorMakeCredential (CTAP 2.1 §6.1): create an ES256 or EdDSA
//! credential, wrap its private key (and its hmac-secret CredRandoms),
//! store it with its credProtect level, fenced by this activation's epoch,
//! and answer with the configured attestation ("packed" or "none").
//!
//! Follows the numbered steps of §6.1.2 where they apply to a key with
//! built-in user verification, no PIN and no display. Never returns or logs
//! the private key; its PKCS#8 form is dropped once wrapped.

use ciborium::value::Value;
use coset::iana::EnumI64 as _;
use passkey_types::ctap2::make_credential::{Request, Response};
use passkey_types::ctap2::{AttestedCredentialData, Ctap2Error, Flags};
use passkey_types::webauthn::PublicKeyCredentialType;
use ring::rand::SecureRandom;

use crate::call::{CreatedCredential, Operation};
use crate::ids::{CREDENTIAL_ID_LEN, CredentialId};
use crate::store::{NewCredential, now_ms};

use super::codec::{Kind, Param, Params, encode_ok};
use super::extensions::{CreateInputs, CredProtect, CredRandom};
use super::keys::{self, Algorithm};
use super::pin_uv_auth_token::Permissions;
use super::{
    Authenticator, Caller, CommandError, MAX_RP_ID_LEN, Success, authenticator_data, claimed,
    pin_uv_auth_request, response_flags, user_presence_used,
};

/// CTAP 2.1 §6.1: authenticatorMakeCredential parameters.
const CLIENT_DATA_HASH: u8 = 0x01;
const RP: u8 = 0x02;
const USER: u8 = 0x03;
const PUB_KEY_CRED_PARAMS: u8 = 0x04;
const EXCLUDE_LIST: u8 = 0x05;
const EXTENSIONS: u8 = 0x06;
const OPTIONS: u8 = 0x07;
const PIN_UV_AUTH_PARAM: u8 = 0x08;
const PIN_UV_AUTH_PROTOCOL: u8 = 0x09;
const ENTERPRISE_ATTESTATION: u8 = 0x0A;

const SCHEMA: &[Param] = &[
    Param::required(CLIENT_DATA_HASH, Kind::Bytes),
    Param::required(RP, Kind::Map),
    Param::required(USER, Kind::Map),
    Param::required(PUB_KEY_CRED_PARAMS, Kind::Array),
    Param::optional(EXCLUDE_LIST, Kind::Array),
    Param::optional(EXTENSIONS, Kind::Map),
    Param::optional(OPTIONS, Kind::Map),
    Param::optional(PIN_UV_AUTH_PARAM, Kind::Bytes),
    Param::optional(PIN_UV_AUTH_PROTOCOL, Kind::Integer),
    Param::optional(ENTERPRISE_ATTESTATION, Kind::Integer),
];

/// WebAuthn L3 §5.4.3: "A user handle is an opaque byte sequence with a
/// maximum size of 64 bytes" and must not be empty.
const MAX_USER_HANDLE_LEN: usize = 64;
/// CTAP 2.1 §6.1.2 step 17 / WebAuthn L3 §6.4.1: authenticators may
/// truncate user names and display names to 64 bytes.
const MAX_STORED_NAME_LEN: usize = 64;

impl Authenticator {
    pub(super) async fn make_credential(
        &mut self,
        params: &[u8],
        caller: Caller<'_>,
    ) -> Result<Success, CommandError> {
        let mut params = Params::parse(params, SCHEMA)?;
        // CTAP 2.1 §6.1.2 step 9: enterprise attestation is not supported.
        if params.get(ENTERPRISE_ATTESTATION).is_some() {
            return Err(Ctap2Error::InvalidParameter.into());
        }
        default_optional_user_names(&mut params);
        let extensions = CreateInputs::parse(params.get(EXTENSIONS))?;
        let request: Request = params.decode()?;

        // Steps 1–2: a touch probe, or a pinUvAuthParam with its protocol.
        let pin_uv_auth = pin_uv_auth_request(request.pin_auth.as_ref(), request.pin_protocol)?;
        // Step 3: the first supported entry, in the RP's order of
        // preference. (passkey-types already dropped entries it cannot
        // decode.)
        let algorithm = request
            .pub_key_cred_params
            .iter()
            .filter(|p| p.ty == PublicKeyCredentialType::PublicKey)
            .find_map(|p| Algorithm::from_cose(p.alg.to_i64()))
            .ok_or(Ctap2Error::UnsupportedAlgorithm)?;
        // Step 5: options. "rk" is supported (getInfo says so); "up" must
        // not be false.
        if !request.options.up {
            return Err(Ctap2Error::InvalidOption.into());
        }
        // Step 5: with a pinUvAuthParam, the "uv" option is treated as
        // false; the token decides.
        let uv_requested = request.options.uv && pin_uv_auth.is_none();
        let discoverable = request.options.rk;
        let rp_id = request.rp.id.as_str();
        let user_handle = request.user.id.as_slice();
        if rp_id.is_empty() || rp_id.len() > MAX_RP_ID_LEN {
            return Err(Ctap2Error::InvalidLength.into());
        }
        if user_handle.is_empty() || user_handle.len() > MAX_USER_HANDLE_LEN {
            return Err(Ctap2Error::InvalidLength.into());
        }
        // Step 11: user verification. 11.1: by the pinUvAuthToken (the UV
        // bit is set); 11.2: built-in, when asked for with "uv".
        let token = match pin_uv_auth {
            Some(auth) => Some(self.authorize_token(
                auth,
                &request.client_data_hash,
                Permissions::MAKE_CREDENTIAL,
                rp_id,
                caller,
            )?),
            None => None,
        };
        let user_verified = token.is_some() || caller.verified(uv_requested)?;

        let owner = claimed(&mut self.owner, &self.user, &self.shared).await?;
        // Step 12: a listed credential of this user bound to this RP; one
        // that requires UV (credProtect 3) is invisible, and so does not
        // exclude, unless the user was verified.
        if let Some(exclude_list) = request.exclude_list.as_ref().filter(|l| !l.is_empty()) {
            let existing = self
                .shared
                .store
                .credential_policies(&self.user, rp_id)
                .await?;
            let excluded = exclude_list
                .iter()
                .filter(|d| d.is_known())
                .filter_map(|d| existing.iter().find(|c| c.id.as_bytes() == d.id.as_slice()))
                .any(|c| CredProtect::from_stored(c.cred_protect).permits(user_verified, true));
            if excluded {
                return Err(Ctap2Error::CredentialExcluded.into());
            }
        }

        // Step 14 (user presence). 14.1: a token whose user-present flag
        // is still set (the approval or session that issued it) stands for
        // it; otherwise, and without a token (14.2), the admin's session,
        // or in normal mode the owner's approval.
        if !token.is_some_and(|grant| grant.user_present) {
            caller.require_consent(true, uv_requested, rp_id, Operation::Register)?;
        }
        // 14.4: the token's presence, verification and permissions are
        // spent.
        user_presence_used(self.tokens.slot(&caller.holder()));

        // Step 16: a new key pair, wrapped before anything is stored.
        let credential_id = new_credential_id(&self.shared.rng)?;
        let (wrapped, key_pair) = keys::generate(algorithm, &self.shared.rng, |pkcs8| {
            owner
                .data_key
                .seal_private_key(&self.user, &credential_id, pkcs8, &self.shared.rng)
                .map_err(CommandError::from)
        })?;
        let public_key = keys::cose_public_key(&key_pair)?;
        // §12.5: hmac-secret's two CredRandoms, wrapped like the key.
        let wrapped_cred_random = if extensions.hmac_secret {
            let cred_random = CredRandom::generate(&self.shared.rng)?;
            Some(owner.seal_cred_random(
                &self.user,
                &credential_id,
                &cred_random,
                &self.shared.rng,
            )?)
        } else {
            None
        };
        let cred_protect = extensions.cred_protect.unwrap_or(CredProtect::Optional);

        // Steps 17–18: store it; a discoverable one replaces the previous
        // discoverable credential of this RP and user handle.
        let user_name = truncate_utf8(request.user.name.as_str(), MAX_STORED_NAME_LEN);
        let user_display_name =
            truncate_utf8(request.user.display_name.as_str(), MAX_STORED_NAME_LEN);
        let replaced = self
            .shared
            .store
            .insert_credential(
                &self.user,
                owner.epoch,
                NewCredential {
                    id: &credential_id,
                    rp_id,
                    user_handle,
                    user_name,
                    user_display_name,
                    discoverable,
                    algorithm: algorithm.cose().to_i64(),
                    wrapped_private_key: &wrapped,
                    created_at_ms: now_ms(),
                    created_by: caller.obr,
                    cred_protect: cred_protect.level(),
                    wrapped_cred_random: wrapped_cred_random.as_ref(),
                },
            )
            .await?;
        // Keep the new key ready for the assertions that usually follow.
        owner
            .keys
            .get_or_load(&credential_id, || Ok::<_, CommandError>(key_pair))?;

        // Step 19: the configured attestation; step 14's presence is the
        // browser action that reached us (up is never false here, see step
        // 5). Extension outputs (§12.1, §12.5) go in authenticatorData.
        let attested = AttestedCredentialData::new(
            self.shared.aaguid,
            credential_id.as_bytes().to_vec(),
            public_key,
        )
        .map_err(|_| Ctap2Error::Other)?;
        let mut auth_data = authenticator_data(rp_id, 0, response_flags(true, user_verified))
            .set_attested_credential_data(attested);
        if let Some(outputs) = extensions.outputs()? {
            auth_data.extensions = Some(outputs);
            auth_data = auth_data.set_flags(Flags::ED);
        }
        let statement = self.shared.attestation.statement(
            &auth_data.to_vec(),
            &request.client_data_hash,
            &self.shared.rng,
        )?;
        let response = Response {
            fmt: statement.fmt.to_owned(),
            auth_data,
            att_stmt: statement.att_stmt,
            ep_att: None,
            large_blob_key: None,
            unsigned_extension_outputs: None,
        };
        let payload = encode_ok(&response)?;
        tracing::info!(
            user = %self.user,
            rp_id,
            discoverable,
            replaced,
            algorithm = ?algorithm,
            cred_protect = cred_protect.level(),
            hmac_secret = extensions.hmac_secret,
            attestation = statement.fmt,
            on_behalf_of = caller.obr.map(|o| o.admin_id.as_str()),
            "credential created"
        );
        Ok(Success {
            payload,
            created: Some(CreatedCredential {
                credential_id: credential_id.into_bytes(),
                rp_id: rp_id.to_owned(),
                user_name: user_name.to_owned(),
                user_display_name: user_display_name.to_owned(),
                discoverable,
            }),
            obr_assertion: None,
        })
    }
}

/// A random credential id (CTAP 2.1 §6.1.2 leaves its form to the
/// authenticator; ours only index the database).
fn new_credential_id(rng: &dyn SecureRandom) -> Result<CredentialId, CommandError> {
    let mut id = vec![0u8; CREDENTIAL_ID_LEN];
    rng.fill(&mut id).map_err(|_| Ctap2Error::Other)?;
    CredentialId::new(id).map_err(|_| Ctap2Error::Other.into())
}

/// CTAP 2.1 §6.1 makes the user entity's `name` and `displayName` optional;
/// passkey-types decodes it as the WebAuthn dictionary, where they are
/// required. Absent ones become empty strings before decoding.
fn default_optional_user_names(params: &mut Params) {
    if let Some(Value::Map(user)) = params.get_mut(USER) {
        for member in ["name", "displayName"] {
            let present = user
                .iter()
                .any(|(key, _)| matches!(key, Value::Text(text) if text == member));
            if !present {
                user.push((Value::Text(member.to_owned()), Value::Text(String::new())));
            }
        }
    }
}

/// The longest prefix of `text` that fits `max` bytes without splitting a
/// character.
fn truncate_utf8(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    // invariant: `end` is a char boundary no greater than `text.len()`
    // (0 always is one, so the loop ends).
    &text[..end]
}
