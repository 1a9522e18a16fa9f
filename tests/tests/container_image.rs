//! The container image (`deploy/Dockerfile`) built the way the suite can
//! here — daemonless with Debian's buildah, no registry — and run: a base
//! image is made from this machine's own glibc and libgcc (what
//! distroless/cc holds), the Dockerfile's `prebuilt` stage puts the relay
//! and the signer on it, and the image's relay serves a demo organisation
//! as user 65532, drains on SIGTERM and exits 0; the signer answers
//! `--version`. Storage is private to the test (vfs, in its scratch
//! directory): nothing of the machine's own containers is touched.

use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use obr_tests::processes::binary;
use obr_tests::scratch::Scratch;

/// The libraries the binaries link (see `ldd`), and the loader.
const LIBRARIES: [&str; 4] = [
    "/lib/x86_64-linux-gnu/libc.so.6",
    "/lib/x86_64-linux-gnu/libm.so.6",
    "/lib/x86_64-linux-gnu/libgcc_s.so.1",
    "/lib64/ld-linux-x86-64.so.2",
];
const NONROOT: u32 = 65532;

struct Buildah {
    root: PathBuf,
    runroot: PathBuf,
}

impl Buildah {
    fn command(&self) -> Command {
        let mut command = Command::new("buildah");
        command
            .arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .args(["--storage-driver", "vfs"]);
        command
    }

    /// Run `buildah <args>`; its standard output, trimmed.
    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self.command().args(args).output()?;
        anyhow::ensure!(
            output.status.success(),
            "buildah {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8(output.stdout)?.trim().to_owned())
    }
}

#[test]
fn the_image_builds_offline_and_its_relay_serves_as_nonroot() -> anyhow::Result<()> {
    anyhow::ensure!(
        Command::new("buildah").arg("--version").output().is_ok(),
        "buildah is missing: apt-get install buildah (scripts/test does)"
    );
    let scratch = Scratch::new("container-image")?;
    let buildah = Buildah {
        root: scratch.join("storage"),
        runroot: scratch.join("run"),
    };

    // A base with nothing but the loader, glibc, libgcc and a passwd that
    // names the non-root user.
    let base = buildah.run(&["from", "scratch"])?;
    for library in LIBRARIES {
        let dir = Path::new(library)
            .parent()
            .and_then(Path::to_str)
            .unwrap_or("/");
        buildah.run(&["copy", &base, library, &format!("{dir}/")])?;
    }
    let etc = scratch.join("etc");
    std::fs::create_dir_all(&etc)?;
    std::fs::write(
        etc.join("passwd"),
        format!(
            "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{NONROOT}:{NONROOT}::/home/nonroot:/sbin/nologin\n"
        ),
    )?;
    std::fs::write(
        etc.join("group"),
        format!("root:x:0:\nnonroot:x:{NONROOT}:\n"),
    )?;
    buildah.run(&[
        "copy",
        &base,
        &etc.join("passwd").display().to_string(),
        "/etc/passwd",
    ])?;
    buildah.run(&[
        "copy",
        &base,
        &etc.join("group").display().to_string(),
        "/etc/group",
    ])?;
    buildah.run(&["commit", "-q", &base, "localhost/obr-runtime-base:test"])?;

    // The Dockerfile's prebuilt stage, on that base, from this build's
    // binaries (debug symbols stripped).
    let context = scratch.join("context");
    std::fs::create_dir_all(context.join("bin"))?;
    for name in ["obr-relay", "obr-signer"] {
        let stripped = Command::new("strip")
            .arg("-o")
            .arg(context.join("bin").join(name))
            .arg(binary(name)?)
            .status()?;
        anyhow::ensure!(stripped.success(), "strip {name}");
    }
    let dockerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/Dockerfile");
    buildah.run(&[
        "bud",
        "-q",
        "--isolation",
        "chroot",
        "-f",
        &dockerfile.display().to_string(),
        "--target",
        "prebuilt",
        "--build-arg",
        "RUNTIME=localhost/obr-runtime-base:test",
        "-t",
        "localhost/obr:test",
        &context.display().to_string(),
    ])?;
    let config = buildah.run(&[
        "inspect",
        "--format",
        "{{.OCIv1.Config.User}} {{.OCIv1.Config.Entrypoint}}",
        "localhost/obr:test",
    ])?;
    assert_eq!(
        config,
        format!("{NONROOT}:{NONROOT} [/usr/local/bin/obr-relay]")
    );

    // Its binaries run.
    let container = buildah.run(&["from", "-q", "localhost/obr:test"])?;
    let signer = buildah.run(&[
        "run",
        "--isolation",
        "chroot",
        &container,
        "--",
        "/usr/local/bin/obr-signer",
        "--version",
    ])?;
    assert!(signer.starts_with("obr-signer "), "{signer}");

    // Its relay serves, as the non-root user, on a data volume it owns.
    let data = scratch.join("data");
    std::fs::create_dir_all(&data)?;
    std::os::unix::fs::chown(&data, Some(NONROOT), Some(NONROOT))?;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut relay = buildah
        .command()
        .args([
            "run",
            "--isolation",
            "chroot",
            "--network",
            "host",
            "--volume",
        ])
        .arg(format!("{}:/data", data.display()))
        .args([
            &container,
            "--",
            "/usr/local/bin/obr-relay",
            "--data-dir",
            "/data",
            "--demo-org",
        ])
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let outcome = (|| -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = ureq::get(format!("http://127.0.0.1:{port}/readyz"))
                .call()
                .ok()
                .map(|r| r.status().as_u16());
            if ready == Some(200) {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the image's relay never became ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let key = std::fs::metadata(data.join("cluster.key"))?;
        assert_eq!((key.uid(), key.mode() & 0o777), (NONROOT, 0o600));
        Ok(())
    })();
    // SIGTERM to the relay itself, as a container runtime sends it to its
    // first process (buildah would kill it rather than pass a signal on):
    // it drains and exits 0, and so does buildah.
    let listen = format!("127.0.0.1:{port}");
    if let Some(pid) = process_of("/usr/local/bin/obr-relay", &listen)? {
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = relay.try_wait()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = relay.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    outcome?;
    assert!(
        status.is_some_and(|s| s.success()),
        "the relay in the image exited with {status:?}"
    );
    let _ = buildah.run(&["rm", "--all"]);
    let _ = buildah.run(&["rmi", "--all", "--force"]);
    Ok(())
}

/// The process whose command line starts with `program` and names `arg`.
fn process_of(program: &str, arg: &str) -> anyhow::Result<Option<u32>> {
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.first() == Some(&program.as_bytes()) && args.contains(&arg.as_bytes()) {
            return Ok(Some(pid));
        }
    }
    Ok(None)
}
