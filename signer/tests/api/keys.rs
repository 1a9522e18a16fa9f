//! Key-encryption keys as an operator handles them.

use obr_signer::Kek;

use crate::common::*;

#[test]
fn kek_debug_shows_only_its_id() {
    let kek = Kek::from_bytes([0xC7; 32]);
    let shown = format!("{kek:?}");
    assert!(shown.contains(kek.id()), "{shown}");
    assert!(!shown.to_lowercase().contains("c7c7"), "{shown}");
    assert!(!shown.contains("199"), "{shown}");
    // The id is stable, short and not the key.
    assert_eq!(kek.id(), Kek::from_bytes([0xC7; 32]).id());
    assert_ne!(kek.id(), Kek::from_bytes([0xC8; 32]).id());
    assert_eq!(kek.id().len(), 16);
}

#[tokio::test]
async fn a_different_kek_cannot_open_existing_keys() {
    let db = TempDb::new();
    let core = open(&db).await;
    let (id, _) = make_credential(&core, "alice", &Mc::new("rp.example", b"user-1")).await;
    core.shutdown().await;
    drop(core);

    let mut config = config(&db);
    config.kek = Kek::from_bytes([0x11; 32]);
    let other = obr_signer::SignerCore::open(config).await.unwrap();
    let reply = other
        .ctap(call(
            "alice",
            get_assertion_message("rp.example", &[0; 32], &[id]),
        ))
        .await;
    assert_eq!(
        reply.status(),
        0x7F,
        "wrong KEK: our fault, not the browser's"
    );
}

/// The database holds wrapped keys: SQLite's file (and its WAL) is created
/// readable by the signer's user only, whatever the umask.
#[tokio::test]
async fn the_sqlite_database_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let db = TempDb::new();
    let core = open(&db).await;
    make_credential(&core, "alice", &Mc::new("example.com", b"alice")).await;
    for file in [db.file(), db.file().with_extension("db-wal")] {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is {mode:o}", file.display());
    }
}
