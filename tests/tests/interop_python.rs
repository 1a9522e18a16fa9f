//! python-fido2 (Yubico's `fido2`, pinned in tests/python/requirements.txt)
//! as the client *and* the relying party, against obr running as three
//! real processes: a standalone signer, a relay pointed at it, and an
//! agent. `CtapHidDevice` speaks CTAPHID over the agent's HID socket,
//! `Fido2Client` makes the credential and signs in (by allowList and as a
//! discoverable credential), `Fido2Server` verifies both.

use std::process::Command;

use obr_tests::processes::{RelayOptions, SignerProc, admin_at_agent};
use obr_tests::python;
use obr_tests::scratch::Scratch;
use serde_json::Value;

#[test]
fn python_fido2_registers_and_signs_in_through_obr() -> anyhow::Result<()> {
    let python = python::venv_python()?;
    let scratch = Scratch::new("py")?;
    let signer = SignerProc::start(&scratch.join("signer"))?;
    let options = RelayOptions::with_signer(&signer.endpoint);
    let (relay, agent, api, admin) = admin_at_agent(&scratch, &options)?;
    let carol = relay.user("carol@demo.obr")?;
    agent.select_as_obr(&api, &admin, carol)?;

    let output = Command::new(&python)
        .arg(python::script("obr_interop.py"))
        .arg("--hid-socket")
        .arg(&agent.hid_socket)
        .args(["--user-name", "carol@rp.example", "--display-name", "Carol"])
        .args([
            "--resident-key",
            "required",
            "--discoverable-login",
            "--assertions",
            "2",
        ])
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let steps: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(output.status.success(), "python-fido2 run failed: {stdout}");
    let step = |name: &'static str| steps.iter().filter(move |s| s["step"] == name);
    assert_eq!(
        step("done").next().map(|s| s["ok"].clone()),
        Some(Value::Bool(true))
    );
    let registered = step("register").next().expect("register step");
    assert_eq!(registered["fmt"], "none");
    assert_eq!(step("authenticate").count(), 2);
    assert_eq!(step("discoverable_login").count(), 1);

    // The credential python-fido2 made is on carol's key, made by the admin.
    let passkeys = api.passkeys(&admin, &carol.id)?;
    assert_eq!(passkeys.len(), 1, "{passkeys:?}");
    assert_eq!(passkeys[0]["credential_id"], registered["credential_id"]);
    assert_eq!(
        passkeys[0]["created_by_admin"],
        relay.demo.admin_id.as_str()
    );
    assert_eq!(passkeys[0]["discoverable"], true);
    let inbox = api.notifications(carol.device_token.as_deref().unwrap())?;
    assert!(
        inbox.iter().any(|n| n["kind"] == "obr.registration"),
        "{inbox:?}"
    );
    Ok(())
}
