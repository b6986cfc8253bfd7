#![no_main]
//! cargo-fuzz target: see `tollgate::broker::fuzz_router::fuzz_router_ops` for the invariants checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tollgate::broker::fuzz_router::fuzz_router_ops(data);
});
