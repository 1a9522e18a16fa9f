//! [`RawAgent`]: a hand-driven agent WebSocket, for tests that play a peer
//! who does not run `obr-agent` — garbage senders and attackers. It sends
//! exactly the frames a test gives it and reports every frame the relay
//! sends back, so a test can assert on what a hostile peer receives.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use obr_proto::agent::{AgentFrame, RelayFrame, agent_frame, relay_frame};
use prost::Message as _;
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct RawAgent {
    socket: Socket,
}

impl RawAgent {
    /// Open `/agent/ws` on the relay at `relay_url` (`http://…`).
    pub async fn connect(relay_url: &str) -> anyhow::Result<Self> {
        let ws = format!("{}/agent/ws", relay_url.replace("http://", "ws://"));
        let (socket, _) = tokio_tungstenite::connect_async(ws).await?;
        Ok(Self { socket })
    }

    pub async fn send(&mut self, kind: agent_frame::Kind) -> anyhow::Result<()> {
        self.send_raw(Message::Binary(
            AgentFrame { kind: Some(kind) }.encode_to_vec().into(),
        ))
        .await
    }

    pub async fn send_raw(&mut self, message: Message) -> anyhow::Result<()> {
        Ok(self.socket.send(message).await?)
    }

    /// The next relay frame, skipping pings; `None` once the socket closes
    /// or nothing arrives for `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<relay_frame::Kind> {
        tokio::time::timeout(wait, self.next()).await.ok().flatten()
    }

    /// The next relay frame, skipping pings; `None` once the socket closes.
    pub async fn next(&mut self) -> Option<relay_frame::Kind> {
        while let Some(Ok(message)) = self.socket.next().await {
            match message {
                Message::Binary(bytes) => return RelayFrame::decode(bytes.as_ref()).ok()?.kind,
                Message::Close(_) => return None,
                _ => {}
            }
        }
        None
    }

    /// Every frame the relay sends within `wait` (or until it closes).
    pub async fn drain(&mut self, wait: Duration) -> Vec<relay_frame::Kind> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut frames = Vec::new();
        while let Ok(Some(frame)) = tokio::time::timeout_at(deadline, self.next()).await {
            frames.push(frame);
        }
        frames
    }
}
