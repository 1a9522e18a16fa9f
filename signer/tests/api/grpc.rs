//! The tonic service over loopback: one `Link` carrying several calls at
//! once, a `Cancel`, and the unary credential calls.

use std::collections::HashMap;
use std::time::Duration;

use obr_proto::signer::signer_client::SignerClient;
use obr_proto::signer::{
    Acting, Cancel, CtapCall, DeleteCredentialRequest, LinkRequest, LinkResponse,
    ListCredentialsRequest, link_request,
};
use sqlx::Connection as _;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::common::*;

const RP: &str = "login.example.com";
/// Bound on every wait for the server in these tests.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A call as the relay sends it: on-behalf (`acting`), or in normal mode
/// after the owner approved it on their device.
fn ctap(id: u64, user: &str, payload: Vec<u8>, acting: Option<Acting>) -> LinkRequest {
    let approval_id = if acting.is_none() { "approval-1" } else { "" };
    let mac = if acting.is_none() {
        approval_mac(approval_id, user, &payload)
    } else {
        Vec::new()
    };
    unapproved(id, user, payload, acting, approval_id, mac)
}

/// The relay's MAC over an owner's approval of exactly this call.
fn approval_mac(approval_id: &str, user: &str, payload: &[u8]) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &TEST_APPROVAL_KEY);
    let input = obr_proto::approval::mac_input(approval_id, user, payload);
    ring::hmac::sign(&key, &input).as_ref().to_vec()
}

fn unapproved(
    id: u64,
    user: &str,
    payload: Vec<u8>,
    acting: Option<Acting>,
    approval_id: &str,
    approval_mac: Vec<u8>,
) -> LinkRequest {
    LinkRequest {
        id,
        kind: Some(link_request::Kind::Ctap(CtapCall {
            user_id: user.to_owned(),
            payload,
            budget_ms: 10_000,
            acting,
            approval_id: approval_id.to_owned(),
            approval_mac,
        })),
    }
}

fn cancel(id: u64) -> LinkRequest {
    LinkRequest {
        id,
        kind: Some(link_request::Kind::Cancel(Cancel {})),
    }
}

async fn next(responses: &mut Streaming<LinkResponse>) -> Option<LinkResponse> {
    tokio::time::timeout(REPLY_TIMEOUT, responses.message())
        .await
        .expect("the signer answers in time")
        .expect("the link stays healthy")
}

#[tokio::test]
async fn link_multiplexes_calls_cancels_and_serves_the_panel() {
    let db = TempDb::new();
    let core = open(&db).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(obr_signer::serve(core.clone(), listener, async {
        let _ = stopped.await;
    }));
    let mut client = SignerClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

    let (requests, outbound) = mpsc::channel(16);
    let mut responses = client
        .link(ReceiverStream::new(outbound))
        .await
        .unwrap()
        .into_inner();

    // Two makeCredential calls in flight at once, one on an admin's behalf.
    let acting = Acting {
        admin_id: "admin-7".to_owned(),
        obr_session_id: "obr-session-42".to_owned(),
    };
    requests
        .send(ctap(
            1,
            "alice",
            Mc::new(RP, b"user-a").message(),
            Some(acting),
        ))
        .await
        .unwrap();
    requests
        .send(ctap(2, "bob", Mc::new(RP, b"user-b").message(), None))
        .await
        .unwrap();
    let mut answered = HashMap::new();
    for _ in 0..2 {
        let response = next(&mut responses).await.expect("a reply");
        answered.insert(response.id, response);
    }
    for id in [1, 2] {
        let response = &answered[&id];
        assert_eq!(response.payload.first(), Some(&0x00), "call {id}");
        let created = response.created.as_ref().expect("created");
        assert_eq!(created.rp_id, RP);
        assert!(response.work_us > 0);
    }

    // Hold the database's write lock: carol's first call must claim her in
    // the database, so it cannot finish while the lock is held. Cancel it.
    let mut blocker = sqlx::SqliteConnection::connect(&db.url()).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut blocker)
        .await
        .unwrap();
    requests
        .send(ctap(3, "carol", Mc::new(RP, b"user-c").message(), None))
        .await
        .unwrap();
    requests.send(cancel(3)).await.unwrap();
    // A call that writes nothing still answers meanwhile.
    requests
        .send(ctap(4, "alice", vec![0x04], None))
        .await
        .unwrap();
    let response = next(&mut responses).await.expect("a reply");
    assert_eq!(response.id, 4);
    assert_eq!(response.payload.first(), Some(&0x00));
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();

    // A malformed call is answered on its id; the link survives it.
    requests.send(ctap(5, "", vec![0x04], None)).await.unwrap();
    let response = next(&mut responses).await.expect("a reply");
    assert_eq!((response.id, response.payload.as_slice()), (5, &[0x02][..]));

    // Closing our side ends the link once what is in flight has answered:
    // nothing ever comes back for the cancelled call.
    drop(requests);
    while let Some(response) = next(&mut responses).await {
        assert_ne!(response.id, 3, "a cancelled call must not be answered");
    }

    // The panel's unary calls.
    let listed = client
        .list_credentials(ListCredentialsRequest {
            user_id: "alice".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .credentials;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].created_by_admin, "admin-7");
    assert_eq!(listed[0].obr_session_id, "obr-session-42");
    assert_eq!(listed[0].algorithm, "ES256");
    let status = client
        .list_credentials(ListCredentialsRequest {
            user_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    let delete = |credential_id: Vec<u8>| DeleteCredentialRequest {
        user_id: "alice".to_owned(),
        credential_id,
        acting_admin_id: "admin-7".to_owned(),
    };
    let id = listed[0].credential_id.clone();
    // Management calls name the admin they act for.
    let status = client
        .delete_credential(DeleteCredentialRequest {
            acting_admin_id: String::new(),
            ..delete(id.clone())
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        client
            .delete_credential(delete(id.clone()))
            .await
            .unwrap()
            .into_inner()
            .deleted
    );
    assert!(
        !client
            .delete_credential(delete(id))
            .await
            .unwrap()
            .into_inner()
            .deleted
    );
    let status = client
        .delete_credential(delete(Vec::new()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    drop(client);
    stop.send(()).unwrap();
    tokio::time::timeout(REPLY_TIMEOUT, server)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_normal_mode_call_without_approval_asks_for_it_over_the_link() {
    let db = TempDb::new();
    let core = open(&db).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(obr_signer::serve(core.clone(), listener, async {
        let _ = stopped.await;
    }));
    let mut client = SignerClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (requests, rx) = tokio::sync::mpsc::channel(4);
    let mut responses = client
        .link(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // No approval, a made-up one, one MACed for another request, another
    // user's, or under another key: none is the owner's approval.
    let message = Mc::new(RP, b"user-c").message();
    let forged = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[1; 32]),
        &obr_proto::approval::mac_input("approval-9", "carol", &message),
    )
    .as_ref()
    .to_vec();
    let attempts = [
        ("", Vec::new()),
        ("approval-9", Vec::new()),
        (
            "approval-9",
            approval_mac("approval-9", "carol", b"another request"),
        ),
        ("approval-9", approval_mac("approval-9", "bob", &message)),
        ("approval-9", forged),
    ];
    for (id, (approval_id, mac)) in (9..).zip(attempts) {
        requests
            .send(unapproved(
                id,
                "carol",
                message.clone(),
                None,
                approval_id,
                mac,
            ))
            .await
            .unwrap();
        let response = next(&mut responses).await.expect("a reply");
        assert_eq!(response.id, id);
        assert!(response.payload.is_empty(), "attempt {id} was served");
        assert!(response.approval_needed.is_some(), "attempt {id}");
    }
    requests
        .send(unapproved(
            20,
            "carol",
            message.clone(),
            None,
            "",
            Vec::new(),
        ))
        .await
        .unwrap();
    let response = next(&mut responses).await.expect("a reply");
    assert_eq!(response.id, 20);
    assert!(response.payload.is_empty());
    let needed = response.approval_needed.expect("approval needed");
    assert_eq!(
        (needed.rp_id.as_str(), needed.operation.as_str()),
        (RP, "register")
    );
    assert!(response.created.is_none());
    assert!(core.list_credentials("carol").await.unwrap().is_empty());
    drop(requests);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
