//! The agent's tunnel over TLS: a relay serving `wss://` with a
//! certificate from a private CA (made here with the openssl CLI). An
//! agent given that CA (`--ca-file`) connects and is welcomed; one that
//! trusts only the public web PKI refuses the relay's certificate.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use obr_tests::pki::{TestCa, Usage};
use obr_tests::processes::{AgentProc, Proc, binary};
use obr_tests::scratch::Scratch;

#[test]
fn the_agent_connects_over_wss_to_a_relay_it_trusts() -> anyhow::Result<()> {
    let scratch = Scratch::new("tls")?;
    let ca = TestCa::create(&scratch.join("certs"), "relay")?;
    let (relay_cert, relay_key) = ca.issue("relay", Usage::Server)?;

    let mut relay = Command::new(binary("obr-relay")?);
    relay
        .args(["--listen", "127.0.0.1:0", "--workers", "1"])
        .arg("--data-dir")
        .arg(scratch.join("relay"))
        .arg("--tls-cert")
        .arg(&relay_cert)
        .arg("--tls-key")
        .arg(&relay_key);
    let (_relay, addr) = Proc::spawn("relay", relay, "obr-relay listening on ")?;
    let url = format!("wss://{addr}");

    let ca = ca.cert();
    let trusting = AgentProc::start_with(
        &scratch.join("trusting"),
        &url,
        &["--ca-file", ca.to_str().context("path")?],
    )?;
    let status = trusting.wait_status(" [connected to wss://", Duration::from_secs(15))?;
    assert!(status.starts_with("not logged in"), "{status}");

    // Without the private CA the relay's certificate is refused.
    let doubting = AgentProc::start(&scratch.join("doubting"), &url)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let status: serde_json::Value =
            serde_json::from_str(&doubting.cli(&["status", "--json"])?)?;
        let error = status["last_error"].as_str().unwrap_or_default().to_owned();
        assert_eq!(
            status["connected"], false,
            "connected without trusting the CA"
        );
        if error.to_lowercase().contains("certificate") || error.contains("UnknownIssuer") {
            break;
        }
        if std::time::Instant::now() > deadline {
            bail!("no certificate error reported: {status}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
