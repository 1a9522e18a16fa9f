//! obr-agent: a virtual FIDO2 USB security key whose CTAP2 requests are answered through the
//! obr relay. The agent owns the host-facing side (HID reports, CTAPHID framing); it never holds
//! credentials or signs anything itself.
//!
//! # Layout
//!
//! - [`hid`]: where 64-byte HID reports come from and go to ([`hid::HidBackend`]), with a UNIX
//!   `SOCK_SEQPACKET` backend ([`hid::SocketHid`]) and a USB security key through the kernel's
//!   uhid driver ([`hid::UhidDevice`]). Knows nothing of CTAPHID.
//! - [`ctaphid`]: the CTAPHID transport (CTAP 2.1 §11.2): packet framing, per-channel
//!   reassembly, channel allocation, KEEPALIVE, CANCEL and LOCK. Hands each CTAP2 request to a
//!   [`ctaphid::CborForwarder`] and never looks inside the CBOR.
//!
//! - [`tunnel`]: the WebSocket to the relay (reconnects, login, CTAP forwarding, getInfo cache).
//! - [`status`]: the mode the agent shows (not logged in, normal, OBR: acting for …).
//! - [`control`]: the local control socket behind `obr-agent status|login|back-to-normal|open`.
//! - [`url_handler`]: the desktop's handler of `obr://` links (`obr-agent register-url-handler`).
//! - [`daemon`]: all of the above wired into one running agent.
//!
//! Requests flow host → [`hid`] → [`ctaphid`] → [`tunnel`] → relay, and answers back the same way.

pub mod control;
pub mod ctaphid;
pub mod daemon;
pub mod hid;
pub mod status;
pub mod tunnel;
pub mod url_handler;
