//! The `obr-agent` binary's edges: help, and what a user is told when the
//! agent is not running or cannot take its sockets or its uhid device. (Also
//! makes `cargo test --workspace` build the binary that the cross-component
//! tests start.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a step that fails should stop the test, loudly"
)]

use std::path::PathBuf;
use std::process::{Command, Output};

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_obr-agent"))
}

/// A fresh directory for one test's control socket and state file.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("obr-agent-cli-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `obr-agent run --hid uhid --uhid-device <device>` against a relay that is not there; it
/// must fail before it gets that far.
fn run_uhid(dir: &std::path::Path, device: &std::path::Path) -> Output {
    agent()
        .arg("--control")
        .arg(dir.join("agent.ctl"))
        .args(["run", "--relay", "http://127.0.0.1:9", "--hid", "uhid"])
        .arg("--uhid-device")
        .arg(device)
        .arg("--state-file")
        .arg(dir.join("agent.json"))
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .output()
        .unwrap()
}

/// Fails cleanly (exit 1, no panic) and explains itself on stderr.
fn assert_refused(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("cannot start the agent"), "{err}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("obr-agent running"),
        "no ready line"
    );
    err
}

#[test]
fn help_lists_the_commands() {
    let out = agent().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for command in ["run", "login", "status", "back-to-normal"] {
        assert!(help.contains(command), "{command} missing from --help");
    }
}

#[test]
fn status_without_a_running_agent_says_so() {
    let out = agent()
        .args(["--control", "/nonexistent/obr-agent.ctl", "status"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is `obr-agent run` running?"), "{err}");
}

#[test]
fn an_unusable_hid_socket_path_is_a_clear_error() {
    let out = agent()
        .args([
            "--control",
            "/tmp/obr-agent-cli-test.ctl",
            "run",
            "--hid-socket",
            "/nonexistent/dir/hid.sock",
        ])
        .args([
            "--state-file",
            "/tmp/obr-agent-cli-test.json",
            "--relay",
            "http://127.0.0.1:9",
        ])
        .output()
        .unwrap();
    let _ = std::fs::remove_file("/tmp/obr-agent-cli-test.json");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot start the agent"), "{err}");
}

#[test]
fn run_help_lists_the_hid_backends() {
    let out = agent().args(["run", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--hid <HID>",
        "socket",
        "uhid",
        "--uhid-device",
        "/dev/uhid",
        "--uhid-serial",
    ] {
        assert!(help.contains(option), "{option} missing from run --help");
    }
}

#[test]
fn a_missing_uhid_device_says_to_load_the_module() {
    let dir = scratch("no-uhid");
    let out = run_uhid(&dir, "/nonexistent/uhid".as_ref());
    let err = assert_refused(&out);
    assert!(err.contains("/nonexistent/uhid"), "{err}");
    assert!(err.contains("sudo modprobe uhid"), "{err}");
    assert!(
        err.contains("deploy/modules-load.d/obr-agent.conf"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_uhid_device_that_is_a_file_or_a_directory_is_refused() {
    let dir = scratch("not-uhid");
    let file = dir.join("uhid");
    std::fs::write(&file, b"keep me").unwrap();
    for (device, found) in [(&file, "is a regular file"), (&dir, "is a directory")] {
        let out = run_uhid(&dir, device);
        let err = assert_refused(&out);
        assert!(err.contains(found), "{err}");
        assert!(err.contains("not the uhid character device"), "{err}");
        assert!(err.contains("--uhid-device"), "{err}");
    }
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"keep me",
        "nothing was written to the file"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_invalid_uhid_serial_is_a_usage_error() {
    let out = agent()
        .args(["run", "--hid", "uhid", "--uhid-serial", "has space"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("printable ASCII"), "{err}");
}

#[test]
fn a_remote_relay_over_plain_websocket_is_refused() {
    let dir = scratch("plaintext");
    let out = agent()
        .arg("--control")
        .arg(dir.join("agent.ctl"))
        .args(["run", "--relay", "http://relay.example.com:8080"])
        .arg("--hid-socket")
        .arg(dir.join("hid.sock"))
        .arg("--state-file")
        .arg(dir.join("agent.json"))
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("unencrypted") && err.contains("--insecure"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
