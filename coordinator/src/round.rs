//! The round engine of a `train` job: wait for clients, sample, push Fit tasks, collect and
//! validate updates into the strategy's running aggregate, evaluate (federated and centralized),
//! record.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use shoal_proto::v1::{self, task, task_result};
use shoal_shared::data::builtin::Builtin;
use shoal_shared::data::{self, Dataset};
use shoal_shared::forest::{Forest, ForestParams};
use shoal_shared::gbdt::{
    histograms_from_bytes, n_outputs, Ensemble, GbdtParams, Histogram, QuantileSketch, TreeGrower,
};
use shoal_shared::model::ModelSpec;
use shoal_shared::model::{self, Model};
use shoal_shared::seed;
use shoal_shared::strategy::Strategy;
use shoal_shared::tensor::Weights;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use crate::error::{Error, Result};
use crate::registry::{Arrived, ClientView, Registry};
use crate::spec::{JobSpec, NormAction};

/// The awaited variant of a task result; a client's error or another variant is the verdict
/// (`return Err(...)` from the enclosing result check).
macro_rules! expect_outcome {
    ($outcome:expr, $variant:ident, $what:literal) => {
        match $outcome {
            Some(task_result::Outcome::$variant(v)) => v,
            Some(task_result::Outcome::Error(e)) => return Err(format!("client error: {e}")),
            _ => return Err($what.to_string()),
        }
    };
}

/// One completed round, as stored, printed and exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    pub round: u32,
    pub rounds_total: u32,
    /// Clients whose update entered the aggregate.
    pub clients: u32,
    /// Clients asked to train.
    pub clients_selected: u32,
    /// Example-weighted mean of the clients' local training loss (NaN, stored as null, when no
    /// client reported one).
    #[serde(deserialize_with = "nan_if_null")]
    pub train_loss: f64,
    /// Example-weighted mean loss of the new global model on the clients' local test splits.
    pub fed_loss: Option<f64>,
    pub fed_accuracy: Option<f64>,
    /// Accuracy of the new global model on the coordinator's test set, where there is one.
    pub test_accuracy: Option<f64>,
    pub test_loss: Option<f64>,
    /// Bytes of task results received and tasks sent this round (protobuf-encoded sizes).
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub seconds: f64,
    /// Results refused this round (validation, duplicates, late or unknown results).
    pub rejected: u32,
    /// The same, by client.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rejected_by: BTreeMap<String, u32>,
    /// The late answers among them, by client: shown, but not counted towards quarantine.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub late_by: BTreeMap<String, u32>,
    /// Clients quarantined after this round: left out of the rest of the job.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantined: Vec<String>,
}

impl RoundRecord {
    /// Refusals that count towards quarantine, by client: all but the late answers (a slow or
    /// partitioned client sends those in good faith).
    pub fn strikes(&self) -> BTreeMap<String, u32> {
        let mut strikes = self.rejected_by.clone();
        for (client, n) in &self.late_by {
            if let Some(s) = strikes.get_mut(client) {
                *s = s.saturating_sub(*n);
            }
        }
        strikes.retain(|_, n| *n > 0);
        strikes
    }
}

/// JSON has no NaN: serde_json writes it as null; read null back as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Purposes mixed into derived seeds, so draws for different uses never coincide.
const SEED_INIT: u64 = 1;
const SEED_SAMPLE_FIT: u64 = 2;
const SEED_SAMPLE_EVAL: u64 = 3;
const SEED_TASK: u64 = 4;

/// What a job knows about its data once clients have shown up.
#[derive(Debug, Clone)]
pub struct DataFacts {
    /// Features the model sees (after a fusion view).
    pub n_features: usize,
    /// Features of the clients' dataset as they hold it (before any view).
    pub raw_features: usize,
    pub feature_names: Vec<String>,
    pub class_names: Vec<String>,
    /// The coordinator's centralized test set, labels indexed into `class_names`.
    pub holdout: Option<Arc<Dataset>>,
    pub builtin: Option<Builtin>,
}

/// Everything a running job needs from the coordinator.
#[derive(Debug, Clone)]
pub struct JobCtx {
    pub id: String,
    pub spec: JobSpec,
    pub registry: Arc<Registry>,
    pub cancel: CancellationToken,
    /// Largest message the coordinator sends; a task that would exceed it fails the job clearly.
    pub max_message_bytes: usize,
    /// Largest model, in parameters, the job may train.
    pub max_tensor_elements: usize,
    /// Numbers the job's tasks.
    pub task_seq: Arc<std::sync::atomic::AtomicU64>,
    /// Fusion: how clients present their rows for this part of the job (JSON, empty for none).
    pub view: prost::bytes::Bytes,
    /// AutoML trials: clients train and evaluate on their validation split.
    pub validation: bool,
    /// Refused results per client over the whole job (shared by an AutoML job's trials); a
    /// client at `updates.quarantine_after` is left out of the job.
    pub strikes: Arc<std::sync::Mutex<BTreeMap<String, u32>>>,
}

/// The global model and whatever trains it.
#[derive(Debug)]
pub enum GlobalModel {
    /// A differentiable model: weights, aggregated by a strategy.
    Params {
        model: Arc<dyn Model>,
        weights: Weights,
        strategy: Strategy,
    },
    /// A forest: clients' new trees are appended, up to a cap.
    Forest {
        forest: Arc<Forest>,
        params: ForestParams,
    },
    /// Gradient boosting: trees grown level by level from summed client histograms. The
    /// ensemble exists once the clients' quantile sketches have fixed the bin edges.
    Gbdt {
        ensemble: Option<Arc<Ensemble>>,
        params: GbdtParams,
    },
}

/// What a task carries of the global model.
#[derive(Debug, Clone, Default)]
struct Payload {
    parameters: Option<v1::Parameters>,
    blob: prost::bytes::Bytes,
}

impl GlobalModel {
    fn payload(&self) -> Payload {
        match self {
            GlobalModel::Params { weights, .. } => Payload {
                parameters: Some(shoal_proto::weights_to_wire(weights)),
                blob: Default::default(),
            },
            GlobalModel::Forest { forest, .. } => Payload {
                parameters: None,
                blob: forest.to_blob().into(),
            },
            GlobalModel::Gbdt { ensemble, .. } => Payload {
                parameters: None,
                blob: ensemble
                    .as_ref()
                    .map(|e| e.to_blob().into())
                    .unwrap_or_default(),
            },
        }
    }

    /// Scores the model on `data`, off the async threads.
    pub async fn evaluate(&self, data: Arc<Dataset>) -> Result<model::EvalStats> {
        let res = match self {
            GlobalModel::Params { model, weights, .. } => {
                let (m, w) = (model.clone(), weights.clone());
                tokio::task::spawn_blocking(move || model::evaluate(m.as_ref(), &w, &data)).await
            }
            GlobalModel::Forest { forest, .. } => {
                let f = forest.clone();
                tokio::task::spawn_blocking(move || f.evaluate(&data)).await
            }
            GlobalModel::Gbdt { ensemble, .. } => {
                let e = ensemble
                    .clone()
                    .ok_or_else(|| Error::Job("no ensemble yet".into()))?;
                tokio::task::spawn_blocking(move || e.evaluate(&data)).await
            }
        };
        Ok(res.map_err(|e| Error::Job(format!("evaluation: {e}")))??)
    }

    /// Whether evaluation yields an accuracy (a diffusion denoiser's does not: its loss is the
    /// noise-prediction MSE).
    pub fn classifies(&self) -> bool {
        match self {
            GlobalModel::Params { model, .. } => model.classifies(),
            GlobalModel::Forest { .. } | GlobalModel::Gbdt { .. } => true,
        }
    }

    /// Size of the model, for logs: parameters or trees.
    pub fn size(&self) -> usize {
        match self {
            GlobalModel::Params { weights, .. } => weights.num_params(),
            GlobalModel::Forest { forest, .. } => forest.trees.len(),
            GlobalModel::Gbdt { ensemble, .. } => ensemble
                .as_ref()
                .map_or(0, |e| e.rounds.iter().map(Vec::len).sum()),
        }
    }

    /// The final model as JSON for the run folder.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            GlobalModel::Params { weights, .. } => serde_json::json!({ "weights": weights }),
            GlobalModel::Forest { forest, .. } => serde_json::json!({ "forest": forest.as_ref() }),
            GlobalModel::Gbdt { ensemble, .. } => {
                serde_json::json!({ "gbdt": ensemble.as_deref() })
            }
        }
    }
}

/// What a train job needs to go on after a coordinator restart: the global model with its
/// strategy state. Client sampling needs no saved RNG: every draw derives from (job seed, round).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Checkpoint {
    Params {
        weights: Weights,
        strategy: Strategy,
    },
    /// The forest's versioned blob (JSON text).
    Forest { blob: String },
    /// The ensemble's versioned blob, once the bin edges exist.
    Gbdt { blob: Option<String> },
}

impl GlobalModel {
    /// The checkpoint of this model, as JSON.
    pub fn checkpoint(&self) -> Result<String> {
        let text = |b: Vec<u8>| String::from_utf8(b).map_err(|e| Error::Job(e.to_string()));
        let c = match self {
            GlobalModel::Params {
                weights, strategy, ..
            } => Checkpoint::Params {
                weights: weights.clone(),
                strategy: strategy.clone(),
            },
            GlobalModel::Forest { forest, .. } => Checkpoint::Forest {
                blob: text(forest.to_blob())?,
            },
            GlobalModel::Gbdt { ensemble, .. } => Checkpoint::Gbdt {
                blob: ensemble.as_ref().map(|e| text(e.to_blob())).transpose()?,
            },
        };
        serde_json::to_string(&c)
            .map_err(|e| Error::Job(format!("cannot encode a checkpoint: {e}")))
    }

    /// Puts back the model a checkpoint holds, checked against this (freshly initialised) one.
    pub fn restore(&mut self, json: &str, facts: &DataFacts) -> Result<()> {
        let bad = |e: String| Error::Job(format!("the checkpoint cannot be restored: {e}"));
        let c: Checkpoint = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
        let n_classes = facts.class_names.len();
        match (self, c) {
            (
                GlobalModel::Params {
                    weights, strategy, ..
                },
                Checkpoint::Params {
                    weights: w,
                    strategy: st,
                },
            ) => {
                weights
                    .check_same_layout(&w)
                    .map_err(|e| bad(e.to_string()))?;
                w.check_finite().map_err(|e| bad(e.to_string()))?;
                if st.spec != strategy.spec {
                    return Err(bad("it was written for another strategy".into()));
                }
                *weights = w;
                *strategy = st;
            }
            (GlobalModel::Forest { forest, params }, Checkpoint::Forest { blob }) => {
                *forest = Arc::new(
                    Forest::from_blob(
                        blob.as_bytes(),
                        facts.n_features,
                        n_classes,
                        params.max_trees as usize,
                    )
                    .map_err(|e| bad(e.to_string()))?,
                );
            }
            (GlobalModel::Gbdt { ensemble, .. }, Checkpoint::Gbdt { blob }) => {
                *ensemble = match blob {
                    Some(b) => Some(Arc::new(
                        Ensemble::from_blob(b.as_bytes(), facts.n_features, n_classes, usize::MAX)
                            .map_err(|e| bad(e.to_string()))?,
                    )),
                    None => None,
                };
            }
            _ => return Err(bad("it was written for another kind of model".into())),
        }
        Ok(())
    }
}

/// The state a train job carries from round to round.
#[derive(Debug)]
pub struct TrainState {
    pub facts: DataFacts,
    pub global: GlobalModel,
}

/// One client's line in the end-of-job table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientRow {
    pub client: String,
    /// Rows in the client's local test split.
    pub examples: u64,
    pub classes_present: u32,
    /// The final global model on the client's local test split.
    pub accuracy: f64,
    /// After `personalize_epochs` local epochs from the global model, when asked.
    pub personalized_accuracy: Option<f64>,
}

/// An example-weighted mean whose terms are summed in client-name order at the end, so that it
/// does not depend on the order in which results arrived (floating-point addition is not
/// associative).
#[derive(Debug, Default)]
struct OrderedMean(Vec<(String, f64, f64)>);

impl OrderedMean {
    fn push(&mut self, client: &str, value: f64, weight: f64) {
        self.0.push((client.to_string(), value, weight));
    }

    /// The weighted mean (NaN when empty).
    fn mean(&mut self) -> f64 {
        self.0.sort_by(|a, b| a.0.cmp(&b.0));
        let (mut sum, mut weight) = (0.0f64, 0.0f64);
        for (_, v, w) in &self.0 {
            sum += v * w;
            weight += w;
        }
        sum / weight
    }
}

/// Outcome of pushing one kind of task to a set of clients.
#[derive(Debug, Default)]
struct Phase {
    accepted: usize,
    rejected: usize,
    rejected_by: BTreeMap<String, u32>,
    failed: usize,
    timed_out: usize,
    bytes_up: u64,
    bytes_down: u64,
}

impl Phase {
    /// Adds another phase's traffic and refusals (a boosting round runs many phases).
    fn absorb(&mut self, other: &Phase) {
        self.rejected += other.rejected;
        for (client, n) in &other.rejected_by {
            *self.rejected_by.entry(client.clone()).or_default() += n;
        }
        self.failed += other.failed;
        self.timed_out += other.timed_out;
        self.bytes_up += other.bytes_up;
        self.bytes_down += other.bytes_down;
    }
}

impl JobCtx {
    /// The most examples each client may report for its train (or test) split: what its Hello
    /// announced, or, for AutoML trials that re-split all rows, its train and test rows together.
    fn announced(
        &self,
        clients: &[ClientView],
        test: bool,
    ) -> std::collections::HashMap<String, u64> {
        announced_sizes(clients, &self.spec.dataset, |d| {
            if self.validation {
                d.train_examples + d.test_examples
            } else if test {
                d.test_examples
            } else {
                d.train_examples
            }
        })
    }

    fn policy(&self) -> &crate::spec::ClientPolicy {
        &self.spec.clients
    }

    /// Waits until at least `min_available_clients` compatible clients hold the dataset; fails
    /// after `wait_for_clients_secs` with how many were needed and seen.
    pub async fn wait_available(
        &self,
        round: u32,
        facts: Option<&DataFacts>,
    ) -> Result<Vec<ClientView>> {
        let need = self.policy().min_available_clients as usize;
        let limit = Instant::now() + secs(self.policy().wait_for_clients_secs);
        let mut changes = self.registry.subscribe();
        let mut told = false;
        loop {
            let avail: Vec<ClientView> = self
                .registry
                .available(&self.spec.dataset)
                .into_iter()
                .filter(|c| facts.is_none_or(|f| compatible(c, &self.spec.dataset, f)))
                .collect();
            // Quarantined clients count as present (the federation is as big as it was) but
            // take no further part in the job.
            if avail.len() >= need {
                return Ok(avail
                    .into_iter()
                    .filter(|c| !self.is_quarantined(&c.name))
                    .collect());
            }
            if !told {
                info!(round, have = avail.len(), need, dataset = %self.spec.dataset, "waiting for clients");
                told = true;
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return Err(Error::Cancelled),
                _ = tokio::time::sleep_until(limit) => {
                    return Err(Error::Job(format!(
                        "round {round}: needed {need} connected clients holding dataset `{}` (clients.min_available_clients), saw {} after waiting {}s",
                        self.spec.dataset, avail.len(), self.policy().wait_for_clients_secs
                    )));
                }
                changed = changes.changed() => if changed.is_err() { return Err(Error::ShuttingDown) },
            }
        }
    }

    /// Works out features, classes and the test set from the dataset name, the clients and the
    /// spec's holdout file.
    pub async fn resolve_data(&self, clients: &[ClientView]) -> Result<DataFacts> {
        let name = self.spec.dataset.clone();
        if let Ok(b) = name.parse::<Builtin>() {
            let holdout = tokio::task::spawn_blocking(move || b.holdout())
                .await
                .map_err(|e| Error::Job(format!("loading the {name} holdout: {e}")))??;
            return Ok(DataFacts {
                n_features: holdout.n_features(),
                raw_features: holdout.n_features(),
                feature_names: holdout.feature_names.clone(),
                class_names: holdout.class_names.clone(),
                holdout: Some(Arc::new(holdout)),
                builtin: Some(b),
            });
        }
        // A dataset the clients registered: features from the first client, classes the union.
        let first = clients
            .first()
            .and_then(|c| c.dataset(&name))
            .ok_or_else(|| Error::Job(format!("no client holds dataset `{name}`")))?;
        let feature_names = first.feature_names.clone();
        let mut classes: Vec<String> = Vec::new();
        for c in clients {
            if let Some(d) = c.dataset(&name) {
                if d.feature_names.len() != feature_names.len() {
                    return Err(Error::Job(format!(
                        "clients disagree on dataset `{name}`: `{}` has {} features, `{}` has {}",
                        clients[0].name,
                        feature_names.len(),
                        c.name,
                        d.feature_names.len()
                    )));
                }
                classes.extend(d.class_names.iter().cloned());
            }
        }
        let holdout = match &self.spec.evaluation.holdout {
            Some(path) => {
                let (path, col) = (path.clone(), self.spec.evaluation.label_column.clone());
                let h = tokio::task::spawn_blocking(move || {
                    data::csv::load_csv(std::path::Path::new(&path), col.as_deref())
                })
                .await
                .map_err(|e| Error::Job(format!("loading the holdout: {e}")))??;
                if h.n_features() != feature_names.len() {
                    return Err(Error::Job(format!(
                        "holdout has {} features but the clients' dataset `{name}` has {}",
                        h.n_features(),
                        feature_names.len()
                    )));
                }
                classes.extend(h.class_names.iter().cloned());
                Some(h)
            }
            None => None,
        };
        classes.sort();
        classes.dedup();
        data::sort_class_names(&mut classes);
        let holdout = match holdout {
            Some(h) => Some(Arc::new(h.remap_classes(&classes)?)),
            None => None,
        };
        Ok(DataFacts {
            n_features: feature_names.len(),
            raw_features: feature_names.len(),
            feature_names,
            class_names: classes,
            holdout,
            builtin: None,
        })
    }

    /// This job seen through a fusion view: a context whose tasks carry the view, and the data
    /// facts (feature count, test set) as the view presents them.
    pub fn with_view(
        &self,
        facts: &DataFacts,
        view: &shoal_shared::fusion::FeatureView,
    ) -> Result<(JobCtx, DataFacts)> {
        let holdout = match &facts.holdout {
            Some(h) => Some(Arc::new(view.apply(h)?)),
            None => None,
        };
        let n_features = view.width(facts.class_names.len());
        let feature_names = match &holdout {
            Some(h) => h.feature_names.clone(),
            None => (0..n_features).map(|i| format!("v{i}")).collect(),
        };
        let ctx = JobCtx {
            view: view.to_bytes().into(),
            ..self.clone()
        };
        Ok((
            ctx,
            DataFacts {
                n_features,
                raw_features: facts.raw_features,
                feature_names,
                class_names: facts.class_names.clone(),
                holdout,
                builtin: facts.builtin,
            },
        ))
    }

    /// Sets up the model, its initial state and the strategy.
    pub fn init_state(&self, facts: DataFacts) -> Result<TrainState> {
        let n_classes = facts.class_names.len();
        let global = match &self.spec.model {
            ModelSpec::Forest(params) => GlobalModel::Forest {
                forest: Arc::new(Forest::new(facts.n_features, n_classes)),
                params: params.clone(),
            },
            ModelSpec::Gbdt(params) => GlobalModel::Gbdt {
                ensemble: None,
                params: params.clone(),
            },
            spec => {
                let model: Arc<dyn Model> = Arc::from(spec.build(facts.n_features, n_classes)?);
                let mut rng = ChaCha8Rng::seed_from_u64(seed::derive(self.spec.seed, &[SEED_INIT]));
                let weights = model.init(&mut rng);
                if weights.num_params() > self.max_tensor_elements {
                    return Err(Error::Job(format!(
                        "the model has {} parameters, over the coordinator's limit of {} (--max-tensor-elements)",
                        weights.num_params(),
                        self.max_tensor_elements
                    )));
                }
                GlobalModel::Params {
                    model,
                    weights,
                    strategy: self.spec.strategy.build(),
                }
            }
        };
        Ok(TrainState { facts, global })
    }

    /// Runs round `round` and returns its record; `state.global` becomes the new global model.
    pub async fn run_round(&self, round: u32, state: &mut TrainState) -> Result<RoundRecord> {
        let span = info_span!("round", job = %self.id, round);
        self.run_round_inner(round, state).instrument(span).await
    }

    async fn run_round_inner(&self, round: u32, state: &mut TrainState) -> Result<RoundRecord> {
        let started = Instant::now();
        let policy = self.policy().clone();
        let avail = self.wait_available(round, Some(&state.facts)).await?;
        let fit_seed = seed::derive(self.spec.seed, &[round.into(), SEED_SAMPLE_FIT]);
        let mut fit_clients = sample(
            &avail,
            policy.fraction_fit,
            policy.min_fit_clients,
            fit_seed,
        );
        let quorum = (policy.min_fit_clients as usize).min(fit_clients.len());
        // Over-selection (weights models): ask more clients than the round needs and close the
        // phase once the needed number of updates is in, so stragglers cost nothing.
        let mut target = None;
        if policy.over_selection > 1.0 && matches!(state.global, GlobalModel::Params { .. }) {
            let needed = fit_clients.len();
            let asked = ((needed as f64 * policy.over_selection).ceil() as usize).min(avail.len());
            if asked > needed {
                fit_clients = sample_n(&avail, asked, fit_seed);
                target = Some(needed);
            }
        }
        tracing::debug!(selected = fit_clients.len(), available = avail.len(), "fit");

        let (fit_phase, train_loss) = match &state.global {
            GlobalModel::Params { .. } => {
                self.fit_params(round, state, &fit_clients, avail.len(), quorum, target)
                    .await?
            }
            GlobalModel::Forest { .. } => {
                self.fit_forest(round, state, &fit_clients, quorum).await?
            }
            GlobalModel::Gbdt { .. } => {
                self.fit_gbdt(round, state, &avail, &fit_clients, quorum)
                    .await?
            }
        };
        if fit_phase.accepted < quorum.max(1) {
            return Err(Error::Job(format!(
                "round {round}: {} of the {quorum} required clients (clients.min_fit_clients) returned a valid update ({} selected, {} rejected, {} left, {} past the {}s deadline)",
                fit_phase.accepted,
                fit_clients.len(),
                fit_phase.rejected,
                fit_phase.failed,
                fit_phase.timed_out,
                policy.round_timeout_secs
            )));
        }

        // Federated evaluation of the new global model.
        let (mut fed_loss, mut fed_accuracy) = (None, None);
        let mut eval_phase = Phase::default();
        let last = round == self.spec.rounds;
        if round.is_multiple_of(self.spec.evaluation.every) || last {
            // Evaluate with whoever is here now: a shortfall is reported, not fatal.
            let avail: Vec<ClientView> = self
                .registry
                .available(&self.spec.dataset)
                .into_iter()
                .filter(|c| compatible(c, &self.spec.dataset, &state.facts))
                .filter(|c| !self.is_quarantined(&c.name))
                .collect();
            let eval_clients = sample(
                &avail,
                policy.fraction_evaluate,
                policy.min_evaluate_clients,
                seed::derive(self.spec.seed, &[round.into(), SEED_SAMPLE_EVAL]),
            );
            let quorum = (policy.min_evaluate_clients as usize).min(eval_clients.len());
            let payload = state.global.payload();
            let announced = self.announced(&eval_clients, true);
            let (mut l, mut a) = (OrderedMean::default(), OrderedMean::default());
            let classifies = state.global.classifies();
            eval_phase = self
                .phase(
                    round,
                    &eval_clients,
                    &payload,
                    &state.facts,
                    task::Kind::Evaluate(v1::EvaluateTask::default()),
                    quorum,
                    |client, arrived| {
                        let e = expect_outcome!(
                            arrived.result.outcome,
                            Evaluate,
                            "expected an evaluate result"
                        );
                        check_evaluation(&e, announced.get(client).copied(), classifies)?;
                        let w = e.num_examples as f64;
                        l.push(client, e.loss, w);
                        a.push(client, e.accuracy, w);
                        Ok(())
                    },
                )
                .await?;
            if eval_clients.is_empty() {
                warn!("no client available for federated evaluation");
            } else if eval_phase.accepted >= quorum.max(1) {
                fed_loss = Some(l.mean());
                fed_accuracy = classifies.then_some(a.mean());
            } else {
                warn!(
                    accepted = eval_phase.accepted,
                    quorum, "federated evaluation fell short of min_evaluate_clients; not reported"
                );
            }
        }

        // Centralized evaluation on the coordinator's test set.
        let (mut test_loss, mut test_accuracy) = (None, None);
        if let Some(h) = &state.facts.holdout {
            let stats = state.global.evaluate(h.clone()).await?;
            test_loss = Some(stats.loss);
            test_accuracy = state.global.classifies().then_some(stats.accuracy);
        }

        // Refusals: the phases' own, and results the registry refused for this job (duplicates,
        // late answers, other clients' tasks).
        let mut rejected_by = fit_phase.rejected_by.clone();
        let (registry_refused, late) = self.registry.take_refused(&self.id);
        for (client, n) in eval_phase.rejected_by.iter().chain(&registry_refused) {
            *rejected_by.entry(client.clone()).or_default() += n;
        }
        let mut rec = RoundRecord {
            round,
            rounds_total: self.spec.rounds,
            clients: fit_phase.accepted as u32,
            clients_selected: fit_clients.len() as u32,
            train_loss,
            fed_loss,
            fed_accuracy,
            test_accuracy,
            test_loss,
            bytes_up: fit_phase.bytes_up + eval_phase.bytes_up,
            bytes_down: fit_phase.bytes_down + eval_phase.bytes_down,
            seconds: started.elapsed().as_secs_f64(),
            rejected: rejected_by.values().sum(),
            rejected_by,
            late_by: late,
            quarantined: Vec::new(),
        };
        rec.quarantined = self.strike(&rec.strikes());
        Ok(rec)
    }

    /// Whether `client` is quarantined for this job.
    pub fn is_quarantined(&self, client: &str) -> bool {
        let after = self.spec.updates.quarantine_after;
        after > 0
            && self
                .strikes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(client)
                .is_some_and(|&n| n >= after)
    }

    /// Adds a round's refusals to the job's tally; returns the clients this quarantines.
    pub fn strike(&self, refused: &BTreeMap<String, u32>) -> Vec<String> {
        let after = self.spec.updates.quarantine_after;
        let mut strikes = self.strikes.lock().unwrap_or_else(|p| p.into_inner());
        let mut newly = Vec::new();
        for (client, n) in refused {
            let total = strikes.entry(client.clone()).or_default();
            let before = *total;
            *total = total.saturating_add(*n);
            if after > 0 && before < after && *total >= after {
                warn!(
                    client,
                    refused = *total,
                    "client quarantined for the rest of the job: too many refused results"
                );
                newly.push(client.clone());
            }
        }
        newly
    }

    /// Fit phase of a weights model: each valid update goes straight into the strategy's running
    /// aggregate and is dropped; with a quorum, the strategy makes the next global model.
    /// Returns the phase and the example-weighted mean training loss.
    async fn fit_params(
        &self,
        round: u32,
        state: &mut TrainState,
        fit_clients: &[ClientView],
        n_available: usize,
        quorum: usize,
        target: Option<usize>,
    ) -> Result<(Phase, f64)> {
        let TrainState { facts, global } = state;
        let GlobalModel::Params {
            weights, strategy, ..
        } = global
        else {
            return Err(Error::Job("internal: fit_params on a forest".into()));
        };
        let payload = Payload {
            parameters: Some(shoal_proto::weights_to_wire(weights)),
            blob: Default::default(),
        };
        let fit = task::Kind::Fit(v1::FitTask {
            local: Some(self.local_training(round)),
            control: strategy
                .server_control(weights)
                .map(|c| shoal_proto::weights_to_wire(&c)),
        });
        let wants_control = self.spec.strategy.uses_control_variates();
        // Valid updates wait here and enter the aggregate in client-name order once the phase is
        // over: a seeded job then gives bit-identical models whatever order updates arrive in.
        let mut updates: Vec<(String, Weights, u64, Option<Weights>)> = Vec::new();
        let mut loss = OrderedMean::default();
        let max_elements = weights.num_params();
        let bound = self.spec.updates.clone();
        let announced = self.announced(fit_clients, false);
        let current: &Weights = weights;
        let phase = self
            .phase_until(
                round,
                fit_clients,
                &payload,
                facts,
                fit,
                quorum,
                target,
                |client, arrived| {
                    let fit = expect_outcome!(arrived.result.outcome, Fit, "expected a fit result");
                    let params = fit
                        .parameters
                        .as_ref()
                        .ok_or("fit result without parameters")?;
                    let mut w = shoal_proto::weights_from_wire(params, max_elements)
                        .map_err(|e| e.to_string())?;
                    current.check_same_layout(&w).map_err(|e| e.to_string())?;
                    w.check_finite().map_err(|e| e.to_string())?;
                    if let Some(max) = bound.max_norm {
                        let norm = match bound.on_norm {
                            NormAction::Reject => w.distance(current),
                            NormAction::Clip => w.clip_toward(current, max),
                        }
                        .map_err(|e| e.to_string())?;
                        if norm > max && bound.on_norm == NormAction::Reject {
                            return Err(format!(
                                "update norm {norm:.4} is over the job's bound of {max} (updates.max_norm)"
                            ));
                        }
                        if norm > max {
                            tracing::debug!(client, norm, max, "update clipped to the norm bound");
                        }
                    }
                    check_count(fit.num_examples, announced.get(client).copied(), "train")?;
                    check_loss(fit.train_loss)?;
                    let control_delta = match (&fit.control_delta, wants_control) {
                        (Some(c), true) => {
                            let c = shoal_proto::weights_from_wire(c, max_elements)
                                .map_err(|e| format!("control_delta: {e}"))?;
                            current
                                .check_same_layout(&c)
                                .map_err(|e| format!("control_delta: {e}"))?;
                            c.check_finite()
                                .map_err(|e| format!("control_delta: {e}"))?;
                            Some(c)
                        }
                        (None, true) => return Err("SCAFFOLD update without control_delta".into()),
                        (_, false) => None,
                    };
                    loss.push(client, fit.train_loss, fit.num_examples as f64);
                    updates.push((client.to_string(), w, fit.num_examples, control_delta));
                    tracing::debug!(client, examples = fit.num_examples, "update accepted");
                    Ok(())
                },
            )
            .await?;
        if phase.accepted < quorum.max(1) {
            return Ok((phase, f64::NAN));
        }
        updates.sort_by(|a, b| a.0.cmp(&b.0));
        let mut agg = strategy.aggregator(weights);
        for (_, w, n, control) in &updates {
            agg.add(w, *n, control.as_ref())?;
        }
        drop(updates);
        match strategy.finish(round, weights, agg, n_available) {
            Ok(next) => *weights = next,
            Err(shoal_shared::Error::NonFinite(what)) => {
                return Err(Error::Job(format!(
                    "round {round}: the aggregated model is not finite ({what}); lower the learning rates"
                )))
            }
            Err(e) => return Err(e.into()),
        }
        Ok((phase, loss.mean()))
    }

    /// Fit phase of a forest: each selected client grows `trees_per_round` new trees on its own
    /// rows (it needs no global forest for that); their trees join the global forest, weighted by
    /// the client's example count, merged in client-name order so the forest does not depend on
    /// arrival order.
    async fn fit_forest(
        &self,
        round: u32,
        state: &mut TrainState,
        fit_clients: &[ClientView],
        quorum: usize,
    ) -> Result<(Phase, f64)> {
        let TrainState { facts, global } = state;
        let GlobalModel::Forest { forest, params } = global else {
            return Err(Error::Job("internal: fit_forest on a weights model".into()));
        };
        let fit = task::Kind::Fit(v1::FitTask {
            local: Some(self.local_training(round)),
            control: None,
        });
        let (n_features, n_classes) = (facts.n_features, facts.class_names.len());
        let per_client = params.trees_per_round as usize;
        let announced = self.announced(fit_clients, false);
        let mut grown: Vec<(String, Forest)> = Vec::with_capacity(fit_clients.len());
        let mut loss = OrderedMean::default();
        let phase = self
            .phase(
                round,
                fit_clients,
                &Payload::default(),
                facts,
                fit,
                quorum,
                |client, arrived| {
                    let fit = expect_outcome!(arrived.result.outcome, Fit, "expected a fit result");
                    check_count(fit.num_examples, announced.get(client).copied(), "train")?;
                    check_loss(fit.train_loss)?;
                    let mut trees =
                        Forest::from_blob(&fit.model_blob, n_features, n_classes, per_client)
                            .map_err(|e| e.to_string())?;
                    if trees.trees.is_empty() {
                        return Err("fit result without trees".into());
                    }
                    trees.set_weight(fit.num_examples as f32);
                    loss.push(client, fit.train_loss, fit.num_examples as f64);
                    grown.push((client.to_string(), trees));
                    Ok(())
                },
            )
            .await?;
        if phase.accepted < quorum.max(1) {
            return Ok((phase, f64::NAN));
        }
        grown.sort_by(|a, b| a.0.cmp(&b.0));
        let mut next = Forest::clone(forest);
        for (_, trees) in grown {
            next.merge(trees, round, params.max_trees as usize)?;
        }
        *forest = Arc::new(next);
        Ok((phase, loss.mean()))
    }

    /// Gradient boosting before round 1: every available client sends a quantile sketch of its
    /// features; the merged sketch fixes the global bin edges.
    async fn sketch_edges(
        &self,
        avail: &[ClientView],
        facts: &DataFacts,
        params: &GbdtParams,
    ) -> Result<(Ensemble, Phase)> {
        let n_features = facts.n_features;
        let max_points = params.sketch_size as usize;
        let mut sketches: Vec<(String, QuantileSketch)> = Vec::new();
        let quorum = (self.policy().min_fit_clients as usize).min(avail.len());
        let kind = task::Kind::Sketch(v1::SketchTask {});
        let phase = self
            .phase(
                0,
                avail,
                &Payload::default(),
                facts,
                kind,
                quorum,
                |client, arrived| {
                    let s = expect_outcome!(arrived.result.outcome, Sketch, "expected a sketch");
                    let sketch = QuantileSketch::from_blob(&s.sketch, n_features, max_points)
                        .map_err(|e| e.to_string())?;
                    sketches.push((client.to_string(), sketch));
                    Ok(())
                },
            )
            .await?;
        if phase.accepted < quorum.max(1) {
            return Err(Error::Job(format!(
                "bin edges: {} of the {quorum} required clients sent a quantile sketch",
                phase.accepted
            )));
        }
        // Merge in client-name order so the edges do not depend on arrival order.
        sketches.sort_by(|a, b| a.0.cmp(&b.0));
        let mut merged = QuantileSketch {
            features: vec![Vec::new(); n_features],
        };
        for (_, s) in &sketches {
            merged.merge(s)?;
        }
        let edges = merged.bin_edges(params.max_bins as usize);
        info!(
            clients = sketches.len(),
            "bin edges fixed from federated quantile sketches"
        );
        Ok((
            Ensemble::new(n_features, facts.class_names.len(), edges),
            phase,
        ))
    }

    /// One boosting iteration: one tree per output, each grown level by level. The clients that
    /// answer the root level are the tree's participants; every later level must hear from all
    /// of them, because the coordinator derives right children as parent − left (histogram
    /// subtraction). If one leaves mid-tree, the tree stops growing there, from sums it knows.
    async fn fit_gbdt(
        &self,
        round: u32,
        state: &mut TrainState,
        avail: &[ClientView],
        fit_clients: &[ClientView],
        quorum: usize,
    ) -> Result<(Phase, f64)> {
        let TrainState { facts, global } = state;
        let GlobalModel::Gbdt { ensemble, params } = global else {
            return Err(Error::Job("internal: fit_gbdt on another model".into()));
        };
        params.check()?;
        let mut total = Phase::default();
        if ensemble.is_none() {
            // The sketch exchange is part of round 1's traffic.
            let (e, sketch_phase) = self.sketch_edges(avail, facts, params).await?;
            total.absorb(&sketch_phase);
            *ensemble = Some(Arc::new(e));
        }
        let Some(current) = ensemble.clone() else {
            return Err(Error::Job("internal: no ensemble after sketching".into()));
        };
        let n_features = facts.n_features;
        let bins = current.edges.max_bins();
        let blob: prost::bytes::Bytes = current.to_blob().into();
        let mut loss = OrderedMean::default();
        let mut trees = Vec::new();
        let announced = self.announced(fit_clients, false);
        // One participant set for the whole round: a client that fails once is not asked again
        // this round, so one silent client cannot stall every tree.
        let mut participants: Vec<ClientView> = fit_clients.to_vec();
        for output in 0..n_outputs(facts.class_names.len()) {
            let mut grower: Option<TreeGrower> = None;
            let mut level = 0u32;
            loop {
                let (tree_json, nodes) = match &grower {
                    None => (
                        serde_json::to_vec(&shoal_shared::gbdt::GTree::root()),
                        vec![0u32],
                    ),
                    Some(g) => (serde_json::to_vec(&g.partial_tree()), g.requests()),
                };
                let tree_json =
                    tree_json.map_err(|e| Error::Job(format!("encoding a tree: {e}")))?;
                let first = output == 0 && level == 0;
                let kind = task::Kind::Histogram(v1::HistogramTask {
                    output: output as u32,
                    partial_tree: tree_json,
                    nodes: nodes.clone(),
                    first_level: first,
                });
                let payload = Payload {
                    parameters: None,
                    blob: if first {
                        blob.clone()
                    } else {
                        Default::default()
                    },
                };
                let mut got: Vec<(String, Vec<Histogram>)> = Vec::new();
                let need = if level == 0 {
                    quorum
                } else {
                    participants.len()
                };
                let phase = self
                    .phase(
                        round,
                        &participants,
                        &payload,
                        facts,
                        kind,
                        need,
                        |client, arrived| {
                            let h = expect_outcome!(
                                arrived.result.outcome,
                                Histogram,
                                "expected histograms"
                            );
                            let hists =
                                histograms_from_bytes(&h.histograms, n_features, bins, nodes.len())
                                    .map_err(|e| e.to_string())?;
                            if hists.len() != nodes.len() {
                                return Err(format!(
                                    "{} histograms for {} nodes",
                                    hists.len(),
                                    nodes.len()
                                ));
                            }
                            let n = announced.get(client).copied().unwrap_or(0);
                            check_count(h.num_examples, Some(n), "train")?;
                            check_histogram_bounds(&hists, n)?;
                            if first {
                                check_loss(h.train_loss)?;
                                loss.push(client, h.train_loss, h.num_examples as f64);
                            }
                            got.push((client.to_string(), hists));
                            Ok(())
                        },
                    )
                    .await?;
                total.absorb(&phase);
                let before = participants.len();
                participants.retain(|c| got.iter().any(|(n, _)| *n == c.name));
                if level == 0 {
                    if got.len() < quorum.max(1) {
                        if output == 0 {
                            return Ok((total, f64::NAN));
                        }
                        // Some trees of this round exist already: a round is all outputs or none.
                        return Err(Error::Job(format!(
                            "round {round}: only {} of the {quorum} required clients answered for output {output}",
                            got.len()
                        )));
                    }
                    if output == 0 {
                        total.accepted = got.len();
                    }
                } else if participants.len() < before {
                    warn!(
                        round,
                        output, level, "a participant left mid-tree; the tree stops growing here"
                    );
                    break;
                }
                // Sum in client-name order: the result does not depend on arrival order.
                got.sort_by(|a, b| a.0.cmp(&b.0));
                let mut sums: Vec<Histogram> =
                    vec![Histogram::zeros(n_features, bins); nodes.len()];
                for (_, hists) in &got {
                    for (s, h) in sums.iter_mut().zip(hists) {
                        s.add(h)?;
                    }
                }
                match grower.as_mut() {
                    None => {
                        let root = sums
                            .into_iter()
                            .next()
                            .ok_or_else(|| Error::Job("no root histogram".into()))?;
                        grower = Some(TreeGrower::new(params, &current.edges, root));
                    }
                    Some(g) => {
                        if let Err(e) = g.absorb(sums) {
                            // The grower is unchanged on error: stop this tree from what is known.
                            warn!(
                                round,
                                output,
                                level,
                                "histograms could not be used ({e}); the tree stops here"
                            );
                            break;
                        }
                    }
                }
                level += 1;
                if grower.as_ref().is_some_and(TreeGrower::is_done) {
                    break;
                }
            }
            if let Some(g) = grower {
                trees.push(g.finish());
            }
        }
        if loss.0.is_empty() {
            return Err(Error::Job(format!(
                "round {round}: no client reported a training loss"
            )));
        }
        let mut next = Ensemble::clone(&current);
        next.rounds.push(trees);
        *ensemble = Some(Arc::new(next));
        Ok((total, loss.mean()))
    }

    /// Local training settings for round `round`'s Fit tasks.
    fn local_training(&self, round: u32) -> v1::LocalTraining {
        shoal_proto::local_to_wire(
            &self.spec.local,
            self.spec.local_lr(round),
            self.spec.proximal_mu(),
        )
    }

    /// After the last round: every connected client scores the final global model on its local
    /// test split (and, with `personalize_epochs`, again after that many local epochs), so the
    /// table shows whom the global model serves badly.
    pub async fn client_table(&self, state: &TrainState) -> Result<Vec<ClientRow>> {
        let clients: Vec<ClientView> = self
            .registry
            .available(&self.spec.dataset)
            .into_iter()
            .filter(|c| compatible(c, &self.spec.dataset, &state.facts))
            .collect();
        let payload = state.global.payload();
        let announced = self.announced(&clients, true);
        // Personalising means local training from the global model: weights models only.
        let personalize = match state.global {
            GlobalModel::Params { .. } => self.spec.evaluation.personalize_epochs,
            GlobalModel::Forest { .. } | GlobalModel::Gbdt { .. } => 0,
        };
        let kind = task::Kind::Evaluate(v1::EvaluateTask {
            personalize_epochs: personalize,
            local: Some(self.local_training(self.spec.rounds)),
        });
        let mut rows = Vec::with_capacity(clients.len());
        let round = self.spec.rounds + 1;
        self.phase(
            round,
            &clients,
            &payload,
            &state.facts,
            kind,
            clients.len(),
            |client, arrived| {
                let e = expect_outcome!(
                    arrived.result.outcome,
                    Evaluate,
                    "expected an evaluate result"
                );
                check_evaluation(&e, announced.get(client).copied(), true)?;
                rows.push(ClientRow {
                    client: client.to_string(),
                    examples: e.num_examples,
                    classes_present: e.classes_present,
                    accuracy: e.accuracy,
                    personalized_accuracy: e.personalized_accuracy,
                });
                Ok(())
            },
        )
        .await?;
        rows.sort_by(|a, b| a.client.cmp(&b.client));
        Ok(rows)
    }

    /// Pushes one task per client and feeds each arriving result to `on_result` (which validates and
    /// absorbs it, or says why not). Stops when every client has answered or left, when the quorum
    /// has answered and `wait_after_quorum_secs` has passed, or at the round deadline.
    #[allow(clippy::too_many_arguments)]
    async fn phase(
        &self,
        round: u32,
        clients: &[ClientView],
        payload: &Payload,
        facts: &DataFacts,
        kind: task::Kind,
        quorum: usize,
        on_result: impl FnMut(&str, Arrived) -> std::result::Result<(), String>,
    ) -> Result<Phase> {
        self.phase_until(
            round, clients, payload, facts, kind, quorum, None, on_result,
        )
        .await
    }

    /// [`Self::phase`], closing as soon as `target` results have been accepted (over-selection).
    #[allow(clippy::too_many_arguments)]
    async fn phase_until(
        &self,
        round: u32,
        clients: &[ClientView],
        payload: &Payload,
        facts: &DataFacts,
        kind: task::Kind,
        quorum: usize,
        target: Option<usize>,
        mut on_result: impl FnMut(&str, Arrived) -> std::result::Result<(), String>,
    ) -> Result<Phase> {
        let policy = self.policy();
        let deadline = Instant::now() + secs(policy.round_timeout_secs);
        let deadline_unix_ms =
            unix_ms().saturating_add((policy.round_timeout_secs * 1000.0) as u64);
        let mut phase = Phase::default();
        let mut waiting = FuturesUnordered::new();
        let mut task_ids = Vec::with_capacity(clients.len());
        for c in clients {
            // Unique per dispatch: a boosting round sends several histogram tasks to each client,
            // and a late answer to an earlier one must never pass for a later one.
            let seq = self
                .task_seq
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Fixed width: message sizes (and so the bytes in the metrics) do not depend on
            // how many tasks this process sent before, e.g. before a restart.
            let task_id = format!(
                "{}/{}/{}/{:010}/{}",
                self.id,
                round,
                kind_name(&kind),
                seq,
                c.name
            );
            let task = v1::Task {
                task_id: task_id.clone(),
                job_id: self.id.clone(),
                round,
                dataset: self.spec.dataset.clone(),
                class_names: facts.class_names.clone(),
                model: Some(shoal_proto::model_to_wire(&self.spec.model)),
                parameters: payload.parameters.clone(),
                model_blob: payload.blob.clone(),
                feature_view: self.view.clone(),
                validation: self.validation,
                deadline_unix_ms,
                seed: seed::derive(
                    self.spec.seed,
                    &[round.into(), seed::stable_hash(&c.name), SEED_TASK],
                ),
                kind: Some(kind.clone()),
            };
            let size = prost::Message::encoded_len(&task);
            if size > self.max_message_bytes {
                self.registry.forget(&task_ids);
                return Err(Error::Job(format!(
                    "a task for round {round} would be {size} bytes, over the maximum message size of {} bytes",
                    self.max_message_bytes
                )));
            }
            match self.registry.dispatch(&c.name, task) {
                Ok(slot) => {
                    phase.bytes_down += size as u64;
                    task_ids.push(task_id);
                    let name = c.name.clone();
                    waiting.push(async move { (name, slot.await) });
                }
                Err(e) => {
                    warn!(client = %c.name, "{e}");
                    phase.failed += 1;
                }
            }
        }
        let mut grace: Option<Instant> = None;
        while !waiting.is_empty() {
            let limit = grace.map_or(deadline, |g| g.min(deadline));
            tokio::select! {
                // Cancellation first: at shutdown the registry drops every open slot at once, and
                // those departures must not be mistaken for a lost quorum.
                biased;
                _ = self.cancel.cancelled() => {
                    self.registry.forget(&task_ids);
                    return Err(Error::Cancelled);
                }
                _ = tokio::time::sleep_until(limit) => break,
                Some((client, outcome)) = waiting.next() => {
                    match outcome {
                        Ok(arrived) => {
                            phase.bytes_up += arrived.bytes;
                            let mismatch = arrived.result.job_id != self.id || arrived.result.round != round;
                            let verdict = if mismatch {
                                Err(format!("result names job `{}` round {}, expected `{}` round {round}", arrived.result.job_id, arrived.result.round, self.id))
                            } else {
                                on_result(&client, arrived)
                            };
                            match verdict {
                                Ok(()) => phase.accepted += 1,
                                Err(reason) => {
                                    phase.rejected += 1;
                                    *phase.rejected_by.entry(client.clone()).or_default() += 1;
                                    warn!(client, round, "result rejected: {reason}");
                                }
                            }
                        }
                        Err(_) => {
                            phase.failed += 1;
                            warn!(client, round, "client left before answering");
                        }
                    }
                    if phase.accepted >= quorum && grace.is_none() {
                        grace = Some(Instant::now() + secs(policy.wait_after_quorum_secs));
                    }
                    if target.is_some_and(|t| phase.accepted >= t) {
                        break;
                    }
                }
            }
        }
        phase.timed_out = waiting.len();
        if phase.timed_out > 0 {
            warn!(
                round,
                missing = phase.timed_out,
                "closing the phase without the slowest clients"
            );
        }
        self.registry.forget(&task_ids);
        Ok(phase)
    }
}

/// Largest absolute loss a result may report; beyond it a weighted mean could overflow.
const MAX_LOSS: f64 = 1e12;

/// Gradient/hessian sums a client of `n` rows can honestly send: logloss and softmax gradients lie
/// in [-1, 1] and hessians in [0, 1/4] per row. Anything beyond is a lie that could steer splits or
/// overflow the coordinator's sums.
fn check_histogram_bounds(hists: &[Histogram], n: u64) -> std::result::Result<(), String> {
    let n = n as f64;
    for h in hists {
        for pair in h.data.chunks_exact(2) {
            let (g, hess) = (pair[0], pair[1]);
            if g.abs() > n * (1.0 + 1e-9) || !(-1e-9..=n * 0.25 + 1e-9).contains(&hess) {
                return Err(format!(
                    "histogram sums outside what {n} rows can give (G {g}, H {hess})"
                ));
            }
        }
    }
    Ok(())
}

/// An evaluation a client could honestly report: a count within what it announced, a bounded
/// finite loss, accuracies in [0, 1].
fn check_evaluation(
    e: &v1::EvaluateResult,
    announced: Option<u64>,
    classifies: bool,
) -> std::result::Result<(), String> {
    check_count(e.num_examples, announced, "test")?;
    let valid = |a: f64| (0.0..=1.0).contains(&a);
    // A model without classes (a denoiser) reports no accuracy; whatever it sends is ignored.
    let plausible = e.loss.is_finite()
        && e.loss.abs() <= MAX_LOSS
        && (!classifies || valid(e.accuracy))
        && e.personalized_accuracy.is_none_or(valid);
    if !plausible {
        return Err(format!(
            "implausible evaluation (examples {}, loss {}, accuracy {})",
            e.num_examples, e.loss, e.accuracy
        ));
    }
    Ok(())
}

fn check_loss(loss: f64) -> std::result::Result<(), String> {
    if loss.is_finite() && loss.abs() <= MAX_LOSS {
        Ok(())
    } else {
        Err(format!("implausible train_loss {loss}"))
    }
}

/// What each client announced in its Hello for `dataset`, by client name.
fn announced_sizes(
    clients: &[ClientView],
    dataset: &str,
    pick: impl Fn(&v1::DatasetInfo) -> u64,
) -> std::collections::HashMap<String, u64> {
    clients
        .iter()
        .filter_map(|c| c.dataset(dataset).map(|d| (c.name.clone(), pick(d))))
        .collect()
}

/// An example count must be positive and at most what the client announced: otherwise one client
/// could outweigh all the others in the weighted mean.
fn check_count(n: u64, announced: Option<u64>, split: &str) -> std::result::Result<(), String> {
    let limit = announced.unwrap_or(0);
    if n == 0 || n > limit {
        return Err(format!(
            "reports {n} {split} examples; it announced {limit} in its Hello"
        ));
    }
    Ok(())
}

fn kind_name(kind: &task::Kind) -> &'static str {
    match kind {
        task::Kind::Fit(_) => "fit",
        task::Kind::Evaluate(_) => "evaluate",
        task::Kind::Sketch(_) => "sketch",
        task::Kind::Histogram(_) => "histogram",
    }
}

/// Whether a client's copy of the dataset fits the job's model.
fn compatible(c: &ClientView, dataset: &str, facts: &DataFacts) -> bool {
    c.dataset(dataset)
        .is_some_and(|d| d.feature_names.len() == facts.raw_features)
}

/// Seeded client sampling, Flower's rule: `max(floor(n * fraction), min)` clients, at most all.
pub fn sample(avail: &[ClientView], fraction: f64, min: u32, seed: u64) -> Vec<ClientView> {
    let n = ((avail.len() as f64 * fraction).floor() as usize)
        .max(min as usize)
        .min(avail.len());
    sample_n(avail, n, seed)
}

/// `n` of `avail` (all of them when `n` reaches their number), drawn from `seed`, in name order.
pub fn sample_n(avail: &[ClientView], n: usize, seed: u64) -> Vec<ClientView> {
    let n = n.min(avail.len());
    if n == avail.len() {
        return avail.to_vec();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut chosen: Vec<ClientView> = avail.choose_multiple(&mut rng, n).cloned().collect();
    chosen.sort_by(|a, b| a.name.cmp(&b.name));
    chosen
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.0, 1e9))
}

pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn views(n: usize) -> Vec<ClientView> {
        (0..n)
            .map(|i| ClientView {
                name: format!("c{i:02}"),
                datasets: vec![],
            })
            .collect()
    }

    #[test]
    fn a_nan_loss_survives_the_store_round_trip() {
        let rec = RoundRecord {
            round: 1,
            rounds_total: 1,
            clients: 1,
            clients_selected: 1,
            train_loss: f64::NAN,
            fed_loss: None,
            fed_accuracy: None,
            test_accuracy: None,
            test_loss: None,
            bytes_up: 0,
            bytes_down: 0,
            seconds: 0.0,
            rejected: 0,
            rejected_by: Default::default(),
            late_by: Default::default(),
            quarantined: Vec::new(),
        };
        let back: RoundRecord =
            serde_json::from_str(&serde_json::to_string(&rec).unwrap()).unwrap();
        assert!(back.train_loss.is_nan());
    }

    #[test]
    fn late_answers_are_stored_apart_and_do_not_strike() {
        let json = r#"{"round":2,"rounds_total":5,"clients":3,"clients_selected":4,"train_loss":0.5,
            "fed_loss":null,"fed_accuracy":null,"test_accuracy":null,"test_loss":null,"bytes_up":1,
            "bytes_down":2,"seconds":0.1,"rejected":5,"rejected_by":{"slow":2,"bad":3}}"#;
        // A record stored before late answers were kept apart reads back with none.
        let mut rec: RoundRecord = serde_json::from_str(json).unwrap();
        assert!(rec.late_by.is_empty());
        assert_eq!(rec.strikes(), rec.rejected_by);
        rec.late_by = [("slow".to_string(), 2)].into();
        let back: RoundRecord =
            serde_json::from_str(&serde_json::to_string(&rec).unwrap()).unwrap();
        assert_eq!(back, rec);
        assert_eq!(
            back.strikes(),
            [("bad".to_string(), 3)].into(),
            "only the late client's refusals were late"
        );
    }

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

    #[test]
    fn sampling_follows_fraction_and_minimum_and_is_seeded() {
        let avail = views(10);
        assert_eq!(sample(&avail, 1.0, 2, 1).len(), 10);
        assert_eq!(sample(&avail, 0.3, 2, 1).len(), 3);
        assert_eq!(sample(&avail, 0.1, 4, 1).len(), 4);
        assert_eq!(sample(&views(3), 0.1, 5, 1).len(), 3);
        assert_eq!(sample(&avail, 0.5, 1, 7), sample(&avail, 0.5, 1, 7));
        let draws: std::collections::HashSet<Vec<String>> = (0..20)
            .map(|s| {
                sample(&avail, 0.5, 1, s)
                    .into_iter()
                    .map(|c| c.name)
                    .collect()
            })
            .collect();
        assert!(draws.len() > 1, "different seeds pick different clients");
    }
}
