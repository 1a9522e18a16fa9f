//! `obr-agent`: the Pairing Tool. `run` presents the virtual security key
//! and keeps the tunnel to the relay; `login`, `status` and
//! `back-to-normal` drive a running agent through its control socket.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use obr_agent::control::{self, ControlReply, ControlRequest};
use obr_agent::daemon::{Agent, AgentConfig, HidSetup};
use obr_agent::hid::uhid::{self, UhidSerial};
use obr_agent::status::ModeView;
use obr_agent::tunnel::{DEFAULT_CTAP_BUDGET, MAX_CTAP_BUDGET, TunnelConfig};
use tokio::time::Instant;

const DEFAULT_CTAP_BUDGET_MS: u64 = DEFAULT_CTAP_BUDGET.as_secs() * 1000;
const MAX_CTAP_BUDGET_MS: u64 = MAX_CTAP_BUDGET.as_secs() * 1000;

/// How long `obr-agent login` waits for the code to be approved.
const LOGIN_WAIT: Duration = Duration::from_secs(600);
const LOGIN_POLL: Duration = Duration::from_millis(250);

#[derive(Parser, Debug)]
#[command(
    name = "obr-agent",
    version,
    about = "obr Pairing Tool: a virtual FIDO2 security key tunnelled to the obr relay"
)]
struct Args {
    /// The agent's control socket.
    #[arg(
        long,
        global = true,
        env = "OBR_AGENT_CONTROL",
        default_value = "obr-agent.ctl"
    )]
    control: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the agent: the security key (HID socket or uhid), the tunnel and the control socket.
    Run {
        /// Relay URL: http(s)://host:port or ws(s)://host:port/agent/ws. Give
        /// several (repeat the option, or separate them with commas) and the
        /// agent moves to the next when one fails or drains.
        #[arg(
            long,
            env = "OBR_AGENT_RELAY",
            value_delimiter = ',',
            default_value = "http://127.0.0.1:8080"
        )]
        relay: Vec<String>,
        /// How the security key is presented.
        #[arg(long, env = "OBR_AGENT_HID", value_enum, default_value_t = HidKind::Socket)]
        hid: HidKind,
        /// SOCK_SEQPACKET socket that CTAPHID clients connect to (with --hid socket).
        #[arg(long, env = "OBR_AGENT_HID_SOCKET", default_value = "obr-agent.hid")]
        hid_socket: PathBuf,
        /// The uhid character device (with --hid uhid).
        #[arg(long, env = "OBR_AGENT_UHID_DEVICE", default_value = uhid::DEFAULT_DEVICE)]
        uhid_device: PathBuf,
        /// The key's USB serial number (with --hid uhid); by default derived one way from the
        /// agent id in the state file (a hash, not the id itself).
        #[arg(long, env = "OBR_AGENT_UHID_SERIAL")]
        uhid_serial: Option<UhidSerial>,
        /// Where the agent keeps its key pair (mode 0600), and so its id.
        #[arg(long, env = "OBR_AGENT_STATE", default_value = "obr-agent.json")]
        state_file: PathBuf,
        /// Extra CA certificates (PEM) to trust for a wss:// relay.
        #[arg(long, env = "OBR_AGENT_CA_FILE")]
        ca_file: Option<PathBuf>,
        /// Budget for each CTAP request at the relay, in milliseconds
        /// (1 to 120000).
        #[arg(
            long,
            env = "OBR_AGENT_CTAP_BUDGET_MS",
            default_value_t = DEFAULT_CTAP_BUDGET_MS,
            value_parser = clap::value_parser!(u64).range(1..=MAX_CTAP_BUDGET_MS)
        )]
        ctap_budget_ms: u64,
        /// Allow a plain ws:// (http://) relay that is not on this machine:
        /// for test setups only; the tunnel then crosses the network
        /// unencrypted.
        #[arg(long, env = "OBR_AGENT_INSECURE")]
        insecure: bool,
    },
    /// Log in ("Ctrl+I"), like `gh auth login`: show the panel's address
    /// and a code, open the browser when there is one, and wait until the
    /// code is approved.
    Login {
        /// Print the code and return without waiting for approval.
        #[arg(long)]
        no_wait: bool,
        /// Do not open a browser, only print the address.
        #[arg(long)]
        no_browser: bool,
    },
    /// Show the agent's mode, target user, the session's expiry, and the relay.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// End the on-behalf registration in progress: back to normal mode.
    #[command(visible_alias = "normal-mode")]
    BackToNormal,
    /// Handle an obr:// link: `obr://pair?code=…` from the panel's
    /// +Passkey → Other platforms makes this agent act for that user
    /// ("Open Pairing Tool"). What the desktop runs for the link.
    Open { url: String },
    /// Register `obr-agent open` as this desktop user's handler of obr://
    /// links (a .desktop file in ~/.local/share/applications and the
    /// default in ~/.config/mimeapps.list).
    RegisterUrlHandler,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum HidKind {
    /// A SOCK_SEQPACKET socket for CTAPHID clients (--hid-socket).
    Socket,
    /// A USB FIDO security key for browsers, through the kernel's uhid driver (--uhid-device).
    Uhid,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging("info");
    let args = Args::parse();
    match args.command {
        Cmd::Run {
            relay,
            hid,
            hid_socket,
            uhid_device,
            uhid_serial,
            state_file,
            ca_file,
            ctap_budget_ms,
            insecure,
        } => {
            let relays: Vec<String> = relay
                .iter()
                .map(|r| TunnelConfig::normalize_url(r))
                .collect();
            for url in &relays {
                TunnelConfig::check_transport(url, insecure)?;
            }
            let config = AgentConfig {
                tunnel: TunnelConfig {
                    relays,
                    ca_file,
                    state_file,
                    ctap_budget: Duration::from_millis(ctap_budget_ms),
                },
                hid_socket,
                control_socket: args.control.clone(),
                engine: Default::default(),
            };
            let hid = match hid {
                HidKind::Socket => HidSetup::Socket,
                HidKind::Uhid => HidSetup::Uhid {
                    device: uhid_device,
                    serial: uhid_serial,
                },
            };
            let agent = Agent::start_with(config, hid).context("cannot start the agent")?;
            // Tests and scripts wait for this prefix.
            println!(
                "obr-agent running: {}, control {}",
                agent.hid(),
                args.control.display()
            );
            agent.run(shutdown_signal()).await?;
            Ok(())
        }
        Cmd::Login {
            no_wait,
            no_browser,
        } => login(&args.control, no_wait, no_browser).await,
        Cmd::Status { json } => {
            match control::request(&args.control, &ControlRequest::Status).await? {
                ControlReply::Status { status, display } => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&status)?);
                    } else {
                        println!("{display}");
                    }
                    Ok(())
                }
                other => bail!("unexpected answer: {other:?}"),
            }
        }
        Cmd::Open { url } => {
            let code = pairing_code(&url)?;
            match control::request(&args.control, &ControlRequest::Pair { code }).await? {
                ControlReply::Paired { target_user } => {
                    println!(
                        "OBR: acting for {target_user}: register the passkey, then press Done in the panel"
                    );
                    Ok(())
                }
                ControlReply::Error { message } => bail!("{message}"),
                other => bail!("unexpected answer: {other:?}"),
            }
        }
        Cmd::RegisterUrlHandler => {
            let desktop = obr_agent::url_handler::register(&args.control)
                .context("cannot register the obr:// handler")?;
            println!(
                "obr:// links now open obr-agent ({}; control socket {})",
                desktop.display(),
                args.control.display()
            );
            Ok(())
        }
        Cmd::BackToNormal => {
            match control::request(&args.control, &ControlRequest::BackToNormal).await? {
                ControlReply::Ended {
                    confirmed: true, ..
                } => {
                    println!("back to normal mode");
                    Ok(())
                }
                ControlReply::Ended { message, .. } => {
                    println!(
                        "no longer acting for the user on this computer; the relay has not confirmed the end ({message}): the agent ends the session there as soon as it can"
                    );
                    Ok(())
                }
                ControlReply::Error { message } => bail!("{message}"),
                other => bail!("unexpected answer: {other:?}"),
            }
        }
    }
}

async fn login(
    control_path: &std::path::Path,
    no_wait: bool,
    no_browser: bool,
) -> anyhow::Result<()> {
    let login = match control::request(control_path, &ControlRequest::Login).await? {
        ControlReply::Login { login } => login,
        ControlReply::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer: {other:?}"),
    };
    println!("! Your one-time code: {}", login.user_code);
    let opened = !no_browser && open_browser(&login.verification_uri);
    if opened {
        println!("Opened {} in your browser:", login.verification_uri);
    } else {
        println!("Open {} in a browser:", login.verification_uri);
    }
    println!(
        "sign in and type the code {} (it expires in {} s)",
        login.user_code, login.expires_in_s
    );
    if no_wait {
        return Ok(());
    }
    let started = Instant::now();
    while started.elapsed() < LOGIN_WAIT {
        tokio::time::sleep(LOGIN_POLL).await;
        if let ControlReply::Status { status, display } =
            control::request(control_path, &ControlRequest::Status).await?
            && !matches!(status.mode, ModeView::NotLoggedIn)
        {
            println!("{display}");
            return Ok(());
        }
    }
    bail!(
        "the code was not approved within {} s",
        LOGIN_WAIT.as_secs()
    )
}

/// The pairing code of an `obr://pair?code=…` link; anything else is
/// refused (the agent follows no other link).
fn pairing_code(link: &str) -> anyhow::Result<String> {
    let parsed = url::Url::parse(link.trim()).context("not a link")?;
    if parsed.scheme() != "obr" || parsed.host_str() != Some("pair") {
        bail!("not an obr://pair link: {link}");
    }
    let code = parsed
        .query_pairs()
        .find(|(name, _)| name == "code")
        .map(|(_, value)| value.into_owned())
        .context("the link has no code")?;
    let plausible = (16..=64).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !plausible {
        bail!("the link's code is not a pairing code");
    }
    Ok(code)
}

/// Open `url` in the desktop's browser (`$BROWSER`, or `xdg-open` in a
/// graphical session), without waiting for it; whether one was started.
fn open_browser(url: &str) -> bool {
    // The address comes from the relay: a web page, never an option.
    let web = (url.starts_with("https://") || url.starts_with("http://"))
        && !url.chars().any(|c| c.is_control() || c.is_whitespace());
    if !web {
        return false;
    }
    let graphical =
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    let opener = match std::env::var("BROWSER") {
        Ok(browser) if !browser.trim().is_empty() => browser,
        _ if graphical => "xdg-open".to_owned(),
        _ => return false,
    };
    std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}

async fn shutdown_signal() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Logs on stderr: `OBR_LOG_FORMAT=json` writes one JSON object per line
/// (for a log collector), otherwise text, coloured only on a terminal.
/// `RUST_LOG` filters (default `info`).
fn init_logging(default_filter: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("OBR_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        logs.json()
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        logs.with_ansi(std::io::stderr().is_terminal()).init();
    }
}
