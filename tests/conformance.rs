//! The conformance suite (`tests/conformance/main.rs`) against the Rust clients, as processes.

use std::path::PathBuf;
use std::process::Command;

use crate::util;

/// Runs every check of `shoal-conformance` against `command` and fails with its report unless all
/// pass.
fn conforms(command: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_shoal-conformance"))
        .arg("--")
        .args(command)
        .output()
        .expect("cannot run shoal-conformance");
    let report = String::from_utf8_lossy(&out.stdout);
    println!("{report}");
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("10 of 10 checks passed"), "{report}");
}

#[test]
fn the_shoal_client_binary_conforms() {
    let client = util::bin("shoal-client");
    conforms(&[
        client.to_str().unwrap(),
        "--coordinator",
        "{addr}",
        "--builtin",
        "iris",
        "--partition",
        "iid",
        "--shard",
        "0/1",
    ]);
}

/// The Trainer API's example (`client/examples/custom_trainer.rs`), built with the binaries
/// (`util::bin`).
#[test]
fn the_rust_trainer_example_conforms() {
    let bin = util::bin("shoal-client");
    let example: PathBuf = bin
        .parent()
        .unwrap()
        .join("examples")
        .join("custom_trainer");
    assert!(example.exists(), "{} not found", example.display());
    conforms(&[example.to_str().unwrap(), "{addr}", "0", "1"]);
}
