#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| trafficmirror::fuzz::record_path(text));
