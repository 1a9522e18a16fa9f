//! obr's wire: the types that cross a process boundary, and nothing else.
//!
//! - [`agent`]: the frames of the agent <-> relay WebSocket tunnel
//!   (`proto/obr/agent.proto`), one protobuf message per binary WebSocket message.
//! - [`signer`]: the relay <-> signer gRPC service (`proto/obr/signer.proto`),
//!   one long-lived multiplexed `Link` stream per relay/signer pair.
//!
//! Generated at build time by prost/tonic from the `.proto` files (compiled by
//! protox, so no `protoc` is needed). This crate does no I/O.

/// Agent <-> relay frames.
pub mod agent {
    tonic::include_proto!("obr.agent.v1");
}

/// Relay <-> signer service.
pub mod signer {
    tonic::include_proto!("obr.signer.v1");
}

/// Largest CTAP message a CTAPHID transport can carry (CTAP 2.1 §11.2.4:
/// 57 bytes in the init packet + 128 continuation packets of 59 bytes).
pub const MAX_CTAP_MESSAGE: usize = 7609;
