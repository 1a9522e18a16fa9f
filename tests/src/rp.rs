//! A relying party verified by webauthn-rs, and the browser's half of the
//! ceremony: turning the RP's options into CTAP2 requests and the
//! authenticator's CTAP2 answers into the WebAuthn JSON the RP verifies.
//!
//! The RP is `https://obr.test` (RP ID `obr.test`); no TLS is involved —
//! webauthn-rs checks the origin inside clientDataJSON.

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ciborium::Value as Cbor;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use webauthn_rs::prelude::*;

pub const RP_ID: &str = "obr.test";
pub const ORIGIN: &str = "https://obr.test";

/// CTAP 2.1 §6 command bytes.
pub const CTAP_MAKE_CREDENTIAL: u8 = 0x01;
pub const CTAP_GET_ASSERTION: u8 = 0x02;
pub const CTAP_GET_INFO: u8 = 0x04;

pub fn webauthn() -> anyhow::Result<Webauthn> {
    let origin = Url::parse(ORIGIN)?;
    Ok(WebauthnBuilder::new(RP_ID, &origin)?
        .rp_name("obr test RP")
        .build()?)
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

fn unb64(value: &Value) -> anyhow::Result<Vec<u8>> {
    let s = value.as_str().context("expected a base64url string")?;
    Ok(B64.decode(s.trim_end_matches('='))?)
}

fn client_data(kind: &str, challenge: &Value) -> anyhow::Result<Vec<u8>> {
    let challenge = challenge
        .as_str()
        .context("challenge")?
        .trim_end_matches('=');
    Ok(serde_json::to_vec(&json!({
        "type": kind,
        "challenge": challenge,
        "origin": ORIGIN,
        "crossOrigin": false,
    }))?)
}

fn int(i: i64) -> Cbor {
    Cbor::Integer(i.into())
}

fn text(s: &str) -> Cbor {
    Cbor::Text(s.to_owned())
}

/// A WebAuthn JSON credential list as CTAP PublicKeyCredentialDescriptors.
fn descriptors(list: &Value) -> Vec<Cbor> {
    list.as_array()
        .map(|list| {
            list.iter()
                .filter_map(|c| unb64(&c["id"]).ok())
                .map(|id| {
                    Cbor::Map(vec![
                        (text("id"), Cbor::Bytes(id)),
                        (text("type"), text("public-key")),
                    ])
                })
                .collect()
        })
        .unwrap_or_default()
}

fn encode(command: u8, map: Vec<(Cbor, Cbor)>) -> anyhow::Result<Vec<u8>> {
    let mut out = vec![command];
    ciborium::ser::into_writer(&Cbor::Map(map), &mut out)?;
    Ok(out)
}

/// The CTAP response's status byte and CBOR map.
pub fn decode_response(response: &[u8]) -> anyhow::Result<Vec<(Cbor, Cbor)>> {
    let (status, body) = response.split_first().context("empty CTAP response")?;
    if *status != 0 {
        bail!("CTAP error 0x{status:02x}");
    }
    match ciborium::de::from_reader::<Cbor, _>(body)? {
        Cbor::Map(m) => Ok(m),
        other => bail!("CTAP response is not a map: {other:?}"),
    }
}

fn get(map: &[(Cbor, Cbor)], key: i64) -> Option<&Cbor> {
    map.iter()
        .find(|(k, _)| k.as_integer() == Some(key.into()))
        .map(|(_, v)| v)
}

fn bytes(value: Option<&Cbor>) -> anyhow::Result<Vec<u8>> {
    match value {
        Some(Cbor::Bytes(b)) => Ok(b.clone()),
        other => bail!("expected bytes, got {other:?}"),
    }
}

/// A registration in progress: the CTAP request to send, and what is
/// needed to turn its answer into the RP's input.
pub struct PendingRegistration {
    pub ctap_request: Vec<u8>,
    client_data: Vec<u8>,
}

/// A security-key registration (not discoverable) of a new account at the
/// test RP, as a browser starts it: the CTAP request to send, and
/// webauthn-rs's state to verify the answer with
/// (`finish_securitykey_registration`).
pub fn start_registration(
    webauthn: &Webauthn,
    user_name: &str,
    display_name: &str,
) -> anyhow::Result<(PendingRegistration, SecurityKeyRegistration)> {
    let (options, state) = webauthn.start_securitykey_registration(
        Uuid::new_v4(),
        user_name,
        display_name,
        None,
        None,
        None,
    )?;
    Ok((make_credential(&options, false)?, state))
}

/// The CTAP message of [`start_registration`] for an account named
/// `user_name`, for tests that need a credential made, not verified.
pub fn registration_request(user_name: &str) -> anyhow::Result<Vec<u8>> {
    let (request, _) = start_registration(&webauthn()?, user_name, user_name)?;
    Ok(request.ctap_request)
}

/// authenticatorMakeCredential for `options` (a CreationChallengeResponse).
pub fn make_credential(
    options: &CreationChallengeResponse,
    resident_key: bool,
) -> anyhow::Result<PendingRegistration> {
    let o = serde_json::to_value(options)?;
    let pk = &o["publicKey"];
    let client_data = client_data("webauthn.create", &pk["challenge"])?;
    let params: Vec<Cbor> = pk["pubKeyCredParams"]
        .as_array()
        .context("pubKeyCredParams")?
        .iter()
        .map(|p| {
            Cbor::Map(vec![
                (text("alg"), int(p["alg"].as_i64().unwrap_or(-7))),
                (text("type"), text("public-key")),
            ])
        })
        .collect();
    let exclude = descriptors(&pk["excludeCredentials"]);
    let mut map = vec![
        (int(1), Cbor::Bytes(Sha256::digest(&client_data).to_vec())),
        (
            int(2),
            Cbor::Map(vec![
                (text("id"), text(pk["rp"]["id"].as_str().unwrap_or(RP_ID))),
                (
                    text("name"),
                    text(pk["rp"]["name"].as_str().unwrap_or(RP_ID)),
                ),
            ]),
        ),
        (
            int(3),
            Cbor::Map(vec![
                (text("id"), Cbor::Bytes(unb64(&pk["user"]["id"])?)),
                (
                    text("name"),
                    text(pk["user"]["name"].as_str().unwrap_or_default()),
                ),
                (
                    text("displayName"),
                    text(pk["user"]["displayName"].as_str().unwrap_or_default()),
                ),
            ]),
        ),
        (int(4), Cbor::Array(params)),
    ];
    if !exclude.is_empty() {
        map.push((int(5), Cbor::Array(exclude)));
    }
    // As a browser does: ask the key to verify the user when the RP requires it.
    let mut options = vec![(text("rk"), Cbor::Bool(resident_key))];
    if pk["authenticatorSelection"]["userVerification"] == "required" {
        options.push((text("uv"), Cbor::Bool(true)));
    }
    map.push((int(7), Cbor::Map(options)));
    Ok(PendingRegistration {
        ctap_request: encode(CTAP_MAKE_CREDENTIAL, map)?,
        client_data,
    })
}

impl PendingRegistration {
    /// The authenticator's answer as the browser hands it to the RP.
    pub fn credential(&self, ctap_response: &[u8]) -> anyhow::Result<RegisterPublicKeyCredential> {
        let map = decode_response(ctap_response)?;
        let fmt = get(&map, 1).cloned().context("fmt")?;
        let auth_data = bytes(get(&map, 2))?;
        let att_stmt = get(&map, 3).cloned().context("attStmt")?;
        // Attested credential data: rpIdHash(32) flags(1) counter(4) aaguid(16) len(2) id.
        let id_len = usize::from(u16::from_be_bytes([
            *auth_data.get(53).context("authData too short")?,
            *auth_data.get(54).context("authData too short")?,
        ]));
        let credential_id = auth_data
            .get(55..55 + id_len)
            .context("credential id")?
            .to_vec();
        let mut attestation_object = Vec::new();
        ciborium::ser::into_writer(
            &Cbor::Map(vec![
                (text("fmt"), fmt),
                (text("attStmt"), att_stmt),
                (text("authData"), Cbor::Bytes(auth_data)),
            ]),
            &mut attestation_object,
        )?;
        Ok(serde_json::from_value(json!({
            "id": b64(&credential_id),
            "rawId": b64(&credential_id),
            "response": {
                "attestationObject": b64(&attestation_object),
                "clientDataJSON": b64(&self.client_data),
            },
            "type": "public-key",
            "extensions": {},
        }))?)
    }
}

pub struct PendingAssertion {
    pub ctap_request: Vec<u8>,
    client_data: Vec<u8>,
}

/// authenticatorGetAssertion for `options` (a RequestChallengeResponse).
pub fn get_assertion(options: &RequestChallengeResponse) -> anyhow::Result<PendingAssertion> {
    assertion_request(options, true)
}

/// The silent pre-flight a browser runs before a registration with an
/// excludeList: getAssertion with `up: false`, which asks the key whether
/// it holds one of the credentials without asking anybody's presence.
pub fn silent_lookup(options: &RequestChallengeResponse) -> anyhow::Result<PendingAssertion> {
    assertion_request(options, false)
}

fn assertion_request(
    options: &RequestChallengeResponse,
    user_presence: bool,
) -> anyhow::Result<PendingAssertion> {
    let o = serde_json::to_value(options)?;
    let pk = &o["publicKey"];
    let client_data = client_data("webauthn.get", &pk["challenge"])?;
    let allow = descriptors(&pk["allowCredentials"]);
    let mut map = vec![
        (int(1), text(pk["rpId"].as_str().unwrap_or(RP_ID))),
        (int(2), Cbor::Bytes(Sha256::digest(&client_data).to_vec())),
    ];
    if !allow.is_empty() {
        map.push((int(3), Cbor::Array(allow)));
    }
    let mut flags = Vec::new();
    if !user_presence {
        flags.push((text("up"), Cbor::Bool(false)));
    }
    if pk["userVerification"] == "required" {
        flags.push((text("uv"), Cbor::Bool(true)));
    }
    if !flags.is_empty() {
        map.push((int(5), Cbor::Map(flags)));
    }
    Ok(PendingAssertion {
        ctap_request: encode(CTAP_GET_ASSERTION, map)?,
        client_data,
    })
}

impl PendingAssertion {
    pub fn credential(&self, ctap_response: &[u8]) -> anyhow::Result<PublicKeyCredential> {
        let map = decode_response(ctap_response)?;
        let credential_id = match get(&map, 1) {
            Some(Cbor::Map(descriptor)) => descriptor
                .iter()
                .find(|(k, _)| k.as_text() == Some("id"))
                .and_then(|(_, v)| v.as_bytes().cloned())
                .context("credential id")?,
            other => bail!("no credential in the assertion: {other:?}"),
        };
        let auth_data = bytes(get(&map, 2))?;
        let signature = bytes(get(&map, 3))?;
        let user_handle = match get(&map, 4) {
            Some(Cbor::Map(user)) => user
                .iter()
                .find(|(k, _)| k.as_text() == Some("id"))
                .and_then(|(_, v)| v.as_bytes().map(|b| b64(b))),
            _ => None,
        };
        Ok(serde_json::from_value(json!({
            "id": b64(&credential_id),
            "rawId": b64(&credential_id),
            "response": {
                "authenticatorData": b64(&auth_data),
                "clientDataJSON": b64(&self.client_data),
                "signature": b64(&signature),
                "userHandle": user_handle,
            },
            "type": "public-key",
            "extensions": {},
        }))?)
    }
}

/// The signature counter in a CTAP getAssertion response's authData.
pub fn assertion_counter(ctap_response: &[u8]) -> anyhow::Result<u32> {
    let map = decode_response(ctap_response)?;
    let auth_data = bytes(get(&map, 2))?;
    let counter = auth_data.get(33..37).context("authData too short")?;
    Ok(u32::from_be_bytes([
        counter[0], counter[1], counter[2], counter[3],
    ]))
}

/// The flags byte of a makeCredential or getAssertion response's authData.
pub fn auth_data_flags(ctap_response: &[u8]) -> anyhow::Result<u8> {
    let map = decode_response(ctap_response)?;
    let auth_data = bytes(get(&map, 2))?;
    auth_data.get(32).copied().context("authData too short")
}
