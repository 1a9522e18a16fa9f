//! A [`HidBackend`] on a UNIX `SOCK_SEQPACKET` listening socket, for hosts (and tests) that
//! speak raw CTAPHID reports without a kernel HID device. Any number of clients connect; one
//! datagram is one 64-byte report, with no report-ID byte. This module owns the socket file,
//! the accept loop and one reader and one writer task per client; it never looks inside a
//! report.
//!
//! Shape: the accept task and the per-client reader tasks feed one bounded event queue that
//! [`SocketHid::recv`] drains; [`SocketHid::send`] hands each report to the client's bounded
//! writer queue without waiting, so a client that stops reading only loses its own reports.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, warn};

use super::{ClientId, HidBackend, HidError, REPORT_LEN, Report};

/// The socket file's mode: whoever may use the key must be the agent's user
/// or in its group (run the agent with a dedicated group, e.g. `obr`, to
/// let CTAPHID clients of other users in). Never world-writable.
pub const SOCKET_FILE_MODE: u32 = 0o660;
/// Pending connections the kernel queues before `accept`.
pub const LISTEN_BACKLOG: i32 = 16;
/// Events (connects, reports, disconnects) buffered between the socket tasks and the engine.
pub const EVENT_QUEUE_DEPTH: usize = 256;
/// Reports buffered per client before further ones are dropped: room for several
/// maximum-size CTAPHID messages (129 reports each, CTAP 2.1 §11.2.4).
pub const CLIENT_QUEUE_DEPTH: usize = 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// The seqpacket backend. Dropping it stops accepting, disconnects every client and removes
/// the socket file.
#[derive(Debug)]
pub struct SocketHid {
    events: mpsc::Receiver<Event>,
    /// Writer queues of the connected clients, kept up to date from `events`.
    clients: HashMap<ClientId, mpsc::Sender<Report>>,
    acceptor: JoinHandle<()>,
    socket_file: SocketFile,
}

impl SocketHid {
    /// Listens on `path`, first removing a stale socket file left there by an earlier run
    /// (anything else at `path` is an error). Must be called within a tokio runtime.
    pub fn bind(path: impl Into<PathBuf>) -> Result<Self, HidError> {
        let path = path.into();
        remove_stale_socket(&path)?;
        let listener = Socket::new(Domain::UNIX, Type::SEQPACKET, None)?;
        listener.bind(&SockAddr::unix(&path)?)?;
        // From here on the file is ours, and is removed on every exit path.
        let socket_file = SocketFile(path);
        // Before `listen` nobody can connect, so the mode is set in time:
        // the agent's user and group only (connecting needs write access).
        std::fs::set_permissions(
            &socket_file.0,
            std::fs::Permissions::from_mode(SOCKET_FILE_MODE),
        )?;
        listener.listen(LISTEN_BACKLOG)?;
        listener.set_nonblocking(true)?;
        let listener = register(listener)?;
        let (event_tx, events) = mpsc::channel(EVENT_QUEUE_DEPTH);
        let acceptor = tokio::spawn(accept_clients(listener, event_tx));
        Ok(Self {
            events,
            clients: HashMap::new(),
            acceptor,
            socket_file,
        })
    }

    /// Path of the listening socket.
    pub fn path(&self) -> &Path {
        &self.socket_file.0
    }
}

impl HidBackend for SocketHid {
    async fn recv(&mut self) -> Result<(ClientId, Report), HidError> {
        // Cancel safe: the only await is `mpsc::Receiver::recv`, and each event is applied
        // synchronously once received.
        loop {
            match self.events.recv().await.ok_or(HidError::Closed)? {
                Event::Connected(client, writer) => {
                    debug!(%client, "seqpacket client connected");
                    self.clients.insert(client, writer);
                }
                Event::Disconnected(client) => {
                    debug!(%client, "seqpacket client disconnected");
                    self.clients.remove(&client);
                }
                Event::Report(client, report) => return Ok((client, report)),
            }
        }
    }

    async fn send(&mut self, client: ClientId, report: &Report) -> Result<(), HidError> {
        let Some(writer) = self.clients.get(&client) else {
            debug!(%client, "dropping report for a disconnected client");
            return Ok(());
        };
        if let Err(error) = writer.try_send(*report) {
            debug!(%client, %error, "dropping report the client cannot take");
        }
        Ok(())
    }
}

impl Drop for SocketHid {
    fn drop(&mut self) {
        // Aborting the acceptor drops its `JoinSet`, which aborts every client task and so
        // closes every connection.
        self.acceptor.abort();
    }
}

/// What the socket tasks tell [`SocketHid::recv`]. A client's `Connected` is queued before
/// its reader starts, so it always precedes that client's reports.
#[derive(Debug)]
enum Event {
    Connected(ClientId, mpsc::Sender<Report>),
    Report(ClientId, Report),
    Disconnected(ClientId),
}

/// The bound socket's path, removed when dropped.
#[derive(Debug)]
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_file(&self.0) {
            debug!(path = %self.0.display(), %error, "could not remove socket file");
        }
    }
}

fn remove_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

/// Accepts clients until the event queue closes, owning every client task in a `JoinSet`.
async fn accept_clients(listener: AsyncFd<Socket>, events: mpsc::Sender<Event>) {
    let mut client_tasks = JoinSet::new();
    let mut next_client: u64 = 0;
    loop {
        tokio::select! {
            accepted = accept(&listener) => {
                let conn = match accepted {
                    Ok(conn) => conn,
                    Err(error) => {
                        warn!(%error, "seqpacket accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                        continue;
                    }
                };
                let client = ClientId::new(next_client);
                next_client = next_client.wrapping_add(1);
                let (writer_tx, writer_rx) = mpsc::channel(CLIENT_QUEUE_DEPTH);
                if events.send(Event::Connected(client, writer_tx)).await.is_err() {
                    return;
                }
                let conn = Arc::new(conn);
                client_tasks.spawn(read_reports(client, Arc::clone(&conn), events.clone()));
                client_tasks.spawn(write_reports(client, conn, writer_rx));
            }
            // Reap finished client tasks so the set does not grow with every connection.
            Some(_) = client_tasks.join_next() => {}
        }
    }
}

/// Accepts one connection, made non-blocking and registered with the reactor.
async fn accept(listener: &AsyncFd<Socket>) -> io::Result<AsyncFd<Socket>> {
    let conn = loop {
        let mut guard = listener.readable().await?;
        if let Ok(accepted) = guard.try_io(|fd| fd.get_ref().accept()) {
            break accepted?.0;
        }
    };
    conn.set_nonblocking(true)?;
    register(conn)
}

/// Hands a non-blocking socket to the tokio reactor.
#[expect(unsafe_code, reason = "AsyncFd::register is unsafe; see SAFETY")]
fn register(socket: Socket) -> io::Result<AsyncFd<Socket>> {
    // SAFETY: `Socket` owns its descriptor, keeps it open until it is dropped and returns the
    // same one from every `as_raw_fd`; the `AsyncFd` takes ownership of the `Socket`, so the
    // descriptor outlives the registration.
    Ok(unsafe { AsyncFd::register(socket) }?)
}

/// Forwards the client's datagrams as reports until it disconnects.
async fn read_reports(client: ClientId, conn: Arc<AsyncFd<Socket>>, events: mpsc::Sender<Event>) {
    // One spare byte: a seqpacket read truncates a longer record to the buffer, so a full
    // buffer reveals an over-long datagram.
    let mut buf = [0u8; REPORT_LEN + 1];
    loop {
        let len = match read_datagram(&conn, &mut buf).await {
            // A zero-length read is end of stream (a zero-length record is indistinguishable
            // from it on SOCK_SEQPACKET, and is not a report either way).
            Ok(0) => break,
            Ok(len) => len,
            Err(error) => {
                debug!(%client, %error, "seqpacket read failed");
                break;
            }
        };
        let Some(report) = buf
            .get(..len)
            .and_then(|bytes| Report::try_from(bytes).ok())
        else {
            debug!(%client, len, "dropping datagram that is not one {REPORT_LEN}-byte report");
            continue;
        };
        if events.send(Event::Report(client, report)).await.is_err() {
            // The backend is gone; nobody will read further events.
            return;
        }
    }
    // Ignoring the error is correct: if the backend is gone there is nobody to tell.
    let _ = events.send(Event::Disconnected(client)).await;
}

/// Writes queued reports to the client until its queue closes or the connection fails.
async fn write_reports(
    client: ClientId,
    conn: Arc<AsyncFd<Socket>>,
    mut reports: mpsc::Receiver<Report>,
) {
    while let Some(report) = reports.recv().await {
        if let Err(error) = write_datagram(&conn, &report).await {
            debug!(%client, %error, "seqpacket write failed");
            return;
        }
    }
}

async fn read_datagram(conn: &AsyncFd<Socket>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = conn.readable().await?;
        if let Ok(result) = guard.try_io(|fd| fd.get_ref().read(buf)) {
            return result;
        }
    }
}

async fn write_datagram(conn: &AsyncFd<Socket>, report: &Report) -> io::Result<()> {
    loop {
        let mut guard = conn.writable().await?;
        // MSG_NOSIGNAL: a vanished peer must yield EPIPE, not kill the process with SIGPIPE.
        // A SOCK_SEQPACKET record is sent whole or not at all, so the count needs no check.
        if let Ok(result) =
            guard.try_io(|fd| fd.get_ref().send_with_flags(report, libc::MSG_NOSIGNAL))
        {
            return result.map(|_sent| ());
        }
    }
}

#[cfg(test)]
mod tests;
