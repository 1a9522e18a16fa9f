//! The HID side of the agent: a place where 64-byte HID reports come from and go to, shared by
//! any number of host clients. This module owns the [`HidBackend`] contract and its
//! implementations; it never interprets a report (that is [`crate::ctaphid`]'s job).
//!
//! CTAP 2.1 §11.2.4 and §11.2.8 fix the FIDO HID report at 64 bytes in each direction.
//! Backends strip or add any report-ID byte themselves, so the engine only ever sees the 64
//! payload bytes.

pub mod socket;
pub mod uhid;

use std::fmt;
use std::future::Future;

pub use socket::SocketHid;
pub use uhid::UhidDevice;

/// Size of one FIDO HID report, without report-ID byte (CTAP 2.1 §11.2.4, §11.2.8).
pub const REPORT_LEN: usize = 64;

/// One HID report as the engine sees it.
pub type Report = [u8; REPORT_LEN];

/// One host-side client of a backend (a process that opened the device or connected to the
/// socket). Answers go back to the client that asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(u64);

impl ClientId {
    /// Wraps a backend-chosen number; backends must not reuse a number while the client lives.
    pub const fn new(id: u64) -> Self {
        Self(id)
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client#{}", self.0)
    }
}

/// A failure of the backend itself. Misbehaving clients are never an error here: their bad
/// datagrams are dropped and their disconnects are absorbed by the backend.
#[derive(Debug, thiserror::Error)]
pub enum HidError {
    /// The underlying device or socket failed.
    #[error("HID backend I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The uhid key cannot be created; the error says what the user can do.
    #[error(transparent)]
    Uhid(#[from] uhid::UhidError),
    /// The backend has shut down and will produce no more reports.
    #[error("HID backend closed")]
    Closed,
}

/// A source and sink of HID reports with one or more host clients.
pub trait HidBackend: Send + 'static {
    /// Next output report written by a host client (report-ID byte already stripped).
    ///
    /// Must be cancel safe: the engine polls it inside `select!`, and dropping the future
    /// before it completes must not lose a report.
    fn recv(&mut self) -> impl Future<Output = Result<(ClientId, Report), HidError>> + Send;

    /// Sends an input report to one client.
    ///
    /// A client that has gone away, or that has stopped reading, is not an error: the report is
    /// dropped. Must not wait on a slow client, since the engine serves every channel from one
    /// loop.
    fn send(
        &mut self,
        client: ClientId,
        report: &Report,
    ) -> impl Future<Output = Result<(), HidError>> + Send;
}
