//! `obr-guest-driver`: the half of the real-client test that runs inside the QEMU guest (see
//! `tests/tests/real_clients.rs` for the host half). It starts a signer with packed
//! attestation, a relay and an agent presenting a uhid USB key, logs the admin in and selects
//! bob as OBR, then lets libfido2, headless Chromium and headless Firefox ESR use the key as
//! they would any security key. Whatever happens, it writes a [`Report`] to the output folder
//! for the host to check.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use obr_agent::hid::uhid;
use obr_tests::api::Api;
use obr_tests::processes::{AgentProc, RelayOptions, RelayProc, SignerProc, binary};
use obr_tests::real_clients::chromium::Chromium;
use obr_tests::real_clients::firefox::Firefox;
use obr_tests::real_clients::rp_page::{InboxAccess, RpPage};
use obr_tests::real_clients::{BrowserRun, Report, libfido2, millis};
use obr_tests::scratch::Scratch;

/// The relying party fido2-cred and fido2-assert use.
const LIBFIDO2_RP_ID: &str = "libfido2.obr.test";
/// How long the driver waits for the kernel or the agent: a hidraw node to appear or go, an
/// answer on the device, an agent that should fail to start.
const DEVICE_WAIT: Duration = Duration::from_secs(10);
/// How long a browser may take, under emulation, from being given the RP page to the page's
/// report of both ceremonies (Firefox's whole start-up included).
const PAGE_WAIT: Duration = Duration::from_secs(150);
/// The browsers, each run once per user-verification requirement.
const BROWSERS: [&str; 2] = ["chromium", "firefox"];

#[derive(Parser, Debug)]
#[command(
    name = "obr-guest-driver",
    about = "Real clients against obr-agent's uhid key"
)]
struct Args {
    /// Where the report, logs and screenshots go.
    #[arg(long)]
    out: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let started = Instant::now();
    let mut report = Report::default();
    report.mark(started, "driver started");
    if let Err(error) = drive(&args.out, &mut report, started) {
        report.error = Some(format!("{error:#}"));
        println!("obr-guest-driver: failed: {error:#}");
    }
    let written = serde_json::to_vec_pretty(&report)
        .map_err(anyhow::Error::from)
        .and_then(|json| {
            Ok(std::fs::write(
                args.out.join(obr_tests::guest::REPORT_FILE),
                json,
            )?)
        });
    match (written, &report.error) {
        (Ok(()), None) => ExitCode::SUCCESS,
        (Err(error), _) => {
            println!("obr-guest-driver: cannot write the report: {error:#}");
            ExitCode::FAILURE
        }
        (Ok(()), Some(_)) => ExitCode::FAILURE,
    }
}

fn drive(out: &Path, report: &mut Report, started: Instant) -> anyhow::Result<()> {
    let scratch = Scratch::new("guest")?;
    std::fs::create_dir_all(scratch.join("libfido2"))?;
    let signer_dir = scratch.join("signer");
    let ca_cert = signer_dir.join("attestation-ca.pem");
    let ca_key = signer_dir.join("attestation-ca.key");
    let signer = SignerProc::start_with(
        &signer_dir,
        &[
            "--attestation".as_ref(),
            "packed".as_ref(),
            "--attestation-ca-cert".as_ref(),
            ca_cert.as_os_str(),
            "--attestation-ca-key".as_ref(),
            ca_key.as_os_str(),
        ],
    )?;
    let relay = RelayProc::start(
        &scratch.join("relay"),
        &RelayOptions::with_signer(&signer.endpoint),
    )?;
    report.mark(started, "signer and relay ready");
    report.uhid_refusal_for_unprivileged_user =
        Some(unprivileged_agent(&scratch.join("nobody"), &relay.url)?);
    report.mark(started, "an unprivileged agent was refused /dev/uhid");
    let agent = AgentProc::start_with(&scratch.join("agent"), &relay.url, &["--hid", "uhid"])?;
    let hidraw = wait_for_hidraw()?;
    report.mark(started, format!("agent ready, kernel made {hidraw}"));
    report.hidraw = Some(hidraw.clone());

    let api = Api::new(&relay.url);
    let demo = &relay.demo;
    let bob = relay.user("bob@demo.obr")?;
    let bob_token = bob
        .device_token
        .clone()
        .context("bob has no device token")?;
    let admin = api.demo_owner(demo)?;
    agent.login(&api, &admin)?;
    agent.select_as_obr(&api, &admin, bob)?;
    report.mark(started, "admin logged in, bob selected as OBR");

    let vid_pid = format!(
        "vendor=0x{:04x}, product=0x{:04x}",
        uhid::VENDOR_ID,
        uhid::PRODUCT_ID
    );
    report.garbage_answer = Some(write_garbage(&hidraw)?);
    report.mark(started, "garbage written to the hidraw node");
    let (device, token_list) = libfido2::find_device(&vid_pid)?;
    report.mark(started, format!("fido2-token -L lists {device}"));
    let fido = libfido2::register_and_sign_in(
        &device,
        LIBFIDO2_RP_ID,
        &scratch.join("libfido2"),
        token_list,
    )?;
    report.libfido2 = Some(fido);
    report.mark(started, "libfido2 registered, verified and signed in");

    let page = RpPage::start(InboxAccess {
        relay_url: relay.url.clone(),
        user_email: bob.email.clone(),
        device_token: bob_token.clone(),
    })?;
    for browser in BROWSERS {
        for uv in ["discouraged", "required"] {
            let run = browse(browser, &page, uv, out, &scratch)?;
            report.mark(
                started,
                format!("{browser} ({uv}) done: ok={}", run.page["ok"]),
            );
            let error = (run.page["ok"] != true).then(|| run.page["error"].to_string());
            report.browser.push(run);
            if let Some(error) = error {
                bail!("the RP page failed in {browser} with userVerification {uv}: {error}");
            }
        }
    }

    report.notifications = api.notifications(&bob_token)?;
    report.passkeys = api.passkeys(&admin, &bob.id)?;
    // SIGTERM; a clean exit is the agent's own teardown (UHID_DESTROY), not the kernel
    // reaping the descriptor of a killed process.
    report.agent_exit_clean = Some(agent.proc.stop()?.success());
    report.hidraw_left_after_exit = Some(wait_until_gone(&hidraw)?);
    report.mark(started, "agent stopped");
    Ok(())
}

/// One fresh `browser` on the RP page with `userVerification: uv`: the page's report, and for
/// Chromium a screenshot once it is in.
fn browse(
    browser: &str,
    page: &RpPage,
    uv: &str,
    out: &Path,
    scratch: &Scratch,
) -> anyhow::Result<BrowserRun> {
    let url = format!("{}?uv={uv}", page.url);
    let profile = scratch.join(&format!("{browser}-{uv}"));
    let log = out.join(format!("{browser}-{uv}.log"));
    let launched = Instant::now();
    let (run, screenshot) = if browser == "firefox" {
        let _firefox = Firefox::open(&profile, &log, &url)?;
        let run = BrowserRun {
            page: page.next_report(PAGE_WAIT)?,
            report_ms: millis(launched.elapsed()),
            ..BrowserRun::default()
        };
        (run, None)
    } else {
        let chromium = Chromium::launch(&profile, &log)?;
        let start_ms = millis(launched.elapsed());
        let opened = Instant::now();
        let mut tab = chromium.open(&url)?;
        let run = BrowserRun {
            page: page.next_report(PAGE_WAIT)?,
            start_ms,
            report_ms: millis(opened.elapsed()),
            ..BrowserRun::default()
        };
        let screenshot = format!("rp-page-uv-{uv}.png");
        tab.screenshot(&out.join(&screenshot))?;
        (run, Some(screenshot))
    };
    Ok(BrowserRun {
        browser: browser.to_owned(),
        user_verification: uv.to_owned(),
        screenshot,
        ..run
    })
}

/// What `obr-agent run --hid uhid` tells a user who may not open `/dev/uhid` (here `nobody`;
/// in the guest the node is root's, mode 0600, as on a machine without our udev rule). Fails
/// if the agent starts anyway.
fn unprivileged_agent(dir: &Path, relay_url: &str) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
    let stderr_path = dir.join("stderr");
    let mut child = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(binary("obr-agent")?)
        .arg("--control")
        .arg(dir.join("ctl.sock"))
        .args(["run", "--hid", "uhid", "--relay", relay_url, "--state-file"])
        .arg(dir.join("agent.json"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path)?)
        .spawn()
        .context("cannot run setpriv (util-linux)")?;
    let Some(status) = poll(|| Ok(child.try_wait()?))? else {
        let _ = child.kill();
        let _ = child.wait();
        bail!("obr-agent kept running as nobody: it must not have opened /dev/uhid");
    };
    if status.success() {
        bail!("obr-agent exited successfully as nobody");
    }
    Ok(std::fs::read_to_string(stderr_path)?)
}

/// Writes what no FIDO client sends straight to the hidraw node before libfido2 uses the key:
/// a 2-byte write (one byte of report, which the agent pads: a continuation packet on a
/// channel nobody opened, ignored), a 65-byte report with a report ID the key does not have
/// (dropped), and an initialization packet on a channel nobody allocated. Then waits for the agent's answer to
/// the last one, CTAPHID_ERROR with ERR_INVALID_CHANNEL on that channel, which shows the
/// reports reached the agent and it read past the first two. (The libfido2 run that follows
/// shows the key stayed usable.) Returns the answer's first eight bytes, hex.
fn write_garbage(hidraw: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    const CHANNEL: [u8; 4] = [0x25, 0x4a, 0x6f, 0x94];
    const CTAPHID_ERROR: u8 = 0xbf;
    let mut node = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(hidraw)?;
    let mut init = [0u8; 65];
    init[1..5].copy_from_slice(&CHANNEL);
    init[5] = 0x80 | 0x39; // an initialization packet of a command that does not exist
    init[7] = 1;
    for bytes in [&[0u8, 0x86][..], &[0x05; 65][..], &init[..]] {
        node.write_all(bytes)
            .with_context(|| format!("hidraw refused a {}-byte write", bytes.len()))?;
    }
    let mut answer = [0u8; 64];
    let answered = poll(|| match node.read(&mut answer) {
        Ok(n) if n >= 8 && answer[..4] == CHANNEL && answer[4] == CTAPHID_ERROR => Ok(Some(
            answer[..8].iter().map(|b| format!("{b:02x}")).collect(),
        )),
        Ok(_) => Ok(None),
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
        Err(error) => Err(error.into()),
    })?;
    answered.context("the agent did not answer the packet on an unallocated channel")
}

/// The agent's hidraw node, once `hid-generic` has made it.
fn wait_for_hidraw() -> anyhow::Result<String> {
    poll(|| Ok(hidraw_nodes()?.into_iter().next()))?.with_context(|| {
        format!("no /dev/hidraw* appeared within {DEVICE_WAIT:?} of the agent starting")
    })
}

/// Whether `node` still exists after [`DEVICE_WAIT`].
fn wait_until_gone(node: &str) -> anyhow::Result<bool> {
    Ok(poll(|| Ok((!Path::new(node).exists()).then_some(())))?.is_none())
}

/// Calls `attempt` every 10 ms until it gives a value or [`DEVICE_WAIT`] has passed (`None`).
fn poll<T>(mut attempt: impl FnMut() -> anyhow::Result<Option<T>>) -> anyhow::Result<Option<T>> {
    let deadline = Instant::now() + DEVICE_WAIT;
    loop {
        if let Some(value) = attempt()? {
            return Ok(Some(value));
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn hidraw_nodes() -> anyhow::Result<Vec<String>> {
    let mut nodes: Vec<String> = std::fs::read_dir("/dev")?
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("hidraw"))
        .map(|name| format!("/dev/{name}"))
        .collect();
    nodes.sort();
    Ok(nodes)
}
