//! The relay's logs as an operator's collector reads them, through a real
//! relay with `OBR_LOG_FORMAT=json`: every log line is one JSON object, no
//! colour codes reach a pipe, each API request has one access line whose
//! request id is the one the answer returns (the caller's own, when it is a
//! plain token), and neither a bearer token nor a password appears.

use std::time::Duration;

use obr_tests::api::Api;
use obr_tests::processes::{RelayOptions, RelayProc};
use obr_tests::scratch::Scratch;
use serde_json::Value;

#[test]
fn logs_are_json_lines_with_a_request_id_and_no_secret() -> anyhow::Result<()> {
    let scratch = Scratch::new("operator-logs")?;
    let options = RelayOptions {
        env: vec![("OBR_LOG_FORMAT".into(), "json".into())],
        ..RelayOptions::default()
    };
    let mut relay = RelayProc::start(&scratch.join("relay"), &options)?;
    let api = Api::new(&relay.url);
    let owner = api.demo_owner(&relay.demo)?;
    let get = |request_id: Option<&str>| -> anyhow::Result<String> {
        let mut request = ureq::get(format!("{}/api/users", relay.url))
            .header("Authorization", &format!("Bearer {owner}"));
        if let Some(id) = request_id {
            request = request.header("X-Request-Id", id);
        }
        let response = request.call()?;
        Ok(response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned())
    };
    assert_eq!(
        get(Some("trace-42"))?,
        "trace-42",
        "the caller's id is kept"
    );
    let fresh = get(None)?;
    assert_eq!(fresh.len(), 32, "a fresh id: {fresh}");
    let replaced = get(Some("not a token"))?;
    assert_ne!(replaced, "not a token");

    let line = relay
        .proc
        .wait_for_line_containing("trace-42", Duration::from_secs(10))?;
    let access: Value = serde_json::from_str(&line)?;
    assert_eq!(access["target"], "obr::access", "{access}");
    assert_eq!(access["span"]["request_id"], "trace-42", "{access}");
    assert_eq!(access["fields"]["method"], "GET");
    assert_eq!(access["fields"]["path"], "/api/users");
    assert_eq!(access["fields"]["status"], 200);
    relay
        .proc
        .wait_for_line_containing(&fresh, Duration::from_secs(10))?;

    // Metrics are served only when asked for.
    assert_eq!(api.call("GET", "/metrics", None, None)?.status, 404);

    let mut lines = relay.proc.lines_so_far();
    lines.push(line);
    let password = relay.demo.admin_password.clone();
    for line in &lines {
        assert!(!line.contains('\u{1b}'), "a colour code in a pipe: {line}");
        assert!(!line.contains(&owner), "a bearer token in the log: {line}");
        assert!(!line.contains(&password), "a password in the log: {line}");
        if line.starts_with('{') {
            serde_json::from_str::<Value>(line)
                .map_err(|e| anyhow::anyhow!("not a JSON line ({e}): {line}"))?;
        } else {
            // What the relay prints for people (where it listens), never a
            // log line in text form.
            for level in [" INFO ", " WARN ", " ERROR ", " DEBUG "] {
                assert!(!line.contains(level), "a text log line: {line}");
            }
        }
    }
    Ok(())
}
