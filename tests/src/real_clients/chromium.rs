//! Headless Chromium as the browser: started with a fresh profile and a DevTools port, it opens
//! the RP page (whose script reports its outcome to the RP server), and the DevTools protocol
//! (two commands over one WebSocket: `Page.navigate` in a new tab, `Page.captureScreenshot`)
//! takes the picture. Nothing clicks: Chromium sends WebAuthn requests to USB HID
//! authenticators at once. DevTools' virtual authenticators are never used — they would replace
//! the real device under test.
//!
//! The protocol client is a few lines over `tungstenite` (already in the tree for the agent)
//! rather than a CDP crate, which would bring its own async stack for two calls.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, Message, WebSocket};

/// Debian's Chromium binary, called directly (its wrapper script needs more of `/proc`).
pub const CHROMIUM: &str = "/usr/lib/chromium/chromium";
/// How long Chromium may take to open its DevTools port.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one DevTools command may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// A headless Chromium, killed on drop.
pub struct Chromium {
    child: Child,
    port: u16,
}

impl Chromium {
    /// Starts Chromium with an empty profile in `profile`, its output going to `log`.
    pub fn launch(profile: &Path, log: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(profile)?;
        let log = std::fs::File::create(log)?;
        let child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1000,1100",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {CHROMIUM}"))?;
        let mut chromium = Self { child, port: 0 };
        chromium.port = chromium.wait_for_port(&profile.join("DevToolsActivePort"))?;
        Ok(chromium)
    }

    /// Chromium writes its DevTools port to `DevToolsActivePort` once it listens.
    fn wait_for_port(&mut self, file: &Path) -> anyhow::Result<u16> {
        let started = Instant::now();
        loop {
            if let Some(port) = std::fs::read_to_string(file)
                .ok()
                .and_then(|text| text.lines().next()?.trim().parse().ok())
            {
                return Ok(port);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("Chromium exited ({status}) before opening its DevTools port");
            }
            if started.elapsed() > START_TIMEOUT {
                bail!("Chromium opened no DevTools port within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Opens `url` in a new tab, once the navigation has committed.
    pub fn open(&self, url: &str) -> anyhow::Result<Tab> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let target: Value = agent
            .put(&format!(
                "http://127.0.0.1:{}/json/new?about:blank",
                self.port
            ))
            .send_empty()?
            .body_mut()
            .read_json()?;
        let ws_url = target["webSocketDebuggerUrl"]
            .as_str()
            .context("the new tab has no webSocketDebuggerUrl")?;
        let stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(COMMAND_TIMEOUT))?;
        let (socket, _) = tungstenite::client::client(ws_url, stream)
            .map_err(|error| anyhow::anyhow!("DevTools WebSocket handshake failed: {error}"))?;
        let mut tab = Tab { socket, next_id: 0 };
        let navigated = tab.call("Page.navigate", json!({ "url": url }))?;
        if let Some(error) = navigated.get("errorText") {
            bail!("Chromium cannot open {url}: {error}");
        }
        Ok(tab)
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One tab's DevTools session.
pub struct Tab {
    socket: WebSocket<TcpStream>,
    next_id: u64,
}

impl Tab {
    /// Sends one command and returns its `result`, skipping the events in between.
    fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({ "id": id, "method": method, "params": params });
        self.socket.send(Message::text(command.to_string()))?;
        loop {
            let Message::Text(text) = self
                .socket
                .read()
                .with_context(|| format!("no answer to {method}"))?
            else {
                continue;
            };
            let answer: Value = serde_json::from_str(text.as_str())?;
            if answer["id"] != id {
                continue;
            }
            if let Some(error) = answer.get("error") {
                bail!("{method} failed: {error}");
            }
            return Ok(answer["result"].clone());
        }
    }

    /// A PNG of the whole page, written to `path`.
    pub fn screenshot(&mut self, path: &Path) -> anyhow::Result<PathBuf> {
        let result = self.call(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true }),
        )?;
        let data = result["data"]
            .as_str()
            .context("Page.captureScreenshot returned no data")?;
        std::fs::write(path, B64.decode(data)?)?;
        Ok(path.to_owned())
    }
}
