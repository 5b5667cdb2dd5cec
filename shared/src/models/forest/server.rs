//! The server half of a federated forest: one training phase per round in which every selected
//! client grows `trees_per_round` new trees on its own rows (it needs no global forest for that);
//! their trees join the global forest, weighted by the client's example count.

use std::sync::Arc;

use super::{Forest, ForestParams};
use crate::models::phase::{
    check_count, check_loss, Ask, DecodeBounds, OrderedMean, Payload, PhaseTally, Rejection, Reply,
    Request, RoundPlan, RoundResult, Step,
};
use crate::{Error, Result};

/// The global forest and its parameters.
#[derive(Debug)]
pub struct ForestServer {
    pub forest: Arc<Forest>,
    pub params: ForestParams,
    plan: Option<RoundPlan>,
    /// Trees grown this round, merged in client-name order so the forest does not depend on
    /// arrival order.
    grown: Vec<(String, Forest)>,
    loss: OrderedMean,
}

impl ForestServer {
    pub fn new(n_features: usize, n_classes: usize, params: ForestParams) -> Self {
        ForestServer {
            forest: Arc::new(Forest::new(n_features, n_classes)),
            params,
            plan: None,
            grown: Vec::new(),
            loss: OrderedMean::default(),
        }
    }

    pub fn begin_round(&mut self, plan: RoundPlan) -> Result<Step> {
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

    /// Fit replies carry trees, never tensors.
    pub fn decode_bounds(&self) -> DecodeBounds {
        DecodeBounds {
            max_elements: None,
            control: false,
        }
    }

    pub fn accept(
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
        let mut trees = Forest::from_blob(&fit.blob, n_features, n_classes, per_client)
            .map_err(Rejection::invalid)?;
        if trees.trees.is_empty() {
            return Err(Rejection::Missing("fit result without trees"));
        }
        trees.set_weight(fit.num_examples as f32);
        self.loss
            .push(client, fit.train_loss, fit.num_examples as f64);
        self.grown.push((client.to_string(), trees));
        Ok(())
    }

    pub fn close(&mut self, tally: PhaseTally) -> Result<Step> {
        let plan = self
            .plan
            .take()
            .ok_or_else(|| Error::Data("a training phase closed before its round began".into()))?;
        let mut grown = std::mem::take(&mut self.grown);
        if tally.accepted < plan.quorum.max(1) {
            return Ok(Step::Done(RoundResult {
                accepted: tally.accepted,
                train_loss: f64::NAN,
            }));
        }
        grown.sort_by(|a, b| a.0.cmp(&b.0));
        let mut next = Forest::clone(&self.forest);
        for (_, trees) in grown {
            next.merge(trees, plan.round, self.params.max_trees as usize)?;
        }
        self.forest = Arc::new(next);
        Ok(Step::Done(RoundResult {
            accepted: tally.accepted,
            train_loss: self.loss.mean(),
        }))
    }

    /// The checkpoint: the forest's versioned blob.
    pub fn checkpoint(&self) -> Vec<u8> {
        self.forest.to_blob()
    }

    pub fn restore(&mut self, blob: &[u8]) -> Result<()> {
        let (n_features, n_classes) = (self.forest.n_features, self.forest.n_classes);
        self.forest = Arc::new(Forest::from_blob(
            blob,
            n_features,
            n_classes,
            self.params.max_trees as usize,
        )?);
        Ok(())
    }
}
