//! The streaming example-weighted mean behind FedAvg and every strategy built on it.
//!
//! # Why fixed point
//! A seeded job must give bit-identical models whatever order its updates arrive in, and the
//! coordinator must not hold a round's updates (N copies of the model) to get that. Floating-point
//! sums depend on their order; integer sums do not. So each value is put on a fixed-point grid
//! (`round(v * 2^frac)`, the same integer whenever the same value is added) and summed exactly in
//! `i64`. The sum is then the same for every order, a refused or corrected update can be taken out
//! again exactly ([`WeightedMean::remove`]), and the memory is one `i64` per parameter.
//!
//! Each update adds `round(count * v * 2^frac)` per value: one `f64` product (exact while counts
//! stay below 2^29) rounded to an integer by [`MAGIC`], which the compiler turns into packed SIMD
//! instructions, so the sum runs near memory speed. The grid is chosen per tensor when the round
//! opens, from what bounds the terms and their sum ([`CountBudget`]): values may reach
//! [`RANGE_BITS`] binary orders of magnitude beyond the global tensor's largest (at least ±1), one
//! count is at most `largest`, all of them add up to at most `total` (what the selected clients
//! announced). A term then stays below 2^51 and the sum below 2^62. Each term is off by at most
//! half a grid unit, so the mean is off by at most `updates / (2 * total) * 2^-frac`: for digits
//! (1,500 examples, 10 clients, weights below 1) the grid is 2^-32 and the mean within 1e-12, far
//! finer than the `f32` it is rounded to. Sums wrap rather than trap, so an update added and
//! removed again leaves no trace even if an intermediate sum left the range; only the final sum
//! must fit, which the bounds guarantee ([`WeightedMean::fits`] and [`WeightedMean::admits`] tell a
//! caller whose counts outgrew them, who then sums again with a larger budget).

use crate::tensor::{Layout, Weights};
use crate::{Error, Result};

/// How many binary orders of magnitude an update's values may exceed the global tensor's largest
/// value (or 1) by: 1024 times. Updates beyond are refused by [`WeightedMean::add`]; an honest
/// round moves weights by far less.
pub const RANGE_BITS: i32 = 10;

/// `1.5 * 2^52`: adding it to an `f64` of magnitude below `2^51` rounds it to the nearest integer
/// (ties to even) and leaves that integer in the low bits of the result, in two's complement. It is
/// the rounding `f64::round_ties_even` does, without a libm call on baseline x86-64.
const MAGIC: f64 = 6_755_399_441_055_744.0;

/// What bounds a round's example counts: the sums are sized by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountBudget {
    /// The most all counts of the round add up to.
    pub total: u64,
    /// The most one count is.
    pub largest: u64,
}

impl CountBudget {
    /// The budget of `counts` exactly.
    pub fn of(counts: impl IntoIterator<Item = u64>) -> CountBudget {
        counts.into_iter().fold(
            CountBudget {
                total: 0,
                largest: 0,
            },
            |b, n| CountBudget {
                total: b.total.saturating_add(n),
                largest: b.largest.max(n),
            },
        )
    }

    /// At most `updates` updates of one example each (the unweighted control-variate sums).
    pub fn unweighted(updates: u64) -> CountBudget {
        CountBudget {
            total: updates,
            largest: 1,
        }
    }
}

/// Bits needed for `n` (at least 1).
fn bits(n: u64) -> i32 {
    64 - n.max(1).leading_zeros() as i32
}

/// One tensor's fixed-point grid.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Grid {
    /// `2^frac`: grid units per unit of value.
    scale: f64,
    /// The largest magnitude a value may have.
    limit: f32,
}

impl Grid {
    /// The grid for a tensor whose global values reach `max_abs`, for counts within `budget`.
    fn new(max_abs: f32, budget: CountBudget) -> Grid {
        // Exponent of the largest value (at least 1), plus the range margin.
        let top = exponent(f64::from(max_abs).max(1.0)) + RANGE_BITS;
        // One term (count x value) stays within 2^51 grid units, where `MAGIC` rounds exactly,
        // and all of them within 2^62.
        let frac = (51 - top - bits(budget.largest)).min(62 - top - bits(budget.total));
        Grid {
            scale: 2f64.powi(frac),
            limit: 2f64.powi(top) as f32,
        }
    }
}

/// `|v| <= limit`; false for NaN.
#[inline(always)]
fn within(v: f32, limit: f32) -> bool {
    v.abs() <= limit
}

/// `round(x)` for `|x| <= 2^51`, ties to even (a deterministic value beyond).
#[inline(always)]
fn to_units(x: f64) -> i64 {
    ((x + MAGIC).to_bits() as i64).wrapping_sub(MAGIC.to_bits() as i64)
}

/// Adds (or, with `take`, subtracts) `round(v * m)` for each value to its sum; non-zero when a
/// value is beyond `limit` (or NaN). With AVX2 where the CPU has it: the same operations on
/// four lanes instead of two, so the same bits (Rust never fuses a multiply and an add).
fn add_terms(sums: &mut [i64], data: &[f32], m: f64, limit: f32, take: bool) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        #[allow(unsafe_code)]
        // SAFETY: `add_terms_avx2` needs nothing but AVX2, which the CPU was just found to have.
        return unsafe { add_terms_avx2(sums, data, m, limit, take) };
    }
    add_terms_body(sums, data, m, limit, take)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn add_terms_avx2(sums: &mut [i64], data: &[f32], m: f64, limit: f32, take: bool) -> u32 {
    add_terms_body(sums, data, m, limit, take)
}

/// The loop of [`add_terms`]: two loops, so each stays branch-free and vectorised.
#[inline(always)]
fn add_terms_body(sums: &mut [i64], data: &[f32], m: f64, limit: f32, take: bool) -> u32 {
    let mut out = 0u32;
    if take {
        for (s, &v) in sums.iter_mut().zip(data) {
            out |= u32::from(!within(v, limit));
            *s = s.wrapping_sub(to_units(f64::from(v) * m));
        }
    } else {
        for (s, &v) in sums.iter_mut().zip(data) {
            // NaN counts as out of range.
            out |= u32::from(!within(v, limit));
            *s = s.wrapping_add(to_units(f64::from(v) * m));
        }
    }
    out
}

/// `ceil(log2(x))` for `x >= 1`: the smallest `e` with `x <= 2^e`.
fn exponent(x: f64) -> i32 {
    let mut e = x.log2().ceil() as i32;
    // log2 of an exact power of two may round either way; settle it exactly.
    while 2f64.powi(e) < x {
        e += 1;
    }
    while e > 0 && 2f64.powi(e - 1) >= x {
        e -= 1;
    }
    e
}

/// Exact fixed-point sums of one kind of vector (weights or control deltas), per tensor grid.
#[derive(Debug, Clone)]
struct Sums {
    grids: Vec<Grid>,
    sum: Vec<i64>,
}

impl Sums {
    fn new(reference: &Weights, budget: CountBudget) -> Sums {
        Sums {
            grids: reference
                .tensors
                .iter()
                .map(|t| Grid::new(t.data.iter().fold(0f32, |m, v| m.max(v.abs())), budget))
                .collect(),
            sum: vec![0; reference.num_params()],
        }
    }

    /// Adds `weight` times `w` (`weight < 0` takes out exactly what the same positive weight
    /// put in, whatever the values); returns the first value beyond its tensor's range, if any
    /// (the sums are then changed all the same: the caller undoes it).
    fn apply(&mut self, w: &Weights, weight: i64, layout: &Layout) -> Option<(usize, f32)> {
        let (weight, take) = (weight.unsigned_abs() as f64, weight < 0);
        let mut off = 0;
        let mut beyond = None;
        for (t, (grid, (_, _, len))) in w.tensors.iter().zip(self.grids.iter().zip(&layout.tensors))
        {
            let sums = &mut self.sum[off..off + len];
            // Exact: a count below 2^53 times a power of two. The term is the same either way;
            // taking out subtracts it (two loops, so each stays branch-free and vectorised).
            let m = weight * grid.scale;
            let out = add_terms(sums, &t.data, m, grid.limit, take);
            if out != 0 && beyond.is_none() {
                let i = t.data.iter().position(|&v| !within(v, grid.limit));
                beyond = i.map(|i| (off + i, t.data[i]));
            }
            off += len;
        }
        beyond
    }

    /// The sums divided by `total`, rounded to `f32`, flat in layout order.
    fn mean<'a>(&'a self, total: f64, layout: &'a Layout) -> impl Iterator<Item = f64> + 'a {
        layout
            .tensors
            .iter()
            .zip(&self.grids)
            .flat_map(|((_, _, len), g)| std::iter::repeat_n(*g, *len))
            .zip(&self.sum)
            .map(move |(g, &s)| s as f64 / (g.scale * total))
    }
}

/// A streaming example-weighted mean of client weights, exact in fixed point (see the module
/// docs): the same updates give the same bits in any order, and nothing but one `i64` per
/// parameter is held.
///
/// For SCAFFOLD it also keeps an unweighted sum of the clients' control-variate deltas, on grids
/// taken from the server's control variate.
#[derive(Debug, Clone)]
pub struct WeightedMean {
    layout: Layout,
    sums: Sums,
    budget: CountBudget,
    total_weight: u64,
    count: usize,
    /// `Some` when control-variate deltas are required (SCAFFOLD).
    control: Option<Sums>,
}

impl WeightedMean {
    /// An empty mean over updates shaped like `global`, whose example counts stay within
    /// `budget`. `control`: the server control variate, when every update must carry a control
    /// delta of the same shape (SCAFFOLD).
    pub fn new(global: &Weights, budget: CountBudget, control: Option<&Weights>) -> Self {
        WeightedMean {
            layout: global.layout(),
            sums: Sums::new(global, budget),
            budget,
            total_weight: 0,
            count: 0,
            // Each update counts at least one example: `total` bounds the number of updates.
            control: control.map(|c| Sums::new(c, CountBudget::unweighted(budget.total))),
        }
    }

    /// Whether an update counting `num_examples` can be added exactly (at most the budget's
    /// `largest`). One that cannot is still taken, and summed again by the caller.
    pub fn admits(&self, num_examples: u64) -> bool {
        num_examples <= self.budget.largest
    }

    /// Adds one client's weights. Everything is checked first, so a refused update leaves the
    /// mean exactly as it was: the layouts, `num_examples > 0`, and every value within its
    /// tensor's range. A control delta is ignored unless one is required.
    pub fn add(
        &mut self,
        update: &Weights,
        num_examples: u64,
        control_delta: Option<&Weights>,
    ) -> Result<()> {
        self.apply(update, num_examples, control_delta, 1)?;
        self.total_weight = self.total_weight.wrapping_add(num_examples);
        self.count += 1;
        Ok(())
    }

    /// Takes back an update added before with the same values and count, exactly: the mean is
    /// then bit for bit what it would be had the update never been added.
    pub fn remove(
        &mut self,
        update: &Weights,
        num_examples: u64,
        control_delta: Option<&Weights>,
    ) -> Result<()> {
        if self.count == 0 {
            return Err(Error::Data("no update to take back".into()));
        }
        self.apply(update, num_examples, control_delta, -1)?;
        self.total_weight = self.total_weight.wrapping_sub(num_examples);
        self.count -= 1;
        Ok(())
    }

    fn apply(
        &mut self,
        update: &Weights,
        num_examples: u64,
        control_delta: Option<&Weights>,
        sign: i64,
    ) -> Result<()> {
        self.layout.check(update)?;
        let weight = i64::try_from(num_examples)
            .ok()
            .filter(|&n| n > 0 && n < 1 << 53)
            .ok_or_else(|| {
                Error::invalid(
                    "update",
                    format!("reports {num_examples} training examples (must be 1 to 2^53)"),
                )
            })?;
        if !self.admits(num_examples) {
            return Err(Error::invalid(
                "update",
                format!(
                    "counts {num_examples} examples, more than the {} the round's sums were sized for",
                    self.budget.largest
                ),
            ));
        }
        let delta = match &self.control {
            Some(_) => {
                let delta = control_delta.ok_or_else(|| {
                    Error::invalid(
                        "update",
                        "SCAFFOLD needs a control-variate delta with each update",
                    )
                })?;
                self.layout.check(delta)?;
                Some(delta)
            }
            None => None,
        };
        if let Some(at) = self.sums.apply(update, sign * weight, &self.layout) {
            self.sums.apply(update, -sign * weight, &self.layout);
            return Err(self.beyond("", at, &self.sums));
        }
        if let (Some(c), Some(delta)) = (&mut self.control, delta) {
            if let Some(at) = c.apply(delta, sign, &self.layout) {
                c.apply(delta, -sign, &self.layout);
                self.sums.apply(update, -sign * weight, &self.layout);
                let c = self.control.as_ref().expect("matched above");
                return Err(self.beyond("control_delta: ", at, c));
            }
        }
        Ok(())
    }

    /// Why a value is out of range, naming its tensor.
    fn beyond(&self, part: &str, (at, v): (usize, f32), sums: &Sums) -> Error {
        let mut off = 0;
        for ((name, _, len), g) in self.layout.tensors.iter().zip(&sums.grids) {
            if at < off + len {
                return Error::invalid(
                    "update",
                    format!(
                        "{part}value {v} at index {} of tensor `{name}` is beyond ±{} (2^{RANGE_BITS} times the global tensor's largest value, at least 1)",
                        at - off,
                        g.limit
                    ),
                );
            }
            off += len;
        }
        Error::invalid("update", format!("{part}value {v} is out of range"))
    }

    /// Updates added so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The example counts added so far.
    pub fn total_weight(&self) -> u64 {
        self.total_weight
    }

    /// Whether the counts added stay within the budget the grids were made for (the sums are
    /// then exact); a caller whose counts outgrew it sums again with a larger budget.
    pub fn fits(&self) -> bool {
        self.total_weight <= self.budget.total
    }

    pub(crate) fn check_layout(&self, global: &Weights) -> Result<()> {
        self.layout.check(global)
    }

    fn ready(&self) -> Result<()> {
        if self.count == 0 {
            return Err(Error::Data("no client updates to aggregate".into()));
        }
        if !self.fits() {
            return Err(Error::Data(format!(
                "the round's example counts add up to {}, over the {} its sums were sized for",
                self.total_weight, self.budget.total
            )));
        }
        Ok(())
    }

    /// The example-weighted mean, flat in layout order; fails when nothing was added.
    pub(crate) fn mean(&self) -> Result<Vec<f64>> {
        self.ready()?;
        Ok(self
            .sums
            .mean(self.total_weight as f64, &self.layout)
            .collect())
    }

    /// The example-weighted mean as weights (rounded to `f32`), without a flat `f64` copy.
    pub(crate) fn mean_weights(&self) -> Result<Weights> {
        self.ready()?;
        let total = self.total_weight as f64;
        let mut off = 0;
        let tensors = self
            .layout
            .tensors
            .iter()
            .zip(&self.sums.grids)
            .map(|((name, shape, len), g)| {
                let sums = &self.sum_slice(off, *len);
                off += len;
                // One division: `s / scale` is exact (a power of two) and so is `scale * total`,
                // so `s / (scale * total)` rounds the same real number as `s / scale / total`
                // did, to the same bits, at half the divisions.
                let d = g.scale * total;
                crate::tensor::Tensor {
                    name: name.clone(),
                    shape: shape.clone(),
                    // The same arithmetic as `Sums::mean`, tensor by tensor.
                    data: sums.iter().map(|&s| (s as f64 / d) as f32).collect(),
                }
            })
            .collect();
        Ok(Weights::new(tensors))
    }

    fn sum_slice(&self, off: usize, len: usize) -> &[i64] {
        &self.sums.sum[off..off + len]
    }

    /// The unweighted mean of the control-variate deltas; `None` when they were not collected or
    /// nothing was added.
    pub(crate) fn control_mean(&self) -> Option<Vec<f64>> {
        let c = self.control.as_ref()?;
        if self.count == 0 {
            return None;
        }
        Some(c.mean(self.count as f64, &self.layout).collect())
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

    /// Deterministic, irregular values and example counts (no RNG needed).
    fn updates() -> Vec<(Weights, u64)> {
        (0..7u64)
            .map(|i| {
                let vals: Vec<f32> = (0..5)
                    .map(|j| ((i * 31 + j * 17) as f32).sin() * 10f32.powi((i % 3) as i32 - 1))
                    .collect();
                (w(&vals), 1 + i * i * 13)
            })
            .collect()
    }

    fn mean_in(global: &Weights, updates: &[(Weights, u64)], order: &[usize]) -> Vec<f64> {
        let budget = CountBudget::of(updates.iter().map(|u| u.1));
        let mut m = WeightedMean::new(global, budget, None);
        for &i in order {
            m.add(&updates[i].0, updates[i].1, None).unwrap();
        }
        m.mean().unwrap()
    }

    /// The same updates in any arrival order give the same bits, and the mean is the true mean
    /// to well within `f32` precision.
    #[test]
    fn the_mean_is_bit_identical_in_any_order() {
        let updates = updates();
        let global = w(&[0.5, -2.0, 3.0, 0.0, 1.0]);
        let forward = mean_in(&global, &updates, &[0, 1, 2, 3, 4, 5, 6]);
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
            let other = mean_in(&global, &updates, &order);
            assert_eq!(
                forward.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                other.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{order:?}"
            );
        }
    }

    /// Taking an update out gives exactly the mean of the others, even when the sums left the
    /// `i64` range on the way.
    #[test]
    fn a_removed_update_leaves_no_trace() {
        let updates = updates();
        let global = w(&[0.0; 5]);
        let without: Vec<(Weights, u64)> = updates[1..].to_vec();
        let want = mean_in(&global, &without, &[0, 1, 2, 3, 4, 5]);
        // Same budget as `want`'s, so the grids agree.
        let budget = CountBudget::of(without.iter().map(|u| u.1));
        let mut m = WeightedMean::new(&global, budget, None);
        for (u, n) in updates.iter().rev() {
            m.add(u, *n, None).unwrap();
        }
        // Many copies of the largest update push the sums around the i64 range; they come out
        // again exactly.
        let (big, n) = &updates[6];
        for _ in 0..(1 << 20) {
            m.add(big, *n, None).unwrap();
        }
        assert!(!m.fits());
        for _ in 0..(1 << 20) {
            m.remove(big, *n, None).unwrap();
        }
        m.remove(&updates[0].0, updates[0].1, None).unwrap();
        assert!(m.fits());
        assert_eq!(m.count(), 6);
        assert_eq!(m.mean().unwrap(), want);
    }

    /// A value beyond the range (1024 times the global model's largest, at least 1) is refused,
    /// naming the tensor and index; NaN too.
    #[test]
    fn values_beyond_the_range_are_refused_and_leave_the_sums_alone() {
        let global = w(&[0.5, -2.0, 3.0, 0.0, 1.0]);
        let mut m = WeightedMean::new(&global, CountBudget::of([10, 10, 10]), None);
        m.add(&w(&[1.0, 2.0, 3.0, 4.0, 5.0]), 10, None).unwrap();
        let before = m.mean().unwrap();
        // Tensor `a`'s largest global value is 2 -> 2^1 * 2^10 = 2048.
        let e = m
            .add(&w(&[1.0, 2049.0, 3.0, 4.0, 5.0]), 10, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("index 1 of tensor `a`") && e.contains("2048"),
            "{e}"
        );
        m.add(&w(&[1.0, 2048.0, 3.0, 4.0, 5.0]), 10, None).unwrap();
        m.remove(&w(&[1.0, 2048.0, 3.0, 4.0, 5.0]), 10, None)
            .unwrap();
        let e = m
            .add(&w(&[1.0, 2.0, 3.0, f32::NAN, 5.0]), 10, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("index 1 of tensor `b`"), "{e}");
        assert_eq!(m.mean().unwrap(), before);
        assert_eq!(m.count(), 1);
    }

    /// Wrong layouts, zero examples and a missing or misshapen control delta are refused, and the
    /// running sums are exactly as before.
    #[test]
    fn refused_updates_leave_the_mean_unchanged() {
        let global = w(&[0.0, 0.0, 0.0]);
        let mut m = WeightedMean::new(&global, CountBudget::of([5; 10]), Some(&global));
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
        assert!(m
            .add(&w(&[1.0, 1.0, 1.0]), 5, Some(&w(&[1.0, 1e9, 1.0])))
            .is_err());
        // More examples than one update may count: refused (the caller sums again).
        assert!(!m.admits(6));
        assert!(m.add(&w(&[1.0, 1.0, 1.0]), 6, Some(&global)).is_err());

        assert_eq!(m.count(), 1);
        assert_eq!((m.mean().unwrap(), m.control_mean().unwrap()), before);
        assert_eq!(before.0, vec![2.0; 3]);
    }

    #[test]
    fn an_empty_mean_is_an_error() {
        let m = WeightedMean::new(
            &w(&[0.0, 0.0]),
            CountBudget::of([5, 5]),
            Some(&w(&[0.0, 0.0])),
        );
        assert!(m.mean().is_err());
        assert!(m.control_mean().is_none());
    }

    /// The mean divides once by `scale * total`; it must give the bits two divisions gave
    /// (seeded runs, checkpoints and the golden files depend on them).
    #[test]
    fn one_division_by_scale_times_total_gives_the_bits_of_two() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for _ in 0..200_000 {
            let frac = rng.gen_range(0..62);
            let scale = 2f64.powi(frac);
            let total_bits = rng.gen_range(1..53);
            let total = rng.gen_range(1u64..1 << total_bits) as f64;
            let shift = rng.gen_range(0..62);
            let s: i64 = rng.gen_range(-(1i64 << 62)..1i64 << 62) >> shift;
            let two = s as f64 / scale / total;
            let one = s as f64 / (scale * total);
            assert_eq!(two.to_bits(), one.to_bits(), "{s} / 2^{frac} / {total}");
            assert_eq!((two as f32).to_bits(), (one as f32).to_bits());
        }
    }

    #[test]
    fn grids_leave_room_for_the_sum() {
        assert_eq!(exponent(1.0), 0);
        assert_eq!(exponent(2.0), 1);
        assert_eq!(exponent(2.5), 2);
        assert_eq!(exponent(1024.0), 10);
        // Digits: weights below 1, 1,500 examples, at most 300 per client.
        let digits = CountBudget {
            total: 1500,
            largest: 300,
        };
        let g = Grid::new(0.9, digits);
        assert_eq!((g.scale, g.limit), (2f64.powi(51 - 10 - 9), 1024.0));
        // Many clients: the total decides; the largest sum and term still fit.
        let many = CountBudget {
            total: 1 << 30,
            largest: 1000,
        };
        let g = Grid::new(3.0, many);
        assert_eq!(g.scale, 2f64.powi(62 - 12 - 31));
        let sum = (g.limit as f64 * g.scale) as i128 * (1i128 << 30);
        assert!(sum < i64::MAX as i128);
        assert!(g.limit as f64 * g.scale * 1000.0 <= 2f64.powi(51));
        // Rounding to the grid is to nearest, ties to even, and symmetric.
        assert_eq!(to_units(0.5), 0);
        assert_eq!(to_units(1.5), 2);
        assert_eq!(to_units(-1.5), -2);
        assert_eq!(to_units(-2.5), -2);
        assert_eq!(to_units(2f64.powi(51)), 1 << 51);
        assert_eq!(to_units(-(2f64.powi(51)) + 0.5), -(1 << 51));
    }
}
