//! Tests through a real seqpacket socket: host clients are plain blocking sockets on their own
//! threads, the engine runs on the test's runtime.

use std::sync::atomic::{AtomicU32, Ordering};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::oneshot;

use super::*;
use crate::ctaphid::host::{Heard, ReplyReader};
use crate::ctaphid::packet::{ChannelId, Command, frames};
use crate::ctaphid::{CborForwarder, EngineConfig, KeepaliveStatus, run};

/// Longest a blocking client waits for a datagram.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn unique_socket_path() -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "obr-agent-test-{}-{}.sock",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Answers every CBOR request with CTAP2_OK and no data.
struct Ok0;

impl CborForwarder for Ok0 {
    fn forward(&self, _request: Vec<u8>, _status: KeepaliveStatus) -> BoxFuture<'static, Vec<u8>> {
        async { vec![0x00] }.boxed()
    }
}

/// A host process on the other end of the socket, with blocking I/O.
struct Client(Socket);

impl Client {
    fn connect(path: &Path) -> Self {
        let socket = Socket::new(Domain::UNIX, Type::SEQPACKET, None).unwrap();
        socket.connect(&SockAddr::unix(path).unwrap()).unwrap();
        socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        Self(socket)
    }

    fn send(&self, datagram: &[u8]) {
        assert_eq!(self.0.send(datagram).unwrap(), datagram.len());
    }

    fn recv_report(&self) -> Report {
        let mut buf = [0u8; REPORT_LEN + 1];
        let len = (&self.0).read(&mut buf).unwrap();
        assert_eq!(len, REPORT_LEN, "one datagram is one report");
        buf[..REPORT_LEN].try_into().unwrap()
    }

    /// Sends a message and reassembles the answer: (channel, command, payload).
    fn request(&self, cid: ChannelId, cmd: Command, payload: &[u8]) -> (ChannelId, u8, Vec<u8>) {
        for report in frames(cid, cmd, payload).unwrap() {
            self.send(&report);
        }
        let mut reader = ReplyReader::new(cid);
        loop {
            match reader.feed(&self.recv_report()) {
                Heard::Complete(message) => return (cid, message.cmd, message.payload),
                Heard::Partial => {}
                other => panic!("unexpected report: {other:?}"),
            }
        }
    }
}

/// What one host does: junk first, then INIT and a multi-packet PING. Returns its channel.
fn init_and_ping(path: &Path, tag: u8) -> ChannelId {
    let client = Client::connect(path);
    // Datagrams that are not one 64-byte report are dropped without an answer.
    client.send(&[0xff; 10]);
    client.send(&[0x00; REPORT_LEN + 1]);

    let nonce = [tag; 8];
    let (cid, cmd, payload) = client.request(ChannelId::BROADCAST, Command::Init, &nonce);
    assert_eq!((cid, cmd), (ChannelId::BROADCAST, Command::Init.code()));
    assert_eq!(payload[..8], nonce, "each client gets its own INIT answer");
    let cid = ChannelId::new(u32::from_be_bytes(payload[8..12].try_into().unwrap()));

    let data = vec![tag; 300];
    let (echo_cid, cmd, echoed) = client.request(cid, Command::Ping, &data);
    assert_eq!((echo_cid, cmd), (cid, Command::Ping.code()));
    assert_eq!(echoed, data);
    cid
}

#[tokio::test]
async fn two_clients_init_and_ping_at_once() {
    let path = unique_socket_path();
    let hid = SocketHid::bind(path.clone()).unwrap();
    assert_eq!(hid.path(), path);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, SOCKET_FILE_MODE, "user and group only, not {mode:o}");
    }
    let (stop, stopped) = oneshot::channel::<()>();
    let engine = tokio::spawn(run(hid, Arc::new(Ok0), EngineConfig::default(), async {
        let _ = stopped.await;
    }));

    // A client that asks and hangs up before the answer must not disturb anyone.
    {
        let rude = Client::connect(&path);
        let init = frames(ChannelId::BROADCAST, Command::Init, &[9; 8])
            .unwrap()
            .next()
            .unwrap();
        rude.send(&init);
    }

    let alice = tokio::task::spawn_blocking({
        let path = path.clone();
        move || init_and_ping(&path, 0xa1)
    });
    let bob = tokio::task::spawn_blocking({
        let path = path.clone();
        move || init_and_ping(&path, 0xb2)
    });
    let (alice, bob) = (alice.await.unwrap(), bob.await.unwrap());
    assert_ne!(alice, bob);

    stop.send(()).unwrap();
    engine.await.unwrap().unwrap();
    assert!(
        !path.exists(),
        "dropping the backend removes the socket file"
    );
}

#[tokio::test]
async fn bind_replaces_a_stale_socket_but_nothing_else() {
    let path = unique_socket_path();
    let stale = Socket::new(Domain::UNIX, Type::SEQPACKET, None).unwrap();
    stale.bind(&SockAddr::unix(&path).unwrap()).unwrap();
    drop(stale);
    assert!(path.exists());
    let hid = SocketHid::bind(path.clone()).unwrap();
    drop(hid);
    assert!(!path.exists());

    std::fs::write(&path, b"not a socket").unwrap();
    let error = SocketHid::bind(path.clone()).unwrap_err();
    assert!(
        matches!(&error, HidError::Io(io) if io.kind() == io::ErrorKind::AlreadyExists),
        "{error}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
    std::fs::remove_file(&path).unwrap();
}
