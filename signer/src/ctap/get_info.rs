//! authenticatorGetInfo (CTAP 2.1 §6.4): what this security key says it can
//! do. Built once per process; it depends only on the configured AAGUID.
//!
//! Deliberately not advertised: `uv` and `clientPin` (no PIN/UV auth
//! protocol is implemented, and clients such as python-fido2 refuse a
//! `uv=true` key that offers none), extensions, and PIN protocols.

use std::num::NonZeroU128;

use obr_proto::MAX_CTAP_MESSAGE;
use passkey_types::ctap2::Aaguid;
use passkey_types::ctap2::get_info::{Options, Response, Version};
use passkey_types::webauthn::{
    AuthenticatorTransport, PublicKeyCredentialParameters, PublicKeyCredentialType,
};

use super::codec::{EncodeError, encode_ok};
use super::keys::ES256;

/// The encoded authenticatorGetInfo answer (status byte + CBOR).
pub(super) fn encode(aaguid: Aaguid) -> Result<Vec<u8>, EncodeError> {
    encode_ok(&response(aaguid))
}

fn response(aaguid: Aaguid) -> Response {
    Response {
        versions: vec![Version::FIDO_2_0, Version::FIDO_2_1],
        aaguid,
        options: Some(Options {
            // Discoverable credentials are stored; user presence is implied
            // by the browser action that reached us; a roaming key, not a
            // platform one.
            rk: true,
            up: true,
            plat: false,
            ..Options::default()
        }),
        // CTAP 2.1 §11.2.4: the most a CTAPHID transport can carry.
        max_msg_size: u128::try_from(MAX_CTAP_MESSAGE)
            .ok()
            .and_then(NonZeroU128::new),
        algorithms: Some(vec![PublicKeyCredentialParameters {
            ty: PublicKeyCredentialType::PublicKey,
            alg: ES256,
        }]),
        // The agent presents this key to the browser as a USB HID device.
        transports: Some(vec![AuthenticatorTransport::Usb]),
        ..Response::default()
    }
}
