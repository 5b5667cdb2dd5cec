//! `bench aggregate`: a round's aggregation against a memcpy of the same bytes, and what the
//! round's checkpoint costs beside it, on an MLP over digits' 64 features.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use shoal_shared::models::sgd::{Mlp, Model};
use shoal_shared::strategy::{CountBudget, StrategySpec};
use shoal_shared::tensor::Weights;

/// Figures of one run, for the printout and tests.
#[derive(Debug, Clone)]
pub struct AggregateFigures {
    pub params: usize,
    pub clients: usize,
    /// Seconds to copy every update's bytes once (best of the repeats).
    pub memcpy_secs: f64,
    /// Seconds for the mean's memory traffic alone: each update's value bits added to one `i64`
    /// per parameter, no arithmetic beyond that (best of the repeats). What a streaming
    /// integer sum of this kind could at best take on this machine.
    pub traffic_secs: f64,
    /// Seconds to aggregate every update and make the next model (best of the repeats).
    pub aggregate_secs: f64,
    /// Seconds for the round's checkpoint: encoded and written with its round in the state
    /// store, as a round is (best of the repeats).
    pub checkpoint_secs: f64,
    pub checkpoint_bytes: usize,
}

/// Measures and prints. `hidden`: the MLP's hidden widths (2048 gives 4.3M parameters).
pub fn aggregate(
    hidden: &[usize],
    clients: usize,
    repeats: u32,
) -> anyhow::Result<AggregateFigures> {
    let mlp = Mlp::new(64, hidden, 10);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let global = mlp.init(&mut rng);
    let params = global.num_params();
    // Each client's update: the global model moved a little, as after local training.
    let updates: Vec<(Weights, u64)> = (0..clients)
        .map(|i| {
            let mut w = global.clone();
            for v in w.values_mut() {
                *v += rng.gen_range(-0.01f32..0.01);
            }
            (w, 100 + 10 * i as u64)
        })
        .collect();
    let budget = CountBudget::of(updates.iter().map(|u| u.1));
    let strategy = StrategySpec::FedAvg.build();

    let mut dst = global.zeros_like();
    let mut memcpy_secs = f64::INFINITY;
    let mut aggregate_secs = f64::INFINITY;
    let mut traffic_secs = f64::INFINITY;
    let mut floor = vec![0i64; params];
    let mut checksum = 0f32;
    for _ in 0..repeats {
        let started = Instant::now();
        for (u, _) in &updates {
            for (d, s) in dst.tensors.iter_mut().zip(&u.tensors) {
                d.data.copy_from_slice(&s.data);
            }
            checksum += std::hint::black_box(&dst).tensors[0].data[0];
        }
        memcpy_secs = memcpy_secs.min(started.elapsed().as_secs_f64());

        let started = Instant::now();
        for (u, _) in &updates {
            let mut off = 0;
            for t in &u.tensors {
                let sums = &mut floor[off..off + t.data.len()];
                for (s, v) in sums.iter_mut().zip(&t.data) {
                    *s = s.wrapping_add(i64::from(v.to_bits() as i32));
                }
                off += t.data.len();
            }
        }
        traffic_secs = traffic_secs.min(started.elapsed().as_secs_f64());
        checksum += std::hint::black_box(&floor)[0] as f32;

        let started = Instant::now();
        let mut s = strategy.clone();
        let mut agg = s.aggregator(&global, budget);
        for (u, n) in &updates {
            agg.add(u, *n, None)?;
        }
        let next = s.finish(1, &global, agg, clients)?;
        aggregate_secs = aggregate_secs.min(started.elapsed().as_secs_f64());
        checksum += std::hint::black_box(&next).tensors[0].data[0];
    }

    // The checkpoint the store keeps each round: the server half's own.
    let spec = shoal_shared::models::ModelSpec::Mlp(shoal_shared::models::sgd::MlpSpec {
        hidden: hidden.to_vec(),
    });
    let server = spec.server(&shoal_shared::models::ServerSetup {
        n_features: 64,
        n_classes: 10,
        init_seed: 7,
        max_params: usize::MAX,
        strategy: StrategySpec::FedAvg,
        bound: None,
        influence: Default::default(),
        initial: None,
        spool: Default::default(),
    })?;
    // Written as a round is: with its round record, in one transaction of the state store.
    let dir = tempfile::tempdir()?;
    let store = crate::state::Store::open(dir.path())?;
    store.insert_job(&crate::state::JobRow {
        id: "bench".into(),
        kind: "train".into(),
        status: crate::state::JobStatus::Running,
        spec_toml: String::new(),
        created_ms: 0,
        rounds_total: repeats,
        rounds_done: 0,
        error: None,
        run_dir: String::new(),
    })?;
    let record: crate::engine::round::RoundRecord = serde_json::from_value(serde_json::json!({
        "round": 1, "rounds_total": repeats, "clients": clients, "clients_selected": clients,
        "train_loss": 0.5, "fed_loss": null, "fed_accuracy": null, "test_accuracy": null,
        "test_loss": null, "bytes_up": 0, "bytes_down": 0, "seconds": 0.0, "rejected": 0,
    }))?;
    let mut checkpoint_secs = f64::INFINITY;
    let mut checkpoint_bytes = 0;
    for round in 1..=repeats {
        let started = Instant::now();
        let c = server.checkpoint()?;
        let rec = crate::engine::round::RoundRecord {
            staleness: None,
            round,
            ..record.clone()
        };
        store.record_round_with("bench", &rec, Some(&c))?;
        checkpoint_secs = checkpoint_secs.min(started.elapsed().as_secs_f64());
        checkpoint_bytes = c.len();
    }
    if checksum.is_nan() {
        println!("-");
    }

    let bytes = (params * 4 * clients) as f64;
    let label = hidden
        .iter()
        .map(|h| h.to_string())
        .collect::<Vec<_>>()
        .join(",");
    println!(
        "aggregation, fedavg, mlp({label}) over 64 features: {params} parameters ({}), {clients} updates, best of {repeats}:",
        crate::report::human_bytes(params as u64 * 4)
    );
    println!(
        "  memcpy of the updates       {:>7.2} GB/s  {:>8.1} ms  (baseline)",
        bytes / memcpy_secs / 1e9,
        memcpy_secs * 1e3
    );
    println!(
        "  the same traffic, no math   {:>7.2} GB/s  {:>8.1} ms  ({:.0}% of memcpy bandwidth: an i64 read and written per f32 read)",
        bytes / traffic_secs / 1e9,
        traffic_secs * 1e3,
        100.0 * memcpy_secs / traffic_secs
    );
    println!(
        "  exact fixed-point mean      {:>7.2} GB/s  {:>8.1} ms  ({:.0}% of memcpy bandwidth, {:.0}% of the traffic alone)",
        bytes / aggregate_secs / 1e9,
        aggregate_secs * 1e3,
        100.0 * memcpy_secs / aggregate_secs,
        100.0 * traffic_secs / aggregate_secs
    );
    println!(
        "  checkpoint, into the store  {:>7} {:>10.1} ms  ({:.1}x the aggregation)",
        crate::report::human_bytes(checkpoint_bytes as u64),
        checkpoint_secs * 1e3,
        checkpoint_secs / aggregate_secs
    );
    Ok(AggregateFigures {
        params,
        clients,
        memcpy_secs,
        traffic_secs,
        aggregate_secs,
        checkpoint_secs,
        checkpoint_bytes,
    })
}
