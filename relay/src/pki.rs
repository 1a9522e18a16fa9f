//! [`LocalPki`]: a deployment CA for setups without a PKI of their own
//! (`deploy/local-cluster.sh`, a lab, a first try), made by `obr-relay pki
//! init`. A cluster with its own PKI (cert-manager, a corporate CA) gives
//! the relay and signers their files instead and never runs this.
//!
//! It writes, into one directory, each key 0600:
//! - `ca.pem`/`ca.key`: the CA (P-256, 10 years). Its key signs nothing
//!   else afterwards unless `init` runs again to add a missing file.
//! - `signer.pem`/`signer.key`: the signers' server certificate
//!   (`serverAuth` only, so a stolen signer key cannot pose as a relay).
//! - `relay.pem`/`relay.key`: the relays' client certificate
//!   (`clientAuth`): what signers accept as a relay.
//! - `redis.pem`/`redis.key`: a server certificate for `rediss://`.
//!
//! Leaves last [`LEAF_VALIDITY`] and name every `--host` (DNS name or IP
//! address) as a subject alternative name. `init` is idempotent: existing
//! files are kept, missing leaves are issued by the existing CA. This
//! module owns those files only; it never reads a database or Redis.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};

use crate::files;

/// How long the CA is valid.
pub const CA_VALIDITY: Duration = Duration::days(3650);
/// How long each leaf certificate is valid (the browsers' public-CA cap,
/// a fair bound for a private one too).
pub const LEAF_VALIDITY: Duration = Duration::days(398);
/// The CA's common name; a leaf is issued under it.
const CA_NAME: &str = "obr deployment CA";

/// What a certificate may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Server,
    Client,
}

/// The leaves `init` makes: file stem, common name, role.
const LEAVES: [(&str, &str, Role); 3] = [
    ("signer", "obr signer", Role::Server),
    ("relay", "obr relay", Role::Client),
    ("redis", "obr redis", Role::Server),
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
}

/// The files of a local deployment CA in one directory.
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

    /// Make the CA if missing, then every missing leaf for `hosts`.
    pub fn init(&self, hosts: &[String]) -> Result<InitReport, PkiError> {
        if hosts.is_empty() {
            return Err(PkiError::NoHost);
        }
        for host in hosts {
            if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
                return Err(PkiError::Host(host.clone()));
            }
        }
        files::private_dir(&self.dir).map_err(|source| self.io(&self.dir, source))?;
        let mut report = InitReport::default();
        let ca_params = ca_params();
        let (ca_cert, ca_key) = (self.cert("ca"), self.key("ca"));
        let ca_key_pair = if ca_key.exists() {
            report.kept.extend([ca_cert.clone(), ca_key.clone()]);
            let pem = std::fs::read_to_string(&ca_key).map_err(|s| self.io(&ca_key, s))?;
            KeyPair::from_pem(&pem)?
        } else {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
            let cert = ca_params.self_signed(&key)?;
            self.write(&ca_key, key.serialize_pem().as_bytes(), true)?;
            self.write(&ca_cert, cert.pem().as_bytes(), false)?;
            report.created.extend([ca_cert.clone(), ca_key.clone()]);
            key
        };
        let issuer = Issuer::new(ca_params, ca_key_pair);
        for (stem, name, role) in LEAVES {
            let (cert_path, key_path) = (self.cert(stem), self.key(stem));
            if cert_path.exists() && key_path.exists() {
                report.kept.extend([cert_path, key_path]);
                continue;
            }
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
            let cert = leaf_params(name, role, hosts)?.signed_by(&key, &issuer)?;
            self.write(&key_path, key.serialize_pem().as_bytes(), true)?;
            self.write(&cert_path, cert.pem().as_bytes(), false)?;
            report.created.extend([cert_path, key_path]);
        }
        Ok(report)
    }

    fn write(&self, path: &Path, contents: &[u8], secret: bool) -> Result<(), PkiError> {
        let mode = if secret { 0o600 } else { 0o644 };
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
            .and_then(|mut f| f.write_all(contents))
            .map_err(|source| self.io(path, source))
    }

    fn io(&self, path: &Path, source: std::io::Error) -> PkiError {
        PkiError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// The CA's parameters, the same at every run so that a CA key read back
/// from disk issues leaves that chain to the `ca.pem` written earlier (the
/// issuer name and key identifier are all a leaf takes from it).
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(CA_NAME);
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
    use std::os::unix::fs::PermissionsExt as _;

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
        assert_eq!(report.created.len(), 8, "{report:?}");
        assert!(report.kept.is_empty());
        for stem in ["ca", "signer", "relay", "redis"] {
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
