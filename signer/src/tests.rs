//! Key material at rest: after real makeCredential/getAssertion calls, the
//! database files hold the private key only wrapped.

use std::time::Duration;

use ciborium::value::Value;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};

use crate::ids::UserId;
use crate::store::Store;
use crate::{CtapCall, Kek, SignerConfig, SignerCore};

/// The DER prefix before the 32-byte private scalar in ring's P-256 PKCS#8
/// (ECPrivateKey: version 1, then the key as an OCTET STRING of 32).
const SCALAR_PREFIX: [u8; 5] = [0x02, 0x01, 0x01, 0x04, 0x20];

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn int(i: i64) -> Value {
    Value::Integer(i.into())
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

fn make_credential_message() -> Vec<u8> {
    let params = Value::Map(vec![
        (int(1), Value::Bytes(vec![0; 32])),
        (int(2), Value::Map(vec![(text("id"), text("rp.example"))])),
        (
            int(3),
            Value::Map(vec![
                (text("id"), Value::Bytes(b"handle".to_vec())),
                (text("name"), text("alice")),
                (text("displayName"), text("Alice")),
            ]),
        ),
        (
            int(4),
            Value::Array(vec![Value::Map(vec![
                (text("alg"), int(-7)),
                (text("type"), text("public-key")),
            ])]),
        ),
        (int(7), Value::Map(vec![(text("rk"), Value::Bool(true))])),
    ]);
    let mut message = vec![0x01];
    ciborium::ser::into_writer(&params, &mut message).unwrap();
    message
}

#[tokio::test]
async fn private_keys_never_reach_the_database_in_plaintext() {
    let dir = std::env::temp_dir().join(format!("obr-signer-at-rest-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("signer.db");
    let url = format!("sqlite://{}?mode=rwc", file.display());
    let kek = Kek::from_bytes([0x42; 32]);

    let core = SignerCore::open(SignerConfig::embedded(url.clone(), kek.clone()))
        .await
        .unwrap();
    let call = |payload| CtapCall {
        user_id: "alice".to_owned(),
        obr: None,
        approval: Some(crate::UserApproval::granted_by_device("phone")),
        payload,
        deadline: tokio::time::Instant::now() + Duration::from_secs(10),
    };
    let reply = core.ctap(call(make_credential_message())).await;
    assert_eq!(reply.status(), 0);
    let credential_id = reply.created.clone().expect("created").credential_id;
    let response: passkey_types::ctap2::make_credential::Response =
        ciborium::de::from_reader(&reply.payload[1..]).unwrap();
    let attested_public_key = response
        .auth_data
        .attested_credential_data
        .unwrap()
        .key
        .to_sec1_octet_string()
        .unwrap();
    let mut assertion = vec![0x02];
    ciborium::ser::into_writer(
        &Value::Map(vec![
            (int(1), text("rp.example")),
            (int(2), Value::Bytes(vec![1; 32])),
        ]),
        &mut assertion,
    )
    .unwrap();
    assert_eq!(core.ctap(call(assertion)).await.status(), 0);
    core.shutdown().await;
    drop(core);

    // Unwrap the stored key the way the signer does (this test holds the
    // KEK), to learn the secrets to look for.
    let store = Store::open(&url, 1).await.unwrap();
    let alice = UserId::new("alice").unwrap();
    let claim = store
        .claim(
            &alice,
            &crate::vault::WrappedKey::from_stored(vec![0]),
            "unused",
        )
        .await
        .unwrap();
    let data_key = kek
        .unwrap_data_key(&alice, &claim.kek_id, &claim.wrapped_data_key)
        .unwrap();
    let stored = store
        .credentials_for_rp(&alice, "rp.example")
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    let pkcs8 = data_key
        .open_private_key(&alice, &stored[0].0.id, &stored[0].0.wrapped_private_key)
        .unwrap();
    let rng = ring::rand::SystemRandom::new();
    let key_pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8, &rng).unwrap();
    assert_eq!(
        key_pair.public_key().as_ref(),
        attested_public_key.as_slice()
    );
    let scalar_at = pkcs8
        .windows(SCALAR_PREFIX.len())
        .position(|w| w == SCALAR_PREFIX)
        .expect("scalar in PKCS#8")
        + SCALAR_PREFIX.len();
    let scalar = &pkcs8[scalar_at..scalar_at + 32];
    drop(store);

    let mut raw = Vec::new();
    for suffix in ["", "-wal", "-journal"] {
        let path = format!("{}{suffix}", file.display());
        if let Ok(bytes) = std::fs::read(&path) {
            raw.extend(bytes);
        }
    }
    // The scan does see the data: the credential id is there.
    assert!(contains(&raw, &credential_id));
    // The secrets are not.
    assert!(!contains(&raw, &pkcs8), "PKCS#8 stored in plaintext");
    assert!(
        !contains(&raw, scalar),
        "private scalar stored in plaintext"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
