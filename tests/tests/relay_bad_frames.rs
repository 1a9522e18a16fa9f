//! Garbage on the agent WebSocket: text frames, bytes that are no
//! `AgentFrame`, frames before `Hello`, a Hello that proves no key, an
//! agent that never answers the challenge — each gets a `ProtocolError`
//! frame and the socket is closed; a proven agent nobody logged in gets
//! the protocol's own CTAP errors; and the relay keeps serving everyone.

use std::time::Duration;

use obr_proto::agent::{CtapRequest, Hello, ModeKind, agent_frame, relay_frame};
use obr_tests::processes::{RelayOptions, RelayProc};
use obr_tests::raw_agent::RawAgent;
use obr_tests::scratch::Scratch;
use tokio_tungstenite::tungstenite::Message;

/// A fresh connection, past the relay's challenge.
async fn challenged(url: &str) -> RawAgent {
    let mut socket = RawAgent::connect(url).await.expect("connect");
    match socket.next_within(Duration::from_secs(5)).await {
        Some(relay_frame::Kind::Challenge(c)) => {
            assert_eq!(c.nonce.len(), obr_proto::identity::NONCE_LEN)
        }
        other => panic!("a connection must open with a challenge, got {other:?}"),
    }
    socket
}

async fn expect_refusal(socket: &mut RawAgent, containing: &str) {
    match socket.next_within(Duration::from_secs(15)).await {
        Some(relay_frame::Kind::Error(e)) => {
            assert!(e.message.contains(containing), "{}", e.message)
        }
        other => panic!("expected a protocol error about {containing:?}, got {other:?}"),
    }
    assert!(
        socket.next_within(Duration::from_secs(5)).await.is_none(),
        "the relay must close the socket after refusing"
    );
}

fn ctap(id: u64, payload: Vec<u8>) -> agent_frame::Kind {
    agent_frame::Kind::CtapRequest(CtapRequest {
        id,
        payload,
        ..CtapRequest::default()
    })
}

#[tokio::test]
async fn garbage_frames_are_refused_and_the_relay_keeps_serving() -> anyhow::Result<()> {
    let scratch = Scratch::new("frames")?;
    let relay = tokio::task::spawn_blocking({
        let dir = scratch.join("relay");
        move || RelayProc::start(&dir, &RelayOptions::default())
    })
    .await??;
    let url = relay.url.as_str();

    let mut s = challenged(url).await;
    s.send_raw(Message::Text("hello?".into())).await?;
    expect_refusal(&mut s, "text frames").await;

    let mut s = challenged(url).await;
    s.send_raw(Message::Binary(vec![0xff, 0xff, 0xff, 0x01, 0x02].into()))
        .await?;
    expect_refusal(&mut s, "malformed frame").await;

    let mut s = challenged(url).await;
    s.send(ctap(1, vec![4])).await?;
    expect_refusal(&mut s, "first frame must be Hello").await;

    // A Hello with no key, and one whose proof is garbage.
    let mut s = challenged(url).await;
    s.send(agent_frame::Kind::Hello(Hello {
        agent_id: "../../etc/passwd".into(),
        ..Hello::default()
    }))
    .await?;
    expect_refusal(&mut s, "public key").await;
    let mut s = challenged(url).await;
    let public_key = [vec![4u8], vec![7u8; 64]].concat();
    s.send(agent_frame::Kind::Hello(Hello {
        agent_id: obr_proto::identity::agent_id(&public_key),
        public_key,
        proof: vec![0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01],
        ..Hello::default()
    }))
    .await?;
    expect_refusal(&mut s, "proof").await;

    // Silence after the challenge: the relay gives up on the socket.
    let mut s = challenged(url).await;
    expect_refusal(&mut s, "no Hello").await;

    // A proven agent that nobody logged in is nobody's key: it may say what
    // it is (getInfo), nothing more.
    let (mut s, _, welcome) = RawAgent::connect_proven(url).await?;
    assert_eq!(
        welcome.mode.unwrap_or_default().kind,
        ModeKind::NotLoggedIn as i32
    );
    s.send(ctap(7, vec![1, 0xA0])).await?;
    match s.next_within(Duration::from_secs(5)).await {
        Some(relay_frame::Kind::CtapResponse(r)) => assert_eq!(
            (r.id, r.payload),
            (7, vec![0x27]),
            "CTAP2_ERR_OPERATION_DENIED"
        ),
        other => panic!("expected a CTAP response, got {other:?}"),
    }
    s.send(ctap(9, vec![4])).await?;
    match s.next_within(Duration::from_secs(5)).await {
        Some(relay_frame::Kind::CtapResponse(r)) => {
            assert_eq!((r.id, r.payload.first()), (9, Some(&0)), "getInfo answered");
        }
        other => panic!("expected a CTAP response, got {other:?}"),
    }
    // An oversized payload gets CTAP1_ERR_INVALID_LENGTH.
    s.send(ctap(8, vec![1; obr_proto::MAX_CTAP_MESSAGE + 1]))
        .await?;
    match s.next_within(Duration::from_secs(5)).await {
        Some(relay_frame::Kind::CtapResponse(r)) => assert_eq!((r.id, r.payload), (8, vec![0x03])),
        other => panic!("expected a CTAP response, got {other:?}"),
    }
    // A second Hello on a proven connection is refused.
    s.send(agent_frame::Kind::Hello(Hello::default())).await?;
    expect_refusal(&mut s, "duplicate Hello").await;

    // The relay is still healthy for everybody else.
    let api = obr_tests::api::Api::new(&relay.url);
    let health =
        tokio::task::spawn_blocking(move || api.call("GET", "/healthz", None, None)).await??;
    assert_eq!(health.status, 200);
    Ok(())
}
