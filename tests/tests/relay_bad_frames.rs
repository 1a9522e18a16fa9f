//! Garbage on the agent WebSocket: text frames, bytes that are no
//! `AgentFrame`, frames before `Hello`, an invalid agent id, a stolen token
//! — each gets a `ProtocolError` frame (or a not-logged-in welcome) and the
//! relay keeps serving everyone else.

use futures_util::{SinkExt, StreamExt};
use obr_proto::agent::{
    AgentFrame, CtapRequest, Hello, ModeKind, RelayFrame, agent_frame, relay_frame,
};
use obr_tests::processes::{RelayOptions, RelayProc};
use obr_tests::scratch::Scratch;
use prost::Message as _;
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> Socket {
    let ws = format!("{}/agent/ws", url.replace("http://", "ws://"));
    tokio_tungstenite::connect_async(ws)
        .await
        .expect("connect")
        .0
}

fn frame(kind: agent_frame::Kind) -> Message {
    Message::Binary(AgentFrame { kind: Some(kind) }.encode_to_vec().into())
}

/// The next relay frame, skipping pings; `None` once the socket closes.
async fn next(socket: &mut Socket) -> Option<relay_frame::Kind> {
    while let Some(Ok(message)) = socket.next().await {
        match message {
            Message::Binary(bytes) => return RelayFrame::decode(bytes.as_ref()).ok()?.kind,
            Message::Close(_) => return None,
            _ => {}
        }
    }
    None
}

async fn expect_refusal(socket: &mut Socket, containing: &str) {
    match next(socket).await {
        Some(relay_frame::Kind::Error(e)) => {
            assert!(e.message.contains(containing), "{}", e.message)
        }
        other => panic!("expected a protocol error about {containing:?}, got {other:?}"),
    }
    assert!(
        next(socket).await.is_none(),
        "the relay must close the socket after refusing"
    );
}

#[tokio::test]
async fn garbage_frames_are_refused_and_the_relay_keeps_serving() -> anyhow::Result<()> {
    let scratch = Scratch::new("frames")?;
    let relay = tokio::task::spawn_blocking({
        let dir = scratch.join("relay");
        move || RelayProc::start(&dir, &RelayOptions::default())
    })
    .await??;

    let mut s = connect(&relay.url).await;
    s.send(Message::Text("hello?".into())).await?;
    expect_refusal(&mut s, "text frames").await;

    let mut s = connect(&relay.url).await;
    s.send(Message::Binary(vec![0xff, 0xff, 0xff, 0x01, 0x02].into()))
        .await?;
    expect_refusal(&mut s, "malformed frame").await;

    let mut s = connect(&relay.url).await;
    s.send(frame(agent_frame::Kind::CtapRequest(CtapRequest {
        id: 1,
        payload: vec![4],
        budget_ms: 0,
    })))
    .await?;
    expect_refusal(&mut s, "first frame must be Hello").await;

    let mut s = connect(&relay.url).await;
    let hello = |id: &str, token: &str| {
        frame(agent_frame::Kind::Hello(Hello {
            agent_id: id.into(),
            token: token.into(),
            agent_version: "test".into(),
        }))
    };
    s.send(hello("../../etc/passwd", "")).await?;
    expect_refusal(&mut s, "agent_id").await;

    // A made-up token logs nobody in.
    let mut s = connect(&relay.url).await;
    s.send(hello("agent-1", "not-a-token")).await?;
    match next(&mut s).await {
        Some(relay_frame::Kind::Welcome(w)) => {
            assert_eq!(
                w.mode.unwrap_or_default().kind,
                ModeKind::NotLoggedIn as i32
            )
        }
        other => panic!("expected a welcome, got {other:?}"),
    }
    // Not logged in: CTAP is denied with the protocol's own error.
    s.send(frame(agent_frame::Kind::CtapRequest(CtapRequest {
        id: 7,
        payload: vec![4],
        budget_ms: 0,
    })))
    .await?;
    match next(&mut s).await {
        Some(relay_frame::Kind::CtapResponse(r)) => {
            assert_eq!(
                (r.id, r.payload),
                (7, vec![0x27]),
                "CTAP2_ERR_OPERATION_DENIED"
            )
        }
        other => panic!("expected a CTAP response, got {other:?}"),
    }
    // An oversized payload gets CTAP1_ERR_INVALID_LENGTH.
    s.send(frame(agent_frame::Kind::CtapRequest(CtapRequest {
        id: 8,
        payload: vec![1; obr_proto::MAX_CTAP_MESSAGE + 1],
        budget_ms: 0,
    })))
    .await?;
    match next(&mut s).await {
        Some(relay_frame::Kind::CtapResponse(r)) => assert_eq!((r.id, r.payload), (8, vec![0x03])),
        other => panic!("expected a CTAP response, got {other:?}"),
    }

    // The relay is still healthy for everybody else.
    let api = obr_tests::api::Api::new(&relay.url);
    let health =
        tokio::task::spawn_blocking(move || api.call("GET", "/healthz", None, None)).await??;
    assert_eq!(health.status, 200);
    Ok(())
}
