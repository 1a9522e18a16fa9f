//! [`TunnelForwarder`]: the CTAPHID engine's view of the relay.
//!
//! Each CBOR request becomes a `CtapRequest` frame with a fresh id; the
//! answer comes back by id. If the engine drops the future (the browser
//! sent CTAPHID_CANCEL, or re-INITed the channel), or the relay does not
//! answer within the budget and its slack (the browser then gets
//! `CTAP2_ERR_USER_ACTION_TIMEOUT`), a `CtapCancel` follows so the relay and signer
//! stop too. The getInfo answer is cached until the
//! mode changes — the first fast path: it never leaves the workstation twice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::oneshot;

use obr_proto::ctap::{StatusCode, command};

use super::{Command, TunnelHandle};
use crate::ctaphid::{CborForwarder, KeepaliveStatus};

/// Slack past the relay's budget before the agent gives up by itself.
const LOCAL_DEADLINE_SLACK: Duration = Duration::from_secs(2);

/// (mode generation, getInfo response)
type CachedGetInfo = (u64, Vec<u8>);

pub struct TunnelForwarder {
    tunnel: TunnelHandle,
    budget: Duration,
    next_id: AtomicU64,
    get_info: Arc<Mutex<Option<CachedGetInfo>>>,
}

impl TunnelForwarder {
    pub(super) fn new(tunnel: TunnelHandle, budget: Duration) -> Self {
        Self {
            tunnel,
            budget,
            next_id: AtomicU64::new(1),
            get_info: Arc::default(),
        }
    }

    fn cached_get_info(&self, generation: u64) -> Option<Vec<u8>> {
        let cache = self.get_info.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .as_ref()
            .filter(|(g, _)| *g == generation)
            .map(|(_, r)| r.clone())
    }
}

impl CborForwarder for TunnelForwarder {
    fn forward(&self, request: Vec<u8>, status: KeepaliveStatus) -> BoxFuture<'static, Vec<u8>> {
        let generation = self.tunnel.status.borrow().generation;
        let is_get_info = request.first() == Some(&command::GET_INFO) && request.len() == 1;
        if is_get_info && let Some(cached) = self.cached_get_info(generation) {
            return futures_util::future::ready(cached).boxed();
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let commands = self.tunnel.commands().clone();
        let deadline = self.budget + LOCAL_DEADLINE_SLACK;
        let (reply, rx) = oneshot::channel();
        let send = commands.clone();
        let fut = async move {
            if send
                .send(Command::Ctap {
                    id,
                    payload: request,
                    reply,
                    status,
                })
                .await
                .is_err()
            {
                return StatusCode::Other.response();
            }
            let guard = CancelOnDrop {
                id,
                commands,
                armed: true,
            };
            match tokio::time::timeout(deadline, rx).await {
                Ok(Ok(answer)) => {
                    guard.disarm();
                    answer
                }
                // The connection dropped the request (it was lost with the
                // socket): nothing to withdraw.
                Ok(Err(_)) => {
                    guard.disarm();
                    StatusCode::Other.response()
                }
                // The relay is late: the browser hears of it now, and the
                // guard withdraws the request at the relay as it drops.
                Err(_) => {
                    tracing::warn!(id, ?deadline, "no answer from the relay in time");
                    StatusCode::UserActionTimeout.response()
                }
            }
        };
        if !is_get_info {
            return fut.boxed();
        }
        let cache = self.get_info.clone();
        async move {
            let answer = fut.await;
            if answer.first() == Some(&StatusCode::Ok.byte()) {
                *cache.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((generation, answer.clone()));
            }
            answer
        }
        .boxed()
    }
}

/// Withdraws a request at the relay if its future is dropped unanswered.
struct CancelOnDrop {
    id: u64,
    commands: tokio::sync::mpsc::Sender<Command>,
    armed: bool,
}

impl CancelOnDrop {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.commands.try_send(Command::Cancel { id: self.id });
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::{mpsc, watch};

    use super::*;
    use crate::status::AgentStatus;

    /// A forwarder on a tunnel whose connection task is the test: it sees
    /// every command the forwarder sends.
    fn forwarder(budget: Duration) -> (TunnelForwarder, mpsc::Receiver<Command>) {
        let (commands, rx) = mpsc::channel(8);
        let (_, status) = watch::channel(AgentStatus::default());
        let tunnel = TunnelHandle {
            commands,
            status,
            ctap_budget: budget,
        };
        (TunnelForwarder::new(tunnel, budget), rx)
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_relay_times_out_after_the_budget_and_is_told_to_stop() {
        let budget = Duration::from_millis(1500);
        let (forwarder, mut commands) = forwarder(budget);
        let started = tokio::time::Instant::now();
        let answer = forwarder.forward(vec![0x01, 0xA0], KeepaliveStatus::new());
        let (answer, sent) = tokio::join!(answer, async {
            let Some(Command::Ctap { id, reply, .. }) = commands.recv().await else {
                panic!("no request sent");
            };
            // The relay never answers; the reply sender stays alive.
            let cancel = tokio::time::timeout(Duration::from_secs(60), commands.recv())
                .await
                .ok()
                .flatten();
            drop(reply);
            (id, cancel)
        });
        assert_eq!(answer, StatusCode::UserActionTimeout.response());
        assert_eq!(started.elapsed(), budget + LOCAL_DEADLINE_SLACK);
        let (id, cancel) = sent;
        assert!(
            matches!(cancel, Some(Command::Cancel { id: cancelled }) if cancelled == id),
            "no CtapCancel after the local timeout"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_answered_request_is_not_cancelled() {
        let (forwarder, mut commands) = forwarder(Duration::from_secs(5));
        let answer = forwarder.forward(vec![0x01, 0xA0], KeepaliveStatus::new());
        let (answer, ()) = tokio::join!(answer, async {
            let Some(Command::Ctap { reply, .. }) = commands.recv().await else {
                panic!("no request sent");
            };
            let _ = reply.send(StatusCode::Ok.response());
        });
        assert_eq!(answer, StatusCode::Ok.response());
        assert!(commands.try_recv().is_err(), "a cancel followed an answer");
    }
}
