//! The actix machinery behind a [`crate::SignerCore`]: a dedicated thread
//! running an `actix_rt::System`, which owns the arbiters (one thread each)
//! that user actors run on.
//!
//! Callers live on any tokio runtime (tonic handlers, tests); they start
//! actors with `Actor::start_in_arbiter` on a handle from here and talk to
//! them with `Addr::send`, which works from any executor. Owns only the
//! threads; knows nothing of users or CTAP.

use std::sync::Mutex;
use std::thread;

use actix_rt::{Arbiter, ArbiterHandle, System};
use tokio::sync::oneshot;

use crate::error::SignerError;

/// Name of the thread that runs the actix `System`.
const SYSTEM_THREAD_NAME: &str = "obr-signer-actors";

/// A running actor system; stops when dropped or on [`Self::shutdown`].
#[derive(Debug)]
pub(crate) struct ActorRuntime {
    arbiters: Vec<ArbiterHandle>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    stopped: Mutex<Option<oneshot::Receiver<()>>>,
}

impl ActorRuntime {
    /// Start the system thread and `threads` arbiters.
    pub(crate) async fn start(threads: usize) -> Result<Self, SignerError> {
        let threads = threads.max(1);
        let (handles_tx, handles_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (stopped_tx, stopped_rx) = oneshot::channel();
        thread::Builder::new()
            .name(SYSTEM_THREAD_NAME.to_owned())
            .spawn(move || {
                System::new().block_on(async move {
                    let arbiters: Vec<Arbiter> = (0..threads).map(|_| Arbiter::new()).collect();
                    let handles = arbiters.iter().map(Arbiter::handle).collect::<Vec<_>>();
                    if handles_tx.send(handles).is_ok() {
                        // Resolves on a stop signal, or when the sender is
                        // dropped with its runtime.
                        let _ = stop_rx.await;
                    }
                    for arbiter in &arbiters {
                        arbiter.stop();
                    }
                    // This thread has nothing else to do: wait for the
                    // arbiters so their actors are gone when we report.
                    for arbiter in arbiters {
                        if arbiter.join().is_err() {
                            tracing::error!("an actor thread panicked");
                        }
                    }
                });
                let _ = stopped_tx.send(());
            })
            .map_err(SignerError::Runtime)?;
        let arbiters = handles_rx.await.map_err(|_| SignerError::ShutDown)?;
        Ok(Self {
            arbiters,
            stop: Mutex::new(Some(stop_tx)),
            stopped: Mutex::new(Some(stopped_rx)),
        })
    }

    pub(crate) fn arbiters(&self) -> &[ArbiterHandle] {
        &self.arbiters
    }

    /// Ask the system to stop (idempotent, does not wait).
    pub(crate) fn stop(&self) {
        let sender = self
            .stop
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(sender) = sender {
            let _ = sender.send(());
        }
    }

    /// Stop the system and wait until its threads have finished.
    pub(crate) async fn shutdown(&self) {
        self.stop();
        let stopped = self
            .stopped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(stopped) = stopped {
            let _ = stopped.await;
        }
    }
}

impl Drop for ActorRuntime {
    fn drop(&mut self) {
        self.stop();
    }
}
