//! python-fido2 in a virtualenv the harness makes once per machine, in a
//! cache directory outside the repository (`$OBR_TEST_CACHE`, default
//! `~/.cache/obr-tests`), from `tests/python/requirements.txt` (pinned).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

fn requirements() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python/requirements.txt")
}

pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}

fn cache_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("OBR_TEST_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/tmp".into());
    Path::new(&home).join(".cache/obr-tests")
}

/// The venv's python, creating the venv if it is missing or stale.
pub fn venv_python() -> anyhow::Result<PathBuf> {
    let reqs = std::fs::read_to_string(requirements())?;
    // A venv per requirements content: changing a pin makes a new one.
    let tag: u64 = reqs.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    let venv = cache_dir().join(format!("venv-{tag:016x}"));
    let python = venv.join("bin/python");
    if venv.join(".complete").exists() {
        return Ok(python);
    }
    std::fs::create_dir_all(cache_dir())?;
    // Build beside, then rename: concurrent tests never see a half venv.
    let building = cache_dir().join(format!("venv-{tag:016x}.building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    run(Command::new("python3").args(["-m", "venv"]).arg(&building))
        .context("python3 -m venv failed (install python3-venv)")?;
    run(Command::new(building.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(requirements()))
    .context("pip install of tests/python/requirements.txt failed")?;
    std::fs::write(building.join(".complete"), b"")?;
    match std::fs::rename(&building, &venv) {
        Ok(()) => {}
        // Another test finished first: use theirs.
        Err(_) if venv.join(".complete").exists() => {
            let _ = std::fs::remove_dir_all(&building);
        }
        Err(e) => return Err(e.into()),
    }
    // Scripts in a renamed venv keep the old path in their shebang; we only
    // ever run `bin/python`, which is path-independent.
    Ok(python)
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("{:?}: {}", cmd, String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
