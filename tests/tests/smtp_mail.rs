//! Invitations by SMTP, through the real relay and a real SMTP server on
//! this machine (aiosmtpd, from PyPI, in the tests' venv; it stands for
//! the organisation's mail server and speaks RFC 5321): the mail reaches
//! the user with the link that accepts; a mail server that is down leaves
//! the user invited with a clear 503, and the invitation is sent again
//! once it is back; a password over plain SMTP to another host is refused
//! at start.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use obr_tests::api::Api;
use obr_tests::processes::{RelayOptions, RelayProc, binary};
use obr_tests::python;
use obr_tests::scratch::Scratch;
use serde_json::json;

/// aiosmtpd on `port`, delivering into the Maildir `maildir`.
struct MailServer(Child);

impl MailServer {
    fn start(python: &Path, port: u16, maildir: &Path) -> anyhow::Result<Self> {
        let child = Command::new(python)
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "aiosmtpd did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Self(child))
    }
}

impl Drop for MailServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The messages in `maildir` to `to` (waiting up to 10 s for one).
fn mail_to(maildir: &Path, to: &str) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = std::fs::read_dir(maildir.join("new"))
            .into_iter()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .find(|m| m.lines().any(|l| l == format!("To: {to}")));
        if let Some(mail) = found {
            return Ok(mail);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no mail to {to} in {}",
            maildir.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The invitation token in `mail`, its body read as quoted-printable
/// (RFC 2045 §6.7: soft line breaks, `=3D`), as a mail client reads it.
fn invitation_in(mail: &str) -> anyhow::Result<String> {
    let mail = mail
        .replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=");
    mail.split("/app/#invite=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no invitation link in {mail}"))
}

#[test]
fn invitations_go_out_by_smtp() -> anyhow::Result<()> {
    let python = python::venv_python()?;
    let scratch = Scratch::new("smtp")?;
    let maildir: PathBuf = scratch.join("maildir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let server = MailServer::start(&python, port, &maildir)?;
    let options = RelayOptions {
        extra_args: vec![
            "--smtp-url".into(),
            format!("smtp://127.0.0.1:{port}").into(),
            "--mail-from".into(),
            "IT desk <it@demo.obr>".into(),
        ],
        ..RelayOptions::default()
    };
    let relay = RelayProc::start(&scratch.join("relay"), &options)?;
    let api = Api::new(&relay.url);
    let owner = api.demo_owner(&relay.demo)?;
    let invite = |email: &str| {
        api.call(
            "POST",
            "/api/users",
            Some(&owner),
            Some(json!({ "email": email, "display_name": email })),
        )
    };

    assert_eq!(invite("zoe@demo.obr")?.status, 201);
    let mail = mail_to(&maildir, "zoe@demo.obr")?;
    assert!(mail.contains("From: \"IT desk\" <it@demo.obr>"), "{mail}");
    let accepted = api
        .call(
            "POST",
            "/api/invitations/accept",
            None,
            Some(json!({ "token": invitation_in(&mail)? })),
        )?
        .ok()?;
    assert_eq!(accepted["user"]["key_status"], "active");
    assert!(
        !scratch.join("relay").join("outbox").exists(),
        "mail also went to the outbox"
    );

    // The mail server is down: the user is invited, the admin told how to
    // send it again; once it is back, it goes out.
    drop(server);
    let down = invite("yann@demo.obr")?;
    assert_eq!(down.status, 503, "{}", down.body);
    let says = down.body["message"].as_str().unwrap_or_default().to_owned();
    assert!(says.contains("could not be sent"), "{says}");
    let again = says
        .split_whitespace()
        .find(|w| w.starts_with("/api/users/"))
        .ok_or_else(|| anyhow::anyhow!("no path in {says}"))?
        .trim_end_matches(|c: char| !c.is_alphanumeric())
        .to_owned();
    // An import while it is down: everyone invited, no one mailed, each
    // row says so; the import does not wait on a mail server per row.
    let report = api
        .post_text(
            "/api/users/import",
            &owner,
            "text/csv",
            "email,display_name\numa@demo.obr,Uma\nvic@demo.obr,Vic\n",
        )?
        .ok()?;
    assert_eq!(report["invited"], 2, "{report}");
    let statuses: Vec<&str> = report["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["status"].as_str())
        .collect();
    assert_eq!(
        statuses,
        ["invited_not_mailed", "invited_not_mailed"],
        "{report}"
    );
    assert!(
        report["rows"][1]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("an earlier mail of this import failed"),
        "{report}"
    );
    let _server = MailServer::start(&python, port, &maildir)?;
    api.call("POST", &again, Some(&owner), None)?.ok()?;
    let mail = mail_to(&maildir, "yann@demo.obr")?;
    let accepted = api
        .call(
            "POST",
            "/api/invitations/accept",
            None,
            Some(json!({ "token": invitation_in(&mail)? })),
        )?
        .ok()?;
    assert_eq!(accepted["user"]["key_status"], "active");
    let twice = api.call("POST", &again, Some(&owner), None)?;
    assert_eq!(
        twice.status, 409,
        "an active key has no invitation: {}",
        twice.body
    );

    // A password in clear to another host: the relay does not start.
    let refused = Command::new(binary("obr-relay")?)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(scratch.join("relay-refused"))
        .args(["--smtp-url", "smtp://it:secret@mail.example.com:25"])
        .output()?;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("unencrypted"), "{stderr}");
    Ok(())
}
