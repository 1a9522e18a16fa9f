//! [`SignerConfig`]: everything a signer is told at start-up, with the
//! defaults of the embedded single-machine mode. Holds no state and does no
//! I/O (loading the KEK is [`crate::Kek`]'s job).

use std::time::Duration;

use crate::ctap::attestation::AttestationConfig;
use crate::placement::Placement;
use crate::vault::Kek;

/// How long a user's actor stays active without traffic before it
/// passivates (forgets its claim, data key and signing keys).
pub const DEFAULT_IDLE_PASSIVATION: Duration = Duration::from_secs(300);
/// Pooled database connections (SQLite serializes writers anyway; readers
/// run beside them in WAL mode; PostgreSQL runs them in parallel).
pub const DEFAULT_DB_MAX_CONNECTIONS: u32 = 8;
/// The AAGUID obr's signers present unless configured otherwise
/// (c363dbb3-2edd-4108-8402-98b094e82ee7, generated for obr).
pub const DEFAULT_AAGUID: [u8; 16] = [
    0xc3, 0x63, 0xdb, 0xb3, 0x2e, 0xdd, 0x41, 0x08, 0x84, 0x02, 0x98, 0xb0, 0x94, 0xe8, 0x2e, 0xe7,
];

/// How a signer process runs.
#[derive(Clone, Debug)]
pub struct SignerConfig {
    /// `sqlite://path?mode=rwc`, `sqlite::memory:` or
    /// `postgres://user@host:port/database`.
    pub database_url: String,
    /// The key-encryption keys: the current one wraps every new data key;
    /// previous ones still unwrap the data keys a rotation has not yet
    /// re-wrapped.
    pub kek: Kek,
    /// The authenticator model id reported by getInfo and in attested
    /// credential data.
    pub aaguid: [u8; 16],
    /// See [`DEFAULT_IDLE_PASSIVATION`].
    pub idle_passivation: Duration,
    /// Threads (actix arbiters) running user actors; 0 = one per core.
    pub actor_threads: usize,
    /// See [`DEFAULT_DB_MAX_CONNECTIONS`].
    pub db_max_connections: u32,
    /// How new credentials are attested (`none` unless configured).
    pub attestation: AttestationConfig,
    /// Membership and per-user leases in Redis, when this signer is one of
    /// several pods; `None` for a single signer.
    pub placement: Option<Placement>,
    /// Whether an admin's OBR session stands for user verification when
    /// the platform asks for `uv` (DESIGN: "policy may forbid it"). When
    /// false, on-behalf requests with `uv` are refused (OPERATION_DENIED).
    pub obr_stands_for_uv: bool,
    /// The key relays MAC owner approvals with (`obr_proto::approval`).
    /// Without one, a call's approval is never taken: normal-mode calls
    /// that need the owner are refused.
    pub approval_key: Option<[u8; obr_proto::approval::KEY_LEN]>,
}

impl SignerConfig {
    /// A signer with every default but its database and KEK (what an
    /// in-process signer in the relay needs).
    pub fn embedded(database_url: impl Into<String>, kek: Kek) -> Self {
        Self {
            database_url: database_url.into(),
            kek,
            aaguid: DEFAULT_AAGUID,
            idle_passivation: DEFAULT_IDLE_PASSIVATION,
            actor_threads: 0,
            db_max_connections: DEFAULT_DB_MAX_CONNECTIONS,
            attestation: AttestationConfig::None,
            placement: None,
            obr_stands_for_uv: true,
            approval_key: None,
        }
    }
}

/// Why a 32-byte key file (the approval key, the relays' cluster key)
/// cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("key file {path}: {reason}")]
    File { path: String, reason: String },
    #[error(
        "key file {path} is readable by group or others (mode {mode:o}): chmod 600 it (or, mounted from a Kubernetes Secret, 0440 root-owned in the pod's fsGroup)"
    )]
    NotPrivate { path: String, mode: u32 },
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

/// The 32-byte key in `path` (the approval key, or the relays' cluster
/// key): 64 hex characters (make one with `obr-signer new-kek --kek-file
/// PATH`: same format), readable by its owner only.
pub fn load_key_file(
    path: &std::path::Path,
) -> Result<[u8; obr_proto::approval::KEY_LEN], KeyFileError> {
    use std::os::unix::fs::PermissionsExt;
    let file_err = |reason: String| KeyFileError::File {
        path: path.display().to_string(),
        reason,
    };
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?,
    );
    let meta = std::fs::metadata(path).map_err(|e| file_err(e.to_string()))?;
    let mode = meta.permissions().mode() & 0o777;
    if !crate::key_file_is_private(&meta) {
        return Err(KeyFileError::NotPrivate {
            path: path.display().to_string(),
            mode,
        });
    }
    let mut key = [0u8; obr_proto::approval::KEY_LEN];
    hex::decode_to_slice(text.trim(), &mut key)
        .map_err(|_| file_err(format!("not {} hex-encoded bytes", key.len())))?;
    Ok(key)
}

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
