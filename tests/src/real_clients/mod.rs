//! Real client stacks against obr-agent's uhid key, run *inside* the guest by
//! `obr-guest-driver`: libfido2's command-line tools ([`libfido2`]), and two browsers with
//! different WebAuthn stacks — headless Chromium ([`chromium`]) and headless Firefox ESR
//! ([`firefox`], authenticator-rs) — on a small relying-party page verified by webauthn-rs
//! ([`rp_page`]).
//!
//! This module owns what the driver leaves for the host — the [`Report`], written as JSON to the
//! guest's output folder — so the host test and the driver agree on its shape. It starts no
//! virtual machine (that is [`crate::guest`]) and no obr component of its own: the driver starts
//! the real binaries through [`crate::processes`].

pub mod chromium;
pub mod firefox;
pub mod libfido2;
pub mod rp_page;

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Everything the driver saw, written whether it succeeded or not.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// What happened when, in milliseconds since the driver started.
    pub timeline: Vec<Mark>,
    /// The `/dev/hidraw*` node the kernel made for the agent's uhid device.
    pub hidraw: Option<String>,
    /// What `obr-agent run --hid uhid` printed when run as a user who may not open
    /// `/dev/uhid`.
    pub uhid_refusal_for_unprivileged_user: Option<String>,
    /// The agent's answer (first 8 bytes, hex) to malformed reports written to the hidraw node
    /// (see the driver).
    pub garbage_answer: Option<String>,
    pub libfido2: Option<libfido2::Libfido2Run>,
    /// One run of the relying-party page per browser and user-verification requirement.
    pub browser: Vec<BrowserRun>,
    /// The user's obr inbox after the registrations.
    pub notifications: Vec<Value>,
    /// The user's passkeys as the admin panel lists them.
    pub passkeys: Vec<Value>,
    /// The agent exited with success on SIGTERM (rather than being killed).
    pub agent_exit_clean: Option<bool>,
    /// The hidraw node still existed after the agent was stopped.
    pub hidraw_left_after_exit: Option<bool>,
    /// Why the driver stopped early, if it did.
    pub error: Option<String>,
}

/// One run of the RP page in a fresh browser.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct BrowserRun {
    /// `chromium` or `firefox`.
    pub browser: String,
    /// `userVerification` the RP asked for.
    pub user_verification: String,
    /// Launch until the browser could be given the page (Chromium's DevTools port answered);
    /// Firefox is launched on the page, so this is 0 and its start-up counts in `report_ms`.
    pub start_ms: u64,
    /// The page asked for until its report reached the RP server.
    pub report_ms: u64,
    /// What the page's script reported (`window.obrRun`).
    pub page: Value,
    /// The screenshot's file name in the output folder (Chromium only: Firefox has no
    /// driver to take one after the ceremonies).
    pub screenshot: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mark {
    pub at_ms: u64,
    pub what: String,
}

impl Report {
    /// Records `what` at the time since `started`, and says it on the console.
    pub fn mark(&mut self, started: Instant, what: impl Into<String>) {
        let what = what.into();
        let at = started.elapsed();
        println!("obr-guest-driver: [{:>6} ms] {what}", at.as_millis());
        self.timeline.push(Mark {
            at_ms: millis(at),
            what,
        });
    }
}

pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
