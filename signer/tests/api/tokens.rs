//! pinUvAuthTokens through `SignerCore::ctap`: authenticatorClientPIN
//! getPinUvAuthTokenUsingUvWithPermissions (CTAP 2.1 §6.5.5.7.3) with both
//! PIN/UV auth protocols, on-behalf and in normal mode, and the token's use
//! by makeCredential (§6.1.2 steps 11.1 and 14) and getAssertion (§6.2.2
//! steps 6.1 and 9) — the way Chromium and python-fido2 ask a key with
//! built-in user verification for UV. Time-dependent rules (the usage
//! timer) are unit tests beside the token (`ctap::tests::tokens`).

use ciborium::value::Value;
use obr_signer::{CtapCall, CtapReply, Operation, SignerConfig, SignerCore};
use passkey_types::ctap2::Flags;
use ring::hmac;

use crate::authenticator::{
    Platform, map_get, mc_with_extensions, mc_with_hmac_secret, response_map,
};
use crate::common::*;

const RP: &str = "login.example.com";
const CLIENT_PIN: u8 = 0x06;
/// The clientDataHash `Mc::params` sends.
const MC_CLIENT_DATA_HASH: [u8; 32] = [0xC1; 32];
/// The clientDataHash of the getAssertions here.
const GA_CLIENT_DATA_HASH: [u8; 32] = [0x6A; 32];
const MC: i64 = 0x01;
const GA: i64 = 0x02;

// ---------------------------------------------------------------- helpers

/// getPinUvAuthTokenUsingUvWithPermissions for `platform`'s key.
fn token_request(
    platform: &Platform,
    protocol: u8,
    permissions: i64,
    rp_id: Option<&str>,
) -> Vec<u8> {
    let mut params = vec![
        (int(1), int(protocol.into())),
        (int(2), int(6)),
        (int(3), platform.key_agreement.clone()),
        (int(9), int(permissions)),
    ];
    if let Some(rp_id) = rp_id {
        params.push((int(0x0A), text(rp_id)));
    }
    message(CLIENT_PIN, params)
}

/// The encrypted token of a successful answer, decrypted.
fn token_of(platform: &Platform, reply: &CtapReply) -> Vec<u8> {
    let Some(Value::Bytes(encrypted)) = map_get(&response_map(&reply.payload), &int(2)) else {
        panic!("no pinUvAuthToken in {:02X?}", reply.payload);
    };
    assert_eq!(
        encrypted.len(),
        if platform.protocol() == 1 { 32 } else { 48 },
        "protocol two prepends its IV"
    );
    platform.decrypt(&encrypted)
}

/// getKeyAgreement + a token request sent by `send` (an on-behalf call, an
/// approved call, ...): the token in clear.
async fn obtain(
    core: &SignerCore,
    send: fn(&str, Vec<u8>) -> CtapCall,
    protocol: u8,
    permissions: i64,
    rp_id: Option<&str>,
) -> Vec<u8> {
    let platform = Platform::new(core, "alice", protocol).await;
    let reply = core
        .ctap(send(
            "alice",
            token_request(&platform, protocol, permissions, rp_id),
        ))
        .await;
    let token = token_of(&platform, &reply);
    assert_eq!(token.len(), 32);
    token
}

/// pinUvAuthParam = authenticate(token, clientDataHash) (§6.5.6, §6.5.7).
fn pin_uv_auth_param(protocol: u8, token: &[u8], client_data_hash: &[u8]) -> Value {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, token), client_data_hash);
    let len = if protocol == 1 { 16 } else { 32 };
    Value::Bytes(tag.as_ref()[..len].to_vec())
}

/// makeCredential `mc` carrying the token.
fn mc_with_token(mc: &Mc, protocol: u8, token: &[u8]) -> Vec<u8> {
    let mut params = mc.params();
    params.push((
        int(8),
        pin_uv_auth_param(protocol, token, &MC_CLIENT_DATA_HASH),
    ));
    params.push((int(9), int(protocol.into())));
    message(0x01, params)
}

/// getAssertion at `rp` carrying the token; `up` false is a silent
/// pre-flight (python-fido2's allowList filter).
fn ga_with_token(rp: &str, allow: &[Vec<u8>], protocol: u8, token: &[u8], up: bool) -> Vec<u8> {
    let mut params = vec![
        (int(1), text(rp)),
        (int(2), Value::Bytes(GA_CLIENT_DATA_HASH.to_vec())),
        (
            int(6),
            pin_uv_auth_param(protocol, token, &GA_CLIENT_DATA_HASH),
        ),
        (int(7), int(protocol.into())),
    ];
    if !allow.is_empty() {
        params.push((int(3), descriptors(allow)));
    }
    if !up {
        params.push((int(5), Value::Map(vec![(text("up"), Value::Bool(false))])));
    }
    message(0x02, params)
}

fn flags(reply: &CtapReply) -> Flags {
    decode_get_assertion(reply).auth_data.flags
}

// ------------------------------------------------------------------ tests

/// The owner approved "register a passkey at RP" on their device: the
/// token's presence does not also stand for a sign-in there. A sign-in
/// with it asks the owner again; a silent check (`up` false, how platforms
/// probe an exclude list) is verified and needs no one; the registration
/// it was approved for then goes ahead unasked.
#[tokio::test]
async fn an_owner_token_approved_for_registering_does_not_sign_in_unasked() {
    let db = TempDb::new();
    let core = open(&db).await;
    let existing = core
        .ctap(obr_call(
            "alice",
            message(0x01, Mc::new(RP, b"user-0").params()),
        ))
        .await
        .created
        .expect("created")
        .credential_id;
    let token = obtain(&core, call, 2, MC | GA, Some(RP)).await;
    let signing_in = core
        .ctap(unapproved_call(
            "alice",
            ga_with_token(RP, std::slice::from_ref(&existing), 2, &token, true),
        ))
        .await;
    let needed = signing_in
        .approval_needed
        .expect("a sign-in needs its own approval");
    assert_eq!(needed.operation, Operation::SignIn);
    let silent = core
        .ctap(unapproved_call(
            "alice",
            ga_with_token(RP, std::slice::from_ref(&existing), 2, &token, false),
        ))
        .await;
    assert!(silent.approval_needed.is_none());
    assert_eq!(flags(&silent), Flags::UV | Flags::BE | Flags::BS);
    let reply = core
        .ctap(unapproved_call(
            "alice",
            mc_with_token(&Mc::new(RP, b"user-1"), 2, &token),
        ))
        .await;
    assert!(reply.approval_needed.is_none(), "the registration approved");
    assert_eq!(
        decode_make_credential(&reply).auth_data.flags,
        Flags::UP | Flags::UV | Flags::BE | Flags::BS | Flags::AT
    );
}

#[tokio::test]
async fn on_behalf_tokens_of_both_protocols_verify_registration_and_sign_in() {
    let db = TempDb::new();
    let core = open(&db).await;
    for protocol in [1u8, 2] {
        let mc = Mc::new(RP, &[protocol; 8]);
        let token = obtain(&core, obr_call, protocol, MC | GA, Some(RP)).await;
        let reply = core
            .ctap(obr_call("alice", mc_with_token(&mc, protocol, &token)))
            .await;
        let response = decode_make_credential(&reply);
        assert_eq!(
            response.auth_data.flags,
            Flags::UP | Flags::UV | Flags::BE | Flags::BS | Flags::AT,
            "protocol {protocol}"
        );
        let attested = response.auth_data.attested_credential_data.unwrap();
        let public_key = attested.key.to_sec1_octet_string().unwrap();
        let id = attested.credential_id().to_vec();
        // Registered on the user's behalf, by the admin.
        let listed = core.list_credentials("alice").await.unwrap();
        let listed = listed.iter().find(|c| c.credential_id == id).unwrap();
        assert_eq!(listed.created_by_admin.as_deref(), Some("admin-7"));
        // The registration spent the token (§6.1.2 step 14.4).
        let again = core
            .ctap(obr_call("alice", mc_with_token(&mc, protocol, &token)))
            .await;
        assert_eq!(again.status(), 0x33);

        // Sign in by allowList with a fresh ga token.
        let token = obtain(&core, obr_call, protocol, GA, Some(RP)).await;
        let reply = core
            .ctap(obr_call(
                "alice",
                ga_with_token(RP, std::slice::from_ref(&id), protocol, &token, true),
            ))
            .await;
        assert_eq!(flags(&reply), Flags::UP | Flags::UV | Flags::BE | Flags::BS);
        verify_assertion(&public_key, &reply, &GA_CLIENT_DATA_HASH);
    }
}

#[tokio::test]
async fn token_requests_answer_the_specs_codes() {
    let db = TempDb::new();
    let core = open(&db).await;
    let platform = Platform::new(&core, "alice", 2).await;
    let full = |drop: i64| {
        let Value::Map(params) =
            ciborium::de::from_reader::<Value, _>(&token_request(&platform, 2, MC, Some(RP))[1..])
                .unwrap()
        else {
            unreachable!()
        };
        message(
            CLIENT_PIN,
            params
                .into_iter()
                .filter(|(k, _)| *k != int(drop))
                .collect(),
        )
    };
    let with = |key: i64, value: Value| {
        let Value::Map(mut params) =
            ciborium::de::from_reader::<Value, _>(&token_request(&platform, 2, MC, Some(RP))[1..])
                .unwrap()
        else {
            unreachable!()
        };
        params.retain(|(k, _)| *k != int(key));
        params.push((int(key), value));
        message(CLIENT_PIN, params)
    };
    let mut cases: Vec<(Vec<u8>, u8, &str)> = vec![
        // Step 1: pinUvAuthProtocol, keyAgreement, permissions are
        // mandatory.
        (full(1), 0x14, "no protocol"),
        (full(3), 0x14, "no keyAgreement"),
        (full(9), 0x14, "no permissions"),
        // Step 2: an unsupported protocol.
        (with(1, int(3)), 0x02, "protocol 3"),
        // Step 3: no permission at all.
        (with(9, int(0)), 0x02, "permissions 0"),
        (with(9, int(-1)), 0x11, "negative permissions"),
        (with(9, text("mc")), 0x11, "permissions as text"),
        // A keyAgreement that is not a P-256 point, or not a map.
        (
            with(
                3,
                Value::Map(vec![
                    (int(1), int(2)),
                    (int(-1), int(1)),
                    (int(-2), Value::Bytes(vec![0; 32])),
                    (int(-3), Value::Bytes(vec![0; 32])),
                ]),
            ),
            0x02,
            "not a point",
        ),
        (with(3, int(7)), 0x11, "keyAgreement not a map"),
        // rpId: a domain name.
        (with(0x0A, text("")), 0x03, "empty rpId"),
        (with(0x0A, text(&"a".repeat(254))), 0x03, "rpId too long"),
        (with(0x0A, int(1)), 0x11, "rpId not text"),
    ];
    // Step 4: defined permissions this key cannot authorize (cm, be, lbw,
    // acfg, pcmr), alone or beside mc.
    for bit in [0x04, 0x08, 0x10, 0x20, 0x40, 0x05] {
        cases.push((with(9, int(bit)), 0x40, "unauthorized permission"));
    }
    for (request, status, what) in cases {
        let reply = core.ctap(obr_call("alice", request)).await;
        assert_eq!(reply.status(), status, "{what}");
    }
    // The well-formed request works, and again: the key-agreement key is
    // the authenticator's, not the request's (§6.5.6).
    let request = token_request(&platform, 2, MC, Some(RP));
    for _ in 0..2 {
        let reply = core.ctap(obr_call("alice", request.clone())).await;
        assert_eq!(token_of(&platform, &reply).len(), 32);
    }
    // A key that never answered getKeyAgreement has nothing to agree with:
    // decapsulate's CTAP1_ERR_INVALID_PARAMETER.
    let reply = core.ctap(obr_call("bob", request)).await;
    assert_eq!(reply.status(), 0x02);
}

/// python-fido2's order for a user-verified sign-in with hmac-secret:
/// getKeyAgreement for the extension, getKeyAgreement again for the token,
/// the token request, and only then the assertion with the extension's
/// agreement. Both agreements are with the same key.
#[tokio::test]
async fn hmac_secret_and_a_token_agree_with_the_same_key() {
    let db = TempDb::new();
    let core = open(&db).await;
    let reply = core
        .ctap(obr_call(
            "alice",
            mc_with_hmac_secret(&Mc::new(RP, b"user-1")),
        ))
        .await;
    let id = reply.created.expect("created").credential_id;
    let for_hmac = Platform::new(&core, "alice", 2).await;
    let for_token = Platform::new(&core, "alice", 2).await;
    assert_eq!(
        for_hmac.authenticator_key, for_token.authenticator_key,
        "getKeyAgreement answers the same key"
    );
    let reply = core
        .ctap(obr_call(
            "alice",
            token_request(&for_token, 2, GA, Some(RP)),
        ))
        .await;
    let token = token_of(&for_token, &reply);
    let mut params = vec![
        (int(1), text(RP)),
        (int(2), Value::Bytes(GA_CLIENT_DATA_HASH.to_vec())),
        (int(3), descriptors(std::slice::from_ref(&id))),
        (
            int(4),
            Value::Map(vec![(
                text("hmac-secret"),
                for_hmac.hmac_secret_input(&[7; 32]),
            )]),
        ),
    ];
    params.push((int(6), pin_uv_auth_param(2, &token, &GA_CLIENT_DATA_HASH)));
    params.push((int(7), int(2)));
    let reply = core.ctap(obr_call("alice", message(0x02, params))).await;
    assert_eq!(
        flags(&reply),
        Flags::UP | Flags::UV | Flags::ED | Flags::BE | Flags::BS
    );
}

#[tokio::test]
async fn token_use_is_pin_auth_invalid_unless_everything_matches() {
    let db = TempDb::new();
    let core = open(&db).await;
    // Made in the session, so the session may sign with it.
    let reply = core
        .ctap(obr_call("alice", Mc::new(RP, b"user-1").message()))
        .await;
    let id = decode_make_credential(&reply)
        .auth_data
        .attested_credential_data
        .expect("attested credential data")
        .credential_id()
        .to_vec();
    let allow = std::slice::from_ref(&id);
    let token = obtain(&core, obr_call, 2, GA, Some(RP)).await;
    let silent =
        |rp: &str, protocol: u8, token: &[u8]| ga_with_token(rp, allow, protocol, token, false);

    let mut wrong_mac = token.clone();
    wrong_mac[0] ^= 1;
    let mut no_protocol = mc_with_token(&Mc::new(RP, b"user-2"), 2, &token);
    // Cut member 0x09 (the last one) by re-encoding without it.
    no_protocol = {
        let Value::Map(params) = ciborium::de::from_reader::<Value, _>(&no_protocol[1..]).unwrap()
        else {
            unreachable!()
        };
        message(
            0x01,
            params.into_iter().filter(|(k, _)| *k != int(9)).collect(),
        )
    };
    for (request, status, what) in [
        // §6.1.2/§6.2.2 step 2: a pinUvAuthParam needs its protocol.
        (no_protocol, 0x14, "no pinUvAuthProtocol"),
        // 11.1.1 / 6.1.1: the MAC must verify under the token.
        (silent(RP, 2, &wrong_mac), 0x33, "wrong MAC"),
        // The token was obtained under protocol two.
        (silent(RP, 1, &token), 0x33, "other protocol"),
        // 6.1.5: the permissions RP ID.
        (silent("other.example.com", 2, &token), 0x33, "other RP"),
        // 11.1.2: a ga-only token cannot register.
        (
            mc_with_token(&Mc::new(RP, b"user-2"), 2, &token),
            0x33,
            "no mc permission",
        ),
    ] {
        let reply = core.ctap(obr_call("alice", request)).await;
        assert_eq!(reply.status(), status, "{what}");
    }
    // None of those spent it: a silent pre-flight is answered (on behalf:
    // neither UP nor UV, see obr_scope)...
    let reply = core.ctap(obr_call("alice", silent(RP, 2, &token))).await;
    assert_eq!(flags(&reply), Flags::BE | Flags::BS);
    // ...and so does the sign-in with presence, which spends it.
    let sign_in = ga_with_token(RP, allow, 2, &token, true);
    let reply = core.ctap(obr_call("alice", sign_in.clone())).await;
    assert_eq!(flags(&reply), Flags::UP | Flags::UV | Flags::BE | Flags::BS);
    let reply = core.ctap(obr_call("alice", sign_in)).await;
    assert_eq!(reply.status(), 0x33, "spent");

    // A new token replaces the old one.
    let first = obtain(&core, obr_call, 1, GA, Some(RP)).await;
    let second = obtain(&core, obr_call, 1, GA, Some(RP)).await;
    let reply = core.ctap(obr_call("alice", silent(RP, 1, &first))).await;
    assert_eq!(reply.status(), 0x33, "replaced");
    let reply = core.ctap(obr_call("alice", silent(RP, 1, &second))).await;
    assert_ok(&reply);
    // A key that never issued a token.
    let (bob_id, _) = make_credential(&core, "bob", &Mc::new(RP, b"bob")).await;
    let reply = core
        .ctap(obr_call(
            "bob",
            ga_with_token(RP, &[bob_id], 1, &second, false),
        ))
        .await;
    assert_eq!(reply.status(), 0x33, "no token");
    // The touch probe keeps its answer.
    let mut probe = Mc::new(RP, b"user-3").params();
    probe.push((int(8), Value::Bytes(Vec::new())));
    probe.push((int(9), int(2)));
    let reply = core.ctap(obr_call("alice", message(0x01, probe))).await;
    assert_eq!(reply.status(), 0x35);
}

/// Normal mode, as Chromium runs it against the owner's own key: the token
/// request waits for the owner's approval on their device (the relay asks
/// and sends it again with the approval); the makeCredential that follows,
/// with the token, needs no second approval.
#[tokio::test]
async fn in_normal_mode_the_owner_approves_the_token_once() {
    let db = TempDb::new();
    let core = open(&db).await;
    let platform = Platform::new(&core, "alice", 2).await;
    // Without an RP ID the owner could not be told which site: refused
    // (CTAP2_ERR_MISSING_PARAMETER), and nobody is asked.
    let blind = core
        .ctap(unapproved_call(
            "alice",
            token_request(&platform, 2, MC | GA, None),
        ))
        .await;
    assert!(blind.approval_needed.is_none());
    assert_eq!(blind.status(), 0x14);
    let request = token_request(&platform, 2, MC | GA, Some(RP));
    let asked = core.ctap(unapproved_call("alice", request.clone())).await;
    assert!(asked.payload.is_empty());
    let needed = asked.approval_needed.expect("approval needed");
    assert_eq!(needed.rp_id, RP);
    assert_eq!(needed.operation, Operation::Register);
    assert!(needed.user_verification);
    // Approved: the same message (the key-agreement key was kept).
    let reply = core.ctap(call("alice", request)).await;
    let token = token_of(&platform, &reply);
    let mc = Mc::new(RP, b"user-1");
    let reply = core
        .ctap(unapproved_call("alice", mc_with_token(&mc, 2, &token)))
        .await;
    assert!(reply.approval_needed.is_none(), "approved once, not twice");
    assert_eq!(
        decode_make_credential(&reply).auth_data.flags,
        Flags::UP | Flags::UV | Flags::BE | Flags::BS | Flags::AT
    );
    assert_eq!(
        core.list_credentials("alice").await.unwrap()[0].created_by_admin,
        None,
        "the owner's own credential"
    );
    // Spent: the next registration asks again (no approval on the call).
    let reply = core
        .ctap(unapproved_call(
            "alice",
            mc_with_token(&Mc::new(RP, b"user-2"), 2, &token),
        ))
        .await;
    assert_eq!(reply.status(), 0x33);
    // A ga token is a sign-in question, for its site.
    let platform = Platform::new(&core, "alice", 1).await;
    let asked = core
        .ctap(unapproved_call(
            "alice",
            token_request(&platform, 1, GA, Some(RP)),
        ))
        .await;
    let needed = asked.approval_needed.expect("approval needed");
    assert_eq!(needed.operation, Operation::SignIn);
    assert_eq!(needed.rp_id, RP);
    // An on-behalf token does not serve the owner, nor the reverse.
    let token = obtain(&core, obr_call, 2, GA, Some(RP)).await;
    let (id, _) = make_credential(&core, "alice", &Mc::new(RP, b"user-3")).await;
    let reply = core
        .ctap(call(
            "alice",
            ga_with_token(RP, std::slice::from_ref(&id), 2, &token, false),
        ))
        .await;
    assert_eq!(reply.status(), 0x33);
    let token = obtain(&core, call, 2, GA, Some(RP)).await;
    let reply = core
        .ctap(obr_call(
            "alice",
            ga_with_token(RP, std::slice::from_ref(&id), 2, &token, false),
        ))
        .await;
    assert_eq!(reply.status(), 0x33);
}

/// `--obr-stands-for-uv false`: no token on behalf (the same refusal the
/// `uv` option gets); the owner's approval still verifies.
#[tokio::test]
async fn policy_can_forbid_on_behalf_tokens() {
    let db = TempDb::new();
    let core = open_forbidding_obr_uv(&db).await;
    let platform = Platform::new(&core, "alice", 2).await;
    let request = token_request(&platform, 2, MC, Some(RP));
    let reply = core.ctap(obr_call("alice", request.clone())).await;
    assert_eq!(reply.status(), 0x27);
    let reply = core.ctap(call("alice", request)).await;
    assert_eq!(token_of(&platform, &reply).len(), 32);
}

/// python-fido2's sign-in by allowList with UV: a silent pre-flight
/// (`up` false) carrying the token picks the credential, then the sign-in
/// carries the same token. A credProtect-3 credential is visible to both
/// (CTAP 2.1 §12.1: it needs UV, which the token gives), and invisible
/// without a token.
#[tokio::test]
async fn a_cred_protect_3_credential_is_found_by_allow_list_with_a_token() {
    let db = TempDb::new();
    let core = open(&db).await;
    let mut mc = Mc::new(RP, b"user-1");
    mc.uv = true;
    let reply = core
        .ctap(obr_call(
            "alice",
            mc_with_extensions(&mc, vec![(text("credProtect"), int(3))]),
        ))
        .await;
    let id = reply.created.expect("created").credential_id;
    let allow = std::slice::from_ref(&id);
    let without_token = core
        .ctap(obr_call(
            "alice",
            get_assertion_message(RP, &GA_CLIENT_DATA_HASH, allow),
        ))
        .await;
    assert_eq!(without_token.status(), 0x2E, "hidden without UV");

    let token = obtain(&core, obr_call, 2, GA, Some(RP)).await;
    let preflight = core
        .ctap(obr_call(
            "alice",
            ga_with_token(RP, allow, 2, &token, false),
        ))
        .await;
    // Found (the token's UV makes it visible); on behalf a silent lookup
    // claims no UV.
    assert_eq!(flags(&preflight), Flags::BE | Flags::BS);
    let sign_in = core
        .ctap(obr_call("alice", ga_with_token(RP, allow, 2, &token, true)))
        .await;
    let response = decode_get_assertion(&sign_in);
    assert_eq!(
        response.auth_data.flags,
        Flags::UP | Flags::UV | Flags::BE | Flags::BS
    );
    assert_eq!(response.credential.unwrap().id.to_vec(), id);
}

/// A token lives in the user's actor only: once the actor passivates, the
/// next activation has no token (and a new key-agreement key).
#[tokio::test]
async fn a_token_does_not_survive_passivation() {
    let db = TempDb::new();
    let core = SignerCore::open(SignerConfig {
        idle_passivation: std::time::Duration::from_millis(50),
        ..config(&db)
    })
    .await
    .unwrap();
    // Made in the session, so the session may sign with it.
    let reply = core
        .ctap(obr_call("alice", Mc::new(RP, b"user-1").message()))
        .await;
    let id = decode_make_credential(&reply)
        .auth_data
        .attested_credential_data
        .expect("attested credential data")
        .credential_id()
        .to_vec();
    let allow = std::slice::from_ref(&id);
    let token = obtain(&core, obr_call, 2, GA, Some(RP)).await;
    let silent = ga_with_token(RP, allow, 2, &token, false);
    assert_ok(&core.ctap(obr_call("alice", silent.clone())).await);
    // The actor runs on its own runtime with real time: poll, bounded.
    let give_up = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while core.is_active("alice") {
        assert!(
            tokio::time::Instant::now() < give_up,
            "actor never passivated"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(core.ctap(obr_call("alice", silent)).await.status(), 0x33);
}
