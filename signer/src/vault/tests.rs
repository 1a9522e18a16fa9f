//! Envelope encryption: round trips, bindings to user and credential, KEK
//! ids, the keyring (previous KEKs, re-wrapping), malformed blobs, KEK
//! files, and `Debug`/`Display` output that never shows key bytes.

use ring::rand::SystemRandom;

use super::*;

fn user(id: &str) -> UserId {
    UserId::new(id).expect("valid user id")
}

fn credential(byte: u8) -> CredentialId {
    CredentialId::new(vec![byte; 32]).expect("valid credential id")
}

#[test]
fn data_key_round_trips_under_the_kek_and_is_bound_to_its_user() {
    let rng = SystemRandom::new();
    let kek = Kek::from_bytes([7; KEK_LEN]);
    let data_key = DataKey::generate(&rng).unwrap();
    let wrapped = kek.wrap_data_key(&user("alice"), &data_key, &rng).unwrap();

    let opened = kek
        .unwrap_data_key(&user("alice"), kek.id(), &wrapped)
        .unwrap();
    assert_eq!(*opened.0, *data_key.0);
    assert_eq!(
        kek.unwrap_data_key(&user("bob"), kek.id(), &wrapped)
            .unwrap_err(),
        VaultError::Authentication
    );
}

#[test]
fn data_key_wrapped_under_another_kek_is_refused_by_id() {
    let rng = SystemRandom::new();
    let old = Kek::from_bytes([1; KEK_LEN]);
    let new = Kek::from_bytes([2; KEK_LEN]);
    let wrapped = old
        .wrap_data_key(&user("alice"), &DataKey::generate(&rng).unwrap(), &rng)
        .unwrap();
    assert!(matches!(
        new.unwrap_data_key(&user("alice"), old.id(), &wrapped),
        Err(VaultError::UnknownKek { .. })
    ));
    // Lying about the id does not help: the tag does not verify.
    assert_eq!(
        new.unwrap_data_key(&user("alice"), new.id(), &wrapped)
            .unwrap_err(),
        VaultError::Authentication
    );
}

#[test]
fn private_key_is_bound_to_user_and_credential() {
    let rng = SystemRandom::new();
    let data_key = DataKey::generate(&rng).unwrap();
    let secret = b"not really pkcs8 but secret";
    let wrapped = data_key
        .seal_private_key(&user("alice"), &credential(1), secret, &rng)
        .unwrap();
    assert!(!contains(wrapped.as_bytes(), secret));

    let opened = data_key
        .open_private_key(&user("alice"), &credential(1), &wrapped)
        .unwrap();
    assert_eq!(opened.as_slice(), secret);
    for (who, which) in [("alice", 2), ("bob", 1)] {
        assert_eq!(
            data_key
                .open_private_key(&user(who), &credential(which), &wrapped)
                .unwrap_err(),
            VaultError::Authentication
        );
    }
}

#[test]
fn malformed_blobs_are_rejected_without_panicking() {
    let data_key = DataKey::generate(&SystemRandom::new()).unwrap();
    for blob in [
        vec![],
        vec![WRAP_FORMAT_V1],
        vec![9; 40],
        vec![WRAP_FORMAT_V1; 12],
    ] {
        let result = data_key.open_private_key(
            &user("alice"),
            &credential(1),
            &WrappedKey::from_stored(blob),
        );
        assert!(result.is_err());
    }
}

#[test]
fn debug_never_prints_key_bytes() {
    let rng = SystemRandom::new();
    let kek = Kek::from_bytes([0xAB; KEK_LEN]);
    let data_key = DataKey::generate(&rng).unwrap();
    let wrapped = kek.wrap_data_key(&user("alice"), &data_key, &rng).unwrap();

    let kek_debug = format!("{kek:?}");
    assert!(kek_debug.contains(kek.id()), "{kek_debug}");
    assert!(!kek_debug.to_lowercase().contains("abab"), "{kek_debug}");
    assert!(!kek_debug.contains("171"), "{kek_debug}");

    let data_debug = format!("{data_key:?}");
    assert_eq!(data_debug, "DataKey(..)");

    let wrapped_debug = format!("{wrapped:?}");
    assert_eq!(
        wrapped_debug,
        format!("WrappedKey({} bytes)", wrapped.as_bytes().len())
    );
}

#[test]
fn kek_file_is_created_private_and_read_back() {
    let dir = std::env::temp_dir().join(format!("obr-kek-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kek");

    let created = Kek::load_or_create(&path).unwrap();
    let loaded = Kek::load_or_create(&path).unwrap();
    assert_eq!(created.id(), loaded.id());
    assert_eq!(*created.current.key, *loaded.current.key);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, KEK_FILE_MODE);
    }

    std::fs::write(&path, "not hex").unwrap();
    assert!(matches!(
        Kek::load_or_create(&path),
        Err(KekError::Format { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(unix)]
#[test]
fn a_kek_file_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("obr-kek-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kek");
    Kek::create_new(&path).unwrap();
    for mode in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        match Kek::load(&path) {
            Err(KekError::NotPrivate { mode: found, .. }) => assert_eq!(found, mode),
            other => panic!("mode {mode:o}: {other:?}"),
        }
        assert!(Kek::load_or_create(&path).is_err());
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    Kek::load(&path).expect("0400, as a Secret mounted with defaultMode 0400");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_keyring_unwraps_under_every_kek_it_holds_and_wraps_under_the_current() {
    let rng = SystemRandom::new();
    let (a, b) = (Kek::from_bytes([1; KEK_LEN]), Kek::from_bytes([2; KEK_LEN]));
    let data_key = DataKey::generate(&rng).unwrap();
    let under_a = a.wrap_data_key(&user("alice"), &data_key, &rng).unwrap();

    let ring = b.clone().with_previous(a.clone()).with_previous(b.clone());
    assert_eq!(ring.id(), b.id());
    assert_eq!(
        ring.ids().collect::<Vec<_>>(),
        [b.id(), a.id()],
        "no duplicates"
    );
    let opened = ring
        .unwrap_data_key(&user("alice"), a.id(), &under_a)
        .unwrap();
    assert_eq!(*opened.0, *data_key.0);

    let under_b = ring
        .rewrap_data_key(&user("alice"), a.id(), &under_a, &rng)
        .unwrap();
    assert_eq!(
        *b.unwrap_data_key(&user("alice"), b.id(), &under_b)
            .unwrap()
            .0,
        *data_key.0
    );
    assert_eq!(
        a.unwrap_data_key(&user("alice"), b.id(), &under_b)
            .unwrap_err(),
        VaultError::UnknownKek {
            found: b.id().to_owned(),
            held: a.id().to_owned(),
        }
    );
}

#[test]
fn keyrings_wrapped_keys_and_errors_never_show_key_bytes() {
    let rng = SystemRandom::new();
    let (current, previous) = ([0xC1; KEK_LEN], [0x9E; KEK_LEN]);
    let ring = Kek::from_bytes(current).with_previous(Kek::from_bytes(previous));
    let data_key = DataKey::generate(&rng).unwrap();
    let wrapped = ring.wrap_data_key(&user("alice"), &data_key, &rng).unwrap();
    let unknown = Kek::from_bytes([0x33; KEK_LEN])
        .unwrap_data_key(&user("alice"), ring.id(), &wrapped)
        .unwrap_err();
    let dir = std::env::temp_dir().join(format!("obr-kek-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad_file = dir.join("kek");
    // Almost a KEK: one hex digit short.
    let almost = &hex::encode(previous)[1..];
    std::fs::write(&bad_file, almost).unwrap();
    let format_error = Kek::load(&bad_file).unwrap_err();
    let missing_error = Kek::load(&dir.join("missing")).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();

    let shown = [
        format!("{ring:?}"),
        format!("{wrapped:?}"),
        format!("{data_key:?}"),
        format!("{unknown:?} {unknown}"),
        format!("{format_error:?} {format_error}"),
        format!("{missing_error:?} {missing_error}"),
    ];
    assert!(shown[0].contains(ring.id()), "{}", shown[0]);
    for text in &shown {
        let lower = text.to_lowercase();
        for key in [current, previous, *data_key.0] {
            assert!(!lower.contains(&hex::encode(key)[..8]), "{text}");
            assert!(!contains(text.as_bytes(), &key[..4]), "{text}");
            // `{:?}` of a byte array prints decimals: "193, 193, …".
            let decimals = format!("{}, {}", key[0], key[1]);
            assert!(!text.contains(&decimals), "{text}");
        }
        assert!(!lower.contains(&almost[..8]), "{text}");
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
