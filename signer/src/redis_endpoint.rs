//! [`RedisEndpoint`]: where a component's Redis is and what it trusts on
//! the way there. Relays (sessions, signer discovery) and signers
//! (placement) all reach Redis through it, so the rules are in one place:
//!
//! - `redis://` is plain TCP, for loopback or a network the deployment
//!   already protects; reaching another host that way is logged as a
//!   warning, and refused when the URL carries a password (it would cross
//!   the network in clear). What relays keep in Redis is sealed and holds
//!   no secret (`obr_relay::sessions::seal`), so plain Redis leaks
//!   metadata, not power.
//! - `rediss://` is TLS. The server is verified against `ca_file` (the
//!   deployment's CA) when given, else the system's roots; when the server
//!   asks for client certificates (`tls-auth-clients yes`), `client_cert_file`
//!   and `client_key_file` are presented. The redis crate's `#insecure`
//!   URL fragment (no certificate or hostname check) is refused.
//! - A Redis ACL user and password go in the URL
//!   (`rediss://relay:secret@host:6380/0`; give it through the environment,
//!   not argv, which every local user can read); this type's `Debug` hides
//!   the password, and nothing logs the URL.
//!
//! This module only builds clients: it owns no key names and no scripts.

use std::path::{Path, PathBuf};

use redis::{ClientTlsConfig, ConnectionAddr, IntoConnectionInfo, TlsCertificates};

/// A Redis server and how to reach it safely.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RedisEndpoint {
    /// `redis://[user:password@]host:port/db` or `rediss://…`.
    pub url: String,
    /// PEM CA that signed the server's certificate (`rediss://` only).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for servers that authenticate clients.
    pub client_cert_file: Option<PathBuf>,
    /// Its PEM private key.
    pub client_key_file: Option<PathBuf>,
}

/// Why a [`RedisEndpoint`] cannot be turned into a client.
#[derive(Debug, thiserror::Error)]
pub enum RedisEndpointError {
    #[error("invalid Redis URL: {0}")]
    Url(String),
    #[error(
        "Redis TLS files (CA, client certificate) were given but the URL is not rediss://; \
         use rediss:// or drop the files"
    )]
    TlsFilesWithoutTls,
    #[error("a Redis client certificate needs its key, and a key its certificate")]
    HalfAClientIdentity,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Redis TLS setup: {0}")]
    Tls(String),
    #[error("rediss:// with #insecure (no certificate check) is refused: give --redis-ca instead")]
    Insecure,
    #[error(
        "a Redis password over plain redis:// to {0} would cross the network in clear: use rediss://"
    )]
    PasswordInClear(String),
}

impl std::fmt::Debug for RedisEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEndpoint")
            .field("url", &redacted(&self.url))
            .field("ca_file", &self.ca_file)
            .field("client_cert_file", &self.client_cert_file)
            .field("client_key_file", &self.client_key_file)
            .finish()
    }
}

/// `url` with the password of its userinfo, if any, replaced by `***`.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<not a URL>".to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_owned(),
    }
}

impl RedisEndpoint {
    /// An endpoint with no TLS files (the URL alone).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// The client for this endpoint. Checks the combination of settings
    /// before anything is dialled: TLS files with a `redis://` URL, or half
    /// a client identity, are errors rather than silently ignored.
    pub fn client(&self) -> Result<redis::Client, RedisEndpointError> {
        let info = self
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| RedisEndpointError::Url(e.to_string()))?;
        let tls = match info.addr() {
            ConnectionAddr::TcpTls { insecure: true, .. } => {
                return Err(RedisEndpointError::Insecure);
            }
            addr => matches!(addr, ConnectionAddr::TcpTls { .. }),
        };
        let any_file = self.ca_file.is_some()
            || self.client_cert_file.is_some()
            || self.client_key_file.is_some();
        if !tls {
            if any_file {
                return Err(RedisEndpointError::TlsFilesWithoutTls);
            }
            if let ConnectionAddr::Tcp(host, _) = info.addr()
                && !is_loopback(host)
            {
                if info.redis_settings().password().is_some() {
                    return Err(RedisEndpointError::PasswordInClear(host.clone()));
                }
                tracing::warn!(
                    %host,
                    "Redis is reached without TLS; use rediss:// unless the network is protected"
                );
            }
            return redis::Client::open(info).map_err(|e| RedisEndpointError::Url(e.to_string()));
        }
        let client_tls = match (&self.client_cert_file, &self.client_key_file) {
            (Some(cert), Some(key)) => Some(ClientTlsConfig {
                client_cert: read(cert)?,
                client_key: read(key)?,
            }),
            (None, None) => None,
            _ => return Err(RedisEndpointError::HalfAClientIdentity),
        };
        let root_cert = self.ca_file.as_deref().map(read).transpose()?;
        redis::Client::build_with_tls(
            info,
            TlsCertificates {
                client_tls,
                root_cert,
            },
        )
        .map_err(|e| RedisEndpointError::Tls(e.to_string()))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, RedisEndpointError> {
    std::fs::read(path).map_err(|source| RedisEndpointError::Read {
        path: path.to_owned(),
        source,
    })
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_need_a_rediss_url() {
        let endpoint = RedisEndpoint {
            ca_file: Some("ca.pem".into()),
            ..RedisEndpoint::new("redis://127.0.0.1:6379/")
        };
        assert!(matches!(
            endpoint.client(),
            Err(RedisEndpointError::TlsFilesWithoutTls)
        ));
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let endpoint = RedisEndpoint {
            client_cert_file: Some("client.pem".into()),
            ..RedisEndpoint::new("rediss://127.0.0.1:6380/")
        };
        assert!(matches!(
            endpoint.client(),
            Err(RedisEndpointError::HalfAClientIdentity)
        ));
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let endpoint = RedisEndpoint {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..RedisEndpoint::new("rediss://127.0.0.1:6380/")
        };
        let err = endpoint.client().err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("/nonexistent/ca.pem")),
            "{err:?}"
        );
    }

    #[test]
    fn a_malformed_url_is_an_error_not_a_panic() {
        for url in ["", "http://x", "redis://", "rediss://[::1"] {
            assert!(RedisEndpoint::new(url).client().is_err(), "{url}");
        }
    }

    #[test]
    fn certificate_checks_cannot_be_turned_off_in_the_url() {
        let endpoint = RedisEndpoint::new("rediss://127.0.0.1:6380/#insecure");
        assert!(matches!(
            endpoint.client(),
            Err(RedisEndpointError::Insecure)
        ));
    }

    #[test]
    fn a_password_never_crosses_the_network_in_clear() {
        let remote = RedisEndpoint::new("redis://relay:secret@10.0.0.7:6379/");
        assert!(matches!(
            remote.client(),
            Err(RedisEndpointError::PasswordInClear(_))
        ));
        assert!(
            RedisEndpoint::new("redis://relay:secret@127.0.0.1:6379/")
                .client()
                .is_ok()
        );
        assert!(
            RedisEndpoint::new("rediss://relay:secret@10.0.0.7:6380/")
                .client()
                .is_ok()
        );
    }

    #[test]
    fn debug_hides_the_password() {
        let endpoint = RedisEndpoint::new("rediss://relay:s3cret@redis:6380/0");
        let shown = format!("{endpoint:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("rediss://relay:***@redis:6380/0"), "{shown}");
        assert!(format!("{:?}", RedisEndpoint::new("redis://h:1/")).contains("redis://h:1/"));
    }

    #[test]
    fn loopback_hosts() {
        for host in ["127.0.0.1", "::1", "[::1]", "localhost", "127.9.9.9"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["10.0.0.1", "redis", "redis.example"] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
