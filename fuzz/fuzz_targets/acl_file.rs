#![no_main]
//! cargo-fuzz target: arbitrary bytes as a mosquitto acl_file, then checks with topics
//! taken from the same bytes; see `tollgate::acl::fuzz_acl_file` (never panics).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tollgate::acl::fuzz_acl_file(data);
});
