//! The streaming example-weighted mean behind FedAvg and every strategy built on it.

use crate::tensor::Weights;
use crate::{Error, Result};

/// A streaming example-weighted mean of client weights: one running sum in `f64` (so the order in
/// which updates arrive changes the result only below `f32` precision), never N copies of the model.
///
/// For SCAFFOLD it also keeps an unweighted running sum of the clients' control-variate deltas.
///
/// # Shapes
/// `sum` and `control_sum` hold one `f64` per scalar parameter of `layout`, in layout order.
#[derive(Debug, Clone)]
pub struct WeightedMean {
    /// The global model's layout (values all zero); every update must match it.
    layout: Weights,
    sum: Vec<f64>,
    total_weight: f64,
    count: usize,
    /// `Some` when control-variate deltas are required (SCAFFOLD).
    control_sum: Option<Vec<f64>>,
}

impl WeightedMean {
    /// An empty mean over updates shaped like `layout`; `with_control` makes every update carry a
    /// control-variate delta of the same shape.
    pub fn new(layout: &Weights, with_control: bool) -> Self {
        let n = layout.num_params();
        WeightedMean {
            layout: layout.zeros_like(),
            sum: vec![0.0; n],
            total_weight: 0.0,
            count: 0,
            control_sum: with_control.then(|| vec![0.0; n]),
        }
    }

    /// Adds one client's weights. Everything is checked before anything is summed, so a refused
    /// update leaves the mean exactly as it was. A control delta is ignored unless one is required.
    pub fn add(
        &mut self,
        update: &Weights,
        num_examples: u64,
        control_delta: Option<&Weights>,
    ) -> Result<()> {
        self.layout.check_same_layout(update)?;
        if num_examples == 0 {
            return Err(Error::invalid("update", "reports 0 training examples"));
        }
        if let Some(control_sum) = &mut self.control_sum {
            let delta = control_delta.ok_or_else(|| {
                Error::invalid(
                    "update",
                    "SCAFFOLD needs a control-variate delta with each update",
                )
            })?;
            self.layout.check_same_layout(delta)?;
            for (s, v) in control_sum.iter_mut().zip(delta.values()) {
                *s += f64::from(v);
            }
        }
        let w = num_examples as f64;
        for (s, v) in self.sum.iter_mut().zip(update.values()) {
            *s += w * f64::from(v);
        }
        self.total_weight += w;
        self.count += 1;
        Ok(())
    }

    /// Updates added so far.
    pub fn count(&self) -> usize {
        self.count
    }

    pub(crate) fn layout(&self) -> &Weights {
        &self.layout
    }

    /// The example-weighted mean, flat in layout order; fails when nothing was added.
    pub(crate) fn mean(&self) -> Result<Vec<f64>> {
        if self.count == 0 {
            return Err(Error::Data("no client updates to aggregate".into()));
        }
        Ok(self.sum.iter().map(|s| s / self.total_weight).collect())
    }

    /// The unweighted mean of the control-variate deltas; `None` when they were not collected or
    /// nothing was added.
    pub(crate) fn control_mean(&self) -> Option<Vec<f64>> {
        let sum = self.control_sum.as_ref()?;
        if self.count == 0 {
            return None;
        }
        let n = self.count as f64;
        Some(sum.iter().map(|s| s / n).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    fn w(vals: &[f32]) -> Weights {
        Weights::new(vec![
            Tensor::new("a", vec![2], vals[..2].to_vec()).unwrap(),
            Tensor::new("b", vec![vals.len() - 2], vals[2..].to_vec()).unwrap(),
        ])
    }

    /// The same updates in any arrival order give the same mean to within 1e-6.
    #[test]
    fn streaming_mean_is_order_independent() {
        // Deterministic, irregular values and example counts (no RNG needed).
        let updates: Vec<(Weights, u64)> = (0..7u64)
            .map(|i| {
                let vals: Vec<f32> = (0..5)
                    .map(|j| ((i * 31 + j * 17) as f32).sin() * 10f32.powi((i % 3) as i32))
                    .collect();
                (w(&vals), 1 + i * i * 13)
            })
            .collect();
        let global = w(&[0.0; 5]);
        let mean_in = |order: &[usize]| {
            let mut m = WeightedMean::new(&global, false);
            for &i in order {
                m.add(&updates[i].0, updates[i].1, None).unwrap();
            }
            m.mean().unwrap()
        };
        let forward = mean_in(&[0, 1, 2, 3, 4, 5, 6]);
        // Recompute the reference by hand, in f64, to check the mean itself too.
        let total: u64 = updates.iter().map(|u| u.1).sum();
        for (j, f) in forward.iter().enumerate() {
            let expect: f64 = updates
                .iter()
                .map(|(u, n)| f64::from(u.values().nth(j).unwrap()) * *n as f64)
                .sum::<f64>()
                / total as f64;
            assert!((f - expect).abs() < 1e-9, "{j}: {f} vs {expect}");
        }
        for order in [
            [6, 5, 4, 3, 2, 1, 0],
            [3, 0, 6, 1, 5, 2, 4],
            [2, 4, 6, 0, 1, 3, 5],
        ] {
            let other = mean_in(&order);
            for (a, b) in forward.iter().zip(&other) {
                assert!(
                    ((*a as f32) - (*b as f32)).abs() < 1e-6,
                    "{order:?}: {a} vs {b}"
                );
            }
        }
    }

    /// Wrong layouts, zero examples and a missing or misshapen control delta are refused, and the
    /// running sums are exactly as before.
    #[test]
    fn refused_updates_leave_the_mean_unchanged() {
        let global = w(&[0.0, 0.0, 0.0]);
        let mut m = WeightedMean::new(&global, true);
        m.add(&w(&[2.0, 2.0, 2.0]), 1, Some(&w(&[1.0, 1.0, 1.0])))
            .unwrap();
        let before = (m.mean().unwrap(), m.control_mean().unwrap());

        assert!(m.add(&w(&[1.0, 1.0, 1.0, 1.0]), 5, Some(&global)).is_err());
        let mut renamed = w(&[1.0, 1.0, 1.0]);
        renamed.tensors[1].name = "c".into();
        assert!(m.add(&renamed, 5, Some(&global)).is_err());
        assert!(m.add(&w(&[1.0, 1.0, 1.0]), 0, Some(&global)).is_err());
        assert!(m.add(&w(&[1.0, 1.0, 1.0]), 5, None).is_err());
        assert!(m
            .add(&w(&[1.0, 1.0, 1.0]), 5, Some(&w(&[1.0, 1.0, 1.0, 1.0])))
            .is_err());

        assert_eq!(m.count(), 1);
        assert_eq!((m.mean().unwrap(), m.control_mean().unwrap()), before);
        assert_eq!(before.0, vec![2.0; 3]);
    }

    #[test]
    fn an_empty_mean_is_an_error() {
        let m = WeightedMean::new(&w(&[0.0, 0.0]), true);
        assert!(m.mean().is_err());
        assert!(m.control_mean().is_none());
    }
}
