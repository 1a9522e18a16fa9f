//! [`HidClient`]: the host side of CTAPHID — what a browser's FIDO stack
//! does — over the agent's `SOCK_SEQPACKET` HID socket. Besides whole
//! transactions it can send raw reports, which the bad-input tests need.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use obr_agent::ctaphid::host::{Heard, ReplyReader};
use obr_agent::ctaphid::packet::{ChannelId, MAX_MESSAGE_LEN, frames_with_code};
use socket2::{Domain, SockAddr, Socket, Type};

pub const REPORT: usize = 64;
pub const BROADCAST: u32 = 0xffff_ffff;

pub const CMD_PING: u8 = 0x81;
pub const CMD_MSG: u8 = 0x83;
pub const CMD_LOCK: u8 = 0x84;
pub const CMD_INIT: u8 = 0x86;
pub const CMD_WINK: u8 = 0x88;
pub const CMD_CBOR: u8 = 0x90;
pub const CMD_CANCEL: u8 = 0x91;
pub const CMD_KEEPALIVE: u8 = 0xbb;
pub const CMD_ERROR: u8 = 0xbf;

pub const ERR_INVALID_CMD: u8 = 0x01;
pub const ERR_INVALID_LEN: u8 = 0x03;
pub const ERR_INVALID_SEQ: u8 = 0x04;
pub const ERR_MSG_TIMEOUT: u8 = 0x05;
pub const ERR_CHANNEL_BUSY: u8 = 0x06;
pub const ERR_INVALID_CHANNEL: u8 = 0x0b;

/// How long a whole transaction may take before the client gives up.
pub const DEFAULT_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// One answer from the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub cid: u32,
    pub cmd: u8,
    pub payload: Vec<u8>,
    /// KEEPALIVE reports seen before the answer, with their arrival times.
    pub keepalives: Vec<Instant>,
}

pub struct HidClient {
    socket: Socket,
    pub cid: u32,
}

impl HidClient {
    /// Connect and allocate a channel with INIT.
    pub fn open(path: &Path) -> io::Result<Self> {
        let mut client = Self::connect(path)?;
        client.cid = client.init()?;
        Ok(client)
    }

    /// Connect without INIT (cid stays broadcast).
    pub fn connect(path: &Path) -> io::Result<Self> {
        let socket = Socket::new(Domain::UNIX, Type::SEQPACKET, None)?;
        socket.connect(&SockAddr::unix(path)?)?;
        Ok(Self {
            socket,
            cid: BROADCAST,
        })
    }

    pub fn init(&mut self) -> io::Result<u32> {
        let nonce: [u8; 8] = *b"obr-test";
        let reply = self.transact_on(BROADCAST, CMD_INIT, &nonce)?;
        if reply.cmd != CMD_INIT || reply.payload.len() < 17 || reply.payload[..8] != nonce {
            return Err(io::Error::other(format!("bad INIT reply {reply:?}")));
        }
        Ok(u32::from_be_bytes([
            reply.payload[8],
            reply.payload[9],
            reply.payload[10],
            reply.payload[11],
        ]))
    }

    /// A CTAP2 request: `CTAPHID_CBOR` on our channel.
    pub fn cbor(&mut self, payload: &[u8]) -> io::Result<Vec<u8>> {
        let reply = self.transact(CMD_CBOR, payload)?;
        if reply.cmd != CMD_CBOR {
            return Err(io::Error::other(format!(
                "expected CBOR reply, got {reply:?}"
            )));
        }
        Ok(reply.payload)
    }

    pub fn transact(&mut self, cmd: u8, payload: &[u8]) -> io::Result<Reply> {
        self.transact_on(self.cid, cmd, payload)
    }

    pub fn transact_on(&mut self, cid: u32, cmd: u8, payload: &[u8]) -> io::Result<Reply> {
        self.send_message(cid, cmd, payload)?;
        self.read_reply(cid, DEFAULT_TRANSACTION_TIMEOUT)
    }

    /// Frame and send one message (init packet + continuations).
    pub fn send_message(&self, cid: u32, cmd: u8, payload: &[u8]) -> io::Result<()> {
        for report in frame(cid, cmd, payload) {
            self.send_report(&report)?;
        }
        Ok(())
    }

    pub fn send_report(&self, report: &[u8; REPORT]) -> io::Result<()> {
        let sent = self.socket.send(report)?;
        if sent != REPORT {
            return Err(io::Error::other("short send"));
        }
        Ok(())
    }

    /// The next report, or `None` after `timeout`.
    pub fn recv_report(&self, timeout: Duration) -> io::Result<Option<[u8; REPORT]>> {
        self.socket
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); REPORT];
        match self.socket.recv(&mut buf) {
            Ok(REPORT) => {
                let mut report = [0u8; REPORT];
                for (dst, src) in report.iter_mut().zip(buf.iter()) {
                    // SAFETY: recv initialised REPORT bytes.
                    *dst = unsafe { src.assume_init() };
                }
                Ok(Some(report))
            }
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "agent closed the HID socket",
            )),
            Ok(n) => Err(io::Error::other(format!("report of {n} bytes"))),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Read one whole reply on `cid`, collecting KEEPALIVEs on the way.
    /// Reports for other channels are skipped.
    pub fn read_reply(&self, cid: u32, timeout: Duration) -> io::Result<Reply> {
        let deadline = Instant::now() + timeout;
        let mut keepalives = Vec::new();
        let mut reader = ReplyReader::new(ChannelId::new(cid));
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no whole reply from the agent within {timeout:?}"),
                ));
            }
            let Some(report) = self.recv_report(left)? else {
                continue;
            };
            match reader.feed(&report) {
                Heard::Other | Heard::Partial => {}
                Heard::Keepalive(_) => keepalives.push(Instant::now()),
                Heard::Broken(e) => return Err(io::Error::other(format!("bad reply: {e}"))),
                Heard::Complete(message) => {
                    return Ok(Reply {
                        cid,
                        cmd: message.cmd | 0x80,
                        payload: message.payload,
                        keepalives,
                    });
                }
            }
        }
    }
}

/// The reports of one message (CTAP 2.1 §11.2.4); `cmd` may be any code,
/// with or without its initialization bit. A payload past the CTAPHID
/// maximum is cut there (the bad-input tests send oversized lengths raw).
pub fn frame(cid: u32, cmd: u8, payload: &[u8]) -> Vec<[u8; REPORT]> {
    let payload = payload.get(..MAX_MESSAGE_LEN).unwrap_or(payload);
    frames_with_code(ChannelId::new(cid), cmd, payload)
        .map(Iterator::collect)
        .unwrap_or_default()
}
