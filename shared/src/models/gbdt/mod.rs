//! Federated histogram gradient boosting (XGBoost-style second-order boosting, lossless).
//!
//! Principal types: [`GbdtParams`], [`QuantileSketch`] (merged into global [`BinEdges`]),
//! [`Histogram`] (per-node gradient/hessian sums), [`TreeGrower`] (picks splits level by level),
//! [`GTree`] and [`Ensemble`] (the model; the wire form is protobuf, converted in `shoal-proto`,
//! and [`Ensemble::to_blob`] is the checkpoint form).
//!
//! Protocol; the coordinator never sees a row:
//! 1. Each client sends [`QuantileSketch::of`] its features; the coordinator merges them and fixes
//!    the global [`BinEdges`] once ([`QuantileSketch::bin_edges`]).
//! 2. Per round and per output, each client takes [`gradients`] of the current [`Ensemble`] and
//!    sends its root [`Histogram`] ([`build_histograms`] with [`GTree::root`]); the coordinator sums
//!    them in a fixed client order and starts a [`TreeGrower`].
//! 3. While [`TreeGrower::requests`] is not empty, clients route their binned rows through
//!    [`TreeGrower::partial_tree`] and return the requested (left-child) histograms; the coordinator
//!    sums them and [`TreeGrower::absorb`]s them (right children come from subtraction).
//! 4. The finished [`GTree`] carries splits and leaf values only. [`train_centralized`] runs the same
//!    grower on pooled rows, so both modes choose the same trees from the same histogram sums.

use ndarray::{Array2, ArrayView1, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::models::sgd::{argmax, EvalStats};
use crate::{Error, Result};

pub mod client;
mod kind;
pub mod server;

/// Checkpoint blob format name and version; a decoder refuses anything else.
pub const BLOB_FORMAT: &str = "shoal-gbdt";
pub const BLOB_VERSION: u32 = 1;
/// Deepest tree [`GbdtParams::check`] accepts (and the most a [`TreeGrower`] will grow).
pub const MAX_DEPTH: u32 = 16;
/// Most bins per feature: bin numbers must fit in `u16` with room to spare.
pub const MAX_BINS: u32 = 1024;
/// Largest sketch a client may be asked for, per feature.
pub const MAX_SKETCH_SIZE: u32 = 1 << 16;
/// Most nodes in one tree: a full binary tree of depth [`MAX_DEPTH`].
pub const MAX_NODES_PER_TREE: usize = (1 << (MAX_DEPTH + 1)) - 1;

/// Floor on a row's hessian, so that a confident row still counts towards `min_child_weight`
/// arithmetic without dividing by zero.
const MIN_HESSIAN: f64 = 1e-16;
/// Relative margin a split's gain must beat the best so far by. Gains that agree to this margin
/// are ties (the lowest feature, then bin, wins), so that summing the same histograms in another
/// order, which moves gains by a few ulps, cannot flip a decision between two equivalent splits
/// (e.g. two features that cut the rows identically).
const TIE_TOLERANCE: f64 = 1e-10;

/// Boosting hyper-parameters: the `model` section of a job spec for `gbdt`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GbdtParams {
    /// Depth limit of each tree (a root-only tree has depth 0).
    pub max_depth: u32,
    /// Bins per feature, `2..=1024`: at most `max_bins - 1` split candidates per feature.
    pub max_bins: u32,
    /// Shrinkage applied to every leaf value.
    pub learning_rate: f64,
    /// L2 regularisation of leaf values (XGBoost's `lambda`).
    pub lambda: f64,
    /// Least loss reduction a split must bring (XGBoost's `gamma`).
    pub gamma: f64,
    /// Least hessian sum each child of a split must keep.
    pub min_child_weight: f64,
    /// Quantile points per feature per client in the sketch that fixes the bin edges.
    pub sketch_size: u32,
}

impl Default for GbdtParams {
    fn default() -> Self {
        GbdtParams {
            max_depth: 4,
            max_bins: 64,
            learning_rate: 0.3,
            lambda: 1.0,
            gamma: 0.0,
            min_child_weight: 1.0,
            sketch_size: 256,
        }
    }
}

impl GbdtParams {
    /// Fails, naming the field, unless every parameter is in range.
    pub fn check(&self) -> Result<()> {
        let bad = |f: &str, m: String| Err(Error::invalid(format!("model.{f}"), m));
        if !(1..=MAX_DEPTH).contains(&self.max_depth) {
            return bad(
                "max_depth",
                format!("must be 1..={MAX_DEPTH}, found {}", self.max_depth),
            );
        }
        if !(2..=MAX_BINS).contains(&self.max_bins) {
            return bad(
                "max_bins",
                format!("must be 2..={MAX_BINS}, found {}", self.max_bins),
            );
        }
        if !(self.learning_rate > 0.0 && self.learning_rate <= 1.0) {
            return bad(
                "learning_rate",
                format!("must be in (0, 1], found {}", self.learning_rate),
            );
        }
        for (name, v) in [
            ("lambda", self.lambda),
            ("gamma", self.gamma),
            ("min_child_weight", self.min_child_weight),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(name, format!("must be finite and >= 0, found {v}"));
            }
        }
        if !(2..=MAX_SKETCH_SIZE).contains(&self.sketch_size) {
            return bad(
                "sketch_size",
                format!("must be 2..={MAX_SKETCH_SIZE}, found {}", self.sketch_size),
            );
        }
        Ok(())
    }
}

/// Mergeable per-feature quantile summary: for each feature, `(value, weight)` points.
///
/// Weights are row counts: a point of weight `w` stands for `w` rows near its value. Merging
/// concatenates (and sorts) points, so the merged summary of several clients describes the union of
/// their columns without any client sending a row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantileSketch {
    pub features: Vec<Vec<(f32, f64)>>,
}

impl QuantileSketch {
    /// A summary of no rows, to merge clients' sketches into.
    pub fn empty(n_features: usize) -> Self {
        QuantileSketch {
            features: vec![Vec::new(); n_features],
        }
    }

    /// A client's summary: per feature, `k` quantile points of its local values (the values at
    /// midpoint ranks `(i + 0.5) / k` of the sorted column), each weighted `n / k`; when `n <= k`,
    /// every value with weight 1. Non-finite values are skipped. Never rows: each column is
    /// summarised on its own.
    ///
    /// # Shapes
    /// `x`: `[n, n_features]` → `features.len() == n_features`, each with `min(n, k)` points.
    pub fn of(x: ArrayView2<'_, f32>, k: usize) -> Self {
        let k = k.max(1);
        let features = x
            .columns()
            .into_iter()
            .map(|col| {
                let mut v: Vec<f32> = col.iter().copied().filter(|v| v.is_finite()).collect();
                v.sort_by(f32::total_cmp);
                let n = v.len();
                if n <= k {
                    return v.into_iter().map(|x| (x, 1.0)).collect();
                }
                let w = n as f64 / k as f64;
                // (2i + 1) n / 2k < n for i < k: always a valid rank.
                (0..k)
                    .filter_map(|i| v.get((2 * i + 1) * n / (2 * k)).map(|&x| (x, w)))
                    .collect()
            })
            .collect();
        QuantileSketch { features }
    }

    /// Adds `other`'s points. Points are kept sorted by (value, weight), so the merged sketch does
    /// not depend on the order clients are merged in.
    pub fn merge(&mut self, other: &QuantileSketch) -> Result<()> {
        if other.features.len() != self.features.len() {
            return Err(Error::Shape {
                what: "quantile sketch".into(),
                expected: format!("{} features", self.features.len()),
                found: format!("{} features", other.features.len()),
            });
        }
        for (mine, theirs) in self.features.iter_mut().zip(&other.features) {
            mine.extend_from_slice(theirs);
            mine.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        }
        Ok(())
    }

    /// At most `max_bins - 1` strictly increasing edges per feature, at the weighted quantiles
    /// `j / max_bins` of the points (the first point whose cumulative weight reaches the target).
    /// Repeated values are dropped, and so is an edge at the largest value (it would leave the
    /// last bin empty): a constant feature gets no edges. `max_bins` is capped at [`MAX_BINS`].
    pub fn bin_edges(&self, max_bins: usize) -> BinEdges {
        let max_bins = max_bins.min(MAX_BINS as usize);
        let edges = self
            .features
            .iter()
            .map(|points| {
                let mut pts: Vec<(f32, f64)> = points
                    .iter()
                    .copied()
                    .filter(|(v, w)| v.is_finite() && w.is_finite() && *w > 0.0)
                    .collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
                let mut cum = Vec::with_capacity(pts.len());
                let mut acc = 0.0;
                for p in &pts {
                    acc += p.1;
                    cum.push(acc);
                }
                let (Some(&(top, _)), Some(&total)) = (pts.last(), cum.last()) else {
                    return Vec::new();
                };
                let mut out: Vec<f32> = Vec::new();
                for j in 1..max_bins {
                    let target = total * j as f64 / max_bins as f64;
                    let idx = cum.partition_point(|&c| c < target);
                    let Some(&(v, _)) = pts.get(idx) else { break };
                    if v < top && out.last().is_none_or(|&last| v > last) {
                        out.push(v);
                    }
                }
                out
            })
            .collect();
        BinEdges { edges }
    }

    /// Fails unless a client's sketch has `n_features` features, at most
    /// `max_points_per_feature` points each, finite values, finite non-negative weights.
    pub fn check(&self, n_features: usize, max_points_per_feature: usize) -> Result<()> {
        let s = self;
        if s.features.len() != n_features {
            return Err(Error::Shape {
                what: "quantile sketch".into(),
                expected: format!("{n_features} features"),
                found: format!("{} features", s.features.len()),
            });
        }
        for (f, pts) in s.features.iter().enumerate() {
            if pts.len() > max_points_per_feature {
                return Err(Error::Data(format!(
                    "quantile sketch has {} points for feature {f}, more than {max_points_per_feature}",
                    pts.len()
                )));
            }
            if let Some((v, w)) = pts
                .iter()
                .find(|(v, w)| !(v.is_finite() && w.is_finite() && *w >= 0.0))
            {
                return Err(Error::Data(format!(
                    "quantile sketch point ({v}, weight {w}) for feature {f} is not valid"
                )));
            }
        }
        Ok(())
    }
}

/// Global bin edges: per feature, strictly increasing finite values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BinEdges {
    pub edges: Vec<Vec<f32>>,
}

impl BinEdges {
    /// `bin(x)` = number of edges strictly less than `x`, so `bin <= b` exactly when
    /// `x <= edges[b]`: routing by bins and by thresholds agree. NaN goes to the last bin (as
    /// `NaN <= threshold` is false, it goes right at every split); an unknown feature gives 0.
    pub fn bin(&self, feature: usize, x: f32) -> u16 {
        let Some(e) = self.edges.get(feature) else {
            return 0;
        };
        let b = if x.is_nan() {
            e.len()
        } else {
            e.partition_point(|&v| v < x)
        };
        u16::try_from(b).unwrap_or(u16::MAX)
    }

    /// Bins every value.
    ///
    /// # Shapes
    /// `x`: `[n, n_features]` → `[n, n_features]`.
    pub fn bin_matrix(&self, x: ArrayView2<'_, f32>) -> Result<Array2<u16>> {
        if x.ncols() != self.edges.len() {
            return Err(Error::Shape {
                what: "features to bin".into(),
                expected: format!("{} features", self.edges.len()),
                found: format!("{} features", x.ncols()),
            });
        }
        Ok(Array2::from_shape_fn(x.dim(), |(i, f)| {
            self.bin(f, x[[i, f]])
        }))
    }

    /// Bins of `feature`: its edges plus one (1 for an unknown feature).
    pub fn n_bins(&self, feature: usize) -> usize {
        self.edges.get(feature).map_or(0, Vec::len) + 1
    }

    /// The most bins any feature has (1 without features): the `bins` of every [`Histogram`].
    pub fn max_bins(&self) -> usize {
        (0..self.edges.len())
            .map(|f| self.n_bins(f))
            .max()
            .unwrap_or(1)
    }

    /// Fails unless there are `n_features` features, each with at most `MAX_BINS - 1` strictly
    /// increasing finite edges.
    pub fn validate(&self, n_features: usize) -> Result<()> {
        if self.edges.len() != n_features {
            return Err(Error::Shape {
                what: "bin edges".into(),
                expected: format!("{n_features} features"),
                found: format!("{} features", self.edges.len()),
            });
        }
        for (f, e) in self.edges.iter().enumerate() {
            let increasing = e.windows(2).all(|w| w[0] < w[1]);
            if e.len() >= MAX_BINS as usize || !increasing || e.iter().any(|v| !v.is_finite()) {
                return Err(Error::Data(format!(
                    "bin edges of feature {f} are not {} or fewer strictly increasing finite values",
                    MAX_BINS - 1
                )));
            }
        }
        Ok(())
    }
}

/// Gradient/hessian sums per (feature, bin) for one tree node.
///
/// # Shapes
/// `data`: `n_features * bins * 2` values; `data[(f * bins + b) * 2]` is G and the next one H, with
/// `bins` = [`BinEdges::max_bins`].
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    pub n_features: usize,
    pub bins: usize,
    pub data: Vec<f64>,
}

impl Histogram {
    pub fn zeros(n_features: usize, bins: usize) -> Self {
        Histogram {
            n_features,
            bins,
            data: vec![0.0; n_features.saturating_mul(bins).saturating_mul(2)],
        }
    }

    /// `n_features * bins * 2`, if that fits.
    fn expected_len(n_features: usize, bins: usize) -> Option<usize> {
        n_features.checked_mul(bins)?.checked_mul(2)
    }

    /// Fails unless `other` has this histogram's shape and both hold the right number of values.
    fn check_same_shape(&self, other: &Histogram) -> Result<()> {
        let want = Self::expected_len(self.n_features, self.bins);
        if other.n_features != self.n_features
            || other.bins != self.bins
            || want != Some(self.data.len())
            || want != Some(other.data.len())
        {
            return Err(Error::Shape {
                what: "histogram".into(),
                expected: format!("{} features x {} bins", self.n_features, self.bins),
                found: format!(
                    "{} features x {} bins ({} values)",
                    other.n_features,
                    other.bins,
                    other.data.len()
                ),
            });
        }
        Ok(())
    }

    /// Adds `other` cell by cell (the coordinator summing clients).
    pub fn add(&mut self, other: &Histogram) -> Result<()> {
        self.check_same_shape(other)?;
        for (a, b) in self.data.iter_mut().zip(&other.data) {
            *a += b;
        }
        Ok(())
    }

    /// `self - other` cell by cell: a parent minus its left child is its right child.
    pub fn sub(&self, other: &Histogram) -> Result<Histogram> {
        self.check_same_shape(other)?;
        Ok(Histogram {
            n_features: self.n_features,
            bins: self.bins,
            data: self
                .data
                .iter()
                .zip(&other.data)
                .map(|(a, b)| a - b)
                .collect(),
        })
    }

    /// `(G, H)` of the whole node: the sums over the bins of feature 0 (every row lands in
    /// exactly one bin of each feature). `(0, 0)` without features.
    pub fn totals(&self) -> (f64, f64) {
        self.feature_totals(0)
    }

    fn feature_totals(&self, f: usize) -> (f64, f64) {
        if f >= self.n_features {
            return (0.0, 0.0);
        }
        let start = f.saturating_mul(self.bins).saturating_mul(2);
        let end = start.saturating_add(self.bins.saturating_mul(2));
        let cells = self.data.get(start..end).unwrap_or(&[]);
        cells
            .chunks_exact(2)
            .fold((0.0, 0.0), |(g, h), c| (g + c[0], h + c[1]))
    }

    /// `(G, H)` of (feature, bin); `(0, 0)` outside the histogram.
    fn cell(&self, f: usize, b: usize) -> (f64, f64) {
        if f >= self.n_features || b >= self.bins {
            return (0.0, 0.0);
        }
        let at = (f * self.bins + b) * 2;
        match self.data.get(at..at + 2) {
            Some(c) => (c[0], c[1]),
            None => (0.0, 0.0),
        }
    }
}

/// Checks a client's histograms as they came off the wire: at most `max_count` of them, each
/// `n_features * bins * 2` finite values.
pub fn histograms_from_values(
    values: Vec<Vec<f64>>,
    n_features: usize,
    bins: usize,
    max_count: usize,
) -> Result<Vec<Histogram>> {
    let bad = |m: String| Error::Data(format!("histograms: {m}"));
    if values.len() > max_count {
        return Err(bad(format!(
            "{} histograms, more than {max_count}",
            values.len()
        )));
    }
    let per = Histogram::expected_len(n_features, bins)
        .ok_or_else(|| bad("histogram size overflows".into()))?;
    if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| v.len() != per) {
        return Err(Error::Shape {
            what: format!("histogram {i}"),
            expected: format!("{per} values ({n_features} features x {bins} bins x 2)"),
            found: format!("{} values", v.len()),
        });
    }
    if values.iter().flatten().any(|v| !v.is_finite()) {
        return Err(Error::NonFinite("histograms".into()));
    }
    Ok(values
        .into_iter()
        .map(|data| Histogram {
            n_features,
            bins,
            data,
        })
        .collect())
}

/// Model outputs (trees per round): 1 for binary logloss, `n_classes` for softmax (`n_classes > 2`).
pub fn n_outputs(n_classes: usize) -> usize {
    if n_classes > 2 {
        n_classes
    } else {
        1
    }
}

fn sigmoid(x: f64) -> f64 {
    // Two forms so that neither overflows exp().
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Gradient and hessian of the loss for output `k`, per row.
///
/// One output column: binary logloss, `p = sigmoid(F)`, `g = p - [y == 1]`, `h = max(p(1-p), 1e-16)`.
/// Several: softmax, `p = softmax(F row)`, `g = p_k - [y == k]`, `h = max(p_k(1-p_k), 1e-16)`.
/// Empty vectors when `k` is not an output.
///
/// # Shapes
/// `raw`: `[n, outputs]`, `labels`: `[n]` → `g`, `h`: `[n]` (rows without a label are dropped).
pub fn gradients(raw: ArrayView2<'_, f64>, labels: &[usize], k: usize) -> (Vec<f64>, Vec<f64>) {
    let outputs = raw.ncols();
    if k >= outputs {
        return (Vec::new(), Vec::new());
    }
    raw.outer_iter()
        .zip(labels)
        .map(|(row, &y)| {
            let (p, target) = if outputs == 1 {
                (sigmoid(row[0]), y == 1)
            } else {
                let max = row.fold(f64::NEG_INFINITY, |m, &v| m.max(v));
                let denom: f64 = row.iter().map(|&v| (v - max).exp()).sum();
                ((row[k] - max).exp() / denom, y == k)
            };
            (
                p - f64::from(u8::from(target)),
                (p * (1.0 - p)).max(MIN_HESSIAN),
            )
        })
        .unzip()
}

/// A node of a [`GTree`]. Rows with `bin <= bin` (binned) or `x <= threshold` (raw), where
/// `threshold = edges[feature][bin]`, go left.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GNode {
    Split {
        feature: u32,
        bin: u16,
        threshold: f32,
        left: u32,
        right: u32,
    },
    Leaf {
        value: f64,
    },
}

/// A tree as sent to clients: splits and leaf values only, no gradient or hessian sums.
/// `nodes[0]` is the root; children come after their parents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GTree {
    pub nodes: Vec<GNode>,
}

impl GTree {
    /// A tree that is only its root, an open leaf: `build_histograms(.., &GTree::root(), &[0], ..)`
    /// gives a client's root histogram.
    pub fn root() -> Self {
        GTree {
            nodes: vec![GNode::Leaf { value: 0.0 }],
        }
    }

    /// Walks from the root while `go_left` decides; stops at a leaf, or where the tree is
    /// malformed (a child not after its parent, a feature the row lacks), so it cannot loop or panic.
    fn walk(&self, go_left: impl Fn(usize, u16, f32) -> Option<bool>) -> usize {
        let mut i = 0usize;
        while let Some(GNode::Split {
            feature,
            bin,
            threshold,
            left,
            right,
        }) = self.nodes.get(i)
        {
            let Some(l) = go_left(*feature as usize, *bin, *threshold) else {
                return i;
            };
            let next = if l { *left } else { *right } as usize;
            if next <= i || next >= self.nodes.len() {
                return i;
            }
            i = next;
        }
        i
    }

    fn value_at(&self, node: usize) -> f64 {
        match self.nodes.get(node) {
            Some(GNode::Leaf { value }) => *value,
            _ => 0.0,
        }
    }

    /// Node a binned row reaches (an open node of a partial tree is a leaf, so rows stop there).
    ///
    /// # Shapes
    /// `row`: `[n_features]` bins.
    pub fn route_binned(&self, row: ArrayView1<'_, u16>) -> usize {
        self.walk(|f, bin, _| row.get(f).map(|&b| b <= bin))
    }

    /// Leaf value a binned row reaches.
    pub fn predict_binned(&self, row: ArrayView1<'_, u16>) -> f64 {
        self.value_at(self.route_binned(row))
    }

    /// Leaf value a raw row reaches: `x <= threshold` goes left.
    ///
    /// # Shapes
    /// `row`: `[n_features]` raw values.
    pub fn predict_raw(&self, row: ArrayView1<'_, f32>) -> f64 {
        self.value_at(self.walk(|f, _, t| row.get(f).map(|&x| x <= t)))
    }

    /// Fails unless the tree is well formed against `edges`: 1 to [`MAX_NODES_PER_TREE`] nodes,
    /// children after their parent and inside the tree, known features, bins that have an edge,
    /// thresholds equal to that edge (so binned and raw routing agree), finite leaf values.
    pub fn check(&self, edges: &BinEdges) -> Result<()> {
        let bad = |m: String| Err(Error::Data(format!("invalid gbdt tree: {m}")));
        let n = self.nodes.len();
        if n == 0 || n > MAX_NODES_PER_TREE {
            return bad(format!("{n} nodes"));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            match node {
                GNode::Split {
                    feature,
                    bin,
                    threshold,
                    left,
                    right,
                } => {
                    let Some(e) = edges.edges.get(*feature as usize) else {
                        return bad(format!("node {i} splits on unknown feature {feature}"));
                    };
                    match e.get(usize::from(*bin)) {
                        Some(t) if t.to_bits() == threshold.to_bits() => {}
                        _ => {
                            return bad(format!(
                                "node {i} splits feature {feature} at bin {bin} / {threshold}, \
                                 which is not one of its {} edges",
                                e.len()
                            ))
                        }
                    }
                    for c in [*left as usize, *right as usize] {
                        if c <= i || c >= n {
                            return bad(format!("node {i} has child {c}"));
                        }
                    }
                }
                GNode::Leaf { value } => {
                    if !value.is_finite() {
                        return bad(format!("leaf {i} has value {value}"));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The model: bin edges, base scores, and per round one tree per output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ensemble {
    pub n_features: usize,
    pub n_classes: usize,
    pub edges: BinEdges,
    /// Raw score before any tree, per output (zeros).
    pub base_score: Vec<f64>,
    /// `rounds[r][k]`: round `r`'s tree for output `k`.
    pub rounds: Vec<Vec<GTree>>,
}

#[derive(Serialize)]
struct BlobOut<'a> {
    format: &'a str,
    version: u32,
    ensemble: &'a Ensemble,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlobIn {
    format: String,
    version: u32,
    ensemble: Ensemble,
}

impl Ensemble {
    pub fn new(n_features: usize, n_classes: usize, edges: BinEdges) -> Self {
        Ensemble {
            n_features,
            n_classes,
            edges,
            base_score: vec![0.0; n_outputs(n_classes)],
            rounds: Vec::new(),
        }
    }

    fn check_input(&self, x: ArrayView2<'_, f32>) -> Result<()> {
        if x.ncols() != self.n_features {
            return Err(Error::Shape {
                what: "gbdt input".into(),
                expected: format!("{} features", self.n_features),
                found: format!("{} features", x.ncols()),
            });
        }
        Ok(())
    }

    /// Raw scores: base score plus every round's tree for each output, added in round order
    /// (the order [`train_centralized`] accumulates them in, so both give the same bits).
    ///
    /// # Shapes
    /// `x`: `[n, n_features]` → `[n, outputs]`.
    pub fn raw_scores(&self, x: ArrayView2<'_, f32>) -> Result<Array2<f64>> {
        self.check_input(x)?;
        let mut out = Array2::<f64>::zeros((x.nrows(), self.base_score.len()));
        for (row, mut o) in x.outer_iter().zip(out.outer_iter_mut()) {
            for (acc, b) in o.iter_mut().zip(&self.base_score) {
                *acc = *b;
            }
            for round in &self.rounds {
                for (acc, t) in o.iter_mut().zip(round) {
                    *acc += t.predict_raw(row);
                }
            }
        }
        Ok(out)
    }

    /// Class probabilities: sigmoid of the one output for two classes, softmax otherwise.
    ///
    /// # Shapes
    /// `x`: `[n, n_features]` → `[n, n_classes]`.
    pub fn predict_proba(&self, x: ArrayView2<'_, f32>) -> Result<Array2<f64>> {
        if self.n_classes < 2 || self.base_score.len() != n_outputs(self.n_classes) {
            return Err(Error::Data(format!(
                "gbdt ensemble with {} classes and {} outputs cannot predict probabilities",
                self.n_classes,
                self.base_score.len()
            )));
        }
        let raw = self.raw_scores(x)?;
        let mut out = Array2::<f64>::zeros((x.nrows(), self.n_classes));
        for (r, mut o) in raw.outer_iter().zip(out.outer_iter_mut()) {
            if self.n_classes == 2 {
                let p = sigmoid(r[0]);
                o[0] = 1.0 - p;
                o[1] = p;
            } else {
                let max = r.fold(f64::NEG_INFINITY, |m, &v| m.max(v));
                let denom: f64 = r.iter().map(|&v| (v - max).exp()).sum();
                for (p, &v) in o.iter_mut().zip(&r) {
                    *p = (v - max).exp() / denom;
                }
            }
        }
        Ok(out)
    }

    /// Log loss and accuracy on `data`.
    pub fn evaluate(&self, data: &Dataset) -> Result<EvalStats> {
        if data.n_rows() == 0 {
            return Err(Error::Data("cannot evaluate on an empty split".into()));
        }
        let proba = self.predict_proba(data.features.view())?;
        let (mut loss, mut correct) = (0.0f64, 0usize);
        for (row, &y) in proba.outer_iter().zip(&data.labels) {
            let p = row.get(y).copied().ok_or_else(|| {
                Error::Data(format!(
                    "label {y} outside the model's {} classes",
                    self.n_classes
                ))
            })?;
            loss -= p.max(1e-12).ln();
            correct += usize::from(argmax(row.iter().map(|&v| v as f32)) == y);
        }
        let n = data.n_rows();
        Ok(EvalStats {
            loss: loss / n as f64,
            accuracy: correct as f64 / n as f64,
            num_examples: n as u64,
        })
    }

    /// The versioned checkpoint form: `{"format":"shoal-gbdt","version":1,"ensemble":{..}}`.
    pub fn to_blob(&self) -> Vec<u8> {
        let blob = BlobOut {
            format: BLOB_FORMAT,
            version: BLOB_VERSION,
            ensemble: self,
        };
        serde_json::to_vec(&blob).unwrap_or_default()
    }

    /// Decodes a checkpoint blob (format and version) and checks it ([`Ensemble::check`]).
    pub fn from_blob(
        bytes: &[u8],
        n_features: usize,
        n_classes: usize,
        max_trees: usize,
    ) -> Result<Self> {
        let blob: BlobIn = serde_json::from_slice(bytes)
            .map_err(|e| Error::Data(format!("gbdt blob is not valid: {e}")))?;
        if blob.format != BLOB_FORMAT || blob.version != BLOB_VERSION {
            return Err(Error::Data(format!(
                "gbdt blob is `{}` version {}, expected `{BLOB_FORMAT}` version {BLOB_VERSION}",
                blob.format, blob.version
            )));
        }
        blob.ensemble.check(n_features, n_classes, max_trees)?;
        Ok(blob.ensemble)
    }

    /// Fails unless this ensemble (off the network or out of a checkpoint) has `n_features` and
    /// `n_classes` (at least 2), valid edges, finite base scores, one tree per output per round,
    /// at most `max_trees` trees in all, and every tree well formed against the edges
    /// ([`GTree::check`]).
    pub fn check(&self, n_features: usize, n_classes: usize, max_trees: usize) -> Result<()> {
        let e = self;
        if e.n_features != n_features || e.n_classes != n_classes || n_classes < 2 {
            return Err(Error::Shape {
                what: "gbdt ensemble".into(),
                expected: format!("{n_features} features, {n_classes} classes (at least 2)"),
                found: format!("{} features, {} classes", e.n_features, e.n_classes),
            });
        }
        e.edges.validate(n_features)?;
        let outputs = n_outputs(n_classes);
        if e.base_score.len() != outputs || e.base_score.iter().any(|v| !v.is_finite()) {
            return Err(Error::Data(format!(
                "gbdt ensemble has {} base scores, expected {outputs} finite ones",
                e.base_score.len()
            )));
        }
        let trees = e.rounds.len().saturating_mul(outputs);
        if trees > max_trees {
            return Err(Error::Data(format!(
                "gbdt ensemble holds {trees} trees, more than {max_trees}"
            )));
        }
        for (r, round) in e.rounds.iter().enumerate() {
            if round.len() != outputs {
                return Err(Error::Data(format!(
                    "gbdt ensemble round {r} has {} trees, expected {outputs}",
                    round.len()
                )));
            }
            for t in round {
                t.check(&e.edges)?;
            }
        }
        Ok(())
    }
}

/// What a split must satisfy, from [`GbdtParams`].
#[derive(Debug, Clone, Copy)]
struct SplitRule {
    lambda: f64,
    gamma: f64,
    min_child_weight: f64,
}

/// The best split of a node: cut `feature` after `bin`, with each side's sums.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Candidate {
    feature: usize,
    bin: usize,
    gain: f64,
    left: (f64, f64),
    right: (f64, f64),
}

/// `G² / (H + λ)`, the loss reduction a leaf of sums (G, H) can achieve (0 where undefined).
fn leaf_score(g: f64, h: f64, lambda: f64) -> f64 {
    let d = h + lambda;
    if d > 0.0 {
        g * g / d
    } else {
        0.0
    }
}

/// Best split of a node from its histogram: for each feature f and bin b, left = bins `<= b`;
/// `gain = ½ (GL²/(HL+λ) + GR²/(HR+λ) − G²/(H+λ)) − γ`. Right sums and the parent term use the
/// feature's own totals, so a cut with no rows on one side has exactly zero mass there and is
/// refused (each side needs `H > 0` and `H >= min_child_weight`); the gain must be positive.
/// Ties (within [`TIE_TOLERANCE`]): the lowest feature, then the lowest bin.
fn best_split(hist: &Histogram, edges: &BinEdges, rule: &SplitRule) -> Option<Candidate> {
    let mut best: Option<Candidate> = None;
    for f in 0..hist.n_features.min(edges.edges.len()) {
        // Candidate cuts are the feature's edges: bin b < n_bins - 1 has edges[f][b].
        let cuts = edges.n_bins(f).min(hist.bins).saturating_sub(1);
        if cuts == 0 {
            continue;
        }
        let (gt, ht) = hist.feature_totals(f);
        let parent = leaf_score(gt, ht, rule.lambda);
        let (mut gl, mut hl) = (0.0, 0.0);
        for b in 0..cuts {
            let (g, h) = hist.cell(f, b);
            gl += g;
            hl += h;
            let (gr, hr) = (gt - gl, ht - hl);
            let min = rule.min_child_weight;
            if !(hl > 0.0 && hr > 0.0 && hl >= min && hr >= min) {
                continue;
            }
            let gain = 0.5
                * (leaf_score(gl, hl, rule.lambda) + leaf_score(gr, hr, rule.lambda) - parent)
                - rule.gamma;
            if !(gain.is_finite() && gain > 0.0) {
                continue;
            }
            if best.is_none_or(|c| gain > c.gain + TIE_TOLERANCE * c.gain.abs()) {
                best = Some(Candidate {
                    feature: f,
                    bin: b,
                    gain,
                    left: (gl, hl),
                    right: (gr, hr),
                });
            }
        }
    }
    best
}

#[derive(Debug, Clone)]
struct GrowNode {
    /// The node's (G, H): the root's from its histogram, a child's from its parent's split.
    sums: (f64, f64),
    depth: u32,
    /// `(feature, bin, left, right)` once split.
    split: Option<(usize, usize, usize, usize)>,
    /// Kept only while needed: to find this node's split, or to derive its right child.
    hist: Option<Histogram>,
}

/// Grows one tree level by level from summed histograms. Used identically by the coordinator
/// (federated) and by [`train_centralized`], so both make the same decisions from the same sums.
///
/// Children at `max_depth` become leaves at once from their parent's split sums, so they are never
/// requested: a tree of depth `d` takes `d - 1` exchanges after the root histogram.
#[derive(Debug, Clone)]
pub struct TreeGrower {
    edges: BinEdges,
    rule: SplitRule,
    max_depth: u32,
    learning_rate: f64,
    /// `(n_features, bins)` of the root histogram: every later histogram must match it.
    shape: (usize, usize),
    nodes: Vec<GrowNode>,
    /// Splits of the last step whose children still need histograms: (parent, left, right).
    pending: Vec<(usize, usize, usize)>,
}

impl TreeGrower {
    /// Starts a tree from the root's summed histogram and makes the root's split decision, so
    /// [`requests`](Self::requests) is ready at once. A root histogram whose shape does not match
    /// `edges` (features, `bins = edges.max_bins()`) cannot be split: the tree is one leaf.
    pub fn new(params: &GbdtParams, edges: &BinEdges, root: Histogram) -> Self {
        let sums = root.totals();
        let mut grower = TreeGrower {
            edges: edges.clone(),
            rule: SplitRule {
                lambda: params.lambda,
                gamma: params.gamma,
                min_child_weight: params.min_child_weight,
            },
            // Unchecked params must not grow an unbounded tree.
            max_depth: params.max_depth.min(MAX_DEPTH),
            learning_rate: params.learning_rate,
            shape: (root.n_features, root.bins),
            nodes: vec![GrowNode {
                sums,
                depth: 0,
                split: None,
                hist: Some(root),
            }],
            pending: Vec::new(),
        };
        grower.split_level(&[0]);
        grower
    }

    fn leaf_value(&self, (g, h): (f64, f64)) -> f64 {
        let d = h + self.rule.lambda;
        let v = -g / d * self.learning_rate;
        if d > 0.0 && v.is_finite() {
            v
        } else {
            0.0
        }
    }

    /// Whether `h` can be searched for splits against our edges without misreading cells.
    fn usable(&self, h: &Histogram) -> bool {
        h.n_features == self.edges.edges.len()
            && h.bins >= self.edges.max_bins()
            && Histogram::expected_len(h.n_features, h.bins) == Some(h.data.len())
    }

    /// Decides each of `open` (ascending, all with histograms): split it (appending its two
    /// children) or leave it a leaf.
    fn split_level(&mut self, open: &[usize]) {
        for &i in open {
            let node = &self.nodes[i];
            let candidate = match &node.hist {
                Some(h) if node.depth < self.max_depth && self.usable(h) => {
                    best_split(h, &self.edges, &self.rule)
                }
                _ => None,
            };
            let depth = node.depth + 1;
            let Some(c) = candidate else {
                self.nodes[i].hist = None;
                continue;
            };
            let (left, right) = (self.nodes.len(), self.nodes.len() + 1);
            for sums in [c.left, c.right] {
                self.nodes.push(GrowNode {
                    sums,
                    depth,
                    split: None,
                    hist: None,
                });
            }
            self.nodes[i].split = Some((c.feature, c.bin, left, right));
            if depth < self.max_depth {
                self.pending.push((i, left, right));
            } else {
                self.nodes[i].hist = None;
            }
        }
    }

    /// The tree so far: splits chosen; every open or finished leaf as [`GNode::Leaf`] with the
    /// value its sums give. Clients route rows through it.
    pub fn partial_tree(&self) -> GTree {
        let nodes = self
            .nodes
            .iter()
            .map(|n| match n.split {
                Some((f, b, l, r)) => GNode::Split {
                    feature: f as u32,
                    bin: u16::try_from(b).unwrap_or(u16::MAX),
                    // best_split only cuts at bins that have an edge.
                    threshold: self
                        .edges
                        .edges
                        .get(f)
                        .and_then(|e| e.get(b))
                        .copied()
                        .unwrap_or(f32::MAX),
                    left: l as u32,
                    right: r as u32,
                },
                None => GNode::Leaf {
                    value: self.leaf_value(n.sums),
                },
            })
            .collect();
        GTree { nodes }
    }

    /// Nodes (indices into [`partial_tree`](Self::partial_tree)) whose histograms are needed next:
    /// the left child of each split made in the last step that may split again. The right child
    /// is derived as parent − left. Empty when done.
    pub fn requests(&self) -> Vec<u32> {
        self.pending.iter().map(|&(_, l, _)| l as u32).collect()
    }

    pub fn is_done(&self) -> bool {
        self.pending.is_empty()
    }

    /// Takes the summed histograms of [`requests`](Self::requests), in that order; derives each
    /// right sibling by subtraction; then decides the split of every newly open node. On error
    /// (wrong count, shape or a non-finite value) nothing changes.
    pub fn absorb(&mut self, left_hists: Vec<Histogram>) -> Result<()> {
        if left_hists.len() != self.pending.len() {
            return Err(Error::Shape {
                what: "histograms for the requested nodes".into(),
                expected: format!("{} histograms", self.pending.len()),
                found: format!("{} histograms", left_hists.len()),
            });
        }
        let (nf, bins) = self.shape;
        let reference = Histogram::zeros(nf, bins);
        for h in &left_hists {
            reference.check_same_shape(h)?;
            if h.data.iter().any(|v| !v.is_finite()) {
                return Err(Error::NonFinite("requested histogram".into()));
            }
        }
        let pending = std::mem::take(&mut self.pending);
        let mut open = Vec::with_capacity(2 * pending.len());
        for ((parent, left, right), lh) in pending.into_iter().zip(left_hists) {
            // A pending parent always keeps its histogram; without one its children stay leaves.
            let Some(ph) = self.nodes[parent].hist.take() else {
                continue;
            };
            let rh = ph.sub(&lh)?;
            self.nodes[left].hist = Some(lh);
            self.nodes[right].hist = Some(rh);
            open.extend([left, right]);
        }
        self.split_level(&open);
        Ok(())
    }

    /// Ends the tree now (e.g. a client left mid-tree): every open node becomes a leaf from the
    /// sums already known.
    pub fn finish(self) -> GTree {
        self.partial_tree()
    }
}

/// Client side: histograms of `nodes` (leaves of the partial `tree`) over this client's binned
/// rows, with the gradients of one output. Rows that end elsewhere are not counted.
///
/// # Shapes
/// `binned`: `[n, n_features]` with every bin `< bins`; `g`, `h`: `[n]` → one
/// `n_features x bins` histogram per entry of `nodes`.
pub fn build_histograms(
    binned: ArrayView2<'_, u16>,
    tree: &GTree,
    nodes: &[u32],
    g: &[f64],
    h: &[f64],
    bins: usize,
) -> Result<Vec<Histogram>> {
    let (n, d) = binned.dim();
    if g.len() != n || h.len() != n {
        return Err(Error::Shape {
            what: "gradients".into(),
            expected: format!("{n} gradients and hessians (one per row)"),
            found: format!("{} and {}", g.len(), h.len()),
        });
    }
    if g.iter().chain(h).any(|v| !v.is_finite()) {
        return Err(Error::NonFinite("gradients".into()));
    }
    if let Some(b) = binned.iter().find(|&&b| usize::from(b) >= bins) {
        return Err(Error::Data(format!(
            "bin {b} is outside the {bins} histogram bins"
        )));
    }
    if Histogram::expected_len(d, bins).is_none() {
        return Err(Error::Data(format!("{d} features x {bins} bins overflows")));
    }
    // slot[node] = position of that node's histogram in the output.
    let mut slot: Vec<Option<usize>> = vec![None; tree.nodes.len()];
    for (s, &node) in nodes.iter().enumerate() {
        match slot.get_mut(node as usize) {
            Some(x @ None) => *x = Some(s),
            Some(Some(_)) => return Err(Error::Data(format!("node {node} requested twice"))),
            None => {
                return Err(Error::Data(format!(
                    "requested node {node} is not in the {}-node tree",
                    tree.nodes.len()
                )))
            }
        }
    }
    let mut out = vec![Histogram::zeros(d, bins); nodes.len()];
    for ((row, &gi), &hi) in binned.outer_iter().zip(g).zip(h) {
        let Some(&Some(s)) = slot.get(tree.route_binned(row)) else {
            continue;
        };
        let data = &mut out[s].data;
        for (f, &b) in row.iter().enumerate() {
            // In range: b < bins was checked above.
            let at = (f * bins + usize::from(b)) * 2;
            data[at] += gi;
            data[at + 1] += hi;
        }
    }
    Ok(out)
}

/// Centralized mode: the federated algorithm on pooled rows with the given edges. Each round:
/// raw scores of the ensemble so far → for each output, gradients, the root histogram, the
/// [`TreeGrower`] loop (histograms of its requests until done) → one tree per output; then the
/// raw scores move by the round's trees. Same decisions as the federation given the same sums.
pub fn train_centralized(
    data: &Dataset,
    edges: &BinEdges,
    params: &GbdtParams,
    rounds: u32,
) -> Result<Ensemble> {
    params.check()?;
    let (n, d, n_classes) = (data.n_rows(), data.n_features(), data.n_classes());
    if n == 0 {
        return Err(Error::Data(
            "cannot train gbdt on an empty train split".into(),
        ));
    }
    if n_classes < 2 || data.labels.iter().any(|&y| y >= n_classes) {
        return Err(Error::Data(format!(
            "gbdt needs at least 2 classes and labels below them; found {n_classes} classes"
        )));
    }
    edges.validate(d)?;
    let binned = edges.bin_matrix(data.features.view())?;
    let bins = edges.max_bins();
    let mut ensemble = Ensemble::new(d, n_classes, edges.clone());
    let outputs = ensemble.base_score.len();
    let mut raw = Array2::<f64>::zeros((n, outputs));
    for mut r in raw.outer_iter_mut() {
        for (acc, b) in r.iter_mut().zip(&ensemble.base_score) {
            *acc = *b;
        }
    }
    let root_tree = GTree::root();
    for _ in 0..rounds {
        let mut trees = Vec::with_capacity(outputs);
        for k in 0..outputs {
            let (g, h) = gradients(raw.view(), &data.labels, k);
            let root = build_histograms(binned.view(), &root_tree, &[0], &g, &h, bins)?
                .pop()
                .ok_or_else(|| Error::Data("no root histogram".into()))?;
            let mut grower = TreeGrower::new(params, edges, root);
            while !grower.is_done() {
                let hists = build_histograms(
                    binned.view(),
                    &grower.partial_tree(),
                    &grower.requests(),
                    &g,
                    &h,
                    bins,
                )?;
                grower.absorb(hists)?;
            }
            trees.push(grower.finish());
        }
        // After all outputs: every tree of a round is fitted to the same raw scores.
        for (row, mut r) in binned.outer_iter().zip(raw.outer_iter_mut()) {
            for (acc, t) in r.iter_mut().zip(&trees) {
                *acc += t.predict_binned(row);
            }
        }
        ensemble.rounds.push(trees);
    }
    Ok(ensemble)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::builtin::Builtin;
    use ndarray::Array1;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn column(values: impl IntoIterator<Item = f32>) -> Array2<f32> {
        let v: Vec<f32> = values.into_iter().collect();
        let n = v.len();
        Array2::from_shape_vec((n, 1), v).unwrap()
    }

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * a.abs().max(b.abs()).max(1.0)
    }

    /// Random features in [0, 1), labels by `label`.
    fn synthetic(
        n: usize,
        d: usize,
        classes: usize,
        seed: u64,
        label: impl Fn(&[f32]) -> usize,
    ) -> Dataset {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let x = Array2::from_shape_fn((n, d), |_| rng.gen::<f32>());
        let y = x
            .outer_iter()
            .map(|r| label(r.as_slice().unwrap()))
            .collect();
        Dataset::new(
            x,
            y,
            (0..d).map(|i| format!("x{i}")).collect(),
            (0..classes).map(|c| format!("c{c}")).collect(),
        )
        .unwrap()
    }

    #[test]
    fn params_check_names_the_field() {
        assert!(GbdtParams::default().check().is_ok());
        let p = GbdtParams::default();
        for (bad, field) in [
            (
                GbdtParams {
                    max_depth: 0,
                    ..p.clone()
                },
                "model.max_depth",
            ),
            (
                GbdtParams {
                    max_bins: 1025,
                    ..p.clone()
                },
                "model.max_bins",
            ),
            (
                GbdtParams {
                    learning_rate: 0.0,
                    ..p.clone()
                },
                "model.learning_rate",
            ),
            (
                GbdtParams {
                    lambda: f64::NAN,
                    ..p.clone()
                },
                "model.lambda",
            ),
            (
                GbdtParams {
                    gamma: -1.0,
                    ..p.clone()
                },
                "model.gamma",
            ),
            (
                GbdtParams {
                    min_child_weight: f64::INFINITY,
                    ..p.clone()
                },
                "model.min_child_weight",
            ),
            (
                GbdtParams {
                    sketch_size: 1,
                    ..p.clone()
                },
                "model.sketch_size",
            ),
        ] {
            let e = bad.check().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
        let parsed: GbdtParams = serde_json::from_str(r#"{"max_depth": 3}"#).unwrap();
        assert_eq!(parsed.max_depth, 3);
        assert_eq!(parsed.max_bins, 64);
        assert!(serde_json::from_str::<GbdtParams>(r#"{"depth": 3}"#).is_err());
    }

    #[test]
    fn sketch_of_a_uniform_column_gives_quantile_edges() {
        let x = column((0..1000).map(|v| v as f32));
        let s = QuantileSketch::of(x.view(), 256);
        assert_eq!(s.features[0].len(), 256);
        assert!(close(
            s.features[0].iter().map(|p| p.1).sum::<f64>(),
            1000.0,
            1e-12
        ));
        let e = s.bin_edges(64);
        assert_eq!(e.edges[0].len(), 63);
        for (j, &v) in e.edges[0].iter().enumerate() {
            let want = (j + 1) as f32 * 1000.0 / 64.0;
            assert!((v - want).abs() <= 5.0, "edge {j}: {v} vs {want}");
        }
        assert_eq!(e.n_bins(0), 64);
        assert_eq!(e.max_bins(), 64);
        // Small columns keep every value with weight 1.
        let small = QuantileSketch::of(column([3.0, 1.0, 2.0]).view(), 8);
        assert_eq!(small.features[0], vec![(1.0, 1.0), (2.0, 1.0), (3.0, 1.0)]);
        // A constant feature gets no edges; a two-valued one gets the lower value.
        let x = Array2::from_shape_fn((100, 2), |(i, f)| if f == 0 { 7.0 } else { (i % 2) as f32 });
        let e = QuantileSketch::of(x.view(), 16).bin_edges(8);
        assert!(e.edges[0].is_empty());
        assert_eq!(e.edges[1], vec![0.0]);
    }

    #[test]
    fn merged_client_sketches_match_the_sketch_of_the_union() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        // Two clients with different distributions of the same feature.
        let a: Vec<f32> = (0..700).map(|_| rng.gen_range(0.0..600.0)).collect();
        let b: Vec<f32> = (0..300).map(|_| rng.gen_range(400.0..1000.0)).collect();
        let mut merged = QuantileSketch::of(column(a.clone()).view(), 64);
        merged
            .merge(&QuantileSketch::of(column(b.clone()).view(), 64))
            .unwrap();
        let union = QuantileSketch::of(column(a.into_iter().chain(b)).view(), 1000);
        let (m, u) = (merged.bin_edges(16), union.bin_edges(16));
        assert_eq!(m.edges[0].len(), 15);
        assert_eq!(u.edges[0].len(), 15);
        for (x, y) in m.edges[0].iter().zip(&u.edges[0]) {
            assert!((x - y).abs() <= 15.0, "{x} vs {y}");
        }
        assert!(merged.merge(&QuantileSketch::empty(2)).is_err());
        // Merge order does not matter.
        let (p, q) = (
            QuantileSketch::of(column([1.0, 5.0]).view(), 4),
            QuantileSketch::of(column([3.0, 5.0]).view(), 4),
        );
        let (mut pq, mut qp) = (p.clone(), q.clone());
        pq.merge(&q).unwrap();
        qp.merge(&p).unwrap();
        assert_eq!(pq, qp);
    }

    #[test]
    fn sketch_check_refuses_bad_points() {
        let s = QuantileSketch::of(column((0..50).map(|v| v as f32)).view(), 10);
        s.check(1, 10).unwrap();
        assert!(s.check(2, 10).is_err());
        assert!(s.check(1, 9).is_err());
        let point = |v: f32, w: f64| QuantileSketch {
            features: vec![vec![(v, w)]],
        };
        assert!(point(1.0, -1.0).check(1, 10).is_err());
        assert!(point(f32::NAN, 1.0).check(1, 10).is_err());
        assert!(point(1.0, f64::INFINITY).check(1, 10).is_err());
        assert!(point(1.0, 0.0).check(1, 10).is_ok());
    }

    #[test]
    fn bin_matches_edges_with_boundaries_going_low() {
        let e = BinEdges {
            edges: vec![vec![1.0, 2.0, 3.0], vec![]],
        };
        let got: Vec<u16> = [0.5, 1.0, 1.5, 2.0, 3.0, 3.5]
            .iter()
            .map(|&x| e.bin(0, x))
            .collect();
        assert_eq!(got, vec![0, 0, 1, 1, 2, 3]);
        assert_eq!(e.bin(1, 42.0), 0);
        assert_eq!(e.bin(0, f32::NAN), 3);
        assert_eq!(e.bin(9, 1.0), 0);
        assert_eq!((e.n_bins(0), e.n_bins(1), e.max_bins()), (4, 1, 4));
        let x = ndarray::array![[2.5f32, 0.0], [-1.0, 9.0]];
        assert_eq!(
            e.bin_matrix(x.view()).unwrap(),
            ndarray::array![[2u16, 0], [0, 0]]
        );
        assert!(e.bin_matrix(ndarray::array![[1.0f32]].view()).is_err());
        // Binned routing and threshold routing agree at every boundary.
        for x in [0.5f32, 1.0, 1.5, 2.0, 3.0, 3.5] {
            for (b, &t) in e.edges[0].iter().enumerate() {
                assert_eq!(usize::from(e.bin(0, x)) <= b, x <= t);
            }
        }
    }

    fn hist(n_features: usize, bins: usize, cells: &[(usize, usize, f64, f64)]) -> Histogram {
        let mut h = Histogram::zeros(n_features, bins);
        for &(f, b, g, hh) in cells {
            h.data[(f * bins + b) * 2] = g;
            h.data[(f * bins + b) * 2 + 1] = hh;
        }
        h
    }

    #[test]
    fn histograms_add_sub_and_check_wire_values() {
        let a = hist(
            2,
            3,
            &[(0, 0, 1.0, 2.0), (0, 2, -0.5, 1.0), (1, 1, 0.5, 3.0)],
        );
        let b = hist(2, 3, &[(0, 0, 0.25, 0.5), (1, 2, 1.0, 1.0)]);
        let mut s = a.clone();
        s.add(&b).unwrap();
        assert_eq!(s.data[0], 1.25);
        assert_eq!(s.totals(), (0.75, 3.5));
        assert_eq!(s.sub(&b).unwrap(), a);
        assert!(s.add(&Histogram::zeros(2, 4)).is_err());
        assert!(s.sub(&Histogram::zeros(3, 3)).is_err());
        let mut short = a.clone();
        short.data.pop();
        assert!(s.add(&short).is_err());

        let values = vec![a.data.clone(), b.data.clone()];
        assert_eq!(
            histograms_from_values(values.clone(), 2, 3, 2).unwrap(),
            vec![a.clone(), b]
        );
        assert!(histograms_from_values(values.clone(), 2, 3, 1).is_err());
        assert!(histograms_from_values(values.clone(), 2, 4, 2).is_err());
        assert!(histograms_from_values(values.clone(), 3, 3, 2).is_err());
        let mut short = values.clone();
        short[1].pop();
        let err = histograms_from_values(short, 2, 3, 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("histogram 1"), "{err}");
        let mut nan = a.clone();
        nan.data[3] = f64::NAN;
        assert!(matches!(
            histograms_from_values(vec![nan.data], 2, 3, 2),
            Err(Error::NonFinite(_))
        ));
        assert_eq!(histograms_from_values(vec![], 0, 0, 2).unwrap(), vec![]);
    }

    #[test]
    fn gradients_match_hand_computed_values() {
        let raw = ndarray::array![[0.0], [3f64.ln()]];
        let (g, h) = gradients(raw.view(), &[1, 0], 0);
        assert!(close(g[0], -0.5, 1e-12) && close(h[0], 0.25, 1e-12));
        assert!(close(g[1], 0.75, 1e-12) && close(h[1], 0.1875, 1e-12));
        // Softmax of (0, ln 2, 0) is (1/4, 1/2, 1/4).
        let raw = ndarray::array![[0.0, 2f64.ln(), 0.0]];
        let (g, h) = gradients(raw.view(), &[1], 1);
        assert!(close(g[0], -0.5, 1e-12) && close(h[0], 0.25, 1e-12));
        let (g, h) = gradients(raw.view(), &[1], 0);
        assert!(close(g[0], 0.25, 1e-12) && close(h[0], 0.1875, 1e-12));
        // A hopelessly confident row keeps a positive hessian; large logits do not overflow.
        let (g, h) = gradients(ndarray::array![[-1000.0]].view(), &[1], 0);
        assert!(close(g[0], -1.0, 1e-12) && h[0] == MIN_HESSIAN);
        let (g, _) = gradients(ndarray::array![[1000.0, 0.0, -1000.0]].view(), &[0], 0);
        assert!(g[0].is_finite() && g[0].abs() < 1e-12);
        assert_eq!(gradients(raw.view(), &[1], 3), (vec![], vec![]));
        assert_eq!((n_outputs(2), n_outputs(3)), (1, 3));
    }

    /// One feature with edges [1, 2] and bins (G, H) = (-2, 2), (1, 1), (3, 1): G = 2, H = 4.
    /// Cut after bin 0: ½(4/3 + 16/3 − 4/5) = 2.9333…; after bin 1: ½(1/4 + 9/2 − 4/5) = 1.975.
    fn tiny() -> (Histogram, BinEdges) {
        (
            hist(
                1,
                3,
                &[(0, 0, -2.0, 2.0), (0, 1, 1.0, 1.0), (0, 2, 3.0, 1.0)],
            ),
            BinEdges {
                edges: vec![vec![1.0, 2.0]],
            },
        )
    }

    #[test]
    fn best_split_has_the_hand_computed_gain_and_respects_gamma_and_weight() {
        let (h, e) = tiny();
        let rule = SplitRule {
            lambda: 1.0,
            gamma: 0.0,
            min_child_weight: 1.0,
        };
        let c = best_split(&h, &e, &rule).unwrap();
        assert_eq!((c.feature, c.bin), (0, 0));
        assert!(close(c.gain, 0.5 * (4.0 / 3.0 + 16.0 / 3.0 - 0.8), 1e-12));
        assert_eq!((c.left, c.right), ((-2.0, 2.0), (4.0, 2.0)));
        // gamma above the gain blocks the split; just below it does not.
        assert!(best_split(
            &h,
            &e,
            &SplitRule {
                gamma: 2.94,
                ..rule
            }
        )
        .is_none());
        assert!(best_split(
            &h,
            &e,
            &SplitRule {
                gamma: 2.93,
                ..rule
            }
        )
        .is_some());
        // Each side of every cut has H <= 3, one side H <= 2: min_child_weight 2.5 blocks both.
        assert!(best_split(
            &h,
            &e,
            &SplitRule {
                min_child_weight: 2.5,
                ..rule
            }
        )
        .is_none());
        // min_child_weight 2 keeps only bin 0 (bin 1 leaves H = 1 on the right).
        let c = best_split(
            &h,
            &e,
            &SplitRule {
                min_child_weight: 2.0,
                ..rule
            },
        )
        .unwrap();
        assert_eq!(c.bin, 0);
        // Ties: a second, identical feature does not win.
        let twin = hist(
            2,
            3,
            &[
                (0, 0, -2.0, 2.0),
                (0, 1, 1.0, 1.0),
                (0, 2, 3.0, 1.0),
                (1, 0, -2.0, 2.0),
                (1, 1, 1.0, 1.0),
                (1, 2, 3.0, 1.0),
            ],
        );
        let e2 = BinEdges {
            edges: vec![vec![1.0, 2.0], vec![1.0, 2.0]],
        };
        assert_eq!(best_split(&twin, &e2, &rule).unwrap().feature, 0);

        // The grower: depth 1, so the root's children are final leaves, nothing to request.
        let params = GbdtParams {
            max_depth: 1,
            ..GbdtParams::default()
        };
        let g = TreeGrower::new(&params, &e, h);
        assert!(g.is_done() && g.requests().is_empty());
        let t = g.finish();
        assert_eq!(t.nodes.len(), 3);
        assert_eq!(
            t.nodes[0],
            GNode::Split {
                feature: 0,
                bin: 0,
                threshold: 1.0,
                left: 1,
                right: 2
            }
        );
        let value = |i: usize| match t.nodes[i] {
            GNode::Leaf { value } => value,
            _ => f64::NAN,
        };
        assert!(close(value(1), 2.0 / 3.0 * 0.3, 1e-12));
        assert!(close(value(2), -4.0 / 3.0 * 0.3, 1e-12));
    }

    /// Per node: its split `(feature, bin)` if any, and its sums `(G, H)`.
    type Reference = (Vec<Option<(usize, usize)>>, Vec<(f64, f64)>);

    /// Reference grower: every node's histogram straight from its rows, no subtraction.
    fn grow_direct(
        binned: &Array2<u16>,
        g: &[f64],
        h: &[f64],
        edges: &BinEdges,
        params: &GbdtParams,
    ) -> Reference {
        let bins = edges.max_bins();
        let direct = |rows: &[usize]| {
            let mut hist = Histogram::zeros(binned.ncols(), bins);
            for &r in rows {
                for f in 0..binned.ncols() {
                    let at = (f * bins + usize::from(binned[[r, f]])) * 2;
                    hist.data[at] += g[r];
                    hist.data[at + 1] += h[r];
                }
            }
            hist
        };
        let rule = SplitRule {
            lambda: params.lambda,
            gamma: params.gamma,
            min_child_weight: params.min_child_weight,
        };
        let all: Vec<usize> = (0..binned.nrows()).collect();
        // (rows, depth, sums)
        let mut queue = vec![(all.clone(), 0u32, direct(&all).totals())];
        let mut splits = Vec::new();
        let mut i = 0;
        while i < queue.len() {
            let (rows, depth, _) = queue[i].clone();
            let c = (depth < params.max_depth)
                .then(|| best_split(&direct(&rows), edges, &rule))
                .flatten();
            splits.push(c.map(|c| (c.feature, c.bin)));
            if let Some(c) = c {
                let (l, r): (Vec<usize>, Vec<usize>) = rows
                    .iter()
                    .partition(|&&row| usize::from(binned[[row, c.feature]]) <= c.bin);
                queue.push((l, depth + 1, c.left));
                queue.push((r, depth + 1, c.right));
            }
            i += 1;
        }
        (splits, queue.into_iter().map(|q| q.2).collect())
    }

    #[test]
    fn subtraction_grows_the_same_tree_as_direct_histograms() {
        let data = synthetic(600, 5, 2, 11, |r| usize::from(r[0] + 0.5 * r[3] > 0.7));
        let edges = QuantileSketch::of(data.features.view(), 64).bin_edges(16);
        let binned = edges.bin_matrix(data.features.view()).unwrap();
        // Uneven raw scores so that gradients are not exact binary fractions.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let raw = Array2::from_shape_fn((600, 1), |_| rng.gen_range(-2.0..2.0));
        let (g, h) = gradients(raw.view(), &data.labels, 0);
        let params = GbdtParams {
            max_depth: 5,
            min_child_weight: 0.5,
            ..GbdtParams::default()
        };
        let bins = edges.max_bins();
        let root = build_histograms(binned.view(), &GTree::root(), &[0], &g, &h, bins)
            .unwrap()
            .remove(0);
        let mut grower = TreeGrower::new(&params, &edges, root);
        let mut exchanges = 0;
        while !grower.is_done() {
            let req = grower.requests();
            let hists = build_histograms(binned.view(), &grower.partial_tree(), &req, &g, &h, bins)
                .unwrap();
            grower.absorb(hists).unwrap();
            exchanges += 1;
        }
        // Depth 5: levels 1 to 4 are requested, level 5 comes from the splits.
        assert_eq!(exchanges, 4);
        let tree = grower.finish();
        let (splits, sums) = grow_direct(&binned, &g, &h, &edges, &params);
        assert_eq!(tree.nodes.len(), splits.len());
        assert!(tree.nodes.len() > 15, "a deep tree: {}", tree.nodes.len());
        for (i, (node, split)) in tree.nodes.iter().zip(&splits).enumerate() {
            match (node, split) {
                (GNode::Split { feature, bin, .. }, Some((f, b))) => {
                    assert_eq!((*feature as usize, usize::from(*bin)), (*f, *b), "node {i}")
                }
                (GNode::Leaf { value }, None) => {
                    let (sg, sh) = sums[i];
                    assert!(close(*value, -sg / (sh + 1.0) * 0.3, 1e-9), "leaf {i}");
                }
                _ => panic!("node {i}: {node:?} vs {split:?}"),
            }
        }
        tree.check(&edges).unwrap();
        // Routing by bins and by raw thresholds agree on every row.
        for (x, b) in data.features.outer_iter().zip(binned.outer_iter()) {
            assert_eq!(tree.predict_raw(x), tree.predict_binned(b));
        }
    }

    #[test]
    fn the_grower_refuses_bad_histograms_and_can_finish_early() {
        let data = synthetic(300, 3, 2, 1, |r| usize::from(r[1] > 0.5));
        let edges = QuantileSketch::of(data.features.view(), 64).bin_edges(8);
        let binned = edges.bin_matrix(data.features.view()).unwrap();
        let (g, h) = gradients(Array2::zeros((300, 1)).view(), &data.labels, 0);
        let bins = edges.max_bins();
        let root = build_histograms(binned.view(), &GTree::root(), &[0], &g, &h, bins)
            .unwrap()
            .remove(0);
        let mut grower = TreeGrower::new(&GbdtParams::default(), &edges, root);
        assert_eq!(grower.requests(), vec![1]);
        let before = grower.partial_tree();
        assert!(grower.absorb(vec![]).is_err());
        assert!(grower.absorb(vec![Histogram::zeros(3, bins + 1)]).is_err());
        let mut nan = Histogram::zeros(3, bins);
        nan.data[0] = f64::NAN;
        assert!(grower.absorb(vec![nan]).is_err());
        assert_eq!(grower.partial_tree(), before);
        let t = grower.finish();
        assert_eq!(t.nodes.len(), 3);
        // Rows split on feature 1 around 0.5: the two leaves pull opposite ways.
        assert!(t.predict_raw(ndarray::array![0.5f32, 0.1, 0.5].view()) < 0.0);
        assert!(t.predict_raw(ndarray::array![0.5f32, 0.9, 0.5].view()) > 0.0);
        // build_histograms refuses mismatched inputs.
        let tree = GTree::root();
        assert!(build_histograms(binned.view(), &tree, &[0], &g[1..], &h, bins).is_err());
        assert!(build_histograms(binned.view(), &tree, &[1], &g, &h, bins).is_err());
        assert!(build_histograms(binned.view(), &tree, &[0, 0], &g, &h, bins).is_err());
        assert!(build_histograms(binned.view(), &tree, &[0], &g, &h, 2).is_err());
    }

    #[test]
    fn centralized_training_separates_a_binary_set() {
        let rule = |r: &[f32]| usize::from(r[0] + r[1] > 1.0);
        let train = synthetic(800, 3, 2, 21, rule);
        let test = synthetic(400, 3, 2, 22, rule);
        let params = GbdtParams::default();
        let edges =
            QuantileSketch::of(train.features.view(), params.sketch_size as usize).bin_edges(64);
        let e = train_centralized(&train, &edges, &params, 30).unwrap();
        assert_eq!(e.rounds.len(), 30);
        assert!(e.rounds.iter().all(|r| r.len() == 1));
        let stats = e.evaluate(&test).unwrap();
        assert!(stats.accuracy > 0.93, "binary accuracy {}", stats.accuracy);
        let few = train_centralized(&train, &edges, &params, 2).unwrap();
        assert!(few.evaluate(&test).unwrap().loss > stats.loss);
        let p = e.predict_proba(test.features.view()).unwrap();
        assert!(p.outer_iter().all(|r| close(r.sum(), 1.0, 1e-12)));
        assert!(train_centralized(&train, &BinEdges { edges: vec![] }, &params, 1).is_err());
    }

    #[test]
    fn centralized_training_learns_iris() {
        let train = Builtin::Iris.train_pool().unwrap();
        let test = Builtin::Iris.holdout().unwrap();
        let params = GbdtParams::default();
        let edges = QuantileSketch::of(train.features.view(), 256).bin_edges(64);
        let e = train_centralized(&train, &edges, &params, 20).unwrap();
        assert!(e.rounds.iter().all(|r| r.len() == 3));
        let acc = e.evaluate(&test).unwrap().accuracy;
        assert!(acc > 0.85, "iris accuracy {acc}");
        let train_acc = e.evaluate(&train).unwrap().accuracy;
        assert!(train_acc > 0.95, "iris train accuracy {train_acc}");
    }

    /// The federation as the coordinator runs it: clients send sketches, then per output the
    /// root histograms and each level's requested histograms (through the byte encoding); the
    /// coordinator sums them in client order and drives the same TreeGrower.
    fn train_federated(
        parts: &[Dataset],
        edges: &BinEdges,
        params: &GbdtParams,
        rounds: u32,
    ) -> Ensemble {
        let (d, nc) = (parts[0].n_features(), parts[0].n_classes());
        let bins = edges.max_bins();
        let binned: Vec<Array2<u16>> = parts
            .iter()
            .map(|p| edges.bin_matrix(p.features.view()).unwrap())
            .collect();
        let mut ens = Ensemble::new(d, nc, edges.clone());
        for _ in 0..rounds {
            let raws: Vec<Array2<f64>> = parts
                .iter()
                .map(|p| ens.raw_scores(p.features.view()).unwrap())
                .collect();
            let mut trees = Vec::new();
            for k in 0..n_outputs(nc) {
                let grads: Vec<(Vec<f64>, Vec<f64>)> = parts
                    .iter()
                    .zip(&raws)
                    .map(|(p, r)| gradients(r.view(), &p.labels, k))
                    .collect();
                let sum = |tree: &GTree, nodes: &[u32]| {
                    let mut total: Vec<Histogram> = Vec::new();
                    for (b, (g, h)) in binned.iter().zip(&grads) {
                        let local = build_histograms(b.view(), tree, nodes, g, h, bins).unwrap();
                        let wire = local.into_iter().map(|h| h.data).collect();
                        let got = histograms_from_values(wire, d, bins, nodes.len()).unwrap();
                        if total.is_empty() {
                            total = got;
                        } else {
                            for (t, x) in total.iter_mut().zip(&got) {
                                t.add(x).unwrap();
                            }
                        }
                    }
                    total
                };
                let root = sum(&GTree::root(), &[0]).remove(0);
                let mut grower = TreeGrower::new(params, edges, root);
                while !grower.is_done() {
                    let hists = sum(&grower.partial_tree(), &grower.requests());
                    grower.absorb(hists).unwrap();
                }
                trees.push(grower.finish());
            }
            ens.rounds.push(trees);
        }
        ens
    }

    fn splits(e: &Ensemble) -> Vec<Vec<(u32, u16)>> {
        e.rounds
            .iter()
            .flatten()
            .map(|t| {
                t.nodes
                    .iter()
                    .filter_map(|n| match n {
                        GNode::Split { feature, bin, .. } => Some((*feature, *bin)),
                        GNode::Leaf { .. } => None,
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn summed_client_histograms_grow_the_pooled_model() {
        let pooled = Builtin::Iris.train_pool().unwrap();
        let test = Builtin::Iris.holdout().unwrap();
        // Three clients with interleaved rows: every sum runs in a different order than pooled.
        let parts: Vec<Dataset> = (0..3)
            .map(|c| {
                let rows: Vec<usize> = (0..pooled.n_rows()).filter(|r| r % 3 == c).collect();
                pooled.select(&rows)
            })
            .collect();
        let params = GbdtParams {
            max_depth: 3,
            min_child_weight: 0.1,
            ..GbdtParams::default()
        };
        let mut sketch = QuantileSketch::empty(pooled.n_features());
        for p in &parts {
            let s = QuantileSketch::of(p.features.view(), params.sketch_size as usize);
            s.check(4, 256).unwrap();
            sketch.merge(&s).unwrap();
        }
        let edges = sketch.bin_edges(params.max_bins as usize);
        let fed = train_federated(&parts, &edges, &params, 8);
        let central = train_centralized(&pooled, &edges, &params, 8).unwrap();
        assert_eq!(splits(&fed), splits(&central));
        assert!(splits(&central).iter().map(Vec::len).sum::<usize>() > 30);
        for x in [&pooled, &test] {
            let (a, b) = (
                fed.raw_scores(x.features.view()).unwrap(),
                central.raw_scores(x.features.view()).unwrap(),
            );
            for (u, v) in a.iter().zip(&b) {
                assert!(close(*u, *v, 1e-9), "{u} vs {v}");
            }
        }
        // The binary loss too, with three contiguous parts of a synthetic set.
        let data = synthetic(900, 4, 2, 8, |r| usize::from(r[0] * r[1] > 0.25));
        let parts: Vec<Dataset> = (0..3)
            .map(|c| data.select(&(c * 300..(c + 1) * 300).collect::<Vec<_>>()))
            .collect();
        let edges = QuantileSketch::of(data.features.view(), 256).bin_edges(32);
        let params = GbdtParams::default();
        let fed = train_federated(&parts, &edges, &params, 6);
        let central = train_centralized(&data, &edges, &params, 6).unwrap();
        assert_eq!(splits(&fed), splits(&central));
        let (a, b) = (
            fed.raw_scores(data.features.view()).unwrap(),
            central.raw_scores(data.features.view()).unwrap(),
        );
        assert!(a.iter().zip(&b).all(|(u, v)| close(*u, *v, 1e-9)));
    }

    fn keys(v: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    out.insert(k.clone());
                    keys(x, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| keys(x, out)),
            _ => {}
        }
    }

    fn trained_iris(rounds: u32) -> Ensemble {
        let train = Builtin::Iris.train_pool().unwrap();
        let edges = QuantileSketch::of(train.features.view(), 64).bin_edges(16);
        train_centralized(&train, &edges, &GbdtParams::default(), rounds).unwrap()
    }

    #[test]
    fn the_blob_carries_splits_and_leaf_values_only() {
        let e = trained_iris(3);
        let v: serde_json::Value = serde_json::from_slice(&e.to_blob()).unwrap();
        assert_eq!(v["format"], "shoal-gbdt");
        assert_eq!(v["version"], 1);
        let mut found = std::collections::BTreeSet::new();
        keys(&v, &mut found);
        let allowed = [
            "format",
            "version",
            "ensemble",
            "n_features",
            "n_classes",
            "edges",
            "base_score",
            "rounds",
            "nodes",
            "Split",
            "Leaf",
            "feature",
            "bin",
            "threshold",
            "left",
            "right",
            "value",
        ];
        for k in &found {
            assert!(allowed.contains(&k.as_str()), "unexpected key {k}");
        }
        assert!(found.contains("Split") && found.contains("value"));
        let text = String::from_utf8(e.to_blob()).unwrap().to_lowercase();
        for word in ["grad", "hess", "sum", "\"g\"", "\"h\""] {
            assert!(!text.contains(word), "{word} in blob");
        }
        // Round trip: same structure, and the same predictions (JSON keeps f64 to the last ulp
        // or so, depending on serde_json's float parser).
        let back = Ensemble::from_blob(&e.to_blob(), 4, 3, 9).unwrap();
        assert_eq!(splits(&back), splits(&e));
        assert_eq!(back.edges, e.edges);
        let x = Builtin::Iris.holdout().unwrap().features;
        let (a, b) = (
            back.raw_scores(x.view()).unwrap(),
            e.raw_scores(x.view()).unwrap(),
        );
        assert!(a.iter().zip(&b).all(|(u, v)| close(*u, *v, 1e-12)));
        assert!(Ensemble::from_blob(&e.to_blob(), 4, 3, 8).is_err());
        assert!(Ensemble::from_blob(&e.to_blob(), 5, 3, 9).is_err());
        assert!(Ensemble::from_blob(&e.to_blob(), 4, 2, 9).is_err());
    }

    #[test]
    fn corrupt_blobs_are_refused() {
        let good = trained_iris(1);
        let edges = good.edges.clone();
        let refuse = |e: &Ensemble, what: &str| {
            let err = Ensemble::from_blob(&e.to_blob(), 4, 3, 100)
                .unwrap_err()
                .to_string();
            assert!(err.contains(what), "{err}");
        };
        let split = |feature: u32, bin: u16, left: u32, right: u32| GNode::Split {
            feature,
            bin,
            threshold: edges
                .edges
                .get(feature as usize)
                .and_then(|e| e.get(usize::from(bin)))
                .copied()
                .unwrap_or(0.5),
            left,
            right,
        };
        let leaf = GNode::Leaf { value: 0.1 };
        let with_tree = |nodes: Vec<GNode>| {
            let mut e = good.clone();
            e.rounds[0][0] = GTree { nodes };
            e
        };
        assert!(Ensemble::from_blob(
            &with_tree(vec![split(2, 0, 1, 2), leaf.clone(), leaf.clone()]).to_blob(),
            4,
            3,
            100
        )
        .is_ok());
        refuse(
            &with_tree(vec![split(2, 0, 0, 2), leaf.clone(), leaf.clone()]),
            "child 0",
        );
        refuse(
            &with_tree(vec![split(2, 0, 1, 3), leaf.clone(), leaf.clone()]),
            "child 3",
        );
        refuse(
            &with_tree(vec![split(9, 0, 1, 2), leaf.clone(), leaf.clone()]),
            "feature 9",
        );
        refuse(
            &with_tree(vec![split(2, 999, 1, 2), leaf.clone(), leaf.clone()]),
            "bin 999",
        );
        let mut moved = with_tree(vec![split(2, 0, 1, 2), leaf.clone(), leaf.clone()]);
        if let GNode::Split { threshold, .. } = &mut moved.rounds[0][0].nodes[0] {
            *threshold += 0.01;
        }
        refuse(&moved, "not one of its");
        refuse(&with_tree(vec![]), "0 nodes");
        let mut short = good.clone();
        short.rounds[0].pop();
        refuse(&short, "round 0 has 2 trees");
        let mut bad_edges = good.clone();
        bad_edges.edges.edges[0] = vec![2.0, 1.0];
        refuse(&bad_edges, "bin edges of feature 0");
        let mut base = good.clone();
        base.base_score = vec![0.0];
        refuse(&base, "base scores");
        let v2 = String::from_utf8(good.to_blob())
            .unwrap()
            .replace("\"version\":1", "\"version\":2");
        let err = Ensemble::from_blob(v2.as_bytes(), 4, 3, 100)
            .unwrap_err()
            .to_string();
        assert!(err.contains("version 2"), "{err}");
        assert!(Ensemble::from_blob(b"{}", 4, 3, 100).is_err());
        assert!(Ensemble::from_blob(b"\xff", 4, 3, 100).is_err());
        // A malformed tree in memory still routes without looping or panicking.
        let cyc = GTree {
            nodes: vec![split(0, 0, 0, 0)],
        };
        let row = Array1::from(vec![0.0f32; 4]);
        assert_eq!(cyc.predict_raw(row.view()), 0.0);
        assert_eq!(cyc.route_binned(Array1::from(vec![0u16; 4]).view()), 0);
    }
}
