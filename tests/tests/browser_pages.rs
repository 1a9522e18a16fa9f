//! The pages, clicked in a real browser (headless Chromium through
//! chromedriver): an admin signs in to the panel with password and TOTP,
//! invites erin, who accepts on her phone (the user app, phone-sized); the
//! admin approves the agent's login code, selects erin as OBR for
//! login.microsoft.com only, python-fido2 registers a passkey through the
//! agent, and erin's phone shows it without a reload; Done returns the
//! agent to normal mode and the passkey is on erin's page. Then the second
//! seed: +Passkey → Other platforms → the obr:// link opens the agent
//! (`obr-agent open`, as the desktop would) → another passkey → Done.
//!
//! Screenshots of each key screen go to the scratch directory, or to
//! `$OBR_SCREENSHOTS_DIR` (the README's come from `OBR_SCREENSHOTS_DIR=docs/screenshots`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use obr_tests::api::{Api, login_code, mailed_invitation, totp_code};
use obr_tests::browser::{Browser, DESKTOP, PHONE};
use obr_tests::processes::{AgentProc, RelayOptions, RelayProc};
use obr_tests::python;
use obr_tests::scratch::Scratch;

#[test]
fn an_admin_provisions_erin_through_the_panel_and_her_phone_sees_it() -> anyhow::Result<()> {
    let scratch = Scratch::new("pages")?;
    let relay = RelayProc::start(&scratch.join("relay"), &RelayOptions::default())?;
    let agent = AgentProc::start(&scratch.join("agent"), &relay.url)?;
    let shots = std::env::var_os("OBR_SCREENSHOTS_DIR")
        .map_or_else(|| scratch.join("screenshots"), PathBuf::from);
    let python = python::venv_python()?;
    tokio::runtime::Runtime::new()?.block_on(async {
        let panel = Browser::start(&scratch.join("panel"), DESKTOP, &shots).await?;
        let phone = Browser::start(&scratch.join("phone"), PHONE, &shots).await?;
        let url = &relay.url;
        let demo = &relay.demo;

        // Sign in: password and the code of the admin's authenticator.
        panel.goto(&format!("{url}/panel/")).await?;
        panel.fill("#f-email", &demo.admin_email).await?;
        panel.fill("#f-password", &demo.admin_password).await?;
        panel
            .fill("#f-totp", &totp_code(&demo.admin_totp_secret)?)
            .await?;
        panel.screenshot("01-panel-sign-in").await?;
        panel.click("#signin").await?;
        panel.wait_text("#view", "bob@demo.obr").await?;

        // Invite erin; the invitation reaches her mailbox, not the admin.
        panel.fill("#f-email", "erin@demo.obr").await?;
        panel.fill("#f-display_name", "Erin Example").await?;
        panel.click_text("Invite").await?;
        panel
            .wait_text("#status", "Invitation sent to erin@demo.obr")
            .await?;
        panel.wait_text("#view", "erin@demo.obr").await?;
        // And two more from a spreadsheet, one of them a mistake.
        let csv = scratch.join("users.csv");
        std::fs::write(
            &csv,
            "email,display_name\nken@demo.obr,Ken\nnot-an-email,Nobody\n",
        )?;
        panel.fill("#f-csv", &csv.display().to_string()).await?;
        panel.click_text("Import").await?;
        panel
            .wait_text("#status", "Imported: 1 invited, 1 failed.")
            .await?;
        panel
            .wait_text("#import-report", "failed: email must look like name@domain")
            .await?;
        panel.screenshot("02-panel-users").await?;
        let invitation = mailed_invitation(&scratch.join("relay").join("outbox"), "erin@demo.obr")?;

        // Erin opens the mail's link on her phone and accepts.
        phone
            .goto(&format!("{url}/app/#invite={invitation}"))
            .await?;
        phone.screenshot("03-app-invitation").await?;
        phone.click("#accept").await?;
        phone
            .wait_text("#status", "your security key is active")
            .await?;
        phone.wait_text("#live", "live").await?;

        // The agent's login code, approved in the panel ("Ctrl+I").
        let code = login_code(&agent.cli(&["login", "--no-wait"])?)?;
        panel.goto(&format!("{url}/panel/#approve")).await?;
        panel.fill("#f-user_code", &code).await?;
        panel.click_text("Approve").await?;
        panel
            .wait_text("#status", "is logged in as admin@demo.obr")
            .await?;
        agent.wait_status("normal mode", Duration::from_secs(10))?;

        // Users & Security Keys → Erin → Action → Select as OBR.
        panel.goto(&format!("{url}/panel/#users")).await?;
        panel.click_text("Erin Example").await?;
        panel.click_text("Action").await?;
        panel.fill("#f-rp_ids", "login.microsoft.com").await?;
        panel.screenshot("04-panel-select-as-obr").await?;
        panel.click("#select-obr").await?;
        panel
            .wait_text("#obr-state", "acts for erin@demo.obr")
            .await?;
        agent.wait_status("OBR: acting for erin@demo.obr", Duration::from_secs(10))?;
        phone
            .wait_text("#feed", "admin@demo.obr started an on-behalf registration")
            .await?;

        // python-fido2 registers at login.microsoft.com through the agent.
        let output = Command::new(&python)
            .arg(python::script("obr_interop.py"))
            .arg("--hid-socket")
            .arg(&agent.hid_socket)
            .args([
                "--rp-id",
                "login.microsoft.com",
                "--origin",
                "https://login.microsoft.com",
            ])
            .args([
                "--user-name",
                "erin@contoso.example",
                "--display-name",
                "Erin",
            ])
            .args(["--assertions", "1"])
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "python-fido2: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // Erin's phone hears of it without a reload, and lists the passkey.
        phone
            .wait_text("#feed", "registered a passkey for login.microsoft.com")
            .await?;
        phone.wait_text("#passkeys", "login.microsoft.com").await?;
        phone.screenshot("05-app-notified").await?;

        // Done: the agent is back in normal mode; the passkey is on her page.
        panel.click("#done").await?;
        panel
            .wait_text("#status", "Done: the agent is back in normal mode")
            .await?;
        agent.wait_status("normal mode", Duration::from_secs(10))?;
        panel
            .wait_text("#passkey-table", "erin@contoso.example")
            .await?;
        panel.screenshot("06-panel-passkeys").await?;

        // The second seed: +Passkey → Other platforms → "Open Pairing Tool"
        // (the desktop hands the obr:// link to `obr-agent open`) → the
        // agent acts for erin → a passkey at another site → Done.
        panel.click("#add-passkey-button").await?;
        panel.click("#other-platforms").await?;
        let link = panel.attribute("#pair-link", "href").await?;
        assert!(link.starts_with("obr://pair?code="), "{link}");
        panel.screenshot("08-panel-pairing").await?;
        let opened = agent.cli(&["open", &link])?;
        assert!(opened.contains("OBR: acting for erin@demo.obr"), "{opened}");
        panel
            .wait_text("#obr-state", "acts for erin@demo.obr")
            .await?;
        let output = Command::new(&python)
            .arg(python::script("obr_interop.py"))
            .arg("--hid-socket")
            .arg(&agent.hid_socket)
            .args(["--rp-id", "github.com", "--origin", "https://github.com"])
            .args(["--user-name", "erin-gh", "--display-name", "Erin"])
            .args(["--assertions", "1"])
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "python-fido2: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        phone
            .wait_text("#feed", "registered a passkey for github.com")
            .await?;
        panel.click("#done").await?;
        agent.wait_status("normal mode", Duration::from_secs(10))?;
        panel.wait_text("#passkey-table", "erin-gh").await?;

        // The audit log page: erin's records, asked of the server, then
        // narrowed down on the page.
        panel.goto(&format!("{url}/panel/#audit")).await?;
        panel.fill("#f-subject", "erin@demo.obr").await?;
        panel.click_text("Search").await?;
        panel.wait_text("#view", "obr.registration").await?;
        panel.fill("#audit-filter", "login.microsoft.com").await?;
        let page = panel.wait_text("#view", "obr.registration").await?;
        assert!(
            !page.contains("user.invited"),
            "not only erin's OBR records: {page}"
        );
        panel.screenshot("07-panel-audit").await?;
        for (name, browser) in [("panel", &panel), ("phone", &phone)] {
            let text = browser.wait_text("body", "").await?;
            assert!(
                !text.contains("[object"),
                "the {name} shows an unrendered object: {text}"
            );
        }

        panel.close().await?;
        phone.close().await?;
        anyhow::Ok(())
    })?;

    // What the pages did is what the API says happened.
    let api = Api::new(&relay.url);
    let admin = api.demo_owner(&relay.demo)?;
    let erin = api
        .users(&admin)?
        .into_iter()
        .find(|u| u["email"] == "erin@demo.obr")
        .ok_or_else(|| anyhow::anyhow!("no erin"))?;
    assert_eq!(erin["key_status"], "active");
    let passkeys = api.passkeys(&admin, erin["id"].as_str().unwrap_or_default())?;
    let mut sites: Vec<&str> = passkeys
        .iter()
        .filter_map(|p| p["rp_id"].as_str())
        .collect();
    sites.sort_unstable();
    assert_eq!(sites, ["github.com", "login.microsoft.com"], "{passkeys:?}");
    Ok(())
}
