//! `obr-signer`: parse flags (or `OBR_SIGNER_*` environment variables), open
//! the signer, bind, print `obr-signer listening on ADDR`, and serve until
//! SIGINT or SIGTERM. Two maintenance subcommands: `new-kek` creates a KEK
//! file, `rotate-kek` re-wraps every data key under a new KEK while signers
//! run. Everything else lives in the library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use obr_signer::config::{DEFAULT_AAGUID, DEFAULT_DB_MAX_CONNECTIONS, DEFAULT_IDLE_PASSIVATION};
use obr_signer::placement::Placement;
use obr_signer::{
    AttestationCa, AttestationConfig, DEFAULT_ROTATION_BATCH, Kek, RedisEndpoint, RotationProgress,
    SignerConfig, SignerCore,
};

/// Environment variable that may hold the KEK itself (hex), overriding
/// `--kek-file` (for secret stores that inject environment variables).
const KEK_ENV: &str = "OBR_SIGNER_KEK";

/// Every user's cloud-held FIDO2 security key, served over gRPC.
#[derive(Debug, Parser)]
#[command(name = "obr-signer", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new random KEK file (hex, mode 0600) and print its id.
    NewKek {
        /// Where to write it; an existing file is never overwritten.
        #[arg(long)]
        kek_file: PathBuf,
    },
    /// Re-wrap every user's data key under a new KEK, in small batches,
    /// while signers keep serving. Idempotent: run it again to resume.
    RotateKek(RotateArgs),
}

/// Serve gRPC (the default command).
#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to serve gRPC on.
    #[arg(long, env = "OBR_SIGNER_LISTEN", default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// `sqlite://path?mode=rwc` (created if missing), `sqlite::memory:` or
    /// `postgres://user@host:port/database`.
    #[arg(
        long,
        env = "OBR_SIGNER_DATABASE_URL",
        default_value = "sqlite://obr-signer.db?mode=rwc"
    )]
    database_url: String,
    /// File holding the hex KEK; created (mode 0600) if missing. Ignored when
    /// OBR_SIGNER_KEK is set.
    #[arg(long, env = "OBR_SIGNER_KEK_FILE", default_value = "obr-signer.kek")]
    kek_file: PathBuf,
    #[command(flatten)]
    previous_keks: PreviousKeks,
    /// AAGUID reported to browsers (default: obr's own).
    #[arg(long, env = "OBR_SIGNER_AAGUID")]
    aaguid: Option<uuid::Uuid>,
    /// Seconds a user's actor stays active without traffic.
    #[arg(long, env = "OBR_SIGNER_IDLE_PASSIVATION_SECS", default_value_t = DEFAULT_IDLE_PASSIVATION.as_secs())]
    idle_passivation_secs: u64,
    /// Threads running user actors; 0 = one per core.
    #[arg(long, env = "OBR_SIGNER_ACTOR_THREADS", default_value_t = 0)]
    actor_threads: usize,
    /// Pooled database connections.
    #[arg(long, env = "OBR_SIGNER_DB_MAX_CONNECTIONS", default_value_t = DEFAULT_DB_MAX_CONNECTIONS)]
    db_max_connections: u32,
    /// Attestation of new credentials: `none`, or `packed` with an x5c
    /// chain to the attestation CA.
    #[arg(long, env = "OBR_SIGNER_ATTESTATION", value_enum, default_value_t = AttestationMode::None)]
    attestation: AttestationMode,
    /// The attestation CA certificate (PEM) for `packed`; created with
    /// its key on first start when neither file exists.
    #[arg(
        long,
        env = "OBR_SIGNER_ATTESTATION_CA_CERT",
        default_value = "obr-signer-attestation-ca.pem"
    )]
    attestation_ca_cert: PathBuf,
    /// The attestation CA key (PEM PKCS#8 P-256, mode 0600) for `packed`.
    #[arg(
        long,
        env = "OBR_SIGNER_ATTESTATION_CA_KEY",
        default_value = "obr-signer-attestation-ca.key"
    )]
    attestation_ca_key: PathBuf,
    /// Redis for membership and per-user leases, when several signers
    /// share the users (relays then use `--discover-signers`).
    /// (`redis://…`, or `rediss://…` for TLS; an ACL user and password go
    /// in the URL.)
    #[arg(long, env = "OBR_SIGNER_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// PEM CA that signed the Redis server's certificate (`rediss://`;
    /// default: the system's roots).
    #[arg(long, env = "OBR_SIGNER_REDIS_CA", requires = "redis_url")]
    redis_ca: Option<PathBuf>,
    /// PEM client certificate for a Redis server that authenticates
    /// clients (`tls-auth-clients yes`).
    #[arg(
        long,
        env = "OBR_SIGNER_REDIS_CLIENT_CERT",
        requires_all = ["redis_client_key", "redis_url"]
    )]
    redis_client_cert: Option<PathBuf>,
    /// The client certificate's PEM private key.
    #[arg(
        long,
        env = "OBR_SIGNER_REDIS_CLIENT_KEY",
        requires_all = ["redis_client_cert", "redis_url"]
    )]
    redis_client_key: Option<PathBuf>,
    #[arg(long, env = "OBR_SIGNER_REDIS_PREFIX", default_value = "obr:")]
    redis_prefix: String,
    /// The URL relays reach this signer at (default: http://LISTEN address).
    #[arg(long, env = "OBR_SIGNER_ADVERTISE_URL")]
    advertise_url: Option<String>,
    /// Whether an admin's OBR session stands for user verification when a
    /// platform asks for it (`false`: such requests are refused).
    #[arg(long, env = "OBR_SIGNER_OBR_STANDS_FOR_UV", default_value_t = true, action = clap::ArgAction::Set)]
    obr_stands_for_uv: bool,
    /// Mutual TLS with the relays: this signer's certificate chain (PEM)…
    #[arg(long, env = "OBR_SIGNER_TLS_CERT", requires_all = ["tls_key", "client_ca"])]
    tls_cert: Option<PathBuf>,
    /// …its private key (PEM)…
    #[arg(long, env = "OBR_SIGNER_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// …and the CA (PEM) whose client certificates relays present; no other
    /// client gets a connection.
    #[arg(long, env = "OBR_SIGNER_CLIENT_CA", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// The key relays MAC owner approvals with (64 hex characters, mode
    /// 0600; the relays' --approval-key-file). Without it, normal-mode
    /// calls that need the owner's approval are refused.
    #[arg(long, env = "OBR_SIGNER_APPROVAL_KEY_FILE")]
    approval_key_file: Option<PathBuf>,
    /// Serve plaintext gRPC (without mutual TLS anyone who reaches the
    /// port, on loopback any local user, can act on every user's key: only
    /// where nothing but relays reaches it, e.g. tests).
    #[arg(long, env = "OBR_SIGNER_INSECURE_PLAINTEXT")]
    insecure_plaintext: bool,
    /// How long a user's lease lasts without renewal, in milliseconds.
    #[arg(long, env = "OBR_SIGNER_LEASE_TTL_MS", default_value_t = obr_signer::placement::DEFAULT_LEASE_TTL.as_millis() as u64)]
    lease_ttl_ms: u64,
    /// Serve gRPC health checking (`grpc.health.v1`, plaintext, nothing
    /// else) on this address, for Kubernetes' `grpc` probes: SERVING, then
    /// NOT_SERVING from the moment it drains.
    #[arg(long, env = "OBR_SIGNER_HEALTH_LISTEN")]
    health_listen: Option<std::net::SocketAddr>,
    /// On SIGTERM, seconds to hand users over and answer the calls in
    /// flight before exiting anyway.
    #[arg(long, env = "OBR_SIGNER_DRAIN_GRACE_S", default_value_t = 20)]
    drain_grace_s: u64,
}

/// `--attestation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AttestationMode {
    None,
    Packed,
}

/// The KEKs before the current one (`serve` and `rotate-kek`).
#[derive(Debug, clap::Args)]
struct PreviousKeks {
    /// A previous KEK (hex file) whose data keys may still be wrapped under
    /// it: unwrapped with it, never wrapped with it; repeatable.
    #[arg(
        long = "previous-kek-file",
        env = "OBR_SIGNER_PREVIOUS_KEK_FILES",
        value_delimiter = ','
    )]
    files: Vec<PathBuf>,
}

/// `obr-signer rotate-kek`.
#[derive(Debug, clap::Args)]
struct RotateArgs {
    /// The signers' database.
    #[arg(long, env = "OBR_SIGNER_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// The new KEK (hex file, must exist: see `new-kek`). Running signers
    /// must already hold it (as --kek-file or --previous-kek-file).
    #[arg(long, env = "OBR_SIGNER_KEK_FILE")]
    kek_file: PathBuf,
    #[command(flatten)]
    previous_keks: PreviousKeks,
    /// Data keys re-wrapped per transaction.
    #[arg(long, default_value_t = DEFAULT_ROTATION_BATCH)]
    batch_size: u32,
}

fn main() -> anyhow::Result<()> {
    init_logging("info");
    let cli = Cli::parse();
    let env_kek = take_env_kek()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cli, env_kek))
}

/// The KEK from `OBR_SIGNER_KEK`, if set, taken out of the environment so
/// that no child process inherits it and no later reader of this process's
/// environment finds it. (`/proc/PID/environ` keeps showing the environment
/// the process started with, to root and its own user: prefer `--kek-file`.)
fn take_env_kek() -> anyhow::Result<Option<Kek>> {
    if std::env::var_os(KEK_ENV).is_none() {
        return Ok(None);
    }
    let kek = Kek::from_env(KEK_ENV)?;
    // SAFETY: called from `main` before the tokio runtime (or any other
    // thread) starts, so nothing reads or writes the environment meanwhile.
    #[expect(
        unsafe_code,
        reason = "remove_var is unsafe in edition 2024; see SAFETY"
    )]
    unsafe {
        std::env::remove_var(KEK_ENV)
    };
    Ok(Some(kek))
}

async fn run(cli: Cli, env_kek: Option<Kek>) -> anyhow::Result<()> {
    match cli.command {
        None => serve(cli.serve, env_kek).await,
        Some(Command::NewKek { kek_file }) => {
            let kek = Kek::create_new(&kek_file)?;
            println!("created KEK {} in {}", kek.id(), kek_file.display());
            Ok(())
        }
        Some(Command::RotateKek(args)) => rotate(args).await,
    }
}

async fn serve(args: ServeArgs, env_kek: Option<Kek>) -> anyhow::Result<()> {
    let current = match env_kek {
        Some(kek) => kek,
        None => Kek::load_or_create(&args.kek_file)?,
    };
    let kek = with_previous(current, &args.previous_keks)?;
    let attestation = match args.attestation {
        AttestationMode::None => AttestationConfig::None,
        AttestationMode::Packed => AttestationConfig::Packed(AttestationCa::load_or_create(
            &args.attestation_ca_cert,
            &args.attestation_ca_key,
        )?),
    };
    let tls = server_tls(&args)?;
    if tls.is_none() && !args.insecure_plaintext {
        anyhow::bail!(
            "refusing to serve relays in plaintext on {}: whoever reaches the port (on \
             loopback, any local user) could act on every user's key; give --tls-cert, \
             --tls-key and --client-ca (mutual TLS; `obr-relay pki init` makes a CA and \
             certificates), or --insecure-plaintext where only relays reach the port",
            args.listen
        );
    }
    // Bind first: the advertised endpoint may need the chosen port.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let placement = match &args.redis_url {
        Some(url) => {
            let redis = RedisEndpoint {
                url: url.clone(),
                ca_file: args.redis_ca.clone(),
                client_cert_file: args.redis_client_cert.clone(),
                client_key_file: args.redis_client_key.clone(),
            };
            let me = args.advertise_url.clone().unwrap_or_else(|| {
                let scheme = if tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{addr}")
            });
            let lease_ttl = Duration::from_millis(args.lease_ttl_ms);
            let placement = Placement::connect(&redis, &args.redis_prefix, &me, lease_ttl)
                .await
                .context("cannot reach Redis for placement")?;
            placement.beat().await.context("first heartbeat")?;
            let heartbeat = tokio::spawn(placement.clone().beat_forever());
            Some((placement, heartbeat))
        }
        None => None,
    };
    let config = SignerConfig {
        placement: placement.as_ref().map(|(p, _)| p.clone()),
        obr_stands_for_uv: args.obr_stands_for_uv,
        attestation,
        aaguid: args.aaguid.map_or(DEFAULT_AAGUID, |u| *u.as_bytes()),
        idle_passivation: Duration::from_secs(args.idle_passivation_secs),
        actor_threads: args.actor_threads,
        db_max_connections: args.db_max_connections,
        approval_key: args
            .approval_key_file
            .as_deref()
            .map(obr_signer::load_key_file)
            .transpose()?,
        ..SignerConfig::embedded(args.database_url, kek)
    };
    let core = SignerCore::open(config).await?;
    println!("obr-signer listening on {addr}");
    let health = match args.health_listen {
        Some(at) => Some(serve_health(at).await?),
        None => None,
    };
    let grace = Duration::from_secs(args.drain_grace_s);
    let terminated = std::sync::Arc::new(tokio::sync::Notify::new());
    let shutdown = {
        let (core, terminated) = (core.clone(), terminated.clone());
        async move {
            shutdown_signal().await;
            terminated.notify_one();
            if let Some(health) = &health {
                health
                    .set_service_status("", tonic_health::ServingStatus::NotServing)
                    .await;
            }
            drain(&core, placement).await;
        }
    };
    let serve = obr_signer::serve_tls(core.clone(), listener, tls, shutdown);
    tokio::pin!(serve);
    tokio::select! {
        served = &mut serve => served?,
        () = async { terminated.notified().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "drain grace over: exiting with links still open");
        }
    }
    core.shutdown().await;
    tracing::info!("obr-signer stopped");
    Ok(())
}

/// The health service on its own plaintext listener (so a probe needs no
/// client certificate, and reaches nothing but health).
async fn serve_health(
    at: std::net::SocketAddr,
) -> anyhow::Result<tonic_health::server::HealthReporter> {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind(at)
        .await
        .with_context(|| format!("binding the health port {at}"))?;
    tracing::info!(at = %listener.local_addr()?, "health checking served");
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await
        {
            tracing::error!(error = %e, "the health port stopped");
        }
    });
    Ok(reporter)
}

/// Relays re-read the membership every 500 ms: after this, none routes a
/// new user here.
const HANDOVER_DELAY: Duration = Duration::from_millis(1500);

/// SIGTERM: leave the membership (relays route to the other signers),
/// hand every active user over (their leases given up, so a successor
/// serves them at once), then end the relays' links once their calls in
/// flight are answered; the server then stops.
async fn drain(core: &SignerCore, placement: Option<(Placement, tokio::task::JoinHandle<()>)>) {
    let started = tokio::time::Instant::now();
    if let Some((placement, heartbeat)) = placement {
        heartbeat.abort();
        if let Err(e) = placement.leave().await {
            tracing::warn!(error = %e, "cannot leave the signer membership");
        }
        tracing::info!("draining: left the membership; relays move their users");
        tokio::time::sleep(HANDOVER_DELAY).await;
    }
    let users = core.hand_over().await;
    core.close_links();
    tracing::info!(users, took = ?started.elapsed(), "users handed over; closing the links");
}

/// The mutual-TLS configuration `--tls-cert/--tls-key/--client-ca` ask for.
fn server_tls(args: &ServeArgs) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let (Some(cert), Some(key), Some(ca)) = (&args.tls_cert, &args.tls_key, &args.client_ca) else {
        return Ok(None);
    };
    let read =
        |path: &PathBuf| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    Ok(Some(
        ServerTlsConfig::new()
            .identity(Identity::from_pem(read(cert)?, read(key)?))
            .client_ca_root(Certificate::from_pem(read(ca)?)),
    ))
}

async fn rotate(args: RotateArgs) -> anyhow::Result<()> {
    let kek = with_previous(Kek::load(&args.kek_file)?, &args.previous_keks)?;
    println!(
        "rotate-kek: re-wrapping data keys under KEK {} in batches of {}",
        kek.id(),
        args.batch_size
    );
    let report = obr_signer::rotate_kek(&args.database_url, &kek, args.batch_size, |p| {
        println!("rotate-kek: {}", progress_line(p));
    })
    .await?;
    println!(
        "rotate-kek: done: {}; {} data keys under KEK {}",
        progress_line(&report.totals),
        report.current,
        report.kek_id
    );
    let mut left = 0;
    for (kek_id, users) in &report.remaining {
        println!(
            "rotate-kek: {users} data keys remain under KEK {kek_id}{}",
            if kek.ids().any(|id| id == kek_id) {
                " (changed during the run, or do not open: see the log; run again)"
            } else {
                " (not held: add it with --previous-kek-file)"
            }
        );
        left += users;
    }
    if left > 0 {
        anyhow::bail!("{left} data keys are not under KEK {} yet", report.kek_id);
    }
    Ok(())
}

fn progress_line(p: &RotationProgress) -> String {
    format!(
        "{} re-wrapped, {} changed meanwhile (retried), {} skipped",
        p.rewrapped, p.raced, p.skipped
    )
}

/// `current` plus the KEKs in `previous` (existing files), logged by id.
fn with_previous(current: Kek, previous: &PreviousKeks) -> anyhow::Result<Kek> {
    let kek = previous
        .files
        .iter()
        .try_fold(current, |kek, path: &PathBuf| {
            Ok::<_, anyhow::Error>(kek.with_previous(Kek::load(Path::new(path))?))
        })?;
    tracing::info!(kek_ids = ?kek.ids().collect::<Vec<_>>(), "KEKs loaded (current first)");
    Ok(kek)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM; stopping on SIGINT only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Logs on stderr: `OBR_LOG_FORMAT=json` writes one JSON object per line
/// (for a log collector), otherwise text, coloured only on a terminal.
/// `RUST_LOG` filters (default `info`).
fn init_logging(default_filter: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("OBR_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        logs.json()
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        logs.with_ansi(std::io::stderr().is_terminal()).init();
    }
}
