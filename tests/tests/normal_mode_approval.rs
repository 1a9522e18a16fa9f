//! Normal mode: the user's own workstation reaches the user's own key, and
//! the key registers or signs only after the user approves on their device.
//! Meanwhile the browser hears KEEPALIVE "user presence needed" (CTAP 2.1
//! §11.2.9.1.7, STATUS_UPNEEDED); a refusal is CTAP2_ERR_OPERATION_DENIED
//! and no answer in time is CTAP2_ERR_USER_ACTION_TIMEOUT.

use std::time::Duration;

use obr_tests::api::Api;
use obr_tests::hid_client::{CMD_CBOR, HidClient};
use obr_tests::processes::{AgentProc, RelayOptions, RelayProc, SHORT_CTAP_BUDGET};
use obr_tests::rp;
use obr_tests::scratch::Scratch;

const STATUS_UPNEEDED: u8 = 0x02;

#[test]
fn the_owner_approves_denies_or_ignores_on_their_device() -> anyhow::Result<()> {
    let scratch = Scratch::new("approve")?;
    let relay = RelayProc::start(&scratch.join("relay"), &RelayOptions::default())?;
    let agent = AgentProc::start_with(&scratch.join("agent"), &relay.url, SHORT_CTAP_BUDGET)?;
    let api = Api::new(&relay.url);
    let bob = relay.user("bob@demo.obr")?.clone();
    let device = bob.device_token.clone().expect("bob's device token");
    let status = agent.login(&api, &device)?;
    assert!(status.contains("normal mode (bob@demo.obr)"), "{status}");
    let mut hid = HidClient::open(&agent.hid_socket)?;
    let webauthn = rp::webauthn()?;

    // Register: the call waits for bob, who approves on his phone.
    let (request, reg_state) = rp::start_registration(&webauthn, "bob", "Bob")?;
    let head = api.inbox_head(&device)?;
    let phone = {
        let (url, device) = (relay.url.clone(), device.clone());
        std::thread::spawn(move || {
            Api::new(&url).answer_next_approval(&device, head, true, Duration::from_secs(10))
        })
    };
    let reply = hid.transact(CMD_CBOR, &request.ctap_request)?;
    phone.join().expect("phone thread")?;
    assert!(
        !reply.keepalives.is_empty(),
        "KEEPALIVEs while waiting for bob"
    );
    let key = webauthn
        .finish_securitykey_registration(&request.credential(&reply.payload)?, &reg_state)?;

    // Sign in, approved: the KEEPALIVEs said "user presence needed".
    let (options, auth_state) =
        webauthn.start_securitykey_authentication(std::slice::from_ref(&key))?;
    let assertion = rp::get_assertion(&options)?;
    let head = api.inbox_head(&device)?;
    let phone = {
        let (url, device) = (relay.url.clone(), device.clone());
        std::thread::spawn(move || {
            // A person takes a moment: long enough for several KEEPALIVEs
            // (every 80 ms) to say what the key waits for.
            std::thread::sleep(Duration::from_millis(400));
            Api::new(&url).answer_next_approval(&device, head, true, Duration::from_secs(10))
        })
    };
    hid.send_message(hid.cid, CMD_CBOR, &assertion.ctap_request)?;
    let mut saw_upneeded = false;
    let reply = loop {
        let report = hid.recv_report(Duration::from_secs(10))?.expect("a report");
        if report[4] == obr_tests::hid_client::CMD_KEEPALIVE {
            saw_upneeded |= report[7] == STATUS_UPNEEDED;
            continue;
        }
        // The answer is short: one init packet.
        let len = usize::from(u16::from_be_bytes([report[5], report[6]]));
        let mut payload = report[7..].to_vec();
        while payload.len() < len {
            let cont = hid
                .recv_report(Duration::from_secs(5))?
                .expect("continuation");
            payload.extend_from_slice(&cont[5..]);
        }
        payload.truncate(len);
        break payload;
    };
    phone.join().expect("phone thread")?;
    assert!(saw_upneeded, "no KEEPALIVE with STATUS_UPNEEDED");
    webauthn.finish_securitykey_authentication(&assertion.credential(&reply)?, &auth_state)?;

    // Denied on the phone: OPERATION_DENIED.
    let (options, _) = webauthn.start_securitykey_authentication(std::slice::from_ref(&key))?;
    let assertion = rp::get_assertion(&options)?;
    let head = api.inbox_head(&device)?;
    let phone = {
        let (url, device) = (relay.url.clone(), device.clone());
        std::thread::spawn(move || {
            Api::new(&url).answer_next_approval(&device, head, false, Duration::from_secs(10))
        })
    };
    assert_eq!(hid.cbor(&assertion.ctap_request)?, vec![0x27]);
    let denied = phone.join().expect("phone thread")?;
    // A decided approval cannot be decided again.
    let again = api.call(
        "POST",
        &format!("/api/me/approvals/{denied}"),
        Some(&device),
        Some(serde_json::json!({ "approve": true })),
    )?;
    assert_eq!(again.status, 404);

    // Nobody answers: USER_ACTION_TIMEOUT at the budget, not a hang.
    let started = std::time::Instant::now();
    assert_eq!(hid.cbor(&assertion.ctap_request)?, vec![0x2F]);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );

    // Someone else's device token cannot approve bob's requests.
    let carol = relay.user("carol@demo.obr")?;
    let head = api.inbox_head(&device)?;
    let sign = std::thread::spawn({
        let path = agent.hid_socket.clone();
        let request = assertion.ctap_request.clone();
        move || HidClient::open(&path).and_then(|mut h| h.cbor(&request))
    });
    let approval = loop {
        let inbox = api
            .call(
                "GET",
                &format!("/api/me/notifications?after={head}"),
                Some(&device),
                None,
            )?
            .ok()?;
        if let Some(n) = inbox
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["kind"] == "approval.requested")
        {
            break n["detail"]["approval_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let foreign = api.call(
        "POST",
        &format!("/api/me/approvals/{approval}"),
        carol.device_token.as_deref(),
        Some(serde_json::json!({ "approve": true })),
    )?;
    assert_eq!(foreign.status, 404);
    assert_eq!(sign.join().expect("sign thread")?, vec![0x2F]);
    let audit = api.audit(&api.demo_owner(&relay.demo)?)?;
    let actions = obr_tests::api::audit_actions(&audit);
    assert!(
        actions.iter().any(|a| a == "approval.approved")
            && actions.iter().any(|a| a == "approval.denied"),
        "{actions:?}"
    );
    Ok(())
}
