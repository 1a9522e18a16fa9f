//! [`SignerLink`]: one long-lived, multiplexed gRPC `Link` stream to one
//! signer pod. Many CTAP requests ride it at once, matched by id; no
//! per-request connection or stream setup (DESIGN: unary per request costs
//! ~2.4x a stream round trip here).
//!
//! The stream opens on first use and re-opens after it breaks; requests in
//! flight when it breaks fail with [`LinkError::Lost`]. A caller that stops
//! waiting (deadline, or the browser's CANCEL dropping the future) sends a
//! `Cancel` for its id so the signer stops work it would throw away.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use obr_proto::signer::signer_client::SignerClient;
use obr_proto::signer::{Cancel, CtapCall, LinkRequest, LinkResponse, link_request};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// Requests queued towards one signer before senders wait.
const LINK_QUEUE: usize = 1024;
pub const DEFAULT_SIGNER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const HTTP2_KEEPALIVE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("no signer endpoints configured")]
    NoSigners,
    #[error("invalid signer endpoint {0:?}")]
    BadEndpoint(String),
    #[error("signer unavailable: {0}")]
    Unavailable(String),
    #[error("the link to the signer broke while the request was in flight")]
    Lost,
    #[error("no answer from the signer to {wait} within {after:?}")]
    Timeout {
        /// Which wait expired: the CTAP call, or the management RPC's name.
        wait: &'static str,
        after: Duration,
    },
    #[error("signer refused the call: {0}")]
    Status(#[from] tonic::Status),
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<LinkResponse>>>>;

struct Stream {
    tx: mpsc::Sender<LinkRequest>,
    pending: Pending,
}

pub struct SignerLink {
    endpoint: String,
    channel: Channel,
    next_id: AtomicU64,
    stream: tokio::sync::Mutex<Option<Stream>>,
}

impl SignerLink {
    /// A link to `endpoint`: `unix:/path` (the embedded signer),
    /// `https://…` (mutual TLS with `tls`: required for https) or
    /// `http://…`.
    pub fn new(endpoint: &str, tls: Option<ClientTlsConfig>) -> Result<Self, LinkError> {
        let mut target = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|_| LinkError::BadEndpoint(endpoint.to_owned()))?;
        // A relay that talks to signers over mutual TLS sends a user's CTAP
        // traffic to nothing else — not even to an endpoint a Redis writer
        // added to the membership, on this host or another.
        if tls.is_some() && !endpoint.starts_with("https://") {
            return Err(LinkError::Unavailable(format!(
                "refusing {endpoint}: this relay talks to signers over mutual TLS (https:// only)"
            )));
        }
        if endpoint.starts_with("https://") {
            let tls = tls.ok_or_else(|| {
                LinkError::Unavailable(format!(
                    "{endpoint} needs --signer-ca, --signer-client-cert and --signer-client-key"
                ))
            })?;
            target = target
                .tls_config(tls)
                .map_err(|e| LinkError::Unavailable(format!("{endpoint}: {e}")))?;
        }
        let channel = target
            .connect_timeout(DEFAULT_SIGNER_CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(HTTP2_KEEPALIVE)
            .keep_alive_while_idle(true)
            .connect_lazy();
        Ok(Self {
            endpoint: endpoint.to_owned(),
            channel,
            next_id: AtomicU64::new(1),
            stream: tokio::sync::Mutex::new(None),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The underlying HTTP/2 channel, for unary management calls.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Send `call` and wait at most `budget` for its answer.
    pub async fn call(&self, call: CtapCall, budget: Duration) -> Result<LinkResponse, LinkError> {
        tokio::time::timeout(budget, self.call_unbounded(call))
            .await
            .map_err(|_| LinkError::Timeout {
                wait: "the CTAP call",
                after: budget,
            })?
    }

    async fn call_unbounded(&self, call: CtapCall) -> Result<LinkResponse, LinkError> {
        let (tx, pending) = self.open().await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer_tx, answer_rx) = oneshot::channel();
        lock(&pending).insert(id, answer_tx);
        // From here on, dropping this future cancels the request remotely.
        let guard = InFlight {
            id,
            tx: tx.clone(),
            pending: pending.clone(),
            done: false,
        };
        let request = LinkRequest {
            id,
            kind: Some(link_request::Kind::Ctap(call)),
        };
        if tx.send(request).await.is_err() {
            return Err(LinkError::Lost);
        }
        let result = answer_rx.await.map_err(|_| LinkError::Lost);
        guard.finish();
        result
    }

    /// The live stream, opening one if there is none (or it broke).
    async fn open(&self) -> Result<(mpsc::Sender<LinkRequest>, Pending), LinkError> {
        let mut slot = self.stream.lock().await;
        if let Some(s) = slot.as_ref().filter(|s| !s.tx.is_closed()) {
            return Ok((s.tx.clone(), s.pending.clone()));
        }
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let mut client = SignerClient::new(self.channel.clone());
        let mut responses = client
            .link(ReceiverStream::new(rx))
            .await
            .map_err(|s| LinkError::Unavailable(s.message().to_owned()))?
            .into_inner();
        let pending: Pending = Arc::default();
        let reader_pending = pending.clone();
        let endpoint = self.endpoint.clone();
        tokio::spawn(async move {
            loop {
                match responses.message().await {
                    Ok(Some(response)) => {
                        if let Some(waiter) = lock(&reader_pending).remove(&response.id) {
                            // The waiter may have given up meanwhile; fine.
                            let _ = waiter.send(response);
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::warn!(%endpoint, %status, "signer link broke");
                        break;
                    }
                }
            }
            // Fail everything in flight; the next call opens a new stream.
            lock(&reader_pending).clear();
        });
        tracing::info!(endpoint = %self.endpoint, "signer link open");
        *slot = Some(Stream {
            tx: tx.clone(),
            pending: pending.clone(),
        });
        Ok((tx, pending))
    }
}

/// A request on the wire. Dropped unfinished, it withdraws the request.
struct InFlight {
    id: u64,
    tx: mpsc::Sender<LinkRequest>,
    pending: Pending,
    done: bool,
}

impl InFlight {
    fn finish(mut self) {
        self.done = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if lock(&self.pending).remove(&self.id).is_some() {
            // Best effort: if the queue is full the signer will still finish
            // and its answer is discarded.
            let _ = self.tx.try_send(LinkRequest {
                id: self.id,
                kind: Some(link_request::Kind::Cancel(Cancel {})),
            });
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Holders only insert/remove map entries; a poisoned map is consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_mutual_tls_relay_talks_to_https_signers_only() {
        let tls = || Some(ClientTlsConfig::new());
        for rogue in [
            "http://10.0.0.7:7400",
            "http://127.0.0.1:7400",
            "unix:/tmp/rogue.sock",
        ] {
            assert!(
                matches!(
                    SignerLink::new(rogue, tls()),
                    Err(LinkError::Unavailable(_))
                ),
                "{rogue}"
            );
        }
        assert!(SignerLink::new("https://10.0.0.7:7400", tls()).is_ok());
        assert!(matches!(
            SignerLink::new("https://10.0.0.7:7400", None),
            Err(LinkError::Unavailable(_))
        ));
        assert!(SignerLink::new("unix:/run/obr/signer.sock", None).is_ok());
    }
}
