//! The signer's vocabulary: the types that cross its API and that every
//! layer below the API speaks — a [`CtapCall`] and its [`CtapReply`], who
//! acts ([`ObrActing`], [`UserApproval`]), what a call created or asked for
//! ([`CreatedCredential`], [`ApprovalNeeded`], [`ObrAssertion`]) and what
//! the store hands out ([`CredentialInfo`], [`ObrRecord`]).
//!
//! The leaf of the crate: imports no other module of it, so `ids`, `vault`,
//! `store`, `ctap`, `actor`, `api` and `service` can all speak it without an
//! import circle (`tests/api/layering.rs` holds the order). Plain data: no I/O,
//! no key material.

use std::time::Duration;

use passkey_types::ctap2::Ctap2Error;

/// The admin acting on the key owner's behalf (on-behalf registration).
/// The relay has already checked that they may.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObrActing {
    pub admin_id: String,
    pub obr_session_id: String,
}

/// The key owner's approval of one call, given on their own device: it
/// stands for user verification in normal mode (the `uv` option, or the
/// pinUvAuthToken that authenticatorClientPIN issues on it), as the
/// admin's OBR session does in on-behalf mode.
///
/// A proof value: the relay creates one only after the user approved the
/// request on their phone, and nothing in the signer creates one. `Debug`
/// names the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserApproval {
    device_id: String,
}

impl UserApproval {
    /// The user approved on device `device_id` (the relay calls this once
    /// the device channel has confirmed the approval).
    pub fn granted_by_device(device_id: impl Into<String>) -> Self {
        Self {
            device_id: device_id.into(),
        }
    }

    /// The device that approved.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }
}

/// One CTAP message for a user's security key.
#[derive(Clone, Debug)]
pub struct CtapCall {
    pub user_id: String,
    /// Set when an admin acts for the user: a request asking for user
    /// verification (option `uv`) is verified by the admin's session, and a
    /// created credential records who made it.
    pub obr: Option<ObrActing>,
    /// Set when the key's owner approved this call on their device: a
    /// request asking for user verification is verified by it. (The gRPC
    /// service sets none yet: the device approval path is not built.)
    pub approval: Option<UserApproval>,
    /// CTAP command byte + CBOR parameters.
    pub payload: Vec<u8>,
    /// When the caller stops waiting; past it the answer is
    /// `CTAP2_ERR_USER_ACTION_TIMEOUT` (0x2F).
    pub deadline: tokio::time::Instant,
}

/// The answer to a [`CtapCall`].
#[derive(Clone, Debug)]
pub struct CtapReply {
    /// CTAP status byte + CBOR.
    pub payload: Vec<u8>,
    /// Set when the call created a credential.
    pub created: Option<CreatedCredential>,
    /// Time spent waiting for the user's actor.
    pub queue: Duration,
    /// Time the actor spent on the call.
    pub work: Duration,
    /// Set when another pod holds the user's lease: its endpoint. The
    /// payload is then empty and the caller should ask that pod.
    pub owner: Option<String>,
    /// Set when the call needs the key owner's approval on their device and
    /// carried none: what to ask. The payload is then empty.
    pub approval_needed: Option<ApprovalNeeded>,
    /// Set for an on-behalf assertion with user presence: what was signed
    /// or refused, for the audit log.
    pub obr_assertion: Option<ObrAssertion>,
}

/// An on-behalf getAssertion (or getNextAssertion) that asked for user
/// presence. An OBR session may create credentials, not sign in: the key
/// signs only with a credential created in that same session (a site may
/// verify a new key at once) and refuses every other one
/// (`CTAP2_ERR_OPERATION_DENIED`). Either way the relay audits it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObrAssertion {
    pub credential_id: Vec<u8>,
    pub rp_id: String,
    pub refused: bool,
}

/// What the key's owner is asked to approve on their device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalNeeded {
    pub rp_id: String,
    pub operation: Operation,
    /// The platform asked for user verification, not just presence.
    pub user_verification: bool,
}

/// The kind of call awaiting approval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// authenticatorMakeCredential.
    Register,
    /// authenticatorGetAssertion.
    SignIn,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Register => "register",
            Operation::SignIn => "sign_in",
        }
    }
}

impl CtapReply {
    /// The CTAP status byte.
    pub fn status(&self) -> u8 {
        self.payload
            .first()
            .copied()
            .unwrap_or(Ctap2Error::Other.into())
    }

    /// A bare status answer after `queue` of waiting.
    pub(crate) fn failure(status: Ctap2Error, queue: Duration) -> Self {
        Self {
            payload: vec![status.into()],
            created: None,
            queue,
            work: Duration::ZERO,
            owner: None,
            approval_needed: None,
            obr_assertion: None,
        }
    }

    /// "Not mine: ask `owner`."
    pub(crate) fn redirect(owner: String, queue: Duration) -> Self {
        Self {
            payload: Vec::new(),
            created: None,
            queue,
            work: Duration::ZERO,
            owner: Some(owner),
            approval_needed: None,
            obr_assertion: None,
        }
    }
}

/// What a makeCredential created (for the audit log and the user's
/// notification).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedCredential {
    pub credential_id: Vec<u8>,
    pub rp_id: String,
    pub user_name: String,
    pub user_display_name: String,
    pub discoverable: bool,
}

/// An on-behalf credential waiting for its record (the outbox row written
/// with it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObrRecord {
    pub credential_id: Vec<u8>,
    pub user_id: String,
    pub admin_id: String,
    pub obr_session_id: String,
    pub rp_id: String,
    pub user_name: String,
    pub user_display_name: String,
    pub discoverable: bool,
    pub created_at_ms: i64,
}

/// A credential as the panel lists it (public data only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialInfo {
    pub credential_id: Vec<u8>,
    pub rp_id: String,
    pub user_handle: Vec<u8>,
    pub user_name: String,
    pub user_display_name: String,
    pub discoverable: bool,
    /// "ES256".
    pub algorithm: String,
    pub sign_count: u32,
    pub created_at_ms: i64,
    /// Set when an admin created it on the user's behalf.
    pub created_by_admin: Option<String>,
    pub obr_session_id: Option<String>,
    pub last_used_at_ms: Option<i64>,
}
