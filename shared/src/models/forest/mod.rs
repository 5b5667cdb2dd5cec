//! Federated random forests: trees fitted with linfa-trees on a client's rows, converted into a
//! compact representation that is checked whenever it arrives and merges by concatenation.
//!
//! Principal types: [`ForestParams`] (what each client fits per round), [`Tree`] and [`Forest`]
//! (soft-voting ensemble, each tree weighted by its client's example count). [`fit_trees`] runs on
//! a client; [`Forest::merge`] on the coordinator; [`Forest::check`] checks a forest that came off
//! the network (the wire form is protobuf, converted in `shoal-proto`); [`Forest::to_blob`] /
//! [`Forest::from_blob`] are the checkpoint form.
//!
//! Each tree sees a bootstrap sample of the local train rows and a random subset of the features
//! (random subspaces: linfa-trees has no per-split feature sampling). Leaves keep the class
//! distribution of the bootstrap rows that reach them, so the forest averages probabilities as
//! scikit-learn's does, rather than counting hard votes.

use linfa::prelude::*;
use linfa_trees::{DecisionTree, SplitQuality};
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::models::sgd::{argmax, EvalStats};
use crate::{Error, Result};

pub mod client;
mod kind;
pub mod server;

/// Checkpoint blob format name and version; a decoder refuses anything else.
pub const BLOB_FORMAT: &str = "shoal-forest";
pub const BLOB_VERSION: u32 = 1;
/// Limits a forest that comes off the network or out of a checkpoint must respect.
pub const MAX_NODES_PER_TREE: usize = 1 << 20;

/// What each client fits per round, and how big the global forest may grow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForestParams {
    /// Trees each selected client fits per round.
    pub trees_per_round: u32,
    /// Depth limit of each tree (`None`: grow until leaves are pure or too small).
    pub max_depth: Option<u32>,
    /// Fewest rows a node needs to be split.
    pub min_samples_split: u32,
    /// Fewest rows each side of a split must keep.
    pub min_samples_leaf: u32,
    /// Fraction of the features each tree may use (default 0.5: each tree gets a random half of
    /// the features, Ho's random subspace method; measured on digits, 0.4 to 0.6 beat sqrt(n)/n
    /// by 2 to 3 points since the subset is drawn per tree, not per split).
    pub max_features: Option<f64>,
    /// Cap on the global forest; the oldest rounds' trees are dropped first when it is exceeded.
    pub max_trees: u32,
}

impl Default for ForestParams {
    fn default() -> Self {
        ForestParams {
            trees_per_round: 5,
            max_depth: None,
            min_samples_split: 2,
            min_samples_leaf: 1,
            max_features: None,
            max_trees: 1000,
        }
    }
}

impl ForestParams {
    pub fn check(&self) -> Result<()> {
        let bad = |f: &str, m: String| Err(Error::invalid(format!("model.{f}"), m));
        if !(1..=10_000).contains(&self.trees_per_round) {
            return bad(
                "trees_per_round",
                format!("must be 1..=10000, found {}", self.trees_per_round),
            );
        }
        if self.max_depth == Some(0) || self.max_depth.is_some_and(|d| d > 64) {
            return bad("max_depth", "must be 1..=64 when set".into());
        }
        if self.min_samples_split < 2 {
            return bad(
                "min_samples_split",
                format!("must be at least 2, found {}", self.min_samples_split),
            );
        }
        if self.min_samples_leaf < 1 {
            return bad("min_samples_leaf", "must be at least 1".into());
        }
        if let Some(f) = self.max_features {
            if !(f > 0.0 && f <= 1.0) {
                return bad("max_features", format!("must be in (0, 1], found {f}"));
            }
        }
        if self.max_trees < 1 || self.max_trees > 1_000_000 {
            return bad(
                "max_trees",
                format!("must be 1..=1000000, found {}", self.max_trees),
            );
        }
        Ok(())
    }

    fn features_per_tree(&self, n_features: usize) -> usize {
        let frac = self.max_features.unwrap_or(0.5);
        ((frac * n_features as f64).ceil() as usize).clamp(1, n_features)
    }
}

/// A node of a [`Tree`]: rows with `x[feature] <= threshold` go left.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Node {
    Split {
        feature: u32,
        threshold: f32,
        left: u32,
        right: u32,
    },
    /// Class probabilities at this leaf.
    Leaf { proba: Vec<f32> },
}

/// One tree; `nodes[0]` is the root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    /// Vote weight: the example count of the client that fitted it.
    pub weight: f32,
    /// Round in which it joined the global forest (the cap drops the oldest first).
    pub round: u32,
    pub nodes: Vec<Node>,
}

impl Tree {
    fn leaf_of(&self, x: ArrayView1<'_, f32>) -> &[f32] {
        let mut i = 0usize;
        // Depth is bounded by the node count; a validated tree cannot loop.
        for _ in 0..self.nodes.len() {
            match &self.nodes[i] {
                Node::Leaf { proba } => return proba,
                Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                } => {
                    i = if x[*feature as usize] <= *threshold {
                        *left as usize
                    } else {
                        *right as usize
                    };
                }
            }
        }
        &[]
    }

    /// Checks indices, feature numbers, distributions; children must come after their parent,
    /// which rules out cycles.
    fn validate(&self, n_features: usize, n_classes: usize) -> Result<()> {
        let bad = |m: String| Err(Error::Data(format!("invalid tree: {m}")));
        if self.nodes.is_empty() || self.nodes.len() > MAX_NODES_PER_TREE {
            return bad(format!("{} nodes", self.nodes.len()));
        }
        if !(self.weight.is_finite() && self.weight > 0.0) {
            return bad(format!("weight {}", self.weight));
        }
        for (i, n) in self.nodes.iter().enumerate() {
            match n {
                Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                } => {
                    if *feature as usize >= n_features || !threshold.is_finite() {
                        return bad(format!(
                            "node {i} splits on feature {feature} at {threshold}"
                        ));
                    }
                    for c in [*left as usize, *right as usize] {
                        if c <= i || c >= self.nodes.len() {
                            return bad(format!("node {i} has child {c}"));
                        }
                    }
                }
                Node::Leaf { proba } => {
                    // A distribution, or all zeros (a leaf no bootstrap row reached): a client
                    // must not outvote the others through oversized leaf values.
                    let sum: f32 = proba.iter().sum();
                    let valid = proba.len() == n_classes
                        && proba
                            .iter()
                            .all(|p| p.is_finite() && (0.0..=1.0).contains(p))
                        && (sum == 0.0 || (sum - 1.0).abs() < 1e-3);
                    if !valid {
                        return bad(format!("leaf {i} is not a class distribution: {proba:?}"));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A soft-voting ensemble of trees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forest {
    pub n_features: usize,
    pub n_classes: usize,
    pub trees: Vec<Tree>,
}

#[derive(Serialize, Deserialize)]
struct Blob {
    format: String,
    version: u32,
    forest: Forest,
}

impl Forest {
    pub fn new(n_features: usize, n_classes: usize) -> Self {
        Forest {
            n_features,
            n_classes,
            trees: Vec::new(),
        }
    }

    /// Class probabilities: the weighted mean of the trees' leaf distributions (uniform when empty).
    ///
    /// # Shapes
    /// `x`: `[n, n_features]` → `[n, n_classes]`.
    pub fn predict_proba(&self, x: ArrayView2<'_, f32>) -> Result<Array2<f32>> {
        if x.ncols() != self.n_features {
            return Err(Error::Shape {
                what: "forest input".into(),
                expected: format!("{} features", self.n_features),
                found: format!("{} features", x.ncols()),
            });
        }
        let mut out = Array2::<f32>::zeros((x.nrows(), self.n_classes));
        let total: f32 = self.trees.iter().map(|t| t.weight).sum();
        if total <= 0.0 {
            out.fill(1.0 / self.n_classes as f32);
            return Ok(out);
        }
        for (row, mut o) in x.outer_iter().zip(out.outer_iter_mut()) {
            for t in &self.trees {
                for (acc, p) in o.iter_mut().zip(t.leaf_of(row)) {
                    *acc += t.weight * p;
                }
            }
            o.mapv_inplace(|v| v / total);
        }
        Ok(out)
    }

    /// Accuracy and log loss on `data`.
    pub fn evaluate(&self, data: &Dataset) -> Result<EvalStats> {
        if data.n_rows() == 0 {
            return Err(Error::Data("cannot evaluate on an empty split".into()));
        }
        let proba = self.predict_proba(data.features.view())?;
        let (mut loss, mut correct) = (0.0f64, 0usize);
        for (row, &y) in proba.outer_iter().zip(&data.labels) {
            let p = row.get(y).copied().unwrap_or(0.0);
            loss -= f64::from(p.max(1e-7)).ln();
            correct += usize::from(argmax(row.iter().copied()) == y);
        }
        let n = data.n_rows();
        Ok(EvalStats {
            loss: loss / n as f64,
            accuracy: correct as f64 / n as f64,
            num_examples: n as u64,
        })
    }

    /// Adds `other`'s trees (stamped with `round`), then drops the oldest rounds' trees beyond
    /// `max_trees`: for a forest over static data no tree is better than another, and dropping by
    /// age keeps the newest contributions of clients that joined late.
    pub fn merge(&mut self, other: Forest, round: u32, max_trees: usize) -> Result<()> {
        if other.n_features != self.n_features || other.n_classes != self.n_classes {
            return Err(Error::Shape {
                what: "forest".into(),
                expected: format!("{} features, {} classes", self.n_features, self.n_classes),
                found: format!("{} features, {} classes", other.n_features, other.n_classes),
            });
        }
        self.trees
            .extend(other.trees.into_iter().map(|t| Tree { round, ..t }));
        if self.trees.len() > max_trees {
            // Stable sort by round keeps arrival order within a round.
            self.trees.sort_by_key(|t| t.round);
            let excess = self.trees.len() - max_trees;
            self.trees.drain(..excess);
        }
        Ok(())
    }

    /// Sets every tree's vote weight (the coordinator weights a client's trees by its example count).
    pub fn set_weight(&mut self, weight: f32) {
        for t in &mut self.trees {
            t.weight = weight;
        }
    }

    /// The versioned checkpoint form (JSON).
    pub fn to_blob(&self) -> Vec<u8> {
        let blob = Blob {
            format: BLOB_FORMAT.into(),
            version: BLOB_VERSION,
            forest: self.clone(),
        };
        serde_json::to_vec(&blob).unwrap_or_default()
    }

    /// Decodes a checkpoint blob and checks it ([`Forest::check`]).
    pub fn from_blob(
        bytes: &[u8],
        n_features: usize,
        n_classes: usize,
        max_trees: usize,
    ) -> Result<Self> {
        let blob: Blob = serde_json::from_slice(bytes)
            .map_err(|e| Error::Data(format!("forest blob is not valid: {e}")))?;
        if blob.format != BLOB_FORMAT || blob.version != BLOB_VERSION {
            return Err(Error::Data(format!(
                "forest blob is `{}` version {}, expected `{BLOB_FORMAT}` version {BLOB_VERSION}",
                blob.format, blob.version
            )));
        }
        blob.forest.check(n_features, n_classes, max_trees)?;
        Ok(blob.forest)
    }

    /// Fails unless this forest (off the network or out of a checkpoint) has the expected shape,
    /// at most `max_trees` trees, and every tree is well formed: node indices that cannot loop,
    /// known features, finite thresholds, leaves that are class distributions.
    pub fn check(&self, n_features: usize, n_classes: usize, max_trees: usize) -> Result<()> {
        if self.n_features != n_features || self.n_classes != n_classes {
            return Err(Error::Shape {
                what: "forest".into(),
                expected: format!("{n_features} features, {n_classes} classes"),
                found: format!("{} features, {} classes", self.n_features, self.n_classes),
            });
        }
        if self.trees.len() > max_trees {
            return Err(Error::Data(format!(
                "forest holds {} trees, more than {max_trees}",
                self.trees.len()
            )));
        }
        for t in &self.trees {
            t.validate(n_features, n_classes)?;
        }
        Ok(())
    }
}

/// Fits `params.trees_per_round` trees on `data` (bootstrap rows, random feature subsets), seeded.
pub fn fit_trees(
    data: &Dataset,
    n_classes: usize,
    params: &ForestParams,
    seed: u64,
) -> Result<Forest> {
    params.check()?;
    let (n, d) = (data.n_rows(), data.n_features());
    if n == 0 || d == 0 {
        return Err(Error::Data(
            "cannot fit trees on an empty train split".into(),
        ));
    }
    if data.labels.iter().any(|&y| y >= n_classes) {
        return Err(Error::Data(format!(
            "a label is outside the {n_classes} classes"
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let m = params.features_per_tree(d);
    let hyper = DecisionTree::<f64, usize>::params()
        .split_quality(SplitQuality::Gini)
        .max_depth(params.max_depth.map(|d| d as usize))
        .min_weight_split(params.min_samples_split as f32)
        .min_weight_leaf(params.min_samples_leaf as f32);
    let mut forest = Forest::new(d, n_classes);
    for _ in 0..params.trees_per_round {
        let rows: Vec<usize> = (0..n).map(|_| rng.gen_range(0..n)).collect();
        let mut features: Vec<usize> = sample(&mut rng, d, m).into_vec();
        features.sort_unstable();
        let x: Array2<f64> = data
            .features
            .select(Axis(0), &rows)
            .select(Axis(1), &features)
            .mapv(f64::from);
        let y: Array1<usize> = rows.iter().map(|&r| data.labels[r]).collect();
        let fitted = hyper
            .fit(&linfa::Dataset::new(x.clone(), y.clone()))
            .map_err(|e| Error::Data(format!("decision tree: {e}")))?;
        let mut tree = convert(fitted.root_node(), &features, n_classes);
        fill_leaves(
            &mut tree,
            &data.features.select(Axis(0), &rows),
            y.as_slice().unwrap_or(&[]),
            n_classes,
        );
        forest.trees.push(tree);
    }
    Ok(forest)
}

/// Flattens linfa's tree (local feature indices) into our nodes (global feature indices); a
/// missing child (linfa leaves it out when a side gets no rows) is replaced by its sibling.
fn convert(root: &linfa_trees::TreeNode<f64, usize>, features: &[usize], n_classes: usize) -> Tree {
    let mut nodes = Vec::new();
    push(root, features, n_classes, &mut nodes);
    Tree {
        weight: 1.0,
        round: 0,
        nodes,
    }
}

fn push(
    node: &linfa_trees::TreeNode<f64, usize>,
    features: &[usize],
    n_classes: usize,
    out: &mut Vec<Node>,
) -> u32 {
    let me = out.len();
    let children = node.children();
    let (l, r) = (children[0].as_deref(), children[1].as_deref());
    match (node.is_leaf(), l, r) {
        (false, Some(l), Some(r)) => {
            let (f, threshold, _) = node.split();
            out.push(Node::Leaf { proba: Vec::new() }); // placeholder, replaced below
            let left = push(l, features, n_classes, out);
            let right = push(r, features, n_classes, out);
            out[me] = Node::Split {
                feature: features.get(f).copied().unwrap_or(0) as u32,
                threshold: threshold as f32,
                left,
                right,
            };
        }
        (false, Some(only), None) | (false, None, Some(only)) => {
            return push(only, features, n_classes, out)
        }
        _ => {
            let mut proba = vec![0.0; n_classes];
            if let Some(c) = node.prediction().filter(|&c| c < n_classes) {
                proba[c] = 1.0;
            }
            out.push(Node::Leaf { proba });
        }
    }
    me as u32
}

/// Replaces each leaf's one-hot prediction by the class distribution of the rows reaching it.
fn fill_leaves(tree: &mut Tree, x: &Array2<f32>, y: &[usize], n_classes: usize) {
    let mut counts: Vec<Vec<f32>> = vec![vec![0.0; n_classes]; tree.nodes.len()];
    for (row, &label) in x.outer_iter().zip(y) {
        let mut i = 0usize;
        while let Node::Split {
            feature,
            threshold,
            left,
            right,
        } = &tree.nodes[i]
        {
            i = if row[*feature as usize] <= *threshold {
                *left as usize
            } else {
                *right as usize
            };
        }
        if let Some(c) = counts[i].get_mut(label) {
            *c += 1.0;
        }
    }
    for (node, c) in tree.nodes.iter_mut().zip(counts) {
        if let Node::Leaf { proba } = node {
            let total: f32 = c.iter().sum();
            if total > 0.0 {
                *proba = c.iter().map(|v| v / total).collect();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::builtin::Builtin;
    use crate::data::partition::Partitioner;

    #[test]
    fn a_forest_learns_digits_and_survives_the_wire() {
        let train = Builtin::Digits.train_pool().unwrap();
        let test = Builtin::Digits.holdout().unwrap();
        let params = ForestParams {
            trees_per_round: 30,
            ..ForestParams::default()
        };
        let forest = fit_trees(&train, 10, &params, 7).unwrap();
        let acc = forest.evaluate(&test).unwrap().accuracy;
        assert!(acc > 0.9, "30-tree forest on digits: {acc}");
        let back = Forest::from_blob(&forest.to_blob(), 64, 10, 100).unwrap();
        assert_eq!(back, forest);
        assert!(Forest::from_blob(&forest.to_blob(), 63, 10, 100).is_err());
        assert!(Forest::from_blob(&forest.to_blob(), 64, 10, 29).is_err());
        assert!(Forest::from_blob(b"{}", 64, 10, 100).is_err());
    }

    #[test]
    fn hostile_blobs_are_refused() {
        let mut f = Forest::new(2, 2);
        f.trees.push(Tree {
            weight: 1.0,
            round: 0,
            // A cycle: node 0 points to itself.
            nodes: vec![
                Node::Split {
                    feature: 0,
                    threshold: 0.5,
                    left: 0,
                    right: 1,
                },
                Node::Leaf {
                    proba: vec![0.5, 0.5],
                },
            ],
        });
        assert!(Forest::from_blob(&f.to_blob(), 2, 2, 10)
            .unwrap_err()
            .to_string()
            .contains("child"));
        f.trees[0].nodes[0] = Node::Split {
            feature: 9,
            threshold: 0.5,
            left: 1,
            right: 1,
        };
        assert!(Forest::from_blob(&f.to_blob(), 2, 2, 10).is_err());
        let blob = String::from_utf8(f.to_blob())
            .unwrap()
            .replace("\"version\":1", "\"version\":2");
        assert!(Forest::from_blob(blob.as_bytes(), 2, 2, 10)
            .unwrap_err()
            .to_string()
            .contains("version 2"));
        let mut loud = f.clone();
        loud.trees[0].nodes = vec![Node::Leaf {
            proba: vec![3e38, 0.0],
        }];
        let err = Forest::from_blob(&loud.to_blob(), 2, 2, 10)
            .unwrap_err()
            .to_string();
        assert!(err.contains("distribution"), "{err}");
    }

    #[test]
    fn merge_caps_by_dropping_the_oldest_rounds() {
        let data = Builtin::Iris.shard(&Partitioner::Iid, 0, 1, 1).unwrap();
        let p = ForestParams {
            trees_per_round: 3,
            ..ForestParams::default()
        };
        let mut global = Forest::new(4, 3);
        for round in 1..=3 {
            let mut t = fit_trees(&data, 3, &p, round.into()).unwrap();
            t.set_weight(10.0);
            global.merge(t, round, 7).unwrap();
        }
        assert_eq!(global.trees.len(), 7);
        let rounds: Vec<u32> = global.trees.iter().map(|t| t.round).collect();
        assert_eq!(rounds, vec![1, 2, 2, 2, 3, 3, 3]);
        assert!(global.merge(Forest::new(5, 3), 4, 7).is_err());
    }

    #[test]
    fn fitting_is_seeded_and_params_are_checked() {
        let data = Builtin::Iris.shard(&Partitioner::Iid, 0, 1, 1).unwrap();
        let p = ForestParams {
            trees_per_round: 2,
            max_depth: Some(3),
            ..ForestParams::default()
        };
        assert_eq!(
            fit_trees(&data, 3, &p, 5).unwrap(),
            fit_trees(&data, 3, &p, 5).unwrap()
        );
        assert_ne!(
            fit_trees(&data, 3, &p, 5).unwrap(),
            fit_trees(&data, 3, &p, 6).unwrap()
        );
        for bad in [
            ForestParams {
                trees_per_round: 0,
                ..p.clone()
            },
            ForestParams {
                max_features: Some(1.5),
                ..p.clone()
            },
            ForestParams {
                min_samples_split: 1,
                ..p.clone()
            },
        ] {
            assert!(bad.check().is_err());
        }
    }
}
