//! The server half of federated gradient boosting.
//!
//! Before round 1 every available client sends a quantile sketch of its features; the merged
//! sketch fixes the global bin edges. Each round then grows one tree per output, level by level:
//! the clients that answer the root level are the tree's participants, and every later level must
//! hear from all of them, because the server derives right children as parent − left (histogram
//! subtraction). If one leaves mid-tree, the tree stops growing there, from sums it knows.

use std::sync::Arc;

use super::{
    histograms_from_values, n_outputs, Ensemble, GTree, GbdtParams, Histogram, QuantileSketch,
    TreeGrower,
};
use crate::models::phase::{
    check_count, check_loss, checkpoint_body, restore_error, Ask, Baseline, BaselineSettings,
    Evaluator, HistogramRequest, OrderedMean, Payload, PhaseTally, Rejection, Reply, Request,
    RoundPlan, RoundResult, ServerHalf, Step,
};
use crate::{Error, Result};

/// A boosting checkpoint: `{"kind": "gbdt", "blob": "<the ensemble's versioned blob, as text>"}`,
/// or a null blob before the bin edges exist.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum GbdtCheckpoint {
    Gbdt { blob: Option<String> },
}

/// The boosted ensemble (once the clients' sketches have fixed the bin edges) and the state of
/// the round being grown.
#[derive(Debug)]
pub struct GbdtServer {
    pub ensemble: Option<Arc<Ensemble>>,
    pub params: GbdtParams,
    n_features: usize,
    n_classes: usize,
    round: Option<Growing>,
    /// Sketches of the open sketch phase.
    sketches: Vec<(String, QuantileSketch)>,
}

/// One round in progress.
#[derive(Debug)]
struct Growing {
    plan: RoundPlan,
    /// The ensemble before this round's trees (sent with the round's first level).
    current: Option<Arc<Ensemble>>,
    /// One participant set for the whole round: a client that fails once is not asked again this
    /// round, so one silent client cannot stall every tree.
    participants: Vec<String>,
    output: usize,
    level: u32,
    grower: Option<TreeGrower>,
    trees: Vec<GTree>,
    loss: OrderedMean,
    /// Clients that answered the round's first level.
    accepted: usize,
    /// The open histogram phase: the nodes asked for, and the valid answers so far.
    nodes: Vec<u32>,
    got: Vec<(String, Vec<Histogram>)>,
    sketching: bool,
}

/// Gradient/hessian sums a client of `n` rows can honestly send: logloss and softmax gradients lie
/// in [-1, 1] and hessians in [0, 1/4] per row. Anything beyond is a lie that could steer splits or
/// overflow the server's sums.
pub fn check_histogram_bounds(hists: &[Histogram], n: u64) -> Result<(), Rejection> {
    let n = n as f64;
    for h in hists {
        for pair in h.data.chunks_exact(2) {
            let (g, hess) = (pair[0], pair[1]);
            if g.abs() > n * (1.0 + 1e-9) || !(-1e-9..=n * 0.25 + 1e-9).contains(&hess) {
                return Err(Rejection::Implausible(format!(
                    "histogram sums outside what {n} rows can give (G {g}, H {hess})"
                )));
            }
        }
    }
    Ok(())
}

impl GbdtServer {
    pub fn new(n_features: usize, n_classes: usize, params: GbdtParams) -> Self {
        GbdtServer {
            ensemble: None,
            params,
            n_features,
            n_classes,
            round: None,
            sketches: Vec::new(),
        }
    }

    /// The next histogram phase of the tree being grown.
    fn ask_level(g: &mut Growing) -> Step {
        let (partial_tree, nodes) = match &g.grower {
            None => (GTree::root(), vec![0u32]),
            Some(grower) => (grower.partial_tree(), grower.requests()),
        };
        let first_level = g.output == 0 && g.level == 0;
        g.nodes = nodes.clone();
        g.got.clear();
        Step::Ask(Ask {
            round: g.plan.round,
            clients: g.participants.clone(),
            request: Request::Histogram(HistogramRequest {
                output: g.output as u32,
                partial_tree,
                nodes,
                first_level,
            }),
            payload: match (&g.current, first_level) {
                // Sent once per round: the later levels carry no model.
                (Some(e), true) => Payload::Ensemble(e.clone()),
                _ => Payload::None,
            },
            quorum: if g.level == 0 {
                g.plan.quorum
            } else {
                g.participants.len()
            },
            target: None,
        })
    }

    /// Merges the sketches (in client-name order, so the edges do not depend on arrival order)
    /// into the bin edges of a new, empty ensemble.
    fn edges_from_sketches(&mut self, plan: &RoundPlan, tally: PhaseTally) -> Result<()> {
        let quorum = plan.min_clients.min(plan.available.len());
        if tally.accepted < quorum.max(1) {
            return Err(Error::Data(format!(
                "bin edges: {} of the {quorum} required clients sent a quantile sketch",
                tally.accepted
            )));
        }
        let mut sketches = std::mem::take(&mut self.sketches);
        sketches.sort_by(|a, b| a.0.cmp(&b.0));
        let mut merged = QuantileSketch {
            features: vec![Vec::new(); self.n_features],
        };
        for (_, s) in &sketches {
            merged.merge(s)?;
        }
        let edges = merged.bin_edges(self.params.max_bins as usize);
        tracing::info!(
            clients = sketches.len(),
            "bin edges fixed from federated quantile sketches"
        );
        self.ensemble = Some(Arc::new(Ensemble::new(
            self.n_features,
            self.n_classes,
            edges,
        )));
        Ok(())
    }

    /// Takes a level's histograms into the tree being grown. Returns the round's result once
    /// every output has its tree, `None` while more levels are to be asked.
    fn absorb_level(&mut self, g: &mut Growing) -> Result<Option<RoundResult>> {
        let round = g.plan.round;
        let quorum = g.plan.quorum;
        let (output, level) = (g.output, g.level);
        let mut got = std::mem::take(&mut g.got);
        let before = g.participants.len();
        g.participants.retain(|c| got.iter().any(|(n, _)| n == c));
        let mut tree_done = false;
        if level == 0 {
            if got.len() < quorum.max(1) {
                if output == 0 {
                    return Ok(Some(RoundResult {
                        accepted: 0,
                        train_loss: f64::NAN,
                        refused: Vec::new(),
                    }));
                }
                // Some trees of this round exist already: a round is all outputs or none.
                return Err(Error::Data(format!(
                    "round {round}: only {} of the {quorum} required clients answered for output {output}",
                    got.len()
                )));
            }
            if output == 0 {
                g.accepted = got.len();
            }
        } else if g.participants.len() < before {
            tracing::warn!(
                round,
                output,
                level,
                "a participant left mid-tree; the tree stops growing here"
            );
            tree_done = true;
        }
        if !tree_done {
            // Sum in client-name order: the result does not depend on arrival order.
            got.sort_by(|a, b| a.0.cmp(&b.0));
            let bins = g.current.as_ref().map_or(0, |e| e.edges.max_bins());
            let mut sums: Vec<Histogram> =
                vec![Histogram::zeros(self.n_features, bins); g.nodes.len()];
            for (_, hists) in &got {
                for (s, h) in sums.iter_mut().zip(hists) {
                    s.add(h)?;
                }
            }
            match (g.grower.as_mut(), g.current.as_ref()) {
                (None, Some(current)) => {
                    // The root level asks for exactly one node, so there is one sum.
                    let root = sums.into_iter().next().unwrap_or_else(|| {
                        Histogram::zeros(self.n_features, current.edges.max_bins())
                    });
                    g.grower = Some(TreeGrower::new(&self.params, &current.edges, root));
                }
                (None, None) => {
                    // A round starts growing only once the sketches made an ensemble.
                    return Err(Error::Data("boosting: no bin edges for this round".into()));
                }
                (Some(grower), _) => {
                    if let Err(e) = grower.absorb(sums) {
                        // The grower is unchanged on error: stop this tree from what is known.
                        tracing::warn!(
                            round,
                            output,
                            level,
                            "histograms could not be used ({e}); the tree stops here"
                        );
                        tree_done = true;
                    }
                }
            }
            if !tree_done {
                g.level += 1;
                tree_done = g.grower.as_ref().is_some_and(TreeGrower::is_done);
            }
        }
        if !tree_done {
            return Ok(None);
        }
        if let Some(grower) = g.grower.take() {
            g.trees.push(grower.finish());
        }
        g.output += 1;
        g.level = 0;
        if g.output < n_outputs(self.n_classes) {
            return Ok(None);
        }
        if g.loss.is_empty() {
            return Err(Error::Data(format!(
                "round {round}: no client reported a training loss"
            )));
        }
        let mut next = match &g.current {
            Some(c) => Ensemble::clone(c),
            None => return Err(Error::Data("boosting: no bin edges for this round".into())),
        };
        next.rounds.push(std::mem::take(&mut g.trees));
        self.ensemble = Some(Arc::new(next));
        Ok(Some(RoundResult {
            accepted: g.accepted,
            train_loss: g.loss.mean(),
            refused: Vec::new(),
        }))
    }
}

impl ServerHalf for GbdtServer {
    /// Starts a round: the sketch exchange first if the bin edges are not fixed yet (it is part
    /// of round 1's traffic), else the first tree's root level.
    fn begin_round(&mut self, plan: RoundPlan) -> Result<Step> {
        self.params.check()?;
        let participants = plan.selected.clone();
        let mut g = Growing {
            plan,
            current: None,
            participants,
            output: 0,
            level: 0,
            grower: None,
            trees: Vec::new(),
            loss: OrderedMean::default(),
            accepted: 0,
            nodes: Vec::new(),
            got: Vec::new(),
            sketching: false,
        };
        if self.ensemble.is_none() {
            self.sketches.clear();
            g.sketching = true;
            let quorum = g.plan.min_clients.min(g.plan.available.len());
            let ask = Ask {
                round: 0,
                clients: g.plan.available.clone(),
                request: Request::Sketch,
                payload: Payload::None,
                quorum,
                target: None,
            };
            self.round = Some(g);
            return Ok(Step::Ask(ask));
        }
        g.current = self.ensemble.clone();
        let step = Self::ask_level(&mut g);
        self.round = Some(g);
        Ok(step)
    }

    fn accept(
        &mut self,
        client: &str,
        reply: Reply,
        announced: Option<u64>,
    ) -> Result<(), Rejection> {
        let Some(g) = self.round.as_mut() else {
            return Err(Rejection::Unexpected("no boosting phase is open"));
        };
        if g.sketching {
            let Reply::Sketch(s) = reply else {
                return Err(Rejection::WrongKind("a sketch"));
            };
            s.sketch
                .check(self.n_features, self.params.sketch_size as usize)
                .map_err(Rejection::invalid)?;
            self.sketches.push((client.to_string(), s.sketch));
            return Ok(());
        }
        let Reply::Histogram(h) = reply else {
            return Err(Rejection::WrongKind("histograms"));
        };
        let bins = g.current.as_ref().map_or(0, |e| e.edges.max_bins());
        let hists = histograms_from_values(h.histograms, self.n_features, bins, g.nodes.len())
            .map_err(Rejection::invalid)?;
        if hists.len() != g.nodes.len() {
            return Err(Rejection::Implausible(format!(
                "{} histograms for {} nodes",
                hists.len(),
                g.nodes.len()
            )));
        }
        let n = announced.unwrap_or(0);
        check_count(h.num_examples, Some(n), "train")?;
        check_histogram_bounds(&hists, n)?;
        if g.output == 0 && g.level == 0 {
            check_loss(h.train_loss)?;
            g.loss.push(client, h.train_loss, h.num_examples as f64);
        }
        g.got.push((client.to_string(), hists));
        Ok(())
    }

    fn close(&mut self, tally: PhaseTally) -> Result<Step> {
        let Some(mut g) = self.round.take() else {
            return Err(Error::Data(
                "a boosting phase closed before its round began".into(),
            ));
        };
        if g.sketching {
            self.edges_from_sketches(&g.plan, tally)?;
            g.sketching = false;
            g.current = self.ensemble.clone();
            let step = Self::ask_level(&mut g);
            self.round = Some(g);
            return Ok(step);
        }
        match self.absorb_level(&mut g)? {
            Some(done) => Ok(Step::Done(done)),
            None => {
                let step = Self::ask_level(&mut g);
                self.round = Some(g);
                Ok(step)
            }
        }
    }

    fn payload(&self) -> Payload {
        match &self.ensemble {
            Some(e) => Payload::Ensemble(e.clone()),
            None => Payload::None,
        }
    }

    fn evaluator(&self) -> Option<Evaluator> {
        let ensemble = self.ensemble.clone();
        Some(Box::new(move |data| match &ensemble {
            Some(e) => e.evaluate(data),
            // Reachable only before round 1 has fixed the bin edges.
            None => Err(Error::Data("no ensemble yet".into())),
        }))
    }

    fn size(&self) -> usize {
        self.ensemble
            .as_ref()
            .map_or(0, |e| e.rounds.iter().map(Vec::len).sum())
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "gbdt": self.ensemble.as_deref() })
    }

    fn checkpoint(&self) -> Result<Vec<u8>> {
        let blob = match &self.ensemble {
            Some(e) => Some(
                String::from_utf8(e.to_blob())
                    .map_err(|e| Error::Data(format!("an ensemble blob is not text: {e}")))?,
            ),
            None => None,
        };
        serde_json::to_vec(&GbdtCheckpoint::Gbdt { blob })
            .map_err(|e| Error::Data(format!("cannot encode a checkpoint: {e}")))
    }

    fn restore(&mut self, json: &[u8]) -> Result<()> {
        let value = checkpoint_body(json, "gbdt")?;
        let GbdtCheckpoint::Gbdt { blob } = serde_json::from_value(value).map_err(restore_error)?;
        self.ensemble = match blob {
            Some(b) => Some(Arc::new(
                Ensemble::from_blob(b.as_bytes(), self.n_features, self.n_classes, usize::MAX)
                    .map_err(restore_error)?,
            )),
            None => None,
        };
        Ok(())
    }

    /// The same number of boosting rounds on the pooled rows, from the same bin edges.
    fn baseline(&self, settings: &BaselineSettings) -> Option<Baseline> {
        let edges = self.ensemble.as_ref()?.edges.clone();
        let (params, rounds) = (self.params.clone(), settings.rounds);
        Some(Box::new(move |pool, holdout| {
            let e = super::train_centralized(pool, &edges, &params, rounds)?;
            Ok(e.evaluate(holdout)?.accuracy)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_sums_beyond_what_the_rows_allow_are_refused() {
        let mut h = Histogram::zeros(1, 2);
        h.data = vec![-3.0, 0.5, 2.0, 0.25];
        assert!(check_histogram_bounds(std::slice::from_ref(&h), 5).is_ok());
        h.data[0] = 1e308;
        assert!(check_histogram_bounds(std::slice::from_ref(&h), 5).is_err());
        h.data = vec![0.0, -1.0, 0.0, 0.0];
        assert!(check_histogram_bounds(&[h], 5).is_err(), "negative hessian");
    }
}
