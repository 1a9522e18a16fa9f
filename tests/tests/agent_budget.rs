//! The agent's `--ctap-budget-ms`, end to end: the relay gets that budget,
//! and when the relay does not answer within it (here: frozen with
//! SIGSTOP) the agent answers the browser `CTAP2_ERR_TIMEOUT` after the
//! budget and a short slack — not after the 30 s default — and withdraws
//! the request, so the relay, once it wakes, does not carry out what the
//! browser gave up on.

use std::time::{Duration, Instant};

use obr_tests::api::Api;
use obr_tests::hid_client::{CMD_CBOR, HidClient};
use obr_tests::processes::{AgentProc, RelayOptions, RelayProc};
use obr_tests::rp;
use obr_tests::scratch::Scratch;

const CTAP2_ERR_TIMEOUT: u8 = 0x2F;
const BUDGET_MS: u64 = 1000;

#[test]
fn the_agents_budget_is_honoured_and_a_late_request_withdrawn() -> anyhow::Result<()> {
    let scratch = Scratch::new("agent-budget")?;
    let relay = RelayProc::start(&scratch.join("relay"), &RelayOptions::default())?;
    let budget = BUDGET_MS.to_string();
    let agent = AgentProc::start_with(
        &scratch.join("agent"),
        &relay.url,
        &["--ctap-budget-ms", &budget],
    )?;
    let api = Api::new(&relay.url);
    let admin = api.demo_owner(&relay.demo)?;
    agent.login(&api, &admin)?;
    let bob = relay.user("bob@demo.obr")?;
    agent.select_as_obr(&api, &admin, bob)?;

    relay.proc.freeze()?;
    let hid = HidClient::open(&agent.hid_socket)?;
    let sent = Instant::now();
    hid.send_message(hid.cid, CMD_CBOR, &rp::registration_request("bob")?)?;
    // Generous against a slow machine, and far below the 30 s default.
    let reply = hid.read_reply(hid.cid, Duration::from_secs(10));
    let waited = sent.elapsed();
    relay.proc.thaw()?;
    let reply = reply?;
    eprintln!("answered {:?} after {waited:?}", reply.payload.first());
    assert_eq!(reply.payload.first(), Some(&CTAP2_ERR_TIMEOUT));
    assert!(waited >= Duration::from_millis(BUDGET_MS));

    // The relay woke up to the request and its withdrawal: bob's key got
    // nothing the browser had given up on.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(api.passkeys(&admin, &bob.id)?.len(), 0);
    Ok(())
}
