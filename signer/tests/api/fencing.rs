//! Exactly one signer writes a user's credentials: two `SignerCore`s on one
//! database stand for two signer pods that both believe they own a user.
//! Run on SQLite (one file) and on PostgreSQL (one fresh database).

use crate::common::*;

const RP: &str = "login.example.com";

#[tokio::test]
async fn the_latest_activation_owns_the_user_and_the_older_one_is_refused_sqlite() {
    the_latest_activation_owns_the_user_and_the_older_one_is_refused(Backend::Sqlite).await;
}

#[tokio::test]
async fn the_latest_activation_owns_the_user_and_the_older_one_is_refused_postgres() {
    the_latest_activation_owns_the_user_and_the_older_one_is_refused(Backend::Postgres).await;
}

async fn the_latest_activation_owns_the_user_and_the_older_one_is_refused(backend: Backend) {
    let db = TempDb::of(backend).await;
    let a = open(&db).await;
    let b = open(&db).await;

    // A activates alice (epoch 1) and creates a credential.
    let (id, public_key) = make_credential(&a, "alice", &Mc::new(RP, b"user-1")).await;
    let allow = [id.clone()];

    // B activates alice (epoch 2): its counter increment works.
    let reply = b
        .ctap(call("alice", get_assertion_message(RP, &[1; 32], &allow)))
        .await;
    verify_assertion(&public_key, &reply, &[1; 32]);
    assert_eq!(decode_get_assertion(&reply).auth_data.counter, Some(1));

    // A's next counter increment is refused, and A passivates.
    let reply = a
        .ctap(call("alice", get_assertion_message(RP, &[2; 32], &allow)))
        .await;
    assert_eq!(reply.status(), 0x7F);
    assert_eq!(a.active_users(), 0, "a fenced actor passivates at once");

    // B is unaffected.
    let reply = b
        .ctap(call("alice", get_assertion_message(RP, &[3; 32], &allow)))
        .await;
    assert_eq!(decode_get_assertion(&reply).auth_data.counter, Some(2));

    // A activates again (epoch 3); now B's credential write is refused.
    let reply = a
        .ctap(call("alice", get_assertion_message(RP, &[4; 32], &allow)))
        .await;
    assert_eq!(decode_get_assertion(&reply).auth_data.counter, Some(3));
    let reply = b
        .ctap(call("alice", Mc::new(RP, b"user-2").message()))
        .await;
    assert_eq!(reply.status(), 0x7F);
    assert!(reply.created.is_none());
    assert_eq!(b.active_users(), 0);

    // B activates again (epoch 4); now A's delete is refused.
    let reply = b
        .ctap(call("alice", get_assertion_message(RP, &[5; 32], &allow)))
        .await;
    assert_eq!(decode_get_assertion(&reply).auth_data.counter, Some(4));
    assert!(matches!(
        a.delete_credential("alice", &id).await,
        Err(obr_signer::SignerError::Fenced)
    ));
    assert_eq!(a.active_users(), 0);

    let listed = b.list_credentials("alice").await.unwrap();
    assert_eq!(listed.len(), 1, "the refused writes left nothing behind");
    assert_eq!(listed[0].sign_count, 4);

    // Other users are not affected by alice's fencing.
    make_credential(&b, "bob", &Mc::new(RP, b"user-3")).await;
}
