//! Multinomial logistic regression.

use ndarray::{Array1, Array2, ArrayView2, Axis};
use rand_chacha::ChaCha8Rng;

use super::{check_batch, softmax_cross_entropy, softmax_rows, Classifier, Model};
use crate::tensor::{Tensor, Weights};
use crate::{Error, Result};

/// Softmax regression: `p = softmax(x · W + b)`.
///
/// # Shapes
/// - `W` (tensor `"weight"`): `[n_features, n_classes]`
/// - `b` (tensor `"bias"`): `[n_classes]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogReg {
    pub n_features: usize,
    pub n_classes: usize,
}

impl LogReg {
    pub fn new(n_features: usize, n_classes: usize) -> Self {
        LogReg {
            n_features,
            n_classes,
        }
    }

    fn logits(&self, w: &Weights, x: ArrayView2<'_, f32>) -> Result<Array2<f32>> {
        if x.ncols() != self.n_features {
            return Err(Error::Shape {
                what: "logreg input".into(),
                expected: format!("{} features", self.n_features),
                found: format!("{} features", x.ncols()),
            });
        }
        let weight = w.get("weight")?.view2()?;
        let bias = w.get("bias")?.view1()?;
        Ok(x.dot(&weight) + bias)
    }
}

impl Model for LogReg {
    /// Zeros: the loss is convex, so no symmetry needs breaking.
    fn init(&self, _rng: &mut ChaCha8Rng) -> Weights {
        Weights::new(vec![
            Tensor::zeros("weight", vec![self.n_features, self.n_classes]),
            Tensor::zeros("bias", vec![self.n_classes]),
        ])
    }

    fn num_params(&self) -> usize {
        self.n_features
            .saturating_add(1)
            .saturating_mul(self.n_classes)
    }

    super::classifier_model_methods!();
}

impl Classifier for LogReg {
    fn predict_proba(&self, w: &Weights, x: ArrayView2<'_, f32>) -> Result<Array2<f32>> {
        let mut z = self.logits(w, x)?;
        softmax_rows(&mut z);
        Ok(z)
    }

    fn loss_grad(
        &self,
        w: &Weights,
        x: ArrayView2<'_, f32>,
        y: &[usize],
    ) -> Result<(f32, Weights)> {
        check_batch("logreg", x.nrows(), y)?;
        let (loss, p) = softmax_cross_entropy(self.logits(w, x)?, y)?;
        let dw = x.t().dot(&p);
        let db: Array1<f32> = p.sum_axis(Axis(0));
        Ok((
            loss,
            Weights::new(vec![
                Tensor::from_array2("weight", &dw),
                Tensor::from_array1("bias", &db),
            ]),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Dataset;
    use crate::models::sgd::{evaluate, train_local, LocalConfig, Objective};
    use ndarray::array;
    use rand::{Rng, SeedableRng};

    fn random_weights(m: &LogReg, seed: u64) -> Weights {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut w = m.init(&mut rng);
        for v in w.values_mut() {
            *v = rng.gen_range(-0.5..0.5);
        }
        w
    }

    /// The analytic gradient agrees with central finite differences on every parameter.
    #[test]
    fn gradient_matches_finite_differences() {
        let m = LogReg::new(3, 4);
        let w = random_weights(&m, 7);
        let x = array![[0.5f32, -1.0, 2.0], [1.5, 0.3, -0.7], [-0.2, 0.8, 0.1]];
        let y = [0usize, 3, 2];
        let (_, grad) = m.loss_grad(&w, x.view(), &y).unwrap();
        let eps = 1e-2f32;
        for (ti, t) in w.tensors.iter().enumerate() {
            for i in 0..t.data.len() {
                let mut plus = w.clone();
                plus.tensors[ti].data[i] += eps;
                let mut minus = w.clone();
                minus.tensors[ti].data[i] -= eps;
                let lp = m.loss_grad(&plus, x.view(), &y).unwrap().0;
                let lm = m.loss_grad(&minus, x.view(), &y).unwrap().0;
                let numeric = (lp - lm) / (2.0 * eps);
                let analytic = grad.tensors[ti].data[i];
                assert!(
                    (numeric - analytic).abs() < 2e-3,
                    "{}[{i}]: numeric {numeric} vs analytic {analytic}",
                    t.name
                );
            }
        }
    }

    #[test]
    fn probabilities_sum_to_one() {
        let m = LogReg::new(2, 3);
        let w = random_weights(&m, 1);
        let p = m
            .predict_proba(&w, array![[100.0f32, -50.0], [0.0, 0.0]].view())
            .unwrap();
        for row in p.outer_iter() {
            assert!((row.sum() - 1.0).abs() < 1e-5);
            assert!(row.iter().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn wrong_feature_count_is_an_error() {
        let m = LogReg::new(2, 3);
        let w = random_weights(&m, 1);
        assert!(m
            .predict_proba(&w, array![[1.0f32, 2.0, 3.0]].view())
            .is_err());
    }

    /// Training on a separable problem drives accuracy up and loss down.
    #[test]
    fn sgd_learns_a_separable_problem() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let n = 200;
        let mut x = Array2::<f32>::zeros((n, 2));
        let mut y = Vec::new();
        for i in 0..n {
            let (a, b): (f32, f32) = (rng.gen_range(-1.0..1.0), rng.gen_range(-1.0..1.0));
            x[[i, 0]] = a;
            x[[i, 1]] = b;
            y.push(usize::from(a + b > 0.0));
        }
        let data = Dataset::new(
            x,
            y,
            vec!["a".into(), "b".into()],
            vec!["0".into(), "1".into()],
        )
        .unwrap();
        let m = LogReg::new(2, 2);
        let w0 = m.init(&mut rng);
        let before = evaluate(&m, &w0, &data).unwrap();
        let cfg = LocalConfig {
            epochs: 20,
            batch_size: 16,
            lr: 0.5,
            ..LocalConfig::default()
        };
        let (w1, stats) = train_local(&m, w0, &data, &cfg, 9, &Objective::default()).unwrap();
        let after = evaluate(&m, &w1, &data).unwrap();
        assert!(after.accuracy > 0.95, "accuracy {}", after.accuracy);
        assert!(after.loss < before.loss);
        assert_eq!(stats.num_examples, 200);
    }
}
