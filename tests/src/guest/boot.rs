//! Booting the guest: a busybox initramfs whose `/init` loads the kernel modules obr needs
//! (virtio, 9p, `hid`, `uhid`, `hid-generic`), mounts the shared folders, chroots into the
//! Debian root filesystem to run one command, writes its exit code and powers off; and the QEMU
//! process that boots it under TCG (this host's KVM cannot boot a stock kernel, see
//! `../shared/REAL-CLIENTS.md`) with no network device.
//!
//! It owns the QEMU process and its console, and gives up on a guest that outlives its
//! deadline. It knows nothing of obr: what runs in the guest is the caller's command.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::assets::{GuestAssets, run};
use super::{GUEST_BIN_DIR, GUEST_OUT_DIR};

/// Modules to load, each after what it depends on (`hid-generic` is what makes the
/// `/dev/hidraw*` node; nothing would load it automatically without udev).
pub const MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "uhid", "hid-generic"];
/// Printed on the guest console by `/init` once the root filesystem is mounted.
pub const INIT_MARK: &str = "obr-guest: init";
/// Printed on the guest console by `/init` with the command's exit code.
pub const EXIT_MARK: &str = "obr-guest: exit ";

/// How to boot the guest.
#[derive(Clone, Debug)]
pub struct Boot {
    pub assets: GuestAssets,
    /// Host folder shared read-only at [`GUEST_BIN_DIR`].
    pub bin_dir: PathBuf,
    /// Host folder shared read-write at [`GUEST_OUT_DIR`].
    pub out_dir: PathBuf,
    /// The command `/init` runs in the root filesystem, with its arguments.
    pub command: Vec<String>,
    /// Extra environment for the command.
    pub env: Vec<(String, String)>,
    pub memory_mib: u32,
    pub cpus: u32,
    /// The whole run, boot to power-off.
    pub deadline: Duration,
}

/// What a finished guest left.
#[derive(Debug)]
pub struct GuestRun {
    /// The command's exit code, as `/init` reported it.
    pub exit_code: Option<i32>,
    /// Every console line, with the time since QEMU started.
    pub console: Vec<(Duration, String)>,
    pub wall: Duration,
}

impl GuestRun {
    /// When the first console line starting with `mark` appeared.
    pub fn mark(&self, mark: &str) -> Option<Duration> {
        self.console
            .iter()
            .find(|(_, line)| line.starts_with(mark))
            .map(|(at, _)| *at)
    }

    /// The last `n` console lines, for a failure message.
    pub fn tail(&self, n: usize) -> String {
        let skip = self.console.len().saturating_sub(n);
        self.console
            .iter()
            .skip(skip)
            .map(|(at, line)| format!("[{:>7.2}s] {line}\n", at.as_secs_f64()))
            .collect()
    }
}

impl Boot {
    /// Builds the initramfs in `work`, boots, and waits for the guest to power off.
    pub fn run(&self, work: &Path) -> anyhow::Result<GuestRun> {
        let initramfs = self.initramfs(work)?;
        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args(["-accel", "tcg,thread=multi", "-cpu", "max"])
            .args(["-smp", &self.cpus.to_string()])
            .args(["-m", &self.memory_mib.to_string()])
            .args(["-nic", "none", "-display", "none", "-monitor", "none"])
            .args(["-serial", "stdio", "-no-reboot"])
            .arg("-kernel")
            .arg(&self.assets.kernel)
            .arg("-initrd")
            .arg(&initramfs)
            .args(["-append", "console=ttyS0 loglevel=4 panic=-1"])
            .args(["-virtfs", &share(&self.assets.rootfs, "rootfs", true)])
            .args(["-virtfs", &share(&self.bin_dir, "obrbin", true)])
            .args(["-virtfs", &share(&self.out_dir, "obrout", false)])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // A file, not a pipe: nobody reads a pipe until QEMU exits, and a full one would stall it.
            .stderr(std::fs::File::create(work.join("qemu.stderr"))?);
        let started = Instant::now();
        let mut child = qemu
            .spawn()
            .context("cannot start qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
        let console = Arc::new(Mutex::new(Vec::new()));
        let mut log = std::fs::File::create(work.join("console.log"))?;
        let reader = {
            let stdout = child.stdout.take().context("qemu stdout")?;
            let console = Arc::clone(&console);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
                    let line = String::from_utf8_lossy(&line)
                        .trim_end_matches(['\r', '\n'])
                        .to_owned();
                    let at = started.elapsed();
                    let _ = writeln!(log, "[{:>7.2}s] {line}", at.as_secs_f64());
                    console
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((at, line));
                }
            })
        };
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if started.elapsed() > self.deadline {
                let _ = child.kill();
                let _ = child.wait();
                let _ = reader.join();
                let run = console_so_far(&console, started);
                bail!(
                    "the guest did not power off within {:?}; console tail:\n{}",
                    self.deadline,
                    run.tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let _ = reader.join();
        let stderr = std::fs::read_to_string(work.join("qemu.stderr")).unwrap_or_default();
        let run = console_so_far(&console, started);
        if !status.success() {
            bail!(
                "qemu failed ({status}): {stderr}\nconsole tail:\n{}",
                run.tail(60)
            );
        }
        let exit_code = run
            .console
            .iter()
            .rev()
            .find_map(|(_, line)| line.strip_prefix(EXIT_MARK))
            .and_then(|code| code.trim().parse().ok());
        Ok(GuestRun { exit_code, ..run })
    }

    /// `work/initramfs.cpio`: static busybox, the modules in load order, and `/init`.
    fn initramfs(&self, work: &Path) -> anyhow::Result<PathBuf> {
        let root = work.join("initramfs");
        std::fs::create_dir_all(root.join("bin"))?;
        std::fs::create_dir_all(root.join("lib/modules"))?;
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
            .context("no busybox: apt-get install busybox-static")?;
        std::fs::copy(busybox, root.join("bin/busybox"))?;
        let mut order = Vec::new();
        for module in MODULES {
            load_order(&self.assets.modules, module, &mut order)?;
        }
        let mut insmods = String::new();
        for path in &order {
            let name = path.file_name().context("module file name")?;
            std::fs::copy(path, root.join("lib/modules").join(name))?;
            insmods.push_str(&format!(
                "insmod /lib/modules/{0} || echo 'obr-guest: cannot load {0}'\n",
                name.to_string_lossy()
            ));
        }
        let env: String = self
            .env
            .iter()
            .map(|(key, value)| format!(" {key}={}", shell_quote(value)))
            .collect();
        let command: Vec<String> = self.command.iter().map(|a| shell_quote(a)).collect();
        let init = INIT_SCRIPT
            .replace("@INSMODS@", &insmods)
            .replace("@BIN@", GUEST_BIN_DIR)
            .replace("@OUT@", GUEST_OUT_DIR)
            .replace("@ENV@", &env)
            .replace("@COMMAND@", &command.join(" "));
        let init_path = root.join("init");
        std::fs::write(&init_path, init)?;
        std::fs::set_permissions(
            &init_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let cpio = work.join("initramfs.cpio");
        run(
            Command::new("sh").arg("-c").arg(format!(
                "cd {} && find . | cpio -o -H newc -R 0:0 --quiet > {}",
                shell_quote(&root.to_string_lossy()),
                shell_quote(&cpio.to_string_lossy())
            )),
            "cpio (apt-get install cpio)",
        )?;
        Ok(cpio)
    }
}

/// `/init`: mount, load modules, chroot into the shared root filesystem, run the command.
const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
@INSMODS@
ip link set lo up
R=/newroot
mkdir -p $R
opts=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o $opts,ro,cache=loose rootfs $R || echo 'obr-guest: cannot mount the root filesystem'
mount -t 9p -o $opts,ro,cache=loose obrbin $R@BIN@
mount -t 9p -o $opts obrout $R@OUT@
mount -t tmpfs -o mode=1777 tmpfs $R/tmp
mount -t tmpfs tmpfs $R/run
mount -o bind /dev $R/dev
mkdir -p $R/dev/shm $R/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
echo "obr-guest: init $(cut -d' ' -f1 /proc/uptime)"
chroot $R /usr/bin/env -i HOME=/tmp PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin@ENV@ @COMMAND@
echo "obr-guest: exit $?"
sync
umount $R@OUT@
poweroff -f
"#;

/// The console so far, with no exit code yet.
fn console_so_far(console: &Mutex<Vec<(Duration, String)>>, started: Instant) -> GuestRun {
    GuestRun {
        exit_code: None,
        console: std::mem::take(&mut *console.lock().unwrap_or_else(|e| e.into_inner())),
        wall: started.elapsed(),
    }
}

/// `-virtfs` for `path` under `tag`; QEMU's option syntax escapes a comma by doubling it.
fn share(path: &Path, tag: &str, readonly: bool) -> String {
    format!(
        "local,path={},mount_tag={tag},security_model=none,multidevs=remap{}",
        path.display().to_string().replace(',', ",,"),
        if readonly { ",readonly=on" } else { "" }
    )
}

/// Appends `module` and, before it, what it depends on (by `modinfo`), each once.
fn load_order(modules: &Path, module: &str, order: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let path = find_module(modules, module)?
        .with_context(|| format!("no module {module} under {}", modules.display()))?;
    if order.contains(&path) {
        return Ok(());
    }
    let out = Command::new("modinfo")
        .args(["-F", "depends"])
        .arg(&path)
        .output()
        .context("cannot run modinfo (apt-get install kmod)")?;
    for dependency in String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(',')
        .filter(|d| !d.is_empty())
    {
        load_order(modules, dependency, order)?;
    }
    order.push(path);
    Ok(())
}

/// `<name>.ko` under `dir`, where `-` and `_` in module names are the same.
fn find_module(dir: &Path, name: &str) -> anyhow::Result<Option<PathBuf>> {
    let wanted = format!("{}.ko", name.replace('-', "_"));
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            if let Some(found) = find_module(&path, name)? {
                return Ok(Some(found));
            }
        } else if path
            .file_name()
            .is_some_and(|f| f.to_string_lossy().replace('-', "_") == wanted)
        {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
