//! No credential without its record, under load: 16 browsers (CTAPHID
//! channels) register at once on one OBR session, several rounds, with the
//! relay's directory on SQLite and the user's key on SQLite (embedded
//! signer) or on PostgreSQL (a standalone signer), and with two relays
//! sharing one directory and one Redis. Every registration the RP verified
//! has its passkey on the key, its `obr.registration` audit record and the
//! user's notification — and no passkey exists without them.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use obr_tests::api::Api;
use obr_tests::hid_client::HidClient;
use obr_tests::postgres::TempPostgres;
use obr_tests::processes::{AgentProc, RelayOptions, RelayProc, SignerProc};
use obr_tests::rp;
use obr_tests::scratch::Scratch;
use webauthn_rs::prelude::Uuid;

const CLIENTS: usize = 16;
const ROUNDS: usize = 3;

fn registrations_all_recorded(relay: &RelayProc, agent: &AgentProc) -> anyhow::Result<()> {
    let api = Api::new(&relay.url);
    let bob = relay.user("bob@demo.obr")?;
    let admin = api.demo_owner(&relay.demo)?;
    agent.login(&api, &admin)?;
    agent.select_as_obr(&api, &admin, bob)?;
    let registered = register_at_once(&agent.hid_socket)?;
    all_on_record(&api, &admin, bob, &registered)
}

/// What [`CLIENTS`] browsers × [`ROUNDS`] registering through the agent
/// whose HID socket is `hid_socket` got:
/// the credential ids the RP verified, and any other answer.
struct Registered {
    verified: BTreeSet<String>,
    refused: Vec<Vec<u8>>,
}

fn register_at_once(hid_socket: &std::path::Path) -> anyhow::Result<Registered> {
    let mut registered = Registered {
        verified: BTreeSet::new(),
        refused: Vec::new(),
    };
    for _ in 0..ROUNDS {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let socket = hid_socket.to_owned();
                std::thread::spawn(move || -> anyhow::Result<Result<String, Vec<u8>>> {
                    let webauthn = rp::webauthn()?;
                    let (options, state) = webauthn.start_securitykey_registration(
                        Uuid::new_v4(),
                        &format!("account-{i}"),
                        "Account",
                        None,
                        None,
                        None,
                    )?;
                    let request = rp::make_credential(&options, false)?;
                    let mut hid = HidClient::open(&socket)?;
                    let response = hid.cbor(&request.ctap_request)?;
                    if response.first() != Some(&0) {
                        return Ok(Err(response));
                    }
                    let key = webauthn
                        .finish_securitykey_registration(&request.credential(&response)?, &state)?;
                    Ok(Ok(URL_SAFE_NO_PAD.encode(key.cred_id())))
                })
            })
            .collect();
        for client in clients {
            match client.join().expect("client thread")? {
                Ok(id) => {
                    registered.verified.insert(id);
                }
                Err(status) => registered.refused.push(status),
            }
        }
    }
    Ok(registered)
}

/// Every one of `user`'s passkeys is one the RP verified, audited and
/// notified to them, and every verified one is there.
fn all_on_record(
    api: &Api,
    admin: &str,
    user: &obr_relay::demo::DemoUser,
    registered: &Registered,
) -> anyhow::Result<()> {
    let Registered { verified, refused } = registered;
    let on_key: BTreeSet<String> = api
        .passkeys(admin, &user.id)?
        .iter()
        .filter_map(|p| p["credential_id"].as_str().map(str::to_owned))
        .collect();
    let audited: BTreeSet<String> = api.audit(admin)?["records"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["action"] == "obr.registration" && r["subject"] == user.email.as_str())
        .filter_map(|r| r["detail"]["credential_id"].as_str().map(str::to_owned))
        .collect();
    let notified: BTreeSet<String> = api
        .notifications(user.device_token.as_deref().unwrap_or_default())?
        .iter()
        .filter(|n| n["kind"] == "obr.registration")
        .filter_map(|n| n["detail"]["credential_id"].as_str().map(str::to_owned))
        .collect();
    eprintln!(
        "{}: {} verified, {} refused, {} on the key, {} audited, {} notified",
        user.email,
        verified.len(),
        refused.len(),
        on_key.len(),
        audited.len(),
        notified.len()
    );
    assert!(
        refused.is_empty(),
        "refused under ordinary load: {refused:?}"
    );
    assert_eq!(verified.len(), CLIENTS * ROUNDS);
    assert_eq!(&on_key, verified, "passkeys on the key vs verified");
    assert_eq!(&audited, verified, "audit records vs verified");
    assert_eq!(&notified, verified, "notifications vs verified");
    Ok(())
}

#[test]
fn sixteen_registrations_at_once_all_recorded_on_sqlite() -> anyhow::Result<()> {
    let scratch = Scratch::new("load-sqlite")?;
    let relay = RelayProc::start(&scratch.join("relay"), &RelayOptions::default())?;
    let agent = AgentProc::start(&scratch.join("agent"), &relay.url)?;
    registrations_all_recorded(&relay, &agent)
}

#[test]
fn sixteen_registrations_at_once_all_recorded_with_the_key_on_postgres() -> anyhow::Result<()> {
    let scratch = Scratch::new("load-postgres")?;
    let database = TempPostgres::create()?;
    std::fs::create_dir_all(scratch.join("signer"))?;
    let signer = SignerProc::start_on(&scratch.join("signer"), &database.url, &[])?;
    let relay = RelayProc::start(
        &scratch.join("relay"),
        &RelayOptions::with_signer(&signer.endpoint),
    )?;
    let agent = AgentProc::start(&scratch.join("agent"), &relay.url)?;
    let result = registrations_all_recorded(&relay, &agent);
    drop(agent);
    drop(relay);
    drop(signer);
    std::thread::sleep(Duration::from_millis(100));
    result
}

/// Two relays on one directory (one data directory: `relay.db`, the
/// cluster and audit keys) and one Redis, each serving an admin registering
/// 16 at once for a different user through a standalone signer: every
/// record lands once, and the audit log verifies against the checkpoints
/// both relays signed.
#[test]
fn two_relays_on_one_directory_record_everything() -> anyhow::Result<()> {
    let Some(redis) = obr_tests::redis_server::RedisServer::start()? else {
        eprintln!("redis-server not installed; scripts/test installs it");
        return Ok(());
    };
    let scratch = Scratch::new("load-two-relays")?;
    std::fs::create_dir_all(scratch.join("signer"))?;
    let signer = SignerProc::start(&scratch.join("signer"))?;
    let options = RelayOptions {
        signers: vec![signer.endpoint.clone()],
        redis_url: Some(redis.url()),
        ..RelayOptions::default()
    };
    let data_dir = scratch.join("relay");
    let first = RelayProc::start(&data_dir, &options)?;
    let second = RelayProc::start(&data_dir, &options)?;
    let (first_api, second_api) = (Api::new(&first.url), Api::new(&second.url));
    let demo = &first.demo;
    let (bob, carol) = (first.user("bob@demo.obr")?, first.user("carol@demo.obr")?);

    let ada_agent = AgentProc::start(&scratch.join("agent-1"), &first.url)?;
    let hugo_agent = AgentProc::start(&scratch.join("agent-2"), &second.url)?;
    let ada = first_api.demo_owner(demo)?;
    let hugo = second_api.demo_helpdesk(demo)?;
    ada_agent.login(&first_api, &ada)?;
    hugo_agent.login(&second_api, &hugo)?;
    ada_agent.select_as_obr(&first_api, &ada, bob)?;
    hugo_agent.select_as_obr(&second_api, &hugo, carol)?;

    let (at_first, at_second) = std::thread::scope(|scope| {
        let second_run = scope.spawn(|| register_at_once(&hugo_agent.hid_socket));
        let first_run = register_at_once(&ada_agent.hid_socket);
        (
            first_run,
            second_run.join().expect("second relay's clients"),
        )
    });
    all_on_record(&first_api, &ada, bob, &at_first?)?;
    all_on_record(&second_api, &hugo, carol, &at_second?)?;

    drop((ada_agent, hugo_agent));
    first.proc.stop()?;
    second.proc.stop()?;
    let verify = std::process::Command::new(obr_tests::processes::binary("obr-relay")?)
        .args(["audit", "verify", "--data-dir"])
        .arg(&data_dir)
        .output()?;
    let said = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success() && said.contains("intact"), "{said}");
    drop(signer);
    Ok(())
}
