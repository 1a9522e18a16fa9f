//! Attestation of new credentials (CTAP 2.1 §6.1.2 step 19): `packed` with
//! an x5c chain to the deployment's attestation CA (WebAuthn L3 §8.2), or
//! `none` (§8.7), as configured ([`AttestationConfig`]).
//!
//! Owns the attestation CA ([`AttestationCa`]: loaded from PEM files, or
//! generated into them on first start, like the KEK) and, per process, an
//! attestation certificate issued by it at start-up whose key lives only in
//! memory. The certificates follow WebAuthn L3 §8.2.1: version 3, subject
//! OU "Authenticator Attestation", basic constraints CA=false, and the
//! AAGUID in extension id-fido-gen-ce-aaguid (1.3.6.1.4.1.45724.1.1.4).
//! They are DER-encoded with `der`/`x509-cert` types and signed with ring
//! (ECDSA P-256 SHA-256). Never logs or prints a private key; `Debug`
//! shows only the CA's subject.

use std::fmt;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ciborium::value::Value;
use der::asn1::{BitString, ObjectIdentifier, OctetString};
use der::{Decode as _, Encode as _, Sequence};
use ring::rand::SecureRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::certificate::Version;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::BasicConstraints;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};
use zeroize::Zeroizing;

use super::CommandError;
use passkey_types::ctap2::Ctap2Error;

/// How new credentials are attested.
#[derive(Clone, Debug, Default)]
pub enum AttestationConfig {
    /// `none`: no statement; RPs learn only the AAGUID.
    #[default]
    None,
    /// `packed` with an x5c chain to this CA.
    Packed(AttestationCa),
}

/// Why the attestation CA could not be loaded, created or used.
#[derive(Debug, thiserror::Error)]
pub enum AttestationError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("creating {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("{what} is not {expected}")]
    Format {
        what: String,
        expected: &'static str,
    },
    #[error("the attestation CA key does not match its certificate")]
    KeyMismatch,
    #[error("only one of the CA certificate and key exists ({present}); give both or neither")]
    HalfPresent { present: PathBuf },
    #[error("building a certificate: {0}")]
    Certificate(String),
    #[error("generating a key failed")]
    Generate,
}

/// The deployment's attestation CA: its certificate and P-256 signing key.
/// Cheap to clone. `Debug` shows only the certificate's subject.
#[derive(Clone)]
pub struct AttestationCa {
    certificate_der: Arc<Vec<u8>>,
    subject: Name,
    not_after: SystemTime,
    key: Arc<EcdsaKeyPair>,
}

/// PEM labels (RFC 7468).
const PEM_CERTIFICATE: &str = "CERTIFICATE";
const PEM_PRIVATE_KEY: &str = "PRIVATE KEY";
/// A CA key file is readable and writable by its owner only.
#[cfg(unix)]
const KEY_FILE_MODE: u32 = 0o600;
/// How long a generated CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// How long an attestation certificate is valid (at most its CA's life).
const ATTESTATION_CERT_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// Certificates start an hour early, for verifiers whose clocks lag.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);
/// Random serial numbers (RFC 5280 §4.1.2.2: at most 20 octets, positive).
const SERIAL_LEN: usize = 16;
/// Names (RFC 4514 strings).
const CA_SUBJECT: &str = "CN=obr attestation CA,O=obr,C=US";
const ATTESTATION_SUBJECT: &str =
    "CN=obr cloud security key,OU=Authenticator Attestation,O=obr,C=US";
/// OIDs: ecdsa-with-SHA256 (RFC 5758), id-ecPublicKey and prime256v1 (RFC
/// 5480), basicConstraints and keyUsage (RFC 5280), id-fido-gen-ce-aaguid
/// (WebAuthn L3 §8.2.1).
// invariant: `new_unwrap` is evaluated at compile time (const items), so a
// malformed OID fails the build, never a running signer.
const OID_ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_PRIME256V1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const OID_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
const OID_FIDO_AAGUID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.45724.1.1.4");
/// keyUsage keyCertSign (bit 5) and cRLSign (bit 6): one octet, one unused
/// bit.
const KEY_USAGE_CA_BITS: u8 = 0b0000_0110;
const KEY_USAGE_UNUSED_BITS: u8 = 1;
/// WebAuthn L3 §8.2: the statement's `alg`, ES256.
const COSE_ES256: i64 = -7;
/// Attestation statement formats.
const FMT_NONE: &str = "none";
const FMT_PACKED: &str = "packed";

impl AttestationCa {
    /// A fresh self-signed CA (P-256).
    pub fn generate() -> Result<Self, AttestationError> {
        let rng = ring::rand::SystemRandom::new();
        let (key, _pkcs8) = generate_key(&rng)?;
        Self::self_signed(key, &rng)
    }

    /// The CA in `cert_path` (PEM certificate) and `key_path` (PEM PKCS#8
    /// P-256 key), which must match.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, AttestationError> {
        let cert_pem = read(cert_path)?;
        let key_pem = Zeroizing::new(read(key_path)?);
        Self::from_pem(&cert_pem, &key_pem)
    }

    /// [`AttestationCa::load`], or, when neither file exists, a new CA
    /// written to both (the key mode 0600; never overwriting a file).
    pub fn load_or_create(cert_path: &Path, key_path: &Path) -> Result<Self, AttestationError> {
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Self::load(cert_path, key_path),
            (false, false) => {
                let rng = ring::rand::SystemRandom::new();
                let (key, pkcs8) = generate_key(&rng)?;
                let ca = Self::self_signed(key, &rng)?;
                let key_pem = Zeroizing::new(pem(PEM_PRIVATE_KEY, &pkcs8)?);
                write_new(key_path, key_pem.as_bytes(), true)?;
                write_new(cert_path, ca.certificate_pem()?.as_bytes(), false)?;
                tracing::info!(
                    certificate = %cert_path.display(),
                    key = %key_path.display(),
                    "created a new attestation CA"
                );
                Ok(ca)
            }
            (true, false) => Err(AttestationError::HalfPresent {
                present: cert_path.to_owned(),
            }),
            (false, true) => Err(AttestationError::HalfPresent {
                present: key_path.to_owned(),
            }),
        }
    }

    /// The CA from PEM text.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, AttestationError> {
        let certificate_der = pem_decode(cert_pem, PEM_CERTIFICATE, "the CA certificate")?;
        let pkcs8 = Zeroizing::new(pem_decode(key_pem, PEM_PRIVATE_KEY, "the CA key")?);
        let rng = ring::rand::SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8, &rng).map_err(
            |_| AttestationError::Format {
                what: "the CA key".to_owned(),
                expected: "a PKCS#8 P-256 key",
            },
        )?;
        Self::from_parts(certificate_der, key)
    }

    /// The CA certificate, DER (what RPs put in their trust list).
    pub fn certificate_der(&self) -> &[u8] {
        &self.certificate_der
    }

    /// The CA certificate, PEM.
    pub fn certificate_pem(&self) -> Result<String, AttestationError> {
        pem(PEM_CERTIFICATE, &self.certificate_der)
    }

    fn self_signed(key: EcdsaKeyPair, rng: &dyn SecureRandom) -> Result<Self, AttestationError> {
        let subject = name(CA_SUBJECT)?;
        let now = SystemTime::now();
        let extensions = vec![
            extension(
                OID_BASIC_CONSTRAINTS,
                true,
                &BasicConstraints {
                    ca: true,
                    path_len_constraint: Some(0),
                },
            )?,
            extension(
                OID_KEY_USAGE,
                true,
                &bit_string(KEY_USAGE_UNUSED_BITS, &[KEY_USAGE_CA_BITS])?,
            )?,
        ];
        let certificate_der = issue(
            &key,
            subject.clone(),
            &key,
            subject,
            validity(now, now + CA_VALIDITY)?,
            extensions,
            rng,
        )?;
        Self::from_parts(certificate_der, key)
    }

    fn from_parts(certificate_der: Vec<u8>, key: EcdsaKeyPair) -> Result<Self, AttestationError> {
        let certificate = x509_cert::Certificate::from_der(&certificate_der).map_err(|_| {
            AttestationError::Format {
                what: "the CA certificate".to_owned(),
                expected: "an X.509 certificate",
            }
        })?;
        let tbs = certificate.tbs_certificate();
        if tbs.subject_public_key_info().subject_public_key.raw_bytes() != key.public_key().as_ref()
        {
            return Err(AttestationError::KeyMismatch);
        }
        Ok(Self {
            subject: tbs.subject().clone(),
            not_after: tbs.validity().not_after.to_system_time(),
            certificate_der: Arc::new(certificate_der),
            key: Arc::new(key),
        })
    }
}

impl fmt::Debug for AttestationCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttestationCa")
            .field("subject", &self.subject.to_string())
            .finish_non_exhaustive()
    }
}

/// This process's attestation: what makeCredential signs with.
pub(crate) enum Attestation {
    None,
    Packed {
        /// The attestation certificate's key (memory only; boxed, it is
        /// large beside `None`).
        key: Box<EcdsaKeyPair>,
        /// The attestation certificate, DER (x5c's only entry: verifiers
        /// hold the CA).
        certificate_der: Vec<u8>,
    },
}

impl fmt::Debug for Attestation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "Attestation::None",
            Self::Packed { .. } => "Attestation::Packed(..)",
        })
    }
}

/// An attestation statement: its format and `attStmt`.
#[derive(Debug)]
pub(crate) struct Statement {
    pub fmt: &'static str,
    pub att_stmt: Value,
}

impl Attestation {
    /// The attestation `config` asks for; for `packed`, a fresh key and a
    /// certificate for it, issued by the CA, carrying `aaguid`.
    pub(crate) fn new(
        config: &AttestationConfig,
        aaguid: [u8; 16],
    ) -> Result<Self, AttestationError> {
        let AttestationConfig::Packed(ca) = config else {
            return Ok(Self::None);
        };
        let rng = ring::rand::SystemRandom::new();
        let (key, _pkcs8) = generate_key(&rng)?;
        let now = SystemTime::now();
        let not_after = (now + ATTESTATION_CERT_VALIDITY).min(ca.not_after);
        let extensions = vec![
            extension(
                OID_BASIC_CONSTRAINTS,
                true,
                &BasicConstraints {
                    ca: false,
                    path_len_constraint: None,
                },
            )?,
            // WebAuthn L3 §8.2.1: "MUST NOT be marked as critical".
            extension(OID_FIDO_AAGUID, false, &octet_string(&aaguid)?)?,
        ];
        let certificate_der = issue(
            &ca.key,
            ca.subject.clone(),
            &key,
            name(ATTESTATION_SUBJECT)?,
            validity(now, not_after)?,
            extensions,
            &rng,
        )?;
        Ok(Self::Packed {
            key: Box::new(key),
            certificate_der,
        })
    }

    /// The statement over `auth_data || client_data_hash` (WebAuthn L3
    /// §8.2 "packed", full attestation: `alg`, `sig`, `x5c`).
    pub(crate) fn statement(
        &self,
        auth_data: &[u8],
        client_data_hash: &[u8],
        rng: &dyn SecureRandom,
    ) -> Result<Statement, CommandError> {
        match self {
            Self::None => Ok(Statement {
                fmt: FMT_NONE,
                att_stmt: Value::Map(Vec::new()),
            }),
            Self::Packed {
                key,
                certificate_der,
            } => {
                let mut signed = auth_data.to_vec();
                signed.extend_from_slice(client_data_hash);
                let sig = key.sign(rng, &signed).map_err(|_| Ctap2Error::Other)?;
                Ok(Statement {
                    fmt: FMT_PACKED,
                    att_stmt: Value::Map(vec![
                        (
                            Value::Text("alg".to_owned()),
                            Value::Integer(COSE_ES256.into()),
                        ),
                        (
                            Value::Text("sig".to_owned()),
                            Value::Bytes(sig.as_ref().to_vec()),
                        ),
                        (
                            Value::Text("x5c".to_owned()),
                            Value::Array(vec![Value::Bytes(certificate_der.clone())]),
                        ),
                    ]),
                })
            }
        }
    }
}

/// RFC 5280 §4.1 TBSCertificate, as this module issues them (always v3,
/// always with extensions).
#[derive(Sequence)]
struct TbsCertificate {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT")]
    version: Version,
    serial_number: SerialNumber,
    signature: AlgorithmIdentifierOwned,
    issuer: Name,
    validity: Validity,
    subject: Name,
    subject_public_key_info: SubjectPublicKeyInfoOwned,
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT")]
    extensions: Vec<Extension>,
}

/// RFC 5280 §4.1 Certificate.
#[derive(Sequence)]
struct Certificate {
    tbs_certificate: TbsCertificate,
    signature_algorithm: AlgorithmIdentifierOwned,
    signature: BitString,
}

/// A certificate for `subject_key` named `subject`, signed by
/// `issuer_key` as `issuer`.
fn issue(
    issuer_key: &EcdsaKeyPair,
    issuer: Name,
    subject_key: &EcdsaKeyPair,
    subject: Name,
    validity: Validity,
    extensions: Vec<Extension>,
    rng: &dyn SecureRandom,
) -> Result<Vec<u8>, AttestationError> {
    let mut serial = [0u8; SERIAL_LEN];
    rng.fill(&mut serial)
        .map_err(|_| AttestationError::Generate)?;
    // Positive and without a leading zero octet: clear the top bit, set
    // the next.
    if let Some(first) = serial.first_mut() {
        *first = (*first & 0x7F) | 0x40;
    }
    let signature_algorithm = AlgorithmIdentifierOwned {
        oid: OID_ECDSA_WITH_SHA256,
        parameters: None,
    };
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(&serial).map_err(certificate_error)?,
        signature: signature_algorithm.clone(),
        issuer,
        validity,
        subject,
        subject_public_key_info: SubjectPublicKeyInfoOwned {
            algorithm: AlgorithmIdentifierOwned {
                oid: OID_EC_PUBLIC_KEY,
                parameters: Some(
                    der::Any::encode_from(&OID_PRIME256V1).map_err(certificate_error)?,
                ),
            },
            subject_public_key: BitString::from_bytes(subject_key.public_key().as_ref())
                .map_err(certificate_error)?,
        },
        extensions,
    };
    let tbs_der = tbs.to_der().map_err(certificate_error)?;
    let signature = issuer_key
        .sign(rng, &tbs_der)
        .map_err(|_| AttestationError::Certificate("signing failed".to_owned()))?;
    Certificate {
        tbs_certificate: tbs,
        signature_algorithm,
        signature: BitString::from_bytes(signature.as_ref()).map_err(certificate_error)?,
    }
    .to_der()
    .map_err(certificate_error)
}

fn generate_key(
    rng: &dyn SecureRandom,
) -> Result<(EcdsaKeyPair, Zeroizing<Vec<u8>>), AttestationError> {
    let document = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, rng)
        .map_err(|_| AttestationError::Generate)?;
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, document.as_ref(), rng)
        .map_err(|_| AttestationError::Generate)?;
    Ok((key, Zeroizing::new(document.as_ref().to_vec())))
}

fn extension(
    oid: ObjectIdentifier,
    critical: bool,
    value: &impl der::Encode,
) -> Result<Extension, AttestationError> {
    Ok(Extension {
        extn_id: oid,
        critical,
        extn_value: OctetString::new(value.to_der().map_err(certificate_error)?)
            .map_err(certificate_error)?,
    })
}

fn octet_string(bytes: &[u8]) -> Result<OctetString, AttestationError> {
    OctetString::new(bytes).map_err(certificate_error)
}

fn bit_string(unused_bits: u8, bytes: &[u8]) -> Result<BitString, AttestationError> {
    BitString::new(unused_bits, bytes).map_err(certificate_error)
}

fn name(rfc4514: &str) -> Result<Name, AttestationError> {
    Name::from_str(rfc4514).map_err(certificate_error)
}

fn validity(not_before: SystemTime, not_after: SystemTime) -> Result<Validity, AttestationError> {
    let not_before = not_before.checked_sub(CLOCK_SKEW).unwrap_or(not_before);
    Ok(Validity::new(
        Time::try_from(not_before).map_err(certificate_error)?,
        Time::try_from(not_after).map_err(certificate_error)?,
    ))
}

fn certificate_error(error: der::Error) -> AttestationError {
    AttestationError::Certificate(error.to_string())
}

fn pem(label: &str, der: &[u8]) -> Result<String, AttestationError> {
    der::pem::encode_string(label, der::pem::LineEnding::LF, der)
        .map_err(|e| AttestationError::Certificate(e.to_string()))
}

fn pem_decode(text: &str, label: &str, what: &str) -> Result<Vec<u8>, AttestationError> {
    match der::pem::decode_vec(text.trim().as_bytes()) {
        Ok((found, der)) if found == label => Ok(der),
        _ => Err(AttestationError::Format {
            what: what.to_owned(),
            expected: if label == PEM_CERTIFICATE {
                "a PEM CERTIFICATE"
            } else {
                "a PEM PRIVATE KEY (PKCS#8)"
            },
        }),
    }
}

fn read(path: &Path) -> Result<String, AttestationError> {
    std::fs::read_to_string(path).map_err(|source| AttestationError::Read {
        path: path.to_owned(),
        source,
    })
}

fn write_new(path: &Path, contents: &[u8], secret: bool) -> Result<(), AttestationError> {
    let create_err = |source| AttestationError::Create {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, KEY_FILE_MODE);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).map_err(create_err)?;
    file.write_all(contents).map_err(create_err)?;
    file.sync_all().map_err(create_err)
}
