//! The store's contract, run against both backends: SQLite (a temporary
//! file) and PostgreSQL (a fresh database on the server named by
//! `OBR_TEST_POSTGRES_URL`, default the machine's own): claims, fenced
//! writes (also against a claim in flight), counters,
//! discoverable-credential replacement, and the rotation's reads and
//! compare-and-set writes.

use std::time::Duration;

use super::rotation::{DataKeyRow, DataKeySwap};
use super::*;

#[path = "../../tests/api/test_db.rs"]
mod test_db;

use self::test_db::{Backend, TempDb};

/// Connections per test store: enough for a write to wait on another.
const TEST_CONNECTIONS: u32 = 4;
/// How long a write blocked by an open claim is given to (wrongly) finish.
const BLOCKED_WRITE_GRACE: Duration = Duration::from_millis(300);

/// Each scenario below, once per backend.
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::run(super::Backend::Sqlite, super::$scenario).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::run(super::Backend::Postgres, super::$scenario).await;
                }
            )*
        }
    };
}

on_both_backends!(
    claims_increment_the_epoch_and_keep_the_first_data_key,
    writes_under_a_stale_epoch_are_fenced,
    a_write_waits_for_a_claim_in_flight_and_is_then_fenced,
    credentials_are_per_user,
    a_discoverable_credential_replaces_only_its_rp_and_handle,
    rotation_reads_pages_and_swaps_only_unchanged_rows,
);

async fn run<F: Future<Output = ()>>(backend: Backend, scenario: impl FnOnce(Store) -> F) {
    let db = TempDb::of(backend).await;
    let store = Store::open(&db.url(), TEST_CONNECTIONS)
        .await
        .expect("open test store");
    scenario(store.clone()).await;
    with_pool!(store.pool, pool => pool.close().await);
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
                cred_protect: 1,
                wrapped_cred_random: None,
            },
        )
        .await
}

async fn claims_increment_the_epoch_and_keep_the_first_data_key(store: Store) {
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

async fn writes_under_a_stale_epoch_are_fenced(store: Store) {
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

async fn credentials_are_per_user(store: Store) {
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

async fn a_discoverable_credential_replaces_only_its_rp_and_handle(store: Store) {
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
        .map(|(c, _)| c.id.as_bytes()[0])
        .collect();
    assert_eq!(ids, vec![4, 3, 2], "most recent first, 1 replaced by 2");
}

#[tokio::test]
async fn other_urls_are_refused_without_their_password() {
    let error = Store::open("mysql://admin:hunter2@localhost/obr", 1)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Unsupported(_)));
    assert!(!error.to_string().contains("hunter2"), "{error}");
}

/// A claim that has updated the user's row but not committed yet must hold
/// back an old owner's fenced writes, which then see the new epoch (on
/// PostgreSQL this is the `FOR SHARE` of `fenced_write!`; without it the
/// write would read the old committed epoch and go through).
async fn a_write_waits_for_a_claim_in_flight_and_is_then_fenced(store: Store) {
    let alice = user("alice");
    let first = store.claim(&alice, &wrapped(1), "kek").await.unwrap().epoch;
    insert(&store, &alice, first, 1, b"h", false).await.unwrap();
    insert(&store, &alice, first, 2, b"h", false).await.unwrap();

    for write in ["increment", "delete"] {
        // This signer's claim, about to be overtaken by another's.
        let old = store.claim(&alice, &wrapped(1), "kek").await.unwrap().epoch;
        let claim_in_flight = with_pool!(store.pool, pool => {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("UPDATE user_keys SET owner_epoch = owner_epoch + 1 WHERE user_id = $1")
                .bind(alice.as_str())
                .execute(&mut *tx)
                .await
                .unwrap();
            let (store, alice) = (store.clone(), alice.clone());
            let blocked = tokio::spawn(async move {
                match write {
                    "increment" => store
                        .increment_sign_count(&alice, old, &credential_id(1))
                        .await
                        .map(|_| ()),
                    _ => store
                        .delete_credential(&alice, old, &credential_id(2))
                        .await
                        .map(|_| ()),
                }
            });
            tokio::time::sleep(BLOCKED_WRITE_GRACE).await;
            assert!(!blocked.is_finished(), "{write} did not wait for the claim");
            tx.commit().await.unwrap();
            blocked
        });
        assert!(
            matches!(claim_in_flight.await.unwrap(), Err(StoreError::Fenced)),
            "{write} under the old epoch went through"
        );
    }
    let listed = store.list_credentials(&alice).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|c| c.sign_count == 0));
}

async fn rotation_reads_pages_and_swaps_only_unchanged_rows(store: Store) {
    for (name, kek) in [("u1", "old"), ("u2", "new"), ("u3", "old"), ("u4", "other")] {
        store.claim(&user(name), &wrapped(1), kek).await.unwrap();
    }
    let first = store.data_keys_not_under("new", None, 2).await.unwrap();
    let names: Vec<&str> = first.iter().map(|row| row.user.as_str()).collect();
    assert_eq!(names, ["u1", "u3"]);
    let rest = store
        .data_keys_not_under("new", Some(&first[1].user), 2)
        .await
        .unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].user.as_str(), "u4");
    assert_eq!(rest[0].kek_id, "other");

    // u3's row changes after it was read: its swap must not be written.
    let stale = DataKeyRow {
        user: user("u3"),
        kek_id: "old".to_owned(),
        wrapped: wrapped(9),
    };
    let swaps = [
        DataKeySwap {
            old: &first[0],
            new: wrapped(2),
        },
        DataKeySwap {
            old: &stale,
            new: wrapped(3),
        },
    ];
    assert_eq!(store.swap_data_keys("new", &swaps).await.unwrap(), 1);
    assert_eq!(
        store.swap_data_keys("new", &swaps).await.unwrap(),
        0,
        "idempotent"
    );

    let claim = store.claim(&user("u1"), &wrapped(7), "x").await.unwrap();
    assert_eq!(
        (claim.kek_id.as_str(), claim.wrapped_data_key),
        ("new", wrapped(2))
    );
    assert_eq!(
        store.data_keys_by_kek().await.unwrap(),
        [
            ("new".to_owned(), 2),
            ("old".to_owned(), 1),
            ("other".to_owned(), 1)
        ]
    );
}
