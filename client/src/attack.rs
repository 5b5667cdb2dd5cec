//! Test-only attacker modes, for demonstrating robust aggregation.
//!
//! **Not for production use.** A client started with `--attack` corrupts every update it sends, so
//! that a federation's defences (median, trimmed mean, Krum) can be shown to work against a known
//! fraction of malicious clients. The attack is applied to the update `delta = w_local - w_global`.

use std::fmt;
use std::str::FromStr;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use shoal_shared::tensor::Weights;

/// How a malicious client corrupts its update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Attack {
    /// Sends `w_global - delta`: the update pointing the other way.
    SignFlip,
    /// Sends `w_global + k * delta` (e.g. `scale:-10` for a boosted sign flip).
    Scale(f32),
    /// Sends `w_global + noise`, noise ~ N(0, sigma^2) per coordinate, ignoring its data.
    Gaussian(f32),
}

impl FromStr for Attack {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("--attack `{s}`: {why} (expected sign-flip, scale:K or gaussian:SIGMA)")
        };
        let number = |v: &str| -> Result<f32, String> {
            v.parse::<f32>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| bad(&format!("`{v}` is not a finite number")))
        };
        match s.split_once(':') {
            None if s == "sign-flip" => Ok(Attack::SignFlip),
            Some(("scale", k)) => Ok(Attack::Scale(number(k)?)),
            Some(("gaussian", sigma)) => {
                let sigma = number(sigma)?;
                if sigma <= 0.0 {
                    return Err(bad("SIGMA must be positive"));
                }
                Ok(Attack::Gaussian(sigma))
            }
            _ => Err(bad("unknown attack")),
        }
    }
}

impl fmt::Display for Attack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attack::SignFlip => write!(f, "sign-flip"),
            Attack::Scale(k) => write!(f, "scale:{k}"),
            Attack::Gaussian(s) => write!(f, "gaussian:{s}"),
        }
    }
}

impl Attack {
    /// Corrupts `local` (trained from `global`) in place; `seed` makes the noise reproducible.
    pub fn apply(&self, global: &Weights, local: &mut Weights, seed: u64) {
        match *self {
            Attack::SignFlip => scale_delta(global, local, -1.0),
            Attack::Scale(k) => scale_delta(global, local, k),
            Attack::Gaussian(sigma) => {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                // sigma was checked positive and finite at parse time.
                let Ok(normal) = Normal::new(0.0f32, sigma) else {
                    return;
                };
                for (w, g) in local.values_mut().zip(global.values()) {
                    *w = g + normal.sample(&mut rng);
                }
            }
        }
    }
}

fn scale_delta(global: &Weights, local: &mut Weights, k: f32) {
    for (w, g) in local.values_mut().zip(global.values()) {
        *w = g + k * (*w - g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_shared::tensor::Tensor;

    fn w(v: &[f32]) -> Weights {
        Weights::new(vec![Tensor::new("w", vec![v.len()], v.to_vec()).unwrap()])
    }

    #[test]
    fn attacks_parse_and_transform_the_delta() {
        let global = w(&[1.0, 1.0]);
        let mut local = w(&[2.0, 0.0]);
        "sign-flip"
            .parse::<Attack>()
            .unwrap()
            .apply(&global, &mut local, 0);
        assert_eq!(local, w(&[0.0, 2.0]));
        let mut local = w(&[2.0, 0.0]);
        "scale:-10"
            .parse::<Attack>()
            .unwrap()
            .apply(&global, &mut local, 0);
        assert_eq!(local, w(&[-9.0, 11.0]));
        let mut local = w(&[2.0, 0.0]);
        let g: Attack = "gaussian:0.5".parse().unwrap();
        g.apply(&global, &mut local, 3);
        assert_ne!(local, w(&[2.0, 0.0]));
        for bad in ["flip", "scale:x", "gaussian:-1", "scale:inf"] {
            assert!(bad.parse::<Attack>().is_err(), "{bad}");
        }
        assert_eq!(Attack::Scale(-10.0).to_string(), "scale:-10");
    }
}
