//! Server-side aggregation strategies.
//!
//! Principal types:
//! - [`StrategySpec`]: which strategy a job uses and its hyperparameters (`[strategy] name = "fedadam"`,
//!   Flower's names and defaults), validated by [`StrategySpec::check`].
//! - [`Strategy`]: a spec plus its cross-round [`StrategyState`] (server momentum, adaptive moments,
//!   SCAFFOLD's control variate); serialisable so it can be checkpointed.
//! - [`Aggregator`]: one round's accumulated client updates, either a streaming [`WeightedMean`]
//!   (exact fixed-point sums: the same bits in any arrival order, one `i64` per parameter) or, for
//!   the robust rules that must compare clients, a [`Buffer`] of all updates.
//!
//! A round has two steps. [`Strategy::aggregator`] opens an [`Aggregator`] for the round; the
//! coordinator feeds it each validated client update as it arrives ([`Aggregator::add`]), then drops
//! the update, so no N copies of the model are held where the strategy allows streaming.
//! [`Strategy::finish`] turns the aggregate into the next global model and advances the state.
//!
//! # Strategies and papers
//! - `fedavg`: example-weighted mean (McMahan et al., 2017, "Communication-Efficient Learning of
//!   Deep Networks from Decentralized Data").
//! - `fedavgm`: server momentum on the pseudo-gradient (Hsu et al., 2019, "Measuring the Effects of
//!   Non-Identical Data Distribution for Federated Visual Classification").
//! - `fedprox`: FedAvg on the server; clients add `mu/2 ||w - w_global||^2` to their loss (Li et al.,
//!   2020, "Federated Optimization in Heterogeneous Networks").
//! - `fedadagrad`, `fedadam`, `fedyogi`: adaptive server optimisers (Reddi et al., 2021, "Adaptive
//!   Federated Optimization").
//! - `fedmedian`, `fedtrimmedavg`: coordinate-wise median and trimmed mean (Yin et al., 2018,
//!   "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates").
//! - `krum`, `multikrum`: (Blanchard et al., 2017, "Machine Learning with Adversaries: Byzantine
//!   Tolerant Gradient Descent").
//! - `scaffold`: control variates against client drift, option II (Karimireddy et al., 2020,
//!   "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning").
//!
//! # Layout
//! - `mod.rs`: the spec, the strategy and its state, the aggregator enum
//! - `mean.rs`: the streaming weighted mean
//! - `robust.rs`: the buffer, median, trimmed mean, Krum
//! - `opt.rs`: FedAvgM, FedAdagrad/FedAdam/FedYogi and SCAFFOLD server steps
//! - `buffered.rs`: buffered asynchronous aggregation (FedBuff): staleness weights and rebasing
//!   a stale update onto the current model
//!
//! # Example
//! ```
//! use shoal_shared::strategy::{CountBudget, StrategySpec};
//! use shoal_shared::tensor::{Tensor, Weights};
//!
//! let global = Weights::new(vec![Tensor::new("w", vec![2], vec![0.0, 0.0]).unwrap()]);
//! let mut strategy = StrategySpec::from_name("fedavg").unwrap().build();
//! // The round's counts: at most 4 in all, at most 3 for one client (what they announced).
//! let budget = CountBudget { total: 4, largest: 3 };
//! let mut agg = strategy.aggregator(&global, budget);
//! agg.add(&Weights::new(vec![Tensor::new("w", vec![2], vec![1.0, 2.0]).unwrap()]), 1, None).unwrap();
//! agg.add(&Weights::new(vec![Tensor::new("w", vec![2], vec![3.0, 2.0]).unwrap()]), 3, None).unwrap();
//! let next = strategy.finish(1, &global, agg, 2).unwrap();
//! assert_eq!(next.values().collect::<Vec<_>>(), vec![2.5, 2.0]);
//! ```

pub mod buffered;
mod mean;
mod opt;
mod robust;

pub use mean::{CountBudget, WeightedMean};
pub use robust::Buffer;

use serde::{Deserialize, Serialize};

use crate::tensor::Weights;
use crate::{Error, Result};

// serde defaults: Flower's defaults for each hyperparameter.
fn one() -> f64 {
    1.0
}
fn zero() -> f64 {
    0.0
}
fn proximal_mu() -> f64 {
    0.01
}
fn eta_adaptive() -> f64 {
    0.1
}
fn eta_yogi() -> f64 {
    0.01
}
fn beta_1() -> f64 {
    0.9
}
fn beta_2() -> f64 {
    0.99
}
fn tau_adaptive() -> f64 {
    1e-9
}
fn tau_yogi() -> f64 {
    1e-3
}
fn trim_beta() -> f64 {
    0.2
}

/// Deserialises a field-less variant, refusing any field. serde's internally tagged unit variants
/// ignore extra fields despite `deny_unknown_fields`, so `name = "fedavg"` with a stray
/// `server_momentum = 0.9` would otherwise be silently accepted.
fn no_fields<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<(), D::Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NoFields {}
    NoFields::deserialize(deserializer).map(|NoFields {}| ())
}

/// Which strategy a job uses: `[strategy] name = "fedadam"` plus its hyperparameters, with Flower's
/// names and defaults, so `name = "fedadam"` alone is a complete spec. Unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "name", rename_all = "lowercase", deny_unknown_fields)]
pub enum StrategySpec {
    /// Federated averaging, weighted by example counts (McMahan et al., 2017).
    #[default]
    #[serde(deserialize_with = "no_fields")]
    FedAvg,
    /// FedAvg with server momentum (Hsu et al., 2019).
    FedAvgM {
        /// Server learning rate on the pseudo-gradient `global - fedavg` (1.0).
        #[serde(default = "one")]
        server_learning_rate: f64,
        /// Momentum in `[0, 1)`; 0 disables it (0.0).
        #[serde(default = "zero")]
        server_momentum: f64,
    },
    /// FedProx (Li et al., 2020): FedAvg on the server; clients add `mu/2 ||w - w_global||^2`.
    FedProx {
        /// The proximal term's weight `mu >= 0` (0.01).
        #[serde(default = "proximal_mu")]
        proximal_mu: f64,
    },
    /// FedAdagrad (Reddi et al., 2021).
    FedAdagrad {
        /// Server learning rate (0.1).
        #[serde(default = "eta_adaptive")]
        eta: f64,
        /// Client learning rate; overrides the local SGD rate when set (unset).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        eta_l: Option<f64>,
        /// Degree of adaptivity, added to `sqrt(v)` (1e-9).
        #[serde(default = "tau_adaptive")]
        tau: f64,
    },
    /// FedAdam (Reddi et al., 2021).
    FedAdam {
        /// Server learning rate (0.1).
        #[serde(default = "eta_adaptive")]
        eta: f64,
        /// Client learning rate; overrides the local SGD rate when set (unset).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        eta_l: Option<f64>,
        /// First-moment decay (0.9).
        #[serde(default = "beta_1")]
        beta_1: f64,
        /// Second-moment decay (0.99).
        #[serde(default = "beta_2")]
        beta_2: f64,
        /// Degree of adaptivity (1e-9).
        #[serde(default = "tau_adaptive")]
        tau: f64,
    },
    /// FedYogi (Reddi et al., 2021).
    FedYogi {
        /// Server learning rate (0.01).
        #[serde(default = "eta_yogi")]
        eta: f64,
        /// Client learning rate; overrides the local SGD rate when set (unset).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        eta_l: Option<f64>,
        /// First-moment decay (0.9).
        #[serde(default = "beta_1")]
        beta_1: f64,
        /// Second-moment decay (0.99).
        #[serde(default = "beta_2")]
        beta_2: f64,
        /// Degree of adaptivity (1e-3).
        #[serde(default = "tau_yogi")]
        tau: f64,
    },
    /// Coordinate-wise median, unweighted (Yin et al., 2018).
    #[serde(deserialize_with = "no_fields")]
    FedMedian,
    /// Coordinate-wise trimmed mean, unweighted (Yin et al., 2018).
    FedTrimmedAvg {
        /// Fraction cut from each end, in `[0, 0.5)` (0.2).
        #[serde(default = "trim_beta")]
        beta: f64,
    },
    /// Krum (Blanchard et al., 2017): the update closest to its neighbours.
    Krum {
        /// Byzantine clients tolerated, `f` (0).
        #[serde(default)]
        num_malicious_clients: usize,
        /// 0: return the single best update; `m > 0`: average the `m` best (0).
        #[serde(default)]
        num_clients_to_keep: usize,
    },
    /// Multi-Krum (Blanchard et al., 2017): the weighted mean of the best-scoring updates.
    MultiKrum {
        /// Byzantine clients tolerated, `f` (0).
        #[serde(default)]
        num_malicious_clients: usize,
        /// Updates averaged, `m`; 0 means `n - f` (at least 1) (0).
        #[serde(default)]
        num_clients_to_keep: usize,
    },
    /// SCAFFOLD (Karimireddy et al., 2020): control variates correct client drift.
    Scaffold {
        /// Global step size `eta_g` on `fedavg - global` (1.0).
        #[serde(default = "one")]
        server_learning_rate: f64,
    },
}

impl StrategySpec {
    /// All accepted names, for help texts and errors.
    pub const NAMES: &'static str = "fedavg, fedavgm, fedprox, fedadagrad, fedadam, fedyogi, fedmedian, fedtrimmedavg, krum, multikrum, scaffold";

    /// The strategy called `name`, with default hyperparameters.
    pub fn from_name(name: &str) -> Result<Self> {
        // Going through serde keeps one set of defaults: those a `[strategy]` table gets.
        serde_json::from_value(serde_json::json!({ "name": name })).map_err(|_| Error::Unknown {
            what: "strategy",
            name: name.to_string(),
            expected: Self::NAMES.to_string(),
        })
    }

    /// The name used in specs and on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            StrategySpec::FedAvg => "fedavg",
            StrategySpec::FedAvgM { .. } => "fedavgm",
            StrategySpec::FedProx { .. } => "fedprox",
            StrategySpec::FedAdagrad { .. } => "fedadagrad",
            StrategySpec::FedAdam { .. } => "fedadam",
            StrategySpec::FedYogi { .. } => "fedyogi",
            StrategySpec::FedMedian => "fedmedian",
            StrategySpec::FedTrimmedAvg { .. } => "fedtrimmedavg",
            StrategySpec::Krum { .. } => "krum",
            StrategySpec::MultiKrum { .. } => "multikrum",
            StrategySpec::Scaffold { .. } => "scaffold",
        }
    }

    /// Checks every hyperparameter; the error names the field (`strategy.<field>`) and its value.
    pub fn check(&self) -> Result<()> {
        match *self {
            StrategySpec::FedAvg
            | StrategySpec::FedMedian
            | StrategySpec::Krum { .. }
            | StrategySpec::MultiKrum { .. } => Ok(()),
            StrategySpec::FedAvgM {
                server_learning_rate,
                server_momentum,
            } => {
                positive("server_learning_rate", server_learning_rate)?;
                in_range("server_momentum", server_momentum, 1.0)
            }
            StrategySpec::FedProx { proximal_mu } => {
                if proximal_mu >= 0.0 && proximal_mu.is_finite() {
                    Ok(())
                } else {
                    Err(bad("proximal_mu", proximal_mu, "a finite number >= 0"))
                }
            }
            StrategySpec::FedAdagrad { eta, eta_l, tau } => {
                positive("eta", eta)?;
                eta_l.map_or(Ok(()), |l| positive("eta_l", l))?;
                positive("tau", tau)
            }
            StrategySpec::FedAdam {
                eta,
                eta_l,
                beta_1,
                beta_2,
                tau,
            }
            | StrategySpec::FedYogi {
                eta,
                eta_l,
                beta_1,
                beta_2,
                tau,
            } => {
                positive("eta", eta)?;
                eta_l.map_or(Ok(()), |l| positive("eta_l", l))?;
                in_range("beta_1", beta_1, 1.0)?;
                in_range("beta_2", beta_2, 1.0)?;
                positive("tau", tau)
            }
            StrategySpec::FedTrimmedAvg { beta } => in_range("beta", beta, 0.5),
            StrategySpec::Scaffold {
                server_learning_rate,
            } => positive("server_learning_rate", server_learning_rate),
        }
    }

    /// FedProx's `mu`, for the clients' proximal term; 0 for every other strategy.
    pub fn proximal_mu(&self) -> f64 {
        match self {
            StrategySpec::FedProx { proximal_mu } => *proximal_mu,
            _ => 0.0,
        }
    }

    /// The FedOpt family's client learning rate `eta_l`, when set; it overrides the local SGD rate.
    pub fn local_lr(&self) -> Option<f64> {
        match self {
            StrategySpec::FedAdagrad { eta_l, .. }
            | StrategySpec::FedAdam { eta_l, .. }
            | StrategySpec::FedYogi { eta_l, .. } => *eta_l,
            _ => None,
        }
    }

    /// Whether clients receive the server control variate and return a control delta (SCAFFOLD).
    pub fn uses_control_variates(&self) -> bool {
        matches!(self, StrategySpec::Scaffold { .. })
    }

    /// Whether the strategy needs all of a round's updates at once rather than a running mean.
    fn buffers(&self) -> bool {
        matches!(
            self,
            StrategySpec::FedMedian
                | StrategySpec::FedTrimmedAvg { .. }
                | StrategySpec::Krum { .. }
                | StrategySpec::MultiKrum { .. }
        )
    }

    /// A fresh strategy with empty state.
    pub fn build(&self) -> Strategy {
        Strategy {
            spec: self.clone(),
            state: StrategyState::default(),
        }
    }
}

fn bad(field: &str, value: f64, must: &str) -> Error {
    Error::invalid(
        format!("strategy.{field}"),
        format!("{value} (must be {must})"),
    )
}

fn positive(field: &str, value: f64) -> Result<()> {
    if value > 0.0 && value.is_finite() {
        Ok(())
    } else {
        Err(bad(field, value, "a finite number > 0"))
    }
}

/// `0 <= value < upper` (false for NaN).
fn in_range(field: &str, value: f64, upper: f64) -> Result<()> {
    if (0.0..upper).contains(&value) {
        Ok(())
    } else {
        Err(bad(field, value, &format!("in [0, {upper})")))
    }
}

/// A strategy with its cross-round state. Serialisable, so it can be checkpointed every round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Strategy {
    pub spec: StrategySpec,
    pub state: StrategyState,
}

/// What a strategy carries from round to round; each field is `None` until its strategy first
/// sets it, and shaped like the global model after that.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StrategyState {
    /// FedAvgM's momentum vector `v`.
    pub momentum: Option<Weights>,
    /// FedOpt's first moment `m`.
    pub m: Option<Weights>,
    /// FedOpt's second moment `v`.
    pub v: Option<Weights>,
    /// SCAFFOLD's server control variate `c`.
    pub control: Option<Weights>,
}

impl Strategy {
    /// Opens this round's aggregator over updates shaped like `global` whose example counts stay
    /// within `budget`: a streaming example-weighted mean (exact fixed-point sums, never N
    /// copies of the model) for the mean-based strategies (SCAFFOLD also sums control-variate
    /// deltas, unweighted), a buffer of all updates for fedmedian, fedtrimmedavg, krum and
    /// multikrum.
    pub fn aggregator(&self, global: &Weights, budget: CountBudget) -> Aggregator {
        if self.spec.buffers() {
            Aggregator::Buffer(Buffer::new(global))
        } else {
            let control = self.server_control(global);
            Aggregator::Mean(WeightedMean::new(global, budget, control.as_ref()))
        }
    }

    /// Whether this strategy's aggregate streams ([`WeightedMean`]) rather than holding every
    /// update of the round ([`Buffer`]).
    pub fn streams(&self) -> bool {
        !self.spec.buffers()
    }

    /// SCAFFOLD's server control variate `c`, to send to clients with each Fit task (zeros like
    /// `global` before the first round); `None` for other strategies.
    pub fn server_control(&self, global: &Weights) -> Option<Weights> {
        if !self.spec.uses_control_variates() {
            return None;
        }
        Some(match &self.state.control {
            Some(c) if global.check_same_layout(c).is_ok() => c.clone(),
            // A control of another layout is refused by `finish`; clients get zeros meanwhile.
            _ => global.zeros_like(),
        })
    }

    /// The next global model. `round` is 1-based; `total_clients` is the number of clients available
    /// this round (N in SCAFFOLD's control update).
    ///
    /// Fails, leaving the state unchanged, when the spec does not pass [`StrategySpec::check`], the
    /// aggregator holds no updates or is of the wrong kind or layout, the saved state does not match
    /// `global`, SCAFFOLD gets `total_clients == 0`, or the result is not finite.
    pub fn finish(
        &mut self,
        round: u32,
        global: &Weights,
        agg: Aggregator,
        total_clients: usize,
    ) -> Result<Weights> {
        self.spec.check()?;
        agg.check_layout(global)?;
        if agg.count() == 0 {
            return Err(Error::Data("no client updates to aggregate".into()));
        }
        if let (StrategySpec::FedAvg | StrategySpec::FedProx { .. }, Aggregator::Mean(m)) =
            (&self.spec, &agg)
        {
            // The mean is the next model: straight from the sums, no flat f64 copies.
            let next = m.mean_weights()?;
            next.check_finite()?;
            return Ok(next);
        }
        let g: Vec<f64> = global.values().map(f64::from).collect();
        let (next, state) = match self.spec {
            StrategySpec::FedAvg | StrategySpec::FedProx { .. } => (agg.mean()?, None),
            StrategySpec::FedAvgM {
                server_learning_rate,
                server_momentum,
            } => {
                let velocity = saved(&self.state.momentum, global, "momentum")?;
                let s = opt::fedavgm(
                    &g,
                    &agg.mean()?,
                    server_learning_rate,
                    server_momentum,
                    velocity.as_deref(),
                );
                let state = StrategyState {
                    momentum: s.first.map(|v| to_weights(global, &v)),
                    ..StrategyState::default()
                };
                (s.next, Some(state))
            }
            StrategySpec::FedAdagrad { eta, tau, .. } => {
                let rule = opt::Rule::Adagrad;
                self.fedopt(opt::FedOpt { rule, eta, tau }, round, global, &g, &agg)?
            }
            StrategySpec::FedAdam {
                eta,
                beta_1,
                beta_2,
                tau,
                ..
            } => {
                let rule = opt::Rule::Adam { beta_1, beta_2 };
                self.fedopt(opt::FedOpt { rule, eta, tau }, round, global, &g, &agg)?
            }
            StrategySpec::FedYogi {
                eta,
                beta_1,
                beta_2,
                tau,
                ..
            } => {
                let rule = opt::Rule::Yogi { beta_1, beta_2 };
                self.fedopt(opt::FedOpt { rule, eta, tau }, round, global, &g, &agg)?
            }
            StrategySpec::FedMedian => (agg.buffer(&self.spec)?.median()?, None),
            StrategySpec::FedTrimmedAvg { beta } => {
                (agg.buffer(&self.spec)?.trimmed_mean(beta)?, None)
            }
            StrategySpec::Krum {
                num_malicious_clients,
                num_clients_to_keep,
            } => (
                agg.buffer(&self.spec)?
                    .krum(num_malicious_clients, num_clients_to_keep)?,
                None,
            ),
            StrategySpec::MultiKrum {
                num_malicious_clients,
                num_clients_to_keep,
            } => {
                let buffer = agg.buffer(&self.spec)?;
                let keep = match num_clients_to_keep {
                    0 => buffer.count().saturating_sub(num_malicious_clients).max(1),
                    m => m,
                };
                (buffer.krum(num_malicious_clients, keep)?, None)
            }
            StrategySpec::Scaffold {
                server_learning_rate,
            } => {
                if total_clients == 0 {
                    return Err(Error::invalid(
                        "total_clients",
                        "0 (SCAFFOLD scales its control update by |S| / N and needs N >= 1)",
                    ));
                }
                let control_delta = agg.control_mean().ok_or_else(|| {
                    Error::invalid(
                        "aggregator",
                        "SCAFFOLD needs the control-variate deltas; open it with Strategy::aggregator",
                    )
                })?;
                let control = saved(&self.state.control, global, "control")?;
                // |S| / N, clamped: a client that joined after N was counted must not overshoot c.
                let fraction = (agg.count() as f64 / total_clients as f64).min(1.0);
                let s = opt::scaffold(
                    &g,
                    &agg.mean()?,
                    server_learning_rate,
                    control.as_deref(),
                    &control_delta,
                    fraction,
                );
                let state = StrategyState {
                    control: s.first.map(|c| to_weights(global, &c)),
                    ..StrategyState::default()
                };
                (s.next, Some(state))
            }
        };
        let next = to_weights(global, &next);
        // Commit nothing from a step that diverged.
        next.check_finite()?;
        if let Some(state) = state {
            state.check_finite()?;
            self.state = state;
        }
        Ok(next)
    }

    /// One FedOpt step: the next model (flat) and the new `m` and `v`.
    fn fedopt(
        &self,
        optimiser: opt::FedOpt,
        round: u32,
        global: &Weights,
        g: &[f64],
        agg: &Aggregator,
    ) -> Result<(Vec<f64>, Option<StrategyState>)> {
        let m = saved(&self.state.m, global, "m")?;
        let v = saved(&self.state.v, global, "v")?;
        let s = optimiser.step(round, g, &agg.mean()?, m.as_deref(), v.as_deref());
        let state = StrategyState {
            m: s.first.map(|m| to_weights(global, &m)),
            v: s.second.map(|v| to_weights(global, &v)),
            ..StrategyState::default()
        };
        Ok((s.next, Some(state)))
    }
}

impl StrategyState {
    fn check_finite(&self) -> Result<()> {
        for w in [&self.momentum, &self.m, &self.v, &self.control]
            .into_iter()
            .flatten()
        {
            w.check_finite()?;
        }
        Ok(())
    }
}

/// A saved state vector as flat `f64`, after checking it still matches the model (a checkpoint of
/// another model must fail here, not silently misalign).
fn saved(slot: &Option<Weights>, global: &Weights, what: &str) -> Result<Option<Vec<f64>>> {
    let Some(w) = slot else { return Ok(None) };
    global.check_same_layout(w).map_err(|e| {
        Error::invalid(
            format!("strategy state `{what}`"),
            format!("does not match the global model: {e}"),
        )
    })?;
    Ok(Some(w.values().map(f64::from).collect()))
}

/// `values` (flat, layout order) written into a copy of `layout`, rounded to `f32`.
fn to_weights(layout: &Weights, values: &[f64]) -> Weights {
    let mut out = layout.clone();
    for (o, v) in out.values_mut().zip(values) {
        *o = *v as f32;
    }
    out
}

/// One round's accumulated client updates.
#[derive(Debug)]
pub enum Aggregator {
    /// A streaming example-weighted mean (and, for SCAFFOLD, the control deltas' sum).
    Mean(WeightedMean),
    /// Every update of the round, for the rules that compare clients.
    Buffer(Buffer),
}

impl Aggregator {
    /// Adds one client's weights and, for SCAFFOLD, its control-variate delta (ignored by other
    /// strategies). Fails, leaving the state unchanged, when a layout differs from the global
    /// model's, `num_examples == 0`, or SCAFFOLD gets no control delta.
    pub fn add(
        &mut self,
        update: &Weights,
        num_examples: u64,
        control_delta: Option<&Weights>,
    ) -> Result<()> {
        match self {
            Aggregator::Mean(m) => m.add(update, num_examples, control_delta),
            Aggregator::Buffer(b) => b.add(update, num_examples),
        }
    }

    /// Takes back an update added before with the same values and count, exactly (the
    /// streaming mean only: a buffer is never corrected, it is filled once at close).
    pub fn remove(
        &mut self,
        update: &Weights,
        num_examples: u64,
        control_delta: Option<&Weights>,
    ) -> Result<()> {
        match self {
            Aggregator::Mean(m) => m.remove(update, num_examples, control_delta),
            Aggregator::Buffer(_) => Err(Error::invalid(
                "aggregator",
                "a buffer of updates takes none back",
            )),
        }
    }

    /// Whether an update counting `num_examples` can be added exactly (a buffer takes any).
    pub fn admits(&self, num_examples: u64) -> bool {
        match self {
            Aggregator::Mean(m) => m.admits(num_examples),
            Aggregator::Buffer(_) => true,
        }
    }

    /// Updates added so far.
    pub fn count(&self) -> usize {
        match self {
            Aggregator::Mean(m) => m.count(),
            Aggregator::Buffer(b) => b.count(),
        }
    }

    fn check_layout(&self, global: &Weights) -> Result<()> {
        match self {
            Aggregator::Mean(m) => m.check_layout(global),
            Aggregator::Buffer(b) => b.layout().check(global),
        }
    }

    /// The example-weighted mean (FedAvg), flat, from either kind.
    fn mean(&self) -> Result<Vec<f64>> {
        match self {
            Aggregator::Mean(m) => m.mean(),
            Aggregator::Buffer(b) => b.weighted_mean(None),
        }
    }

    fn control_mean(&self) -> Option<Vec<f64>> {
        match self {
            Aggregator::Mean(m) => m.control_mean(),
            Aggregator::Buffer(_) => None,
        }
    }

    /// The buffer the robust rules need; a running mean cannot give a median.
    fn buffer(&self, spec: &StrategySpec) -> Result<&Buffer> {
        match self {
            Aggregator::Buffer(b) => Ok(b),
            Aggregator::Mean(_) => Err(Error::invalid(
                "aggregator",
                format!(
                    "{} needs every update, not a running mean; open it with Strategy::aggregator",
                    spec.name()
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests;
