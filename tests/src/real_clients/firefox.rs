//! Headless Firefox ESR as the browser: its own WebAuthn stack (authenticator-rs, talking to
//! hidraw itself), not Chromium's. Started with a fresh profile on the RP page, which runs both
//! ceremonies on load and reports the outcome to the RP server
//! ([`super::rp_page::RpPage::next_report`]) — so no browser driver is needed, and nothing
//! clicks: Firefox sends a request to the one USB key at once.
//!
//! What would stop it: Firefox asks the user before it lets an RP see a key's attestation
//! (`attestation: "direct"`) and waits forever on that prompt in headless mode, so the RP page
//! never asks for it. The profile turns off what a first start would otherwise do on the
//! network or on screen.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::Context;

/// Debian's Firefox ESR binary, called directly (not through the `/usr/bin` wrapper).
pub const FIREFOX: &str = "/usr/lib/firefox-esr/firefox-esr";

/// Preferences of the fresh profile (`user.js`): no first-run pages, no background
/// connections, and the USB token path of WebAuthn on (its default), the soft token off.
const PREFERENCES: &[(&str, &str)] = &[
    ("browser.shell.checkDefaultBrowser", "false"),
    ("browser.startup.homepage_override.mstone", "\"ignore\""),
    ("browser.aboutwelcome.enabled", "false"),
    ("datareporting.policy.dataSubmissionEnabled", "false"),
    ("toolkit.telemetry.reportingpolicy.firstRun", "false"),
    ("app.update.disabledForTesting", "true"),
    ("app.normandy.enabled", "false"),
    ("network.captive-portal-service.enabled", "false"),
    ("network.connectivity-service.enabled", "false"),
    ("browser.safebrowsing.update.enabled", "false"),
    ("extensions.update.enabled", "false"),
    ("security.webauth.webauthn_enable_usbtoken", "true"),
    ("security.webauth.webauthn_enable_softtoken", "false"),
];

/// A headless Firefox on one page, killed on drop.
pub struct Firefox {
    child: Child,
}

impl Firefox {
    /// Starts Firefox with an empty profile in `profile` on `url`, its output going to `log`.
    pub fn open(profile: &Path, log: &Path, url: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(profile)?;
        let prefs: String = PREFERENCES
            .iter()
            .map(|(name, value)| format!("user_pref(\"{name}\", {value});\n"))
            .collect();
        std::fs::write(profile.join("user.js"), prefs)?;
        let log = std::fs::File::create(log)?;
        let child = Command::new(FIREFOX)
            .args(["--headless", "--no-remote", "--profile"])
            .arg(profile)
            .arg(url)
            .env("MOZ_HEADLESS", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {FIREFOX}"))?;
        Ok(Self { child })
    }
}

impl Drop for Firefox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
