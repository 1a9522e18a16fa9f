//! The guest's parts, fetched from Debian's package registry at test time and cached outside
//! the repository: a kernel package (unpacked, never installed) and a `debootstrap` root
//! filesystem with Chromium, libfido2's tools and a font.
//!
//! The cache folder is `$OBR_GUEST_CACHE`, else `$XDG_CACHE_HOME/obr-guest`, else
//! `~/.cache/obr-guest`. A fresh machine builds it on the first run (about a minute and a half
//! here: one 70 MB download and a ≈1.1 GB root filesystem); later runs reuse it. Each part is
//! built under a `.partial` name and renamed into place when complete, and a file lock keeps
//! concurrent test processes from building it twice, so an interrupted run never leaves a half
//! part behind that a later run would trust. This module only fetches and unpacks; booting is
//! [`super::boot`]'s job.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

/// The Debian release of the guest's root filesystem. It must match the host's glibc, because
/// the guest runs the host-built obr binaries as they are (the host is Debian 12 too).
pub const SUITE: &str = "bookworm";
/// The kernel package whose dependency names the current kernel image.
pub const KERNEL_META_PACKAGE: &str = "linux-image-amd64";
/// What the root filesystem adds to `debootstrap --variant=minbase`: the two browsers, whose
/// WebAuthn stacks differ (Chromium's own, Firefox's authenticator-rs), libfido2's tools and a
/// font. `dbus-x11` is there only because debootstrap does not resolve the virtual
/// `dbus-session-bus` that the browsers' GTK dependencies need, and would leave them
/// unconfigured.
pub const ROOTFS_PACKAGES: &[&str] = &[
    "chromium",
    "firefox-esr",
    "fonts-dejavu-core",
    "fido2-tools",
    "dbus-x11",
];
/// Debian mirror for `debootstrap`, overridable with `OBR_GUEST_MIRROR`.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// The uncompressed kernel inside the cached kernel folder.
pub const VMLINUX: &str = "vmlinux";
/// The xz stream header inside Debian's `vmlinuz` (a bzImage with an xz-compressed payload).
const XZ_MAGIC: &[u8] = b"\xfd7zXZ\x00";
/// Folders the root filesystem needs as mount points for obr's 9p shares.
pub const ROOTFS_MOUNT_POINTS: &[&str] = &["obr/bin", "obr/out"];

/// The complete, cached parts of the guest.
#[derive(Clone, Debug)]
pub struct GuestAssets {
    /// The uncompressed kernel (`vmlinux`), which QEMU boots directly through its PVH entry
    /// point: about 6 s faster under TCG than decompressing `vmlinuz` in the guest.
    pub kernel: PathBuf,
    /// `lib/modules/<version>` of that kernel.
    pub modules: PathBuf,
    /// The root filesystem, shared read-only with the guest.
    pub rootfs: PathBuf,
}

impl GuestAssets {
    /// Returns the cached parts, fetching and building what is missing first.
    pub fn ensure() -> anyhow::Result<Self> {
        let cache = cache_dir()?;
        std::fs::create_dir_all(&cache)
            .with_context(|| format!("cannot create the guest cache {}", cache.display()))?;
        let lock = File::create(cache.join(".lock"))?;
        lock.lock().context("cannot lock the guest cache folder")?;
        let (kernel, modules) = ensure_kernel(&cache)?;
        let rootfs = ensure_rootfs(&cache)?;
        Ok(Self {
            kernel,
            modules,
            rootfs,
        })
    }
}

fn cache_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("OBR_GUEST_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("obr-guest"));
    }
    let home = std::env::var_os("HOME").context("neither OBR_GUEST_CACHE nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache").join("obr-guest"))
}

/// `cache/kernel`: the unpacked kernel package, with a `.version` file written last.
fn ensure_kernel(cache: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = cache.join("kernel");
    if !dir.join(".version").exists() {
        let started = Instant::now();
        let package = kernel_package()?;
        eprintln!("guest cache: fetching {package} into {}", dir.display());
        let partial = fresh_dir(&cache.join("kernel.partial"))?;
        run(
            Command::new("apt-get")
                .arg("download")
                .arg(&package)
                .current_dir(&partial),
            "apt-get download (install apt, or run scripts/test)",
        )?;
        let deb = std::fs::read_dir(&partial)?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
            .with_context(|| format!("apt-get download left no .deb for {package}"))?;
        run(
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial),
            "dpkg-deb",
        )?;
        std::fs::remove_file(&deb)?;
        let version = package
            .strip_prefix("linux-image-")
            .with_context(|| format!("unexpected kernel package name {package}"))?;
        extract_vmlinux(
            &partial.join("boot").join(format!("vmlinuz-{version}")),
            &partial.join(VMLINUX),
        )?;
        std::fs::write(partial.join(".version"), version)?;
        std::fs::rename(&partial, &dir)?;
        eprintln!("guest cache: kernel ready in {:.1?}", started.elapsed());
    }
    let version = std::fs::read_to_string(dir.join(".version"))?;
    let version = version.trim();
    let kernel = dir.join(VMLINUX);
    let modules = dir.join("lib/modules").join(version);
    if !kernel.exists() || !modules.is_dir() {
        bail!(
            "{} is incomplete (no {} or {}): delete it and run again",
            dir.display(),
            kernel.display(),
            modules.display()
        );
    }
    Ok((kernel, modules))
}

/// The versioned kernel image package that [`KERNEL_META_PACKAGE`] depends on, refreshing the
/// package lists once if apt does not know it (a fresh machine may never have run
/// `apt-get update`).
fn kernel_package() -> anyhow::Result<String> {
    let depends = || -> anyhow::Result<Option<String>> {
        let out = Command::new("apt-cache")
            .args(["depends", KERNEL_META_PACKAGE])
            .output()
            .context("cannot run apt-cache: the guest needs a Debian host (or run scripts/test)")?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| line.trim().strip_prefix("Depends: "))
            .find(|name| name.starts_with("linux-image-"))
            .map(str::to_owned))
    };
    if let Some(package) = depends()? {
        return Ok(package);
    }
    run(
        Command::new("apt-get").args(["update", "-q"]),
        "apt-get update",
    )?;
    depends()?.with_context(|| format!("apt knows no dependency of {KERNEL_META_PACKAGE}"))
}

/// `cache/rootfs-<suite>-<hash of the package list>`: a minbase Debian with
/// [`ROOTFS_PACKAGES`] and the mount points obr's shares need.
fn ensure_rootfs(cache: &Path) -> anyhow::Result<PathBuf> {
    let dir = cache.join(format!("rootfs-{SUITE}-{:08x}", fnv1a(ROOTFS_PACKAGES)));
    if dir.is_dir() {
        return Ok(dir);
    }
    let started = Instant::now();
    let mirror = std::env::var("OBR_GUEST_MIRROR").unwrap_or_else(|_| DEFAULT_MIRROR.into());
    eprintln!(
        "guest cache: building a Debian {SUITE} root filesystem with {} into {} (about a minute; \
         later runs reuse it)",
        ROOTFS_PACKAGES.join(", "),
        dir.display()
    );
    let partial = fresh_dir(&dir.with_extension("partial"))?;
    run(
        Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(format!("--include={}", ROOTFS_PACKAGES.join(",")))
            .arg(SUITE)
            .arg(&partial)
            .arg(&mirror),
        "debootstrap (needs root and the debootstrap package: apt-get install debootstrap, or run \
         scripts/test)",
    )?;
    for mount_point in ROOTFS_MOUNT_POINTS {
        std::fs::create_dir_all(partial.join(mount_point))?;
    }
    // Package caches are not needed in the guest.
    let _ = std::fs::remove_dir_all(partial.join("var/cache/apt/archives"));
    std::fs::rename(&partial, &dir)?;
    eprintln!(
        "guest cache: root filesystem ready in {:.1?}",
        started.elapsed()
    );
    Ok(dir)
}

/// Unpacks the ELF kernel from a bzImage whose payload is xz-compressed (Debian's is), as the
/// kernel's own `scripts/extract-vmlinux` does: decompress from the first xz header on.
fn extract_vmlinux(bzimage: &Path, vmlinux: &Path) -> anyhow::Result<()> {
    let image = std::fs::read(bzimage)?;
    let start = image
        .windows(XZ_MAGIC.len())
        .position(|window| window == XZ_MAGIC)
        .with_context(|| format!("{} has no xz payload", bzimage.display()))?;
    let mut xz = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(std::process::Stdio::piped())
        .stdout(File::create(vmlinux)?)
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("cannot run xz (apt-get install xz-utils)")?;
    let mut stdin = xz.stdin.take().context("xz stdin")?;
    let payload = image[start..].to_vec();
    let feeder = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &payload));
    let status = xz.wait()?;
    // xz may stop reading at the end of the stream, so a broken pipe here is fine.
    let _ = feeder.join();
    let mut elf = [0u8; 4];
    std::io::Read::read_exact(&mut File::open(vmlinux)?, &mut elf)?;
    if !status.success() || &elf != b"\x7fELF" {
        bail!("could not unpack {} ({status})", bzimage.display());
    }
    Ok(())
}

/// An empty directory at `path`, removing what an interrupted run left there.
fn fresh_dir(path: &Path) -> anyhow::Result<PathBuf> {
    if path.exists() {
        std::fs::remove_dir_all(path)
            .with_context(|| format!("cannot remove the stale {}", path.display()))?;
    }
    std::fs::create_dir_all(path)?;
    Ok(path.to_owned())
}

/// Runs `command`, failing with its output when it fails; `what` names it and says how to get it.
pub(crate) fn run(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// FNV-1a over the package names: a cache key that changes when the list does.
fn fnv1a(names: &[&str]) -> u32 {
    names
        .iter()
        .flat_map(|name| name.bytes().chain([0]))
        .fold(0x811c_9dc5, |hash, byte| {
            (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
        })
}
