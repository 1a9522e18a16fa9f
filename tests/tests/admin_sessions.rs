//! Admin sign-in with a second factor, and admin sessions, through the real
//! relay: a stolen password is not enough, a code works once, an insider
//! with the database cannot move their second factor onto another admin,
//! a session ends when idle and at its absolute end, and sessions are
//! listed and ended (yours, or anyone's by an owner), each audited.

use std::time::Duration;

use obr_tests::api::{Api, audit_actions, newest_record, totp_code, until_next_totp_step};
use obr_tests::database_writer::write_db;
use obr_tests::processes::{RelayOptions, RelayProc, binary};
use obr_tests::scratch::Scratch;
use serde_json::json;

fn login(
    api: &Api,
    email: &str,
    password: &str,
    code: &str,
) -> anyhow::Result<obr_tests::api::Answer> {
    api.call(
        "POST",
        "/api/admin/login",
        None,
        Some(json!({ "email": email, "password": password, "totp": code })),
    )
}

/// The attacker phished the owner's password and read one code the owner
/// already used (a proxy log, a shoulder): neither signs them in, and
/// guessing codes is slowed down like guessing passwords.
#[test]
fn a_stolen_password_is_not_enough() -> anyhow::Result<()> {
    let scratch = Scratch::new("second-factor")?;
    let relay = RelayProc::start(&scratch.join("relay"), &RelayOptions::default())?;
    let api = Api::new(&relay.url);
    let demo = &relay.demo;
    let (email, password) = (&demo.admin_email, &demo.admin_password);

    // No code at all: told what is missing, before anything is checked.
    let bare = api.call(
        "POST",
        "/api/admin/login",
        None,
        Some(json!({ "email": email, "password": password })),
    )?;
    assert_eq!(bare.status, 400, "{}", bare.body);
    assert!(
        bare.body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("totp is required")
    );

    // The owner signs in; the attacker replays the code they saw.
    if until_next_totp_step() < Duration::from_secs(3) {
        std::thread::sleep(until_next_totp_step());
    }
    let seen = totp_code(&demo.admin_totp_secret)?;
    login(&api, email, password, &seen)?.ok()?;
    let replayed = login(&api, email, password, &seen)?;
    assert_eq!(replayed.status, 401, "{}", replayed.body);
    assert_eq!(replayed.body["error"], "totp_replayed", "{}", replayed.body);
    assert!(replayed.body.get("token").is_none());

    // Guessing: a wrong code is the same 401 as a wrong password, and the
    // replay and four of them later the account must wait (429).
    let wrong = if seen == "000000" { "111111" } else { "000000" };
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let answer = login(&api, email, password, wrong)?;
        if answer.status == 401 {
            assert_eq!(
                answer.body["message"],
                "wrong email, password or one-time code"
            );
        }
        statuses.push(answer.status);
    }
    assert_eq!(statuses, [401, 401, 401, 401, 429], "{statuses:?}");
    let wrong_answer = login(&api, email, "not the password", &seen)?;
    assert_eq!(wrong_answer.status, 429, "{}", wrong_answer.body);
    Ok(())
}

/// The attacker is the helpdesk admin, who also has the owner's password
/// and write access to `relay.db`: they copy their own encrypted TOTP
/// secret onto the owner's row and sign in as the owner with their own
/// code. The secret is bound to the admin it was made for: refused, and
/// the owner is locked out (fail closed) until `obr-relay admin reset-totp`
/// gives them a new one, which is audited.
#[test]
fn an_insider_cannot_move_their_second_factor_onto_another_admin() -> anyhow::Result<()> {
    let scratch = Scratch::new("second-factor-move")?;
    let data = scratch.join("relay");
    let relay = RelayProc::start(&data, &RelayOptions::default())?;
    let api = Api::new(&relay.url);
    let demo = &relay.demo;
    write_db(
        &data.join("relay.db"),
        "UPDATE people SET totp_sealed = \
         (SELECT totp_sealed FROM people WHERE email = ?) WHERE email = 'admin@demo.obr'",
        &[&demo.helpdesk.email],
    )?;
    let moved = login(
        &api,
        &demo.admin_email,
        &demo.admin_password,
        &totp_code(&demo.helpdesk.totp_secret)?,
    )?;
    assert_eq!(moved.status, 403, "{}", moved.body);
    let says = moved.body["message"].as_str().unwrap_or_default();
    assert!(says.contains("no second factor is enrolled"), "{says}");
    assert!(says.contains("reset-totp"), "{says}");

    let output = std::process::Command::new(binary("obr-relay")?)
        .args(["admin", "reset-totp", "--data-dir"])
        .arg(&data)
        .args(["--email", &demo.admin_email])
        .output()?;
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let secret = said
        .lines()
        .find_map(|l| l.strip_prefix("TOTP secret, shown once (add it to an authenticator app): "))
        .ok_or_else(|| anyhow::anyhow!("no secret in {said}"))?;
    let uri = said
        .lines()
        .find_map(|l| l.strip_prefix("otpauth URI (for a QR code): "))
        .ok_or_else(|| anyhow::anyhow!("no URI in {said}"))?;
    assert!(
        uri.starts_with("otpauth://totp/obr:admin%40demo.obr?"),
        "{uri}"
    );
    assert!(uri.contains(&format!("secret={secret}")), "{uri}");
    assert_ne!(secret, demo.admin_totp_secret);

    let owner = api.admin_login(&demo.admin_email, &demo.admin_password, secret)?;
    let actions = audit_actions(&api.audit(&owner)?);
    assert!(
        actions.iter().any(|a| a == "admin.totp_reset"),
        "{actions:?}"
    );
    Ok(())
}

/// Idle for longer than `--admin-idle-timeout-s`, a token ends; used
/// steadily, it still ends at `--admin-session-lifetime-s`.
#[test]
fn admin_sessions_end_when_idle_and_at_their_end() -> anyhow::Result<()> {
    let scratch = Scratch::new("admin-session-expiry")?;
    let options = RelayOptions {
        extra_args: [
            "--admin-idle-timeout-s",
            "2",
            "--admin-session-lifetime-s",
            "6",
        ]
        .map(Into::into)
        .to_vec(),
        ..RelayOptions::default()
    };
    let relay = RelayProc::start(&scratch.join("relay"), &options)?;
    let api = Api::new(&relay.url);
    let demo = &relay.demo;
    let started = std::time::Instant::now();
    let used = api.demo_owner(demo)?;
    let idle = api.demo_helpdesk(demo)?;
    let status = |token: &str| -> anyhow::Result<u16> {
        Ok(api.call("GET", "/api/users", Some(token), None)?.status)
    };
    let mut seen = Vec::new();
    while started.elapsed() < Duration::from_secs(8) {
        seen.push((started.elapsed().as_millis(), status(&used)?));
        std::thread::sleep(Duration::from_millis(500));
    }
    // Used every half second: alive well into its life, gone after it.
    assert!(
        seen.iter()
            .filter(|(ms, _)| *ms < 4_500)
            .all(|(_, s)| *s == 200),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .filter(|(ms, _)| *ms > 6_500)
            .all(|(_, s)| *s == 401),
        "{seen:?}"
    );
    assert_eq!(status(&idle)?, 401, "an idle token outlived its timeout");
    Ok(())
}

/// An operator lists their own sessions (with address and browser, the
/// current one marked) but not the owner's (refused, audited); the owner
/// lists theirs and ends one, whose token is refused at once; "sign out
/// everywhere" ends the caller's own. Each end is audited.
#[test]
fn admins_list_and_end_sessions() -> anyhow::Result<()> {
    let scratch = Scratch::new("admin-sessions")?;
    let relay = RelayProc::start(&scratch.join("relay"), &RelayOptions::default())?;
    let api = Api::new(&relay.url);
    let demo = &relay.demo;
    let owner = api.demo_owner(demo)?;
    let helpdesk = api.demo_helpdesk(demo)?;

    let mine = api
        .call("GET", "/api/admins/me/sessions", Some(&helpdesk), None)?
        .ok()?;
    let sessions = mine["sessions"].as_array().cloned().unwrap_or_default();
    assert_eq!(sessions.len(), 1, "{mine}");
    assert_eq!(sessions[0]["current"], true);
    assert_eq!(sessions[0]["address"], "127.0.0.1");
    assert!(
        sessions[0]["user_agent"]
            .as_str()
            .is_some_and(|ua| ua.contains("ureq")),
        "{mine}"
    );
    assert!(
        !mine.to_string().contains(&helpdesk),
        "a token was listed: {mine}"
    );

    let theirs = format!("/api/admins/{}/sessions", demo.admin_id);
    let refused = api.call("GET", &theirs, Some(&helpdesk), None)?;
    assert_eq!(refused.status, 403, "{}", refused.body);
    let audit = api.audit(&owner)?;
    let refusal = newest_record(&audit, "access.refused")?;
    assert_eq!(refusal["actor"], demo.helpdesk.email.as_str());

    let helpdesk_sessions = format!("/api/admins/{}/sessions", demo.helpdesk.id);
    let listed = api
        .call("GET", &helpdesk_sessions, Some(&owner), None)?
        .ok()?;
    assert_eq!(listed["sessions"][0]["current"], false, "{listed}");
    let session_id = listed["sessions"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let ended = api
        .call(
            "DELETE",
            &format!("{helpdesk_sessions}/{session_id}"),
            Some(&owner),
            None,
        )?
        .ok()?;
    assert_eq!(ended["ended"], json!([session_id]));
    assert_eq!(
        api.call("GET", "/api/users", Some(&helpdesk), None)?.status,
        401
    );
    let again = api.call(
        "DELETE",
        &format!("{helpdesk_sessions}/{session_id}"),
        Some(&owner),
        None,
    )?;
    assert_eq!(again.status, 404, "{}", again.body);

    let record = newest_record(&api.audit(&owner)?, "admin.sessions_ended")?;
    assert_eq!(record["subject"], demo.helpdesk.email.as_str());
    api.call("DELETE", "/api/admins/me/sessions", Some(&owner), None)?
        .ok()?;
    assert_eq!(
        api.call("GET", "/api/users", Some(&owner), None)?.status,
        401
    );
    Ok(())
}
