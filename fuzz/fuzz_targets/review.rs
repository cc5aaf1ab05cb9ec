#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trustgate_fuzz::review(data));
