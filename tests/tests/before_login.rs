//! An agent nobody is logged in on is a key that belongs to nobody yet:
//! it still says what it is — authenticatorGetInfo (CTAP 2.1 §6.4 gives
//! getInfo no failure, and hosts enumerate keys with it) answers the same
//! versions, AAGUID and options as after a login, from the signers'
//! description and without any user's key — and refuses everything else.

use obr_tests::api::Api;
use obr_tests::hid_client::HidClient;
use obr_tests::processes::Stack;
use obr_tests::rp;

const CTAP_GET_INFO: u8 = 0x04;
const CTAP2_ERR_OPERATION_DENIED: u8 = 0x27;

#[test]
fn get_info_answers_before_login_and_nothing_else_does() -> anyhow::Result<()> {
    let stack = Stack::start("before-login")?;
    let mut hid = HidClient::open(&stack.agent.hid_socket)?;
    let before = hid.cbor(&[CTAP_GET_INFO])?;
    let info = rp::decode_response(&before)?;
    let versions = info
        .iter()
        .find(|(k, _)| k.as_integer() == Some(1.into()))
        .map(|(_, v)| format!("{v:?}"))
        .unwrap_or_default();
    assert!(versions.contains("FIDO_2_1"), "{versions}");
    assert_eq!(
        hid.cbor(&rp::registration_request("bob")?)?.first(),
        Some(&CTAP2_ERR_OPERATION_DENIED)
    );

    // The same key after an admin logs in.
    let api = Api::new(&stack.relay.url);
    let demo = &stack.relay.demo;
    let admin = api.demo_owner(demo)?;
    stack.agent.login(&api, &admin)?;
    let after = hid.cbor(&[CTAP_GET_INFO])?;
    assert_eq!(before, after);
    Ok(())
}
