//! The two extensions this key supports (getInfo `extensions`):
//! `credProtect` (CTAP 2.1 §12.1) and `hmac-secret` (§12.5). Parses their
//! inputs, decides a credential's visibility, derives and encrypts the
//! hmac-secret outputs, and builds the authenticatorData extension map.
//!
//! Unknown extensions are ignored, as §12 requires of an authenticator.
//! The CredRandom secrets exist unwrapped only inside [`CredRandom`]
//! (zeroized on drop); nothing here logs a salt, a secret or an output.

use ciborium::value::Value;
use passkey_types::ctap2::Ctap2Error;
use ring::hmac;
use ring::rand::SecureRandom;
use zeroize::Zeroizing;

use super::CommandError;
use super::client_pin::{KeyAgreementKey, PinUvAuthProtocol, SharedSecret};
use super::codec::canonical_value;

/// Extension identifiers (CBOR text keys).
pub(crate) const CRED_PROTECT: &str = "credProtect";
pub(crate) const HMAC_SECRET: &str = "hmac-secret";

/// §12.5: hmac-secret getAssertion input members.
const HMAC_KEY_AGREEMENT: i64 = 0x01;
const HMAC_SALT_ENC: i64 = 0x02;
const HMAC_SALT_AUTH: i64 = 0x03;
const HMAC_PIN_UV_AUTH_PROTOCOL: i64 = 0x04;
/// §12.5: "salt1 (32 bytes) or salt1 || salt2 (64 bytes)".
const SALT_LEN: usize = 32;
/// §12.5: CredRandomWithUV and CredRandomWithoutUV, 32 bytes each.
pub(crate) const CRED_RANDOM_LEN: usize = 32;

/// A credential's protection policy (§12.1). Absent, a credential has
/// [`CredProtect::Optional`], this key's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CredProtect {
    /// 0x01 userVerificationOptional.
    Optional,
    /// 0x02 userVerificationOptionalWithCredentialIDList.
    OptionalWithCredentialIdList,
    /// 0x03 userVerificationRequired.
    Required,
}

impl CredProtect {
    /// The level as stored and as the extension output carries it.
    pub(crate) fn level(self) -> i64 {
        match self {
            Self::Optional => 1,
            Self::OptionalWithCredentialIdList => 2,
            Self::Required => 3,
        }
    }

    /// A stored level; anything else is treated as the strictest policy
    /// (never weaker than what was asked for).
    pub(crate) fn from_stored(level: i64) -> Self {
        match level {
            1 => Self::Optional,
            2 => Self::OptionalWithCredentialIdList,
            _ => Self::Required,
        }
    }

    /// §12.1's table: whether getAssertion may use the credential.
    /// Level 2 hides it from discovery (no allowList) without UV; level 3
    /// hides it everywhere without UV.
    pub(crate) fn permits(self, user_verified: bool, by_allow_list: bool) -> bool {
        match self {
            Self::Optional => true,
            Self::OptionalWithCredentialIdList => user_verified || by_allow_list,
            Self::Required => user_verified,
        }
    }
}

/// What makeCredential's `extensions` asked for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CreateInputs {
    pub cred_protect: Option<CredProtect>,
    pub hmac_secret: bool,
}

impl CreateInputs {
    /// Parse makeCredential's extension map. A credProtect that is not 1–3
    /// is `CTAP1_ERR_INVALID_PARAMETER`; a member of the wrong type
    /// `CTAP2_ERR_CBOR_UNEXPECTED_TYPE`.
    pub(crate) fn parse(extensions: Option<&Value>) -> Result<Self, CommandError> {
        let mut inputs = Self::default();
        for (name, value) in map_entries(extensions)? {
            match name.as_text() {
                Some(CRED_PROTECT) => {
                    let level = value.as_integer().ok_or(Ctap2Error::CborUnexpectedType)?;
                    inputs.cred_protect = Some(match i128::from(level) {
                        1 => CredProtect::Optional,
                        2 => CredProtect::OptionalWithCredentialIdList,
                        3 => CredProtect::Required,
                        _ => return Err(Ctap2Error::InvalidParameter.into()),
                    });
                }
                Some(HMAC_SECRET) => {
                    inputs.hmac_secret = value.as_bool().ok_or(Ctap2Error::CborUnexpectedType)?;
                }
                _ => {}
            }
        }
        Ok(inputs)
    }

    /// The authenticatorData extension outputs of makeCredential: the
    /// credProtect level and `hmac-secret: true` when each was asked for
    /// (§12.1, §12.5); `None` when there are none.
    pub(crate) fn outputs(self) -> Result<Option<Value>, CommandError> {
        let mut outputs = Vec::new();
        if let Some(level) = self.cred_protect {
            outputs.push((
                Value::Text(CRED_PROTECT.to_owned()),
                Value::Integer(level.level().into()),
            ));
        }
        if self.hmac_secret {
            outputs.push((Value::Text(HMAC_SECRET.to_owned()), Value::Bool(true)));
        }
        extension_map(outputs)
    }
}

/// getAssertion's hmac-secret input, authenticated and decrypted: the
/// shared secret to encrypt outputs with, and the salts.
pub(crate) struct HmacSecretRequest {
    secret: SharedSecret,
    salts: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for HmacSecretRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HmacSecretRequest({} salt bytes, ..)", self.salts.len())
    }
}

impl HmacSecretRequest {
    /// §12.5 authenticator processing of getAssertion's hmac-secret input.
    /// Returns `None` when the request has no hmac-secret member. A member
    /// missing is `CTAP2_ERR_MISSING_PARAMETER`, mistyped
    /// `CTAP2_ERR_CBOR_UNEXPECTED_TYPE`; an unknown protocol
    /// `CTAP1_ERR_INVALID_PARAMETER`; no key-agreement key to agree with, or
    /// a saltAuth that does not verify, `CTAP2_ERR_PIN_AUTH_INVALID`; salts
    /// that are not 32 or 64 bytes `CTAP1_ERR_INVALID_LENGTH`.
    pub(crate) fn parse(
        extensions: Option<&Value>,
        key_agreement: Option<&KeyAgreementKey>,
    ) -> Result<Option<Self>, CommandError> {
        let Some((_, input)) =
            map_entries(extensions)?.find(|(name, _)| name.as_text() == Some(HMAC_SECRET))
        else {
            return Ok(None);
        };
        let Value::Map(members) = input else {
            return Err(Ctap2Error::CborUnexpectedType.into());
        };
        let member = |label: i64| {
            members
                .iter()
                .find(|(k, _)| k.as_integer() == Some(label.into()))
                .map(|(_, v)| v)
        };
        let required = |label: i64| member(label).ok_or(Ctap2Error::MissingParameter);
        let bytes = |label: i64| -> Result<&Vec<u8>, CommandError> {
            Ok(required(label)?
                .as_bytes()
                .ok_or(Ctap2Error::CborUnexpectedType)?)
        };
        let platform_key = required(HMAC_KEY_AGREEMENT)?;
        let salt_enc = bytes(HMAC_SALT_ENC)?;
        let salt_auth = bytes(HMAC_SALT_AUTH)?;
        // "pinUvAuthProtocol ... If absent, protocol one".
        let protocol = match member(HMAC_PIN_UV_AUTH_PROTOCOL) {
            None => PinUvAuthProtocol::One,
            Some(value) => {
                let number = value.as_integer().ok_or(Ctap2Error::CborUnexpectedType)?;
                PinUvAuthProtocol::from_wire(u64::try_from(number).unwrap_or(u64::MAX))?
            }
        };
        let key = key_agreement.ok_or(Ctap2Error::PinAuthInvalid)?;
        let secret = SharedSecret::decapsulate(protocol, key, platform_key)?;
        if !secret.verify(salt_enc, salt_auth) {
            return Err(Ctap2Error::PinAuthInvalid.into());
        }
        let salts = secret.decrypt(salt_enc)?;
        if salts.len() != SALT_LEN && salts.len() != 2 * SALT_LEN {
            return Err(Ctap2Error::InvalidLength.into());
        }
        Ok(Some(Self { secret, salts }))
    }

    /// The encrypted output for one credential: HMAC-SHA-256 of each salt
    /// under the CredRandom that matches whether the user was verified.
    pub(crate) fn output(
        &self,
        cred_random: &CredRandom,
        user_verified: bool,
        rng: &dyn SecureRandom,
    ) -> Result<Vec<u8>, CommandError> {
        let key = hmac::Key::new(hmac::HMAC_SHA256, cred_random.half(user_verified));
        let mut outputs = Zeroizing::new(Vec::with_capacity(self.salts.len()));
        for salt in self.salts.chunks(SALT_LEN) {
            outputs.extend_from_slice(hmac::sign(&key, salt).as_ref());
        }
        self.secret.encrypt(&outputs, rng)
    }
}

/// A credential's CredRandomWithUV || CredRandomWithoutUV, unwrapped.
pub(crate) struct CredRandom(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for CredRandom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredRandom(..)")
    }
}

impl CredRandom {
    /// Fresh random secrets for a new credential.
    pub(crate) fn generate(rng: &dyn SecureRandom) -> Result<Self, CommandError> {
        let mut bytes = Zeroizing::new(vec![0u8; 2 * CRED_RANDOM_LEN]);
        rng.fill(&mut bytes).map_err(|_| Ctap2Error::Other)?;
        Ok(Self(bytes))
    }

    /// Secrets read back from storage; anything but 64 bytes is corrupt.
    pub(crate) fn from_unwrapped(bytes: Zeroizing<Vec<u8>>) -> Option<Self> {
        (bytes.len() == 2 * CRED_RANDOM_LEN).then_some(Self(bytes))
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn half(&self, user_verified: bool) -> &[u8] {
        let (with_uv, without_uv) = self.0.split_at(CRED_RANDOM_LEN.min(self.0.len()));
        if user_verified { with_uv } else { without_uv }
    }
}

/// getAssertion's authenticatorData extension outputs: the encrypted
/// hmac-secret output, if any.
pub(crate) fn assertion_outputs(
    hmac_secret: Option<Vec<u8>>,
) -> Result<Option<Value>, CommandError> {
    extension_map(
        hmac_secret
            .map(|output| (Value::Text(HMAC_SECRET.to_owned()), Value::Bytes(output)))
            .into_iter()
            .collect(),
    )
}

/// The entries of an `extensions` parameter (already checked to be a map
/// by the command's schema).
fn map_entries(
    extensions: Option<&Value>,
) -> Result<impl Iterator<Item = &(Value, Value)>, CommandError> {
    match extensions {
        None => Ok([].iter()),
        Some(Value::Map(entries)) => Ok(entries.iter()),
        Some(_) => Err(Ctap2Error::CborUnexpectedType.into()),
    }
}

/// Extension outputs as a canonical CBOR map, or `None` if empty.
fn extension_map(outputs: Vec<(Value, Value)>) -> Result<Option<Value>, CommandError> {
    if outputs.is_empty() {
        return Ok(None);
    }
    Ok(Some(canonical_value(Value::Map(outputs))?))
}
