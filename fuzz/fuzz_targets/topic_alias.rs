#![no_main]
//! cargo-fuzz target: see `tollgate::broker::fuzz_router::fuzz_topic_alias` for the invariants checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tollgate::broker::fuzz_router::fuzz_topic_alias(data);
});
