//! [`RelayConfig`]: everything a relay process is told at start-up, with
//! the defaults of the embedded single-machine mode.

use std::path::PathBuf;
use std::time::Duration;

use obr_signer::RedisEndpoint;

/// How often each relay looks for OBR sessions past their TTL.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Who mail to people comes from, unless `--mail-from` says otherwise.
pub const DEFAULT_MAIL_FROM: &str = "obr <no-reply@obr.invalid>";
/// An admin session unused for 15 minutes ends (OWASP ASVS 3.3.2 asks for
/// re-authentication after a period of inactivity).
pub const DEFAULT_ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// An admin signs in again after 8 hours (a working day), whatever they do.
pub const DEFAULT_ADMIN_SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);

/// On SIGTERM, agents get this long to finish and move (Kubernetes'
/// default termination grace is 30 s: the server's own stop fits after).
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(20);
/// Agents are told to move over this long, in batches.
pub const DEFAULT_DRAIN_SPREAD: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// The URL people and agents reach this relay at (used in login links).
    pub public_url: String,
    /// Where the SQLite databases (and, embedded, the signer's KEK) live.
    pub data_dir: PathBuf,
    /// `redis://…` or `rediss://…` (with its TLS files); `None` keeps
    /// sessions in this process's memory.
    pub redis: Option<RedisEndpoint>,
    /// Namespace for every Redis key of this deployment.
    pub redis_prefix: String,
    /// The key that seals every Redis value and event, and admins' grants
    /// in the directory (64 hex characters, 0600); every relay of a
    /// deployment needs the same one. Default: `cluster.key` in the data
    /// directory, created when missing.
    pub cluster_key_file: Option<PathBuf>,
    /// Signer endpoints (`http://host:port`); empty runs one in-process,
    /// unless `discover_signers`.
    pub signers: Vec<String>,
    /// Find signers through their heartbeats in Redis (needs `redis`).
    pub discover_signers: bool,
    /// Mutual TLS towards `https://` signers.
    pub signer_tls: Option<SignerTlsFiles>,
    /// Talk plaintext gRPC to standalone signers (no `signer_tls`): only
    /// where nothing but relays and signers reach that network (tests).
    /// Without it, standalone signers need `signer_tls`.
    pub insecure_plaintext_signers: bool,
    /// The key owner approvals are MACed with for standalone signers (their
    /// `--approval-key-file`); the embedded signer gets a fresh one.
    pub approval_key_file: Option<PathBuf>,
    /// The longest an OBR session may last, and its default.
    pub obr_ttl: Duration,
    /// Four eyes on every OBR session: it starts only once this approver
    /// (the user, or a second admin) says yes.
    pub obr_four_eyes: Option<crate::sessions::Approver>,
    /// An admin token unused this long ends.
    pub admin_idle_timeout: Duration,
    /// An admin token ends this long after sign-in, however much it is used.
    pub admin_session_lifetime: Duration,
    pub sweep_interval: Duration,
    /// HTTP worker threads; 0 = one per core.
    pub workers: usize,
    /// Send mail to people through this SMTP server (`smtps://user:pass@host`,
    /// `smtp://host:587?tls=required`); `None` writes `.eml` files to the
    /// outbox folder in the data directory.
    pub smtp_url: Option<String>,
    /// The sender of that mail.
    pub mail_from: String,
    /// On SIGTERM, how long agents get to finish what is in flight and
    /// move to another relay.
    pub drain_grace: Duration,
    /// Over how long the agents are told to move (in batches).
    pub drain_spread: Duration,
    /// Serve Prometheus metrics at `/metrics`.
    pub metrics: bool,
    /// Where every audit record is POSTed, signed; `None`: nowhere.
    pub audit_webhook: Option<crate::audit_webhook::WebhookConfig>,
    /// Create a demo organisation when the directory is empty.
    pub demo_org: bool,
    /// Serve HTTPS/WSS with this certificate chain and key (PEM).
    pub tls: Option<TlsFiles>,
    /// The audit signing key (Ed25519, PKCS#8, 0600). Default:
    /// `audit-signing.key` in the data directory, made when missing.
    pub audit_key_file: Option<PathBuf>,
    /// Where signed checkpoints of the audit chain are appended. Default:
    /// `audit-checkpoints.jsonl` in the data directory.
    pub audit_checkpoints: Option<PathBuf>,
}

/// The relay's client certificate and key for signers, and the CA their
/// certificates chain to (PEM).
#[derive(Clone, Debug)]
pub struct SignerTlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A PEM certificate chain and its PKCS#8 (or SEC1/PKCS#1) private key.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert_chain: PathBuf,
    pub key: PathBuf,
}

impl RelayConfig {
    /// Where the cluster key is: [`Self::cluster_key_file`], else
    /// `cluster.key` in the data directory.
    pub fn cluster_key_path(&self) -> PathBuf {
        self.cluster_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join(crate::CLUSTER_KEY_FILE))
    }

    /// Embedded defaults: in-memory sessions, SQLite in `data_dir`, an
    /// in-process signer.
    pub fn embedded(data_dir: PathBuf, public_url: String) -> Self {
        Self {
            public_url,
            data_dir,
            redis: None,
            redis_prefix: "obr:".to_owned(),
            cluster_key_file: None,
            signers: Vec::new(),
            discover_signers: false,
            signer_tls: None,
            insecure_plaintext_signers: false,
            approval_key_file: None,
            obr_ttl: crate::obr::DEFAULT_OBR_TTL,
            obr_four_eyes: None,
            admin_idle_timeout: DEFAULT_ADMIN_IDLE_TIMEOUT,
            admin_session_lifetime: DEFAULT_ADMIN_SESSION_LIFETIME,
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
            workers: 0,
            smtp_url: None,
            mail_from: DEFAULT_MAIL_FROM.to_owned(),
            audit_webhook: None,
            metrics: false,
            drain_grace: DEFAULT_DRAIN_GRACE,
            drain_spread: DEFAULT_DRAIN_SPREAD,
            demo_org: false,
            tls: None,
            audit_key_file: None,
            audit_checkpoints: None,
        }
    }
}
