//! Multimodal fusion: how each fusion variant sees a client's rows.
//!
//! A [`FeatureView`] turns a dataset whose features belong to modalities (name prefixes `m1_`,
//! `m2_`, ...) into the inputs of one variant: a single modality, all of them (early fusion), all
//! of them plus cross-modal products (cross fusion), or the class probabilities of trained
//! per-modality models (stacking, for learned late fusion). Clients apply the view their task
//! carries; the coordinator applies the same view to its test set. [`variants`] lists the
//! variants of the original comparison; [`late_fusion_proba`] averages per-modality models.
//!
//! The original tutorial trained its three "single modality" baselines all on modality 1; here each
//! is trained and tested on its own modality.

use ndarray::{Array2, Axis};
use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::models::sgd::{Classifier, LogReg, Model};
use crate::tensor::Weights;
use crate::{Error, Result};

/// Most columns or products a view may name (a view comes off the network).
pub const MAX_VIEW_COLUMNS: usize = 100_000;
/// Most members a stacking view may have.
pub const MAX_STACK_MEMBERS: usize = 64;
/// Most values a view may produce (rows × output columns): a memory budget checked before any
/// allocation.
pub const MAX_VIEW_VALUES: usize = 1 << 28;
/// Most modalities a fusion job compares.
pub const MAX_MODALITIES: usize = 16;

/// One trained member of a stacking view: a logistic regression over some columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StackMember {
    pub columns: Vec<usize>,
    pub weights: Weights,
}

/// How a fusion variant sees the rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "view", rename_all = "snake_case", deny_unknown_fields)]
pub enum FeatureView {
    /// These columns, in this order.
    Columns { columns: Vec<usize> },
    /// These columns, then the product of each column pair.
    Cross {
        columns: Vec<usize>,
        pairs: Vec<(usize, usize)>,
    },
    /// The class probabilities of each member model, side by side.
    Stacked { members: Vec<StackMember> },
}

impl FeatureView {
    /// The view applied to `data`: a dataset with the view's features and the same labels.
    pub fn apply(&self, data: &Dataset) -> Result<Dataset> {
        let d = data.n_features();
        let width = self.width(data.n_classes());
        if width == 0
            || width > MAX_VIEW_COLUMNS
            || width.saturating_mul(data.n_rows()) > MAX_VIEW_VALUES
        {
            return Err(Error::invalid(
                "feature view",
                format!(
                    "{width} output columns for {} rows is outside the limits",
                    data.n_rows()
                ),
            ));
        }
        let check = |cols: &mut dyn Iterator<Item = usize>| -> Result<()> {
            for c in cols {
                if c >= d {
                    return Err(Error::invalid(
                        "feature view",
                        format!("column {c} beyond the data's {d} features"),
                    ));
                }
            }
            Ok(())
        };
        let (features, names) = match self {
            FeatureView::Columns { columns } => {
                check(&mut columns.iter().copied())?;
                (
                    data.features.select(Axis(1), columns),
                    columns
                        .iter()
                        .map(|&c| data.feature_names[c].clone())
                        .collect::<Vec<_>>(),
                )
            }
            FeatureView::Cross { columns, pairs } => {
                check(
                    &mut columns
                        .iter()
                        .copied()
                        .chain(pairs.iter().flat_map(|&(a, b)| [a, b])),
                )?;
                let mut out = Array2::<f32>::zeros((data.n_rows(), columns.len() + pairs.len()));
                let base = data.features.select(Axis(1), columns);
                out.slice_mut(ndarray::s![.., ..columns.len()])
                    .assign(&base);
                for (k, &(a, b)) in pairs.iter().enumerate() {
                    let prod = &data.features.column(a) * &data.features.column(b);
                    out.column_mut(columns.len() + k).assign(&prod);
                }
                let mut names: Vec<String> = columns
                    .iter()
                    .map(|&c| data.feature_names[c].clone())
                    .collect();
                names.extend(
                    pairs.iter().map(|&(a, b)| {
                        format!("{}*{}", data.feature_names[a], data.feature_names[b])
                    }),
                );
                (out, names)
            }
            FeatureView::Stacked { members } => {
                let k = data.n_classes();
                let mut out = Array2::<f32>::zeros((data.n_rows(), members.len() * k));
                let mut names = Vec::with_capacity(members.len() * k);
                for (m, member) in members.iter().enumerate() {
                    check(&mut member.columns.iter().copied())?;
                    let model = LogReg::new(member.columns.len(), k);
                    // The member's weights must be a logreg over exactly its columns and classes.
                    let layout = model.init(
                        &mut <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0),
                    );
                    layout.check_same_layout(&member.weights)?;
                    member.weights.check_finite()?;
                    let x = data.features.select(Axis(1), &member.columns);
                    let p = model.predict_proba(&member.weights, x.view())?;
                    out.slice_mut(ndarray::s![.., m * k..(m + 1) * k])
                        .assign(&p);
                    names.extend((0..k).map(|c| format!("member{m}_p{c}")));
                }
                (out, names)
            }
        };
        Dataset::new(
            features,
            data.labels.clone(),
            names,
            data.class_names.clone(),
        )
    }

    /// Output width of the view for data with `n_classes` classes.
    pub fn width(&self, n_classes: usize) -> usize {
        match self {
            FeatureView::Columns { columns } => columns.len(),
            FeatureView::Cross { columns, pairs } => columns.len() + pairs.len(),
            FeatureView::Stacked { members } => members.len() * n_classes,
        }
    }

    /// Wire form (JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes and bounds a view from the wire.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let v: FeatureView = serde_json::from_slice(bytes)
            .map_err(|e| Error::Data(format!("feature view is not valid: {e}")))?;
        let size = match &v {
            FeatureView::Columns { columns } => columns.len(),
            FeatureView::Cross { columns, pairs } => columns.len() + pairs.len(),
            FeatureView::Stacked { members } => {
                if members.len() > MAX_STACK_MEMBERS || members.iter().any(|m| m.columns.is_empty())
                {
                    return Err(Error::Data(format!(
                        "stacking view with {} members (at most {MAX_STACK_MEMBERS}, none without columns)",
                        members.len()
                    )));
                }
                members.iter().map(|m| m.columns.len()).sum()
            }
        };
        if size == 0 || size > MAX_VIEW_COLUMNS {
            return Err(Error::Data(format!("feature view with {size} columns")));
        }
        Ok(v)
    }
}

/// Column indices of each modality, by the feature-name prefix before the first `_`, in order of
/// first appearance.
pub fn modalities(feature_names: &[String]) -> Vec<(String, Vec<usize>)> {
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, name) in feature_names.iter().enumerate() {
        let prefix = name.split('_').next().unwrap_or(name).to_string();
        match out.iter_mut().find(|(p, _)| *p == prefix) {
            Some((_, cols)) => cols.push(i),
            None => out.push((prefix, vec![i])),
        }
    }
    out
}

/// One fusion variant: a name and its view.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub name: String,
    pub view: FeatureView,
    /// Index of the modality for single-modality variants.
    pub modality: Option<usize>,
}

/// The comparison's variants trained directly: one per modality, early fusion (all columns) and
/// cross fusion (all columns plus the products of the first 3 features of each modality pair).
pub fn variants(mods: &[(String, Vec<usize>)]) -> Vec<Variant> {
    let mut out: Vec<Variant> = mods
        .iter()
        .enumerate()
        .map(|(i, (name, cols))| Variant {
            name: format!("single {name}"),
            view: FeatureView::Columns {
                columns: cols.clone(),
            },
            modality: Some(i),
        })
        .collect();
    let all: Vec<usize> = mods.iter().flat_map(|(_, c)| c.iter().copied()).collect();
    out.push(Variant {
        name: "early fusion".into(),
        view: FeatureView::Columns {
            columns: all.clone(),
        },
        modality: None,
    });
    let mut pairs = Vec::new();
    for a in 0..mods.len() {
        for b in a + 1..mods.len() {
            for &x in mods[a].1.iter().take(3) {
                for &y in mods[b].1.iter().take(3) {
                    pairs.push((x, y));
                }
            }
        }
    }
    out.push(Variant {
        name: "cross fusion".into(),
        view: FeatureView::Cross {
            columns: all,
            pairs,
        },
        modality: None,
    });
    out
}

/// Late fusion: the mean of the members' class probabilities.
///
/// # Shapes
/// `data.features`: `[n, d]` → `[n, n_classes]`.
pub fn late_fusion_proba(members: &[StackMember], data: &Dataset) -> Result<Array2<f32>> {
    if members.is_empty() {
        return Err(Error::Data("late fusion needs at least one model".into()));
    }
    let k = data.n_classes();
    let stacked = FeatureView::Stacked {
        members: members.to_vec(),
    }
    .apply(data)?;
    let mut out = Array2::<f32>::zeros((data.n_rows(), k));
    for m in 0..members.len() {
        out += &stacked.features.slice(ndarray::s![.., m * k..(m + 1) * k]);
    }
    out /= members.len() as f32;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::builtin::Builtin;
    use crate::models::sgd::{argmax, evaluate, train_local, LocalConfig, Objective};
    use rand::SeedableRng;

    fn fit(data: &Dataset) -> Weights {
        let m = LogReg::new(data.n_features(), 2);
        let w0 = m.init(&mut rand_chacha::ChaCha8Rng::seed_from_u64(0));
        let cfg = LocalConfig {
            epochs: 30,
            ..LocalConfig::default()
        };
        train_local(&m, w0, data, &cfg, 1, &Objective::default())
            .unwrap()
            .0
    }

    #[test]
    fn multimodal_views_behave_as_the_generator_says() {
        let train = Builtin::Multimodal.train_pool().unwrap();
        let test = Builtin::Multimodal.holdout().unwrap();
        assert_eq!((train.n_rows() + test.n_rows(), test.n_rows()), (1000, 200));
        let mods = modalities(&train.feature_names);
        assert_eq!(
            mods.iter().map(|(_, c)| c.len()).collect::<Vec<_>>(),
            vec![10, 8, 6]
        );
        let vs = variants(&mods);
        let names: Vec<&str> = vs.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "single m1",
                "single m2",
                "single m3",
                "early fusion",
                "cross fusion"
            ]
        );
        assert_eq!(vs[4].view.width(2), 24 + 27);
        let acc = |v: &FeatureView| {
            let (tr, te) = (v.apply(&train).unwrap(), v.apply(&test).unwrap());
            let w = fit(&tr);
            evaluate(&LogReg::new(tr.n_features(), 2), &w, &te)
                .unwrap()
                .accuracy
        };
        let single: Vec<f64> = vs[..3].iter().map(|v| acc(&v.view)).collect();
        let early = acc(&vs[3].view);
        // Modality 3 carries no signal; 1 and 2 carry half each; together they carry it all.
        assert!(single[2] < 0.65, "m3 {single:?}");
        assert!(single[0] > 0.65 && single[1] > 0.65, "{single:?}");
        assert!(
            early > 0.9 && early > single[0] && early > single[1],
            "early {early}"
        );
    }

    #[test]
    fn late_fusion_and_stacking_use_each_members_own_columns() {
        let train = Builtin::Multimodal.train_pool().unwrap();
        let test = Builtin::Multimodal.holdout().unwrap();
        let mods = modalities(&train.feature_names);
        let members: Vec<StackMember> = mods
            .iter()
            .map(|(_, cols)| {
                let view = FeatureView::Columns {
                    columns: cols.clone(),
                };
                StackMember {
                    columns: cols.clone(),
                    weights: fit(&view.apply(&train).unwrap()),
                }
            })
            .collect();
        let p = late_fusion_proba(&members, &test).unwrap();
        let acc = p
            .outer_iter()
            .zip(&test.labels)
            .filter(|(r, &y)| argmax(r.iter().copied()) == y)
            .count() as f64
            / test.n_rows() as f64;
        assert!(acc > 0.8, "late fusion {acc}");
        let stacked = FeatureView::Stacked { members }.apply(&test).unwrap();
        assert_eq!(stacked.n_features(), 6);
        for row in stacked.features.outer_iter() {
            assert!((row[0] + row[1] - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn views_from_the_wire_are_checked() {
        let v = FeatureView::Cross {
            columns: vec![0, 1],
            pairs: vec![(0, 1)],
        };
        assert_eq!(FeatureView::from_bytes(&v.to_bytes()).unwrap(), v);
        assert!(FeatureView::from_bytes(br#"{"view":"columns","columns":[]}"#).is_err());
        assert!(FeatureView::from_bytes(b"garbage").is_err());
        let data = Builtin::Iris.holdout().unwrap();
        let empty_member = FeatureView::Stacked {
            members: vec![StackMember {
                columns: vec![],
                weights: Weights::default(),
            }],
        };
        assert!(FeatureView::from_bytes(&empty_member.to_bytes()).is_err());
        // A member whose weights are not a logreg over its columns is refused, not run.
        let wrong = FeatureView::Stacked {
            members: vec![StackMember {
                columns: vec![0, 1],
                weights: LogReg::new(3, 3).init(&mut rand_chacha::ChaCha8Rng::seed_from_u64(0)),
            }],
        };
        assert!(wrong.apply(&data).is_err());
        let bad = FeatureView::Columns { columns: vec![9] };
        assert!(bad
            .apply(&data)
            .unwrap_err()
            .to_string()
            .contains("column 9"));
    }
}
