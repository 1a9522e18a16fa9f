//! obr's wire: the types that cross a process boundary, and nothing else.
//!
//! - [`agent`]: the frames of the agent <-> relay WebSocket tunnel
//!   (`proto/obr/agent.proto`), one protobuf message per binary WebSocket message.
//! - [`ctap`]: CTAP status and command bytes by their spec names, and the
//!   budgets and heartbeat both ends of the tunnel agree on.
//! - [`identity`], [`approval`]: how agents prove their key and how owner
//!   approvals are bound to one request (shared by both ends).
//! - [`signer`]: the relay <-> signer gRPC service (`proto/obr/signer.proto`),
//!   one long-lived multiplexed `Link` stream per relay/signer pair.
//!
//! Generated at build time by prost/tonic from the `.proto` files (compiled by
//! protox, so no `protoc` is needed). This crate does no I/O.

pub mod ctap;

/// Agent <-> relay frames.
pub mod agent {
    tonic::include_proto!("obr.agent.v1");
}

/// Relay <-> signer service.
pub mod signer {
    tonic::include_proto!("obr.signer.v1");
}

/// How an agent is known: its id is derived from its public key, and every
/// connection proves the key by signing the relay's challenge. Shared by
/// the agent (which signs) and the relay (which verifies); no I/O, no keys.
pub mod identity {
    use sha2::{Digest, Sha256};

    /// Bytes of a [`Challenge`](crate::agent::Challenge) nonce.
    pub const NONCE_LEN: usize = 32;
    /// A SEC1 uncompressed P-256 point: 0x04 ‖ x ‖ y.
    pub const PUBLIC_KEY_LEN: usize = 65;
    /// Hex digits of an agent id (128 bits of the key's hash).
    pub const AGENT_ID_LEN: usize = 32;

    const ID_LABEL: &[u8] = b"obr agent id v1\0";
    const PROOF_LABEL: &[u8] = b"obr agent proof v1\0";

    /// The agent id of `public_key`: the first 16 bytes of
    /// SHA-256(label ‖ key), in lower-case hex. Knowing an id gives no way
    /// to answer its challenge.
    pub fn agent_id(public_key: &[u8]) -> String {
        let digest = Sha256::new()
            .chain_update(ID_LABEL)
            .chain_update(public_key)
            .finalize();
        digest
            .iter()
            .take(AGENT_ID_LEN / 2)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// What a Hello's proof signs: a label (so the signature means nothing
    /// elsewhere), the connection's nonce and the id claimed.
    pub fn proof_message(nonce: &[u8], agent_id: &str) -> Vec<u8> {
        let mut message = Vec::with_capacity(PROOF_LABEL.len() + nonce.len() + agent_id.len());
        message.extend_from_slice(PROOF_LABEL);
        message.extend_from_slice(nonce);
        message.extend_from_slice(agent_id.as_bytes());
        message
    }
}

/// Owner approvals as the relay mints them and the signer checks them: an
/// HMAC-SHA256 under the approval key relays and signers share, over what
/// [`approval::mac_input`] returns. No I/O, no keys.
pub mod approval {
    use sha2::{Digest, Sha256};

    /// Bytes of the approval key.
    pub const KEY_LEN: usize = 32;
    const LABEL: &[u8] = b"obr owner approval v1\0";

    /// Label, the approval id and user id (length-prefixed), and SHA-256 of
    /// the exact CTAP message approved.
    pub fn mac_input(approval_id: &str, user_id: &str, payload: &[u8]) -> Vec<u8> {
        let mut input = LABEL.to_vec();
        for field in [approval_id.as_bytes(), user_id.as_bytes()] {
            input.extend_from_slice(&(field.len() as u64).to_be_bytes());
            input.extend_from_slice(field);
        }
        input.extend_from_slice(&Sha256::digest(payload));
        input
    }
}

/// Largest CTAP message a CTAPHID transport can carry (CTAP 2.1 §11.2.4:
/// 57 bytes in the init packet + 128 continuation packets of 59 bytes).
pub const MAX_CTAP_MESSAGE: usize = 7609;
