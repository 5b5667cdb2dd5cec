//! The server half of a weights model (logreg, mlp, the diffusion denoiser): one training phase
//! per round whose updates a [`Strategy`] aggregates into the next global model.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Model;
use crate::models::phase::{
    check_count, check_loss, checkpoint_body, restore_error, Ask, Baseline, BaselineSettings,
    DecodeBounds, Evaluator, OrderedMean, Payload, PhaseTally, Rejection, Reply, Request,
    RoundPlan, RoundResult, ServerHalf, Step,
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
    plan: Option<RoundPlan>,
    /// Valid updates of the open round. They enter the aggregate in client-name order once the
    /// phase is over: a seeded job then gives bit-identical models whatever order updates arrive
    /// in.
    updates: Vec<(String, Weights, u64, Option<Weights>)>,
    loss: OrderedMean,
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
    ) -> Self {
        SgdServer {
            model,
            weights: Arc::new(weights),
            strategy,
            bound,
            plan: None,
            updates: Vec::new(),
            loss: OrderedMean::default(),
        }
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
        if let Some(NormBound { max, clip }) = self.bound {
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
        }
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
        self.updates
            .push((client.to_string(), w, fit.num_examples, control_delta));
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
        updates.sort_by(|a, b| a.0.cmp(&b.0));
        let mut agg = self.strategy.aggregator(&self.weights);
        for (_, w, n, control) in &updates {
            agg.add(w, *n, control.as_ref())?;
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
            accepted: tally.accepted,
            train_loss: self.loss.mean(),
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
