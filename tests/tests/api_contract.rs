//! The HTTP API against its own OpenAPI document, checked by a tool we did
//! not write: schemathesis (from PyPI, in the tests' venv) reads
//! `GET /api/openapi.json` from a real relay and sends each operation a
//! bounded number of generated requests — valid ones and invalid ones —
//! as the owner, then the user app's operations as a user. It fails on any
//! 5xx, any status the document does not list, and any body or header that
//! breaks the document's schema. The relay is still up and its audit chain
//! intact afterwards.

use std::process::Command;

use obr_tests::processes::{RelayOptions, admin_at_agent};
use obr_tests::python;
use obr_tests::scratch::Scratch;
use serde_json::json;

/// Generated requests per operation and phase (schemathesis `-n`).
const EXAMPLES: &str = "25";

/// The checks that make the document a contract. Left out, with reason:
/// `positive_data_acceptance` (a valid body about a user that does not
/// exist is rightly a 404), `use_after_free` and
/// `ensure_resource_availability` (need links between operations, which the
/// document does not declare), `unsupported_method` and
/// `allow_header_conformance` (actix answers an unrouted method with 404, as
/// for an unknown path). `ignored_auth` stays: an operation that needs a
/// token must refuse a request without one.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
response_headers_conformance,response_schema_conformance,negative_data_rejection,\
missing_required_header,ignored_auth";

#[test]
fn the_api_keeps_its_openapi_contract() -> anyhow::Result<()> {
    let python = python::venv_python()?;
    let scratch = Scratch::new("api-contract")?;
    let (relay, _agent, api, owner) = admin_at_agent(&scratch, &RelayOptions::default())?;
    let demo = &relay.demo;
    let bob = relay.user("bob@demo.obr")?;
    let device = bob
        .device_token
        .clone()
        .ok_or_else(|| anyhow::anyhow!("bob has a device token"))?;
    // Things that exist, so that generated requests reach past "no such
    // …": the people, the agent, and a session that waits for bob.
    let agents = api.call("GET", "/api/agents", Some(&owner), None)?.ok()?;
    let agent_id = agents[0]["agent_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let waiting = api
        .call(
            "POST",
            &format!("/api/users/{}/obr", bob.id),
            Some(&owner),
            Some(json!({ "four_eyes": "user" })),
        )?
        .ok()?;
    let session_id = waiting["id"].as_str().unwrap_or_default().to_owned();
    let people: Vec<&str> = demo
        .users
        .iter()
        .map(|u| u.id.as_str())
        .chain([demo.helpdesk.id.as_str(), demo.admin_id.as_str()])
        .collect();
    let config = scratch.join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            r#"[auth.openapi.admin]
bearer = "{owner}"

[auth.openapi.device]
bearer = "{device}"

[dictionaries.people]
values = {people}

[dictionaries.agents]
values = ["{agent_id}"]

[dictionaries.sessions]
values = ["{session_id}"]

[[operations]]
include-path-regex = "^/api/(users|admins)/\\{{id\\}}"
parameters = {{ "path.id" = {{ dictionary = "people", probability = 0.5 }} }}

[[operations]]
include-path-regex = "^/api/agents/\\{{id\\}}"
parameters = {{ "path.id" = {{ dictionary = "agents", probability = 0.5 }} }}

[[operations]]
include-path-regex = "obr-sessions/\\{{id\\}}"
parameters = {{ "path.id" = {{ dictionary = "sessions", probability = 0.5 }} }}
"#,
            people = serde_json::to_string(&people)?,
        ),
    )?;
    let report = scratch.join("schemathesis.xml");
    let output = Command::new(&python)
        .current_dir(scratch.path())
        .args(["-m", "schemathesis.cli", "--config-file"])
        .arg(&config)
        .args(["run", &format!("{}/api/openapi.json", relay.url)])
        .args(["--checks", CHECKS])
        .args(["--max-examples", EXAMPLES])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--workers", "1", "--request-timeout", "20"])
        .args(["--suppress-health-check", "all"])
        // Not the two that would end the owner's own session halfway.
        .args(["--exclude-path", "/api/admin/logout"])
        .args(["--exclude-path-regex", "^/api/admins/\\{id\\}/sessions"])
        .args(["--report", "junit", "--report-junit-path"])
        .arg(&report)
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    anyhow::ensure!(
        output.status.success(),
        "schemathesis found the API breaking its document:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tested = stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("Tested: "))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or_default();
    assert!(tested >= 29, "schemathesis tested only {tested} operations");

    // Still serving, and nothing it recorded was lost or altered.
    let audit = api.audit(&owner)?;
    assert_eq!(audit["chain_intact"], true, "{audit}");
    assert!(api.users(&owner)?.len() >= demo.users.len());
    Ok(())
}
