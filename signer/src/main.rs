//! `obr-signer`: parse flags (or `OBR_SIGNER_*` environment variables), open
//! the signer, bind, print `obr-signer listening on ADDR`, and serve until
//! SIGINT or SIGTERM. Everything else lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use obr_signer::config::{DEFAULT_AAGUID, DEFAULT_DB_MAX_CONNECTIONS, DEFAULT_IDLE_PASSIVATION};
use obr_signer::{Kek, SignerConfig, SignerCore};
use tracing_subscriber::EnvFilter;

/// Environment variable that may hold the KEK itself (hex), overriding
/// `--kek-file` (for secret stores that inject environment variables).
const KEK_ENV: &str = "OBR_SIGNER_KEK";

/// Every user's cloud-held FIDO2 security key, served over gRPC.
#[derive(Debug, Parser)]
#[command(name = "obr-signer", version)]
struct Args {
    /// Address to serve gRPC on.
    #[arg(long, env = "OBR_SIGNER_LISTEN", default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// `sqlite://path?mode=rwc` (created if missing) or `sqlite::memory:`.
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();

    let kek = if std::env::var_os(KEK_ENV).is_some() {
        Kek::from_env(KEK_ENV)?
    } else {
        Kek::load_or_create(&args.kek_file)?
    };
    let config = SignerConfig {
        aaguid: args.aaguid.map_or(DEFAULT_AAGUID, |u| *u.as_bytes()),
        idle_passivation: Duration::from_secs(args.idle_passivation_secs),
        actor_threads: args.actor_threads,
        db_max_connections: args.db_max_connections,
        ..SignerConfig::embedded(args.database_url, kek)
    };
    let core = SignerCore::open(config).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("obr-signer listening on {addr}");
    obr_signer::serve(core.clone(), listener, shutdown_signal()).await?;
    core.shutdown().await;
    tracing::info!("obr-signer stopped");
    Ok(())
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
