//! The authenticator side of CTAPHID, the FIDO USB HID transport (CTAP 2.1 §11.2). This module
//! owns every piece of transport state: channels, partial messages, pending requests,
//! keepalives, CANCEL and LOCK. It never interprets CTAP2 CBOR (each CTAPHID_CBOR payload goes
//! to a [`CborForwarder`] untouched) and never touches a device or socket (reports come and go
//! through a [`crate::hid::HidBackend`]).
//!
//! - [`packet`]: byte layout of the 64-byte reports and the protocol's codes.
//! - [`assembler`]: reassembly of one message from its packets.
//! - [`engine`]: the event loop tying channels, commands and timers together ([`run`]).
//! - [`host`]: the host side of the framing, for tools and tests that play the browser.

pub mod assembler;
pub mod engine;
pub mod host;
pub mod packet;

pub use engine::{CborForwarder, DeviceVersion, EngineConfig, KeepaliveStatus, run};
