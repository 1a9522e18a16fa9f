//! Issue 3's authenticator behaviour through `SignerCore::ctap`:
//! authenticatorClientPIN, the credProtect and hmac-secret extensions (with
//! a platform's half of PIN/UV auth protocols one and two written here from
//! CTAP 2.1 §6.5.6/§6.5.7), EdDSA, user verification by device approval,
//! key reset, packed attestation, and random bytes through the dispatcher.

use aes::Aes256;
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockModeDecrypt as _, BlockModeEncrypt as _, KeyIvInit as _};
use ciborium::value::Value;
use der::{Decode as _, Encode as _};
use obr_signer::{
    AttestationCa, AttestationConfig, AttestationError, CtapCall, SignerConfig, SignerCore,
    UserApproval,
};
use passkey_types::ctap2::Flags;
use ring::agreement::{self, ECDH_P256, EphemeralPrivateKey, UnparsedPublicKey};
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{self, UnparsedPublicKey as Verifier};
use ring::{digest, hkdf, hmac};

use crate::common::*;

const RP: &str = "login.example.com";
const CLIENT_PIN: u8 = 0x06;

// ---------------------------------------------------------------- helpers

pub(crate) fn map_get(map: &Value, key: &Value) -> Option<Value> {
    match map {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone()),
        _ => None,
    }
}

pub(crate) fn response_map(payload: &[u8]) -> Value {
    assert_eq!(payload[0], 0, "status 0x{:02X}", payload[0]);
    ciborium::de::from_reader(&payload[1..]).expect("cbor")
}

fn with_uv(mut params: Vec<(Value, Value)>, uv: bool) -> Vec<(Value, Value)> {
    if uv {
        params.push((int(5), Value::Map(vec![(text("uv"), Value::Bool(true))])));
    }
    params
}

pub(crate) fn mc_with_extensions(mc: &Mc, extensions: Vec<(Value, Value)>) -> Vec<u8> {
    let mut params = mc.params();
    params.push((int(6), Value::Map(extensions)));
    message(0x01, params)
}

/// makeCredential `mc` asking for the hmac-secret extension.
pub(crate) fn mc_with_hmac_secret(mc: &Mc) -> Vec<u8> {
    mc_with_extensions(mc, vec![(text("hmac-secret"), Value::Bool(true))])
}

/// The extension map in a response's authenticatorData.
fn auth_data_extensions(reply: &obr_signer::CtapReply) -> Option<Value> {
    let value = response_map(&reply.payload);
    let Value::Bytes(auth_data) = map_get(&value, &int(2)).expect("authData") else {
        panic!("authData not bytes");
    };
    passkey_types::ctap2::AuthenticatorData::from_slice(&auth_data)
        .expect("authData")
        .extensions
}

/// A platform's side of a PIN/UV auth protocol (CTAP 2.1 §6.5.6/§6.5.7).
pub(crate) struct Platform {
    protocol: u8,
    /// The platform's key, as requests carry it.
    pub(crate) key_agreement: Value,
    /// The authenticator's key, as getKeyAgreement answered it.
    pub(crate) authenticator_key: Value,
    hmac_key: [u8; 32],
    aes_key: [u8; 32],
}

impl Platform {
    /// getKeyAgreement, then encapsulate against the authenticator's key.
    pub(crate) async fn new(core: &SignerCore, user: &str, protocol: u8) -> Self {
        let reply = core
            .ctap(call(
                user,
                message(
                    CLIENT_PIN,
                    vec![(int(1), int(protocol.into())), (int(2), int(2))],
                ),
            ))
            .await;
        let cose = map_get(&response_map(&reply.payload), &int(1)).expect("keyAgreement");
        let coordinate = |label| match map_get(&cose, &int(label)) {
            Some(Value::Bytes(b)) => b,
            other => panic!("coordinate {label}: {other:?}"),
        };
        let mut point = vec![0x04];
        point.extend(coordinate(-2));
        point.extend(coordinate(-3));

        let rng = SystemRandom::new();
        let private = EphemeralPrivateKey::generate(&ECDH_P256, &rng).unwrap();
        let public = private.compute_public_key().unwrap();
        let (x, y) = public.as_ref()[1..].split_at(32);
        let key_agreement = Value::Map(vec![
            (int(1), int(2)),
            (int(3), int(-25)),
            (int(-1), int(1)),
            (int(-2), Value::Bytes(x.to_vec())),
            (int(-3), Value::Bytes(y.to_vec())),
        ]);
        let z =
            agreement::agree_ephemeral(private, &UnparsedPublicKey::new(&ECDH_P256, &point), |z| {
                z.to_vec()
            })
            .unwrap();
        let (mut hmac_key, mut aes_key) = ([0u8; 32], [0u8; 32]);
        if protocol == 1 {
            let hash = digest::digest(&digest::SHA256, &z);
            hmac_key.copy_from_slice(hash.as_ref());
            aes_key.copy_from_slice(hash.as_ref());
        } else {
            let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[0; 32]).extract(&z);
            for (info, out) in [
                (&b"CTAP2 HMAC key"[..], &mut hmac_key),
                (&b"CTAP2 AES key"[..], &mut aes_key),
            ] {
                prk.expand(&[info], hkdf::HKDF_SHA256)
                    .unwrap()
                    .fill(out)
                    .unwrap();
            }
        }
        Self {
            protocol,
            key_agreement,
            authenticator_key: cose,
            hmac_key,
            aes_key,
        }
    }

    fn encrypt(&self, plain: &[u8]) -> Vec<u8> {
        let mut iv = [0u8; 16];
        if self.protocol == 2 {
            SystemRandom::new().fill(&mut iv).unwrap();
        }
        let mut buffer = plain.to_vec();
        cbc::Encryptor::<Aes256>::new(&self.aes_key.into(), &iv.into())
            .encrypt_padded::<NoPadding>(&mut buffer, plain.len())
            .unwrap();
        if self.protocol == 2 {
            [iv.to_vec(), buffer].concat()
        } else {
            buffer
        }
    }

    pub(crate) fn protocol(&self) -> u8 {
        self.protocol
    }

    pub(crate) fn decrypt(&self, cipher: &[u8]) -> Vec<u8> {
        let (iv, body) = if self.protocol == 2 {
            let (iv, body) = cipher.split_at(16);
            (<[u8; 16]>::try_from(iv).unwrap(), body)
        } else {
            ([0u8; 16], cipher)
        };
        let mut buffer = body.to_vec();
        cbc::Decryptor::<Aes256>::new(&self.aes_key.into(), &iv.into())
            .decrypt_padded::<NoPadding>(&mut buffer)
            .unwrap();
        buffer
    }

    fn authenticate(&self, message: &[u8]) -> Vec<u8> {
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &self.hmac_key), message);
        let len = if self.protocol == 1 { 16 } else { 32 };
        tag.as_ref()[..len].to_vec()
    }

    /// The hmac-secret getAssertion input for `salts`.
    pub(crate) fn hmac_secret_input(&self, salts: &[u8]) -> Value {
        let salt_enc = self.encrypt(salts);
        let salt_auth = self.authenticate(&salt_enc);
        Value::Map(vec![
            (int(1), self.key_agreement.clone()),
            (int(2), Value::Bytes(salt_enc)),
            (int(3), Value::Bytes(salt_auth)),
            (int(4), int(self.protocol.into())),
        ])
    }
}

/// getAssertion for `credential` with an hmac-secret input; the decrypted
/// output.
async fn hmac_secret(
    core: &SignerCore,
    credential: &[u8],
    salts: &[u8],
    uv: bool,
    protocol: u8,
) -> Vec<u8> {
    let platform = Platform::new(core, "alice", protocol).await;
    let params = with_uv(
        vec![
            (int(1), text(RP)),
            (int(2), Value::Bytes(vec![9; 32])),
            (int(3), descriptors(&[credential.to_vec()])),
            (
                int(4),
                Value::Map(vec![(
                    text("hmac-secret"),
                    platform.hmac_secret_input(salts),
                )]),
            ),
        ],
        uv,
    );
    // uv=true needs someone to stand for it: the admin's OBR session.
    let reply = core.ctap(obr_call("alice", message(0x02, params))).await;
    let response = decode_get_assertion(&reply);
    assert_eq!(response.auth_data.flags.contains(Flags::UV), uv);
    assert!(response.auth_data.flags.contains(Flags::ED));
    let Some(Value::Bytes(output)) = map_get(
        &auth_data_extensions(&reply).expect("extensions"),
        &text("hmac-secret"),
    ) else {
        panic!("no hmac-secret output");
    };
    platform.decrypt(&output)
}

// ------------------------------------------------------------------ tests

#[tokio::test]
async fn client_pin_subcommands_answer_the_specs_codes() {
    let db = TempDb::new();
    let core = open(&db).await;
    for protocol in [1, 2] {
        let reply = core
            .ctap(call(
                "alice",
                message(CLIENT_PIN, vec![(int(1), int(protocol)), (int(2), int(2))]),
            ))
            .await;
        let cose = map_get(&response_map(&reply.payload), &int(1)).unwrap();
        assert_eq!(map_get(&cose, &int(1)), Some(int(2)), "kty EC2");
        assert_eq!(map_get(&cose, &int(3)), Some(int(-25)), "alg");
        assert_eq!(map_get(&cose, &int(-1)), Some(int(1)), "crv P-256");
    }
    let cases: Vec<(Vec<(Value, Value)>, u8)> = vec![
        // getKeyAgreement without its protocol; with an unknown one.
        (vec![(int(2), int(2))], 0x14),
        (vec![(int(1), int(3)), (int(2), int(2))], 0x02),
        (vec![(int(1), text("1")), (int(2), int(2))], 0x11),
        // No subCommand at all.
        (vec![(int(1), int(1))], 0x14),
        (vec![(int(1), int(1)), (int(2), text("x"))], 0x11),
    ];
    for (params, status) in cases {
        let reply = core
            .ctap(call("alice", message(CLIENT_PIN, params.clone())))
            .await;
        assert_eq!(reply.status(), status, "{params:?}");
    }
    // PIN subcommands: no PIN is ever set.
    for sub in [0x01, 0x03, 0x04, 0x05, 0x09] {
        let reply = core
            .ctap(call(
                "alice",
                message(CLIENT_PIN, vec![(int(1), int(2)), (int(2), int(sub))]),
            ))
            .await;
        assert_eq!(reply.status(), 0x35, "subcommand {sub}");
    }
    // getUVRetries (§6.5.5.3): a full counter that never goes down.
    let reply = core
        .ctap(call(
            "alice",
            message(CLIENT_PIN, vec![(int(1), int(2)), (int(2), int(7))]),
        ))
        .await;
    assert_eq!(
        response_map(&reply.payload),
        Value::Map(vec![(int(5), int(8))])
    );
    // getPinUvAuthTokenUsingUvWithPermissions without its parameters
    // (the `tokens` tests cover the rest).
    let reply = core
        .ctap(call(
            "alice",
            message(CLIENT_PIN, vec![(int(1), int(2)), (int(2), int(6))]),
        ))
        .await;
    assert_eq!(reply.status(), 0x14);
    // Unknown subcommands.
    for sub in [0x08, 0x42, -1] {
        let reply = core
            .ctap(call(
                "alice",
                message(CLIENT_PIN, vec![(int(1), int(2)), (int(2), int(sub))]),
            ))
            .await;
        assert_eq!(reply.status(), 0x3E, "subcommand {sub}");
    }
    let reply = core.ctap(call("alice", vec![CLIENT_PIN, 0xA1, 0x01])).await;
    assert_eq!(reply.status(), 0x12, "truncated CBOR");
}

#[tokio::test]
async fn hmac_secret_outputs_are_stable_per_salt_and_differ_with_uv() {
    let db = TempDb::new();
    let core = open(&db).await;
    let reply = core
        .ctap(obr_call(
            "alice",
            mc_with_hmac_secret(&Mc::new(RP, b"user-1").rk()),
        ))
        .await;
    assert_eq!(
        auth_data_extensions(&reply),
        Some(Value::Map(vec![(text("hmac-secret"), Value::Bool(true))]))
    );
    let id = reply.created.unwrap().credential_id;
    let (salt_a, salt_b) = ([0xA5; 32], [0x5A; 32]);

    for protocol in [1, 2] {
        let first = hmac_secret(&core, &id, &salt_a, false, protocol).await;
        assert_eq!(first.len(), 32);
        let again = hmac_secret(&core, &id, &salt_a, false, protocol).await;
        assert_eq!(first, again, "same salt, same output");
        let other = hmac_secret(&core, &id, &salt_b, false, protocol).await;
        assert_ne!(first, other, "another salt, another output");
        let verified = hmac_secret(&core, &id, &salt_a, true, protocol).await;
        assert_ne!(first, verified, "CredRandomWithUV differs");
        let both = hmac_secret(&core, &id, &[salt_a, salt_b].concat(), false, protocol).await;
        assert_eq!(both.len(), 64);
        assert_eq!(both[..32], first[..]);
        assert_eq!(both[32..], other[..]);
    }
    // Protocol one and two derive the same outputs (only transport differs).
    assert_eq!(
        hmac_secret(&core, &id, &salt_a, false, 1).await,
        hmac_secret(&core, &id, &salt_a, false, 2).await
    );
}

#[tokio::test]
async fn hmac_secret_inputs_that_do_not_verify_are_refused() {
    let db = TempDb::new();
    let core = open(&db).await;
    let reply = core
        .ctap(call("alice", mc_with_hmac_secret(&Mc::new(RP, b"user-1"))))
        .await;
    let id = reply.created.unwrap().credential_id;
    let assertion = |input: Value| {
        message(
            0x02,
            vec![
                (int(1), text(RP)),
                (int(2), Value::Bytes(vec![9; 32])),
                (int(3), descriptors(std::slice::from_ref(&id))),
                (int(4), Value::Map(vec![(text("hmac-secret"), input)])),
            ],
        )
    };
    for protocol in [1, 2] {
        // A saltAuth that does not verify.
        let platform = Platform::new(&core, "alice", protocol).await;
        let mut input = platform.hmac_secret_input(&[1; 32]);
        if let Value::Map(members) = &mut input {
            members[2].1 = Value::Bytes(vec![0; if protocol == 1 { 16 } else { 32 }]);
        }
        assert_eq!(
            core.ctap(call("alice", assertion(input))).await.status(),
            0x33
        );
        // The key-agreement key is the authenticator's (CTAP 2.1 §6.5.6),
        // not the request's: it survives that attempt, and the platform's
        // valid input verifies.
        let input = platform.hmac_secret_input(&[1; 32]);
        assert_ok(&core.ctap(call("alice", assertion(input))).await);
        // Salts that are not 32 or 64 bytes.
        let platform = Platform::new(&core, "alice", protocol).await;
        let input = platform.hmac_secret_input(&[1; 48]);
        assert_eq!(
            core.ctap(call("alice", assertion(input))).await.status(),
            0x03
        );
        // A missing member; a mistyped one.
        let platform = Platform::new(&core, "alice", protocol).await;
        let mut input = platform.hmac_secret_input(&[1; 32]);
        if let Value::Map(members) = &mut input {
            members.remove(2);
        }
        assert_eq!(
            core.ctap(call("alice", assertion(input))).await.status(),
            0x14
        );
        assert_eq!(
            core.ctap(call("alice", assertion(int(7)))).await.status(),
            0x11
        );
    }
    // A key that made no key-agreement key in this activation cannot
    // agree with anything.
    let reply = core
        .ctap(call("bob", mc_with_hmac_secret(&Mc::new(RP, b"bob"))))
        .await;
    let bobs = reply.created.unwrap().credential_id;
    let platform = Platform::new(&core, "alice", 2).await;
    let reply = core
        .ctap(call(
            "bob",
            message(
                0x02,
                vec![
                    (int(1), text(RP)),
                    (int(2), Value::Bytes(vec![9; 32])),
                    (int(3), descriptors(&[bobs])),
                    (
                        int(4),
                        Value::Map(vec![(
                            text("hmac-secret"),
                            platform.hmac_secret_input(&[1; 32]),
                        )]),
                    ),
                ],
            ),
        ))
        .await;
    assert_eq!(reply.status(), 0x33, "no key-agreement key");
    // Without hmac-secret at creation, a credential gives no output.
    let (plain, _) = make_credential(&core, "alice", &Mc::new(RP, b"user-2")).await;
    let platform = Platform::new(&core, "alice", 2).await;
    let reply = core
        .ctap(call(
            "alice",
            message(
                0x02,
                vec![
                    (int(1), text(RP)),
                    (int(2), Value::Bytes(vec![9; 32])),
                    (int(3), descriptors(&[plain])),
                    (
                        int(4),
                        Value::Map(vec![(
                            text("hmac-secret"),
                            platform.hmac_secret_input(&[1; 32]),
                        )]),
                    ),
                ],
            ),
        ))
        .await;
    assert_ok(&reply);
    assert_eq!(auth_data_extensions(&reply), None);
}

#[tokio::test]
async fn cred_protect_hides_credentials_as_the_spec_table_says() {
    let db = TempDb::new();
    let core = open(&db).await;
    let mut ids = Vec::new();
    for level in 1..=3 {
        let handle = format!("user-{level}");
        let reply = core
            .ctap(obr_call(
                "alice",
                mc_with_extensions(
                    &Mc::new(RP, handle.as_bytes()).rk(),
                    vec![(text("credProtect"), int(level))],
                ),
            ))
            .await;
        assert_eq!(
            auth_data_extensions(&reply),
            Some(Value::Map(vec![(text("credProtect"), int(level))]))
        );
        ids.push(reply.created.unwrap().credential_id);
    }
    let found = |reply: &obr_signer::CtapReply| -> Vec<Vec<u8>> {
        let mut found = vec![decode_get_assertion(reply).credential.unwrap().id.to_vec()];
        let count = decode_get_assertion(reply)
            .number_of_credentials
            .unwrap_or(1);
        for _ in 1..count {
            found.push(Vec::new());
        }
        found
    };
    // Discovery without UV: only level 1.
    let reply = core
        .ctap(call("alice", get_assertion_message(RP, &[0; 32], &[])))
        .await;
    assert_eq!(found(&reply), vec![ids[0].clone()]);
    // Discovery with UV (the OBR session verifies): all three.
    let uv = message(
        0x02,
        with_uv(
            vec![(int(1), text(RP)), (int(2), Value::Bytes(vec![0; 32]))],
            true,
        ),
    );
    let reply = core.ctap(obr_call("alice", uv)).await;
    assert_eq!(decode_get_assertion(&reply).number_of_credentials, Some(3));
    // By allowList without UV: levels 1 and 2, not 3.
    for (index, status) in [(0, 0x00), (1, 0x00), (2, 0x2E)] {
        let reply = core
            .ctap(call(
                "alice",
                get_assertion_message(RP, &[0; 32], &[ids[index].clone()]),
            ))
            .await;
        assert_eq!(reply.status(), status, "level {}", index + 1);
    }
    // By allowList with UV: level 3 too.
    let uv = message(
        0x02,
        with_uv(
            vec![
                (int(1), text(RP)),
                (int(2), Value::Bytes(vec![0; 32])),
                (int(3), descriptors(&[ids[2].clone()])),
            ],
            true,
        ),
    );
    assert_ok(&core.ctap(obr_call("alice", uv)).await);
    // A level-3 credential excludes only when the user is verified.
    let mut exclude = Mc::new(RP, b"user-9");
    exclude.exclude = vec![ids[2].clone()];
    assert_ok(&core.ctap(call("alice", exclude.message())).await);
    exclude.uv = true;
    assert_eq!(
        core.ctap(obr_call("alice", exclude.message()))
            .await
            .status(),
        0x19
    );
    // Bad inputs.
    for (value, status) in [(int(0), 0x02), (int(4), 0x02), (text("3"), 0x11)] {
        let reply = core
            .ctap(call(
                "alice",
                mc_with_extensions(&Mc::new(RP, b"x"), vec![(text("credProtect"), value)]),
            ))
            .await;
        assert_eq!(reply.status(), status);
    }
    let reply = core
        .ctap(call(
            "alice",
            mc_with_extensions(&Mc::new(RP, b"x"), vec![(text("hmac-secret"), int(1))]),
        ))
        .await;
    assert_eq!(reply.status(), 0x11);
    // Unknown extensions are ignored.
    let reply = core
        .ctap(call(
            "alice",
            mc_with_extensions(
                &Mc::new(RP, b"x"),
                vec![(text("largeBlobKey"), Value::Bool(true))],
            ),
        ))
        .await;
    assert_ok(&reply);
    assert_eq!(auth_data_extensions(&reply), None);
}

#[tokio::test]
async fn eddsa_credentials_sign_verifiable_assertions() {
    let db = TempDb::new();
    let core = open(&db).await;
    let mut mc = Mc::new(RP, b"user-1");
    mc.algorithms = vec![EDDSA];
    let reply = core.ctap(call("alice", mc.message())).await;
    let attested = decode_make_credential(&reply)
        .auth_data
        .attested_credential_data
        .unwrap();
    let key = attested.key.clone();
    assert_eq!(key.kty, coset::KeyType::Assigned(coset::iana::KeyType::OKP));
    let param = |label: i64| {
        key.params
            .iter()
            .find(|(l, _)| *l == coset::Label::Int(label))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(param(-1), Some(Value::from(6)), "crv Ed25519");
    let Some(Value::Bytes(public_key)) = param(-2) else {
        panic!("no x");
    };
    let id = attested.credential_id().to_vec();
    for round in 0u8..2 {
        let cdh = [round; 32];
        let reply = core
            .ctap(call(
                "alice",
                get_assertion_message(RP, &cdh, std::slice::from_ref(&id)),
            ))
            .await;
        let response = decode_get_assertion(&reply);
        let mut signed = raw_auth_data(&reply);
        signed.extend_from_slice(&cdh);
        Verifier::new(&signature::ED25519, &public_key)
            .verify(&signed, &response.signature)
            .expect("Ed25519 signature verifies");
        assert_eq!(response.auth_data.counter, Some(u32::from(round) + 1));
    }
}

#[tokio::test]
async fn a_device_approval_verifies_the_user_in_normal_mode() {
    let db = TempDb::new();
    let core = open(&db).await;
    let mut mc = Mc::new(RP, b"user-1").rk();
    mc.uv = true;
    let approved = CtapCall {
        approval: Some(UserApproval::granted_by_device("phone-1")),
        ..call("alice", mc.message())
    };
    let reply = core.ctap(approved).await;
    assert!(
        decode_make_credential(&reply)
            .auth_data
            .flags
            .contains(Flags::UV)
    );
    // The credential is the owner's own, not an admin's.
    assert_eq!(
        core.list_credentials("alice").await.unwrap()[0].created_by_admin,
        None
    );
    // Without the approval: nothing is created; the owner must be asked.
    let asked = core.ctap(unapproved_call("alice", mc.message())).await;
    assert!(asked.payload.is_empty() && asked.created.is_none());
    assert!(asked.approval_needed.is_some());
}

#[tokio::test]
async fn resetting_a_key_deletes_its_credentials_and_rotates_its_data_key() {
    let db = TempDb::new();
    let core = open(&db).await;
    let (old, _) = make_credential(&core, "alice", &Mc::new(RP, b"user-1").rk()).await;
    make_credential(&core, "alice", &Mc::new("other.example", b"user-1")).await;
    make_credential(&core, "bob", &Mc::new(RP, b"user-1")).await;
    assert_eq!(core.reset_user_key("alice").await.unwrap(), 2);
    assert!(core.list_credentials("alice").await.unwrap().is_empty());
    assert_eq!(
        core.list_credentials("bob").await.unwrap().len(),
        1,
        "bob's stays"
    );
    let reply = core
        .ctap(call("alice", get_assertion_message(RP, &[0; 32], &[old])))
        .await;
    assert_eq!(reply.status(), 0x2E);
    // The key works afresh, also after the actor passivates and the new
    // data key is read back from the store.
    let (new, public_key) = make_credential(&core, "alice", &Mc::new(RP, b"user-1")).await;
    drop(core);
    let core = open(&db).await;
    let reply = core
        .ctap(call("alice", get_assertion_message(RP, &[1; 32], &[new])))
        .await;
    verify_assertion(&public_key, &reply, &[1; 32]);
    assert!(matches!(
        core.reset_user_key("").await,
        Err(obr_signer::SignerError::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn packed_attestation_chains_to_the_ca_and_names_the_aaguid() {
    let db = TempDb::new();
    let ca = AttestationCa::generate().unwrap();
    let core = SignerCore::open(SignerConfig {
        attestation: AttestationConfig::Packed(ca.clone()),
        ..config(&db)
    })
    .await
    .unwrap();
    let cdh = [0xC1; 32];
    let reply = core
        .ctap(call("alice", Mc::new(RP, b"user-1").message()))
        .await;
    let response = decode_make_credential(&reply);
    assert_eq!(response.fmt, "packed");
    let alg = map_get(&response.att_stmt, &text("alg"));
    assert_eq!(alg, Some(int(-7)));
    let Some(Value::Bytes(sig)) = map_get(&response.att_stmt, &text("sig")) else {
        panic!("no sig");
    };
    let Some(Value::Array(x5c)) = map_get(&response.att_stmt, &text("x5c")) else {
        panic!("no x5c");
    };
    assert_eq!(x5c.len(), 1, "the leaf only; verifiers hold the CA");
    let Value::Bytes(leaf_der) = &x5c[0] else {
        panic!("x5c entry not bytes");
    };
    let leaf = x509_cert::Certificate::from_der(leaf_der).unwrap();
    let tbs = leaf.tbs_certificate();

    // The statement signs authData || clientDataHash with the leaf's key.
    let mut signed = raw_auth_data(&reply);
    signed.extend_from_slice(&cdh);
    let leaf_key = tbs.subject_public_key_info().subject_public_key.raw_bytes();
    Verifier::new(&signature::ECDSA_P256_SHA256_ASN1, leaf_key)
        .verify(&signed, &sig)
        .expect("attestation signature verifies");
    // The CA signed the leaf.
    let ca_cert = x509_cert::Certificate::from_der(ca.certificate_der()).unwrap();
    let ca_key = ca_cert
        .tbs_certificate()
        .subject_public_key_info()
        .subject_public_key
        .raw_bytes();
    Verifier::new(&signature::ECDSA_P256_SHA256_ASN1, ca_key)
        .verify(&tbs.to_der().unwrap(), leaf.signature().raw_bytes())
        .expect("the CA signed the attestation certificate");
    assert_eq!(tbs.issuer(), ca_cert.tbs_certificate().subject());
    // WebAuthn L3 §8.2.1 requirements.
    assert_eq!(tbs.version(), x509_cert::certificate::Version::V3);
    assert!(
        tbs.subject()
            .to_string()
            .contains("OU=Authenticator Attestation"),
        "{}",
        tbs.subject()
    );
    let (_, constraints) = tbs
        .get_extension::<x509_cert::ext::pkix::BasicConstraints>()
        .unwrap()
        .expect("basic constraints");
    assert!(!constraints.ca);
    let aaguid = tbs
        .extensions()
        .unwrap()
        .iter()
        .find(|e| e.extn_id.to_string() == "1.3.6.1.4.1.45724.1.1.4")
        .expect("AAGUID extension");
    assert!(!aaguid.critical);
    let inner = der::asn1::OctetString::from_der(aaguid.extn_value.as_bytes()).unwrap();
    assert_eq!(inner.as_bytes(), obr_signer::config::DEFAULT_AAGUID);
}

#[tokio::test]
async fn an_attestation_ca_is_created_once_and_loaded_after() {
    let db = TempDb::new();
    let cert = db.file().with_extension("ca.pem");
    let key = db.file().with_extension("ca.key");
    let created = AttestationCa::load_or_create(&cert, &key).unwrap();
    let loaded = AttestationCa::load_or_create(&cert, &key).unwrap();
    assert_eq!(created.certificate_der(), loaded.certificate_der());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the CA key is private");
    }
    // A key that is not the certificate's; half a CA; not PEM.
    let other = AttestationCa::generate().unwrap();
    let other_cert = db.file().with_extension("other.pem");
    std::fs::write(&other_cert, other.certificate_pem().unwrap()).unwrap();
    assert!(matches!(
        AttestationCa::load(&other_cert, &key),
        Err(AttestationError::KeyMismatch)
    ));
    std::fs::remove_file(&cert).unwrap();
    assert!(matches!(
        AttestationCa::load_or_create(&cert, &key),
        Err(AttestationError::HalfPresent { .. })
    ));
    assert!(matches!(
        AttestationCa::from_pem("not pem", "not pem"),
        Err(AttestationError::Format { .. })
    ));
    let debug = format!("{created:?}");
    assert!(debug.contains("obr attestation CA") && !debug.contains("PRIVATE"));
}

/// splitmix64: a reproducible stream for the random-input test.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap()
    }

    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_mutated_messages_always_get_a_status_and_never_panic() {
    const ROUNDS: usize = 100_000;
    let core = SignerCore::open(SignerConfig {
        actor_threads: 1,
        ..SignerConfig::embedded("sqlite::memory:", obr_signer::Kek::from_bytes(TEST_KEK))
    })
    .await
    .unwrap();
    let platform = Platform::new(&core, "fuzz", 2).await;
    let hmac_assertion = message(
        0x02,
        vec![
            (int(1), text(RP)),
            (int(2), Value::Bytes(vec![9; 32])),
            (
                int(4),
                Value::Map(vec![(
                    text("hmac-secret"),
                    platform.hmac_secret_input(&[1; 32]),
                )]),
            ),
        ],
    );
    let seeds: Vec<Vec<u8>> = vec![
        mc_with_extensions(
            &Mc::new(RP, b"user-1").rk(),
            vec![
                (text("credProtect"), int(2)),
                (text("hmac-secret"), Value::Bool(true)),
            ],
        ),
        get_assertion_message(RP, &[0; 32], &[vec![1; 32]]),
        hmac_assertion,
        message(CLIENT_PIN, vec![(int(1), int(1)), (int(2), int(2))]),
        vec![0x04],
        vec![0x08],
        vec![0x0B],
    ];
    let mut rng = SplitMix(0x0B5_2026);
    for round in 0..ROUNDS {
        let payload = match round % 4 {
            // Pure noise after a valid command byte.
            0 => {
                let len = rng.below(64);
                let mut bytes = vec![[0x01, 0x02, 0x06, 0x08][rng.below(4)]];
                bytes.extend((0..len).map(|_| rng.byte()));
                bytes
            }
            // A valid message with a few bytes flipped, cut or repeated.
            _ => {
                let mut bytes = seeds[rng.below(seeds.len())].clone();
                for _ in 0..=rng.below(4) {
                    match rng.below(3) {
                        0 if bytes.len() > 1 => {
                            let at = 1 + rng.below(bytes.len() - 1);
                            bytes[at] = rng.byte();
                        }
                        1 => bytes.truncate(1 + rng.below(bytes.len())),
                        _ => {
                            let at = rng.below(bytes.len());
                            bytes.insert(at, rng.byte());
                        }
                    }
                }
                bytes
            }
        };
        let reply = core.ctap(call("fuzz", payload.clone())).await;
        assert!(!reply.payload.is_empty(), "empty answer to {payload:02X?}");
        assert_ne!(reply.status(), 0x7F, "internal error for {payload:02X?}");
    }
    // The key still answers.
    assert_ok(&core.ctap(call("fuzz", vec![0x04])).await);
}

/// DESIGN: the OBR session stands for user verification — and "policy may
/// forbid it". With `obr_stands_for_uv` off, an on-behalf request that asks
/// for `uv` is refused, and one that does not still registers (without UV).
#[tokio::test]
async fn policy_can_forbid_the_obr_session_standing_for_verification() {
    let db = TempDb::new();
    let core = open_forbidding_obr_uv(&db).await;
    let mut with_uv = Mc::new(RP, b"user-1");
    with_uv.uv = true;
    assert_eq!(
        core.ctap(obr_call("alice", with_uv.message()))
            .await
            .status(),
        0x27
    );
    let reply = core
        .ctap(obr_call("alice", Mc::new(RP, b"user-1").message()))
        .await;
    assert_eq!(reply.status(), 0);
    assert!(
        !decode_make_credential(&reply)
            .auth_data
            .flags
            .contains(Flags::UV)
    );
    // The owner's own approval still verifies them.
    assert_eq!(
        core.ctap(call("alice", with_uv.message())).await.status(),
        0
    );
}
