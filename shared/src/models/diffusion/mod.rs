//! DDPM noise schedules and the forward and reverse steps (Ho et al. 2020; DDIM, Song et al. 2021).
//!
//! Principal type: [`NoiseSchedule`] (β, α, ᾱ for T steps, linear or cosine). The forward process
//! [`NoiseSchedule::q_sample`] noises a clean signal; [`NoiseSchedule::predict_x0`] inverts it given
//! the noise; [`NoiseSchedule::ddim_step`] (η = 0, deterministic) and
//! [`NoiseSchedule::ddpm_step`] (ancestral, fresh noise) walk back. [`signals`] generates the
//! tutorial's 1-D sine data with a per-client frequency and phase band.
//!
//! What the tutorial got wrong, and what this module checks:
//! - its 50-step linear schedule (β from 1e-4 to 0.02) ends at ᾱ_T ≈ 0.60, so its "pure noise"
//!   still holds √0.60 ≈ 77% of the signal: [`NoiseSchedule::check_generation`] refuses to
//!   generate from such a schedule;
//! - its reverse loop drew fresh noise at each step and called it the true noise, so nothing could
//!   be reconstructed; given the exact noise, the predicted x0 is x0 and a DDIM chain recovers x0
//!   (tested below).

use std::f64::consts::PI;

use ndarray::Array2;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::models::sgd::{Mlp, Model};
use crate::tensor::Weights;
use crate::{Error, Result};

mod kind;

/// Largest ᾱ_T from which generation is allowed: x_T must be (nearly) pure noise.
pub const MAX_FINAL_ALPHA_BAR: f64 = 0.01;
/// Length of each `signals` sequence (the tutorial's).
pub const SIGNAL_LEN: usize = 100;
/// Range the sampler clips its clean-signal estimate to (`signals` lie within about ±1.5).
pub const SAMPLE_CLIP: f32 = 2.0;

/// How β grows over the steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Schedule {
    /// β linearly from `beta_start` to `beta_end` (the tutorial: 1e-4 to 0.02).
    Linear { beta_start: f64, beta_end: f64 },
    /// Nichol & Dhariwal's cosine schedule with offset `s` (0.008).
    Cosine { s: f64 },
}

/// β_t, α_t = 1 − β_t and ᾱ_t = Π α for t = 0..T (index t is step t + 1 of the papers).
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    pub betas: Vec<f64>,
    pub alphas: Vec<f64>,
    pub alpha_bars: Vec<f64>,
}

impl NoiseSchedule {
    /// A schedule of `steps` steps.
    pub fn new(schedule: Schedule, steps: usize) -> Result<Self> {
        if !(1..=100_000).contains(&steps) {
            return Err(Error::invalid(
                "diffusion.steps",
                format!("must be 1..=100000, found {steps}"),
            ));
        }
        let betas: Vec<f64> = match schedule {
            Schedule::Linear {
                beta_start,
                beta_end,
            } => {
                let ok = |b: f64| b.is_finite() && b > 0.0 && b < 1.0;
                if !(ok(beta_start) && ok(beta_end) && beta_start <= beta_end) {
                    return Err(Error::invalid(
                        "diffusion.schedule",
                        format!("linear betas must satisfy 0 < start <= end < 1, found {beta_start} to {beta_end}"),
                    ));
                }
                (0..steps)
                    .map(|i| {
                        let f = if steps == 1 {
                            0.0
                        } else {
                            i as f64 / (steps - 1) as f64
                        };
                        beta_start + f * (beta_end - beta_start)
                    })
                    .collect()
            }
            Schedule::Cosine { s } => {
                if !(s.is_finite() && s >= 0.0) {
                    return Err(Error::invalid(
                        "diffusion.schedule",
                        format!("cosine offset must be >= 0, found {s}"),
                    ));
                }
                let f = |t: f64| {
                    ((t / steps as f64 + s) / (1.0 + s) * PI / 2.0)
                        .cos()
                        .powi(2)
                };
                (0..steps)
                    .map(|i| (1.0 - f(i as f64 + 1.0) / f(i as f64)).clamp(0.0, 0.999))
                    .collect()
            }
        };
        let alphas: Vec<f64> = betas.iter().map(|b| 1.0 - b).collect();
        let mut alpha_bars = Vec::with_capacity(steps);
        let mut acc = 1.0;
        for a in &alphas {
            acc *= a;
            alpha_bars.push(acc);
        }
        Ok(NoiseSchedule {
            betas,
            alphas,
            alpha_bars,
        })
    }

    pub fn steps(&self) -> usize {
        self.betas.len()
    }

    /// ᾱ_T: how much of the signal's variance survives to the last step.
    pub fn final_alpha_bar(&self) -> f64 {
        self.alpha_bars.last().copied().unwrap_or(1.0)
    }

    /// Refuses a schedule whose x_T is not close to pure noise (ᾱ_T > 0.01).
    pub fn check_generation(&self) -> Result<()> {
        let ab = self.final_alpha_bar();
        if ab > MAX_FINAL_ALPHA_BAR {
            return Err(Error::invalid(
                "diffusion.schedule",
                format!(
                    "ᾱ_T = {ab:.3} > {MAX_FINAL_ALPHA_BAR}: x_T still holds {:.1}% of the signal, so generating \"from pure noise\" would be false; use more steps or the cosine schedule",
                    100.0 * ab.sqrt()
                ),
            ));
        }
        Ok(())
    }

    fn ab(&self, t: usize) -> Result<f64> {
        self.alpha_bars.get(t).copied().ok_or_else(|| {
            Error::invalid("diffusion step", format!("{t} outside 0..{}", self.steps()))
        })
    }

    /// Forward process: `x_t = √ᾱ_t x0 + √(1 − ᾱ_t) ε`.
    pub fn q_sample(&self, x0: &[f32], t: usize, eps: &[f32]) -> Result<Vec<f32>> {
        let ab = self.ab(t)?;
        same_len(x0, eps)?;
        let (a, b) = (ab.sqrt() as f32, (1.0 - ab).sqrt() as f32);
        Ok(x0.iter().zip(eps).map(|(x, e)| a * x + b * e).collect())
    }

    /// The clean signal implied by `x_t` and a noise estimate: `(x_t − √(1 − ᾱ_t) ε) / √ᾱ_t`.
    pub fn predict_x0(&self, xt: &[f32], t: usize, eps: &[f32]) -> Result<Vec<f32>> {
        let ab = self.ab(t)?;
        same_len(xt, eps)?;
        let (a, b) = (ab.sqrt(), (1.0 - ab).sqrt());
        Ok(xt
            .iter()
            .zip(eps)
            .map(|(x, e)| ((f64::from(*x) - b * f64::from(*e)) / a) as f32)
            .collect())
    }

    /// One deterministic DDIM step (η = 0) from step `t` to `t − 1` (to x0 at t = 0).
    pub fn ddim_step(&self, xt: &[f32], t: usize, eps: &[f32]) -> Result<Vec<f32>> {
        let x0 = self.predict_x0(xt, t, eps)?;
        if t == 0 {
            return Ok(x0);
        }
        let prev = self.ab(t - 1)?;
        let (a, b) = (prev.sqrt() as f32, (1.0 - prev).sqrt() as f32);
        Ok(x0.iter().zip(eps).map(|(x, e)| a * x + b * e).collect())
    }

    /// One ancestral DDPM step with fresh noise `z`:
    /// `x_{t−1} = (x_t − β_t / √(1 − ᾱ_t) ε) / √α_t + √β_t z` (no noise at t = 0).
    pub fn ddpm_step(&self, xt: &[f32], t: usize, eps: &[f32], z: &[f32]) -> Result<Vec<f32>> {
        let ab = self.ab(t)?;
        same_len(xt, eps)?;
        same_len(xt, z)?;
        let (beta, alpha) = (self.betas[t], self.alphas[t]);
        let c = beta / (1.0 - ab).sqrt();
        let sigma = if t == 0 { 0.0 } else { beta.sqrt() };
        Ok(xt
            .iter()
            .zip(eps)
            .zip(z)
            .map(|((x, e), n)| {
                ((f64::from(*x) - c * f64::from(*e)) / alpha.sqrt() + sigma * f64::from(*n)) as f32
            })
            .collect())
    }
}

fn same_len(a: &[f32], b: &[f32]) -> Result<()> {
    if a.len() != b.len() {
        return Err(Error::Shape {
            what: "diffusion signal".into(),
            expected: format!("{} values", a.len()),
            found: format!("{} values", b.len()),
        });
    }
    Ok(())
}

/// Sinusoidal embedding of step `t` in `dim` values (sines then cosines over geometric
/// frequencies), as the noise-prediction network's time input.
pub fn timestep_embedding(t: usize, dim: usize) -> Vec<f32> {
    let half = dim / 2;
    let mut out = Vec::with_capacity(dim);
    let freq = |i: usize| (-(10_000f64.ln()) * i as f64 / half.max(1) as f64).exp();
    out.extend((0..half).map(|i| (t as f64 * freq(i)).sin() as f32));
    out.extend((0..half).map(|i| (t as f64 * freq(i)).cos() as f32));
    out.resize(dim, 0.0);
    out
}

/// `n` sequences of [`SIGNAL_LEN`] points, `sin(f·u + φ) + 0.1·noise` over u in [0, 4π], where
/// client `client` draws its frequency from `[1 + 0.5c, 1.25 + 0.5c]` and its phase from
/// `[0.3c, 0.3c + 0.3]`: each client holds its own band (non-IID).
///
/// # Shapes
/// → `[n, SIGNAL_LEN]`.
pub fn signals(client: usize, n: usize, seed: u64) -> Array2<f32> {
    let rng = ChaCha8Rng::seed_from_u64(crate::seed::derive(seed, &[client as u64, 0x5161]));
    signal_rows(client, n, rng)
}

/// Held-out signals of band `band`: drawn from a purpose tag no client's draw uses, so they never
/// repeat a client's rows whatever the seeds.
pub fn held_out_signals(band: usize, n: usize, seed: u64) -> Array2<f32> {
    let rng = ChaCha8Rng::seed_from_u64(crate::seed::derive(seed, &[band as u64, 0x401d]));
    signal_rows(band, n, rng)
}

fn signal_rows(client: usize, n: usize, mut rng: ChaCha8Rng) -> Array2<f32> {
    let c = client as f64;
    let mut out = Array2::<f32>::zeros((n, SIGNAL_LEN));
    for mut row in out.outer_iter_mut() {
        let f = 1.0 + 0.5 * c + 0.25 * rand::Rng::gen::<f64>(&mut rng);
        let phi = 0.3 * c + 0.3 * rand::Rng::gen::<f64>(&mut rng);
        for (i, v) in row.iter_mut().enumerate() {
            let u = 4.0 * PI * i as f64 / (SIGNAL_LEN - 1) as f64;
            let noise: f64 = StandardNormal.sample(&mut rng);
            *v = ((f * u + phi).sin() + 0.1 * noise) as f32;
        }
    }
    out
}

/// The noise-prediction network: an MLP from `[x_t, embedding(t)]` to the predicted noise ε̂.
///
/// # Shapes
/// input `[n, signal_len + embed_dim]` → `[n, signal_len]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Denoiser {
    pub signal_len: usize,
    pub embed_dim: usize,
    pub mlp: Mlp,
}

impl Denoiser {
    pub fn new(signal_len: usize, embed_dim: usize, hidden: &[usize]) -> Self {
        Denoiser {
            signal_len,
            embed_dim,
            mlp: Mlp::new(signal_len + embed_dim, hidden, signal_len),
        }
    }

    pub fn init(&self, rng: &mut ChaCha8Rng) -> Weights {
        self.mlp.init(rng)
    }

    /// `[x_t, embedding(t)]` rows for a batch.
    fn inputs(&self, xt: &Array2<f32>, ts: &[usize]) -> Array2<f32> {
        let mut x = Array2::<f32>::zeros((xt.nrows(), self.signal_len + self.embed_dim));
        for (i, (row, &t)) in xt.outer_iter().zip(ts).enumerate() {
            x.row_mut(i)
                .slice_mut(ndarray::s![..self.signal_len])
                .assign(&row);
            let e = timestep_embedding(t, self.embed_dim);
            x.row_mut(i)
                .slice_mut(ndarray::s![self.signal_len..])
                .assign(&ndarray::ArrayView1::from(&e));
        }
        x
    }

    /// A noised batch: random steps and noise for `rows` of `data`, drawn from `rng`. Returns the
    /// network inputs and the noise it should predict.
    fn noised(
        &self,
        sched: &NoiseSchedule,
        data: &Array2<f32>,
        rows: &[usize],
        rng: &mut ChaCha8Rng,
    ) -> Result<(Array2<f32>, Array2<f32>)> {
        let mut xt = Array2::<f32>::zeros((rows.len(), self.signal_len));
        let mut eps = Array2::<f32>::zeros((rows.len(), self.signal_len));
        let mut ts = Vec::with_capacity(rows.len());
        for (i, &r) in rows.iter().enumerate() {
            let t = rand::Rng::gen_range(rng, 0..sched.steps());
            let e: Vec<f32> = (0..self.signal_len)
                .map(|_| StandardNormal.sample(rng))
                .collect();
            let x0 = data.row(r).to_vec();
            xt.row_mut(i)
                .assign(&ndarray::ArrayView1::from(&sched.q_sample(&x0, t, &e)?));
            eps.row_mut(i).assign(&ndarray::ArrayView1::from(&e));
            ts.push(t);
        }
        Ok((self.inputs(&xt, &ts), eps))
    }

    /// Local training: minibatch SGD with momentum on the noise-prediction MSE, each example
    /// noised at a random step drawn from `seed`. Returns the new weights and the mean loss.
    pub fn train(
        &self,
        mut w: Weights,
        data: &Array2<f32>,
        sched: &NoiseSchedule,
        cfg: &crate::models::sgd::LocalConfig,
        seed: u64,
    ) -> Result<(Weights, f64)> {
        cfg.check()?;
        if data.ncols() != self.signal_len || data.nrows() == 0 {
            return Err(Error::Shape {
                what: "diffusion training data".into(),
                expected: format!("rows of {} values", self.signal_len),
                found: format!("{:?}", data.dim()),
            });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut order: Vec<usize> = (0..data.nrows()).collect();
        let mut velocity = w.zeros_like();
        let (lr, m) = (cfg.lr as f32, cfg.momentum as f32);
        let (mut total, mut batches) = (0.0f64, 0usize);
        for _ in 0..cfg.epochs {
            rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rng);
            for batch in order.chunks(cfg.batch_size as usize) {
                let (x, eps) = self.noised(sched, data, batch, &mut rng)?;
                let (loss, grad) = self.mlp.mse_grad(&w, x.view(), eps.view())?;
                for (v, g) in velocity.values_mut().zip(grad.values()) {
                    *v = m * *v + g;
                }
                w.add_scaled(-lr, &velocity)?;
                total += f64::from(loss);
                batches += 1;
            }
        }
        w.check_finite()?;
        Ok((w, total / batches.max(1) as f64))
    }

    /// Noise-prediction MSE on `data` at steps and noise drawn from `seed` (fixed across rounds,
    /// so the figure is comparable round to round).
    pub fn noise_mse(
        &self,
        w: &Weights,
        data: &Array2<f32>,
        sched: &NoiseSchedule,
        seed: u64,
    ) -> Result<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let rows: Vec<usize> = (0..data.nrows()).collect();
        let (x, eps) = self.noised(sched, data, &rows, &mut rng)?;
        let pred = self.mlp.predict_raw(w, x.view())?;
        Ok(f64::from(
            (&pred - &eps).mapv(|d| d * d).mean().unwrap_or(f32::NAN),
        ))
    }

    /// `n` signals generated from pure noise with the deterministic DDIM chain. Refuses a
    /// schedule whose x_T is not pure noise.
    pub fn sample(
        &self,
        w: &Weights,
        sched: &NoiseSchedule,
        n: usize,
        seed: u64,
    ) -> Result<Array2<f32>> {
        sched.check_generation()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut x = Array2::<f32>::zeros((n, self.signal_len));
        x.mapv_inplace(|_| StandardNormal.sample(&mut rng));
        for t in (0..sched.steps()).rev() {
            let eps = self
                .mlp
                .predict_raw(w, self.inputs(&x, &vec![t; n]).view())?;
            let ab = sched.alpha_bars[t];
            for (mut row, e) in x.outer_iter_mut().zip(eps.outer_iter()) {
                let xt = row.to_vec();
                // Clip the predicted clean signal to the data's range, then use the noise that is
                // consistent with it: near t = T, ᾱ_t is tiny and dividing by √ᾱ_t would blow up
                // any error of the network ("clip_denoised" in DDPM/DDIM implementations).
                let x0: Vec<f32> = sched
                    .predict_x0(&xt, t, &e.to_vec())?
                    .into_iter()
                    .map(|v| v.clamp(-SAMPLE_CLIP, SAMPLE_CLIP))
                    .collect();
                let eps_c: Vec<f32> = xt
                    .iter()
                    .zip(&x0)
                    .map(|(x, c)| {
                        ((f64::from(*x) - ab.sqrt() * f64::from(*c)) / (1.0 - ab).max(1e-12).sqrt())
                            as f32
                    })
                    .collect();
                let next = sched.ddim_step(&xt, t, &eps_c)?;
                row.assign(&ndarray::ArrayView1::from(&next));
            }
        }
        Ok(x)
    }
}

/// The denoising model of a diffusion job (`[model] kind = "denoiser"`): network shape and noise
/// schedule. Defaults: one hidden layer of 256, a 16-value timestep embedding, 50 steps of the
/// cosine schedule (ᾱ_T ≈ 0: x_T is pure noise).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DenoiserSpec {
    /// Hidden layer widths of the noise-prediction MLP.
    pub hidden: Vec<usize>,
    /// Values of the sinusoidal timestep embedding appended to the input.
    pub embed_dim: usize,
    /// Diffusion steps T.
    pub steps: usize,
    pub schedule: Schedule,
}

impl Default for DenoiserSpec {
    fn default() -> Self {
        DenoiserSpec {
            hidden: vec![256],
            embed_dim: 16,
            steps: 50,
            schedule: Schedule::Cosine { s: 0.008 },
        }
    }
}

/// Largest timestep embedding accepted.
pub const MAX_EMBED_DIM: usize = 1024;

impl DenoiserSpec {
    /// Rejects shapes and schedules no one means, naming the field.
    pub fn check(&self) -> Result<()> {
        crate::models::sgd::kind::check_hidden(&self.hidden)?;
        if !(1..=MAX_EMBED_DIM).contains(&self.embed_dim) {
            return Err(Error::invalid(
                "model.embed_dim",
                format!("must be 1..={MAX_EMBED_DIM}, found {}", self.embed_dim),
            ));
        }
        NoiseSchedule::new(self.schedule, self.steps)?;
        Ok(())
    }

    /// The schedule this spec describes.
    pub fn noise_schedule(&self) -> Result<NoiseSchedule> {
        NoiseSchedule::new(self.schedule, self.steps)
    }

    /// A short description such as `denoiser(256; cosine T=50)`.
    pub fn label(&self) -> String {
        let hidden: Vec<String> = self.hidden.iter().map(usize::to_string).collect();
        let sched = match self.schedule {
            Schedule::Linear { .. } => "linear",
            Schedule::Cosine { .. } => "cosine",
        };
        format!("denoiser({}; {sched} T={})", hidden.join(","), self.steps)
    }
}

/// Seed of the steps and noise at which evaluation scores a denoiser: fixed, so a split's noise MSE
/// is comparable from round to round.
pub const EVAL_NOISE_SEED: u64 = 0x6e6f_6973_655f_6d73;

/// A [`Denoiser`] with its schedule, usable wherever a [`Model`] trains over the federation:
/// [`crate::models::sgd::train_local`] and [`crate::models::sgd::evaluate`] hand it the rows of a dataset
/// (one signal per row; labels, such as a frequency band, are not used) and it trains and scores
/// noise prediction. Its evaluation reports the noise MSE as loss and no accuracy (NaN).
#[derive(Debug, Clone, PartialEq)]
pub struct DenoiserModel {
    pub net: Denoiser,
    pub schedule: NoiseSchedule,
}

impl DenoiserModel {
    /// The model for signals of `signal_len` values.
    pub fn new(spec: &DenoiserSpec, signal_len: usize) -> Result<Self> {
        spec.check()?;
        if signal_len == 0 {
            return Err(Error::Data(
                "a denoiser needs signals of at least 1 value".into(),
            ));
        }
        Ok(DenoiserModel {
            net: Denoiser::new(signal_len, spec.embed_dim, &spec.hidden),
            schedule: spec.noise_schedule()?,
        })
    }

    /// Local training on `data`'s rows (see [`Denoiser::train`]).
    pub fn fit(
        &self,
        w: Weights,
        data: &crate::data::Dataset,
        cfg: &crate::models::sgd::LocalConfig,
        seed: u64,
    ) -> Result<(Weights, crate::models::sgd::TrainStats)> {
        let (w, loss) = self
            .net
            .train(w, &data.features, &self.schedule, cfg, seed)?;
        let per_epoch = data.n_rows().div_ceil(cfg.batch_size.max(1) as usize) as u64;
        Ok((
            w,
            crate::models::sgd::TrainStats {
                loss,
                num_examples: data.n_rows() as u64,
                steps: per_epoch * u64::from(cfg.epochs),
                mean_gradient: None,
            },
        ))
    }

    /// Noise-prediction MSE on `data`'s rows at the fixed [`EVAL_NOISE_SEED`] draws.
    pub fn score(
        &self,
        w: &Weights,
        data: &crate::data::Dataset,
    ) -> Result<crate::models::sgd::EvalStats> {
        if data.n_rows() == 0 {
            return Err(Error::Data("cannot evaluate on an empty split".into()));
        }
        if data.n_features() != self.net.signal_len {
            return Err(Error::Shape {
                what: "diffusion evaluation data".into(),
                expected: format!("rows of {} values", self.net.signal_len),
                found: format!("{} values", data.n_features()),
            });
        }
        Ok(crate::models::sgd::EvalStats {
            loss: self
                .net
                .noise_mse(w, &data.features, &self.schedule, EVAL_NOISE_SEED)?,
            accuracy: f64::NAN,
            num_examples: data.n_rows() as u64,
        })
    }
}

impl Model for DenoiserModel {
    fn init(&self, rng: &mut ChaCha8Rng) -> Weights {
        self.net.init(rng)
    }

    fn num_params(&self) -> usize {
        self.net.mlp.num_params()
    }

    /// Noise prediction on the rows (see [`Denoiser::train`]); FedProx's and SCAFFOLD's terms do
    /// not apply to it.
    fn fit(
        &self,
        weights: Weights,
        data: &crate::data::Dataset,
        cfg: &crate::models::sgd::LocalConfig,
        seed: u64,
        objective: &crate::models::sgd::Objective<'_>,
    ) -> Result<(Weights, crate::models::sgd::TrainStats)> {
        if objective.anchor.is_some()
            || objective.correction.is_some()
            || objective.track_mean_gradient
        {
            return Err(Error::invalid(
                "strategy",
                "FedProx's proximal term and SCAFFOLD's correction are not available for a denoiser",
            ));
        }
        DenoiserModel::fit(self, weights, data, cfg, seed)
    }

    fn score(
        &self,
        weights: &Weights,
        data: &crate::data::Dataset,
    ) -> Result<crate::models::sgd::EvalStats> {
        DenoiserModel::score(self, weights, data)
    }

    fn classifies(&self) -> bool {
        false
    }
}

/// For each row of `generated`, the index of the nearest row of `real` (mean squared distance)
/// and that distance.
pub fn nearest_rows(generated: &Array2<f32>, real: &Array2<f32>) -> Vec<(usize, f64)> {
    generated
        .outer_iter()
        .map(|g| {
            real.outer_iter()
                .enumerate()
                .map(|(i, r)| {
                    (
                        i,
                        f64::from((&g - &r).mapv(|d| d * d).mean().unwrap_or(f32::MAX)),
                    )
                })
                .fold((usize::MAX, f64::INFINITY), |best, cur| {
                    if cur.1 < best.1 {
                        cur
                    } else {
                        best
                    }
                })
        })
        .collect()
}

/// Mean over `generated` of the mean squared distance to the nearest row of `real`.
pub fn mean_nearest_distance(generated: &Array2<f32>, real: &Array2<f32>) -> f64 {
    let mut total = 0.0f64;
    for g in generated.outer_iter() {
        let best = real
            .outer_iter()
            .map(|r| f64::from((&g - &r).mapv(|d| d * d).mean().unwrap_or(f32::MAX)))
            .fold(f64::INFINITY, f64::min);
        total += best;
    }
    total / generated.nrows().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaussian(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| StandardNormal.sample(&mut rng)).collect()
    }

    fn mse(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| f64::from(x - y).powi(2))
            .sum::<f64>()
            / a.len() as f64
    }

    #[test]
    fn the_tutorials_schedule_is_refused_and_proper_ones_are_not() {
        let tutorial = NoiseSchedule::new(
            Schedule::Linear {
                beta_start: 1e-4,
                beta_end: 0.02,
            },
            50,
        )
        .unwrap();
        let ab = tutorial.final_alpha_bar();
        assert!((ab - 0.60).abs() < 0.02, "ᾱ_T = {ab}");
        let err = tutorial.check_generation().unwrap_err().to_string();
        assert!(err.contains("77.6%"), "{err}");
        let long = NoiseSchedule::new(
            Schedule::Linear {
                beta_start: 1e-4,
                beta_end: 0.02,
            },
            1000,
        )
        .unwrap();
        assert!(long.final_alpha_bar() < 1e-4 && long.check_generation().is_ok());
        let cosine = NoiseSchedule::new(Schedule::Cosine { s: 0.008 }, 100).unwrap();
        assert!(
            cosine.check_generation().is_ok(),
            "cosine ᾱ_T {}",
            cosine.final_alpha_bar()
        );
        assert!(
            cosine.alpha_bars.windows(2).all(|w| w[1] < w[0]),
            "ᾱ decreases"
        );
        assert!(NoiseSchedule::new(
            Schedule::Linear {
                beta_start: 0.02,
                beta_end: 1e-4
            },
            10
        )
        .is_err());
        assert!(NoiseSchedule::new(Schedule::Cosine { s: 0.008 }, 0).is_err());
    }

    /// What the tutorial meant to show: with the exact noise of the forward step, the predicted x0
    /// is x0, and a deterministic DDIM chain fed the exact noise at every step recovers x0 from
    /// x_T. Drawing fresh noise and calling it the true noise (the tutorial) does not.
    #[test]
    fn exact_noise_recovers_x0_and_fresh_noise_does_not() {
        let s = NoiseSchedule::new(
            Schedule::Linear {
                beta_start: 1e-4,
                beta_end: 0.02,
            },
            200,
        )
        .unwrap();
        let x0: Vec<f32> = signals(0, 1, 3).row(0).to_vec();
        let eps = gaussian(SIGNAL_LEN, 9);
        let t_last = s.steps() - 1;
        let xt = s.q_sample(&x0, t_last, &eps).unwrap();
        assert!(mse(&s.predict_x0(&xt, t_last, &eps).unwrap(), &x0) < 1e-8);

        // The exact noise at step t is the one consistent with x0: (x_t − √ᾱ_t x0) / √(1 − ᾱ_t).
        let mut x = xt.clone();
        for t in (0..=t_last).rev() {
            let ab = s.alpha_bars[t];
            let exact: Vec<f32> = x
                .iter()
                .zip(&x0)
                .map(|(xt, x0)| {
                    ((f64::from(*xt) - ab.sqrt() * f64::from(*x0)) / (1.0 - ab).sqrt()) as f32
                })
                .collect();
            x = s.ddim_step(&x, t, &exact).unwrap();
        }
        let recovered = mse(&x, &x0);
        assert!(
            recovered < 1e-8,
            "DDIM with the exact noise: MSE {recovered}"
        );

        // The tutorial's loop: fresh noise at every step, used as the "true" noise.
        let mut y = xt;
        for t in (0..=t_last).rev() {
            let fresh = gaussian(SIGNAL_LEN, 1000 + t as u64);
            let z = gaussian(SIGNAL_LEN, 5000 + t as u64);
            y = s.ddpm_step(&y, t, &fresh, &z).unwrap();
        }
        let broken = mse(&y, &x0);
        assert!(
            broken > 0.3,
            "fresh noise should not reconstruct: MSE {broken}"
        );
    }

    /// Training lowers the noise-prediction error by more than half, and generated signals lie
    /// far closer to real ones than an untrained network's.
    #[test]
    fn a_trained_denoiser_predicts_noise_and_generates_signal_like_samples() {
        let sched = NoiseSchedule::new(Schedule::Cosine { s: 0.008 }, 50).unwrap();
        let net = Denoiser::new(SIGNAL_LEN, 16, &[256]);
        let train = signals(0, 200, 1);
        let held_out = signals(0, 50, 2);
        let w0 = net.init(&mut ChaCha8Rng::seed_from_u64(0));
        let before = net.noise_mse(&w0, &held_out, &sched, 9).unwrap();
        let cfg = crate::models::sgd::LocalConfig {
            epochs: 300,
            batch_size: 32,
            lr: 0.2,
            ..Default::default()
        };
        let (w, _) = net.train(w0.clone(), &train, &sched, &cfg, 3).unwrap();
        let after = net.noise_mse(&w, &held_out, &sched, 9).unwrap();
        // Predicting zero noise scores about 1.0: the network must beat that, not just its start.
        assert!(
            after < 0.5 * before && after < 0.8,
            "noise MSE {before} -> {after}"
        );
        let trained = mean_nearest_distance(&net.sample(&w, &sched, 20, 4).unwrap(), &train);
        let untrained = mean_nearest_distance(&net.sample(&w0, &sched, 20, 4).unwrap(), &train);
        assert!(
            trained < 0.5 * untrained,
            "nearest-real distance {trained} vs untrained {untrained}"
        );
        let tutorial = NoiseSchedule::new(
            Schedule::Linear {
                beta_start: 1e-4,
                beta_end: 0.02,
            },
            50,
        )
        .unwrap();
        assert!(
            net.sample(&w, &tutorial, 1, 0).is_err(),
            "no generation from a schedule that is not pure noise"
        );
    }

    #[test]
    fn signals_are_non_iid_and_embeddings_are_distinct() {
        let a = signals(0, 20, 1);
        let b = signals(2, 20, 1);
        assert_eq!(a.dim(), (20, SIGNAL_LEN));
        // Different frequency bands: the mean squared difference is large.
        let diff = (&a - &b).mapv(|v| v * v).mean().unwrap_or(0.0);
        assert!(diff > 0.5, "{diff}");
        assert_eq!(signals(1, 3, 7), signals(1, 3, 7));
        let e1 = timestep_embedding(1, 32);
        let e2 = timestep_embedding(2, 32);
        assert_eq!(e1.len(), 32);
        assert_ne!(e1, e2);
        assert!(NoiseSchedule::new(Schedule::Cosine { s: 0.008 }, 10)
            .unwrap()
            .q_sample(&[0.0; 3], 10, &[0.0; 3])
            .is_err());
    }
}
