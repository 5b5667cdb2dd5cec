//! The bodies of Shoal's fuzz targets, one public function per target.
//!
//! Each takes arbitrary bytes and feeds them to the public decoders of untrusted input, ignoring
//! their errors: a decoder may refuse anything, but must never panic, loop or allocate without
//! bound. A value a decoder accepts is then used the way the coordinator or a client uses it (an
//! evaluation, a histogram, a view of the rows), since a validated value must be safe to use.
//! Each body returns how many decoders accepted the input, so that a replay can tell that a
//! corpus still reaches past the validation (a format change would silently make seeds useless).
//!
//! This file has no libfuzzer dependency: the targets in `fuzz_targets/` call it under
//! cargo-fuzz (nightly), and `tests/fuzz_replay.rs` includes the same file to replay the corpora
//! on stable. It only uses crates both have: `shoal-proto`, `shoal-shared`, `shoal-coordinator`,
//! `prost`, `serde_json`, `ndarray` and `rand_chacha`.

use std::path::Path;

use ndarray::Array2;
use prost::Message;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use shoal_coordinator::jobs::JobKind;
use shoal_coordinator::spec::{AutomlOptions, CheckedSpec, JobSpec};
use shoal_proto::v1;
use shoal_proto::v1::task_result::Outcome;
use shoal_shared::automl::{halving_rungs, Config, SearchAlgorithm};
use shoal_shared::data::csv::read_csv;
use shoal_shared::data::Dataset;
use shoal_shared::fusion::FeatureView;
use shoal_shared::models::forest::Forest;
use shoal_shared::models::gbdt::{
    build_histograms, histograms_from_values, BinEdges, Ensemble, GTree, Histogram, QuantileSketch,
};

/// `(n_features, n_classes)` every model blob is decoded against. The seed blobs are built for
/// these shapes (three classes: one tree per class and round; two: a single output).
pub const BLOB_SHAPES: [(usize, usize); 2] = [(4, 3), (2, 2)];
/// `(n_features, bins)` histograms are checked against (the seeds use these).
pub const HISTOGRAM_SHAPES: [(usize, usize); 2] = [(2, 3), (4, 4)];
/// Most trees a decoded forest or ensemble may hold here.
pub const MAX_TREES: usize = 1_000;
/// Most points per feature a decoded sketch may hold here.
pub const MAX_SKETCH_POINTS: usize = 4_096;
/// Most histograms decoded from one message here.
pub const MAX_HISTOGRAMS: usize = 16;
/// Element cap of the coordinator-side tensor decode (the client decodes with `usize::MAX`).
pub const MAX_ELEMENTS: usize = 1 << 20;

/// `csv_load`: arbitrary bytes as a labelled CSV file, label in the last column or in `label`.
pub fn csv_load(data: &[u8]) -> usize {
    let origin = Path::new("fuzz.csv");
    [None, Some("label")]
        .into_iter()
        .filter(|&label| read_csv(data, origin, label).is_ok())
        .count()
}

/// `job_spec`: arbitrary UTF-8 as a TOML and as a JSON job spec; an accepted spec is written back
/// out and parsed again, and an accepted automl spec searched the way the coordinator runs it.
pub fn job_spec(data: &[u8]) -> usize {
    let Ok(text) = std::str::from_utf8(data) else {
        return 0;
    };
    let mut accepted = 0;
    for spec in [CheckedSpec::from_toml(text), CheckedSpec::from_json(text)]
        .into_iter()
        .flatten()
    {
        accepted += 1;
        let _ = CheckedSpec::from_toml(&spec.to_toml());
        if let JobKind::Automl(opts) = spec.kind() {
            automl(&spec, opts);
        }
    }
    accepted
}

/// An automl job's search, as the coordinator plans it: the grid or a few sampled configurations,
/// the rungs of successive halving, and TPE proposals once trials have finished (with made-up
/// scores), each configuration turned into its trial's train job.
fn automl(spec: &JobSpec, opts: &AutomlOptions) {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let _ = halving_rungs(opts.trials as usize, spec.rounds, opts.eta);
    let configs: Vec<Config> = if opts.search == SearchAlgorithm::Grid {
        opts.space.grid().unwrap_or_default()
    } else {
        (0..4).map(|_| opts.space.sample(&mut rng)).collect()
    };
    for config in configs.iter().take(4) {
        let _ = spec.trial_spec(config);
    }
    // Enough finished trials for the estimator to take over (unless it wants more than 12).
    let finished = opts.tpe.startup_trials.clamp(2, 12);
    let mut history: Vec<(Config, f64)> = Vec::new();
    for i in 0..finished + 2 {
        let config = opts.tpe.propose(&opts.space, &history, &mut rng);
        let _ = spec.trial_spec(&config);
        let score = if i == 1 { f64::NAN } else { (i % 3) as f64 };
        history.push((config, score));
    }
}

/// `wire`: arbitrary bytes decoded as each protocol message that carries domain values, then
/// every wire -> domain conversion applied to what decodes: the conversions of `shoal-proto`, and
/// the blobs and byte fields that the coordinator and clients decode out of those messages.
pub fn wire(data: &[u8]) -> usize {
    let mut accepted = 0;
    if let Ok(m) = v1::ClientMessage::decode(data) {
        if let Some(v1::client_message::Msg::Result(r)) = &m.msg {
            accepted += task_result(r);
        }
    }
    if let Ok(m) = v1::CoordinatorMessage::decode(data) {
        if let Some(v1::coordinator_message::Msg::Task(t)) = &m.msg {
            accepted += task(t);
        }
    }
    if let Ok(t) = v1::Task::decode(data) {
        accepted += task(&t);
    }
    if let Ok(r) = v1::TaskResult::decode(data) {
        accepted += task_result(&r);
    }
    if let Ok(p) = v1::Parameters::decode(data) {
        accepted += weights(&p);
    }
    if let Ok(m) = v1::ModelSpec::decode(data) {
        accepted += usize::from(shoal_proto::model_from_wire(Some(&m)).is_ok());
    }
    if let Ok(l) = v1::LocalTraining::decode(data) {
        accepted += usize::from(shoal_proto::local_from_wire(Some(&l)).is_ok());
    }
    accepted
}

/// `model_blob`: arbitrary bytes through every decoder of a model or of a model's parts: forest
/// and gbdt ensemble checkpoint blobs, the tree messages of the wire on their own (`Forest`,
/// `Ensemble`, `QuantileSketch`, `NodeHistogram`, `BoostTree` as a partial tree), a fusion feature
/// view, and tensors (`Parameters`).
pub fn model_blob(data: &[u8]) -> usize {
    let mut accepted = forest_blob(data) + ensemble_blob(data) + feature_view(data);
    if let Ok(f) = v1::Forest::decode(data) {
        accepted += forest_wire(&f);
    }
    if let Ok(e) = v1::Ensemble::decode(data) {
        accepted += ensemble_wire(&e);
    }
    if let Ok(s) = v1::QuantileSketch::decode(data) {
        accepted += sketch_wire(&s);
    }
    if let Ok(h) = v1::NodeHistogram::decode(data) {
        accepted += histograms_wire(std::slice::from_ref(&h));
    }
    if let Ok(t) = v1::BoostTree::decode(data) {
        accepted += partial_tree_wire(Some(&t), &[0, 1, 2]);
    }
    if let Ok(p) = v1::Parameters::decode(data) {
        accepted += weights(&p);
    }
    accepted
}

/// What a client does with a task, up to the point where it needs its own data.
fn task(t: &v1::Task) -> usize {
    let mut accepted = usize::from(shoal_proto::model_from_wire(t.model.as_ref()).is_ok());
    if let Some(p) = &t.parameters {
        accepted += weights(p);
    }
    match &t.kind {
        Some(v1::task::Kind::Fit(f)) => {
            accepted += usize::from(shoal_proto::local_from_wire(f.local.as_ref()).is_ok());
            if let Some(c) = &f.control {
                accepted += weights(c);
            }
        }
        Some(v1::task::Kind::Evaluate(e)) => {
            accepted += usize::from(shoal_proto::local_from_wire(e.local.as_ref()).is_ok());
        }
        Some(v1::task::Kind::Histogram(h)) => {
            accepted += partial_tree_wire(h.partial_tree.as_ref(), &h.nodes)
        }
        Some(v1::task::Kind::Sketch(_) | v1::task::Kind::GetParameters(_)) | None => {}
    }
    if !t.feature_view.is_empty() {
        accepted += feature_view(&t.feature_view);
    }
    if let Some(f) = &t.forest {
        accepted += forest_wire(f);
    }
    if let Some(e) = &t.ensemble {
        accepted += ensemble_wire(e);
    }
    accepted += usize::from(shoal_proto::tasks::payload_from_wire(t).is_ok());
    accepted
}

/// What the coordinator does with a client's result before aggregating it.
fn task_result(r: &v1::TaskResult) -> usize {
    match &r.outcome {
        Some(Outcome::Fit(f)) => {
            let mut accepted = 0;
            if let Some(p) = &f.parameters {
                accepted += weights(p);
            }
            if let Some(c) = &f.control_delta {
                accepted += weights(c);
            }
            if let Some(t) = &f.trees {
                accepted += forest_wire(t);
            }
            accepted
        }
        Some(Outcome::Sketch(s)) => s.sketch.as_ref().map_or(0, sketch_wire),
        Some(Outcome::Histogram(h)) => histograms_wire(&h.histograms),
        // An external model's initial parameters, decoded as the coordinator does.
        Some(Outcome::Parameters(p)) => p.parameters.as_ref().map_or(0, weights),
        Some(Outcome::Evaluate(_) | Outcome::Error(_)) | None => 0,
    }
}

/// Tensors, with the coordinator's element cap and with the client's (none).
fn weights(p: &v1::Parameters) -> usize {
    let mut accepted = 0;
    for max in [MAX_ELEMENTS, usize::MAX] {
        if let Ok(w) = shoal_proto::weights_from_wire(p, max) {
            accepted += 1;
            let _ = w.check_finite();
        }
    }
    accepted
}

/// Six rows of `n_features` columns (each row one value: -1e30, -1, 0, 0.5, 1, 1e30), labelled
/// round-robin with `n_classes` classes named `c0`, `c1`, ...
fn dataset(n_features: usize, n_classes: usize) -> Dataset {
    const VALUES: [f32; 6] = [-1e30, -1.0, 0.0, 0.5, 1.0, 1e30];
    let features = Array2::from_shape_fn((VALUES.len(), n_features), |(i, _)| VALUES[i]);
    let labels = (0..VALUES.len()).map(|i| i % n_classes).collect();
    let feature_names = (0..n_features).map(|f| format!("f{f}")).collect();
    let class_names = (0..n_classes).map(|c| format!("c{c}")).collect();
    Dataset::new(features, labels, feature_names, class_names).expect("a valid probe dataset")
}

/// A forest checkpoint blob, decoded and checked against each shape, then used.
fn forest_blob(bytes: &[u8]) -> usize {
    let mut accepted = 0;
    for (n_features, n_classes) in BLOB_SHAPES {
        if let Ok(f) = Forest::from_blob(bytes, n_features, n_classes, MAX_TREES) {
            accepted += 1;
            let _ = f.evaluate(&dataset(n_features, n_classes));
        }
    }
    accepted
}

/// A forest off the wire: converted, then checked against each shape and used as the server
/// (merging a client's trees) and a client (evaluating the global forest) would.
fn forest_wire(f: &v1::Forest) -> usize {
    let Ok(f) = Forest::try_from(f.clone()) else {
        return 0;
    };
    let mut accepted = 0;
    for (n_features, n_classes) in BLOB_SHAPES {
        if f.check(n_features, n_classes, MAX_TREES).is_ok() {
            accepted += 1;
            let _ = f.evaluate(&dataset(n_features, n_classes));
            let mut global = Forest::new(n_features, n_classes);
            let _ = global.merge(f.clone(), 1, MAX_TREES);
        }
    }
    accepted
}

fn use_ensemble(e: &Ensemble, n_features: usize, n_classes: usize) {
    let data = dataset(n_features, n_classes);
    let _ = e.evaluate(&data);
    let _ = e.edges.bin_matrix(data.features.view());
}

/// A gbdt checkpoint blob, decoded and checked against each shape, then used.
fn ensemble_blob(bytes: &[u8]) -> usize {
    let mut accepted = 0;
    for (n_features, n_classes) in BLOB_SHAPES {
        if let Ok(e) = Ensemble::from_blob(bytes, n_features, n_classes, MAX_TREES) {
            accepted += 1;
            use_ensemble(&e, n_features, n_classes);
        }
    }
    accepted
}

/// An ensemble off the wire (a client's first histogram task or evaluation task): converted,
/// checked against each shape, then used.
fn ensemble_wire(e: &v1::Ensemble) -> usize {
    let Ok(e) = Ensemble::try_from(e.clone()) else {
        return 0;
    };
    let mut accepted = 0;
    for (n_features, n_classes) in BLOB_SHAPES {
        if e.check(n_features, n_classes, MAX_TREES).is_ok() {
            accepted += 1;
            use_ensemble(&e, n_features, n_classes);
        }
    }
    accepted
}

/// A client's sketch off the wire, converted and checked as the coordinator does.
fn sketch_wire(s: &v1::QuantileSketch) -> usize {
    let Ok(s) = QuantileSketch::try_from(s.clone()) else {
        return 0;
    };
    let mut accepted = 0;
    for (n_features, _) in BLOB_SHAPES {
        if s.check(n_features, MAX_SKETCH_POINTS).is_ok() {
            accepted += 1;
            // The coordinator merges the clients' sketches and cuts the bin edges out of the
            // merged one: edges it then sends to every client, so they must be valid.
            let mut merged = QuantileSketch::empty(n_features);
            let _ = merged.merge(&s);
            for max_bins in [2, 256] {
                let edges = merged.bin_edges(max_bins);
                assert!(
                    edges.validate(n_features).is_ok(),
                    "bin edges cut from a checked sketch are not valid: {edges:?}"
                );
            }
        }
    }
    accepted
}

/// A client's histograms off the wire, checked against each shape and summed as the coordinator
/// does.
fn histograms_wire(h: &[v1::NodeHistogram]) -> usize {
    let mut accepted = 0;
    for (n_features, bins) in HISTOGRAM_SHAPES {
        let values = h.iter().map(|n| n.values.clone()).collect();
        if let Ok(hs) = histograms_from_values(values, n_features, bins, MAX_HISTOGRAMS) {
            accepted += 1;
            let mut sum = Histogram::zeros(n_features, bins);
            for h in &hs {
                let _ = sum.add(h);
                let _ = h.totals();
            }
        }
    }
    accepted
}

/// A partial gbdt tree as a client receives it, checked against fixed bin edges, then used to
/// build the histograms of `nodes` from a few binned rows.
fn partial_tree_wire(t: Option<&v1::BoostTree>, nodes: &[u32]) -> usize {
    let Some(Ok(tree)) =
        t.map(|t| shoal_proto::trees::boost_tree_from_wire(t.clone(), "partial_tree"))
    else {
        return 0;
    };
    partial_tree(&tree, nodes)
}

fn partial_tree(tree: &GTree, nodes: &[u32]) -> usize {
    let edges = BinEdges {
        edges: vec![vec![-1.0, 0.0, 1.0], vec![0.5], vec![], vec![0.0, 2.0]],
    };
    if tree.check(&edges).is_err() {
        return 0;
    }
    let data = dataset(edges.edges.len(), 2);
    let Ok(binned) = edges.bin_matrix(data.features.view()) else {
        return 1;
    };
    for row in data.features.outer_iter() {
        let _ = tree.predict_raw(row);
    }
    let g: Vec<f64> = (0..binned.nrows()).map(|i| i as f64 - 2.5).collect();
    let h = vec![0.25; binned.nrows()];
    let _ = build_histograms(binned.view(), tree, nodes, &g, &h, edges.max_bins());
    1
}

/// A fusion view as a client receives it, applied to a few rows.
fn feature_view(bytes: &[u8]) -> usize {
    let Ok(view) = FeatureView::from_bytes(bytes) else {
        return 0;
    };
    let _ = view.apply(&dataset(4, 3));
    1
}
