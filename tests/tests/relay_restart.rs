//! The agent rides out a relay restart: it reconnects by itself (jittered
//! backoff), presents its saved token, and — because sessions live in Redis,
//! not in the relay — comes back logged in and still in its OBR session.

use std::time::Duration;

use obr_tests::hid_client::HidClient;
use obr_tests::processes::{RelayOptions, RelayProc, admin_at_agent};
use obr_tests::redis_server::RedisServer;
use obr_tests::rp::CTAP_GET_INFO;
use obr_tests::scratch::Scratch;

#[test]
fn agent_reconnects_and_keeps_its_session_across_a_relay_restart() -> anyhow::Result<()> {
    let redis =
        RedisServer::start()?.expect("redis-server is not installed (scripts/test installs it)");
    let scratch = Scratch::new("restart")?;
    let options = RelayOptions::with_redis(redis.url());
    let (relay, agent, api, admin) = admin_at_agent(&scratch, &options)?;
    let bob = relay.user("bob@demo.obr")?.clone();
    agent.select_as_obr(&api, &admin, &bob)?;

    // Stop the relay; the agent notices and shows it is disconnected.
    let port = relay.url.rsplit(':').next().unwrap().to_owned();
    relay.proc.stop()?;
    agent.wait_status(" [disconnected", Duration::from_secs(10))?;
    // Requests meanwhile fail cleanly instead of hanging.
    let mut hid = HidClient::open(&agent.hid_socket)?;
    let answer = hid.cbor(&[0x02, 0xa0])?;
    assert_eq!(
        answer,
        vec![0x7F],
        "CTAP1_ERR_OTHER while the relay is away"
    );

    // A new relay process on the same address, same Redis and database.
    let options = RelayOptions {
        listen: Some(format!("127.0.0.1:{port}")),
        ..options
    };
    let relay = RelayProc::start(&scratch.join("relay"), &options)?;
    let status = agent.wait_status(" [connected", Duration::from_secs(15))?;
    assert!(
        status.starts_with("OBR: acting for bob@demo.obr"),
        "{status}"
    );
    assert_eq!(hid.cbor(&[CTAP_GET_INFO])?.first(), Some(&0));
    // And the new relay ends the session as the old one would have.
    assert_eq!(
        agent.cli(&["back-to-normal"])?.trim(),
        "back to normal mode"
    );
    agent.wait_status("ready for on behalf registration", Duration::from_secs(5))?;
    drop(relay);
    Ok(())
}
