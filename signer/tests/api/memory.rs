//! Bounded memory: actors live only while their users are busy. 100,000
//! users each touch their key once; every actor passivates after
//! `idle_passivation`, and the process's resident memory afterwards stays
//! within a fixed budget of where it started rather than growing with the
//! number of users ever seen.

use std::time::Duration;

use obr_signer::{SignerConfig, SignerCore};

use crate::common::*;

const USERS: usize = 100_000;
/// Calls in flight at once.
const CONCURRENCY: usize = 512;

fn resident_bytes() -> u64 {
    // /proc/self/statm: size resident shared … in pages.
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_users_passivate_and_memory_stays_bounded() {
    let db = TempDb::new();
    // Passivation after 50 ms keeps the actors alive at once to a few
    // thousand however fast this machine runs the calls (at 300 ms a fast
    // run had 40,000 alive, and the allocator keeps its high-water mark).
    let core = SignerCore::open(SignerConfig {
        idle_passivation: Duration::from_millis(50),
        ..config(&db)
    })
    .await
    .unwrap();
    // Warm up allocators and the runtime before taking the baseline.
    for i in 0..CONCURRENCY {
        core.ctap(call(&format!("warm-{i}"), vec![0x04])).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let baseline = resident_bytes();

    let mut peak_active = 0;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..USERS {
        let pod = core.clone();
        calls.spawn(async move { pod.ctap(call(&format!("user-{i:06}"), vec![0x04])).await });
        if calls.len() >= CONCURRENCY {
            let reply = calls.join_next().await.unwrap().unwrap();
            assert_eq!(reply.status(), 0);
            peak_active = peak_active.max(core.active_users());
        }
    }
    while let Some(reply) = calls.join_next().await {
        assert_eq!(reply.unwrap().status(), 0);
    }
    // Everyone idles out.
    let mut waited = Duration::ZERO;
    while core.active_users() > 0 && waited < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
    assert_eq!(core.active_users(), 0, "actors left after {waited:?}");
    let after = resident_bytes();
    let grown = after.saturating_sub(baseline);
    eprintln!(
        "{USERS} users: peak {peak_active} active actors; resident {} MiB -> {} MiB (+{} MiB)",
        baseline >> 20,
        after >> 20,
        grown >> 20
    );
    // 100,000 users ever seen must not cost per-user memory once they are
    // idle: allow allocator slack, not ~1 KiB per user (~100 MiB).
    assert!(
        grown < 64 << 20,
        "resident memory grew by {} MiB",
        grown >> 20
    );
    core.shutdown().await;
}
