//! No credential without its record, under load: 16 browsers (CTAPHID
//! channels) register at once on one OBR session, several rounds, with the
//! relay's directory on SQLite and the user's key on SQLite (embedded
//! signer) or on PostgreSQL (a standalone signer). Every registration the
//! RP verified has its passkey on the key, its `obr.registration` audit
//! record and the user's notification — and no passkey exists without
//! them.

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
    let admin = api.admin_login(&relay.demo.admin_email, &relay.demo.admin_password)?;
    agent.login(&api, &admin)?;
    agent.select_as_obr(&api, &admin, bob)?;

    let mut verified = BTreeSet::new();
    let mut refused = Vec::new();
    for _ in 0..ROUNDS {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let socket = agent.hid_socket.clone();
                std::thread::spawn(move || -> anyhow::Result<Result<String, Vec<u8>>> {
                    let webauthn = rp::webauthn()?;
                    let (options, state) = webauthn.start_securitykey_registration(
                        Uuid::new_v4(),
                        &format!("bob-{i}"),
                        "Bob",
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
                    verified.insert(id);
                }
                Err(status) => refused.push(status),
            }
        }
    }

    let on_key: BTreeSet<String> = api
        .passkeys(&admin, &bob.id)?
        .iter()
        .filter_map(|p| p["credential_id"].as_str().map(str::to_owned))
        .collect();
    let audited: BTreeSet<String> = api.audit(&admin)?["records"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["action"] == "obr.registration")
        .filter_map(|r| r["detail"]["credential_id"].as_str().map(str::to_owned))
        .collect();
    let notified: BTreeSet<String> = api
        .notifications(bob.device_token.as_deref().unwrap_or_default())?
        .iter()
        .filter(|n| n["kind"] == "obr.registration")
        .filter_map(|n| n["detail"]["credential_id"].as_str().map(str::to_owned))
        .collect();
    eprintln!(
        "{} verified, {} refused, {} on the key, {} audited, {} notified",
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
    assert_eq!(on_key, verified, "passkeys on the key vs verified");
    assert_eq!(audited, verified, "audit records vs verified");
    assert_eq!(notified, verified, "notifications vs verified");
    Ok(())
}

#[test]
fn sixteen_registrations_at_once_all_recorded_on_sqlite() -> anyhow::Result<()> {
    let scratch = Scratch::new("load-sqlite")?;
    let relay = RelayProc::start(&scratch.join("relay"), &RelayOptions::default())?;
    std::fs::create_dir_all(scratch.join("agent"))?;
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
        &RelayOptions {
            signers: vec![signer.endpoint.clone()],
            ..RelayOptions::default()
        },
    )?;
    std::fs::create_dir_all(scratch.join("agent"))?;
    let agent = AgentProc::start(&scratch.join("agent"), &relay.url)?;
    let result = registrations_all_recorded(&relay, &agent);
    drop(agent);
    drop(relay);
    drop(signer);
    std::thread::sleep(Duration::from_millis(100));
    result
}
