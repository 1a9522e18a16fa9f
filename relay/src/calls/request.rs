//! What the relay reads of a CTAP request it forwards on behalf: the
//! command, and the RP ID a session's allow-list is checked against —
//! authenticatorMakeCredential's `rp` (CTAP 2.1 §6.1, parameter 0x02, a
//! map whose `id` is the RP ID) and authenticatorGetAssertion's `rpId`
//! (§6.2, parameter 0x01). Nothing more: the signer parses and checks the
//! whole request. An RP ID that cannot be read is `None`, which no
//! allow-list allows.

use ciborium::Value;
use obr_proto::ctap::command;

/// A request, as far as a session's policy is concerned.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    MakeCredential {
        rp_id: Option<String>,
    },
    GetAssertion {
        rp_id: Option<String>,
    },
    /// Anything else (getInfo, clientPIN, reset…): no RP involved.
    Other,
}

impl Request {
    /// `payload`: the command byte, then its CBOR parameters.
    pub fn read(payload: &[u8]) -> Self {
        match payload.split_first() {
            Some((&command::MAKE_CREDENTIAL, cbor)) => Request::MakeCredential {
                rp_id: parameter(cbor, 0x02).and_then(|rp| text(map_get(&rp, "id")?)),
            },
            Some((&command::GET_ASSERTION, cbor)) => Request::GetAssertion {
                rp_id: parameter(cbor, 0x01).and_then(text),
            },
            _ => Request::Other,
        }
    }
}

/// The parameter `key` of a CTAP request's top-level map.
fn parameter(cbor: &[u8], key: u8) -> Option<Value> {
    let Value::Map(entries) = ciborium::from_reader::<Value, _>(cbor).ok()? else {
        return None;
    };
    entries.into_iter().find_map(|(k, v)| {
        (k.as_integer().and_then(|i| u8::try_from(i).ok()) == Some(key)).then_some(v)
    })
}

fn map_get(map: &Value, key: &str) -> Option<Value> {
    map.as_map()?
        .iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v.clone())
}

fn text(value: Value) -> Option<String> {
    value.into_text().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(command: u8, params: Vec<(Value, Value)>) -> Vec<u8> {
        let mut payload = vec![command];
        ciborium::into_writer(&Value::Map(params), &mut payload).unwrap();
        payload
    }

    #[test]
    fn reads_the_rp_id_of_both_ceremonies() {
        let rp = Value::Map(vec![
            (Value::from("id"), Value::from("login.microsoft.com")),
            (Value::from("name"), Value::from("Microsoft")),
        ]);
        let make = encode(
            command::MAKE_CREDENTIAL,
            vec![
                (Value::from(1), Value::Bytes(vec![0; 32])),
                (Value::from(2), rp),
            ],
        );
        assert_eq!(
            Request::read(&make),
            Request::MakeCredential {
                rp_id: Some("login.microsoft.com".into())
            }
        );
        let get = encode(
            command::GET_ASSERTION,
            vec![(Value::from(1), Value::from("example.org"))],
        );
        assert_eq!(
            Request::read(&get),
            Request::GetAssertion {
                rp_id: Some("example.org".into())
            }
        );
    }

    #[test]
    fn unreadable_rp_ids_are_none_and_other_commands_other() {
        for bad in [
            vec![command::MAKE_CREDENTIAL],
            vec![command::MAKE_CREDENTIAL, 0xff, 0x00],
            encode(
                command::MAKE_CREDENTIAL,
                vec![(Value::from(2), Value::from("x"))],
            ),
            encode(
                command::GET_ASSERTION,
                vec![(Value::from(1), Value::from(7))],
            ),
            encode(
                command::GET_ASSERTION,
                vec![(Value::from("1"), Value::from("a.b"))],
            ),
        ] {
            let read = Request::read(&bad);
            assert!(
                matches!(
                    read,
                    Request::MakeCredential { rp_id: None } | Request::GetAssertion { rp_id: None }
                ),
                "{bad:?} read as {read:?}"
            );
        }
        assert_eq!(Request::read(&[command::GET_INFO]), Request::Other);
        assert_eq!(Request::read(&[]), Request::Other);
    }
}
