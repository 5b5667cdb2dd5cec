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

/// The Trainer API's example (`client/examples/custom_trainer.rs`), built here.
#[test]
fn the_rust_trainer_example_conforms() {
    let bin = util::bin("shoal-client");
    let dir = bin.parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "shoal-client",
        "--example",
        "custom_trainer",
    ]);
    if dir.ends_with("release") {
        cmd.arg("--release");
    }
    assert!(
        cmd.status().unwrap().success(),
        "building the example failed"
    );
    let example: PathBuf = dir.join("examples").join("custom_trainer");
    conforms(&[example.to_str().unwrap(), "{addr}", "0", "1"]);
}
