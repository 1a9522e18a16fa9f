//! authenticatorClientPIN (CTAP 2.1 §6.5) for a key with built-in user
//! verification and no PIN: getKeyAgreement (§6.5.5.4),
//! getPinUvAuthTokenUsingUvWithPermissions (§6.5.5.7.3), getUVRetries
//! (§6.5.5.3), and the two PIN/UV auth protocols' shared secrets,
//! encryption and MACs (§6.5.6 protocol one, §6.5.7 protocol two), which
//! the pinUvAuthToken and the hmac-secret extension (§12.5) run on.
//!
//! This key has no PIN (getInfo does not advertise `clientPin`): the PIN
//! subcommands answer `CTAP2_ERR_PIN_NOT_SET`. Its built-in user
//! verification is the one the `uv` option gets (`Caller`): the admin's
//! audited OBR session, or the owner's approval on their device; a
//! pinUvAuthToken carries it from this command to the makeCredential or
//! getAssertion that follows (`pin_uv_auth_token`).
//!
//! The authenticator's key-agreement key (§6.5.6 "initialize()",
//! "getPublicKey()") is a P-256 key made by the first getKeyAgreement of
//! an activation of the user's actor — the cloud key's "power-up" — and
//! kept until the actor passivates or the key is reset: every
//! getKeyAgreement returns the same public key, and platforms agree with it
//! as often as they like. They do: python-fido2 fetches it for hmac-secret,
//! fetches it again for a pinUvAuthToken, and only then uses the first
//! agreement. ECDH is RustCrypto's p256 because ring's agreement keys are
//! single-use. Never logs a key, a token, a shared secret or plaintext.

use aes::Aes256;
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockModeDecrypt as _, BlockModeEncrypt as _, KeyIvInit as _};
use ciborium::value::Value;
use passkey_types::ctap2::Ctap2Error;
use ring::rand::SecureRandom;
use ring::{digest, hkdf, hmac};
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use crate::call::Operation;

use super::codec::{Kind, Param, Params, encode_value};
use super::pin_uv_auth_token::{Permissions, PinUvAuthToken};
use super::{Authenticator, Caller, CommandError, MAX_RP_ID_LEN, Success};

/// CTAP 2.1 §6.5.5.1: authenticatorClientPIN parameters.
const PIN_UV_AUTH_PROTOCOL: u8 = 0x01;
const SUB_COMMAND: u8 = 0x02;
const KEY_AGREEMENT: u8 = 0x03;
const PIN_UV_AUTH_PARAM: u8 = 0x04;
const NEW_PIN_ENC: u8 = 0x05;
const PIN_HASH_ENC: u8 = 0x06;
const PERMISSIONS: u8 = 0x09;
const RP_ID: u8 = 0x0A;

const SCHEMA: &[Param] = &[
    Param::optional(PIN_UV_AUTH_PROTOCOL, Kind::Integer),
    Param::required(SUB_COMMAND, Kind::Integer),
    Param::optional(KEY_AGREEMENT, Kind::Map),
    Param::optional(PIN_UV_AUTH_PARAM, Kind::Bytes),
    Param::optional(NEW_PIN_ENC, Kind::Bytes),
    Param::optional(PIN_HASH_ENC, Kind::Bytes),
    Param::optional(PERMISSIONS, Kind::Integer),
    Param::optional(RP_ID, Kind::Text),
];

/// CTAP 2.1 §6.5.5.1: subcommands.
const GET_PIN_RETRIES: u8 = 0x01;
const GET_KEY_AGREEMENT: u8 = 0x02;
const SET_PIN: u8 = 0x03;
const CHANGE_PIN: u8 = 0x04;
const GET_PIN_TOKEN: u8 = 0x05;
const GET_PIN_UV_AUTH_TOKEN_USING_UV_WITH_PERMISSIONS: u8 = 0x06;
const GET_UV_RETRIES: u8 = 0x07;
const GET_PIN_UV_AUTH_TOKEN_USING_PIN_WITH_PERMISSIONS: u8 = 0x09;

/// CTAP 2.1 §6.5.5.1: response members.
const RESPONSE_KEY_AGREEMENT: i64 = 0x01;
const RESPONSE_PIN_UV_AUTH_TOKEN: i64 = 0x02;
const RESPONSE_UV_RETRIES: i64 = 0x05;

/// getUVRetries' answer (§6.5.5.3). This key's built-in user verification
/// never fails a match: the owner's device or the admin's session says yes
/// or no, and a no is `CTAP2_ERR_OPERATION_DENIED`, not a failed attempt.
/// So the counter never goes down; it reads as a full one (the maximum is
/// the authenticator's choice). Platforms ask before
/// getPinUvAuthTokenUsingUvWithPermissions (Chromium's AuthTokenRequester
/// gives up on a key that does not answer).
const UV_RETRIES: u8 = 8;

/// COSE_Key labels and values of a key-agreement key (CTAP 2.1 §6.5.6
/// getPublicKey: kty EC2, alg -25 "although this is NOT the algorithm
/// actually used", crv P-256).
const COSE_KTY: i64 = 1;
const COSE_ALG: i64 = 3;
const COSE_EC2_CRV: i64 = -1;
const COSE_EC2_X: i64 = -2;
const COSE_EC2_Y: i64 = -3;
const COSE_KTY_EC2: i64 = 2;
const COSE_ALG_ECDH_ES_HKDF_256: i64 = -25;
const COSE_CRV_P256: i64 = 1;
const P256_COORDINATE_LEN: usize = 32;
const SEC1_UNCOMPRESSED_TAG: u8 = 0x04;

/// AES block and IV length.
const AES_BLOCK_LEN: usize = 16;
/// Protocol one: "LEFT(HMAC-SHA-256(key, message), 16)" (§6.5.6).
const PROTOCOL_ONE_MAC_LEN: usize = 16;
/// Protocol two's HKDF inputs (§6.5.7 kdf).
const HKDF_SALT: [u8; 32] = [0; 32];
const HKDF_INFO_HMAC: &[u8] = b"CTAP2 HMAC key";
const HKDF_INFO_AES: &[u8] = b"CTAP2 AES key";
const SHARED_KEY_LEN: usize = 32;

/// A PIN/UV auth protocol this key implements (getInfo advertises `[2, 1]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PinUvAuthProtocol {
    One,
    Two,
}

impl PinUvAuthProtocol {
    /// The wire number, in getInfo's order of preference.
    pub(crate) const SUPPORTED: [u8; 2] = [2, 1];

    /// CTAP 2.1 §6.5.5.2: an unsupported protocol is
    /// `CTAP1_ERR_INVALID_PARAMETER`.
    pub(crate) fn from_wire(number: u64) -> Result<Self, CommandError> {
        match number {
            1 => Ok(Self::One),
            2 => Ok(Self::Two),
            _ => Err(Ctap2Error::InvalidParameter.into()),
        }
    }
}

/// How many random scalars [`KeyAgreementKey::generate`] tries before
/// giving up: a 32-byte string is a valid P-256 scalar except with
/// probability about 2^-32, so the second try practically never happens.
const KEY_GENERATION_ATTEMPTS: usize = 4;

/// The authenticator's key-agreement key (§6.5.6 "authenticator key
/// agreement key"): reusable for any number of agreements. The secret
/// scalar is zeroized on drop; `Debug` prints none of it.
pub(crate) struct KeyAgreementKey {
    secret: p256::SecretKey,
    /// The public key, SEC1 uncompressed (0x04 || x || y).
    public: Box<[u8]>,
}

impl std::fmt::Debug for KeyAgreementKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyAgreementKey(..)")
    }
}

impl KeyAgreementKey {
    /// §6.5.6 regenerate(): a fresh random P-256 private key.
    pub(crate) fn generate(rng: &dyn SecureRandom) -> Result<Self, CommandError> {
        for _ in 0..KEY_GENERATION_ATTEMPTS {
            let mut scalar = Zeroizing::new([0u8; P256_COORDINATE_LEN]);
            rng.fill(scalar.as_mut()).map_err(|_| Ctap2Error::Other)?;
            // Zero or not below the group order: draw again.
            if let Ok(secret) = p256::SecretKey::from_slice(scalar.as_ref()) {
                let public = secret.public_key().to_sec1_bytes();
                return Ok(Self { secret, public });
            }
        }
        Err(Ctap2Error::Other.into())
    }

    /// ECDH with the platform's point (SEC1 uncompressed): the shared
    /// point's x-coordinate, Z. A point that is not on P-256 is
    /// `CTAP1_ERR_INVALID_PARAMETER`.
    fn agree(&self, peer_point: &[u8]) -> Result<Zeroizing<Vec<u8>>, CommandError> {
        let peer = p256::PublicKey::from_sec1_bytes(peer_point)
            .map_err(|_| CommandError::from(Ctap2Error::InvalidParameter))?;
        let shared = p256::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), peer.as_affine());
        Ok(Zeroizing::new(shared.raw_secret_bytes().to_vec()))
    }
}

/// A shared secret with the platform (§6.5.6/§6.5.7 `sharedSecret`).
/// Zeroized on drop; `Debug` prints no bytes.
pub(crate) struct SharedSecret {
    protocol: PinUvAuthProtocol,
    hmac_key: Zeroizing<[u8; SHARED_KEY_LEN]>,
    aes_key: Zeroizing<[u8; SHARED_KEY_LEN]>,
}

impl std::fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedSecret({:?}, ..)", self.protocol)
    }
}

impl SharedSecret {
    /// `decapsulate(peerCoseKey)`: ECDH of `key` (the authenticator's
    /// key-agreement key) with the platform's key, then the protocol's KDF.
    /// A peer key that is not a P-256 point is
    /// `CTAP1_ERR_INVALID_PARAMETER`.
    pub(crate) fn decapsulate(
        protocol: PinUvAuthProtocol,
        key: &KeyAgreementKey,
        peer: &Value,
    ) -> Result<Self, CommandError> {
        let z = key.agree(&peer_point(peer)?)?;
        kdf(protocol, &z)
    }

    /// `verify(key, message, signature)` under the shared secret's HMAC
    /// key ([`verify_mac`]).
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        verify_mac(self.protocol, self.hmac_key.as_ref(), message, signature)
    }

    /// `decrypt(key, demCiphertext)`: AES-256-CBC, a zero IV (protocol one)
    /// or the IV in the first block (protocol two). A length that is not
    /// whole blocks is `CTAP1_ERR_INVALID_LENGTH`.
    pub(crate) fn decrypt(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, CommandError> {
        let (iv, body) = match self.protocol {
            PinUvAuthProtocol::One => ([0u8; AES_BLOCK_LEN], ciphertext),
            PinUvAuthProtocol::Two => {
                let (iv, body) = ciphertext
                    .split_first_chunk::<AES_BLOCK_LEN>()
                    .ok_or(Ctap2Error::InvalidLength)?;
                (*iv, body)
            }
        };
        if body.len() % AES_BLOCK_LEN != 0 {
            return Err(Ctap2Error::InvalidLength.into());
        }
        let mut buffer = Zeroizing::new(body.to_vec());
        let decryptor = cbc::Decryptor::<Aes256>::new(&(*self.aes_key).into(), &iv.into());
        let plain_len = decryptor
            .decrypt_padded::<NoPadding>(&mut buffer)
            .map_err(|_| Ctap2Error::InvalidLength)?
            .len();
        buffer.truncate(plain_len);
        Ok(buffer)
    }

    /// `encrypt(key, demPlaintext)`: AES-256-CBC; protocol two prepends a
    /// random IV. `plaintext` is whole blocks (the callers' are 32 or 64
    /// bytes).
    pub(crate) fn encrypt(
        &self,
        plaintext: &[u8],
        rng: &dyn SecureRandom,
    ) -> Result<Vec<u8>, CommandError> {
        let mut iv = [0u8; AES_BLOCK_LEN];
        if self.protocol == PinUvAuthProtocol::Two {
            rng.fill(&mut iv).map_err(|_| Ctap2Error::Other)?;
        }
        let mut buffer = plaintext.to_vec();
        let encryptor = cbc::Encryptor::<Aes256>::new(&(*self.aes_key).into(), &iv.into());
        let cipher_len = encryptor
            .encrypt_padded::<NoPadding>(&mut buffer, plaintext.len())
            .map_err(|_| Ctap2Error::Other)?
            .len();
        buffer.truncate(cipher_len);
        Ok(match self.protocol {
            PinUvAuthProtocol::One => buffer,
            PinUvAuthProtocol::Two => {
                let mut out = iv.to_vec();
                out.extend_from_slice(&buffer);
                out
            }
        })
    }
}

impl Authenticator {
    /// authenticatorClientPIN (CTAP 2.1 §6.5.5).
    pub(super) fn client_pin(
        &mut self,
        params: &[u8],
        caller: Caller<'_>,
    ) -> Result<Success, CommandError> {
        let params = Params::parse(params, SCHEMA)?;
        let sub_command = params
            .get(SUB_COMMAND)
            .and_then(Value::as_integer)
            .and_then(|i| u8::try_from(i).ok());
        match sub_command {
            Some(GET_KEY_AGREEMENT) => {
                // §6.5.5.4: "pinUvAuthProtocol" is required.
                protocol_param(&params)?;
                self.get_key_agreement()
            }
            Some(GET_PIN_UV_AUTH_TOKEN_USING_UV_WITH_PERMISSIONS) => {
                self.get_pin_uv_auth_token_using_uv_with_permissions(&params, caller)
            }
            // §6.5.5.3: built-in UV's retry counter.
            Some(GET_UV_RETRIES) => {
                let response = Value::Map(vec![(
                    Value::Integer(RESPONSE_UV_RETRIES.into()),
                    Value::Integer(UV_RETRIES.into()),
                )]);
                Ok(Success::payload(encode_value(response)?))
            }
            // No PIN is ever set on this key (§6.5.5.2 getPINRetries, §6.5.5.5
            // setPIN would need clientPin in getInfo, §6.5.5.7 token using
            // PIN): "CTAP2_ERR_PIN_NOT_SET".
            Some(
                GET_PIN_RETRIES
                | SET_PIN
                | CHANGE_PIN
                | GET_PIN_TOKEN
                | GET_PIN_UV_AUTH_TOKEN_USING_PIN_WITH_PERMISSIONS,
            ) => Err(Ctap2Error::PinNotSet.into()),
            // §6.5.5: "If the subCommand is not supported, return
            // CTAP2_ERR_INVALID_SUBCOMMAND".
            _ => Err(Ctap2Error::InvalidSubcommand.into()),
        }
    }

    /// §6.5.5.4 getKeyAgreement: the authenticator's key-agreement key
    /// (made now if this activation has none yet), its public half as a
    /// COSE_Key.
    fn get_key_agreement(&mut self) -> Result<Success, CommandError> {
        let key = match self.key_agreement.take() {
            Some(key) => key,
            None => KeyAgreementKey::generate(&self.shared.rng)?,
        };
        let cose = cose_key(&key.public)?;
        self.key_agreement = Some(key);
        let response = Value::Map(vec![(Value::Integer(RESPONSE_KEY_AGREEMENT.into()), cose)]);
        Ok(Success::payload(encode_value(response)?))
    }

    /// §6.5.5.7.3 getPinUvAuthTokenUsingUvWithPermissions: verify the user
    /// the way this key does (`Caller::verify_for_token`), then issue a
    /// fresh pinUvAuthToken with the requested permissions and RP ID,
    /// encrypted to the platform's shared secret. Step numbers are CTAP
    /// 2.1's; CTAP 2.2 inserts a step 11 for its persistent token (pcmr)
    /// and numbers the last five 12–16.
    fn get_pin_uv_auth_token_using_uv_with_permissions(
        &mut self,
        params: &Params,
        caller: Caller<'_>,
    ) -> Result<Success, CommandError> {
        // Step 1: pinUvAuthProtocol, keyAgreement and permissions are
        // mandatory: CTAP2_ERR_MISSING_PARAMETER.
        let platform_key = params
            .get(KEY_AGREEMENT)
            .ok_or(Ctap2Error::MissingParameter)?;
        let permissions = params
            .get(PERMISSIONS)
            .ok_or(Ctap2Error::MissingParameter)?;
        // Step 2: an unsupported protocol is CTAP1_ERR_INVALID_PARAMETER.
        let protocol = protocol_param(params)?;
        // Steps 3–4: permissions 0 is CTAP1_ERR_INVALID_PARAMETER; cm, be,
        // lbw, acfg (and pcmr) are CTAP2_ERR_UNAUTHORIZED_PERMISSION here;
        // undefined bits are ignored. The schema admits any integer; a
        // negative one is not the unsigned integer the spec defines.
        let permissions = permissions
            .as_integer()
            .and_then(|i| u64::try_from(i).ok())
            .ok_or(Ctap2Error::CborUnexpectedType)?;
        let permissions = Permissions::requested(permissions)?;
        // rpId (optional): "If the rpId parameter is present, associate the
        // permissions RP ID with the pinUvAuthToken" (step 14). Bounded like
        // makeCredential's rp.id.
        let rp_id = params
            .get(RP_ID)
            .and_then(Value::as_text)
            .map(str::to_owned);
        if rp_id
            .as_deref()
            .is_some_and(|id| id.is_empty() || id.len() > MAX_RP_ID_LEN)
        {
            return Err(Ctap2Error::InvalidLength.into());
        }
        // Step 5 ("built-in user verification supported but not
        // configured"), step 6 (internalRetry) and step 7 (uvRetries 0)
        // cannot happen: getInfo says uv true, and a refusal on the owner's
        // device is a decision, not a failed attempt ([`UV_RETRIES`]).
        //
        // Decapsulate before the owner is asked anything: a platform key
        // that is not a P-256 point, or no getKeyAgreement before this, is
        // CTAP1_ERR_INVALID_PARAMETER ("If an error results, it returns
        // CTAP1_ERR_INVALID_PARAMETER").
        let key = self
            .key_agreement
            .as_ref()
            .ok_or(Ctap2Error::InvalidParameter)?;
        let secret = SharedSecret::decapsulate(protocol, key, platform_key)?;
        // Steps 8–10: performBuiltInUv(). In normal mode without the owner's
        // approval yet, the answer is "approval needed" for this RP ID and
        // the operation the permissions allow; the relay asks the owner's
        // device and sends this again with the approval. A refusal there is
        // CTAP2_ERR_OPERATION_DENIED, no answer CTAP2_ERR_USER_ACTION_TIMEOUT
        // (step 10.1).
        let operation = if permissions.contains(Permissions::MAKE_CREDENTIAL) {
            Operation::Register
        } else {
            Operation::SignIn
        };
        let holder = caller.verify_for_token(rp_id.as_deref(), operation)?;
        // Step 11: every existing token is invalidated — this holder's: the
        // owner's and an on-behalf session's live side by side (`Tokens`).
        *self.tokens.slot(&holder) = None;
        // Steps 12–14: the owner's approval and the admin's session are both
        // evidence of user interaction: beginUsingPinUvAuthToken(true);
        // the permissions and the RP ID.
        let token = PinUvAuthToken::issue(
            protocol,
            permissions,
            rp_id,
            holder.clone(),
            true,
            &self.shared.rng,
        )?;
        // Step 15: encrypt(shared secret, pinUvAuthToken).
        let encrypted = secret.encrypt(token.bytes(), &self.shared.rng)?;
        tracing::debug!(
            user = %self.user,
            ?protocol,
            permissions = ?token.permissions(),
            rp_id = token.rp_id(),
            "pinUvAuthToken issued"
        );
        *self.tokens.slot(&holder) = Some(token);
        let response = Value::Map(vec![(
            Value::Integer(RESPONSE_PIN_UV_AUTH_TOKEN.into()),
            Value::Bytes(encrypted),
        )]);
        Ok(Success::payload(encode_value(response)?))
    }
}

/// The request's `pinUvAuthProtocol`: absent is
/// `CTAP2_ERR_MISSING_PARAMETER`, not one of ours
/// `CTAP1_ERR_INVALID_PARAMETER` (§6.5.5).
fn protocol_param(params: &Params) -> Result<PinUvAuthProtocol, CommandError> {
    let number = params
        .get(PIN_UV_AUTH_PROTOCOL)
        .ok_or(Ctap2Error::MissingParameter)?
        .as_integer()
        .and_then(|i| u64::try_from(i).ok())
        .ok_or(Ctap2Error::InvalidParameter)?;
    PinUvAuthProtocol::from_wire(number)
}

/// `verify(key, message, signature)` of `protocol` (§6.5.6, §6.5.7): a MAC
/// of the protocol's length (16 bytes for one, 32 for two) that matches
/// HMAC-SHA-256(key, message), compared in constant time. `key` is a shared
/// secret's HMAC key or a pinUvAuthToken.
pub(crate) fn verify_mac(
    protocol: PinUvAuthProtocol,
    key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> bool {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    match protocol {
        PinUvAuthProtocol::One => {
            let tag = hmac::sign(&key, message);
            let truncated = tag.as_ref().get(..PROTOCOL_ONE_MAC_LEN).unwrap_or_default();
            signature.len() == PROTOCOL_ONE_MAC_LEN && bool::from(truncated.ct_eq(signature))
        }
        PinUvAuthProtocol::Two => hmac::verify(&key, message, signature).is_ok(),
    }
}

/// The uncompressed SEC1 point of `public` as a COSE_Key (§6.5.6
/// getPublicKey).
fn cose_key(public: &[u8]) -> Result<Value, CommandError> {
    let (tag, xy) = public.split_first().ok_or(Ctap2Error::Other)?;
    if *tag != SEC1_UNCOMPRESSED_TAG || xy.len() != 2 * P256_COORDINATE_LEN {
        return Err(Ctap2Error::Other.into());
    }
    let (x, y) = xy.split_at(P256_COORDINATE_LEN);
    let int = |i: i64| Value::Integer(i.into());
    Ok(Value::Map(vec![
        (int(COSE_KTY), int(COSE_KTY_EC2)),
        (int(COSE_ALG), int(COSE_ALG_ECDH_ES_HKDF_256)),
        (int(COSE_EC2_CRV), int(COSE_CRV_P256)),
        (int(COSE_EC2_X), Value::Bytes(x.to_vec())),
        (int(COSE_EC2_Y), Value::Bytes(y.to_vec())),
    ]))
}

/// The platform's COSE_Key as an uncompressed SEC1 point. A missing member
/// is `CTAP2_ERR_MISSING_PARAMETER`, a mistyped one
/// `CTAP2_ERR_CBOR_UNEXPECTED_TYPE`, a key that is not EC2 P-256
/// `CTAP1_ERR_INVALID_PARAMETER` (ring checks the point is on the curve).
fn peer_point(peer: &Value) -> Result<Vec<u8>, CommandError> {
    let Value::Map(entries) = peer else {
        return Err(Ctap2Error::CborUnexpectedType.into());
    };
    let member = |label: i64| {
        entries
            .iter()
            .find(|(k, _)| k.as_integer() == Some(label.into()))
            .map(|(_, v)| v)
            .ok_or(CommandError::from(Ctap2Error::MissingParameter))
    };
    let integer = |label: i64| -> Result<i128, CommandError> {
        member(label)?
            .as_integer()
            .map(i128::from)
            .ok_or(Ctap2Error::CborUnexpectedType.into())
    };
    let coordinate = |label: i64| -> Result<&Vec<u8>, CommandError> {
        member(label)?
            .as_bytes()
            .ok_or(Ctap2Error::CborUnexpectedType.into())
    };
    if integer(COSE_KTY)? != i128::from(COSE_KTY_EC2)
        || integer(COSE_EC2_CRV)? != i128::from(COSE_CRV_P256)
    {
        return Err(Ctap2Error::InvalidParameter.into());
    }
    let (x, y) = (coordinate(COSE_EC2_X)?, coordinate(COSE_EC2_Y)?);
    if x.len() != P256_COORDINATE_LEN || y.len() != P256_COORDINATE_LEN {
        return Err(Ctap2Error::InvalidParameter.into());
    }
    let mut point = Vec::with_capacity(1 + 2 * P256_COORDINATE_LEN);
    point.push(SEC1_UNCOMPRESSED_TAG);
    point.extend_from_slice(x);
    point.extend_from_slice(y);
    Ok(point)
}

/// The protocol's KDF over the ECDH x-coordinate `z`: SHA-256(Z) for
/// protocol one (one key for both uses), two HKDF-SHA-256 keys for two.
fn kdf(protocol: PinUvAuthProtocol, z: &[u8]) -> Result<SharedSecret, CommandError> {
    let mut hmac_key = Zeroizing::new([0u8; SHARED_KEY_LEN]);
    let mut aes_key = Zeroizing::new([0u8; SHARED_KEY_LEN]);
    match protocol {
        PinUvAuthProtocol::One => {
            let hash = digest::digest(&digest::SHA256, z);
            hmac_key.copy_from_slice(hash.as_ref());
            aes_key.copy_from_slice(hash.as_ref());
        }
        PinUvAuthProtocol::Two => {
            let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &HKDF_SALT).extract(z);
            for (info, out) in [
                (HKDF_INFO_HMAC, hmac_key.as_mut()),
                (HKDF_INFO_AES, aes_key.as_mut()),
            ] {
                prk.expand(&[info], hkdf::HKDF_SHA256)
                    .and_then(|okm| okm.fill(out))
                    .map_err(|_| Ctap2Error::Other)?;
            }
        }
    }
    Ok(SharedSecret {
        protocol,
        hmac_key,
        aes_key,
    })
}

#[cfg(test)]
pub(crate) mod test_support {
    //! The platform's half of the protocols, for tests: encapsulate against
    //! the authenticator's key, then encrypt and MAC like a platform.

    use super::*;
    use ring::agreement::{self, ECDH_P256, EphemeralPrivateKey, PublicKey, UnparsedPublicKey};

    /// `encapsulate(peerCoseKey)` as a platform does it (with ring, not the
    /// authenticator's p256): our COSE_Key and the shared secret.
    pub(crate) fn encapsulate(
        protocol: PinUvAuthProtocol,
        authenticator_key: &Value,
        rng: &dyn SecureRandom,
    ) -> (Value, SharedSecret) {
        let platform = EphemeralPrivateKey::generate(&ECDH_P256, rng).unwrap();
        let public: PublicKey = platform.compute_public_key().unwrap();
        let cose = cose_key(public.as_ref()).unwrap();
        let point = peer_point(authenticator_key).unwrap();
        let secret = agreement::agree_ephemeral(
            platform,
            &UnparsedPublicKey::new(&ECDH_P256, &point),
            |z| kdf(protocol, z),
        )
        .unwrap()
        .unwrap();
        (cose, secret)
    }

    /// The authenticator's key-agreement key as a COSE_Key.
    pub(crate) fn public_cose(key: &KeyAgreementKey) -> Value {
        cose_key(&key.public).unwrap()
    }

    /// `authenticate(key, message)`.
    pub(crate) fn authenticate(secret: &SharedSecret, message: &[u8]) -> Vec<u8> {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret.hmac_key.as_ref());
        let tag = hmac::sign(&key, message);
        match secret.protocol {
            PinUvAuthProtocol::One => tag.as_ref()[..PROTOCOL_ONE_MAC_LEN].to_vec(),
            PinUvAuthProtocol::Two => tag.as_ref().to_vec(),
        }
    }
}
