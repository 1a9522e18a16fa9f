//! Reassembly of one message from an initialization packet and its continuation packets
//! (CTAP 2.1 §11.2.4, §11.2.5.4). A pure state machine for a single channel: it knows nothing
//! of time, of which client sent the packets, or of what the command means; the engine owns
//! those.

use super::packet::{CONT_DATA_LEN, ErrorCode, INIT_DATA_LEN, MAX_MESSAGE_LEN};

/// A complete message: command code (initialization bit cleared) and exactly BCNT bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub cmd: u8,
    pub payload: Vec<u8>,
}

/// Where reassembly stands after a packet.
#[derive(Debug)]
pub enum Progress {
    Complete(Message),
    /// More continuation packets are needed.
    Partial(Reassembly),
}

/// Why a message was abandoned; the partial message is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReassemblyError {
    /// BCNT announces more than [`MAX_MESSAGE_LEN`] bytes (§11.2.4).
    #[error("announced length {0} exceeds {MAX_MESSAGE_LEN}")]
    TooLong(usize),
    /// A continuation packet arrived out of order (§11.2.5.4).
    #[error("continuation packet has SEQ {got}, expected {expected}")]
    OutOfSequence { expected: u8, got: u8 },
}

impl ReassemblyError {
    /// The CTAPHID_ERROR code the host is told (§11.2.9.1.6).
    pub const fn code(self) -> ErrorCode {
        match self {
            Self::TooLong(_) => ErrorCode::InvalidLen,
            Self::OutOfSequence { .. } => ErrorCode::InvalidSeq,
        }
    }
}

/// A message still waiting for continuation packets.
#[derive(Debug)]
pub struct Reassembly {
    cmd: u8,
    /// Announced total length; always greater than `payload.len()` while partial.
    len: usize,
    payload: Vec<u8>,
    next_seq: u8,
}

impl Reassembly {
    /// Starts a message from an initialization packet's fields. Data bytes beyond BCNT are
    /// padding and are discarded.
    pub fn start(
        cmd: u8,
        bcnt: u16,
        data: &[u8; INIT_DATA_LEN],
    ) -> Result<Progress, ReassemblyError> {
        let len = usize::from(bcnt);
        if len > MAX_MESSAGE_LEN {
            return Err(ReassemblyError::TooLong(len));
        }
        // Bounded by MAX_MESSAGE_LEN, checked above.
        let mut payload = Vec::with_capacity(len);
        payload.extend(data.iter().take(len));
        Ok(Self {
            cmd,
            len,
            payload,
            next_seq: 0,
        }
        .progress())
    }

    /// Adds a continuation packet. Sequence numbers must run 0, 1, 2, ... without gaps
    /// (§11.2.5.4); on a mismatch the whole message is dropped.
    pub fn push(
        mut self,
        seq: u8,
        data: &[u8; CONT_DATA_LEN],
    ) -> Result<Progress, ReassemblyError> {
        if seq != self.next_seq {
            return Err(ReassemblyError::OutOfSequence {
                expected: self.next_seq,
                got: seq,
            });
        }
        let missing = self.len.saturating_sub(self.payload.len());
        self.payload.extend(data.iter().take(missing));
        // A partial message has `len <= MAX_MESSAGE_LEN`, so it completes by SEQ = MAX_SEQ
        // and `next_seq` never passes MAX_SEQ + 1.
        self.next_seq = self.next_seq.wrapping_add(1);
        Ok(self.progress())
    }

    /// Command code of the message being reassembled.
    pub fn cmd(&self) -> u8 {
        self.cmd
    }

    fn progress(self) -> Progress {
        if self.payload.len() >= self.len {
            Progress::Complete(Message {
                cmd: self.cmd,
                payload: self.payload,
            })
        } else {
            Progress::Partial(self)
        }
    }
}

#[cfg(test)]
mod tests;
