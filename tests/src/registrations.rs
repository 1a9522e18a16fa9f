//! [`Registrations`]: a browser registering passkeys for one user through
//! the agent's HID socket, one after another, in a thread — the steady
//! load the drain and failover tests put on a cluster while they stop a
//! relay or a signer. Counts what succeeded, what failed, and the longest
//! single registration.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::hid_client::HidClient;

/// How long [`Registrations::wait_for`] waits before it calls the load
/// stalled.
const STALL: Duration = Duration::from_secs(30);

pub struct Registrations {
    done: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    longest: Arc<Mutex<Duration>>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<anyhow::Result<()>>,
}

impl Registrations {
    /// Start registering passkeys for `user_name` through `hid_socket`.
    pub fn start(hid_socket: &Path, user_name: &str) -> Self {
        let (done, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let longest = Arc::new(Mutex::new(Duration::ZERO));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (done, failed, longest, stop) =
                (done.clone(), failed.clone(), longest.clone(), stop.clone());
            let (socket, user_name) = (hid_socket.to_owned(), user_name.to_owned());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut hid = HidClient::open(&socket)?;
                let request = crate::rp::registration_request(&user_name)?;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    match hid.cbor(&request)?.first() {
                        Some(&0x00) => done.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                    let mut longest = longest.lock().unwrap_or_else(PoisonError::into_inner);
                    *longest = (*longest).max(started.elapsed());
                }
                Ok(())
            })
        };
        Self {
            done,
            failed,
            longest,
            stop,
            thread,
        }
    }

    /// Registrations that succeeded so far.
    pub fn done(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }

    /// Wait until `n` registrations succeeded.
    pub fn wait_for(&self, n: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + STALL;
        while self.done() < n {
            anyhow::ensure!(
                Instant::now() < deadline,
                "registrations stalled at {}",
                self.done()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Stop; returns (succeeded, failed, the longest registration).
    pub fn stop(self) -> anyhow::Result<(usize, usize, Duration)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the registering thread panicked"))??;
        let longest = *self.longest.lock().unwrap_or_else(PoisonError::into_inner);
        Ok((
            self.done.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            longest,
        ))
    }
}
