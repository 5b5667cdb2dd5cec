//! Replays the fuzz targets' corpora (`fuzz/corpus/<target>/`) through the same decoders on
//! stable Rust, so that every input the fuzzer ever kept, and every crash it found (moved into a
//! corpus once fixed), stays a regression test without a nightly toolchain.
//!
//! The target bodies are `fuzz/src/lib.rs`, included here as a module: it has no libfuzzer
//! dependency, and the fuzz targets call the very same functions (see `fuzz/README.md`).

use std::path::{Path, PathBuf};

#[path = "../fuzz/src/lib.rs"]
mod bodies;

/// Every file of `fuzz/corpus/<target>`, sorted; fails if there is none.
fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no inputs", dir.display());
    files
}

/// Runs `body` on every input of `target`'s corpus, naming the input if it panics, and checks
/// that some input still gets past the decoders' validation (the seeds do, unless a format
/// changed under them).
fn replay(target: &str, body: fn(&[u8]) -> usize) {
    let files = corpus(target);
    let mut accepting = 0;
    for path in &files {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let result = std::panic::catch_unwind(|| body(&data));
        match result {
            Ok(accepted) => accepting += usize::from(accepted > 0),
            Err(_) => panic!("fuzz target `{target}` panics on {}", path.display()),
        }
    }
    eprintln!(
        "fuzz_replay: {target}: {} inputs, {accepting} accepted by at least one decoder",
        files.len()
    );
    assert!(
        accepting > 0,
        "no input of the `{target}` corpus is accepted by any decoder: are the seeds stale?"
    );
}

#[test]
fn csv_load() {
    replay("csv_load", bodies::csv_load);
}

#[test]
fn job_spec() {
    replay("job_spec", bodies::job_spec);
}

#[test]
fn wire() {
    replay("wire", bodies::wire);
}

#[test]
fn model_blob() {
    replay("model_blob", bodies::model_blob);
}
