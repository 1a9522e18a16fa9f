//! CTAPHID framing (CTAP 2.1 §11.2.4): the byte layout of 64-byte reports, the command,
//! error and capability codes, and the splitting of an outgoing message into reports. This
//! module owns layout only: it keeps no state between reports (see
//! [`super::assembler`]) and does no I/O.

use std::fmt;

use crate::hid::{REPORT_LEN, Report};

/// Bytes of an initialization packet before its data: CID(4) | CMD(1) | BCNTH(1) | BCNTL(1).
pub const INIT_HEADER_LEN: usize = 7;
/// Message bytes carried by an initialization packet.
pub const INIT_DATA_LEN: usize = REPORT_LEN - INIT_HEADER_LEN;
/// Bytes of a continuation packet before its data: CID(4) | SEQ(1).
pub const CONT_HEADER_LEN: usize = 5;
/// Message bytes carried by a continuation packet.
pub const CONT_DATA_LEN: usize = REPORT_LEN - CONT_HEADER_LEN;
/// Highest continuation sequence number: SEQ is 0..=0x7f (§11.2.4).
pub const MAX_SEQ: u8 = 0x7f;
/// Longest message: one initialization and 128 continuation packets, 57 + 128 * 59 = 7609
/// bytes (§11.2.4).
pub const MAX_MESSAGE_LEN: usize = INIT_DATA_LEN + (MAX_SEQ as usize + 1) * CONT_DATA_LEN;

/// CTAPHID protocol version reported by INIT (§11.2.9.1.3).
pub const PROTOCOL_VERSION: u8 = 2;
/// INIT capability: the device implements WINK (§11.2.9.1.3).
pub const CAPABILITY_WINK: u8 = 0x01;
/// INIT capability: the device implements CBOR (§11.2.9.1.3).
pub const CAPABILITY_CBOR: u8 = 0x04;
/// INIT capability: the device does *not* implement MSG (§11.2.9.1.3).
pub const CAPABILITY_NMSG: u8 = 0x08;
/// KEEPALIVE status: the authenticator is still processing the request (§11.2.9.1.7).
pub const KEEPALIVE_STATUS_PROCESSING: u8 = 0x01;
/// KEEPALIVE status: the authenticator is waiting for user presence (§11.2.9.1.7) — for
/// obr, the user's approval on their phone.
pub const KEEPALIVE_STATUS_UPNEEDED: u8 = 0x02;

/// Bit 7 of byte 4 marks an initialization packet; clear, byte 4 is a continuation SEQ.
const TYPE_INIT: u8 = 0x80;

/// A CTAPHID channel identifier (§11.2.3).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(u32);

impl ChannelId {
    /// Reserved; never allocated, so messages on it get `ERR_INVALID_CHANNEL` (§11.2.3).
    pub const RESERVED: Self = Self(0);
    /// The broadcast channel, used only for INIT to allocate a channel (§11.2.9.1.3).
    pub const BROADCAST: Self = Self(0xffff_ffff);

    /// The channel with this wire value.
    pub const fn new(raw: u32) -> Self {
        Self(raw)
    }

    /// Whether this id may be handed out by INIT: neither reserved nor broadcast.
    pub const fn is_allocatable(self) -> bool {
        self.0 != Self::RESERVED.0 && self.0 != Self::BROADCAST.0
    }

    /// Wire form, as it appears in a packet header and in the INIT response.
    pub const fn to_bytes(self) -> [u8; 4] {
        self.0.to_be_bytes()
    }
}

impl fmt::Debug for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cid:{:08x}", self.0)
    }
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// CTAPHID command codes (§11.2.9), without the initialization-packet bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Command {
    Ping = 0x01,
    Msg = 0x03,
    Lock = 0x04,
    Init = 0x06,
    Wink = 0x08,
    Cbor = 0x10,
    Cancel = 0x11,
    Keepalive = 0x3b,
    Error = 0x3f,
}

impl Command {
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The command with this code, or `None` for a code this transport does not know.
    pub const fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0x01 => Self::Ping,
            0x03 => Self::Msg,
            0x04 => Self::Lock,
            0x06 => Self::Init,
            0x08 => Self::Wink,
            0x10 => Self::Cbor,
            0x11 => Self::Cancel,
            0x3b => Self::Keepalive,
            0x3f => Self::Error,
            _ => return None,
        })
    }
}

/// CTAPHID_ERROR codes the device sends (§11.2.9.1.6). `ERR_LOCK_REQUIRED` (0x0a) is absent
/// on purpose: no command here requires a lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ErrorCode {
    InvalidCmd = 0x01,
    InvalidPar = 0x02,
    InvalidLen = 0x03,
    InvalidSeq = 0x04,
    MsgTimeout = 0x05,
    ChannelBusy = 0x06,
    InvalidChannel = 0x0b,
    Other = 0x7f,
}

impl ErrorCode {
    pub const fn code(self) -> u8 {
        self as u8
    }
}

/// One report, parsed. Every 64-byte report is one of the two kinds, so parsing cannot fail;
/// whether the packet makes sense is for the caller to judge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Starts a message: CID | CMD | BCNT | DATA (§11.2.4).
    Init {
        cid: ChannelId,
        /// Command code with the initialization bit cleared.
        cmd: u8,
        /// Total message length announced by the host (not yet checked).
        bcnt: u16,
        data: &'a [u8; INIT_DATA_LEN],
    },
    /// Continues a message: CID | SEQ | DATA (§11.2.4).
    Cont {
        cid: ChannelId,
        seq: u8,
        data: &'a [u8; CONT_DATA_LEN],
    },
}

impl<'a> Packet<'a> {
    /// The channel the report is on, whichever its kind.
    pub fn cid(&self) -> ChannelId {
        match self {
            Self::Init { cid, .. } | Self::Cont { cid, .. } => *cid,
        }
    }

    pub fn parse(report: &'a Report) -> Self {
        let [c0, c1, c2, c3, kind, rest @ ..] = report;
        let cid = ChannelId::new(u32::from_be_bytes([*c0, *c1, *c2, *c3]));
        if kind & TYPE_INIT == 0 {
            return Self::Cont {
                cid,
                seq: *kind,
                data: rest,
            };
        }
        let [bcnt_hi, bcnt_lo, data @ ..] = rest;
        Self::Init {
            cid,
            cmd: kind & !TYPE_INIT,
            bcnt: u16::from_be_bytes([*bcnt_hi, *bcnt_lo]),
            data,
        }
    }
}

/// A message longer than [`MAX_MESSAGE_LEN`] cannot be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {0}-byte message exceeds the CTAPHID maximum of {MAX_MESSAGE_LEN} bytes")]
pub struct MessageTooLong(pub usize);

/// Splits a message into reports: one initialization packet, then continuations with SEQ
/// 0, 1, ... Unused data bytes are zero.
pub fn frames(cid: ChannelId, cmd: Command, payload: &[u8]) -> Result<Frames<'_>, MessageTooLong> {
    frames_with_code(cid, cmd.code(), payload)
}

/// [`frames`] for any command code (its initialization bit is set here): the host side,
/// which may send codes this transport does not know, as bad-input tests do.
pub fn frames_with_code(
    cid: ChannelId,
    cmd: u8,
    payload: &[u8],
) -> Result<Frames<'_>, MessageTooLong> {
    let too_long = MessageTooLong(payload.len());
    if payload.len() > MAX_MESSAGE_LEN {
        return Err(too_long);
    }
    let bcnt = u16::try_from(payload.len()).map_err(|_| too_long)?;
    Ok(Frames {
        cid,
        cmd: cmd & !TYPE_INIT,
        bcnt,
        rest: payload,
        next_seq: None,
    })
}

/// The single report of a CTAPHID_ERROR message (§11.2.9.1.6).
pub fn error_report(cid: ChannelId, code: ErrorCode) -> Report {
    init_report(cid, Command::Error.code(), 1, &[code.code()])
}

/// Iterator over the reports of one message; see [`frames`].
#[derive(Debug, Clone)]
pub struct Frames<'a> {
    cid: ChannelId,
    /// Command code, initialization bit cleared.
    cmd: u8,
    bcnt: u16,
    rest: &'a [u8],
    /// `None` until the initialization packet has been produced.
    next_seq: Option<u8>,
}

impl Iterator for Frames<'_> {
    type Item = Report;

    fn next(&mut self) -> Option<Report> {
        match self.next_seq {
            None => {
                let (chunk, rest) = self.rest.split_at(self.rest.len().min(INIT_DATA_LEN));
                self.rest = rest;
                self.next_seq = Some(0);
                Some(init_report(self.cid, self.cmd, self.bcnt, chunk))
            }
            Some(_) if self.rest.is_empty() => None,
            Some(seq) => {
                let (chunk, rest) = self.rest.split_at(self.rest.len().min(CONT_DATA_LEN));
                self.rest = rest;
                // `frames` capped the message at MAX_MESSAGE_LEN, so `seq` stays within
                // 0..=MAX_SEQ here and the increment stays below 256.
                self.next_seq = Some(seq.wrapping_add(1));
                Some(cont_report(self.cid, seq, chunk))
            }
        }
    }
}

fn init_report(cid: ChannelId, cmd: u8, bcnt: u16, chunk: &[u8]) -> Report {
    let mut report = [0u8; REPORT_LEN];
    let [c0, c1, c2, c3, kind, bcnt_hi, bcnt_lo, data @ ..] = &mut report;
    [*c0, *c1, *c2, *c3] = cid.to_bytes();
    *kind = TYPE_INIT | cmd;
    [*bcnt_hi, *bcnt_lo] = bcnt.to_be_bytes();
    copy_prefix(data, chunk);
    report
}

fn cont_report(cid: ChannelId, seq: u8, chunk: &[u8]) -> Report {
    let mut report = [0u8; REPORT_LEN];
    let [c0, c1, c2, c3, seq_byte, data @ ..] = &mut report;
    [*c0, *c1, *c2, *c3] = cid.to_bytes();
    *seq_byte = seq;
    copy_prefix(data, chunk);
    report
}

/// Copies as much of `src` as fits to the start of `dst`; never panics.
fn copy_prefix(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = *s;
    }
}

#[cfg(test)]
mod tests;
