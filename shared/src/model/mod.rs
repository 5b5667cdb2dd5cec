//! Models and local training.
//!
//! A [`Model`] is stateless: it knows its shapes and maps [`Weights`] plus data to predictions, a loss
//! and a gradient. A local training round is linfa's `FitWith` in spirit: previous weights in, new
//! weights out ([`train_local`]). New models (S2's MLP) implement the same trait and get a
//! [`ModelSpec`] variant; the training loop, aggregation and the wire stay as they are.

mod logreg;

pub use logreg::LogReg;

use ndarray::{Array2, ArrayView2, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::tensor::Weights;
use crate::{Error, Result};

/// Which model a job trains. Serialised into job specs (`[model] kind = "logreg"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ModelSpec {
    /// Multinomial logistic regression (softmax).
    #[default]
    Logreg,
}

impl ModelSpec {
    /// All accepted names, for help texts and errors.
    pub const NAMES: &'static str = "logreg";

    /// Parses a model name as given on the command line.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "logreg" => Ok(ModelSpec::Logreg),
            other => Err(Error::Unknown {
                what: "model",
                name: other.to_string(),
                expected: Self::NAMES.to_string(),
            }),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            ModelSpec::Logreg => "logreg",
        }
    }

    /// The model for data with `n_features` inputs and `n_classes` classes.
    pub fn build(&self, n_features: usize, n_classes: usize) -> Result<Box<dyn Model>> {
        if n_features == 0 || n_classes < 2 {
            return Err(Error::Data(format!(
                "a {} model needs at least 1 feature and 2 classes (found {n_features} features, {n_classes} classes)",
                self.name()
            )));
        }
        Ok(match self {
            ModelSpec::Logreg => Box::new(LogReg::new(n_features, n_classes)),
        })
    }
}

/// A differentiable classifier over named-tensor weights.
pub trait Model: Send + Sync + std::fmt::Debug {
    /// Initial weights, drawn from `rng` where the model needs randomness.
    fn init(&self, rng: &mut ChaCha8Rng) -> Weights;

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
}

impl Default for LocalConfig {
    fn default() -> Self {
        // Tuned on digits/logreg (10 clients, dirichlet:0.5): enough local work per round that
        // 30 rounds approach the centralized model, without drifting apart on non-IID shards.
        LocalConfig {
            epochs: 5,
            batch_size: 16,
            lr: 0.2,
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
        Ok(())
    }
}

/// What a local training run reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainStats {
    /// Mean minibatch loss over the run, weighted by batch size.
    pub loss: f64,
    /// Rows in the local train split.
    pub num_examples: u64,
}

/// What an evaluation reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalStats {
    pub loss: f64,
    pub accuracy: f64,
    pub num_examples: u64,
}

/// Minibatch SGD from `weights` over `data` for `cfg.epochs` epochs; the batch order is drawn from
/// `seed`, so a (seed, round, client) triple reproduces the run exactly.
pub fn train_local(
    model: &dyn Model,
    mut weights: Weights,
    data: &Dataset,
    cfg: &LocalConfig,
    seed: u64,
) -> Result<(Weights, TrainStats)> {
    cfg.check()?;
    check_layout(model, &weights)?;
    if data.n_rows() == 0 {
        return Err(Error::Data("cannot train on an empty train split".into()));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..data.n_rows()).collect();
    let (mut loss_sum, mut seen) = (0.0f64, 0usize);
    for _ in 0..cfg.epochs {
        order.shuffle(&mut rng);
        for batch in order.chunks(cfg.batch_size as usize) {
            let x = data.features.select(Axis(0), batch);
            let y: Vec<usize> = batch.iter().map(|&i| data.labels[i]).collect();
            let (loss, grad) = model.loss_grad(&weights, x.view(), &y)?;
            weights.add_scaled(-(cfg.lr as f32), &grad)?;
            loss_sum += f64::from(loss) * batch.len() as f64;
            seen += batch.len();
        }
    }
    weights.check_finite().map_err(|e| {
        Error::Data(format!(
            "local training diverged ({e}); lower local.lr (now {})",
            cfg.lr
        ))
    })?;
    Ok((
        weights,
        TrainStats {
            loss: loss_sum / seen as f64,
            num_examples: data.n_rows() as u64,
        },
    ))
}

/// Mean cross-entropy and accuracy of `weights` on `data`.
pub fn evaluate(model: &dyn Model, weights: &Weights, data: &Dataset) -> Result<EvalStats> {
    check_layout(model, weights)?;
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

/// Row-wise softmax in place, stable against large logits.
pub(crate) fn softmax_rows(logits: &mut Array2<f32>) {
    for mut row in logits.outer_iter_mut() {
        let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        row.mapv_inplace(|v| (v - max).exp());
        let sum = row.sum();
        row.mapv_inplace(|v| v / sum);
    }
}
