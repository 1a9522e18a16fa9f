//! `obr-signer`: every user's cloud-held FIDO2 security key.
//!
//! A signer answers CTAP2 for each user's key (getInfo, makeCredential,
//! getAssertion, getNextAssertion, selection) on behalf of the relay. The
//! credential private keys are created here with ring, wrapped with
//! AES-256-GCM (per-user data key, itself wrapped by the KEK) before they
//! touch the database, and never leave unwrapped. Exactly one signer may
//! write a user's credentials at a time: each activation claims a fencing
//! epoch in the database and every write carries it.
//!
//! # Layout
//!
//! Layered bottom-up: each module imports only from the ones above it in
//! this list, never from one below (`tests/api/layering.rs` checks it).
//!
//! - `call`: the vocabulary every layer speaks ([`CtapCall`],
//!   [`CtapReply`], [`ObrActing`], [`UserApproval`], [`CredentialInfo`],
//!   ...); imports nothing of the crate.
//! - `ids`: [`UserId`] and [`CredentialId`] newtypes.
//! - `vault`: [`Kek`] (the current and previous key-encryption keys),
//!   per-user data keys and wrapped keys.
//! - `store`: all SQL, one interface over SQLite and PostgreSQL (shared
//!   migrations in `signer/migrations/`), fenced writes, and
//!   [`rotate_kek`], which re-wraps every data key under a new KEK.
//! - `redis_endpoint`: [`RedisEndpoint`], how relays and signers reach
//!   Redis (`redis://`, or `rediss://` with the deployment's CA and an
//!   optional client certificate).
//! - [`placement`]: membership heartbeats and per-user leases in Redis
//!   (which pod should own a user; fencing makes a stale owner harmless).
//! - `ctap`: the CTAP2 authenticator of one user: command dispatch, the
//!   CBOR codec boundary (passkey-types + ciborium), getInfo,
//!   makeCredential, getAssertion/getNextAssertion, clientPIN
//!   (getKeyAgreement, and built-in user verification as a pinUvAuthToken),
//!   the credProtect and hmac-secret extensions, ES256
//!   and EdDSA keys, and attestation ([`AttestationCa`], `packed` or
//!   `none`).
//! - `error`: [`SignerError`], failures outside the CTAP path.
//! - [`config`]: [`SignerConfig`] and its defaults.
//! - `direct`: [`DirectKey`], one user's CTAP core driven directly (what
//!   the fuzz target exercises), and the shared state both it and the
//!   running signer open from a config.
//! - `actor`: one actix actor per active user (serializes that user's calls,
//!   passivates when idle or fenced), the activation registry, and the
//!   thread running the actix system.
//! - `api`: [`SignerCore`], the API the gRPC service and an in-process
//!   relay call.
//! - `service`: the tonic service and [`serve`].
//!
//! The binary (`src/main.rs`) only parses flags and calls [`serve`].

mod actor;
mod api;
mod call;
pub mod config;
mod ctap;
mod direct;
mod error;
mod ids;
pub mod placement;
mod redis_endpoint;
mod service;
mod store;
mod vault;

pub use crate::api::SignerCore;
pub use crate::call::{
    ApprovalNeeded, CreatedCredential, CredentialInfo, CtapCall, CtapReply, ObrActing,
    ObrAssertion, ObrRecord, Operation, UserApproval,
};
pub use crate::config::{KeyFileError, SignerConfig, load_key_file};
pub use crate::ctap::attestation::{AttestationCa, AttestationConfig, AttestationError};
pub use crate::direct::DirectKey;
pub use crate::error::SignerError;
pub use crate::ids::{CredentialId, InvalidId, UserId};
pub use crate::redis_endpoint::{RedisEndpoint, RedisEndpointError};
pub use crate::service::{
    DEFAULT_CTAP_BUDGET, LINK_OUTBOUND_CAPACITY, MAX_CTAP_BUDGET, MAX_IN_FLIGHT_PER_LINK, serve,
    serve_tls, serve_unix,
};
pub use crate::store::{
    DEFAULT_ROTATION_BATCH, RotationError, RotationProgress, RotationReport, StoreError, rotate_kek,
};
pub use crate::vault::key_file_is_private;
pub use crate::vault::{KEK_LEN, Kek, KekError, VaultError};

#[cfg(test)]
mod tests;
