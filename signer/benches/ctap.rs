//! The signer's own cost, on one actor thread: makeCredential and
//! getAssertion through `SignerCore` (actor hop, CTAP decode/encode, key
//! unwrap, ECDSA, the fenced counter commit to SQLite) beside a bare ring
//! P-256 signature measured in the same run, so the overhead over the
//! crypto floor reads as a ratio; and getAssertion with an allowList for a
//! user with [`MANY_ACCOUNTS`] accounts on one RP (a helpdesk's test
//! tenant, a shared RP), which must look the listed credential up by id,
//! not read all of them. Results: docs/BENCHMARKS.md.
//!
//! `cargo bench -p obr-signer --bench ctap`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "benchmark code: a step that fails should stop the run, loudly"
)]

use std::hint::black_box;
use std::time::Duration;

use ciborium::Value;
use criterion::{Criterion, criterion_group, criterion_main};
use obr_signer::{CtapCall, Kek, SignerConfig, SignerCore, UserApproval};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};

fn cbor(command: u8, map: Vec<(Value, Value)>) -> Vec<u8> {
    let mut out = vec![command];
    // invariant: serialising a Value into a Vec cannot fail.
    ciborium::ser::into_writer(&Value::Map(map), &mut out).expect("cbor");
    out
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

fn int(i: i64) -> Value {
    Value::Integer(i.into())
}

fn make_credential(rp_id: &str, user: u32) -> Vec<u8> {
    cbor(
        0x01,
        vec![
            (int(1), Value::Bytes(vec![1; 32])),
            (int(2), Value::Map(vec![(text("id"), text(rp_id))])),
            (
                int(3),
                Value::Map(vec![
                    (text("id"), Value::Bytes(user.to_be_bytes().to_vec())),
                    (text("name"), text("bench")),
                ]),
            ),
            (
                int(4),
                Value::Array(vec![Value::Map(vec![
                    (text("alg"), int(-7)),
                    (text("type"), text("public-key")),
                ])]),
            ),
        ],
    )
}

/// Accounts of one user on one RP in the allowList benchmark.
const MANY_ACCOUNTS: u32 = 5_000;

fn get_assertion(rp_id: &str, credential_id: &[u8]) -> Vec<u8> {
    cbor(
        0x02,
        vec![
            (int(1), text(rp_id)),
            (int(2), Value::Bytes(vec![2; 32])),
            (
                int(3),
                Value::Array(vec![Value::Map(vec![
                    (text("id"), Value::Bytes(credential_id.to_vec())),
                    (text("type"), text("public-key")),
                ])]),
            ),
        ],
    )
}

fn call(payload: Vec<u8>) -> CtapCall {
    CtapCall {
        user_id: "bench-user".to_owned(),
        obr: None,
        // Normal mode, as the relay sends it after the owner's approval.
        approval: Some(UserApproval::granted_by_device("bench")),
        payload,
        deadline: tokio::time::Instant::now() + Duration::from_secs(30),
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = std::env::temp_dir().join(format!("obr-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = SignerConfig {
        actor_threads: 1,
        ..SignerConfig::embedded(
            format!("sqlite://{}?mode=rwc", dir.join("signer.db").display()),
            Kek::from_bytes([9; 32]),
        )
    };
    let core = rt.block_on(SignerCore::open(config)).expect("signer");

    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("key");
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .expect("key");
    let message = [3u8; 69];
    c.bench_function("ring P-256 sign (floor)", |b| {
        b.iter(|| key.sign(&rng, black_box(&message)).expect("sign"))
    });

    let mut user = 0u32;
    c.bench_function("makeCredential via SignerCore", |b| {
        b.iter(|| {
            user += 1;
            // Each iteration adds an account on its own RP, so the
            // getAssertion below sees one credential, as in real use.
            let reply = rt.block_on(core.ctap(call(make_credential("mc.bench.test", user))));
            assert_eq!(reply.status(), 0);
        })
    });

    let reply = rt.block_on(core.ctap(call(make_credential("bench.test", u32::MAX))));
    let credential_id = reply.created.expect("created").credential_id;
    c.bench_function("getAssertion via SignerCore (counter committed)", |b| {
        b.iter(|| {
            let reply = rt.block_on(core.ctap(call(get_assertion("bench.test", &credential_id))));
            assert_eq!(reply.status(), 0);
        })
    });

    // One user, MANY_ACCOUNTS accounts on one RP; the RP names the oldest.
    let mut oldest = None;
    for account in 0..MANY_ACCOUNTS {
        let reply = rt.block_on(core.ctap(call(make_credential("many.bench.test", account))));
        let id = reply.created.expect("created").credential_id;
        oldest.get_or_insert(id);
    }
    let oldest = oldest.expect("accounts made");
    c.bench_function(
        "getAssertion allowList, 5000 accounts on one RP via SignerCore",
        |b| {
            b.iter(|| {
                let reply = rt.block_on(core.ctap(call(get_assertion("many.bench.test", &oldest))));
                assert_eq!(reply.status(), 0);
            })
        },
    );
    rt.block_on(core.shutdown());
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
