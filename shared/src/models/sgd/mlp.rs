//! A multilayer perceptron: ReLU hidden layers, softmax output.

use ndarray::{Array2, ArrayView2, Axis};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::{check_batch, softmax_cross_entropy, softmax_rows, Classifier, Model};
use crate::tensor::{Tensor, Weights};
use crate::{Error, Result};

/// `p = softmax(relu(... relu(x·W0 + b0) ...)·WL + bL)`.
///
/// # Shapes
/// With layer widths `[n_features, h_1, ..., h_k, n_classes]`, layer `i` (0-based) has
/// - `"layer{i}.weight"`: `[width_i, width_{i+1}]`
/// - `"layer{i}.bias"`: `[width_{i+1}]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mlp {
    /// `[n_features, hidden..., n_classes]`.
    pub widths: Vec<usize>,
}

impl Mlp {
    pub fn new(n_features: usize, hidden: &[usize], n_classes: usize) -> Self {
        let mut widths = Vec::with_capacity(hidden.len() + 2);
        widths.push(n_features);
        widths.extend_from_slice(hidden);
        widths.push(n_classes);
        Mlp { widths }
    }

    fn layers(&self) -> usize {
        self.widths.len() - 1
    }

    fn check_input(&self, x: &ArrayView2<'_, f32>) -> Result<()> {
        if x.ncols() != self.widths[0] {
            return Err(Error::Shape {
                what: "mlp input".into(),
                expected: format!("{} features", self.widths[0]),
                found: format!("{} features", x.ncols()),
            });
        }
        Ok(())
    }

    /// Pre-activations of every layer (the last one: logits).
    fn forward(&self, w: &Weights, x: ArrayView2<'_, f32>) -> Result<Vec<Array2<f32>>> {
        self.check_input(&x)?;
        let mut zs: Vec<Array2<f32>> = Vec::with_capacity(self.layers());
        for i in 0..self.layers() {
            let weight = w.get(&format!("layer{i}.weight"))?.view2()?;
            let bias = w.get(&format!("layer{i}.bias"))?.view1()?;
            let z = match zs.last() {
                None => x.dot(&weight) + bias,
                Some(prev) => prev.mapv(relu).dot(&weight) + bias,
            };
            zs.push(z);
        }
        Ok(zs)
    }
}

fn relu(v: f32) -> f32 {
    v.max(0.0)
}

impl Mlp {
    /// Weights and biases over all layers (saturating), without allocating them.
    pub fn num_params(&self) -> usize {
        self.widths
            .windows(2)
            .map(|w| w[0].saturating_add(1).saturating_mul(w[1]))
            .fold(0usize, usize::saturating_add)
    }
}

impl Model for Mlp {
    /// He initialisation (normal, std = sqrt(2 / fan_in)), zero biases: keeps ReLU activations
    /// at a stable scale through the layers.
    fn init(&self, rng: &mut ChaCha8Rng) -> Weights {
        let mut tensors = Vec::with_capacity(2 * self.layers());
        for i in 0..self.layers() {
            let (fan_in, fan_out) = (self.widths[i], self.widths[i + 1]);
            let std = (2.0 / fan_in.max(1) as f32).sqrt();
            // A positive finite std always makes a valid distribution.
            let normal = Normal::new(0.0f32, std).unwrap_or_else(|_| unreachable!());
            let data = (0..fan_in * fan_out).map(|_| normal.sample(rng)).collect();
            tensors.push(Tensor {
                name: format!("layer{i}.weight"),
                shape: vec![fan_in, fan_out],
                data,
            });
            tensors.push(Tensor::zeros(format!("layer{i}.bias"), vec![fan_out]));
        }
        Weights::new(tensors)
    }

    fn num_params(&self) -> usize {
        Mlp::num_params(self)
    }

    super::classifier_model_methods!();
}

impl Classifier for Mlp {
    fn predict_proba(&self, w: &Weights, x: ArrayView2<'_, f32>) -> Result<Array2<f32>> {
        let mut logits = self
            .forward(w, x)?
            .pop()
            .ok_or_else(|| Error::Data("mlp has no layers".into()))?;
        softmax_rows(&mut logits);
        Ok(logits)
    }

    fn loss_grad(
        &self,
        w: &Weights,
        x: ArrayView2<'_, f32>,
        y: &[usize],
    ) -> Result<(f32, Weights)> {
        check_batch("mlp", x.nrows(), y)?;
        let mut zs = self.forward(w, x)?;
        let logits = zs
            .pop()
            .ok_or_else(|| Error::Data("mlp has no layers".into()))?;
        // dL/dz of the output layer for the mean cross-entropy.
        let (loss, dz) = softmax_cross_entropy(logits, y)?;
        Ok((loss, self.backprop(w, x, &zs, dz)?))
    }
}

impl Mlp {
    /// Gradients of every tensor from the output layer's dL/dz, through the hidden
    /// pre-activations `zs` (all layers but the last).
    fn backprop(
        &self,
        w: &Weights,
        x: ArrayView2<'_, f32>,
        zs: &[Array2<f32>],
        mut dz: Array2<f32>,
    ) -> Result<Weights> {
        let mut grads: Vec<Tensor> = Vec::with_capacity(2 * self.layers());
        for i in (0..self.layers()).rev() {
            let input = if i == 0 {
                x.to_owned()
            } else {
                zs[i - 1].mapv(relu)
            };
            let dw = input.t().dot(&dz);
            let db = dz.sum_axis(Axis(0));
            if i > 0 {
                let weight = w.get(&format!("layer{i}.weight"))?.view2()?;
                let mut da = dz.dot(&weight.t());
                // ReLU passes gradient only where its input was positive.
                da.zip_mut_with(&zs[i - 1], |g, &z| {
                    if z <= 0.0 {
                        *g = 0.0;
                    }
                });
                dz = da;
            }
            grads.push(Tensor::from_array1(format!("layer{i}.bias"), &db));
            grads.push(Tensor::from_array2(format!("layer{i}.weight"), &dw));
        }
        grads.reverse();
        Ok(Weights::new(grads))
    }

    /// Raw outputs (no softmax): the network as a regressor.
    ///
    /// # Shapes
    /// `x`: `[n, n_inputs]` → `[n, n_outputs]`.
    pub fn predict_raw(&self, w: &Weights, x: ArrayView2<'_, f32>) -> Result<Array2<f32>> {
        self.forward(w, x)?
            .pop()
            .ok_or_else(|| Error::Data("mlp has no layers".into()))
    }

    /// Mean squared error against `target` (averaged over rows and outputs) and its gradient:
    /// the network as a regressor (the diffusion denoiser).
    pub fn mse_grad(
        &self,
        w: &Weights,
        x: ArrayView2<'_, f32>,
        target: ArrayView2<'_, f32>,
    ) -> Result<(f32, Weights)> {
        let mut zs = self.forward(w, x)?;
        let out = zs
            .pop()
            .ok_or_else(|| Error::Data("mlp has no layers".into()))?;
        if out.dim() != target.dim() {
            return Err(Error::Shape {
                what: "mlp regression target".into(),
                expected: format!("{:?}", out.dim()),
                found: format!("{:?}", target.dim()),
            });
        }
        let diff = &out - &target;
        let count = diff.len().max(1) as f32;
        let loss = diff.iter().map(|d| d * d).sum::<f32>() / count;
        let dz = diff * (2.0 / count);
        Ok((loss, self.backprop(w, x, &zs, dz)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Dataset;
    use crate::models::sgd::{evaluate, train_local, LocalConfig, Objective};
    use ndarray::array;
    use rand::{Rng, SeedableRng};

    /// The analytic gradient agrees with central finite differences on every parameter, through two
    /// hidden layers.
    #[test]
    fn gradient_matches_finite_differences() {
        let m = Mlp::new(3, &[5, 4], 3);
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut w = m.init(&mut rng);
        // Non-zero biases so every unit is exercised on both sides of the ReLU kink less often.
        for t in w.tensors.iter_mut().filter(|t| t.name.ends_with("bias")) {
            for v in &mut t.data {
                *v = rng.gen_range(-0.3..0.3);
            }
        }
        let x = array![
            [0.5f32, -1.0, 2.0],
            [1.5, 0.3, -0.7],
            [-0.2, 0.8, 0.1],
            [0.9, -0.4, 0.6]
        ];
        let y = [0usize, 2, 1, 2];
        let (_, grad) = m.loss_grad(&w, x.view(), &y).unwrap();
        assert!(w.check_same_layout(&grad).is_ok());
        let eps = 1e-3f32;
        let mut worst = 0.0f32;
        for (ti, t) in w.tensors.iter().enumerate() {
            for i in 0..t.data.len() {
                let mut plus = w.clone();
                plus.tensors[ti].data[i] += eps;
                let mut minus = w.clone();
                minus.tensors[ti].data[i] -= eps;
                let lp = m.loss_grad(&plus, x.view(), &y).unwrap().0;
                let lm = m.loss_grad(&minus, x.view(), &y).unwrap().0;
                let numeric = (lp - lm) / (2.0 * eps);
                worst = worst.max((numeric - grad.tensors[ti].data[i]).abs());
            }
        }
        assert!(worst < 5e-3, "largest gradient error {worst}");
    }

    #[test]
    fn he_init_has_the_right_scale_and_layout() {
        let m = Mlp::new(64, &[128, 64], 10);
        let w = m.init(&mut ChaCha8Rng::seed_from_u64(1));
        assert_eq!(
            w.names(),
            vec![
                "layer0.weight",
                "layer0.bias",
                "layer1.weight",
                "layer1.bias",
                "layer2.weight",
                "layer2.bias"
            ]
        );
        let first = &w.tensors[0].data;
        let var = first.iter().map(|v| v * v).sum::<f32>() / first.len() as f32;
        assert!((var - 2.0 / 64.0).abs() < 0.005, "variance {var}");
        assert!(w.tensors[1].data.iter().all(|&b| b == 0.0));
    }

    /// The regression gradient agrees with finite differences too.
    #[test]
    fn mse_gradient_matches_finite_differences() {
        let m = Mlp::new(3, &[4], 2);
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let w = m.init(&mut rng);
        let x = array![[0.5f32, -1.0, 2.0], [1.5, 0.3, -0.7]];
        let t = array![[0.2f32, -0.4], [1.0, 0.5]];
        let (_, grad) = m.mse_grad(&w, x.view(), t.view()).unwrap();
        let eps = 1e-3f32;
        let mut worst = 0.0f32;
        for (ti, tensor) in w.tensors.iter().enumerate() {
            for i in 0..tensor.data.len() {
                let mut plus = w.clone();
                plus.tensors[ti].data[i] += eps;
                let mut minus = w.clone();
                minus.tensors[ti].data[i] -= eps;
                let lp = m.mse_grad(&plus, x.view(), t.view()).unwrap().0;
                let lm = m.mse_grad(&minus, x.view(), t.view()).unwrap().0;
                worst = worst.max(((lp - lm) / (2.0 * eps) - grad.tensors[ti].data[i]).abs());
            }
        }
        assert!(worst < 5e-3, "largest gradient error {worst}");
        assert!(m.mse_grad(&w, x.view(), array![[0.0f32]].view()).is_err());
    }

    /// XOR is not linearly separable: the hidden layer is doing real work.
    #[test]
    fn learns_xor() {
        let mut x = Array2::<f32>::zeros((200, 2));
        let mut y = Vec::new();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for i in 0..200 {
            let (a, b): (f32, f32) = (rng.gen_range(-1.0..1.0), rng.gen_range(-1.0..1.0));
            x[[i, 0]] = a;
            x[[i, 1]] = b;
            y.push(usize::from((a > 0.0) != (b > 0.0)));
        }
        let data = Dataset::new(
            x,
            y,
            vec!["a".into(), "b".into()],
            vec!["0".into(), "1".into()],
        )
        .unwrap();
        let m = Mlp::new(2, &[16], 2);
        let w0 = m.init(&mut rng);
        let cfg = LocalConfig {
            epochs: 200,
            batch_size: 16,
            lr: 0.1,
            momentum: 0.9,
            ..LocalConfig::default()
        };
        let (w, _) = train_local(&m, w0, &data, &cfg, 1, &Objective::default()).unwrap();
        let acc = evaluate(&m, &w, &data).unwrap().accuracy;
        assert!(acc > 0.9, "xor accuracy {acc}");
    }
}
