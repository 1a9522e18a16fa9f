//! Fuzz the uhid event decoder (`linux/uhid.h`): any bytes a `read` of
//! `/dev/uhid` could return — short, long, unknown types, output reports
//! of every size and report id. Decoding must never panic, and an output
//! report it accepts is exactly one CTAPHID report.
//!
//! `cargo fuzz run uhid_event` (from `agent/`), or `scripts/test`'s
//! bounded run.

#![no_main]

use libfuzzer_sys::fuzz_target;
use obr_agent::hid::uhid::event::{FromKernel, decode};

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Err(truncated) => assert!(data.len() < 4, "{truncated:?} for {} bytes", data.len()),
        Ok(FromKernel::Output(Ok(report))) => assert_eq!(report.len(), 64),
        Ok(_) => {}
    }
});
