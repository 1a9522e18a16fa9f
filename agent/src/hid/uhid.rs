//! A [`HidBackend`] that is a USB FIDO security key to the whole machine: through the kernel's
//! uhid driver (`/dev/uhid`) the agent creates a HID device with the FIDO report descriptor,
//! and the kernel gives it a `/dev/hidraw*` node that browsers and libfido2 use like any
//! plugged-in key. This module owns the uhid file descriptor, the device's identity (name,
//! VID/PID, serial, descriptor) and one reader task; it never looks inside a report, and it
//! never loads modules, writes udev rules or touches hidraw nodes — it tells the user how
//! ([`UhidError`]).
//!
//! One host side: uhid does not say which hidraw opener wrote a report, and the kernel copies
//! every input report to every opener, so all reports come from and go to [`HOST`]; the
//! CTAPHID channel ids keep the clients apart (CTAP 2.1 §11.2.3), as on a real key.
//!
//! Shape: the reader task drains the device (the kernel keeps only 32 pending events per uhid
//! device and drops the rest), answers the kernel's GET_REPORT / SET_REPORT requests at once
//! so it never waits for them, and queues output reports for [`UhidDevice::recv`];
//! [`UhidDevice::send`] writes one `UHID_INPUT2` event, which the kernel takes without waiting.

pub mod event;

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use ring::digest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::debug;

use self::event::{Create2, EVENT_LEN, EventBuf, FromKernel};
use super::{ClientId, HidBackend, HidError, Report};

/// Where the uhid character device usually is.
pub const DEFAULT_DEVICE: &str = "/dev/uhid";
/// USB vendor id: pid.codes (0x1209), the open-source hardware vendor id.
pub const VENDOR_ID: u16 = 0x1209;
/// USB product id: 0x0001, pid.codes' test PID, free for private and in-house testing but not
/// for products that are distributed. obr must register its own PID at pid.codes (or use its
/// customer's vendor id) before the agent ships to anyone.
pub const PRODUCT_ID: u16 = 0x0001;
/// Device version (bcdDevice style, 1.00); bump it when [`REPORT_DESCRIPTOR`] changes.
pub const DEVICE_VERSION: u32 = 0x0100;
/// The product name hosts show.
pub const DEVICE_NAME: &str = "obr Pairing Tool";
/// The device's "physical path", which the kernel reports as `HID_PHYS`.
pub const DEVICE_PHYS: &str = "obr-agent";
/// `BUS_USB` (`linux/input.h`). libfido2 (1.12) ignores hidraw devices on any other bus.
pub const BUS_USB: u16 = 0x03;
/// The only host client: see the module documentation.
pub const HOST: ClientId = ClientId::new(0);
/// Output reports buffered between the reader task and the engine: several maximum-size
/// CTAPHID messages (129 reports each, CTAP 2.1 §11.2.4).
pub const REPORT_QUEUE_DEPTH: usize = 1024;

/// FIDO HID report descriptor (CTAP 2.1 §11.2.8): usage page 0xF1D0 (FIDO Alliance), usage
/// 0x01 (CTAPHID), one application collection with a 64-byte input report (usage 0x20) and a
/// 64-byte output report (usage 0x21), and no report IDs. Hosts find security keys by this
/// usage page; systemd's `fido_id` (60-fido-id.rules) does too.
const REPORT_DESCRIPTOR: &[u8] = &[
    0x06, 0xd0, 0xf1, // Usage Page (FIDO Alliance, 0xF1D0)
    0x09, 0x01, // Usage (CTAPHID)
    0xa1, 0x01, // Collection (Application)
    0x09, 0x20, //   Usage (Input Report Data)
    0x15, 0x00, //   Logical Minimum (0)
    0x26, 0xff, 0x00, //   Logical Maximum (255)
    0x75, 0x08, //   Report Size (8 bits)
    0x95, 0x40, //   Report Count (64)
    0x81, 0x02, //   Input (Data, Variable, Absolute)
    0x09, 0x21, //   Usage (Output Report Data)
    0x15, 0x00, //   Logical Minimum (0)
    0x26, 0xff, 0x00, //   Logical Maximum (255)
    0x75, 0x08, //   Report Size (8 bits)
    0x95, 0x40, //   Report Count (64)
    0x91, 0x02, //   Output (Data, Variable, Absolute)
    0xc0, // End Collection
];

/// Domain separation for [`UhidSerial::for_agent`].
const SERIAL_DERIVATION_LABEL: &[u8] = b"obr-agent uhid serial\0";
/// Hash bytes in a derived serial: 16 hex characters.
const SERIAL_DERIVED_BYTES: usize = 8;

/// `MISC_MAJOR` and `UHID_MINOR` (`linux/miscdevice.h`): the uhid node is always 10:239.
const UHID_MAJOR: u32 = 10;
const UHID_MINOR: u32 = 239;
/// `err` of our report replies. The kernel only checks that it is non-zero and then fails the
/// host's request with EIO (drivers/hid/uhid.c).
#[expect(clippy::cast_possible_truncation, reason = "EIO (5) fits a u16")]
const REPORT_REPLY_ERR: u16 = libc::EIO as u16;

// CREATE2's fixed fields hold the identity with room for their NUL.
const _: () = assert!(DEVICE_NAME.len() < event::NAME_LEN && DEVICE_PHYS.len() < event::PHYS_LEN);
const _: () = assert!(
    !REPORT_DESCRIPTOR.is_empty() && REPORT_DESCRIPTOR.len() <= event::HID_MAX_DESCRIPTOR_SIZE
);

/// The uhid backend. Dropping it destroys the HID device, so its hidraw node disappears.
#[derive(Debug)]
pub struct UhidDevice {
    fd: Arc<AsyncFd<File>>,
    reports: mpsc::Receiver<Result<Report, HidError>>,
    reader: JoinHandle<()>,
    /// Reused for every event `send` writes.
    outgoing: Box<EventBuf>,
    serial: UhidSerial,
}

impl UhidDevice {
    /// Opens the uhid character device at `path` and creates the security key on it, with
    /// `serial` as its USB serial number. Must be called within a tokio runtime.
    pub fn create(path: &Path, serial: UhidSerial) -> Result<Self, UhidError> {
        let file = File::options()
            .read(true)
            .write(true)
            // std opens with O_CLOEXEC already.
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|error| UhidError::opening(path, error))?;
        let meta = file.metadata().map_err(|source| UhidError::Open {
            path: path.to_owned(),
            source,
        })?;
        check_is_uhid(path, &meta)?;
        Self::start(file, serial).map_err(|source| UhidError::Create {
            path: path.to_owned(),
            source,
        })
    }

    /// The device's USB serial number.
    pub fn serial(&self) -> &UhidSerial {
        &self.serial
    }

    /// Creates the device on an open uhid descriptor (or, in tests, on a stand-in for one)
    /// and starts the reader.
    fn start(file: File, serial: UhidSerial) -> io::Result<Self> {
        let mut outgoing = Box::new([0u8; EVENT_LEN]);
        event::create2(
            &mut outgoing,
            &Create2 {
                name: DEVICE_NAME,
                phys: DEVICE_PHYS,
                uniq: serial.as_str(),
                bus: BUS_USB,
                vendor: u32::from(VENDOR_ID),
                product: u32::from(PRODUCT_ID),
                version: DEVICE_VERSION,
                country: 0,
                descriptor: REPORT_DESCRIPTOR,
            },
        );
        // uhid writes never block (nor return EAGAIN), so this one does not wait; the kernel
        // answers EINVAL or EALREADY for a CREATE2 it refuses.
        write_whole(&file, &outgoing)?;
        // SAFETY: `File` owns its descriptor, keeps it open until it is dropped and returns the
        // same one from every `as_raw_fd`; the `AsyncFd` takes ownership of the `File`, so the
        // descriptor outlives the registration.
        #[expect(unsafe_code, reason = "AsyncFd::register is unsafe; see SAFETY")]
        let fd = Arc::new(unsafe { AsyncFd::register(file) }?);
        let (report_tx, reports) = mpsc::channel(REPORT_QUEUE_DEPTH);
        let reader = tokio::spawn(read_events(Arc::clone(&fd), report_tx));
        Ok(Self {
            fd,
            reports,
            reader,
            outgoing,
            serial,
        })
    }
}

impl fmt::Display for UhidDevice {
    /// `uhid key "obr Pairing Tool" 1209:0001 serial …`, as the agent's ready line shows it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "uhid key {DEVICE_NAME:?} {VENDOR_ID:04x}:{PRODUCT_ID:04x} serial {}",
            self.serial
        )
    }
}

impl HidBackend for UhidDevice {
    async fn recv(&mut self) -> Result<(ClientId, Report), HidError> {
        // Cancel safe: the only await is `mpsc::Receiver::recv`.
        match self.reports.recv().await {
            Some(report) => report.map(|report| (HOST, report)),
            None => Err(HidError::Closed),
        }
    }

    async fn send(&mut self, _client: ClientId, report: &Report) -> Result<(), HidError> {
        // Every hidraw opener gets the report; the CTAPHID channel id says whose it is.
        event::input2(&mut self.outgoing, report);
        write_event(&self.fd, &self.outgoing).await?;
        Ok(())
    }
}

impl Drop for UhidDevice {
    fn drop(&mut self) {
        self.reader.abort();
        // Closing the descriptor destroys the device too, but only once the aborted reader
        // has released its handle; destroying it here makes the hidraw node go now.
        event::destroy(&mut self.outgoing);
        if let Err(error) = write_whole(self.fd.get_ref(), &self.outgoing) {
            debug!(%error, "uhid destroy failed; closing the device destroys it");
        }
    }
}

/// The key's USB serial number (the HID device's `uniq`): 1 to 63 printable ASCII characters
/// without spaces, which fits CREATE2's `uniq[64]` with its NUL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UhidSerial(String);

impl UhidSerial {
    /// Longest serial: `uniq[64]` less the NUL the kernel keeps.
    pub const MAX_LEN: usize = event::UNIQ_LEN - 1;

    pub fn new(serial: impl Into<String>) -> Result<Self, UhidError> {
        let serial = serial.into();
        let reason = if serial.is_empty() {
            "it is empty"
        } else if serial.len() > Self::MAX_LEN {
            "it is longer than 63 characters"
        } else if !serial.bytes().all(|b| b.is_ascii_graphic()) {
            "only printable ASCII without spaces is allowed"
        } else {
            return Ok(Self(serial));
        };
        Err(UhidError::InvalidSerial { serial, reason })
    }

    /// The default serial of the agent `agent_id`: the first 8 bytes of
    /// SHA-256("obr-agent uhid serial\0" || agent id), in hex. Any local user can read the
    /// serial (sysfs `HID_UNIQ`, `HIDIOCGRAWUNIQ`) and the relay knows agents by their id, so
    /// the serial is derived one way from the id rather than being it; it still stays the same
    /// for one agent installation.
    pub fn for_agent(agent_id: &str) -> Self {
        let mut context = digest::Context::new(&digest::SHA256);
        context.update(SERIAL_DERIVATION_LABEL);
        context.update(agent_id.as_bytes());
        let hash = context.finish();
        let serial = hash
            .as_ref()
            .iter()
            .take(SERIAL_DERIVED_BYTES)
            .map(|b| format!("{b:02x}"))
            .collect();
        Self(serial)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for UhidSerial {
    type Err = UhidError;

    fn from_str(serial: &str) -> Result<Self, Self::Err> {
        Self::new(serial)
    }
}

impl fmt::Display for UhidSerial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why the uhid key cannot be created, each with what the user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum UhidError {
    /// The path is missing, or no driver answers behind it.
    #[error(
        "cannot open {path}: the uhid kernel module is not loaded. Load it with \
         `sudo modprobe uhid`, and at every boot by copying deploy/modules-load.d/obr-agent.conf \
         to /etc/modules-load.d/"
    )]
    NoDriver { path: PathBuf, source: io::Error },
    /// The user may not open the uhid device.
    #[error(
        "no permission to open {path}. Copy deploy/udev/70-obr-agent.rules to \
         /etc/udev/rules.d/ and run `sudo udevadm control --reload-rules && sudo udevadm \
         trigger`, create its group and join it (`sudo groupadd --system obr && sudo usermod \
         -aG obr $USER`), then log out and in again. Browsers also need read/write access to \
         the key's /dev/hidraw* node: systemd's 60-fido-id.rules grants it to the logged-in \
         user, and the same rules file covers systems without it"
    )]
    PermissionDenied { path: PathBuf, source: io::Error },
    /// Something else is at the path.
    #[error(
        "{path} is {found}, not the uhid character device ({UHID_MAJOR}:{UHID_MINOR}); pass \
         the uhid device with --uhid-device (default {DEFAULT_DEVICE})"
    )]
    NotUhid { path: PathBuf, found: String },
    /// Opening or inspecting the device failed otherwise.
    #[error("cannot open {path}")]
    Open { path: PathBuf, source: io::Error },
    /// The kernel refused the new HID device, or the descriptor could not be registered.
    #[error("cannot create the HID device on {path}")]
    Create { path: PathBuf, source: io::Error },
    /// The serial number cannot be a HID `uniq`.
    #[error(
        "{serial:?} cannot be the key's serial number: {reason}; pass one with --uhid-serial \
         (1 to 63 printable ASCII characters, no spaces)"
    )]
    InvalidSerial {
        serial: String,
        reason: &'static str,
    },
}

impl UhidError {
    /// Explains a failed `open` of the uhid device at `path`.
    fn opening(path: &Path, source: io::Error) -> Self {
        let path = path.to_owned();
        match source.raw_os_error() {
            // ENODEV / ENXIO: a device node without its driver (e.g. a static /dev/uhid whose
            // module cannot be loaded).
            Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => Self::NoDriver { path, source },
            Some(libc::EACCES | libc::EPERM) => Self::PermissionDenied { path, source },
            Some(libc::EISDIR) => Self::NotUhid {
                path,
                found: "a directory".into(),
            },
            _ => Self::Open { path, source },
        }
    }
}

/// Refuses anything but the uhid character device, before a single byte is written to it: a
/// CREATE2 written to a regular file would overwrite its contents.
fn check_is_uhid(path: &Path, meta: &std::fs::Metadata) -> Result<(), UhidError> {
    let file_type = meta.file_type();
    let found = if file_type.is_char_device() {
        let (major, minor) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
        if (major, minor) == (UHID_MAJOR, UHID_MINOR) {
            return Ok(());
        }
        format!("character device {major}:{minor}")
    } else if file_type.is_file() {
        "a regular file".into()
    } else if file_type.is_dir() {
        "a directory".into()
    } else {
        "neither a file nor a character device".into()
    };
    Err(UhidError::NotUhid {
        path: path.to_owned(),
        found,
    })
}

/// Drains the device until it fails or the backend is dropped: output reports go to
/// `reports`, report requests are refused at once, the rest is logged.
async fn read_events(fd: Arc<AsyncFd<File>>, reports: mpsc::Sender<Result<Report, HidError>>) {
    let mut incoming: Box<EventBuf> = Box::new([0u8; EVENT_LEN]);
    let mut reply: Box<EventBuf> = Box::new([0u8; EVENT_LEN]);
    loop {
        let read = match read_event(&fd, &mut incoming).await {
            // uhid never ends its stream; a stand-in whose peer hung up does.
            Ok(0) => return,
            Ok(len) => incoming.get(..len).unwrap_or(&incoming[..]),
            Err(error) => {
                // Ignoring the error is correct: if the backend is gone there is nobody to tell.
                let _ = reports.send(Err(HidError::Io(error))).await;
                return;
            }
        };
        let decoded = match event::decode(read) {
            Ok(decoded) => decoded,
            Err(error) => {
                debug!(%error, "dropping uhid event");
                continue;
            }
        };
        match decoded {
            FromKernel::Output(Ok(report)) => {
                if reports.send(Ok(report)).await.is_err() {
                    return;
                }
            }
            FromKernel::Output(Err(why)) => {
                debug!(%why, "dropping uhid output that is not one CTAPHID report");
            }
            FromKernel::GetReport { id, rnum, rtype } => {
                debug!(id, rnum, rtype, "refusing uhid GET_REPORT");
                event::get_report_error(&mut reply, id, REPORT_REPLY_ERR);
                reply_to_kernel(&fd, &reply).await;
            }
            FromKernel::SetReport { id, rnum, rtype } => {
                debug!(id, rnum, rtype, "refusing uhid SET_REPORT");
                event::set_report_error(&mut reply, id, REPORT_REPLY_ERR);
                reply_to_kernel(&fd, &reply).await;
            }
            FromKernel::Start { dev_flags } => debug!(dev_flags, "uhid device started"),
            FromKernel::Stop => debug!("uhid device stopped"),
            FromKernel::Open => debug!("a host opened the uhid device"),
            FromKernel::Close => debug!("the last host closed the uhid device"),
            FromKernel::Unknown { kind } => debug!(kind, "ignoring unknown uhid event"),
        }
    }
}

/// Writes a report reply; a failed one only costs the host its request, which the kernel
/// fails after its own timeout.
async fn reply_to_kernel(fd: &AsyncFd<File>, reply: &EventBuf) {
    if let Err(error) = write_event(fd, reply).await {
        debug!(%error, "uhid report reply failed");
    }
}

/// Reads one event: every uhid `read` returns exactly one.
async fn read_event(fd: &AsyncFd<File>, buf: &mut EventBuf) -> io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        if let Ok(result) = guard.try_io(|fd| fd.get_ref().read(buf)) {
            return result;
        }
    }
}

/// Writes one event, at once. uhid writes never return EAGAIN, and kernels before v5.5
/// ("HID: uhid: Fix returning EPOLLOUT from uhid_char_poll") never report the descriptor
/// writable, so this must not wait for writability first; it does only if a write says
/// WouldBlock (a stand-in socket does when full). Cancel safe: a write is whole or not made.
async fn write_event(fd: &AsyncFd<File>, event: &EventBuf) -> io::Result<()> {
    match write_whole(fd.get_ref(), event) {
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
        result => return result,
    }
    loop {
        let mut guard = fd.writable().await?;
        if let Ok(result) = guard.try_io(|fd| write_whole(fd.get_ref(), event)) {
            return result;
        }
    }
}

/// Writes one event with one `write`: uhid takes an event per call, never part of one.
fn write_whole(mut file: &File, event: &EventBuf) -> io::Result<()> {
    let written = file.write(event)?;
    if written == event.len() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("uhid took {written} of {} event bytes", event.len()),
        ))
    }
}

#[cfg(test)]
mod tests;
