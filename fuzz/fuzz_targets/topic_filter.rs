#![no_main]
//! cargo-fuzz target: see `tollgate::broker::codec::fuzz_logic::topic_filter` for the invariants checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tollgate::broker::codec::fuzz_logic::topic_filter(data);
});
