//! Benchmarks that print figures, each against a baseline measured in the same run:
//! `bench aggregate` ([`aggregate::aggregate`]), `bench transfer` ([`transfer::transfer`]),
//! `bench scale` ([`scale::scale`]) and `bench gbdt` ([`gbdt`]), below.
//!
//! 1. Histogram building on one client's rows: rows × features per second, as a ratio to a plain
//!    pass that only reads the same binned matrix (the memory-bound floor).
//! 2. A federated boosting job over 10 digits clients on loopback gRPC: seconds per round and per
//!    tree, with the bytes exchanged.

/// `bench aggregate`: aggregation against memcpy, and the checkpoint beside it.
pub mod aggregate;
/// `bench scale`: seconds per round and peak memory against the number of clients.
pub mod scale;
/// The non-IID and seed-forest studies.
pub mod study;
/// `bench transfer`: a large model's gRPC round trip against raw TCP.
pub mod transfer;

use std::time::Instant;

use shoal_shared::data::builtin::Builtin;
use shoal_shared::data::partition::Partitioner;
use shoal_shared::models::gbdt::{build_histograms, gradients, GNode, GTree, QuantileSketch};

use crate::simulate::{simulate, SimulateOptions};
use crate::spec::JobSpec;

/// Runs the gradient-boosting benchmark and prints its figures.
pub async fn gbdt(rounds: u32, repeats: u32) -> anyhow::Result<()> {
    let data = Builtin::Digits.train_pool()?;
    let (n, d) = (data.n_rows(), data.n_features());
    let edges = QuantileSketch::of(data.features.view(), 256).bin_edges(64);
    let binned = edges.bin_matrix(data.features.view())?;
    let bins = edges.max_bins();
    let raw = ndarray::Array2::<f64>::zeros((n, 10));
    let (g, h) = gradients(raw.view(), &data.labels, 0);
    let root = GTree {
        nodes: vec![GNode::Leaf { value: 0.0 }],
    };

    // Baseline: read every binned cell once.
    let started = Instant::now();
    let mut checksum = 0u64;
    for _ in 0..repeats {
        checksum = checksum.wrapping_add(binned.iter().map(|&b| u64::from(b)).sum::<u64>());
    }
    let read_secs = started.elapsed().as_secs_f64().max(1e-9);

    let started = Instant::now();
    let mut sink = 0.0f64;
    for _ in 0..repeats {
        let hs = build_histograms(binned.view(), &root, &[0], &g, &h, bins)?;
        sink += hs[0].totals().0;
    }
    let hist_secs = started.elapsed().as_secs_f64().max(1e-9);
    let cells = (n * d) as f64 * f64::from(repeats);
    println!("histogram building, digits train pool ({n} rows x {d} features, {bins} bins), {repeats} repeats:");
    println!(
        "  histograms    {:>8.1} M rows x features / s",
        cells / hist_secs / 1e6
    );
    println!(
        "  plain read    {:>8.1} M cells / s  (baseline; histograms run at {:.2}x its time)",
        cells / read_secs / 1e6,
        hist_secs / read_secs
    );
    // Keeps the loops from being optimised away.
    if checksum == u64::MAX && sink.is_nan() {
        println!("-");
    }

    let spec = JobSpec::parse_toml(&format!(
        "kind = \"train\"\ndataset = \"digits\"\nrounds = {rounds}\n[model]\nkind = \"gbdt\"\n"
    ))?;
    let mut o = SimulateOptions::new(spec, Builtin::Digits);
    o.scheme = Partitioner::Dirichlet { alpha: 0.5 };
    o.quiet = true;
    o.out = std::env::temp_dir().join(format!("shoal-bench-{}", std::process::id()));
    let started = Instant::now();
    let outcome = simulate(o.clone()).await?;
    let total = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&o.out);
    if !outcome.job.error.is_empty() {
        anyhow::bail!("benchmark job failed: {}", outcome.job.error);
    }
    let round_secs: f64 = outcome.rounds.iter().map(|r| r.seconds).sum();
    let up: u64 = outcome.rounds.iter().map(|r| r.bytes_up).sum();
    let down: u64 = outcome.rounds.iter().map(|r| r.bytes_down).sum();
    let trees = f64::from(rounds) * 10.0;
    println!(
        "federated gbdt, digits, 10 clients (dirichlet:0.5), depth 4, max_bins 64 ({bins} used), {rounds} rounds:"
    );
    println!(
        "  {:.1} ms per round, {:.2} ms per tree (10 trees per round), {:.2} s in all with setup",
        round_secs / f64::from(rounds) * 1e3,
        round_secs / trees * 1e3,
        total
    );
    println!(
        "  up {} / down {} per round; final test accuracy {:.3}",
        crate::report::human_bytes(up / u64::from(rounds.max(1))),
        crate::report::human_bytes(down / u64::from(rounds.max(1))),
        outcome
            .rounds
            .last()
            .and_then(|r| r.test_accuracy)
            .unwrap_or(f64::NAN)
    );
    Ok(())
}
