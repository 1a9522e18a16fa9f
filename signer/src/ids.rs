//! Identifier newtypes: [`UserId`] (whose security key) and [`CredentialId`]
//! (which credential on it), so the two can never be swapped in a call.
//!
//! Owns only validation of their shape (length bounds). Never touches the
//! database or key material.

use std::fmt;

/// Longest user id accepted from the relay, in bytes.
pub const MAX_USER_ID_LEN: usize = 255;

/// Longest credential id accepted in a lookup, in bytes. CTAP 2.1 §6.1 does
/// not bound it; ours are [`CREDENTIAL_ID_LEN`] bytes, WebAuthn caps them at
/// 1023.
pub const MAX_CREDENTIAL_ID_LEN: usize = 1023;

/// Length of the random credential ids this signer creates.
pub const CREDENTIAL_ID_LEN: usize = 32;

/// The user a security key belongs to, as the relay's directory names them.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

/// Why a string is not a [`UserId`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidId {
    #[error("user id is empty")]
    EmptyUser,
    #[error("user id is longer than {MAX_USER_ID_LEN} bytes")]
    UserTooLong,
    #[error("credential id is empty")]
    EmptyCredential,
    #[error("credential id is longer than {MAX_CREDENTIAL_ID_LEN} bytes")]
    CredentialTooLong,
}

impl UserId {
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidId> {
        let id = id.into();
        if id.is_empty() {
            return Err(InvalidId::EmptyUser);
        }
        if id.len() > MAX_USER_ID_LEN {
            return Err(InvalidId::UserTooLong);
        }
        Ok(Self(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({:?})", self.0)
    }
}

/// A credential id: opaque bytes, non-empty and bounded.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CredentialId(Vec<u8>);

impl CredentialId {
    pub fn new(id: Vec<u8>) -> Result<Self, InvalidId> {
        if id.is_empty() {
            return Err(InvalidId::EmptyCredential);
        }
        if id.len() > MAX_CREDENTIAL_ID_LEN {
            return Err(InvalidId::CredentialTooLong);
        }
        Ok(Self(id))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

impl fmt::Debug for CredentialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CredentialId({})", hex::encode(&self.0))
    }
}
