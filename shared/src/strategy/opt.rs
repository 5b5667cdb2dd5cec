//! Server optimisers: FedAvgM (Hsu et al., 2019), the FedOpt family FedAdagrad, FedAdam and FedYogi
//! (Reddi et al., 2021), and SCAFFOLD's server step (Karimireddy et al., 2020).
//!
//! Each step is a pure function of flat `f64` vectors (one entry per scalar parameter, in layout
//! order): the previous global model, this round's example-weighted mean, and the optimiser state.
//! It returns the next model and the next state; the caller commits them only if every step
//! succeeded, so a failed round leaves the strategy as it was. The formulas follow Flower's
//! `FedAvgM`, `FedAdagrad`, `FedAdam`, `FedYogi` so results can be compared with it.

/// The next model and, for momentum-style optimisers, the next state vectors.
pub(crate) struct Step {
    pub next: Vec<f64>,
    pub first: Option<Vec<f64>>,
    pub second: Option<Vec<f64>>,
}

/// FedAvgM: server SGD with momentum on the pseudo-gradient `global - mean`.
///
/// `v = pg` the first time (no momentum yet), else `v = momentum * v + pg`; `next = global - lr * v`.
/// With `momentum == 0` there is no state and the step is plain server SGD.
pub(crate) fn fedavgm(
    global: &[f64],
    mean: &[f64],
    lr: f64,
    momentum: f64,
    velocity: Option<&[f64]>,
) -> Step {
    let pg = global.iter().zip(mean).map(|(g, a)| g - a);
    let pg: Vec<f64> = if momentum > 0.0 {
        match velocity {
            Some(v) => v.iter().zip(pg).map(|(v, p)| momentum * v + p).collect(),
            None => pg.collect(),
        }
    } else {
        pg.collect()
    };
    let next = global.iter().zip(&pg).map(|(g, p)| g - lr * p).collect();
    Step {
        next,
        first: (momentum > 0.0).then_some(pg),
        second: None,
    }
}

/// Which FedOpt rule to apply to the second moment.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Rule {
    /// `m = delta`, `v += delta^2`, learning rate `eta`.
    Adagrad,
    /// `v = beta_2 v + (1 - beta_2) delta^2`, bias-corrected learning rate.
    Adam { beta_1: f64, beta_2: f64 },
    /// `v -= (1 - beta_2) delta^2 sign(v - delta^2)`, learning rate `eta`.
    Yogi { beta_1: f64, beta_2: f64 },
}

/// A FedOpt server optimiser: its rule, server learning rate `eta` and adaptivity `tau`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FedOpt {
    pub rule: Rule,
    pub eta: f64,
    pub tau: f64,
}

impl FedOpt {
    /// One FedOpt step (Reddi et al., 2021, Algorithm 2) on `delta = mean - global`, with `m` and
    /// `v` starting at zeros when `None`; `next = global + lr * m / (sqrt(v) + tau)`.
    pub(crate) fn step(
        &self,
        round: u32,
        global: &[f64],
        mean: &[f64],
        m: Option<&[f64]>,
        v: Option<&[f64]>,
    ) -> Step {
        let FedOpt { rule, eta, tau } = *self;
        let n = global.len();
        let zeros = vec![0.0; n];
        let (m, v) = (m.unwrap_or(&zeros), v.unwrap_or(&zeros));
        let beta_1 = match rule {
            // Flower's FedAdagrad keeps an m_t with beta_1 = 0, i.e. m = delta.
            Rule::Adagrad => 0.0,
            Rule::Adam { beta_1, .. } | Rule::Yogi { beta_1, .. } => beta_1,
        };
        let lr = match rule {
            // Flower computes the bias correction with exponent `server_round + 1.0`, not Kingma & Ba's
            // `t`; we keep Flower's choice so the two agree number for number.
            Rule::Adam { beta_1, beta_2 } => {
                let t = f64::from(round) + 1.0;
                eta * (1.0 - beta_2.powf(t)).sqrt() / (1.0 - beta_1.powf(t))
            }
            Rule::Adagrad | Rule::Yogi { .. } => eta,
        };
        let mut next = Vec::with_capacity(n);
        let mut m_next = Vec::with_capacity(n);
        let mut v_next = Vec::with_capacity(n);
        // Zipped, not indexed: the caller has checked that all four have the model's length.
        for (((g, a), mp), vp) in global.iter().zip(mean).zip(m).zip(v) {
            let delta = a - g;
            let d2 = delta * delta;
            let mi = beta_1 * mp + (1.0 - beta_1) * delta;
            let vi = match rule {
                Rule::Adagrad => vp + d2,
                Rule::Adam { beta_2, .. } => beta_2 * vp + (1.0 - beta_2) * d2,
                Rule::Yogi { beta_2, .. } => vp - (1.0 - beta_2) * d2 * sign(vp - d2),
            };
            // v is never negative in exact arithmetic; max(0) keeps a rounding slip from becoming NaN.
            next.push(g + lr * mi / (vi.max(0.0).sqrt() + tau));
            m_next.push(mi);
            v_next.push(vi);
        }
        Step {
            next,
            first: Some(m_next),
            second: Some(v_next),
        }
    }
}

/// `numpy.sign`: 0 at 0 (Rust's `f64::signum` gives 1 for +0).
fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// SCAFFOLD's server step (Karimireddy et al., 2020, Algorithm 1, lines 16-17):
/// `next = global + eta_g * (mean - global)` and `c = c + (|S| / N) * mean(delta_c)`, where
/// `fraction = |S| / N` is already clamped to at most 1.
pub(crate) fn scaffold(
    global: &[f64],
    mean: &[f64],
    eta_g: f64,
    control: Option<&[f64]>,
    control_delta_mean: &[f64],
    fraction: f64,
) -> Step {
    let next = global
        .iter()
        .zip(mean)
        .map(|(g, a)| g + eta_g * (a - g))
        .collect();
    let c = match control {
        Some(c) => c
            .iter()
            .zip(control_delta_mean)
            .map(|(c, d)| c + fraction * d)
            .collect(),
        None => control_delta_mean.iter().map(|d| fraction * d).collect(),
    };
    Step {
        next,
        first: Some(c),
        second: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_close(got: &[f64], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len());
        for (g, e) in got.iter().zip(want) {
            assert!((g - e).abs() < tol, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn sign_is_numpy_sign() {
        assert_eq!(sign(0.0), 0.0);
        assert_eq!(sign(-0.0), 0.0);
        assert_eq!(sign(2.0), 1.0);
        assert_eq!(sign(-1e-300), -1.0);
    }

    /// Zero momentum keeps no state; with lr = 1 the step lands on the mean.
    #[test]
    fn fedavgm_without_momentum_is_server_sgd() {
        let s = fedavgm(&[1.0, 2.0], &[0.0, 4.0], 1.0, 0.0, Some(&[9.0, 9.0]));
        assert_close(&s.next, &[0.0, 4.0], 1e-12);
        assert!(s.first.is_none());
        // lr = 0.5: halfway, pg = (1, -2).
        let s = fedavgm(&[1.0, 2.0], &[0.0, 4.0], 0.5, 0.0, None);
        assert_close(&s.next, &[0.5, 3.0], 1e-12);
    }

    /// Yogi's sign rule versus Adam's average, from a non-zero v = 0.5 everywhere.
    #[test]
    fn yogi_second_moment_follows_the_sign_of_v_minus_delta_squared() {
        // delta = (1, 0.5, -2), delta^2 = (1, 0.25, 4), v - delta^2 = (-0.5, 0.25, -3.5).
        // Yogi: v = 0.5 - 0.01 * delta^2 * sign = (0.51, 0.4975, 0.54);
        // Adam would give 0.99 * 0.5 + 0.01 * delta^2 = (0.505, 0.4975, 0.535).
        let yogi = Rule::Yogi {
            beta_1: 0.9,
            beta_2: 0.99,
        };
        let opt = FedOpt {
            rule: yogi,
            eta: 0.01,
            tau: 1e-3,
        };
        let s = opt.step(1, &[0.0; 3], &[1.0, 0.5, -2.0], None, Some(&[0.5; 3]));
        assert_close(s.second.as_deref().unwrap(), &[0.51, 0.4975, 0.54], 1e-12);
        assert_close(s.first.as_deref().unwrap(), &[0.1, 0.05, -0.2], 1e-12);
    }

    /// SCAFFOLD without prior control starts from zeros.
    #[test]
    fn scaffold_step() {
        let s = scaffold(&[1.0], &[3.0], 0.5, None, &[4.0], 0.25);
        assert_close(&s.next, &[2.0], 1e-12);
        assert_close(s.first.as_deref().unwrap(), &[1.0], 1e-12);
    }
}
