//! Tree models on the wire (`shoal/v1/trees.proto`): forests, boosted ensembles, partial boosting
//! trees, quantile sketches. Conversions to the wire cannot fail; conversions from it check only
//! what the types need (every node is a split or a leaf, a sketch's values and weights pair up, a
//! bin fits in `u16`). Whether a tree fits the job (features, classes, node indices, edges) is the
//! receiving half's check (`Forest::check`, `Ensemble::check`, `GTree::check`,
//! `QuantileSketch::check`), which knows the job.

use shoal_shared::models::forest::{Forest, Node, Tree};
use shoal_shared::models::gbdt::{BinEdges, Ensemble, GNode, GTree, QuantileSketch};

use crate::v1::{self, boost_node, forest_node};
use crate::{invalid, WireError};

impl From<&Forest> for v1::Forest {
    fn from(f: &Forest) -> Self {
        v1::Forest {
            n_features: count(f.n_features),
            n_classes: count(f.n_classes),
            trees: f
                .trees
                .iter()
                .map(|t| v1::ForestTree {
                    weight: t.weight,
                    round: t.round,
                    nodes: t
                        .nodes
                        .iter()
                        .map(|n| v1::ForestNode {
                            node: Some(match n {
                                Node::Split {
                                    feature,
                                    threshold,
                                    left,
                                    right,
                                } => forest_node::Node::Split(v1::ForestSplit {
                                    feature: *feature,
                                    threshold: *threshold,
                                    left: *left,
                                    right: *right,
                                }),
                                Node::Leaf { proba } => forest_node::Node::Leaf(v1::ForestLeaf {
                                    proba: proba.clone(),
                                }),
                            }),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

impl TryFrom<v1::Forest> for Forest {
    type Error = WireError;

    fn try_from(f: v1::Forest) -> Result<Self, WireError> {
        let trees = f
            .trees
            .into_iter()
            .enumerate()
            .map(|(t, tree)| {
                let nodes = tree
                    .nodes
                    .into_iter()
                    .enumerate()
                    .map(|(i, n)| match n.node {
                        Some(forest_node::Node::Split(s)) => Ok(Node::Split {
                            feature: s.feature,
                            threshold: s.threshold,
                            left: s.left,
                            right: s.right,
                        }),
                        Some(forest_node::Node::Leaf(l)) => Ok(Node::Leaf { proba: l.proba }),
                        None => Err(invalid(
                            format!("forest.trees[{t}].nodes[{i}]"),
                            "is neither a split nor a leaf",
                        )),
                    })
                    .collect::<Result<_, _>>()?;
                Ok(Tree {
                    weight: tree.weight,
                    round: tree.round,
                    nodes,
                })
            })
            .collect::<Result<_, WireError>>()?;
        Ok(Forest {
            n_features: f.n_features as usize,
            n_classes: f.n_classes as usize,
            trees,
        })
    }
}

impl From<&GTree> for v1::BoostTree {
    fn from(t: &GTree) -> Self {
        v1::BoostTree {
            nodes: t
                .nodes
                .iter()
                .map(|n| v1::BoostNode {
                    node: Some(match n {
                        GNode::Split {
                            feature,
                            bin,
                            threshold,
                            left,
                            right,
                        } => boost_node::Node::Split(v1::BoostSplit {
                            feature: *feature,
                            bin: u32::from(*bin),
                            threshold: *threshold,
                            left: *left,
                            right: *right,
                        }),
                        GNode::Leaf { value } => {
                            boost_node::Node::Leaf(v1::BoostLeaf { value: *value })
                        }
                    }),
                })
                .collect(),
        }
    }
}

/// A boosting tree off the wire; `field` names it in errors.
pub fn boost_tree_from_wire(t: v1::BoostTree, field: &str) -> Result<GTree, WireError> {
    let nodes = t
        .nodes
        .into_iter()
        .enumerate()
        .map(|(i, n)| match n.node {
            Some(boost_node::Node::Split(s)) => Ok(GNode::Split {
                feature: s.feature,
                bin: u16::try_from(s.bin).map_err(|_| {
                    invalid(
                        format!("{field}.nodes[{i}].split.bin"),
                        format!("{} is more bins than there can be", s.bin),
                    )
                })?,
                threshold: s.threshold,
                left: s.left,
                right: s.right,
            }),
            Some(boost_node::Node::Leaf(l)) => Ok(GNode::Leaf { value: l.value }),
            None => Err(invalid(
                format!("{field}.nodes[{i}]"),
                "is neither a split nor a leaf",
            )),
        })
        .collect::<Result<_, _>>()?;
    Ok(GTree { nodes })
}

impl From<&Ensemble> for v1::Ensemble {
    fn from(e: &Ensemble) -> Self {
        v1::Ensemble {
            n_features: count(e.n_features),
            n_classes: count(e.n_classes),
            edges: e
                .edges
                .edges
                .iter()
                .map(|f| v1::FeatureEdges { edges: f.clone() })
                .collect(),
            base_score: e.base_score.clone(),
            rounds: e
                .rounds
                .iter()
                .map(|r| v1::BoostRound {
                    trees: r.iter().map(v1::BoostTree::from).collect(),
                })
                .collect(),
        }
    }
}

impl TryFrom<v1::Ensemble> for Ensemble {
    type Error = WireError;

    fn try_from(e: v1::Ensemble) -> Result<Self, WireError> {
        let rounds = e
            .rounds
            .into_iter()
            .enumerate()
            .map(|(r, round)| {
                round
                    .trees
                    .into_iter()
                    .enumerate()
                    .map(|(k, t)| {
                        boost_tree_from_wire(t, &format!("ensemble.rounds[{r}].trees[{k}]"))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<_, _>>()?;
        Ok(Ensemble {
            n_features: e.n_features as usize,
            n_classes: e.n_classes as usize,
            edges: BinEdges {
                edges: e.edges.into_iter().map(|f| f.edges).collect(),
            },
            base_score: e.base_score,
            rounds,
        })
    }
}

impl From<&QuantileSketch> for v1::QuantileSketch {
    fn from(s: &QuantileSketch) -> Self {
        v1::QuantileSketch {
            features: s
                .features
                .iter()
                .map(|points| v1::FeatureSketch {
                    values: points.iter().map(|p| p.0).collect(),
                    weights: points.iter().map(|p| p.1).collect(),
                })
                .collect(),
        }
    }
}

impl TryFrom<v1::QuantileSketch> for QuantileSketch {
    type Error = WireError;

    fn try_from(s: v1::QuantileSketch) -> Result<Self, WireError> {
        let features = s
            .features
            .into_iter()
            .enumerate()
            .map(|(f, points)| {
                if points.values.len() != points.weights.len() {
                    return Err(invalid(
                        format!("sketch.features[{f}]"),
                        format!(
                            "{} values but {} weights",
                            points.values.len(),
                            points.weights.len()
                        ),
                    ));
                }
                Ok(points.values.into_iter().zip(points.weights).collect())
            })
            .collect::<Result<_, _>>()?;
        Ok(QuantileSketch { features })
    }
}

/// A count as the wire holds it; counts beyond `u32` (never a real forest's features or
/// classes) saturate, and the receiver's shape check refuses them.
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forest() -> Forest {
        Forest {
            n_features: 2,
            n_classes: 2,
            trees: vec![Tree {
                weight: 3.0,
                round: 1,
                nodes: vec![
                    Node::Split {
                        feature: 1,
                        threshold: 0.5,
                        left: 1,
                        right: 2,
                    },
                    Node::Leaf {
                        proba: vec![1.0, 0.0],
                    },
                    Node::Leaf {
                        proba: vec![0.25, 0.75],
                    },
                ],
            }],
        }
    }

    fn ensemble() -> Ensemble {
        let edges = BinEdges {
            edges: vec![vec![0.5, 1.5], vec![-1.0]],
        };
        let tree = GTree {
            nodes: vec![
                GNode::Split {
                    feature: 0,
                    bin: 1,
                    threshold: 1.5,
                    left: 1,
                    right: 2,
                },
                GNode::Leaf { value: -0.25 },
                GNode::Leaf { value: 0.5 },
            ],
        };
        Ensemble {
            n_features: 2,
            n_classes: 2,
            edges,
            base_score: vec![0.0],
            rounds: vec![vec![tree]],
        }
    }

    #[test]
    fn trees_and_sketches_cross_the_wire_unchanged() {
        let f = forest();
        assert_eq!(Forest::try_from(v1::Forest::from(&f)).unwrap(), f);
        let e = ensemble();
        assert_eq!(Ensemble::try_from(v1::Ensemble::from(&e)).unwrap(), e);
        e.check(2, 2, 10).unwrap();
        let t = &e.rounds[0][0];
        assert_eq!(
            &boost_tree_from_wire(v1::BoostTree::from(t), "partial_tree").unwrap(),
            t
        );
        let s = QuantileSketch {
            features: vec![vec![(1.0, 2.0), (3.0, 1.0)], vec![]],
        };
        assert_eq!(
            QuantileSketch::try_from(v1::QuantileSketch::from(&s)).unwrap(),
            s
        );
    }

    #[test]
    fn malformed_tree_messages_are_refused_naming_the_field() {
        let mut wire = v1::Forest::from(&forest());
        wire.trees[0].nodes[2].node = None;
        let err = Forest::try_from(wire).unwrap_err().to_string();
        assert!(err.contains("forest.trees[0].nodes[2]"), "{err}");

        let mut wire = v1::Ensemble::from(&ensemble());
        if let Some(boost_node::Node::Split(s)) = &mut wire.rounds[0].trees[0].nodes[0].node {
            s.bin = 70_000;
        }
        let err = Ensemble::try_from(wire).unwrap_err().to_string();
        assert!(
            err.contains("ensemble.rounds[0].trees[0].nodes[0].split.bin"),
            "{err}"
        );

        let sketch = v1::QuantileSketch {
            features: vec![v1::FeatureSketch {
                values: vec![1.0, 2.0],
                weights: vec![1.0],
            }],
        };
        let err = QuantileSketch::try_from(sketch).unwrap_err().to_string();
        assert!(err.contains("2 values but 1 weights"), "{err}");

        // What decodes is not yet trusted: a wire forest whose child points back is refused by
        // the check the receiving half runs.
        let mut f = forest();
        f.trees[0].nodes[0] = Node::Split {
            feature: 1,
            threshold: 0.5,
            left: 0,
            right: 2,
        };
        let back = Forest::try_from(v1::Forest::from(&f)).unwrap();
        assert!(back
            .check(2, 2, 10)
            .unwrap_err()
            .to_string()
            .contains("child"));
    }
}
