//! The signer through its public API: [`obr_signer::SignerCore`] on a
//! temporary SQLite file (CTAP2 commands, the authenticator's extensions
//! and pinUvAuthTokens), two cores on one database (fencing, on SQLite and
//! PostgreSQL), KEK rotation while a core signs (both backends), the
//! `obr-signer` binary's KEK commands, and the gRPC service over loopback.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a step that fails should stop the test, loudly"
)]

mod authenticator;
mod common;
mod ctap;
mod direct;
mod fencing;
mod grpc;
mod keys;
mod layering;
mod memory;
mod obr_scope;
mod outbox;
mod rotation;
mod test_db;
mod tokens;
