//! Weights models and local training.
//!
//! A [`Model`] is stateless: it knows its shapes, trains given weights on local rows and scores
//! them. A local training round is linfa's `FitWith` in spirit: previous weights in, new weights
//! out ([`train_local`]). A [`Classifier`] (logistic regression, the MLP) is a model trained by
//! minibatch SGD on cross-entropy ([`fit_classifier`]) and scored by accuracy
//! ([`score_classifier`]); the diffusion denoiser is a model with an objective of its own. New
//! models implement the same traits and get a [`crate::models::ModelSpec`] variant; the training
//! loop, the server half ([`server::SgdServer`]), the client half ([`client::handle`]) and the wire
//! stay as they are.

pub mod client;
pub mod kind;
mod logreg;
mod mlp;
pub mod server;

pub use kind::{LogregSpec, MlpSpec};
pub use logreg::LogReg;
pub use mlp::Mlp;
pub use server::MODEL_FILE;

use ndarray::{Array2, ArrayView2, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::tensor::Weights;
use crate::{Error, Result};

/// A model over named-tensor weights, as federated training sees it.
pub trait Model: Send + Sync + std::fmt::Debug {
    /// Initial weights, drawn from `rng` where the model needs randomness.
    fn init(&self, rng: &mut ChaCha8Rng) -> Weights;

    /// Parameters [`Model::init`] would allocate (saturating), known without allocating them: the
    /// size limit is checked before the model exists.
    fn num_params(&self) -> usize;

    /// Local training from `weights` on `data` (non-empty), whose layout [`train_local`] has
    /// checked: the model's own objective.
    fn fit(
        &self,
        weights: Weights,
        data: &Dataset,
        cfg: &LocalConfig,
        seed: u64,
        objective: &Objective<'_>,
    ) -> Result<(Weights, TrainStats)>;

    /// Loss (and accuracy, for a classifier) of `weights` on `data`; [`evaluate`] has checked the
    /// layout.
    fn score(&self, weights: &Weights, data: &Dataset) -> Result<EvalStats>;

    /// Whether [`evaluate`] yields a classification accuracy (a denoiser's is NaN).
    fn classifies(&self) -> bool {
        true
    }

    /// Whether Shoal can train and score this model itself (an external model's code lives in
    /// its clients): without it, no centralized evaluation and no centralized baseline.
    fn runs_here(&self) -> bool {
        true
    }
}

/// The [`Model`] methods every [`Classifier`] shares: minibatch SGD on cross-entropy
/// ([`fit_classifier`]) and accuracy ([`score_classifier`]). Used inside `impl Model for ...`.
macro_rules! classifier_model_methods {
    () => {
        fn fit(
            &self,
            weights: $crate::tensor::Weights,
            data: &$crate::data::Dataset,
            cfg: &$crate::models::sgd::LocalConfig,
            seed: u64,
            objective: &$crate::models::sgd::Objective<'_>,
        ) -> $crate::Result<($crate::tensor::Weights, $crate::models::sgd::TrainStats)> {
            $crate::models::sgd::fit_classifier(self, weights, data, cfg, seed, objective)
        }

        fn score(
            &self,
            weights: &$crate::tensor::Weights,
            data: &$crate::data::Dataset,
        ) -> $crate::Result<$crate::models::sgd::EvalStats> {
            $crate::models::sgd::score_classifier(self, weights, data)
        }
    };
}
pub(crate) use classifier_model_methods;

/// A differentiable classifier: class probabilities and the cross-entropy gradient. Its
/// [`Model`] impl is [`fit_classifier`] and [`score_classifier`].
pub trait Classifier: Model {
    /// Class probabilities.
    ///
    /// # Shapes
    /// `x`: `[n, n_features]` → `[n, n_classes]`.
    fn predict_proba(&self, w: &Weights, x: ArrayView2<'_, f32>) -> Result<Array2<f32>>;

    /// Mean cross-entropy over the batch and its gradient with respect to every tensor of `w`
    /// (same layout as `w`).
    fn loss_grad(&self, w: &Weights, x: ArrayView2<'_, f32>, y: &[usize])
        -> Result<(f32, Weights)>;
}

/// Local training settings (the job's `[local]` section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalConfig {
    /// Passes over the local train split per round.
    pub epochs: u32,
    /// Minibatch size.
    pub batch_size: u32,
    /// SGD learning rate.
    pub lr: f64,
    /// Heavy-ball momentum (PyTorch's form: `v = momentum * v + g; w -= lr * v`).
    pub momentum: f64,
    /// L2 penalty added to the gradient (`g += weight_decay * w`).
    pub weight_decay: f64,
    /// FedProx's proximal term: `g += proximal_mu * (w - w_global)`. With `fedprox` the
    /// strategy's `proximal_mu` is used instead.
    pub proximal_mu: f64,
    /// Multiplies the learning rate once per round: round r trains with `lr * lr_decay^(r-1)`.
    pub lr_decay: f64,
}

impl Default for LocalConfig {
    fn default() -> Self {
        // Chosen on digits (10 clients, dirichlet:0.5 and iid, seeds 1, 2, 3, 7, 42) for both
        // logreg and mlp(64): enough local work per round that 30 rounds approach the centralized
        // model, without the clients drifting apart on non-IID shards.
        LocalConfig {
            epochs: 5,
            batch_size: 32,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 1e-4,
            proximal_mu: 0.0,
            lr_decay: 1.0,
        }
    }
}

impl LocalConfig {
    /// Rejects values no training run can use, naming the field.
    pub fn check(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(Error::invalid("local.epochs", "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(Error::invalid("local.batch_size", "must be at least 1"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::invalid(
                "local.lr",
                format!("must be a positive number, found {}", self.lr),
            ));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(Error::invalid(
                "local.momentum",
                format!("must be in [0, 1), found {}", self.momentum),
            ));
        }
        for (what, v) in [
            ("local.weight_decay", self.weight_decay),
            ("local.proximal_mu", self.proximal_mu),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::invalid(
                    what,
                    format!("must be a number >= 0, found {v}"),
                ));
            }
        }
        if !(self.lr_decay > 0.0 && self.lr_decay <= 1.0) {
            return Err(Error::invalid(
                "local.lr_decay",
                format!("must be in (0, 1], found {}", self.lr_decay),
            ));
        }
        Ok(())
    }

    /// The learning rate of round `round` (1-based) after decay.
    pub fn lr_at(&self, round: u32) -> f64 {
        self.lr * self.lr_decay.powi(round.saturating_sub(1) as i32)
    }
}

/// What a local training run reports.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainStats {
    /// Mean minibatch loss over the run, weighted by batch size.
    pub loss: f64,
    /// Rows in the local train split.
    pub num_examples: u64,
    /// Optimiser steps taken (SCAFFOLD's K).
    pub steps: u64,
    /// Mean of the model's minibatch gradients over the run, when asked for
    /// ([`Objective::track_mean_gradient`]).
    pub mean_gradient: Option<Weights>,
}

/// Terms added to the local objective's gradient beyond the model's own loss.
#[derive(Debug, Clone, Copy, Default)]
pub struct Objective<'a> {
    /// The global model, anchor of FedProx's proximal term (used when `proximal_mu > 0`).
    pub anchor: Option<&'a Weights>,
    /// SCAFFOLD's drift correction `c - c_i`, added to every gradient.
    pub correction: Option<&'a Weights>,
    /// Average the model's own gradients (loss and weight decay, before the proximal and
    /// correction terms) over every step. SCAFFOLD's new client control variate is exactly that
    /// average; measuring it beats option II's `(x - y) / (K lr)`, which is off by `1/(1 - momentum)`
    /// once momentum is on.
    pub track_mean_gradient: bool,
}

/// What an evaluation reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalStats {
    pub loss: f64,
    pub accuracy: f64,
    pub num_examples: u64,
}

/// One local training run of `model` from `weights` over `data`, after the checks every model
/// needs (settings, layouts, a non-empty split); see [`Model::fit`].
pub fn train_local(
    model: &dyn Model,
    weights: Weights,
    data: &Dataset,
    cfg: &LocalConfig,
    seed: u64,
    objective: &Objective<'_>,
) -> Result<(Weights, TrainStats)> {
    cfg.check()?;
    check_layout(model, &weights)?;
    for extra in [objective.anchor, objective.correction]
        .into_iter()
        .flatten()
    {
        weights.check_same_layout(extra)?;
    }
    if data.n_rows() == 0 {
        return Err(Error::Data("cannot train on an empty train split".into()));
    }
    model.fit(weights, data, cfg, seed, objective)
}

/// Minibatch SGD (with momentum, weight decay, FedProx's proximal term and SCAFFOLD's correction
/// as configured) from `weights` over `data` for `cfg.epochs` epochs at learning rate `cfg.lr`; the
/// batch order is drawn from `seed`, so a (seed, round, client) triple reproduces the run exactly.
/// A classifier's [`Model::fit`]; call it through [`train_local`], which checks its inputs.
pub fn fit_classifier<C: Classifier + ?Sized>(
    model: &C,
    mut weights: Weights,
    data: &Dataset,
    cfg: &LocalConfig,
    seed: u64,
    objective: &Objective<'_>,
) -> Result<(Weights, TrainStats)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..data.n_rows()).collect();
    let (mut loss_sum, mut seen, mut steps) = (0.0f64, 0usize, 0u64);
    let (lr, momentum, wd) = (cfg.lr as f32, cfg.momentum as f32, cfg.weight_decay as f32);
    let mu = cfg.proximal_mu as f32;
    let mut velocity = (momentum > 0.0).then(|| weights.zeros_like());
    let mut grad_sum = objective.track_mean_gradient.then(|| weights.zeros_like());
    for _ in 0..cfg.epochs {
        order.shuffle(&mut rng);
        for batch in order.chunks(cfg.batch_size as usize) {
            let x = data.features.select(Axis(0), batch);
            let y: Vec<usize> = batch.iter().map(|&i| data.labels[i]).collect();
            let (loss, mut grad) = model.loss_grad(&weights, x.view(), &y)?;
            if wd > 0.0 {
                grad.add_scaled(wd, &weights)?;
            }
            if let Some(sum) = grad_sum.as_mut() {
                sum.add_scaled(1.0, &grad)?;
            }
            if let (Some(anchor), true) = (objective.anchor, mu > 0.0) {
                for ((g, w), a) in grad.values_mut().zip(weights.values()).zip(anchor.values()) {
                    *g += mu * (w - a);
                }
            }
            if let Some(c) = objective.correction {
                grad.add_scaled(1.0, c)?;
            }
            match velocity.as_mut() {
                Some(v) => {
                    for (vi, gi) in v.values_mut().zip(grad.values()) {
                        *vi = momentum * *vi + gi;
                    }
                    weights.add_scaled(-lr, v)?;
                }
                None => weights.add_scaled(-lr, &grad)?,
            }
            loss_sum += f64::from(loss) * batch.len() as f64;
            seen += batch.len();
            steps += 1;
        }
    }
    weights.check_finite().map_err(|e| {
        Error::Data(format!(
            "local training diverged ({e}); lower local.lr (now {})",
            cfg.lr
        ))
    })?;
    let mean_gradient = grad_sum.map(|mut sum| {
        let k = steps.max(1) as f32;
        sum.values_mut().for_each(|v| *v /= k);
        sum
    });
    Ok((
        weights,
        TrainStats {
            loss: loss_sum / seen as f64,
            num_examples: data.n_rows() as u64,
            steps,
            mean_gradient,
        },
    ))
}

/// Scores `weights` on `data` once their layout is checked; see [`Model::score`].
pub fn evaluate(model: &dyn Model, weights: &Weights, data: &Dataset) -> Result<EvalStats> {
    check_layout(model, weights)?;
    model.score(weights, data)
}

/// Mean cross-entropy and accuracy of `weights` on `data`: a classifier's [`Model::score`].
pub fn score_classifier<C: Classifier + ?Sized>(
    model: &C,
    weights: &Weights,
    data: &Dataset,
) -> Result<EvalStats> {
    if data.n_rows() == 0 {
        return Err(Error::Data("cannot evaluate on an empty split".into()));
    }
    let proba = model.predict_proba(weights, data.features.view())?;
    let (mut loss, mut correct) = (0.0f64, 0usize);
    for (row, &label) in proba.outer_iter().zip(&data.labels) {
        let p = row.get(label).copied().ok_or_else(|| {
            Error::Data(format!(
                "label {label} outside the model's {} classes",
                row.len()
            ))
        })?;
        loss -= f64::from(p.max(1e-12)).ln();
        if argmax(row.iter().copied()) == label {
            correct += 1;
        }
    }
    let n = data.n_rows();
    Ok(EvalStats {
        loss: loss / n as f64,
        accuracy: correct as f64 / n as f64,
        num_examples: n as u64,
    })
}

/// Index of the largest value (first on ties).
pub fn argmax(values: impl Iterator<Item = f32>) -> usize {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// Fails unless `weights` has the model's layout; keeps bad weights from the wire out of the math.
fn check_layout(model: &dyn Model, weights: &Weights) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    model.init(&mut rng).check_same_layout(weights)
}

/// Checks a batch: at least one row and one label per row. `what` names the model.
pub(crate) fn check_batch(what: &str, n: usize, y: &[usize]) -> Result<()> {
    if n == 0 || y.len() != n {
        return Err(Error::Shape {
            what: format!("{what} batch"),
            expected: format!("{n} labels (and at least one row)"),
            found: format!("{} labels", y.len()),
        });
    }
    Ok(())
}

/// Mean softmax cross-entropy of `logits` against `y`, and its gradient with respect to the
/// logits, `(softmax(z) - onehot(y)) / n`, computed in place.
///
/// # Shapes
/// `logits`: `[n, n_classes]` → the same array holding dL/dz.
pub(crate) fn softmax_cross_entropy(
    mut logits: Array2<f32>,
    y: &[usize],
) -> Result<(f32, Array2<f32>)> {
    let (n, k) = logits.dim();
    softmax_rows(&mut logits);
    let mut loss = 0.0f32;
    for (mut row, &label) in logits.outer_iter_mut().zip(y) {
        let pl = row
            .get(label)
            .copied()
            .ok_or_else(|| Error::Data(format!("label {label} outside {k} classes")))?;
        loss -= pl.max(1e-12).ln();
        row[label] -= 1.0;
    }
    logits /= n.max(1) as f32;
    Ok((loss / n.max(1) as f32, logits))
}

/// Row-wise softmax in place, stable against large logits.
pub(crate) fn softmax_rows(logits: &mut Array2<f32>) {
    for mut row in logits.outer_iter_mut() {
        let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        row.mapv_inplace(|v| (v - max).exp());
        let sum = row.sum();
        row.mapv_inplace(|v| v / sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::ModelSpec;
    use crate::tensor::Tensor;

    /// A model whose loss is 0: training moves weights only through the added terms, so each
    /// term's effect can be computed by hand.
    #[derive(Debug)]
    struct Flat;

    impl Model for Flat {
        fn init(&self, _rng: &mut ChaCha8Rng) -> Weights {
            Weights::new(vec![Tensor::zeros("w", vec![2])])
        }
        fn num_params(&self) -> usize {
            2
        }
        super::classifier_model_methods!();
    }

    impl Classifier for Flat {
        fn predict_proba(&self, _w: &Weights, x: ArrayView2<'_, f32>) -> Result<Array2<f32>> {
            Ok(Array2::from_elem((x.nrows(), 2), 0.5))
        }
        fn loss_grad(
            &self,
            w: &Weights,
            _x: ArrayView2<'_, f32>,
            _y: &[usize],
        ) -> Result<(f32, Weights)> {
            Ok((0.0, w.zeros_like()))
        }
    }

    fn one_row() -> Dataset {
        Dataset::new(
            Array2::zeros((1, 1)),
            vec![0],
            vec!["x".into()],
            vec!["0".into(), "1".into()],
        )
        .unwrap()
    }

    fn w(a: f32, b: f32) -> Weights {
        Weights::new(vec![Tensor::new("w", vec![2], vec![a, b]).unwrap()])
    }

    /// Plain SGD: every extra term off unless a test turns it on.
    fn cfg(epochs: u32) -> LocalConfig {
        LocalConfig {
            epochs,
            batch_size: 1,
            lr: 0.5,
            momentum: 0.0,
            weight_decay: 0.0,
            proximal_mu: 0.0,
            lr_decay: 1.0,
        }
    }

    #[test]
    fn proximal_term_pulls_towards_the_anchor() {
        let anchor = w(0.0, 0.0);
        let c = LocalConfig {
            proximal_mu: 1.0,
            ..cfg(1)
        };
        let obj = Objective {
            anchor: Some(&anchor),
            ..Objective::default()
        };
        let (out, stats) = train_local(&Flat, w(2.0, -4.0), &one_row(), &c, 0, &obj).unwrap();
        // w - lr * mu * (w - anchor) = w * (1 - 0.5)
        assert_eq!(out.values().collect::<Vec<_>>(), vec![1.0, -2.0]);
        assert_eq!(stats.steps, 1);
    }

    #[test]
    fn weight_decay_and_correction_enter_the_gradient() {
        let corr = w(1.0, -1.0);
        let c = LocalConfig {
            weight_decay: 0.1,
            ..cfg(1)
        };
        let obj = Objective {
            correction: Some(&corr),
            track_mean_gradient: true,
            ..Objective::default()
        };
        let (out, _) = train_local(&Flat, w(2.0, 0.0), &one_row(), &c, 0, &obj).unwrap();
        // w - 0.5 * (0.1 * w + corr) = (2 - 0.5*(0.2 + 1), 0 - 0.5*(0 - 1)) = (1.4, 0.5)
        let v: Vec<f32> = out.values().collect();
        assert!(
            (v[0] - 1.4).abs() < 1e-6 && (v[1] - 0.5).abs() < 1e-6,
            "{v:?}"
        );
    }

    #[test]
    fn momentum_accumulates_velocity() {
        let corr = w(1.0, 0.0);
        let c = LocalConfig {
            momentum: 0.5,
            ..cfg(2)
        };
        let obj = Objective {
            correction: Some(&corr),
            track_mean_gradient: true,
            ..Objective::default()
        };
        let (out, stats) = train_local(&Flat, w(0.0, 0.0), &one_row(), &c, 0, &obj).unwrap();
        // step 1: v = 1, w = -0.5; step 2: v = 0.5 + 1 = 1.5, w = -0.5 - 0.75 = -1.25
        assert_eq!(out.values().next(), Some(-1.25));
        assert_eq!(stats.steps, 2);
        // The model's own gradient is zero: the correction is not part of the mean.
        assert_eq!(
            stats.mean_gradient.unwrap().values().collect::<Vec<_>>(),
            vec![0.0, 0.0]
        );
    }

    #[test]
    fn lr_decays_per_round_and_bad_settings_are_named() {
        let c = LocalConfig {
            lr: 0.1,
            lr_decay: 0.5,
            ..LocalConfig::default()
        };
        assert!((c.lr_at(1) - 0.1).abs() < 1e-12 && (c.lr_at(3) - 0.025).abs() < 1e-12);
        for (bad, field) in [
            (
                LocalConfig {
                    momentum: 1.0,
                    ..LocalConfig::default()
                },
                "momentum",
            ),
            (
                LocalConfig {
                    weight_decay: -1.0,
                    ..LocalConfig::default()
                },
                "weight_decay",
            ),
            (
                LocalConfig {
                    lr_decay: 0.0,
                    ..LocalConfig::default()
                },
                "lr_decay",
            ),
        ] {
            assert!(bad.check().unwrap_err().to_string().contains(field));
        }
    }

    #[test]
    fn model_specs_parse_and_check() {
        assert_eq!(ModelSpec::parse_hidden("128, 64").unwrap(), vec![128, 64]);
        assert!(ModelSpec::parse_hidden("128,x").is_err());
        assert_eq!(
            ModelSpec::from_parts("mlp", &[32]).unwrap().label(),
            "mlp(32)"
        );
        assert!(ModelSpec::from_parts("mlp", &[]).is_err());
        assert!(ModelSpec::from_parts("logreg", &[3]).is_err());
        assert!(ModelSpec::Mlp(MlpSpec { hidden: vec![0] }).check().is_err());
        assert!(MlpSpec { hidden: vec![8] }.model(4, 3).is_ok());
        assert_eq!(
            ModelSpec::names(),
            "logreg, mlp, forest, gbdt, denoiser, external"
        );
        assert_eq!(
            ModelSpec::from_name("tree").unwrap_err().to_string(),
            "unknown model `tree` (expected one of: logreg, mlp, forest, gbdt, denoiser, external)"
        );
    }
}
