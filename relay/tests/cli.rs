//! The `obr-relay` binary's edges: its help, and the clear errors an
//! operator gets for a bad configuration. (Also makes `cargo test
//! --workspace` build the binary that the cross-component tests start.)

use std::process::Command;

fn relay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_obr-relay"))
}

#[test]
fn help_lists_the_configuration() {
    let out = relay().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--data-dir",
        "--redis-url",
        "--signer",
        "--obr-ttl-s",
        "--demo-org",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn an_unusable_data_dir_is_a_clear_error() {
    let file = std::env::temp_dir().join(format!("obr-relay-cli-{}", std::process::id()));
    std::fs::write(&file, b"not a directory").unwrap();
    let out = relay()
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&file)
        .output()
        .unwrap();
    std::fs::remove_file(&file).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot create data directory"), "{err}");
}

#[test]
fn an_unreachable_redis_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("obr-relay-cli-redis-{}", std::process::id()));
    let out = relay()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--redis-url",
            &format!("redis://127.0.0.1:{port}/"),
        ])
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("session store unavailable"), "{err}");
}

#[test]
fn the_data_directory_and_databases_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("obr-relay-cli-files-{}", std::process::id()));
    let mut relay = relay()
        .args(["--listen", "127.0.0.1:0", "--demo-org", "--data-dir"])
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(relay.stdout.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("obr-relay listening") {
        line.clear();
        assert!(std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0);
    }
    let mode = |name: &str| {
        std::fs::metadata(dir.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    let modes = [
        (".", mode(".")),
        ("relay.db", mode("relay.db")),
        ("relay.db-wal", mode("relay.db-wal")),
        ("signer.db", mode("signer.db")),
        ("signer-kek.key", mode("signer-kek.key")),
        ("demo-org.json", mode("demo-org.json")),
    ];
    relay.kill().unwrap();
    relay.wait().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    for (name, found) in modes {
        let want = if name == "." { 0o700 } else { 0o600 };
        assert_eq!(found, want, "{name} is {found:o}");
    }
}
