#![no_main]
//! cargo-fuzz target: arbitrary bytes as a password file line/file; see
//! `tollgate::auth::fuzz_password_line` for the invariants checked (never panics).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tollgate::auth::fuzz_password_line(data);
});
