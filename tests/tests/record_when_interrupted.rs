//! No on-behalf credential without its record, even when the request that
//! made it never finished: the browser cancels (CTAPHID_CANCEL) while the
//! key is creating it, or the relay is killed mid-registration. The signer
//! writes each on-behalf credential's record into its outbox in the same
//! transaction as the credential; a relay records what the live path did
//! not (audit record and the user's notification), exactly once.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use obr_tests::api::Api;
use obr_tests::hid_client::{CMD_CANCEL, CMD_CBOR, HidClient};
use obr_tests::processes::{AgentProc, RelayOptions, RelayProc, Stack};
use obr_tests::rp;
use obr_tests::scratch::Scratch;

/// How long the outbox sweep may take to record what a request left
/// behind (it waits 3 s, sweeps every 2 s).
const SWEEP_WAIT: Duration = Duration::from_secs(20);

/// What is known of bob's on-behalf passkeys, by credential id.
struct Ledger {
    on_key: BTreeSet<String>,
    audited: BTreeSet<String>,
    notified: BTreeSet<String>,
    /// Records the outbox sweep made (`recovered`).
    recovered: usize,
}

fn ledger(api: &Api, admin: &str, bob: &obr_relay::demo::DemoUser) -> anyhow::Result<Ledger> {
    let on_key = api
        .passkeys(admin, &bob.id)?
        .iter()
        .filter_map(|p| p["credential_id"].as_str().map(str::to_owned))
        .collect();
    let records: Vec<serde_json::Value> = api.audit(admin)?["records"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["action"] == "obr.registration")
        .cloned()
        .collect();
    let recovered = records
        .iter()
        .filter(|r| r["detail"]["recovered"] == true)
        .count();
    let audited = records
        .iter()
        .filter_map(|r| r["detail"]["credential_id"].as_str().map(str::to_owned))
        .collect();
    let notified = api
        .notifications(bob.device_token.as_deref().unwrap_or_default())?
        .iter()
        .filter(|n| n["kind"] == "obr.registration")
        .filter_map(|n| n["detail"]["credential_id"].as_str().map(str::to_owned))
        .collect();
    Ok(Ledger {
        on_key,
        audited,
        notified,
        recovered,
    })
}

/// Wait until every passkey on bob's key is audited and notified (exactly
/// those), or fail with the three sets.
fn all_recorded(api: &Api, admin: &str, bob: &obr_relay::demo::DemoUser) -> anyhow::Result<usize> {
    let deadline = Instant::now() + SWEEP_WAIT;
    loop {
        let Ledger {
            on_key,
            audited,
            notified,
            recovered,
        } = ledger(api, admin, bob)?;
        if on_key == audited && on_key == notified {
            eprintln!(
                "{} passkeys on the key, all audited and notified; {recovered} recorded by the outbox sweep",
                on_key.len()
            );
            return Ok(on_key.len());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "after {SWEEP_WAIT:?}: on the key {on_key:?}, audited {audited:?}, notified {notified:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A relay (embedded signer) and an agent on which the demo admin acts for
/// bob.
fn admin_acting_for_bob(label: &str) -> anyhow::Result<(Stack, Api, String)> {
    let stack = Stack::start(label)?;
    let api = Api::new(&stack.relay.url);
    let demo = &stack.relay.demo;
    let admin = api.demo_owner(demo)?;
    stack.agent.login(&api, &admin)?;
    stack
        .agent
        .select_as_obr(&api, &admin, stack.relay.user("bob@demo.obr")?)?;
    Ok((stack, api, admin))
}

/// Send 24 requests, each cancelled a little later than the one before:
/// before the relay sees it, while the key works, after. Returns the
/// status byte each got.
fn cancel_at_every_moment(
    hid_socket: &Path,
    request: impl Fn() -> anyhow::Result<Vec<u8>>,
) -> anyhow::Result<Vec<Option<u8>>> {
    let mut outcomes = Vec::new();
    for delay_ms in 0..24u64 {
        let hid = HidClient::open(hid_socket)?;
        let cid = hid.cid;
        hid.send_message(cid, CMD_CBOR, &request()?)?;
        std::thread::sleep(Duration::from_micros(delay_ms * 500));
        hid.send_message(cid, CMD_CANCEL, &[])?;
        let reply = hid.read_reply(cid, Duration::from_secs(10))?;
        outcomes.push(reply.payload.first().copied());
    }
    Ok(outcomes)
}

#[test]
fn registrations_the_browser_cancelled_are_recorded() -> anyhow::Result<()> {
    let (stack, api, admin) = admin_acting_for_bob("record-cancelled")?;
    let bob = stack.relay.user("bob@demo.obr")?;
    let outcomes =
        cancel_at_every_moment(&stack.agent.hid_socket, || rp::registration_request("bob"))?;
    eprintln!("answers to the cancelled requests: {outcomes:?}");
    all_recorded(&api, &admin, bob)?;
    Ok(())
}

/// An admin's on-behalf sign-in with the passkey just registered (some
/// sites check a new key at once) is on record and told to the user even
/// when the browser cancels it while the key signs: every signature the
/// key made (its counter says how many) has its audit record and its
/// notification.
#[test]
fn assertions_the_browser_cancelled_are_recorded() -> anyhow::Result<()> {
    let (stack, api, admin) = admin_acting_for_bob("record-cancelled-assertions")?;
    let bob = stack.relay.user("bob@demo.obr")?;
    let webauthn = rp::webauthn()?;
    let (request, state) = rp::start_registration(&webauthn, "bob", "Bob")?;
    let mut hid = HidClient::open(&stack.agent.hid_socket)?;
    let key = webauthn.finish_securitykey_registration(
        &request.credential(&hid.cbor(&request.ctap_request)?)?,
        &state,
    )?;
    let assertion = || -> anyhow::Result<Vec<u8>> {
        let (options, _) = webauthn.start_securitykey_authentication(std::slice::from_ref(&key))?;
        Ok(rp::get_assertion(&options)?.ctap_request)
    };
    let before = rp::assertion_counter(&hid.cbor(&assertion()?)?)?;

    let outcomes = cancel_at_every_moment(&stack.agent.hid_socket, assertion)?;
    eprintln!("answers to the cancelled sign-ins: {outcomes:?}");
    let after = rp::assertion_counter(&hid.cbor(&assertion()?)?)?;
    let signed = usize::try_from(after - before + 1)?;
    let answered = outcomes.iter().filter(|o| **o == Some(0)).count();
    assert!(
        signed > 2 && signed >= 2 + answered,
        "{signed} signatures, {answered} cancelled sign-ins answered"
    );

    let deadline = Instant::now() + SWEEP_WAIT;
    loop {
        let audited = api.audit(&admin)?["records"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["action"] == "obr.assertion")
            .count();
        let notified = api
            .notifications(bob.device_token.as_deref().unwrap_or_default())?
            .iter()
            .filter(|n| n["kind"] == "obr.assertion")
            .count();
        if audited == signed && notified == signed {
            eprintln!("{signed} signatures, each audited and notified");
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{signed} signatures; {audited} audited, {notified} notified"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn registrations_a_killed_relay_left_are_recorded_after_restart() -> anyhow::Result<()> {
    let scratch = Scratch::new("record-killed")?;
    let relay_dir = scratch.join("relay");
    let relay = RelayProc::start(&relay_dir, &RelayOptions::default())?;
    let agent = AgentProc::start(&scratch.join("agent"), &relay.url)?;
    let api = Api::new(&relay.url);
    let bob = relay.user("bob@demo.obr")?.clone();
    let admin = api.demo_owner(&relay.demo)?;
    agent.login(&api, &admin)?;
    agent.select_as_obr(&api, &admin, &bob)?;

    // Sixteen browsers register one passkey after another; the relay (and
    // its embedded signer) is killed with SIGKILL while they do.
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let socket = agent.hid_socket.clone();
            std::thread::spawn(move || -> anyhow::Result<usize> {
                let mut hid = HidClient::open(&socket)?;
                let mut answered = 0;
                while hid.cbor(&rp::registration_request("bob")?)?.first() == Some(&0) {
                    answered += 1;
                }
                Ok(answered)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    drop(relay);
    let answered: usize = clients
        .into_iter()
        .filter_map(|c| c.join().ok()?.ok())
        .sum();
    drop(agent);

    let relay = restart(&relay_dir)?;
    let api = Api::new(&relay.url);
    let admin = api.demo_owner(&relay.demo)?;
    let on_key = all_recorded(&api, &admin, &bob)?;
    eprintln!("{answered} registrations answered before the kill; {on_key} on the key");
    assert!(on_key >= answered);
    Ok(())
}

fn restart(dir: &Path) -> anyhow::Result<RelayProc> {
    RelayProc::start(dir, &RelayOptions::default())
}
