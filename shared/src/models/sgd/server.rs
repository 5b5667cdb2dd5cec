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
use crate::spool::Spool;
use crate::strategy::{Aggregator, CountBudget, Strategy};
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
    /// The open round's updates, summed or held.
    open: Open,
    /// Keeps the updates the influence limits may correct at close (streaming strategies).
    spool: Box<dyn Spool>,
    loss: OrderedMean,
}

/// How the open round's updates are gathered.
#[derive(Debug)]
enum Open {
    /// No round is open.
    Idle,
    /// The averaging strategies: each update enters the exact fixed-point sums as it arrives
    /// (the same bits in any arrival order, see [`crate::strategy::WeightedMean`]) and is let go;
    /// what the influence limits need is kept per client.
    Summed {
        agg: Aggregator,
        entries: Vec<Entry>,
    },
    /// Median, trimmed mean and Krum compare clients, so every update is held until the phase
    /// ends and enters in client-name order.
    Held(Vec<Update>),
}

/// What the round keeps of one summed update.
#[derive(Debug)]
struct Entry {
    client: String,
    examples: u64,
    /// L2 distance from the global model (after the fixed bound's clipping).
    distance: f64,
    /// Whether it is in the sums now (an update out of the grid's range waits for its correction).
    added: bool,
    /// The distance the adaptive bound scaled it back to, once it did.
    clipped_to: Option<f64>,
}

/// One accepted update, held until the phase closes.
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

/// The strategy's state vectors and their group names in a checkpoint.
fn state_groups(s: &crate::strategy::StrategyState) -> [(&'static str, Option<&Weights>); 4] {
    [
        ("momentum", s.momentum.as_ref()),
        ("m", s.m.as_ref()),
        ("v", s.v.as_ref()),
        ("control", s.control.as_ref()),
    ]
}

/// Where a run folder keeps a weights model's final tensors (safetensors), named in its
/// `model.json`.
pub const MODEL_FILE: &str = "model.safetensors";

impl SgdServer {
    /// The weights and strategy of a safetensors checkpoint (see `checkpoint`), shaped like
    /// this model.
    fn read_binary_checkpoint(&self, bytes: &[u8]) -> Result<(Weights, Strategy)> {
        use safetensors::SafeTensors;
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(restore_error)?;
        let shoal = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("shoal"))
            .ok_or_else(|| restore_error("it has no `shoal` metadata"))?;
        let value = checkpoint_body(shoal.as_bytes(), "params")?;
        let spec = value
            .get("strategy")
            .cloned()
            .ok_or_else(|| restore_error("missing field `strategy`"))?;
        let spec = serde_json::from_value(spec).map_err(restore_error)?;
        let file = SafeTensors::deserialize(bytes).map_err(restore_error)?;
        let group = |name: &str| {
            crate::tensor::safetensors_group(&file, name, &self.weights).map_err(restore_error)
        };
        let weights = group("global")?.ok_or_else(|| restore_error("no `global/` tensors"))?;
        let state = crate::strategy::StrategyState {
            momentum: group("momentum")?,
            m: group("m")?,
            v: group("v")?,
            control: group("control")?,
        };
        Ok((weights, Strategy { spec, state }))
    }

    pub fn new(
        model: Arc<dyn Model>,
        weights: Weights,
        strategy: Strategy,
        bound: Option<NormBound>,
        influence: Influence,
        spool: Box<dyn Spool>,
    ) -> Self {
        SgdServer {
            model,
            weights: Arc::new(weights),
            strategy,
            bound,
            influence,
            plan: None,
            open: Open::Idle,
            spool,
            loss: OrderedMean::default(),
        }
    }

    /// Whether a limit depends on the round's medians (and updates must be kept to correct).
    fn limits_need_the_round(&self) -> bool {
        let i = &self.influence;
        i.weight_cap.is_some() || i.adaptive_norm.is_some() || i.refuse_norm.is_some()
    }

    /// The most examples the round's sums are sized for. Every count is at most what its client
    /// announced, so the announced total bounds them all; with a weight cap, a client that
    /// announces far more than the others only counts what the cap lets through, so its claim
    /// does not coarsen the grid for everyone (were the accepted counts to add up to more after
    /// all, the round is summed again from the spool at close).
    fn budget(&self, announced: &[u64]) -> CountBudget {
        let limit = self
            .influence
            .weight_limit(&announced.iter().map(|&a| a as f64).collect::<Vec<f64>>());
        CountBudget::of(announced.iter().map(|&a| capped_count(a, limit).max(1)))
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

    /// The same limits as [`Self::limit_influence`], on summed updates: the medians come from the
    /// entries, and each update a limit changes is read back from the spool, taken out of the sums
    /// exactly and added again as the limit left it. The sums are then bit for bit those of the
    /// limited updates added in any order. Returns the refused clients with why.
    fn limit_summed(
        &mut self,
        round: u32,
        agg: &mut Aggregator,
        entries: &mut Vec<Entry>,
    ) -> Result<Vec<(String, String)>> {
        let distances: Vec<f64> = entries.iter().map(|e| e.distance).collect();
        let median = lower_median(&distances).unwrap_or(0.0);
        let mut refused = Vec::new();
        if let Some(times) = self.influence.refuse_norm {
            for e in entries.iter_mut().filter(|e| e.distance > times * median) {
                if e.added {
                    let (w, c) = self.spool.get(&e.client, &self.weights)?;
                    agg.remove(&w, e.examples, c.as_ref())?;
                    e.added = false;
                }
                let why = Rejection::Far {
                    distance: e.distance,
                    times,
                    median,
                };
                refused.push((e.client.clone(), why.to_string()));
            }
            entries.retain(|e| !refused.iter().any(|(c, _)| *c == e.client));
        }
        let norm_limit = self.influence.adaptive_norm.map(|k| k * median);
        let counts: Vec<f64> = entries.iter().map(|e| e.examples as f64).collect();
        let weight_limit = self.influence.weight_limit(&counts);
        for e in entries.iter_mut() {
            let clip = norm_limit.filter(|&limit| e.distance > limit);
            let counted = capped_count(e.examples, weight_limit);
            if clip.is_none() && counted == e.examples && e.added {
                continue;
            }
            let (mut w, c) = self.spool.get(&e.client, &self.weights)?;
            if e.added {
                agg.remove(&w, e.examples, c.as_ref())?;
                e.added = false;
            }
            if let Some(limit) = clip {
                tracing::info!(round, client = %e.client, distance = e.distance, limit,
                    "update scaled back (updates.adaptive_norm)");
                w.clip_toward(&self.weights, limit)?;
                e.distance = limit;
                e.clipped_to = Some(limit);
            }
            if counted < e.examples {
                tracing::info!(round, client = %e.client, reported = e.examples, counted,
                    "example count capped (updates.weight_cap)");
                e.examples = counted;
            }
            if !agg.admits(e.examples) {
                // More than the sums were sized for: `close` sums the round again.
                continue;
            }
            match agg.add(&w, e.examples, c.as_ref()) {
                Ok(()) => e.added = true,
                Err(err) => refused.push((e.client.clone(), Rejection::invalid(err).to_string())),
            }
        }
        entries.retain(|e| !refused.iter().any(|(c, _)| *c == e.client));
        self.loss
            .retain(|client| !refused.iter().any(|(c, _)| c == client));
        self.loss.cap_weights(weight_limit);
        Ok(refused)
    }

    /// The round summed again from the spool, in client-name order, on grids sized for the
    /// counts as they came (the rare round whose limited counts outgrew the budget). An update
    /// still out of range is refused, with why.
    fn sum_again(
        &mut self,
        entries: &mut Vec<Entry>,
        refused: &mut Vec<(String, String)>,
    ) -> Result<Aggregator> {
        let budget = CountBudget::of(entries.iter().map(|e| e.examples));
        let mut agg = self.strategy.aggregator(&self.weights, budget);
        for e in entries.iter_mut() {
            let (mut w, c) = self.spool.get(&e.client, &self.weights)?;
            if let Some(limit) = e.clipped_to {
                w.clip_toward(&self.weights, limit)?;
            }
            match agg.add(&w, e.examples, c.as_ref()) {
                Ok(()) => e.added = true,
                Err(err) => {
                    e.added = false;
                    refused.push((e.client.clone(), Rejection::invalid(err).to_string()));
                }
            }
        }
        entries.retain(|e| e.added);
        self.loss
            .retain(|client| !refused.iter().any(|(c, _)| c == client));
        Ok(agg)
    }

    /// Checks one update against the global model and the job's bound: the update (clipped to the
    /// bound where the job says so), its distance and its control delta.
    fn check_update(
        &self,
        client: &str,
        reply: Reply,
        announced: Option<u64>,
    ) -> Result<(Weights, u64, f64, f64, Option<Weights>), Rejection> {
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
        Ok((w, fit.num_examples, fit.train_loss, distance, control_delta))
    }
}

impl ServerHalf for SgdServer {
    /// The round's one phase: every selected client trains from the global weights.
    fn begin_round(&mut self, plan: RoundPlan) -> Result<Step> {
        self.loss = OrderedMean::default();
        self.spool.clear();
        self.open = if self.strategy.streams() {
            Open::Summed {
                agg: self
                    .strategy
                    .aggregator(&self.weights, self.budget(&plan.announced)),
                entries: Vec::new(),
            }
        } else {
            Open::Held(Vec::new())
        };
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

    /// Checks one update against the global model and the job's bound; adds it to the round's
    /// sums (or holds it, for the strategies that compare clients).
    fn accept(
        &mut self,
        client: &str,
        reply: Reply,
        announced: Option<u64>,
    ) -> Result<(), Rejection> {
        let (w, examples, loss, distance, control) = self.check_update(client, reply, announced)?;
        let keep = self.limits_need_the_round();
        match &mut self.open {
            Open::Idle => return Err(Rejection::Missing("an open round for this update")),
            Open::Summed { agg, entries } => {
                let added = match agg.add(&w, examples, control.as_ref()) {
                    Ok(()) => true,
                    // Out of the grid's range: the limits may yet bring it back in.
                    Err(e) if keep => {
                        tracing::debug!(client, error = %e, "update waits for the round's limits");
                        false
                    }
                    Err(e) => return Err(Rejection::invalid(e)),
                };
                if keep {
                    self.spool.put(client, &w, control.as_ref());
                }
                entries.push(Entry {
                    client: client.to_string(),
                    examples,
                    distance,
                    added,
                    clipped_to: None,
                });
            }
            Open::Held(updates) => updates.push(Update {
                client: client.to_string(),
                weights: w,
                examples,
                distance,
                control,
            }),
        }
        self.loss.push(client, loss, examples as f64);
        tracing::debug!(client, examples, "update accepted");
        Ok(())
    }

    /// With a quorum of updates, the strategy makes the next global model.
    fn close(&mut self, tally: PhaseTally) -> Result<Step> {
        let plan = RoundPlan::of_open_round(&mut self.plan)?;
        let open = std::mem::replace(&mut self.open, Open::Idle);
        if let Some(short) = tally.short_of(plan.quorum) {
            self.spool.clear();
            return Ok(short);
        }
        let (agg, accepted, refused) = match open {
            Open::Idle => return Err(Error::Data("a phase closed before its round began".into())),
            Open::Summed {
                mut agg,
                mut entries,
            } => {
                entries.sort_by(|a, b| a.client.cmp(&b.client));
                let mut refused = self.limit_summed(plan.round, &mut agg, &mut entries)?;
                let outgrown = match &agg {
                    Aggregator::Mean(m) => !m.fits() || entries.iter().any(|e| !e.added),
                    Aggregator::Buffer(_) => false,
                };
                if outgrown {
                    tracing::debug!(
                        round = plan.round,
                        "the round's counts outgrew its sums; summing again"
                    );
                    agg = self.sum_again(&mut entries, &mut refused)?;
                }
                self.spool.clear();
                (agg, entries.len(), refused)
            }
            Open::Held(mut updates) => {
                updates.sort_by(|a, b| a.client.cmp(&b.client));
                let refused = self.limit_influence(plan.round, &mut updates)?;
                let budget = CountBudget::of(updates.iter().map(|u| u.examples));
                let mut agg = self.strategy.aggregator(&self.weights, budget);
                for u in &updates {
                    agg.add(&u.weights, u.examples, u.control.as_ref())?;
                }
                (agg, updates.len(), refused)
            }
        };
        if accepted < plan.quorum.max(1) {
            return Ok(Step::Done(RoundResult {
                accepted,
                train_loss: f64::NAN,
                refused,
            }));
        }
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

    /// The tensors' names and shapes; their values go to `model.safetensors` beside it (as JSON
    /// numbers they took 8.5 times the model, and as long to write as a round).
    fn to_json(&self) -> serde_json::Value {
        let tensors: Vec<serde_json::Value> = self
            .weights
            .tensors
            .iter()
            .map(|t| serde_json::json!({ "name": t.name, "shape": t.shape }))
            .collect();
        serde_json::json!({ "weights": { "file": MODEL_FILE, "tensors": tensors } })
    }

    /// A safetensors file: the global weights as `global/<tensor>`, the strategy's state vectors
    /// as `momentum/`, `m/`, `v/` and `control/<tensor>` where it has them, and in the metadata
    /// one key, `shoal`: `{"kind": "params", "strategy": {...}}` as JSON (one key, because the
    /// format keeps metadata in a hash map whose order would change the bytes from run to run).
    /// Any safetensors reader opens it.
    fn checkpoint(&self) -> Result<Vec<u8>> {
        let meta = serde_json::json!({ "kind": "params", "strategy": self.strategy.spec });
        let metadata = std::iter::once(("shoal".to_string(), meta.to_string())).collect();
        let state = &self.strategy.state;
        let mut groups: Vec<(&str, &Weights)> = vec![("global", &self.weights)];
        for (group, slot) in state_groups(state) {
            if let Some(w) = slot {
                groups.push((group, w));
            }
        }
        crate::tensor::safetensors_of(&groups, Some(metadata))
    }

    /// Puts back a checkpoint's weights and strategy state, checked against this (freshly
    /// initialised) model. Takes the JSON checkpoints Shoal wrote before too.
    fn restore(&mut self, checkpoint: &[u8]) -> Result<()> {
        let (weights, strategy) = match serde_json::from_slice::<serde_json::Value>(checkpoint) {
            Ok(_) => {
                let value = checkpoint_body(checkpoint, "params")?;
                let SgdCheckpoint::Params { weights, strategy } =
                    serde_json::from_value(value).map_err(restore_error)?;
                (weights, strategy)
            }
            Err(_) => self.read_binary_checkpoint(checkpoint)?,
        };
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
