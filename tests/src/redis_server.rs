//! [`RedisServer`]: a private `redis-server` on a free loopback port, with
//! no persistence, for one test; shut down on drop. Tests never use the
//! machine's shared Redis.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub struct RedisServer {
    child: Child,
    pub port: u16,
    tls: bool,
}

/// A TLS-only server's files (PEM): its certificate and key, and the CA
/// it checks client certificates against.
pub struct RedisTls<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    pub ca: &'a Path,
}

/// `redis-server` arguments that turn off the `default` user.
pub const NO_DEFAULT_USER: [&str; 3] = ["--user", "default", "off"];

/// `redis-server` arguments for an ACL user `name` with `password`, limited
/// to obr's keys and channels (prefix `obr:`).
pub fn acl_user<'a>(name: &'a str, password: &'a str) -> [&'a str; 7] {
    ["--user", name, "on", password, "~obr:*", "&obr:*", "+@all"]
}

impl RedisServer {
    /// `None` when `redis-server` is not installed (`scripts/test` installs it).
    pub fn start() -> anyhow::Result<Option<Self>> {
        Self::start_with(&[])
    }

    /// With more `redis-server` arguments (e.g. ACL users).
    pub fn start_with(extra: &[&str]) -> anyhow::Result<Option<Self>> {
        Self::spawn(None, extra)
    }

    /// TLS only (`rediss://`): the plain port is closed, and clients must
    /// present a certificate of `tls.ca` (`tls-auth-clients yes`).
    pub fn start_tls(tls: &RedisTls<'_>, extra: &[&str]) -> anyhow::Result<Option<Self>> {
        Self::spawn(Some(tls), extra)
    }

    fn spawn(tls: Option<&RedisTls<'_>>, extra: &[&str]) -> anyhow::Result<Option<Self>> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            return Ok(None);
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut command = Command::new("redis-server");
        command.args(["--bind", "127.0.0.1"]);
        match tls {
            None => command.args(["--port", &port.to_string()]),
            Some(tls) => command
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .arg("--tls-cert-file")
                .arg(tls.cert)
                .arg("--tls-key-file")
                .arg(tls.key)
                .arg("--tls-ca-cert-file")
                .arg(tls.ca)
                .args(["--tls-auth-clients", "yes"]),
        };
        let child = command
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
        let server = Self {
            child,
            port,
            tls: tls.is_some(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Some(server));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("redis-server did not start on port {port}")
    }

    /// `redis://…`, or `rediss://…` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
