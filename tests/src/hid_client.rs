//! [`HidClient`]: the host side of CTAPHID — what a browser's FIDO stack
//! does — over the agent's `SOCK_SEQPACKET` HID socket. Besides whole
//! transactions it can send raw reports, which the bad-input tests need.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

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
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no reply from the agent",
                ));
            }
            let Some(report) = self.recv_report(left)? else {
                continue;
            };
            let rcid = u32::from_be_bytes([report[0], report[1], report[2], report[3]]);
            if rcid != cid || report[4] & 0x80 == 0 {
                continue;
            }
            let cmd = report[4];
            if cmd == CMD_KEEPALIVE {
                keepalives.push(Instant::now());
                continue;
            }
            let len = usize::from(u16::from_be_bytes([report[5], report[6]]));
            let mut payload = report[7..].iter().copied().take(len).collect::<Vec<_>>();
            let mut seq = 0u8;
            while payload.len() < len {
                let left = deadline.saturating_duration_since(Instant::now());
                let Some(cont) = self.recv_report(left)? else {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "reply cut short"));
                };
                if cont[..4] != report[..4] {
                    continue;
                }
                if cont[4] != seq {
                    return Err(io::Error::other(format!(
                        "reply sequence {} != {seq}",
                        cont[4]
                    )));
                }
                seq += 1;
                let want = len - payload.len();
                payload.extend(cont[5..].iter().copied().take(want));
            }
            return Ok(Reply {
                cid,
                cmd,
                payload,
                keepalives,
            });
        }
    }
}

/// The reports of one message (CTAP 2.1 §11.2.4).
pub fn frame(cid: u32, cmd: u8, payload: &[u8]) -> Vec<[u8; REPORT]> {
    let mut reports = Vec::new();
    let mut init = [0u8; REPORT];
    init[..4].copy_from_slice(&cid.to_be_bytes());
    init[4] = cmd;
    let len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
    init[5..7].copy_from_slice(&len.to_be_bytes());
    let first = payload.len().min(REPORT - 7);
    init[7..7 + first].copy_from_slice(&payload[..first]);
    reports.push(init);
    for (seq, chunk) in payload[first..].chunks(REPORT - 5).enumerate() {
        let mut cont = [0u8; REPORT];
        cont[..4].copy_from_slice(&cid.to_be_bytes());
        cont[4] = u8::try_from(seq).unwrap_or(u8::MAX);
        cont[5..5 + chunk.len()].copy_from_slice(chunk);
        reports.push(cont);
    }
    reports
}
