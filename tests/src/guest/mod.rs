//! A throwaway Linux guest for the tests that need what this host lacks: a kernel with
//! `/dev/uhid`, so that obr-agent can be a real USB HID security key, and real client stacks
//! (libfido2's `fido2-tools`, Chromium) that find it the way they find any key.
//!
//! This module owns the host side only: fetching and caching the guest's parts
//! ([`assets`]: a Debian kernel package and a Debian root filesystem with Chromium and
//! libfido2, built at test time into a cache folder outside the repository), and booting them
//! ([`boot`]: a busybox initramfs that loads the HID and 9p modules, then QEMU under TCG with no
//! network device). What runs *inside* the guest is `obr-guest-driver` (see
//! [`crate::real_clients`]); the two meet through three virtio-9p folders: the root filesystem
//! (read-only), the directory holding obr's binaries (read-only) and an output folder where the
//! driver leaves its report, logs and screenshots.

pub mod assets;
pub mod boot;

pub use assets::GuestAssets;
pub use boot::{Boot, GuestRun};

/// Where the guest sees obr's binaries (the host's `target/<profile>`).
pub const GUEST_BIN_DIR: &str = "/obr/bin";
/// Where the guest writes what the host reads back.
pub const GUEST_OUT_DIR: &str = "/obr/out";
/// The driver's report inside [`GUEST_OUT_DIR`].
pub const REPORT_FILE: &str = "report.json";
