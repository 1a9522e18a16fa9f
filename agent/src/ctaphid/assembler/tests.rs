use super::*;
use crate::ctaphid::packet::{Command, MAX_SEQ};

const PING: u8 = Command::Ping.code();

fn init_data(fill: u8) -> [u8; INIT_DATA_LEN] {
    [fill; INIT_DATA_LEN]
}

fn cont_data(fill: u8) -> [u8; CONT_DATA_LEN] {
    [fill; CONT_DATA_LEN]
}

fn partial(progress: Result<Progress, ReassemblyError>) -> Reassembly {
    match progress {
        Ok(Progress::Partial(reassembly)) => reassembly,
        other => panic!("expected a partial message, got {other:?}"),
    }
}

fn complete(progress: Result<Progress, ReassemblyError>) -> Message {
    match progress {
        Ok(Progress::Complete(message)) => message,
        other => panic!("expected a complete message, got {other:?}"),
    }
}

#[test]
fn message_that_fits_the_initialization_packet_completes_at_once() {
    let message = complete(Reassembly::start(PING, 57, &init_data(7)));
    assert_eq!(message.cmd, PING);
    assert_eq!(message.payload, vec![7; 57]);
}

#[test]
fn padding_beyond_bcnt_is_discarded() {
    let message = complete(Reassembly::start(PING, 3, &init_data(9)));
    assert_eq!(message.payload, vec![9; 3]);

    let reassembly = partial(Reassembly::start(PING, 58, &init_data(1)));
    let message = complete(reassembly.push(0, &cont_data(2)));
    let mut expected = vec![1; 57];
    expected.push(2);
    assert_eq!(message.payload, expected);
}

#[test]
fn empty_message_completes_at_once() {
    let message = complete(Reassembly::start(PING, 0, &init_data(5)));
    assert!(message.payload.is_empty());
}

#[test]
fn exactly_one_continuation_packet_fills_116_bytes() {
    let reassembly = partial(Reassembly::start(PING, 57 + 59, &init_data(1)));
    let message = complete(reassembly.push(0, &cont_data(2)));
    assert_eq!(message.payload.len(), 116);
    assert_eq!(message.payload[56], 1);
    assert_eq!(message.payload[57], 2);
    assert_eq!(message.payload[115], 2);
}

#[test]
fn maximum_message_takes_seq_0_through_127() {
    let bcnt = u16::try_from(MAX_MESSAGE_LEN).unwrap();
    let mut reassembly = partial(Reassembly::start(PING, bcnt, &init_data(0)));
    for seq in 0..MAX_SEQ {
        reassembly = partial(reassembly.push(seq, &cont_data(seq)));
    }
    let message = complete(reassembly.push(MAX_SEQ, &cont_data(MAX_SEQ)));
    assert_eq!(message.payload.len(), MAX_MESSAGE_LEN);
    assert_eq!(message.payload[MAX_MESSAGE_LEN - 1], MAX_SEQ);
}

#[test]
fn one_byte_over_the_maximum_is_invalid_len() {
    let bcnt = u16::try_from(MAX_MESSAGE_LEN + 1).unwrap();
    let error = Reassembly::start(PING, bcnt, &init_data(0)).unwrap_err();
    assert_eq!(error, ReassemblyError::TooLong(MAX_MESSAGE_LEN + 1));
    assert_eq!(error.code(), ErrorCode::InvalidLen);
    assert_eq!(
        Reassembly::start(PING, u16::MAX, &init_data(0)).unwrap_err(),
        ReassemblyError::TooLong(usize::from(u16::MAX))
    );
}

#[test]
fn first_continuation_must_be_seq_zero() {
    let reassembly = partial(Reassembly::start(PING, 200, &init_data(0)));
    let error = reassembly.push(1, &cont_data(0)).unwrap_err();
    assert_eq!(
        error,
        ReassemblyError::OutOfSequence {
            expected: 0,
            got: 1
        }
    );
    assert_eq!(error.code(), ErrorCode::InvalidSeq);
}

#[test]
fn repeated_continuation_is_out_of_sequence() {
    let reassembly = partial(Reassembly::start(PING, 200, &init_data(0)));
    let reassembly = partial(reassembly.push(0, &cont_data(0)));
    assert_eq!(
        reassembly.push(0, &cont_data(0)).unwrap_err(),
        ReassemblyError::OutOfSequence {
            expected: 1,
            got: 0
        }
    );
}

#[test]
fn reassembly_remembers_its_command() {
    let reassembly = partial(Reassembly::start(Command::Cbor.code(), 100, &init_data(0)));
    assert_eq!(reassembly.cmd(), Command::Cbor.code());
}
