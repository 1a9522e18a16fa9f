//! The store against an in-memory SQLite database: claims, fenced writes,
//! counters, discoverable-credential replacement.

use super::*;

async fn store() -> Store {
    Store::open("sqlite::memory:", 1)
        .await
        .expect("in-memory store")
}

fn user(id: &str) -> UserId {
    UserId::new(id).unwrap()
}

fn credential_id(byte: u8) -> CredentialId {
    CredentialId::new(vec![byte; 32]).unwrap()
}

fn wrapped(byte: u8) -> WrappedKey {
    WrappedKey::from_stored(vec![byte; 40])
}

async fn insert(
    store: &Store,
    user: &UserId,
    epoch: i64,
    id: u8,
    handle: &[u8],
    discoverable: bool,
) -> Result<u64, StoreError> {
    let id = credential_id(id);
    let key = wrapped(id.as_bytes()[0]);
    store
        .insert_credential(
            user,
            epoch,
            NewCredential {
                id: &id,
                rp_id: "rp.example",
                user_handle: handle,
                user_name: "name",
                user_display_name: "Display",
                discoverable,
                algorithm: -7,
                wrapped_private_key: &key,
                created_at_ms: now_ms(),
                created_by: None,
            },
        )
        .await
}

#[tokio::test]
async fn claims_increment_the_epoch_and_keep_the_first_data_key() {
    let store = store().await;
    let first = store
        .claim(&user("alice"), &wrapped(1), "kek-a")
        .await
        .unwrap();
    assert_eq!(first.epoch, 1);
    assert_eq!(first.wrapped_data_key, wrapped(1));
    assert_eq!(first.kek_id, "kek-a");

    let second = store
        .claim(&user("alice"), &wrapped(2), "kek-b")
        .await
        .unwrap();
    assert_eq!(second.epoch, 2);
    assert_eq!(
        second.wrapped_data_key,
        wrapped(1),
        "the data key is created once"
    );
    assert_eq!(second.kek_id, "kek-a");

    assert_eq!(
        store
            .claim(&user("bob"), &wrapped(3), "kek-a")
            .await
            .unwrap()
            .epoch,
        1
    );
}

#[tokio::test]
async fn writes_under_a_stale_epoch_are_fenced() {
    let store = store().await;
    let alice = user("alice");
    let old = store.claim(&alice, &wrapped(1), "kek").await.unwrap().epoch;
    insert(&store, &alice, old, 1, b"h", false).await.unwrap();
    let new = store.claim(&alice, &wrapped(1), "kek").await.unwrap().epoch;
    assert!(new > old);

    assert!(matches!(
        insert(&store, &alice, old, 2, b"h", false).await,
        Err(StoreError::Fenced)
    ));
    assert!(matches!(
        store
            .increment_sign_count(&alice, old, &credential_id(1))
            .await,
        Err(StoreError::Fenced)
    ));
    assert!(matches!(
        store
            .delete_credential(&alice, old, &credential_id(1))
            .await,
        Err(StoreError::Fenced)
    ));
    assert_eq!(store.list_credentials(&alice).await.unwrap().len(), 1);
    assert_eq!(
        store.list_credentials(&alice).await.unwrap()[0].sign_count,
        0
    );

    assert_eq!(
        store
            .increment_sign_count(&alice, new, &credential_id(1))
            .await
            .unwrap(),
        Some(1)
    );
    assert_eq!(
        store
            .increment_sign_count(&alice, new, &credential_id(1))
            .await
            .unwrap(),
        Some(2)
    );
    assert!(
        store
            .delete_credential(&alice, new, &credential_id(1))
            .await
            .unwrap()
    );
    assert!(
        !store
            .delete_credential(&alice, new, &credential_id(1))
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .increment_sign_count(&alice, new, &credential_id(1))
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn credentials_are_per_user() {
    let store = store().await;
    let (alice, bob) = (user("alice"), user("bob"));
    let epoch = store.claim(&alice, &wrapped(1), "kek").await.unwrap().epoch;
    let bob_epoch = store.claim(&bob, &wrapped(2), "kek").await.unwrap().epoch;
    insert(&store, &alice, epoch, 1, b"h", true).await.unwrap();

    assert!(
        store
            .has_credential(&alice, &credential_id(1))
            .await
            .unwrap()
    );
    assert!(!store.has_credential(&bob, &credential_id(1)).await.unwrap());
    assert!(
        store
            .credentials_for_rp(&bob, "rp.example")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .increment_sign_count(&bob, bob_epoch, &credential_id(1))
            .await
            .unwrap(),
        None
    );
    assert!(
        !store
            .delete_credential(&bob, bob_epoch, &credential_id(1))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn a_discoverable_credential_replaces_only_its_rp_and_handle() {
    let store = store().await;
    let alice = user("alice");
    let epoch = store.claim(&alice, &wrapped(1), "kek").await.unwrap().epoch;
    assert_eq!(
        insert(&store, &alice, epoch, 1, b"h1", true).await.unwrap(),
        0
    );
    assert_eq!(
        insert(&store, &alice, epoch, 2, b"h1", true).await.unwrap(),
        1
    );
    assert_eq!(
        insert(&store, &alice, epoch, 3, b"h1", false)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        insert(&store, &alice, epoch, 4, b"h2", true).await.unwrap(),
        0
    );

    let ids: Vec<u8> = store
        .credentials_for_rp(&alice, "rp.example")
        .await
        .unwrap()
        .iter()
        .map(|c| c.id.as_bytes()[0])
        .collect();
    assert_eq!(ids, vec![4, 3, 2], "most recent first, 1 replaced by 2");
}

#[tokio::test]
async fn only_sqlite_urls_are_supported() {
    assert!(matches!(
        Store::open("postgres://localhost/obr", 1).await,
        Err(StoreError::Unsupported(_))
    ));
}
