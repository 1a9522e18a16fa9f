//! Engine tests through an in-memory HID host (the browser side) and a forwarder the tests
//! steer. Time is paused: timers fire in virtual time and nothing really sleeps.

use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time;

use super::*;
use crate::ctaphid::host::{Heard, ReplyReader};
use crate::ctaphid::packet::{CONT_DATA_LEN, MAX_MESSAGE_LEN, frames};
use crate::hid::REPORT_LEN;

const ALICE: ClientId = ClientId::new(1);
const BOB: ClientId = ClientId::new(2);
/// Longest a test waits (in virtual time) for a report it expects.
const REPLY_WAIT: Duration = Duration::from_secs(60);
/// One tick of the test forwarder's delay; see [`Echo`].
const FORWARD_TICK: Duration = Duration::from_millis(100);
/// §11.2.9.1.7: keepalives at least this often.
const KEEPALIVE_DEADLINE: Duration = Duration::from_millis(100);
/// CTAP command byte that makes the test forwarder panic.
const PANIC_REQUEST: u8 = 0xee;
/// CTAP command byte that makes the test forwarder answer nothing at all.
const EMPTY_ANSWER_REQUEST: u8 = 0xef;
/// An unused CTAPHID command code.
const UNKNOWN_CMD: u8 = 0x40;

// --- Test doubles -------------------------------------------------------------------------

/// The HID device as the engine sees it, wired to the test.
struct MemHid {
    from_host: mpsc::Receiver<(ClientId, Report)>,
    to_host: mpsc::UnboundedSender<(ClientId, Report)>,
}

impl HidBackend for MemHid {
    async fn recv(&mut self) -> Result<(ClientId, Report), HidError> {
        self.from_host.recv().await.ok_or(HidError::Closed)
    }

    async fn send(&mut self, client: ClientId, report: &Report) -> Result<(), HidError> {
        // The test may have stopped listening; like a vanished client, that is no error.
        let _ = self.to_host.send((client, *report));
        Ok(())
    }
}

#[derive(Default)]
struct Counters {
    started: AtomicUsize,
    finished: AtomicUsize,
    dropped: AtomicUsize,
}

/// Answers `[0x00, request...]` after `request[1]` × [`FORWARD_TICK`] (no delay if the
/// request is one byte), and counts forwards that were dropped before finishing.
struct Echo(Arc<Counters>);

impl CborForwarder for Echo {
    fn forward(&self, request: Vec<u8>, _status: KeepaliveStatus) -> BoxFuture<'static, Vec<u8>> {
        self.0.started.fetch_add(1, Ordering::SeqCst);
        let mut watch = DropWatch {
            counters: Arc::clone(&self.0),
            finished: false,
        };
        async move {
            let ticks = request.get(1).copied().unwrap_or(0);
            time::sleep(FORWARD_TICK * u32::from(ticks)).await;
            watch.finished = true;
            watch.counters.finished.fetch_add(1, Ordering::SeqCst);
            match request.first() {
                Some(&PANIC_REQUEST) => panic!("test forwarder asked to panic"),
                Some(&EMPTY_ANSWER_REQUEST) => Vec::new(),
                _ => [&[0x00][..], &request].concat(),
            }
        }
        .boxed()
    }
}

struct DropWatch {
    counters: Arc<Counters>,
    finished: bool,
}

impl Drop for DropWatch {
    fn drop(&mut self) {
        if !self.finished {
            self.counters.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// One message as the host reassembled it.
#[derive(Debug)]
struct Reply {
    client: ClientId,
    cid: ChannelId,
    cmd: u8,
    payload: Vec<u8>,
}

/// The host side: sends reports to a running engine and reads what comes back.
struct Host {
    to_engine: mpsc::Sender<(ClientId, Report)>,
    from_engine: mpsc::UnboundedReceiver<(ClientId, Report)>,
    stop: oneshot::Sender<()>,
    engine: JoinHandle<Result<(), HidError>>,
    counters: Arc<Counters>,
    next_nonce: u64,
}

impl Host {
    fn start() -> Self {
        Self::with_config(EngineConfig::default())
    }

    /// A started engine and a channel `client` opened on it.
    async fn with_channel(client: ClientId) -> (Self, ChannelId) {
        let mut host = Self::start();
        let cid = host.init(client).await;
        (host, cid)
    }

    fn with_config(config: EngineConfig) -> Self {
        let (to_engine, from_host) = mpsc::channel(1024);
        let (to_host, from_engine) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let counters = Arc::new(Counters::default());
        let backend = MemHid { from_host, to_host };
        let forwarder = Arc::new(Echo(Arc::clone(&counters)));
        let engine = tokio::spawn(run(backend, forwarder, config, async move {
            let _ = stopped.await;
        }));
        Self {
            to_engine,
            from_engine,
            stop,
            engine,
            counters,
            next_nonce: 0x1122_3344_5566_7788,
        }
    }

    async fn send_report(&self, client: ClientId, report: Report) {
        self.to_engine.send((client, report)).await.unwrap();
    }

    async fn send(&self, client: ClientId, cid: ChannelId, cmd: Command, payload: &[u8]) {
        for report in frames(cid, cmd, payload).unwrap() {
            self.send_report(client, report).await;
        }
    }

    /// Sends only the initialization packet of a `len`-byte PING.
    async fn send_ping_start(&self, client: ClientId, cid: ChannelId, len: usize) {
        let payload = vec![0x5a; len];
        let first = frames(cid, Command::Ping, &payload)
            .unwrap()
            .next()
            .unwrap();
        self.send_report(client, first).await;
    }

    async fn recv_report(&mut self) -> (ClientId, Report) {
        time::timeout(REPLY_WAIT, self.from_engine.recv())
            .await
            .expect("no report from the engine in time")
            .expect("engine stopped")
    }

    /// The next message, keepalives included, read as a host reads it ([`ReplyReader`]): every
    /// report of one message goes to one client, on one channel.
    async fn recv_message(&mut self) -> Reply {
        let (client, mut report) = self.recv_report().await;
        let cid = Packet::parse(&report).cid();
        let mut reader = ReplyReader::new(cid);
        loop {
            let (cmd, payload) = match reader.feed(&report) {
                Heard::Keepalive(status) => (Command::Keepalive.code(), vec![status]),
                Heard::Complete(message) => (message.cmd, message.payload),
                Heard::Partial => {
                    let (next_client, next) = self.recv_report().await;
                    assert_eq!(next_client, client, "a message's reports go to one client");
                    report = next;
                    continue;
                }
                other => panic!("expected a message on {cid:?}, got {other:?}"),
            };
            return Reply {
                client,
                cid,
                cmd,
                payload,
            };
        }
    }

    /// The next message that is not a KEEPALIVE.
    async fn recv_answer(&mut self) -> Reply {
        loop {
            let reply = self.recv_message().await;
            if reply.cmd != Command::Keepalive.code() {
                return reply;
            }
        }
    }

    async fn expect_error(&mut self, client: ClientId, cid: ChannelId, code: ErrorCode) {
        let reply = self.recv_answer().await;
        assert_eq!(
            (reply.client, reply.cid, reply.cmd, reply.payload),
            (client, cid, Command::Error.code(), vec![code.code()]),
            "expected {code:?}"
        );
    }

    /// INIT on the broadcast channel; returns the new channel.
    async fn init(&mut self, client: ClientId) -> ChannelId {
        self.next_nonce += 1;
        let nonce = self.next_nonce.to_be_bytes();
        self.send(client, ChannelId::BROADCAST, Command::Init, &nonce)
            .await;
        let reply = self.recv_answer().await;
        assert_eq!(reply.client, client);
        assert_eq!(reply.cid, ChannelId::BROADCAST);
        assert_eq!(reply.cmd, Command::Init.code());
        assert_eq!(reply.payload.len(), INIT_RESPONSE_LEN);
        assert_eq!(reply.payload[..8], nonce);
        let cid = ChannelId::new(u32::from_be_bytes(reply.payload[8..12].try_into().unwrap()));
        assert!(
            cid.is_allocatable(),
            "{cid} must not be reserved or broadcast"
        );
        cid
    }

    async fn ping(&mut self, client: ClientId, cid: ChannelId, payload: &[u8]) {
        self.send(client, cid, Command::Ping, payload).await;
        let reply = self.recv_answer().await;
        assert_eq!(
            (reply.client, reply.cid, reply.cmd),
            (client, cid, Command::Ping.code())
        );
        assert_eq!(reply.payload, payload);
    }

    /// Sends a CBOR request and returns without waiting for the answer.
    async fn cbor(&self, client: ClientId, cid: ChannelId, request: &[u8]) {
        self.send(client, cid, Command::Cbor, request).await;
    }

    async fn expect_cbor(&mut self, client: ClientId, cid: ChannelId, payload: &[u8]) {
        let reply = self.recv_answer().await;
        assert_eq!(
            (reply.client, reply.cid, reply.cmd, reply.payload),
            (client, cid, Command::Cbor.code(), payload.to_vec())
        );
    }

    /// The engine still serves: a fresh channel for `client` answers a PING.
    async fn assert_serves(&mut self, client: ClientId) {
        let cid = self.init(client).await;
        self.ping(client, cid, b"still here").await;
    }

    /// The end of an error test: `client`'s channel `cid` recovered (it answers a PING),
    /// another client is still served, and the engine stops cleanly.
    async fn finish_recovered(mut self, client: ClientId, cid: ChannelId) {
        self.ping(client, cid, b"ok").await;
        self.assert_serves(BOB).await;
        self.finish().await;
    }

    /// Stops the engine and checks it ended cleanly with nothing left over: no unread
    /// report, and every forward either finished or was dropped.
    async fn finish(mut self) {
        self.stop.send(()).unwrap();
        self.engine.await.unwrap().unwrap();
        // Let aborted forward tasks be torn down.
        time::sleep(Duration::from_millis(1)).await;
        if let Ok((client, report)) = self.from_engine.try_recv() {
            panic!("unexpected report for {client}: {report:02x?}");
        }
        let counters = &self.counters;
        assert_eq!(
            counters.started.load(Ordering::SeqCst),
            counters.finished.load(Ordering::SeqCst) + counters.dropped.load(Ordering::SeqCst),
            "a forward leaked"
        );
    }

    /// Forwards dropped unfinished so far, once aborted tasks have been torn down.
    async fn dropped_forwards(&self) -> usize {
        time::sleep(Duration::from_millis(1)).await;
        self.counters.dropped.load(Ordering::SeqCst)
    }
}

/// An initialization packet with any command byte and BCNT, data zero.
fn raw_init(cid: ChannelId, cmd: u8, bcnt: u16) -> Report {
    let mut report = [0u8; REPORT_LEN];
    report[..4].copy_from_slice(&cid.to_bytes());
    report[4] = 0x80 | cmd;
    report[5..7].copy_from_slice(&bcnt.to_be_bytes());
    report
}

/// Virtual time still has the timer wheel's millisecond granularity, and never fires early.
fn assert_about(actual: Duration, expected: Duration) {
    let slack = Duration::from_millis(2);
    assert!(
        actual >= expected && actual <= expected + slack,
        "took {actual:?}, expected {expected:?}"
    );
}

fn raw_cont(cid: ChannelId, seq: u8) -> Report {
    let mut report = [0u8; REPORT_LEN];
    report[..4].copy_from_slice(&cid.to_bytes());
    report[4] = seq;
    report
}

// --- INIT ---------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn init_echoes_the_nonce_and_allocates_unique_channels() {
    let mut host = Host::start();
    let nonce = *b"\x01\x02\x03\x04\x05\x06\x07\x08";
    host.send(ALICE, ChannelId::BROADCAST, Command::Init, &nonce)
        .await;
    let reply = host.recv_answer().await;
    assert_eq!(reply.client, ALICE);
    assert_eq!(reply.cid, ChannelId::BROADCAST);
    assert_eq!(reply.cmd, Command::Init.code());
    let version = DeviceVersion::default();
    assert_eq!(reply.payload[..8], nonce);
    assert_eq!(
        reply.payload[12..],
        [
            2,
            version.major,
            version.minor,
            version.build,
            CAPABILITY_WINK | CAPABILITY_CBOR | CAPABILITY_NMSG
        ]
    );
    let first = ChannelId::new(u32::from_be_bytes(reply.payload[8..12].try_into().unwrap()));

    let second = host.init(BOB).await;
    let third = host.init(ALICE).await;
    assert_ne!(first, second);
    assert_ne!(first, third);
    assert_ne!(second, third);
    host.ping(ALICE, first, b"a").await;
    host.ping(BOB, second, b"b").await;
    host.finish().await;
}

#[tokio::test(start_paused = true)]
async fn init_with_a_wrong_length_is_invalid_len() {
    let mut host = Host::start();
    host.send(ALICE, ChannelId::BROADCAST, Command::Init, &[0; 7])
        .await;
    host.expect_error(ALICE, ChannelId::BROADCAST, ErrorCode::InvalidLen)
        .await;
    host.send(ALICE, ChannelId::BROADCAST, Command::Init, &[0; 9])
        .await;
    host.expect_error(ALICE, ChannelId::BROADCAST, ErrorCode::InvalidLen)
        .await;
    let cid = host.init(ALICE).await;
    host.send(ALICE, cid, Command::Init, &[0; 4]).await;
    host.expect_error(ALICE, cid, ErrorCode::InvalidLen).await;
    host.assert_serves(BOB).await;
    host.finish().await;
}

#[tokio::test(start_paused = true)]
async fn init_on_an_open_channel_resynchronises_it() {
    let (mut host, cid) = Host::with_channel(ALICE).await;

    // A pending CBOR request is abandoned: no answer, and the forward is dropped.
    host.cbor(ALICE, cid, &[0x01, 10]).await;
    let nonce = *b"resync!!";
    host.send(ALICE, cid, Command::Init, &nonce).await;
    let reply = host.recv_answer().await;
    assert_eq!((reply.cid, reply.cmd), (cid, Command::Init.code()));
    assert_eq!(reply.payload[..8], nonce);
    assert_eq!(
        reply.payload[8..12],
        cid.to_bytes(),
        "INIT confirms the same CID"
    );
    assert_eq!(host.dropped_forwards().await, 1);

    // A half-received message is abandoned; its late continuation is ignored.
    host.send_ping_start(ALICE, cid, 100).await;
    host.send(ALICE, cid, Command::Init, &nonce).await;
    let reply = host.recv_answer().await;
    assert_eq!((reply.cid, reply.cmd), (cid, Command::Init.code()));
    host.send_report(ALICE, raw_cont(cid, 0)).await;
    host.ping(ALICE, cid, b"after resync").await;
    host.finish().await;
}

#[tokio::test(start_paused = true)]
async fn channels_beyond_the_limit_reuse_the_least_recently_used_idle_one() {
    let mut host = Host::with_config(EngineConfig {
        max_channels: 2,
        ..EngineConfig::default()
    });
    // Virtual time moves between steps so that "least recently used" is well defined.
    let step = Duration::from_millis(10);
    let first = host.init(ALICE).await;
    time::sleep(step).await;
    let second = host.init(ALICE).await;
    time::sleep(step).await;
    host.ping(ALICE, first, b"first is now the most recent")
        .await;
    time::sleep(step).await;
    let third = host.init(BOB).await;
    host.send(ALICE, second, Command::Ping, b"gone").await;
    host.expect_error(ALICE, second, ErrorCode::InvalidChannel)
        .await;
    host.ping(ALICE, first, b"kept").await;

    // With every channel busy, there is nothing to reuse.
    host.cbor(ALICE, first, &[0x01, 5]).await;
    host.cbor(BOB, third, &[0x01, 5]).await;
    host.send(BOB, ChannelId::BROADCAST, Command::Init, &[0; 8])
        .await;
    host.expect_error(BOB, ChannelId::BROADCAST, ErrorCode::ChannelBusy)
        .await;
    host.expect_cbor(ALICE, first, &[0x00, 0x01, 5]).await;
    host.expect_cbor(BOB, third, &[0x00, 0x01, 5]).await;
    host.finish().await;
}

// --- PING, WINK, MSG, unknown commands ----------------------------------------------------

#[tokio::test(start_paused = true)]
async fn ping_of_the_maximum_message_round_trips() {
    let (mut host, cid) = Host::with_channel(ALICE).await;
    #[expect(
        clippy::cast_possible_truncation,
        reason = "a test byte pattern: wrapping is the point"
    )]
    let payload: Vec<u8> = (0..MAX_MESSAGE_LEN).map(|i| (i % 253) as u8).collect();
    host.ping(ALICE, cid, &payload).await;
    host.ping(ALICE, cid, &[]).await;
    host.finish().await;
}

#[tokio::test(start_paused = true)]
async fn message_longer_than_the_maximum_is_invalid_len() {
    let (mut host, cid) = Host::with_channel(ALICE).await;
    let too_long = u16::try_from(MAX_MESSAGE_LEN + 1).unwrap();
    host.send_report(ALICE, raw_init(cid, Command::Ping.code(), too_long))
        .await;
    host.expect_error(ALICE, cid, ErrorCode::InvalidLen).await;
    // Nothing was started, so the continuation that follows is spurious and ignored.
    host.send_report(ALICE, raw_cont(cid, 0)).await;
    host.finish_recovered(ALICE, cid).await;
}

#[tokio::test(start_paused = true)]
async fn wink_is_answered_empty() {
    let (mut host, cid) = Host::with_channel(ALICE).await;
    host.send(ALICE, cid, Command::Wink, &[]).await;
    let reply = host.recv_answer().await;
    assert_eq!(
        (reply.cid, reply.cmd, reply.payload),
        (cid, Command::Wink.code(), vec![])
    );
    host.finish().await;
}

#[tokio::test(start_paused = true)]
async fn msg_is_invalid_cmd_because_ctap1_is_not_implemented() {
    let (mut host, cid) = Host::with_channel(ALICE).await;
    host.send(ALICE, cid, Command::Msg, &[0x00, 0x03, 0x00, 0x00])
        .await;
    host.expect_error(ALICE, cid, ErrorCode::InvalidCmd).await;
    host.assert_serves(BOB).await;
    host.finish().await;
}

#[tokio::test(start_paused = true)]
async fn unknown_and_device_only_commands_are_invalid_cmd() {
    let (mut host, cid) = Host::with_channel(ALICE).await;
    host.send_report(ALICE, raw_init(cid, UNKNOWN_CMD, 0)).await;
    host.expect_error(ALICE, cid, ErrorCode::InvalidCmd).await;
    host.send(ALICE, cid, Command::Keepalive, &[1]).await;
    host.expect_error(ALICE, cid, ErrorCode::InvalidCmd).await;
    host.send(ALICE, cid, Command::Error, &[1]).await;
    host.expect_error(ALICE, cid, ErrorCode::InvalidCmd).await;
    host.finish_recovered(ALICE, cid).await;
}

// --- Channel addressing -------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn reserved_unallocated_and_broadcast_channels_are_invalid_channel() {
    let mut host = Host::start();
    host.send(ALICE, ChannelId::RESERVED, Command::Ping, b"x")
        .await;
    host.expect_error(ALICE, ChannelId::RESERVED, ErrorCode::InvalidChannel)
        .await;
    let stranger = ChannelId::new(0x1234_5678);
    host.send(ALICE, stranger, Command::Ping, b"x").await;
    host.expect_error(ALICE, stranger, ErrorCode::InvalidChannel)
        .await;
    host.send(ALICE, stranger, Command::Init, &[0; 8]).await;
    host.expect_error(ALICE, stranger, ErrorCode::InvalidChannel)
        .await;
    host.send(ALICE, ChannelId::BROADCAST, Command::Ping, b"x")
        .await;
    host.expect_error(ALICE, ChannelId::BROADCAST, ErrorCode::InvalidChannel)
        .await;
    // Continuations on channels nobody opened are spurious and ignored.
    host.send_report(ALICE, raw_cont(stranger, 0)).await;
    host.send_report(ALICE, raw_cont(ChannelId::BROADCAST, 0))
        .await;
    host.assert_serves(BOB).await;
    host.finish().await;
}

// --- Reassembly errors --------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn continuation_out_of_sequence_is_invalid_seq_and_drops_the_message() {
    let (mut host, cid) = Host::with_channel(ALICE).await;
    host.send_ping_start(ALICE, cid, 200).await;
    host.send_report(ALICE, raw_cont(cid, 1)).await;
    host.expect_error(ALICE, cid, ErrorCode::InvalidSeq).await;
    // The partial message is gone: what would have been the right continuation is spurious.
    host.send_report(ALICE, raw_cont(cid, 0)).await;
    host.finish_recovered(ALICE, cid).await;
}

#[tokio::test(start_paused = true)]
async fn initialization_packet_interrupting_a_message_is_invalid_seq() {
    let (mut host, cid) = Host::with_channel(ALICE).await;
    host.send_ping_start(ALICE, cid, 100).await;
    host.send(ALICE, cid, Command::Ping, b"interloper").await;
    host.expect_error(ALICE, cid, ErrorCode::InvalidSeq).await;
    host.send_report(ALICE, raw_cont(cid, 0)).await;
    host.finish_recovered(ALICE, cid).await;
}

#[tokio::test(start_paused = true)]
async fn continuation_on_an_idle_channel_is_ignored() {
    let (mut host, cid) = Host::with_channel(ALICE).await;
    host.send_report(ALICE, raw_cont(cid, 0)).await;
    host.send_report(ALICE, raw_cont(cid, 5)).await;
    host.ping(ALICE, cid, b"first answer is this one").await;
    host.finish().await;
}

#[tokio::test(start_paused = true)]
async fn stalled_message_times_out_and_resets_the_channel() {
    let (mut host, cid) = Host::with_channel(ALICE).await;
    let started = Instant::now();
    host.send_ping_start(ALICE, cid, 57 + CONT_DATA_LEN + 1)
        .await;
    host.send_report(ALICE, raw_cont(cid, 0)).await;
    host.expect_error(ALICE, cid, ErrorCode::MsgTimeout).await;
    assert_about(started.elapsed(), DEFAULT_MESSAGE_TIMEOUT);
    // The rest of the abandoned message is spurious.
    host.send_report(ALICE, raw_cont(cid, 1)).await;
    host.finish_recovered(ALICE, cid).await;
}

#[tokio::test(start_paused = true)]
async fn message_timeout_is_configurable() {
    let timeout = Duration::from_millis(900);
    let mut host = Host::with_config(EngineConfig {
        message_timeout: timeout,
        ..EngineConfig::default()
    });
    let cid = host.init(ALICE).await;
    let started = Instant::now();
    host.send_ping_start(ALICE, cid, 100).await;
    host.expect_error(ALICE, cid, ErrorCode::MsgTimeout).await;
    assert_about(started.elapsed(), timeout);
    host.finish().await;
}

// --- CBOR, KEEPALIVE, CANCEL, busy ----------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn cbor_request_is_forwarded_and_answered() {
    let (mut host, cid) = Host::with_channel(ALICE).await;
    host.cbor(ALICE, cid, &[0x04]).await;
    host.expect_cbor(ALICE, cid, &[0x00, 0x04]).await;

    // Multi-packet request and answer.
    let mut request = vec![0x01, 0];
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a test byte pattern: wrapping is the point"
    )]
    request.extend((0..1000).map(|i| (i % 256) as u8));
    host.cbor(ALICE, cid, &request).await;
    let expected = [&[0x00][..], &request].concat();
    host.expect_cbor(ALICE, cid, &expected).await;
    host.finish().await;
}

#[tokio::test(start_paused = true)]
async fn empty_cbor_request_is_invalid_len() {
    let (mut host, cid) = Host::with_channel(ALICE).await;
    host.cbor(ALICE, cid, &[]).await;
    host.expect_error(ALICE, cid, ErrorCode::InvalidLen).await;
    host.ping(ALICE, cid, b"ok").await;
    host.finish().await;
}

#[tokio::test(start_paused = true)]
async fn keepalive_arrives_at_least_every_100_ms_while_a_forward_is_slow() {
    let (mut host, cid) = Host::with_channel(ALICE).await;
    let ticks = 10;
    let sent = Instant::now();
    host.cbor(ALICE, cid, &[0x01, ticks]).await;
    let mut last = sent;
    let mut keepalives = 0;
    let answer = loop {
        let reply = host.recv_message().await;
        let now = Instant::now();
        assert!(
            now - last <= KEEPALIVE_DEADLINE,
            "{:?} without a keepalive",
            now - last
        );
        last = now;
        if reply.cmd != Command::Keepalive.code() {
            break reply;
        }
        assert_eq!((reply.client, reply.cid), (ALICE, cid));
        assert_eq!(reply.payload, vec![KEEPALIVE_STATUS_PROCESSING]);
        keepalives += 1;
    };
    assert_eq!(answer.cmd, Command::Cbor.code());
    assert_eq!(answer.payload, vec![0x00, 0x01, ticks]);
    assert_about(sent.elapsed(), FORWARD_TICK * u32::from(ticks));
    assert!(
        keepalives >= 10,
        "only {keepalives} keepalives in one second"
    );
    host.finish().await;
}

#[tokio::test(start_paused = true)]
async fn cancel_answers_the_pending_request_with_keepalive_cancel() {
    let (mut host, cid) = Host::with_channel(ALICE).await;
    host.cbor(ALICE, cid, &[0x01, 50]).await;
    let keepalive = host.recv_message().await;
    assert_eq!(keepalive.cmd, Command::Keepalive.code());
    host.send(ALICE, cid, Command::Cancel, &[]).await;
    host.expect_cbor(ALICE, cid, &[StatusCode::KeepaliveCancel.byte()])
        .await;
    assert_eq!(host.dropped_forwards().await, 1);
    // No more keepalives and no late answer: the PING echo is the very next message.
    host.send(ALICE, cid, Command::Ping, b"next").await;
    let reply = host.recv_message().await;
    assert_eq!(
        (reply.cmd, reply.payload),
        (Command::Ping.code(), b"next".to_vec())
    );
    host.finish().await;
}

#[tokio::test(start_paused = true)]
async fn cancel_with_nothing_pending_is_ignored() {
    let (mut host, cid) = Host::with_channel(ALICE).await;
    host.send(ALICE, cid, Command::Cancel, &[]).await;
    host.ping(ALICE, cid, b"CANCEL got no answer").await;
    host.finish().await;
}

#[tokio::test(start_paused = true)]
async fn request_on_a_busy_channel_is_channel_busy_while_the_first_completes() {
    let (mut host, cid) = Host::with_channel(ALICE).await;
    host.cbor(ALICE, cid, &[0x01, 3]).await;
    host.cbor(ALICE, cid, &[0x02]).await;
    host.expect_error(ALICE, cid, ErrorCode::ChannelBusy).await;
    host.send(ALICE, cid, Command::Ping, b"x").await;
    host.expect_error(ALICE, cid, ErrorCode::ChannelBusy).await;
    // A multi-packet request is refused at its first packet; the rest is ignored.
    host.cbor(ALICE, cid, &[0x03; 300]).await;
    host.expect_error(ALICE, cid, ErrorCode::ChannelBusy).await;
    host.expect_cbor(ALICE, cid, &[0x00, 0x01, 3]).await;
    host.ping(ALICE, cid, b"idle again").await;
    assert_eq!(host.dropped_forwards().await, 0);
    host.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_slow_request_does_not_hold_up_other_channels() {
    let mut host = Host::start();
    let slow = host.init(ALICE).await;
    let fast = host.init(BOB).await;
    let other = host.init(BOB).await;
    let started = Instant::now();
    host.cbor(ALICE, slow, &[0x01, 20]).await;
    host.cbor(BOB, fast, &[0x02, 2]).await;
    host.ping(BOB, other, b"served at once").await;
    assert_eq!(started.elapsed(), Duration::ZERO);
    host.expect_cbor(BOB, fast, &[0x00, 0x02, 2]).await;
    assert_about(started.elapsed(), FORWARD_TICK * 2);
    host.expect_cbor(ALICE, slow, &[0x00, 0x01, 20]).await;
    assert_about(started.elapsed(), FORWARD_TICK * 20);
    host.finish().await;
}

#[tokio::test(start_paused = true)]
async fn forwarder_panic_or_empty_answer_is_err_other_and_the_channel_recovers() {
    let (mut host, cid) = Host::with_channel(ALICE).await;
    host.cbor(ALICE, cid, &[PANIC_REQUEST]).await;
    host.expect_error(ALICE, cid, ErrorCode::Other).await;
    host.cbor(ALICE, cid, &[EMPTY_ANSWER_REQUEST]).await;
    host.expect_error(ALICE, cid, ErrorCode::Other).await;
    host.cbor(ALICE, cid, &[0x04]).await;
    host.expect_cbor(ALICE, cid, &[0x00, 0x04]).await;
    host.finish().await;
}

// --- LOCK ---------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn lock_keeps_other_channels_out_until_it_expires() {
    let mut host = Host::start();
    let holder = host.init(ALICE).await;
    let other = host.init(BOB).await;
    host.send(ALICE, holder, Command::Lock, &[2]).await;
    let reply = host.recv_answer().await;
    assert_eq!(
        (reply.cid, reply.cmd, reply.payload),
        (holder, Command::Lock.code(), vec![])
    );
    let locked_at = Instant::now();

    host.send(BOB, other, Command::Ping, b"x").await;
    host.expect_error(BOB, other, ErrorCode::ChannelBusy).await;
    host.send(BOB, ChannelId::BROADCAST, Command::Init, &[0; 8])
        .await;
    host.expect_error(BOB, ChannelId::BROADCAST, ErrorCode::ChannelBusy)
        .await;
    host.ping(ALICE, holder, b"holder is served").await;

    time::sleep_until(locked_at + Duration::from_secs(2)).await;
    host.ping(BOB, other, b"lock expired").await;
    host.finish().await;
}

#[tokio::test(start_paused = true)]
async fn lock_zero_releases_it() {
    let mut host = Host::start();
    let holder = host.init(ALICE).await;
    let other = host.init(BOB).await;
    host.send(ALICE, holder, Command::Lock, &[10]).await;
    host.recv_answer().await;
    host.send(BOB, other, Command::Lock, &[0]).await;
    host.expect_error(BOB, other, ErrorCode::ChannelBusy).await;
    host.send(ALICE, holder, Command::Lock, &[0]).await;
    let reply = host.recv_answer().await;
    assert_eq!(reply.cmd, Command::Lock.code());
    host.ping(BOB, other, b"released").await;
    host.finish().await;
}

#[tokio::test(start_paused = true)]
async fn lock_with_bad_arguments_is_refused() {
    let (mut host, cid) = Host::with_channel(ALICE).await;
    host.send(ALICE, cid, Command::Lock, &[MAX_LOCK_SECONDS + 1])
        .await;
    host.expect_error(ALICE, cid, ErrorCode::InvalidPar).await;
    host.send(ALICE, cid, Command::Lock, &[]).await;
    host.expect_error(ALICE, cid, ErrorCode::InvalidLen).await;
    host.send(ALICE, cid, Command::Lock, &[1, 1]).await;
    host.expect_error(ALICE, cid, ErrorCode::InvalidLen).await;
    // None of them took the lock.
    host.assert_serves(BOB).await;
    host.finish().await;
}

// --- Robustness ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn arbitrary_reports_never_wedge_the_engine() {
    let (mut host, cid) = Host::with_channel(ALICE).await;
    // A deterministic spread of junk: every command byte, odd lengths, on known and unknown
    // channels. Answers are drained, not checked: the point is the engine survives.
    let mut state: u32 = 0x9e37_79b9;
    for i in 0..2000u32 {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let mut report = [0u8; REPORT_LEN];
        for (j, byte) in report.iter_mut().enumerate() {
            #[expect(
                clippy::cast_possible_truncation,
                reason = "a test byte pattern: wrapping is the point"
            )]
            {
                *byte = (state.rotate_left(j as u32) >> (j % 24)) as u8;
            }
        }
        if i % 2 == 0 {
            report[..4].copy_from_slice(&cid.to_bytes());
        }
        host.send_report(BOB, report).await;
    }
    // Whatever state the junk left, INIT resynchronises the channel and it serves again.
    host.send(ALICE, cid, Command::Init, &[7; 8]).await;
    loop {
        let reply = host.recv_message().await;
        if reply.client == ALICE && reply.cmd == Command::Init.code() {
            break;
        }
    }
    host.send(ALICE, cid, Command::Ping, b"alive").await;
    loop {
        let reply = host.recv_message().await;
        if reply.client == ALICE && reply.cmd == Command::Ping.code() {
            assert_eq!(reply.payload, b"alive");
            break;
        }
    }
    // Drain whatever the junk still had in flight, then check nothing leaked.
    while let Ok(Some(_)) = time::timeout(Duration::from_secs(20), host.from_engine.recv()).await {}
    host.finish().await;
}
