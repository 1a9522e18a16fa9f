//! Who an agent is: the key that signed this connection's challenge.
//!
//! Every agent connection starts with a fresh [`Challenge`] nonce from the
//! relay; the agent's `Hello` carries its public key and a signature over
//! [`identity::proof_message`]. [`verify`] is the only way to get a
//! [`ProvenAgent`], and the socket actor files nothing (registry, login,
//! OBR session) before it holds one. An agent id alone — which users see
//! in their notifications and admins in the audit log — proves nothing.
//!
//! [`Challenge`]: obr_proto::agent::Challenge

use obr_proto::agent::Hello;
use obr_proto::identity;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("Hello must carry the agent's P-256 public key (65 bytes, SEC1 uncompressed)")]
    PublicKey,
    #[error("agent_id is not the id of the public key in this Hello")]
    IdMismatch,
    #[error(
        "the Hello's proof does not verify: sign this connection's challenge with the agent key"
    )]
    Proof,
    #[error("the system random generator failed")]
    Random,
}

/// A fresh challenge nonce for one connection.
pub fn new_nonce() -> Result<[u8; identity::NONCE_LEN], ProofError> {
    let mut nonce = [0u8; identity::NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| ProofError::Random)?;
    Ok(nonce)
}

/// An agent id whose private key signed this connection's challenge.
/// Only [`verify`] makes one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvenAgent {
    agent_id: String,
}

impl ProvenAgent {
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }
}

/// Check `hello` against the `nonce` this connection was challenged with.
pub fn verify(nonce: &[u8], hello: &Hello) -> Result<ProvenAgent, ProofError> {
    let key = hello.public_key.as_slice();
    if key.len() != identity::PUBLIC_KEY_LEN || key.first() != Some(&0x04) {
        return Err(ProofError::PublicKey);
    }
    let agent_id = identity::agent_id(key);
    if hello.agent_id != agent_id {
        return Err(ProofError::IdMismatch);
    }
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key)
        .verify(
            &identity::proof_message(nonce, &agent_id),
            hello.proof.as_slice(),
        )
        .map_err(|_| ProofError::Proof)?;
    Ok(ProvenAgent { agent_id })
}

#[cfg(test)]
mod tests {
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};

    use super::*;

    fn key_pair() -> EcdsaKeyPair {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap()
    }

    fn hello(key: &EcdsaKeyPair, nonce: &[u8]) -> Hello {
        let public_key = key.public_key().as_ref().to_vec();
        let agent_id = identity::agent_id(&public_key);
        let proof = key
            .sign(
                &SystemRandom::new(),
                &identity::proof_message(nonce, &agent_id),
            )
            .unwrap();
        Hello {
            agent_id,
            public_key,
            proof: proof.as_ref().to_vec(),
            ..Hello::default()
        }
    }

    #[test]
    fn a_signed_challenge_proves_the_id() {
        let key = key_pair();
        let nonce = new_nonce().unwrap();
        let proven = verify(&nonce, &hello(&key, &nonce)).unwrap();
        assert_eq!(proven.agent_id().len(), identity::AGENT_ID_LEN);
        assert_eq!(
            proven.agent_id(),
            identity::agent_id(key.public_key().as_ref())
        );
    }

    #[test]
    fn a_proof_for_another_connection_is_refused() {
        let key = key_pair();
        let replayed = hello(&key, &new_nonce().unwrap());
        assert_eq!(
            verify(&new_nonce().unwrap(), &replayed),
            Err(ProofError::Proof)
        );
    }

    #[test]
    fn claiming_another_id_is_refused() {
        let nonce = new_nonce().unwrap();
        let victim = hello(&key_pair(), &nonce);
        // The attacker's own key, the victim's id.
        let mut claim = hello(&key_pair(), &nonce);
        claim.agent_id = victim.agent_id.clone();
        assert_eq!(verify(&nonce, &claim), Err(ProofError::IdMismatch));
        // The victim's key and id, the attacker's signature.
        let mut stolen_key = victim.clone();
        stolen_key.proof = claim.proof;
        assert_eq!(verify(&nonce, &stolen_key), Err(ProofError::Proof));
        // The id alone.
        let bare = Hello {
            agent_id: victim.agent_id,
            ..Hello::default()
        };
        assert_eq!(verify(&nonce, &bare), Err(ProofError::PublicKey));
    }

    #[test]
    fn malformed_keys_are_refused() {
        let nonce = new_nonce().unwrap();
        let mut compressed = hello(&key_pair(), &nonce);
        compressed.public_key[0] = 0x02;
        assert_eq!(verify(&nonce, &compressed), Err(ProofError::PublicKey));
        let mut short = hello(&key_pair(), &nonce);
        short.public_key.truncate(33);
        assert_eq!(verify(&nonce, &short), Err(ProofError::PublicKey));
    }
}
