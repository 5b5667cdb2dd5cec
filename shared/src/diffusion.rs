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

use crate::{Error, Result};

/// Largest ᾱ_T from which generation is allowed: x_T must be (nearly) pure noise.
pub const MAX_FINAL_ALPHA_BAR: f64 = 0.01;
/// Length of each `signals` sequence (the tutorial's).
pub const SIGNAL_LEN: usize = 100;

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
    let mut rng = ChaCha8Rng::seed_from_u64(crate::seed::derive(seed, &[client as u64, 0x5161]));
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
