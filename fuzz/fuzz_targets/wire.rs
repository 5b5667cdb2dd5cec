#![no_main]

// Body in src/lib.rs, shared with the stable replay in tests/fuzz_replay.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shoal_fuzz::wire(data);
});
