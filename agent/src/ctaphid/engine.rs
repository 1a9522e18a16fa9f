//! The CTAPHID engine: one event loop that reads reports from a [`HidBackend`], reassembles
//! them per channel, dispatches commands, keeps CTAPHID_CBOR requests alive while the
//! [`CborForwarder`] works on them, and writes the answers back to the client that asked
//! (CTAP 2.1 §11.2.3–§11.2.9). It owns channel allocation, the lock and every transport
//! timer; it never inspects a CBOR payload and never blocks on a forward, so a slow request on
//! one channel never holds up another.

use std::collections::HashMap;
use std::future::{self, Future};
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use obr_proto::ctap::StatusCode;
use tokio::task::{AbortHandle, JoinError, JoinSet};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::assembler::{Message, Progress, Reassembly};
use super::packet::{
    self, CAPABILITY_CBOR, CAPABILITY_NMSG, CAPABILITY_WINK, CONT_DATA_LEN, ChannelId, Command,
    ErrorCode, INIT_DATA_LEN, KEEPALIVE_STATUS_PROCESSING, KEEPALIVE_STATUS_UPNEEDED,
    PROTOCOL_VERSION, Packet,
};
use crate::hid::{ClientId, HidBackend, HidError, Report};

/// How long a partly received message waits for its next continuation packet before the
/// channel is reset with `ERR_MSG_TIMEOUT` (§11.2.5.2 "Transaction timeout").
pub const DEFAULT_MESSAGE_TIMEOUT: Duration = Duration::from_millis(500);
/// Interval between KEEPALIVEs for an outstanding CBOR request. §11.2.9.1.7: "It should be sent
/// at least every 100ms"; 80 ms leaves room for scheduling jitter.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_millis(80);
/// Channels kept at once; INIT beyond this reuses the least recently used idle channel.
pub const DEFAULT_MAX_CHANNELS: usize = 128;
/// Longest lock a host may take, in seconds (§11.2.9.2.2).
pub const MAX_LOCK_SECONDS: u8 = 10;

/// Floor for [`EngineConfig::keepalive_interval`], so a zero interval cannot spin the loop.
const MIN_KEEPALIVE_INTERVAL: Duration = Duration::from_millis(1);
/// INIT carries an 8-byte nonce and nothing else (§11.2.9.1.3).
const INIT_NONCE_LEN: usize = 8;
/// INIT response: nonce, CID, and five one-byte fields (§11.2.9.1.3).
const INIT_RESPONSE_LEN: usize = INIT_NONCE_LEN + 4 + 5;
/// Capabilities advertised by INIT: WINK and CBOR, and no CTAP1/U2F MSG (§11.2.9.1.3).
const CAPABILITIES: u8 = CAPABILITY_WINK | CAPABILITY_CBOR | CAPABILITY_NMSG;

/// The rest of the agent, as the CTAPHID engine sees it: something that answers a CTAP2 request.
pub trait CborForwarder: Send + Sync + 'static {
    /// `request` is the CTAPHID_CBOR payload (CTAP command byte followed by CBOR).
    /// Returns the CTAP response payload (status byte followed by CBOR) — errors are already
    /// mapped to a CTAP status byte by the forwarder. The future may be dropped (CANCEL,
    /// INIT resync).
    ///
    /// `status` is what the engine's KEEPALIVEs report while the request is away; the forwarder
    /// switches it to "user presence needed" while the user is being asked (§11.2.9.1.7).
    fn forward(&self, request: Vec<u8>, status: KeepaliveStatus) -> BoxFuture<'static, Vec<u8>>;
}

/// The status byte of the KEEPALIVEs sent for one pending request: PROCESSING until the
/// forwarder says the request is waiting for the user (UPNEEDED), and back.
#[derive(Clone, Debug)]
pub struct KeepaliveStatus(Arc<AtomicU8>);

impl KeepaliveStatus {
    pub(crate) fn new() -> Self {
        Self(Arc::new(AtomicU8::new(KEEPALIVE_STATUS_PROCESSING)))
    }

    /// The request waits for the user (their approval on their device).
    pub fn user_presence_needed(&self) {
        self.0.store(KEEPALIVE_STATUS_UPNEEDED, Ordering::Relaxed);
    }

    /// The request is being processed again.
    pub fn processing(&self) {
        self.0.store(KEEPALIVE_STATUS_PROCESSING, Ordering::Relaxed);
    }

    fn byte(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Device version reported in the INIT response (§11.2.9.1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceVersion {
    pub major: u8,
    pub minor: u8,
    pub build: u8,
}

impl Default for DeviceVersion {
    /// This crate's version; a component above 255 reads as 255.
    fn default() -> Self {
        Self {
            major: version_part(env!("CARGO_PKG_VERSION_MAJOR")),
            minor: version_part(env!("CARGO_PKG_VERSION_MINOR")),
            build: version_part(env!("CARGO_PKG_VERSION_PATCH")),
        }
    }
}

/// Timers, limits and identity of the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// See [`DEFAULT_MESSAGE_TIMEOUT`].
    pub message_timeout: Duration,
    /// See [`DEFAULT_KEEPALIVE_INTERVAL`].
    pub keepalive_interval: Duration,
    /// See [`DEFAULT_MAX_CHANNELS`].
    pub max_channels: usize,
    pub device_version: DeviceVersion,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            message_timeout: DEFAULT_MESSAGE_TIMEOUT,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            max_channels: DEFAULT_MAX_CHANNELS,
            device_version: DeviceVersion::default(),
        }
    }
}

/// Serves CTAPHID on `backend` until `shutdown` completes (then returns `Ok`) or the backend
/// fails. Outstanding forwards are dropped on return. Must run within a tokio runtime:
/// forwards are spawned as tasks.
pub async fn run<B, F>(
    mut backend: B,
    forwarder: Arc<F>,
    config: EngineConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HidError>
where
    B: HidBackend,
    F: CborForwarder,
{
    let mut engine = Engine::new(forwarder, config);
    let mut shutdown = pin!(shutdown);
    loop {
        let deadline = engine.next_deadline();
        tokio::select! {
            biased;
            () = &mut shutdown => return Ok(()),
            Some(joined) = engine.forwards.join_next() => engine.on_forward_joined(joined),
            () = sleep_until(deadline) => engine.on_timer(Instant::now()),
            received = backend.recv() => {
                let (client, report) = received?;
                engine.on_report(client, &report, Instant::now());
            }
        }
        for (client, report) in engine.out.drain() {
            backend.send(client, &report).await?;
        }
    }
}

/// Transport state. Every handler queues its answers in `out`; `run` sends them.
struct Engine<F> {
    forwarder: Arc<F>,
    config: EngineConfig,
    channels: HashMap<ChannelId, Channel>,
    /// Next candidate for INIT on the broadcast channel.
    next_cid: u32,
    /// Tags each forward so a late answer to an aborted request is recognised and dropped.
    next_txn: u64,
    lock: Option<Lock>,
    forwards: JoinSet<Forwarded>,
    out: Outbox,
}

/// An allocated channel. At most one of `rx` and `pending` is set: a request is only
/// reassembled while nothing is pending, and a pending request refuses new ones.
struct Channel {
    last_used: Instant,
    rx: Option<Receiving>,
    pending: Option<Pending>,
}

/// A message being reassembled, and who is sending it.
struct Receiving {
    reassembly: Reassembly,
    client: ClientId,
    deadline: Instant,
}

/// A CBOR request away at the forwarder.
struct Pending {
    txn: u64,
    client: ClientId,
    task: AbortHandle,
    next_keepalive: Instant,
    status: KeepaliveStatus,
}

/// CTAPHID_LOCK held by one channel (§11.2.9.2.2).
#[derive(Clone, Copy)]
struct Lock {
    cid: ChannelId,
    until: Instant,
}

/// What a forward task hands back.
struct Forwarded {
    cid: ChannelId,
    txn: u64,
    /// `None` if the forwarder panicked.
    response: Option<Vec<u8>>,
}

impl<F: CborForwarder> Engine<F> {
    fn new(forwarder: Arc<F>, mut config: EngineConfig) -> Self {
        config.keepalive_interval = config.keepalive_interval.max(MIN_KEEPALIVE_INTERVAL);
        Self {
            forwarder,
            config,
            channels: HashMap::new(),
            next_cid: 1,
            next_txn: 0,
            lock: None,
            forwards: JoinSet::new(),
            out: Outbox::default(),
        }
    }

    /// Earliest reassembly timeout or keepalive due, if any.
    fn next_deadline(&self) -> Option<Instant> {
        self.channels
            .values()
            .flat_map(|channel| {
                [
                    channel.rx.as_ref().map(|rx| rx.deadline),
                    channel
                        .pending
                        .as_ref()
                        .map(|pending| pending.next_keepalive),
                ]
            })
            .flatten()
            .min()
    }

    fn on_report(&mut self, client: ClientId, report: &Report, now: Instant) {
        match Packet::parse(report) {
            Packet::Init {
                cid,
                cmd,
                bcnt,
                data,
            } => self.on_init_packet(client, cid, cmd, bcnt, data, now),
            Packet::Cont { cid, seq, data } => self.on_cont_packet(cid, seq, data, now),
        }
    }

    fn on_init_packet(
        &mut self,
        client: ClientId,
        cid: ChannelId,
        cmd: u8,
        bcnt: u16,
        data: &[u8; INIT_DATA_LEN],
        now: Instant,
    ) {
        // §11.2.9.1.3: the broadcast channel carries INIT only, to allocate a channel.
        if cid == ChannelId::BROADCAST {
            if cmd == Command::Init.code() {
                self.allocate(client, bcnt, data, now);
            } else {
                self.out.error(client, cid, ErrorCode::InvalidChannel);
            }
            return;
        }
        // §11.2.3: channel 0 is reserved and never allocated; any other id must come from INIT.
        let Some(channel) = self.channels.get_mut(&cid) else {
            self.out.error(client, cid, ErrorCode::InvalidChannel);
            return;
        };
        channel.last_used = now;
        let command = Command::from_code(cmd);

        // §11.2.9.1.5: CANCEL only touches its own channel's pending CBOR request and is never
        // answered itself, so neither the lock nor the busy rule applies to it. Its length is
        // not checked: it carries no data that could be wrong.
        if command == Some(Command::Cancel) {
            match channel.pending.take() {
                Some(pending) => {
                    debug!(%cid, "CANCEL aborts the pending CBOR request");
                    pending.task.abort();
                    self.out.message(
                        pending.client,
                        cid,
                        Command::Cbor,
                        &[StatusCode::KeepaliveCancel.byte()],
                    );
                }
                None => debug!(%cid, "ignoring CANCEL with nothing pending"),
            }
            return;
        }

        // §11.2.9.2.2: "As long as the lock is active, any other channel trying to send a
        // message will fail."
        if locked_out(self.lock, cid, now) {
            self.out.error(client, cid, ErrorCode::ChannelBusy);
            return;
        }

        // §11.2.5.3, §11.2.9.1.3: INIT on an allocated channel resynchronises it: any
        // transaction in progress is abandoned and the same CID is confirmed.
        if command == Some(Command::Init) {
            let Some(nonce) = init_nonce(bcnt, data) else {
                self.out.error(client, cid, ErrorCode::InvalidLen);
                return;
            };
            channel.rx = None;
            if let Some(pending) = channel.pending.take() {
                debug!(%cid, "INIT aborts the pending CBOR request");
                pending.task.abort();
            }
            let response = init_response(nonce, cid, self.config.device_version);
            self.out.message(client, cid, Command::Init, &response);
            return;
        }

        // §11.2.5.4 packet sequencing: an initialization packet that interrupts a message
        // still being reassembled is out of sequence. Both are dropped with ERR_INVALID_SEQ,
        // as the Solo and CanoKey firmwares do; INIT (above) is the way to abort on purpose.
        if channel.rx.take().is_some() {
            self.out.error(client, cid, ErrorCode::InvalidSeq);
            return;
        }

        // §11.2.5.1 transaction atomicity: one transaction per channel at a time. The pending
        // request goes on; the newcomer is refused before it is reassembled.
        if channel.pending.is_some() {
            self.out.error(client, cid, ErrorCode::ChannelBusy);
            return;
        }

        match Reassembly::start(cmd, bcnt, data) {
            Ok(Progress::Complete(message)) => self.dispatch(client, cid, message, now),
            Ok(Progress::Partial(reassembly)) => {
                channel.rx = Some(Receiving {
                    reassembly,
                    client,
                    deadline: now + self.config.message_timeout,
                });
            }
            Err(error) => {
                debug!(%cid, %error, "refusing message");
                self.out.error(client, cid, error.code());
            }
        }
    }

    fn on_cont_packet(
        &mut self,
        cid: ChannelId,
        seq: u8,
        data: &[u8; CONT_DATA_LEN],
        now: Instant,
    ) {
        // §11.2.5.4: "Spurious continuation packets appearing without a prior initialization
        // packet will be ignored." That covers unknown channels too: answering one would
        // invent a conversation nobody started.
        let Some(channel) = self.channels.get_mut(&cid) else {
            debug!(%cid, "ignoring continuation packet on an unallocated channel");
            return;
        };
        let Some(rx) = channel.rx.take() else {
            debug!(%cid, "ignoring spurious continuation packet");
            return;
        };
        channel.last_used = now;
        match rx.reassembly.push(seq, data) {
            Ok(Progress::Complete(message)) => self.dispatch(rx.client, cid, message, now),
            Ok(Progress::Partial(reassembly)) => {
                channel.rx = Some(Receiving {
                    reassembly,
                    client: rx.client,
                    deadline: now + self.config.message_timeout,
                });
            }
            Err(error) => {
                debug!(%cid, %error, "dropping message");
                self.out.error(rx.client, cid, error.code());
            }
        }
    }

    /// Acts on a complete message on an allocated, unlocked, idle channel.
    fn dispatch(&mut self, client: ClientId, cid: ChannelId, message: Message, now: Instant) {
        let Some(command) = Command::from_code(message.cmd) else {
            debug!(%cid, cmd = message.cmd, "unknown command");
            self.out.error(client, cid, ErrorCode::InvalidCmd);
            return;
        };
        match command {
            // §11.2.9.1.4: echo the data back.
            Command::Ping => self
                .out
                .message(client, cid, Command::Ping, &message.payload),
            Command::Lock => self.lock(client, cid, &message.payload, now),
            Command::Wink => {
                // §11.2.9.2.1: a virtual key has no light; the log line is its wink.
                info!(%client, %cid, "WINK");
                self.out.message(client, cid, Command::Wink, &[]);
            }
            Command::Cbor => self.forward(client, cid, message.payload, now),
            // §11.2.9.1.1: CTAP1/U2F is not implemented, as INIT's CAPABILITY_NMSG says.
            // INIT and CANCEL never get here (they are acted on per packet), and KEEPALIVE and
            // ERROR only travel from device to host.
            Command::Msg
            | Command::Init
            | Command::Cancel
            | Command::Keepalive
            | Command::Error => {
                debug!(%cid, ?command, "command not accepted from a host");
                self.out.error(client, cid, ErrorCode::InvalidCmd);
            }
        }
    }

    /// INIT on the broadcast channel: allocate a channel (§11.2.9.1.3).
    fn allocate(&mut self, client: ClientId, bcnt: u16, data: &[u8; INIT_DATA_LEN], now: Instant) {
        let cid = ChannelId::BROADCAST;
        let Some(nonce) = init_nonce(bcnt, data) else {
            self.out.error(client, cid, ErrorCode::InvalidLen);
            return;
        };
        if locked_out(self.lock, cid, now) {
            self.out.error(client, cid, ErrorCode::ChannelBusy);
            return;
        }
        if self.channels.len() >= self.config.max_channels && !self.evict_idle_channel() {
            warn!(
                max = self.config.max_channels,
                "every channel is busy; refusing INIT"
            );
            self.out.error(client, cid, ErrorCode::ChannelBusy);
            return;
        }
        let new_cid = self.unused_cid();
        self.channels.insert(
            new_cid,
            Channel {
                last_used: now,
                rx: None,
                pending: None,
            },
        );
        debug!(%client, cid = %new_cid, "channel allocated");
        let response = init_response(nonce, new_cid, self.config.device_version);
        self.out.message(client, cid, Command::Init, &response);
    }

    /// Drops the least recently used channel with nothing in flight; false if there is none.
    fn evict_idle_channel(&mut self) -> bool {
        let victim = self
            .channels
            .iter()
            .filter(|(_, channel)| channel.rx.is_none() && channel.pending.is_none())
            .min_by_key(|(_, channel)| channel.last_used)
            .map(|(cid, _)| *cid);
        match victim {
            Some(cid) => {
                debug!(%cid, "reusing the least recently used channel");
                self.channels.remove(&cid);
                true
            }
            None => false,
        }
    }

    /// A fresh channel id. Terminates: at most `max_channels` of the 2^32 − 2 allocatable ids
    /// are taken when this runs.
    fn unused_cid(&mut self) -> ChannelId {
        loop {
            let cid = ChannelId::new(self.next_cid);
            self.next_cid = self.next_cid.wrapping_add(1);
            if cid.is_allocatable() && !self.channels.contains_key(&cid) {
                return cid;
            }
        }
    }

    /// CTAPHID_LOCK (§11.2.9.2.2): one byte of seconds, 1..=10 to take or renew the lock,
    /// 0 to release it.
    fn lock(&mut self, client: ClientId, cid: ChannelId, payload: &[u8], now: Instant) {
        let &[seconds] = payload else {
            self.out.error(client, cid, ErrorCode::InvalidLen);
            return;
        };
        if seconds > MAX_LOCK_SECONDS {
            self.out.error(client, cid, ErrorCode::InvalidPar);
            return;
        }
        // Another channel may have taken the lock while this message was reassembled.
        if locked_out(self.lock, cid, now) {
            self.out.error(client, cid, ErrorCode::ChannelBusy);
            return;
        }
        self.lock = (seconds != 0).then(|| Lock {
            cid,
            until: now + Duration::from_secs(u64::from(seconds)),
        });
        self.out.message(client, cid, Command::Lock, &[]);
    }

    /// CTAPHID_CBOR (§11.2.9.1.2): hand the request to the forwarder in its own task; the
    /// answer comes back through `on_forward_joined`.
    fn forward(&mut self, client: ClientId, cid: ChannelId, request: Vec<u8>, now: Instant) {
        // The payload starts with the CTAP command byte; without it there is no request.
        if request.is_empty() {
            self.out.error(client, cid, ErrorCode::InvalidLen);
            return;
        }
        let Some(channel) = self.channels.get_mut(&cid) else {
            return;
        };
        let txn = self.next_txn;
        self.next_txn = self.next_txn.wrapping_add(1);
        let status = KeepaliveStatus::new();
        let answer = self.forwarder.forward(request, status.clone());
        let task = self.forwards.spawn(async move {
            // A panicking forwarder must not leave the channel busy for ever.
            let response = AssertUnwindSafe(answer).catch_unwind().await.ok();
            Forwarded { cid, txn, response }
        });
        channel.pending = Some(Pending {
            txn,
            client,
            task,
            next_keepalive: now + self.config.keepalive_interval,
            status,
        });
    }

    fn on_forward_joined(&mut self, joined: Result<Forwarded, JoinError>) {
        // Panics are caught inside the task, so an error here is an abort (CANCEL, INIT).
        let Ok(done) = joined else {
            return;
        };
        let Some(pending) = self
            .channels
            .get_mut(&done.cid)
            .and_then(|channel| channel.pending.take_if(|pending| pending.txn == done.txn))
        else {
            debug!(cid = %done.cid, "dropping the answer to an abandoned request");
            return;
        };
        match done.response {
            Some(response) if !response.is_empty() => {
                self.out
                    .message(pending.client, done.cid, Command::Cbor, &response);
            }
            Some(_) => {
                warn!(cid = %done.cid, "forwarder returned no status byte");
                self.out.error(pending.client, done.cid, ErrorCode::Other);
            }
            None => {
                warn!(cid = %done.cid, "forwarder panicked");
                self.out.error(pending.client, done.cid, ErrorCode::Other);
            }
        }
    }

    /// Fires every reassembly timeout and keepalive that is due.
    fn on_timer(&mut self, now: Instant) {
        for (cid, channel) in &mut self.channels {
            // §11.2.5.2: a stalled message is abandoned so the channel does not stay stuck.
            if let Some(rx) = channel.rx.take_if(|rx| rx.deadline <= now) {
                debug!(%cid, cmd = rx.reassembly.cmd(), "message timed out");
                self.out.error(rx.client, *cid, ErrorCode::MsgTimeout);
            }
            // §11.2.9.1.7: keep the host waiting while the forwarder works.
            if let Some(pending) = &mut channel.pending
                && pending.next_keepalive <= now
            {
                self.out.message(
                    pending.client,
                    *cid,
                    Command::Keepalive,
                    &[pending.status.byte()],
                );
                pending.next_keepalive = now + self.config.keepalive_interval;
            }
        }
    }
}

/// Reports waiting to be sent, in order.
#[derive(Default)]
struct Outbox(Vec<(ClientId, Report)>);

impl Outbox {
    fn message(&mut self, client: ClientId, cid: ChannelId, cmd: Command, payload: &[u8]) {
        match packet::frames(cid, cmd, payload) {
            Ok(frames) => self.0.extend(frames.map(|report| (client, report))),
            Err(error) => {
                warn!(%cid, ?cmd, %error, "answer cannot be framed");
                self.error(client, cid, ErrorCode::Other);
            }
        }
    }

    fn error(&mut self, client: ClientId, cid: ChannelId, code: ErrorCode) {
        debug!(%client, %cid, ?code, "sending CTAPHID_ERROR");
        self.0.push((client, packet::error_report(cid, code)));
    }

    fn drain(&mut self) -> std::vec::Drain<'_, (ClientId, Report)> {
        self.0.drain(..)
    }
}

/// Whether `lock` keeps `cid` out. The broadcast channel never holds the lock, so it is kept
/// out by any live lock.
fn locked_out(lock: Option<Lock>, cid: ChannelId, now: Instant) -> bool {
    lock.is_some_and(|lock| lock.cid != cid && lock.until > now)
}

/// The nonce of an INIT request, which must be exactly [`INIT_NONCE_LEN`] bytes.
fn init_nonce(bcnt: u16, data: &[u8; INIT_DATA_LEN]) -> Option<[u8; INIT_NONCE_LEN]> {
    if usize::from(bcnt) != INIT_NONCE_LEN {
        return None;
    }
    data.first_chunk().copied()
}

/// INIT response (§11.2.9.1.3): nonce(8) | CID(4) | protocol version | major | minor |
/// build | capabilities.
fn init_response(
    nonce: [u8; INIT_NONCE_LEN],
    cid: ChannelId,
    version: DeviceVersion,
) -> [u8; INIT_RESPONSE_LEN] {
    let [n0, n1, n2, n3, n4, n5, n6, n7] = nonce;
    let [c0, c1, c2, c3] = cid.to_bytes();
    [
        n0,
        n1,
        n2,
        n3,
        n4,
        n5,
        n6,
        n7,
        c0,
        c1,
        c2,
        c3,
        PROTOCOL_VERSION,
        version.major,
        version.minor,
        version.build,
        CAPABILITIES,
    ]
}

/// Sleeps until `deadline`, or for ever if there is none.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => future::pending().await,
    }
}

/// A version component as one byte, saturating.
fn version_part(part: &str) -> u8 {
    part.parse().unwrap_or(u8::MAX)
}

#[cfg(test)]
mod tests;
