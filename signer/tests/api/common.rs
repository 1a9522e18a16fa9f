//! Helpers shared by the public-API tests: a throw-away database (SQLite
//! file or PostgreSQL database, `test_db`), a signer on it, and a minimal
//! CTAP2 client (requests built as CBOR values, answers decoded with
//! passkey-types).

use std::time::Duration;

use ciborium::value::Value;
use obr_signer::{CtapCall, CtapReply, Kek, ObrActing, SignerConfig, SignerCore, UserApproval};
use passkey_types::ctap2::{get_assertion, make_credential};
use ring::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};

pub const ES256: i64 = -7;
pub const EDDSA: i64 = -8;
pub const RS256: i64 = -257;

pub use crate::test_db::{Backend, TempDb};

pub const TEST_KEK: [u8; 32] = [0x5A; 32];
/// The approval key the tests' relay side MACs owner approvals with.
pub const TEST_APPROVAL_KEY: [u8; 32] = [0xA9; 32];

pub fn config(db: &TempDb) -> SignerConfig {
    SignerConfig {
        actor_threads: 2,
        approval_key: Some(TEST_APPROVAL_KEY),
        ..SignerConfig::embedded(db.url(), Kek::from_bytes(TEST_KEK))
    }
}

pub async fn open(db: &TempDb) -> SignerCore {
    SignerCore::open(config(db)).await.expect("open signer")
}

/// A signer whose policy forbids the OBR session standing for user
/// verification (`--obr-stands-for-uv false`).
pub async fn open_forbidding_obr_uv(db: &TempDb) -> SignerCore {
    SignerCore::open(SignerConfig {
        obr_stands_for_uv: false,
        ..config(db)
    })
    .await
    .expect("open signer")
}

/// A normal-mode call the key's owner approved on their device (as the
/// relay sends it after the approval).
pub fn call(user: &str, payload: Vec<u8>) -> CtapCall {
    CtapCall {
        approval: Some(UserApproval::granted_by_device("test-phone")),
        ..unapproved_call(user, payload)
    }
}

/// A normal-mode call nobody approved (yet).
pub fn unapproved_call(user: &str, payload: Vec<u8>) -> CtapCall {
    CtapCall {
        user_id: user.to_owned(),
        obr: None,
        approval: None,
        payload,
        deadline: tokio::time::Instant::now() + Duration::from_secs(10),
    }
}

/// An on-behalf call: the admin's OBR session, no device approval.
pub fn obr_call(user: &str, payload: Vec<u8>) -> CtapCall {
    CtapCall {
        obr: Some(acting()),
        ..unapproved_call(user, payload)
    }
}

pub fn acting() -> ObrActing {
    ObrActing {
        admin_id: "admin-7".to_owned(),
        obr_session_id: "obr-session-42".to_owned(),
    }
}

pub fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

pub fn int(i: i64) -> Value {
    Value::Integer(i.into())
}

/// A CTAP message: command byte + the CBOR of `params`.
pub fn message(command: u8, params: Vec<(Value, Value)>) -> Vec<u8> {
    let mut out = vec![command];
    ciborium::ser::into_writer(&Value::Map(params), &mut out).expect("encode");
    out
}

pub fn descriptors(ids: &[Vec<u8>]) -> Value {
    Value::Array(
        ids.iter()
            .map(|id| {
                Value::Map(vec![
                    (text("id"), Value::Bytes(id.clone())),
                    (text("type"), text("public-key")),
                ])
            })
            .collect(),
    )
}

/// What a makeCredential request carries.
pub struct Mc {
    pub rp: &'static str,
    pub user_handle: Vec<u8>,
    pub rk: bool,
    pub uv: bool,
    pub exclude: Vec<Vec<u8>>,
    pub algorithms: Vec<i64>,
}

impl Mc {
    pub fn new(rp: &'static str, user_handle: &[u8]) -> Self {
        Self {
            rp,
            user_handle: user_handle.to_vec(),
            rk: false,
            uv: false,
            exclude: Vec::new(),
            algorithms: vec![ES256],
        }
    }

    pub fn rk(mut self) -> Self {
        self.rk = true;
        self
    }

    pub fn params(&self) -> Vec<(Value, Value)> {
        let mut params = vec![
            (int(1), Value::Bytes(vec![0xC1; 32])),
            (int(2), Value::Map(vec![(text("id"), text(self.rp))])),
            (
                int(3),
                Value::Map(vec![
                    (text("id"), Value::Bytes(self.user_handle.clone())),
                    (text("name"), text("alice@example.com")),
                    (text("displayName"), text("Alice")),
                ]),
            ),
            (
                int(4),
                Value::Array(
                    self.algorithms
                        .iter()
                        .map(|&alg| {
                            Value::Map(vec![
                                (text("alg"), int(alg)),
                                (text("type"), text("public-key")),
                            ])
                        })
                        .collect(),
                ),
            ),
        ];
        if !self.exclude.is_empty() {
            params.push((int(5), descriptors(&self.exclude)));
        }
        let mut options = Vec::new();
        if self.rk {
            options.push((text("rk"), Value::Bool(true)));
        }
        if self.uv {
            options.push((text("uv"), Value::Bool(true)));
        }
        if !options.is_empty() {
            params.push((int(7), Value::Map(options)));
        }
        params
    }

    pub fn message(&self) -> Vec<u8> {
        message(0x01, self.params())
    }
}

pub fn get_assertion_message(rp: &str, client_data_hash: &[u8], allow: &[Vec<u8>]) -> Vec<u8> {
    let mut params = vec![
        (int(1), text(rp)),
        (int(2), Value::Bytes(client_data_hash.to_vec())),
    ];
    if !allow.is_empty() {
        params.push((int(3), descriptors(allow)));
    }
    message(0x02, params)
}

pub fn assert_ok(reply: &CtapReply) {
    assert_eq!(reply.status(), 0x00, "status 0x{:02X}", reply.status());
}

pub fn decode_make_credential(reply: &CtapReply) -> make_credential::Response {
    assert_ok(reply);
    ciborium::de::from_reader(&reply.payload[1..]).expect("makeCredential response")
}

pub fn decode_get_assertion(reply: &CtapReply) -> get_assertion::Response {
    assert_ok(reply);
    ciborium::de::from_reader(&reply.payload[1..]).expect("getAssertion response")
}

/// The authenticatorData bytes exactly as sent (member 0x02 of the map).
pub fn raw_auth_data(reply: &CtapReply) -> Vec<u8> {
    let value: Value = ciborium::de::from_reader(&reply.payload[1..]).expect("cbor");
    let Value::Map(entries) = value else {
        panic!("not a map");
    };
    entries
        .into_iter()
        .find_map(|(k, v)| match (k, v) {
            (Value::Integer(k), Value::Bytes(bytes)) if k == 2.into() => Some(bytes),
            _ => None,
        })
        .expect("authData")
}

/// Make a credential and return its id and its public key (SEC1).
pub async fn make_credential(core: &SignerCore, user: &str, mc: &Mc) -> (Vec<u8>, Vec<u8>) {
    let reply = core.ctap(call(user, mc.message())).await;
    let response = decode_make_credential(&reply);
    let attested = response
        .auth_data
        .attested_credential_data
        .expect("attested credential data");
    let public_key = attested.key.to_sec1_octet_string().expect("EC2 key");
    (attested.credential_id().to_vec(), public_key)
}

/// Check an assertion's ES256 signature over authData || clientDataHash.
pub fn verify_assertion(public_key: &[u8], reply: &CtapReply, client_data_hash: &[u8]) {
    let response = decode_get_assertion(reply);
    let mut signed = raw_auth_data(reply);
    signed.extend_from_slice(client_data_hash);
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, public_key)
        .verify(&signed, &response.signature)
        .expect("signature verifies");
}
