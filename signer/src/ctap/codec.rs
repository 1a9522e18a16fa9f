//! The CBOR boundary of the authenticator: turns a command's parameter bytes
//! into passkey-types request structures, and response structures into
//! status byte + CTAP2 canonical CBOR.
//!
//! This is the one place where a peer's bad CBOR becomes a status code
//! ([`DecodeError::status`]). Decoding runs in two passes so the three
//! failures CTAP 2.1 §8 distinguishes are told apart reliably: first the
//! bytes must be one well-formed CBOR map and nothing more (else
//! `CTAP2_ERR_INVALID_CBOR`); then each command's top-level parameters are
//! checked against its schema for presence (`CTAP2_ERR_MISSING_PARAMETER`)
//! and major type (`CTAP2_ERR_CBOR_UNEXPECTED_TYPE`); only then does serde
//! build the request, whose remaining failures are nested members missing
//! or mistyped. All CBOR reading and writing is ciborium's; nothing here
//! parses bytes by hand.

use ciborium::value::Value;
use passkey_types::ctap2::Ctap2Error;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// `CTAP2_OK`, the status byte before every successful response.
pub(crate) const STATUS_OK: u8 = 0x00;

/// Why a command's parameters could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("not one well-formed CBOR item (truncated, invalid or trailing bytes)")]
    Malformed,
    #[error("a parameter has the wrong CBOR type")]
    UnexpectedType,
    #[error("a required parameter is missing")]
    MissingParameter,
}

impl DecodeError {
    /// The status byte a decoding failure answers with (CTAP 2.1 §8).
    pub(crate) fn status(self) -> Ctap2Error {
        match self {
            Self::Malformed => Ctap2Error::InvalidCbor,
            Self::UnexpectedType => Ctap2Error::CborUnexpectedType,
            Self::MissingParameter => Ctap2Error::MissingParameter,
        }
    }
}

/// Why a response could not be encoded (a bug on our side, never the peer's).
#[derive(Debug, thiserror::Error)]
#[error("encoding a response: {0}")]
pub(crate) struct EncodeError(String);

/// The CBOR major type a top-level parameter must have.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Bytes,
    Text,
    Map,
    Array,
    Integer,
}

impl Kind {
    fn matches(self, value: &Value) -> bool {
        matches!(
            (self, value),
            (Self::Bytes, Value::Bytes(_))
                | (Self::Text, Value::Text(_))
                | (Self::Map, Value::Map(_))
                | (Self::Array, Value::Array(_))
                | (Self::Integer, Value::Integer(_))
        )
    }
}

/// One entry of a command's parameter schema.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Param {
    pub key: u8,
    pub kind: Kind,
    pub required: bool,
}

impl Param {
    pub(crate) const fn required(key: u8, kind: Kind) -> Self {
        Self {
            key,
            kind,
            required: true,
        }
    }

    pub(crate) const fn optional(key: u8, kind: Kind) -> Self {
        Self {
            key,
            kind,
            required: false,
        }
    }
}

/// A command's parameter map, well-formed and checked against its schema.
#[derive(Debug)]
pub(crate) struct Params(Vec<(Value, Value)>);

impl Params {
    /// Parse `body` (the bytes after the command byte) as one CBOR map and
    /// check it against `schema`. An empty body is an empty map: the
    /// command's parameters are missing, not malformed.
    pub(crate) fn parse(body: &[u8], schema: &[Param]) -> Result<Self, DecodeError> {
        let entries = if body.is_empty() {
            Vec::new()
        } else {
            let mut rest = body;
            let value: Value =
                ciborium::de::from_reader(&mut rest).map_err(|_| DecodeError::Malformed)?;
            if !rest.is_empty() {
                return Err(DecodeError::Malformed);
            }
            match value {
                Value::Map(entries) => entries,
                _ => return Err(DecodeError::UnexpectedType),
            }
        };
        // A map with duplicate keys is not valid CBOR (RFC 8949 §5.6). Only
        // the integer keys a command can define matter; others are ignored.
        let mut seen = [false; 256];
        for (key, _) in &entries {
            if let Some(slot) = integer_key(key).and_then(|k| seen.get_mut(usize::from(k))) {
                if *slot {
                    return Err(DecodeError::Malformed);
                }
                *slot = true;
            }
        }
        let params = Self(entries);
        for param in schema {
            match params.get(param.key) {
                None if param.required => return Err(DecodeError::MissingParameter),
                Some(value) if !param.kind.matches(value) => {
                    return Err(DecodeError::UnexpectedType);
                }
                _ => {}
            }
        }
        Ok(params)
    }

    /// The parameter with integer key `key`.
    pub(crate) fn get(&self, key: u8) -> Option<&Value> {
        self.0
            .iter()
            .find(|(k, _)| is_key(k, key))
            .map(|(_, value)| value)
    }

    pub(crate) fn get_mut(&mut self, key: u8) -> Option<&mut Value> {
        self.0
            .iter_mut()
            .find(|(k, _)| is_key(k, key))
            .map(|(_, value)| value)
    }

    /// Build the passkey-types request. Failures left at this point are
    /// nested: a member missing (serde's "missing field") or mistyped.
    pub(crate) fn decode<T: DeserializeOwned>(self) -> Result<T, DecodeError> {
        Value::Map(self.0).deserialized().map_err(|e| match e {
            ciborium::value::Error::Custom(message) if message.starts_with("missing field") => {
                DecodeError::MissingParameter
            }
            ciborium::value::Error::Custom(_) => DecodeError::UnexpectedType,
        })
    }
}

/// Whether `map` (a CBOR map) has text key `name`.
pub(crate) fn has_text_key(map: &Value, name: &str) -> bool {
    match map {
        Value::Map(entries) => entries
            .iter()
            .any(|(key, _)| matches!(key, Value::Text(text) if text == name)),
        _ => false,
    }
}

/// `CTAP2_OK` followed by `response` in CTAP2 canonical CBOR.
pub(crate) fn encode_ok<T: Serialize>(response: &T) -> Result<Vec<u8>, EncodeError> {
    let value = Value::serialized(response).map_err(|e| EncodeError(e.to_string()))?;
    let value = canonical(value)?;
    let mut out = vec![STATUS_OK];
    ciborium::ser::into_writer(&value, &mut out).map_err(|e| EncodeError(e.to_string()))?;
    Ok(out)
}

/// `CTAP2_OK` followed by `value` in CTAP2 canonical CBOR (responses
/// passkey-types has no structure for).
pub(crate) fn encode_value(value: Value) -> Result<Vec<u8>, EncodeError> {
    let value = canonical(value)?;
    let mut out = vec![STATUS_OK];
    ciborium::ser::into_writer(&value, &mut out).map_err(|e| EncodeError(e.to_string()))?;
    Ok(out)
}

/// `value` with every map in CTAP2 canonical order (for CBOR embedded in
/// authenticatorData, such as extension outputs).
pub(crate) fn canonical_value(value: Value) -> Result<Value, EncodeError> {
    canonical(value)
}

fn integer_key(key: &Value) -> Option<u8> {
    match key {
        Value::Integer(i) => u8::try_from(*i).ok(),
        _ => None,
    }
}

fn is_key(key: &Value, wanted: u8) -> bool {
    integer_key(key) == Some(wanted)
}

/// Sort every map's keys the CTAP2 canonical way (CTAP 2.1 §8, after RFC
/// 7049 §3.9): by the length of their encoding, then bytewise. ciborium
/// already writes integers and lengths in their shortest form and never
/// uses indefinite lengths; key order is the one rule serde cannot know.
fn canonical(value: Value) -> Result<Value, EncodeError> {
    Ok(match value {
        Value::Map(entries) => {
            let mut keyed = entries
                .into_iter()
                .map(|(key, value)| {
                    let key = canonical(key)?;
                    let mut encoded = Vec::new();
                    ciborium::ser::into_writer(&key, &mut encoded)
                        .map_err(|e| EncodeError(e.to_string()))?;
                    Ok((encoded, key, canonical(value)?))
                })
                .collect::<Result<Vec<_>, EncodeError>>()?;
            keyed.sort_by(|(a, _, _), (b, _, _)| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
            Value::Map(keyed.into_iter().map(|(_, k, v)| (k, v)).collect())
        }
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(canonical)
                .collect::<Result<_, EncodeError>>()?,
        ),
        Value::Tag(tag, inner) => Value::Tag(tag, Box::new(canonical(*inner)?)),
        other => other,
    })
}
