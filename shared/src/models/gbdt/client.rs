//! The client half of federated boosting: a quantile sketch of the local features, the
//! gradient/hessian histograms of the nodes the server asks for, or an evaluation of the ensemble
//! the task carries.

use std::sync::Arc;

use super::{build_histograms, gradients, BinEdges, Ensemble, GbdtParams, QuantileSketch};
use crate::models::phase::{
    Answer, ClientState, ClientTask, Evaluation, HistogramReply, Payload, Reply, SketchReply,
    TaskData, Work,
};
use crate::{Error, Result};

/// How many boosting jobs' round caches a client keeps at once (each holds every local row,
/// binned).
pub const MAX_BOOST_JOBS: usize = 8;
/// Largest boosted ensemble a client decodes (rounds x classes).
pub const MAX_BOOST_TREES: usize = 1_000_000;

/// What a boosting client keeps within a round: its rows binned with the global edges and the
/// ensemble's raw scores before this round (the gradients of every output derive from them).
#[derive(Debug)]
pub struct BoostCache {
    pub round: u32,
    pub binned: ndarray::Array2<u16>,
    pub raw: ndarray::Array2<f64>,
    pub labels: Vec<usize>,
    pub edges: BinEdges,
}

/// The ensemble a task carries, checked against the client's data.
fn ensemble<'a>(
    payload: &'a Payload,
    n_features: usize,
    n_classes: usize,
    what: &str,
) -> Result<&'a Ensemble> {
    let Payload::Ensemble(e) = payload else {
        return Err(Error::Data(format!("{what} carries no ensemble")));
    };
    e.check(n_features, n_classes, MAX_BOOST_TREES)?;
    Ok(e)
}

/// Runs `task`; the first histogram level of a round returns the round's cache to keep.
pub fn handle(
    params: &GbdtParams,
    task: ClientTask,
    data: &TaskData<'_>,
    state: &ClientState,
) -> Result<(Answer, Option<ClientState>)> {
    let n_features = data.raw_train.n_features();
    match task.work {
        Work::Sketch => {
            let train = data.raw_train;
            let sketch = QuantileSketch::of(train.features.view(), params.sketch_size as usize);
            let reply = Reply::Sketch(SketchReply {
                sketch,
                num_examples: train.n_rows() as u64,
            });
            Ok((Answer::Reply(reply), None))
        }
        Work::Histogram(h) => {
            let mut train_loss = 0.0;
            let mut kept = None;
            let cache = if h.first_level {
                let ensemble = ensemble(
                    &task.payload,
                    n_features,
                    task.n_classes,
                    "the first histogram task of a round",
                )?;
                let train = data.raw_train.remap_classes(data.class_names)?;
                let raw = ensemble.raw_scores(train.features.view())?;
                train_loss = ensemble.evaluate(&train)?.loss;
                let cache = Arc::new(BoostCache {
                    round: task.round,
                    binned: ensemble.edges.bin_matrix(train.features.view())?,
                    raw,
                    labels: train.labels.clone(),
                    edges: ensemble.edges.clone(),
                });
                kept = Some(ClientState::new(cache.clone(), MAX_BOOST_JOBS));
                cache
            } else {
                match state.get::<BoostCache>() {
                    Some(c) if c.round == task.round => c,
                    _ => {
                        return Err(Error::Data(format!(
                            "no gradients for job {} round {} here (the client restarted or missed the round's first level)",
                            task.job, task.round
                        )))
                    }
                }
            };
            h.partial_tree.check(&cache.edges)?;
            let (g, hess) = gradients(cache.raw.view(), &cache.labels, h.output as usize);
            let hists = build_histograms(
                cache.binned.view(),
                &h.partial_tree,
                &h.nodes,
                &g,
                &hess,
                cache.edges.max_bins(),
            )?;
            let reply = Reply::Histogram(HistogramReply {
                histograms: hists.into_iter().map(|h| h.data).collect(),
                num_examples: cache.labels.len() as u64,
                train_loss,
            });
            Ok((Answer::Reply(reply), kept))
        }
        Work::Evaluate { .. } => {
            let test = data.raw_test.remap_classes(data.class_names)?;
            let ensemble = ensemble(
                &task.payload,
                n_features,
                task.n_classes,
                "the evaluation task of a gbdt job",
            )?;
            let stats = ensemble.evaluate(&test)?;
            Ok((Answer::Evaluated(Evaluation::of(&stats, &test, None)), None))
        }
        Work::Fit { .. } => Err(Error::Data(
            "a gbdt job grows trees through histogram tasks, not fit".into(),
        )),
    }
}
