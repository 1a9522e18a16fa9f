//! Secrets the relay hands out and checks: bearer tokens, invitation codes,
//! device-code user codes, and admin password hashes (argon2id).
//!
//! Tokens are 256-bit random values shown once; only their SHA-256 is ever
//! stored, so a leaked store or database does not leak usable tokens.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

/// RFC 8628 §6.1: a user code from an alphabet without vowels or
/// look-alikes, 8 characters (≈ 34 bits), shown as `XXXX-XXXX`.
const USER_CODE_ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the system random generator failed")]
    Random,
    #[error("password hashing failed: {0}")]
    Hash(String),
}

fn random_bytes<const N: usize>() -> Result<[u8; N], SecretError> {
    let mut buf = [0u8; N];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| SecretError::Random)?;
    Ok(buf)
}

/// A fresh bearer token (or invitation code): 32 random bytes, base64url.
pub fn new_token() -> Result<String, SecretError> {
    Ok(URL_SAFE_NO_PAD.encode(random_bytes::<32>()?))
}

/// A fresh password for a new admin: 20 random base64url characters
/// (120 bits), shown once.
pub fn new_password() -> Result<String, SecretError> {
    let mut token = new_token()?;
    token.truncate(20);
    Ok(token)
}

/// What is stored in place of a token.
pub fn token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// A device-code login's user code, e.g. `BDFG-HJKL`.
pub fn new_user_code() -> Result<String, SecretError> {
    let bytes = random_bytes::<8>()?;
    let mut code = String::with_capacity(9);
    for (i, b) in bytes.iter().enumerate() {
        if i == 4 {
            code.push('-');
        }
        // 256 is not a multiple of 20, so this is very slightly biased
        // (≤ 1.2%); harmless for a short-lived, single-use code whose guessing backs off
        // (`crate::limits`).
        let idx = usize::from(*b) % USER_CODE_ALPHABET.len();
        #[expect(clippy::indexing_slicing, reason = "idx < len: taken modulo len")]
        code.push(char::from(USER_CODE_ALPHABET[idx]));
    }
    Ok(code)
}

/// Normalise what a person typed: upper-case, dash optional.
pub fn normalize_user_code(input: &str) -> String {
    let raw: String = input
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if raw.len() == 8 {
        format!("{}-{}", &raw[..4], &raw[4..])
    } else {
        raw
    }
}

pub fn hash_password(password: &str) -> Result<String, SecretError> {
    let salt = SaltString::encode_b64(&random_bytes::<16>()?)
        .map_err(|e| SecretError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| SecretError::Hash(e.to_string()))
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_round_trip() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("correct horse", "not a hash"));
    }

    #[test]
    fn user_codes_normalise() {
        let code = new_user_code().unwrap();
        assert_eq!(code.len(), 9);
        assert_eq!(
            normalize_user_code(&code.to_lowercase().replace('-', "")),
            code
        );
    }

    #[test]
    fn tokens_are_unique_and_hashed() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_ne!(a, b);
        assert_ne!(token_hash(&a), a);
        assert_eq!(token_hash(&a), token_hash(&a));
    }
}
