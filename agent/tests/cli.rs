//! The `obr-agent` binary's edges: help, and what a user is told when the
//! agent is not running or cannot take its sockets. (Also makes `cargo
//! test --workspace` build the binary that the cross-component tests start.)

use std::process::Command;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_obr-agent"))
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
