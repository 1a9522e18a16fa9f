//! The host side of the same framing — what a browser's FIDO stack does with the reports the
//! agent sends — for tools and tests that talk to the agent over its HID socket (the agent's
//! own tests, the `obr-tests` crate's `HidClient`). [`ReplyReader`] reassembles one answer on
//! one channel from the reports as they arrive; framing a request is
//! [`frames`](super::packet::frames) (or
//! [`frames_with_code`](super::packet::frames_with_code) for any code). No I/O, no time.

use super::assembler::{Message, Progress, Reassembly, ReassemblyError};
use super::packet::{ChannelId, Command, Packet};
use crate::hid::Report;

/// What one report meant for the answer being read.
#[derive(Debug)]
pub enum Heard {
    /// For another channel, or a continuation with nothing started: not ours.
    Other,
    /// A KEEPALIVE on our channel: the device is still working (§11.2.9.1.7), with its
    /// status byte (1 processing, 2 waiting for user presence).
    Keepalive(u8),
    /// Part of the answer; more reports are needed.
    Partial,
    /// The whole answer.
    Complete(Message),
    /// The answer's reports were out of order or announced too much; it is dropped.
    Broken(ReassemblyError),
}

/// Reassembles the next answer on one channel.
#[derive(Debug)]
pub struct ReplyReader {
    cid: ChannelId,
    partial: Option<Reassembly>,
}

impl ReplyReader {
    pub fn new(cid: ChannelId) -> Self {
        Self { cid, partial: None }
    }

    /// Take one report from the device.
    pub fn feed(&mut self, report: &Report) -> Heard {
        match Packet::parse(report) {
            Packet::Init { cid, .. } | Packet::Cont { cid, .. } if cid != self.cid => Heard::Other,
            Packet::Init { cmd, data, .. } if cmd == Command::Keepalive.code() => {
                Heard::Keepalive(data[0])
            }
            Packet::Init {
                cmd, bcnt, data, ..
            } => self.advance(Reassembly::start(cmd, bcnt, data)),
            Packet::Cont { seq, data, .. } => match self.partial.take() {
                None => Heard::Other,
                Some(partial) => self.advance(partial.push(seq, data)),
            },
        }
    }

    fn advance(&mut self, progress: Result<Progress, ReassemblyError>) -> Heard {
        match progress {
            Ok(Progress::Complete(message)) => Heard::Complete(message),
            Ok(Progress::Partial(partial)) => {
                self.partial = Some(partial);
                Heard::Partial
            }
            Err(e) => Heard::Broken(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctaphid::packet::frames;

    #[test]
    fn a_long_answer_comes_back_whole_among_keepalives_and_other_channels() {
        let ours = ChannelId::new(7);
        let payload: Vec<u8> = (0..=255).collect();
        let mut reader = ReplyReader::new(ours);
        let keepalive: Vec<Report> = frames(ours, Command::Keepalive, &[1]).unwrap().collect();
        let theirs: Vec<Report> = frames(ChannelId::new(8), Command::Cbor, &[0])
            .unwrap()
            .collect();
        assert!(matches!(reader.feed(&keepalive[0]), Heard::Keepalive(1)));
        let mut answer = None;
        for (n, report) in frames(ours, Command::Cbor, &payload).unwrap().enumerate() {
            assert!(matches!(reader.feed(&theirs[0]), Heard::Other));
            match reader.feed(&report) {
                Heard::Complete(message) => answer = Some(message),
                Heard::Partial => assert!(n < 4),
                other => panic!("{other:?}"),
            }
        }
        let answer = answer.unwrap();
        assert_eq!(
            (answer.cmd, answer.payload),
            (Command::Cbor.code(), payload)
        );
    }

    #[test]
    fn a_skipped_continuation_breaks_the_answer() {
        let ours = ChannelId::new(7);
        let reports: Vec<Report> = frames(ours, Command::Cbor, &[9; 200]).unwrap().collect();
        let mut reader = ReplyReader::new(ours);
        assert!(matches!(reader.feed(&reports[0]), Heard::Partial));
        assert!(matches!(reader.feed(&reports[2]), Heard::Broken(_)));
    }
}
