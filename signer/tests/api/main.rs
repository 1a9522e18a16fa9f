//! The signer through its public API: [`obr_signer::SignerCore`] on a
//! temporary SQLite file, two cores on one file (fencing), and the gRPC
//! service over loopback.

mod common;
mod ctap;
mod fencing;
mod grpc;
mod keys;
