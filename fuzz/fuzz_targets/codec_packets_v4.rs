#![no_main]
//! cargo-fuzz target: see `tollgate::broker::codec::fuzz_logic::codec_packets_v4` for the invariants checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tollgate::broker::codec::fuzz_logic::codec_packets_v4(data);
});
