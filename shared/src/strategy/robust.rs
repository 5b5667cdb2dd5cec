//! Byzantine-robust aggregation: coordinate-wise median and trimmed mean (Yin et al., 2018) and
//! (Multi-)Krum (Blanchard et al., 2017).
//!
//! These rules compare clients with each other, per coordinate or per update, so unlike the mean
//! they cannot stream: [`Buffer`] keeps every update of the round (N flat copies of the model).

use crate::tensor::{Layout, Weights};
use crate::{Error, Result};

/// All of one round's updates, flattened, with their example counts.
///
/// # Shapes
/// `updates` is `n × P`: one `Vec<f32>` of the model's `P` scalar parameters (layout order) per client.
#[derive(Debug, Clone)]
pub struct Buffer {
    /// The global model's layout; every update must match it.
    layout: Layout,
    updates: Vec<Vec<f32>>,
    examples: Vec<u64>,
}

impl Buffer {
    /// An empty buffer for updates shaped like `layout`.
    pub fn new(layout: &Weights) -> Self {
        Buffer {
            layout: layout.layout(),
            updates: Vec::new(),
            examples: Vec::new(),
        }
    }

    /// Stores one client's weights; refused (buffer unchanged) on a layout mismatch or 0 examples.
    pub fn add(&mut self, update: &Weights, num_examples: u64) -> Result<()> {
        self.layout.check(update)?;
        if num_examples == 0 {
            return Err(Error::invalid("update", "reports 0 training examples"));
        }
        self.updates.push(update.values().collect());
        self.examples.push(num_examples);
        Ok(())
    }

    /// Updates stored so far.
    pub fn count(&self) -> usize {
        self.updates.len()
    }

    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    fn non_empty(&self) -> Result<()> {
        if self.updates.is_empty() {
            return Err(Error::Data("no client updates to aggregate".into()));
        }
        Ok(())
    }

    /// Example-weighted mean of the updates at `indices` (all of them when `None`), flat.
    pub(crate) fn weighted_mean(&self, indices: Option<&[usize]>) -> Result<Vec<f64>> {
        self.non_empty()?;
        let all: Vec<usize> = (0..self.updates.len()).collect();
        let indices = indices.unwrap_or(&all);
        let mut sum = vec![0.0f64; self.layout.num_params()];
        let mut total = 0.0f64;
        for &i in indices {
            let (Some(u), Some(&n)) = (self.updates.get(i), self.examples.get(i)) else {
                continue;
            };
            let w = n as f64;
            for (s, v) in sum.iter_mut().zip(u) {
                *s += w * f64::from(*v);
            }
            total += w;
        }
        if total == 0.0 {
            return Err(Error::Data("no client updates to aggregate".into()));
        }
        Ok(sum.into_iter().map(|s| s / total).collect())
    }

    /// Applies `reduce` to each coordinate's `n` client values, sorted ascending.
    fn per_coordinate(&self, reduce: impl Fn(&[f32]) -> f64) -> Result<Vec<f64>> {
        self.non_empty()?;
        let mut column = Vec::with_capacity(self.updates.len());
        Ok((0..self.layout.num_params())
            .map(|p| {
                column.clear();
                column.extend(self.updates.iter().map(|u| u[p]));
                // total_cmp: a NaN (which the coordinator rejects earlier) sorts last, no panic.
                column.sort_unstable_by(f32::total_cmp);
                reduce(&column)
            })
            .collect())
    }

    /// Coordinate-wise median, unweighted; an even count takes the mean of the two middle values
    /// (as `numpy.median`, which Flower's FedMedian uses).
    pub(crate) fn median(&self) -> Result<Vec<f64>> {
        self.per_coordinate(|sorted| {
            let n = sorted.len();
            let hi = f64::from(sorted[n / 2]);
            if n % 2 == 1 {
                hi
            } else {
                (f64::from(sorted[n / 2 - 1]) + hi) / 2.0
            }
        })
    }

    /// Coordinate-wise trimmed mean, unweighted: cut `floor(beta * n)` values from each end and
    /// average the rest (`scipy.stats.trim_mean` semantics, as Flower's FedTrimmedAvg).
    pub(crate) fn trimmed_mean(&self, beta: f64) -> Result<Vec<f64>> {
        let n = self.updates.len();
        // `as` saturates, so a negative or NaN beta (refused by `check`) cuts nothing.
        let cut = (beta * n as f64).floor() as usize;
        if cut.saturating_mul(2) >= n && n > 0 {
            return Err(Error::invalid(
                "strategy.beta",
                format!("{beta} trims all of the {n} updates (must be < 0.5)"),
            ));
        }
        self.per_coordinate(|sorted| {
            let kept = &sorted[cut..sorted.len() - cut];
            kept.iter().map(|v| f64::from(*v)).sum::<f64>() / kept.len() as f64
        })
    }

    /// Krum's scores (Blanchard et al., 2017): for each update, the sum of the squared Euclidean
    /// distances to its `max(1, n - f - 2)` nearest other updates. With fewer than two updates there
    /// are no neighbours and every score is 0.
    fn krum_scores(&self, num_malicious: usize) -> Vec<f64> {
        let n = self.updates.len();
        let mut dist = vec![0.0f64; n * n];
        for i in 0..n {
            for j in i + 1..n {
                let d: f64 = self.updates[i]
                    .iter()
                    .zip(&self.updates[j])
                    .map(|(a, b)| {
                        let x = f64::from(*a) - f64::from(*b);
                        x * x
                    })
                    .sum();
                dist[i * n + j] = d;
                dist[j * n + i] = d;
            }
        }
        let k = n.saturating_sub(num_malicious).saturating_sub(2).max(1);
        (0..n)
            .map(|i| {
                let mut row: Vec<f64> = (0..n)
                    .filter(|&j| j != i)
                    .map(|j| dist[i * n + j])
                    .collect();
                row.sort_unstable_by(f64::total_cmp);
                row.iter().take(k).sum()
            })
            .collect()
    }

    /// Update indices from best (lowest Krum score) to worst; ties keep arrival order.
    pub(crate) fn krum_ranking(&self, num_malicious: usize) -> Vec<usize> {
        let scores = self.krum_scores(num_malicious);
        let mut order: Vec<usize> = (0..scores.len()).collect();
        // A stable sort, so equal scores keep the first-arrived update first (numpy's argmin).
        order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
        order
    }

    /// Krum: the update with the lowest score, as is, when `keep == 0`; otherwise the
    /// example-weighted mean of the `keep` lowest-scoring updates (at most all of them).
    pub(crate) fn krum(&self, num_malicious: usize, keep: usize) -> Result<Vec<f64>> {
        self.non_empty()?;
        let order = self.krum_ranking(num_malicious);
        if keep == 0 {
            let best = order
                .first()
                .and_then(|&i| self.updates.get(i))
                .ok_or_else(|| Error::Data("no client updates to aggregate".into()))?;
            return Ok(best.iter().map(|v| f64::from(*v)).collect());
        }
        let keep = keep.min(order.len());
        self.weighted_mean(Some(&order[..keep]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    fn w(vals: &[f32]) -> Weights {
        Weights::new(vec![
            Tensor::new("w", vec![vals.len()], vals.to_vec()).unwrap()
        ])
    }

    fn buffer(rows: &[(&[f32], u64)]) -> Buffer {
        let mut b = Buffer::new(&w(&vec![0.0; rows[0].0.len()]));
        for (r, n) in rows {
            b.add(&w(r), *n).unwrap();
        }
        b
    }

    fn assert_close(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, e) in got.iter().zip(want) {
            assert!((g - e).abs() < 1e-9, "{got:?} vs {want:?}");
        }
    }

    /// Median of a 5×3 matrix, column by column; example counts must not matter.
    #[test]
    fn median_of_five_clients() {
        let b = buffer(&[
            (&[1.0, 10.0, -3.0], 1),
            (&[2.0, 20.0, -1.0], 100),
            (&[100.0, 30.0, -2.0], 1),
            (&[3.0, -40.0, 0.0], 1000),
            (&[4.0, 50.0, 7.0], 1),
        ]);
        // Sorted columns: [1,2,3,4,100] -> 3; [-40,10,20,30,50] -> 20; [-3,-2,-1,0,7] -> -1.
        assert_close(&b.median().unwrap(), &[3.0, 20.0, -1.0]);
    }

    /// An even count averages the two middle values, as numpy does.
    #[test]
    fn median_of_an_even_count() {
        let b = buffer(&[
            (&[1.0, 0.0], 1),
            (&[4.0, 0.0], 1),
            (&[2.0, 1.0], 1),
            (&[10.0, 1.0], 1),
        ]);
        // [1,2,4,10] -> (2+4)/2 = 3 ; [0,0,1,1] -> 0.5
        assert_close(&b.median().unwrap(), &[3.0, 0.5]);
        // Two updates: the plain mean.
        let b = buffer(&[(&[1.0], 1), (&[2.0], 9)]);
        assert_close(&b.median().unwrap(), &[1.5]);
    }

    /// beta = 0.2 over 5 clients cuts floor(1.0) = 1 value from each end; 0.1 cuts none.
    #[test]
    fn trimmed_mean_cuts_one_from_each_end() {
        let b = buffer(&[
            (&[0.0, 1.0], 7),
            (&[1.0, 5.0], 1),
            (&[3.0, -100.0], 1),
            (&[8.0, 2.0], 1),
            (&[100.0, 3.0], 1),
        ]);
        // [0,1,3,8,100] -> mean(1,3,8) = 4 ; [-100,1,2,3,5] -> mean(1,2,3) = 2
        assert_close(&b.trimmed_mean(0.2).unwrap(), &[4.0, 2.0]);
        // floor(0.1 * 5) = 0: the plain unweighted mean, 112/5 and -89/5.
        assert_close(&b.trimmed_mean(0.1).unwrap(), &[22.4, -17.8]);
        // beta = 0.5 on an odd count keeps only the middle value (scipy does the same): the median.
        assert_close(&b.trimmed_mean(0.5).unwrap(), &[3.0, 2.0]);
        // A beta that would leave nothing is an error, not a panic or a NaN.
        assert!(b.trimmed_mean(0.6).is_err());
        assert!(b.trimmed_mean(1e300).is_err());
    }

    /// Four updates, one far away; offsets of 10 so the answer is not the zero vector.
    /// a=[10,10] (index 1), b=[11,10] (index 0), c=[10,12] (index 3), far=[60,60] (index 2).
    /// Squared distances: ab=1, ac=4, bc=1+4=5, far to others >= 48^2+50^2 = 4804.
    fn krum_rows() -> Buffer {
        buffer(&[
            (&[11.0, 10.0], 3),
            (&[10.0, 10.0], 1),
            (&[60.0, 60.0], 1),
            (&[10.0, 12.0], 1),
        ])
    }

    #[test]
    fn krum_picks_the_central_update() {
        let b = krum_rows();
        // f = 0: k = max(1, 4-0-2) = 2 nearest. Scores: b=1+5=6, a=1+4=5, far=big, c=4+5=9.
        assert_eq!(b.krum_ranking(0), vec![1, 0, 3, 2]);
        assert_close(&b.krum(0, 0).unwrap(), &[10.0, 10.0]);
        // f = 1: k = 1. Scores: b=1, a=1, c=4: a tie, so the first to arrive (b, index 0) wins.
        assert_eq!(b.krum_ranking(1)[0], 0);
        assert_close(&b.krum(1, 0).unwrap(), &[11.0, 10.0]);
    }

    #[test]
    fn multikrum_averages_the_best_two() {
        let b = krum_rows();
        // f = 0, keep 2: a (score 5) and b (6), weighted 1 and 3: ((10 + 33)/4, 10) = (10.75, 10).
        assert_close(&b.krum(0, 2).unwrap(), &[10.75, 10.0]);
        // keep larger than n is clamped: all four, weights 3,1,1,1: (33+10+60+10)/6, (30+10+60+12)/6.
        assert_close(&b.krum(0, 10).unwrap(), &[113.0 / 6.0, 112.0 / 6.0]);
    }

    /// Fewer than three updates: no panic, scores still defined.
    #[test]
    fn krum_with_one_or_two_updates() {
        let one = buffer(&[(&[5.0], 2)]);
        assert_close(&one.krum(3, 0).unwrap(), &[5.0]);
        let two = buffer(&[(&[5.0], 2), (&[7.0], 2)]);
        // Both have score 4: the first wins.
        assert_close(&two.krum(3, 0).unwrap(), &[5.0]);
        assert_close(&two.krum(3, 2).unwrap(), &[6.0]);
    }

    #[test]
    fn empty_and_misshapen() {
        let mut b = Buffer::new(&w(&[0.0, 0.0]));
        assert!(b.median().is_err());
        assert!(b.trimmed_mean(0.2).is_err());
        assert!(b.krum(0, 0).is_err());
        assert!(b.weighted_mean(None).is_err());
        b.add(&w(&[1.0, 2.0]), 1).unwrap();
        assert!(b.add(&w(&[1.0, 2.0, 3.0]), 1).is_err());
        assert!(b.add(&w(&[1.0, 2.0]), 0).is_err());
        assert_eq!(b.count(), 1);
        assert_close(&b.median().unwrap(), &[1.0, 2.0]);
    }
}
