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
    if !crate::vault::key_file_is_private(&meta) {
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
