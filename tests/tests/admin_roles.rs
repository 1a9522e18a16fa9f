//! Admin roles and scopes through the real relay: an owner (the demo's
//! admin), an operator limited to one group and an auditor, both made with
//! `obr-relay admin create` on the running relay's data directory. Every
//! guard answers with a clear error *and* an `access.refused` audit record;
//! a scope change reaches a session already running; and someone who can
//! write `relay.db` but does not hold the cluster key cannot make an admin.

use std::process::Command;

use obr_tests::api::{Answer, Api};
use obr_tests::database_writer::write_db;
use obr_tests::hid_client::HidClient;
use obr_tests::processes::{AgentProc, RelayOptions, RelayProc, admin_at_agent, binary};
use obr_tests::rp;
use obr_tests::scratch::Scratch;
use serde_json::{Value, json};

const CTAP2_OK: u8 = 0x00;
const CTAP2_ERR_OPERATION_DENIED: u8 = 0x27;

/// What `obr-relay admin create` shows once: password and TOTP secret.
struct Created {
    password: String,
    totp: String,
}

/// `obr-relay admin create` on `data_dir`: the new admin's credentials.
fn create_admin(
    data_dir: &std::path::Path,
    email: &str,
    role: &str,
    groups: &[&str],
) -> anyhow::Result<Created> {
    let mut command = Command::new(binary("obr-relay")?);
    command
        .args(["admin", "create", "--data-dir"])
        .arg(data_dir)
        .args(["--email", email, "--name", email, "--role", role]);
    for group in groups {
        command.args(["--group", group]);
    }
    let output = command.output()?;
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    anyhow::ensure!(
        output.status.success(),
        "admin create: {said}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(said.contains(&format!("created {role} {email}")), "{said}");
    let shown = |prefix: &str| {
        said.lines()
            .find_map(|line| line.strip_prefix(prefix))
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no {prefix:?} in: {said}"))
    };
    Ok(Created {
        password: shown("password, shown once: ")?,
        totp: shown("TOTP secret, shown once (add it to an authenticator app): ")?,
    })
}

/// The newest `access.refused` record: who was refused what, on whom.
fn last_refusal(api: &Api, owner: &str) -> anyhow::Result<Value> {
    let audit = api.audit(owner)?;
    audit["records"]
        .as_array()
        .and_then(|records| {
            records
                .iter()
                .rev()
                .find(|r| r["action"] == "access.refused")
        })
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no access.refused record"))
}

/// `answer` is a 403 saying `says`, and the audit log's newest refusal is
/// `actor` trying `action` on `subject`.
fn refused_and_audited(
    api: &Api,
    owner: &str,
    answer: Answer,
    says: &str,
    (actor, action, subject): (&str, &str, &str),
) -> anyhow::Result<()> {
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert_eq!(answer.body["error"], "forbidden", "{}", answer.body);
    let message = answer.body["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "{message:?} lacks {says:?}");
    let record = last_refusal(api, owner)?;
    assert_eq!(record["actor"], actor, "{record}");
    assert_eq!(record["subject"], subject, "{record}");
    let detail: Value = match &record["detail"] {
        Value::String(text) => serde_json::from_str(text)?,
        other => other.clone(),
    };
    assert_eq!(detail["action"], action, "{record}");
    assert_eq!(detail["reason"], message, "{record}");
    Ok(())
}

#[test]
fn operators_reach_their_scope_auditors_only_read_and_refusals_are_audited() -> anyhow::Result<()> {
    let scratch = Scratch::new("roles")?;
    let relay = RelayProc::start(&scratch.join("relay"), &RelayOptions::default())?;
    let api = Api::new(&relay.url);
    let demo = &relay.demo;
    let owner = api.demo_owner(demo)?;
    let (bob, carol) = (relay.user("bob@demo.obr")?, relay.user("carol@demo.obr")?);

    let op_created = create_admin(
        &scratch.join("relay"),
        "emea-op@demo.obr",
        "operator",
        &["emea"],
    )?;
    let auditor_created = create_admin(&scratch.join("relay"), "audit@demo.obr", "auditor", &[])?;
    let operator = api.admin_login("emea-op@demo.obr", &op_created.password, &op_created.totp)?;
    let auditor = api.admin_login(
        "audit@demo.obr",
        &auditor_created.password,
        &auditor_created.totp,
    )?;
    let groups = api
        .call(
            "PUT",
            &format!("/api/users/{}/groups", bob.id),
            Some(&owner),
            Some(json!({ "groups": ["emea"] })),
        )?
        .ok()?;
    assert_eq!(groups["groups"], json!(["emea"]));
    let admins = api.call("GET", "/api/admins", Some(&auditor), None)?.ok()?;
    let roles: Vec<(String, Value)> = admins
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                a["email"].as_str().unwrap_or_default().to_owned(),
                a["grant"].clone(),
            )
        })
        .collect();
    assert!(
        roles.contains(&(
            "emea-op@demo.obr".into(),
            json!({ "role": "operator", "scope": { "groups": ["emea"] } })
        )),
        "{roles:?}"
    );
    assert!(roles.contains(&(
        "admin@demo.obr".into(),
        json!({ "role": "owner", "scope": "all_users" })
    )));

    // The operator provisions bob, in their group, through their own agent.
    let agent = AgentProc::start(&scratch.join("agent"), &relay.url)?;
    agent.login(&api, &operator)?;
    agent.select_as_obr(&api, &operator, bob)?;
    let mut hid = HidClient::open(&agent.hid_socket)?;
    assert_eq!(
        hid.cbor(&rp::registration_request("bob")?)?.first(),
        Some(&CTAP2_OK)
    );

    // Out of scope now: the owner takes bob out of the group, and the
    // session already running serves no more: it ends, recorded, and the
    // agent is back to normal mode.
    api.call(
        "PUT",
        &format!("/api/users/{}/groups", bob.id),
        Some(&owner),
        Some(json!({ "groups": [] })),
    )?
    .ok()?;
    assert_eq!(
        hid.cbor(&rp::registration_request("bob")?)?.first(),
        Some(&CTAP2_ERR_OPERATION_DENIED)
    );
    agent.wait_status("normal mode", std::time::Duration::from_secs(5))?;
    let audit = api.audit(&owner)?;
    let ended = audit["records"]
        .as_array()
        .and_then(|r| r.iter().rev().find(|r| r["action"] == "obr.ended"))
        .cloned()
        .unwrap_or_default();
    assert!(
        ended["detail"].to_string().contains("grant_withdrawn"),
        "{ended}"
    );
    assert_eq!(ended["subject"], "bob@demo.obr", "{ended}");

    let refused = |answer, says, refusal| refused_and_audited(&api, &owner, answer, says, refusal);
    let op = "emea-op@demo.obr";
    // Out of scope from the start.
    let answer = api.select_obr(&operator, &carol.id)?;
    refused(answer, "not in your scope", (op, "select_obr", &carol.id))?;
    // Their own key, and another admin's.
    let myself = admin_id(&api, &operator, op)?;
    let answer = api.select_obr(&operator, &myself)?;
    refused(answer, "on behalf of themself", (op, "select_obr", &myself))?;
    let answer = api.select_obr(&operator, &demo.helpdesk.id)?;
    refused(answer, "is an admin", (op, "select_obr", &demo.helpdesk.id))?;
    // What only an owner does.
    let answer = api.call(
        "POST",
        "/api/users",
        Some(&operator),
        Some(json!({ "email": "eve@demo.obr", "display_name": "Eve" })),
    )?;
    refused(
        answer,
        "operator role may not manage_users",
        (op, "invite", "-"),
    )?;
    let answer = api.call(
        "POST",
        &format!("/api/users/{}/reset-key", carol.id),
        Some(&operator),
        None,
    )?;
    refused(
        answer,
        "operator role may not manage_users",
        (op, "reset_key", "carol@demo.obr"),
    )?;

    // The auditor reads everything and changes nothing.
    let au = "audit@demo.obr";
    assert_eq!(api.users(&auditor)?.len(), 7);
    assert_eq!(api.passkeys(&auditor, &bob.id)?.len(), 1);
    assert!(api.audit(&auditor)?["chain_intact"] == true);
    let answer = api.select_obr(&auditor, &carol.id)?;
    refused(
        answer,
        "auditor role may not provision",
        (au, "select_obr", &carol.id),
    )?;
    let passkey = api.passkeys(&auditor, &bob.id)?[0]["credential_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let answer = api.call(
        "DELETE",
        &format!("/api/users/{}/passkeys/{passkey}", bob.id),
        Some(&auditor),
        None,
    )?;
    refused(
        answer,
        "auditor role may not provision",
        (au, "delete_passkey", "bob@demo.obr"),
    )?;
    let answer = api.call(
        "PUT",
        &format!("/api/users/{}/groups", carol.id),
        Some(&auditor),
        Some(json!({ "groups": ["emea"] })),
    )?;
    refused(
        answer,
        "auditor role may not manage_users",
        (au, "set_groups", "-"),
    )?;
    assert_eq!(
        api.passkeys(&owner, &bob.id)?.len(),
        1,
        "nothing was deleted"
    );
    Ok(())
}

/// An owner widens an operator's scope, cannot change their own grant,
/// and revokes the operator, whose token, and sign-in, lose their power at
/// once; an operator cannot change grants. Each refusal is audited.
#[test]
fn owners_change_and_revoke_other_admins_grants() -> anyhow::Result<()> {
    let scratch = Scratch::new("roles-grants")?;
    let relay = RelayProc::start(&scratch.join("relay"), &RelayOptions::default())?;
    let api = Api::new(&relay.url);
    let demo = &relay.demo;
    let owner = api.demo_owner(demo)?;
    let carol = relay.user("carol@demo.obr")?;
    let op = "apac-op@demo.obr";
    let created = create_admin(&scratch.join("relay"), op, "operator", &["apac"])?;
    let operator = api.admin_login(op, &created.password, &created.totp)?;
    let op_id = admin_id(&api, &owner, op)?;
    let grant_path = format!("/api/admins/{op_id}/grant");
    let refused = |answer, says, refusal| refused_and_audited(&api, &owner, answer, says, refusal);

    // Out of scope, then in: the refusal changes from scope to "no agent".
    let answer = api.select_obr(&operator, &carol.id)?;
    refused(answer, "not in your scope", (op, "select_obr", &carol.id))?;
    let all_users = json!({ "role": "operator", "scope": "all_users" });
    let set = api.call("PUT", &grant_path, Some(&owner), Some(all_users.clone()))?;
    assert_eq!(set.ok()?["grant"], all_users);
    let answer = api.select_obr(&operator, &carol.id)?;
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert!(
        answer.body["message"].to_string().contains("no agent"),
        "{}",
        answer.body
    );

    // Nobody changes their own grant; an operator changes nobody's.
    let own = format!("/api/admins/{}/grant", demo.admin_id);
    let answer = api.call("DELETE", &own, Some(&owner), None)?;
    refused(
        answer,
        "their own grant",
        (&demo.admin_email, "revoke", &demo.admin_id),
    )?;
    let answer = api.call(
        "PUT",
        &format!("/api/admins/{}/grant", demo.helpdesk.id),
        Some(&operator),
        Some(json!({ "role": "owner", "scope": "all_users" })),
    )?;
    refused(
        answer,
        "operator role may not manage_admins",
        (op, "set_grant", "-"),
    )?;
    let owner_in_a_group = json!({ "role": "owner", "scope": { "groups": ["apac"] } });
    let answer = api.call("PUT", &grant_path, Some(&owner), Some(owner_in_a_group))?;
    assert_eq!(answer.status, 400, "{}", answer.body);
    // A user's row takes no grant.
    let not_an_admin = format!("/api/admins/{}/grant", carol.id);
    assert_eq!(
        api.call("DELETE", &not_an_admin, Some(&owner), None)?
            .status,
        404
    );
    let made = api.call("PUT", &not_an_admin, Some(&owner), Some(all_users.clone()))?;
    assert_eq!(made.status, 404, "{}", made.body);
    let users = api.users(&owner)?;
    let carol_now = users.iter().find(|u| u["email"] == "carol@demo.obr");
    assert_eq!(carol_now.map(|u| u["is_admin"].clone()), Some(json!(false)));

    // Revoked: the token already issued and a new sign-in hold no power.
    let revoked = api.call("DELETE", &grant_path, Some(&owner), None)?;
    assert_eq!(revoked.status, 204, "{}", revoked.body);
    let answer = api.call("GET", "/api/users", Some(&operator), None)?;
    assert_eq!(answer.status, 403, "{}", answer.body);
    let login = api.call(
        "POST",
        "/api/admin/login",
        None,
        Some(json!({ "email": op, "password": created.password,
                     "totp": obr_tests::api::totp_code(&created.totp)? })),
    )?;
    assert_eq!(login.status, 403, "{}", login.body);
    let listed = api.call("GET", "/api/admins", Some(&owner), None)?.ok()?;
    assert!(!listed.to_string().contains(op), "{listed}");

    // Granted again (the revocation is sealed too, so the row still
    // verifies): the operator signs in again.
    api.call("PUT", &grant_path, Some(&owner), Some(all_users.clone()))?
        .ok()?;
    api.admin_login(op, &created.password, &created.totp)?;
    // But once someone changed the row outside the relay (here: a
    // password hash they know), no grant takes on it.
    api.call("DELETE", &grant_path, Some(&owner), None)?.ok()?;
    let database = scratch.join("relay").join("relay.db");
    let known = obr_relay::auth::hash_password("attacker-knows-this")?;
    write_db(
        &database,
        "UPDATE people SET password_hash = ? WHERE id = ?",
        &[&known, &op_id],
    )?;
    let regrant = api.call("PUT", &grant_path, Some(&owner), Some(all_users))?;
    assert_eq!(regrant.status, 404, "{}", regrant.body);
    let audit = api.audit(&owner)?;
    let actions = obr_tests::api::audit_actions(&audit);
    for done in ["admin.grant_set", "admin.revoked"] {
        assert!(actions.iter().any(|a| a == done), "{done} in {actions:?}");
    }
    Ok(())
}

/// Logging out ends the token at once, on every relay sharing the store;
/// a second logout, or any call with it, is a 401.
#[test]
fn logout_ends_the_admin_token() -> anyhow::Result<()> {
    let scratch = Scratch::new("roles-logout")?;
    let relay = RelayProc::start(&scratch.join("relay"), &RelayOptions::default())?;
    let api = Api::new(&relay.url);
    let demo = &relay.demo;
    let token = api.demo_owner(demo)?;
    let other = api.demo_helpdesk(demo)?;
    assert_eq!(
        api.call("GET", "/api/users", Some(&token), None)?.status,
        200
    );
    let out = api.call("POST", "/api/admin/logout", Some(&token), None)?;
    assert_eq!(out.status, 204, "{}", out.body);
    assert_eq!(
        api.call("GET", "/api/users", Some(&token), None)?.status,
        401
    );
    let again = api.call("POST", "/api/admin/logout", Some(&token), None)?;
    assert_eq!(again.status, 401, "{}", again.body);
    assert_eq!(
        api.call("GET", "/api/users", Some(&other), None)?.status,
        200
    );
    let actions = obr_tests::api::audit_actions(&api.audit(&other)?);
    assert_eq!(
        actions.iter().filter(|a| *a == "admin.logout").count(),
        1,
        "{actions:?}"
    );
    Ok(())
}

/// An admin logs their own agent out (its OBR session ends, recorded, and
/// the agent says "not logged in" at once); an operator may not log out
/// the owner's agent (refused, audited); an owner logs out anyone's.
#[test]
fn agents_are_logged_out_by_their_admin_or_an_owner() -> anyhow::Result<()> {
    let scratch = Scratch::new("roles-agents")?;
    let (relay, agent, api, owner) = admin_at_agent(&scratch, &RelayOptions::default())?;
    let demo = &relay.demo;
    let helpdesk = api.demo_helpdesk(demo)?;
    let helpdesk_agent = AgentProc::start(&scratch.join("helpdesk-agent"), &relay.url)?;
    helpdesk_agent.login(&api, &helpdesk)?;
    let agent_of = |token: &str| -> anyhow::Result<String> {
        let agents = api.call("GET", "/api/agents", Some(token), None)?.ok()?;
        Ok(agents[0]["agent_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    };
    let (owners_agent, helpdesks_agent) = (agent_of(&owner)?, agent_of(&helpdesk)?);
    agent.select_as_obr(&api, &owner, relay.user("bob@demo.obr")?)?;

    let path = |agent: &str| format!("/api/agents/{agent}/login");
    let answer = api.call("DELETE", &path(&owners_agent), Some(&helpdesk), None)?;
    refused_and_audited(
        &api,
        &owner,
        answer,
        "is not logged in as you",
        (&demo.helpdesk.email, "log_out_agent", &owners_agent),
    )?;
    let out = api.call("DELETE", &path(&owners_agent), Some(&owner), None)?;
    assert_eq!(out.status, 204, "{}", out.body);
    agent.wait_status("not logged in", std::time::Duration::from_secs(5))?;
    let actions = obr_tests::api::audit_actions(&api.audit(&owner)?);
    assert!(
        actions.ends_with(&["obr.ended".into(), "agent.logged_out".into()]),
        "{actions:?}"
    );
    let again = api.call("DELETE", &path(&owners_agent), Some(&owner), None)?;
    assert_eq!(again.status, 404, "{}", again.body);

    let out = api.call("DELETE", &path(&helpdesks_agent), Some(&owner), None)?;
    assert_eq!(out.status, 204, "{}", out.body);
    helpdesk_agent.wait_status("not logged in", std::time::Duration::from_secs(5))?;
    Ok(())
}

/// The id of the admin `email`, as `/api/admins` lists them to `token`.
fn admin_id(api: &Api, token: &str, email: &str) -> anyhow::Result<String> {
    let admins = api.call("GET", "/api/admins", Some(token), None)?.ok()?;
    admins
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["email"] == email)
        .and_then(|a| a["id"].as_str().map(str::to_owned))
        .ok_or_else(|| anyhow::anyhow!("no admin {email}"))
}

/// The attacker can write `relay.db` (a backup restored by the wrong
/// person, a database admin) but does not hold the cluster key. They make
/// bob an admin with a password they know, then give him another admin's
/// sealed grant, then put their password on the owner's row: none of it
/// signs them in with power.
#[test]
fn a_database_writer_cannot_make_an_admin() -> anyhow::Result<()> {
    let scratch = Scratch::new("roles-db-writer")?;
    let relay = RelayProc::start(&scratch.join("relay"), &RelayOptions::default())?;
    let api = Api::new(&relay.url);
    let database = scratch.join("relay").join("relay.db");
    let password_hash = obr_relay::auth::hash_password("attacker-knows-this")?;
    // What the attacker runs against the file, beside the running relay.
    let write =
        |sql: &str, value: Option<&str>| write_db(&database, sql, &[value.unwrap_or_default()]);

    write(
        "UPDATE people SET is_admin = 1, password_hash = ? WHERE email = 'bob@demo.obr'",
        Some(&password_hash),
    )?;
    let login = |email: &str| {
        api.call(
            "POST",
            "/api/admin/login",
            None,
            Some(json!({ "email": email, "password": "attacker-knows-this", "totp": "000000" })),
        )
    };
    // The password the attacker set is right; the grant is missing.
    let refused = |answer: Answer| {
        assert_eq!(answer.status, 403, "{}", answer.body);
        assert!(
            answer.body["message"]
                .as_str()
                .is_some_and(|m| m.contains("no verified admin grant")),
            "{}",
            answer.body
        );
    };
    refused(login("bob@demo.obr")?);

    write(
        "UPDATE people SET grant_sealed = \
         (SELECT grant_sealed FROM people WHERE email = 'admin@demo.obr') WHERE email = ?",
        Some("bob@demo.obr"),
    )?;
    // A grant sealed for another admin does not transfer.
    refused(login("bob@demo.obr")?);

    // The real owner still signs in and holds power.
    let owner = api.demo_owner(&relay.demo)?;
    assert_eq!(
        api.call("GET", "/api/admins", Some(&owner), None)?.status,
        200
    );

    // The owner's password hash replaced by one the attacker knows: the
    // grant is bound to the hash it was made with, so it no longer holds.
    write(
        "UPDATE people SET password_hash = ? WHERE email = 'admin@demo.obr'",
        Some(&password_hash),
    )?;
    refused(login("admin@demo.obr")?);
    assert_eq!(
        api.call("GET", "/api/admins", Some(&owner), None)?.status,
        403,
        "the owner's own token has no power left either (fail closed)"
    );
    Ok(())
}
