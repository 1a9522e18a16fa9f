//! The CTAP vocabulary every component speaks: status bytes by their spec
//! names (CTAP 2.1 §8.2), the command bytes obr itself looks at, and the
//! timing the agent⇄relay tunnel and the relay⇄signer link agree on. One
//! definition each, so the agent, the relay and the signer cannot drift
//! apart (0x2F had two names before this module). No I/O.

use std::time::Duration;

/// A CTAP response's status byte (CTAP 2.1 §8.2, "Status codes"). Only
/// the codes obr produces or must recognise are named; [`StatusCode::byte`]
/// is what goes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum StatusCode {
    /// `CTAP2_OK` (`CTAP1_ERR_SUCCESS`).
    Ok = 0x00,
    /// `CTAP1_ERR_INVALID_COMMAND`.
    InvalidCommand = 0x01,
    /// `CTAP1_ERR_INVALID_PARAMETER`.
    InvalidParameter = 0x02,
    /// `CTAP1_ERR_INVALID_LENGTH`.
    InvalidLength = 0x03,
    /// `CTAP1_ERR_CHANNEL_BUSY`: too many requests at once.
    ChannelBusy = 0x06,
    /// `CTAP2_ERR_INVALID_CBOR`.
    InvalidCbor = 0x12,
    /// `CTAP2_ERR_MISSING_PARAMETER`.
    MissingParameter = 0x14,
    /// `CTAP2_ERR_CREDENTIAL_EXCLUDED`.
    CredentialExcluded = 0x19,
    /// `CTAP2_ERR_UNSUPPORTED_ALGORITHM`.
    UnsupportedAlgorithm = 0x26,
    /// `CTAP2_ERR_OPERATION_DENIED`: not allowed for this caller.
    OperationDenied = 0x27,
    /// `CTAP2_ERR_UNSUPPORTED_OPTION`.
    UnsupportedOption = 0x2B,
    /// `CTAP2_ERR_KEEPALIVE_CANCEL`: the host cancelled (CTAPHID_CANCEL).
    KeepaliveCancel = 0x2D,
    /// `CTAP2_ERR_NO_CREDENTIALS`.
    NoCredentials = 0x2E,
    /// `CTAP2_ERR_USER_ACTION_TIMEOUT`: the user (here: the owner's
    /// approval, or the request's budget) did not act in time.
    UserActionTimeout = 0x2F,
    /// `CTAP2_ERR_NOT_ALLOWED`.
    NotAllowed = 0x30,
    /// `CTAP2_ERR_PIN_AUTH_INVALID`.
    PinAuthInvalid = 0x33,
    /// `CTAP2_ERR_REQUEST_TOO_LARGE`.
    RequestTooLarge = 0x39,
    /// `CTAP2_ERR_UP_REQUIRED`.
    UpRequired = 0x3B,
    /// `CTAP1_ERR_OTHER`: anything else went wrong.
    Other = 0x7F,
}

impl StatusCode {
    /// The byte on the wire.
    pub const fn byte(self) -> u8 {
        self as u8
    }

    /// A response holding only this status (no CBOR body).
    pub fn response(self) -> Vec<u8> {
        vec![self.byte()]
    }

    /// The status a response starts with, if it is one named here.
    pub fn of(response: &[u8]) -> Option<Self> {
        response.first().copied().and_then(Self::from_byte)
    }

    /// The named status for `byte`, if any.
    pub const fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            0x00 => Self::Ok,
            0x01 => Self::InvalidCommand,
            0x02 => Self::InvalidParameter,
            0x03 => Self::InvalidLength,
            0x06 => Self::ChannelBusy,
            0x12 => Self::InvalidCbor,
            0x14 => Self::MissingParameter,
            0x19 => Self::CredentialExcluded,
            0x26 => Self::UnsupportedAlgorithm,
            0x27 => Self::OperationDenied,
            0x2B => Self::UnsupportedOption,
            0x2D => Self::KeepaliveCancel,
            0x2E => Self::NoCredentials,
            0x2F => Self::UserActionTimeout,
            0x30 => Self::NotAllowed,
            0x33 => Self::PinAuthInvalid,
            0x39 => Self::RequestTooLarge,
            0x3B => Self::UpRequired,
            0x7F => Self::Other,
            _ => return None,
        })
    }
}

/// The CTAP command bytes obr looks at itself (CTAP 2.1 §6); everything
/// else passes through to the signer untouched.
pub mod command {
    /// authenticatorMakeCredential (§6.1).
    pub const MAKE_CREDENTIAL: u8 = 0x01;
    /// authenticatorGetAssertion (§6.2).
    pub const GET_ASSERTION: u8 = 0x02;
    /// authenticatorGetInfo (§6.4): the command byte alone.
    pub const GET_INFO: u8 = 0x04;
}

/// The budget a CTAP request gets at the relay and the signer when the
/// agent names none (browsers wait about 30 s or more for a key).
pub const DEFAULT_CTAP_BUDGET: Duration = Duration::from_secs(30);
/// The most any request may ask for (`--ctap-budget-ms`, `budget_ms`).
pub const MAX_CTAP_BUDGET: Duration = Duration::from_secs(120);
/// The relay pings each agent this often.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
/// Either end of the tunnel gives up on a peer silent this long: three
/// heartbeats and a half, so one or two lost pings are tolerated.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(35);

const _: () = assert!(SILENCE_LIMIT.as_secs() > 3 * HEARTBEAT_INTERVAL.as_secs());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_status_round_trips_and_others_are_unnamed() {
        let mut named = 0;
        for byte in 0..=u8::MAX {
            if let Some(status) = StatusCode::from_byte(byte) {
                assert_eq!(status.byte(), byte);
                named += 1;
            }
        }
        assert_eq!(named, 19);
        assert_eq!(
            StatusCode::of(&[0x2F, 0xA0]),
            Some(StatusCode::UserActionTimeout)
        );
        assert_eq!(StatusCode::of(&[]), None);
    }
}
