//! The uhid backend without a kernel: its identity and errors, and its event loop against a
//! `SOCK_SEQPACKET` socketpair that **stands in for `/dev/uhid`** (one record per event, as
//! one uhid `read`/`write` is one event). The stand-in's "kernel" end is a plain blocking
//! socket driven by the test; events it sends are laid out by hand from linux/uhid.h.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use socket2::{Domain, Socket, Type};
use tokio::sync::oneshot;

use super::*;
use crate::ctaphid::packet::{ChannelId, Command, Packet, frames};
use crate::ctaphid::{CborForwarder, EngineConfig, KeepaliveStatus, run};
use crate::hid::REPORT_LEN;

/// Longest the stand-in kernel waits for the agent to write an event.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The kernel's end of the stand-in device.
struct Kernel(Socket);

impl Kernel {
    fn write(&self, event: &[u8]) {
        assert_eq!(self.0.send(event).unwrap(), event.len());
    }

    /// The next event the agent wrote, whole.
    fn read(&self) -> Vec<u8> {
        let mut buf = vec![0u8; EVENT_LEN + 1];
        let len = (&self.0).read(&mut buf).unwrap();
        buf.truncate(len);
        assert_eq!(len, EVENT_LEN, "the agent writes whole events");
        buf
    }
}

/// A [`UhidDevice`] created on a socketpair standing in for `/dev/uhid`.
fn on_stand_in(serial: &str) -> (UhidDevice, Kernel) {
    let (agent, kernel) = Socket::pair(Domain::UNIX, Type::SEQPACKET, None).unwrap();
    agent.set_nonblocking(true).unwrap();
    kernel.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let file = File::from(std::os::fd::OwnedFd::from(agent));
    let device = UhidDevice::start(file, UhidSerial::new(serial).unwrap()).unwrap();
    (device, Kernel(kernel))
}

fn le16(event: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(event[at..at + 2].try_into().unwrap())
}

fn le32(event: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(event[at..at + 4].try_into().unwrap())
}

/// A kernel-written event of type `kind` with `fields` at their offsets.
fn kernel_event(kind: u32, fields: &[(usize, &[u8])]) -> Vec<u8> {
    let mut event = vec![0u8; EVENT_LEN];
    event[..4].copy_from_slice(&kind.to_le_bytes());
    for (at, bytes) in fields {
        event[*at..*at + bytes.len()].copy_from_slice(bytes);
    }
    event
}

/// `UHID_OUTPUT` (6) as hidraw makes it: data at 4, size at 4100, rtype 1 (output) at 4102.
fn kernel_output(data: &[u8]) -> Vec<u8> {
    let size = u16::try_from(data.len()).unwrap();
    kernel_event(6, &[(4, data), (4100, &size.to_le_bytes()), (4102, &[1])])
}

/// A report written through hidraw: the report-ID byte 0, then the report.
fn with_report_id(report: &Report) -> Vec<u8> {
    let mut data = vec![0u8];
    data.extend_from_slice(report);
    data
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "a test byte pattern: wrapping is the point"
)]
fn report(seed: u8) -> Report {
    std::array::from_fn(|i| seed.wrapping_add(i as u8))
}

fn scratch_path(what: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "obr-agent-uhid-test-{}-{}-{what}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// What a FIDO host needs from the report descriptor, read item by item (HID 1.11 §6.2.2).
#[derive(Debug, Default)]
struct DescriptorSummary {
    usage_page: Option<u32>,
    application_usage: Option<u32>,
    /// (usage, bits) of every Input and Output main item.
    inputs: Vec<(u32, u32)>,
    outputs: Vec<(u32, u32)>,
    report_ids: usize,
    open_collections: i32,
}

fn summarize(descriptor: &[u8]) -> DescriptorSummary {
    let mut summary = DescriptorSummary::default();
    let (mut usage, mut size, mut count) = (0, 0, 0);
    let mut rest = descriptor;
    while let Some((&prefix, tail)) = rest.split_first() {
        let len = match prefix & 0x03 {
            3 => 4,
            n => usize::from(n),
        };
        let (data, tail) = tail.split_at(len);
        let value = data
            .iter()
            .rev()
            .fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
        match prefix & 0xfc {
            0x04 => summary.usage_page = Some(value),
            0x08 => usage = value,
            0x74 => size = value,
            0x84 => summary.report_ids += 1,
            0x94 => count = value,
            0xa0 => {
                assert_eq!(value, 0x01, "an application collection");
                summary.application_usage = Some(usage);
                summary.open_collections += 1;
            }
            0xc0 => summary.open_collections -= 1,
            0x80 => summary.inputs.push((usage, size * count)),
            0x90 => summary.outputs.push((usage, size * count)),
            _ => {}
        }
        rest = tail;
    }
    summary
}

#[test]
fn the_descriptor_is_a_fido_ctaphid_interface_with_64_byte_reports() {
    let summary = summarize(REPORT_DESCRIPTOR);
    assert_eq!(summary.usage_page, Some(0xf1d0), "FIDO Alliance usage page");
    assert_eq!(summary.application_usage, Some(0x01), "CTAPHID usage");
    assert_eq!(
        summary.inputs,
        [(0x20, 64 * 8)],
        "input report data, 64 bytes"
    );
    assert_eq!(
        summary.outputs,
        [(0x21, 64 * 8)],
        "output report data, 64 bytes"
    );
    assert_eq!(summary.report_ids, 0, "no report IDs");
    assert_eq!(summary.open_collections, 0, "every collection is closed");
}

#[test]
fn the_identity_is_a_usb_key_from_pid_codes() {
    assert_eq!((VENDOR_ID, PRODUCT_ID), (0x1209, 0x0001));
    assert_eq!(BUS_USB, 0x03);
    assert!(DEVICE_NAME.is_ascii() && DEVICE_PHYS.is_ascii());
}

#[test]
fn serials_are_short_printable_ascii() {
    let hex = "5701dd06f5a293f0";
    assert_eq!(UhidSerial::new(hex).unwrap().as_str(), hex);
    assert!(UhidSerial::new("x".repeat(63)).is_ok());
    for (serial, reason) in [
        (String::new(), "it is empty"),
        ("x".repeat(64), "it is longer than 63 characters"),
        (
            "has space".into(),
            "only printable ASCII without spaces is allowed",
        ),
        (
            "tab\there".into(),
            "only printable ASCII without spaces is allowed",
        ),
        (
            "café".into(),
            "only printable ASCII without spaces is allowed",
        ),
    ] {
        let error = serial.parse::<UhidSerial>().unwrap_err();
        assert!(
            matches!(&error, UhidError::InvalidSerial { reason: r, .. } if *r == reason),
            "{serial:?}: {error}"
        );
        assert!(error.to_string().contains("--uhid-serial"), "{error}");
    }
}

#[test]
fn the_default_serial_is_derived_from_the_agent_id_without_revealing_it() {
    let id = "0f9c3e1a2b4d4c6e8f0a1b2c3d4e5f60";
    let other = "0f9c3e1a2b4d4c6e8f0a1b2c3d4e5f61";
    let serial = UhidSerial::for_agent(id);
    assert_eq!(serial, UhidSerial::for_agent(id), "stable for one id");
    assert_ne!(serial, UhidSerial::for_agent(other), "differs between ids");
    // SHA-256("obr-agent uhid serial\0" || id)[..8] in hex, computed independently: a change
    // would give every installed key a new serial.
    assert_eq!(serial.as_str(), "5701dd06f5a293f0");
    assert!(!serial.as_str().contains(id) && !id.contains(serial.as_str()));
    // A valid serial: what `new` accepts.
    assert_eq!(UhidSerial::new(serial.as_str()).unwrap(), serial);
}

#[test]
fn a_missing_device_or_driver_says_to_load_the_module() {
    for errno in [libc::ENOENT, libc::ENODEV, libc::ENXIO] {
        let error = UhidError::opening(Path::new("/dev/uhid"), io::Error::from_raw_os_error(errno));
        assert!(
            matches!(error, UhidError::NoDriver { .. }),
            "{errno}: {error}"
        );
        let message = error.to_string();
        assert!(message.contains("sudo modprobe uhid"), "{message}");
        assert!(
            message.contains("deploy/modules-load.d/obr-agent.conf"),
            "{message}"
        );
    }
}

#[test]
fn permission_denied_says_how_to_get_access() {
    for errno in [libc::EACCES, libc::EPERM] {
        let error = UhidError::opening(Path::new("/dev/uhid"), io::Error::from_raw_os_error(errno));
        assert!(
            matches!(error, UhidError::PermissionDenied { .. }),
            "{errno}: {error}"
        );
        let message = error.to_string();
        for hint in [
            "/dev/uhid",
            "deploy/udev/70-obr-agent.rules",
            "udevadm control --reload-rules",
            "usermod -aG obr",
            "log out and in again",
            "/dev/hidraw*",
            "60-fido-id.rules",
        ] {
            assert!(message.contains(hint), "{hint:?} missing from: {message}");
        }
    }
}

#[test]
fn other_open_failures_keep_their_cause() {
    let error = UhidError::opening(
        Path::new("/dev/uhid"),
        io::Error::from_raw_os_error(libc::EBUSY),
    );
    let UhidError::Open { source, .. } = &error else {
        panic!("{error:?}");
    };
    assert_eq!(source.raw_os_error(), Some(libc::EBUSY));
}

#[tokio::test]
async fn create_refuses_what_is_not_the_uhid_device() {
    let serial = || UhidSerial::new("S").unwrap();

    let missing = Path::new("/nonexistent/uhid");
    let error = UhidDevice::create(missing, serial()).unwrap_err();
    assert!(matches!(error, UhidError::NoDriver { .. }), "{error}");

    let dir = scratch_path("dir");
    std::fs::create_dir(&dir).unwrap();
    let error = UhidDevice::create(&dir, serial()).unwrap_err();
    assert!(
        matches!(&error, UhidError::NotUhid { found, .. } if found == "a directory"),
        "{error}"
    );
    std::fs::remove_dir(&dir).unwrap();

    // A regular file opens (the tests run as root), is refused, and is left as it was.
    let file = scratch_path("file");
    std::fs::write(&file, b"not a device").unwrap();
    let error = UhidDevice::create(&file, serial()).unwrap_err();
    assert!(
        matches!(&error, UhidError::NotUhid { found, .. } if found == "a regular file"),
        "{error}"
    );
    assert!(error.to_string().contains("--uhid-device"), "{error}");
    assert_eq!(std::fs::read(&file).unwrap(), b"not a device");
    std::fs::remove_file(&file).unwrap();

    let error = UhidDevice::create(Path::new("/dev/null"), serial()).unwrap_err();
    assert!(
        matches!(&error, UhidError::NotUhid { found, .. } if found == "character device 1:3"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_the_key_and_carries_reports_both_ways() {
    let (mut hid, kernel) = on_stand_in("SERIAL-42");
    assert_eq!(
        hid.to_string(),
        "uhid key \"obr Pairing Tool\" 1209:0001 serial SERIAL-42"
    );
    assert_eq!(hid.serial().as_str(), "SERIAL-42");

    let create = kernel.read();
    assert_eq!(le32(&create, 0), 11, "UHID_CREATE2");
    assert_eq!(&create[4..21], b"obr Pairing Tool\0", "name");
    assert_eq!(&create[132..142], b"obr-agent\0", "phys");
    assert_eq!(&create[196..206], b"SERIAL-42\0", "uniq");
    let rd_size = usize::from(le16(&create, 260));
    assert_eq!(rd_size, REPORT_DESCRIPTOR.len());
    assert_eq!(le16(&create, 262), 0x03, "BUS_USB");
    assert_eq!(le32(&create, 264), 0x1209, "vendor");
    assert_eq!(le32(&create, 268), 0x0001, "product");
    assert_eq!(&create[280..280 + rd_size], REPORT_DESCRIPTOR);

    // Lifecycle events, a truncated read and an unknown type reach nobody.
    kernel.write(&kernel_event(2, &[]));
    kernel.write(&kernel_event(4, &[]));
    kernel.write(&[6, 0]);
    kernel.write(&kernel_event(99, &[]));

    // Report requests are refused at once, so the kernel never waits for its timeout.
    kernel.write(&kernel_event(
        9,
        &[(4, &7u32.to_le_bytes()), (8, &[0]), (9, &[0])],
    ));
    let reply = kernel.read();
    assert_eq!(
        (le32(&reply, 0), le32(&reply, 4), le16(&reply, 8)),
        (10, 7, 5),
        "GET_REPORT_REPLY, id 7, EIO"
    );
    kernel.write(&kernel_event(
        13,
        &[
            (4, &8u32.to_le_bytes()),
            (10, &1u16.to_le_bytes()),
            (12, &[1]),
        ],
    ));
    let reply = kernel.read();
    assert_eq!(
        (le32(&reply, 0), le32(&reply, 4), le16(&reply, 8)),
        (14, 8, 5),
        "SET_REPORT_REPLY, id 8, EIO"
    );

    // Output reports carry the report-ID byte 0: 65 bytes are a whole report, 64 bytes are
    // 63 report bytes (padded with a zero); too long or a foreign report ID is dropped.
    kernel.write(&kernel_output(&with_report_id(&report(1))));
    kernel.write(&kernel_output(&[0u8; 66]));
    kernel.write(&kernel_output(&report(5)));
    kernel.write(&kernel_output(&with_report_id(&report(2))[..64]));
    assert_eq!(hid.recv().await.unwrap(), (HOST, report(1)));
    let mut short = report(2);
    short[63] = 0;
    assert_eq!(hid.recv().await.unwrap(), (HOST, short));

    // A recv dropped before its report arrives loses nothing (the engine selects on it).
    assert!(hid.recv().now_or_never().is_none());
    kernel.write(&kernel_output(&with_report_id(&report(3))));
    assert_eq!(hid.recv().await.unwrap(), (HOST, report(3)));

    hid.send(HOST, &report(4)).await.unwrap();
    let input = kernel.read();
    assert_eq!(le32(&input, 0), 12, "UHID_INPUT2");
    assert_eq!(usize::from(le16(&input, 4)), REPORT_LEN);
    assert_eq!(input[6..6 + REPORT_LEN], report(4));

    drop(hid);
    let destroy = kernel.read();
    assert_eq!(le32(&destroy, 0), 1, "UHID_DESTROY when dropped");
}

#[tokio::test]
async fn send_writes_without_waiting_for_the_descriptor_to_poll_writable() {
    // Before 5.5 uhid never reported EPOLLOUT. Here the reactor has not run since the
    // descriptor was registered, so tokio knows of no writability either: a send that waited
    // for it would not be ready.
    let (mut hid, kernel) = on_stand_in("S");
    assert!(matches!(
        hid.send(HOST, &report(5)).now_or_never(),
        Some(Ok(()))
    ));
    assert_eq!(le32(&kernel.read(), 0), 11, "UHID_CREATE2");
    let input = kernel.read();
    assert_eq!(le32(&input, 0), 12, "UHID_INPUT2");
    assert_eq!(input[6..6 + REPORT_LEN], report(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_device_makes_send_wait_and_a_cancelled_send_writes_nothing() {
    let (mut hid, kernel) = on_stand_in("S");
    assert_eq!(le32(&kernel.read(), 0), 11, "UHID_CREATE2");
    // The stand-in, unlike uhid, fills up and says WouldBlock; the send dropped then (as the
    // engine's select may drop it) leaves nothing behind.
    let mut sent: u8 = 0;
    while hid.send(HOST, &report(sent)).now_or_never().is_some() {
        sent = sent.checked_add(1).expect("the socket buffer fills");
    }
    let drained = std::thread::spawn(move || {
        let seeds: Vec<u8> = (0..=sent).map(|_| kernel.read()[6]).collect();
        (seeds, kernel)
    });
    hid.send(HOST, &report(sent)).await.unwrap();
    let (seeds, kernel) = drained.join().unwrap();
    assert_eq!(
        seeds,
        (0..=sent).collect::<Vec<_>>(),
        "each report once, in order"
    );
    kernel.0.set_nonblocking(true).unwrap();
    let mut extra = [0u8; 8];
    assert_eq!(
        (&kernel.0).read(&mut extra).unwrap_err().kind(),
        io::ErrorKind::WouldBlock,
        "nothing more"
    );
}

#[tokio::test]
async fn the_backend_closes_when_the_device_goes_away() {
    let (mut hid, kernel) = on_stand_in("S");
    kernel.read();
    drop(kernel);
    let error = hid.recv().await.unwrap_err();
    assert!(matches!(error, HidError::Closed), "{error}");
}

/// Answers every CBOR request with CTAP2_OK and no data.
struct Ok0;

impl CborForwarder for Ok0 {
    fn forward(&self, _request: Vec<u8>, _status: KeepaliveStatus) -> BoxFuture<'static, Vec<u8>> {
        async { vec![0x00] }.boxed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_answers_init_through_the_device() {
    let (hid, kernel) = on_stand_in("S");
    kernel.read();
    let (stop, stopped) = oneshot::channel::<()>();
    let engine = tokio::spawn(run(hid, Arc::new(Ok0), EngineConfig::default(), async {
        let _ = stopped.await;
    }));

    let nonce = [0x5a; 8];
    let init = frames(ChannelId::BROADCAST, Command::Init, &nonce)
        .unwrap()
        .next()
        .unwrap();
    kernel.write(&kernel_output(&with_report_id(&init)));
    let answer = tokio::task::spawn_blocking(move || (kernel.read(), kernel))
        .await
        .unwrap();
    let (input, kernel) = answer;
    assert_eq!(le32(&input, 0), 12, "UHID_INPUT2");
    let report: Report = input[6..6 + REPORT_LEN].try_into().unwrap();
    let Packet::Init { cid, cmd, data, .. } = Packet::parse(&report) else {
        panic!("expected an initialization packet");
    };
    assert_eq!((cid, cmd), (ChannelId::BROADCAST, Command::Init.code()));
    assert_eq!(data[..8], nonce);

    stop.send(()).unwrap();
    engine.await.unwrap().unwrap();
    let destroy = tokio::task::spawn_blocking(move || kernel.read())
        .await
        .unwrap();
    assert_eq!(le32(&destroy, 0), 1, "UHID_DESTROY when the engine stops");
}
