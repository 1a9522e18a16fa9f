//! [`AgentKey`]: who this agent is — a P-256 key pair made at first start
//! and kept in the state file (mode 0600), and the agent id derived from
//! its public key (`obr_proto::identity`). Every connection proves the key
//! by signing the relay's challenge; the private half never leaves this
//! file and this process, and `Debug` never prints it.
//!
//! A state file from before agents had keys (an id without a key) gets a
//! key and, with it, a new id: the old id was a claim anybody could make.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use obr_proto::identity;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("cannot use state file {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("state file {path} holds no valid agent key: {reason}")]
    Key { path: String, reason: String },
}

/// What the state file holds.
#[derive(Default, Serialize, Deserialize)]
struct SavedState {
    agent_id: String,
    /// PKCS#8 of the agent's P-256 private key, base64.
    #[serde(default)]
    key: String,
}

/// The agent's key pair and the id derived from it.
pub struct AgentKey {
    pair: EcdsaKeyPair,
    agent_id: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentKey")
            .field("agent_id", &self.agent_id)
            .finish_non_exhaustive()
    }
}

impl AgentKey {
    /// The key in the state file at `path`, made (and the file written,
    /// 0600) when there is none yet.
    pub fn load_or_create(path: &Path) -> Result<Self, StateFileError> {
        let io = |e: &dyn std::fmt::Display| StateFileError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let bad_key = |e: &dyn std::fmt::Display| StateFileError::Key {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let rng = SystemRandom::new();
        let saved: SavedState = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| io(&e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SavedState::default(),
            Err(e) => return Err(io(&e)),
        };
        let pkcs8 = if saved.key.is_empty() {
            let fresh = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
                .map_err(|_| bad_key(&"the system random generator failed"))?;
            Zeroizing::new(fresh.as_ref().to_vec())
        } else {
            Zeroizing::new(STANDARD.decode(&saved.key).map_err(|e| bad_key(&e))?)
        };
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8, &rng)
            .map_err(|e| bad_key(&e))?;
        let agent_id = identity::agent_id(pair.public_key().as_ref());
        if saved.agent_id != agent_id || saved.key.is_empty() {
            let state = SavedState {
                agent_id: agent_id.clone(),
                key: STANDARD.encode(pkcs8.as_slice()),
            };
            write_private(path, &state).map_err(|e| io(&e))?;
        } else {
            tighten_mode(path).map_err(|e| io(&e))?;
        }
        Ok(Self {
            pair,
            agent_id,
            rng,
        })
    }

    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// The public key, SEC1 uncompressed (what a Hello carries).
    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    /// The proof for a connection challenged with `nonce`.
    pub fn prove(&self, nonce: &[u8]) -> Result<Vec<u8>, ring::error::Unspecified> {
        let message = identity::proof_message(nonce, &self.agent_id);
        Ok(self.pair.sign(&self.rng, &message)?.as_ref().to_vec())
    }
}

/// Write `state` to `path` atomically, readable by its owner only.
fn write_private(path: &Path, state: &SavedState) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    // A fresh, unpredictable name, created here (never an existing file
    // someone else made in a shared directory), 0600 from the start.
    let tmp = PathBuf::from(format!(
        "{}.{}.tmp",
        path.display(),
        uuid::Uuid::new_v4().simple()
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&serde_json::to_vec_pretty(state)?)?;
    file.sync_all()?;
    std::fs::rename(tmp, path)
}

/// A state file someone made readable to others is made private again.
fn tighten_mode(path: &Path) -> std::io::Result<()> {
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "agent state file was readable by others; now 0600");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "obr-agent-key-{name}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("agent.json")
    }

    #[test]
    fn the_key_is_made_once_kept_private_and_names_the_agent() {
        let path = scratch("once");
        let first = AgentKey::load_or_create(&path).unwrap();
        let again = AgentKey::load_or_create(&path).unwrap();
        assert_eq!(first.agent_id(), again.agent_id());
        assert_eq!(first.public_key(), again.public_key());
        assert_eq!(
            first.agent_id(),
            identity::agent_id(&first.public_key()),
            "the id is the key's"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!format!("{first:?}").contains(&STANDARD.encode(first.public_key())));
    }

    #[test]
    fn an_old_state_file_without_a_key_gets_one_and_a_new_id() {
        let path = scratch("old");
        std::fs::write(&path, br#"{"agent_id":"claimed-id","token":"old"}"#).unwrap();
        let key = AgentKey::load_or_create(&path).unwrap();
        assert_ne!(key.agent_id(), "claimed-id");
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(saved["agent_id"], key.agent_id());
        assert!(saved.get("token").is_none(), "no bearer token is kept");
    }

    #[test]
    fn a_readable_state_file_is_made_private() {
        let path = scratch("mode");
        AgentKey::load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        AgentKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_corrupt_key_is_an_error_not_a_new_identity() {
        let path = scratch("corrupt");
        std::fs::write(&path, br#"{"agent_id":"x","key":"AAAA"}"#).unwrap();
        assert!(matches!(
            AgentKey::load_or_create(&path),
            Err(StateFileError::Key { .. })
        ));
    }
}
