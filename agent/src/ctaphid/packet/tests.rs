use super::*;
use crate::ctaphid::assembler::{Progress, Reassembly};

const CID: ChannelId = ChannelId::new(0x0102_0304);

#[expect(
    clippy::cast_possible_truncation,
    reason = "a test byte pattern: wrapping is the point"
)]
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Reports a message of `len` bytes takes: one init packet and ceil((len - 57) / 59)
/// continuations.
fn expected_reports(len: usize) -> usize {
    1 + len.saturating_sub(INIT_DATA_LEN).div_ceil(CONT_DATA_LEN)
}

#[test]
fn sizes_follow_the_spec() {
    assert_eq!(INIT_DATA_LEN, 57);
    assert_eq!(CONT_DATA_LEN, 59);
    assert_eq!(MAX_MESSAGE_LEN, 7609);
}

#[test]
fn parses_an_initialization_packet() {
    let mut report = [0u8; REPORT_LEN];
    report[..7].copy_from_slice(&[0x01, 0x02, 0x03, 0x04, 0x90, 0x01, 0x02]);
    report[7] = 0xaa;
    report[63] = 0xbb;
    let Packet::Init {
        cid,
        cmd,
        bcnt,
        data,
    } = Packet::parse(&report)
    else {
        panic!("expected an initialization packet");
    };
    assert_eq!(cid, CID);
    assert_eq!(cmd, Command::Cbor.code());
    assert_eq!(bcnt, 0x0102);
    assert_eq!(data[0], 0xaa);
    assert_eq!(data[INIT_DATA_LEN - 1], 0xbb);
}

#[test]
fn parses_a_continuation_packet() {
    let mut report = [0u8; REPORT_LEN];
    report[..5].copy_from_slice(&[0xff, 0xff, 0xff, 0xff, MAX_SEQ]);
    report[5] = 0xcc;
    let Packet::Cont { cid, seq, data } = Packet::parse(&report) else {
        panic!("expected a continuation packet");
    };
    assert_eq!(cid, ChannelId::BROADCAST);
    assert_eq!(seq, MAX_SEQ);
    assert_eq!(data[0], 0xcc);
}

#[test]
fn command_codes_round_trip_and_unknown_codes_are_none() {
    for command in [
        Command::Ping,
        Command::Msg,
        Command::Lock,
        Command::Init,
        Command::Wink,
        Command::Cbor,
        Command::Cancel,
        Command::Keepalive,
        Command::Error,
    ] {
        assert_eq!(Command::from_code(command.code()), Some(command));
    }
    assert_eq!(Command::from_code(0x00), None);
    assert_eq!(Command::from_code(0x40), None);
    assert_eq!(Command::from_code(0x7f), None);
}

#[test]
fn error_report_layout() {
    let report = error_report(CID, ErrorCode::InvalidSeq);
    assert_eq!(
        &report[..8],
        &[0x01, 0x02, 0x03, 0x04, 0xbf, 0x00, 0x01, 0x04]
    );
    assert!(report[8..].iter().all(|&b| b == 0));
}

#[test]
fn empty_message_is_one_initialization_packet() {
    let reports: Vec<Report> = frames(CID, Command::Wink, &[]).unwrap().collect();
    assert_eq!(reports.len(), 1);
    assert_eq!(
        &reports[0][..7],
        &[0x01, 0x02, 0x03, 0x04, 0x88, 0x00, 0x00]
    );
}

#[test]
fn boundaries_take_the_expected_number_of_reports() {
    for (len, count) in [
        (0, 1),
        (INIT_DATA_LEN, 1),
        (INIT_DATA_LEN + 1, 2),
        (INIT_DATA_LEN + CONT_DATA_LEN, 2),
        (INIT_DATA_LEN + CONT_DATA_LEN + 1, 3),
        (MAX_MESSAGE_LEN, 129),
    ] {
        let reports: Vec<Report> = frames(CID, Command::Ping, &payload(len)).unwrap().collect();
        assert_eq!(reports.len(), count, "{len} bytes");
        assert_eq!(reports.len(), expected_reports(len), "{len} bytes");
    }
}

#[test]
fn continuation_sequence_runs_from_zero_to_max_seq() {
    let reports: Vec<Report> = frames(CID, Command::Ping, &payload(MAX_MESSAGE_LEN))
        .unwrap()
        .collect();
    let seqs: Vec<u8> = reports[1..]
        .iter()
        .map(|report| match Packet::parse(report) {
            Packet::Cont { seq, .. } => seq,
            Packet::Init { .. } => panic!("unexpected initialization packet"),
        })
        .collect();
    assert_eq!(seqs, (0..=MAX_SEQ).collect::<Vec<u8>>());
}

#[test]
fn one_byte_over_the_maximum_cannot_be_framed() {
    assert_eq!(
        frames(CID, Command::Ping, &payload(MAX_MESSAGE_LEN + 1)).err(),
        Some(MessageTooLong(MAX_MESSAGE_LEN + 1))
    );
    assert_eq!(
        frames(CID, Command::Ping, &payload(usize::from(u16::MAX) + 1)).err(),
        Some(MessageTooLong(usize::from(u16::MAX) + 1))
    );
}

#[test]
fn framing_then_reassembly_round_trips() {
    for len in [
        0,
        1,
        INIT_DATA_LEN,
        INIT_DATA_LEN + 1,
        INIT_DATA_LEN + CONT_DATA_LEN,
        INIT_DATA_LEN + CONT_DATA_LEN + 1,
        1000,
        MAX_MESSAGE_LEN,
    ] {
        let sent = payload(len);
        let mut reports = frames(CID, Command::Cbor, &sent).unwrap();
        let first = reports.next().unwrap();
        let Packet::Init {
            cid,
            cmd,
            bcnt,
            data,
        } = Packet::parse(&first)
        else {
            panic!("first report must be an initialization packet");
        };
        assert_eq!(cid, CID);
        let mut progress = Reassembly::start(cmd, bcnt, data).unwrap();
        for report in reports {
            let Progress::Partial(reassembly) = progress else {
                panic!("{len} bytes: complete before the last report");
            };
            let Packet::Cont { cid, seq, data } = Packet::parse(&report) else {
                panic!("later reports must be continuation packets");
            };
            assert_eq!(cid, CID);
            progress = reassembly.push(seq, data).unwrap();
        }
        let Progress::Complete(message) = progress else {
            panic!("{len} bytes: incomplete after the last report");
        };
        assert_eq!(message.cmd, Command::Cbor.code());
        assert_eq!(message.payload, sent, "{len} bytes");
    }
}
