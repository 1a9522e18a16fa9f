//! The vault: envelope encryption of credential private keys.
//!
//! Owns the key-encryption key ([`Kek`]), each user's data key
//! ([`DataKey`]) and the wrapped form both take in the database
//! ([`WrappedKey`]). A credential's PKCS#8 private key is sealed with
//! AES-256-GCM under its user's data key; the data key is sealed under the
//! KEK. The associated data binds every ciphertext to its user (and
//! credential), so a row copied to another user or credential does not
//! decrypt. Plaintext keys live only in [`Zeroizing`] buffers.
//!
//! Never touches the database, never logs, and no `Debug` or error here
//! prints key bytes.

use std::fmt;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit};
use ring::digest;
use ring::rand::SecureRandom;
use zeroize::Zeroizing;

use crate::ids::{CredentialId, UserId};

/// Length of a KEK and of a data key: AES-256.
pub const KEK_LEN: usize = 32;
const DATA_KEY_LEN: usize = 32;
/// AES-GCM's 96-bit nonce. Nonces are random: a data key seals one value per
/// credential and the KEK one per user, far below the 2^32 messages NIST SP
/// 800-38D §8.3 allows per key with random nonces.
const NONCE_LEN: usize = 12;
/// First byte of every wrapped blob, so the format can change later.
const WRAP_FORMAT_V1: u8 = 1;
/// Bytes of SHA-256 kept as the KEK id (public: it identifies, never reveals).
const KEK_ID_LEN: usize = 8;
/// Domain-separation labels for the associated data and the KEK id.
const DATA_KEY_AAD_LABEL: &[u8] = b"obr-signer/data-key/v1";
const PRIVATE_KEY_AAD_LABEL: &[u8] = b"obr-signer/credential-key/v1";
const KEK_ID_LABEL: &[u8] = b"obr-signer/kek-id/v1";
/// A KEK file is readable and writable by its owner only.
#[cfg(unix)]
const KEK_FILE_MODE: u32 = 0o600;

/// The key-encryption key: wraps every user's data key. `Debug` shows only
/// its id.
#[derive(Clone)]
pub struct Kek {
    key: Zeroizing<[u8; KEK_LEN]>,
    id: String,
}

/// Why a KEK could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KekError {
    #[error("reading KEK file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("creating KEK file {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("the KEK in {origin} is not {KEK_LEN} hex-encoded bytes")]
    Format { origin: String },
    #[error("environment variable {0} is not set or not unicode")]
    MissingEnv(String),
    #[error("the system random generator failed")]
    Random,
}

/// Why wrapping or unwrapping a key failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VaultError {
    #[error("the system random generator failed")]
    Random,
    #[error("wrapped key is malformed")]
    Malformed,
    #[error("wrapped key does not authenticate (wrong key, user or credential)")]
    Authentication,
    #[error("data key is wrapped under KEK {found}; this signer holds KEK {expected}")]
    UnknownKek { found: String, expected: String },
}

impl Kek {
    /// A KEK from raw bytes (the caller should zeroize its own copy).
    pub fn from_bytes(bytes: [u8; KEK_LEN]) -> Self {
        let key = Zeroizing::new(bytes);
        let id = kek_id(&key);
        Self { key, id }
    }

    /// A fresh random KEK (tests, or a throw-away embedded signer).
    pub fn generate() -> Result<Self, KekError> {
        let mut key = Zeroizing::new([0u8; KEK_LEN]);
        ring::rand::SystemRandom::new()
            .fill(key.as_mut())
            .map_err(|_| KekError::Random)?;
        let id = kek_id(&key);
        Ok(Self { key, id })
    }

    /// The KEK held hex-encoded in environment variable `var`.
    pub fn from_env(var: &str) -> Result<Self, KekError> {
        let text =
            Zeroizing::new(std::env::var(var).map_err(|_| KekError::MissingEnv(var.to_owned()))?);
        Self::from_hex(&text, || format!("${var}"))
    }

    /// Load the hex-encoded KEK in `path`, or create one there (random, mode
    /// 0600, never overwriting a file that appeared meanwhile).
    pub fn load_or_create(path: &Path) -> Result<Self, KekError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_file_text(path, Zeroizing::new(text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match Self::create(path) {
                Ok(kek) => Ok(kek),
                // Another process created it first: use theirs.
                Err(KekError::Create { source, .. })
                    if source.kind() == io::ErrorKind::AlreadyExists =>
                {
                    let text = std::fs::read_to_string(path).map_err(|source| KekError::Read {
                        path: path.to_owned(),
                        source,
                    })?;
                    Self::from_file_text(path, Zeroizing::new(text))
                }
                Err(e) => Err(e),
            },
            Err(source) => Err(KekError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// The KEK's public identifier, recorded next to every data key it wraps.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn create(path: &Path) -> Result<Self, KekError> {
        let kek = Self::generate()?;
        let text = Zeroizing::new(format!("{}\n", hex::encode(kek.key.as_ref())));
        let create_err = |source| KekError::Create {
            path: path.to_owned(),
            source,
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, KEK_FILE_MODE);
        let mut file = options.open(path).map_err(create_err)?;
        file.write_all(text.as_bytes()).map_err(create_err)?;
        file.sync_all().map_err(create_err)?;
        tracing::info!(path = %path.display(), kek_id = %kek.id, "created a new KEK");
        Ok(kek)
    }

    fn from_file_text(path: &Path, text: Zeroizing<String>) -> Result<Self, KekError> {
        warn_if_readable_by_others(path);
        Self::from_hex(&text, || path.display().to_string())
    }

    fn from_hex(text: &str, origin: impl FnOnce() -> String) -> Result<Self, KekError> {
        let mut key = Zeroizing::new([0u8; KEK_LEN]);
        hex::decode_to_slice(text.trim(), key.as_mut())
            .map_err(|_| KekError::Format { origin: origin() })?;
        let id = kek_id(&key);
        Ok(Self { key, id })
    }

    /// Seal a user's data key under this KEK.
    pub(crate) fn wrap_data_key(
        &self,
        user: &UserId,
        data_key: &DataKey,
        rng: &dyn SecureRandom,
    ) -> Result<WrappedKey, VaultError> {
        seal(
            &self.key,
            &associated_data(DATA_KEY_AAD_LABEL, user, None),
            data_key.0.as_ref(),
            rng,
        )
    }

    /// Open a user's data key, checking it was wrapped under this KEK.
    pub(crate) fn unwrap_data_key(
        &self,
        user: &UserId,
        kek_id: &str,
        wrapped: &WrappedKey,
    ) -> Result<DataKey, VaultError> {
        if kek_id != self.id {
            return Err(VaultError::UnknownKek {
                found: kek_id.to_owned(),
                expected: self.id.clone(),
            });
        }
        let plain = open(
            &self.key,
            &associated_data(DATA_KEY_AAD_LABEL, user, None),
            wrapped,
        )?;
        let mut key = Zeroizing::new([0u8; DATA_KEY_LEN]);
        if plain.len() != DATA_KEY_LEN {
            return Err(VaultError::Malformed);
        }
        key.copy_from_slice(&plain);
        Ok(DataKey(key))
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kek")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A user's data key: wraps that user's credential private keys.
pub(crate) struct DataKey(Zeroizing<[u8; DATA_KEY_LEN]>);

impl DataKey {
    pub(crate) fn generate(rng: &dyn SecureRandom) -> Result<Self, VaultError> {
        let mut key = Zeroizing::new([0u8; DATA_KEY_LEN]);
        rng.fill(key.as_mut()).map_err(|_| VaultError::Random)?;
        Ok(Self(key))
    }

    /// Seal a credential's PKCS#8 private key, bound to its user and id.
    pub(crate) fn seal_private_key(
        &self,
        user: &UserId,
        credential: &CredentialId,
        pkcs8: &[u8],
        rng: &dyn SecureRandom,
    ) -> Result<WrappedKey, VaultError> {
        seal(
            &self.0,
            &associated_data(PRIVATE_KEY_AAD_LABEL, user, Some(credential)),
            pkcs8,
            rng,
        )
    }

    /// Open a credential's PKCS#8 private key.
    pub(crate) fn open_private_key(
        &self,
        user: &UserId,
        credential: &CredentialId,
        wrapped: &WrappedKey,
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        open(
            &self.0,
            &associated_data(PRIVATE_KEY_AAD_LABEL, user, Some(credential)),
            wrapped,
        )
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// A sealed key as stored: `version || nonce || ciphertext || tag`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct WrappedKey(Vec<u8>);

impl WrappedKey {
    pub(crate) fn from_stored(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WrappedKey({} bytes)", self.0.len())
    }
}

fn kek_id(key: &[u8; KEK_LEN]) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(KEK_ID_LABEL);
    ctx.update(key);
    let digest = ctx.finish();
    // invariant: a SHA-256 digest is 32 bytes, longer than KEK_ID_LEN.
    hex::encode(&digest.as_ref()[..KEK_ID_LEN])
}

/// `label || 0x00 || len(user) as u16 BE || user || credential id`: the
/// length prefix keeps (user, credential) pairs from colliding.
fn associated_data(label: &[u8], user: &UserId, credential: Option<&CredentialId>) -> Vec<u8> {
    let user = user.as_str().as_bytes();
    // A UserId is at most MAX_USER_ID_LEN (255) bytes: this never saturates.
    let user_len = u16::try_from(user.len()).unwrap_or(u16::MAX);
    let credential = credential.map_or(&[][..], CredentialId::as_bytes);
    let mut aad = Vec::with_capacity(label.len() + 3 + user.len() + credential.len());
    aad.extend_from_slice(label);
    aad.push(0);
    aad.extend_from_slice(&user_len.to_be_bytes());
    aad.extend_from_slice(user);
    aad.extend_from_slice(credential);
    aad
}

fn seal(
    key: &[u8; 32],
    aad: &[u8],
    plaintext: &[u8],
    rng: &dyn SecureRandom,
) -> Result<WrappedKey, VaultError> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut nonce).map_err(|_| VaultError::Random)?;
    let cipher = Aes256Gcm::new(&(*key).into());
    let ciphertext = cipher
        .encrypt(
            &nonce.into(),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| VaultError::Malformed)?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
    out.push(WRAP_FORMAT_V1);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    Ok(WrappedKey(out))
}

fn open(
    key: &[u8; 32],
    aad: &[u8],
    wrapped: &WrappedKey,
) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    let (version, rest) = wrapped.0.split_first().ok_or(VaultError::Malformed)?;
    if *version != WRAP_FORMAT_V1 {
        return Err(VaultError::Malformed);
    }
    let (nonce, ciphertext) = rest
        .split_first_chunk::<NONCE_LEN>()
        .ok_or(VaultError::Malformed)?;
    let cipher = Aes256Gcm::new(&(*key).into());
    cipher
        .decrypt(
            &(*nonce).into(),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| VaultError::Authentication)
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "KEK file is accessible by group or others; chmod 600 it");
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

#[cfg(test)]
mod tests;
