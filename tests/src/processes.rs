//! Start obr's real binaries as child processes for a test: each on a free
//! loopback port, in a scratch directory, ready when it prints its
//! "listening"/"running" line, killed when dropped.
//!
//! Binaries are found next to the test executable (`target/<profile>/`),
//! where `cargo test --workspace` / `cargo nextest run --workspace` put
//! them; run with `--workspace` so they are built.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::scratch::Scratch;

/// How long a process may take to say it is ready.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// `target/<profile>/<name>`.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("test executable has no directory")?;
    if dir.ends_with("deps") {
        dir = dir.parent().context("deps has no parent")?;
    }
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is not built: run the tests with `cargo nextest run --workspace` (or `cargo test --workspace`)",
            path.display()
        );
    }
    Ok(path)
}

/// A child process that is killed on drop.
pub struct Proc {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    /// Spawn `command` and wait for a stdout line starting with `ready`;
    /// returns the process and the rest of that line.
    pub fn spawn(name: &str, mut command: Command, ready: &str) -> anyhow::Result<(Self, String)> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,h2=warn".into()),
            );
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, lines) = mpsc::channel();
        let label = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("[{label}] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut proc = Self {
            name: name.to_owned(),
            child,
            lines,
        };
        let rest = proc.wait_for_line(ready, STARTUP_TIMEOUT)?;
        Ok((proc, rest))
    }

    /// Wait for a stdout line starting with `prefix`; returns the remainder.
    pub fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok(rest.trim().to_owned());
                    }
                }
                Err(_) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        bail!(
                            "{} exited with {status} before printing {prefix:?}",
                            self.name
                        );
                    }
                    bail!("{} did not print {prefix:?} within {timeout:?}", self.name);
                }
            }
        }
    }

    /// Wait for a stdout line (a log line) containing `needle`; returns it.
    pub fn wait_for_line_containing(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(_) => {}
                Err(_) => bail!("{} did not print {needle:?} within {timeout:?}", self.name),
            }
        }
    }

    /// Every stdout line printed since the last look, without waiting.
    pub fn lines_so_far(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.lines.try_recv().ok()).collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGSTOP, and wait until the kernel reports the process stopped (state
    /// `T` in /proc): a signal is delivered asynchronously, and a test that
    /// sends work right after `kill` could otherwise still be served.
    pub fn freeze(&self) -> anyhow::Result<()> {
        let pid = self.pid().to_string();
        Command::new("kill").args(["-STOP", &pid]).status()?;
        let stat = format!("/proc/{pid}/stat");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&stat)?;
            // The state follows the parenthesised command name.
            let state = text.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
            if matches!(state, Some(Some('T' | 't'))) {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("{} did not stop (state line: {text})", self.name);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// SIGCONT after [`Proc::freeze`].
    pub fn thaw(&self) -> anyhow::Result<()> {
        Command::new("kill")
            .args(["-CONT", &self.pid().to_string()])
            .status()?;
        Ok(())
    }

    /// SIGTERM, then wait (SIGKILL after a grace period).
    pub fn stop(mut self) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..100 {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill()?;
        Ok(self.child.wait()?)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A standalone `obr-signer` on a free port.
pub struct SignerProc {
    pub proc: Proc,
    pub endpoint: String,
}

impl SignerProc {
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(dir, &[])
    }

    /// With extra `obr-signer` arguments; its database and KEK live in
    /// `dir`, created if need be (two signers given one `dir` share them, as pods share a
    /// database and a Secret).
    pub fn start_with(dir: &Path, extra: &[&std::ffi::OsStr]) -> anyhow::Result<Self> {
        let sqlite = format!("sqlite://{}?mode=rwc", dir.join("signer.db").display());
        Self::start_on(dir, &sqlite, extra)
    }

    /// On the database at `database_url` (its KEK still in `dir`).
    pub fn start_on(
        dir: &Path,
        database_url: &str,
        extra: &[&std::ffi::OsStr],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut cmd = Command::new(binary("obr-signer")?);
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--database-url")
            .arg(database_url)
            .arg("--kek-file")
            .arg(dir.join("signer-kek.key"))
            .args(extra);
        // Plaintext on loopback is the tests' choice, said out loud; a
        // signer given its TLS files serves mutual TLS only.
        if !extra.iter().any(|a| *a == "--tls-cert") {
            cmd.arg("--insecure-plaintext");
        }
        let (proc, addr) = Proc::spawn("signer", cmd, "obr-signer listening on ")?;
        Ok(Self {
            proc,
            endpoint: format!("http://{addr}"),
        })
    }
}

/// An `obr-relay` with a demo organisation, embedded signer unless given.
pub struct RelayProc {
    pub proc: Proc,
    pub url: String,
    pub demo: obr_relay::demo::DemoOrg,
}

#[derive(Default, Clone)]
pub struct RelayOptions {
    pub signers: Vec<String>,
    pub redis_url: Option<String>,
    pub redis_prefix: Option<String>,
    pub obr_ttl_s: Option<u64>,
    /// Listen address (default: a free port).
    pub listen: Option<String>,
    /// Find signers in Redis (`--discover-signers`).
    pub discover_signers: bool,
    /// More `obr-relay` arguments.
    pub extra_args: Vec<std::ffi::OsString>,
    /// More environment variables.
    pub env: Vec<(String, String)>,
}

impl RelayOptions {
    /// The defaults, but CTAP goes to the standalone signer at `endpoint`.
    pub fn with_signer(endpoint: &str) -> Self {
        Self {
            signers: vec![endpoint.to_owned()],
            ..Self::default()
        }
    }

    /// The defaults, but sessions live in the Redis at `url`.
    pub fn with_redis(url: String) -> Self {
        Self {
            redis_url: Some(url),
            ..Self::default()
        }
    }
}

impl RelayProc {
    /// Creates `dir` (the relay's data directory) if need be.
    pub fn start(dir: &Path, options: &RelayOptions) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut cmd = Command::new(binary("obr-relay")?);
        cmd.arg("--listen")
            .arg(options.listen.as_deref().unwrap_or("127.0.0.1:0"))
            .arg("--data-dir")
            .arg(dir)
            .arg("--demo-org")
            .arg("--workers")
            .arg("2");
        for signer in &options.signers {
            cmd.arg("--signer").arg(signer);
        }
        if let Some(url) = &options.redis_url {
            cmd.arg("--redis-url").arg(url);
        }
        if let Some(prefix) = &options.redis_prefix {
            cmd.arg("--redis-prefix").arg(prefix);
        }
        if options.discover_signers {
            cmd.arg("--discover-signers");
        }
        // Plaintext to standalone signers on loopback is the tests' choice,
        // said out loud; with `--signer-ca` the relay speaks mutual TLS.
        let standalone = !options.signers.is_empty() || options.discover_signers;
        if standalone && !options.extra_args.iter().any(|a| a == "--signer-ca") {
            cmd.arg("--insecure-plaintext-signers");
        }
        if let Some(ttl) = options.obr_ttl_s {
            cmd.arg("--obr-ttl-s").arg(ttl.to_string());
        }
        cmd.args(&options.extra_args);
        cmd.envs(options.env.iter().cloned());
        let (proc, addr) = Proc::spawn("relay", cmd, "obr-relay listening on ")?;
        let demo_path = dir.join(obr_relay::demo::DEMO_FILE);
        let demo = serde_json::from_slice(
            &std::fs::read(&demo_path)
                .with_context(|| format!("reading {}", demo_path.display()))?,
        )?;
        Ok(Self {
            proc,
            url: format!("http://{addr}"),
            demo,
        })
    }
}

/// `obr-agent run` arguments for a 3 s CTAP budget, so that a request
/// nobody answers (a refused session, an owner who ignores the approval)
/// ends quickly.
pub const SHORT_CTAP_BUDGET: &[&str] = &["--ctap-budget-ms", "3000"];

/// An `obr-agent run` with its HID and control sockets in `dir`.
pub struct AgentProc {
    pub proc: Proc,
    pub hid_socket: PathBuf,
    pub control: PathBuf,
}

impl AgentProc {
    pub fn start(dir: &Path, relay_url: &str) -> anyhow::Result<Self> {
        Self::start_with(dir, relay_url, &[])
    }

    /// With extra `obr-agent run` arguments (e.g. `--ctap-budget-ms`).
    /// Creates `dir` if need be.
    pub fn start_with(dir: &Path, relay_url: &str, extra: &[&str]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let hid_socket = dir.join("hid.sock");
        let control = dir.join("ctl.sock");
        let mut cmd = Command::new(binary("obr-agent")?);
        cmd.arg("--control")
            .arg(&control)
            .arg("run")
            .arg("--relay")
            .arg(relay_url)
            .arg("--hid-socket")
            .arg(&hid_socket)
            .arg("--state-file")
            .arg(dir.join("agent.json"))
            .args(extra);
        let (proc, _) = Proc::spawn("agent", cmd, "obr-agent running")?;
        Ok(Self {
            proc,
            hid_socket,
            control,
        })
    }

    /// Run `obr-agent <args>` against this agent's control socket.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new(binary("obr-agent")?)
            .arg("--control")
            .arg(&self.control)
            .args(args)
            .output()?;
        if !output.status.success() {
            bail!(
                "obr-agent {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8(output.stdout)?)
    }
}

/// A relay started with `options` in `<scratch>/relay`, an agent in
/// `<scratch>/agent`, and the demo admin logged in on it (its token is the
/// last item): where most end-to-end tests start.
pub fn admin_at_agent(
    scratch: &Scratch,
    options: &RelayOptions,
) -> anyhow::Result<(RelayProc, AgentProc, crate::api::Api, String)> {
    let relay = RelayProc::start(&scratch.join("relay"), options)?;
    let agent = AgentProc::start(&scratch.join("agent"), &relay.url)?;
    let api = crate::api::Api::new(&relay.url);
    let admin = api.demo_owner(&relay.demo)?;
    agent.login(&api, &admin)?;
    Ok((relay, agent, api, admin))
}

/// A relay (embedded signer) and one agent, in one scratch directory.
pub struct Stack {
    pub agent: AgentProc,
    pub relay: RelayProc,
    pub scratch: Scratch,
}

impl Stack {
    pub fn start(label: &str) -> anyhow::Result<Self> {
        let scratch = Scratch::new(label)?;
        let relay = RelayProc::start(&scratch.join("relay"), &RelayOptions::default())?;
        let agent = AgentProc::start(&scratch.join("agent"), &relay.url)?;
        Ok(Self {
            agent,
            relay,
            scratch,
        })
    }
}

impl AgentProc {
    /// `obr-agent status` until its line contains `needle`.
    pub fn wait_status(&self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let status = self.cli(&["status"])?;
            if status.contains(needle) {
                return Ok(status.trim().to_owned());
            }
            if std::time::Instant::now() > deadline {
                bail!("agent status is {status:?}, waited {timeout:?} for {needle:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// "Ctrl+I": start a login and approve its code with `token` (an admin
    /// token, or a user's device token). Returns the agent's status line.
    pub fn login(&self, api: &crate::api::Api, token: &str) -> anyhow::Result<String> {
        let out = self.cli(&["login", "--no-wait"])?;
        let code = crate::api::login_code(&out)?;
        api.approve_login(token, &code)?.ok()?;
        self.wait_status("normal mode", Duration::from_secs(10))
    }

    /// The panel's "Select as OBR" for `user`, then wait until this agent
    /// shows it. Returns the OBR session.
    pub fn select_as_obr(
        &self,
        api: &crate::api::Api,
        admin_token: &str,
        user: &obr_relay::demo::DemoUser,
    ) -> anyhow::Result<serde_json::Value> {
        let session = api.select_obr(admin_token, &user.id)?.ok()?;
        self.wait_status(
            &format!("OBR: acting for {}", user.email),
            Duration::from_secs(5),
        )?;
        Ok(session)
    }
}

impl RelayProc {
    pub fn user(&self, email: &str) -> anyhow::Result<&obr_relay::demo::DemoUser> {
        self.demo
            .users
            .iter()
            .find(|u| u.email == email)
            .with_context(|| format!("no demo user {email}"))
    }
}
