//! The agent as its admin uses it from a terminal: `obr-agent login` shows
//! the panel's address and a code and opens the browser (here `$BROWSER`,
//! a script that writes down what it was asked to open); `status` says the
//! mode, the user, when the session ends and which relay; `normal-mode`
//! ends the session.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use obr_tests::api::{Api, login_code};
use obr_tests::processes::{AgentProc, RelayOptions, RelayProc, binary};
use obr_tests::scratch::Scratch;
use serde_json::Value;

#[test]
fn login_status_and_normal_mode_from_the_terminal() -> anyhow::Result<()> {
    let scratch = Scratch::new("agent-cli")?;
    let relay = RelayProc::start(&scratch.join("relay"), &RelayOptions::default())?;
    let agent = AgentProc::start(&scratch.join("agent"), &relay.url)?;
    let api = Api::new(&relay.url);
    let demo = &relay.demo;
    let admin = api.demo_owner(demo)?;

    // A "browser" that writes down the address it was given.
    let opened = scratch.join("opened.txt");
    let browser = scratch.join("browser.sh");
    std::fs::write(
        &browser,
        format!("#!/bin/sh\necho \"$1\" > {}\n", opened.display()),
    )?;
    std::fs::set_permissions(&browser, std::fs::Permissions::from_mode(0o755))?;
    let output = Command::new(binary("obr-agent")?)
        .arg("--control")
        .arg(&agent.control)
        .args(["login", "--no-wait"])
        .env("BROWSER", &browser)
        .output()?;
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{said}");
    let code = login_code(&said)?;
    assert!(
        said.contains(&format!("! Your one-time code: {code}")),
        "{said}"
    );
    let panel = format!("{}/panel/#approve", relay.url);
    assert!(
        said.contains(&format!("Opened {panel} in your browser")),
        "{said}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !opened.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read_to_string(&opened)?.trim(), panel);

    // Without a browser: only the address.
    let plain = agent.cli(&["login", "--no-wait", "--no-browser"])?;
    assert!(
        plain.contains(&format!("Open {panel} in a browser")),
        "{plain}"
    );
    api.approve_login(&admin, &login_code(&plain)?)?.ok()?;
    agent.wait_status("normal mode", Duration::from_secs(10))?;

    let bob = relay.user("bob@demo.obr")?;
    agent.select_as_obr(&api, &admin, bob)?;
    let status = agent.cli(&["status"])?;
    assert!(
        status.contains("OBR: acting for bob@demo.obr (ends in 14 min"),
        "{status}"
    );
    let relay_ws = relay.url.replacen("http", "ws", 1);
    assert!(
        status.contains(&format!("connected to {relay_ws}/agent/ws")),
        "{status}"
    );
    let json: Value = serde_json::from_str(&agent.cli(&["status", "--json"])?)?;
    assert!(json["mode"]["expires_at_ms"].as_i64().is_some(), "{json}");

    let ended = agent.cli(&["normal-mode"])?;
    assert!(!ended.is_empty());
    agent.wait_status(
        "normal mode: ready for on behalf registration",
        Duration::from_secs(5),
    )?;
    Ok(())
}
