//! A suspended key refuses everything but getInfo — a new OBR selection, a
//! session already running on it, and the user's own sign-ins (without
//! asking their phone) — until an owner resumes it. Only owners suspend;
//! the refusal of an operator is audited, and the user is told of both
//! changes.

use obr_tests::api::audit_actions;
use obr_tests::hid_client::HidClient;
use obr_tests::processes::{AgentProc, RelayOptions, admin_at_agent};
use obr_tests::rp;
use obr_tests::scratch::Scratch;

const CTAP2_OK: u8 = 0x00;
const CTAP2_ERR_OPERATION_DENIED: u8 = 0x27;
const GET_INFO: u8 = 0x04;

#[test]
fn a_suspended_key_refuses_everything_until_resumed() -> anyhow::Result<()> {
    let scratch = Scratch::new("suspend")?;
    let (relay, agent, api, owner) = admin_at_agent(&scratch, &RelayOptions::default())?;
    let demo = &relay.demo;
    let bob = relay.user("bob@demo.obr")?;
    let device = bob.device_token.as_deref().unwrap_or_default();
    let bob_agent = AgentProc::start(&scratch.join("bob-agent"), &relay.url)?;
    bob_agent.login(&api, device)?;
    agent.select_as_obr(&api, &owner, bob)?;
    let mut hid = HidClient::open(&agent.hid_socket)?;
    assert_eq!(
        hid.cbor(&rp::registration_request("bob")?)?.first(),
        Some(&CTAP2_OK)
    );

    let suspend = format!("/api/users/{}/suspend", bob.id);
    let resume = format!("/api/users/{}/resume", bob.id);
    let helpdesk = api.demo_helpdesk(demo)?;
    let refused = api.call("POST", &suspend, Some(&helpdesk), None)?;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(
        audit_actions(&api.audit(&owner)?)
            .last()
            .map(String::as_str),
        Some("access.refused")
    );

    let inbox_before = api.inbox_head(device)?;
    let suspended = api.call("POST", &suspend, Some(&owner), None)?.ok()?;
    assert_eq!(suspended["key_status"], "suspended");
    let again = api.call("POST", &suspend, Some(&owner), None)?;
    assert_eq!(again.status, 409, "{}", again.body);

    // The session running on bob's key serves no more, and ends.
    assert_eq!(
        hid.cbor(&rp::registration_request("bob")?)?.first(),
        Some(&CTAP2_ERR_OPERATION_DENIED)
    );
    agent.wait_status("normal mode", std::time::Duration::from_secs(5))?;
    let selected = api.select_obr(&owner, &bob.id)?;
    assert_eq!(selected.status, 409, "{}", selected.body);
    assert!(
        selected.body["message"].to_string().contains("suspended"),
        "{}",
        selected.body
    );

    // Bob's own agent: refused at once, his phone not asked; getInfo still answers.
    let mut own = HidClient::open(&bob_agent.hid_socket)?;
    assert_eq!(
        own.cbor(&rp::registration_request("bob")?)?.first(),
        Some(&CTAP2_ERR_OPERATION_DENIED)
    );
    assert_eq!(own.cbor(&[GET_INFO])?.first(), Some(&CTAP2_OK));
    let told: Vec<String> = api
        .notifications(device)?
        .iter()
        .filter(|n| n["id"].as_i64().unwrap_or_default() > inbox_before)
        .filter_map(|n| n["kind"].as_str().map(str::to_owned))
        .collect();
    assert!(told.contains(&"user.suspended".to_owned()), "{told:?}");
    assert!(!told.contains(&"approval.requested".to_owned()), "{told:?}");

    // Resumed: selectable again, and the key works.
    let resumed = api.call("POST", &resume, Some(&owner), None)?.ok()?;
    assert_eq!(resumed["key_status"], "active");
    agent.select_as_obr(&api, &owner, bob)?;
    assert_eq!(
        hid.cbor(&rp::registration_request("bob")?)?.first(),
        Some(&CTAP2_OK)
    );
    let actions = audit_actions(&api.audit(&owner)?);
    for done in ["user.suspended", "obr.ended", "user.resumed"] {
        assert!(actions.iter().any(|a| a == done), "{done} in {actions:?}");
    }
    let kinds: Vec<String> = api
        .notifications(device)?
        .iter()
        .filter_map(|n| n["kind"].as_str().map(str::to_owned))
        .collect();
    assert!(kinds.contains(&"user.resumed".to_owned()), "{kinds:?}");
    Ok(())
}

/// The owner's approval was asked for before the key was suspended, and
/// given after: the relay looks at the directory again before the key
/// signs, and refuses.
#[test]
fn an_approval_given_after_the_suspension_signs_nothing() -> anyhow::Result<()> {
    let scratch = Scratch::new("suspend-pending")?;
    let (relay, _agent, api, owner) = admin_at_agent(&scratch, &RelayOptions::default())?;
    let bob = relay.user("bob@demo.obr")?;
    let device = bob.device_token.clone().unwrap_or_default();
    let bob_agent = AgentProc::start(&scratch.join("bob-agent"), &relay.url)?;
    bob_agent.login(&api, &device)?;
    let inbox_before = api.inbox_head(&device)?;
    let request = rp::registration_request("bob")?;
    let socket = bob_agent.hid_socket.clone();
    let registering = std::thread::spawn(move || -> anyhow::Result<Vec<u8>> {
        Ok(HidClient::open(&socket)?.cbor(&request)?)
    });

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let approval_id = loop {
        let asked = api
            .notifications(&device)?
            .into_iter()
            .filter(|n| n["id"].as_i64().unwrap_or_default() > inbox_before)
            .find(|n| n["kind"] == "approval.requested");
        if let Some(asked) = asked {
            break asked["detail"]["approval_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no approval was asked for"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    api.call(
        "POST",
        &format!("/api/users/{}/suspend", bob.id),
        Some(&owner),
        None,
    )?
    .ok()?;
    api.call(
        "POST",
        &format!("/api/me/approvals/{approval_id}"),
        Some(&device),
        Some(serde_json::json!({ "approve": true })),
    )?
    .ok()?;
    let answer = registering
        .join()
        .map_err(|_| anyhow::anyhow!("the HID thread panicked"))??;
    assert_eq!(answer.first(), Some(&CTAP2_ERR_OPERATION_DENIED));
    assert_eq!(api.passkeys(&owner, &bob.id)?.len(), 0, "nothing was made");
    Ok(())
}
