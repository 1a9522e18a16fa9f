//! Issue 3's "proven by": independent relying parties verify what the
//! signer now does beyond a plain passkey.
//!
//! - python-fido2 (client and RP) through three real processes — a
//!   standalone signer with packed attestation (its CA generated on first
//!   start), a relay pointed at it, an agent — verifies the packed
//!   attestation against the deployment's CA with the AAGUID checked, and
//!   round-trips credProtect and hmac-secret through its client extensions,
//!   and registers and signs in with an EdDSA credential.
//! - webauthn-rs verifies the packed attestation against an
//!   `AttestationCaList` built from the CA certificate and the AAGUID, and
//!   the assertions that follow; its attested-*passkey* flow refuses the
//!   credential because it is backup eligible (a cloud-held key), which is
//!   what such an RP policy means for obr.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::process::Command;
use std::time::Duration;

use obr_signer::config::DEFAULT_AAGUID;
use obr_signer::{
    AttestationCa, AttestationConfig, CtapCall, Kek, ObrActing, SignerConfig, SignerCore,
};
use obr_tests::processes::{RelayOptions, SignerProc, admin_at_agent};
use obr_tests::python;
use obr_tests::rp;
use obr_tests::scratch::Scratch;
use serde_json::Value;
use webauthn_rs::prelude::{AttestationCaListBuilder, Uuid, WebauthnError};

/// obr's default AAGUID, as python-fido2 prints it.
const AAGUID: &str = "c363dbb3-2edd-4108-8402-98b094e82ee7";

/// One python-fido2 run: its steps, by name.
struct Run {
    steps: Vec<Value>,
}

impl Run {
    fn step(&self, name: &str) -> &Value {
        self.steps
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no {name} step in {:?}", self.steps))
    }

    fn count(&self, name: &str) -> usize {
        self.steps.iter().filter(|s| s["step"] == name).count()
    }
}

fn run_python(python: &std::path::Path, hid_socket: &std::path::Path, args: &[&str]) -> Run {
    let output = Command::new(python)
        .arg(python::script("obr_interop.py"))
        .arg("--hid-socket")
        .arg(hid_socket)
        .args(["--user-name", "carol@rp.example", "--display-name", "Carol"])
        .args(args)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "python-fido2 run {args:?} failed: {stdout}"
    );
    let steps: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let run = Run { steps };
    assert_eq!(run.step("done")["ok"], true);
    run
}

#[test]
fn python_fido2_verifies_packed_attestation_and_round_trips_extensions() -> anyhow::Result<()> {
    let python = python::venv_python()?;
    let scratch = Scratch::new("py-ext")?;
    let signer_dir = scratch.join("signer");
    let ca_cert = signer_dir.join("attestation-ca.pem");
    let ca_key = signer_dir.join("attestation-ca.key");
    let extra: Vec<&OsStr> = vec![
        OsStr::new("--attestation"),
        OsStr::new("packed"),
        OsStr::new("--attestation-ca-cert"),
        ca_cert.as_os_str(),
        OsStr::new("--attestation-ca-key"),
        ca_key.as_os_str(),
    ];
    let signer = SignerProc::start_with(&signer_dir, &extra)?;
    assert!(ca_cert.exists(), "the CA was generated on first start");
    let options = RelayOptions::with_signer(&signer.endpoint);
    let (relay, agent, api, admin) = admin_at_agent(&scratch, &options)?;
    let carol = relay.user("carol@demo.obr")?;
    agent.select_as_obr(&api, &admin, carol)?;
    let ca = ca_cert.to_str().expect("utf-8 path");
    let attested = [
        "--attestation",
        "direct",
        "--attestation-ca",
        ca,
        "--expect-aaguid",
        AAGUID,
    ];

    // An attested, discoverable credential with credProtect `level`.
    let protected = |level: &str, more: &[&str]| {
        let protect = ["--resident-key", "required", "--cred-protect", level];
        run_python(
            &python,
            &agent.hid_socket,
            &[&attested[..], &protect, more].concat(),
        )
    };

    // Packed attestation, credProtect 2 and hmac-secret, signing in by
    // allowList (level 2 permits it without UV).
    let run = protected("2", &["--hmac-secret", "--assertions", "2"]);
    let registered = run.step("register");
    assert_eq!(registered["fmt"], "packed");
    assert_eq!(registered["attestation_verified"], true);
    assert_eq!(registered["aaguid"], AAGUID);
    assert_eq!(registered["cred_protect"], 2);
    assert_eq!(registered["hmac_create_secret"], true);
    assert_eq!(run.count("authenticate"), 2);
    let hmac = run.step("hmac_secret");
    assert_eq!(hmac["output_len"], 32);
    assert_eq!(hmac["same_salt_same_output"], true);
    assert_eq!(hmac["other_salt_other_output"], true);
    assert_eq!(hmac["uv_output_differs"], true);

    // credProtect 3: found only with user verification (the OBR session
    // verifies, through a pinUvAuthToken), by allowList — python-fido2's
    // silent pre-flight carries the token — and as a discoverable
    // credential.
    let run = protected(
        "3",
        &[
            "--uv",
            "required",
            "--assertions",
            "2",
            "--discoverable-login",
        ],
    );
    let registered = run.step("register");
    assert_eq!(registered["cred_protect"], 3);
    assert_eq!(registered["flags"]["uv"], true);
    assert_eq!(run.count("authenticate"), 2);
    for step in run.steps.iter().filter(|s| s["step"] == "authenticate") {
        assert_eq!(step["user_verified"], true, "{step}");
    }
    assert_eq!(run.step("discoverable_login")["user_verified"], true);

    // EdDSA only.
    let run = run_python(
        &python,
        &agent.hid_socket,
        &[
            &attested[..],
            &["--algorithm", "eddsa", "--assertions", "2"],
        ]
        .concat(),
    );
    assert_eq!(run.step("register")["alg"], -8);
    assert_eq!(run.count("authenticate"), 2);

    let passkeys = api.passkeys(&admin, &carol.id)?;
    assert_eq!(passkeys.len(), 3, "{passkeys:?}");
    Ok(())
}

fn obr_call(payload: Vec<u8>) -> CtapCall {
    CtapCall {
        user_id: "carol".to_owned(),
        obr: Some(ObrActing {
            admin_id: "admin-1".to_owned(),
            obr_session_id: "obr-1".to_owned(),
        }),
        approval: None,
        payload,
        deadline: tokio::time::Instant::now() + Duration::from_secs(10),
    }
}

#[tokio::test]
async fn webauthn_rs_verifies_packed_attestation_against_the_ca_and_aaguid() -> anyhow::Result<()> {
    let scratch = Scratch::new("wa-att")?;
    let ca = AttestationCa::generate()?;
    let core = SignerCore::open(SignerConfig {
        attestation: AttestationConfig::Packed(ca.clone()),
        actor_threads: 1,
        ..SignerConfig::embedded(
            format!("sqlite://{}?mode=rwc", scratch.join("signer.db").display()),
            Kek::generate()?,
        )
    })
    .await?;
    let webauthn = rp::webauthn()?;
    let ca_list = |aaguid: [u8; 16], ca_der: &[u8]| {
        let mut builder = AttestationCaListBuilder::new();
        builder
            .insert_device_der(
                ca_der,
                Uuid::from_bytes(aaguid),
                "obr cloud security key".to_owned(),
                BTreeMap::new(),
            )
            .expect("CA certificate parses");
        builder.build()
    };
    let (webauthn_ref, core_ref) = (&webauthn, &core);
    let register = |list| async move {
        let (webauthn, core) = (webauthn_ref, core_ref);
        let (options, state) = webauthn.start_securitykey_registration(
            Uuid::new_v4(),
            "carol@rp.example",
            "Carol",
            None,
            Some(list),
            None,
        )?;
        let pending = rp::make_credential(&options, false)?;
        let reply = core.ctap(obr_call(pending.ctap_request.clone())).await;
        let credential = pending.credential(&reply.payload)?;
        anyhow::Ok(webauthn.finish_securitykey_registration(&credential, &state))
    };

    // The deployment's CA and obr's AAGUID: verified, and the key signs in.
    let key = register(ca_list(DEFAULT_AAGUID, ca.certificate_der())).await??;
    for _ in 0..2 {
        let (options, state) =
            webauthn.start_securitykey_authentication(std::slice::from_ref(&key))?;
        let pending = rp::get_assertion(&options)?;
        let reply = core.ctap(obr_call(pending.ctap_request.clone())).await;
        let result = webauthn
            .finish_securitykey_authentication(&pending.credential(&reply.payload)?, &state)?;
        assert!(result.backup_eligible() && result.backup_state());
    }

    // Another AAGUID under the same CA, or the right AAGUID under another
    // CA: refused.
    let other = AttestationCa::generate()?;
    for list in [
        ca_list([7; 16], ca.certificate_der()),
        ca_list(DEFAULT_AAGUID, other.certificate_der()),
    ] {
        let refused = register(list).await?;
        assert!(refused.is_err(), "{refused:?}");
    }

    // webauthn-rs's attested-passkey flow wants device-bound keys only
    // (`reject_synchronised_authenticators`): obr's backup-eligible
    // credentials are refused there by design.
    let (options, state) = webauthn.start_attested_passkey_registration(
        Uuid::new_v4(),
        "carol@rp.example",
        "Carol",
        None,
        ca_list(DEFAULT_AAGUID, ca.certificate_der()),
        None,
    )?;
    let pending = rp::make_credential(&options, false)?;
    let reply = core.ctap(obr_call(pending.ctap_request.clone())).await;
    let refused =
        webauthn.finish_attested_passkey_registration(&pending.credential(&reply.payload)?, &state);
    assert!(
        matches!(refused, Err(WebauthnError::CredentialMayNotBeHardwareBound)),
        "{refused:?}"
    );
    core.shutdown().await;
    Ok(())
}
