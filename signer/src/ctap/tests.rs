//! The codec's error classification and canonical encoding, and
//! authenticator state that the public API cannot reach (the getNextAssertion
//! window, name truncation).

use std::time::Duration;

use ciborium::value::Value;

use super::codec::{DecodeError, Kind, Param, Params, encode_ok};
use super::*;
use crate::config::DEFAULT_AAGUID;

/// The key's owner, having approved on their phone (normal mode).
fn owner() -> Caller<'static> {
    static PHONE: std::sync::LazyLock<UserApproval> =
        std::sync::LazyLock::new(|| UserApproval::granted_by_device("phone"));
    Caller {
        obr: None,
        approval: Some(&PHONE),
        ..Caller::default()
    }
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

fn int(i: i64) -> Value {
    Value::Integer(i.into())
}

fn cbor(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(value, &mut out).unwrap();
    out
}

const SCHEMA: &[Param] = &[
    Param::required(1, Kind::Bytes),
    Param::required(2, Kind::Map),
    Param::optional(3, Kind::Array),
];

fn parse(value: &Value) -> Result<Params, DecodeError> {
    Params::parse(&cbor(value), SCHEMA)
}

fn valid() -> Vec<(Value, Value)> {
    vec![
        (int(1), Value::Bytes(vec![1, 2, 3])),
        (int(2), Value::Map(vec![(text("id"), text("rp.example"))])),
    ]
}

#[test]
fn well_formed_parameters_pass_the_schema() {
    let params = parse(&Value::Map(valid())).unwrap();
    assert_eq!(params.get(1), Some(&Value::Bytes(vec![1, 2, 3])));
    assert_eq!(params.get(3), None);
}

#[test]
fn malformed_cbor_is_invalid_cbor() {
    let mut trailing = cbor(&Value::Map(valid()));
    trailing.push(0);
    let full = cbor(&Value::Map(valid()));
    let truncated = &full[..full.len() - 1];
    // 0xFF (a lone "break"), and a reserved additional-information value.
    for body in [&[0xFF][..], &[0x1C], truncated, &trailing] {
        assert_eq!(
            Params::parse(body, SCHEMA).unwrap_err(),
            DecodeError::Malformed,
            "{body:02X?}"
        );
    }
    let mut duplicate = valid();
    duplicate.push((int(1), Value::Bytes(vec![9])));
    assert_eq!(
        parse(&Value::Map(duplicate)).unwrap_err(),
        DecodeError::Malformed
    );
}

#[test]
fn absent_required_parameters_are_missing() {
    assert_eq!(
        Params::parse(&[], SCHEMA).unwrap_err(),
        DecodeError::MissingParameter
    );
    let without_2 = valid().into_iter().take(1).collect();
    assert_eq!(
        parse(&Value::Map(without_2)).unwrap_err(),
        DecodeError::MissingParameter
    );
}

#[test]
fn wrong_major_types_are_unexpected() {
    assert_eq!(
        parse(&Value::Array(vec![])).unwrap_err(),
        DecodeError::UnexpectedType
    );
    let mut text_hash = valid();
    text_hash[0].1 = text("abc");
    assert_eq!(
        parse(&Value::Map(text_hash)).unwrap_err(),
        DecodeError::UnexpectedType
    );
    let mut optional_wrong = valid();
    optional_wrong.push((int(3), int(0)));
    assert_eq!(
        parse(&Value::Map(optional_wrong)).unwrap_err(),
        DecodeError::UnexpectedType
    );
}

#[test]
fn nested_failures_are_told_apart_by_serde() {
    #[derive(Debug, serde::Deserialize)]
    struct Rp {
        #[expect(dead_code, reason = "only decoding is tested")]
        id: String,
    }
    let decode =
        |rp: Value| -> Result<Rp, DecodeError> { Params::parse(&cbor(&rp), &[])?.decode::<Rp>() };
    assert!(decode(Value::Map(vec![(text("id"), text("x"))])).is_ok());
    assert_eq!(
        decode(Value::Map(vec![(text("name"), text("x"))])).unwrap_err(),
        DecodeError::MissingParameter
    );
    assert_eq!(
        decode(Value::Map(vec![(text("id"), int(1))])).unwrap_err(),
        DecodeError::UnexpectedType
    );
}

#[test]
fn each_decode_error_has_its_status() {
    assert_eq!(DecodeError::Malformed.status(), Ctap2Error::InvalidCbor);
    assert_eq!(
        DecodeError::UnexpectedType.status(),
        Ctap2Error::CborUnexpectedType
    );
    assert_eq!(
        DecodeError::MissingParameter.status(),
        Ctap2Error::MissingParameter
    );
}

#[test]
fn responses_are_canonical_cbor() {
    let value = Value::Map(vec![
        (text("type"), text("public-key")),
        (text("aa"), int(0)),
        (int(-1), int(0)),
        (int(10), int(0)),
        (
            int(1),
            Value::Map(vec![(text("up"), int(1)), (text("a"), int(2))]),
        ),
    ]);
    let encoded = encode_ok(&value).unwrap();
    assert_eq!(encoded[0], 0x00);
    let decoded: Value = ciborium::de::from_reader(&encoded[1..]).unwrap();
    let expected = Value::Map(vec![
        (
            int(1),
            Value::Map(vec![(text("a"), int(2)), (text("up"), int(1))]),
        ),
        (int(10), int(0)),
        (int(-1), int(0)),
        (text("aa"), int(0)),
        (text("type"), text("public-key")),
    ]);
    assert_eq!(decoded, expected);
}

async fn authenticator() -> Authenticator {
    let store = Store::open("sqlite::memory:", 1).await.unwrap();
    let shared = Shared::new(
        store,
        Kek::from_bytes([3; 32]),
        DEFAULT_AAGUID,
        Attestation::None,
    )
    .unwrap();
    Authenticator::new(UserId::new("alice").unwrap(), Arc::new(shared))
}

fn make_credential(handle: &[u8], name: &str) -> Vec<u8> {
    command(CMD_MAKE_CREDENTIAL, make_credential_params(handle, name))
}

fn command(byte: u8, params: Vec<(Value, Value)>) -> Vec<u8> {
    let mut message = vec![byte];
    message.extend(cbor(&Value::Map(params)));
    message
}

fn make_credential_params(handle: &[u8], name: &str) -> Vec<(Value, Value)> {
    vec![
        (int(1), Value::Bytes(vec![0; 32])),
        (int(2), Value::Map(vec![(text("id"), text("rp.example"))])),
        (
            int(3),
            Value::Map(vec![
                (text("id"), Value::Bytes(handle.to_vec())),
                (text("name"), text(name)),
            ]),
        ),
        (
            int(4),
            Value::Array(vec![Value::Map(vec![
                (text("alg"), int(-7)),
                (text("type"), text("public-key")),
            ])]),
        ),
        (int(7), Value::Map(vec![(text("rk"), Value::Bool(true))])),
    ]
}

fn get_assertion() -> Vec<u8> {
    let params = Value::Map(vec![
        (int(1), text("rp.example")),
        (int(2), Value::Bytes(vec![0; 32])),
    ]);
    let mut message = vec![CMD_GET_ASSERTION];
    message.extend(cbor(&params));
    message
}

#[tokio::test]
async fn get_next_assertion_expires_thirty_seconds_after_the_last_assertion() {
    let mut authenticator = authenticator().await;
    for handle in [b"a", b"b"] {
        let outcome = authenticator
            .handle(&make_credential(handle, "x"), owner())
            .await;
        assert_eq!(outcome.payload[0], STATUS_OK);
    }
    let outcome = authenticator.handle(&get_assertion(), owner()).await;
    assert_eq!(outcome.payload[0], STATUS_OK);
    let pending = authenticator.pending.as_mut().expect("enumeration state");
    let window = pending.expires_at - tokio::time::Instant::now();
    assert!(window > Duration::from_secs(29) && window <= Duration::from_secs(30));

    // 30 s later (time moved by hand: the store's I/O runs on real threads).
    pending.expires_at = tokio::time::Instant::now() - Duration::from_millis(1);
    let outcome = authenticator
        .handle(&[CMD_GET_NEXT_ASSERTION], owner())
        .await;
    assert_eq!(outcome.payload, vec![u8::from(Ctap2Error::NotAllowed)]);
    assert!(
        authenticator.pending.is_none(),
        "expired state is discarded"
    );
}

#[tokio::test]
async fn long_names_are_truncated_on_a_character_boundary() {
    let mut authenticator = authenticator().await;
    // 40 two-byte characters: 80 bytes; 64 bytes is 32 characters.
    let name = "é".repeat(40);
    let outcome = authenticator
        .handle(&make_credential(b"h", &name), owner())
        .await;
    let created = outcome.created.expect("created");
    assert_eq!(created.user_name, "é".repeat(32));
    // No displayName was sent (CTAP 2.1 makes it optional).
    assert_eq!(created.user_display_name, "");
}

#[tokio::test]
async fn a_user_handle_longer_than_64_bytes_is_refused() {
    let mut authenticator = authenticator().await;
    let outcome = authenticator
        .handle(&make_credential(&[7; 65], "x"), owner())
        .await;
    assert_eq!(outcome.payload, vec![u8::from(Ctap2Error::InvalidLength)]);
    assert!(!outcome.fenced);
}

mod pin_uv_auth_protocols {
    //! CTAP 2.1 §6.5.6/§6.5.7 from both ends: the platform half in
    //! `client_pin::test_support`, the authenticator half under test.

    use super::super::client_pin::test_support::{authenticate, encapsulate, public_cose};
    use super::super::client_pin::{KeyAgreementKey, PinUvAuthProtocol, SharedSecret};
    use super::*;

    fn key_agreement() -> (KeyAgreementKey, Value) {
        let key = KeyAgreementKey::generate(&SystemRandom::new()).unwrap();
        let cose = public_cose(&key);
        (key, cose)
    }

    #[test]
    fn both_protocols_agree_encrypt_and_authenticate_like_a_platform() {
        let rng = SystemRandom::new();
        for protocol in [PinUvAuthProtocol::One, PinUvAuthProtocol::Two] {
            let (key, cose) = key_agreement();
            let (platform_key, platform) = encapsulate(protocol, &cose, &rng);
            let ours = SharedSecret::decapsulate(protocol, &key, &platform_key).unwrap();

            let message = [0x42u8; 64];
            let ciphertext = platform.encrypt(&message, &rng).unwrap();
            assert_eq!(
                ciphertext.len(),
                match protocol {
                    PinUvAuthProtocol::One => 64,
                    PinUvAuthProtocol::Two => 80,
                }
            );
            assert_eq!(ours.decrypt(&ciphertext).unwrap().as_slice(), &message);
            let mac = authenticate(&platform, &ciphertext);
            assert!(ours.verify(&ciphertext, &mac));
            // A MAC of the other protocol's length, or one bit off, fails.
            assert!(!ours.verify(&ciphertext, &mac[..mac.len() / 2]));
            let mut flipped = mac.clone();
            flipped[0] ^= 1;
            assert!(!ours.verify(&ciphertext, &flipped));
            // Not whole blocks.
            assert_eq!(
                ours.decrypt(&ciphertext[..ciphertext.len() - 1])
                    .unwrap_err()
                    .status(),
                Ctap2Error::InvalidLength
            );
        }
    }

    #[test]
    fn the_key_agreement_key_agrees_with_many_platforms() {
        // §6.5.6: the authenticator's key serves every agreement until it
        // is regenerated (python-fido2 agrees twice before using either).
        let rng = SystemRandom::new();
        let (key, cose) = key_agreement();
        for protocol in [PinUvAuthProtocol::One, PinUvAuthProtocol::Two] {
            let platforms: Vec<_> = (0..3).map(|_| encapsulate(protocol, &cose, &rng)).collect();
            for (platform_key, platform) in &platforms {
                let ours = SharedSecret::decapsulate(protocol, &key, platform_key).unwrap();
                let message = [7u8; 32];
                assert!(ours.verify(&message, &authenticate(platform, &message)));
            }
        }
    }

    #[test]
    fn a_peer_key_that_is_not_a_p256_point_is_an_invalid_parameter() {
        let (_, cose) = key_agreement();
        let with = |label: i64, value: Value| {
            let Value::Map(mut members) = cose.clone() else {
                unreachable!()
            };
            members.retain(|(k, _)| *k != int(label));
            members.push((int(label), value));
            Value::Map(members)
        };
        for (peer, status) in [
            (
                with(-2, Value::Bytes(vec![0; 32])),
                Ctap2Error::InvalidParameter,
            ),
            (
                with(-2, Value::Bytes(vec![1; 31])),
                Ctap2Error::InvalidParameter,
            ),
            (with(-1, int(6)), Ctap2Error::InvalidParameter),
            (with(1, int(1)), Ctap2Error::InvalidParameter),
            (with(-3, text("y")), Ctap2Error::CborUnexpectedType),
            (int(3), Ctap2Error::CborUnexpectedType),
            (
                Value::Map(vec![(int(1), int(2))]),
                Ctap2Error::MissingParameter,
            ),
        ] {
            let (key, _) = key_agreement();
            let error = SharedSecret::decapsulate(PinUvAuthProtocol::Two, &key, &peer).unwrap_err();
            assert_eq!(error.status(), status, "{peer:?}");
        }
    }

    #[test]
    fn only_protocols_one_and_two_exist() {
        assert!(PinUvAuthProtocol::from_wire(1).is_ok());
        assert!(PinUvAuthProtocol::from_wire(2).is_ok());
        for other in [0, 3, u64::MAX] {
            assert_eq!(
                PinUvAuthProtocol::from_wire(other).unwrap_err().status(),
                Ctap2Error::InvalidParameter
            );
        }
    }
}

mod policies {
    use super::super::extensions::{CredProtect, CredRandom};
    use super::*;

    #[test]
    fn cred_protect_follows_the_spec_table() {
        // (level, user verified, by allowList) -> usable (CTAP 2.1 §12.1).
        for (level, uv, listed, usable) in [
            (CredProtect::Optional, false, false, true),
            (CredProtect::Optional, false, true, true),
            (
                CredProtect::OptionalWithCredentialIdList,
                false,
                false,
                false,
            ),
            (CredProtect::OptionalWithCredentialIdList, false, true, true),
            (CredProtect::OptionalWithCredentialIdList, true, false, true),
            (CredProtect::Required, false, true, false),
            (CredProtect::Required, false, false, false),
            (CredProtect::Required, true, false, true),
            (CredProtect::Required, true, true, true),
        ] {
            assert_eq!(level.permits(uv, listed), usable, "{level:?} {uv} {listed}");
        }
        // Unknown stored levels are treated as the strictest.
        assert_eq!(CredProtect::from_stored(0), CredProtect::Required);
        assert_eq!(CredProtect::from_stored(9), CredProtect::Required);
        for level in [1, 2, 3] {
            assert_eq!(CredProtect::from_stored(level).level(), level);
        }
    }

    #[test]
    fn cred_randoms_are_64_bytes_and_their_binding_is_no_credential_id() {
        let random = CredRandom::generate(&SystemRandom::new()).unwrap();
        assert_eq!(random.as_bytes().len(), 64);
        assert!(CredRandom::from_unwrapped(zeroize::Zeroizing::new(vec![0; 63])).is_none());
        assert!(format!("{random:?}").ends_with("(..)"));
        let id = CredentialId::new(vec![7; 32]).unwrap();
        let binding = cred_random_binding(&id).unwrap();
        assert_ne!(binding.as_bytes().len(), crate::ids::CREDENTIAL_ID_LEN);
        assert!(binding.as_bytes().starts_with(id.as_bytes()));
    }

    #[test]
    fn pin_uv_auth_params_are_checked_with_the_specs_codes() {
        let param = |bytes: &[u8]| Some(passkey_types::Bytes::from(bytes.to_vec()));
        // Steps 1–2 of §6.1.2 / §6.2.2.
        for (p, protocol, status) in [
            (param(&[]), Some(1), Ctap2Error::PinNotSet),
            (param(&[1; 16]), None, Ctap2Error::MissingParameter),
            (param(&[1; 16]), Some(7), Ctap2Error::InvalidParameter),
        ] {
            let error = pin_uv_auth_request(p.as_ref(), protocol).unwrap_err();
            assert_eq!(error.status(), status);
        }
        assert!(pin_uv_auth_request(None, Some(1)).unwrap().is_none());
        let p = param(&[1; 32]);
        let auth = pin_uv_auth_request(p.as_ref(), Some(2)).unwrap().unwrap();
        assert_eq!(auth.protocol, PinUvAuthProtocol::Two);
        assert_eq!(auth.param, &[1; 32]);
    }

    #[test]
    fn normal_mode_needs_the_owners_approval_for_presence_or_verification() {
        let obr = ObrActing {
            admin_id: "a".to_owned(),
            obr_session_id: "s".to_owned(),
        };
        let approval = UserApproval::granted_by_device("phone");
        // Verified exactly when asked (the consent check decides whether
        // the call may go ahead at all).
        assert!(Caller::default().verified(true).unwrap());
        assert!(!Caller::default().verified(false).unwrap());
        // A silent pre-flight needs nobody.
        assert!(
            Caller::default()
                .require_consent(false, false, "rp.example", Operation::SignIn)
                .is_ok()
        );
        // Presence or verification in normal mode: ask the owner.
        for (up, uv) in [(true, false), (false, true), (true, true)] {
            match Caller::default().require_consent(up, uv, "rp.example", Operation::SignIn) {
                Err(CommandError::ApprovalNeeded(needed)) => {
                    assert_eq!(needed.rp_id, "rp.example");
                    assert_eq!(needed.operation, Operation::SignIn);
                    assert_eq!(needed.user_verification, uv);
                }
                other => panic!("expected an approval request, got {other:?}"),
            }
        }
        // An OBR session or the owner's approval stands for both.
        for caller in [
            Caller {
                obr: Some(&obr),
                ..Caller::default()
            },
            Caller {
                approval: Some(&approval),
                ..Caller::default()
            },
        ] {
            assert!(
                caller
                    .require_consent(true, true, "rp.example", Operation::Register)
                    .is_ok()
            );
        }
        // Policy may forbid the OBR session standing for verification.
        let forbidden = Caller {
            obr: Some(&obr),
            obr_uv_forbidden: true,
            ..Caller::default()
        };
        assert_eq!(
            forbidden.verified(true).unwrap_err().status(),
            Ctap2Error::OperationDenied
        );
        assert!(!forbidden.verified(false).unwrap());
    }
}

mod tokens {
    //! The pinUvAuthToken's life (CTAP 2.1 §6.5.2.1: initial usage time
    //! limit, user present time limit, max usage time period) with time
    //! moved by hand, and who may use a token.

    use ring::hmac;

    use super::super::client_pin::test_support::encapsulate;
    use super::super::pin_uv_auth_token::{
        Holder, INITIAL_USAGE_TIME_LIMIT, MAX_USAGE_TIME_PERIOD, Permissions, PinUvAuthToken,
        USER_PRESENT_TIME_LIMIT,
    };
    use super::*;

    /// The on-behalf sessions' token slot.
    fn on_behalf_token(authenticator: &mut Authenticator) -> &mut Option<PinUvAuthToken> {
        authenticator.tokens.slot(&Holder::Obr {
            session_id: String::new(),
        })
    }

    /// The owner's token slot.
    fn owner_token(authenticator: &mut Authenticator) -> &mut Option<PinUvAuthToken> {
        authenticator.tokens.slot(&Holder::Owner)
    }

    const RP: &str = "rp.example";
    const CLIENT_DATA_HASH: [u8; 32] = [0x5C; 32];

    fn session(id: &str) -> ObrActing {
        ObrActing {
            admin_id: "admin".to_owned(),
            obr_session_id: id.to_owned(),
        }
    }

    fn on_behalf(obr: &ObrActing) -> Caller<'_> {
        Caller {
            obr: Some(obr),
            ..Caller::default()
        }
    }

    fn number(protocol: PinUvAuthProtocol) -> i64 {
        match protocol {
            PinUvAuthProtocol::One => 1,
            PinUvAuthProtocol::Two => 2,
        }
    }

    /// Member `key` of a successful answer.
    fn member(payload: &[u8], key: i64) -> Value {
        assert_eq!(payload.first(), Some(&STATUS_OK), "status {payload:02X?}");
        let Value::Map(members) = ciborium::de::from_reader(&payload[1..]).unwrap() else {
            panic!("not a map");
        };
        members
            .into_iter()
            .find(|(k, _)| *k == int(key))
            .map(|(_, v)| v)
            .expect("member")
    }

    /// A platform's getKeyAgreement and getPinUvAuthTokenUsingUvWithPermissions:
    /// the token in clear, or the outcome when none was issued.
    async fn obtain(
        authenticator: &mut Authenticator,
        caller: Caller<'_>,
        protocol: PinUvAuthProtocol,
        permissions: i64,
        rp_id: Option<&str>,
    ) -> Result<Vec<u8>, Outcome> {
        let get_key = command(
            CMD_CLIENT_PIN,
            vec![(int(1), int(number(protocol))), (int(2), int(2))],
        );
        let outcome = authenticator.handle(&get_key, caller).await;
        let key = member(&outcome.payload, 1);
        let (platform_key, secret) = encapsulate(protocol, &key, &SystemRandom::new());
        let mut params = vec![
            (int(1), int(number(protocol))),
            (int(2), int(6)),
            (int(3), platform_key),
            (int(9), int(permissions)),
        ];
        if let Some(rp_id) = rp_id {
            params.push((int(0x0A), text(rp_id)));
        }
        let outcome = authenticator
            .handle(&command(CMD_CLIENT_PIN, params), caller)
            .await;
        if outcome.payload.first() != Some(&STATUS_OK) {
            return Err(outcome);
        }
        let Value::Bytes(encrypted) = member(&outcome.payload, 2) else {
            panic!("pinUvAuthToken not bytes");
        };
        Ok(secret.decrypt(&encrypted).unwrap().to_vec())
    }

    /// authenticate(token, clientDataHash) of `protocol`.
    fn pin_uv_auth_param(protocol: PinUvAuthProtocol, token: &[u8]) -> Value {
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, token), &CLIENT_DATA_HASH);
        let len = match protocol {
            PinUvAuthProtocol::One => 16,
            PinUvAuthProtocol::Two => 32,
        };
        Value::Bytes(tag.as_ref()[..len].to_vec())
    }

    /// getAssertion at [`RP`] with the token; `up` false is a silent
    /// pre-flight.
    fn get_assertion_with(protocol: PinUvAuthProtocol, token: &[u8], up: bool) -> Vec<u8> {
        let mut params = vec![
            (int(1), text(RP)),
            (int(2), Value::Bytes(CLIENT_DATA_HASH.to_vec())),
            (int(6), pin_uv_auth_param(protocol, token)),
            (int(7), int(number(protocol))),
        ];
        if !up {
            params.push((int(5), Value::Map(vec![(text("up"), Value::Bool(false))])));
        }
        command(CMD_GET_ASSERTION, params)
    }

    fn make_credential_with(protocol: PinUvAuthProtocol, token: &[u8]) -> Vec<u8> {
        let mut params = make_credential_params(b"token-user", "t");
        params[0] = (int(1), Value::Bytes(CLIENT_DATA_HASH.to_vec()));
        params.push((int(8), pin_uv_auth_param(protocol, token)));
        params.push((int(9), int(number(protocol))));
        command(CMD_MAKE_CREDENTIAL, params)
    }

    fn flags(outcome: &Outcome) -> Flags {
        let Value::Bytes(auth_data) = member(&outcome.payload, 2) else {
            panic!("authData not bytes");
        };
        AuthenticatorData::from_slice(&auth_data)
            .expect("authData")
            .flags
    }

    fn status(outcome: &Outcome) -> Option<Ctap2Error> {
        outcome
            .payload
            .first()
            .and_then(|&b| Ctap2Error::try_from(b).ok())
    }

    /// A getAssertion with `token` and no user presence, by `caller`.
    async fn silently(
        authenticator: &mut Authenticator,
        protocol: PinUvAuthProtocol,
        token: &[u8],
        caller: Caller<'_>,
    ) -> Outcome {
        let request = get_assertion_with(protocol, token, false);
        authenticator.handle(&request, caller).await
    }

    /// A fresh key, on-behalf session `s1`, and the protocol-two token it
    /// obtained with `permissions` for [`RP`].
    async fn session_token(permissions: i64) -> (Authenticator, ObrActing, Vec<u8>) {
        let mut authenticator = authenticator().await;
        let obr = session("s1");
        let protocol = PinUvAuthProtocol::Two;
        let token = obtain(
            &mut authenticator,
            on_behalf(&obr),
            protocol,
            permissions,
            Some(RP),
        );
        let token = token.await.unwrap();
        (authenticator, obr, token)
    }

    #[tokio::test]
    async fn an_unused_token_ends_after_the_initial_usage_time_limit() {
        let (mut authenticator, obr, token) = session_token(0x01).await;
        on_behalf_token(&mut authenticator)
            .as_mut()
            .unwrap()
            .backdate(INITIAL_USAGE_TIME_LIMIT + Duration::from_millis(1));
        let outcome = authenticator
            .handle(
                &make_credential_with(PinUvAuthProtocol::Two, &token),
                on_behalf(&obr),
            )
            .await;
        assert_eq!(status(&outcome), Some(Ctap2Error::PinAuthInvalid));
        assert!(
            on_behalf_token(&mut authenticator).is_none(),
            "an ended token is forgotten"
        );
    }

    #[tokio::test]
    async fn presence_lasts_30_seconds_and_a_used_token_10_minutes() {
        let mut authenticator = authenticator().await;
        let outcome = authenticator
            .handle(&make_credential(b"h", "x"), owner())
            .await;
        assert_eq!(outcome.payload[0], STATUS_OK);
        // Normal mode: obtained with the owner's approval.
        let protocol = PinUvAuthProtocol::One;
        let token = obtain(&mut authenticator, owner(), protocol, 0x03, Some(RP))
            .await
            .unwrap();
        // Used in a silent pre-flight (no approval on the call: the token
        // verifies): UV without UP, and the token is now in use.
        let unapproved = Caller::default();
        let outcome = silently(&mut authenticator, protocol, &token, unapproved).await;
        assert_eq!(flags(&outcome), Flags::UV | Flags::BE | Flags::BS);
        // Past the user present time limit, the token still verifies but
        // no longer stands for presence: the owner is asked (for presence
        // only), and with their approval the call goes through.
        let token_state = owner_token(&mut authenticator).as_mut().unwrap();
        token_state.backdate(USER_PRESENT_TIME_LIMIT + Duration::from_secs(1));
        let sign_in = get_assertion_with(protocol, &token, true);
        let outcome = authenticator.handle(&sign_in, unapproved).await;
        let needed = outcome.approval_needed.expect("approval needed");
        assert!(!needed.user_verification, "the token verified the user");
        let outcome = authenticator.handle(&sign_in, owner()).await;
        assert_eq!(
            flags(&outcome),
            Flags::UP | Flags::UV | Flags::BE | Flags::BS
        );
        // Spent: §6.2.2 step 9.4 cleared its verification and permissions.
        let outcome = authenticator.handle(&sign_in, owner()).await;
        assert_eq!(status(&outcome), Some(Ctap2Error::PinAuthInvalid));

        // A used token ends at the max usage time period.
        let token = obtain(&mut authenticator, owner(), protocol, 0x02, Some(RP))
            .await
            .unwrap();
        let silent = get_assertion_with(protocol, &token, false);
        let outcome = authenticator.handle(&silent, unapproved).await;
        assert_eq!(outcome.payload[0], STATUS_OK);
        owner_token(&mut authenticator)
            .as_mut()
            .unwrap()
            .backdate(MAX_USAGE_TIME_PERIOD + Duration::from_secs(1));
        let outcome = authenticator.handle(&silent, unapproved).await;
        assert_eq!(status(&outcome), Some(Ctap2Error::PinAuthInvalid));
    }

    /// The owner signing in on their own workstation while an admin
    /// registers on their behalf: each gets a token, and neither request
    /// invalidates the other's (one slot per holder, not per key).
    #[tokio::test]
    async fn the_owners_token_and_an_on_behalf_token_live_side_by_side() {
        let mut authenticator = authenticator().await;
        let s1 = session("s1");
        let outcome = authenticator
            .handle(&make_credential(b"h", "x"), on_behalf(&s1))
            .await;
        assert_eq!(outcome.payload[0], STATUS_OK);
        let protocol = PinUvAuthProtocol::Two;
        let admins = obtain(&mut authenticator, on_behalf(&s1), protocol, 0x02, Some(RP))
            .await
            .unwrap();
        let owners = obtain(&mut authenticator, owner(), protocol, 0x02, Some(RP))
            .await
            .unwrap();
        let outcome = silently(&mut authenticator, protocol, &admins, on_behalf(&s1)).await;
        assert_eq!(
            outcome.payload[0], STATUS_OK,
            "the admin's token still works"
        );
        let outcome = silently(&mut authenticator, protocol, &owners, owner()).await;
        assert_eq!(outcome.payload[0], STATUS_OK, "the owner's token works");
        // Each holder's new request still replaces its own old token.
        let again = obtain(&mut authenticator, on_behalf(&s1), protocol, 0x02, Some(RP))
            .await
            .unwrap();
        let outcome = silently(&mut authenticator, protocol, &admins, on_behalf(&s1)).await;
        assert_eq!(status(&outcome), Some(Ctap2Error::PinAuthInvalid));
        let outcome = silently(&mut authenticator, protocol, &again, on_behalf(&s1)).await;
        assert_eq!(outcome.payload[0], STATUS_OK);
    }

    #[tokio::test]
    async fn a_token_serves_only_the_session_or_owner_that_obtained_it() {
        let mut authenticator = authenticator().await;
        let (s1, s2) = (session("s1"), session("s2"));
        let outcome = authenticator
            .handle(&make_credential(b"h", "x"), on_behalf(&s1))
            .await;
        assert_eq!(outcome.payload[0], STATUS_OK);
        let protocol = PinUvAuthProtocol::Two;
        let token = obtain(&mut authenticator, on_behalf(&s1), protocol, 0x02, None)
            .await
            .unwrap();
        let silent = get_assertion_with(protocol, &token, false);
        for other in [on_behalf(&s2), owner(), Caller::default()] {
            let outcome = authenticator.handle(&silent, other).await;
            assert_eq!(status(&outcome), Some(Ctap2Error::PinAuthInvalid));
        }
        // Taken from s1 (a silent lookup on behalf never claims UV).
        let outcome = authenticator.handle(&silent, on_behalf(&s1)).await;
        assert_eq!(outcome.payload[0], STATUS_OK);
        assert!(!flags(&outcome).contains(Flags::UV));
        // Obtained without an rpId: the first use associated this one.
        assert_eq!(
            on_behalf_token(&mut authenticator)
                .as_ref()
                .unwrap()
                .rp_id(),
            Some(RP)
        );
    }

    #[tokio::test]
    async fn token_bytes_never_show_in_debug_output() {
        let (authenticator, _, token) = session_token(0x03).await;
        let debug = format!("{:?}", authenticator.tokens);
        assert!(debug.contains("PinUvAuthToken"), "{debug}");
        let listed = format!("{:?}", &token[..4]);
        assert!(!debug.contains(listed.trim_end_matches(']')));
        let hex: String = token.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!debug.contains(&hex[..8]));
    }

    #[test]
    fn permissions_follow_steps_3_4_and_14() {
        // Step 3: none at all.
        assert_eq!(
            Permissions::requested(0).unwrap_err().status(),
            Ctap2Error::InvalidParameter
        );
        // Step 4: cm, be, lbw, acfg, pcmr are not authorized on this key.
        for bit in [0x04, 0x08, 0x10, 0x20, 0x40, 0x07] {
            assert_eq!(
                Permissions::requested(bit).unwrap_err().status(),
                Ctap2Error::UnauthorizedPermission,
                "{bit:#x}"
            );
        }
        // mc and ga always are; undefined bits are ignored (step 14).
        let both = Permissions::requested(0x03).unwrap();
        assert!(both.contains(Permissions::MAKE_CREDENTIAL));
        assert!(both.contains(Permissions::GET_ASSERTION));
        let mc = Permissions::requested(0x81).unwrap();
        assert!(mc.contains(Permissions::MAKE_CREDENTIAL));
        assert!(!mc.contains(Permissions::GET_ASSERTION));
        let undefined = Permissions::requested(0x100).unwrap();
        assert!(!undefined.contains(Permissions::MAKE_CREDENTIAL));
        assert!(!undefined.contains(Permissions::GET_ASSERTION));
    }
}

#[tokio::test]
async fn random_bytes_through_the_dispatcher_never_panic() {
    // A cheap in-process pass over the dispatcher itself (the public-API
    // test sends 100k messages through the actors).
    let mut authenticator = authenticator().await;
    let rng = SystemRandom::new();
    for round in 0..2_000u32 {
        let mut len = [0u8; 1];
        ring::rand::SecureRandom::fill(&rng, &mut len).unwrap();
        let mut message = vec![0u8; usize::from(len[0] % 96) + 1];
        ring::rand::SecureRandom::fill(&rng, &mut message).unwrap();
        message[0] =
            [CMD_MAKE_CREDENTIAL, CMD_GET_ASSERTION, CMD_CLIENT_PIN, 0x04][round as usize % 4];
        let outcome = authenticator.handle(&message, Caller::default()).await;
        assert!(!outcome.payload.is_empty() || outcome.approval_needed.is_some());
        assert!(!outcome.fenced);
    }
}
