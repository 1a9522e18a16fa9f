//! [`RedisServer`]: a private `redis-server` on a free loopback port, with
//! no persistence, for one test; shut down on drop. Tests never use the
//! machine's shared Redis.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    /// `None` when `redis-server` is not installed (`scripts/test` installs it).
    pub fn start() -> anyhow::Result<Option<Self>> {
        Self::start_with(&[])
    }

    /// With more `redis-server` arguments (e.g. ACL users).
    pub fn start_with(extra: &[&str]) -> anyhow::Result<Option<Self>> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            return Ok(None);
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start redis-server")?;
        let server = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Some(server));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("redis-server did not start on port {port}")
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
