//! [`DirectKey`]: the CTAP core without actors, over an in-memory store,
//! answers as the running signer does (what makes fuzzing it stand for
//! fuzzing the signer's CTAP path).

use obr_signer::{DirectKey, Kek, SignerConfig, UserApproval};

use crate::common::*;
use crate::test_db::TempDb;

fn in_memory() -> SignerConfig {
    SignerConfig::embedded("sqlite::memory:", Kek::from_bytes(TEST_KEK))
}

#[tokio::test]
async fn a_direct_key_registers_and_signs_like_the_signer() {
    let mut key = DirectKey::open(&in_memory(), "alice").await.unwrap();
    let db = TempDb::new();
    let core = open(&db).await;

    let get_info = key.ctap(&[0x04], None, None).await;
    assert_eq!(get_info.payload, core.get_info());

    // On behalf: the admin's session verifies; the credential is recorded
    // as theirs.
    let admin = acting();
    let made = key
        .ctap(
            &Mc::new("rp.example", b"alice").message(),
            Some(&admin),
            None,
        )
        .await;
    let response = decode_make_credential(&made);
    let attested = response.auth_data.attested_credential_data.unwrap();
    let credential = attested.credential_id().to_vec();
    assert_eq!(made.created.as_ref().unwrap().credential_id, credential);
    let public_key = attested.key.to_sec1_octet_string().unwrap();

    // Normal mode: asking first, then with the owner's approval, which signs.
    let hash = [0x42; 32];
    let sign_in = get_assertion_message("rp.example", &hash, &[credential]);
    let unapproved = key.ctap(&sign_in, None, None).await;
    assert!(unapproved.payload.is_empty());
    assert_eq!(unapproved.approval_needed.unwrap().rp_id, "rp.example");
    let owner = UserApproval::granted_by_device("phone");
    let signed = key.ctap(&sign_in, None, Some(&owner)).await;
    verify_assertion(&public_key, &signed, &hash);

    // What the signer's front door refuses, it refuses too.
    let oversized = vec![0x01; obr_proto::MAX_CTAP_MESSAGE + 1];
    assert_eq!(key.ctap(&oversized, None, None).await.status(), 0x03);
    assert_eq!(key.ctap(&[], None, None).await.status(), 0x01);
    let core_reply = core.ctap(call("alice", oversized)).await;
    assert_eq!(core_reply.status(), 0x03);
}

#[tokio::test]
async fn a_direct_key_refuses_a_malformed_user_id() {
    let error = DirectKey::open(&in_memory(), "").await.unwrap_err();
    assert!(error.to_string().contains("invalid argument"), "{error}");
}
