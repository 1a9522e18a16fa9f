//! Fuzz the signer's CTAP2 front door: any bytes as a CTAP command (command
//! byte + CBOR) into `SignerCore::ctap`, normal mode and on-behalf mode.
//! The answer must be a CTAP status byte (plus CBOR on success) — never a
//! panic, a hang, or an empty reply.
//!
//! `cargo fuzz run ctap_cbor` (from `signer/`), or `scripts/test`'s bounded run.

#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use obr_signer::{CtapCall, Kek, ObrActing, SignerConfig, SignerCore};

struct Target {
    rt: tokio::runtime::Runtime,
    core: SignerCore,
}

fn target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let config = SignerConfig {
            actor_threads: 1,
            ..SignerConfig::embedded("sqlite::memory:", Kek::from_bytes([5; 32]))
        };
        let core = rt.block_on(SignerCore::open(config)).expect("signer");
        Target { rt, core }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, payload)) = data.split_first() else {
        return;
    };
    let t = target();
    let call = CtapCall {
        user_id: format!("fuzz-{}", mode % 4),
        obr: (mode & 0x80 != 0).then(|| ObrActing {
            admin_id: "fuzz-admin".into(),
            obr_session_id: "fuzz-session".into(),
        }),
        approval: None,
        payload: payload.to_vec(),
        deadline: tokio::time::Instant::now() + Duration::from_secs(5),
    };
    let reply = t.rt.block_on(t.core.ctap(call));
    assert!(
        !reply.payload.is_empty() || reply.owner.is_some() || reply.approval_needed.is_some(),
        "empty reply without redirect or approval request"
    );
});
