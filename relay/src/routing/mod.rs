//! Routing: which signer pod holds a user's key, and the links to them.
//!
//! [`Router`] picks a user's signer by rendezvous (highest-random-weight)
//! hashing over the configured signer endpoints — no lookup per request —
//! and sends the call over that pod's [`SignerLink`]. Adding or removing a
//! pod moves only the users whose winner changed. (Ownership itself is the
//! signer's business: its lease and DB fencing epoch; this only chooses.)

mod signer_link;

use std::sync::Arc;
use std::time::Duration;

use obr_proto::signer::signer_client::SignerClient;
use obr_proto::signer::{
    Acting, Credential, CtapCall, DeleteCredentialRequest, LinkResponse, ListCredentialsRequest,
};
use sha2::{Digest, Sha256};

pub use self::signer_link::{LinkError, SignerLink};

/// Bound on a management call (list/delete credentials).
const MANAGEMENT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Router {
    links: Arc<[Arc<SignerLink>]>,
}

impl Router {
    /// `endpoints` like `http://10.0.0.7:7400`. Connections open lazily.
    pub fn new(endpoints: &[String]) -> Result<Self, LinkError> {
        if endpoints.is_empty() {
            return Err(LinkError::NoSigners);
        }
        let links = endpoints
            .iter()
            .map(|e| SignerLink::new(e).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            links: links.into(),
        })
    }

    /// The link to the signer pod that `user_id` hashes to.
    pub fn link_for(&self, user_id: &str) -> &Arc<SignerLink> {
        // invariant: `new` refuses an empty endpoint list.
        self.links
            .iter()
            .max_by_key(|link| rendezvous_weight(link.endpoint(), user_id))
            .expect("router has at least one signer")
    }

    /// Send one CTAP request to the user's key, bounded by `budget`.
    pub async fn ctap(
        &self,
        user_id: &str,
        payload: Vec<u8>,
        budget: Duration,
        acting: Option<Acting>,
    ) -> Result<LinkResponse, LinkError> {
        let call = CtapCall {
            user_id: user_id.to_owned(),
            payload,
            budget_ms: u32::try_from(budget.as_millis()).unwrap_or(u32::MAX),
            acting,
        };
        self.link_for(user_id).call(call, budget).await
    }

    pub async fn list_credentials(&self, user_id: &str) -> Result<Vec<Credential>, LinkError> {
        let mut client = SignerClient::new(self.link_for(user_id).channel());
        let request = ListCredentialsRequest {
            user_id: user_id.to_owned(),
        };
        let response = tokio::time::timeout(MANAGEMENT_TIMEOUT, client.list_credentials(request))
            .await
            .map_err(|_| LinkError::Timeout)??;
        Ok(response.into_inner().credentials)
    }

    pub async fn delete_credential(
        &self,
        user_id: &str,
        credential_id: Vec<u8>,
    ) -> Result<bool, LinkError> {
        let mut client = SignerClient::new(self.link_for(user_id).channel());
        let request = DeleteCredentialRequest {
            user_id: user_id.to_owned(),
            credential_id,
        };
        let response = tokio::time::timeout(MANAGEMENT_TIMEOUT, client.delete_credential(request))
            .await
            .map_err(|_| LinkError::Timeout)??;
        Ok(response.into_inner().deleted)
    }
}

fn rendezvous_weight(endpoint: &str, user_id: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(endpoint.as_bytes())
        .chain_update([0u8])
        .chain_update(user_id.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
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
        let router = Router::new(&endpoints).unwrap();
        let mut counts = [0usize; 3];
        for u in 0..3000 {
            let user = format!("user-{u}");
            let chosen = router.link_for(&user).endpoint().to_owned();
            assert_eq!(router.link_for(&user).endpoint(), chosen, "stable choice");
            let idx = endpoints.iter().position(|e| *e == chosen).unwrap();
            counts[idx] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven spread: {counts:?}");
        }
        // Removing one pod moves only that pod's users.
        let fewer = Router::new(&endpoints[..2]).unwrap();
        for u in 0..1000 {
            let user = format!("user-{u}");
            let before = router.link_for(&user).endpoint();
            if before != endpoints[2] {
                assert_eq!(fewer.link_for(&user).endpoint(), before);
            }
        }
    }

    #[tokio::test]
    async fn no_signers_is_an_error() {
        assert!(matches!(Router::new(&[]), Err(LinkError::NoSigners)));
    }
}
