//! Python tools in virtualenvs the harness makes once per machine, in a
//! cache directory outside the repository (`$OBR_TEST_CACHE`, default
//! `~/.cache/obr-tests`): python-fido2, aiosmtpd and schemathesis from
//! `tests/python/requirements.txt`, and the Kubernetes manifest checkers
//! (kubectl, kubernetes-validate, checkov) from
//! `tests/python/requirements-k8s.txt`, apart because their pins would
//! fight the others'. Every version is pinned.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

fn requirements(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(file)
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

/// The main venv's python, creating the venv if it is missing or stale.
pub fn venv_python() -> anyhow::Result<PathBuf> {
    venv_from("requirements.txt")
}

/// The `bin/` of the venv for the Kubernetes manifest checkers.
pub fn k8s_tools() -> anyhow::Result<PathBuf> {
    let python = venv_from("requirements-k8s.txt")?;
    python
        .parent()
        .map(Path::to_path_buf)
        .context("a venv's python lives in bin/")
}

/// The python of the venv made from `tests/python/<file>`.
fn venv_from(file: &str) -> anyhow::Result<PathBuf> {
    let reqs = std::fs::read_to_string(requirements(file))?;
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
        .arg(requirements(file)))
    .with_context(|| format!("pip install of tests/python/{file} failed"))?;
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
