//! Events lost while a relay's Redis subscription is down are made up
//! for: when the relay subscribes again it re-reads every local agent's
//! login and OBR session. Here the subscription is killed (`CLIENT KILL
//! TYPE pubsub`), an agent's login is approved while it is down — its
//! `LoginChanged` event reaches nobody — and the agent still learns it is
//! logged in. Also: the relay as a Redis ACL user.

use std::time::Duration;

use obr_tests::api::Api;
use obr_tests::processes::{AgentProc, RelayOptions, RelayProc};
use obr_tests::redis_server::{NO_DEFAULT_USER, RedisServer, acl_user};
use obr_tests::scratch::Scratch;

#[test]
fn a_relay_resyncs_its_agents_after_losing_its_subscription() -> anyhow::Result<()> {
    let Some(redis) = RedisServer::start()? else {
        eprintln!("redis-server not installed; scripts/test installs it");
        return Ok(());
    };
    let scratch = Scratch::new("resync")?;
    let relay = RelayProc::start(
        &scratch.join("relay"),
        &RelayOptions::with_redis(redis.url()),
    )?;
    let agent = AgentProc::start(&scratch.join("agent"), &relay.url)?;
    let api = Api::new(&relay.url);
    let admin = api.demo_owner(&relay.demo)?;
    let code = obr_tests::api::login_code(&agent.cli(&["login", "--no-wait"])?)?;

    let killed = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "CLIENT",
            "KILL",
            "TYPE",
            "pubsub",
        ])
        .output()?;
    assert!(killed.status.success(), "{killed:?}");
    assert_ne!(
        String::from_utf8_lossy(&killed.stdout).trim(),
        "0",
        "the relay's subscription was killed"
    );
    // Approved while the relay is not subscribed: the event is lost.
    api.approve_login(&admin, &code)?.ok()?;
    let status = agent.wait_status("normal mode", Duration::from_secs(10))?;
    assert!(
        status.contains("ready for on behalf registration"),
        "{status}"
    );
    Ok(())
}

/// A deployment's Redis with ACL users: the relay logs in as its own user
/// (`redis://user:password@host`), works, and a wrong password is a clear
/// start-up error, not a relay that serves without its store.
#[test]
fn the_relay_uses_a_redis_acl_user() -> anyhow::Result<()> {
    let users = [
        &NO_DEFAULT_USER[..],
        &acl_user("obr-relay", ">relay-secret"),
    ]
    .concat();
    let Some(redis) = RedisServer::start_with(&users)? else {
        eprintln!("redis-server not installed; scripts/test installs it");
        return Ok(());
    };
    let scratch = Scratch::new("redis-acl")?;
    let url = format!("redis://obr-relay:relay-secret@127.0.0.1:{}/", redis.port);
    let relay = RelayProc::start(&scratch.join("relay"), &RelayOptions::with_redis(url))?;
    // A login writes its token to Redis and reads it back on the next call.
    let api = Api::new(&relay.url);
    let admin = api.demo_owner(&relay.demo)?;
    assert_eq!(
        api.call("GET", "/api/users", Some(&admin), None)?.status,
        200
    );

    let wrong = std::process::Command::new(obr_tests::processes::binary("obr-relay")?)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(scratch.join("wrong"))
        .arg("--redis-url")
        .arg(format!("redis://obr-relay:wrong@127.0.0.1:{}/", redis.port))
        .output()?;
    let said = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success(), "{said}");
    assert!(said.to_lowercase().contains("session store"), "{said}");
    Ok(())
}
