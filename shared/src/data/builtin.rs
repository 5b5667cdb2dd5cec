//! The built-in datasets, compiled into the binary so a demo needs no files.
//!
//! | name | rows × features | classes | source |
//! |---|---|---|---|
//! | `digits` | 1797 × 64 | 10 | UCI optical digits (scikit-learn's copy), `shared/data/` |
//! | `seed-fl` | 200 per client × 10 | 2 | generated: a different concept per client |
//! | `iris` | 150 × 4 | 3 | `linfa-datasets` |
//! | `winequality` | 1599 × 11 | 6 | `linfa-datasets` (red wine quality scores 3..8) |
//! | `multimodal` | 1000 × 24 | 2 | the tutorial's fusion data, its exact numpy draw; test = last 200 rows |
//! | `classification` | 1000 × 20 | 2 | generated like scikit-learn's `make_classification` (AutoML) |
//! | `signals` | 200 per client × 100 | 1 band per client | generated: sines of a frequency band per client (diffusion) |
//!
//! Every dataset is cut once, with a fixed seed, into a hold-out set for the coordinator's
//! centralized evaluation ([`Builtin::holdout`]) and a training pool ([`Builtin::train_pool`])
//! that the clients' shards are partitioned from ([`Builtin::shard`]). Because the cut does not
//! depend on any job's seed, no client ever trains on a hold-out row.

use std::fmt;
use std::io::Read;
use std::str::FromStr;

use ndarray::Array2;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use super::partition::Partitioner;
use super::{concat, sort_class_names, stratified_split, Dataset};
use crate::error::{Error, Result};

/// Fraction of each built-in dataset held out, stratified by class, for centralized evaluation.
pub const HOLDOUT_FRACTION: f64 = 0.2;
/// Seed of the hold-out split: fixed, and independent of any job seed.
pub const HOLDOUT_SEED: u64 = 0;
/// Rows generated for each `seed-fl` client.
pub const SEED_FL_ROWS: usize = 200;
/// Features of `seed-fl`: `x0..x9`, independent standard normals.
pub const SEED_FL_FEATURES: usize = 10;
/// Rows of each of the three concepts in the `seed-fl` hold-out set.
pub const SEED_FL_HOLDOUT_ROWS_PER_CONCEPT: usize = 100;
/// The `seed-fl` decision thresholds: client `i` labels `x0 + x1 + noise > SEED_FL_THRESHOLDS[i % 3]`.
pub const SEED_FL_THRESHOLDS: [f32; 3] = [0.0, 1.0, 0.5];
/// Standard deviation of the label noise added to `x0 + x1` in `seed-fl`.
pub const SEED_FL_NOISE_STD: f32 = 0.5;

/// Every built-in dataset; the same list as [`Builtin::ALL`], for callers that name it by module.
pub const ALL: [Builtin; 7] = Builtin::ALL;

/// Shape of `classification`, scikit-learn's `make_classification` arguments of the tutorial's
/// AutoML problem: rows, features, informative, redundant (the rest are noise), label flips.
pub const CLASSIFICATION_ROWS: usize = 1000;
pub const CLASSIFICATION_FEATURES: usize = 20;
pub const CLASSIFICATION_INFORMATIVE: usize = 10;
pub const CLASSIFICATION_REDUNDANT: usize = 5;
pub const CLASSIFICATION_FLIP_Y: f64 = 0.01;

/// Frequency bands of `signals`: client (shard) `i` holds band `i`, so at most this many shards.
pub const SIGNAL_BANDS: usize = 8;
/// Signals generated for each `signals` client.
pub const SIGNALS_PER_CLIENT: usize = 200;
/// Held-out signals per band in the coordinator's `signals` test set.
pub const SIGNALS_HOLDOUT_PER_BAND: usize = 40;

/// Rows of `multimodal` (the original generator's 1000 samples).
pub const MULTIMODAL_ROWS: usize = 1000;
/// The tutorial's `np.random.seed(42)` before generating `multimodal`.
pub const MULTIMODAL_NUMPY_SEED: u32 = 42;
/// `multimodal`'s test set is its last 200 rows, the tutorial's `split_idx = 800`.
pub const MULTIMODAL_TRAIN_ROWS: usize = 800;
/// Modalities of `multimodal`: name prefix and feature count.
pub const MULTIMODAL_MODALITIES: [(&str, usize); 3] = [("m1", 10), ("m2", 8), ("m3", 6)];

/// Golden-ratio constant used to spread `seed-fl` client indices over the seed space.
const SEED_MIX: u64 = 0x9E37_79B9_7F4A_7C15;
/// The ChaCha stream of the `seed-fl` hold-out generators. Clients use stream 0, and different
/// streams of ChaCha are independent keystreams even under the same key, so the hold-out can never
/// replay a client's rows whatever the job seed.
const SEED_FL_HOLDOUT_STREAM: u64 = 1;

/// scikit-learn's copy of the UCI digits (see `shared/data/README.md`).
const DIGITS_CSV_GZ: &[u8] = include_bytes!("../../data/digits.csv.gz");
const DIGITS_ROWS: usize = 1797;
const DIGITS_SIDE: usize = 8;
/// Pixels count "on" cells of a 4×4 block, so they lie in `0..=16`.
const DIGITS_MAX_PIXEL: f32 = 16.0;

/// A built-in dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// 8×8 handwritten digits, pixels scaled to `[0, 1]`.
    Digits,
    /// The original Shoal demo's synthetic data: each client sees a different labelling concept.
    SeedFl,
    /// Fisher's iris, z-scored.
    Iris,
    /// Red wine quality (UCI), z-scored.
    WineQuality,
    /// The original tutorial's three-modality data: `m1_*` (10), `m2_*` (8), `m3_*` (6) standard
    /// normal features; label = sum of the first 5 of m1 + sum of the first 5 of m2 + N(0, 0.5²) > 0.
    /// Modality 3 carries no signal.
    Multimodal,
    /// 1-D sequences of 100 points, `sin(f·u + φ) + 0.1·noise` over u in [0, 4π] (the tutorial's
    /// diffusion data); client `i` holds frequency/phase band `i` (label `band-i`).
    Signals,
    /// Binary classification like scikit-learn's `make_classification(1000, 20, n_informative=10,
    /// n_redundant=5, n_clusters_per_class=1)`: the tutorial's AutoML data.
    Classification,
}

impl Builtin {
    /// Every built-in dataset, in the order of [`Builtin::name`]'s list.
    pub const ALL: [Builtin; 7] = [
        Builtin::Digits,
        Builtin::SeedFl,
        Builtin::Iris,
        Builtin::WineQuality,
        Builtin::Multimodal,
        Builtin::Signals,
        Builtin::Classification,
    ];

    /// The name used on the command line and in job specs.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::Digits => "digits",
            Builtin::SeedFl => "seed-fl",
            Builtin::Iris => "iris",
            Builtin::WineQuality => "winequality",
            Builtin::Multimodal => "multimodal",
            Builtin::Signals => "signals",
            Builtin::Classification => "classification",
        }
    }

    /// The full dataset, with its fixed preprocessing:
    ///
    /// - `digits`: pixels divided by 16, their known maximum. A fixed range rather than a
    ///   statistic, so nothing about any client's data leaks into another's features.
    /// - `iris`, `winequality`: each feature z-scored with the mean and (population) standard
    ///   deviation of the training pool (the rows [`Builtin::train_pool`] returns), so the hold-out
    ///   rows do not inform the scaling. This is part of the built-in dataset's definition, computed
    ///   identically on every participant, not a federated statistic.
    /// - `seed-fl`: has no single full dataset; this returns clients 0, 1 and 2 of seed 0
    ///   concatenated (600 rows, one block per concept), the same as `train_pool`.
    pub fn load(self) -> Result<Dataset> {
        match self {
            Builtin::Digits => load_digits(),
            Builtin::SeedFl => {
                let blocks = (0..SEED_FL_THRESHOLDS.len())
                    .map(|client| seed_fl_client(0, client))
                    .collect::<Result<Vec<_>>>()?;
                concat(&blocks)
            }
            Builtin::Multimodal => multimodal(),
            Builtin::Classification => classification(),
            Builtin::Signals => {
                let blocks = (0..SIGNAL_BANDS)
                    .map(|band| signals_client(0, band))
                    .collect::<Result<Vec<_>>>()?;
                concat(&blocks)
            }
            Builtin::Iris => {
                let raw = linfa_datasets::iris();
                let class_names = ["setosa", "versicolor", "virginica"].map(String::from);
                let feature_names = raw.feature_names().to_vec();
                standardized(
                    raw.records,
                    raw.targets.to_vec(),
                    feature_names,
                    class_names.to_vec(),
                )
            }
            Builtin::WineQuality => {
                let raw = linfa_datasets::winequality();
                // Targets are the quality scores themselves (3..8); classes are the scores present.
                let mut class_names: Vec<String> =
                    raw.targets.iter().map(|q| q.to_string()).collect();
                sort_class_names(&mut class_names);
                class_names.dedup();
                let labels = raw
                    .targets
                    .iter()
                    .map(|q| {
                        let name = q.to_string();
                        // Every score was collected into `class_names` just above.
                        class_names.iter().position(|c| *c == name).unwrap_or(0)
                    })
                    .collect();
                let feature_names = raw.feature_names().to_vec();
                standardized(raw.records, labels, feature_names, class_names)
            }
        }
    }

    /// The coordinator's centralized test set.
    ///
    /// For a file-backed dataset: the test rows of
    /// `stratified_split(labels, n_classes, HOLDOUT_FRACTION, HOLDOUT_SEED)` over [`Builtin::load`].
    /// For `seed-fl`: 100 fresh rows of each of the three concepts (300 rows, concept by concept),
    /// from generators on a ChaCha stream no client uses.
    pub fn holdout(self) -> Result<Dataset> {
        match self {
            Builtin::SeedFl => {
                let blocks = SEED_FL_THRESHOLDS
                    .iter()
                    .enumerate()
                    .map(|(concept, &threshold)| {
                        let mut rng =
                            ChaCha8Rng::seed_from_u64(HOLDOUT_SEED.wrapping_add(concept as u64));
                        rng.set_stream(SEED_FL_HOLDOUT_STREAM);
                        seed_fl_rows(&mut rng, threshold, SEED_FL_HOLDOUT_ROWS_PER_CONCEPT)
                    })
                    .collect::<Result<Vec<_>>>()?;
                concat(&blocks)
            }
            Builtin::Signals => {
                let blocks = (0..SIGNAL_BANDS)
                    .map(|band| {
                        let rows = crate::models::diffusion::held_out_signals(
                            band,
                            SIGNALS_HOLDOUT_PER_BAND,
                            HOLDOUT_SEED,
                        );
                        signals_dataset(rows, band)
                    })
                    .collect::<Result<Vec<_>>>()?;
                concat(&blocks)
            }
            Builtin::Multimodal => {
                let full = self.load()?;
                Ok(full.select(&(MULTIMODAL_TRAIN_ROWS..full.n_rows()).collect::<Vec<_>>()))
            }
            _ => {
                let full = self.load()?;
                let (_, test) = holdout_split(&full);
                Ok(full.select(&test))
            }
        }
    }

    /// The rows clients' shards are cut from: everything [`Builtin::holdout`] does not take.
    /// For `seed-fl`, the same as [`Builtin::load`].
    pub fn train_pool(self) -> Result<Dataset> {
        match self {
            Builtin::SeedFl | Builtin::Signals => self.load(),
            Builtin::Multimodal => {
                let full = self.load()?;
                Ok(full.select(&(0..MULTIMODAL_TRAIN_ROWS).collect::<Vec<_>>()))
            }
            _ => {
                let full = self.load()?;
                let (train, _) = holdout_split(&full);
                Ok(full.select(&train))
            }
        }
    }

    /// Client `shard`'s data out of `n_shards`: the training pool partitioned by `scheme` with
    /// `seed`, then that client's rows.
    ///
    /// `seed-fl` ignores `scheme`: client `shard` gets [`SEED_FL_ROWS`] rows generated for it from
    /// `(seed, shard)`, labelled with threshold `SEED_FL_THRESHOLDS[shard % 3]`, so that the
    /// clients hold different concepts (the heterogeneity this dataset exists to show).
    ///
    /// # Errors
    /// If `shard >= n_shards`, or the partition fails (see [`Partitioner::partition`]).
    pub fn shard(
        self,
        scheme: &Partitioner,
        shard: usize,
        n_shards: usize,
        seed: u64,
    ) -> Result<Dataset> {
        if shard >= n_shards {
            return Err(Error::invalid(
                "shard index",
                format!("shard {shard} is out of range for {n_shards} shards (0..{n_shards})"),
            ));
        }
        match self {
            Builtin::SeedFl => seed_fl_client(seed, shard),
            Builtin::Signals => signals_client(seed, shard),
            _ => {
                let pool = self.train_pool()?;
                let parts = scheme.partition(&pool.labels, pool.n_classes(), n_shards, seed)?;
                Ok(pool.select(&parts[shard]))
            }
        }
    }

    /// Every client's shard, as [`Builtin::shard`] gives them one by one (partitioned once).
    pub fn shards(self, scheme: &Partitioner, n_shards: usize, seed: u64) -> Result<Vec<Dataset>> {
        if n_shards == 0 {
            return Err(Error::invalid("number of shards", "must be at least 1"));
        }
        match self {
            Builtin::SeedFl => (0..n_shards).map(|s| seed_fl_client(seed, s)).collect(),
            Builtin::Signals => (0..n_shards).map(|s| signals_client(seed, s)).collect(),
            _ => {
                let pool = self.train_pool()?;
                let parts = scheme.partition(&pool.labels, pool.n_classes(), n_shards, seed)?;
                Ok(parts.iter().map(|rows| pool.select(rows)).collect())
            }
        }
    }
}

impl FromStr for Builtin {
    type Err = Error;

    /// Parses one of `digits`, `seed-fl`, `iris`, `winequality`.
    fn from_str(s: &str) -> Result<Self> {
        Builtin::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| Error::Unknown {
                what: "dataset",
                name: s.to_owned(),
                expected: Builtin::ALL.map(Builtin::name).join(", "),
            })
    }
}

impl fmt::Display for Builtin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `(train_rows, test_rows)` of the fixed hold-out split.
fn holdout_split(full: &Dataset) -> (Vec<usize>, Vec<usize>) {
    stratified_split(
        &full.labels,
        full.n_classes(),
        HOLDOUT_FRACTION,
        HOLDOUT_SEED,
    )
}

/// Decodes the embedded digits: 1797 lines of 64 pixels then the label, no header.
fn load_digits() -> Result<Dataset> {
    let bad = |msg: String| Error::Data(format!("embedded digits data: {msg}"));
    let mut text = String::new();
    flate2::read::GzDecoder::new(DIGITS_CSV_GZ)
        .read_to_string(&mut text)
        .map_err(|e| bad(format!("cannot decompress: {e}")))?;
    let n_pixels = DIGITS_SIDE * DIGITS_SIDE;
    let mut values = Vec::with_capacity(DIGITS_ROWS * n_pixels);
    let mut labels = Vec::with_capacity(DIGITS_ROWS);
    for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        if cells.len() != n_pixels + 1 {
            return Err(bad(format!(
                "line {}: expected {} fields, found {}",
                i + 1,
                n_pixels + 1,
                cells.len()
            )));
        }
        for cell in &cells[..n_pixels] {
            let pixel: u8 = cell
                .parse()
                .ok()
                .filter(|&p| f32::from(p) <= DIGITS_MAX_PIXEL)
                .ok_or_else(|| bad(format!("line {}: bad pixel `{cell}`", i + 1)))?;
            values.push(f32::from(pixel) / DIGITS_MAX_PIXEL);
        }
        let label: usize = cells[n_pixels]
            .parse()
            .ok()
            .filter(|&l| l < 10)
            .ok_or_else(|| bad(format!("line {}: bad label `{}`", i + 1, cells[n_pixels])))?;
        labels.push(label);
    }
    if labels.len() != DIGITS_ROWS {
        return Err(bad(format!(
            "expected {DIGITS_ROWS} rows, found {}",
            labels.len()
        )));
    }
    let features =
        Array2::from_shape_vec((labels.len(), n_pixels), values).map_err(|e| bad(e.to_string()))?;
    let feature_names = (0..DIGITS_SIDE)
        .flat_map(|r| (0..DIGITS_SIDE).map(move |c| format!("pixel_{r}_{c}")))
        .collect();
    let class_names = (0..10).map(|d| d.to_string()).collect();
    Dataset::new(features, labels, feature_names, class_names)
}

/// Z-scores each column with the statistics of the hold-out split's training rows (a zero
/// standard deviation leaves the column centred but unscaled), then narrows to `f32`.
fn standardized(
    records: Array2<f64>,
    labels: Vec<usize>,
    feature_names: Vec<String>,
    class_names: Vec<String>,
) -> Result<Dataset> {
    let (train, _) = stratified_split(&labels, class_names.len(), HOLDOUT_FRACTION, HOLDOUT_SEED);
    let mut features = Array2::<f32>::zeros(records.raw_dim());
    let n = train.len().max(1) as f64;
    for (j, column) in records.columns().into_iter().enumerate() {
        let mean = train.iter().map(|&r| column[r]).sum::<f64>() / n;
        let var = train
            .iter()
            .map(|&r| (column[r] - mean).powi(2))
            .sum::<f64>()
            / n;
        let std = if var > 0.0 { var.sqrt() } else { 1.0 };
        for (out, &x) in features.column_mut(j).iter_mut().zip(column.iter()) {
            *out = ((x - mean) / std) as f32;
        }
    }
    Dataset::new(features, labels, feature_names, class_names)
}

/// One `seed-fl` client's rows, from its own generator.
fn seed_fl_client(seed: u64, client: usize) -> Result<Dataset> {
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ (client as u64).wrapping_add(1).wrapping_mul(SEED_MIX));
    let threshold = SEED_FL_THRESHOLDS[client % SEED_FL_THRESHOLDS.len()];
    seed_fl_rows(&mut rng, threshold, SEED_FL_ROWS)
}

/// Client `band`'s `signals`: [`SIGNALS_PER_CLIENT`] sequences of its own band.
fn signals_client(seed: u64, band: usize) -> Result<Dataset> {
    if band >= SIGNAL_BANDS {
        return Err(Error::invalid(
            "shard index",
            format!(
                "`signals` has {SIGNAL_BANDS} frequency bands, one per client: shard {band} has none (use at most {SIGNAL_BANDS} shards)"
            ),
        ));
    }
    signals_dataset(
        crate::models::diffusion::signals(band, SIGNALS_PER_CLIENT, seed),
        band,
    )
}

/// Rows of one band as a dataset: features `t000..t099`, every label `band-<band>` out of all
/// [`SIGNAL_BANDS`] band names.
fn signals_dataset(rows: Array2<f32>, band: usize) -> Result<Dataset> {
    let n = rows.nrows();
    let feature_names = (0..rows.ncols()).map(|i| format!("t{i:03}")).collect();
    let class_names = (0..SIGNAL_BANDS).map(|b| format!("band-{b}")).collect();
    Dataset::new(rows, vec![band; n], feature_names, class_names)
}

/// The `classification` dataset, generated as scikit-learn's `make_classification` does with
/// one cluster per class: class centroids on vertices of a hypercube of side 2 in the informative
/// dimensions, standard normal points mixed by a random matrix per class, redundant features as
/// random linear combinations of the informative ones, the rest noise, 1% of labels redrawn,
/// then rows and columns shuffled. From a fixed seed, so every participant builds the same rows.
fn classification() -> Result<Dataset> {
    use rand::seq::SliceRandom;
    let mut rng = ChaCha8Rng::seed_from_u64(HOLDOUT_SEED ^ 0x6d61_6b65_636c_6173);
    let (n, width, inf, red) = (
        CLASSIFICATION_ROWS,
        CLASSIFICATION_FEATURES,
        CLASSIFICATION_INFORMATIVE,
        CLASSIFICATION_REDUNDANT,
    );
    let uniform = |rng: &mut ChaCha8Rng, rows: usize, cols: usize| {
        Array2::from_shape_fn((rows, cols), |_| 2.0 * rand::Rng::gen::<f64>(rng) - 1.0)
    };
    // Two distinct hypercube vertices in {-1, 1}^inf.
    let mut centroids: Vec<Vec<f64>> = Vec::new();
    while centroids.len() < 2 {
        let v: Vec<f64> = (0..inf)
            .map(|_| {
                if rand::Rng::gen::<bool>(&mut rng) {
                    1.0
                } else {
                    -1.0
                }
            })
            .collect();
        if !centroids.contains(&v) {
            centroids.push(v);
        }
    }
    let mut x = Array2::<f64>::zeros((n, width));
    let mut labels = Vec::with_capacity(n);
    for (class, centroid) in centroids.iter().enumerate() {
        let rows = n / 2 + usize::from(class == 0) * (n % 2);
        let z = Array2::from_shape_fn((rows, inf), |_| StandardNormal.sample(&mut rng));
        let mixed = z.dot(&uniform(&mut rng, inf, inf));
        let start = labels.len();
        for (i, row) in mixed.outer_iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                x[[start + i, j]] = v + centroid[j];
            }
            labels.push(class);
        }
    }
    let b = uniform(&mut rng, inf, red);
    let redundant = x.slice(ndarray::s![.., ..inf]).dot(&b);
    x.slice_mut(ndarray::s![.., inf..inf + red])
        .assign(&redundant);
    for v in x.slice_mut(ndarray::s![.., inf + red..]).iter_mut() {
        *v = StandardNormal.sample(&mut rng);
    }
    for label in labels.iter_mut() {
        if rand::Rng::gen::<f64>(&mut rng) < CLASSIFICATION_FLIP_Y {
            *label = rand::Rng::gen_range(&mut rng, 0..2);
        }
    }
    let mut rows: Vec<usize> = (0..n).collect();
    rows.shuffle(&mut rng);
    let mut cols: Vec<usize> = (0..width).collect();
    cols.shuffle(&mut rng);
    let features = Array2::from_shape_fn((n, width), |(i, j)| x[[rows[i], cols[j]]] as f32);
    let labels = rows.iter().map(|&r| labels[r]).collect();
    let feature_names = (0..width).map(|j| format!("x{j}")).collect();
    Dataset::new(
        features,
        labels,
        feature_names,
        vec!["0".into(), "1".into()],
    )
}

/// The `multimodal` dataset: the tutorial's own rows. It seeded numpy's legacy generator with 42
/// and drew `randn(1000, 10)`, `randn(1000, 8)`, `randn(1000, 6)` and `randn(1000)` for the label
/// noise; [`LegacyRandomState`](super::numpy_legacy::LegacyRandomState) replays that stream bit
/// for bit. Label: `sum(m1[:5]) + sum(m2[:5]) + 0.5 * noise > 0`, computed in f64 as numpy did.
fn multimodal() -> Result<Dataset> {
    let mut rng = super::numpy_legacy::LegacyRandomState::new(MULTIMODAL_NUMPY_SEED);
    let blocks: Vec<Vec<f64>> = MULTIMODAL_MODALITIES
        .iter()
        .map(|(_, width)| rng.randn(MULTIMODAL_ROWS * width))
        .collect();
    let noise = rng.randn(MULTIMODAL_ROWS);
    let width: usize = MULTIMODAL_MODALITIES.iter().map(|(_, n)| n).sum();
    let mut values = Vec::with_capacity(MULTIMODAL_ROWS * width);
    let mut labels = Vec::with_capacity(MULTIMODAL_ROWS);
    for (row, noise) in noise.iter().enumerate() {
        let mut signal = 0.0f64;
        for (m, ((_, w), block)) in MULTIMODAL_MODALITIES.iter().zip(&blocks).enumerate() {
            let r = &block[row * w..(row + 1) * w];
            if m < 2 {
                signal += r[..5].iter().sum::<f64>();
            }
            values.extend(r.iter().map(|&v| v as f32));
        }
        labels.push(usize::from(signal + noise * 0.5 > 0.0));
    }
    let features = Array2::from_shape_vec((MULTIMODAL_ROWS, width), values)
        .map_err(|e| Error::Data(format!("multimodal generation: {e}")))?;
    let feature_names = MULTIMODAL_MODALITIES
        .iter()
        .flat_map(|(m, n)| (0..*n).map(move |i| format!("{m}_{i}")))
        .collect();
    Dataset::new(
        features,
        labels,
        feature_names,
        vec!["0".into(), "1".into()],
    )
}

/// `n` rows of the `seed-fl` concept with the given threshold: features `x ~ N(0, I₁₀)`, label
/// `1` when `x0 + x1 + N(0, 0.5²) > threshold`.
fn seed_fl_rows(rng: &mut ChaCha8Rng, threshold: f32, n: usize) -> Result<Dataset> {
    let mut values = Vec::with_capacity(n * SEED_FL_FEATURES);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let row: Vec<f32> = (0..SEED_FL_FEATURES)
            .map(|_| StandardNormal.sample(rng))
            .collect();
        let noise: f32 = StandardNormal.sample(rng);
        labels.push(usize::from(
            row[0] + row[1] + SEED_FL_NOISE_STD * noise > threshold,
        ));
        values.extend(row);
    }
    let features = Array2::from_shape_vec((n, SEED_FL_FEATURES), values)
        .map_err(|e| Error::Data(format!("seed-fl generation: {e}")))?;
    Dataset::new(
        features,
        labels,
        (0..SEED_FL_FEATURES).map(|i| format!("x{i}")).collect(),
        vec!["0".into(), "1".into()],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn positive_rate(d: &Dataset) -> f64 {
        d.labels.iter().filter(|&&l| l == 1).count() as f64 / d.n_rows() as f64
    }

    #[test]
    fn names_parse_and_display() {
        for b in Builtin::ALL {
            assert_eq!(b.name().parse::<Builtin>().unwrap(), b);
            assert_eq!(b.to_string(), b.name());
        }
        let err = "mnist".parse::<Builtin>().unwrap_err();
        assert!(matches!(
            err,
            Error::Unknown {
                what: "dataset",
                ..
            }
        ));
        assert!(
            err.to_string()
                .contains("digits, seed-fl, iris, winequality"),
            "{err}"
        );
    }

    #[test]
    fn digits_loads_scaled() {
        let d = Builtin::Digits.load().unwrap();
        assert_eq!((d.n_rows(), d.n_features(), d.n_classes()), (1797, 64, 10));
        assert_eq!(d.classes_present(), 10);
        assert!(d.features.iter().all(|&v| (0.0..=1.0).contains(&v)));
        assert!(d.features.iter().any(|&v| v == 1.0));
        assert_eq!(d.feature_names[0], "pixel_0_0");
        assert_eq!(d.feature_names[9], "pixel_1_1");
        assert_eq!(d.feature_names[63], "pixel_7_7");
        assert_eq!(
            d.class_names,
            (0..10).map(|i| i.to_string()).collect::<Vec<_>>()
        );
        // The first row of scikit-learn's copy is a 0 with pixel (0, 2) = 5.
        assert_eq!(d.labels[0], 0);
        assert_eq!(d.features[[0, 2]], 5.0 / 16.0);
    }

    #[test]
    fn digits_holdout_and_train_pool_are_disjoint_and_complete() {
        let full = Builtin::Digits.load().unwrap();
        let (train, test) = holdout_split(&full);
        assert!(train.iter().all(|r| test.binary_search(r).is_err()));
        assert_eq!(train.len() + test.len(), 1797);
        let holdout = Builtin::Digits.holdout().unwrap();
        let pool = Builtin::Digits.train_pool().unwrap();
        assert_eq!(holdout, full.select(&test));
        assert_eq!(pool, full.select(&train));
        assert_eq!(holdout.n_rows() + pool.n_rows(), 1797);
        // 20% of each class, to within a row.
        for (h, f) in holdout.class_counts().iter().zip(full.class_counts()) {
            assert!((*h as f64 - 0.2 * f as f64).abs() <= 1.0);
        }
    }

    #[test]
    fn digits_shards_partition_the_train_pool() {
        let scheme: Partitioner = "dirichlet:0.5".parse().unwrap();
        let pool = Builtin::Digits.train_pool().unwrap();
        let all = Builtin::Digits.shards(&scheme, 5, 9).unwrap();
        assert_eq!(
            all.iter().map(Dataset::n_rows).sum::<usize>(),
            pool.n_rows()
        );
        assert_eq!(Builtin::Digits.shard(&scheme, 3, 5, 9).unwrap(), all[3]);
        assert_ne!(Builtin::Digits.shard(&scheme, 3, 5, 10).unwrap(), all[3]);
        let err = Builtin::Digits.shard(&scheme, 5, 5, 9).unwrap_err();
        assert!(err.to_string().contains("shard 5"), "{err}");
        assert!(Builtin::Digits.shards(&scheme, 0, 9).is_err());
    }

    #[test]
    fn seed_fl_clients_hold_different_concepts() {
        let iid = Partitioner::Iid;
        let c0 = Builtin::SeedFl.shard(&iid, 0, 3, 7).unwrap();
        let c1 = Builtin::SeedFl.shard(&iid, 1, 3, 7).unwrap();
        assert_eq!((c0.n_rows(), c0.n_features()), (SEED_FL_ROWS, 10));
        assert_eq!(c0.class_names, vec!["0", "1"]);
        let (p0, p1) = (positive_rate(&c0), positive_rate(&c1));
        // Threshold 0 gives about 50% positives, threshold 1 about 25%.
        assert!((0.38..0.62).contains(&p0), "client 0 positive rate {p0}");
        assert!(p0 - p1 > 0.15, "client 0 {p0} vs client 1 {p1}");
        // The scheme is ignored; the seed is not.
        let shards_scheme: Partitioner = "shards:1".parse().unwrap();
        assert_eq!(Builtin::SeedFl.shard(&shards_scheme, 0, 3, 7).unwrap(), c0);
        assert_ne!(Builtin::SeedFl.shard(&iid, 0, 3, 8).unwrap(), c0);
        assert_eq!(Builtin::SeedFl.shards(&iid, 3, 7).unwrap()[1], c1);
        assert!(Builtin::SeedFl.shard(&iid, 3, 3, 7).is_err());
    }

    #[test]
    fn seed_fl_holdout_and_pool() {
        let holdout = Builtin::SeedFl.holdout().unwrap();
        assert_eq!((holdout.n_rows(), holdout.n_features()), (300, 10));
        let pool = Builtin::SeedFl.train_pool().unwrap();
        assert_eq!(pool, Builtin::SeedFl.load().unwrap());
        assert_eq!(pool.n_rows(), 3 * SEED_FL_ROWS);
        let client0 = Builtin::SeedFl.shard(&Partitioner::Iid, 0, 3, 0).unwrap();
        assert_eq!(pool.select(&(0..SEED_FL_ROWS).collect::<Vec<_>>()), client0);
        // No hold-out row appears among the pool's rows.
        for h in holdout.features.rows() {
            assert!(pool.features.rows().into_iter().all(|p| p != h));
        }
        // Blocks follow the concepts: the first (t = 0) has more positives than the second (t = 1).
        let block = |k: usize| holdout.select(&(k * 100..(k + 1) * 100).collect::<Vec<_>>());
        assert!(positive_rate(&block(0)) > positive_rate(&block(1)));
    }

    #[test]
    fn signals_give_each_client_its_own_band_and_hold_out_fresh_rows() {
        let iid = Partitioner::Iid;
        let c1 = Builtin::Signals.shard(&iid, 1, 3, 7).unwrap();
        assert_eq!((c1.n_rows(), c1.n_features()), (SIGNALS_PER_CLIENT, 100));
        assert!(c1.labels.iter().all(|&l| l == 1));
        assert_eq!(c1.class_names.len(), SIGNAL_BANDS);
        assert_eq!(c1.class_names[1], "band-1");
        assert_eq!(Builtin::Signals.shards(&iid, 3, 7).unwrap()[1], c1);
        let err = Builtin::Signals
            .shard(&iid, SIGNAL_BANDS, SIGNAL_BANDS + 1, 7)
            .unwrap_err()
            .to_string();
        assert!(err.contains("frequency bands"), "{err}");
        let holdout = Builtin::Signals.holdout().unwrap();
        assert_eq!(holdout.n_rows(), SIGNAL_BANDS * SIGNALS_HOLDOUT_PER_BAND);
        assert_eq!(holdout.labels[SIGNALS_HOLDOUT_PER_BAND], 1);
        // Held-out rows are drawn apart from any client's, even under the hold-out seed.
        let same_seed = Builtin::Signals.shard(&iid, 0, 3, HOLDOUT_SEED).unwrap();
        for h in holdout
            .features
            .rows()
            .into_iter()
            .take(SIGNALS_HOLDOUT_PER_BAND)
        {
            assert!(same_seed.features.rows().into_iter().all(|p| p != h));
        }
    }

    #[test]
    fn classification_is_balanced_separable_and_has_redundant_features() {
        let d = Builtin::Classification.load().unwrap();
        assert_eq!((d.n_rows(), d.n_features()), (1000, 20));
        let positives = d.labels.iter().filter(|&&l| l == 1).count();
        assert!((470..=530).contains(&positives), "{positives}");
        assert_eq!(d, Builtin::Classification.load().unwrap(), "fixed seed");
        // 5 columns are exact linear combinations of 10 others: the 20 columns have rank 15.
        let x = d.features.mapv(f64::from);
        let gram = x.t().dot(&x);
        let mut m = gram.clone();
        let mut rank = 0;
        let scale = gram.diag().iter().cloned().fold(0.0, f64::max);
        for c in 0..20 {
            if let Some(p) = (rank..20).max_by(|&a, &b| m[[a, c]].abs().total_cmp(&m[[b, c]].abs()))
            {
                if m[[p, c]].abs() > 1e-6 * scale {
                    for k in 0..20 {
                        m.swap([rank, k], [p, k]);
                    }
                    for r in 0..20 {
                        if r != rank {
                            let f = m[[r, c]] / m[[rank, c]];
                            for k in 0..20 {
                                m[[r, k]] -= f * m[[rank, k]];
                            }
                        }
                    }
                    rank += 1;
                }
            }
        }
        assert_eq!(rank, 15);
        assert_eq!(Builtin::Classification.holdout().unwrap().n_rows(), 200);
    }

    /// The tutorial's exact rows (checked against numpy: `np.random.seed(42)`, the three
    /// `randn` blocks and the label noise) and its split: the last 200 rows are the test set.
    #[test]
    fn multimodal_replays_the_tutorials_numpy_draw() {
        let d = Builtin::Multimodal.load().unwrap();
        assert_eq!((d.n_rows(), d.n_features()), (1000, 24));
        assert_eq!(d.labels.iter().filter(|&&l| l == 1).count(), 502);
        assert_eq!(&d.labels[..10], &[1, 0, 1, 1, 0, 0, 0, 0, 0, 1]);
        assert_eq!(d.features[[0, 0]], 0.496_714_15_f32);
        assert_eq!(d.features[[999, 23]], 0.538_229_3_f32);
        let test = Builtin::Multimodal.holdout().unwrap();
        assert_eq!(test.n_rows(), 200);
        assert_eq!(test.labels.iter().filter(|&&l| l == 1).count(), 104);
        assert_eq!(test.features.row(0), d.features.row(800));
        assert_eq!(Builtin::Multimodal.train_pool().unwrap().n_rows(), 800);
    }

    #[test]
    fn iris_loads_standardized() {
        let d = Builtin::Iris.load().unwrap();
        assert_eq!((d.n_rows(), d.n_features()), (150, 4));
        assert_eq!(d.class_names, vec!["setosa", "versicolor", "virginica"]);
        assert_eq!(d.class_counts(), vec![50, 50, 50]);
        let pool = Builtin::Iris.train_pool().unwrap();
        assert_eq!(
            pool.n_rows() + Builtin::Iris.holdout().unwrap().n_rows(),
            150
        );
        for column in pool.features.columns() {
            let n = column.len() as f64;
            let mean = column.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
            let var = column
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / n;
            approx::assert_abs_diff_eq!(mean, 0.0, epsilon = 1e-5);
            approx::assert_abs_diff_eq!(var, 1.0, epsilon = 1e-4);
        }
    }

    #[test]
    fn winequality_loads_with_score_classes() {
        let d = Builtin::WineQuality.load().unwrap();
        assert_eq!((d.n_rows(), d.n_features()), (1599, 11));
        assert_eq!(d.class_names, vec!["3", "4", "5", "6", "7", "8"]);
        assert_eq!(d.class_counts(), vec![10, 53, 681, 638, 199, 18]);
        assert_eq!(d.feature_names[10], "alcohol");
        let holdout = Builtin::WineQuality.holdout().unwrap();
        assert_eq!(holdout.classes_present(), 6);
        assert_eq!(
            holdout.n_rows() + Builtin::WineQuality.train_pool().unwrap().n_rows(),
            1599
        );
    }
}
