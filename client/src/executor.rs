//! Runs one task against the local data: pure and synchronous, called through `spawn_blocking`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use shoal_proto::v1::{self, task, task_result};
use shoal_shared::forest::{fit_trees, Forest, ForestParams};
use shoal_shared::fusion::FeatureView;
use shoal_shared::gbdt::{
    build_histograms, gradients, histograms_to_bytes, Ensemble, GTree, GbdtParams, QuantileSketch,
};
use shoal_shared::model::{self, Objective};
use shoal_shared::tensor::Weights;

use crate::attack::Attack;
use crate::catalog::Catalog;

/// How many jobs' SCAFFOLD control variates a client keeps (oldest dropped first).
const MAX_CONTROL_JOBS: usize = 32;
/// How many boosting jobs' round caches a client keeps at once.
const MAX_BOOST_JOBS: usize = 8;
/// Largest boosted ensemble a client decodes (rounds x classes).
const MAX_BOOST_TREES: usize = 1_000_000;

/// Executes tasks; keeps the per-job state a client owns across rounds (SCAFFOLD's c_i).
#[derive(Debug)]
pub struct Executor {
    catalog: Arc<Catalog>,
    attack: Option<Attack>,
    /// job id -> (client control variate, last round it was used)
    controls: Mutex<HashMap<String, (Weights, u32)>>,
    /// job id -> this round's binned rows and raw scores (gradient boosting).
    boosting: Mutex<HashMap<String, Arc<BoostCache>>>,
    clock: std::sync::atomic::AtomicU64,
}

/// What a boosting client keeps within a round: its rows binned with the global edges and the
/// ensemble's raw scores before this round (the gradients of every output derive from them).
#[derive(Debug)]
struct BoostCache {
    round: u32,
    /// When it was last used (a counter), for least-recently-used eviction across jobs.
    used: u64,
    binned: ndarray::Array2<u16>,
    raw: ndarray::Array2<f64>,
    labels: Vec<usize>,
    edges: shoal_shared::gbdt::BinEdges,
}

/// The answer to an Evaluate task.
fn evaluated(
    stats: &model::EvalStats,
    test: &shoal_shared::data::Dataset,
    personalized_accuracy: Option<f64>,
) -> task_result::Outcome {
    task_result::Outcome::Evaluate(v1::EvaluateResult {
        num_examples: stats.num_examples,
        loss: stats.loss,
        accuracy: stats.accuracy,
        classes_present: test.classes_present() as u32,
        personalized_accuracy,
    })
}

impl Executor {
    pub fn new(catalog: Arc<Catalog>, attack: Option<Attack>) -> Self {
        Executor {
            catalog,
            attack,
            controls: Mutex::new(HashMap::new()),
            boosting: Mutex::new(HashMap::new()),
            clock: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Runs `task` and returns its result; any failure becomes a result carrying the reason, so
    /// the coordinator learns why instead of waiting for the deadline.
    pub fn execute(&self, task: &v1::Task) -> v1::TaskResult {
        let outcome = match self.run(task) {
            Ok(o) => o,
            Err(e) => task_result::Outcome::Error(e),
        };
        v1::TaskResult {
            task_id: task.task_id.clone(),
            job_id: task.job_id.clone(),
            round: task.round,
            outcome: Some(outcome),
        }
    }

    fn run(&self, task: &v1::Task) -> Result<task_result::Outcome, String> {
        let held = self
            .catalog
            .get(&task.dataset)
            .ok_or_else(|| format!("this client holds no dataset `{}`", task.dataset))?;
        let validation;
        let local = if task.validation {
            validation = held.validation_view()?;
            &validation
        } else {
            held
        };
        let spec = shoal_proto::model_from_wire(task.model.as_ref()).map_err(|e| e.to_string())?;
        if let Some(params) = spec.forest() {
            return self.run_forest(task, local, params);
        }
        if let Some(params) = spec.gbdt() {
            return self.run_gbdt(task, local, params);
        }
        let params = task.parameters.as_ref().ok_or("task without parameters")?;
        let global =
            shoal_proto::weights_from_wire(params, usize::MAX).map_err(|e| e.to_string())?;
        let err = |e: shoal_shared::Error| e.to_string();
        // Fusion tasks say how to present the rows; the view applies after the class remap, so
        // stacked members see the job's class list.
        let view = if task.feature_view.is_empty() {
            None
        } else {
            Some(FeatureView::from_bytes(&task.feature_view).map_err(err)?)
        };
        let prepare =
            |data: &shoal_shared::data::Dataset| -> Result<shoal_shared::data::Dataset, String> {
                let remapped = data.remap_classes(&task.class_names).map_err(err)?;
                match &view {
                    Some(v) => v.apply(&remapped).map_err(err),
                    None => Ok(remapped),
                }
            };
        let n_features = match &view {
            Some(v) => v.width(task.class_names.len()),
            None => local.train.n_features(),
        };
        let model = spec
            .build(n_features, task.class_names.len())
            .map_err(|e| e.to_string())?;
        match &task.kind {
            Some(task::Kind::Fit(fit)) => {
                let cfg =
                    shoal_proto::local_from_wire(fit.local.as_ref()).map_err(|e| e.to_string())?;
                let train = prepare(&local.train)?;
                let control = match &fit.control {
                    Some(c) => Some(
                        shoal_proto::weights_from_wire(c, usize::MAX).map_err(|e| e.to_string())?,
                    ),
                    None => None,
                };
                // SCAFFOLD: correct every step by c - c_i (c_i starts at zero for a new job).
                let (c_i, correction) = match &control {
                    Some(c) => {
                        global.check_same_layout(c).map_err(err)?;
                        let c_i = self
                            .control_of(&task.job_id)
                            .unwrap_or_else(|| global.zeros_like());
                        let mut corr = c.clone();
                        corr.add_scaled(-1.0, &c_i).map_err(err)?;
                        (Some(c_i), Some(corr))
                    }
                    None => (None, None),
                };
                let objective = Objective {
                    anchor: (cfg.proximal_mu > 0.0).then_some(&global),
                    correction: correction.as_ref(),
                    track_mean_gradient: control.is_some(),
                };
                let (mut w, stats) = model::train_local(
                    model.as_ref(),
                    global.clone(),
                    &train,
                    &cfg,
                    task.seed,
                    &objective,
                )
                .map_err(err)?;
                let control_delta = match (c_i, stats.mean_gradient) {
                    // SCAFFOLD: the new c_i is the mean local gradient along this round's path
                    // (what option II estimates as (x - y) / (K lr) under plain SGD).
                    (Some(c_i), Some(new_ci)) => {
                        let mut delta = new_ci.clone();
                        delta.add_scaled(-1.0, &c_i).map_err(err)?;
                        self.store_control(&task.job_id, task.round, new_ci);
                        Some(shoal_proto::weights_to_wire(&delta))
                    }
                    _ => None,
                };
                if let Some(attack) = &self.attack {
                    attack.apply(&global, &mut w, task.seed);
                }
                Ok(task_result::Outcome::Fit(v1::FitResult {
                    parameters: Some(shoal_proto::weights_to_wire(&w)),
                    num_examples: stats.num_examples,
                    train_loss: stats.loss,
                    control_delta,
                    model_blob: Vec::new(),
                }))
            }
            Some(task::Kind::Evaluate(eval)) => {
                let test = prepare(&local.test)?;
                let stats = model::evaluate(model.as_ref(), &global, &test).map_err(err)?;
                let personalized_accuracy = if eval.personalize_epochs > 0 {
                    let mut cfg = shoal_proto::local_from_wire(eval.local.as_ref())
                        .map_err(|e| e.to_string())?;
                    cfg.epochs = eval.personalize_epochs;
                    let train = prepare(&local.train)?;
                    let (w, _) = model::train_local(
                        model.as_ref(),
                        global.clone(),
                        &train,
                        &cfg,
                        task.seed,
                        &Objective::default(),
                    )
                    .map_err(err)?;
                    Some(
                        model::evaluate(model.as_ref(), &w, &test)
                            .map_err(err)?
                            .accuracy,
                    )
                } else {
                    None
                };
                Ok(evaluated(&stats, &test, personalized_accuracy))
            }
            Some(task::Kind::Sketch(_) | task::Kind::Histogram(_)) => {
                Err("sketch and histogram tasks are for gbdt jobs".into())
            }
            None => Err("task without a kind".into()),
        }
    }

    /// A forest task: Fit grows new trees on the local train split (the global forest is not
    /// needed for that); Evaluate scores the global forest the task carries.
    fn run_forest(
        &self,
        task: &v1::Task,
        local: &crate::catalog::LocalData,
        params: &ForestParams,
    ) -> Result<task_result::Outcome, String> {
        let err = |e: shoal_shared::Error| e.to_string();
        let n_classes = task.class_names.len();
        match &task.kind {
            Some(task::Kind::Fit(_)) => {
                let train = local.train.remap_classes(&task.class_names).map_err(err)?;
                let trees = fit_trees(&train, n_classes, params, task.seed).map_err(err)?;
                let stats = trees.evaluate(&train).map_err(err)?;
                Ok(task_result::Outcome::Fit(v1::FitResult {
                    parameters: None,
                    num_examples: train.n_rows() as u64,
                    train_loss: stats.loss,
                    control_delta: None,
                    model_blob: trees.to_blob(),
                }))
            }
            Some(task::Kind::Evaluate(_)) => {
                let test = local.test.remap_classes(&task.class_names).map_err(err)?;
                let forest = Forest::from_blob(
                    &task.model_blob,
                    test.n_features(),
                    n_classes,
                    params.max_trees as usize,
                )
                .map_err(err)?;
                let stats = forest.evaluate(&test).map_err(err)?;
                Ok(evaluated(&stats, &test, None))
            }
            Some(task::Kind::Sketch(_) | task::Kind::Histogram(_)) => {
                Err("sketch and histogram tasks are for gbdt jobs".into())
            }
            None => Err("task without a kind".into()),
        }
    }

    /// A boosting task: a quantile sketch, a set of node histograms, or an evaluation of the
    /// ensemble the task carries.
    fn run_gbdt(
        &self,
        task: &v1::Task,
        local: &crate::catalog::LocalData,
        params: &GbdtParams,
    ) -> Result<task_result::Outcome, String> {
        let err = |e: shoal_shared::Error| e.to_string();
        let n_classes = task.class_names.len();
        let n_features = local.train.n_features();
        match &task.kind {
            Some(task::Kind::Sketch(_)) => {
                let sketch =
                    QuantileSketch::of(local.train.features.view(), params.sketch_size as usize);
                Ok(task_result::Outcome::Sketch(v1::SketchResult {
                    sketch: sketch.to_blob(),
                    num_examples: local.train.n_rows() as u64,
                }))
            }
            Some(task::Kind::Histogram(h)) => {
                let mut train_loss = 0.0;
                let cache = if h.first_level {
                    let ensemble = Ensemble::from_blob(
                        &task.model_blob,
                        n_features,
                        n_classes,
                        MAX_BOOST_TREES,
                    )
                    .map_err(err)?;
                    let train = local.train.remap_classes(&task.class_names).map_err(err)?;
                    let raw = ensemble.raw_scores(train.features.view()).map_err(err)?;
                    train_loss = ensemble.evaluate(&train).map_err(err)?.loss;
                    let cache = Arc::new(BoostCache {
                        round: task.round,
                        used: self.tick(),
                        binned: ensemble
                            .edges
                            .bin_matrix(train.features.view())
                            .map_err(err)?,
                        raw,
                        labels: train.labels.clone(),
                        edges: ensemble.edges.clone(),
                    });
                    let mut all = self.boosting.lock().unwrap_or_else(|p| p.into_inner());
                    all.insert(task.job_id.clone(), cache.clone());
                    // Bounded memory: beyond a few jobs, forget the least recently started.
                    while all.len() > MAX_BOOST_JOBS {
                        let oldest = all
                            .iter()
                            .min_by_key(|(_, c)| c.used)
                            .map(|(k, _)| k.clone());
                        match oldest {
                            Some(k) => all.remove(&k),
                            None => break,
                        };
                    }
                    cache
                } else {
                    let all = self.boosting.lock().unwrap_or_else(|p| p.into_inner());
                    match all.get(&task.job_id) {
                        Some(c) if c.round == task.round => c.clone(),
                        _ => {
                            return Err(format!(
                                "no gradients for job {} round {} here (the client restarted or missed the round's first level)",
                                task.job_id, task.round
                            ))
                        }
                    }
                };
                let tree: GTree = serde_json::from_slice(&h.partial_tree)
                    .map_err(|e| format!("partial_tree: {e}"))?;
                tree.check(&cache.edges).map_err(err)?;
                let (g, hess) = gradients(cache.raw.view(), &cache.labels, h.output as usize);
                let hists = build_histograms(
                    cache.binned.view(),
                    &tree,
                    &h.nodes,
                    &g,
                    &hess,
                    cache.edges.max_bins(),
                )
                .map_err(err)?;
                Ok(task_result::Outcome::Histogram(v1::HistogramResult {
                    histograms: histograms_to_bytes(&hists),
                    num_examples: cache.labels.len() as u64,
                    train_loss,
                }))
            }
            Some(task::Kind::Evaluate(_)) => {
                let test = local.test.remap_classes(&task.class_names).map_err(err)?;
                let ensemble =
                    Ensemble::from_blob(&task.model_blob, n_features, n_classes, MAX_BOOST_TREES)
                        .map_err(err)?;
                let stats = ensemble.evaluate(&test).map_err(err)?;
                Ok(evaluated(&stats, &test, None))
            }
            Some(task::Kind::Fit(_)) => {
                Err("a gbdt job grows trees through histogram tasks, not fit".into())
            }
            None => Err("task without a kind".into()),
        }
    }

    fn tick(&self) -> u64 {
        self.clock
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn control_of(&self, job: &str) -> Option<Weights> {
        let controls = self.controls.lock().unwrap_or_else(|p| p.into_inner());
        controls.get(job).map(|(w, _)| w.clone())
    }

    fn store_control(&self, job: &str, round: u32, c_i: Weights) {
        let mut controls = self.controls.lock().unwrap_or_else(|p| p.into_inner());
        controls.insert(job.to_string(), (c_i, round));
        if controls.len() > MAX_CONTROL_JOBS {
            if let Some(oldest) = controls
                .iter()
                .min_by_key(|(_, (_, r))| *r)
                .map(|(k, _)| k.clone())
            {
                controls.remove(&oldest);
            }
        }
    }
}
