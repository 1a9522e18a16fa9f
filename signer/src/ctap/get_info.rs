//! authenticatorGetInfo (CTAP 2.1 §6.4): what this security key says it can
//! do. Built once per process; it depends only on the configured AAGUID.
//!
//! What it claims, and why:
//! - `uv: true`: built-in user verification, performed by the admin's OBR
//!   session or the user's device approval (see `Caller::verified`);
//! - `pinUvAuthToken: true`: that verification also comes as a
//!   pinUvAuthToken (authenticatorClientPIN
//!   getPinUvAuthTokenUsingUvWithPermissions, §6.5.5.7.3), which CTAP 2.1
//!   platforms use for built-in UV whenever it is claimed (Chromium asks
//!   for a token and never sends `uv` to a key with `makeCredUvNotRqd`;
//!   python-fido2 prefers a token too). Platforms that send the `uv`
//!   option instead are verified as before;
//! - `makeCredUvNotRqd: true`: platforms may create credentials without
//!   UV (python-fido2 and browsers otherwise always ask for it);
//! - `pinUvAuthProtocols [2, 1]`: the protocols the token and
//!   hmac-secret's shared secret run on (authenticatorClientPIN
//!   getKeyAgreement).
//!
//! Deliberately not claimed: `clientPin` (no PIN exists: absent means "not
//! supported", so platforms never prompt for one).
//! Built as a CBOR value because passkey-types' getInfo structure lacks
//! `makeCredUvNotRqd`.

use ciborium::value::Value;
use coset::iana::EnumI64 as _;
use obr_proto::MAX_CTAP_MESSAGE;
use passkey_types::ctap2::Aaguid;

use super::client_pin::PinUvAuthProtocol;
use super::codec::{EncodeError, encode_value};
use super::extensions::{CRED_PROTECT, HMAC_SECRET};
use super::keys::Algorithm;

/// CTAP 2.1 §6.4: authenticatorGetInfo response members.
const VERSIONS: i64 = 0x01;
const EXTENSIONS: i64 = 0x02;
const AAGUID: i64 = 0x03;
const OPTIONS: i64 = 0x04;
const MAX_MSG_SIZE: i64 = 0x05;
const PIN_UV_AUTH_PROTOCOLS: i64 = 0x06;
const TRANSPORTS: i64 = 0x09;
const ALGORITHMS: i64 = 0x0A;

/// The encoded authenticatorGetInfo answer (status byte + CBOR).
pub(super) fn encode(aaguid: Aaguid) -> Result<Vec<u8>, EncodeError> {
    encode_value(response(aaguid))
}

fn response(aaguid: Aaguid) -> Value {
    let int = |i: i64| Value::Integer(i.into());
    let text = |s: &str| Value::Text(s.to_owned());
    let option = |name: &str, value: bool| (text(name), Value::Bool(value));
    Value::Map(vec![
        (
            int(VERSIONS),
            Value::Array(vec![text("FIDO_2_0"), text("FIDO_2_1")]),
        ),
        (
            int(EXTENSIONS),
            Value::Array(vec![text(CRED_PROTECT), text(HMAC_SECRET)]),
        ),
        (int(AAGUID), Value::Bytes(aaguid.0.to_vec())),
        (
            int(OPTIONS),
            Value::Map(vec![
                // A roaming key, not a platform one.
                option("plat", false),
                // Discoverable credentials are stored.
                option("rk", true),
                // User presence is implied by the browser action that
                // reached us.
                option("up", true),
                option("uv", true),
                option("pinUvAuthToken", true),
                option("makeCredUvNotRqd", true),
            ]),
        ),
        // CTAP 2.1 §11.2.4: the most a CTAPHID transport can carry.
        (
            int(MAX_MSG_SIZE),
            Value::Integer(u64::try_from(MAX_CTAP_MESSAGE).unwrap_or(u64::MAX).into()),
        ),
        (
            int(PIN_UV_AUTH_PROTOCOLS),
            Value::Array(
                PinUvAuthProtocol::SUPPORTED
                    .iter()
                    .map(|&p| Value::Integer(p.into()))
                    .collect(),
            ),
        ),
        // The agent presents this key to the browser as a USB HID device.
        (int(TRANSPORTS), Value::Array(vec![text("usb")])),
        (
            int(ALGORITHMS),
            Value::Array(
                Algorithm::SUPPORTED
                    .iter()
                    .map(|a| {
                        Value::Map(vec![
                            (text("alg"), int(a.cose().to_i64())),
                            (text("type"), text("public-key")),
                        ])
                    })
                    .collect(),
            ),
        ),
    ])
}
