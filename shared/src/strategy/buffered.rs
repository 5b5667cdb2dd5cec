//! Buffered asynchronous aggregation (FedBuff: Nguyen et al., AISTATS 2022, "Federated Learning
//! with Buffered Asynchronous Aggregation"): the server step's arithmetic, without the network.
//!
//! In FedBuff the coordinator keeps `K` clients training at once and steps the global model every
//! `B` updates, whoever sent them; an update that started from a model `τ` steps old counts with
//! weight `s(τ)` (here `(1 + τ)^-a`, the paper's `1/sqrt(1 + τ)` at `a = 0.5`). The step is
//! `w + Σ n_i s(τ_i) Δ_i / Σ n_i`, with `Δ_i` the change the client made to the model it was sent.
//!
//! Shoal's strategies aggregate whole models, so each update is [`rebase`]d first: the model the
//! client would have sent had it started from the current global model and moved `s(τ) Δ`.
//! The example-weighted mean of the rebased updates is then exactly that step, and FedAvgM,
//! FedAdam and the robust rules see the same pseudo-gradient they would in a round.

use crate::tensor::Weights;
use crate::{Error, Result};

/// How much an update counts by how many server steps old its starting model is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Staleness {
    /// Every update counts fully, however old.
    Constant,
    /// `(1 + τ)^-exponent`.
    Polynomial { exponent: f64 },
}

impl Staleness {
    /// From a job's `staleness` name and `staleness_exponent`.
    pub fn parse(name: &str, exponent: f64) -> Result<Staleness> {
        match name {
            "constant" => Ok(Staleness::Constant),
            "polynomial" if exponent.is_finite() && exponent >= 0.0 => {
                Ok(Staleness::Polynomial { exponent })
            }
            "polynomial" => Err(Error::InvalidValue {
                what: "async.staleness_exponent".into(),
                message: format!("{exponent}: give a number of at least 0 (0.5 is FedBuff's)"),
            }),
            other => Err(Error::Unknown {
                what: "async.staleness",
                name: other.into(),
                expected: "polynomial, constant".into(),
            }),
        }
    }

    /// The weight of an update `steps` server steps old, in (0, 1].
    pub fn weight(self, steps: u32) -> f64 {
        match self {
            Staleness::Constant => 1.0,
            Staleness::Polynomial { exponent } => (1.0 + f64::from(steps)).powf(-exponent),
        }
    }
}

/// Turns `update`, trained from `base`, into an update of `current`: `current + weight · (update
/// − base)`, value by value in `f64`. With `base` the current model and weight 1 it is unchanged.
/// Layouts must match (the caller checked the update against the model it was sent).
pub fn rebase(update: &mut Weights, base: &Weights, current: &Weights, weight: f64) -> Result<()> {
    update.check_same_layout(base)?;
    update.check_same_layout(current)?;
    if weight == 1.0 && std::ptr::eq(base, current) {
        return Ok(());
    }
    for ((u, b), c) in update.values_mut().zip(base.values()).zip(current.values()) {
        *u = (f64::from(c) + weight * (f64::from(*u) - f64::from(b))) as f32;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    fn w(values: &[f32]) -> Weights {
        Weights::new(vec![
            Tensor::new("w", vec![values.len()], values.to_vec()).unwrap()
        ])
    }

    #[test]
    fn polynomial_staleness_is_fedbuffs_inverse_square_root_at_one_half() {
        let s = Staleness::parse("polynomial", 0.5).unwrap();
        assert_eq!(s.weight(0), 1.0);
        assert!((s.weight(3) - 0.5).abs() < 1e-12);
        assert!(s.weight(10) < s.weight(9));
        assert_eq!(Staleness::parse("constant", 0.5).unwrap().weight(100), 1.0);
        let e = Staleness::parse("hinge", 0.5).unwrap_err().to_string();
        assert!(
            e.contains("async.staleness") && e.contains("polynomial"),
            "{e}"
        );
        let e = Staleness::parse("polynomial", -1.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("staleness_exponent"), "{e}");
    }

    #[test]
    fn a_stale_update_moves_the_current_model_by_its_weighted_change() {
        let base = w(&[1.0, 2.0, 3.0]);
        let current = w(&[10.0, 20.0, 30.0]);
        let mut update = w(&[2.0, 2.0, 1.0]); // change from base: +1, 0, -2
        rebase(&mut update, &base, &current, 0.5).unwrap();
        assert_eq!(update, w(&[10.5, 20.0, 29.0]));
        // From the current model at full weight: unchanged.
        let mut fresh = w(&[11.0, 19.0, 30.0]);
        rebase(&mut fresh, &current, &current, 1.0).unwrap();
        assert_eq!(fresh, w(&[11.0, 19.0, 30.0]));
        // A layout that does not match is refused.
        let mut short = w(&[1.0, 2.0]);
        assert!(rebase(&mut short, &base, &current, 1.0).is_err());
    }
}
