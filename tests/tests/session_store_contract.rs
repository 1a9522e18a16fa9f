//! One contract, two session stores: the in-memory store (embedded mode)
//! and the Redis store (a private `redis-server` on a free port) must give
//! the same answers. `scripts/test` installs `redis-server`; without it the
//! Redis half fails with a message saying so.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use obr_relay::sessions::{
    AdminSession, AgentEvent, Approver, DeviceGrant, MemoryStore, ObrConflict, ObrPolicy,
    ObrSession, Pairing, Principal, RedisStore, Sealer, SessionStore, TokenScope,
};
use obr_signer::RedisEndpoint;
use obr_tests::redis_server::RedisServer;

fn sealer() -> Sealer {
    Sealer::new(&[0x5e; 32])
}

fn principal(id: &str, scope: TokenScope) -> Principal {
    Principal {
        person_id: id.to_owned(),
        email: format!("{id}@example.org"),
        is_admin: true,
        scope,
        session: None,
    }
}

/// An admin's sign-in `id`, ending `lifetime` from now.
fn signed_in(id: &str, session: &str, lifetime: Duration) -> Principal {
    let now = obr_relay::clock::now_ms();
    Principal {
        session: Some(AdminSession {
            id: session.to_owned(),
            created_at_ms: now,
            expires_at_ms: now + i64::try_from(lifetime.as_millis()).unwrap(),
            address: "192.0.2.7".to_owned(),
            user_agent: "contract".to_owned(),
        }),
        ..principal(id, TokenScope::Admin)
    }
}

/// A session on `agent` for a user of its own (one session per user).
fn session(id: &str, agent: &str, expires_at_ms: i64) -> ObrSession {
    session_for(id, agent, &format!("user-of-{agent}"), expires_at_ms)
}

fn session_for(id: &str, agent: &str, user: &str, expires_at_ms: i64) -> ObrSession {
    ObrSession {
        id: id.to_owned(),
        agent_id: agent.to_owned(),
        admin_id: "admin".to_owned(),
        admin_email: "admin@example.org".to_owned(),
        user_id: user.to_owned(),
        user_email: format!("{user}@example.org"),
        started_at_ms: expires_at_ms - 60_000,
        expires_at_ms,
        policy: ObrPolicy::default(),
        awaiting: None,
    }
}

async fn contract(store: Arc<dyn SessionStore>) {
    // Tokens expire by themselves.
    let admin = principal("admin", TokenScope::Admin);
    let long = Duration::from_secs(60);
    store
        .put_token("t1", &admin, Duration::from_millis(200), long)
        .await
        .unwrap();
    assert_eq!(store.get_token("t1").await.unwrap(), Some(admin.clone()));
    assert_eq!(store.get_token("unknown").await.unwrap(), None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        store.get_token("t1").await.unwrap(),
        None,
        "token outlived its TTL"
    );

    // A token is gone once deleted (logout), and only then.
    store.put_token("t2", &admin, long, long).await.unwrap();
    assert!(store.delete_token("t2").await.unwrap());
    assert_eq!(store.get_token("t2").await.unwrap(), None);
    assert!(!store.delete_token("t2").await.unwrap(), "deleted twice");

    // Idle expiry: a token unused for `idle` ends; each touch gives it
    // `idle` more, never past the end of its lifetime.
    let idle = Duration::from_millis(400);
    let lifetime = Duration::from_millis(1500);
    let ada = signed_in("ada", "s-ada", lifetime);
    let ends = ada.session.as_ref().unwrap().expires_at_ms;
    store.put_token("idle", &ada, lifetime, idle).await.unwrap();
    store.put_token("kept", &ada, lifetime, idle).await.unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(store.touch_token("kept", idle, ends).await.unwrap());
    }
    assert_eq!(
        store.get_token("idle").await.unwrap(),
        None,
        "idle token lived on"
    );
    assert!(
        !store.touch_token("idle", idle, ends).await.unwrap(),
        "touched after it ended"
    );
    assert_eq!(store.get_token("kept").await.unwrap(), Some(ada.clone()));
    while obr_relay::clock::now_ms() < ends {
        store.touch_token("kept", idle, ends).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        store.get_token("kept").await.unwrap(),
        None,
        "a used token outlived its lifetime"
    );

    // An admin's live tokens are listed (oldest first), nobody else's.
    let first = signed_in("grace", "s-1", long);
    store.put_token("g1", &first, long, long).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = signed_in("grace", "s-2", long);
    store.put_token("g2", &second, long, long).await.unwrap();
    store
        .put_token("other", &signed_in("hopper", "s-3", long), long, long)
        .await
        .unwrap();
    let listed = store.tokens_of("grace").await.unwrap();
    assert_eq!(
        listed,
        vec![("g1".to_owned(), first), ("g2".to_owned(), second)]
    );
    assert!(store.delete_token("g1").await.unwrap());
    assert_eq!(store.tokens_of("grace").await.unwrap().len(), 1);
    assert!(store.tokens_of("nobody").await.unwrap().is_empty());

    // A pairing is taken at most once, and not after its TTL.
    let pairing = Pairing {
        admin_id: "admin".into(),
        user_id: "bob".into(),
        policy: ObrPolicy::default(),
        ttl_ms: Some(60_000),
        created_at_ms: 1,
    };
    store
        .put_pairing("p-hash", &pairing, Duration::from_secs(60))
        .await
        .unwrap();
    let (a, b) = tokio::join!(store.take_pairing("p-hash"), store.take_pairing("p-hash"));
    let taken: Vec<Pairing> = [a.unwrap(), b.unwrap()].into_iter().flatten().collect();
    assert_eq!(taken, vec![pairing.clone()], "taken exactly once");
    store
        .put_pairing("short", &pairing, Duration::from_millis(100))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(store.take_pairing("short").await.unwrap(), None);

    // A device-code grant is taken at most once.
    let grant = DeviceGrant {
        user_code: "BCDF-GHJK".into(),
        agent_id: "agent-1".into(),
        created_at_ms: 1,
    };
    store
        .put_grant(&grant, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(store.take_grant("BCDF-GHJK").await.unwrap(), Some(grant));
    assert_eq!(store.take_grant("BCDF-GHJK").await.unwrap(), None);

    // Agent logins, and the agents of a person.
    let agent_principal = principal("admin", TokenScope::Agent);
    store
        .put_agent_login("agent-1", &agent_principal, Duration::from_secs(60))
        .await
        .unwrap();
    store
        .put_agent_login("agent-2", &agent_principal, Duration::from_secs(60))
        .await
        .unwrap();
    store
        .put_agent_login(
            "agent-3",
            &principal("other", TokenScope::Agent),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(
        store.agent_login("agent-1").await.unwrap(),
        Some(agent_principal.clone())
    );
    assert_eq!(
        store.agents_of("admin").await.unwrap(),
        vec!["agent-1", "agent-2"]
    );
    // Re-login as someone else moves the agent.
    store
        .put_agent_login(
            "agent-2",
            &principal("other", TokenScope::Agent),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(store.agents_of("admin").await.unwrap(), vec!["agent-1"]);
    // Logged out: gone from the logins and from its person's agents.
    assert!(store.delete_agent_login("agent-2").await.unwrap());
    assert!(!store.delete_agent_login("agent-2").await.unwrap(), "twice");
    assert_eq!(store.agent_login("agent-2").await.unwrap(), None);
    assert_eq!(store.agents_of("other").await.unwrap(), vec!["agent-3"]);

    // One OBR session per agent and per user; compare-and-delete on end.
    let far = 4_000_000_000_000;
    let s1 = session_for("s1", "agent-1", "bob", far);
    assert_eq!(store.create_obr(&s1).await.unwrap(), Ok(()));
    assert_eq!(
        store
            .create_obr(&session_for("s2", "agent-1", "carol", far))
            .await
            .unwrap(),
        Err(ObrConflict::Agent),
        "second session on one agent"
    );
    assert_eq!(
        store
            .create_obr(&session_for("s3", "agent-2", "bob", far))
            .await
            .unwrap(),
        Err(ObrConflict::User),
        "second session on one user's key"
    );
    assert_eq!(store.get_obr("agent-1").await.unwrap(), Some(s1.clone()));
    assert_eq!(
        store.end_obr("agent-1", "not-s1").await.unwrap(),
        None,
        "wrong id must not end it"
    );
    assert_eq!(
        store.end_obr("agent-1", "s1").await.unwrap(),
        Some(s1.clone())
    );
    assert_eq!(store.get_obr("agent-1").await.unwrap(), None);
    assert_eq!(
        store.end_obr("agent-1", "s1").await.unwrap(),
        None,
        "ended twice"
    );
    // The user's key is free again once the session ended.
    let s4 = session_for("s4", "agent-2", "bob", far);
    assert_eq!(store.create_obr(&s4).await.unwrap(), Ok(()));
    assert_eq!(store.end_obr("agent-2", "s4").await.unwrap(), Some(s4));

    // Four eyes: found by id, started once (its policy kept), then served.
    let mut pending = session_for("p1", "agent-4", "dora", far);
    pending.policy = ObrPolicy {
        rp_ids: vec!["login.microsoft.com".into()],
        max_registrations: Some(2),
        four_eyes: Some(Approver::User),
    };
    pending.awaiting = Some(Approver::User);
    assert_eq!(store.create_obr(&pending).await.unwrap(), Ok(()));
    assert_eq!(store.obr_by_id("p1").await.unwrap(), Some(pending.clone()));
    assert_eq!(store.obr_by_id("nope").await.unwrap(), None);
    let (a, b) = tokio::join!(
        store.start_awaiting_obr("p1"),
        store.start_awaiting_obr("p1")
    );
    let started: Vec<ObrSession> = [a.unwrap(), b.unwrap()].into_iter().flatten().collect();
    let expected = ObrSession {
        awaiting: None,
        ..pending.clone()
    };
    assert_eq!(started, vec![expected.clone()], "started exactly once");
    assert_eq!(
        store.get_obr("agent-4").await.unwrap(),
        Some(expected.clone())
    );
    assert_eq!(store.start_awaiting_obr("p1").await.unwrap(), None);

    // Registrations are counted up to the limit; a count given back frees
    // one; a session that ended counts nothing.
    assert_eq!(
        store.count_registration(&expected, 2).await.unwrap(),
        Some(1)
    );
    assert_eq!(
        store.count_registration(&expected, 2).await.unwrap(),
        Some(2)
    );
    assert_eq!(store.count_registration(&expected, 2).await.unwrap(), None);
    store.uncount_registration("p1").await.unwrap();
    assert_eq!(
        store.count_registration(&expected, 2).await.unwrap(),
        Some(2)
    );
    assert_eq!(
        store.end_obr("agent-4", "p1").await.unwrap(),
        Some(expected.clone())
    );
    assert_eq!(store.count_registration(&expected, 2).await.unwrap(), None);

    // Expiry: each expired session is claimed exactly once.
    let now = 1_000_000;
    assert_eq!(
        store
            .create_obr(&session("e1", "agent-7", now - 10))
            .await
            .unwrap(),
        Ok(())
    );
    assert_eq!(
        store
            .create_obr(&session("e2", "agent-8", now))
            .await
            .unwrap(),
        Ok(())
    );
    assert_eq!(
        store
            .create_obr(&session("live", "agent-9", far))
            .await
            .unwrap(),
        Ok(())
    );
    let (a, b) = tokio::join!(store.claim_expired(now), store.claim_expired(now));
    let mut claimed: Vec<String> = a
        .unwrap()
        .into_iter()
        .chain(b.unwrap())
        .map(|s| s.id)
        .collect();
    claimed.sort();
    assert_eq!(claimed, vec!["e1", "e2"]);
    assert!(store.claim_expired(now).await.unwrap().is_empty());
    assert_eq!(store.get_obr("agent-7").await.unwrap(), None);
    assert_eq!(
        store.get_obr("agent-9").await.unwrap().map(|s| s.id),
        Some("live".into())
    );
    // An ended session is never claimed as expired later.
    assert_eq!(
        store
            .create_obr(&session("ended", "agent-10", now))
            .await
            .unwrap(),
        Ok(())
    );
    store.end_obr("agent-10", "ended").await.unwrap();
    assert!(store.claim_expired(now + 1).await.unwrap().is_empty());
    // A claimed (expired) session frees its user's key too.
    assert_eq!(
        store
            .create_obr(&session_for("after", "agent-11", "user-of-agent-7", far))
            .await
            .unwrap(),
        Ok(())
    );

    // Events reach every subscriber.
    let mut first = store.subscribe().await.unwrap();
    let mut second = store.subscribe().await.unwrap();
    let event = AgentEvent::ModeChanged {
        agent_id: "agent-1".into(),
    };
    store.publish(&event).await.unwrap();
    for sub in [&mut first, &mut second] {
        let got = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap();
        assert_eq!(got, Some(event.clone()));
    }
}

#[tokio::test]
async fn memory_store_meets_the_contract() {
    contract(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn redis_store_meets_the_contract() {
    let server = RedisServer::start()
        .expect("redis-server failed to start")
        .expect(
            "redis-server is not installed: `apt-get install -y redis-server` (scripts/test does)",
        );
    let store = RedisStore::connect(&RedisEndpoint::new(server.url()), "contract:", sealer())
        .await
        .unwrap();
    contract(Arc::new(store)).await;
}

#[tokio::test]
async fn redis_store_reports_an_unreachable_server() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let result = RedisStore::connect(
        &RedisEndpoint::new(format!("redis://127.0.0.1:{port}/")),
        "x:",
        sealer(),
    )
    .await;
    assert!(
        result.is_err(),
        "connecting to a closed port must fail, not hang"
    );
}

/// A Redis writer (no cluster key) writes values and events the relay
/// would act on: an admin token, an agent login, an OBR session, a copy of
/// a genuine value under another key, an event. None is read; genuine
/// values still are.
#[tokio::test]
async fn redis_store_reads_nothing_a_redis_writer_forged() {
    let server = RedisServer::start()
        .expect("redis-server failed to start")
        .expect(
            "redis-server is not installed: `apt-get install -y redis-server` (scripts/test does)",
        );
    let store = RedisStore::connect(&RedisEndpoint::new(server.url()), "forge:", sealer())
        .await
        .unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let writer = client.get_multiplexed_async_connection().await.unwrap();
    let set = |key: &str, value: String| {
        let (key, mut writer) = (key.to_owned(), writer.clone());
        async move {
            let _: () = redis::AsyncCommands::set(&mut writer, key, value)
                .await
                .unwrap();
        }
    };
    let admin = principal("admin", TokenScope::Admin);
    let admin_json = serde_json::to_string(&admin).unwrap();

    // Minted in clear, and sealed by another deployment's key.
    set("forge:token:minted", admin_json.clone()).await;
    assert_eq!(store.get_token("minted").await.unwrap(), None);
    set(
        "forge:token:other-key",
        Sealer::new(&[1; 32]).seal("forge:token:other-key", &admin_json, i64::MAX),
    )
    .await;
    assert_eq!(store.get_token("other-key").await.unwrap(), None);
    // A genuine token copied to the attacker's token hash.
    store
        .put_token(
            "genuine",
            &admin,
            Duration::from_secs(60),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_token("genuine").await.unwrap(),
        Some(admin.clone())
    );
    let genuine: String = redis::AsyncCommands::get(&mut writer.clone(), "forge:token:genuine")
        .await
        .unwrap();
    set("forge:token:copied", genuine).await;
    assert_eq!(store.get_token("copied").await.unwrap(), None);
    // A genuine token saved, and put back (for good) after it expired.
    store
        .put_token(
            "short",
            &admin,
            Duration::from_millis(200),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let saved: String = redis::AsyncCommands::get(&mut writer.clone(), "forge:token:short")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    set("forge:token:short", saved).await;
    assert_eq!(store.get_token("short").await.unwrap(), None, "replayed");
    // An agent login, minted.
    set(
        "forge:agent:attacker",
        serde_json::to_string(&principal("admin", TokenScope::Agent)).unwrap(),
    )
    .await;
    assert_eq!(store.agent_login("attacker").await.unwrap(), None);
    // A genuine OBR session pointed at from the attacker's agent.
    let far = 4_000_000_000_000;
    let victim = session_for("victim-session", "victim-agent", "bob", far);
    assert_eq!(store.create_obr(&victim).await.unwrap(), Ok(()));
    set("forge:obr:agent:attacker", "victim-session".to_owned()).await;
    assert_eq!(store.get_obr("attacker").await.unwrap(), None);
    assert_eq!(
        store.get_obr("victim-agent").await.unwrap(),
        Some(victim.clone())
    );
    // A session minted in clear.
    set("forge:obr:agent:minted-agent", "minted".to_owned()).await;
    set(
        "forge:obr:session:minted",
        serde_json::to_string(&session_for("minted", "minted-agent", "carol", far)).unwrap(),
    )
    .await;
    assert_eq!(store.get_obr("minted-agent").await.unwrap(), None);

    // A forged event is dropped; the genuine one after it arrives.
    let mut events = store.subscribe().await.unwrap();
    let _: i64 = redis::AsyncCommands::publish(
        &mut writer.clone(),
        "forge:events",
        r#"{"kind":"login_changed","agent_id":"forged"}"#,
    )
    .await
    .unwrap();
    let genuine = AgentEvent::ModeChanged {
        agent_id: "agent-1".into(),
    };
    store.publish(&genuine).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap();
    assert_eq!(got, Some(genuine));
}
