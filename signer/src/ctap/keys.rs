//! ES256 credential keys: generated, loaded and used with ring (≈ 5× faster
//! than RustCrypto's `p256` here), and their COSE public form via coset.
//!
//! Owns the in-memory cache of a user's unwrapped signing keys, which lives
//! only as long as the user's actor. Never stores, logs or prints a private
//! key; the PKCS#8 bytes it is handed are the caller's to zeroize.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;

use coset::{CoseKey, CoseKeyBuilder, iana};
use ring::rand::SecureRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};

use crate::ids::CredentialId;
use crate::vault::WrappedKey;

/// The only algorithm this signer creates keys for (COSE -7).
pub(crate) const ES256: iana::Algorithm = iana::Algorithm::ES256;
/// Unwrapped signing keys kept per user: enough for a user's busiest RPs,
/// small enough that an idle actor holds little.
const MAX_CACHED_SIGNING_KEYS: usize = 16;
/// SEC1 uncompressed point: `0x04 || x || y` with 32-byte coordinates.
const SEC1_UNCOMPRESSED_TAG: u8 = 0x04;
const P256_COORDINATE_LEN: usize = 32;

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
}

/// A fresh P-256 key pair, and its PKCS#8 form as sealed by `seal`. The
/// plaintext PKCS#8 never leaves this function. (ring's `pkcs8::Document`
/// has no `Drop` and no mutable access, so it cannot be wiped; it lives on
/// this stack frame only. Unwrapped copies read back from storage are
/// `Zeroizing`.)
pub(crate) fn generate<E: From<KeyError>>(
    rng: &dyn SecureRandom,
    seal: impl FnOnce(&[u8]) -> Result<WrappedKey, E>,
) -> Result<(WrappedKey, EcdsaKeyPair), E> {
    let document = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, rng)
        .map_err(|_| KeyError::Generate)?;
    let key_pair = load(document.as_ref(), rng)?;
    let wrapped = seal(document.as_ref())?;
    Ok((wrapped, key_pair))
}

/// The key pair in a PKCS#8 document.
pub(crate) fn load(pkcs8: &[u8], rng: &dyn SecureRandom) -> Result<EcdsaKeyPair, KeyError> {
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8, rng)
        .map_err(|_| KeyError::Load)
}

/// The credential public key as a COSE_Key with `alg` ES256 (CTAP 2.1 §6.1
/// "attestedCredentialData"; WebAuthn L3 §6.5.1.1).
pub(crate) fn cose_public_key(key_pair: &EcdsaKeyPair) -> Result<CoseKey, KeyError> {
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

/// ECDSA over `message` (authenticatorData || clientDataHash), ASN.1 DER as
/// WebAuthn L3 §6.5.5 requires for ES256.
pub(crate) fn sign(
    key_pair: &EcdsaKeyPair,
    message: &[u8],
    rng: &dyn SecureRandom,
) -> Result<Vec<u8>, KeyError> {
    key_pair
        .sign(rng, message)
        .map(|signature| signature.as_ref().to_vec())
        .map_err(|_| KeyError::Sign)
}

/// A user's unwrapped signing keys, by credential id.
#[derive(Default)]
pub(crate) struct KeyCache {
    keys: HashMap<CredentialId, EcdsaKeyPair>,
}

impl KeyCache {
    /// The key of `id`, loaded with `load` on a miss. When full, the cache
    /// starts over (a user rarely has more live credentials than fit; a
    /// miss costs one unwrap).
    pub(crate) fn get_or_load<E>(
        &mut self,
        id: &CredentialId,
        load: impl FnOnce() -> Result<EcdsaKeyPair, E>,
    ) -> Result<&EcdsaKeyPair, E> {
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
