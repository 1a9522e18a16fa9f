//! Fuzz the signer's CTAP2 core directly: any bytes as a CTAP message
//! (command byte + CBOR) into a [`DirectKey`] over an in-memory store — no
//! actors, no registry, no gRPC between the input and the commands — in
//! normal mode (with or without the owner's approval) and on-behalf mode.
//! The answer must be a CTAP status byte (plus CBOR on success) or a
//! request for the owner's approval — never a panic, a hang, or an empty
//! reply.
//!
//! The first input byte picks the caller: bit 7 an admin acting on the
//! user's behalf, bit 6 the owner's approval, bits 0–1 one of four users
//! (each its own key, so state such as getNextAssertion and tokens is
//! exercised per key). The rest is the CTAP message.
//!
//! `cargo fuzz run ctap_cbor` (from `signer/`), or `scripts/test`'s bounded run.

#![no_main]

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use obr_signer::{DirectKey, Kek, ObrActing, SignerConfig, UserApproval};

const USERS: usize = 4;

struct Target {
    rt: tokio::runtime::Runtime,
    keys: Mutex<Vec<DirectKey>>,
    admin: ObrActing,
    owner: UserApproval,
}

fn target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let config = SignerConfig::embedded("sqlite::memory:", Kek::from_bytes([5; 32]));
        let keys = (0..USERS)
            .map(|user| {
                rt.block_on(DirectKey::open(&config, &format!("fuzz-{user}")))
                    .expect("key")
            })
            .collect();
        Target {
            rt,
            keys: Mutex::new(keys),
            admin: ObrActing {
                admin_id: "fuzz-admin".into(),
                obr_session_id: "fuzz-session".into(),
            },
            owner: UserApproval::granted_by_device("fuzz-phone"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, payload)) = data.split_first() else {
        return;
    };
    let t = target();
    let mut keys = t.keys.lock().expect("keys");
    let key = keys
        .get_mut(usize::from(mode) % USERS)
        .expect("a key per user");
    let obr = (mode & 0x80 != 0).then_some(&t.admin);
    let approval = (mode & 0x40 != 0).then_some(&t.owner);
    let reply = t.rt.block_on(key.ctap(payload, obr, approval));
    assert!(
        !reply.payload.is_empty() || reply.approval_needed.is_some(),
        "empty reply without a request for approval"
    );
});
