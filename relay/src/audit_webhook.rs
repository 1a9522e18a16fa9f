//! The audit webhook: every audit record, in order, POSTed to the
//! organisation's own URL (a SIEM's HTTP collector, a ticketing hook) as
//! JSON batches of at most [`MAX_BATCH`] records, each batch signed with
//! HMAC-SHA256 under a secret only the relay and the receiver hold.
//!
//! What a receiver gets: `POST` with `Content-Type: application/json`,
//! body `{"records": [AuditRecord, …], "head": {"seq", "hash"}}` (records
//! oldest first, `seq` contiguous; `head` is the log's newest record when
//! the batch was read), `Obr-Delivery: <first seq>-<last seq>` (or
//! `heartbeat` for a batch without records, sent after
//! [`WebhookConfig::heartbeat`] without one), and
//! `Obr-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`.
//! A receiver checks the MAC in constant time, refuses a `t` far from its
//! clock (a replay), drops records whose `seq` it already holds (delivery
//! is at least once), checks that the next record's `prev_hash` is the
//! last `hash` it stored, and alarms when `head.seq` runs ahead of what it
//! holds for long or when no batch came for a few heartbeats. The hash
//! chain and the signed head show a hole or a silence that anyone — even a
//! database writer who moved the cursor or the lease — made. It answers
//! 2xx once it has stored the batch.
//!
//! Delivery is at least once and in order: the cursor
//! ([`crate::directory::webhook_cursor`]) moves only after a 2xx; until
//! then the same records are sent again, backing off from
//! [`FIRST_RETRY`] to [`MAX_RETRY`]. One relay of a cluster delivers (it
//! holds a lease of [`LEASE`]); another takes over when it stops. The URL
//! and the secret come from the relay's configuration, never from the
//! database, so a database writer cannot point the log elsewhere. This
//! module posts; it does not write the log or decide what is audited.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use ring::hmac;
use serde::Serialize;

use crate::clock::now_ms;
use crate::directory::audit::AuditRecord;
use crate::directory::{Directory, DirectoryError};

/// Records in one POST at most (a receiver that refuses a batch holds up
/// every later record: it is retried until accepted).
pub const MAX_BATCH: i64 = 100;
/// How long a relay holds the right to deliver without renewing it. The
/// holder renews it whenever less than two thirds is left, so a post
/// ([`POST_TIMEOUT`]) and the cursor's move always fall within it.
pub const LEASE: Duration = Duration::from_secs(30);
/// The default [`WebhookConfig::heartbeat`].
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(60);
/// How much of a receiver's answer is read (and dropped).
const MAX_ANSWER: usize = 64 * 1024;
/// A POST that has not answered by then failed.
pub const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// With nothing appended here, look for other relays' records this often.
pub const IDLE_RECHECK: Duration = Duration::from_secs(2);
/// The first wait after a failed delivery; it doubles up to [`MAX_RETRY`].
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between two tries of a batch the receiver refused.
pub const MAX_RETRY: Duration = Duration::from_secs(60);
/// The shortest secret accepted (bytes).
pub const MIN_SECRET_LEN: usize = 32;
/// `t=<unix seconds>,v1=<hex HMAC-SHA256>` over `"<t>." + body`.
pub const SIGNATURE_HEADER: &str = "obr-signature";
/// `<first seq>-<last seq>`, or `heartbeat`.
pub const DELIVERY_HEADER: &str = "obr-delivery";

/// Where the audit log goes, from the relay's configuration.
#[derive(Clone)]
pub struct WebhookConfig {
    /// `https://…` (`http://` only to this machine). It may carry a token:
    /// logs, errors and the database see its origin or a MAC of it only.
    pub url: String,
    /// A file holding the shared secret (at least [`MIN_SECRET_LEN`] bytes).
    pub secret_file: PathBuf,
    /// Trust only this CA (PEM) for the receiver; default: the public
    /// web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// With nothing to deliver, a signed batch without records (and the
    /// log's head) goes out this often, so the receiver can tell silence
    /// from quiet.
    pub heartbeat: Duration,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("to", &origin_of(&self.url))
            .field("secret_file", &self.secret_file)
            .field("ca_file", &self.ca_file)
            .field("heartbeat", &self.heartbeat)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("the audit webhook URL is not an http(s) URL with a host")]
    BadUrl,
    #[error(
        "the audit webhook URL is plain http to another host ({0}): the log and its MACs would travel in clear (use https://)"
    )]
    Plaintext(String),
    #[error("cannot read the audit webhook secret file {path}: {error}")]
    SecretFile { path: String, error: std::io::Error },
    #[error("the audit webhook secret in {0} is shorter than {MIN_SECRET_LEN} bytes")]
    ShortSecret(String),
    #[error("audit webhook CA {path}: {why}")]
    Ca { path: String, why: String },
    #[error("cannot make the audit webhook's TLS client: {0}")]
    Tls(String),
}

/// Why one delivery failed (it is tried again).
#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("the receiver answered {0}")]
    Refused(u16),
    #[error("no answer within {POST_TIMEOUT:?}")]
    Timeout,
    #[error("cannot reach the receiver: {0}")]
    Transport(String),
    #[error("cannot encode the batch: {0}")]
    Encode(#[from] serde_json::Error),
    #[error(transparent)]
    Directory(#[from] DirectoryError),
}

/// What one delivery step did.
enum Step {
    /// A batch was accepted: there may be more.
    Delivered,
    /// Nothing to send (a heartbeat may have gone out).
    Idle,
    /// Another relay holds the lease.
    NotHolder,
}

#[derive(Serialize)]
struct Batch<'a> {
    records: &'a [AuditRecord],
    /// The log's newest record when the batch was read.
    head: Option<Head>,
}

#[derive(Serialize)]
struct Head {
    seq: i64,
    hash: String,
}

pub struct AuditWebhook {
    url: hyper::Uri,
    /// The cursor's key: HMAC-SHA256 of the URL under the secret (the URL
    /// may carry a token: the database holds nothing it could be guessed
    /// from). A new URL or secret starts from the first record.
    target: String,
    /// The URL's scheme, host and port: all that logs show of it.
    origin: String,
    key: hmac::Key,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// This relay, as the lease names it.
    holder: String,
    heartbeat: Duration,
}

impl std::fmt::Debug for AuditWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditWebhook")
            .field("origin", &self.origin)
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

impl AuditWebhook {
    /// Check `config` (an https URL or loopback http, a long enough secret,
    /// a readable CA) and make the client; nothing is sent yet.
    pub fn new(config: &WebhookConfig) -> Result<Self, WebhookError> {
        let parsed = url::Url::parse(&config.url).map_err(|_| WebhookError::BadUrl)?;
        let host = parsed.host().ok_or(WebhookError::BadUrl)?;
        let origin = parsed.origin().ascii_serialization();
        match parsed.scheme() {
            "https" => {}
            "http" if is_loopback(&host) => {}
            "http" => return Err(WebhookError::Plaintext(origin)),
            _ => return Err(WebhookError::BadUrl),
        }
        let url: hyper::Uri = config.url.parse().map_err(|_| WebhookError::BadUrl)?;
        let secret = read_secret(&config.secret_file)?;
        let tls = client_tls(config.ca_file.as_deref())?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        let key = hmac::Key::new(hmac::HMAC_SHA256, &secret);
        Ok(Self {
            url,
            target: crate::directory::audit::hex(hmac::sign(&key, config.url.as_bytes()).as_ref()),
            origin,
            key,
            client,
            holder: uuid::Uuid::new_v4().to_string(),
            heartbeat: config.heartbeat,
        })
    }

    /// Deliver the log, forever: lease, read what the receiver lacks, post
    /// it, move the cursor; back off while the receiver fails.
    pub async fn run(&self, directory: Directory) {
        tracing::info!(to = %self.origin, "audit webhook delivering");
        let mut leased_until = 0;
        let mut last_post = tokio::time::Instant::now();
        let mut retry = FIRST_RETRY;
        loop {
            match self
                .step(&directory, &mut leased_until, &mut last_post)
                .await
            {
                Ok(Step::Delivered) => retry = FIRST_RETRY,
                Ok(Step::Idle) => {
                    retry = FIRST_RETRY;
                    tokio::select! {
                        () = directory.audit_appended() => {}
                        () = tokio::time::sleep(IDLE_RECHECK) => {}
                    }
                }
                // Another relay delivers: look again when its lease could
                // have run out, without writing the database meanwhile.
                Ok(Step::NotHolder) => tokio::time::sleep(LEASE / 3).await,
                Err(e) => {
                    tracing::warn!(to = %self.origin, error = %e, retry_in = ?retry,
                        "audit webhook delivery failed; the records are kept and sent again");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(MAX_RETRY);
                }
            }
        }
    }

    /// Give the lease up so that another relay delivers at once.
    pub async fn release(&self, directory: &Directory) {
        if let Err(e) = directory.release_webhook(&self.target, &self.holder).await {
            tracing::warn!(error = %e, "cannot release the audit webhook lease");
        }
    }

    /// One step: hold the lease, then send the next batch (or a heartbeat).
    async fn step(
        &self,
        directory: &Directory,
        leased_until: &mut i64,
        last_post: &mut tokio::time::Instant,
    ) -> Result<Step, DeliveryError> {
        let now = now_ms();
        let lease_ms = i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX);
        if *leased_until - now < lease_ms * 2 / 3 {
            let until = now + lease_ms;
            let held = directory
                .lease_webhook(&self.target, &self.holder, now, until)
                .await?;
            *leased_until = if held { until } else { 0 };
            if !held {
                return Ok(Step::NotHolder);
            }
        }
        let Some(delivered) = directory
            .webhook_delivered(&self.target, &self.holder)
            .await?
        else {
            *leased_until = 0;
            return Ok(Step::NotHolder);
        };
        let head = directory
            .audit_head()
            .await?
            .map(|(seq, hash)| Head { seq, hash });
        let head_seq = head.as_ref().map_or(0, |h| h.seq);
        if delivered > head_seq {
            tracing::error!(
                delivered,
                head_seq,
                "the audit webhook's cursor is past the newest record: someone moved it in the \
                 database; the receiver sees the log's head in every heartbeat"
            );
        }
        let records = directory.audit_records(delivered, MAX_BATCH).await?;
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            if last_post.elapsed() >= self.heartbeat {
                let body = serde_json::to_vec(&Batch { records: &[], head })?;
                self.post(body, "heartbeat".into()).await?;
                *last_post = tokio::time::Instant::now();
            }
            return Ok(Step::Idle);
        };
        let (first, last) = (first.seq, last.seq);
        let body = serde_json::to_vec(&Batch {
            records: &records,
            head,
        })?;
        self.post(body, format!("{first}-{last}")).await?;
        *last_post = tokio::time::Instant::now();
        if !directory
            .advance_webhook(&self.target, &self.holder, delivered, last, now_ms())
            .await?
        {
            // The lease moved meanwhile: the new holder sends these again.
            *leased_until = 0;
            return Ok(Step::NotHolder);
        }
        tracing::debug!(first, last, "audit webhook batch accepted");
        Ok(Step::Delivered)
    }

    async fn post(&self, body: Vec<u8>, delivery: String) -> Result<(), DeliveryError> {
        let unix_s = u64::try_from(now_ms() / 1000).unwrap_or(0);
        let request = hyper::Request::post(&self.url)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("obr-relay/", env!("CARGO_PKG_VERSION")),
            )
            .header(SIGNATURE_HEADER, signature(&self.key, unix_s, &body))
            .header(DELIVERY_HEADER, delivery)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| DeliveryError::Transport(e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| DeliveryError::Transport(error_chain(&e)))?;
            let status = response.status();
            // Read (and drop) the answer so the connection can be reused.
            let _ = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await;
            if status.is_success() {
                Ok(())
            } else {
                Err(DeliveryError::Refused(status.as_u16()))
            }
        };
        tokio::time::timeout(POST_TIMEOUT, exchange)
            .await
            .map_err(|_| DeliveryError::Timeout)?
    }
}

/// `t=<unix_s>,v1=<hex HMAC-SHA256(key, "<unix_s>." + body)>`.
fn signature(key: &hmac::Key, unix_s: u64, body: &[u8]) -> String {
    let mut context = hmac::Context::with_key(key);
    context.update(unix_s.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    let tag = context.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={unix_s},v1={hex}")
}

/// The scheme, host and port of `url`, or a placeholder.
fn origin_of(url: &str) -> String {
    url::Url::parse(url).map_or_else(
        |_| "(not a URL)".into(),
        |u| u.origin().ascii_serialization(),
    )
}

fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(name) => *name == "localhost",
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    }
}

fn read_secret(path: &Path) -> Result<Vec<u8>, WebhookError> {
    let text = std::fs::read(path).map_err(|error| WebhookError::SecretFile {
        path: path.display().to_string(),
        error,
    })?;
    let secret = text.trim_ascii().to_vec();
    if secret.len() < MIN_SECRET_LEN {
        return Err(WebhookError::ShortSecret(path.display().to_string()));
    }
    Ok(secret)
}

fn client_tls(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, WebhookError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let err = |why: String| WebhookError::Ca {
                path: path.display().to_string(),
                why,
            };
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))? {
                roots
                    .add(cert.map_err(|e| err(e.to_string()))?)
                    .map_err(|e| err(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(err("no certificates found".into()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| WebhookError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// An error and its sources, one line (hyper's own says only "client error").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_time_and_body() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &[7; 32]);
        let signed = signature(&key, 1_700_000_000, b"{\"records\":[]}");
        let (t, v1) = signed
            .strip_prefix("t=")
            .and_then(|s| s.split_once(",v1="))
            .expect("t=…,v1=…");
        assert_eq!(t, "1700000000");
        assert_eq!(v1.len(), 64);
        assert_ne!(signed, signature(&key, 1_700_000_001, b"{\"records\":[]}"));
        assert_ne!(signed, signature(&key, 1_700_000_000, b"{\"records\":[1]}"));
        let other = hmac::Key::new(hmac::HMAC_SHA256, &[8; 32]);
        assert_ne!(
            signed,
            signature(&other, 1_700_000_000, b"{\"records\":[]}")
        );
    }

    #[test]
    fn plain_http_goes_to_this_machine_only() {
        let dir = std::env::temp_dir().join(format!("obr-webhook-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let secret = dir.join("secret");
        std::fs::write(&secret, [b'x'; 40]).expect("secret");
        let config = |url: &str| WebhookConfig {
            url: url.into(),
            secret_file: secret.clone(),
            ca_file: None,
            heartbeat: DEFAULT_HEARTBEAT,
        };
        assert!(AuditWebhook::new(&config("http://127.0.0.1:9/hook")).is_ok());
        assert!(AuditWebhook::new(&config("http://localhost:9/hook")).is_ok());
        assert!(AuditWebhook::new(&config("https://siem.example/hook")).is_ok());
        assert!(matches!(
            AuditWebhook::new(&config("http://siem.example/hook")),
            Err(WebhookError::Plaintext(_))
        ));
        let refused = AuditWebhook::new(&config("http://siem.example/hook?token=s3cret"));
        assert!(
            matches!(&refused, Err(e) if !e.to_string().contains("s3cret")),
            "the error shows the origin only"
        );
        assert!(!format!("{:?}", config("https://siem.example/?token=s3cret")).contains("s3cret"));
        assert!(matches!(
            AuditWebhook::new(&config("ftp://siem.example/")),
            Err(WebhookError::BadUrl)
        ));
        std::fs::write(&secret, b"short").expect("secret");
        assert!(matches!(
            AuditWebhook::new(&config("https://siem.example/hook")),
            Err(WebhookError::ShortSecret(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
