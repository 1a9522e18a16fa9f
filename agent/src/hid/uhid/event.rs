//! The uhid character device's wire format: `struct uhid_event` from the kernel's
//! `include/uapi/linux/uhid.h`, encoded for the events the agent writes (CREATE2, INPUT2,
//! DESTROY, the two report replies) and decoded for the ones the kernel writes (START, STOP,
//! OPEN, CLOSE, OUTPUT, GET_REPORT, SET_REPORT). Layout only: this module keeps no state and
//! does no I/O.
//!
//! The layout below was checked against `include/uapi/linux/uhid.h` in torvalds/linux: every
//! request struct is `__attribute__((__packed__))`, so each field sits at the sum of the sizes
//! before it, and `struct uhid_event` is a `__u32 type` followed by the union of the requests.
//! The kernel reads and writes host byte order; obr-agent runs on little-endian Linux, and
//! every field is encoded explicitly with `to_le_bytes` / `from_le_bytes`. Field access never
//! indexes: bytes beyond a short read count as zero, as the header asks ("If the kernel writes
//! short events, user-space shall extend them with 0s"), and writes past the end are dropped,
//! so no input can make this module panic.

use crate::hid::{REPORT_LEN, Report};

/// `sizeof(struct uhid_event)`: the `__u32 type` and the union, whose largest member is
/// `struct uhid_create2_req` (128 + 64 + 64 + 2 + 2 + 4 * 4 + 4096 = 4372 bytes).
pub(super) const EVENT_LEN: usize = 4 + 4372;

/// One whole `struct uhid_event`, as written to or read from the device.
pub(super) type EventBuf = [u8; EVENT_LEN];

/// `UHID_DATA_MAX`: most data bytes an INPUT2, OUTPUT or report request carries.
const UHID_DATA_MAX: usize = 4096;
/// `HID_MAX_DESCRIPTOR_SIZE` (`linux/hid.h`): room for the report descriptor in CREATE2.
pub(super) const HID_MAX_DESCRIPTOR_SIZE: usize = 4096;
/// `name[128]` in `struct uhid_create2_req`, NUL included.
pub(super) const NAME_LEN: usize = 128;
/// `phys[64]` in `struct uhid_create2_req`, NUL included.
pub(super) const PHYS_LEN: usize = 64;
/// `uniq[64]` in `struct uhid_create2_req`, NUL included.
pub(super) const UNIQ_LEN: usize = 64;
/// An output report written through hidraw to a device without numbered reports: the
/// report-ID byte 0, then the report.
const REPORT_WITH_ID_LEN: usize = REPORT_LEN + 1;

// `enum uhid_event_type`.
const UHID_DESTROY: u32 = 1;
const UHID_START: u32 = 2;
const UHID_STOP: u32 = 3;
const UHID_OPEN: u32 = 4;
const UHID_CLOSE: u32 = 5;
const UHID_OUTPUT: u32 = 6;
const UHID_GET_REPORT: u32 = 9;
const UHID_GET_REPORT_REPLY: u32 = 10;
const UHID_CREATE2: u32 = 11;
const UHID_INPUT2: u32 = 12;
const UHID_SET_REPORT: u32 = 13;
const UHID_SET_REPORT_REPLY: u32 = 14;

/// `__u32 type`, then the union `u` at offset 4.
const TYPE: usize = 0;
const U: usize = 4;

// struct uhid_create2_req
const CREATE2_NAME: usize = U; // __u8 name[128]
const CREATE2_PHYS: usize = CREATE2_NAME + NAME_LEN; // __u8 phys[64]
const CREATE2_UNIQ: usize = CREATE2_PHYS + PHYS_LEN; // __u8 uniq[64]
const CREATE2_RD_SIZE: usize = CREATE2_UNIQ + UNIQ_LEN; // __u16 rd_size
const CREATE2_BUS: usize = CREATE2_RD_SIZE + 2; // __u16 bus
const CREATE2_VENDOR: usize = CREATE2_BUS + 2; // __u32 vendor
const CREATE2_PRODUCT: usize = CREATE2_VENDOR + 4; // __u32 product
const CREATE2_VERSION: usize = CREATE2_PRODUCT + 4; // __u32 version
const CREATE2_COUNTRY: usize = CREATE2_VERSION + 4; // __u32 country
const CREATE2_RD_DATA: usize = CREATE2_COUNTRY + 4; // __u8 rd_data[HID_MAX_DESCRIPTOR_SIZE]

// struct uhid_start_req
const START_DEV_FLAGS: usize = U; // __u64 dev_flags

// struct uhid_input2_req
const INPUT2_SIZE: usize = U; // __u16 size
const INPUT2_DATA: usize = INPUT2_SIZE + 2; // __u8 data[UHID_DATA_MAX]

// struct uhid_output_req
const OUTPUT_DATA: usize = U; // __u8 data[UHID_DATA_MAX]
const OUTPUT_SIZE: usize = OUTPUT_DATA + UHID_DATA_MAX; // __u16 size, then __u8 rtype

// struct uhid_get_report_req and struct uhid_set_report_req share their first three fields.
const REPORT_REQ_ID: usize = U; // __u32 id
const REPORT_REQ_RNUM: usize = REPORT_REQ_ID + 4; // __u8 rnum
const REPORT_REQ_RTYPE: usize = REPORT_REQ_RNUM + 1; // __u8 rtype

// struct uhid_get_report_reply_req and struct uhid_set_report_reply_req: id, then err.
const REPLY_ID: usize = U; // __u32 id
const REPLY_ERR: usize = REPLY_ID + 4; // __u16 err

// The packed layout fills exactly one event, and every field fits.
const _: () = assert!(CREATE2_RD_DATA + HID_MAX_DESCRIPTOR_SIZE == EVENT_LEN);
const _: () = assert!(OUTPUT_SIZE + 2 < EVENT_LEN && INPUT2_DATA + UHID_DATA_MAX <= EVENT_LEN);

/// What the agent tells the kernel when it creates the HID device (`UHID_CREATE2`).
#[derive(Debug)]
pub(super) struct Create2<'a> {
    pub name: &'a str,
    pub phys: &'a str,
    pub uniq: &'a str,
    pub bus: u16,
    pub vendor: u32,
    pub product: u32,
    pub version: u32,
    pub country: u32,
    pub descriptor: &'a [u8],
}

/// Writes a `UHID_CREATE2` event into `event`. Strings longer than their field less its NUL
/// and descriptors beyond [`HID_MAX_DESCRIPTOR_SIZE`] are cut (callers check them first).
pub(super) fn create2(event: &mut EventBuf, create: &Create2<'_>) {
    start(event, UHID_CREATE2);
    put_cstr(event, CREATE2_NAME, NAME_LEN, create.name);
    put_cstr(event, CREATE2_PHYS, PHYS_LEN, create.phys);
    put_cstr(event, CREATE2_UNIQ, UNIQ_LEN, create.uniq);
    let rd_size = create.descriptor.len().min(HID_MAX_DESCRIPTOR_SIZE);
    #[expect(
        clippy::cast_possible_truncation,
        reason = "rd_size <= HID_MAX_DESCRIPTOR_SIZE (4096) fits a u16"
    )]
    put(event, CREATE2_RD_SIZE, &(rd_size as u16).to_le_bytes());
    put(event, CREATE2_BUS, &create.bus.to_le_bytes());
    put(event, CREATE2_VENDOR, &create.vendor.to_le_bytes());
    put(event, CREATE2_PRODUCT, &create.product.to_le_bytes());
    put(event, CREATE2_VERSION, &create.version.to_le_bytes());
    put(event, CREATE2_COUNTRY, &create.country.to_le_bytes());
    put(event, CREATE2_RD_DATA, create.descriptor);
}

/// Writes a `UHID_INPUT2` event carrying one input report into `event`.
pub(super) fn input2(event: &mut EventBuf, report: &Report) {
    start(event, UHID_INPUT2);
    #[expect(
        clippy::cast_possible_truncation,
        reason = "REPORT_LEN (64) fits a u16"
    )]
    put(event, INPUT2_SIZE, &(REPORT_LEN as u16).to_le_bytes());
    put(event, INPUT2_DATA, report);
}

/// Writes a `UHID_DESTROY` event into `event`.
pub(super) fn destroy(event: &mut EventBuf) {
    start(event, UHID_DESTROY);
}

/// Writes a `UHID_GET_REPORT_REPLY` to request `id` that carries no data and fails with `err`.
pub(super) fn get_report_error(event: &mut EventBuf, id: u32, err: u16) {
    start(event, UHID_GET_REPORT_REPLY);
    put(event, REPLY_ID, &id.to_le_bytes());
    put(event, REPLY_ERR, &err.to_le_bytes());
}

/// Writes a `UHID_SET_REPORT_REPLY` to request `id` that fails with `err`.
pub(super) fn set_report_error(event: &mut EventBuf, id: u32, err: u16) {
    start(event, UHID_SET_REPORT_REPLY);
    put(event, REPLY_ID, &id.to_le_bytes());
    put(event, REPLY_ERR, &err.to_le_bytes());
}

/// An event the kernel wrote, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FromKernel {
    /// The HID device is up; `dev_flags` says which report kinds are numbered.
    Start { dev_flags: u64 },
    /// The HID device is going down.
    Stop,
    /// The first host opened the device (a hidraw node, an input handler).
    Open,
    /// The last host closed it.
    Close,
    /// A host wrote an output report: one CTAPHID report, or why it is not one.
    Output(Result<Report, BadOutput>),
    /// The kernel asks for a report and waits for a `UHID_GET_REPORT_REPLY` with `id`.
    GetReport { id: u32, rnum: u8, rtype: u8 },
    /// The kernel sets a report and waits for a `UHID_SET_REPORT_REPLY` with `id`.
    SetReport { id: u32, rnum: u8, rtype: u8 },
    /// A type this agent does not know.
    Unknown { kind: u32 },
}

/// Why a `UHID_OUTPUT` is not one CTAPHID report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadOutput {
    #[error(
        "{size}-byte output report; CTAPHID reports are the report-ID byte and 1 to {REPORT_LEN} bytes ({REPORT_WITH_ID_LEN} at most)"
    )]
    Size { size: usize },
    #[error("output report with report ID {id}; the FIDO report descriptor has no report IDs")]
    ReportId { id: u8 },
}

/// A read too short to hold even the event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{len}-byte uhid read is shorter than the 4-byte event type")]
pub struct Truncated {
    pub len: usize,
}

/// Decodes one event from the bytes one `read` returned.
pub fn decode(read: &[u8]) -> Result<FromKernel, Truncated> {
    if read.len() < U {
        return Err(Truncated { len: read.len() });
    }
    let event = match u32::from_le_bytes(field(read, TYPE)) {
        UHID_START => FromKernel::Start {
            dev_flags: u64::from_le_bytes(field(read, START_DEV_FLAGS)),
        },
        UHID_STOP => FromKernel::Stop,
        UHID_OPEN => FromKernel::Open,
        UHID_CLOSE => FromKernel::Close,
        UHID_OUTPUT => FromKernel::Output(output_report(read)),
        UHID_GET_REPORT => {
            let (id, rnum, rtype) = report_request(read);
            FromKernel::GetReport { id, rnum, rtype }
        }
        UHID_SET_REPORT => {
            let (id, rnum, rtype) = report_request(read);
            FromKernel::SetReport { id, rnum, rtype }
        }
        kind => FromKernel::Unknown { kind },
    };
    Ok(event)
}

/// The CTAPHID report in a `UHID_OUTPUT`. hidraw passes on the host's buffer as it is, whose
/// first byte is the report number: 0 for a device without numbered reports, like this one. So
/// the data is the report-ID byte 0 and 1 to 64 report bytes (a host that wrote 64 bytes sent
/// 63), zero-padded to the 64-byte report as the report descriptor's fixed size makes it.
fn output_report(read: &[u8]) -> Result<Report, BadOutput> {
    let size = usize::from(u16::from_le_bytes(field(read, OUTPUT_SIZE)));
    if !(2..=REPORT_WITH_ID_LEN).contains(&size) {
        return Err(BadOutput::Size { size });
    }
    match field::<1>(read, OUTPUT_DATA) {
        [0] => {}
        [id] => return Err(BadOutput::ReportId { id }),
    }
    let data: [u8; REPORT_LEN] = field(read, OUTPUT_DATA + 1);
    let mut report = [0u8; REPORT_LEN];
    for (dst, src) in report.iter_mut().zip(data).take(size - 1) {
        *dst = src;
    }
    Ok(report)
}

/// `id`, `rnum` and `rtype` of a `UHID_GET_REPORT` or `UHID_SET_REPORT`.
fn report_request(read: &[u8]) -> (u32, u8, u8) {
    let [rnum] = field(read, REPORT_REQ_RNUM);
    let [rtype] = field(read, REPORT_REQ_RTYPE);
    (u32::from_le_bytes(field(read, REPORT_REQ_ID)), rnum, rtype)
}

/// The `N` bytes of `read` at `at`, zero where the read was shorter.
fn field<const N: usize>(read: &[u8], at: usize) -> [u8; N] {
    let mut bytes = [0u8; N];
    for (dst, src) in bytes.iter_mut().zip(read.iter().skip(at)) {
        *dst = *src;
    }
    bytes
}

/// Clears `event` and sets its type.
fn start(event: &mut EventBuf, kind: u32) {
    event.fill(0);
    put(event, TYPE, &kind.to_le_bytes());
}

/// Copies `bytes` to `at`, dropping whatever would fall past the end of the event.
fn put(event: &mut EventBuf, at: usize, bytes: &[u8]) {
    for (dst, src) in event.iter_mut().skip(at).zip(bytes) {
        *dst = *src;
    }
}

/// Copies `text` into the `cap`-byte C string field at `at`, keeping its last byte for the NUL
/// (the event was cleared, so the NUL is already there).
fn put_cstr(event: &mut EventBuf, at: usize, cap: usize, text: &str) {
    let bytes = text.as_bytes();
    put(
        event,
        at,
        bytes.get(..cap.saturating_sub(1)).unwrap_or(bytes),
    );
}

#[cfg(test)]
mod tests;
