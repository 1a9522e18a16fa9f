//! Fuzz the agent⇄relay frame decoders (`proto/obr/agent.proto`): any
//! bytes as an `AgentFrame` (what a relay reads from an agent) and as a
//! `RelayFrame` (what an agent reads from a relay). A frame that decodes
//! must encode back to one that decodes to the same frame, so both ends
//! read what the other meant; nothing may panic.
//!
//! `cargo fuzz run tunnel_frames` (from `agent/`), or `scripts/test`'s
//! bounded run.

#![no_main]

use libfuzzer_sys::fuzz_target;
use obr_proto::agent::{AgentFrame, RelayFrame};
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = AgentFrame::decode(data) {
        let again = AgentFrame::decode(frame.encode_to_vec().as_slice()).expect("re-decodes");
        assert_eq!(again, frame);
    }
    if let Ok(frame) = RelayFrame::decode(data) {
        let again = RelayFrame::decode(frame.encode_to_vec().as_slice()).expect("re-decodes");
        assert_eq!(again, frame);
    }
});
