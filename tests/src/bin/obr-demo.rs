//! `obr-demo`: the whole system on one machine with embedded defaults —
//! relay, in-process signer, in-memory session store, SQLite files, a demo
//! organisation, and an agent with its HID socket — then the first seed's
//! story, step by step, through the real path. It stays up afterwards (so
//! you can point a CTAPHID client or `obr-agent` at it) until Ctrl+C,
//! unless `--exit-after-story`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use obr_agent::daemon::{Agent, AgentConfig};
use obr_agent::status::ModeView;
use obr_agent::tunnel::{DEFAULT_CTAP_BUDGET, TunnelConfig, TunnelHandle};
use obr_relay::{Relay, RelayConfig};
use obr_tests::api::Api;
use obr_tests::hid_client::HidClient;
use obr_tests::rp;

#[derive(Parser, Debug)]
#[command(
    name = "obr-demo",
    about = "Run obr on one machine and show an on-behalf registration"
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Where the databases, keys and sockets live.
    #[arg(long, default_value = "obr-data")]
    data_dir: PathBuf,
    /// Stop once the story has run (used by the test suite).
    #[arg(long)]
    exit_after_story: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    std::fs::create_dir_all(&args.data_dir)?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    let listener = std::net::TcpListener::bind(args.listen).with_context(|| {
        format!(
            "cannot listen on {} (try --listen 127.0.0.1:0)",
            args.listen
        )
    })?;
    let url = format!("http://{}", listener.local_addr()?);
    let mut config = RelayConfig::embedded(data_dir.join("relay"), url.clone());
    config.demo_org = true;
    let relay = Relay::open(config).await?;
    let org = relay.demo_org().cloned().context("no demo organisation")?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let relay_task = tokio::spawn(relay.run(listener, async {
        let _ = stop_rx.await;
    }));

    let hid_socket = data_dir.join("agent.hid");
    let agent = Agent::start(AgentConfig {
        tunnel: TunnelConfig {
            relays: vec![TunnelConfig::normalize_url(&url)],
            ca_file: None,
            state_file: data_dir.join("agent.json"),
            ctap_budget: DEFAULT_CTAP_BUDGET,
        },
        hid_socket: hid_socket.clone(),
        control_socket: data_dir.join("agent.ctl"),
        engine: Default::default(),
    })?;
    let tunnel = agent.tunnel().clone();
    let agent_task = tokio::spawn(agent.run(std::future::pending()));

    println!(
        "obr is up: relay {url} (embedded signer, in-memory sessions, SQLite in {})",
        data_dir.display()
    );
    println!(
        "demo organisation: admin {}; password and TOTP secret in {}",
        org.admin_email,
        data_dir.join(obr_relay::demo::DEMO_FILE).display()
    );
    println!("admin panel: {url}/panel/   user app: {url}/app/");
    println!();
    let handle = tokio::runtime::Handle::current();
    let story = {
        let (url, org, hid_socket) = (url.clone(), org.clone(), hid_socket.clone());
        tokio::task::spawn_blocking(move || story(&handle, &tunnel, &url, &org, &hid_socket))
    };
    story.await??;
    println!();
    println!(
        "The system stays up. Agent HID socket: {}",
        hid_socket.display()
    );
    println!(
        "  obr-agent --control {} status",
        data_dir.join("agent.ctl").display()
    );
    if !args.exit_after_story {
        println!("Ctrl+C to stop.");
        tokio::signal::ctrl_c().await?;
    }
    let _ = stop_tx.send(());
    agent_task.abort();
    relay_task.await??;
    Ok(())
}

fn step(n: u32, text: &str) {
    println!("[{n}] {text}");
}

fn wait_for_mode(
    tunnel: &TunnelHandle,
    what: &str,
    done: impl Fn(&ModeView) -> bool,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = tunnel.status();
        if done(&status.mode) {
            return Ok(status.mode.display());
        }
        if Instant::now() > deadline {
            bail!("the agent never reached {what}: {}", status.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn story(
    rt: &tokio::runtime::Handle,
    tunnel: &TunnelHandle,
    url: &str,
    org: &obr_relay::demo::DemoOrg,
    hid_socket: &std::path::Path,
) -> anyhow::Result<()> {
    let api = Api::new(url);
    let bob = org
        .users
        .iter()
        .find(|u| u.email == "bob@demo.obr")
        .context("bob")?;
    let bob_device = bob.device_token.as_deref().context("bob's device token")?;

    wait_for_mode(tunnel, "the relay", |_| tunnel.status().connected)?;
    step(
        1,
        &format!(
            "Agent (the Pairing Tool) is connected: \"{}\"",
            tunnel.status().mode.display()
        ),
    );
    let pending = rt.block_on(tunnel.login())?;
    step(
        2,
        &format!(
            "Admin presses Ctrl+I: the agent shows code {} for {}",
            pending.user_code, pending.verification_uri
        ),
    );
    let admin = api.demo_owner(org)?;
    api.approve_login(&admin, &pending.user_code)?.ok()?;
    let mode = wait_for_mode(tunnel, "ready", |m| matches!(m, ModeView::Normal { .. }))?;
    step(
        3,
        &format!(
            "Admin signs in to the panel (password and TOTP code) and approves it; the agent \
             shows \"{mode}\""
        ),
    );

    let session = api.select_obr(&admin, &bob.id)?.ok()?;
    let mode = wait_for_mode(tunnel, "OBR", |m| matches!(m, ModeView::Obr { .. }))?;
    step(
        4,
        &format!(
            "Users → bob@demo.obr → Action → Select as OBR; the agent shows \"{mode}\" (session {}, expires in 15 min)",
            session["id"].as_str().unwrap_or("?")
        ),
    );

    let webauthn = rp::webauthn()?;
    let (request, reg_state) = rp::start_registration(&webauthn, "bob", "Bob at the RP")?;
    let mut hid = HidClient::open(hid_socket)?;
    let started = Instant::now();
    let response = hid.cbor(&request.ctap_request)?;
    let took = started.elapsed();
    let key =
        webauthn.finish_securitykey_registration(&request.credential(&response)?, &reg_state)?;
    step(
        5,
        &format!(
            "The admin registers a security key for bob at {} through the agent: makeCredential agent→relay→signer→back in {took:.1?}; webauthn-rs verified it",
            rp::ORIGIN
        ),
    );

    let inbox = api.notifications(bob_device)?;
    let note = inbox
        .iter()
        .rev()
        .find(|n| n["kind"] == "obr.registration")
        .context("no notification")?;
    step(
        6,
        &format!(
            "Bob's phone is notified at once: \"{}\"",
            note["message"].as_str().unwrap_or("?")
        ),
    );

    let passkeys = api.passkeys(&admin, &bob.id)?;
    let latest = passkeys
        .iter()
        .max_by_key(|p| p["created_at_ms"].as_i64())
        .context("no passkey")?;
    step(
        7,
        &format!(
            "The passkey is on bob's key: rp {}, created by admin {} in session {}",
            latest["rp_id"], latest["created_by_admin"], latest["obr_session_id"]
        ),
    );

    rt.block_on(tunnel.back_to_normal())?;
    let mode = wait_for_mode(tunnel, "normal", |m| matches!(m, ModeView::Normal { .. }))?;
    step(
        8,
        &format!("Admin clicks \"Back to normal mode\"; the agent shows \"{mode}\""),
    );

    // Bob signs in from his own workstation: a second agent he approves.
    let bob_dir = tempdir()?;
    let bob_agent = Agent::start(AgentConfig {
        tunnel: TunnelConfig {
            relays: vec![TunnelConfig::normalize_url(url)],
            ca_file: None,
            state_file: bob_dir.join("agent.json"),
            ctap_budget: DEFAULT_CTAP_BUDGET,
        },
        hid_socket: bob_dir.join("agent.hid"),
        control_socket: bob_dir.join("agent.ctl"),
        engine: Default::default(),
    })?;
    let bob_tunnel = bob_agent.tunnel().clone();
    let bob_task = rt.spawn(bob_agent.run(std::future::pending()));
    wait_for_mode(&bob_tunnel, "the relay", |_| bob_tunnel.status().connected)?;
    let pending = rt.block_on(bob_tunnel.login())?;
    api.approve_login(bob_device, &pending.user_code)?.ok()?;
    wait_for_mode(&bob_tunnel, "normal", |m| {
        matches!(m, ModeView::Normal { .. })
    })?;
    let mut bob_hid = HidClient::open(&bob_dir.join("agent.hid"))?;
    let (options, auth_state) =
        webauthn.start_securitykey_authentication(std::slice::from_ref(&key))?;
    let assertion = rp::get_assertion(&options)?;
    // His own key asks his phone first; he approves.
    let head = api.inbox_head(bob_device)?;
    let phone = {
        let (url, device) = (url.to_owned(), bob_device.to_owned());
        std::thread::spawn(move || {
            Api::new(&url).answer_next_approval(&device, head, true, Duration::from_secs(10))
        })
    };
    let response = bob_hid.cbor(&assertion.ctap_request)?;
    phone
        .join()
        .map_err(|_| anyhow::anyhow!("phone thread panicked"))??;
    let result = webauthn
        .finish_securitykey_authentication(&assertion.credential(&response)?, &auth_state)?;
    step(
        9,
        &format!(
            "Bob signs in at the RP from his own workstation with that passkey, after approving on his phone: webauthn-rs accepted the assertion (counter {})",
            result.counter()
        ),
    );
    bob_task.abort();
    let _ = std::fs::remove_dir_all(&bob_dir);

    let audit = api.audit(&admin)?;
    let actions = obr_tests::api::audit_actions(&audit);
    step(
        10,
        &format!(
            "Audit log (hash chain intact: {}): {}",
            audit["chain_intact"],
            actions.join(", ")
        ),
    );
    Ok(())
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("obr-demo-bob-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
