//! The audit chain's anchor: signed checkpoints kept outside the database.
//!
//! The hash chain alone proves nothing to someone who can write
//! `relay.db`: they can delete the tail, or rewrite a record and rehash
//! every later one. So every [`CHECKPOINT_INTERVAL`] the relay signs the
//! chain's head (`seq`, `hash`) with an Ed25519 key that is not in the
//! database (`audit-signing.key`, 0600) and appends the checkpoint to a
//! JSON-lines file (by default beside the database; point
//! `--audit-checkpoints` at storage the database's writers cannot change,
//! or ship the file elsewhere). [`verify`] (`obr-relay audit verify`)
//! checks the chain against every checkpoint: an edited, removed or
//! truncated record, or a rehashed chain, no longer matches a signed head.
//! Records newer than the last checkpoint are covered by the chain only.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use super::{DirResult, Directory};
use crate::clock::now_ms;

/// How often the relay signs the chain's head, when it moved.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);
/// The signing key's default file, in the data directory.
pub const SIGNING_KEY_FILE: &str = "audit-signing.key";
/// Its public half (what a verifier trusts), beside it.
pub const PUBLIC_KEY_FILE: &str = "audit-signing.pub";
/// The checkpoints' default file, in the data directory.
pub const CHECKPOINTS_FILE: &str = "audit-checkpoints.jsonl";

const SIGNATURE_LABEL: &[u8] = b"obr audit checkpoint v1\0";

#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("audit signing key {path} is readable by group or others: chmod 600 it")]
    NotPrivate { path: String },
}

/// One signed head of the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: i64,
    pub hash: String,
    pub at_ms: i64,
    /// Ed25519 over the label, `seq` (big-endian) and `hash`, base64url.
    pub signature: String,
}

/// The relay's signer of checkpoints.
pub struct AuditAnchor {
    key: Ed25519KeyPair,
    checkpoints: PathBuf,
    last: tokio::sync::Mutex<Option<i64>>,
}

impl AuditAnchor {
    /// The signing key in `key_file` (made, 0600, with its public half in
    /// `<key_file>.pub`-style [`PUBLIC_KEY_FILE`] beside it, when missing),
    /// appending checkpoints to `checkpoints`.
    pub fn open(key_file: &Path, checkpoints: &Path) -> Result<Self, AnchorError> {
        use std::os::unix::fs::PermissionsExt;
        let err = |path: &Path, reason: &dyn std::fmt::Display| AnchorError::File {
            path: path.display().to_string(),
            reason: reason.to_string(),
        };
        let pkcs8 = match std::fs::read(key_file) {
            Ok(bytes) => {
                let mode = std::fs::metadata(key_file)
                    .map_err(|e| err(key_file, &e))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(AnchorError::NotPrivate {
                        path: key_file.display().to_string(),
                    });
                }
                zeroize::Zeroizing::new(bytes)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let fresh = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                    .map_err(|_| err(key_file, &"the system random generator failed"))?;
                write_new(key_file, fresh.as_ref(), 0o600).map_err(|e| err(key_file, &e))?;
                let pair =
                    Ed25519KeyPair::from_pkcs8(fresh.as_ref()).map_err(|e| err(key_file, &e))?;
                let public = public_key_path(key_file);
                let text = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
                write_new(&public, text.as_bytes(), 0o644).map_err(|e| err(&public, &e))?;
                tracing::info!(path = %key_file.display(), "created the audit signing key");
                zeroize::Zeroizing::new(fresh.as_ref().to_vec())
            }
            Err(e) => return Err(err(key_file, &e)),
        };
        let key = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|e| err(key_file, &e))?;
        Ok(Self {
            key,
            checkpoints: checkpoints.to_owned(),
            last: tokio::sync::Mutex::default(),
        })
    }

    /// Sign the chain's head if it moved since the last checkpoint, and
    /// append it (synced) to the checkpoints file.
    pub async fn checkpoint(
        &self,
        directory: &Directory,
    ) -> Result<Option<Checkpoint>, AnchorError> {
        let mut last = self.last.lock().await;
        let head = directory
            .audit_head()
            .await
            .map_err(|e| AnchorError::File {
                path: "relay.db".into(),
                reason: e.to_string(),
            })?;
        let Some((seq, hash)) = head else {
            return Ok(None);
        };
        if *last == Some(seq) {
            return Ok(None);
        }
        let signature = self.key.sign(&signed_bytes(seq, &hash));
        let checkpoint = Checkpoint {
            seq,
            hash,
            at_ms: now_ms(),
            signature: URL_SAFE_NO_PAD.encode(signature.as_ref()),
        };
        let mut line = serde_json::to_vec(&checkpoint).map_err(|e| AnchorError::File {
            path: self.checkpoints.display().to_string(),
            reason: e.to_string(),
        })?;
        line.push(b'\n');
        let path = self.checkpoints.clone();
        let write = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(&path)?;
            file.write_all(&line)?;
            file.sync_data()
        });
        write
            .await
            .map_err(|e| AnchorError::File {
                path: self.checkpoints.display().to_string(),
                reason: e.to_string(),
            })?
            .map_err(|e| AnchorError::File {
                path: self.checkpoints.display().to_string(),
                reason: e.to_string(),
            })?;
        *last = Some(seq);
        Ok(Some(checkpoint))
    }
}

/// Where [`AuditAnchor::open`] puts the public half of `key_file`.
pub fn public_key_path(key_file: &Path) -> PathBuf {
    key_file.with_file_name(PUBLIC_KEY_FILE)
}

/// What `obr-relay audit verify` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The chain links, and every checkpoint's head is in it.
    Intact { records: i64, checkpoints: usize },
    /// The chain does not link at `seq` (an edited or removed record).
    ChainBroken { seq: i64 },
    /// A signed head is missing: the record was removed, or the log
    /// truncated before it.
    Missing { seq: i64 },
    /// The record at a signed head has another hash: rewritten (and the
    /// chain recomputed after it).
    Rewritten { seq: i64 },
    /// A checkpoint's signature does not verify under the trusted key.
    BadCheckpoint { line: usize },
}

/// Check the directory's audit chain against `checkpoints` (JSON lines),
/// trusting `public_key` (Ed25519, raw 32 bytes).
pub async fn verify(
    directory: &Directory,
    checkpoints: &str,
    public_key: &[u8],
) -> DirResult<Verdict> {
    let key = UnparsedPublicKey::new(&ED25519, public_key);
    let mut signed = Vec::new();
    for (index, line) in checkpoints.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let line_no = index + 1;
        let Ok(checkpoint) = serde_json::from_str::<Checkpoint>(line) else {
            return Ok(Verdict::BadCheckpoint { line: line_no });
        };
        let genuine = URL_SAFE_NO_PAD
            .decode(&checkpoint.signature)
            .ok()
            .is_some_and(|sig| {
                key.verify(&signed_bytes(checkpoint.seq, &checkpoint.hash), &sig)
                    .is_ok()
            });
        if !genuine {
            return Ok(Verdict::BadCheckpoint { line: line_no });
        }
        signed.push(checkpoint);
    }
    if let Some(seq) = directory.verify_audit_chain().await? {
        return Ok(Verdict::ChainBroken { seq });
    }
    for checkpoint in &signed {
        match directory.audit_hash(checkpoint.seq).await? {
            None => {
                return Ok(Verdict::Missing {
                    seq: checkpoint.seq,
                });
            }
            Some(hash) if hash != checkpoint.hash => {
                return Ok(Verdict::Rewritten {
                    seq: checkpoint.seq,
                });
            }
            Some(_) => {}
        }
    }
    let records = directory.audit_head().await?.map_or(0, |(seq, _)| seq);
    Ok(Verdict::Intact {
        records,
        checkpoints: signed.len(),
    })
}

fn signed_bytes(seq: i64, hash: &str) -> Vec<u8> {
    let mut bytes = SIGNATURE_LABEL.to_vec();
    bytes.extend_from_slice(&seq.to_be_bytes());
    bytes.extend_from_slice(hash.as_bytes());
    bytes
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}
