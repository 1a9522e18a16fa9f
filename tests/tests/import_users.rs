//! Many users at once, from a CSV file, through the real relay: every good
//! row is invited (its mail in the outbox, its groups set), every bad one
//! says why in the report while the rest go on; an operator may not import
//! (refused, audited); a file without the header, or with too many rows, is
//! refused as a whole.

use obr_tests::api::{Api, mailed_invitation, newest_record};
use obr_tests::processes::{RelayOptions, RelayProc};
use obr_tests::scratch::Scratch;
use serde_json::Value;

#[test]
fn an_owner_imports_users_from_csv_with_a_report_per_row() -> anyhow::Result<()> {
    let scratch = Scratch::new("import")?;
    let relay = RelayProc::start(&scratch.join("relay"), &RelayOptions::default())?;
    let api = Api::new(&relay.url);
    let owner = api.demo_owner(&relay.demo)?;
    let csv = "email,display_name,groups\n\
               frank@demo.obr,Frank Field,emea\n\
               \"grace@demo.obr\",\"Hopper, Grace\",emea;apac\n\
               bob@demo.obr,Bob Again,\n\
               not-an-email,Nobody,\n\
               heidi@demo.obr,Heidi,bad group!\n\
               ivan@demo.obr,,\n\
               judy@demo.obr,Judy\n\
               \"x y@demo.obr\",Spacey\n";
    let report = api
        .post_text("/api/users/import", &owner, "text/csv", csv)?
        .ok()?;
    assert_eq!(report["invited"], 3, "{report}");
    assert_eq!(report["failed"], 5, "{report}");
    let rows = report["rows"].as_array().cloned().unwrap_or_default();
    let row = |line: u64| {
        rows.iter()
            .find(|r| r["line"] == line)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(row(2)["status"], "invited");
    assert_eq!(row(3)["status"], "invited");
    assert!(
        row(4)["error"]
            .as_str()
            .unwrap_or_default()
            .contains("already exists"),
        "{report}"
    );
    assert!(
        row(5)["error"]
            .as_str()
            .unwrap_or_default()
            .contains("name@domain"),
        "{report}"
    );
    assert_eq!(row(6)["status"], "failed", "{report}");
    assert!(
        row(7)["error"]
            .as_str()
            .unwrap_or_default()
            .contains("display_name"),
        "{report}"
    );
    assert_eq!(
        row(8)["status"],
        "invited",
        "a row without the optional column: {report}"
    );
    assert_eq!(row(9)["status"], "failed", "not one bare address: {report}");

    let users = api.users(&owner)?;
    let grace = users
        .iter()
        .find(|u| u["email"] == "grace@demo.obr")
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(grace["display_name"], "Hopper, Grace");
    assert_eq!(grace["groups"], serde_json::json!(["apac", "emea"]));
    assert_eq!(grace["key_status"], "invited");
    let outbox = scratch.join("relay").join("outbox");
    for email in ["frank@demo.obr", "grace@demo.obr", "judy@demo.obr"] {
        mailed_invitation(&outbox, email)?;
    }
    assert!(mailed_invitation(&outbox, "heidi@demo.obr").is_err());
    let audit = api.audit(&owner)?;
    assert_eq!(
        newest_record(&audit, "users.imported")?["detail"]["invited"],
        3
    );
    let groups_set: Vec<&str> = audit["records"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["action"] == "user.groups_set")
        .filter_map(|r| r["subject"].as_str())
        .collect();
    assert_eq!(groups_set, ["frank@demo.obr", "grace@demo.obr"]);

    // An operator may not import.
    let helpdesk = api.demo_helpdesk(&relay.demo)?;
    let refused = api.post_text("/api/users/import", &helpdesk, "text/csv", csv)?;
    assert_eq!(refused.status, 403, "{}", refused.body);

    // No header naming the columns, or too many rows: nothing is imported.
    let headless = api.post_text(
        "/api/users/import",
        &owner,
        "text/csv",
        "kim@demo.obr,Kim\n",
    )?;
    assert_eq!(headless.status, 400, "{}", headless.body);
    let mut big = String::from("email,display_name\n");
    for n in 0..1001 {
        big.push_str(&format!("u{n}@big.example,User {n}\n"));
    }
    let too_many = api.post_text("/api/users/import", &owner, "text/csv", &big)?;
    assert_eq!(too_many.status, 400, "{}", too_many.body);
    assert!(
        too_many.body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("at most 1000 rows")
    );
    let after = api.users(&owner)?;
    assert!(
        !after.iter().any(|u| u["email"] == "u0@big.example"),
        "a refused file imported rows"
    );

    // Past 1 MiB the owner gets a 413; a stranger with a big body is
    // refused for who they are, before the relay reads it.
    let huge = format!("email,display_name\n{}", "x".repeat(2 << 20));
    let too_big = api.post_text("/api/users/import", &owner, "text/csv", &huge)?;
    assert_eq!(too_big.status, 413, "{}", too_big.body);
    let stranger = api.post_text("/api/users/import", "no-such-token", "text/csv", &huge)?;
    assert_eq!(stranger.status, 401, "{}", stranger.body);
    Ok(())
}
