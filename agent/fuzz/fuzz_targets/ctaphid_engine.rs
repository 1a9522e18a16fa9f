//! Fuzz the CTAPHID engine (CTAP 2.1 §11.2) as hosts see it: any sequence
//! of 64-byte output reports from up to three clients — INIT, CBOR, CANCEL,
//! LOCK, continuation packets in and out of order, lengths past the
//! maximum — into `ctaphid::run` over an in-memory backend, with a
//! forwarder that answers every CBOR request at once. The engine must
//! never panic, hang, or send anything but whole reports.
//!
//! `cargo fuzz run ctaphid_engine` (from `agent/`), or `scripts/test`'s
//! bounded run.

#![no_main]

use std::collections::VecDeque;
use std::sync::Arc;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use libfuzzer_sys::fuzz_target;
use obr_agent::ctaphid::{self, CborForwarder, EngineConfig, KeepaliveStatus};
use obr_agent::hid::{ClientId, HidBackend, HidError, REPORT_LEN, Report};
use tokio::sync::oneshot;

/// Hosts taking turns: one byte picks the client, then its report.
const CLIENTS: u8 = 3;

struct Scripted {
    reports: VecDeque<(ClientId, Report)>,
    exhausted: Option<oneshot::Sender<()>>,
}

impl HidBackend for Scripted {
    async fn recv(&mut self) -> Result<(ClientId, Report), HidError> {
        if let Some(next) = self.reports.pop_front() {
            return Ok(next);
        }
        // Let the forwards the last reports started come back first.
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        if let Some(done) = self.exhausted.take() {
            let _ = done.send(());
        }
        std::future::pending().await
    }

    async fn send(&mut self, _client: ClientId, report: &Report) -> Result<(), HidError> {
        assert_eq!(report.len(), REPORT_LEN);
        Ok(())
    }
}

/// A key that answers every request with `CTAP2_OK` and the request echoed.
struct Echo;

impl CborForwarder for Echo {
    fn forward(&self, request: Vec<u8>, _status: KeepaliveStatus) -> BoxFuture<'static, Vec<u8>> {
        let mut answer = vec![0x00];
        answer.extend(request);
        futures_util::future::ready(answer).boxed()
    }
}

fuzz_target!(|data: &[u8]| {
    let reports = data
        .chunks(1 + REPORT_LEN)
        .map(|chunk| {
            let (who, bytes) = chunk.split_first().unwrap_or((&0, &[]));
            let mut report = [0u8; REPORT_LEN];
            for (slot, byte) in report.iter_mut().zip(bytes) {
                *slot = *byte;
            }
            (ClientId::new(u64::from(who % CLIENTS)), report)
        })
        .collect();
    let (exhausted, done) = oneshot::channel();
    let backend = Scripted {
        reports,
        exhausted: Some(exhausted),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let shutdown = async {
        let _ = done.await;
    };
    let served = runtime.block_on(ctaphid::run(
        backend,
        Arc::new(Echo),
        EngineConfig::default(),
        shutdown,
    ));
    assert!(served.is_ok(), "{served:?}");
});
