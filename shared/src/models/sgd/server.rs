//! The server half of a weights model (logreg, mlp, the diffusion denoiser): one training phase
//! per round whose updates a [`Strategy`] aggregates into the next global model.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Model;
use crate::models::phase::{
    capped_count, check_count, check_loss, checkpoint_body, lower_median, restore_error, Ask,
    Baseline, BaselineSettings, DecodeBounds, Evaluator, Influence, OrderedMean, Payload,
    PhaseTally, Rejection, Reply, Request, RoundPlan, RoundResult, ServerHalf, Step,
};
use crate::strategy::Strategy;
use crate::tensor::Weights;
use crate::{Error, Result};

/// What happens to an update farther from the global model than `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormBound {
    /// Bound on an update's L2 distance from the global model it started from.
    pub max: f64,
    /// Scale the update down to the bound (true) or refuse it.
    pub clip: bool,
}

/// A weights model, its global weights and the strategy that aggregates them.
#[derive(Debug)]
pub struct SgdServer {
    pub model: Arc<dyn Model>,
    /// Shared with the tasks and scorers made from it; replaced, never mutated, each round.
    pub weights: Arc<Weights>,
    pub strategy: Strategy,
    bound: Option<NormBound>,
    influence: Influence,
    plan: Option<RoundPlan>,
    /// Valid updates of the open round. They enter the aggregate in client-name order once the
    /// phase is over: a seeded job then gives bit-identical models whatever order updates arrive
    /// in (and the influence limits need the round's medians).
    updates: Vec<Update>,
    loss: OrderedMean,
}

/// One accepted update, kept until the phase closes.
#[derive(Debug)]
struct Update {
    client: String,
    weights: Weights,
    examples: u64,
    /// L2 distance from the global model (after the fixed bound's clipping).
    distance: f64,
    control: Option<Weights>,
}

/// What a weights model's checkpoint holds: `{"kind": "params", "weights": .., "strategy": ..}`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum SgdCheckpoint {
    Params {
        weights: Weights,
        strategy: Strategy,
    },
}

impl SgdServer {
    pub fn new(
        model: Arc<dyn Model>,
        weights: Weights,
        strategy: Strategy,
        bound: Option<NormBound>,
        influence: Influence,
    ) -> Self {
        SgdServer {
            model,
            weights: Arc::new(weights),
            strategy,
            bound,
            influence,
            plan: None,
            updates: Vec::new(),
            loss: OrderedMean::default(),
        }
    }
}

impl SgdServer {
    /// Applies the job's [`Influence`] limits to the round's updates (in client-name order) and
    /// returns the refused ones with why. An update farther from the global model than
    /// `refuse_norm` times the round's median distance is refused; one farther than
    /// `adaptive_norm` times it is scaled back to that distance; each example count is cut to
    /// `weight_cap` times the round's median count (the train loss is weighted the same way).
    /// The medians are over the updates accepted so far, so one client cannot move them far.
    fn limit_influence(
        &mut self,
        round: u32,
        updates: &mut Vec<Update>,
    ) -> Result<Vec<(String, String)>> {
        let distances: Vec<f64> = updates.iter().map(|u| u.distance).collect();
        let median = lower_median(&distances).unwrap_or(0.0);
        let mut refused = Vec::new();
        if let Some(times) = self.influence.refuse_norm {
            updates.retain(|u| {
                if u.distance <= times * median {
                    return true;
                }
                let why = Rejection::Far {
                    distance: u.distance,
                    times,
                    median,
                };
                refused.push((u.client.clone(), why.to_string()));
                false
            });
            self.loss
                .retain(|client| !refused.iter().any(|(c, _)| c == client));
        }
        if let Some(limit) = self.influence.adaptive_norm.map(|k| k * median) {
            for u in updates.iter_mut().filter(|u| u.distance > limit) {
                tracing::info!(round, client = %u.client, distance = u.distance, limit,
                    "update scaled back (updates.adaptive_norm)");
                u.weights.clip_toward(&self.weights, limit)?;
                u.distance = limit;
            }
        }
        let counts: Vec<f64> = updates.iter().map(|u| u.examples as f64).collect();
        let weight_limit = self.influence.weight_limit(&counts);
        for u in updates.iter_mut() {
            let capped = capped_count(u.examples, weight_limit);
            if capped < u.examples {
                tracing::info!(round, client = %u.client, reported = u.examples, counted = capped,
                    "example count capped (updates.weight_cap)");
                u.examples = capped;
            }
        }
        self.loss.cap_weights(weight_limit);
        Ok(refused)
    }
}

impl ServerHalf for SgdServer {
    /// The round's one phase: every selected client trains from the global weights.
    fn begin_round(&mut self, plan: RoundPlan) -> Result<Step> {
        self.updates.clear();
        self.loss = OrderedMean::default();
        let ask = Ask {
            round: plan.round,
            clients: plan.selected.clone(),
            request: Request::Fit {
                control: self.strategy.server_control(&self.weights),
            },
            payload: Payload::Weights(Arc::clone(&self.weights)),
            quorum: plan.quorum,
            target: plan.target,
        };
        self.plan = Some(plan);
        Ok(Step::Ask(ask))
    }

    fn decode_bounds(&self) -> DecodeBounds {
        DecodeBounds {
            max_elements: Some(self.weights.num_params()),
            control: self.strategy.spec.uses_control_variates(),
        }
    }

    /// Checks one update against the global model and the job's bound; keeps it for the
    /// aggregate.
    fn accept(
        &mut self,
        client: &str,
        reply: Reply,
        announced: Option<u64>,
    ) -> Result<(), Rejection> {
        let Reply::Fit(fit) = reply else {
            return Err(Rejection::WrongKind("a fit result"));
        };
        let mut w = fit
            .parameters
            .ok_or(Rejection::Missing("fit result without parameters"))?;
        let current = &self.weights;
        current.check_same_layout(&w).map_err(Rejection::invalid)?;
        w.check_finite().map_err(Rejection::invalid)?;
        let distance = match self.bound {
            Some(NormBound { max, clip }) => {
                let norm = if clip {
                    w.clip_toward(current, max)
                } else {
                    w.distance(current)
                }
                .map_err(Rejection::invalid)?;
                if norm > max && !clip {
                    return Err(Rejection::Norm { norm, max });
                }
                if norm > max {
                    tracing::debug!(client, norm, max, "update clipped to the norm bound");
                }
                norm.min(max)
            }
            None if self.influence.adaptive_norm.is_some()
                || self.influence.refuse_norm.is_some() =>
            {
                w.distance(current).map_err(Rejection::invalid)?
            }
            None => 0.0,
        };
        check_count(fit.num_examples, announced, "train")?;
        check_loss(fit.train_loss)?;
        let control_delta = match (
            fit.control_delta,
            self.strategy.spec.uses_control_variates(),
        ) {
            (Some(c), true) => {
                let part = "control_delta: ";
                current
                    .check_same_layout(&c)
                    .map_err(|e| Rejection::invalid_in(part, e))?;
                c.check_finite()
                    .map_err(|e| Rejection::invalid_in(part, e))?;
                Some(c)
            }
            (None, true) => {
                return Err(Rejection::Missing("SCAFFOLD update without control_delta"))
            }
            (_, false) => None,
        };
        self.loss
            .push(client, fit.train_loss, fit.num_examples as f64);
        self.updates.push(Update {
            client: client.to_string(),
            weights: w,
            examples: fit.num_examples,
            distance,
            control: control_delta,
        });
        tracing::debug!(client, examples = fit.num_examples, "update accepted");
        Ok(())
    }

    /// With a quorum of updates, the strategy makes the next global model.
    fn close(&mut self, tally: PhaseTally) -> Result<Step> {
        let plan = RoundPlan::of_open_round(&mut self.plan)?;
        let mut updates = std::mem::take(&mut self.updates);
        if let Some(short) = tally.short_of(plan.quorum) {
            return Ok(short);
        }
        updates.sort_by(|a, b| a.client.cmp(&b.client));
        let refused = self.limit_influence(plan.round, &mut updates)?;
        let accepted = updates.len();
        if accepted < plan.quorum.max(1) {
            return Ok(Step::Done(RoundResult {
                accepted,
                train_loss: f64::NAN,
                refused,
            }));
        }
        let mut agg = self.strategy.aggregator(&self.weights);
        for u in &updates {
            agg.add(&u.weights, u.examples, u.control.as_ref())?;
        }
        drop(updates);
        match self
            .strategy
            .finish(plan.round, &self.weights, agg, plan.n_available)
        {
            Ok(next) => self.weights = Arc::new(next),
            Err(Error::NonFinite(what)) => {
                return Err(Error::Data(format!(
                "round {}: the aggregated model is not finite ({what}); lower the learning rates",
                plan.round
            )))
            }
            Err(e) => return Err(e),
        }
        Ok(Step::Done(RoundResult {
            accepted,
            train_loss: self.loss.mean(),
            refused,
        }))
    }

    fn payload(&self) -> Payload {
        Payload::Weights(Arc::clone(&self.weights))
    }

    fn evaluator(&self) -> Option<Evaluator> {
        if !self.model.runs_here() {
            return None;
        }
        let (model, weights) = (self.model.clone(), Arc::clone(&self.weights));
        Some(Box::new(move |data| {
            super::evaluate(model.as_ref(), &weights, data)
        }))
    }

    fn classifies(&self) -> bool {
        self.model.classifies()
    }

    fn trains_from_global(&self) -> bool {
        true
    }

    fn size(&self) -> usize {
        self.weights.num_params()
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "weights": *self.weights })
    }

    fn checkpoint(&self) -> Result<String> {
        let c = SgdCheckpoint::Params {
            weights: Weights::clone(&self.weights),
            strategy: self.strategy.clone(),
        };
        serde_json::to_string(&c)
            .map_err(|e| Error::Data(format!("cannot encode a checkpoint: {e}")))
    }

    /// Puts back a checkpoint's weights and strategy state, checked against this (freshly
    /// initialised) model.
    fn restore(&mut self, json: &str) -> Result<()> {
        let value = checkpoint_body(json, "params")?;
        let SgdCheckpoint::Params { weights, strategy } =
            serde_json::from_value(value).map_err(restore_error)?;
        self.weights
            .check_same_layout(&weights)
            .map_err(restore_error)?;
        weights.check_finite().map_err(restore_error)?;
        if strategy.spec != self.strategy.spec {
            return Err(restore_error("it was written for another strategy"));
        }
        self.weights = Arc::new(weights);
        self.strategy = strategy;
        Ok(())
    }

    fn weights(&self) -> Option<&Weights> {
        Some(&self.weights)
    }

    /// The same model from the same seed, trained on the pooled rows for as many passes as the
    /// federated run made (rounds × local epochs).
    fn baseline(&self, settings: &BaselineSettings) -> Option<Baseline> {
        if !self.model.runs_here() {
            return None;
        }
        let model = self.model.clone();
        let mut local = settings.local.clone();
        local.epochs = local.epochs.saturating_mul(settings.rounds);
        let seed = settings.seed;
        let init = {
            let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
            model.init(&mut rng)
        };
        Some(Box::new(move |pool, holdout| {
            let (w, _) = super::train_local(
                model.as_ref(),
                init,
                pool,
                &local,
                seed,
                &super::Objective::default(),
            )?;
            Ok(super::evaluate(model.as_ref(), &w, holdout)?.accuracy)
        }))
    }
}
