//! The agent's tunnel over TLS: a relay serving `wss://` with a
//! certificate from a private CA (made here with the openssl CLI). An
//! agent given that CA (`--ca-file`) connects and is welcomed; one that
//! trusts only the public web PKI refuses the relay's certificate.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use obr_tests::processes::{AgentProc, Proc, binary};
use obr_tests::scratch::Scratch;

fn openssl(dir: &std::path::Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .context("openssl is not installed (.ci/run installs it)")?;
    if !out.status.success() {
        bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
fn make_certificates(dir: &std::path::Path) -> anyhow::Result<()> {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=obr test CA",
        "-days",
        "1",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    openssl(dir, &ca)?;
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "relay.key",
        "-out",
        "relay.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(dir, &csr)?;
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "relay.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "relay.pem",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ],
    )
}

#[test]
fn the_agent_connects_over_wss_to_a_relay_it_trusts() -> anyhow::Result<()> {
    let scratch = Scratch::new("tls")?;
    let certs = scratch.join("certs");
    std::fs::create_dir_all(&certs)?;
    make_certificates(&certs)?;

    let mut relay = Command::new(binary("obr-relay")?);
    relay
        .args(["--listen", "127.0.0.1:0", "--workers", "1"])
        .arg("--data-dir")
        .arg(scratch.join("relay"))
        .arg("--tls-cert")
        .arg(certs.join("relay.pem"))
        .arg("--tls-key")
        .arg(certs.join("relay.key"));
    let (_relay, addr) = Proc::spawn("relay", relay, "obr-relay listening on ")?;
    let url = format!("wss://{addr}");

    std::fs::create_dir_all(scratch.join("trusting"))?;
    let ca = certs.join("ca.pem");
    let trusting = AgentProc::start_with(
        &scratch.join("trusting"),
        &url,
        &["--ca-file", ca.to_str().context("path")?],
    )?;
    let status = trusting.wait_status(" [connected to wss://", Duration::from_secs(15))?;
    assert!(status.starts_with("not logged in"), "{status}");

    // Without the private CA the relay's certificate is refused.
    std::fs::create_dir_all(scratch.join("doubting"))?;
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
