//! A real browser for the page tests: Debian's `chromium`, headless,
//! driven through `chromedriver` over WebDriver (W3C) with fantoccini.
//! `scripts/test` installs both when missing; without them the test fails
//! with a message saying so.
//!
//! Each [`Browser`] is one chromedriver process and one browser session
//! with a profile of its own in the test's scratch directory, sized like
//! the screen it stands for (a desktop for the panel, a phone for the user
//! app).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

/// How long a page may take to show what a step waits for.
pub const PAGE_WAIT: Duration = Duration::from_secs(15);

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A screen size: width and height in CSS pixels.
#[derive(Clone, Copy, Debug)]
pub struct Screen(pub u32, pub u32);

pub const DESKTOP: Screen = Screen(1280, 900);
/// A phone (the size of a common 6.1-inch one).
pub const PHONE: Screen = Screen(390, 844);

pub struct Browser {
    client: Client,
    driver: Child,
    /// Where screenshots go.
    shots: PathBuf,
}

impl Browser {
    /// Chromium on `screen`, with its profile under `dir`; screenshots are
    /// written to `shots`.
    pub async fn start(dir: &Path, screen: Screen, shots: &Path) -> anyhow::Result<Self> {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            if !Path::new(tool).exists() {
                bail!(
                    "{tool} is missing: apt-get install chromium chromium-driver (scripts/test does)"
                );
            }
        }
        std::fs::create_dir_all(dir)?;
        std::fs::create_dir_all(shots)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start chromedriver")?;
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut options = serde_json::json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--password-store=basic",
                format!("--window-size={},{}", screen.0, screen.1),
                format!("--user-data-dir={}", dir.join("profile").display()),
            ],
        });
        if screen.0 < 600 {
            // A phone: its viewport, touch and user agent, not a small window.
            options["mobileEmulation"] = serde_json::json!({
                "deviceMetrics": { "width": screen.0, "height": screen.1, "pixelRatio": 1.0,
                                   "touch": true, "mobile": true },
            });
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), options);
        let client = loop {
            let connected = ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&url)
                .await;
            match connected {
                Ok(client) => break client,
                Err(e) if Instant::now() > deadline => {
                    let _ = driver.kill();
                    bail!("cannot start a chromium session through chromedriver: {e}");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        Ok(Self {
            client,
            driver,
            shots: shots.to_owned(),
        })
    }

    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.client
            .goto(url)
            .await
            .with_context(|| format!("open {url}"))
    }

    /// Type `text` into the field `css` (cleared first).
    pub async fn fill(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let field = self.element(css).await?;
        field.clear().await?;
        field
            .send_keys(text)
            .await
            .with_context(|| format!("type into {css}"))
    }

    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        self.element(css)
            .await?
            .click()
            .await
            .with_context(|| format!("click {css}"))
    }

    /// Click the link or button whose text is `text`.
    pub async fn click_text(&self, text: &str) -> anyhow::Result<()> {
        let xpath = format!(
            "//*[(self::a or self::button or self::summary) and normalize-space(.)='{text}']"
        );
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            match self.client.find(Locator::XPath(&xpath)).await {
                Ok(element) => return Ok(element.click().await?),
                Err(e) if Instant::now() > deadline => bail!("no {text:?} to click: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The text of `css` once it contains `needle` (waiting up to
    /// [`PAGE_WAIT`]).
    pub async fn wait_text(&self, css: &str, needle: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + PAGE_WAIT;
        let mut last = String::new();
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await
                && let Ok(text) = element.text().await
            {
                if text.contains(needle) {
                    return Ok(text);
                }
                last = text;
            }
            if Instant::now() > deadline {
                bail!("{css} never said {needle:?}; it says {last:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The attribute `name` of `css`.
    pub async fn attribute(&self, css: &str, name: &str) -> anyhow::Result<String> {
        self.element(css)
            .await?
            .attr(name)
            .await?
            .with_context(|| format!("{css} has no {name}"))
    }

    /// Save what the browser shows as `<shots>/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> anyhow::Result<PathBuf> {
        let png = self.client.screenshot().await?;
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png)?;
        Ok(path)
    }

    async fn element(&self, css: &str) -> anyhow::Result<fantoccini::elements::Element> {
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            match self.client.find(Locator::Css(css)).await {
                Ok(element) => return Ok(element),
                Err(e) if Instant::now() > deadline => bail!("no {css} on the page: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    pub async fn close(mut self) -> anyhow::Result<()> {
        let closed = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        Ok(closed?)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
