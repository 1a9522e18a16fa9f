//! The user app's live feed (`/api/me/live`) through real relays: a socket
//! that does not say who it is, or names a token that is not a device
//! token, is closed (1008); a fifth feed of one person is refused (1013); bob's phone, connected to one relay, hears of
//! what an admin did on the *other* relay (one Redis, one directory) long
//! before its periodic re-read; and a phone that was offline gets what it
//! missed from the durable inbox when it comes back.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use obr_tests::api::Api;
use obr_tests::processes::{RelayOptions, RelayProc};
use obr_tests::redis_server::RedisServer;
use obr_tests::scratch::Scratch;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(relay_url: &str) -> anyhow::Result<Socket> {
    let url = format!("{}/api/me/live", relay_url.replacen("http", "ws", 1));
    Ok(tokio_tungstenite::connect_async(url).await?.0)
}

/// The close code the relay ends `socket` with (within `within`).
async fn closed_with(socket: &mut Socket, within: Duration) -> anyhow::Result<CloseCode> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, socket.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => return Ok(frame.code),
            Ok(Some(Ok(_))) => {}
            other => anyhow::bail!("no close frame: {other:?}"),
        }
    }
}

/// The next batch of notifications on `socket` (within `within`).
async fn next_batch(socket: &mut Socket, within: Duration) -> anyhow::Result<Vec<Value>> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                let batch: Value = serde_json::from_str(&text)?;
                return Ok(batch["notifications"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default());
            }
            Ok(Some(Ok(_))) => {}
            other => anyhow::bail!("no notifications within {within:?}: {other:?}"),
        }
    }
}

#[test]
fn a_phone_hears_at_once_what_happened_on_another_relay() -> anyhow::Result<()> {
    let redis = RedisServer::start()?
        .ok_or_else(|| anyhow::anyhow!("redis-server is missing: scripts/test installs it"))?;
    let scratch = Scratch::new("user-app-feed")?;
    let options = RelayOptions::with_redis(redis.url());
    let data_dir = scratch.join("relay");
    let first = RelayProc::start(&data_dir, &options)?;
    let second = RelayProc::start(&data_dir, &options)?;
    let demo = &first.demo;
    let bob = first.user("bob@demo.obr")?;
    let device = bob.device_token.clone().unwrap_or_default();
    let api = Api::new(&second.url);
    let admin = api.demo_owner(demo)?;

    tokio::runtime::Runtime::new()?.block_on(async {
        // Saying nothing, or naming an admin's token: closed as a policy breach.
        let mut silent = open(&first.url).await?;
        assert_eq!(
            closed_with(&mut silent, Duration::from_secs(10)).await?,
            CloseCode::Policy
        );
        let mut wrong = open(&first.url).await?;
        wrong
            .send(Message::text(json!({ "token": admin }).to_string()))
            .await?;
        assert_eq!(
            closed_with(&mut wrong, Duration::from_secs(5)).await?,
            CloseCode::Policy
        );

        // One person holds at most four feeds on a relay; the fifth is told
        // to come back later (1013), and the app keeps its token.
        let carol = first
            .user("carol@demo.obr")?
            .device_token
            .clone()
            .unwrap_or_default();
        let mut feeds = Vec::new();
        for _ in 0..4 {
            let mut feed = open(&first.url).await?;
            feed.send(Message::text(json!({ "token": carol }).to_string()))
                .await?;
            feeds.push(feed);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut fifth = open(&first.url).await?;
        fifth
            .send(Message::text(json!({ "token": carol }).to_string()))
            .await?;
        assert_eq!(
            closed_with(&mut fifth, Duration::from_secs(5)).await?,
            CloseCode::Again
        );
        drop(feeds);

        // Bob's phone on the first relay; the owner suspends his key on
        // the second. (The feed re-reads every 15 s by itself; this must
        // come well before that.)
        let mut phone = open(&first.url).await?;
        phone
            .send(Message::text(
                json!({ "token": device, "after": 0 }).to_string(),
            ))
            .await?;
        let mut last = 0;
        // Whatever the inbox held already arrives first (maybe nothing).
        if let Ok(Ok(batch)) = tokio::time::timeout(
            Duration::from_millis(500),
            next_batch(&mut phone, Duration::from_secs(1)),
        )
        .await
        {
            last = batch.last().and_then(|n| n["id"].as_i64()).unwrap_or(0);
        }
        let acted = Instant::now();
        api.call(
            "POST",
            &format!("/api/users/{}/suspend", bob.id),
            Some(&admin),
            None,
        )?
        .ok()?;
        let batch = next_batch(&mut phone, Duration::from_secs(5)).await?;
        let waited = acted.elapsed();
        assert!(
            batch.iter().any(|n| n["id"].as_i64() > Some(last)
                && n["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("suspended"))),
            "{batch:?}"
        );
        eprintln!("bob's phone heard of the suspension {waited:?} after the call");
        phone.close(None).await?;

        // Offline meanwhile: the key is resumed; back online from where it
        // left off, the phone gets exactly what it missed.
        let seen = batch.last().and_then(|n| n["id"].as_i64()).unwrap_or(last);
        api.call(
            "POST",
            &format!("/api/users/{}/resume", bob.id),
            Some(&admin),
            None,
        )?
        .ok()?;
        let mut back = open(&second.url).await?;
        back.send(Message::text(
            json!({ "token": device, "after": seen }).to_string(),
        ))
        .await?;
        let missed = next_batch(&mut back, Duration::from_secs(5)).await?;
        assert!(
            missed.iter().all(|n| n["id"].as_i64() > Some(seen)),
            "{missed:?}"
        );
        assert!(
            missed
                .iter()
                .any(|n| n["message"].as_str().is_some_and(|m| m.contains("resumed"))),
            "{missed:?}"
        );
        anyhow::Ok(())
    })
}
