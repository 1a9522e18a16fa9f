//! The first seed, end to end through real processes (relay with its
//! embedded signer, agent), with webauthn-rs as the relying party: the
//! admin logs in on the agent, selects a user as OBR, registers a passkey
//! on the user's key, the user is notified, the passkey shows as created by
//! that admin, the admin goes back to normal mode, and the passkey then
//! signs in for the user.

use std::time::{Duration, Instant};

use obr_tests::api::Api;
use obr_tests::hid_client::HidClient;
use obr_tests::processes::{AgentProc, Stack};
use obr_tests::rp;
use webauthn_rs::prelude::Uuid;

const CTAP2_ERR_NO_CREDENTIALS: u8 = 0x2E;
const FLAG_UP: u8 = 0x01;
const FLAG_UV: u8 = 0x04;

#[test]
fn on_behalf_registration_then_the_user_signs_in() -> anyhow::Result<()> {
    let stack = Stack::start("story")?;
    let api = Api::new(&stack.relay.url);
    let demo = &stack.relay.demo;
    let bob = stack.relay.user("bob@demo.obr")?;
    let admin = api.demo_owner(demo)?;

    // 1-3: Ctrl+I, approve in the panel, "Ready for on behalf registration".
    assert_eq!(
        stack
            .agent
            .cli(&["status"])?
            .trim_start()
            .split(" [")
            .next(),
        Some("not logged in")
    );
    let status = stack.agent.login(&api, &admin)?;
    assert!(
        status.contains("ready for on behalf registration"),
        "{status}"
    );

    // 4: Users → bob → Action → Select as OBR.
    let session = stack.agent.select_as_obr(&api, &admin, bob)?;

    // 5: register a security key on bob's account at the RP.
    let webauthn = rp::webauthn()?;
    let (request, reg_state) = rp::start_registration(&webauthn, "bob", "Bob at the RP")?;
    let mut hid = HidClient::open(&stack.agent.hid_socket)?;
    let started = Instant::now();
    let response = hid.cbor(&request.ctap_request)?;
    let round_trip = started.elapsed();
    eprintln!("makeCredential round trip agent→relay→signer→back: {round_trip:?}");
    let flags = rp::auth_data_flags(&response)?;
    assert_eq!(
        flags & (FLAG_UP | FLAG_UV),
        FLAG_UP,
        "UP set; UV only when the RP asks"
    );
    let key =
        webauthn.finish_securitykey_registration(&request.credential(&response)?, &reg_state)?;

    // 6: bob is told at once: who, which RP.
    let inbox = api.notifications(bob.device_token.as_deref().unwrap())?;
    let registered = inbox
        .iter()
        .find(|n| n["kind"] == "obr.registration")
        .ok_or_else(|| anyhow::anyhow!("no registration notification in {inbox:?}"))?;
    assert_eq!(registered["detail"]["admin"], demo.admin_email.as_str());
    assert_eq!(registered["detail"]["rp_id"], rp::RP_ID);
    assert!(inbox.iter().any(|n| n["kind"] == "obr.started"));

    // The passkey is on bob's key, created by the admin in that session.
    let passkeys = api.passkeys(&admin, &bob.id)?;
    assert_eq!(passkeys.len(), 1, "{passkeys:?}");
    assert_eq!(passkeys[0]["rp_id"], rp::RP_ID);
    assert_eq!(passkeys[0]["created_by_admin"], demo.admin_id.as_str());
    assert_eq!(passkeys[0]["obr_session_id"], session["id"]);

    // Back to normal mode.
    assert_eq!(
        stack.agent.cli(&["back-to-normal"])?.trim(),
        "back to normal mode"
    );
    stack
        .agent
        .wait_status("ready for on behalf registration", Duration::from_secs(5))?;

    // The admin's workstation no longer reaches bob's key.
    let (auth_options, _) =
        webauthn.start_securitykey_authentication(std::slice::from_ref(&key))?;
    let assertion = rp::get_assertion(&auth_options)?;
    let refused = hid.cbor(&assertion.ctap_request)?;
    assert_eq!(refused, vec![CTAP2_ERR_NO_CREDENTIALS]);

    // Bob signs in from his own workstation: an agent he logged in himself.
    let bob_agent = AgentProc::start(&stack.scratch.join("bob-agent"), &stack.relay.url)?;
    let status = bob_agent.login(&api, bob.device_token.as_deref().unwrap())?;
    assert!(status.contains("normal mode (bob@demo.obr)"), "{status}");
    let mut bob_hid = HidClient::open(&bob_agent.hid_socket)?;
    let (auth_options, auth_state) =
        webauthn.start_securitykey_authentication(std::slice::from_ref(&key))?;
    let assertion = rp::get_assertion(&auth_options)?;
    // His own key asks his phone first; he approves.
    let device = bob.device_token.clone().unwrap();
    let head = api.inbox_head(&device)?;
    let phone = {
        let url = stack.relay.url.clone();
        std::thread::spawn(move || {
            Api::new(&url).answer_next_approval(&device, head, true, Duration::from_secs(10))
        })
    };
    let response = bob_hid.cbor(&assertion.ctap_request)?;
    phone.join().expect("phone thread")?;
    let result = webauthn
        .finish_securitykey_authentication(&assertion.credential(&response)?, &auth_state)?;
    assert!(result.counter() >= 1);

    // Every transition is in the audit log, and the chain holds.
    let audit = api.audit(&admin)?;
    assert_eq!(audit["chain_intact"], true);
    let actions = obr_tests::api::audit_actions(&audit);
    for expected in ["obr.ready", "obr.started", "obr.registration", "obr.ended"] {
        assert!(
            actions.iter().any(|a| a == expected),
            "{expected} missing from {actions:?}"
        );
    }
    assert!(
        api.notifications(bob.device_token.as_deref().unwrap())?
            .iter()
            .any(|n| n["kind"] == "obr.ended")
    );
    Ok(())
}

#[test]
fn passkey_with_user_verification_and_excluded_credentials() -> anyhow::Result<()> {
    let stack = Stack::start("passkey")?;
    let api = Api::new(&stack.relay.url);
    let demo = &stack.relay.demo;
    let carol = stack.relay.user("carol@demo.obr")?;
    let admin = api.demo_owner(demo)?;
    stack.agent.login(&api, &admin)?;
    stack.agent.select_as_obr(&api, &admin, carol)?;

    // webauthn-rs passkeys require user verification: the OBR session
    // stands for it, so the key sets UV.
    let webauthn = rp::webauthn()?;
    let user = Uuid::new_v4();
    let (options, state) = webauthn.start_passkey_registration(user, "carol", "Carol", None)?;
    let request = rp::make_credential(&options, true)?;
    let mut hid = HidClient::open(&stack.agent.hid_socket)?;
    let response = hid.cbor(&request.ctap_request)?;
    let flags = rp::auth_data_flags(&response)?;
    assert_eq!(
        flags & FLAG_UV,
        FLAG_UV,
        "asked for UV in OBR: the session stands for it"
    );
    let passkey = webauthn.finish_passkey_registration(&request.credential(&response)?, &state)?;

    // Registering again with the credential excluded is refused.
    let (options, _) = webauthn.start_passkey_registration(
        user,
        "carol",
        "Carol",
        Some(vec![passkey.cred_id().clone()]),
    )?;
    let again = rp::make_credential(&options, true)?;
    assert_eq!(
        hid.cbor(&again.ctap_request)?,
        vec![0x19],
        "CTAP2_ERR_CREDENTIAL_EXCLUDED"
    );

    // Sign-ins: the counter strictly increases. Each one is a full round
    // trip browser → agent → relay → signer (counter committed) → back.
    let mut last = 0;
    let mut round_trips = Vec::new();
    for _ in 0..20 {
        let (options, state) =
            webauthn.start_passkey_authentication(std::slice::from_ref(&passkey))?;
        let assertion = rp::get_assertion(&options)?;
        let started = Instant::now();
        let response = hid.cbor(&assertion.ctap_request)?;
        round_trips.push(started.elapsed());
        let counter = rp::assertion_counter(&response)?;
        assert!(counter > last, "counter {counter} after {last}");
        last = counter;
        let result =
            webauthn.finish_passkey_authentication(&assertion.credential(&response)?, &state)?;
        assert!(result.user_verified());
    }
    // The panel deletes it: gone from the key, audited, carol told.
    let passkeys = api.passkeys(&admin, &carol.id)?;
    assert_eq!(passkeys.len(), 1);
    let id = passkeys[0]["credential_id"].as_str().unwrap().to_owned();
    let path = format!("/api/users/{}/passkeys/{id}", carol.id);
    let device = carol.device_token.as_deref().unwrap();
    assert_eq!(
        api.call("DELETE", &path, Some(device), None)?.status,
        401,
        "users cannot"
    );
    let bad = format!("/api/users/{}/passkeys/not*base64", carol.id);
    assert_eq!(api.call("DELETE", &bad, Some(&admin), None)?.status, 400);
    assert_eq!(api.call("DELETE", &path, Some(&admin), None)?.status, 204);
    assert_eq!(
        api.call("DELETE", &path, Some(&admin), None)?.status,
        404,
        "deleted once"
    );
    assert!(api.passkeys(&admin, &carol.id)?.is_empty());
    assert!(
        api.notifications(device)?
            .iter()
            .any(|n| n["kind"] == "passkey.deleted")
    );

    // A new passkey, then the whole key reset.
    let (options, state) = webauthn.start_passkey_registration(user, "carol", "Carol", None)?;
    let request = rp::make_credential(&options, true)?;
    webauthn.finish_passkey_registration(
        &request.credential(&hid.cbor(&request.ctap_request)?)?,
        &state,
    )?;
    let reset = api
        .call(
            "POST",
            &format!("/api/users/{}/reset-key", carol.id),
            Some(&admin),
            None,
        )?
        .ok()?;
    assert_eq!(reset["deleted_credentials"], 1);
    assert!(api.passkeys(&admin, &carol.id)?.is_empty());
    let audit = api.audit(&admin)?;
    let actions = obr_tests::api::audit_actions(&audit);
    assert!(
        actions.iter().any(|a| a == "passkey.deleted") && actions.iter().any(|a| a == "key.reset"),
        "{actions:?}"
    );

    round_trips.sort();
    eprintln!(
        "getAssertion round trips (20): min {:?}, p50 {:?}, max {:?}",
        round_trips[0], round_trips[10], round_trips[19]
    );
    Ok(())
}
