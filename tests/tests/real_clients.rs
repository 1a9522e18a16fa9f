//! obr-agent is a USB security key to real client stacks: a QEMU guest (TCG, no network
//! device) with `/dev/uhid` runs signer, relay and an agent presenting a uhid key, and
//! `obr-guest-driver` inside it lets libfido2's tools and headless Chromium use that key for an
//! on-behalf registration:
//! 1. `fido2-token -L`/`-I` see the key; `fido2-cred -M` makes a credential with packed
//!    attestation that `fido2-cred -V` verifies; `fido2-assert` signs in with it;
//! 2. Chromium registers on bob's key from an RP page with `navigator.credentials.create()`,
//!    signs in with `.get()`, both verified server-side by webauthn-rs, and bob's obr
//!    notification is there;
//! 3. the same with `userVerification: "required"`: no prompt blocks it, because the key has
//!    built-in UV (the OBR session stands for it, given as a pinUvAuthToken) and no PIN;
//! 4. headless Firefox ESR, whose WebAuthn stack is its own (authenticator-rs), does both
//!    ceremonies with UV discouraged and required on the same page, which reports to the RP
//!    server (Firefox needs no driver; the page never asks for `attestation: "direct"`, whose
//!    consent prompt would wait forever).
//!
//! Around them: an agent run as `nobody` is refused `/dev/uhid` with the udev rule and group
//! to install; malformed reports written to the hidraw node are dropped or refused; and the
//! kernel removes the device when the agent exits.
//!
//! The guest's kernel and root filesystem come from Debian's registry on the first run (see
//! `obr_tests::guest::assets`). Screenshots of the RP page are left in the test's output
//! folder, and copied to `$OBR_SCREENSHOTS_DIR` when that is set (how `docs/screenshots/`
//! was made).

use std::time::Duration;

use obr_tests::guest::{Boot, GuestAssets, REPORT_FILE, boot};
use obr_tests::processes::binary;
use obr_tests::real_clients::Report;
use obr_tests::scratch::Scratch;

/// Boot, relay/signer/agent start, libfido2, two Chromium and two Firefox runs and power-off,
/// under TCG on a loaded 2-core machine; the first run also builds the guest cache before this
/// starts.
const GUEST_DEADLINE: Duration = Duration::from_secs(600);

#[test]
fn libfido2_chromium_and_firefox_use_the_agent_as_a_usb_security_key() -> anyhow::Result<()> {
    let assets = GuestAssets::ensure()?;
    let scratch = Scratch::new("guest-host")?;
    let out = scratch.join("out");
    std::fs::create_dir_all(&out)?;
    let driver = binary("obr-guest-driver")?;
    let bin_dir = driver
        .parent()
        .expect("binaries live in a folder")
        .to_owned();
    let run = Boot {
        assets,
        bin_dir,
        out_dir: out.clone(),
        command: vec![
            format!("{}/obr-guest-driver", obr_tests::guest::GUEST_BIN_DIR),
            "--out".into(),
            obr_tests::guest::GUEST_OUT_DIR.into(),
        ],
        env: vec![(
            "RUST_LOG".into(),
            "warn,obr_signer::ctap::client_pin=debug".into(),
        )],
        memory_mib: 3072,
        cpus: 2,
        deadline: GUEST_DEADLINE,
    }
    .run(scratch.path())?;
    let report: Report = match std::fs::read(out.join(REPORT_FILE)) {
        Ok(json) => serde_json::from_slice(&json)?,
        Err(error) => panic!(
            "the guest wrote no report ({error}); console tail:\n{}",
            run.tail(80)
        ),
    };
    println!("guest timeline:");
    let boot_done = run.mark(boot::INIT_MARK);
    println!(
        "  QEMU start → root filesystem mounted: {:?}",
        boot_done.unwrap_or_default()
    );
    for mark in &report.timeline {
        println!("  driver +{:>6} ms  {}", mark.at_ms, mark.what);
    }
    println!("  whole guest run: {:.1?}", run.wall);
    assert!(
        report.error.is_none() && run.exit_code == Some(0),
        "the driver failed (exit {:?}): {:?}\nconsole tail:\n{}",
        run.exit_code,
        report.error,
        run.tail(80)
    );

    // A user without access to /dev/uhid is told what to install and which group to join.
    let refusal = report
        .uhid_refusal_for_unprivileged_user
        .as_deref()
        .expect("the unprivileged agent ran");
    for expected in [
        "no permission to open /dev/uhid",
        "70-obr-agent.rules",
        "usermod -aG obr",
    ] {
        assert!(
            refusal.contains(expected),
            "{expected:?} missing from: {refusal}"
        );
    }
    assert!(!refusal.contains("panicked"), "{refusal}");

    // Malformed reports reached the agent, which answered the one on an unallocated channel
    // with CTAPHID_ERROR ERR_INVALID_CHANNEL (bytes 7..8: length 1, code 0x0b).
    let answer = report
        .garbage_answer
        .as_deref()
        .expect("garbage was written");
    assert_eq!(
        &answer[8..],
        "bf00010b",
        "CTAPHID_ERROR INVALID_CHANNEL: {answer}"
    );

    // 1. libfido2.
    let fido = report.libfido2.as_ref().expect("libfido2 ran");
    let hidraw = report.hidraw.as_deref().expect("a hidraw node");
    assert!(fido.token_list.contains(hidraw), "{}", fido.token_list);
    assert!(
        fido.token_list.contains("vendor=0x1209"),
        "{}",
        fido.token_list
    );
    for expected in ["FIDO_2_0", "aaguid", "maxmsgsiz: 7609"] {
        assert!(
            fido.token_info.contains(expected),
            "fido2-token -I lacks {expected}:\n{}",
            fido.token_info
        );
    }
    // Built-in UV given as a pinUvAuthToken, and no PIN to prompt for.
    let options: Vec<&str> = fido
        .token_info
        .lines()
        .find_map(|line| line.strip_prefix("options: "))
        .expect("fido2-token -I lists options")
        .split(", ")
        .collect();
    for option in ["up", "uv", "pinUvAuthToken", "makeCredUvNotRqd"] {
        assert!(options.contains(&option), "{option} not in {options:?}");
    }
    assert!(
        !options.iter().any(|o| o.ends_with("clientPin")),
        "no PIN to prompt for: {options:?}"
    );
    assert_eq!(fido.cred_format, "packed");
    assert!(fido.attestation_certificate, "packed attestation with x5c");
    assert!(fido.public_key_pem.contains("BEGIN PUBLIC KEY"));
    assert!(fido.assertion_verified);

    // 2 to 4. Chromium then Firefox, UV discouraged then required.
    let runs: Vec<(&str, &str)> = report
        .browser
        .iter()
        .map(|run| (run.browser.as_str(), run.user_verification.as_str()))
        .collect();
    assert_eq!(
        runs,
        [
            ("chromium", "discouraged"),
            ("chromium", "required"),
            ("firefox", "discouraged"),
            ("firefox", "required")
        ]
    );
    for browser in &report.browser {
        let page = &browser.page;
        // The page ran in the browser it was meant for.
        let engine = if browser.browser == "firefox" {
            "Firefox/"
        } else {
            "Chrome/"
        };
        let user_agent = page["user_agent"].as_str().unwrap_or_default();
        assert!(user_agent.contains(engine), "{user_agent}");
        assert_eq!(page["ok"], true, "{page}");
        assert_eq!(page["registration"]["verified"], true, "{page}");
        assert_eq!(page["authentication"]["verified"], true, "{page}");
        assert_eq!(
            page["authentication"]["credential_id"],
            page["registration"]["credential_id"]
        );
        let note = &page["registration"]["obr_notification"];
        assert_eq!(note["kind"], "obr.registration", "{page}");
        assert_eq!(note["detail"]["rp_id"], "localhost", "{page}");
        assert_eq!(
            note["detail"]["credential_id"], page["registration"]["credential_id"],
            "bob was told of this very credential: {page}"
        );
        let uv_required = browser.user_verification == "required";
        assert_eq!(
            page["authentication"]["user_verified"], uv_required,
            "UV only when the RP requires it: {page}"
        );
        if browser.browser == "chromium" {
            let screenshot = browser.screenshot.as_deref().expect("a screenshot");
            assert!(out.join(screenshot).exists());
        }
        println!(
            "  {} uv={}: start {} ms; page asked for to both verified {} ms (page script \
             started at {} ms, create {} ms, get {} ms)",
            browser.browser,
            browser.user_verification,
            browser.start_ms,
            browser.report_ms,
            page["script_started_ms"],
            page["create_ms"],
            page["get_ms"]
        );
    }

    // bob's inbox and the panel: five registrations by the admin (libfido2, four browser runs).
    let registrations: Vec<_> = report
        .notifications
        .iter()
        .filter(|n| n["kind"] == "obr.registration")
        .collect();
    assert_eq!(registrations.len(), 5, "{:?}", report.notifications);
    assert_eq!(report.passkeys.len(), 5, "{:?}", report.passkeys);
    assert!(
        report
            .passkeys
            .iter()
            .all(|p| p["created_by_admin"].is_string()),
        "{:?}",
        report.passkeys
    );

    // Each browser asked for UV as a pinUvAuthToken (for create() and get()) only when the RP
    // required it: the signer's debug line for each token issued, counted up to the driver's
    // mark that ends each browser run (libfido2's run, before them, asks for none).
    let mut tokens_per_run = Vec::new();
    let mut tokens = 0;
    for (_, line) in &run.console {
        if line.contains("pinUvAuthToken issued") {
            tokens += 1;
        }
        if line.contains("obr-guest-driver: [") && line.contains(") done: ok=") {
            tokens_per_run.push(tokens);
            tokens = 0;
        }
    }
    assert_eq!(
        tokens_per_run,
        [0, 2, 0, 2],
        "tokens issued per browser run:\n{}",
        run.tail(80)
    );

    // Clean teardown: the agent exited by itself on SIGTERM and the device went with it.
    assert_eq!(report.agent_exit_clean, Some(true));
    assert_eq!(report.hidraw_left_after_exit, Some(false));

    if let Some(dir) = std::env::var_os("OBR_SCREENSHOTS_DIR") {
        for screenshot in report.browser.iter().filter_map(|b| b.screenshot.as_ref()) {
            std::fs::copy(
                out.join(screenshot),
                std::path::Path::new(&dir).join(screenshot),
            )?;
        }
    }
    Ok(())
}
