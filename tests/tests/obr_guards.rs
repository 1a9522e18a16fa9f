//! The seed's prerequisites for OBR, enforced: a user whose key is still
//! `invited` cannot be selected, an admin cannot select themself, tokens
//! are checked — and a refusal changes nothing but its own audit record. Also: a session ends by
//! itself at its TTL, audited and notified.

use std::time::Duration;

use obr_tests::processes::{RelayOptions, admin_at_agent};
use obr_tests::scratch::Scratch;

#[test]
fn refused_selections_change_nothing() -> anyhow::Result<()> {
    let scratch = Scratch::new("guards")?;
    let (relay, agent, api, admin) = admin_at_agent(&scratch, &RelayOptions::default())?;
    let audit_before = api.audit(&admin)?["records"].as_array().unwrap().len();

    let dave = relay.user("dave@demo.obr")?;
    let refused = api.select_obr(&admin, &dave.id)?;
    assert_eq!(refused.status, 409, "{:?}", refused.body);
    assert_eq!(refused.body["error"], "conflict");
    assert!(
        refused.body["message"]
            .as_str()
            .unwrap()
            .contains("invited, not active")
    );

    let myself = api.select_obr(&admin, &relay.demo.admin_id)?;
    assert_eq!(myself.status, 403, "{:?}", myself.body);
    assert!(
        myself.body["message"]
            .as_str()
            .unwrap()
            .contains("themself")
    );

    let nobody = api.select_obr(&admin, "no-such-user")?;
    assert_eq!(nobody.status, 404);

    // Nothing changed: no session, the agent still ready; the audit log
    // holds only the refusal of power (selecting oneself), not the
    // conflict or the unknown user.
    let agents = api.call("GET", "/api/agents", Some(&admin), None)?.ok()?;
    assert!(
        agents
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["obr"].is_null()),
        "{agents}"
    );
    let audit = api.audit(&admin)?;
    let added = &audit["records"].as_array().unwrap()[audit_before..];
    assert_eq!(added.len(), 1, "{added:?}");
    assert_eq!(added[0]["action"], "access.refused");
    assert!(
        agent
            .cli(&["status"])?
            .contains("ready for on behalf registration")
    );

    // Tokens: none, garbage, and a user's device token on an admin route.
    let bob = relay.user("bob@demo.obr")?;
    assert_eq!(api.call("GET", "/api/users", None, None)?.status, 401);
    assert_eq!(
        api.call("GET", "/api/users", Some("garbage"), None)?.status,
        401
    );
    let as_user = api.select_obr(bob.device_token.as_deref().unwrap(), &bob.id)?;
    assert_eq!(as_user.status, 401, "{:?}", as_user.body);
    // A wrong password is a 401, not a hint.
    let wrong = api.call(
        "POST",
        "/api/admin/login",
        None,
        Some(
            serde_json::json!({ "email": relay.demo.admin_email, "password": "nope",
                                 "totp": "123456" }),
        ),
    )?;
    assert_eq!(wrong.status, 401);
    // Malformed JSON is a 400 with a reason.
    let bad = api.call(
        "POST",
        "/api/admin/login",
        None,
        Some(serde_json::json!({ "email": 5 })),
    )?;
    assert_eq!(bad.status, 400, "{:?}", bad.body);

    // Accepting dave's invitation makes his key active; then OBR works.
    let accepted = api.call(
        "POST",
        "/api/invitations/accept",
        None,
        Some(serde_json::json!({ "token": dave.invitation_token })),
    )?;
    assert_eq!(accepted.ok()?["user"]["key_status"], "active");
    let again = api.call(
        "POST",
        "/api/invitations/accept",
        None,
        Some(serde_json::json!({ "token": dave.invitation_token })),
    )?;
    assert_eq!(again.status, 404, "an invitation is used once");
    agent.select_as_obr(&api, &admin, dave)?;
    // A second selection on the same agent is refused while one is active.
    let busy = api.select_obr(&admin, &bob.id)?;
    assert_eq!(busy.status, 409);
    assert!(
        busy.body["message"]
            .as_str()
            .unwrap()
            .contains("dave@demo.obr")
    );
    Ok(())
}

#[test]
fn a_session_expires_by_itself() -> anyhow::Result<()> {
    let scratch = Scratch::new("expiry")?;
    let options = RelayOptions {
        obr_ttl_s: Some(1),
        ..RelayOptions::default()
    };
    let (relay, agent, api, admin) = admin_at_agent(&scratch, &options)?;
    let bob = relay.user("bob@demo.obr")?;
    // Not waiting for the agent to show the session: on a loaded machine
    // its one second may be over before the agent's next status.
    api.select_obr(&admin, &bob.id)?.ok()?;
    // The relay stops serving the session at its expiry; a sweeper claims
    // and records it within a second.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let audit = api.audit(&admin)?;
        if obr_tests::api::audit_actions(&audit)
            .iter()
            .any(|a| a == "obr.expired")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no obr.expired in {audit}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let inbox = api.notifications(bob.device_token.as_deref().unwrap())?;
    assert!(
        inbox.iter().any(|n| n["kind"] == "obr.expired"),
        "{inbox:?}"
    );
    let agents = api.call("GET", "/api/agents", Some(&admin), None)?.ok()?;
    assert!(
        agents
            .as_array()
            .into_iter()
            .flatten()
            .all(|a| a["obr"].is_null()),
        "{agents}"
    );
    agent.wait_status("ready for on behalf registration", Duration::from_secs(10))?;
    Ok(())
}
