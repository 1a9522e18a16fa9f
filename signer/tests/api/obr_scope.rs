//! Least-privilege OBR: an on-behalf session creates credentials on the
//! user's key and never signs in with the user's others. Each case below
//! is one row of the rule in `ctap/get_assertion.rs`
//! (`on_behalf_candidates`): silent lookups see everything, presence signs
//! only with what the same session created, everything else is refused
//! with `CTAP2_ERR_OPERATION_DENIED` and reported for the audit log.

use ciborium::value::Value;
use obr_signer::{CtapCall, ObrActing, ObrAssertion, SignerCore};

use crate::common::*;

const RP: &str = "example.com";
const CDH: [u8; 32] = [7; 32];
const OPERATION_DENIED: u8 = 0x27;

fn in_session(user: &str, session: &str, payload: Vec<u8>) -> CtapCall {
    CtapCall {
        obr: Some(ObrActing {
            obr_session_id: session.to_owned(),
            ..acting()
        }),
        ..obr_call(user, payload)
    }
}

/// A getAssertion for `allow` (empty: discoverable), with or without
/// user presence.
fn ga(allow: &[Vec<u8>], up: bool) -> Vec<u8> {
    let mut params = vec![(int(1), text(RP)), (int(2), Value::Bytes(CDH.to_vec()))];
    if !allow.is_empty() {
        params.push((int(3), descriptors(allow)));
    }
    if !up {
        params.push((int(5), Value::Map(vec![(text("up"), Value::Bool(false))])));
    }
    message(0x02, params)
}

async fn create(core: &SignerCore, call: CtapCall) -> Vec<u8> {
    let reply = core.ctap(call).await;
    decode_make_credential(&reply)
        .auth_data
        .attested_credential_data
        .expect("attested credential data")
        .credential_id()
        .to_vec()
}

fn signed(id: &[u8]) -> Option<ObrAssertion> {
    Some(ObrAssertion {
        credential_id: id.to_vec(),
        rp_id: RP.to_owned(),
        refused: false,
    })
}

fn refused(id: &[u8]) -> Option<ObrAssertion> {
    Some(ObrAssertion {
        credential_id: id.to_vec(),
        rp_id: RP.to_owned(),
        refused: true,
    })
}

#[tokio::test]
async fn a_session_signs_only_with_what_it_created() {
    let db = TempDb::new();
    let core = open(&db).await;
    // The user's own passkey, an earlier session's, and this session's.
    let own = create(&core, call("alice", Mc::new(RP, b"own").rk().message())).await;
    let earlier = create(
        &core,
        in_session("alice", "session-1", Mc::new(RP, b"earlier").rk().message()),
    )
    .await;
    let now = create(
        &core,
        in_session("alice", "session-2", Mc::new(RP, b"now").rk().message()),
    )
    .await;

    for (allow, up, status, reported, what) in [
        // Presence, by allowList: only this session's credential signs.
        (
            vec![own.clone()],
            true,
            OPERATION_DENIED,
            refused(&own),
            "the user's own",
        ),
        (
            vec![earlier.clone()],
            true,
            OPERATION_DENIED,
            refused(&earlier),
            "an earlier session's",
        ),
        (
            vec![now.clone()],
            true,
            0x00,
            signed(&now),
            "this session's",
        ),
        (
            vec![own.clone(), now.clone()],
            true,
            0x00,
            signed(&now),
            "mixed list",
        ),
        // Silent lookups (exclude-list pre-flight): every credential, unreported.
        (
            vec![own.clone()],
            false,
            0x00,
            None,
            "silent, the user's own",
        ),
        (
            vec![earlier.clone()],
            false,
            0x00,
            None,
            "silent, an earlier session's",
        ),
        // Discoverable with presence: this session's only.
        (vec![], true, 0x00, signed(&now), "discoverable"),
    ] {
        let reply = core
            .ctap(in_session("alice", "session-2", ga(&allow, up)))
            .await;
        assert_eq!(reply.status(), status, "{what}");
        assert_eq!(reply.obr_assertion, reported, "{what}");
        if status == 0x00 && up {
            let response = decode_get_assertion(&reply);
            assert_eq!(
                response.credential.map(|c| c.id.to_vec()),
                Some(now.clone()),
                "{what}"
            );
            assert_eq!(
                response.number_of_credentials, None,
                "{what}: one credential only"
            );
        }
    }

    // In a session that created nothing, a discoverable sign-in is refused.
    let reply = core
        .ctap(in_session("alice", "session-3", ga(&[], true)))
        .await;
    assert_eq!(reply.status(), OPERATION_DENIED);
    assert!(reply.obr_assertion.is_some_and(|a| a.refused));

    // Normal mode is untouched: the owner signs with any of them, unreported.
    let reply = core
        .ctap(call("alice", ga(std::slice::from_ref(&own), true)))
        .await;
    assert_ok(&reply);
    assert_eq!(reply.obr_assertion, None);
}

#[tokio::test]
async fn a_session_with_no_credentials_at_the_rp_gets_no_credentials() {
    let db = TempDb::new();
    let core = open(&db).await;
    let reply = core
        .ctap(in_session("bob", "session-1", ga(&[vec![1; 32]], true)))
        .await;
    assert_eq!(reply.status(), 0x2E, "CTAP2_ERR_NO_CREDENTIALS, as any key");
    assert_eq!(reply.obr_assertion, None);
}

/// A silent on-behalf lookup answers only "this credential exists": no UV
/// even when asked, no enumeration, and its signature is not over the
/// caller's clientDataHash — so it can never serve a relying party as a
/// sign-in, even one that does not check UP.
#[tokio::test]
async fn a_silent_lookup_on_behalf_signs_nothing_usable() {
    use passkey_types::ctap2::Flags;
    let db = TempDb::new();
    let core = open(&db).await;
    let (own, public_key) = make_credential(&core, "alice", &Mc::new(RP, b"own").rk()).await;
    make_credential(&core, "alice", &Mc::new(RP, b"own-2").rk()).await;
    let mut params = vec![
        (int(1), text(RP)),
        (int(2), Value::Bytes(CDH.to_vec())),
        (int(3), descriptors(std::slice::from_ref(&own))),
        (
            int(5),
            Value::Map(vec![
                (text("up"), Value::Bool(false)),
                (text("uv"), Value::Bool(true)),
            ]),
        ),
    ];
    let reply = core
        .ctap(in_session(
            "alice",
            "session-1",
            message(0x02, params.clone()),
        ))
        .await;
    let response = decode_get_assertion(&reply);
    assert_eq!(
        response.auth_data.flags,
        Flags::BE | Flags::BS,
        "no UP, no UV"
    );
    let signed_over_cdh = std::panic::catch_unwind(|| verify_assertion(&public_key, &reply, &CDH));
    assert!(
        signed_over_cdh.is_err(),
        "the caller's clientDataHash was signed"
    );
    // Discoverable: the first one only, no enumeration to continue.
    params.remove(2);
    let reply = core
        .ctap(in_session("alice", "session-1", message(0x02, params)))
        .await;
    assert_eq!(decode_get_assertion(&reply).number_of_credentials, None);
    let next = core
        .ctap(in_session("alice", "session-1", vec![0x08]))
        .await;
    assert_eq!(next.status(), 0x30, "CTAP2_ERR_NOT_ALLOWED");
}

/// The owner's own discoverable sign-in (approved on their device) leaves
/// an enumeration behind; an OBR session must not continue it with
/// getNextAssertion and get the owner's next credential signed.
#[tokio::test]
async fn an_obr_session_cannot_continue_the_owners_enumeration() {
    let db = TempDb::new();
    let core = open(&db).await;
    make_credential(&core, "alice", &Mc::new(RP, b"one").rk()).await;
    make_credential(&core, "alice", &Mc::new(RP, b"two").rk()).await;
    let reply = core.ctap(call("alice", ga(&[], true))).await;
    assert_eq!(decode_get_assertion(&reply).number_of_credentials, Some(2));
    let stolen = core
        .ctap(in_session("alice", "session-1", vec![0x08]))
        .await;
    assert_eq!(stolen.status(), 0x30, "CTAP2_ERR_NOT_ALLOWED");
    assert_eq!(stolen.obr_assertion, None);
}
