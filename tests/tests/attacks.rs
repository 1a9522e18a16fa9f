//! The attack suite: each test plays one attacker of `docs/SECURITY.md`
//! with only what that attacker really has — an agent id seen in a
//! notification, a user's own device token, an admin's own token, a
//! connection to the deployment's Redis — and checks the attack fails.
//! Each of them succeeded against the relay before the defence it names.

use std::time::Duration;

use obr_proto::agent::{CtapRequest, Hello, LoginStart, ModeKind, agent_frame, relay_frame};
use obr_tests::api::{Api, audit_actions};
use obr_tests::hid_client::HidClient;
use obr_tests::processes::{AgentProc, RelayOptions, RelayProc, SHORT_CTAP_BUDGET, Stack};
use obr_tests::raw_agent::{RawAgent, TestAgentKey};
use obr_tests::redis_server::RedisServer;
use obr_tests::rp;
use obr_tests::scratch::Scratch;

const CTAP2_OK: u8 = 0x00;
const CTAP2_ERR_OPERATION_DENIED: u8 = 0x27;

/// A relay with its embedded signer and an agent the demo admin logged in
/// (Ctrl+I, approved in the panel): the stack, the API and the admin's token.
fn admin_at_agent(label: &str) -> anyhow::Result<(Stack, Api, String)> {
    let stack = Stack::start(label)?;
    let api = Api::new(&stack.relay.url);
    let demo = &stack.relay.demo;
    let admin = api.demo_owner(demo)?;
    stack.agent.login(&api, &admin)?;
    Ok((stack, api, admin))
}

/// The agent id `user` saw in their own inbox when the admin acted on
/// their behalf (the `agent` of an `obr.started` notification).
fn agent_id_seen_by(api: &Api, device_token: &str) -> anyhow::Result<String> {
    let inbox = api.notifications(device_token)?;
    let started = inbox
        .iter()
        .find(|n| n["kind"] == "obr.started")
        .ok_or_else(|| anyhow::anyhow!("no obr.started in {inbox:?}"))?;
    Ok(started["detail"]["agent"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no agent in {started}"))?
        .to_owned())
}

/// Select `user` as OBR on the stack's agent and end it again, so that the
/// user has seen the admin's agent id.
fn leave_agent_id_in_inbox(
    stack: &Stack,
    api: &Api,
    admin: &str,
    user: &obr_relay::demo::DemoUser,
) -> anyhow::Result<String> {
    stack.agent.select_as_obr(api, admin, user)?;
    stack.agent.cli(&["back-to-normal"])?;
    stack
        .agent
        .wait_status("ready for on behalf registration", Duration::from_secs(5))?;
    agent_id_seen_by(api, user.device_token.as_deref().unwrap_or_default())
}

/// A relay (embedded signer) whose sessions live in a private
/// `redis-server`; `None` when redis-server is not installed.
fn relay_on_private_redis(
    label: &str,
) -> anyhow::Result<Option<(RedisServer, Scratch, RelayProc)>> {
    let Some(redis) = RedisServer::start()? else {
        eprintln!("redis-server not installed; scripts/test installs it");
        return Ok(None);
    };
    let scratch = Scratch::new(label)?;
    let relay = RelayProc::start(
        &scratch.join("relay"),
        &RelayOptions::with_redis(redis.url()),
    )?;
    Ok(Some((redis, scratch, relay)))
}

/// A Hello claiming `agent_id`: all an attacker who only saw the id can
/// send (it has no key whose id that is).
fn hello(agent_id: &str) -> agent_frame::Kind {
    agent_frame::Kind::Hello(Hello {
        agent_id: agent_id.to_owned(),
        ..Hello::default()
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Finding 1: bob saw the admin's agent id in a notification. He opens a
/// socket claiming it; the admin then logs the real agent in again. Bob's
/// socket must not receive the admin's login (token or mode).
#[test]
fn a_seen_agent_id_does_not_receive_the_admins_login() -> anyhow::Result<()> {
    let (stack, api, admin) = admin_at_agent("attack-seen-id")?;
    let bob = stack.relay.user("bob@demo.obr")?;
    let seen = leave_agent_id_in_inbox(&stack, &api, &admin, bob)?;

    let rt = runtime()?;
    let mut attacker = rt.block_on(RawAgent::connect(&stack.relay.url))?;
    rt.block_on(attacker.send(hello(&seen)))?;
    // Whatever the relay answers the claim, give it time to file the socket.
    let mut received = rt.block_on(attacker.drain(Duration::from_millis(500)));

    // The admin presses Ctrl+I again and approves the new code.
    let out = stack.agent.cli(&["login", "--no-wait"])?;
    let code = obr_tests::api::login_code(&out)?;
    api.approve_login(&admin, &code)?.ok()?;
    received.extend(rt.block_on(attacker.drain(Duration::from_secs(2))));

    for frame in &received {
        let mode = match frame {
            relay_frame::Kind::ModeChanged(changed) => changed.mode.clone(),
            relay_frame::Kind::Welcome(welcome) => welcome.mode.clone(),
            _ => continue,
        };
        assert_eq!(
            mode.unwrap_or_default().kind,
            ModeKind::NotLoggedIn as i32,
            "the attacker's socket got the admin's login: {frame:?}"
        );
    }
    // The real agent is the one logged in.
    stack
        .agent
        .wait_status("ready for on behalf registration", Duration::from_secs(5))?;
    Ok(())
}

/// Finding 2: bob, a plain user with his own device token, claims the
/// admin's agent id, logs that id in as himself, and reconnects — hoping
/// to inherit the admin's live OBR session on carol's key and register a
/// passkey there.
#[test]
fn a_user_cannot_inherit_an_admins_obr_session() -> anyhow::Result<()> {
    let (stack, api, admin) = admin_at_agent("attack-inherit")?;
    let bob = stack.relay.user("bob@demo.obr")?;
    let carol = stack.relay.user("carol@demo.obr")?;
    let bob_device = bob.device_token.clone().unwrap_or_default();
    let seen = leave_agent_id_in_inbox(&stack, &api, &admin, bob)?;
    stack.agent.select_as_obr(&api, &admin, carol)?;

    let rt = runtime()?;
    let mut frames = Vec::new();
    let mut attacker = rt.block_on(RawAgent::connect(&stack.relay.url))?;
    rt.block_on(attacker.send(hello(&seen)))?;
    frames.extend(rt.block_on(attacker.drain(Duration::from_millis(300))));
    // The relay may have closed the socket already; a failed send is the
    // attack failing, not the test.
    let _ = rt.block_on(attacker.send(agent_frame::Kind::LoginStart(LoginStart {})));
    let pending = rt.block_on(attacker.drain(Duration::from_millis(500)));
    let code = pending.iter().find_map(|f| match f {
        relay_frame::Kind::LoginPending(p) => Some(p.user_code.clone()),
        _ => None,
    });
    frames.extend(pending);
    if let Some(code) = code {
        // Bob approves the code with his own device token, as the user app
        // would for his own workstation.
        let _ = api.approve_login(&bob_device, &code)?;
        frames.extend(rt.block_on(attacker.drain(Duration::from_secs(1))));
        // Reconnect as the id, and send a registration.
        let mut again = rt.block_on(RawAgent::connect(&stack.relay.url))?;
        rt.block_on(again.send(hello(&seen)))?;
        frames.extend(rt.block_on(again.drain(Duration::from_millis(500))));
        let webauthn = rp::webauthn()?;
        let (request, _) = rp::start_registration(&webauthn, "carol", "Carol")?;
        let _ = rt.block_on(again.send(agent_frame::Kind::CtapRequest(CtapRequest {
            id: 1,
            payload: request.ctap_request,
            budget_ms: 3000,
            ..CtapRequest::default()
        })));
        frames.extend(rt.block_on(again.drain(Duration::from_secs(4))));
    }

    for frame in &frames {
        let mode = match frame {
            relay_frame::Kind::ModeChanged(c) => c.mode.clone(),
            relay_frame::Kind::Welcome(w) => w.mode.clone(),
            relay_frame::Kind::CtapResponse(r) => {
                assert_ne!(r.payload.first(), Some(&CTAP2_OK), "bob's call succeeded");
                None
            }
            _ => None,
        };
        assert_ne!(
            mode.unwrap_or_default().kind,
            ModeKind::Obr as i32,
            "bob's socket was put in the admin's OBR session: {frame:?}"
        );
    }
    assert!(
        api.passkeys(&admin, &carol.id)?.is_empty(),
        "a passkey landed on carol's key"
    );
    Ok(())
}

/// Finding 3: an admin in an OBR session on bob's key tries to sign in
/// with a passkey bob's key already holds (one made in an earlier
/// session). The key answers the browser's silent pre-flight, refuses the
/// sign-in, and the attempt is audited. A passkey made in the same session
/// may be verified at once, and that is audited and bob is told.
#[test]
fn an_obr_session_signs_only_with_what_it_created() -> anyhow::Result<()> {
    let (stack, api, admin) = admin_at_agent("attack-sign-in")?;
    let bob = stack.relay.user("bob@demo.obr")?;
    let bob_device = bob.device_token.clone().unwrap_or_default();
    let webauthn = rp::webauthn()?;
    let mut hid = HidClient::open(&stack.agent.hid_socket)?;

    // Session 1 leaves a passkey on bob's key.
    stack.agent.select_as_obr(&api, &admin, bob)?;
    let (request, state) = rp::start_registration(&webauthn, "bob", "Bob")?;
    let response = hid.cbor(&request.ctap_request)?;
    let old = webauthn.finish_securitykey_registration(&request.credential(&response)?, &state)?;
    stack.agent.cli(&["back-to-normal"])?;
    stack
        .agent
        .wait_status("ready for on behalf registration", Duration::from_secs(5))?;

    // Session 2: the old passkey may be looked up silently, not used.
    stack.agent.select_as_obr(&api, &admin, bob)?;
    let (options, _) = webauthn.start_securitykey_authentication(std::slice::from_ref(&old))?;
    let preflight = rp::silent_lookup(&options)?;
    assert_eq!(
        hid.cbor(&preflight.ctap_request)?.first(),
        Some(&CTAP2_OK),
        "the exclude-list pre-flight still works"
    );
    let sign_in = rp::get_assertion(&options)?;
    assert_eq!(
        hid.cbor(&sign_in.ctap_request)?,
        vec![CTAP2_ERR_OPERATION_DENIED],
        "an OBR session signed in with a passkey it did not create"
    );
    let actions = audit_actions(&api.audit(&admin)?);
    assert!(
        actions.iter().any(|a| a == "obr.assertion_refused"),
        "{actions:?}"
    );

    // A passkey made in this session may be verified at once: audited, told.
    let (request, state) = rp::start_registration(&webauthn, "bob2", "Bob")?;
    let response = hid.cbor(&request.ctap_request)?;
    let new = webauthn.finish_securitykey_registration(&request.credential(&response)?, &state)?;
    let (options, state) = webauthn.start_securitykey_authentication(std::slice::from_ref(&new))?;
    let sign_in = rp::get_assertion(&options)?;
    let response = hid.cbor(&sign_in.ctap_request)?;
    webauthn.finish_securitykey_authentication(&sign_in.credential(&response)?, &state)?;
    let actions = audit_actions(&api.audit(&admin)?);
    assert!(actions.iter().any(|a| a == "obr.assertion"), "{actions:?}");
    let inbox = api.notifications(&bob_device)?;
    assert!(
        inbox.iter().any(|n| n["kind"] == "obr.assertion"),
        "bob was not told of the sign-in: {inbox:?}"
    );
    Ok(())
}

/// Finding 6: an admin selects another admin as OBR, resets their key,
/// deletes their passkeys, or resets their own key. All refused, nothing
/// recorded as done.
#[test]
fn an_admin_cannot_act_on_an_admin() -> anyhow::Result<()> {
    let (stack, api, admin) = admin_at_agent("attack-admins")?;
    let demo = &stack.relay.demo;
    let other = &demo.helpdesk.id;

    let select = api.select_obr(&admin, other)?;
    assert_eq!(select.status, 403, "{:?}", select.body);
    for target in [other, &demo.admin_id] {
        let reset = api.call(
            "POST",
            &format!("/api/users/{target}/reset-key"),
            Some(&admin),
            None,
        )?;
        assert_eq!(reset.status, 403, "{:?}", reset.body);
        let delete = api.call(
            "DELETE",
            &format!("/api/users/{target}/passkeys/AAAA"),
            Some(&admin),
            None,
        )?;
        assert_eq!(delete.status, 403, "{:?}", delete.body);
    }
    let actions = audit_actions(&api.audit(&admin)?);
    for done in ["obr.started", "key.reset", "passkey.deleted"] {
        assert!(!actions.iter().any(|a| a == done), "{done} in {actions:?}");
    }
    Ok(())
}

/// Finding 10: Redis restarts empty while an admin's agent is in an OBR
/// session (here: FLUSHALL, what an empty restart leaves). The session no
/// longer exists anywhere but in the relay's memory; no registration may
/// land on the user's key after that.
#[test]
fn a_session_the_store_lost_is_not_served() -> anyhow::Result<()> {
    let Some((redis, scratch, relay)) = relay_on_private_redis("attack-lost-session")? else {
        return Ok(());
    };
    let agent = AgentProc::start_with(&scratch.join("agent"), &relay.url, SHORT_CTAP_BUDGET)?;
    let api = Api::new(&relay.url);
    let bob = relay.user("bob@demo.obr")?;
    let admin = api.demo_owner(&relay.demo)?;
    agent.login(&api, &admin)?;
    agent.select_as_obr(&api, &admin, bob)?;

    let flushed = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "FLUSHALL"])
        .output()?;
    assert!(flushed.status.success(), "{flushed:?}");
    std::thread::sleep(Duration::from_millis(1500));

    let request = rp::registration_request("bob")?;
    let mut hid = HidClient::open(&agent.hid_socket)?;
    let response = hid.cbor(&request)?;
    assert_ne!(
        response.first(),
        Some(&CTAP2_OK),
        "the registration went through"
    );
    // The admin's token went with the flush; bob's key is read as an admin
    // again after logging in anew.
    let admin = api.demo_owner(&relay.demo)?;
    assert!(api.passkeys(&admin, &bob.id)?.is_empty());
    Ok(())
}

/// Finding 10, the agent's side: "Back to normal mode" while the relay does
/// not answer. The agent stops acting for the user at once, says truthfully
/// that the relay has not confirmed, and the session ends once it can.
#[test]
fn back_to_normal_takes_effect_on_the_agent_at_once() -> anyhow::Result<()> {
    let (stack, api, admin) = admin_at_agent("attack-back-to-normal")?;
    let bob = stack.relay.user("bob@demo.obr")?;
    stack.agent.select_as_obr(&api, &admin, bob)?;

    stack.relay.proc.freeze()?;
    let said = stack.agent.cli(&["back-to-normal"]);
    let status = stack.agent.cli(&["status"]);
    // A registration now is refused by the agent itself.
    let request = rp::registration_request("bob")?;
    let mut hid = HidClient::open(&stack.agent.hid_socket)?;
    let started = std::time::Instant::now();
    let response = hid.cbor(&request)?;
    let refused_in = started.elapsed();
    stack.relay.proc.thaw()?;

    let said = said?;
    assert!(said.contains("not confirmed"), "{said}");
    let status = status?;
    assert!(!status.contains("OBR: acting for"), "{status}");
    assert_eq!(response, vec![CTAP2_ERR_OPERATION_DENIED]);
    assert!(refused_in < Duration::from_secs(1), "{refused_in:?}");
    // Once the relay answers again, the session ends there too.
    stack
        .agent
        .wait_status("ready for on behalf registration", Duration::from_secs(10))?;
    let actions = audit_actions(&api.audit(&admin)?);
    assert!(actions.iter().any(|a| a == "obr.ended"), "{actions:?}");
    assert!(api.passkeys(&admin, &bob.id)?.is_empty());
    Ok(())
}

/// Every string in a JSON value.
fn strings(value: &serde_json::Value) -> Vec<String> {
    match value {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(items) => items.iter().flat_map(strings).collect(),
        serde_json::Value::Object(map) => map.values().flat_map(strings).collect(),
        _ => Vec::new(),
    }
}

/// Finding 7: the admin who invites a user must not hold the invitation's
/// secret — with it they could accept for the user and hold the user's
/// "phone" (their device token). It reaches the user by mail (the
/// embedded relay's outbox folder).
#[test]
fn the_inviting_admin_never_holds_the_invitation() -> anyhow::Result<()> {
    let scratch = Scratch::new("attack-invitation")?;
    let relay = RelayProc::start(&scratch.join("relay"), &RelayOptions::default())?;
    let api = Api::new(&relay.url);
    let admin = api.demo_owner(&relay.demo)?;
    let invited = api
        .call(
            "POST",
            "/api/users",
            Some(&admin),
            Some(serde_json::json!({ "email": "erin@demo.obr", "display_name": "Erin" })),
        )?
        .ok()?;
    // Nothing the admin was given accepts the invitation.
    for candidate in strings(&invited) {
        let accept = api.call(
            "POST",
            "/api/invitations/accept",
            None,
            Some(serde_json::json!({ "token": candidate })),
        )?;
        assert_eq!(accept.status, 404, "the admin accepted with {candidate:?}");
    }
    // Erin's mail does.
    let token =
        obr_tests::api::mailed_invitation(&scratch.join("relay").join("outbox"), "erin@demo.obr")?;
    let accepted = api
        .call(
            "POST",
            "/api/invitations/accept",
            None,
            Some(serde_json::json!({ "token": token })),
        )?
        .ok()?;
    assert_eq!(accepted["user"]["key_status"], "active");
    assert!(accepted["device_token"].is_string());
    Ok(())
}

/// Finding 8: guessing an admin's password, or login codes, as fast as the
/// relay answers. Past a few failures the relay answers 429 with
/// `Retry-After` — for the guessed account even with the right password,
/// while other accounts from elsewhere are unaffected.
#[test]
fn guessing_is_slowed_down() -> anyhow::Result<()> {
    let scratch = Scratch::new("attack-guessing")?;
    let relay = RelayProc::start(&scratch.join("relay"), &RelayOptions::default())?;
    let api = Api::new(&relay.url);
    let login = |email: &str, password: &str| {
        api.call(
            "POST",
            "/api/admin/login",
            None,
            Some(serde_json::json!({ "email": email, "password": password, "totp": "000000" })),
        )
    };
    let mut statuses = Vec::new();
    for guess in 0..8 {
        statuses.push(login(&relay.demo.admin_email, &format!("guess-{guess}"))?.status);
    }
    assert_eq!(&statuses[..5], &[401; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    let blocked = login(&relay.demo.admin_email, &relay.demo.admin_password)?;
    assert_eq!(blocked.status, 429, "{:?}", blocked.body);
    assert_eq!(blocked.body["error"], "too_many_requests");
    // The other admin is not locked out by it.
    api.demo_helpdesk(&relay.demo)?;

    // Login codes: a user guessing codes with their own device token.
    let bob = relay.user("bob@demo.obr")?;
    let device = bob.device_token.as_deref().unwrap_or_default();
    let mut statuses = Vec::new();
    for guess in 0..7 {
        statuses.push(
            api.approve_login(device, &format!("BCDF-GH{guess:02}"))?
                .status,
        );
    }
    assert_eq!(&statuses[..5], &[404; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    Ok(())
}

/// The TCP ports process `pid` listens on (from /proc: its socket inodes
/// matched against the kernel's TCP tables), as a local user finds them.
fn listening_ports(pid: u32) -> anyhow::Result<Vec<u16>> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))?
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table)?.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            // State 0A is LISTEN.
            if *state == "0A" && inodes.iter().any(|i| i == inode) {
                let port = local.rsplit(':').next().unwrap_or_default();
                ports.push(u16::from_str_radix(port, 16)?);
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

/// Finding 4 (embedded): a local user on the relay's machine looks for the
/// embedded signer's port and calls its management API — ResetKey on
/// bob's key — with no credentials at all. The embedded signer must not be
/// reachable that way: it listens on a 0600 UNIX socket in the relay's
/// 0700 data directory, and every TCP port of the relay is its HTTP API.
#[test]
fn a_local_user_cannot_reach_the_embedded_signer() -> anyhow::Result<()> {
    let (stack, api, admin) = admin_at_agent("attack-local-signer")?;
    let bob = stack.relay.user("bob@demo.obr")?;
    stack.agent.select_as_obr(&api, &admin, bob)?;
    let request = rp::registration_request("bob")?;
    let mut hid = HidClient::open(&stack.agent.hid_socket)?;
    assert_eq!(hid.cbor(&request)?.first(), Some(&CTAP2_OK));

    let ports = listening_ports(stack.relay.proc.pid())?;
    assert!(!ports.is_empty(), "the relay listens somewhere");
    let rt = runtime()?;
    for port in &ports {
        let reset = rt.block_on(async {
            let mut client = obr_proto::signer::signer_client::SignerClient::connect(format!(
                "http://127.0.0.1:{port}"
            ))
            .await?;
            client
                .reset_key(obr_proto::signer::ResetKeyRequest {
                    user_id: bob.id.clone(),
                    acting_admin_id: "made-up".into(),
                })
                .await
                .map_err(anyhow::Error::from)
        });
        assert!(
            reset.is_err(),
            "ResetKey on port {port} succeeded: {reset:?}"
        );
    }
    assert_eq!(
        api.passkeys(&admin, &bob.id)?.len(),
        1,
        "bob's key was reset"
    );
    let http_port = stack
        .relay
        .url
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .parse::<u16>()?;
    assert_eq!(ports, vec![http_port], "the relay listens only for HTTP");
    // The socket the relay does use is its own user's.
    use std::os::unix::fs::PermissionsExt;
    let data_dir = stack.scratch.join("relay");
    let mode = |p: &std::path::Path| -> anyhow::Result<u32> {
        Ok(std::fs::metadata(p)?.permissions().mode() & 0o777)
    };
    assert_eq!(mode(&data_dir)?, 0o700);
    assert_eq!(
        mode(&data_dir.join(obr_relay::EMBEDDED_SIGNER_SOCKET))?,
        0o600
    );
    Ok(())
}

/// Finding 5: someone who can write to the deployment's Redis — but holds
/// no cluster key — mints an admin token and logs their own agent in as
/// the admin. Neither works: every value the relay reads from Redis must
/// carry the cluster key's MAC for its own key.
#[test]
fn a_redis_writer_cannot_grant_power() -> anyhow::Result<()> {
    let Some((redis, _scratch, relay)) = relay_on_private_redis("attack-redis-writer")? else {
        return Ok(());
    };
    let api = Api::new(&relay.url);
    let client = ::redis::Client::open(redis.url())?;
    let mut writer = client.get_connection()?;
    let admin = serde_json::json!({ "person_id": relay.demo.admin_id,
        "email": relay.demo.admin_email, "is_admin": true, "scope": "admin" });

    // A token of the attacker's choosing, filed as the admin's.
    let token = "attacker-chosen-token";
    let key = format!("obr:token:{}", obr_relay::auth::token_hash(token));
    ::redis::cmd("SET")
        .arg(&key)
        .arg(admin.to_string())
        .query::<()>(&mut writer)?;
    let users = api.call("GET", "/api/users", Some(token), None)?;
    assert_eq!(
        users.status, 401,
        "a minted token was accepted: {:?}",
        users.body
    );

    // The attacker's own agent (its own key), logged in as the admin.
    let rt = runtime()?;
    let key = TestAgentKey::generate()?;
    let agent_id = key.agent_id();
    let mut agent_login = admin.clone();
    agent_login["scope"] = "agent".into();
    ::redis::cmd("SET")
        .arg(format!("obr:agent:{agent_id}"))
        .arg(agent_login.to_string())
        .query::<()>(&mut writer)?;
    ::redis::cmd("PUBLISH")
        .arg("obr:events")
        .arg(serde_json::json!({ "kind": "login_changed", "agent_id": agent_id }).to_string())
        .query::<()>(&mut writer)?;
    // The attacker connects with its key (its own, so it can prove it).
    let (_, welcome) = rt.block_on(RawAgent::connect_as(&relay.url, &key))?;
    assert_eq!(
        welcome.mode.unwrap_or_default().kind,
        ModeKind::NotLoggedIn as i32,
        "a minted agent login was accepted"
    );
    Ok(())
}

/// `obr-relay audit verify --data-dir <dir>`: (exit success, what it said).
fn audit_verify(data_dir: &std::path::Path) -> anyhow::Result<(bool, String)> {
    let out = std::process::Command::new(obr_tests::processes::binary("obr-relay")?)
        .args(["audit", "verify", "--data-dir"])
        .arg(data_dir)
        .output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), said))
}

/// Run `statements` on the relay's database, as its writer would.
fn tamper(
    database: &std::path::Path,
    work: impl AsyncFnOnce(&mut sqlx::SqliteConnection) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use sqlx::Connection as _;
    runtime()?.block_on(async {
        let mut conn =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}", database.display())).await?;
        work(&mut conn).await?;
        conn.close().await?;
        Ok(())
    })
}

/// Finding 9: someone who can write `relay.db` deletes the audit log's
/// tail, or rewrites a record and rehashes every later one — both keep
/// the hash chain linked. The signed checkpoints (a key not in the
/// database) catch both: `obr-relay audit verify` fails.
#[test]
fn a_database_writer_cannot_erase_or_rewrite_the_audit_log() -> anyhow::Result<()> {
    use obr_relay::directory::audit::chain_hash;
    let (stack, api, admin) = admin_at_agent("attack-audit-log")?;
    let bob = stack.relay.user("bob@demo.obr")?;
    stack.agent.select_as_obr(&api, &admin, bob)?;
    let request = rp::registration_request("bob")?;
    let mut hid = HidClient::open(&stack.agent.hid_socket)?;
    assert_eq!(hid.cbor(&request)?.first(), Some(&CTAP2_OK));
    let Stack {
        relay,
        agent,
        scratch,
    } = stack;
    drop(agent);
    // A clean stop writes the last checkpoint.
    relay.proc.stop()?;
    let data_dir = scratch.join("relay");
    let database = data_dir.join("relay.db");
    let (ok, said) = audit_verify(&data_dir)?;
    assert!(ok && said.contains("intact"), "{said}");
    let pristine = scratch.join("pristine.db");
    tamper(&database, async |db| {
        sqlx::query(&format!("VACUUM INTO '{}'", pristine.display()))
            .execute(db)
            .await?;
        Ok(())
    })?;
    let restore = || -> anyhow::Result<()> {
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", database.display()));
        }
        std::fs::copy(&pristine, &database)?;
        Ok(())
    };

    // 1. The tail (the registration's record) deleted: the chain still links.
    tamper(&database, async |db| {
        sqlx::query("DELETE FROM audit_log WHERE seq = (SELECT MAX(seq) FROM audit_log)")
            .execute(db)
            .await?;
        Ok(())
    })?;
    let chain_breaks_at = runtime()?.block_on(async {
        obr_relay::directory::Directory::open(&database)
            .await?
            .verify_audit_chain()
            .await
    })?;
    assert_eq!(chain_breaks_at, None, "the chain alone cannot see it");
    let (ok, said) = audit_verify(&data_dir)?;
    assert!(!ok && said.contains("gone"), "{said}");

    // 2. The registration's record rewritten (another site), every hash
    //    from there recomputed.
    restore()?;
    tamper(&database, async |db| {
        let rows: Vec<(i64, i64, String, String, String, String)> = sqlx::query_as(
            "SELECT seq, at_ms, actor, action, subject, detail FROM audit_log ORDER BY seq",
        )
        .fetch_all(&mut *db)
        .await?;
        let mut prev = "0".repeat(64);
        for (seq, at_ms, actor, action, subject, detail) in rows {
            let detail = if action == "obr.registration" {
                detail.replace(rp::RP_ID, "innocent.example")
            } else {
                detail
            };
            let hash = chain_hash(&prev, seq, at_ms, &actor, &action, &subject, &detail);
            sqlx::query(
                "UPDATE audit_log SET detail = $1, prev_hash = $2, hash = $3 WHERE seq = $4",
            )
            .bind(&detail)
            .bind(&prev)
            .bind(&hash)
            .bind(seq)
            .execute(&mut *db)
            .await?;
            prev = hash;
        }
        Ok(())
    })?;
    let (ok, said) = audit_verify(&data_dir)?;
    assert!(!ok && said.contains("rewritten"), "{said}");

    // 3. A forged checkpoint to match is not signed by the relay's key.
    restore()?;
    let checkpoints = data_dir.join(obr_relay::directory::anchor::CHECKPOINTS_FILE);
    let mut text = std::fs::read_to_string(&checkpoints)?;
    text.push_str(r#"{"seq":1,"hash":"00","at_ms":0,"signature":"AAAA"}"#);
    text.push('\n');
    std::fs::write(&checkpoints, text)?;
    let (ok, said) = audit_verify(&data_dir)?;
    assert!(!ok && said.contains("not signed"), "{said}");
    Ok(())
}

/// Finding 4 (standalone signers): a signer served with mutual TLS talks
/// only to clients whose certificate chains to the deployment's CA. A
/// local user — or anyone who reaches the port — with plaintext gRPC, with
/// TLS and no certificate, or with a certificate of their own CA, cannot
/// call `ResetKey` on bob's key; the relay, with its client certificate,
/// serves an on-behalf registration through it.
#[test]
fn only_relays_reach_a_standalone_signer() -> anyhow::Result<()> {
    use obr_tests::pki::{TestCa, Usage};
    use obr_tests::processes::SignerProc;
    let scratch = Scratch::new("attack-signer-mtls")?;
    let pki = scratch.join("pki");
    let deployment = TestCa::create(&pki, "deployment")?;
    let (signer_cert, signer_key) = deployment.issue("signer", Usage::Server)?;
    let (relay_cert, relay_key) = deployment.issue("relay", Usage::Client)?;
    let own = TestCa::create(&pki, "attacker")?;
    let (attacker_cert, attacker_key) = own.issue("attacker", Usage::Client)?;

    std::fs::create_dir_all(scratch.join("signer"))?;
    let signer = SignerProc::start_with(
        &scratch.join("signer"),
        &[
            "--tls-cert".as_ref(),
            signer_cert.as_os_str(),
            "--tls-key".as_ref(),
            signer_key.as_os_str(),
            "--client-ca".as_ref(),
            deployment.cert().as_os_str(),
        ],
    )?;
    let https = signer.endpoint.replace("http://", "https://");
    let relay = RelayProc::start(
        &scratch.join("relay"),
        &RelayOptions {
            signers: vec![https.clone()],
            extra_args: vec![
                "--signer-ca".into(),
                deployment.cert().into(),
                "--signer-client-cert".into(),
                relay_cert.into(),
                "--signer-client-key".into(),
                relay_key.into(),
            ],
            ..RelayOptions::default()
        },
    )?;
    let agent = AgentProc::start(&scratch.join("agent"), &relay.url)?;
    let api = Api::new(&relay.url);
    let bob = relay.user("bob@demo.obr")?;
    let admin = api.demo_owner(&relay.demo)?;
    agent.login(&api, &admin)?;
    agent.select_as_obr(&api, &admin, bob)?;
    let request = rp::registration_request("bob")?;
    let mut hid = HidClient::open(&agent.hid_socket)?;
    assert_eq!(hid.cbor(&request)?.first(), Some(&CTAP2_OK));

    let reset = |endpoint: String, tls: Option<tonic::transport::ClientTlsConfig>| {
        let user_id = bob.id.clone();
        runtime()?.block_on(async move {
            let mut channel = tonic::transport::Endpoint::from_shared(endpoint)?
                .connect_timeout(Duration::from_secs(3));
            if let Some(tls) = tls {
                channel = channel.tls_config(tls)?;
            }
            let mut client =
                obr_proto::signer::signer_client::SignerClient::new(channel.connect().await?);
            client
                .reset_key(obr_proto::signer::ResetKeyRequest {
                    user_id,
                    acting_admin_id: "made-up".into(),
                })
                .await?;
            anyhow::Ok(())
        })
    };
    let trust_the_signer = tonic::transport::ClientTlsConfig::new().ca_certificate(
        tonic::transport::Certificate::from_pem(std::fs::read(deployment.cert())?),
    );
    let attempts = [
        ("plaintext", reset(signer.endpoint.clone(), None)),
        (
            "TLS without a client certificate",
            reset(https.clone(), Some(trust_the_signer.clone())),
        ),
        (
            "a client certificate of another CA",
            reset(
                https.clone(),
                Some(
                    trust_the_signer.identity(tonic::transport::Identity::from_pem(
                        std::fs::read(&attacker_cert)?,
                        std::fs::read(&attacker_key)?,
                    )),
                ),
            ),
        ),
    ];
    for (how, result) in attempts {
        assert!(result.is_err(), "ResetKey with {how} succeeded");
    }
    assert_eq!(
        api.passkeys(&admin, &bob.id)?.len(),
        1,
        "bob's key was reset"
    );

    // And a signer will not serve plaintext, even on loopback (where any
    // local user reaches it), unless told.
    for listen in ["0.0.0.0:0", "127.0.0.1:0"] {
        let refused = std::process::Command::new(obr_tests::processes::binary("obr-signer")?)
            .args(["--listen", listen, "--database-url", "sqlite::memory:"])
            .arg("--kek-file")
            .arg(scratch.join("signer").join("other.kek"))
            .output()?;
        let said = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{listen}: {said}");
        assert!(said.contains("mutual TLS"), "{listen}: {said}");
    }
    // Nor does a relay talk plaintext to standalone signers, named or
    // found in Redis (where a writer could add its own), unless told.
    for signers in [
        vec!["--signer", signer.endpoint.as_str()],
        vec!["--discover-signers", "--redis-url", "redis://127.0.0.1:1/"],
    ] {
        let refused = std::process::Command::new(obr_tests::processes::binary("obr-relay")?)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(scratch.join("plaintext-relay"))
            .args(&signers)
            .output()?;
        let said = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{signers:?}: {said}");
        assert!(said.contains("mutual TLS"), "{signers:?}: {said}");
    }
    Ok(())
}

/// An admin whose role the directory withdrew keeps no power through an
/// agent logged in and an OBR session selected while they were one: the
/// directory, not the login or session kept in the store, says who is an
/// admin, checked on every request.
#[test]
fn a_revoked_admin_keeps_no_power_through_the_agent() -> anyhow::Result<()> {
    let (stack, api, admin) = admin_at_agent("attack-revoked-admin")?;
    let demo = &stack.relay.demo;
    let bob = stack.relay.user("bob@demo.obr")?;
    stack.agent.select_as_obr(&api, &admin, bob)?;
    let mut hid = HidClient::open(&stack.agent.hid_socket)?;
    let request = rp::registration_request("bob")?;
    assert_eq!(hid.cbor(&request)?.first(), Some(&CTAP2_OK));

    let database = stack.scratch.join("relay").join("relay.db");
    // Revoking an admin is removing their grant (and the marker); the
    // marker alone makes a person an admin nobody may act on, without
    // power (attack 12).
    let set_admin = |id: &str, is_admin: bool| {
        let id = id.to_owned();
        tamper(&database, async move |conn| {
            sqlx::query(
                "UPDATE people SET is_admin = ?1, \
                 grant_sealed = CASE WHEN ?1 THEN grant_sealed END WHERE id = ?2",
            )
            .bind(is_admin)
            .bind(id)
            .execute(conn)
            .await?;
            Ok(())
        })
    };
    // The user became an admin meanwhile: off limits from the next request.
    set_admin(&bob.id, true)?;
    assert_eq!(
        hid.cbor(&request)?.first(),
        Some(&CTAP2_ERR_OPERATION_DENIED)
    );
    // That ended the session (recorded); bob a user again, a new one serves.
    let audit = api.audit(&admin)?;
    let ended = audit["records"].as_array().and_then(|r| r.last()).cloned();
    assert!(
        ended
            .as_ref()
            .is_some_and(|r| r["action"] == "obr.ended"
                && r["detail"].to_string().contains("grant_withdrawn")),
        "{ended:?}"
    );
    set_admin(&bob.id, false)?;
    stack
        .agent
        .wait_status("normal mode", std::time::Duration::from_secs(5))?;
    stack.agent.select_as_obr(&api, &admin, bob)?;
    assert_eq!(hid.cbor(&request)?.first(), Some(&CTAP2_OK));
    // The admin is one no more.
    set_admin(&demo.admin_id, false)?;
    assert_eq!(
        hid.cbor(&request)?.first(),
        Some(&CTAP2_ERR_OPERATION_DENIED)
    );
    let helpdesk = api.demo_helpdesk(demo)?;
    assert_eq!(api.passkeys(&helpdesk, &bob.id)?.len(), 2);
    Ok(())
}
