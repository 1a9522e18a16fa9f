//! Routing: which signer pod holds a user's key, and the links to them.
//!
//! [`Router`] picks a user's signer by rendezvous (highest-random-weight)
//! hashing over the live signer endpoints — no lookup per request — and
//! sends the call over that pod's [`SignerLink`]. Adding or removing a pod
//! moves only the users whose winner changed. The endpoint list is either
//! static (`--signer`, or the embedded signer) or the signers' membership
//! in Redis ([`Router::discover`]), refreshed in the background.
//!
//! Ownership itself is the signers' business (lease in Redis, fencing
//! epoch in their database): a pod that does not own a user answers with
//! the `owner`, and the router follows it (a few hops at most).

mod signer_link;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use obr_proto::signer::signer_client::SignerClient;
use obr_proto::signer::{
    AckRecordRequest, Acting, Credential, CtapCall, DeleteCredentialRequest, GetInfoRequest,
    LinkResponse, ListCredentialsRequest, ObrRecord, PendingRecordsRequest, ResetKeyRequest,
};
use obr_signer::RedisEndpoint;
use sha2::{Digest, Sha256};
use tonic::transport::ClientTlsConfig;

pub use self::signer_link::{LinkError, SignerLink};

/// Bound on a management call (list/delete credentials).
const MANAGEMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Redirects to a user's owner one call follows at most.
pub const MAX_REDIRECTS: usize = 3;
/// How often a discovering router re-reads the signers' membership.
const MEMBERSHIP_REFRESH: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

struct Inner {
    /// Mutual TLS towards `https://` signers (the relay's client
    /// certificate and the CA the signers' certificates chain to).
    tls: Option<ClientTlsConfig>,
    /// Every endpoint ever seen, with its (lazily connected) link.
    links: RwLock<HashMap<String, Arc<SignerLink>>>,
    /// The endpoints users are hashed over right now.
    live: RwLock<Arc<[String]>>,
    /// The signers' authenticatorGetInfo, once asked.
    get_info: RwLock<Option<Vec<u8>>>,
}

impl Router {
    /// No live signer yet (the constructors add them).
    fn without_signers(tls: Option<ClientTlsConfig>) -> Self {
        Self {
            inner: Arc::new(Inner {
                tls,
                links: RwLock::default(),
                live: RwLock::new(Arc::from([])),
                get_info: RwLock::default(),
            }),
        }
    }

    /// A fixed set of signers, e.g. `http://10.0.0.7:7400`.
    pub fn new(endpoints: &[String], tls: Option<ClientTlsConfig>) -> Result<Self, LinkError> {
        if endpoints.is_empty() {
            return Err(LinkError::NoSigners);
        }
        let router = Self::without_signers(tls);
        router.set_live(endpoints.to_vec(), true)?;
        Ok(router)
    }

    /// Signers found through their heartbeats in Redis (`obr-signer
    /// --redis-url`), re-read every [`MEMBERSHIP_REFRESH`]. Waits for at
    /// least one live signer up to `wait`.
    pub async fn discover(
        redis: &RedisEndpoint,
        prefix: &str,
        wait: Duration,
        tls: Option<ClientTlsConfig>,
    ) -> Result<Self, LinkError> {
        let unavailable = |e: &dyn std::fmt::Display| LinkError::Unavailable(e.to_string());
        let client = redis.client().map_err(|e| unavailable(&e))?;
        let mut conn = client
            .get_connection_manager()
            .await
            .map_err(|e| unavailable(&e))?;
        let router = Self::without_signers(tls);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let members = obr_signer::placement::live_members(&mut conn, prefix)
                .await
                .map_err(|e| unavailable(&e))?;
            if !members.is_empty() && router.set_live(members, false).is_ok() {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(LinkError::NoSigners);
            }
            tokio::time::sleep(MEMBERSHIP_REFRESH).await;
        }
        let refresher = router.clone();
        let prefix = prefix.to_owned();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(MEMBERSHIP_REFRESH);
            loop {
                tick.tick().await;
                match obr_signer::placement::live_members(&mut conn, &prefix).await {
                    // An empty membership while Redis answers means every
                    // signer is gone; keep routing to the last known ones
                    // so their answers (or errors) reach the browser.
                    Ok(members) if !members.is_empty() => {
                        if let Err(e) = refresher.set_live(members, false) {
                            tracing::warn!(error = %e, "bad signer membership");
                        }
                    }
                    Ok(_) => tracing::warn!("no live signers in the membership"),
                    Err(e) => tracing::warn!(error = %e, "cannot read signer membership"),
                }
            }
        });
        Ok(router)
    }

    /// Hash users over `endpoints` from now on. Configured ones
    /// (`strict`) must all be usable; discovered ones that are not (say, an
    /// `http://` entry a Redis writer added while this relay requires
    /// mutual TLS) are left out with a warning.
    fn set_live(&self, mut endpoints: Vec<String>, strict: bool) -> Result<(), LinkError> {
        endpoints.sort();
        endpoints.dedup();
        let mut usable = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            match self.link(&endpoint) {
                Ok(_) => usable.push(endpoint),
                Err(e) if !strict => {
                    tracing::warn!(%endpoint, error = %e, "signer left out of the membership");
                }
                Err(e) => return Err(e),
            }
        }
        if usable.is_empty() {
            return Err(LinkError::NoSigners);
        }
        let endpoints = usable;
        let mut live = self.inner.live.write().unwrap_or_else(|p| p.into_inner());
        if **live != *endpoints {
            tracing::info!(signers = ?endpoints, "signer membership changed");
            *live = endpoints.into();
        }
        Ok(())
    }

    /// The link to `endpoint`, created on first use.
    fn link(&self, endpoint: &str) -> Result<Arc<SignerLink>, LinkError> {
        if let Some(link) = self
            .inner
            .links
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(endpoint)
        {
            return Ok(link.clone());
        }
        let mut links = self.inner.links.write().unwrap_or_else(|p| p.into_inner());
        if let Some(link) = links.get(endpoint) {
            return Ok(link.clone());
        }
        let link = Arc::new(SignerLink::new(endpoint, self.inner.tls.clone())?);
        links.insert(endpoint.to_owned(), link.clone());
        Ok(link)
    }

    /// The link to the signer pod that `user_id` hashes to.
    pub fn link_for(&self, user_id: &str) -> Result<Arc<SignerLink>, LinkError> {
        let live = self
            .inner
            .live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let endpoint = live
            .iter()
            .max_by_key(|endpoint| rendezvous_weight(endpoint, user_id))
            .ok_or(LinkError::NoSigners)?;
        self.link(endpoint)
    }

    /// Send one CTAP request to the user's key, bounded by `budget`, with
    /// the owner's approval (its id and the relay's MAC over this request)
    /// when there is one. If the chosen pod names another owner, follow it,
    /// at most [`MAX_REDIRECTS`] times (a redirect means the call did not
    /// run there; while a draining signer hands a user over, the user's new
    /// signer may send it back once before the lease is free).
    pub async fn ctap(
        &self,
        user_id: &str,
        payload: Vec<u8>,
        budget: Duration,
        acting: Option<Acting>,
        approval: Option<(String, Vec<u8>)>,
    ) -> Result<LinkResponse, LinkError> {
        let started = tokio::time::Instant::now();
        let (approval_id, approval_mac) = approval.unwrap_or_default();
        let call = CtapCall {
            user_id: user_id.to_owned(),
            payload,
            budget_ms: millis(budget),
            acting,
            approval_id,
            approval_mac,
        };
        let mut link = self.link_for(user_id)?;
        let mut response = link.call(call.clone(), budget).await?;
        for _ in 0..MAX_REDIRECTS {
            if response.owner.is_empty() || response.owner == link.endpoint() {
                return Ok(response);
            }
            tracing::debug!(user = user_id, owner = %response.owner, "following the user's owner");
            let remaining = budget.saturating_sub(started.elapsed());
            let call = CtapCall {
                budget_ms: millis(remaining),
                ..call.clone()
            };
            link = self.link(&response.owner)?;
            response = link.call(call, remaining).await?;
        }
        if response.owner.is_empty() || response.owner == link.endpoint() {
            return Ok(response);
        }
        Err(LinkError::Unavailable(format!(
            "ownership of {user_id} is moving (now {})",
            response.owner
        )))
    }

    pub async fn list_credentials(&self, user_id: &str) -> Result<Vec<Credential>, LinkError> {
        let mut client = SignerClient::new(self.link_for(user_id)?.channel());
        let request = ListCredentialsRequest {
            user_id: user_id.to_owned(),
        };
        let response = management("ListCredentials", client.list_credentials(request)).await?;
        Ok(response.credentials)
    }

    pub async fn delete_credential(
        &self,
        admin_id: &str,
        user_id: &str,
        credential_id: Vec<u8>,
    ) -> Result<bool, LinkError> {
        let mut client = SignerClient::new(self.link_for(user_id)?.channel());
        let request = DeleteCredentialRequest {
            user_id: user_id.to_owned(),
            credential_id,
            acting_admin_id: admin_id.to_owned(),
        };
        let response = management("DeleteCredential", client.delete_credential(request)).await?;
        Ok(response.deleted)
    }
}

impl Router {
    /// The key's authenticatorGetInfo (the same for every user), asked of
    /// a signer once and kept: what an agent no one is logged in on says
    /// it is.
    pub async fn get_info(&self) -> Result<Vec<u8>, LinkError> {
        if let Some(cached) = self
            .inner
            .get_info
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(cached);
        }
        let mut client = SignerClient::new(self.link_for("obr-get-info")?.channel());
        let response = management("GetInfo", client.get_info(GetInfoRequest {})).await?;
        let payload = response.payload;
        *self
            .inner
            .get_info
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(payload.clone());
        Ok(payload)
    }

    /// On-behalf credentials whose record no relay confirmed, created at or
    /// before `created_before_ms`. Every signer pod reads the one database,
    /// so any live pod answers for all.
    pub async fn pending_records(
        &self,
        created_before_ms: i64,
        limit: u32,
    ) -> Result<Vec<ObrRecord>, LinkError> {
        // Rendezvous over a fixed key: the same pod while membership holds.
        let mut client = SignerClient::new(self.link_for("obr-outbox")?.channel());
        let request = PendingRecordsRequest {
            created_before_ms,
            limit,
        };
        let response = management("PendingRecords", client.pending_records(request)).await?;
        Ok(response.records)
    }

    /// Tell the signers `credential_id`'s creation is recorded.
    pub async fn ack_record(
        &self,
        user_id: &str,
        credential_id: Vec<u8>,
    ) -> Result<bool, LinkError> {
        let mut client = SignerClient::new(self.link_for(user_id)?.channel());
        let response = management(
            "AckRecord",
            client.ack_record(AckRecordRequest { credential_id }),
        )
        .await?;
        Ok(response.acked)
    }

    /// Delete all of the user's credentials and replace their data key.
    pub async fn reset_key(&self, admin_id: &str, user_id: &str) -> Result<u64, LinkError> {
        let mut client = SignerClient::new(self.link_for(user_id)?.channel());
        let request = ResetKeyRequest {
            user_id: user_id.to_owned(),
            acting_admin_id: admin_id.to_owned(),
        };
        let response = management("ResetKey", client.reset_key(request)).await?;
        Ok(response.deleted_credentials)
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn rendezvous_weight(endpoint: &str, user_id: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(endpoint.as_bytes())
        .chain_update([0u8])
        .chain_update(user_id.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    #[expect(clippy::indexing_slicing, reason = "a SHA-256 digest is 32 bytes")]
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The management RPC `rpc` (`call`), answered within
/// [`MANAGEMENT_TIMEOUT`] or failed with a timeout naming it.
async fn management<T>(
    rpc: &'static str,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, LinkError> {
    let response = tokio::time::timeout(MANAGEMENT_TIMEOUT, call)
        .await
        .map_err(|_| LinkError::Timeout {
            wait: rpc,
            after: MANAGEMENT_TIMEOUT,
        })??;
    Ok(response.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Channels are created lazily but need a runtime to exist.
    #[tokio::test]
    async fn rendezvous_spreads_and_is_stable() {
        let endpoints: Vec<String> = (0..3)
            .map(|i| format!("http://127.0.0.1:{}", 7400 + i))
            .collect();
        let router = Router::new(&endpoints, None).unwrap();
        let mut counts = [0usize; 3];
        for u in 0..3000 {
            let user = format!("user-{u}");
            let chosen = router.link_for(&user).unwrap().endpoint().to_owned();
            assert_eq!(
                router.link_for(&user).unwrap().endpoint(),
                chosen,
                "stable choice"
            );
            let idx = endpoints.iter().position(|e| *e == chosen).unwrap();
            counts[idx] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven spread: {counts:?}");
        }
        // Removing one pod moves only that pod's users.
        let fewer = Router::new(&endpoints[..2], None).unwrap();
        for u in 0..1000 {
            let user = format!("user-{u}");
            let before = router.link_for(&user).unwrap().endpoint().to_owned();
            if before != endpoints[2] {
                assert_eq!(fewer.link_for(&user).unwrap().endpoint(), before);
            }
        }
    }

    #[tokio::test]
    async fn no_signers_is_an_error() {
        assert!(matches!(Router::new(&[], None), Err(LinkError::NoSigners)));
    }
}
