//! [`SignerError`]: why a signer operation outside the CTAP path failed
//! (opening, serving, listing and deleting credentials). CTAP calls never
//! fail this way: their failures are status bytes.

use crate::ctap::CommandError;
use crate::ctap::attestation::AttestationError;
use crate::ids::InvalidId;
use crate::store::StoreError;
use crate::vault::VaultError;

/// Why a signer operation failed, by fault.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// The caller passed a malformed id.
    #[error("invalid argument: {0}")]
    InvalidArgument(#[from] InvalidId),
    /// Another signer has claimed the user since this one did; the user's
    /// actor here has passivated.
    #[error("another signer owns this user now (fencing epoch moved)")]
    Fenced,
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("starting the actor runtime: {0}")]
    Runtime(std::io::Error),
    #[error("the signer has shut down")]
    ShutDown,
    /// A fault of this signer (key handling, encoding): see the logs.
    #[error("internal error: {0}")]
    Internal(String),
    #[error("attestation: {0}")]
    Attestation(#[from] AttestationError),
    #[error("serving gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A command's failure outside the CTAP path (the panel's delete and
/// reset), where it is an error rather than a status byte.
impl From<CommandError> for SignerError {
    fn from(error: CommandError) -> Self {
        match error {
            CommandError::Store(e) => e.into(),
            CommandError::Vault(e) => Self::Vault(e),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<StoreError> for SignerError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Fenced => Self::Fenced,
            other => Self::Store(other),
        }
    }
}
