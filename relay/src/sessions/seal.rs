//! [`Sealer`]: a MAC on everything the relay keeps in, or sends through,
//! Redis, under the cluster key every relay of a deployment shares and
//! Redis never sees. A Redis writer can delete what is there, not grant
//! power: a value it wrote (an admin token, an agent login, an OBR
//! session), or one it copied to another key, does not verify and is
//! dropped and logged as if absent.
//!
//! A sealed value is `base64url(tag) "." expires_at_ms "." json`, where
//! the tag is HMAC-SHA256 over the length-prefixed *binding* (the value's
//! full Redis key, or the event channel), the expiry and the JSON: a value
//! is valid only where it was written and only until it expires — a saved
//! copy put back later, or a key made persistent, is dropped.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// Bytes of the cluster key.
pub const CLUSTER_KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ClusterKeyError {
    #[error("cluster key file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("cluster key: {0}")]
    Read(#[from] obr_signer::KeyFileError),
}

/// A value or event that did not verify.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("not sealed by this deployment's cluster key")]
pub struct Forged;

/// Seals and opens values under the cluster key.
pub struct Sealer {
    key: hmac::Key,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    pub fn new(key: &[u8; CLUSTER_KEY_LEN]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    /// The cluster key in `path` (64 hex characters), created (random, 0600)
    /// when missing; a file group or others can read is refused.
    pub fn load_or_create(path: &Path) -> Result<Self, ClusterKeyError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let file_err = |reason: String| ClusterKeyError::File {
            path: path.display().to_string(),
            reason,
        };
        let mut key = Zeroizing::new([0u8; CLUSTER_KEY_LEN]);
        match std::fs::metadata(path) {
            // Same format and checks as the signers' key files.
            Ok(_) => *key = obr_signer::load_key_file(path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                SystemRandom::new()
                    .fill(key.as_mut())
                    .map_err(|_| file_err("the system random generator failed".into()))?;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| file_err(e.to_string()))?;
                let text = Zeroizing::new(hex_encode(key.as_ref()));
                file.write_all(text.as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(|e| file_err(e.to_string()))?;
                tracing::info!(path = %path.display(), "created a new cluster key");
            }
            Err(e) => return Err(file_err(e.to_string())),
        }
        Ok(Self::new(&key))
    }

    /// A sealer under a key of its own for `purpose`, derived from this
    /// one (HMAC of the purpose): what it seals never verifies here, nor
    /// the reverse.
    pub fn derived(&self, purpose: &str) -> Self {
        let derived = hmac::sign(&self.key, purpose.as_bytes());
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
        }
    }

    /// 32 bytes of key material of its own for `purpose` (an encryption
    /// key, say), derived as [`Self::derived`] does.
    pub fn derived_secret(&self, purpose: &str) -> Zeroizing<[u8; CLUSTER_KEY_LEN]> {
        let derived = hmac::sign(&self.key, purpose.as_bytes());
        let mut secret = Zeroizing::new([0u8; CLUSTER_KEY_LEN]);
        secret.copy_from_slice(derived.as_ref());
        secret
    }

    /// `json`, sealed for `binding` until `expires_at_ms`.
    pub fn seal(&self, binding: &str, json: &str, expires_at_ms: i64) -> String {
        let tag = hmac::sign(&self.key, &mac_input(binding, expires_at_ms, json));
        format!(
            "{}.{expires_at_ms}.{json}",
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    /// The JSON of `sealed` and its expiry, if it was sealed for `binding`
    /// (constant-time tag check) and has not expired at `now_ms`.
    pub fn open<'a>(
        &self,
        binding: &str,
        sealed: &'a str,
        now_ms: i64,
    ) -> Result<(&'a str, i64), Forged> {
        let (tag, expires_at_ms, json) = split(sealed)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| Forged)?;
        hmac::verify(&self.key, &mac_input(binding, expires_at_ms, json), &tag)
            .map_err(|_| Forged)?;
        if now_ms >= expires_at_ms {
            return Err(Forged);
        }
        Ok((json, expires_at_ms))
    }
}

/// The JSON part of a sealed value, unverified (to learn which binding to
/// check it against); only [`Sealer::open`] says it is genuine.
pub fn unverified_json(sealed: &str) -> Result<&str, Forged> {
    split(sealed).map(|(_, _, json)| json)
}

fn split(sealed: &str) -> Result<(&str, i64, &str), Forged> {
    let (tag, rest) = sealed.split_once('.').ok_or(Forged)?;
    let (expires, json) = rest.split_once('.').ok_or(Forged)?;
    Ok((tag, expires.parse().map_err(|_| Forged)?, json))
}

fn mac_input(binding: &str, expires_at_ms: i64, json: &str) -> Vec<u8> {
    let mut input = Vec::with_capacity(16 + binding.len() + json.len());
    input.extend_from_slice(&(binding.len() as u64).to_be_bytes());
    input.extend_from_slice(binding.as_bytes());
    input.extend_from_slice(&expires_at_ms.to_be_bytes());
    input.extend_from_slice(json.as_bytes());
    input
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_opens_only_where_it_was_sealed_as_it_was_and_until_it_expires() {
        let sealer = Sealer::new(&[7; CLUSTER_KEY_LEN]);
        let (now, until) = (1_000, 2_000);
        let sealed = sealer.seal("obr:token:abc", r#"{"admin":true}"#, until);
        assert_eq!(
            sealer.open("obr:token:abc", &sealed, now),
            Ok((r#"{"admin":true}"#, until))
        );
        assert_eq!(
            sealer.open("obr:token:abc", &sealed, until),
            Err(Forged),
            "expired"
        );
        let extended = sealed.replace(".2000.", ".9000.");
        assert_eq!(
            sealer.open("obr:token:abc", &extended, now),
            Err(Forged),
            "extended"
        );
        assert_eq!(
            sealer.open("obr:token:xyz", &sealed, now),
            Err(Forged),
            "copied"
        );
        let edited = sealed.replace("true", "false");
        assert_eq!(
            sealer.open("obr:token:abc", &edited, now),
            Err(Forged),
            "edited"
        );
        assert_eq!(
            sealer.open("obr:token:abc", r#"{"admin":true}"#, now),
            Err(Forged),
            "unsealed"
        );
        let other = Sealer::new(&[8; CLUSTER_KEY_LEN]);
        assert_eq!(
            other.open("obr:token:abc", &sealed, now),
            Err(Forged),
            "other key"
        );
    }

    #[test]
    fn the_cluster_key_file_is_made_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("obr-cluster-key-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cluster.key");
        let first = Sealer::load_or_create(&path).unwrap();
        let sealed = first.seal("b", "{}", 10);
        let again = Sealer::load_or_create(&path).unwrap();
        assert_eq!(again.open("b", &sealed, 5), Ok(("{}", 10)));
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Sealer::load_or_create(&path),
            Err(ClusterKeyError::Read(
                obr_signer::KeyFileError::NotPrivate { .. }
            ))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
