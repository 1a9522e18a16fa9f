//! A deployment without a PKI of its own: `obr-relay pki init` makes the
//! CAs and certificates, and with them every hop between components is
//! mutual TLS — relay⇄signer, and relays and signers on a `rediss://`
//! Redis that checks client certificates (each also an ACL user) — and an
//! on-behalf registration goes through all of it. A relay that does not
//! trust the Redis CA, has no client certificate for it, or speaks plain
//! Redis to it, does not start; the signer's certificate cannot pose as a
//! relay, and no certificate of one trust domain chains in the other.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use obr_tests::hid_client::HidClient;
use obr_tests::processes::{RelayOptions, SignerProc, admin_at_agent, binary};
use obr_tests::redis_server::{NO_DEFAULT_USER, RedisServer, RedisTls, acl_user};
use obr_tests::rp;
use obr_tests::scratch::Scratch;

const CTAP2_OK: u8 = 0x00;

fn pki_init(dir: &Path) -> anyhow::Result<String> {
    let out = Command::new(binary("obr-relay")?)
        .args([
            "pki",
            "init",
            "--host",
            "127.0.0.1",
            "--host",
            "localhost",
            "--dir",
        ])
        .arg(dir)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "pki init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// `obr-relay` with `args` that must fail at start; returns its stderr.
fn relay_refuses(data_dir: &Path, args: &[&std::ffi::OsStr]) -> anyhow::Result<String> {
    let out = Command::new(binary("obr-relay")?)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .output()?;
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("[refused relay] {said}");
    anyhow::ensure!(!out.status.success(), "the relay started: {said}");
    Ok(said)
}

#[test]
fn a_generated_pki_secures_every_hop() -> anyhow::Result<()> {
    let scratch = Scratch::new("deployment-pki")?;
    let pki = scratch.join("pki");
    let made = pki_init(&pki)?;
    assert_eq!(made.matches("created").count(), 12, "{made}");
    // Idempotent; a lost leaf is issued again by the same CA (the
    // registration below uses the reissued relay certificate).
    std::fs::remove_file(pki.join("relay.pem"))?;
    let again = pki_init(&pki)?;
    assert_eq!(again.matches("created").count(), 2, "{again}");
    let kept_ca = format!("kept    {}", pki.join("ca.pem").display());
    assert!(again.lines().any(|l| l == kept_ca), "{again}");
    // Two trust domains: a Redis certificate is no signer's, and back.
    for (ca, cert, chains) in [
        ("ca.pem", "signer.pem", true),
        ("ca.pem", "relay.pem", true),
        ("redis-ca.pem", "redis.pem", true),
        ("redis-ca.pem", "redis-client.pem", true),
        ("ca.pem", "redis.pem", false),
        ("ca.pem", "redis-client.pem", false),
        ("redis-ca.pem", "signer.pem", false),
        ("redis-ca.pem", "relay.pem", false),
    ] {
        let verified = Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(pki.join(ca))
            .arg(pki.join(cert))
            .output()?
            .status
            .success();
        assert_eq!(verified, chains, "{cert} under {ca}");
    }
    let file = |name: &str| pki.join(name).into_os_string();

    let redis = RedisServer::start_tls(
        &RedisTls {
            cert: &pki.join("redis.pem"),
            key: &pki.join("redis.key"),
            ca: &pki.join("redis-ca.pem"),
        },
        &[
            &NO_DEFAULT_USER[..],
            &acl_user("obr-signer", ">signer-secret"),
            &acl_user("obr-relay", ">relay-secret"),
        ]
        .concat(),
    )?
    .expect("redis-server is not installed (scripts/test installs it)");
    assert!(redis.url().starts_with("rediss://"));
    let rediss = |user: &str| format!("rediss://{user}@127.0.0.1:{}/", redis.port);

    // Both relay and signer reach Redis with the Redis CA and the client
    // certificate it issued.
    let redis_tls = [
        "--redis-ca".into(),
        file("redis-ca.pem"),
        "--redis-client-cert".into(),
        file("redis-client.pem"),
        "--redis-client-key".into(),
        file("redis-client.key"),
    ];
    let signer_args = [
        &[
            "--tls-cert".into(),
            file("signer.pem"),
            "--tls-key".into(),
            file("signer.key"),
            "--client-ca".into(),
            file("ca.pem"),
            "--redis-url".into(),
            rediss("obr-signer:signer-secret").into(),
        ][..],
        &redis_tls,
    ]
    .concat();
    let signer_args: Vec<&std::ffi::OsStr> = signer_args.iter().map(|a| a.as_os_str()).collect();
    let signer = SignerProc::start_with(&scratch.join("signer"), &signer_args)?;

    let relay_tls: Vec<std::ffi::OsString> = [
        &redis_tls[..],
        &[
            "--signer-ca".into(),
            file("ca.pem"),
            "--signer-client-cert".into(),
            file("relay.pem"),
            "--signer-client-key".into(),
            file("relay.key"),
        ][..],
    ]
    .concat();
    let options = RelayOptions {
        redis_url: Some(rediss("obr-relay:relay-secret")),
        discover_signers: true,
        extra_args: relay_tls,
        ..RelayOptions::default()
    };
    let (relay, agent, api, admin) = admin_at_agent(&scratch, &options)?;
    let bob = relay.user("bob@demo.obr")?;
    agent.select_as_obr(&api, &admin, bob)?;
    let mut hid = HidClient::open(&agent.hid_socket)?;
    assert_eq!(
        hid.cbor(&rp::registration_request("bob")?)?.first(),
        Some(&CTAP2_OK)
    );
    assert_eq!(api.passkeys(&admin, &bob.id)?.len(), 1);

    // The signer advertised itself over rediss:// as an https:// endpoint.
    let https = signer.endpoint.replace("http://", "https://");
    let members = tokio::runtime::Runtime::new()?.block_on(async {
        let client = obr_signer::RedisEndpoint {
            ca_file: Some(pki.join("redis-ca.pem")),
            client_cert_file: Some(pki.join("redis-client.pem")),
            client_key_file: Some(pki.join("redis-client.key")),
            ..obr_signer::RedisEndpoint::new(rediss("obr-signer:signer-secret"))
        }
        .client()?;
        let mut conn = client.get_connection_manager().await?;
        anyhow::Ok(obr_signer::placement::live_members(&mut conn, "obr:").await?)
    })?;
    assert_eq!(members, vec![https.clone()]);

    // Refused at start: plain Redis to the TLS port, rediss:// without the
    // Redis CA (the system's roots do not know it), and without a client
    // certificate.
    let plain = format!("redis://127.0.0.1:{}/", redis.port);
    let said = relay_refuses(
        &scratch.join("plain"),
        &["--redis-url".as_ref(), plain.as_ref()],
    )?;
    assert!(said.to_lowercase().contains("session store"), "{said}");
    let said = relay_refuses(
        &scratch.join("untrusting"),
        &[
            "--redis-url".as_ref(),
            rediss("obr-relay:relay-secret").as_ref(),
        ],
    )?;
    assert!(said.to_lowercase().contains("certificate"), "{said}");
    let redis_ca = file("redis-ca.pem");
    let said = relay_refuses(
        &scratch.join("anonymous"),
        &[
            "--redis-url".as_ref(),
            rediss("obr-relay:relay-secret").as_ref(),
            "--redis-ca".as_ref(),
            redis_ca.as_os_str(),
        ],
    )?;
    assert!(said.to_lowercase().contains("session store"), "{said}");

    // Only the relays' certificate is a relay: the signers' (for serving
    // only) and the Redis clients' (another CA) are refused, so neither a
    // stolen signer key nor a Redis client's makes a relay.
    let signer_as = |stem: &str| -> anyhow::Result<usize> {
        tokio::runtime::Runtime::new()?.block_on(async {
            let tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(
                    pki.join("ca.pem"),
                )?))
                .identity(tonic::transport::Identity::from_pem(
                    std::fs::read(pki.join(format!("{stem}.pem")))?,
                    std::fs::read(pki.join(format!("{stem}.key")))?,
                ));
            let channel = tonic::transport::Endpoint::from_shared(https.clone())?
                .connect_timeout(Duration::from_secs(3))
                .tls_config(tls)?
                .connect()
                .await?;
            let listed = obr_proto::signer::signer_client::SignerClient::new(channel)
                .list_credentials(obr_proto::signer::ListCredentialsRequest {
                    user_id: bob.id.clone(),
                })
                .await?;
            anyhow::Ok(listed.into_inner().credentials.len())
        })
    };
    assert_eq!(signer_as("relay")?, 1);
    for stem in ["signer", "redis-client"] {
        let said = match signer_as(stem) {
            Ok(listed) => panic!("{stem} was served as a relay ({listed} credentials listed)"),
            Err(e) => format!("{e:#}"),
        };
        eprintln!("[{stem} as a relay] {said}");
        assert!(said.contains("transport error"), "{stem}: {said}");
    }
    assert_eq!(api.passkeys(&admin, &bob.id)?.len(), 1);
    Ok(())
}
