//! [`LocalPki`]: a deployment's certificates for setups without a PKI of
//! their own (`deploy/local-cluster.sh`, a lab, a first try), made by
//! `obr-relay pki init`. A cluster with its own PKI (cert-manager, a
//! corporate CA) gives the relay and signers their files instead and never
//! runs this.
//!
//! Two CAs, so that no certificate of one trust domain is accepted in the
//! other (a Redis server's key must not serve as a signer, nor a signer's
//! as Redis):
//! - `ca.pem`/`ca.key`, relay⇄signer: `signer.pem` (`serverAuth` only, so
//!   a stolen signer key does not make a relay) and `relay.pem`
//!   (`clientAuth`: what signers accept as a relay).
//! - `redis-ca.pem`/`redis-ca.key`, Redis: `redis.pem` (`serverAuth`) and
//!   `redis-client.pem` (`clientAuth`, for relays and signers when Redis
//!   checks its clients, `tls-auth-clients yes`).
//!
//! Each CA lasts [`CA_VALIDITY`] and signs nothing after `init` but a
//! missing leaf; leaves last [`LEAF_VALIDITY`] and name every `--host` (DNS
//! name or IP address). Keys are P-256, written 0600 to a new file and
//! renamed into place, so a crash or a second `init` never leaves half a
//! key. `init` is idempotent: existing files are kept (keys tightened to
//! 0600), missing leaves are issued by the existing CA; a CA with only one
//! of its two files is an error (restore the other or remove both). To
//! renew a leaf, or change its hosts, delete it and run `init` again. This
//! module owns those files only; it never reads a database or Redis.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};

use crate::files;

/// How long a CA is valid.
pub const CA_VALIDITY: Duration = Duration::days(3650);
/// How long each leaf certificate is valid (the browsers' public-CA cap,
/// a fair bound for a private one too).
pub const LEAF_VALIDITY: Duration = Duration::days(398);

/// What a certificate may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Server,
    Client,
}

/// One trust domain: a CA (file stem, common name) and its leaves (file
/// stem, common name, role).
struct Domain {
    ca: (&'static str, &'static str),
    leaves: &'static [(&'static str, &'static str, Role)],
}

const DOMAINS: [Domain; 2] = [
    Domain {
        ca: ("ca", "obr relay-signer CA"),
        leaves: &[
            ("signer", "obr signer", Role::Server),
            ("relay", "obr relay", Role::Client),
        ],
    },
    Domain {
        ca: ("redis-ca", "obr Redis CA"),
        leaves: &[
            ("redis", "obr redis", Role::Server),
            ("redis-client", "obr redis client", Role::Client),
        ],
    },
];

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0} is not a valid host name or address for a certificate")]
    Host(String),
    #[error("at least one --host is needed")]
    NoHost,
    #[error(
        "{present} exists but {missing} does not: restore it, or remove both to make a new CA \
         (every certificate it issued must then be made again)"
    )]
    HalfACa { present: PathBuf, missing: PathBuf },
}

/// The files of a local deployment's CAs in one directory.
#[derive(Clone, Debug)]
pub struct LocalPki {
    dir: PathBuf,
}

/// What [`LocalPki::init`] did, file by file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct InitReport {
    pub created: Vec<PathBuf>,
    pub kept: Vec<PathBuf>,
}

impl LocalPki {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `<dir>/<stem>.pem`.
    pub fn cert(&self, stem: &str) -> PathBuf {
        self.dir.join(format!("{stem}.pem"))
    }

    /// `<dir>/<stem>.key`.
    pub fn key(&self, stem: &str) -> PathBuf {
        self.dir.join(format!("{stem}.key"))
    }

    /// Make each CA if missing, then every missing leaf for `hosts`.
    pub fn init(&self, hosts: &[String]) -> Result<InitReport, PkiError> {
        if hosts.is_empty() {
            return Err(PkiError::NoHost);
        }
        for host in hosts {
            if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
                return Err(PkiError::Host(host.clone()));
            }
        }
        files::private_dir(&self.dir).map_err(|source| io(&self.dir, source))?;
        let mut report = InitReport::default();
        for domain in &DOMAINS {
            self.init_domain(domain, hosts, &mut report)?;
        }
        Ok(report)
    }

    fn init_domain(
        &self,
        domain: &Domain,
        hosts: &[String],
        report: &mut InitReport,
    ) -> Result<(), PkiError> {
        let (stem, name) = domain.ca;
        let ca_params = ca_params(name);
        let (ca_cert, ca_key) = (self.cert(stem), self.key(stem));
        let ca_key_pair = match (ca_cert.exists(), ca_key.exists()) {
            (true, true) => {
                keep_private(&ca_key)?;
                report.kept.extend([ca_cert, ca_key.clone()]);
                let pem = std::fs::read_to_string(&ca_key).map_err(|s| io(&ca_key, s))?;
                KeyPair::from_pem(&pem)?
            }
            (false, false) => {
                let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
                let cert = ca_params.self_signed(&key)?;
                write_new(&ca_key, key.serialize_pem().as_bytes(), true)?;
                write_new(&ca_cert, cert.pem().as_bytes(), false)?;
                report.created.extend([ca_cert, ca_key]);
                key
            }
            (true, false) => {
                return Err(PkiError::HalfACa {
                    present: ca_cert,
                    missing: ca_key,
                });
            }
            (false, true) => {
                return Err(PkiError::HalfACa {
                    present: ca_key,
                    missing: ca_cert,
                });
            }
        };
        let issuer = Issuer::new(ca_params, ca_key_pair);
        for &(stem, name, role) in domain.leaves {
            let (cert_path, key_path) = (self.cert(stem), self.key(stem));
            if cert_path.exists() && key_path.exists() {
                keep_private(&key_path)?;
                report.kept.extend([cert_path, key_path]);
                continue;
            }
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
            let cert = leaf_params(name, role, hosts)?.signed_by(&key, &issuer)?;
            write_new(&key_path, key.serialize_pem().as_bytes(), true)?;
            write_new(&cert_path, cert.pem().as_bytes(), false)?;
            report.created.extend([cert_path, key_path]);
        }
        Ok(())
    }
}

fn io(path: &Path, source: std::io::Error) -> PkiError {
    PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Write `contents` to a new file beside `path` (0600 for a secret, else
/// 0644), then rename it into place: a reader never sees half a file.
fn write_new(path: &Path, contents: &[u8], secret: bool) -> Result<(), PkiError> {
    let mode = if secret { 0o600 } else { 0o644 };
    let mut partial = path.as_os_str().to_owned();
    partial.push(format!(".{}.partial", std::process::id()));
    let partial = PathBuf::from(partial);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&partial)
        .and_then(|mut f| f.write_all(contents).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&partial, path))
        .map_err(|source| {
            let _ = std::fs::remove_file(&partial);
            io(path, source)
        })
}

/// An existing key file stays readable by its owner only.
fn keep_private(key: &Path) -> Result<(), PkiError> {
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600))
        .map_err(|source| io(key, source))
}

/// A CA's parameters, the same at every run so that a CA key read back
/// from disk issues leaves that chain to the certificate written earlier
/// (the issuer name and key identifier are all a leaf takes from it).
fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + CA_VALIDITY;
    params
}

fn leaf_params(cn: &str, role: Role, hosts: &[String]) -> Result<CertificateParams, PkiError> {
    let mut params =
        CertificateParams::new(hosts.to_vec()).map_err(|_| PkiError::Host(hosts.join(",")))?;
    params.distinguished_name = name(cn);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![match role {
        Role::Server => ExtendedKeyUsagePurpose::ServerAuth,
        Role::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + LEAF_VALIDITY;
    Ok(params)
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("obr-pki-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).map_or(0, |m| m.permissions().mode() & 0o777)
    }

    #[test]
    fn init_makes_every_file_with_private_keys() {
        let dir = temp_dir("all");
        let pki = LocalPki::new(&dir);
        let report = pki.init(&["127.0.0.1".to_owned()]).unwrap();
        assert_eq!(report.created.len(), 12, "{report:?}");
        assert!(report.kept.is_empty());
        for stem in ["ca", "signer", "relay", "redis-ca", "redis", "redis-client"] {
            assert_eq!(mode(&pki.key(stem)), 0o600, "{stem}.key");
            assert!(
                std::fs::read_to_string(pki.cert(stem))
                    .unwrap()
                    .starts_with("-----BEGIN CERTIFICATE-----")
            );
        }
        assert_eq!(mode(&dir), 0o700);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn init_keeps_what_exists_and_reissues_a_missing_leaf() {
        let dir = temp_dir("again");
        let pki = LocalPki::new(&dir);
        pki.init(&["localhost".to_owned()]).unwrap();
        let ca_before = std::fs::read(pki.cert("ca")).unwrap();
        std::fs::remove_file(pki.cert("relay")).unwrap();
        let report = pki.init(&["localhost".to_owned()]).unwrap();
        assert_eq!(report.created, vec![pki.cert("relay"), pki.key("relay")]);
        assert_eq!(std::fs::read(pki.cert("ca")).unwrap(), ca_before);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn half_a_ca_is_an_error_not_a_new_ca() {
        let dir = temp_dir("half");
        let pki = LocalPki::new(&dir);
        pki.init(&["localhost".to_owned()]).unwrap();
        let ca_before = std::fs::read(pki.cert("ca")).unwrap();
        std::fs::remove_file(pki.key("ca")).unwrap();
        assert!(matches!(
            pki.init(&["localhost".to_owned()]),
            Err(PkiError::HalfACa { .. })
        ));
        assert_eq!(std::fs::read(pki.cert("ca")).unwrap(), ca_before);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_kept_key_is_made_private_again() {
        let dir = temp_dir("loose");
        let pki = LocalPki::new(&dir);
        pki.init(&["localhost".to_owned()]).unwrap();
        std::fs::set_permissions(pki.key("relay"), std::fs::Permissions::from_mode(0o644)).unwrap();
        pki.init(&["localhost".to_owned()]).unwrap();
        assert_eq!(mode(&pki.key("relay")), 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_hosts_are_refused() {
        let pki = LocalPki::new(temp_dir("bad"));
        assert!(matches!(pki.init(&[]), Err(PkiError::NoHost)));
        for host in ["", "a b", "a/b"] {
            assert!(
                matches!(pki.init(&[host.to_owned()]), Err(PkiError::Host(_))),
                "{host:?}"
            );
        }
    }
}
