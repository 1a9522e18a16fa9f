//! The placement protocol on a private Redis: leases are exclusive, renew
//! only for their holder, run out when not renewed (a paused pod), and are
//! released by compare-and-delete; membership shows live pods only.

use std::time::Duration;

use obr_signer::RedisEndpoint;
use obr_signer::placement::{Lease, Placement, live_members};
use obr_tests::redis_server::RedisServer;

#[tokio::test]
async fn leases_are_exclusive_and_expire() {
    let redis = RedisServer::start()
        .unwrap()
        .expect("redis-server is not installed (scripts/test installs it)");
    let ttl = Duration::from_millis(400);
    let a = Placement::connect(&RedisEndpoint::new(redis.url()), "t:", "http://a:1", ttl)
        .await
        .unwrap();
    let b = Placement::connect(&RedisEndpoint::new(redis.url()), "t:", "http://b:1", ttl)
        .await
        .unwrap();

    assert_eq!(a.acquire("u1").await.unwrap(), Lease::Owned);
    assert_eq!(
        a.acquire("u1").await.unwrap(),
        Lease::Owned,
        "re-acquire by the holder renews"
    );
    assert_eq!(
        b.acquire("u1").await.unwrap(),
        Lease::HeldBy("http://a:1".into())
    );
    assert!(!b.renew("u1").await.unwrap(), "only the holder renews");
    assert!(!b.release("u1").await.unwrap(), "only the holder releases");
    assert!(a.renew("u1").await.unwrap());

    // A holder that stops renewing (paused) loses the lease at its TTL.
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    assert_eq!(b.acquire("u1").await.unwrap(), Lease::Owned);
    assert!(
        !a.renew("u1").await.unwrap(),
        "the woken stale owner learns it lost"
    );
    assert!(
        !a.release("u1").await.unwrap(),
        "and cannot release the new owner's lease"
    );
    assert!(b.release("u1").await.unwrap());
    assert_eq!(a.acquire("u1").await.unwrap(), Lease::Owned);

    // Other users are independent.
    assert_eq!(b.acquire("u2").await.unwrap(), Lease::Owned);
}

#[tokio::test]
async fn membership_shows_live_pods() {
    let redis = RedisServer::start()
        .unwrap()
        .expect("redis-server is not installed (scripts/test installs it)");
    let a = Placement::connect(
        &RedisEndpoint::new(redis.url()),
        "m:",
        "http://a:1",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let b = Placement::connect(
        &RedisEndpoint::new(redis.url()),
        "m:",
        "http://b:1",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    a.beat().await.unwrap();
    b.beat().await.unwrap();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_connection_manager().await.unwrap();
    let mut live = live_members(&mut conn, "m:").await.unwrap();
    live.sort();
    assert_eq!(live, vec!["http://a:1", "http://b:1"]);
    b.leave().await.unwrap();
    assert_eq!(
        live_members(&mut conn, "m:").await.unwrap(),
        vec!["http://a:1"]
    );
    assert!(live_members(&mut conn, "other:").await.unwrap().is_empty());
}

/// Two signers (in one process here, each its own `SignerCore` with its
/// own actor threads), one database, one Redis: 1,000 users whose first
/// calls reach both pods at once each end up active on exactly one of
/// them, the other pointing callers at it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_users_each_live_on_exactly_one_pod() {
    use obr_signer::{CtapCall, Kek, SignerConfig, SignerCore};
    let redis = RedisServer::start()
        .unwrap()
        .expect("redis-server is not installed (scripts/test installs it)");
    let scratch = obr_tests::scratch::Scratch::new("thousand").unwrap();
    let db = format!("sqlite://{}?mode=rwc", scratch.join("signer.db").display());
    let mut pods = Vec::new();
    for me in ["http://pod-a:7400", "http://pod-b:7400"] {
        let placement = Placement::connect(
            &RedisEndpoint::new(redis.url()),
            "k:",
            me,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        let config = SignerConfig {
            placement: Some(placement),
            actor_threads: 1,
            ..SignerConfig::embedded(db.clone(), Kek::from_bytes([7; 32]))
        };
        pods.push((me, SignerCore::open(config).await.unwrap()));
    }
    let call = |user: &str| CtapCall {
        user_id: user.to_owned(),
        obr: None,
        approval: None,
        payload: vec![0x04],
        deadline: tokio::time::Instant::now() + Duration::from_secs(30),
    };
    let users: Vec<String> = (0..1000).map(|i| format!("user-{i:04}")).collect();
    // Every user's first calls race: one to each pod at the same time.
    let mut first = tokio::task::JoinSet::new();
    for user in &users {
        for (_, pod) in &pods {
            let (pod, request) = (pod.clone(), call(user));
            first.spawn(async move { pod.ctap(request).await });
        }
    }
    while let Some(reply) = first.join_next().await {
        let reply = reply.unwrap();
        assert!(
            reply.owner.is_some() || reply.status() == 0,
            "{:?}",
            reply.payload
        );
    }
    let mut on = [0usize; 2];
    for user in &users {
        let active: Vec<usize> = (0..2).filter(|&p| pods[p].1.is_active(user)).collect();
        assert_eq!(active.len(), 1, "{user} is active on {active:?}");
        let (owner, other) = (active[0], 1 - active[0]);
        on[owner] += 1;
        // The other pod does not activate it: it names the owner.
        let reply = pods[other].1.ctap(call(user)).await;
        assert_eq!(reply.owner.as_deref(), Some(pods[owner].0), "{user}");
        assert!(!pods[other].1.is_active(user));
    }
    assert_eq!(on[0] + on[1], 1000);
    assert_eq!(pods[0].1.active_users() + pods[1].1.active_users(), 1000);
    eprintln!("users per pod: {on:?}");
    for (_, pod) in &pods {
        pod.shutdown().await;
    }
}
