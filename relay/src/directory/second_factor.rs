//! Admins' second factor: a TOTP secret per admin (RFC 6238: HMAC-SHA1,
//! 6 digits, 30-second steps, one step of clock skew either way), what an
//! authenticator app is given to make codes, and the check of a code.
//!
//! The secret is stored encrypted (`people.totp_sealed`: AES-256-GCM under
//! a key derived from the cluster key, the person's id as associated data):
//! a database reader cannot make codes, and a database writer who copies
//! one admin's secret to another's row gets a value that does not open. A
//! code is accepted once: the step it matched must be later than the last
//! accepted step (`people.totp_last_step`, compare-and-set), so a code seen
//! over a shoulder or in a proxy log is useless once used (RFC 6238 §5.2).
//!
//! Must not decide who may sign in: the login handler combines the password,
//! this factor and the grant.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use totp_rs::{Algorithm, Builder, Totp};
use zeroize::Zeroizing;

use super::{DirResult, Directory, DirectoryError, Person};
use crate::sessions::Sealer;

/// What the encryption key is derived for.
const SECOND_FACTOR_PURPOSE: &str = "obr-relay directory admin totp v1";
/// RFC 4226 §4 asks for at least 128 bits and recommends 160.
const SECRET_LEN: usize = 20;
const DIGITS: u8 = 6;
const STEP_S: u64 = 30;
/// Steps either side of now a code may come from (a phone's clock drifts).
const SKEW: u16 = 1;
/// Shown by authenticator apps next to the account.
const ISSUER: &str = "obr";

#[derive(Debug, thiserror::Error)]
pub enum SecondFactorError {
    #[error(
        "no second factor is enrolled for this admin: an operator must run \
         `obr-relay admin reset-totp --email …` and hand the new secret over"
    )]
    NotEnrolled,
    #[error("wrong one-time code")]
    Wrong,
    #[error("this one-time code was already used: wait for the next one")]
    Replayed,
    #[error(transparent)]
    Directory(#[from] DirectoryError),
}

/// What a new admin's authenticator app is given, shown once.
pub struct Enrolment {
    /// The secret in base32 (RFC 4648), for typing in.
    pub secret_base32: Zeroizing<String>,
    /// `otpauth://totp/obr:EMAIL?secret=…&issuer=obr`, for a QR code.
    pub otpauth_uri: Zeroizing<String>,
}

/// The admins' TOTP secrets, read and written encrypted.
#[derive(Clone)]
pub struct SecondFactor {
    directory: Directory,
    key: std::sync::Arc<LessSafeKey>,
}

impl SecondFactor {
    pub fn new(directory: Directory, cluster: &Sealer) -> Self {
        let secret = cluster.derived_secret(SECOND_FACTOR_PURPOSE);
        #[expect(clippy::expect_used, reason = "a 32-byte key is what AES-256 takes")]
        let unbound = UnboundKey::new(&AES_256_GCM, secret.as_ref()).expect("32-byte AES key");
        Self {
            directory,
            key: std::sync::Arc::new(LessSafeKey::new(unbound)),
        }
    }

    /// Give `person` a new secret (replacing any old one, whose codes stop
    /// working at once); returns what their authenticator app needs.
    pub async fn enrol(&self, person: &Person) -> DirResult<Enrolment> {
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        let random = SystemRandom::new();
        random
            .fill(secret.as_mut())
            .map_err(|_| DirectoryError::Corrupt("the system random generator failed".into()))?;
        let mut nonce = [0u8; NONCE_LEN];
        random
            .fill(&mut nonce)
            .map_err(|_| DirectoryError::Corrupt("the system random generator failed".into()))?;
        let mut sealed = secret.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(associated_data(&person.id)),
                &mut sealed,
            )
            .map_err(|_| DirectoryError::Corrupt("cannot encrypt a TOTP secret".into()))?;
        let mut stored = nonce.to_vec();
        stored.extend_from_slice(&sealed);
        sqlx::query("UPDATE people SET totp_sealed = $1, totp_last_step = 0 WHERE id = $2")
            .bind(URL_SAFE_NO_PAD.encode(&stored))
            .bind(&person.id)
            .execute(self.directory.pool())
            .await?;
        let totp = totp(secret.as_ref(), &person.email)?;
        let otpauth_uri = totp
            .to_url()
            .map_err(|e| DirectoryError::Corrupt(format!("otpauth URI: {e}")))?;
        Ok(Enrolment {
            secret_base32: Zeroizing::new(totp.secret().to_base32()),
            otpauth_uri: Zeroizing::new(otpauth_uri),
        })
    }

    /// Accept `code` from `person` at `now_s` (Unix seconds) once: it must
    /// match a step within the skew that is later than any step accepted
    /// before.
    pub async fn verify(
        &self,
        person: &Person,
        code: &str,
        now_s: u64,
    ) -> Result<(), SecondFactorError> {
        let stored: Option<String> =
            sqlx::query_scalar("SELECT totp_sealed FROM people WHERE id = $1")
                .bind(&person.id)
                .fetch_optional(self.directory.pool())
                .await
                .map_err(DirectoryError::from)?
                .flatten();
        let stored = stored.ok_or(SecondFactorError::NotEnrolled)?;
        let secret = self.open(&person.id, &stored).ok_or_else(|| {
            tracing::warn!(person = %person.id, email = %person.email,
                "an admin's TOTP secret does not open: no sign-in");
            SecondFactorError::NotEnrolled
        })?;
        let step = totp(&secret, &person.email)?
            .check(code.trim(), now_s)
            .ok_or(SecondFactorError::Wrong)?;
        let step = i64::try_from(step).map_err(|_| SecondFactorError::Wrong)?;
        let taken = sqlx::query(
            "UPDATE people SET totp_last_step = $1 WHERE id = $2 AND totp_last_step < $1",
        )
        .bind(step)
        .bind(&person.id)
        .execute(self.directory.pool())
        .await
        .map_err(DirectoryError::from)?;
        if taken.rows_affected() == 1 {
            Ok(())
        } else {
            Err(SecondFactorError::Replayed)
        }
    }

    /// The secret in `stored`, if it was encrypted for `person_id` here.
    fn open(&self, person_id: &str, stored: &str) -> Option<Zeroizing<Vec<u8>>> {
        let bytes = URL_SAFE_NO_PAD.decode(stored).ok()?;
        let (nonce, sealed) = bytes.split_at_checked(NONCE_LEN)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut sealed = Zeroizing::new(sealed.to_vec());
        let secret = self
            .key
            .open_in_place(nonce, Aad::from(associated_data(person_id)), &mut sealed)
            .ok()?;
        Some(Zeroizing::new(secret.to_vec()))
    }
}

fn associated_data(person_id: &str) -> Vec<u8> {
    format!("admin-totp\0{person_id}").into_bytes()
}

/// The RFC 6238 parameters every obr admin's app uses.
fn totp(secret: &[u8], email: &str) -> DirResult<Totp> {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(DIGITS)
        .with_skew(SKEW)
        .with_step_duration(STEP_S)
        .with_secret(secret)
        .with_issuer(Some(ISSUER))
        // `:` separates issuer and account in an otpauth label.
        .with_account_name(email.replace(':', "_"))
        .build()
        .map_err(|e| DirectoryError::Corrupt(format!("TOTP parameters: {e}")))
}
