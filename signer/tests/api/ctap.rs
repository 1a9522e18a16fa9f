//! CTAP2 commands through `SignerCore::ctap`, asserting exact status codes.

use std::time::Duration;

use ciborium::value::Value;
use passkey_types::ctap2::get_info;
use passkey_types::ctap2::{Aaguid, Flags};
use ring::digest;

use crate::common::*;

const RP: &str = "login.example.com";

#[tokio::test]
async fn get_info_decodes_with_passkey_types_and_is_canonical() {
    let db = TempDb::new();
    let core = open(&db).await;
    let reply = core.ctap(call("alice", vec![0x04])).await;
    assert_ok(&reply);
    let info: get_info::Response =
        ciborium::de::from_reader(&reply.payload[1..]).expect("getInfo response");

    assert_eq!(
        info.versions,
        vec![get_info::Version::FIDO_2_0, get_info::Version::FIDO_2_1]
    );
    assert_eq!(info.aaguid, Aaguid(obr_signer::config::DEFAULT_AAGUID));
    let options = info.options.expect("options");
    assert!(options.rk && options.up && !options.plat);
    assert_eq!(options.uv, Some(true), "built-in user verification");
    assert_eq!(options.client_pin, None, "clientPin must not be advertised");
    assert_eq!(
        options.pin_uv_auth_token,
        Some(true),
        "built-in UV also comes as a pinUvAuthToken"
    );
    assert_eq!(info.max_msg_size.map(u128::from), Some(7609));
    let algorithms = info.algorithms.expect("algorithms");
    let algorithms: Vec<_> = algorithms.iter().map(|a| a.alg).collect();
    assert_eq!(
        algorithms,
        vec![coset::iana::Algorithm::ES256, coset::iana::Algorithm::EdDSA]
    );
    assert_eq!(
        info.transports,
        Some(vec![passkey_types::webauthn::AuthenticatorTransport::Usb])
    );
    assert_eq!(info.pin_protocols, Some(vec![2, 1]));

    // CTAP2 canonical CBOR: option keys by encoded length, then bytewise.
    let value: Value = ciborium::de::from_reader(&reply.payload[1..]).unwrap();
    let Value::Map(top) = value else {
        panic!("not a map")
    };
    let keys: Vec<_> = top.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(
        keys,
        vec![
            int(1),
            int(2),
            int(3),
            int(4),
            int(5),
            int(6),
            int(9),
            int(10)
        ]
    );
    let extensions = top
        .iter()
        .find(|(k, _)| *k == int(2))
        .map(|(_, v)| v.clone());
    assert_eq!(
        extensions,
        Some(Value::Array(vec![text("credProtect"), text("hmac-secret")]))
    );
    let options = top
        .iter()
        .find(|(k, _)| *k == int(4))
        .map(|(_, v)| v.clone())
        .unwrap();
    let Value::Map(options) = options else {
        panic!("options not a map")
    };
    let names: Vec<_> = options.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(
        names,
        vec![
            text("rk"),
            text("up"),
            text("uv"),
            text("plat"),
            text("pinUvAuthToken"),
            text("makeCredUvNotRqd")
        ]
    );
}

#[tokio::test]
async fn make_credential_then_get_assertion_verifies_and_counter_increases() {
    let db = TempDb::new();
    let core = open(&db).await;
    let mc_reply = core
        .ctap(call("alice", Mc::new(RP, b"user-1").message()))
        .await;
    let created = mc_reply.created.clone().expect("created");
    assert_eq!(created.rp_id, RP);
    assert_eq!(created.user_name, "alice@example.com");
    assert_eq!(created.user_display_name, "Alice");
    assert!(!created.discoverable);

    let response = decode_make_credential(&mc_reply);
    assert_eq!(response.fmt, "none");
    assert_eq!(response.att_stmt, Value::Map(vec![]));
    let auth_data = &response.auth_data;
    assert_eq!(
        auth_data.rp_id_hash(),
        digest::digest(&digest::SHA256, RP.as_bytes()).as_ref()
    );
    assert_eq!(
        auth_data.flags,
        Flags::UP | Flags::BE | Flags::BS | Flags::AT,
        "no UV outside OBR"
    );
    assert_eq!(auth_data.counter, Some(0));
    let attested = auth_data.attested_credential_data.clone().unwrap();
    assert_eq!(attested.aaguid, Aaguid(obr_signer::config::DEFAULT_AAGUID));
    assert_eq!(attested.credential_id(), created.credential_id.as_slice());
    assert_eq!(attested.credential_id().len(), 32);
    let public_key = attested.key.to_sec1_octet_string().unwrap();

    let mut last = 0;
    for round in 0u8..3 {
        let cdh = [round; 32];
        let reply = core
            .ctap(call(
                "alice",
                get_assertion_message(RP, &cdh, std::slice::from_ref(&created.credential_id)),
            ))
            .await;
        verify_assertion(&public_key, &reply, &cdh);
        let response = decode_get_assertion(&reply);
        let counter = response.auth_data.counter.unwrap();
        assert!(counter > last, "counter {counter} after {last}");
        last = counter;
        assert_eq!(response.auth_data.flags, Flags::UP | Flags::BE | Flags::BS);
        assert_eq!(
            response.credential.unwrap().id.as_slice(),
            created.credential_id.as_slice()
        );
        assert!(response.user.is_none(), "non-discoverable: no user");
        assert!(response.number_of_credentials.is_none());
    }
    let listed = core.list_credentials("alice").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].sign_count, last);
    assert!(listed[0].last_used_at_ms.is_some());
    assert_eq!(listed[0].algorithm, "ES256");
}

#[tokio::test]
async fn exclude_list_refuses_a_credential_of_this_user_and_rp() {
    let db = TempDb::new();
    let core = open(&db).await;
    let (id, _) = make_credential(&core, "alice", &Mc::new(RP, b"user-1")).await;

    let mut mc = Mc::new(RP, b"user-1");
    mc.exclude = vec![vec![9; 32], id.clone()];
    assert_eq!(core.ctap(call("alice", mc.message())).await.status(), 0x19);

    // The same id does not exclude on another RP, nor for another user.
    let mut other_rp = Mc::new("other.example.com", b"user-1");
    other_rp.exclude = vec![id.clone()];
    assert_ok(&core.ctap(call("alice", other_rp.message())).await);
    let mut other_user = Mc::new(RP, b"user-2");
    other_user.exclude = vec![id];
    assert_ok(&core.ctap(call("bob", other_user.message())).await);
}

#[tokio::test]
async fn unsupported_algorithms_are_refused_and_the_first_supported_one_wins() {
    let db = TempDb::new();
    let core = open(&db).await;
    let mut mc = Mc::new(RP, b"user-1");
    mc.algorithms = vec![RS256];
    assert_eq!(core.ctap(call("alice", mc.message())).await.status(), 0x26);

    for (algorithms, chosen) in [
        (vec![RS256, ES256, EDDSA], ES256),
        (vec![EDDSA, ES256], EDDSA),
    ] {
        mc.algorithms = algorithms;
        let reply = core.ctap(call("alice", mc.message())).await;
        let attested = decode_make_credential(&reply)
            .auth_data
            .attested_credential_data
            .unwrap();
        let alg = attested.key.alg.clone().unwrap();
        assert_eq!(
            alg,
            coset::RegisteredLabelWithPrivate::Assigned(if chosen == ES256 {
                coset::iana::Algorithm::ES256
            } else {
                coset::iana::Algorithm::EdDSA
            })
        );
    }
    let listed = core.list_credentials("alice").await.unwrap();
    let names: Vec<_> = listed.iter().map(|c| c.algorithm.as_str()).collect();
    assert_eq!(names, vec!["ES256", "EdDSA"]);
}

#[tokio::test]
async fn discoverable_credentials_enumerate_with_get_next_assertion() {
    let db = TempDb::new();
    let core = open(&db).await;
    let (first_id, first_key) =
        make_credential(&core, "alice", &Mc::new(RP, b"handle-a").rk()).await;
    let (second_id, second_key) =
        make_credential(&core, "alice", &Mc::new(RP, b"handle-b").rk()).await;
    // Neither a non-discoverable credential nor another RP's shows up.
    make_credential(&core, "alice", &Mc::new(RP, b"handle-c")).await;
    make_credential(
        &core,
        "alice",
        &Mc::new("other.example.com", b"handle-d").rk(),
    )
    .await;

    let cdh = [0xAB; 32];
    let reply = core
        .ctap(call("alice", get_assertion_message(RP, &cdh, &[])))
        .await;
    verify_assertion(&second_key, &reply, &cdh);
    let response = decode_get_assertion(&reply);
    assert_eq!(response.number_of_credentials, Some(2));
    assert_eq!(
        response.credential.unwrap().id.as_slice(),
        second_id.as_slice()
    );
    let user = response.user.expect("discoverable: user");
    assert_eq!(user.id.as_slice(), b"handle-b");
    assert_eq!(user.name, None, "no names without user verification");

    let reply = core.ctap(call("alice", vec![0x08])).await;
    verify_assertion(&first_key, &reply, &cdh);
    let response = decode_get_assertion(&reply);
    assert_eq!(response.number_of_credentials, None);
    assert_eq!(
        response.credential.unwrap().id.as_slice(),
        first_id.as_slice()
    );
    assert_eq!(response.user.unwrap().id.as_slice(), b"handle-a");

    assert_eq!(core.ctap(call("alice", vec![0x08])).await.status(), 0x30);
}

#[tokio::test]
async fn get_next_assertion_needs_a_preceding_get_assertion() {
    let db = TempDb::new();
    let core = open(&db).await;
    assert_eq!(core.ctap(call("alice", vec![0x08])).await.status(), 0x30);

    make_credential(&core, "alice", &Mc::new(RP, b"handle-a").rk()).await;
    make_credential(&core, "alice", &Mc::new(RP, b"handle-b").rk()).await;
    let reply = core
        .ctap(call("alice", get_assertion_message(RP, &[1; 32], &[])))
        .await;
    assert_eq!(decode_get_assertion(&reply).number_of_credentials, Some(2));
    // Any other command ends the enumeration (CTAP 2.1 §6.3).
    assert_ok(&core.ctap(call("alice", vec![0x04])).await);
    assert_eq!(core.ctap(call("alice", vec![0x08])).await.status(), 0x30);
}

#[tokio::test]
async fn no_credentials_answers_0x2e() {
    let db = TempDb::new();
    let core = open(&db).await;
    assert_eq!(
        core.ctap(call("alice", get_assertion_message(RP, &[0; 32], &[])))
            .await
            .status(),
        0x2E
    );
    let (id, _) = make_credential(&core, "alice", &Mc::new(RP, b"user-1")).await;
    // Unknown id; a known id for the wrong RP; another user's credential.
    for (user, rp, allow) in [
        ("alice", RP, vec![7u8; 32]),
        ("alice", "other.example.com", id.clone()),
        ("bob", RP, id.clone()),
    ] {
        let reply = core
            .ctap(call(user, get_assertion_message(rp, &[0; 32], &[allow])))
            .await;
        assert_eq!(reply.status(), 0x2E, "{user} {rp}");
    }
    // A non-discoverable credential is not found without an allowList.
    let reply = core
        .ctap(call("alice", get_assertion_message(RP, &[0; 32], &[])))
        .await;
    assert_eq!(reply.status(), 0x2E);
}

#[tokio::test]
async fn malformed_cbor_answers_invalid_cbor() {
    let db = TempDb::new();
    let core = open(&db).await;
    let valid = Mc::new(RP, b"user-1").message();
    let truncated = valid[..valid.len() / 2].to_vec();
    let mut trailing = valid.clone();
    trailing.push(0x00);
    let garbage = vec![0x01, 0xFF, 0xFF, 0xFF];
    // A map announcing 5 entries and holding one.
    let short_map = vec![0x02, 0xA5, 0x01, 0x61, b'x'];
    for payload in [truncated, trailing, garbage, short_map] {
        let reply = core.ctap(call("alice", payload.clone())).await;
        assert_eq!(reply.status(), 0x12, "{payload:02X?}");
    }
}

#[tokio::test]
async fn missing_parameters_answer_0x14() {
    let db = TempDb::new();
    let core = open(&db).await;
    let mc = Mc::new(RP, b"user-1");

    let without_client_data_hash: Vec<_> = mc.params().into_iter().skip(1).collect();
    let mut rp_without_id = mc.params();
    rp_without_id[1].1 = Value::Map(vec![(text("name"), text("Example"))]);
    let cases = [
        message(0x01, without_client_data_hash),
        message(0x01, rp_without_id),
        vec![0x01],
        message(0x02, vec![(int(2), Value::Bytes(vec![0; 32]))]),
    ];
    for payload in cases {
        let reply = core.ctap(call("alice", payload.clone())).await;
        assert_eq!(reply.status(), 0x14, "{payload:02X?}");
    }
}

#[tokio::test]
async fn wrong_types_answer_0x11() {
    let db = TempDb::new();
    let core = open(&db).await;
    let mc = Mc::new(RP, b"user-1");

    let mut text_hash = mc.params();
    text_hash[0].1 = text("not bytes");
    let mut numeric_rp_id = mc.params();
    numeric_rp_id[1].1 = Value::Map(vec![(text("id"), int(5))]);
    let mut exclude_not_array = mc.params();
    exclude_not_array.push((int(5), int(1)));
    let mut top_level_array = vec![0x01];
    ciborium::ser::into_writer(&Value::Array(vec![int(1)]), &mut top_level_array).unwrap();
    let cases = [
        message(0x01, text_hash),
        message(0x01, numeric_rp_id),
        message(0x01, exclude_not_array),
        top_level_array,
        message(
            0x02,
            vec![(int(1), int(3)), (int(2), Value::Bytes(vec![0; 32]))],
        ),
    ];
    for payload in cases {
        let reply = core.ctap(call("alice", payload.clone())).await;
        assert_eq!(reply.status(), 0x11, "{payload:02X?}");
    }
}

#[tokio::test]
async fn commands_without_an_implementation() {
    let db = TempDb::new();
    let core = open(&db).await;
    for (payload, status) in [
        (vec![], 0x01),     // empty message
        (vec![0x42], 0x01), // unknown command
        (vec![0x06], 0x14), // authenticatorClientPIN without its subCommand
        (vec![0x07], 0x27), // authenticatorReset: the panel resets keys
        (vec![0x0B], 0x00), // authenticatorSelection
    ] {
        let reply = core.ctap(call("alice", payload.clone())).await;
        assert_eq!(reply.status(), status, "{payload:02X?}");
        assert_eq!(reply.payload.len(), 1);
    }
}

#[tokio::test]
async fn options_the_key_cannot_honour() {
    let db = TempDb::new();
    let core = open(&db).await;
    make_credential(&core, "alice", &Mc::new(RP, b"user-1").rk()).await;

    // uv=true with nobody to verify the user yet (no OBR session, no
    // device approval): the owner is asked first (empty payload).
    let mut uv = Mc::new(RP, b"user-2");
    uv.uv = true;
    let asked = core.ctap(unapproved_call("alice", uv.message())).await;
    assert!(asked.payload.is_empty());
    assert!(asked.approval_needed.is_some_and(|a| a.user_verification));
    // up=false on makeCredential: CTAP2_ERR_INVALID_OPTION.
    let mut up_false = Mc::new(RP, b"user-2").params();
    up_false.push((int(7), Value::Map(vec![(text("up"), Value::Bool(false))])));
    assert_eq!(
        core.ctap(call("alice", message(0x01, up_false)))
            .await
            .status(),
        0x2C
    );
    // rk on getAssertion: CTAP2_ERR_UNSUPPORTED_OPTION.
    let rk = message(
        0x02,
        vec![
            (int(1), text(RP)),
            (int(2), Value::Bytes(vec![0; 32])),
            (int(5), Value::Map(vec![(text("rk"), Value::Bool(true))])),
        ],
    );
    assert_eq!(core.ctap(call("alice", rk)).await.status(), 0x2B);
    // pinUvAuthParam: empty (a touch probe) is PIN_NOT_SET; without its
    // protocol MISSING_PARAMETER; an unsupported protocol
    // INVALID_PARAMETER; a supported one cannot match a token that was
    // never issued: PIN_AUTH_INVALID (tokens: `tokens.rs`).
    for (param, protocol, status) in [
        (vec![], Some(1), 0x35),
        (vec![0; 16], None, 0x14),
        (vec![0; 16], Some(3), 0x02),
        (vec![0; 16], Some(1), 0x33),
        (vec![0; 32], Some(2), 0x33),
    ] {
        let mut pin = Mc::new(RP, b"user-2").params();
        pin.push((int(8), Value::Bytes(param)));
        if let Some(protocol) = protocol {
            pin.push((int(9), int(protocol)));
        }
        let reply = core.ctap(call("alice", message(0x01, pin))).await;
        assert_eq!(reply.status(), status, "protocol {protocol:?}");
    }
    // up=false on getAssertion: a silent assertion without UP.
    let silent = message(
        0x02,
        vec![
            (int(1), text(RP)),
            (int(2), Value::Bytes(vec![0; 32])),
            (int(5), Value::Map(vec![(text("up"), Value::Bool(false))])),
        ],
    );
    let reply = core.ctap(call("alice", silent)).await;
    assert_eq!(
        decode_get_assertion(&reply).auth_data.flags,
        Flags::BE | Flags::BS
    );
}

#[tokio::test]
async fn on_behalf_calls_verify_the_user_when_asked_and_record_the_admin() {
    let db = TempDb::new();
    let core = open(&db).await;
    let mut mc = Mc::new(RP, b"user-1").rk();
    mc.uv = true; // accepted: the OBR session stands for UV
    let reply = core.ctap(obr_call("alice", mc.message())).await;
    let response = decode_make_credential(&reply);
    assert_eq!(
        response.auth_data.flags,
        Flags::UP | Flags::UV | Flags::BE | Flags::BS | Flags::AT
    );
    let created = reply.created.expect("created");
    assert!(created.discoverable);
    // Unasked, an OBR call does not claim UV.
    let reply = core
        .ctap(obr_call(
            "alice",
            Mc::new("self.example.com", b"user-1").message(),
        ))
        .await;
    assert!(
        !decode_make_credential(&reply)
            .auth_data
            .flags
            .contains(Flags::UV)
    );

    let listed = core.list_credentials("alice").await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].credential_id, created.credential_id);
    assert_eq!(listed[0].created_by_admin.as_deref(), Some("admin-7"));
    assert_eq!(listed[0].obr_session_id.as_deref(), Some("obr-session-42"));
    assert!(listed[0].discoverable);
    assert_eq!(listed[0].user_handle, b"user-1");
    make_credential(&core, "alice", &Mc::new("own.example.com", b"user-1")).await;
    let listed = core.list_credentials("alice").await.unwrap();
    assert_eq!(
        listed[2].created_by_admin, None,
        "the owner's own credential"
    );
    assert_eq!(listed[2].obr_session_id, None);

    // An OBR assertion that asks for UV is verified and names the user.
    let uv_assertion = message(
        0x02,
        vec![
            (int(1), text(RP)),
            (int(2), Value::Bytes(vec![3; 32])),
            (int(5), Value::Map(vec![(text("uv"), Value::Bool(true))])),
        ],
    );
    let reply = core.ctap(obr_call("alice", uv_assertion.clone())).await;
    let response = decode_get_assertion(&reply);
    assert!(response.auth_data.flags.contains(Flags::UV));
    let user = response.user.unwrap();
    assert_eq!(user.name.as_deref(), Some("alice@example.com"));
    assert_eq!(user.display_name.as_deref(), Some("Alice"));
    // Outside OBR, without the user's device approval, the same request
    // waits for the owner: the relay must ask their device.
    let asked = core.ctap(unapproved_call("alice", uv_assertion)).await;
    assert!(asked.payload.is_empty());
    assert_eq!(asked.approval_needed.map(|a| a.rp_id), Some(RP.to_owned()));
    // Without the uv option, neither an OBR nor an own assertion has UV.
    for reply in [
        core.ctap(obr_call("alice", get_assertion_message(RP, &[3; 32], &[])))
            .await,
        core.ctap(call("alice", get_assertion_message(RP, &[3; 32], &[])))
            .await,
    ] {
        let response = decode_get_assertion(&reply);
        assert!(!response.auth_data.flags.contains(Flags::UV));
        assert_eq!(response.user.unwrap().name, None);
    }
}

#[tokio::test]
async fn a_discoverable_credential_replaces_the_one_for_the_same_rp_and_user() {
    let db = TempDb::new();
    let core = open(&db).await;
    let (old, _) = make_credential(&core, "alice", &Mc::new(RP, b"user-1").rk()).await;
    let (new, _) = make_credential(&core, "alice", &Mc::new(RP, b"user-1").rk()).await;
    let listed = core.list_credentials("alice").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].credential_id, new);
    assert_ne!(old, new);
}

#[tokio::test]
async fn deleted_credentials_are_gone() {
    let db = TempDb::new();
    let core = open(&db).await;
    let (id, _) = make_credential(&core, "alice", &Mc::new(RP, b"user-1")).await;
    assert!(
        !core.delete_credential("bob", &id).await.unwrap(),
        "not bob's"
    );
    assert!(core.delete_credential("alice", &id).await.unwrap());
    assert!(!core.delete_credential("alice", &id).await.unwrap());
    assert!(core.list_credentials("alice").await.unwrap().is_empty());
    let reply = core
        .ctap(call("alice", get_assertion_message(RP, &[0; 32], &[id])))
        .await;
    assert_eq!(reply.status(), 0x2E);

    assert!(matches!(
        core.delete_credential("alice", &[]).await,
        Err(obr_signer::SignerError::InvalidArgument(_))
    ));
    assert!(matches!(
        core.list_credentials("").await,
        Err(obr_signer::SignerError::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn a_call_past_its_deadline_times_out() {
    let db = TempDb::new();
    let core = open(&db).await;
    let mut expired = call("alice", Mc::new(RP, b"user-1").message());
    expired.deadline = tokio::time::Instant::now();
    assert_eq!(core.ctap(expired).await.status(), 0x2F);
    assert!(core.list_credentials("alice").await.unwrap().is_empty());
}

#[tokio::test]
async fn bad_calls_are_status_codes_not_errors() {
    let db = TempDb::new();
    let core = open(&db).await;
    assert_eq!(core.ctap(call("", vec![0x04])).await.status(), 0x02);
    assert_eq!(
        core.ctap(call(&"u".repeat(300), vec![0x04])).await.status(),
        0x02
    );
    let oversized = vec![0x01; obr_proto::MAX_CTAP_MESSAGE + 1];
    assert_eq!(core.ctap(call("alice", oversized)).await.status(), 0x03);
}

#[tokio::test]
async fn idle_actors_passivate() {
    let db = TempDb::new();
    let core = obr_signer::SignerCore::open(obr_signer::SignerConfig {
        idle_passivation: Duration::from_millis(50),
        ..config(&db)
    })
    .await
    .unwrap();
    make_credential(&core, "alice", &Mc::new(RP, b"user-1")).await;
    // The actor runs on its own runtime with real time: poll, bounded.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(5);
    while core.active_users() > 0 {
        assert!(
            tokio::time::Instant::now() < give_up,
            "actor never passivated"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A passivated user activates again on the next call, state intact.
    let listed = core.list_credentials("alice").await.unwrap();
    assert_eq!(listed.len(), 1);
    let allow = [listed[0].credential_id.clone()];
    let reply = core
        .ctap(call("alice", get_assertion_message(RP, &[0; 32], &allow)))
        .await;
    assert_ok(&reply);
    assert_eq!(core.active_users(), 1);
    core.shutdown().await;
    assert_eq!(core.ctap(call("alice", vec![0x04])).await.status(), 0x7F);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_from_many_tasks_are_serialized_per_user() {
    let db = TempDb::new();
    let core = open(&db).await;
    let (id, public_key) = make_credential(&core, "alice", &Mc::new(RP, b"user-1")).await;

    let mut tasks = tokio::task::JoinSet::new();
    for round in 0u8..16 {
        let (core, id, public_key) = (core.clone(), id.clone(), public_key.clone());
        tasks.spawn(async move {
            let cdh = [round; 32];
            let reply = core
                .ctap(call("alice", get_assertion_message(RP, &cdh, &[id])))
                .await;
            verify_assertion(&public_key, &reply, &cdh);
            decode_get_assertion(&reply).auth_data.counter.unwrap()
        });
    }
    for user in 0..8 {
        let core = core.clone();
        tasks.spawn(async move {
            let reply = core
                .ctap(call(
                    &format!("user-{user}"),
                    Mc::new(RP, b"handle").message(),
                ))
                .await;
            assert_ok(&reply);
            0
        });
    }
    let mut counters: Vec<u32> = tasks
        .join_all()
        .await
        .into_iter()
        .filter(|&c| c > 0)
        .collect();
    counters.sort_unstable();
    assert_eq!(counters, (1..=16).collect::<Vec<u32>>());
}
