//! CTAPHID bad input against the real agent (CTAP 2.1 §11.2.9–10): every
//! malformed packet gets the spec's error, and the agent goes on serving
//! other channels. CANCEL and CHANNEL_BUSY need a request that stays away
//! at the relay: the relay process is paused (SIGSTOP) for those.

use std::time::{Duration, Instant};

use obr_tests::api::Api;
use obr_tests::hid_client::*;
use obr_tests::processes::Stack;
use obr_tests::rp::CTAP_GET_INFO;

const CTAP2_ERR_KEEPALIVE_CANCEL: u8 = 0x2D;
const CTAP2_ERR_MISSING_PARAMETER: u8 = 0x14;

/// The agent still answers a PING on a fresh channel.
fn still_serving(stack: &Stack) -> anyhow::Result<()> {
    let mut other = HidClient::open(&stack.agent.hid_socket)?;
    let reply = other.transact(CMD_PING, b"still here")?;
    assert_eq!(
        (reply.cmd, reply.payload.as_slice()),
        (CMD_PING, &b"still here"[..])
    );
    Ok(())
}

fn expect_error(client: &HidClient, cid: u32, code: u8) -> anyhow::Result<()> {
    let reply = client.read_reply(cid, Duration::from_secs(5))?;
    assert_eq!(
        (reply.cmd, reply.payload.as_slice()),
        (CMD_ERROR, &[code][..]),
        "{reply:?}"
    );
    Ok(())
}

#[test]
fn malformed_packets_get_the_spec_errors() -> anyhow::Result<()> {
    let stack = Stack::start("hidbad")?;
    let mut client = HidClient::open(&stack.agent.hid_socket)?;
    let cid = client.cid;

    // The largest message round-trips (7609 bytes = 57 + 128 × 59).
    let big: Vec<u8> = (0..7609u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(client.transact(CMD_PING, &big)?.payload, big);

    // Unknown command.
    client.send_message(cid, 0x80 | 0x2A, b"?")?;
    expect_error(&client, cid, ERR_INVALID_CMD)?;
    // CTAPHID_MSG: no CTAP1/U2F here.
    client.send_message(cid, CMD_MSG, &[0, 1, 0, 0])?;
    expect_error(&client, cid, ERR_INVALID_CMD)?;
    // Declared length beyond 7609.
    let mut report = [0u8; REPORT];
    report[..4].copy_from_slice(&cid.to_be_bytes());
    report[4] = CMD_PING;
    report[5..7].copy_from_slice(&7610u16.to_be_bytes());
    client.send_report(&report)?;
    expect_error(&client, cid, ERR_INVALID_LEN)?;
    // Wrong sequence number.
    let frames = frame(cid, CMD_PING, &[7u8; 200]);
    client.send_report(&frames[0])?;
    let mut bad = frames[1];
    bad[4] = 5;
    client.send_report(&bad)?;
    expect_error(&client, cid, ERR_INVALID_SEQ)?;
    // A continuation on an idle channel is ignored (§11.2.4): no answer.
    client.send_report(&frames[1])?;
    assert!(client.recv_report(Duration::from_millis(300))?.is_none());
    // A channel nobody allocated, and channel 0.
    for bogus in [0x0BAD_CAFE_u32, 0] {
        client.send_message(bogus, CMD_PING, b"x")?;
        expect_error(&client, bogus, ERR_INVALID_CHANNEL)?;
    }
    // A stalled message: init packet, then nothing.
    client.send_report(&frames[0])?;
    let stalled = Instant::now();
    expect_error(&client, cid, ERR_MSG_TIMEOUT)?;
    eprintln!("MSG_TIMEOUT after {:?}", stalled.elapsed());
    // Garbage datagrams of the wrong size are dropped, not fatal.
    {
        use socket2::{Domain, SockAddr, Socket, Type};
        let raw = Socket::new(Domain::UNIX, Type::SEQPACKET, None)?;
        raw.connect(&SockAddr::unix(&stack.agent.hid_socket)?)?;
        raw.send(&[0xff; 17])?;
        raw.send(&[0u8; 65])?;
    }
    // And after all that, the channel and others still work.
    assert_eq!(client.transact(CMD_PING, b"ok")?.payload, b"ok");
    assert_eq!(client.transact(CMD_WINK, b"")?.cmd, CMD_WINK);
    still_serving(&stack)
}

#[test]
fn cancel_and_busy_while_a_request_is_away() -> anyhow::Result<()> {
    let stack = Stack::start("hidcancel")?;
    let api = Api::new(&stack.relay.url);
    let admin = api.demo_owner(&stack.relay.demo)?;
    stack.agent.login(&api, &admin)?;
    let mut client = HidClient::open(&stack.agent.hid_socket)?;
    // Warm the link (and the agent's getInfo cache) first.
    assert_eq!(client.cbor(&[CTAP_GET_INFO])?.first(), Some(&0));

    // Pause the relay: the next request stays away.
    stack.relay.proc.freeze()?;
    let result = (|| -> anyhow::Result<()> {
        let cid = client.cid;
        // makeCredential with garbage CBOR: it must reach the signer to fail.
        client.send_message(cid, CMD_CBOR, &[0x01, 0xa0])?;
        // KEEPALIVEs at least every 100 ms while it is away.
        let mut keepalives = Vec::new();
        while keepalives.len() < 5 {
            let report = client
                .recv_report(Duration::from_secs(1))?
                .expect("keepalive");
            assert_eq!(report[4], CMD_KEEPALIVE, "{report:?}");
            keepalives.push(Instant::now());
        }
        for pair in keepalives.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(gap <= Duration::from_millis(150), "keepalive gap {gap:?}");
        }
        // A second request on the busy channel: CHANNEL_BUSY.
        client.send_message(cid, CMD_PING, b"busy?")?;
        let reply = client.read_reply(cid, Duration::from_secs(2))?;
        assert_eq!(
            (reply.cmd, reply.payload.as_slice()),
            (CMD_ERROR, &[ERR_CHANNEL_BUSY][..])
        );
        // Other channels are served meanwhile.
        still_serving(&stack)?;
        // CANCEL: the pending request ends with KEEPALIVE_CANCEL.
        client.send_message(cid, CMD_CANCEL, &[])?;
        let reply = client.read_reply(cid, Duration::from_secs(2))?;
        assert_eq!(
            (reply.cmd, reply.payload),
            (CMD_CBOR, vec![CTAP2_ERR_KEEPALIVE_CANCEL])
        );
        Ok(())
    })();
    stack.relay.proc.thaw()?;
    result?;
    // The channel is free again and the link recovers: an empty
    // makeCredential reaches the signer, which names the missing parameter.
    assert_eq!(
        client.cbor(&[0x01, 0xa0])?,
        vec![CTAP2_ERR_MISSING_PARAMETER]
    );
    Ok(())
}
