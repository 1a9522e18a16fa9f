//! The vault: envelope encryption of credential private keys.
//!
//! Owns the key-encryption keys ([`Kek`]: the current KEK and any previous
//! ones, each known by its id), each user's data key ([`DataKey`]) and the
//! wrapped form both take in the database ([`WrappedKey`]). A credential's
//! PKCS#8 private key is sealed with AES-256-GCM under its user's data key;
//! the data key is sealed under the current KEK, and its row records that
//! KEK's id, so after a rotation each data key is opened with the KEK that
//! wrapped it ([`Kek::rewrap_data_key`] moves one to the current KEK). The
//! associated data binds every ciphertext to its user (and credential), so
//! a row copied to another user or credential does not decrypt. Plaintext
//! keys live only in [`Zeroizing`] buffers.
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

/// Length of an AES-256 key: every KEK and data key.
const AES_256_KEY_LEN: usize = 32;
/// Length of a KEK.
pub const KEK_LEN: usize = AES_256_KEY_LEN;
const DATA_KEY_LEN: usize = AES_256_KEY_LEN;
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

/// The signer's key-encryption keys (a keyring): the current KEK, which
/// wraps every new data key, and any previous KEKs, which only unwrap the
/// data keys still wrapped under them (until `obr-signer rotate-kek` has
/// re-wrapped those). Each is known by its id. `Debug` shows only the ids.
#[derive(Clone)]
pub struct Kek {
    current: KeyEncryptionKey,
    /// Unwrap only; never the current key's id, never two with one id.
    previous: Vec<KeyEncryptionKey>,
}

/// One key-encryption key and its public id.
#[derive(Clone)]
struct KeyEncryptionKey {
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
    #[error(
        "KEK file {path} is readable by group or others (mode {mode:o}): chmod 600 it \
         (a Kubernetes Secret: defaultMode 0400)"
    )]
    NotPrivate { path: PathBuf, mode: u32 },
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
    #[error(
        "data key is wrapped under KEK {found}, which this signer does not hold \
         (it holds {held}); add that KEK with --previous-kek-file"
    )]
    UnknownKek { found: String, held: String },
}

impl Kek {
    /// A keyring of one KEK from raw bytes (the caller should zeroize its
    /// own copy).
    pub fn from_bytes(bytes: [u8; KEK_LEN]) -> Self {
        Self::single(Zeroizing::new(bytes))
    }

    /// A fresh random KEK (tests, or a throw-away embedded signer).
    pub fn generate() -> Result<Self, KekError> {
        let mut key = Zeroizing::new([0u8; KEK_LEN]);
        ring::rand::SystemRandom::new()
            .fill(key.as_mut())
            .map_err(|_| KekError::Random)?;
        Ok(Self::single(key))
    }

    /// The KEK held hex-encoded in environment variable `var`.
    pub fn from_env(var: &str) -> Result<Self, KekError> {
        let text =
            Zeroizing::new(std::env::var(var).map_err(|_| KekError::MissingEnv(var.to_owned()))?);
        Self::from_hex(&text, || format!("${var}"))
    }

    /// Load the hex-encoded KEK in `path`, which must exist (a previous KEK,
    /// or the target of a rotation).
    pub fn load(path: &Path) -> Result<Self, KekError> {
        let text = std::fs::read_to_string(path).map_err(|source| KekError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_file_text(path, Zeroizing::new(text))
    }

    /// Create a new random KEK in `path` (hex, mode 0600); fails if the
    /// file exists.
    pub fn create_new(path: &Path) -> Result<Self, KekError> {
        let kek = Self::generate()?;
        let text = Zeroizing::new(format!("{}\n", hex::encode(kek.current.key.as_ref())));
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
        tracing::info!(path = %path.display(), kek_id = %kek.id(), "created a new KEK");
        Ok(kek)
    }

    /// Load the hex-encoded KEK in `path`, or create one there (random, mode
    /// 0600, never overwriting a file that appeared meanwhile).
    pub fn load_or_create(path: &Path) -> Result<Self, KekError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_file_text(path, Zeroizing::new(text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match Self::create_new(path) {
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

    /// This keyring with `previous`'s keys added for unwrapping only (its
    /// current and previous KEKs; keys already held are skipped).
    #[must_use]
    pub fn with_previous(mut self, previous: Kek) -> Self {
        for key in std::iter::once(previous.current).chain(previous.previous) {
            if self.find(&key.id).is_none() {
                self.previous.push(key);
            }
        }
        self
    }

    /// The current KEK's public identifier, recorded next to every data key
    /// it wraps.
    pub fn id(&self) -> &str {
        &self.current.id
    }

    /// The ids of every KEK held, the current one first.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(|key| key.id.as_str())
    }

    fn single(key: Zeroizing<[u8; KEK_LEN]>) -> Self {
        let id = kek_id(&key);
        Self {
            current: KeyEncryptionKey { key, id },
            previous: Vec::new(),
        }
    }

    /// The KEK with id `id`, if held.
    fn find(&self, id: &str) -> Option<&KeyEncryptionKey> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|key| key.id == id)
    }

    fn from_file_text(path: &Path, text: Zeroizing<String>) -> Result<Self, KekError> {
        refuse_if_readable_by_others(path)?;
        Self::from_hex(&text, || path.display().to_string())
    }

    fn from_hex(text: &str, origin: impl FnOnce() -> String) -> Result<Self, KekError> {
        let mut key = Zeroizing::new([0u8; KEK_LEN]);
        hex::decode_to_slice(text.trim(), key.as_mut())
            .map_err(|_| KekError::Format { origin: origin() })?;
        Ok(Self::single(key))
    }

    /// Seal a user's data key under the current KEK.
    pub(crate) fn wrap_data_key(
        &self,
        user: &UserId,
        data_key: &DataKey,
        rng: &dyn SecureRandom,
    ) -> Result<WrappedKey, VaultError> {
        seal(
            &self.current.key,
            &associated_data(DATA_KEY_AAD_LABEL, user, None),
            data_key.0.as_ref(),
            rng,
        )
    }

    /// Open a user's data key with the KEK its row names (`kek_id`).
    pub(crate) fn unwrap_data_key(
        &self,
        user: &UserId,
        kek_id: &str,
        wrapped: &WrappedKey,
    ) -> Result<DataKey, VaultError> {
        let kek = self.find(kek_id).ok_or_else(|| VaultError::UnknownKek {
            found: kek_id.to_owned(),
            held: self.ids().collect::<Vec<_>>().join(", "),
        })?;
        let plain = open(
            &kek.key,
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

    /// Re-wrap a user's data key, wrapped under the KEK `kek_id`, under the
    /// current KEK (a rotation step). The plaintext data key never leaves
    /// this function and is zeroized when it returns.
    pub(crate) fn rewrap_data_key(
        &self,
        user: &UserId,
        kek_id: &str,
        wrapped: &WrappedKey,
        rng: &dyn SecureRandom,
    ) -> Result<WrappedKey, VaultError> {
        let data_key = self.unwrap_data_key(user, kek_id, wrapped)?;
        self.wrap_data_key(user, &data_key, rng)
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kek")
            .field("id", &self.current.id)
            .field(
                "previous",
                &self.previous.iter().map(|key| &key.id).collect::<Vec<_>>(),
            )
            .finish()
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
    #[expect(
        clippy::indexing_slicing,
        reason = "a SHA-256 digest is 32 bytes, longer than KEK_ID_LEN"
    )]
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
    key: &[u8; AES_256_KEY_LEN],
    aad: &[u8],
    plaintext: &[u8],
    rng: &dyn SecureRandom,
) -> Result<WrappedKey, VaultError> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut nonce).map_err(|_| VaultError::Random)?;
    // By reference: no unzeroized copy of the key is left on the stack (the
    // cipher's own key schedule is wiped on drop: aes-gcm's `zeroize`).
    let cipher = Aes256Gcm::new(key.into());
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
    key: &[u8; AES_256_KEY_LEN],
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
    // By reference: no unzeroized copy of the key is left on the stack (the
    // cipher's own key schedule is wiped on drop: aes-gcm's `zeroize`).
    let cipher = Aes256Gcm::new(key.into());
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

/// Whether a key file is private to this process: no one but its owner may
/// read it (`0600`, `0400`) — or, as Kubernetes mounts a Secret for a pod
/// with an `fsGroup`, it belongs to root, only root and this process's own
/// group may read it (`0440`), and nobody may write it. Anything else is
/// refused (`chmod 600`).
pub fn key_file_is_private(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return true;
    }
    // The process's effective group: Linux makes /proc/self its owner's.
    let own_group = std::fs::metadata("/proc/self").map(|m| m.gid()).ok();
    meta.uid() == 0 && mode & 0o337 == 0 && own_group == Some(meta.gid())
}

#[cfg(unix)]
fn refuse_if_readable_by_others(path: &Path) -> Result<(), KekError> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|source| KekError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if !key_file_is_private(&meta) {
        return Err(KekError::NotPrivate {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn refuse_if_readable_by_others(_path: &Path) -> Result<(), KekError> {
    Ok(())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod key_file_tests {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    use super::key_file_is_private;

    #[test]
    fn only_the_owner_or_a_kubernetes_secret_mount_is_private() {
        let dir = std::env::temp_dir().join(format!("obr-key-modes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("key");
        std::fs::write(&file, "00").expect("key file");
        let private = |mode: u32| {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).expect("chmod");
            key_file_is_private(&std::fs::metadata(&file).expect("metadata"))
        };
        assert!(private(0o600));
        assert!(private(0o400));
        for open in [0o644, 0o604, 0o660, 0o620, 0o444, 0o640 | 0o002] {
            assert!(!private(open), "{open:o} passed");
        }
        // 0440 passes only for a root-owned file in this process's group
        // (a Secret mounted with an fsGroup).
        let meta = std::fs::metadata(&file).expect("metadata");
        let own_group = std::fs::metadata("/proc/self").expect("/proc").gid();
        let kubernetes_like = meta.uid() == 0 && meta.gid() == own_group;
        assert_eq!(private(0o440), kubernetes_like);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
