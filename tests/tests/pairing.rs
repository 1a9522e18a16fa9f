//! "+Passkey → Other platforms" (the second seed) through the real relay
//! and agents: the pairing link opens only the agent of the admin who made
//! it, once; another admin's agent is refused (and audited), an agent not
//! logged in is told to log in, a used link is dead, a link for another
//! admin's key is never made; `obr-agent open` follows obr://pair links
//! only; and `obr-agent register-url-handler` makes it the desktop's
//! handler of obr:// links.

use std::process::Command;
use std::time::Duration;

use obr_tests::processes::{AgentProc, RelayOptions, admin_at_agent, binary};
use obr_tests::scratch::Scratch;
use serde_json::{Value, json};

/// `obr-agent open LINK` on `agent`: its output, or its error.
fn open(agent: &AgentProc, link: &str) -> anyhow::Result<Result<String, String>> {
    let output = Command::new(binary("obr-agent")?)
        .arg("--control")
        .arg(&agent.control)
        .args(["open", link])
        .output()?;
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    let err = String::from_utf8_lossy(&output.stderr).into_owned();
    Ok(if output.status.success() {
        Ok(out)
    } else {
        Err(err)
    })
}

#[test]
fn a_pairing_link_opens_its_admins_agent_once() -> anyhow::Result<()> {
    let scratch = Scratch::new("pairing")?;
    let (relay, agent, api, admin) = admin_at_agent(&scratch, &RelayOptions::default())?;
    let demo = &relay.demo;
    let bob = relay.user("bob@demo.obr")?;
    let helpdesk = api.demo_helpdesk(demo)?;
    let other = AgentProc::start(&scratch.join("helpdesk-agent"), &relay.url)?;
    other.login(&api, &helpdesk)?;
    let fresh = AgentProc::start(&scratch.join("fresh-agent"), &relay.url)?;
    let offer = |body: Value| {
        api.call(
            "POST",
            &format!("/api/users/{}/pairing", bob.id),
            Some(&admin),
            Some(body),
        )
    };
    let link = |answer: Value| answer["link"].as_str().unwrap_or_default().to_owned();

    // The helpdesk's agent opens the owner's link: refused, audited, and
    // the link is spent.
    let first = link(offer(json!({ "rp_ids": ["login.microsoft.com"] }))?.ok()?);
    assert!(first.starts_with("obr://pair?code="), "{first}");
    let refused = open(&other, &first)?.expect_err("another admin's agent");
    assert!(refused.contains("made by another admin"), "{refused}");
    let audit = api.audit(&admin)?;
    let record = audit["records"]
        .as_array()
        .and_then(|r| r.iter().rev().find(|r| r["action"] == "access.refused"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(record["actor"], demo.helpdesk.email.as_str(), "{record}");
    let spent = open(&agent, &first)?.expect_err("a used link");
    assert!(spent.contains("already used"), "{spent}");

    // An agent nobody logged in on is told to log in.
    let second = link(offer(json!({}))?.ok()?);
    let anonymous = open(&fresh, &second)?.expect_err("an agent not logged in");
    assert!(anonymous.contains("log this agent in first"), "{anonymous}");

    // The owner's own agent: acting for bob, with the link's limits.
    let third =
        link(offer(json!({ "rp_ids": ["login.microsoft.com"], "max_registrations": 1 }))?.ok()?);
    let opened = open(&agent, &third)?.expect("the owner's agent");
    assert!(opened.contains("OBR: acting for bob@demo.obr"), "{opened}");
    agent.wait_status("OBR: acting for bob@demo.obr", Duration::from_secs(5))?;
    let agents = api.call("GET", "/api/agents", Some(&admin), None)?.ok()?;
    assert_eq!(
        agents[0]["obr"]["policy"]["rp_ids"],
        json!(["login.microsoft.com"])
    );
    assert_eq!(agents[0]["obr"]["policy"]["max_registrations"], 1);

    // A link with four eyes: the agent is told it waits, not that it acts.
    agent.cli(&["normal-mode"])?;
    agent.wait_status("normal mode", Duration::from_secs(5))?;
    let fourth = link(offer(json!({ "four_eyes": "user" }))?.ok()?);
    let waits = open(&agent, &fourth)?.expect_err("awaiting approval");
    assert!(
        waits.contains("waits for the user to approve it"),
        "{waits}"
    );

    // No link for another admin's key, none naming an agent; no other links followed.
    let for_admin = api.call(
        "POST",
        &format!("/api/users/{}/pairing", demo.helpdesk.id),
        Some(&admin),
        Some(json!({})),
    )?;
    assert_eq!(for_admin.status, 403, "{}", for_admin.body);
    assert_eq!(offer(json!({ "agent_id": "x" }))?.status, 400);
    for bad in [
        "https://evil.example/?code=aaaaaaaaaaaaaaaaaaaa",
        "obr://other?code=aaaaaaaaaaaaaaaaaaaa",
        "obr://pair?code=x",
    ] {
        let refused = open(&agent, bad)?.expect_err(bad);
        assert!(
            refused.contains("obr://pair") || refused.contains("not a pairing code"),
            "{bad}: {refused}"
        );
    }
    Ok(())
}

#[test]
fn the_agent_registers_as_the_desktops_obr_link_handler() -> anyhow::Result<()> {
    let scratch = Scratch::new("url-handler")?;
    let home = scratch.join("home");
    std::fs::create_dir_all(home.join(".config"))?;
    std::fs::write(
        home.join(".config/mimeapps.list"),
        "[Default Applications]\ntext/html=firefox.desktop\n",
    )?;
    let output = Command::new(binary("obr-agent")?)
        .args([
            "--control",
            "/run/user/1000/obr-agent.ctl",
            "register-url-handler",
        ])
        .env("HOME", &home)
        .env_remove("XDG_DATA_HOME")
        .env_remove("XDG_CONFIG_HOME")
        .output()?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let desktop =
        std::fs::read_to_string(home.join(".local/share/applications/obr-agent.desktop"))?;
    let exe = binary("obr-agent")?;
    assert!(
        desktop.contains(&format!(
            "Exec=\"{}\" --control \"/run/user/1000/obr-agent.ctl\" open %u\n",
            exe.display()
        )),
        "{desktop}"
    );
    assert!(
        desktop.contains("MimeType=x-scheme-handler/obr;"),
        "{desktop}"
    );
    let mimeapps = std::fs::read_to_string(home.join(".config/mimeapps.list"))?;
    assert_eq!(
        mimeapps,
        "[Default Applications]\ntext/html=firefox.desktop\nx-scheme-handler/obr=obr-agent.desktop\n"
    );
    Ok(())
}
