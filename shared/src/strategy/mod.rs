//! Server-side aggregation strategies.
//!
//! A round of aggregation has two steps. [`Strategy::aggregator`] opens an [`Aggregator`] for the
//! round; the coordinator feeds it each validated client update as it arrives, then drops the update,
//! so no N copies of the model are held where the strategy allows streaming. [`Strategy::finish`]
//! turns the aggregate into the next global model (server optimisers such as FedAdam slot in there, S2).

use serde::{Deserialize, Serialize};

use crate::tensor::Weights;
use crate::{Error, Result};

/// Which strategy a job uses (`[strategy] name = "fedavg"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "name", rename_all = "lowercase", deny_unknown_fields)]
pub enum StrategySpec {
    /// Federated averaging, weighted by example counts (McMahan et al., 2017).
    #[default]
    FedAvg,
}

impl StrategySpec {
    /// All accepted names, for help texts and errors.
    pub const NAMES: &'static str = "fedavg";

    /// Parses a strategy name as given on the command line.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "fedavg" => Ok(StrategySpec::FedAvg),
            other => Err(Error::Unknown {
                what: "strategy",
                name: other.to_string(),
                expected: Self::NAMES.to_string(),
            }),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            StrategySpec::FedAvg => "fedavg",
        }
    }

    /// A fresh strategy with its initial state.
    pub fn build(&self) -> Box<dyn Strategy> {
        match self {
            StrategySpec::FedAvg => Box::new(FedAvg),
        }
    }
}

/// A server strategy: per-round aggregation plus whatever state it carries across rounds.
pub trait Strategy: Send + Sync + std::fmt::Debug {
    /// Opens this round's aggregator over updates shaped like `global`.
    fn aggregator(&self, global: &Weights) -> Box<dyn Aggregator>;

    /// The next global model from the previous one and this round's aggregate.
    fn finish(&mut self, global: &Weights, aggregate: Box<dyn Aggregator>) -> Result<Weights>;

    /// Serialisable state for checkpoints (moments, control variates); `null` when stateless.
    fn state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// Accumulates one round's client updates.
pub trait Aggregator: Send + Sync + std::fmt::Debug {
    /// Adds one client's weights with its example count. Fails, leaving the aggregate unchanged,
    /// when the layout differs from the global model's.
    fn add(&mut self, update: &Weights, num_examples: u64) -> Result<()>;

    /// Updates added so far.
    fn count(&self) -> usize;

    /// The aggregate; fails when nothing was added.
    fn result(&self) -> Result<Weights>;
}

/// FedAvg: the next global model is the example-weighted mean of the clients' weights.
#[derive(Debug, Clone, Copy, Default)]
pub struct FedAvg;

impl Strategy for FedAvg {
    fn aggregator(&self, global: &Weights) -> Box<dyn Aggregator> {
        Box::new(WeightedMean::new(global))
    }

    fn finish(&mut self, _global: &Weights, aggregate: Box<dyn Aggregator>) -> Result<Weights> {
        aggregate.result()
    }
}

/// A streaming example-weighted mean: one running sum in `f64` (so the order in which updates
/// arrive changes the result only below `f32` precision), never N copies of the model.
#[derive(Debug, Clone)]
pub struct WeightedMean {
    layout: Weights,
    sum: Vec<f64>,
    total_weight: f64,
    count: usize,
}

impl WeightedMean {
    pub fn new(layout: &Weights) -> Self {
        WeightedMean {
            layout: layout.zeros_like(),
            sum: vec![0.0; layout.num_params()],
            total_weight: 0.0,
            count: 0,
        }
    }
}

impl Aggregator for WeightedMean {
    fn add(&mut self, update: &Weights, num_examples: u64) -> Result<()> {
        self.layout.check_same_layout(update)?;
        if num_examples == 0 {
            return Err(Error::invalid("update", "reports 0 training examples"));
        }
        let w = num_examples as f64;
        for (s, v) in self.sum.iter_mut().zip(update.values()) {
            *s += w * f64::from(v);
        }
        self.total_weight += w;
        self.count += 1;
        Ok(())
    }

    fn count(&self) -> usize {
        self.count
    }

    fn result(&self) -> Result<Weights> {
        if self.count == 0 {
            return Err(Error::Data("no client updates to aggregate".into()));
        }
        let mut out = self.layout.clone();
        for (o, s) in out.values_mut().zip(&self.sum) {
            *o = (s / self.total_weight) as f32;
        }
        Ok(out)
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

    /// FedAvg equals the example-weighted mean computed by hand.
    #[test]
    fn fedavg_is_the_weighted_mean() {
        let global = w(&[0.0, 0.0]);
        let mut s = StrategySpec::FedAvg.build();
        let mut agg = s.aggregator(&global);
        agg.add(&w(&[1.0, 2.0]), 10).unwrap();
        agg.add(&w(&[4.0, -1.0]), 30).unwrap();
        agg.add(&w(&[0.0, 0.0]), 60).unwrap();
        let out = s.finish(&global, agg).unwrap();
        // (10*1 + 30*4 + 0)/100 = 1.3 ; (10*2 - 30)/100 = -0.1
        let v: Vec<f32> = out.values().collect();
        assert!(
            (v[0] - 1.3).abs() < 1e-6 && (v[1] + 0.1).abs() < 1e-6,
            "{v:?}"
        );
    }

    #[test]
    fn a_misshapen_update_is_refused_and_leaves_the_sum_alone() {
        let global = w(&[0.0, 0.0]);
        let mut agg = WeightedMean::new(&global);
        agg.add(&w(&[2.0, 2.0]), 1).unwrap();
        assert!(agg.add(&w(&[1.0, 1.0, 1.0]), 5).is_err());
        assert!(agg.add(&w(&[1.0, 1.0]), 0).is_err());
        assert_eq!(agg.count(), 1);
        assert_eq!(
            agg.result().unwrap().values().collect::<Vec<_>>(),
            vec![2.0, 2.0]
        );
    }

    #[test]
    fn empty_round_is_an_error() {
        assert!(WeightedMean::new(&w(&[0.0])).result().is_err());
    }

    #[test]
    fn names_round_trip() {
        let s = StrategySpec::from_name("fedavg").unwrap();
        assert_eq!(s.name(), "fedavg");
        assert!(StrategySpec::from_name("fedsgd")
            .unwrap_err()
            .to_string()
            .contains("fedavg"));
    }
}
