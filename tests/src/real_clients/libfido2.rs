//! libfido2 as a client of the agent's uhid key, through Debian's `fido2-tools`: list and
//! query the device (`fido2-token -L`, `-I`), make a credential with its attestation
//! (`fido2-cred -M`), verify that attestation and extract the public key (`fido2-cred -V`), then
//! sign in with the credential (`fido2-assert -G`) and verify the signature (`fido2-assert -V`).
//!
//! The input and output files are the tools' own line formats (fido2-cred(1), fido2-assert(1)).
//! This module only runs the tools and reads what they print; it checks nothing about obr.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

/// What libfido2 made of the key.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Libfido2Run {
    /// `fido2-token -L`.
    pub token_list: String,
    /// `fido2-token -I <device>`.
    pub token_info: String,
    /// The attestation statement format `fido2-cred -M` got.
    pub cred_format: String,
    /// The credential id, base64.
    pub cred_id: String,
    /// Whether the attestation came with a certificate (x5c).
    pub attestation_certificate: bool,
    /// `fido2-cred -V` verified the attestation signature and wrote this public key.
    pub public_key_pem: String,
    /// `fido2-assert -V` verified an assertion made with the credential.
    pub assertion_verified: bool,
}

/// `fido2-token -L`, and the device path of the line that names `vid_pid` (e.g.
/// `vendor=0x1209, product=0x000f`).
pub fn find_device(vid_pid: &str) -> anyhow::Result<(String, String)> {
    let list = tool("fido2-token", &["-L"])?;
    let path = list
        .lines()
        .find(|line| line.contains(vid_pid))
        .and_then(|line| line.split(": ").next())
        .with_context(|| format!("fido2-token -L lists no device with {vid_pid}:\n{list}"))?;
    Ok((path.to_owned(), list))
}

/// Registers a credential for `rp_id` with `fido2-cred`, verifies it, and signs in with it using
/// `fido2-assert`; `dir` holds the tools' files.
pub fn register_and_sign_in(
    device: &str,
    rp_id: &str,
    dir: &Path,
    token_list: String,
) -> anyhow::Result<Libfido2Run> {
    let token_info = tool("fido2-token", &["-I", device])?;
    let user_id = B64.encode(uuid::Uuid::new_v4().as_bytes());
    let cred_in = dir.join("cred.in");
    let cred_out = dir.join("cred.out");
    std::fs::write(
        &cred_in,
        format!(
            "{}\n{rp_id}\nlibfido2-user\n{user_id}\n",
            client_data_hash()
        ),
    )?;
    tool(
        "fido2-cred",
        &[
            "-M",
            "-i",
            path(&cred_in)?,
            "-o",
            path(&cred_out)?,
            device,
            "es256",
        ],
    )?;
    // -M output: client data hash, rp id, format, authdata, credential id, signature, x5c.
    let made = std::fs::read_to_string(&cred_out)?;
    let lines: Vec<&str> = made.lines().collect();
    let (Some(format), Some(cred_id)) = (lines.get(2), lines.get(4)) else {
        bail!("fido2-cred -M wrote an incomplete credential:\n{made}");
    };
    let attestation_certificate = lines.get(6).is_some_and(|x5c| !x5c.is_empty());

    let verified = dir.join("cred.pub");
    tool(
        "fido2-cred",
        &[
            "-V",
            "-i",
            path(&cred_out)?,
            "-o",
            path(&verified)?,
            "es256",
        ],
    )?;
    // -V output: the credential id, then the public key in PEM.
    let verified_text = std::fs::read_to_string(&verified)?;
    let (verified_id, public_key_pem) = verified_text
        .split_once('\n')
        .context("fido2-cred -V wrote no public key")?;
    if verified_id.trim() != cred_id.trim() {
        bail!("fido2-cred -V verified credential {verified_id}, not {cred_id}");
    }
    let public_key = dir.join("public.pem");
    std::fs::write(&public_key, public_key_pem)?;

    let assert_in = dir.join("assert.in");
    let assert_out = dir.join("assert.out");
    std::fs::write(
        &assert_in,
        format!("{}\n{rp_id}\n{cred_id}\n", client_data_hash()),
    )?;
    tool(
        "fido2-assert",
        &[
            "-G",
            "-p",
            "-i",
            path(&assert_in)?,
            "-o",
            path(&assert_out)?,
            device,
        ],
    )?;
    tool(
        "fido2-assert",
        &[
            "-V",
            "-p",
            "-i",
            path(&assert_out)?,
            path(&public_key)?,
            "es256",
        ],
    )?;
    Ok(Libfido2Run {
        token_list,
        token_info,
        cred_format: format.trim().to_owned(),
        cred_id: cred_id.trim().to_owned(),
        attestation_certificate,
        public_key_pem: public_key_pem.to_owned(),
        assertion_verified: true,
    })
}

/// A fresh random client data hash, base64 (what a browser would hash clientDataJSON to).
fn client_data_hash() -> String {
    let mut hash = [0u8; 32];
    hash[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    hash[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    B64.encode(hash)
}

fn path(path: &Path) -> anyhow::Result<&str> {
    path.to_str().context("non-UTF-8 path")
}

/// Runs a fido2-tools command; its stdout, or an error with both streams.
fn tool(name: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(name)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {name} (Debian package fido2-tools)"))?;
    if !output.status.success() {
        bail!(
            "{name} {} failed ({}): {}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
