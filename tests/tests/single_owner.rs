//! Exactly one live signer per user, through real processes: two signers
//! share a database and a Redis (membership + leases), a relay discovers
//! them, an agent registers and signs for bob. Then bob's owner is frozen
//! (SIGSTOP) past its lease: the other signer takes over and signs; the
//! frozen one is woken and never signs again for bob — its stale actor's
//! writes are fenced or it redirects to the new owner — and no two
//! assertions ever carry the same counter. And bob's owner told to stop
//! (SIGTERM) while bob's passkeys are used back to back: it leaves the
//! membership, hands bob over at once and exits; not one request fails.

use std::ffi::OsStr;
use std::time::{Duration, Instant};

use obr_proto::signer::signer_client::SignerClient;
use obr_proto::signer::{Acting, CtapCall, LinkRequest, link_request};
use obr_tests::api::Api;
use obr_tests::hid_client::HidClient;
use obr_tests::processes::{AgentProc, RelayOptions, RelayProc, SignerProc, admin_at_agent};
use obr_tests::redis_server::RedisServer;
use obr_tests::registrations::Registrations;
use obr_tests::rp;
use obr_tests::scratch::Scratch;

const LEASE_TTL_MS: u64 = 1000;

fn start_signer(dir: &std::path::Path, redis: &str) -> anyhow::Result<SignerProc> {
    let ttl = LEASE_TTL_MS.to_string();
    let args = ["--redis-url", redis, "--lease-ttl-ms", ttl.as_str()];
    let extra: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    SignerProc::start_with(dir, &extra)
}

/// The signer that holds `user_id`'s lease, as Redis says.
fn lease_holder(redis: &RedisServer, user_id: &str) -> anyhow::Result<Option<String>> {
    let client = redis::Client::open(redis.url())?;
    let mut conn = client.get_connection()?;
    Ok(redis::cmd("GET")
        .arg(format!("obr:lease:{user_id}"))
        .query(&mut conn)?)
}

#[test]
fn a_frozen_owner_is_replaced_and_can_never_sign_again() -> anyhow::Result<()> {
    let redis =
        RedisServer::start()?.expect("redis-server is not installed (scripts/test installs it)");
    let scratch = Scratch::new("owner")?;
    let a = start_signer(&scratch.join("signers"), &redis.url())?;
    let b = start_signer(&scratch.join("signers"), &redis.url())?;
    let options = RelayOptions {
        redis_url: Some(redis.url()),
        discover_signers: true,
        ..RelayOptions::default()
    };
    let (relay, agent, api, admin) = admin_at_agent(&scratch, &options)?;
    let bob = relay.user("bob@demo.obr")?.clone();
    let session = agent.select_as_obr(&api, &admin, &bob)?;

    // Register and sign through the relay; find who owns bob.
    let webauthn = rp::webauthn()?;
    let (request, reg_state) = rp::start_registration(&webauthn, "bob", "Bob")?;
    let mut hid = HidClient::open(&agent.hid_socket)?;
    let key = webauthn.finish_securitykey_registration(
        &request.credential(&hid.cbor(&request.ctap_request)?)?,
        &reg_state,
    )?;
    let mut counters = Vec::new();
    let sign = |hid: &mut HidClient| -> anyhow::Result<u32> {
        let (options, state) =
            webauthn.start_securitykey_authentication(std::slice::from_ref(&key))?;
        let assertion = rp::get_assertion(&options)?;
        let response = hid.cbor(&assertion.ctap_request)?;
        webauthn.finish_securitykey_authentication(&assertion.credential(&response)?, &state)?;
        rp::assertion_counter(&response)
    };
    for _ in 0..3 {
        counters.push(sign(&mut hid)?);
    }
    let rt = tokio::runtime::Runtime::new()?;
    let owner_of_bob = || lease_holder(&redis, &bob.id);
    let first_owner = owner_of_bob()?.expect("bob has a lease");
    let (frozen, survivor) = if first_owner == a.endpoint {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert!([&a.endpoint, &b.endpoint].contains(&&first_owner));

    // Freeze the owner past its lease and the membership window.
    frozen.proc.freeze()?;
    let outcome = (|| -> anyhow::Result<()> {
        std::thread::sleep(Duration::from_millis(LEASE_TTL_MS) + Duration::from_secs(3));
        // The relay now routes bob to the survivor, which takes over.
        for _ in 0..3 {
            counters.push(sign(&mut hid)?);
        }
        assert_eq!(owner_of_bob()?.as_deref(), Some(survivor.endpoint.as_str()));
        Ok(())
    })();
    // Queue a call for bob at the frozen owner, then wake it: whatever it
    // does first (renew and passivate, or run the call on its stale actor),
    // it must not produce a signature.
    let (options, _) = webauthn.start_securitykey_authentication(std::slice::from_ref(&key))?;
    let stale_request = rp::get_assertion(&options)?.ctap_request;
    let endpoint = frozen.endpoint.clone();
    let acting = Acting {
        admin_id: relay.demo.admin_id.clone(),
        obr_session_id: session["id"].as_str().unwrap_or_default().to_owned(),
    };
    let stale = rt.spawn({
        let call = CtapCall {
            user_id: bob.id.clone(),
            payload: stale_request,
            budget_ms: 10_000,
            acting: Some(acting),
            approval_id: String::new(),
            approval_mac: Vec::new(),
        };
        async move { link_calls(&endpoint, vec![call]).await }
    });
    std::thread::sleep(Duration::from_millis(300));
    frozen.proc.thaw()?;
    outcome?;
    // Give the woken pod a moment to find its lease gone (it renews every
    // third of the TTL) before the relay may route bob back to it.
    std::thread::sleep(Duration::from_millis(LEASE_TTL_MS));
    let (_, reply) = rt
        .block_on(stale)??
        .pop()
        .expect("a reply from the woken signer");
    eprintln!(
        "the woken stale owner answered {:?} (owner {:?})",
        reply.payload, reply.owner
    );
    let refused =
        reply.payload == vec![0x7F] || (!reply.owner.is_empty() && reply.payload.is_empty());
    assert!(refused, "the stale owner signed: {reply:?}");
    if !reply.owner.is_empty() {
        assert_eq!(reply.owner, survivor.endpoint);
    }

    // And bob keeps signing, through whichever pod the relay picks now.
    for _ in 0..3 {
        counters.push(sign(&mut hid)?);
    }
    let mut sorted = counters.clone();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        counters.len(),
        "duplicate counters: {counters:?}"
    );
    assert!(
        counters.windows(2).all(|w| w[0] < w[1]),
        "counters not increasing: {counters:?}"
    );
    Ok(())
}

/// Two signer processes, one database and one Redis: the first calls of
/// 1,000 users reach both processes at once, and every user ends up owned
/// by exactly one of them — its lease names that process, which answered,
/// while the other pointed at it (and still does, without activating).
#[test]
fn a_thousand_users_race_two_signer_processes_and_each_gets_one_owner() -> anyhow::Result<()> {
    let redis =
        RedisServer::start()?.expect("redis-server is not installed (scripts/test installs it)");
    let scratch = Scratch::new("race")?;
    std::fs::create_dir_all(scratch.join("signers"))?;
    let pods = [
        start_signer(&scratch.join("signers"), &redis.url())?,
        start_signer(&scratch.join("signers"), &redis.url())?,
    ];
    let users: Vec<String> = (0..1000).map(|i| format!("race-user-{i:04}")).collect();
    let rt = tokio::runtime::Runtime::new()?;
    let first: Vec<Vec<(u64, obr_proto::signer::LinkResponse)>> = rt.block_on(async {
        let rounds = pods.iter().map(|pod| send_all(&pod.endpoint, &users));
        futures_util::future::try_join_all(rounds).await
    })?;
    let mut owned = [0usize; 2];
    let client = redis::Client::open(redis.url())?;
    let mut conn = client.get_connection()?;
    for (i, user) in users.iter().enumerate() {
        let id = i as u64;
        let answers: Vec<&obr_proto::signer::LinkResponse> = first
            .iter()
            .map(|replies| {
                &replies
                    .iter()
                    .find(|(rid, _)| *rid == id)
                    .expect("a reply")
                    .1
            })
            .collect();
        let owners: Vec<usize> = (0..2).filter(|&p| answers[p].owner.is_empty()).collect();
        assert_eq!(owners.len(), 1, "{user}: {answers:?}");
        let (owner, other) = (owners[0], 1 - owners[0]);
        assert_eq!(answers[owner].payload.first(), Some(&0), "{user}");
        assert_eq!(answers[other].owner, pods[owner].endpoint, "{user}");
        let lease: Option<String> = redis::cmd("GET")
            .arg(format!("obr:lease:{user}"))
            .query(&mut conn)?;
        assert_eq!(
            lease.as_deref(),
            Some(pods[owner].endpoint.as_str()),
            "{user}"
        );
        owned[owner] += 1;
    }
    // Asked again, every non-owner still points at the owner.
    let second = rt.block_on(async {
        let rounds = pods.iter().map(|pod| send_all(&pod.endpoint, &users));
        futures_util::future::try_join_all(rounds).await
    })?;
    for (i, user) in users.iter().enumerate() {
        let redirected = second
            .iter()
            .filter(|replies| {
                replies
                    .iter()
                    .any(|(rid, r)| *rid == i as u64 && !r.owner.is_empty())
            })
            .count();
        assert_eq!(redirected, 1, "{user}");
    }
    eprintln!("owners: {owned:?}");
    assert_eq!(owned[0] + owned[1], 1000);
    Ok(())
}

/// One getInfo per user over one `Link` stream to `endpoint`; the replies
/// by request id (= the user's index).
async fn send_all(
    endpoint: &str,
    users: &[String],
) -> anyhow::Result<Vec<(u64, obr_proto::signer::LinkResponse)>> {
    let calls = users.iter().map(|user| CtapCall {
        user_id: user.clone(),
        payload: vec![0x04],
        budget_ms: 30_000,
        acting: None,
        approval_id: String::new(),
        approval_mac: Vec::new(),
    });
    link_calls(endpoint, calls.collect()).await
}

/// `calls` over one `Link` stream to `endpoint`, request ids 0, 1, ...;
/// their replies by request id, in the order they came.
async fn link_calls(
    endpoint: &str,
    calls: Vec<CtapCall>,
) -> anyhow::Result<Vec<(u64, obr_proto::signer::LinkResponse)>> {
    let mut client = SignerClient::connect(endpoint.to_owned()).await?;
    let count = calls.len();
    let (tx, rx) = tokio::sync::mpsc::channel(count.max(1));
    for (i, call) in calls.into_iter().enumerate() {
        tx.send(LinkRequest {
            id: i as u64,
            kind: Some(link_request::Kind::Ctap(call)),
        })
        .await?;
    }
    let mut replies = client
        .link(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let reply = replies
            .message()
            .await?
            .ok_or_else(|| anyhow::anyhow!("link ended early"))?;
        out.push((reply.id, reply));
    }
    drop(tx);
    Ok(out)
}

/// The relay hashes each user to a preferred signer; when another pod
/// already holds the user's lease, the preferred one answers with the
/// owner and the relay follows it — the browser sees only the answer.
#[test]
fn the_relay_follows_a_redirect_to_the_owner() -> anyhow::Result<()> {
    use sha2::{Digest, Sha256};
    let redis =
        RedisServer::start()?.expect("redis-server is not installed (scripts/test installs it)");
    let scratch = Scratch::new("redirect")?;
    let pods = [
        start_signer(&scratch.join("signers"), &redis.url())?,
        start_signer(&scratch.join("signers"), &redis.url())?,
    ];
    let options = RelayOptions {
        redis_url: Some(redis.url()),
        discover_signers: true,
        ..RelayOptions::default()
    };
    let relay = RelayProc::start(&scratch.join("relay"), &options)?;
    let bob = relay.user("bob@demo.obr")?.clone();
    // The relay's choice for bob (rendezvous hashing, as in relay/src/routing).
    let weight = |endpoint: &str| {
        let digest = Sha256::new()
            .chain_update(endpoint.as_bytes())
            .chain_update([0u8])
            .chain_update(bob.id.as_bytes())
            .finalize();
        u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
    };
    let preferred = if weight(&pods[0].endpoint) > weight(&pods[1].endpoint) {
        0
    } else {
        1
    };
    let other = &pods[1 - preferred];
    // The other pod takes bob first (a call straight to it).
    let rt = tokio::runtime::Runtime::new()?;
    let first = rt.block_on(send_all(&other.endpoint, std::slice::from_ref(&bob.id)))?;
    assert!(first[0].1.owner.is_empty(), "{first:?}");

    let agent = AgentProc::start(&scratch.join("agent"), &relay.url)?;
    let api = Api::new(&relay.url);
    let admin = api.demo_owner(&relay.demo)?;
    agent.login(&api, &admin)?;
    agent.select_as_obr(&api, &admin, &bob)?;
    let webauthn = rp::webauthn()?;
    let (request, state) = rp::start_registration(&webauthn, "bob", "Bob")?;
    let mut hid = HidClient::open(&agent.hid_socket)?;
    let response = hid.cbor(&request.ctap_request)?;
    webauthn.finish_securitykey_registration(&request.credential(&response)?, &state)?;
    let client = redis::Client::open(redis.url())?;
    let mut conn = client.get_connection()?;
    let lease: Option<String> = redis::cmd("GET")
        .arg(format!("obr:lease:{}", bob.id))
        .query(&mut conn)?;
    assert_eq!(
        lease.as_deref(),
        Some(other.endpoint.as_str()),
        "the owner kept bob"
    );
    Ok(())
}

#[test]
fn a_draining_signer_hands_its_users_over_without_failing_a_request() -> anyhow::Result<()> {
    let redis =
        RedisServer::start()?.expect("redis-server is not installed (scripts/test installs it)");
    let scratch = Scratch::new("signer-drain")?;
    // Each signer answers gRPC health checks on a port of its own.
    let free_port = || -> anyhow::Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let signer = |health: u16| -> anyhow::Result<SignerProc> {
        let (ttl, health) = (LEASE_TTL_MS.to_string(), format!("127.0.0.1:{health}"));
        let args = [
            "--redis-url",
            &redis.url(),
            "--lease-ttl-ms",
            &ttl,
            "--health-listen",
            &health,
        ];
        let extra: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        SignerProc::start_with(&scratch.join("signers"), &extra)
    };
    let (a_health, b_health) = (free_port()?, free_port()?);
    let (a, b) = (signer(a_health)?, signer(b_health)?);
    let options = RelayOptions {
        redis_url: Some(redis.url()),
        discover_signers: true,
        ..RelayOptions::default()
    };
    let (relay, agent, api, admin) = admin_at_agent(&scratch, &options)?;
    let bob = relay.user("bob@demo.obr")?.clone();
    agent.select_as_obr(&api, &admin, &bob)?;

    let load = Registrations::start(&agent.hid_socket, "bob");
    load.wait_for(10)?;
    let owner_of_bob = || lease_holder(&redis, &bob.id);
    let owner = owner_of_bob()?.expect("bob has a lease");
    let ((draining, health), survivor) = if owner == a.endpoint {
        ((a, a_health), b)
    } else {
        ((b, b_health), a)
    };
    let rt = tokio::runtime::Runtime::new()?;
    let status_of = |port: u16| -> anyhow::Result<i32> {
        rt.block_on(async {
            use tonic_health::pb::health_client::HealthClient;
            let channel =
                tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
                    .connect()
                    .await?;
            let mut client = HealthClient::new(channel);
            let answer = client
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await?;
            anyhow::Ok(answer.into_inner().status)
        })
    };
    const SERVING: i32 = 1;
    assert_eq!(status_of(health)?, SERVING);
    let before = load.done();
    let started = Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &draining.proc.pid().to_string()])
        .status()?;
    let deadline = Instant::now() + Duration::from_secs(1);
    while status_of(health)? == SERVING {
        anyhow::ensure!(Instant::now() < deadline, "still SERVING while draining");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = draining.proc.stop()?;
    let took = started.elapsed();
    assert!(status.success(), "the draining signer exited with {status}");
    load.wait_for(before + 10)?;
    let (done, failed, longest) = load.stop()?;
    assert_eq!(
        failed,
        0,
        "{failed} of {} registrations failed",
        done + failed
    );
    assert_eq!(owner_of_bob()?.as_deref(), Some(survivor.endpoint.as_str()));
    println!("signer drained in {took:?}; {done} registrations, none failed; longest {longest:?}");
    assert!(took < Duration::from_secs(5), "draining took {took:?}");
    Ok(())
}
