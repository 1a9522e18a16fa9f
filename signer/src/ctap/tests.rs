//! The codec's error classification and canonical encoding, and
//! authenticator state that the public API cannot reach (the getNextAssertion
//! window, name truncation).

use std::time::Duration;

use ciborium::value::Value;

use super::codec::{DecodeError, Kind, Param, Params, encode_ok};
use super::*;
use crate::config::DEFAULT_AAGUID;

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
    let shared = Shared::new(store, Kek::from_bytes([3; 32]), DEFAULT_AAGUID).unwrap();
    Authenticator::new(UserId::new("alice").unwrap(), Arc::new(shared))
}

fn make_credential(handle: &[u8], name: &str) -> Vec<u8> {
    let params = Value::Map(vec![
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
    ]);
    let mut message = vec![CMD_MAKE_CREDENTIAL];
    message.extend(cbor(&params));
    message
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
            .handle(&make_credential(handle, "x"), None)
            .await;
        assert_eq!(outcome.payload[0], STATUS_OK);
    }
    let outcome = authenticator.handle(&get_assertion(), None).await;
    assert_eq!(outcome.payload[0], STATUS_OK);
    let pending = authenticator.pending.as_mut().expect("enumeration state");
    let window = pending.expires_at - tokio::time::Instant::now();
    assert!(window > Duration::from_secs(29) && window <= Duration::from_secs(30));

    // 30 s later (time moved by hand: the store's I/O runs on real threads).
    pending.expires_at = tokio::time::Instant::now() - Duration::from_millis(1);
    let outcome = authenticator.handle(&[CMD_GET_NEXT_ASSERTION], None).await;
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
        .handle(&make_credential(b"h", &name), None)
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
        .handle(&make_credential(&[7; 65], "x"), None)
        .await;
    assert_eq!(outcome.payload, vec![u8::from(Ctap2Error::InvalidLength)]);
    assert!(!outcome.fenced);
}
