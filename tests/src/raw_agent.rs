//! [`RawAgent`]: a hand-driven agent WebSocket, for tests that play a peer
//! who does not run `obr-agent` — garbage senders and attackers. It sends
//! exactly the frames a test gives it and reports every frame the relay
//! sends back, so a test can assert on what a hostile peer receives.

use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use obr_proto::agent::{AgentFrame, Hello, RelayFrame, Welcome, agent_frame, relay_frame};
use obr_proto::identity;
use prost::Message as _;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
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

    /// Connect as an agent of its own: a fresh key pair that answers the
    /// relay's challenge. Returns the socket after the relay's welcome, the
    /// agent id and the welcome.
    pub async fn connect_proven(relay_url: &str) -> anyhow::Result<(Self, String, Welcome)> {
        let key = TestAgentKey::generate()?;
        let (agent, welcome) = Self::connect_as(relay_url, &key).await?;
        Ok((agent, key.agent_id(), welcome))
    }

    /// Connect as the agent whose key is `key`, answering the challenge.
    pub async fn connect_as(
        relay_url: &str,
        key: &TestAgentKey,
    ) -> anyhow::Result<(Self, Welcome)> {
        let mut agent = Self::connect(relay_url).await?;
        let nonce = match agent.next_within(Duration::from_secs(5)).await {
            Some(relay_frame::Kind::Challenge(c)) => c.nonce,
            other => bail!("expected the relay's challenge, got {other:?}"),
        };
        let agent_id = key.agent_id();
        let proof = key
            .pair
            .sign(&key.rng, &identity::proof_message(&nonce, &agent_id))
            .ok()
            .context("signing")?;
        agent
            .send(agent_frame::Kind::Hello(Hello {
                agent_id,
                agent_version: "test".into(),
                public_key: key.public_key(),
                proof: proof.as_ref().to_vec(),
            }))
            .await?;
        match agent.next_within(Duration::from_secs(5)).await {
            Some(relay_frame::Kind::Welcome(welcome)) => Ok((agent, welcome)),
            other => bail!("expected a welcome, got {other:?}"),
        }
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

/// A test agent's own P-256 key pair (what an attacker has: a key of their
/// own, never the victim's).
pub struct TestAgentKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl TestAgentKey {
    pub fn generate() -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .ok()
            .context("key generation")?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .ok()
            .context("key")?;
        Ok(Self { pair, rng })
    }

    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    pub fn agent_id(&self) -> String {
        identity::agent_id(&self.public_key())
    }
}
