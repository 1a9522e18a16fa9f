//! The audit log as an auditor or a SIEM reads it, through the real relay:
//! filters by actor, subject, action (or a family of actions), relying
//! party and time; an export as JSON lines with exactly the records the
//! same filters select, itself audited; and a query that does not parse is
//! a 400 that says why.

use obr_tests::hid_client::HidClient;
use obr_tests::processes::{RelayOptions, admin_at_agent};
use obr_tests::rp;
use obr_tests::scratch::Scratch;
use serde_json::Value;

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
