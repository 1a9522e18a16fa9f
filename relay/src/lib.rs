//! obr-relay: the hub between admins' agents and users' signers.
//!
//! Stateless itself: durable state is in the directory (SQLite/PostgreSQL),
//! ephemeral state in the session store (memory/Redis), keys in signers.
//! Run as many relays as you like behind a load balancer.
//!
//! Layout:
//! - [`agents`] — the agent WebSocket (`/agent/ws`): one actor per agent,
//!   which proves the agent's key and moves frames.
//! - [`calls`] — one CTAP request's use case: check the session, route,
//!   ask the owner, record.
//! - [`routing`] — which signer holds a user's key; the multiplexed links.
//! - [`obr`] — the OBR rules and the record of every transition.
//! - [`api`] — the admin/user HTTP API (`/api/*`).
//! - [`pages`] — the pages: admin panel (`/panel/`) and user app (`/app/`).
//! - [`phones`] — the user app's live feed (`/api/me/live`).
//! - [`sessions`] — the session store trait, memory and Redis.
//! - [`directory`] — people, invitations, audit log, notifications.
//! - [`files`] — the data directory and databases, private to the relay.
//! - [`pki`] — a deployment CA and its certificates for setups without a
//!   PKI of their own (`obr-relay pki init`).
//! - [`mail`] — mail to people (invitations), out of band: an outbox folder.
//! - [`limits`] — backoff on guessing (logins, login codes), argon2 slots.
//! - [`auth`] — tokens, codes, password hashes.
//! - [`demo`] — the demo organisation for the first README command.
//! - [`audit_webhook`] — the audit log, signed, to the organisation's URL.
//! - [`health`] — `/healthz` and `/readyz`; [`metrics`] — `/metrics`;
//!   [`access_log`] — a line and a request id per HTTP request.

pub mod access_log;
pub mod agents;
pub mod api;
pub mod audit_webhook;
pub mod auth;
pub mod calls;
pub mod clock;
pub mod config;
pub mod demo;
pub mod directory;
pub mod files;
pub mod health;
pub mod limits;
pub mod mail;
pub mod metrics;
pub mod obr;
pub mod pages;
pub mod phones;
pub mod pki;
pub mod routing;
pub mod sessions;
pub mod state;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, web};
use futures_util::StreamExt;

use crate::agents::AgentRegistry;
use crate::calls::Calls;
pub use crate::config::RelayConfig;
use crate::directory::Directory;
use crate::directory::anchor::{self, AuditAnchor};
use crate::directory::grants::Grants;
use crate::directory::second_factor::SecondFactor;
use crate::limits::Limits;
use crate::mail::{Mailer, Outbox};
use crate::obr::Obr;
use crate::phones::Phones;
use crate::routing::Router;
use crate::sessions::{AgentEvent, MemoryStore, RedisStore, Sealer, SessionStore};
use crate::state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Directory(#[from] directory::DirectoryError),
    #[error(transparent)]
    Store(#[from] sessions::StoreError),
    #[error(transparent)]
    ClusterKey(#[from] sessions::seal::ClusterKeyError),
    #[error("audit anchor: {0}")]
    Anchor(#[from] directory::anchor::AnchorError),
    #[error(transparent)]
    Routing(#[from] routing::LinkError),
    #[error("--discover-signers needs --redis-url (signers announce themselves there)")]
    DiscoveryNeedsRedis,
    #[error(
        "standalone signers need mutual TLS: give --signer-ca, --signer-client-cert and \
         --signer-client-key (`obr-relay pki init` makes them), or --insecure-plaintext-signers \
         where nothing but relays and signers reach the network"
    )]
    PlaintextSigners,
    #[error("mail: {0}")]
    Mail(#[from] mail::MailError),
    #[error(transparent)]
    AuditWebhook(#[from] audit_webhook::WebhookError),
    #[error("embedded signer: {0}")]
    Signer(String),
    #[error(transparent)]
    Demo(#[from] demo::DemoError),
    #[error("http server: {0}")]
    Http(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
}

/// The cluster key's default file, in the data directory (relays that
/// share a Redis must share it: `--cluster-key-file`).
pub const CLUSTER_KEY_FILE: &str = "cluster.key";
/// The directory's SQLite file in the data directory.
pub const DIRECTORY_FILE: &str = "relay.db";

/// The embedded signer's socket, in the data directory.
pub const EMBEDDED_SIGNER_SOCKET: &str = "signer.sock";

/// How long a discovering relay waits at start-up for a live signer.
const SIGNER_DISCOVERY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// A relay that has opened its stores and is about to serve.
pub struct Relay {
    state: web::Data<AppState>,
    /// The in-process signer, when no external one was configured.
    embedded_signer: Option<obr_signer::SignerCore>,
    demo: Option<demo::DemoOrg>,
    /// Delivers the audit log to the organisation's URL, if configured.
    audit_webhook: Option<Arc<audit_webhook::AuditWebhook>>,
}

impl Relay {
    /// Open the directory and session store, start an in-process signer if
    /// none is configured, and seed the demo organisation if asked.
    pub async fn open(config: RelayConfig) -> Result<Self, RelayError> {
        let standalone = !config.signers.is_empty() || config.discover_signers;
        if standalone && config.signer_tls.is_none() && !config.insecure_plaintext_signers {
            // Plaintext would let whoever reaches a signer's port, or (when
            // discovering) writes a member into Redis, receive users' CTAP
            // traffic and approvals: fail closed unless told otherwise.
            return Err(RelayError::PlaintextSigners);
        }
        let data_dir = config.data_dir.display().to_string();
        let data_dir_err = |source| RelayError::DataDir {
            path: data_dir.clone(),
            source,
        };
        files::private_dir(&config.data_dir).map_err(data_dir_err)?;
        let relay_db = config.data_dir.join(DIRECTORY_FILE);
        files::private_file(&relay_db).map_err(data_dir_err)?;
        let directory = Directory::open(&relay_db).await?;
        // The cluster key seals admins' grants in the directory, and every
        // value in Redis when there is one.
        let sealer = Sealer::load_or_create(&config.cluster_key_path())?;
        let grants = Grants::new(directory.clone(), &sealer);
        let second_factor = SecondFactor::new(directory.clone(), &sealer);
        let store: Arc<dyn SessionStore> = match &config.redis {
            Some(redis) => {
                Arc::new(RedisStore::connect(redis, &config.redis_prefix, sealer).await?)
            }
            None => Arc::new(MemoryStore::new()),
        };
        let mut config = config;
        let mut embedded_signer = None;
        // Owner approvals are MACed for the signers: a fresh key shared
        // in-process with the embedded signer, or the deployment's file.
        let mut approval_key = config
            .approval_key_file
            .as_deref()
            .map(obr_signer::load_key_file)
            .transpose()
            .map_err(|e| RelayError::Signer(e.to_string()))?;
        let signer_tls = config.signer_tls.as_ref().map(signer_tls).transpose()?;
        let router = match (&config.redis, config.discover_signers) {
            _ if !config.signers.is_empty() => Router::new(&config.signers, signer_tls)?,
            (Some(redis), true) => {
                Router::discover(
                    redis,
                    &config.redis_prefix,
                    SIGNER_DISCOVERY_WAIT,
                    signer_tls,
                )
                .await?
            }
            (None, true) => return Err(RelayError::DiscoveryNeedsRedis),
            (_, false) => {
                let key = random_approval_key()?;
                approval_key = Some(key);
                let (core, endpoint) = start_embedded_signer(&config, key).await?;
                config.signers.push(endpoint);
                embedded_signer = Some(core);
                Router::new(&config.signers, None)?
            }
        };
        let config = Arc::new(config);
        let obr = Obr::new(
            directory.clone(),
            store.clone(),
            config.obr_ttl,
            config.obr_four_eyes,
        );
        // Checked before anything serves: a webhook that cannot work is a
        // configuration error, not a log that silently goes nowhere.
        let audit_webhook = config
            .audit_webhook
            .as_ref()
            .map(audit_webhook::AuditWebhook::new)
            .transpose()?
            .map(Arc::new);
        let mail = match &config.smtp_url {
            Some(url) => Mailer::smtp(url, &config.mail_from)?,
            None => {
                Mailer::Outbox(Outbox::open(&config.data_dir.join("outbox")).map_err(data_dir_err)?)
            }
        };
        let anchor = AuditAnchor::open(
            &config
                .audit_key_file
                .clone()
                .unwrap_or_else(|| config.data_dir.join(anchor::SIGNING_KEY_FILE)),
            &config
                .audit_checkpoints
                .clone()
                .unwrap_or_else(|| config.data_dir.join(anchor::CHECKPOINTS_FILE)),
        )?;
        let state = web::Data::new(AppState {
            mail,
            anchor,
            limits: Limits::default(),
            calls: Calls::new(
                store.clone(),
                router.clone(),
                obr.clone(),
                grants.clone(),
                approval_key,
            ),
            obr,
            config,
            directory,
            grants,
            second_factor,
            store,
            router,
            agents: AgentRegistry::default(),
            phones: Phones::default(),
            draining: Default::default(),
            metrics: Default::default(),
        });
        let demo = if state.config.demo_org {
            demo::ensure(&state).await?
        } else {
            None
        };
        Ok(Self {
            state,
            embedded_signer,
            demo,
            audit_webhook,
        })
    }

    pub fn demo_org(&self) -> Option<&demo::DemoOrg> {
        self.demo.as_ref()
    }

    /// Serve on `listener` until `shutdown` resolves.
    pub async fn run(
        self,
        listener: std::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), RelayError> {
        let state = self.state;
        let pump = tokio::spawn(pump_events(state.clone()));
        let inbox = tokio::spawn(forward_inbox(state.clone()));
        let sweeper = tokio::spawn(sweep(state.clone()));
        let outbox = tokio::spawn(sweep_outbox(state.clone()));
        let checkpoints = tokio::spawn(checkpoint_audit(state.clone()));
        let webhook = self.audit_webhook.clone().map(|webhook| {
            let directory = state.directory.clone();
            tokio::spawn(async move { webhook.run(directory).await })
        });
        let workers = match state.config.workers {
            0 => std::thread::available_parallelism().map_or(2, usize::from),
            n => n,
        };
        let app_state = state.clone();
        listener.set_nonblocking(true)?;
        let server = actix_web::HttpServer::new(move || {
            App::new()
                .wrap(actix_web::middleware::from_fn(access_log::access_log))
                .app_data(app_state.clone())
                .route("/healthz", web::get().to(health::live))
                .route("/readyz", web::get().to(health::ready))
                .route("/metrics", web::get().to(metrics::scrape))
                .route("/agent/ws", web::get().to(agents::agent_socket))
                .configure(api::configure)
                .configure(pages::configure)
        })
        .workers(workers)
        // What is left of the grace period after the agents moved.
        .shutdown_timeout(SERVER_STOP_TIMEOUT.as_secs())
        .disable_signals();
        let server = match &state.config.tls {
            Some(files) => server.listen_rustls_0_23(listener, tls_config(files)?)?,
            None => server.listen(listener)?,
        }
        .run();
        let handle = server.handle();
        tracing::info!(url = %state.config.public_url, "obr-relay serving");
        let mut server = std::pin::pin!(server);
        tokio::select! {
            result = &mut server => result?,
            () = shutdown => {
                drain(&state).await;
                // The stop is a command the server future itself carries
                // out: ask, then drive it until it is done.
                let stopped = handle.stop(true);
                server.await?;
                stopped.await;
            }
        }
        pump.abort();
        inbox.abort();
        sweeper.abort();
        outbox.abort();
        checkpoints.abort();
        if let (Some(task), Some(webhook)) = (webhook, &self.audit_webhook) {
            task.abort();
            // Wait until it is gone: a renewal it had started must not
            // take the lease back after the release.
            let _ = task.await;
            // Another relay delivers from where this one stopped, at once.
            webhook.release(&state.directory).await;
        }
        // The last records get their checkpoint before the relay goes.
        if let Err(e) = state.anchor.checkpoint(&state.directory).await {
            tracing::error!(error = %e, "cannot write the final audit checkpoint");
        }
        drop(self.embedded_signer);
        Ok(())
    }
}

/// After the agents moved, how long open HTTP requests get to finish
/// before the server closes every connection (idle keep-alive ones and the
/// user apps' feeds, which reconnect elsewhere, hold it this long at most).
pub const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// SIGTERM: fail readiness, refuse new agents, move the connected ones to
/// other relays in jittered batches once each has nothing in flight, and
/// wait for them to go, within `drain_grace`.
async fn drain(state: &AppState) {
    state
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let (grace, spread) = (state.config.drain_grace, state.config.drain_spread);
    let agents = state.agents.count();
    tracing::info!(
        agents,
        ?grace,
        ?spread,
        "draining: moving agents to other relays"
    );
    let started = tokio::time::Instant::now();
    let deadline = started + grace;
    let moving = state.agents.drain(spread);
    let gone = async {
        while state.agents.count() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let done = tokio::time::timeout_at(deadline, async { tokio::join!(moving, gone) }).await;
    match done {
        Ok(_) => tracing::info!(agents, took = ?started.elapsed(), "drained"),
        Err(_) => tracing::warn!(
            left = state.agents.count(),
            ?grace,
            "drain grace over: closing the agents still busy"
        ),
    }
}

/// Hand every event from the store to the local agents and user apps it
/// concerns, until the store's stream ends (it re-subscribes by itself on
/// loss, and says so with a resync).
async fn pump_events(state: web::Data<AppState>) {
    let mut events = match state.store.subscribe().await {
        Ok(events) => events,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to events");
            return;
        }
    };
    while let Some(event) = events.next().await {
        match &event {
            AgentEvent::InboxChanged { person_id } => state.phones.wake(person_id),
            AgentEvent::Resync => state.phones.wake_all(),
            AgentEvent::LoginChanged { .. } | AgentEvent::ModeChanged { .. } => {}
        }
        state.agents.deliver(event);
    }
}

/// Tell every pod (this one too) whose inbox this process just wrote to.
async fn forward_inbox(state: web::Data<AppState>) {
    let mut changes = state.directory.inbox_changes();
    loop {
        let person_id = match changes.recv().await {
            Ok(person_id) => person_id,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    lost = n,
                    "inbox signals lost; phones re-read on their interval"
                );
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        if let Err(e) = state
            .store
            .publish(&AgentEvent::InboxChanged { person_id })
            .await
        {
            tracing::warn!(error = %e, "cannot signal an inbox change; phones re-read on their interval");
        }
    }
}

/// rustls with ring (the one crypto provider in the tree), TLS 1.2+.
fn tls_config(files: &config::TlsFiles) -> Result<rustls::ServerConfig, RelayError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let tls_err = |what: &str, e: &dyn std::fmt::Display| RelayError::Tls(format!("{what}: {e}"));
    let chain = CertificateDer::pem_file_iter(&files.cert_chain)
        .map_err(|e| tls_err(&files.cert_chain.display().to_string(), &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(&files.cert_chain.display().to_string(), &e))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| tls_err(&files.key.display().to_string(), &e))?;
    rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| tls_err("protocol versions", &e))?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| tls_err("certificate and key", &e))
}

/// The relay's side of mutual TLS with standalone signers.
fn signer_tls(
    files: &config::SignerTlsFiles,
) -> Result<tonic::transport::ClientTlsConfig, RelayError> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| RelayError::Tls(format!("{}: {e}", path.display())))
    };
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&files.ca)?))
        .identity(Identity::from_pem(read(&files.cert)?, read(&files.key)?)))
}

/// A fresh random approval key (for the embedded signer, shared in-process).
fn random_approval_key() -> Result<[u8; obr_proto::approval::KEY_LEN], RelayError> {
    use ring::rand::SecureRandom;
    let mut key = [0u8; obr_proto::approval::KEY_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| RelayError::Signer("the system random generator failed".into()))?;
    Ok(key)
}

async fn start_embedded_signer(
    config: &RelayConfig,
    approval_key: [u8; obr_proto::approval::KEY_LEN],
) -> Result<(obr_signer::SignerCore, String), RelayError> {
    let signer_err = |e: &dyn std::fmt::Display| RelayError::Signer(e.to_string());
    let kek = obr_signer::Kek::load_or_create(&config.data_dir.join("signer-kek.key"))
        .map_err(|e| signer_err(&e))?;
    let signer_db = config.data_dir.join("signer.db");
    files::private_file(&signer_db).map_err(|e| signer_err(&e))?;
    let signer_config = obr_signer::SignerConfig {
        approval_key: Some(approval_key),
        ..obr_signer::SignerConfig::embedded(
            format!("sqlite://{}?mode=rwc", signer_db.display()),
            kek,
        )
    };
    let core = obr_signer::SignerCore::open(signer_config)
        .await
        .map_err(|e| signer_err(&e))?;
    // A UNIX socket in the private data directory, mode 0600: only this
    // relay's user reaches the embedded signer — no TCP port that any local
    // user could call ResetKey or a CTAP call on.
    let socket = config.data_dir.join(EMBEDDED_SIGNER_SOCKET);
    match std::fs::remove_file(&socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(RelayError::Signer(format!("{}: {e}", socket.display()))),
    }
    let listener = tokio::net::UnixListener::bind(&socket)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    }
    let endpoint = format!("unix:{}", socket.display());
    let serving = core.clone();
    tokio::spawn(async move {
        if let Err(e) = obr_signer::serve_unix(serving, listener, std::future::pending()).await {
            tracing::error!(error = %e, "embedded signer stopped");
        }
    });
    tracing::info!(%endpoint, "embedded signer started");
    Ok((core, endpoint))
}

/// How often each relay looks in the signers' outbox for on-behalf
/// credentials whose record was never confirmed.
pub const OUTBOX_SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);
/// How old an outbox entry must be before the sweep records it: the live
/// path (which records before the browser hears) has its chance first.
pub const OUTBOX_GRACE: std::time::Duration = std::time::Duration::from_secs(3);
/// Outbox entries recorded per sweep.
const OUTBOX_BATCH: u32 = 100;

/// Record, forever, every on-behalf credential whose live record never
/// happened (cancelled, timed out, relay died), then take it out of the
/// outbox. Exactly once: the directory refuses a second record of a
/// credential; the ack that follows is idempotent.
async fn sweep_outbox(state: web::Data<AppState>) {
    let mut tick = tokio::time::interval(OUTBOX_SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let before = clock::now_ms() - crate::directory::duration_ms(OUTBOX_GRACE);
        let records = match state.router.pending_records(before, OUTBOX_BATCH).await {
            Ok(records) => records,
            Err(e) => {
                tracing::debug!(error = %e, "outbox sweep: signers unavailable");
                continue;
            }
        };
        for record in records {
            match state.obr.registration_recovered(&record).await {
                Ok(recorded) => {
                    if recorded {
                        tracing::warn!(user = %record.user_id, rp_id = %record.rp_id,
                            "recorded an on-behalf registration its request never recorded");
                    }
                    if let Err(e) = state
                        .router
                        .ack_record(&record.user_id, record.credential_id.clone())
                        .await
                    {
                        tracing::warn!(error = %e, "outbox ack failed; retrying next sweep");
                    }
                }
                Err(e) => tracing::error!(error = %e, "outbox sweep cannot record; retrying"),
            }
        }
    }
}

/// Sign the audit chain's head every [`anchor::CHECKPOINT_INTERVAL`] when
/// it moved, forever.
async fn checkpoint_audit(state: web::Data<AppState>) {
    let mut tick = tokio::time::interval(anchor::CHECKPOINT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = state.anchor.checkpoint(&state.directory).await {
            tracing::error!(error = %e, "cannot write an audit checkpoint");
        }
    }
}

/// Expire OBR sessions past their TTL, forever.
async fn sweep(state: web::Data<AppState>) {
    let mut tick = tokio::time::interval(state.config.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match state.obr.expire_due().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "OBR sessions expired"),
            Err(e) => tracing::warn!(error = %e, "OBR expiry sweep failed"),
        }
    }
}
