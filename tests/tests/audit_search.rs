//! The audit log as an auditor or a SIEM reads it, through the real relay:
//! filters by actor, subject, action (or a family of actions), relying
//! party and time; an export as JSON lines with exactly the records the
//! same filters select, itself audited; and a query that does not parse is
//! a 400 that says why. Then the audit webhook: every record reaches the
//! organisation's HTTPS receiver (a local actix-web server here, verifying
//! as `relay/src/audit_webhook.rs` tells receivers to), signed, in order,
//! through an outage; an impostor receiver gets nothing; a database writer
//! who takes the delivery lease is overruled, and one who moves the cursor
//! leaves a hole, or a head ahead of the records, that the receiver sees.

use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use obr_tests::api::Api;
use obr_tests::database_writer::{read_i64, write_db};
use obr_tests::hid_client::HidClient;
use obr_tests::pki::{TestCa, Usage};
use obr_tests::processes::{RelayOptions, RelayProc, admin_at_agent, binary};
use obr_tests::rp;
use obr_tests::scratch::Scratch;
use serde_json::{Value, json};

const CTAP2_OK: u8 = 0x00;

#[test]
fn auditors_filter_and_export_the_audit_log() -> anyhow::Result<()> {
    let scratch = Scratch::new("audit-search")?;
    let (relay, agent, api, admin) = admin_at_agent(&scratch, &RelayOptions::default())?;
    let demo = &relay.demo;
    let bob = relay.user("bob@demo.obr")?;
    agent.select_as_obr(&api, &admin, bob)?;
    let mut hid = HidClient::open(&agent.hid_socket)?;
    assert_eq!(
        hid.cbor(&rp::registration_request("bob")?)?.first(),
        Some(&CTAP2_OK)
    );
    let agents = api.call("GET", "/api/agents", Some(&admin), None)?.ok()?;
    api.end_obr(&admin, agents[0]["agent_id"].as_str().unwrap_or_default())?
        .ok()?;
    let helpdesk = api.demo_helpdesk(demo)?;

    let search = |query: &str| -> anyhow::Result<Vec<Value>> {
        let answer = api
            .call("GET", &format!("/api/audit?{query}"), Some(&helpdesk), None)?
            .ok()?;
        Ok(answer["records"].as_array().cloned().unwrap_or_default())
    };
    let all = search("")?;
    let registered = search(&format!("rp_id={}", rp::RP_ID))?;
    assert_eq!(registered.len(), 1, "{registered:?}");
    assert_eq!(registered[0]["action"], "obr.registration");
    let obr_family = search("action=obr&subject=bob%40demo.obr")?;
    let actions: Vec<&str> = obr_family
        .iter()
        .filter_map(|r| r["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        ["obr.started", "obr.registration", "obr.ended"],
        "{obr_family:?}"
    );
    let by_admin = search("actor=admin%40demo.obr")?;
    assert!(by_admin.iter().all(|r| r["actor"] == "admin@demo.obr"));
    assert!(by_admin.len() < all.len());
    let started_at = obr_family[0]["at_ms"].as_i64().unwrap_or_default();
    let since = search(&format!("since_ms={started_at}"))?;
    assert!(
        since
            .iter()
            .all(|r| r["at_ms"].as_i64() >= Some(started_at))
    );
    assert!(search(&format!("until_ms={started_at}&action=obr.registration"))?.is_empty());
    assert!(
        !search(&format!("until_ms={started_at}&action=obr"))?.is_empty(),
        "obr.ready came before"
    );

    // The export: the same records as JSON lines.
    let export = api.call("GET", "/api/audit/export?action=obr", Some(&helpdesk), None)?;
    assert_eq!(export.status, 200);
    let text = export.body.as_str().unwrap_or_default().to_owned();
    let lines: Vec<Value> = text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let obr_all = search("action=obr")?;
    assert_eq!(lines, obr_all);
    let exported = search("action=audit.exported")?;
    assert_eq!(exported.len(), 1);
    assert_eq!(exported[0]["actor"], demo.helpdesk.email.as_str());

    // Questions that do not parse.
    for bad in ["since_ms=yesterday", "colour=red", "limit=many"] {
        let answer = api.call("GET", &format!("/api/audit?{bad}"), Some(&helpdesk), None)?;
        assert_eq!(answer.status, 400, "{bad}: {}", answer.body);
        assert!(
            answer.body["message"]
                .as_str()
                .unwrap_or_default()
                .contains("invalid query")
        );
    }
    Ok(())
}

/// What the test's receiver saw.
#[derive(Default)]
struct Received {
    /// Requests that reached the handler at all.
    posts: usize,
    /// Batches whose MAC or time did not verify.
    forged: usize,
    /// Records stored, in the order they came (each `seq` once).
    records: Vec<Value>,
    /// Records whose `prev_hash` was not the last stored `hash`.
    holes: usize,
    /// The newest `head.seq` a batch named.
    head: i64,
    /// Batches without records.
    heartbeats: usize,
    /// Answer this instead of storing (an outage).
    fail_with: Option<u16>,
}

/// The organisation's receiver: HTTPS on 127.0.0.1, checking each batch
/// as the relay's documentation tells receivers to.
struct Receiver {
    url: String,
    seen: Arc<Mutex<Received>>,
    handle: actix_web::dev::ServerHandle,
}

impl Receiver {
    fn start(secret: &[u8], cert: &Path, key: &Path) -> anyhow::Result<Self> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, PrivateKeyDer::from_pem_file(key)?)?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("https://127.0.0.1:{}/hook", listener.local_addr()?.port());
        let seen = Arc::new(Mutex::new(Received::default()));
        let shared = (
            ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
            seen.clone(),
        );
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(web::Data::new(shared.clone()))
                        .route("/hook", web::post().to(receive))
                })
                .workers(1)
                .listen_rustls_0_23(listener, tls)?
                .run();
                let _ = tx.send(server.handle());
                server.await
            })
        });
        let handle = rx.recv_timeout(Duration::from_secs(10))?;
        Ok(Self { url, seen, handle })
    }

    fn seen<T>(&self, f: impl FnOnce(&mut Received) -> T) -> T {
        f(&mut self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Wait until the receiver holds every record up to `seq`.
    fn wait_for(&self, seq: i64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.seen(|s| s.records.last().and_then(|r| r["seq"].as_i64())) < Some(seq) {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the receiver has {} records, waited for {seq}",
                self.seen(|s| s.records.len())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

type Shared = (ring::hmac::Key, Arc<Mutex<Received>>);

async fn receive(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let (key, seen) = shared.get_ref();
    let mut seen = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    seen.posts += 1;
    let signature = req
        .headers()
        .get("obr-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let verified = signature
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
        .and_then(|(t, mac)| Some((t, t.parse::<i64>().ok()?, hex_decode(mac)?)))
        .filter(|(_, t, _)| (t - unix_now()).abs() <= 300)
        .is_some_and(|(t, _, mac)| {
            let signed = [t.as_bytes(), b".", &body].concat();
            ring::hmac::verify(key, &signed, &mac).is_ok()
        });
    if !verified {
        seen.forged += 1;
        return HttpResponse::Unauthorized().finish();
    }
    if let Some(status) = seen.fail_with {
        return HttpResponse::build(
            actix_web::http::StatusCode::from_u16(status).unwrap_or_default(),
        )
        .finish();
    }
    let batch: Value = serde_json::from_slice(&body).unwrap_or_default();
    seen.head = seen
        .head
        .max(batch["head"]["seq"].as_i64().unwrap_or_default());
    let records = batch["records"].as_array().cloned().unwrap_or_default();
    if records.is_empty() {
        seen.heartbeats += 1;
    }
    for record in records {
        let last = seen.records.last().cloned();
        // Delivery is at least once: a record already held is dropped.
        if last.as_ref().and_then(|r| r["seq"].as_i64()) >= record["seq"].as_i64() {
            continue;
        }
        if last.is_some_and(|last| last["hash"] != record["prev_hash"]) {
            seen.holes += 1;
        }
        seen.records.push(record);
    }
    HttpResponse::NoContent().finish()
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

/// The newest record's `seq`, as the owner reads the log.
fn head(api: &Api, owner: &str) -> anyhow::Result<i64> {
    let mut after = 0;
    loop {
        let page = api
            .call(
                "GET",
                &format!("/api/audit?after={after}"),
                Some(owner),
                None,
            )?
            .ok()?;
        match page["records"].as_array().and_then(|r| r.last()) {
            Some(last) => after = last["seq"].as_i64().unwrap_or_default(),
            None => return Ok(after),
        }
    }
}

fn invite(api: &Api, owner: &str, email: &str) -> anyhow::Result<()> {
    api.call(
        "POST",
        "/api/users",
        Some(owner),
        Some(json!({ "email": email, "display_name": email })),
    )?
    .ok()?;
    Ok(())
}

#[test]
fn the_audit_log_reaches_the_webhook_signed_and_in_order() -> anyhow::Result<()> {
    let scratch = Scratch::new("audit-webhook")?;
    let ca = TestCa::create(&scratch.join("pki"), "siem")?;
    let (cert, key) = ca.issue("siem", Usage::Server)?;
    let secret = b"0123456789abcdef0123456789abcdef-webhook";
    let secret_file = scratch.join("webhook.secret");
    std::fs::write(&secret_file, secret)?;
    let receiver = Receiver::start(secret, &cert, &key)?;
    let options = RelayOptions {
        extra_args: vec![
            "--audit-webhook-url".into(),
            receiver.url.clone().into(),
            "--audit-webhook-secret-file".into(),
            secret_file.clone().into(),
            "--audit-webhook-ca".into(),
            ca.cert().into(),
            "--audit-webhook-heartbeat-s".into(),
            "1".into(),
        ],
        ..RelayOptions::default()
    };
    let relay = RelayProc::start(&scratch.join("relay"), &options)?;
    let database = scratch.join("relay").join(obr_relay::DIRECTORY_FILE);
    let cursor = || read_i64(&database, "SELECT delivered_seq FROM audit_webhook_cursor");
    let api = Api::new(&relay.url);
    let owner = api.demo_owner(&relay.demo)?;

    // Everything so far — the demo's seeding, the owner's sign-in — arrives
    // signed, in order, exactly as the log holds it.
    let now = head(&api, &owner)?;
    receiver.wait_for(now)?;
    let log = api.call("GET", "/api/audit", Some(&owner), None)?.ok()?;
    let log = log["records"].as_array().cloned().unwrap_or_default();
    receiver.seen(|seen| {
        assert_eq!(seen.forged, 0);
        assert_eq!(seen.holes, 0);
        assert!(seen.records.len() >= log.len());
        assert_eq!(seen.records[..log.len()], log[..]);
        let seqs: Vec<i64> = seen
            .records
            .iter()
            .filter_map(|r| r["seq"].as_i64())
            .collect();
        assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    });

    // The receiver is down: nothing is lost, the relay keeps trying, and
    // everything arrives once it is back.
    receiver.seen(|seen| seen.fail_with = Some(503));
    let (had, tries) = receiver.seen(|seen| (seen.records.len(), seen.posts));
    for n in 0..3 {
        invite(&api, &owner, &format!("outage{n}@demo.obr"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.seen(|seen| seen.posts) < tries + 2 {
        anyhow::ensure!(Instant::now() < deadline, "the relay stopped trying");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(receiver.seen(|seen| seen.records.len()), had);
    receiver.seen(|seen| seen.fail_with = None);
    let now = head(&api, &owner)?;
    receiver.wait_for(now)?;
    receiver.seen(|seen| {
        assert_eq!((seen.holes, seen.forged), (0, 0));
        let seqs: Vec<i64> = seen
            .records
            .iter()
            .filter_map(|r| r["seq"].as_i64())
            .collect();
        assert_eq!(
            seqs,
            (1..=now).collect::<Vec<_>>(),
            "every record, in order"
        );
    });

    // A database writer takes the lease for a relay that does not exist,
    // for ever: no honest lease is that long, so the relay takes it back.
    write_db(
        &database,
        "UPDATE audit_webhook_cursor SET holder = 'nobody', lease_until_ms = 9000000000000000",
        &[],
    )?;
    invite(&api, &owner, "after-takeover@demo.obr")?;
    let now = head(&api, &owner)?;
    receiver.wait_for(now)?;

    // A writer moves the cursor past records to come, so that they are
    // never sent: the receiver sees the hole in the chain.
    let deadline = Instant::now() + Duration::from_secs(10);
    while cursor()? != Some(now) {
        anyhow::ensure!(Instant::now() < deadline, "the cursor did not reach {now}");
        std::thread::sleep(Duration::from_millis(20));
    }
    write_db(
        &database,
        "UPDATE audit_webhook_cursor SET delivered_seq = delivered_seq + 2",
        &[],
    )?;
    for n in 0..3 {
        invite(&api, &owner, &format!("hidden{n}@demo.obr"))?;
    }
    let after = head(&api, &owner)?;
    receiver.wait_for(after)?;
    receiver.seen(|seen| {
        let seqs: Vec<i64> = seen
            .records
            .iter()
            .filter_map(|r| r["seq"].as_i64())
            .collect();
        assert!(!seqs.contains(&(now + 1)) && !seqs.contains(&(now + 2)));
        assert!(seqs.contains(&(now + 3)));
        assert_eq!(seen.holes, 1, "the skipped records show as a hole");
    });

    // A writer moves the cursor past the end of the log: nothing more is
    // sent, but every heartbeat names the log's head, which runs ahead.
    write_db(
        &database,
        "UPDATE audit_webhook_cursor SET delivered_seq = 1000000000",
        &[],
    )?;
    invite(&api, &owner, "silenced@demo.obr")?;
    let silenced = head(&api, &owner)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.seen(|seen| seen.head) < silenced {
        anyhow::ensure!(Instant::now() < deadline, "no heartbeat named the new head");
        std::thread::sleep(Duration::from_millis(50));
    }
    receiver.seen(|seen| {
        assert!(seen.heartbeats > 0);
        assert!(seen.records.last().and_then(|r| r["seq"].as_i64()) < Some(silenced));
        assert_eq!(seen.forged, 0);
    });
    Ok(())
}

#[test]
fn an_impostor_receiver_gets_nothing_and_plain_http_is_refused() -> anyhow::Result<()> {
    let scratch = Scratch::new("audit-webhook-impostor")?;
    // The impostor has a certificate for the address, from its own CA.
    let theirs = TestCa::create(&scratch.join("theirs"), "impostor")?;
    let (cert, key) = theirs.issue("impostor", Usage::Server)?;
    let ours = TestCa::create(&scratch.join("ours"), "siem")?;
    let secret_file = scratch.join("webhook.secret");
    std::fs::write(&secret_file, [b's'; 40])?;
    let impostor = Receiver::start(&[b's'; 40], &cert, &key)?;
    let options = RelayOptions {
        extra_args: vec![
            "--audit-webhook-url".into(),
            impostor.url.clone().into(),
            "--audit-webhook-secret-file".into(),
            secret_file.clone().into(),
            "--audit-webhook-ca".into(),
            ours.cert().into(),
        ],
        ..RelayOptions::default()
    };
    let mut relay = RelayProc::start(&scratch.join("relay"), &options)?;
    let api = Api::new(&relay.url);
    let owner = api.demo_owner(&relay.demo)?;
    invite(&api, &owner, "carlos@demo.obr")?;
    // The relay tried, and refused the impostor's certificate.
    let refused = relay
        .proc
        .wait_for_line_containing("audit webhook delivery failed", Duration::from_secs(10))?;
    assert!(refused.contains("certificate"), "{refused}");
    assert_eq!(
        impostor.seen(|seen| seen.posts),
        0,
        "no record left the relay"
    );

    // The log in clear to another host is a configuration error.
    let mut plain = std::process::Command::new(binary("obr-relay")?)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(scratch.join("plain"))
        .args([
            "--audit-webhook-url",
            "http://siem.example/hook?token=s3cret",
        ])
        .arg("--audit-webhook-secret-file")
        .arg(&secret_file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = plain.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = plain.kill();
            anyhow::bail!("a relay told to post the log in clear started");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut stderr = String::new();
    if let Some(mut pipe) = plain.stderr.take() {
        std::io::Read::read_to_string(&mut pipe, &mut stderr)?;
    }
    assert!(stderr.contains("plain http to another host"), "{stderr}");
    assert!(
        !stderr.contains("s3cret"),
        "the URL's token in an error: {stderr}"
    );
    Ok(())
}
