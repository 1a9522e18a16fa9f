//! `obr-relay`: parse configuration, open the relay, serve until
//! SIGINT/SIGTERM. `obr-relay admin create` makes an admin (the first
//! owner of an organisation), `obr-relay admin reset-totp` gives one a new
//! second factor; `obr-relay audit verify` checks the audit log
//! against its signed checkpoints; `obr-relay pki init` makes a deployment
//! CA and its certificates for setups without a PKI of their own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use obr_relay::directory::Directory;
use obr_relay::directory::anchor::{self, Verdict};
use obr_relay::directory::grants::{Grant, Grants, Role, Scope, valid_groups};
use obr_relay::directory::second_factor::{Enrolment, SecondFactor};
use obr_relay::sessions::{Approver, Sealer};
use obr_relay::{Relay, RelayConfig};
use obr_signer::RedisEndpoint;

#[derive(Parser, Debug)]
#[command(
    name = "obr-relay",
    version,
    about = "obr relay: agents <-> signers, admin API",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Args,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Admins of the organisation.
    Admin {
        #[command(subcommand)]
        action: AdminCommand,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        action: AuditCommand,
    },
    /// Certificates for relay⇄signer mutual TLS and `rediss://`.
    Pki {
        #[command(subcommand)]
        action: PkiCommand,
    },
}

#[derive(Subcommand, Debug)]
enum PkiCommand {
    /// Make a deployment CA and the signers' server, relays' client and
    /// Redis server certificates in DIR (keys 0600). Existing files are
    /// kept; a missing certificate is issued by the existing CA.
    Init {
        /// Where the files go.
        #[arg(long)]
        dir: PathBuf,
        /// A DNS name or IP address the services are reached at (repeat).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Make an admin with a role and a scope, and print their password
    /// once (the first owner of a new organisation, or one more admin).
    /// Audited. Run where the relay's data directory and cluster key are.
    Create {
        #[command(flatten)]
        directory: DirectoryArgs,
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: String,
        #[arg(long, value_enum, default_value = "owner")]
        role: RoleArg,
        /// Limit the admin to users in this group (repeat); none: all users.
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    /// Give an admin a new TOTP secret (a lost phone, or an admin from
    /// before second factors) and print it once; the old one stops working.
    /// Audited.
    ResetTotp {
        #[command(flatten)]
        directory: DirectoryArgs,
        #[arg(long)]
        email: String,
    },
}

/// Where an `admin` command finds the directory and the key that seals
/// grants and encrypts second factors.
#[derive(clap::Args, Debug)]
struct DirectoryArgs {
    /// The relay's data directory (relay.db).
    #[arg(long, env = "OBR_RELAY_DATA_DIR", default_value = "obr-data")]
    data_dir: PathBuf,
    /// The deployment's cluster key (default: cluster.key in the data
    /// directory, made if missing for a new directory).
    #[arg(long, env = "OBR_RELAY_CLUSTER_KEY_FILE")]
    cluster_key_file: Option<PathBuf>,
}

impl DirectoryArgs {
    fn cluster_key(&self) -> PathBuf {
        self.cluster_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join(obr_relay::CLUSTER_KEY_FILE))
    }
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum FourEyesArg {
    User,
    SecondAdmin,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum RoleArg {
    Owner,
    Operator,
    Auditor,
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Check the hash chain and every signed checkpoint: an edited,
    /// removed or truncated record, or a rehashed chain, is reported and
    /// the exit status is 1.
    Verify {
        /// The relay's data directory (relay.db).
        #[arg(long, env = "OBR_RELAY_DATA_DIR", default_value = "obr-data")]
        data_dir: PathBuf,
        /// The checkpoints file (default: in the data directory).
        #[arg(long, env = "OBR_RELAY_AUDIT_CHECKPOINTS")]
        checkpoints: Option<PathBuf>,
        /// The trusted public key, base64url (default: audit-signing.pub in
        /// the data directory; keep a copy where the database's writers
        /// cannot change it).
        #[arg(long)]
        public_key: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "OBR_RELAY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// URL people and agents use to reach this relay (default: http://LISTEN).
    #[arg(long, env = "OBR_RELAY_PUBLIC_URL")]
    public_url: Option<String>,
    /// Directory for the SQLite databases and the embedded signer's KEK.
    #[arg(long, env = "OBR_RELAY_DATA_DIR", default_value = "obr-data")]
    data_dir: PathBuf,
    /// Redis URL for shared session state; omit to keep it in memory.
    /// `redis://…`, or `rediss://…` for TLS; an ACL user and password go
    /// in the URL.
    #[arg(long, env = "OBR_RELAY_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// PEM CA that signed the Redis server's certificate (`rediss://`;
    /// default: the system's roots).
    #[arg(long, env = "OBR_RELAY_REDIS_CA", requires = "redis_url")]
    redis_ca: Option<PathBuf>,
    /// PEM client certificate for a Redis server that authenticates
    /// clients (`tls-auth-clients yes`).
    #[arg(
        long,
        env = "OBR_RELAY_REDIS_CLIENT_CERT",
        requires_all = ["redis_client_key", "redis_url"]
    )]
    redis_client_cert: Option<PathBuf>,
    /// The client certificate's PEM private key.
    #[arg(
        long,
        env = "OBR_RELAY_REDIS_CLIENT_KEY",
        requires_all = ["redis_client_cert", "redis_url"]
    )]
    redis_client_key: Option<PathBuf>,
    #[arg(long, env = "OBR_RELAY_REDIS_PREFIX", default_value = "obr:")]
    redis_prefix: String,
    /// The cluster key that seals what relays keep in Redis and admins'
    /// grants in the directory (64 hex characters, mode 0600; every relay
    /// of a deployment needs the same one). Default: cluster.key in the
    /// data directory, made if missing.
    #[arg(long, env = "OBR_RELAY_CLUSTER_KEY_FILE")]
    cluster_key_file: Option<PathBuf>,
    /// Signer endpoint (repeat for several); none runs one in-process.
    #[arg(long = "signer", env = "OBR_RELAY_SIGNERS", value_delimiter = ',')]
    signers: Vec<String>,
    /// Mutual TLS with https:// signers: the CA their certificates chain
    /// to (PEM)…
    #[arg(long, env = "OBR_RELAY_SIGNER_CA", requires_all = ["signer_client_cert", "signer_client_key"])]
    signer_ca: Option<PathBuf>,
    /// …this relay's client certificate (PEM)…
    #[arg(long, env = "OBR_RELAY_SIGNER_CLIENT_CERT", requires = "signer_ca")]
    signer_client_cert: Option<PathBuf>,
    /// …and its key (PEM).
    #[arg(long, env = "OBR_RELAY_SIGNER_CLIENT_KEY", requires = "signer_ca")]
    signer_client_key: Option<PathBuf>,
    /// Talk plaintext to `http://` signers (without mutual TLS whoever
    /// reaches a signer's port, or writes a member into Redis, gets users'
    /// CTAP traffic: only where nothing but relays and signers reach).
    #[arg(
        long,
        env = "OBR_RELAY_INSECURE_PLAINTEXT_SIGNERS",
        conflicts_with = "signer_ca"
    )]
    insecure_plaintext_signers: bool,
    /// The key owner approvals are MACed with for standalone signers (64
    /// hex characters, 0600; the signers' --approval-key-file). Without it,
    /// normal-mode calls through standalone signers that need the owner's
    /// approval are refused.
    #[arg(long, env = "OBR_RELAY_APPROVAL_KEY_FILE")]
    approval_key_file: Option<PathBuf>,
    /// Find signers by their heartbeats in Redis instead of --signer.
    #[arg(long, env = "OBR_RELAY_DISCOVER_SIGNERS")]
    discover_signers: bool,
    /// Hard lifetime of an OBR session, in seconds.
    #[arg(long, env = "OBR_RELAY_OBR_TTL_S", default_value_t = 900)]
    obr_ttl_s: u64,
    /// Require four eyes on every OBR session: it starts only once the
    /// user (on their phone) or a second admin approves it.
    #[arg(long, env = "OBR_RELAY_OBR_FOUR_EYES", value_enum)]
    obr_four_eyes: Option<FourEyesArg>,
    /// Send mail (invitations) through this SMTP server: smtps://user:pass@host,
    /// or smtp://host:587?tls=required; give a password as the environment
    /// variable, out of other users' `ps`. Default: .eml files in
    /// <data-dir>/outbox.
    #[arg(long, env = "OBR_RELAY_SMTP_URL", hide_env_values = true)]
    smtp_url: Option<String>,
    /// The sender of that mail.
    #[arg(long, env = "OBR_RELAY_MAIL_FROM", default_value = obr_relay::config::DEFAULT_MAIL_FROM)]
    mail_from: String,
    /// POST every audit record, in signed batches, to this URL (https://;
    /// http:// only to this machine).
    #[arg(
        long,
        env = "OBR_RELAY_AUDIT_WEBHOOK_URL",
        hide_env_values = true,
        requires = "audit_webhook_secret_file"
    )]
    audit_webhook_url: Option<String>,
    /// The file holding the webhook's HMAC-SHA256 secret (at least 32 bytes),
    /// which the receiver holds too.
    #[arg(
        long,
        env = "OBR_RELAY_AUDIT_WEBHOOK_SECRET_FILE",
        requires = "audit_webhook_url"
    )]
    audit_webhook_secret_file: Option<PathBuf>,
    /// Trust only this CA (PEM) for the webhook's receiver (default: the
    /// public web PKI).
    #[arg(
        long,
        env = "OBR_RELAY_AUDIT_WEBHOOK_CA",
        requires = "audit_webhook_url"
    )]
    audit_webhook_ca: Option<PathBuf>,
    /// With nothing to deliver, send the receiver a signed heartbeat (the
    /// log's head, no records) this often, in seconds.
    #[arg(long, env = "OBR_RELAY_AUDIT_WEBHOOK_HEARTBEAT_S", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    audit_webhook_heartbeat_s: u64,
    /// Serve Prometheus metrics at /metrics (route it only from inside the
    /// cluster).
    #[arg(long, env = "OBR_RELAY_METRICS")]
    metrics: bool,
    /// On SIGTERM, seconds agents get to finish what is in flight and move
    /// to another relay.
    #[arg(long, env = "OBR_RELAY_DRAIN_GRACE_S", default_value_t = 20)]
    drain_grace_s: u64,
    /// Over how many seconds agents are told to move (in batches).
    #[arg(long, env = "OBR_RELAY_DRAIN_SPREAD_S", default_value_t = 5)]
    drain_spread_s: u64,
    /// An admin token unused this many seconds ends.
    #[arg(long, env = "OBR_RELAY_ADMIN_IDLE_TIMEOUT_S", default_value_t = 900)]
    admin_idle_timeout_s: u64,
    /// An admin token ends this many seconds after sign-in.
    #[arg(
        long,
        env = "OBR_RELAY_ADMIN_SESSION_LIFETIME_S",
        default_value_t = 28_800
    )]
    admin_session_lifetime_s: u64,
    /// HTTP worker threads (0 = one per core).
    #[arg(long, env = "OBR_RELAY_WORKERS", default_value_t = 0)]
    workers: usize,
    /// Serve HTTPS/WSS: the certificate chain (PEM)…
    #[arg(long, env = "OBR_RELAY_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// …and its private key (PEM).
    #[arg(long, env = "OBR_RELAY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Create a demo organisation if the directory is empty.
    #[arg(long, env = "OBR_RELAY_DEMO_ORG")]
    demo_org: bool,
    /// The audit signing key (Ed25519 PKCS#8, 0600; default: in the data
    /// directory, made when missing).
    #[arg(long, env = "OBR_RELAY_AUDIT_KEY_FILE")]
    audit_key_file: Option<PathBuf>,
    /// Where signed audit checkpoints are appended (default: in the data
    /// directory); put it where the database's writers cannot change it.
    #[arg(long, env = "OBR_RELAY_AUDIT_CHECKPOINTS")]
    audit_checkpoints: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging("info,h2=warn,tower=warn");
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Audit {
            action:
                AuditCommand::Verify {
                    data_dir,
                    checkpoints,
                    public_key,
                },
        }) => return verify_audit(&data_dir, checkpoints, public_key).await,
        Some(Command::Pki {
            action: PkiCommand::Init { dir, hosts },
        }) => return init_pki(&dir, &hosts),
        Some(Command::Admin {
            action:
                AdminCommand::Create {
                    directory,
                    email,
                    name,
                    role,
                    groups,
                },
        }) => {
            let key = directory.cluster_key();
            return create_admin(&directory.data_dir, &key, &email, &name, role, &groups).await;
        }
        Some(Command::Admin {
            action: AdminCommand::ResetTotp { directory, email },
        }) => return reset_totp(&directory.data_dir, &directory.cluster_key(), &email).await,
        None => {}
    }
    let args = cli.serve;
    let listener = std::net::TcpListener::bind(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if args.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let demo_file = args.data_dir.join(obr_relay::demo::DEMO_FILE);
    let mut config = RelayConfig::embedded(
        args.data_dir,
        args.public_url
            .unwrap_or_else(|| format!("{scheme}://{addr}")),
    );
    config.tls = args
        .tls_cert
        .zip(args.tls_key)
        .map(|(cert_chain, key)| obr_relay::config::TlsFiles { cert_chain, key });
    config.redis = args.redis_url.map(|url| RedisEndpoint {
        url,
        ca_file: args.redis_ca,
        client_cert_file: args.redis_client_cert,
        client_key_file: args.redis_client_key,
    });
    config.redis_prefix = args.redis_prefix;
    config.cluster_key_file = args.cluster_key_file;
    config.signers = args.signers;
    config.discover_signers = args.discover_signers;
    config.approval_key_file = args.approval_key_file;
    config.insecure_plaintext_signers = args.insecure_plaintext_signers;
    config.signer_tls = match (
        args.signer_ca,
        args.signer_client_cert,
        args.signer_client_key,
    ) {
        (Some(ca), Some(cert), Some(key)) => {
            Some(obr_relay::config::SignerTlsFiles { ca, cert, key })
        }
        _ => None,
    };
    config.obr_ttl = Duration::from_secs(args.obr_ttl_s);
    config.obr_four_eyes = args.obr_four_eyes.map(|who| match who {
        FourEyesArg::User => Approver::User,
        FourEyesArg::SecondAdmin => Approver::SecondAdmin,
    });
    anyhow::ensure!(
        args.admin_idle_timeout_s >= 1
            && args.admin_idle_timeout_s <= args.admin_session_lifetime_s,
        "--admin-idle-timeout-s must be at least 1 and at most --admin-session-lifetime-s"
    );
    config.admin_idle_timeout = Duration::from_secs(args.admin_idle_timeout_s);
    config.admin_session_lifetime = Duration::from_secs(args.admin_session_lifetime_s);
    config.smtp_url = args.smtp_url;
    config.metrics = args.metrics;
    config.drain_grace = Duration::from_secs(args.drain_grace_s);
    config.drain_spread = Duration::from_secs(args.drain_spread_s);
    config.audit_webhook = args
        .audit_webhook_url
        .zip(args.audit_webhook_secret_file)
        .map(
            |(url, secret_file)| obr_relay::audit_webhook::WebhookConfig {
                url,
                secret_file,
                ca_file: args.audit_webhook_ca,
                heartbeat: Duration::from_secs(args.audit_webhook_heartbeat_s),
            },
        );
    config.mail_from = args.mail_from;
    config.workers = args.workers;
    config.demo_org = args.demo_org;
    config.audit_key_file = args.audit_key_file;
    config.audit_checkpoints = args.audit_checkpoints;
    let relay = Relay::open(config)
        .await
        .context("cannot start the relay")?;
    if let Some(org) = relay.demo_org() {
        // Its secrets stay in the file (0600), not in a log.
        println!(
            "demo organisation: admin {}, password and TOTP secret in {}",
            org.admin_email,
            demo_file.display()
        );
    }
    println!("obr-relay listening on {addr}");
    relay.run(listener, shutdown_signal()).await?;
    Ok(())
}

/// `obr-relay admin create`.
async fn create_admin(
    data_dir: &std::path::Path,
    cluster_key: &std::path::Path,
    email: &str,
    name: &str,
    role: RoleArg,
    groups: &[String],
) -> anyhow::Result<()> {
    let role = match role {
        RoleArg::Owner => Role::Owner,
        RoleArg::Operator => Role::Operator,
        RoleArg::Auditor => Role::Auditor,
    };
    let scope = if groups.is_empty() {
        Scope::AllUsers
    } else {
        Scope::Groups(valid_groups(groups.iter().map(String::as_str))?)
    };
    let (email, name) = (email.trim(), name.trim());
    if email.is_empty() || email.len() > 254 || !email.contains('@') {
        anyhow::bail!("--email must look like name@domain");
    }
    if name.is_empty() || name.len() > 128 {
        anyhow::bail!("--name must be 1-128 characters");
    }
    let (directory, sealer) = open_directory(data_dir, cluster_key).await?;
    let grants = Grants::new(directory.clone(), &sealer);
    let password = obr_relay::auth::new_password()?;
    let hash = obr_relay::auth::hash_password(&password)?;
    let grant = Grant { role, scope };
    let admin = grants
        .create_admin(email, name, &hash, &grant)
        .await
        .with_context(|| format!("cannot create admin {email} (does the email exist already?)"))?;
    anyhow::ensure!(
        grants.admin(&admin.person.id).await?.is_some(),
        "the grant written for {email} does not verify"
    );
    directory
        .audit(
            "obr-relay admin create",
            "admin.created",
            email,
            serde_json::json!({ "admin_id": admin.person.id, "grant": grant }),
        )
        .await?;
    println!(
        "created {} {email} (id {})",
        grant.role.as_str(),
        admin.person.id
    );
    println!("password, shown once: {password}");
    let enrolment = SecondFactor::new(directory, &sealer)
        .enrol(&admin.person)
        .await?;
    print_enrolment(&enrolment);
    Ok(())
}

fn print_enrolment(enrolment: &Enrolment) {
    println!(
        "TOTP secret, shown once (add it to an authenticator app): {}",
        enrolment.secret_base32.as_str()
    );
    println!(
        "otpauth URI (for a QR code): {}",
        enrolment.otpauth_uri.as_str()
    );
}

/// The relay's directory in `data_dir` and the deployment's cluster key,
/// for the `admin` commands.
async fn open_directory(
    data_dir: &std::path::Path,
    cluster_key: &std::path::Path,
) -> anyhow::Result<(Directory, Sealer)> {
    obr_relay::files::private_dir(data_dir)
        .with_context(|| format!("data directory {}", data_dir.display()))?;
    let database = data_dir.join(obr_relay::DIRECTORY_FILE);
    obr_relay::files::private_file(&database)
        .with_context(|| format!("database {}", database.display()))?;
    let directory = Directory::open(&database).await?;
    // A new key for a directory that has people would seal a grant no
    // relay of this deployment can verify: the path must be wrong.
    if !cluster_key.exists() && !directory.is_empty().await? {
        anyhow::bail!(
            "no cluster key at {}, but {} has people: give the deployment's key with \
             --cluster-key-file",
            cluster_key.display(),
            database.display()
        );
    }
    let sealer = Sealer::load_or_create(cluster_key)?;
    Ok((directory, sealer))
}

/// `obr-relay admin reset-totp`.
async fn reset_totp(
    data_dir: &std::path::Path,
    cluster_key: &std::path::Path,
    email: &str,
) -> anyhow::Result<()> {
    let (directory, sealer) = open_directory(data_dir, cluster_key).await?;
    let (person, _) = directory
        .admin_credentials(email.trim())
        .await?
        .with_context(|| format!("no admin with email {email}"))?;
    let enrolment = SecondFactor::new(directory.clone(), &sealer)
        .enrol(&person)
        .await?;
    directory
        .audit(
            "obr-relay admin reset-totp",
            "admin.totp_reset",
            &person.email,
            serde_json::json!({ "admin_id": person.id }),
        )
        .await?;
    println!("new second factor for {} (id {})", person.email, person.id);
    print_enrolment(&enrolment);
    Ok(())
}

/// `obr-relay audit verify`.
async fn verify_audit(
    data_dir: &std::path::Path,
    checkpoints: Option<PathBuf>,
    public_key: Option<PathBuf>,
) -> anyhow::Result<()> {
    use base64::Engine;
    let database = data_dir.join(obr_relay::DIRECTORY_FILE);
    if !database.exists() {
        anyhow::bail!("no relay database at {}", database.display());
    }
    let checkpoints = checkpoints.unwrap_or_else(|| data_dir.join(anchor::CHECKPOINTS_FILE));
    let public_key = public_key.unwrap_or_else(|| data_dir.join(anchor::PUBLIC_KEY_FILE));
    let text = std::fs::read_to_string(&checkpoints)
        .with_context(|| format!("reading checkpoints {}", checkpoints.display()))?;
    let key = std::fs::read_to_string(&public_key)
        .with_context(|| format!("reading public key {}", public_key.display()))?;
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(key.trim())
        .with_context(|| format!("{} is not base64url", public_key.display()))?;
    let directory = Directory::open(&database).await?;
    let why = match anchor::verify(&directory, &text, &key).await? {
        Verdict::Intact {
            records,
            checkpoints,
        } => {
            println!("audit log intact: {records} records, {checkpoints} signed checkpoints hold");
            return Ok(());
        }
        Verdict::ChainBroken { seq } => {
            format!("the hash chain breaks at record {seq} (edited or removed)")
        }
        Verdict::Missing { seq } => format!(
            "record {seq}, signed in a checkpoint, is gone (removed, or the log was truncated)"
        ),
        Verdict::Rewritten { seq } => {
            format!("record {seq} differs from its signed checkpoint (rewritten and rehashed)")
        }
        Verdict::BadCheckpoint { line } => format!(
            "checkpoint on line {line} of {} is not signed by the trusted key",
            checkpoints.display()
        ),
    };
    println!("audit log TAMPERED: {why}");
    std::process::exit(1);
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on Ctrl+C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// `obr-relay pki init`: say what was made and what was kept.
fn init_pki(dir: &std::path::Path, hosts: &[String]) -> anyhow::Result<()> {
    let report = obr_relay::pki::LocalPki::new(dir).init(hosts)?;
    for path in &report.created {
        println!("created {}", path.display());
    }
    for path in &report.kept {
        println!("kept    {}", path.display());
    }
    Ok(())
}

/// Logs on stdout: `OBR_LOG_FORMAT=json` writes one JSON object per line
/// (for a log collector), otherwise text, coloured only on a terminal.
/// `RUST_LOG` filters (default `info,h2=warn,tower=warn`).
fn init_logging(default_filter: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    if std::env::var("OBR_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        logs.json()
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        logs.with_ansi(std::io::stdout().is_terminal()).init();
    }
}
