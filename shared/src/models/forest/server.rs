//! The server half of a federated forest: one training phase per round in which every selected
//! client grows `trees_per_round` new trees on its own rows (it needs no global forest for that);
//! their trees join the global forest, weighted by the client's example count.

use std::sync::Arc;

use super::{Forest, ForestParams};
use crate::models::phase::{
    capped_count, check_count, check_loss, checkpoint_body, restore_error, Ask, Baseline,
    BaselineSettings, Evaluator, Influence, OrderedMean, Payload, PhaseTally, Rejection, Reply,
    Request, RoundPlan, RoundResult, ServerHalf, Step,
};
use crate::{Error, Result};

/// A forest's checkpoint: `{"kind": "forest", "blob": "<its versioned blob, as text>"}`.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum ForestCheckpoint {
    Forest { blob: String },
}

/// The global forest and its parameters.
#[derive(Debug)]
pub struct ForestServer {
    pub forest: Arc<Forest>,
    pub params: ForestParams,
    plan: Option<RoundPlan>,
    /// Trees grown this round, merged in client-name order so the forest does not depend on
    /// arrival order.
    grown: Vec<(String, Forest, u64)>,
    loss: OrderedMean,
    /// Only the weight cap applies: trees have no distance from a global model.
    influence: Influence,
}

impl ForestServer {
    pub fn new(
        n_features: usize,
        n_classes: usize,
        params: ForestParams,
        influence: Influence,
    ) -> Self {
        ForestServer {
            influence,
            forest: Arc::new(Forest::new(n_features, n_classes)),
            params,
            plan: None,
            grown: Vec::new(),
            loss: OrderedMean::default(),
        }
    }
}

impl ServerHalf for ForestServer {
    fn begin_round(&mut self, plan: RoundPlan) -> Result<Step> {
        self.grown.clear();
        self.loss = OrderedMean::default();
        let ask = Ask {
            round: plan.round,
            clients: plan.selected.clone(),
            request: Request::Fit { control: None },
            payload: Payload::None,
            quorum: plan.quorum,
            target: None,
        };
        self.plan = Some(plan);
        Ok(Step::Ask(ask))
    }

    fn accept(
        &mut self,
        client: &str,
        reply: Reply,
        announced: Option<u64>,
    ) -> Result<(), Rejection> {
        let Reply::Fit(fit) = reply else {
            return Err(Rejection::WrongKind("a fit result"));
        };
        check_count(fit.num_examples, announced, "train")?;
        check_loss(fit.train_loss)?;
        let (n_features, n_classes) = (self.forest.n_features, self.forest.n_classes);
        let per_client = self.params.trees_per_round as usize;
        let Some(trees) = fit.trees else {
            return Err(Rejection::Missing("fit result without trees"));
        };
        trees
            .check(n_features, n_classes, per_client)
            .map_err(Rejection::invalid)?;
        if trees.trees.is_empty() {
            return Err(Rejection::Missing("fit result without trees"));
        }
        self.loss
            .push(client, fit.train_loss, fit.num_examples as f64);
        self.grown
            .push((client.to_string(), trees, fit.num_examples));
        Ok(())
    }

    fn close(&mut self, tally: PhaseTally) -> Result<Step> {
        let plan = RoundPlan::of_open_round(&mut self.plan)?;
        let mut grown = std::mem::take(&mut self.grown);
        if let Some(short) = tally.short_of(plan.quorum) {
            return Ok(short);
        }
        grown.sort_by(|a, b| a.0.cmp(&b.0));
        // A tree votes with its client's example count, cut to the job's weight cap.
        let counts: Vec<f64> = grown.iter().map(|g| g.2 as f64).collect();
        let limit = self.influence.weight_limit(&counts);
        self.loss.cap_weights(limit);
        let mut next = Forest::clone(&self.forest);
        for (client, mut trees, n) in grown {
            let counted = capped_count(n, limit);
            if counted < n {
                tracing::info!(round = plan.round, %client, reported = n, counted,
                    "example count capped (updates.weight_cap)");
            }
            trees.set_weight(counted as f32);
            next.merge(trees, plan.round, self.params.max_trees as usize)?;
        }
        self.forest = Arc::new(next);
        Ok(Step::Done(RoundResult {
            accepted: tally.accepted,
            train_loss: self.loss.mean(),
            refused: Vec::new(),
        }))
    }

    fn payload(&self) -> Payload {
        Payload::Forest(self.forest.clone())
    }

    fn evaluator(&self) -> Option<Evaluator> {
        let forest = self.forest.clone();
        Some(Box::new(move |data| forest.evaluate(data)))
    }

    fn size(&self) -> usize {
        self.forest.trees.len()
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "forest": self.forest.as_ref() })
    }

    fn checkpoint(&self) -> Result<Vec<u8>> {
        let blob = String::from_utf8(self.forest.to_blob())
            .map_err(|e| Error::Data(format!("a forest blob is not text: {e}")))?;
        serde_json::to_vec(&ForestCheckpoint::Forest { blob })
            .map_err(|e| Error::Data(format!("cannot encode a checkpoint: {e}")))
    }

    fn restore(&mut self, json: &[u8]) -> Result<()> {
        let value = checkpoint_body(json, "forest")?;
        let ForestCheckpoint::Forest { blob } =
            serde_json::from_value(value).map_err(restore_error)?;
        let (n_features, n_classes) = (self.forest.n_features, self.forest.n_classes);
        self.forest = Arc::new(
            Forest::from_blob(
                blob.as_bytes(),
                n_features,
                n_classes,
                self.params.max_trees as usize,
            )
            .map_err(restore_error)?,
        );
        Ok(())
    }

    /// As many trees as the global forest holds, grown on the pooled rows.
    fn baseline(&self, settings: &BaselineSettings) -> Option<Baseline> {
        let params = ForestParams {
            trees_per_round: self.forest.trees.len().clamp(1, 10_000) as u32,
            ..self.params.clone()
        };
        let (n_classes, seed) = (settings.n_classes, settings.seed);
        Some(Box::new(move |pool, holdout| {
            let f = super::fit_trees(pool, n_classes, &params, seed)?;
            Ok(f.evaluate(holdout)?.accuracy)
        }))
    }
}
