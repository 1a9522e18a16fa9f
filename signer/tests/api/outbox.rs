//! The on-behalf outbox (migration 0003): every credential an admin
//! creates on a user's key is queued for its record in the same
//! transaction as the credential, stays until a relay confirms it, and is
//! shared by every signer on the database. Owners' own credentials are
//! never queued. On SQLite and on PostgreSQL.

use crate::common::*;

const RP: &str = "outbox.example.com";

#[tokio::test]
async fn on_behalf_credentials_wait_in_the_outbox_until_acked_sqlite() {
    on_behalf_credentials_wait_in_the_outbox_until_acked(Backend::Sqlite).await;
}

#[tokio::test]
async fn on_behalf_credentials_wait_in_the_outbox_until_acked_postgres() {
    on_behalf_credentials_wait_in_the_outbox_until_acked(Backend::Postgres).await;
}

async fn on_behalf_credentials_wait_in_the_outbox_until_acked(backend: Backend) {
    let db = TempDb::of(backend).await;
    let core = open(&db).await;
    let other_pod = open(&db).await;
    let reply = core
        .ctap(obr_call("alice", Mc::new(RP, b"on-behalf").message()))
        .await;
    let on_behalf = decode_make_credential(&reply)
        .auth_data
        .attested_credential_data
        .expect("attested credential data")
        .credential_id()
        .to_vec();
    make_credential(&core, "alice", &Mc::new(RP, b"own")).await;

    let far = i64::MAX;
    let pending = other_pod.pending_obr_records(far, 10).await.unwrap();
    assert_eq!(
        pending.len(),
        1,
        "only the on-behalf one, seen by every pod"
    );
    let record = &pending[0];
    assert_eq!(record.credential_id, on_behalf);
    assert_eq!(
        (record.user_id.as_str(), record.rp_id.as_str()),
        ("alice", RP)
    );
    assert_eq!(
        (record.admin_id.as_str(), record.obr_session_id.as_str()),
        (acting().admin_id.as_str(), acting().obr_session_id.as_str())
    );
    // Only records old enough are handed out.
    assert!(
        core.pending_obr_records(record.created_at_ms - 1, 10)
            .await
            .unwrap()
            .is_empty()
    );

    assert!(core.ack_obr_record(&on_behalf).await.unwrap());
    assert!(!other_pod.ack_obr_record(&on_behalf).await.unwrap(), "once");
    assert!(core.pending_obr_records(far, 10).await.unwrap().is_empty());
}
