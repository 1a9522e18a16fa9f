//! "Select as OBR" with the rules an enterprise sets, through the real
//! relay, agent and signer: an RP allow-list and a registration limit
//! (refusals audited, never reaching the key; the session ends by itself at
//! its limit), four eyes by the user or by a second admin (the session
//! waits, serves nothing, and starts the moment it is approved; the
//! requester cannot approve it themself), and bad policies refused.

use std::time::Duration;

use obr_tests::api::{Answer, Api, audit_actions, newest_record, record_detail};
use obr_tests::hid_client::HidClient;
use obr_tests::processes::{RelayOptions, admin_at_agent};
use obr_tests::rp;
use obr_tests::scratch::Scratch;
use serde_json::{Value, json};

const CTAP2_OK: u8 = 0x00;
const CTAP2_ERR_OPERATION_DENIED: u8 = 0x27;

fn select(api: &Api, token: &str, user_id: &str, body: Value) -> anyhow::Result<Answer> {
    api.call(
        "POST",
        &format!("/api/users/{user_id}/obr"),
        Some(token),
        Some(body),
    )
}

#[test]
fn the_allow_list_and_the_limit_bound_a_session() -> anyhow::Result<()> {
    let scratch = Scratch::new("obr-policy")?;
    let (relay, agent, api, admin) = admin_at_agent(&scratch, &RelayOptions::default())?;
    let bob = relay.user("bob@demo.obr")?;
    let mut hid = HidClient::open(&agent.hid_socket)?;

    // Only login.microsoft.com: a registration at obr.test never reaches
    // bob's key, and the attempt is on record.
    let session = select(
        &api,
        &admin,
        &bob.id,
        json!({ "rp_ids": ["Login.Microsoft.com"] }),
    )?;
    assert_eq!(session.status, 201, "{}", session.body);
    assert_eq!(
        session.body["policy"]["rp_ids"],
        json!(["login.microsoft.com"])
    );
    agent.wait_status("OBR: acting for bob@demo.obr", Duration::from_secs(5))?;
    let answer = hid.cbor(&rp::registration_request("bob")?)?;
    assert_eq!(answer.first(), Some(&CTAP2_ERR_OPERATION_DENIED));
    let refused = newest_record(&api.audit(&admin)?, "obr.refused")?;
    let why = record_detail(&refused)?;
    assert_eq!(why["rp_id"], rp::RP_ID);
    assert_eq!(why["reason"], "rp_not_allowed");
    assert!(
        api.passkeys(&admin, &bob.id)?.is_empty(),
        "the key made a passkey"
    );
    api.end_obr(&admin, &agent_id(&api, &admin)?)?.ok()?;
    agent.wait_status("normal mode", Duration::from_secs(5))?;

    // obr.test, two passkeys at most: the second ends the session, and the
    // agent is back in normal mode by itself.
    let session = select(
        &api,
        &admin,
        &bob.id,
        json!({ "rp_ids": [rp::RP_ID], "max_registrations": 2, "ttl_s": 120 }),
    )?;
    assert_eq!(session.status, 201, "{}", session.body);
    let expires = session.body["expires_at_ms"].as_i64().unwrap_or_default()
        - session.body["started_at_ms"].as_i64().unwrap_or_default();
    assert_eq!(expires, 120_000);
    agent.wait_status("OBR: acting for bob@demo.obr", Duration::from_secs(5))?;
    for account in ["bob-1", "bob-2"] {
        let answer = hid.cbor(&rp::registration_request(account)?)?;
        assert_eq!(answer.first(), Some(&CTAP2_OK), "{account}");
    }
    agent.wait_status("normal mode", Duration::from_secs(5))?;
    assert_eq!(api.passkeys(&admin, &bob.id)?.len(), 2);
    let audit = api.audit(&admin)?;
    let ended = record_detail(&newest_record(&audit, "obr.ended")?)?;
    assert_eq!(ended["reason"], "registration_limit_reached");
    let inbox = api.notifications(bob.device_token.as_deref().unwrap_or_default())?;
    assert!(
        inbox.iter().any(|n| n["message"]
            .as_str()
            .is_some_and(|m| m.contains("made the passkeys it was allowed to"))),
        "{inbox:?}"
    );
    Ok(())
}

/// The single agent the demo admin has logged in.
fn agent_id(api: &Api, token: &str) -> anyhow::Result<String> {
    let agents = api.call("GET", "/api/agents", Some(token), None)?.ok()?;
    agents[0]["agent_id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no agent in {agents}"))
}

#[test]
fn the_user_approves_a_session_before_it_starts() -> anyhow::Result<()> {
    let scratch = Scratch::new("obr-four-eyes-user")?;
    let (relay, agent, api, admin) = admin_at_agent(&scratch, &RelayOptions::default())?;
    let (bob, carol) = (relay.user("bob@demo.obr")?, relay.user("carol@demo.obr")?);
    let bob_device = bob.device_token.as_deref().unwrap_or_default();

    let asked = select(&api, &admin, &bob.id, json!({ "four_eyes": "user" }))?;
    assert_eq!(asked.status, 202, "{}", asked.body);
    assert_eq!(asked.body["awaiting"], "user");
    let session_id = asked.body["id"].as_str().unwrap_or_default().to_owned();
    // Waiting: the agent stays in normal mode, also when its socket reads
    // its state again (here: logged in anew), and the panel says why.
    agent.login(&api, &admin)?;
    std::thread::sleep(Duration::from_millis(300));
    let status = agent.cli(&["status"])?;
    assert!(status.contains("normal mode"), "{status}");
    let agents = api.call("GET", "/api/agents", Some(&admin), None)?.ok()?;
    assert_eq!(agents[0]["obr"]["awaiting"], "user", "{agents}");
    // Bob's phone is asked; carol (or the admin) cannot answer for him.
    let inbox = api.notifications(bob_device)?;
    let request = inbox
        .iter()
        .find(|n| n["kind"] == "obr.approval_requested")
        .ok_or_else(|| anyhow::anyhow!("bob was not asked: {inbox:?}"))?;
    assert!(
        request["message"]
            .as_str()
            .unwrap_or_default()
            .contains("admin@demo.obr")
    );
    let decide = |token: &str, approve: bool| {
        api.call(
            "POST",
            &format!("/api/me/obr-sessions/{session_id}/decision"),
            Some(token),
            Some(json!({ "approve": approve })),
        )
    };
    let not_carols = decide(carol.device_token.as_deref().unwrap_or_default(), true)?;
    assert_eq!(not_carols.status, 404, "{}", not_carols.body);
    assert_eq!(decide(&admin, true)?.status, 401);

    // Bob approves: the session starts, the agent is told at once.
    decide(bob_device, true)?.ok()?;
    agent.wait_status("OBR: acting for bob@demo.obr", Duration::from_secs(5))?;
    let mut hid = HidClient::open(&agent.hid_socket)?;
    assert_eq!(
        hid.cbor(&rp::registration_request("bob")?)?.first(),
        Some(&CTAP2_OK)
    );
    let started = newest_record(&api.audit(&admin)?, "obr.started")?;
    assert_eq!(started["actor"], "bob@demo.obr", "{started}");
    assert_eq!(record_detail(&started)?["approved_by"], "bob@demo.obr");
    assert_eq!(decide(bob_device, true)?.status, 404, "decided twice");
    Ok(())
}

#[test]
fn a_second_admin_approves_or_denies_when_the_relay_requires_it() -> anyhow::Result<()> {
    let scratch = Scratch::new("obr-four-eyes-admin")?;
    let options = RelayOptions {
        extra_args: vec!["--obr-four-eyes".into(), "second-admin".into()],
        ..RelayOptions::default()
    };
    let (relay, agent, api, admin) = admin_at_agent(&scratch, &options)?;
    let demo = &relay.demo;
    let bob = relay.user("bob@demo.obr")?;
    let helpdesk = api.demo_helpdesk(demo)?;
    let decide = |token: &str, session: &str, approve: bool| {
        api.call(
            "POST",
            &format!("/api/obr-sessions/{session}/decision"),
            Some(token),
            Some(json!({ "approve": approve })),
        )
    };

    // The requester cannot pick a weaker pair of eyes than the relay's
    // rule (their user, who may be an accomplice or easy to talk round).
    let weaker = select(&api, &admin, &bob.id, json!({ "four_eyes": "user" }))?;
    assert_eq!(weaker.status, 400, "{}", weaker.body);
    assert!(
        weaker.body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("requires four_eyes")
    );
    // Asked for nothing: the relay's rule applies all the same.
    let asked = select(&api, &admin, &bob.id, json!({}))?;
    assert_eq!(asked.status, 202, "{}", asked.body);
    assert_eq!(asked.body["awaiting"], "second_admin");
    let first = asked.body["id"].as_str().unwrap_or_default().to_owned();
    // The requester cannot be their own second pair of eyes (audited).
    let own = decide(&admin, &first, true)?;
    assert_eq!(own.status, 403, "{}", own.body);
    let refusal = newest_record(&api.audit(&admin)?, "access.refused")?;
    assert_eq!(record_detail(&refusal)?["action"], "decide_obr");
    // Nor is bob, when a second admin is what it waits for.
    let bobs = api.call(
        "POST",
        &format!("/api/me/obr-sessions/{first}/decision"),
        bob.device_token.as_deref(),
        Some(json!({ "approve": true })),
    )?;
    assert_eq!(bobs.status, 404, "{}", bobs.body);

    // The helpdesk denies it: it ends, nothing happened on bob's key.
    decide(&helpdesk, &first, false)?.ok()?;
    let audit = api.audit(&admin)?;
    let ended = newest_record(&audit, "obr.ended")?;
    assert_eq!(ended["actor"], demo.helpdesk.email.as_str());
    assert_eq!(record_detail(&ended)?["reason"], "denied");
    assert!(!audit_actions(&audit).contains(&"obr.started".to_owned()));

    // Asked again, approved: it starts and the agent acts for bob.
    let again = select(&api, &admin, &bob.id, json!({}))?;
    let second = again.body["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        decide(&helpdesk, &first, true)?.status,
        404,
        "the denied one"
    );
    decide(&helpdesk, &second, true)?.ok()?;
    agent.wait_status("OBR: acting for bob@demo.obr", Duration::from_secs(5))?;
    let started = newest_record(&api.audit(&admin)?, "obr.started")?;
    assert_eq!(
        record_detail(&started)?["approved_by"],
        demo.helpdesk.email.as_str()
    );
    Ok(())
}

#[test]
fn a_policy_that_does_not_parse_or_is_out_of_bounds_is_refused() -> anyhow::Result<()> {
    let scratch = Scratch::new("obr-policy-bad")?;
    let (relay, agent, api, admin) = admin_at_agent(&scratch, &RelayOptions::default())?;
    let bob = relay.user("bob@demo.obr")?;
    for (body, says) in [
        (json!({ "rp_id": ["obr.test"] }), "unknown field `rp_id`"),
        (json!({ "rp_ids": [""] }), "is not an RP ID"),
        (
            json!({ "rp_ids": ["evil.example/path"] }),
            "is not an RP ID",
        ),
        (
            json!({ "max_registrations": 0 }),
            "max_registrations must be 1-100",
        ),
        (json!({ "ttl_s": 5 }), "ttl_s must be 10-900 seconds"),
        (json!({ "ttl_s": 901 }), "ttl_s must be 10-900 seconds"),
        (json!({ "four_eyes": "nobody" }), "unknown variant `nobody`"),
    ] {
        let answer = select(&api, &admin, &bob.id, body.clone())?;
        assert_eq!(answer.status, 400, "{body}: {}", answer.body);
        let message = answer.body["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{body}: {message}");
    }
    let bare = api.call(
        "POST",
        &format!("/api/users/{}/obr", bob.id),
        Some(&admin),
        None,
    )?;
    assert_eq!(bare.status, 201, "no limits: {}", bare.body);
    agent.wait_status("OBR: acting for bob@demo.obr", Duration::from_secs(5))?;
    Ok(())
}
