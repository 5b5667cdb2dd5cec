//! Federate your own Rust model with Shoal: a softmax regression written here from scratch (no
//! Shoal model code), trained by the job's clients through the [`Trainer`] trait.
//!
//! The job names the model's tensors (`examples/external-digits.toml`: `weight` [64, 10] and
//! `bias` [10]); the coordinator initialises and aggregates them with the job's strategy, and
//! this client trains them on its shard of digits. Start a coordinator, then three clients:
//!
//! ```sh
//! cargo run --release -p shoal-coordinator -- serve --job examples/external-digits.toml --exit-when-done
//! cargo run --release -p shoal-client --example custom_trainer -- http://127.0.0.1:50051 0 3
//! cargo run --release -p shoal-client --example custom_trainer -- http://127.0.0.1:50051 1 3
//! cargo run --release -p shoal-client --example custom_trainer -- http://127.0.0.1:50051 2 3
//! ```

use std::sync::Arc;

use ndarray::{Array1, Array2, ArrayView2, Axis};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shoal_client::catalog::LocalData;
use shoal_client::{
    Catalog, ClientConfig, EvaluateConfig, EvaluateOutcome, FitConfig, FitOutcome, InitialConfig,
    Trainer, TrainerDataset, TrainerError,
};
use shoal_shared::data::builtin::Builtin;
use shoal_shared::data::partition::Partitioner;
use shoal_shared::data::Dataset;
use shoal_shared::tensor::{Tensor, Weights};

/// A softmax regression over one local dataset: `p = softmax(x · weight + bias)`.
#[derive(Debug)]
pub struct SoftmaxTrainer {
    name: String,
    data: LocalData,
}

impl SoftmaxTrainer {
    /// Shard `shard` of `n` of digits (dirichlet:0.5, seed 42), split into train and test.
    pub fn digits_shard(shard: usize, n: usize) -> Result<Self, TrainerError> {
        let mut catalog = Catalog::new();
        catalog.add_builtin(
            Builtin::Digits,
            &Partitioner::Dirichlet { alpha: 0.5 },
            shard,
            n,
            42,
        )?;
        let data = catalog.get("digits").ok_or("no digits shard")?.clone();
        Ok(SoftmaxTrainer {
            name: "digits".into(),
            data,
        })
    }
}

/// `weight` [d, k] and `bias` [k] out of the parameters, by name.
fn unpack(w: &Weights) -> Result<(Array2<f32>, Array1<f32>), TrainerError> {
    let get = |name: &str| {
        w.tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| format!("the job's model has no tensor `{name}`"))
    };
    let (wt, bt) = (get("weight")?, get("bias")?);
    let [d, k] = wt.shape[..] else {
        return Err(format!("`weight` must be 2-d, found {:?}", wt.shape).into());
    };
    Ok((
        Array2::from_shape_vec((d, k), wt.data.clone())?,
        Array1::from_vec(bt.data.clone()),
    ))
}

fn pack(weight: Array2<f32>, bias: Array1<f32>) -> Weights {
    let shape = weight.shape().to_vec();
    Weights::new(vec![
        Tensor {
            name: "weight".into(),
            shape,
            data: weight.into_iter().collect(),
        },
        Tensor {
            name: "bias".into(),
            shape: vec![bias.len()],
            data: bias.to_vec(),
        },
    ])
}

fn softmax_rows(x: ArrayView2<f32>, w: &Array2<f32>, b: &Array1<f32>) -> Array2<f32> {
    let mut z = x.dot(w) + b;
    for mut row in z.rows_mut() {
        let m = row.fold(f32::NEG_INFINITY, |a, &v| a.max(v));
        row.mapv_inplace(|v| (v - m).exp());
        let sum = row.sum();
        row.mapv_inplace(|v| v / sum);
    }
    z
}

/// Mean cross-entropy and accuracy of `(w, b)` on `data`.
fn score(data: &Dataset, w: &Array2<f32>, b: &Array1<f32>) -> (f64, f64) {
    let p = softmax_rows(data.features.view(), w, b);
    let (mut loss, mut correct) = (0.0f64, 0usize);
    for (row, &y) in p.rows().into_iter().zip(&data.labels) {
        loss -= f64::from(row[y].max(1e-7)).ln();
        let best = row
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a });
        correct += usize::from(best.0 == y);
    }
    let n = data.labels.len().max(1) as f64;
    (loss / n, correct as f64 / n)
}

impl Trainer for SoftmaxTrainer {
    fn datasets(&self) -> Vec<TrainerDataset> {
        let (train, test) = (&self.data.train, &self.data.test);
        vec![TrainerDataset {
            name: self.name.clone(),
            train_examples: train.labels.len() as u64,
            test_examples: test.labels.len() as u64,
            feature_names: train.feature_names.clone(),
            class_names: train.class_names.clone(),
        }]
    }

    /// Minibatch SGD on cross-entropy with the round's learning rate, momentum-free, with L2
    /// weight decay and FedProx's proximal term as the job asks.
    fn fit(&self, parameters: Weights, config: &FitConfig) -> Result<FitOutcome, TrainerError> {
        let train = self.data.train.remap_classes(&config.class_names)?;
        let (mut w, mut b) = unpack(&parameters)?;
        let (w0, b0) = (w.clone(), b.clone());
        let local = &config.local;
        let lr = local.lr as f32;
        let mut order: Vec<usize> = (0..train.labels.len()).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let batch = (local.batch_size as usize).max(1);
        for _ in 0..local.epochs {
            order.shuffle(&mut rng);
            for chunk in order.chunks(batch) {
                let x = train.features.select(Axis(0), chunk);
                let mut g = softmax_rows(x.view(), &w, &b);
                for (mut row, &i) in g.rows_mut().into_iter().zip(chunk) {
                    row[train.labels[i]] -= 1.0;
                }
                g /= chunk.len() as f32;
                let mut gw = x.t().dot(&g);
                let mut gb = g.sum_axis(Axis(0));
                gw += &(&w * local.weight_decay as f32);
                if local.proximal_mu > 0.0 {
                    gw += &((&w - &w0) * local.proximal_mu as f32);
                    gb += &((&b - &b0) * local.proximal_mu as f32);
                }
                w -= &(gw * lr);
                b -= &(gb * lr);
            }
        }
        let (train_loss, _) = score(&train, &w, &b);
        Ok(FitOutcome {
            parameters: pack(w, b),
            num_examples: train.labels.len() as u64,
            train_loss,
        })
    }

    fn offers_initial_parameters(&self) -> bool {
        true
    }

    /// For a job with `init = "client"`: small uniform weights (this model's own initialiser),
    /// zero biases, sized by the local features and the job's classes.
    fn initial_parameters(&self, config: &InitialConfig) -> Result<Weights, TrainerError> {
        let (d, k) = (self.data.train.n_features(), config.class_names.len());
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let weight = Array2::from_shape_simple_fn((d, k), || rng.gen_range(-0.01f32..0.01));
        Ok(pack(weight, Array1::zeros(k)))
    }

    fn evaluate(
        &self,
        parameters: &Weights,
        config: &EvaluateConfig,
    ) -> Result<EvaluateOutcome, TrainerError> {
        let test = self.data.test.remap_classes(&config.class_names)?;
        let (w, b) = unpack(parameters)?;
        let (loss, accuracy) = score(&test, &w, &b);
        let mut present = test.labels.clone();
        present.sort_unstable();
        present.dedup();
        Ok(EvaluateOutcome {
            num_examples: test.labels.len() as u64,
            loss,
            accuracy,
            classes_present: present.len() as u32,
        })
    }
}

/// `custom_trainer COORDINATOR SHARD N`: serves shard SHARD of N until Ctrl-C.
#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), TrainerError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, shard, n] = &args[..] else {
        return Err(
            "usage: custom_trainer COORDINATOR_URL SHARD N (e.g. http://127.0.0.1:50051 0 3)"
                .into(),
        );
    };
    let (shard, n): (usize, usize) = (shard.parse()?, n.parse()?);
    let trainer = SoftmaxTrainer::digits_shard(shard, n)?;
    let config = ClientConfig::with_trainer(url, format!("trainer-{shard}"), Arc::new(trainer));
    shoal_client::run(config, shoal_client::shutdown_signal()).await?;
    Ok(())
}
