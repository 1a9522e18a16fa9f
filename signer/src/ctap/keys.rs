//! Credential keys, ES256 (P-256) and EdDSA (Ed25519): generated, loaded
//! and used with ring (≈ 5× faster than RustCrypto's `p256` here), and their
//! COSE public form via coset.
//!
//! Owns the in-memory cache of a user's unwrapped signing keys, which lives
//! only as long as the user's actor. Never stores, logs or prints a private
//! key; the PKCS#8 bytes it is handed are the caller's to zeroize.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;

use ciborium::value::Value;
use coset::iana::EnumI64 as _;
use coset::{CoseKey, CoseKeyBuilder, iana};
use ring::rand::SecureRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};

use crate::ids::CredentialId;
use crate::vault::WrappedKey;

/// COSE -7: ECDSA P-256 with SHA-256.
pub(crate) const ES256: iana::Algorithm = iana::Algorithm::ES256;
/// COSE -8: EdDSA, here always Ed25519 (WebAuthn L3 §5.8.5).
pub(crate) const EDDSA: iana::Algorithm = iana::Algorithm::EdDSA;
/// Unwrapped signing keys kept per user: enough for a user's busiest RPs,
/// small enough that an idle actor holds little.
const MAX_CACHED_SIGNING_KEYS: usize = 16;
/// SEC1 uncompressed point: `0x04 || x || y` with 32-byte coordinates.
const SEC1_UNCOMPRESSED_TAG: u8 = 0x04;
const P256_COORDINATE_LEN: usize = 32;

/// A credential algorithm this signer creates keys for, in getInfo's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Algorithm {
    Es256,
    EdDsa,
}

impl Algorithm {
    pub(crate) const SUPPORTED: [Self; 2] = [Self::Es256, Self::EdDsa];

    pub(crate) fn cose(self) -> iana::Algorithm {
        match self {
            Self::Es256 => ES256,
            Self::EdDsa => EDDSA,
        }
    }

    /// The algorithm of a COSE identifier, if supported.
    pub(crate) fn from_cose(cose: i64) -> Option<Self> {
        Self::SUPPORTED
            .into_iter()
            .find(|a| a.cose().to_i64() == cose)
    }
}

/// A credential's private key, ready to sign.
pub(crate) enum SigningKey {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

/// Why a key operation failed (ring reports no details, by design).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum KeyError {
    #[error("generating a P-256 key failed")]
    Generate,
    #[error("a stored private key does not parse as P-256 PKCS#8")]
    Load,
    #[error("signing failed")]
    Sign,
    #[error("ring returned a public key that is not an uncompressed P-256 point")]
    PublicKey,
    #[error("stored algorithm {0} is not one this signer creates keys for")]
    Algorithm(i64),
}

/// A fresh P-256 key pair, and its PKCS#8 form as sealed by `seal`. The
/// plaintext PKCS#8 never leaves this function. (ring's `pkcs8::Document`
/// has no `Drop` and no mutable access, so it cannot be wiped; it lives on
/// this stack frame only. Unwrapped copies read back from storage are
/// `Zeroizing`.)
pub(crate) fn generate<E: From<KeyError>>(
    algorithm: Algorithm,
    rng: &dyn SecureRandom,
    seal: impl FnOnce(&[u8]) -> Result<WrappedKey, E>,
) -> Result<(WrappedKey, SigningKey), E> {
    let document = match algorithm {
        Algorithm::Es256 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, rng),
        Algorithm::EdDsa => Ed25519KeyPair::generate_pkcs8(rng),
    }
    .map_err(|_| KeyError::Generate)?;
    let key_pair = load(algorithm, document.as_ref(), rng)?;
    let wrapped = seal(document.as_ref())?;
    Ok((wrapped, key_pair))
}

/// The `algorithm` key pair in a PKCS#8 document.
pub(crate) fn load(
    algorithm: Algorithm,
    pkcs8: &[u8],
    rng: &dyn SecureRandom,
) -> Result<SigningKey, KeyError> {
    match algorithm {
        Algorithm::Es256 => EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8, rng)
            .map(SigningKey::Es256),
        Algorithm::EdDsa => Ed25519KeyPair::from_pkcs8(pkcs8).map(SigningKey::EdDsa),
    }
    .map_err(|_| KeyError::Load)
}

/// The credential public key as a COSE_Key with its `alg` (CTAP 2.1 §6.1
/// "attestedCredentialData"; WebAuthn L3 §6.5.1.1): EC2 P-256 for ES256,
/// OKP Ed25519 for EdDSA (RFC 9053 §7.2).
pub(crate) fn cose_public_key(key: &SigningKey) -> Result<CoseKey, KeyError> {
    let key_pair = match key {
        SigningKey::Es256(key_pair) => key_pair,
        SigningKey::EdDsa(key_pair) => {
            return Ok(CoseKeyBuilder::new_okp_key()
                .algorithm(EDDSA)
                .param(
                    iana::OkpKeyParameter::Crv.to_i64(),
                    Value::from(iana::EllipticCurve::Ed25519.to_i64()),
                )
                .param(
                    iana::OkpKeyParameter::X.to_i64(),
                    Value::Bytes(key_pair.public_key().as_ref().to_vec()),
                )
                .build());
        }
    };
    let point = key_pair.public_key().as_ref();
    let (tag, xy) = point.split_first().ok_or(KeyError::PublicKey)?;
    if *tag != SEC1_UNCOMPRESSED_TAG || xy.len() != 2 * P256_COORDINATE_LEN {
        return Err(KeyError::PublicKey);
    }
    let (x, y) = xy.split_at(P256_COORDINATE_LEN);
    Ok(
        CoseKeyBuilder::new_ec2_pub_key(iana::EllipticCurve::P_256, x.to_vec(), y.to_vec())
            .algorithm(ES256)
            .build(),
    )
}

/// The signature over `message` (authenticatorData || clientDataHash): for
/// ES256 ASN.1 DER as WebAuthn L3 §6.5.5 requires, for EdDSA the 64 raw
/// bytes of RFC 8032.
pub(crate) fn sign(
    key: &SigningKey,
    message: &[u8],
    rng: &dyn SecureRandom,
) -> Result<Vec<u8>, KeyError> {
    match key {
        SigningKey::Es256(key_pair) => key_pair
            .sign(rng, message)
            .map(|signature| signature.as_ref().to_vec())
            .map_err(|_| KeyError::Sign),
        SigningKey::EdDsa(key_pair) => Ok(key_pair.sign(message).as_ref().to_vec()),
    }
}

/// A user's unwrapped signing keys, by credential id.
#[derive(Default)]
pub(crate) struct KeyCache {
    keys: HashMap<CredentialId, SigningKey>,
}

impl KeyCache {
    /// The key of `id`, loaded with `load` on a miss. When full, the cache
    /// starts over (a user rarely has more live credentials than fit; a
    /// miss costs one unwrap).
    pub(crate) fn get_or_load<E>(
        &mut self,
        id: &CredentialId,
        load: impl FnOnce() -> Result<SigningKey, E>,
    ) -> Result<&SigningKey, E> {
        if self.keys.len() >= MAX_CACHED_SIGNING_KEYS && !self.keys.contains_key(id) {
            self.keys.clear();
        }
        match self.keys.entry(id.clone()) {
            Entry::Occupied(entry) => Ok(entry.into_mut()),
            Entry::Vacant(entry) => Ok(entry.insert(load()?)),
        }
    }

    pub(crate) fn remove(&mut self, id: &CredentialId) {
        self.keys.remove(id);
    }
}

impl fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyCache({} keys)", self.keys.len())
    }
}
