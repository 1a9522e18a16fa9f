//! The codec against `include/uapi/linux/uhid.h`. Offsets here are written out as numbers,
//! summed by hand from the header's packed structs, so a wrong constant in the codec fails.

use super::*;

fn le16(event: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(event[at..at + 2].try_into().unwrap())
}

fn le32(event: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(event[at..at + 4].try_into().unwrap())
}

/// The C string in a fixed field: bytes up to the first NUL, which must be there.
fn cstr(field: &[u8]) -> &str {
    let end = field
        .iter()
        .position(|&b| b == 0)
        .expect("the field keeps a NUL");
    std::str::from_utf8(&field[..end]).unwrap()
}

fn empty() -> Box<EventBuf> {
    Box::new([0xee; EVENT_LEN])
}

/// A kernel-written event of `kind` with `fields` placed at their offsets.
fn from_kernel(kind: u32, fields: &[(usize, &[u8])]) -> Vec<u8> {
    let mut event = vec![0u8; EVENT_LEN];
    event[..4].copy_from_slice(&kind.to_le_bytes());
    for (at, bytes) in fields {
        event[*at..*at + bytes.len()].copy_from_slice(bytes);
    }
    event
}

/// A `UHID_OUTPUT` carrying `data`: data[4096] at 4, size at 4100, rtype at 4102.
fn output(data: &[u8]) -> Vec<u8> {
    let size = u16::try_from(data.len()).unwrap();
    from_kernel(6, &[(4, data), (4100, &size.to_le_bytes()), (4102, &[1])])
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "a test byte pattern: wrapping is the point"
)]
fn report(seed: u8) -> Report {
    std::array::from_fn(|i| seed.wrapping_add(i as u8))
}

#[test]
fn an_event_is_4376_bytes() {
    // __u32 type + sizeof(struct uhid_create2_req), the union's largest member.
    assert_eq!(EVENT_LEN, 4 + 128 + 64 + 64 + 2 + 2 + 4 + 4 + 4 + 4 + 4096);
    assert_eq!(EVENT_LEN, 4376);
}

#[test]
fn create2_puts_every_field_where_the_kernel_reads_it() {
    let descriptor = [0x06, 0xd0, 0xf1, 0xc0];
    let mut event = empty();
    create2(
        &mut event,
        &Create2 {
            name: "obr Pairing Tool",
            phys: "obr-agent",
            uniq: "SERIAL-1",
            bus: 0x03,
            vendor: 0x1209,
            product: 0x0001,
            version: 0x0100,
            country: 0x21,
            descriptor: &descriptor,
        },
    );
    assert_eq!(le32(&event[..], 0), 11, "UHID_CREATE2");
    assert_eq!(cstr(&event[4..132]), "obr Pairing Tool");
    assert_eq!(cstr(&event[132..196]), "obr-agent");
    assert_eq!(cstr(&event[196..260]), "SERIAL-1");
    assert_eq!(le16(&event[..], 260), 4, "rd_size");
    assert_eq!(le16(&event[..], 262), 0x03, "bus");
    assert_eq!(le32(&event[..], 264), 0x1209, "vendor");
    assert_eq!(le32(&event[..], 268), 0x0001, "product");
    assert_eq!(le32(&event[..], 272), 0x0100, "version");
    assert_eq!(le32(&event[..], 276), 0x21, "country");
    assert_eq!(event[280..284], descriptor, "rd_data");
    assert!(
        event[284..].iter().all(|&b| b == 0),
        "the rest of rd_data is cleared"
    );
    // Explicit little-endian: the vendor's low byte comes first.
    assert_eq!(event[264..268], [0x09, 0x12, 0x00, 0x00]);
}

#[test]
fn create2_keeps_a_nul_in_every_string_field() {
    let long = "x".repeat(200);
    let mut event = empty();
    create2(
        &mut event,
        &Create2 {
            name: &long,
            phys: &long,
            uniq: &long,
            bus: 0,
            vendor: 0,
            product: 0,
            version: 0,
            country: 0,
            descriptor: &[0xc0],
        },
    );
    assert_eq!(cstr(&event[4..132]).len(), 127);
    assert_eq!(cstr(&event[132..196]).len(), 63);
    assert_eq!(cstr(&event[196..260]).len(), 63);
    assert_eq!(
        le16(&event[..], 260),
        1,
        "the strings did not spill into rd_size"
    );
}

#[test]
fn create2_cuts_an_oversized_descriptor_to_the_kernel_limit() {
    let descriptor = vec![0x55; 5000];
    let mut event = empty();
    create2(
        &mut event,
        &Create2 {
            name: "",
            phys: "",
            uniq: "",
            bus: 0,
            vendor: 0,
            product: 0,
            version: 0,
            country: 0,
            descriptor: &descriptor,
        },
    );
    assert_eq!(le16(&event[..], 260), 4096);
    assert!(event[280..].iter().all(|&b| b == 0x55));
}

#[test]
fn input2_carries_one_64_byte_report() {
    let mut event = empty();
    input2(&mut event, &report(7));
    assert_eq!(le32(&event[..], 0), 12, "UHID_INPUT2");
    assert_eq!(le16(&event[..], 4), 64, "size");
    assert_eq!(event[6..70], report(7), "data");
    assert!(
        event[70..].iter().all(|&b| b == 0),
        "nothing after the report"
    );
}

#[test]
fn destroy_is_type_1_and_nothing_else() {
    let mut event = empty();
    destroy(&mut event);
    assert_eq!(le32(&event[..], 0), 1, "UHID_DESTROY");
    assert!(event[4..].iter().all(|&b| b == 0));
}

#[test]
fn report_replies_echo_the_id_and_carry_the_error() {
    let mut event = empty();
    get_report_error(&mut event, 0xa1b2_c3d4, 5);
    assert_eq!(le32(&event[..], 0), 10, "UHID_GET_REPORT_REPLY");
    assert_eq!(le32(&event[..], 4), 0xa1b2_c3d4, "id");
    assert_eq!(le16(&event[..], 8), 5, "err");
    assert_eq!(le16(&event[..], 10), 0, "size: no data");

    set_report_error(&mut event, 42, 5);
    assert_eq!(le32(&event[..], 0), 14, "UHID_SET_REPORT_REPLY");
    assert_eq!(le32(&event[..], 4), 42, "id");
    assert_eq!(le16(&event[..], 8), 5, "err");
    assert!(event[10..].iter().all(|&b| b == 0));
}

#[test]
fn output_with_the_report_id_byte_is_stripped() {
    let mut data = vec![0u8];
    data.extend_from_slice(&report(3));
    assert_eq!(
        decode(&output(&data)),
        Ok(FromKernel::Output(Ok(report(3))))
    );
}

#[test]
fn output_of_64_bytes_is_the_report_id_and_63_report_bytes() {
    // hidraw passes the caller's buffer as is: its first byte is the report ID.
    let mut data = vec![0u8];
    data.extend_from_slice(&report(9)[..63]);
    assert_eq!(data.len(), 64);
    let mut expected = report(9);
    expected[63] = 0;
    assert_eq!(decode(&output(&data)), Ok(FromKernel::Output(Ok(expected))));
}

#[test]
fn a_short_output_is_padded_with_zeros() {
    let mut expected = [0u8; 64];
    expected[0] = 0x86;
    assert_eq!(
        decode(&output(&[0, 0x86])),
        Ok(FromKernel::Output(Ok(expected)))
    );
}

#[test]
fn output_of_any_other_size_is_not_a_report() {
    // Nothing, only the report ID, or more than the report ID and 64 bytes.
    for size in [0, 1, 66, 128, 4096] {
        assert_eq!(
            decode(&output(&vec![0u8; size])),
            Ok(FromKernel::Output(Err(BadOutput::Size { size }))),
            "{size} bytes"
        );
    }
    // A size field beyond UHID_DATA_MAX cannot index past the data.
    let event = from_kernel(6, &[(4100, &u16::MAX.to_le_bytes())]);
    assert_eq!(
        decode(&event),
        Ok(FromKernel::Output(Err(BadOutput::Size { size: 65535 })))
    );
}

#[test]
fn output_with_a_nonzero_report_id_is_not_a_report() {
    let mut data = vec![2u8];
    data.extend_from_slice(&report(0));
    assert_eq!(
        decode(&output(&data)),
        Ok(FromKernel::Output(Err(BadOutput::ReportId { id: 2 })))
    );
    // A bare 64-byte report (no ID byte) starting with a nonzero byte is one too.
    assert_eq!(
        decode(&output(&report(9))),
        Ok(FromKernel::Output(Err(BadOutput::ReportId { id: 9 })))
    );
    assert_eq!(
        decode(&output(&[7, 1, 2])),
        Ok(FromKernel::Output(Err(BadOutput::ReportId { id: 7 })))
    );
}

#[test]
fn a_read_shorter_than_the_type_is_truncated() {
    for len in 0..4 {
        assert_eq!(decode(&[6, 0, 0, 0][..len]), Err(Truncated { len }));
    }
}

#[test]
fn a_short_read_counts_the_missing_bytes_as_zero() {
    // An OUTPUT cut before its size field has size 0: no report, and no panic.
    let mut data = vec![0u8];
    data.extend_from_slice(&report(1));
    let full = output(&data);
    for len in [4, 70, 4100] {
        assert_eq!(
            decode(&full[..len]),
            Ok(FromKernel::Output(Err(BadOutput::Size { size: 0 }))),
            "{len} bytes"
        );
    }
    // Size 65 fits its low byte: the zero high byte completes it.
    for len in [4101, 4102] {
        assert_eq!(decode(&full[..len]), Ok(FromKernel::Output(Ok(report(1)))));
    }
    // A GET_REPORT cut after its id reads rnum and rtype as 0.
    let get = from_kernel(9, &[(4, &7u32.to_le_bytes()), (8, &[3]), (9, &[1])]);
    assert_eq!(
        decode(&get[..8]),
        Ok(FromKernel::GetReport {
            id: 7,
            rnum: 0,
            rtype: 0
        })
    );
}

#[test]
fn a_read_longer_than_an_event_is_decoded_from_its_start() {
    let mut data = vec![0u8];
    data.extend_from_slice(&report(4));
    let mut long = output(&data);
    long.extend_from_slice(&[0xff; 100]);
    assert_eq!(decode(&long), Ok(FromKernel::Output(Ok(report(4)))));
}

#[test]
fn report_requests_are_decoded_with_their_id() {
    let get = from_kernel(
        9,
        &[(4, &0x0102_0304u32.to_le_bytes()), (8, &[0]), (9, &[0])],
    );
    assert_eq!(
        decode(&get),
        Ok(FromKernel::GetReport {
            id: 0x0102_0304,
            rnum: 0,
            rtype: 0
        })
    );
    let set = from_kernel(
        13,
        &[
            (4, &99u32.to_le_bytes()),
            (8, &[1]),
            (9, &[1]),
            (10, &2u16.to_le_bytes()),
            (12, &[0xab, 0xcd]),
        ],
    );
    assert_eq!(
        decode(&set),
        Ok(FromKernel::SetReport {
            id: 99,
            rnum: 1,
            rtype: 1
        })
    );
}

#[test]
fn lifecycle_and_unknown_events_are_told_apart() {
    let start = from_kernel(2, &[(4, &0b100u64.to_le_bytes())]);
    assert_eq!(decode(&start), Ok(FromKernel::Start { dev_flags: 0b100 }));
    assert_eq!(decode(&from_kernel(3, &[])), Ok(FromKernel::Stop));
    assert_eq!(decode(&from_kernel(4, &[])), Ok(FromKernel::Open));
    assert_eq!(decode(&from_kernel(5, &[])), Ok(FromKernel::Close));
    for kind in [0, 7, 8, 11, 12, 15, u32::MAX] {
        assert_eq!(
            decode(&from_kernel(kind, &[])),
            Ok(FromKernel::Unknown { kind }),
            "type {kind}"
        );
    }
}
