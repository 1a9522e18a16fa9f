//! A relay that is told to stop (SIGTERM, as Kubernetes does) while an
//! admin registers passkeys through it, through the real processes: two
//! relays on one directory and one Redis, a standalone signer, and an agent
//! that knows both relays. The draining relay fails readiness, refuses new
//! agents, waits until the agent's request in flight is answered, then
//! closes with 1012; the agent moves to the other relay and sends there what
//! crossed the close. Not one request fails, none is lost from the books,
//! and the relay exits cleanly well within its grace. Then readiness
//! follows the session store: Redis gone, `/readyz` says so.

use std::time::{Duration, Instant};

use obr_tests::api::Api;
use obr_tests::processes::{AgentProc, RelayOptions, RelayProc, SignerProc};
use obr_tests::redis_server::RedisServer;
use obr_tests::registrations::Registrations;
use obr_tests::scratch::Scratch;

#[test]
fn a_draining_relay_moves_its_agent_without_failing_a_request() -> anyhow::Result<()> {
    let Some(redis) = RedisServer::start()? else {
        eprintln!("redis-server not installed; scripts/test installs it");
        return Ok(());
    };
    let scratch = Scratch::new("relay-drain")?;
    std::fs::create_dir_all(scratch.join("signer"))?;
    let signer = SignerProc::start(&scratch.join("signer"))?;
    let options = RelayOptions {
        signers: vec![signer.endpoint.clone()],
        redis_url: Some(redis.url()),
        extra_args: vec!["--metrics".into()],
        ..RelayOptions::default()
    };
    let data_dir = scratch.join("relay");
    let first = RelayProc::start(&data_dir, &options)?;
    let second = RelayProc::start(&data_dir, &options)?;
    let (first_api, second_api) = (Api::new(&first.url), Api::new(&second.url));
    let agent = AgentProc::start(
        &scratch.join("agent"),
        &format!("{},{}", first.url, second.url),
    )?;
    let owner = first_api.demo_owner(&first.demo)?;
    agent.login(&first_api, &owner)?;
    let bob = first.user("bob@demo.obr")?;
    agent.select_as_obr(&first_api, &owner, bob)?;
    assert!(
        agent
            .cli(&["status"])?
            .contains(&first.url.replace("http", "ws"))
    );
    assert_eq!(first_api.call("GET", "/readyz", None, None)?.status, 200);

    // Registrations back to back, while the first relay is told to stop.
    let load = Registrations::start(&agent.hid_socket, "bob");
    load.wait_for(10)?;
    let before = load.done();
    let started = Instant::now();
    let status = first.proc.stop()?;
    let took = started.elapsed();
    assert!(status.success(), "the draining relay exited with {status}");
    assert!(took < Duration::from_secs(5), "draining took {took:?}");
    // Ten more, on the second relay (the agent moved within the drain).
    agent.wait_status(&second.url.replace("http", "ws"), Duration::from_secs(5))?;
    load.wait_for(load.done().max(before) + 10)?;
    let (done, failed, _) = load.stop()?;
    assert_eq!(
        failed,
        0,
        "{failed} of {} registrations failed",
        done + failed
    );
    let status = agent.cli(&["status"])?;
    assert!(
        status.contains(&second.url.replace("http", "ws")),
        "the agent is not on the second relay: {status}"
    );
    assert!(status.contains("OBR: acting for bob@demo.obr"), "{status}");
    // The books: one record per registration, none lost in the move.
    let audit = second_api.audit(&owner)?;
    let recorded = audit["records"].as_array().map_or(0, |r| {
        r.iter()
            .filter(|r| r["action"] == "obr.registration")
            .count()
    });
    assert_eq!(recorded, done, "registrations without their audit record");
    println!("drained in {took:?}; {done} registrations, none failed");

    // The latency ledger saw them: the second relay's share, per hop.
    let metrics = second_api.call("GET", "/metrics", None, None)?;
    assert_eq!(metrics.status, 200);
    let text = metrics.body.as_str().unwrap_or_default();
    let counted = text
        .lines()
        .find(|l| {
            l.starts_with("obr_relay_ctap_request_seconds_count")
                && l.contains("command=\"make_credential\"")
                && l.contains("outcome=\"ok\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or_default();
    assert!(counted >= 10, "{text}");
    assert!(
        text.contains("obr_relay_ctap_hop_seconds_bucket{le="),
        "{text}"
    );
    assert!(text.contains("hop=\"signer_queue\""), "{text}");
    assert!(text.contains("obr_relay_agent_connections 1"), "{text}");

    // Readiness follows the session store.
    assert_eq!(second_api.call("GET", "/readyz", None, None)?.status, 200);
    drop(redis);
    let answer = second_api.call("GET", "/readyz", None, None)?;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(
        answer.body["why"]
            .as_str()
            .unwrap_or_default()
            .contains("session store"),
        "{}",
        answer.body
    );
    assert_eq!(second_api.call("GET", "/healthz", None, None)?.status, 200);
    Ok(())
}
