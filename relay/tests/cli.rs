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
