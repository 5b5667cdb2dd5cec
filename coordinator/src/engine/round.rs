//! The round engine of a `train` job: wait for clients, sample, then drive the model's server
//! half ([`shoal_shared::models::Server`]) phase by phase: push each phase's tasks, feed the
//! replies to the server half, close the phase at its quorum or deadline; evaluate (federated and
//! centralized), record. The engine owns the network, deadlines, refusals and strikes; what a
//! phase asks and how replies are checked and combined belongs to the model kind.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use shoal_proto::tasks::{self, TaskPayload};
use shoal_proto::v1::{self, task, task_result};
use shoal_shared::data::builtin::Builtin;
use shoal_shared::data::{self, Dataset};
use shoal_shared::models::phase::{
    check_count, Influence, OrderedMean, PhaseTally, Rejection, RoundPlan, Step, TaskKind, MAX_LOSS,
};
use shoal_shared::models::sgd::server::NormBound;
use shoal_shared::models::sgd::EvalStats;
use shoal_shared::models::{Server, ServerSetup};
use shoal_shared::seed;
use shoal_shared::text::{clip, ID_CHARS, TEXT_CHARS};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use crate::engine::registry::{Arrived, ClientView, Registry};
use crate::error::{Error, Result};
use crate::spec::{CheckedSpec, NormAction};

/// The awaited variant of a task result; a client's error or another variant is the verdict
/// (`return Err(...)` from the enclosing result check).
macro_rules! expect_outcome {
    ($outcome:expr, $variant:ident, $what:literal) => {
        match $outcome {
            Some(task_result::Outcome::$variant(v)) => v,
            Some(task_result::Outcome::Error(e)) => return Err(Rejection::ClientError(e)),
            _ => return Err(Rejection::WrongKind($what)),
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
    /// Those of them quarantined for silence (`updates.quarantine_after` selections in a row
    /// without any answer), kept so that a resumed job leaves them out too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub silenced: Vec<String>,
    /// An asynchronous step (`[async]`): the mean age, in steps, of the models its updates
    /// started from (0: all from the model of the moment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staleness: Option<f64>,
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
pub(crate) const SEED_TASK: u64 = 4;

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
    /// About the largest message a task or reply of the job takes (a weights model's tensors;
    /// 0 until the model is known, and for trees, whose size is not known ahead).
    pub message_bytes: u64,
}

/// About the bytes a task or reply carrying `params` `f32` tensors (twice for SCAFFOLD's control)
/// takes on the wire: the values plus room for names, shapes and the task's other fields.
pub fn message_bytes(params: usize, with_control: bool) -> u64 {
    let values = 4 * params as u64 * if with_control { 2 } else { 1 };
    values + values / 100 + 64 * 1024
}

/// Everything a running job needs from the coordinator.
#[derive(Debug, Clone)]
pub struct JobCtx {
    pub id: String,
    pub spec: CheckedSpec,
    pub registry: Arc<Registry>,
    pub cancel: CancellationToken,
    /// Largest message the coordinator sends; a task that would exceed it fails the job clearly.
    pub max_message_bytes: usize,
    /// Largest task or result in chunks (`--max-transfer-bytes`).
    pub max_transfer_bytes: u64,
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
    /// The model's initial parameters when the job takes them from a file or a client (see
    /// `jobs/initial.rs`); `None`: the model initialises itself from the job's seed.
    pub initial: Option<Arc<shoal_shared::tensor::Weights>>,
    /// Where files named in the job resolve (`serve --data-dir`); see
    /// [`crate::spec::resolve_data_file`].
    pub data_dir: Option<Arc<std::path::Path>>,
    /// Clients already told why they are left out of this job (told once, not every round).
    pub told: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    /// Selections in a row each client let pass without any answer (since this process took
    /// the job over); see [`JobCtx::count_silence`].
    pub silence: Arc<std::sync::Mutex<BTreeMap<String, u32>>>,
    /// When the job was submitted (Unix ms): its wall time, across restarts, counts from here.
    pub created_ms: u64,
    /// Where the round's updates are spooled for the influence limits (`None`: in memory).
    pub spool_dir: Option<Arc<std::path::Path>>,
}

/// Scores the global model on `data`, off the async threads; `None` when the coordinator cannot
/// run the model (an external model is scored by its clients only).
pub async fn evaluate(global: &Server, data: Arc<Dataset>) -> Result<Option<EvalStats>> {
    let Some(score) = global.evaluator() else {
        return Ok(None);
    };
    tokio::task::spawn_blocking(move || score(&data))
        .await
        .map_err(|e| Error::Job(format!("evaluation: {e}")))?
        .map(Some)
        .map_err(Error::from)
}

/// The state a train job carries from round to round.
#[derive(Debug)]
pub struct TrainState {
    pub facts: DataFacts,
    /// The model's server half: the global model and what trains it.
    pub global: Server,
    /// The global model as tasks carry it, encoded once per version.
    pub encoded: EncodedModel,
}

impl TrainState {
    pub fn new(facts: DataFacts, global: Server) -> Self {
        TrainState {
            facts,
            global,
            encoded: EncodedModel::default(),
        }
    }

    /// The global model as the next tasks carry it.
    pub fn task_payload(&self) -> TaskPayload {
        self.encoded.payload(self.global.payload())
    }
}

/// The last global weights encoded for tasks, and their encoding.
#[derive(Debug, Default)]
pub struct EncodedModel(
    std::sync::Mutex<Option<(Arc<shoal_shared::tensor::Weights>, v1::Parameters)>>,
);

impl EncodedModel {
    /// `payload` as tasks carry it. A weights model's tensors are encoded once per version of
    /// the model, and every task that carries that version shares the encoding (its bytes are
    /// reference-counted): a round's evaluation and the next round's training send the same
    /// model, encoded once. The cache holds the weights it encoded, so a pointer match is that
    /// version and no other.
    pub fn payload(&self, payload: shoal_shared::models::phase::Payload) -> TaskPayload {
        let shoal_shared::models::phase::Payload::Weights(w) = &payload else {
            return TaskPayload::from(payload);
        };
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let parameters = match &*cache {
            Some((held, p)) if Arc::ptr_eq(held, w) => p.clone(),
            _ => {
                let p = shoal_proto::weights_to_wire(w);
                *cache = Some((Arc::clone(w), p.clone()));
                p
            }
        };
        TaskPayload {
            parameters: Some(parameters),
            ..TaskPayload::default()
        }
    }
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

/// A round's training, done: what its record needs besides the phases.
#[derive(Debug)]
pub(crate) struct RoundDone {
    pub(crate) round: u32,
    /// Updates that entered the aggregate.
    pub(crate) accepted: usize,
    /// Clients asked to train.
    pub(crate) selected: usize,
    pub(crate) train_loss: f64,
    pub(crate) started: Instant,
}

/// What a round's new global model scored.
#[derive(Debug, Default)]
pub(crate) struct RoundScores {
    pub(crate) fed_loss: Option<f64>,
    pub(crate) fed_accuracy: Option<f64>,
    pub(crate) test_loss: Option<f64>,
    pub(crate) test_accuracy: Option<f64>,
    /// The federated evaluation's traffic and refusals.
    pub(crate) phase: Phase,
}

/// Outcome of pushing one kind of task to a set of clients.
#[derive(Debug, Default)]
pub(crate) struct Phase {
    pub(crate) accepted: usize,
    pub(crate) rejected: usize,
    pub(crate) rejected_by: BTreeMap<String, u32>,
    /// Answers set aside as late by the phase itself (not in `rejected_by`; no strike).
    pub(crate) late_by: BTreeMap<String, u32>,
    pub(crate) failed: usize,
    pub(crate) timed_out: usize,
    pub(crate) bytes_up: u64,
    pub(crate) bytes_down: u64,
    /// Clients that sent something for one of the phase's tasks (accepted or refused).
    pub(crate) answered: std::collections::BTreeSet<String>,
    /// Clients still silent when the phase closed at its deadline or grace period (not those
    /// cut off because over-selection had enough updates).
    pub(crate) silent: std::collections::BTreeSet<String>,
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
        self.answered.extend(other.answered.iter().cloned());
        self.silent.extend(other.silent.iter().cloned());
    }
}

impl JobCtx {
    /// The most examples each client may report for its train (or test) split: what its Hello
    /// announced, or, for AutoML trials that re-split all rows, its train and test rows together.
    pub(crate) fn announced(
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

    /// The job's limits on one client's weight and update (`[updates]`, 0 = off).
    fn influence(&self) -> Influence {
        let u = &self.spec.updates;
        Influence {
            weight_cap: (u.weight_cap > 0.0).then_some(u.weight_cap),
            adaptive_norm: (u.adaptive_norm > 0.0).then_some(u.adaptive_norm),
            refuse_norm: (u.adaptive_refuse > 0.0).then_some(u.adaptive_refuse),
        }
    }

    fn policy(&self) -> &crate::spec::ClientPolicy {
        &self.spec.clients
    }

    /// Connected clients holding the job's dataset that run its model kind and every task kind
    /// in `tasks` (a client is sent only what its Hello says it runs).
    pub(crate) fn candidates(&self, tasks: &[TaskKind]) -> Vec<ClientView> {
        let model = self.spec.model.name();
        self.registry
            .available(&self.spec.dataset)
            .into_iter()
            .filter(|c| c.caps.runs(model, tasks))
            .collect()
    }

    /// Whether `c` fits the job's schema; one that does not is told why it is left out, once
    /// per job, on its stream and in the log.
    pub(crate) fn fits(&self, c: &ClientView, facts: &DataFacts) -> bool {
        let Some(why) = misfit(c, &self.spec.dataset, facts) else {
            return true;
        };
        let mut told = self.told.lock().unwrap_or_else(|p| p.into_inner());
        if told.insert(c.name.clone()) {
            info!(client = %c.name, "left out of the job: {why}");
            self.registry
                .notify(&c.name, &self.id, format!("left out of the job: {why}"));
        }
        false
    }

    /// A refused result: counted against its sender, logged, and told to it.
    pub(crate) fn refuse(&self, phase: &mut Phase, client: &str, round: u32, why: &str) {
        phase.rejected += 1;
        *phase.rejected_by.entry(client.to_string()).or_default() += 1;
        warn!(client, round, "result rejected: {why}");
        self.registry.notify(
            client,
            &self.id,
            format!("round {round}: your result was refused: {why}"),
        );
    }

    /// Why clients holding the dataset do not count, when some do not run the job's kinds.
    fn unable_note(&self) -> String {
        let model = self.spec.model.name();
        let tasks = self.spec.model.kind().training_tasks();
        let unable = self
            .registry
            .available(&self.spec.dataset)
            .iter()
            .filter(|c| !c.caps.runs(model, tasks))
            .count();
        if unable == 0 {
            return String::new();
        }
        let names: Vec<&str> = tasks.iter().map(|t| t.as_str()).collect();
        format!(
            "; {unable} more hold it but do not run model kind `{model}` with {} tasks",
            names.join(" and ")
        )
    }

    /// Why clients that run the job's kinds do not count, when some do not fit it: how many,
    /// and the first one's reason.
    fn misfit_note(&self, facts: &DataFacts) -> String {
        let misfits: Vec<(String, String)> = self
            .candidates(self.spec.model.kind().training_tasks())
            .iter()
            .filter_map(|c| misfit(c, &self.spec.dataset, facts).map(|why| (c.name.clone(), why)))
            .collect();
        match misfits.first() {
            None => String::new(),
            Some((name, why)) => format!(
                "; {} more do not fit the job ({}: {why})",
                misfits.len(),
                clip(name, ID_CHARS)
            ),
        }
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
                .candidates(self.spec.model.kind().training_tasks())
                .into_iter()
                .filter(|c| facts.is_none_or(|f| self.fits(c, f)))
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
                        "round {round}: needed {need} connected clients holding dataset `{}` (clients.min_available_clients), saw {} after waiting {}s{}",
                        self.spec.dataset, avail.len(), self.policy().wait_for_clients_secs,
                        self.unable_note() + &facts.map(|f| self.misfit_note(f)).unwrap_or_default()
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
                message_bytes: 0,
            });
        }
        // A dataset the clients registered. Its schema comes from what the operator gave (the
        // spec's classes, the holdout), else from the clients at job start by majority: one
        // Hello can neither fail the job nor widen the model. Clients that do not fit are left
        // out and told why (`misfit`).
        let held: Vec<&v1::DatasetInfo> = clients.iter().filter_map(|c| c.dataset(&name)).collect();
        if held.is_empty() {
            return Err(Error::Job(format!("no client holds dataset `{name}`")));
        }
        let holdout = match &self.spec.evaluation.holdout {
            Some(given) => {
                let path = crate::spec::resolve_data_file(
                    self.data_dir.as_deref(),
                    "evaluation.holdout",
                    given,
                )?;
                let col = self.spec.evaluation.label_column.clone();
                let loaded =
                    tokio::task::spawn_blocking(move || data::csv::load_csv(&path, col.as_deref()))
                        .await
                        .map_err(|e| Error::Job(format!("loading the holdout: {e}")))?;
                // The details name cells of the file: they go to the operator's log, not to the
                // job's error, which whoever submitted the job reads.
                let h = loaded.map_err(|e| {
                    warn!("cannot load the holdout: {e}");
                    let shown: String = given.chars().take(200).collect();
                    Error::Job(format!(
                        "cannot load the holdout {shown:?}: it is not a usable CSV file (the coordinator's log says why)"
                    ))
                })?;
                if !held.iter().any(|d| d.feature_names.len() == h.n_features()) {
                    return Err(Error::Job(format!(
                        "holdout has {} features but no client's dataset `{name}` has (the first has {})",
                        h.n_features(),
                        held[0].feature_names.len()
                    )));
                }
                Some(h)
            }
            None => None,
        };
        let feature_names = match &holdout {
            Some(h) => h.feature_names.clone(),
            None => majority_features(&held).to_vec(),
        };
        let n = feature_names.len();
        let mut classes: Vec<String> = match (&self.spec.classes, &holdout) {
            (Some(given), _) => given.clone(),
            (None, Some(h)) => h.class_names.clone(),
            (None, None) => held
                .iter()
                .filter(|d| d.feature_names.len() == n)
                .flat_map(|d| d.class_names.iter().cloned())
                .collect(),
        };
        classes.sort();
        classes.dedup();
        data::sort_class_names(&mut classes);
        if let (Some(h), Some(_)) = (&holdout, &self.spec.classes) {
            if let Some(c) = h.class_names.iter().find(|c| !classes.contains(c)) {
                return Err(Error::Job(format!(
                    "the holdout has class {:?}, which the job's `classes` does not list",
                    clip(c, ID_CHARS)
                )));
            }
        }
        let holdout = match holdout {
            Some(h) => Some(Arc::new(h.remap_classes(&classes)?)),
            None => None,
        };
        Ok(DataFacts {
            n_features: n,
            raw_features: n,
            feature_names,
            class_names: classes,
            holdout,
            builtin: None,
            message_bytes: 0,
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
                message_bytes: 0,
            },
        ))
    }

    /// Sets up the model's server half: the initial global model and the strategy.
    pub fn init_state(&self, facts: DataFacts) -> Result<TrainState> {
        let updates = &self.spec.updates;
        let setup = ServerSetup {
            n_features: facts.n_features,
            n_classes: facts.class_names.len(),
            init_seed: seed::derive(self.spec.seed, &[SEED_INIT]),
            max_params: self.max_tensor_elements,
            strategy: self.spec.strategy.clone(),
            bound: updates.max_norm.map(|max| NormBound {
                max,
                clip: updates.on_norm == NormAction::Clip,
            }),
            initial: self.initial.clone(),
            influence: self.influence(),
            spool: match &self.spool_dir {
                Some(dir) => super::spool::FileSpool::maker(dir),
                None => Default::default(),
            },
        };
        let global = self.spec.model.server(&setup)?;
        let mut facts = facts;
        if let Some(w) = global.weights() {
            let scaffold = self.spec.strategy.uses_control_variates();
            facts.message_bytes = message_bytes(w.num_params(), scaffold);
            // Over the message limit a model travels in chunks, up to the transfer limit.
            let max = self.max_transfer_bytes.max(self.max_message_bytes as u64);
            if facts.message_bytes > max {
                return Err(Error::Job(format!(
                    "the model's {} parameters take about {} bytes in a task or update, over the coordinator's transfer limit of {max} bytes (--max-transfer-bytes, now {}; a model over the message limit, --max-message-bytes {}, travels in chunks up to it)",
                    w.num_params(),
                    facts.message_bytes,
                    self.max_transfer_bytes,
                    self.max_message_bytes
                )));
            }
        }
        Ok(TrainState::new(facts, global))
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
        if policy.over_selection > 1.0 && state.global.trains_from_global() {
            let needed = fit_clients.len();
            let asked = ((needed as f64 * policy.over_selection).ceil() as usize).min(avail.len());
            if asked > needed {
                fit_clients = sample_n(&avail, asked, fit_seed);
                target = Some(needed);
            }
        }
        tracing::debug!(selected = fit_clients.len(), available = avail.len(), "fit");

        let announced = self.announced(&avail, false);
        let plan = RoundPlan {
            round,
            announced: fit_clients
                .iter()
                .map(|c| announced.get(&c.name).copied().unwrap_or(0))
                .collect(),
            selected: fit_clients.iter().map(|c| c.name.clone()).collect(),
            available: avail.iter().map(|c| c.name.clone()).collect(),
            quorum,
            min_clients: policy.min_fit_clients as usize,
            target,
            n_available: avail.len(),
        };
        let (fit_phase, accepted, train_loss) = self.train_phases(plan, state, &avail).await?;
        if accepted < quorum.max(1) {
            let why = format!(
                "round {round}: {} of the {quorum} required clients (clients.min_fit_clients) returned a valid update ({} selected, {} rejected, {} left, {} past the {}s deadline)",
                accepted,
                fit_clients.len(),
                fit_phase.rejected,
                fit_phase.failed,
                fit_phase.timed_out,
                policy.round_timeout_secs
            );
            // Departures are an outage, not a verdict on the job: with the quorum back, the
            // round can run again.
            return Err(
                if fit_phase.failed > 0 && accepted + fit_phase.failed >= quorum {
                    Error::QuorumLost(why)
                } else {
                    Error::Job(why)
                },
            );
        }

        let last = round == self.spec.rounds;
        let federated = round.is_multiple_of(self.spec.evaluation.every) || last;
        let scores = self.score_round(round, state, federated).await?;

        // A stop (SIGTERM, cancel) between the phases empties the registry before the evaluation
        // picks its clients, and an evaluation of nobody is not an error: without this check
        // the round would be recorded without its evaluation, and a resumed job would never run
        // it again (a CI run of the SIGTERM restart test saw round 9 lose its fed metrics).
        if self.cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }

        let done = RoundDone {
            round,
            accepted,
            selected: fit_clients.len(),
            train_loss,
            started,
        };
        Ok(self.round_record(done, &fit_phase, scores))
    }

    /// A finished round's record: its figures, its refusals (the phases' own and results the
    /// registry refused for this job: duplicates, late answers, other clients' tasks), and the
    /// clients its refusals and silences quarantine.
    pub(crate) fn round_record(
        &self,
        done: RoundDone,
        fit_phase: &Phase,
        scores: RoundScores,
    ) -> RoundRecord {
        let eval_phase = &scores.phase;
        let mut rejected_by = fit_phase.rejected_by.clone();
        let (registry_refused, mut late) = self.registry.take_refused(&self.id);
        for (client, n) in eval_phase.rejected_by.iter().chain(&registry_refused) {
            *rejected_by.entry(client.clone()).or_default() += n;
        }
        // Late answers the round itself set aside (an asynchronous step's too-stale updates).
        for (client, n) in &fit_phase.late_by {
            *rejected_by.entry(client.clone()).or_default() += n;
            *late.entry(client.clone()).or_default() += n;
        }
        let mut rec = RoundRecord {
            staleness: None,
            round: done.round,
            rounds_total: self.spec.rounds,
            clients: done.accepted as u32,
            clients_selected: done.selected as u32,
            train_loss: done.train_loss,
            fed_loss: scores.fed_loss,
            fed_accuracy: scores.fed_accuracy,
            test_accuracy: scores.test_accuracy,
            test_loss: scores.test_loss,
            bytes_up: fit_phase.bytes_up + eval_phase.bytes_up,
            bytes_down: fit_phase.bytes_down + eval_phase.bytes_down,
            seconds: done.started.elapsed().as_secs_f64(),
            rejected: rejected_by.values().sum(),
            rejected_by,
            late_by: late,
            quarantined: Vec::new(),
            silenced: Vec::new(),
        };
        rec.quarantined = self.strike(&rec.strikes());
        let mut answered = fit_phase.answered.clone();
        answered.extend(eval_phase.answered.iter().cloned());
        answered.extend(rec.rejected_by.keys().cloned());
        let mut silent = fit_phase.silent.clone();
        silent.extend(eval_phase.silent.iter().cloned());
        rec.silenced = self.count_silence(&silent, &answered);
        rec.quarantined.extend(rec.silenced.iter().cloned());
        rec
    }

    /// Scores the new global model at the end of round `round`: on the clients' test splits
    /// when `federated` (a phase of evaluate tasks), and on the coordinator's test set.
    pub(crate) async fn score_round(
        &self,
        round: u32,
        state: &TrainState,
        federated: bool,
    ) -> Result<RoundScores> {
        // Federated evaluation of the new global model.
        let (mut fed_loss, mut fed_accuracy) = (None, None);
        let mut eval_phase = Phase::default();
        if federated {
            // Evaluate with whoever is here now: a shortfall is reported, not fatal.
            let avail: Vec<ClientView> = self
                .candidates(&[TaskKind::Evaluate])
                .into_iter()
                .filter(|c| compatible(c, &self.spec.dataset, &state.facts))
                .filter(|c| !self.is_quarantined(&c.name))
                .collect();
            let policy = self.policy();
            let eval_clients = sample(
                &avail,
                policy.fraction_evaluate,
                policy.min_evaluate_clients,
                seed::derive(self.spec.seed, &[round.into(), SEED_SAMPLE_EVAL]),
            );
            let quorum = (policy.min_evaluate_clients as usize).min(eval_clients.len());
            let payload = state.task_payload();
            let announced = self.announced(&eval_clients, true);
            let (mut l, mut a) = (OrderedMean::default(), OrderedMean::default());
            let classifies = state.global.classifies();
            eval_phase = self
                .phase(
                    round,
                    &names(&eval_clients),
                    &payload,
                    &state.facts,
                    task::Kind::Evaluate(v1::EvaluateTask::default()),
                    quorum,
                    |client, arrived| {
                        let e =
                            expect_outcome!(arrived.result.outcome, Evaluate, "an evaluate result");
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
                // Test rows weigh like train rows: at most `weight_cap` times the median.
                let limit = self.influence().weight_limit(&l.weights());
                l.cap_weights(limit);
                a.cap_weights(limit);
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
            if let Some(stats) = evaluate(&state.global, h.clone()).await? {
                test_loss = Some(stats.loss);
                test_accuracy = state.global.classifies().then_some(stats.accuracy);
            }
        }

        Ok(RoundScores {
            fed_loss,
            fed_accuracy,
            test_loss,
            test_accuracy,
            phase: eval_phase,
        })
    }

    /// Counts a round's silences: a client selected for a task that neither answered by the
    /// phase's close nor sent anything else this round (a late answer counts as an answer: the
    /// client is alive, only slow). `quarantine_after` silent rounds in a row quarantine it like
    /// refused results would, and it is told why; returns the clients this quarantines.
    pub fn count_silence(
        &self,
        silent: &std::collections::BTreeSet<String>,
        answered: &std::collections::BTreeSet<String>,
    ) -> Vec<String> {
        let after = self.spec.updates.quarantine_after;
        let mut counts = self.silence.lock().unwrap_or_else(|p| p.into_inner());
        for c in answered {
            counts.remove(c);
        }
        let mut newly = Vec::new();
        for c in silent.difference(answered) {
            let n = counts.entry(c.clone()).or_default();
            *n += 1;
            if after > 0 && *n == after && !self.is_quarantined(c) {
                warn!(client = %c, rounds = *n, "client quarantined for the rest of the job: selected and silent");
                self.registry.notify(
                    c,
                    &self.id,
                    format!("left out of the rest of the job: you did not answer its tasks in {n} rounds in a row (updates.quarantine_after = {after})"),
                );
                newly.push(c.clone());
            }
        }
        drop(counts);
        self.quarantine(&newly);
        newly
    }

    /// Quarantines `clients` for this job whatever their refusals (a resumed job replays the
    /// silences its rounds recorded).
    pub fn quarantine(&self, clients: &[String]) {
        let after = self.spec.updates.quarantine_after;
        let mut strikes = self.strikes.lock().unwrap_or_else(|p| p.into_inner());
        for c in clients {
            let s = strikes.entry(c.clone()).or_default();
            *s = (*s).max(after);
        }
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
                self.registry.notify(
                    client,
                    &self.id,
                    format!("left out of the rest of the job: {} of your results were refused (updates.quarantine_after = {after})", *total),
                );
                newly.push(client.clone());
            }
        }
        newly
    }

    /// The training part of a round: the server half's phases, one after the other, until it
    /// says the round is done. Returns the phases' traffic and refusals, how many clients
    /// contributed, and the mean training loss.
    async fn train_phases(
        &self,
        plan: RoundPlan,
        state: &mut TrainState,
        avail: &[ClientView],
    ) -> Result<(Phase, usize, f64)> {
        let round = plan.round;
        let announced = self.announced(avail, false);
        let TrainState {
            facts,
            global,
            encoded,
        } = state;
        let mut total = Phase::default();
        let mut step = global.begin_round(plan)?;
        loop {
            let ask = match step {
                Step::Done(r) => {
                    for (client, why) in &r.refused {
                        self.refuse(&mut total, client, round, why);
                    }
                    return Ok((total, r.accepted, r.train_loss));
                }
                Step::Ask(ask) => ask,
            };
            let clients: Vec<&str> = ask.clients.iter().map(String::as_str).collect();
            let expected = tasks::expected_reply(&ask.request);
            let kind = self.request_kind(ask.request, round);
            // A compressed update is the change from the model its task sent.
            let base = match &ask.payload {
                shoal_shared::models::phase::Payload::Weights(w) => Some(Arc::clone(w)),
                _ => None,
            };
            let payload = encoded.payload(ask.payload);
            let bounds = global.decode_bounds();
            let phase = self
                .phase_until(
                    ask.round,
                    &clients,
                    &payload,
                    facts,
                    kind,
                    ask.quorum,
                    ask.target,
                    |client, arrived| {
                        let reply = tasks::reply_from_wire(
                            arrived.result.outcome,
                            bounds,
                            expected,
                            base.as_deref(),
                        )?;
                        global.accept(client, reply, announced.get(client).copied())
                    },
                )
                .await?;
            total.absorb(&phase);
            step = global.close(PhaseTally {
                accepted: phase.accepted,
                rejected: phase.rejected,
                failed: phase.failed,
                timed_out: phase.timed_out,
            })?;
        }
    }

    /// A phase's request as its tasks carry it: with round `round`'s local training settings
    /// and, for Fit tasks, the job's update compression.
    pub(crate) fn request_kind(
        &self,
        request: shoal_shared::models::phase::Request,
        round: u32,
    ) -> task::Kind {
        let mut kind = tasks::request_to_wire(request, self.local_training(round));
        if let task::Kind::Fit(fit) = &mut kind {
            let (c, fraction) = shoal_proto::compression_to_wire(self.spec.compression());
            fit.compression = c as i32;
            fit.topk_fraction = fraction;
        }
        kind
    }

    /// Why a result that names another job or round than its task's (`round`) is refused.
    pub(crate) fn misaddressed(&self, result: &v1::TaskResult, round: u32) -> Option<Rejection> {
        (result.job_id != self.id || result.round != round).then(|| {
            Rejection::Misaddressed(format!(
                "result names job `{}` round {}, expected `{}` round {round}",
                clip(&result.job_id, ID_CHARS),
                result.round,
                self.id
            ))
        })
    }

    /// Local training settings for round `round`'s Fit tasks.
    pub(crate) fn local_training(&self, round: u32) -> v1::LocalTraining {
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
            .candidates(&[TaskKind::Evaluate])
            .into_iter()
            .filter(|c| compatible(c, &self.spec.dataset, &state.facts))
            .collect();
        let payload = state.task_payload();
        let announced = self.announced(&clients, true);
        // Personalising means local training from the global model: weights models only.
        let personalize = if state.global.trains_from_global() {
            self.spec.evaluation.personalize_epochs
        } else {
            0
        };
        let kind = task::Kind::Evaluate(v1::EvaluateTask {
            personalize_epochs: personalize,
            local: Some(self.local_training(self.spec.rounds)),
        });
        let mut rows = Vec::with_capacity(clients.len());
        let round = self.spec.rounds + 1;
        self.phase(
            round,
            &names(&clients),
            &payload,
            &state.facts,
            kind,
            clients.len(),
            |client, arrived| {
                let e = expect_outcome!(arrived.result.outcome, Evaluate, "an evaluate result");
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

    /// The task `name` is sent for `kind` in round `round`: the job's fields, the payload, a
    /// task id unique to this dispatch, and `seed` for the client's randomness.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn task(
        &self,
        round: u32,
        name: &str,
        kind: &task::Kind,
        payload: &TaskPayload,
        facts: &DataFacts,
        deadline_unix_ms: u64,
        seed: u64,
    ) -> v1::Task {
        // Unique per dispatch: a boosting round sends several histogram tasks to each client,
        // and a late answer to an earlier one must never pass for a later one.
        let seq = self
            .task_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Fixed width: message sizes (and so the bytes in the metrics) do not depend on how
        // many tasks this process sent before, e.g. before a restart.
        let task_id = format!(
            "{}/{}/{}/{:010}/{}",
            self.id,
            round,
            kind_name(kind),
            seq,
            name
        );
        v1::Task {
            task_id,
            job_id: self.id.clone(),
            round,
            dataset: self.spec.dataset.clone(),
            class_names: facts.class_names.clone(),
            model: Some(shoal_proto::model_to_wire(&self.spec.model)),
            parameters: payload.parameters.clone(),
            forest: payload.forest.clone(),
            ensemble: payload.ensemble.clone(),
            feature_view: self.view.clone(),
            validation: self.validation,
            deadline_unix_ms,
            seed,
            kind: Some(kind.clone()),
        }
    }

    /// Pushes one task per client and feeds each arriving result to `on_result` (which validates and
    /// absorbs it, or says why not). Stops when every client has answered or left, when the quorum
    /// has answered and `wait_after_quorum_secs` has passed, or at the round deadline.
    #[allow(clippy::too_many_arguments)]
    async fn phase(
        &self,
        round: u32,
        clients: &[&str],
        payload: &TaskPayload,
        facts: &DataFacts,
        kind: task::Kind,
        quorum: usize,
        on_result: impl FnMut(&str, Arrived) -> std::result::Result<(), Rejection>,
    ) -> Result<Phase> {
        self.phase_until(
            round, clients, payload, facts, kind, quorum, None, on_result,
        )
        .await
    }

    /// [`Self::phase`], closing as soon as `target` results have been accepted (over-selection).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn phase_until(
        &self,
        round: u32,
        clients: &[&str],
        payload: &TaskPayload,
        facts: &DataFacts,
        kind: task::Kind,
        quorum: usize,
        target: Option<usize>,
        mut on_result: impl FnMut(&str, Arrived) -> std::result::Result<(), Rejection>,
    ) -> Result<Phase> {
        let policy = self.policy();
        let deadline = Instant::now() + secs(policy.round_timeout_secs);
        let deadline_unix_ms =
            unix_ms().saturating_add((policy.round_timeout_secs * 1000.0) as u64);
        let mut phase = Phase::default();
        let mut waiting = FuturesUnordered::new();
        let mut pending = std::collections::BTreeSet::new();
        let mut enough = false;
        let mut task_ids = Vec::with_capacity(clients.len());
        // Per client: whether its task went onto its stream (a busy client's may still wait for
        // room when the phase closes), and the task's size.
        let mut sent = BTreeMap::new();
        for &name in clients {
            let seed = seed::derive(
                self.spec.seed,
                &[round.into(), seed::stable_hash(name), SEED_TASK],
            );
            let task = self.task(round, name, &kind, payload, facts, deadline_unix_ms, seed);
            let task_id = task.task_id.clone();
            let size = prost::Message::encoded_len(&task);
            let max = self.max_transfer_bytes.max(self.max_message_bytes as u64);
            if size as u64 > max {
                self.registry.forget(&task_ids);
                return Err(Error::Job(format!(
                    "a task for round {round} would be {size} bytes, over the coordinator's transfer limit of {max} bytes (--max-transfer-bytes)"
                )));
            }
            match self.registry.dispatch(name, task) {
                Ok(delivery) => {
                    task_ids.push(task_id);
                    let name = name.to_string();
                    pending.insert(name.clone());
                    sent.insert(name.clone(), (delivery.sent(), size as u64));
                    waiting.push(async move { (name, delivery.await) });
                }
                Err(e) => {
                    warn!(client = %name, "{e}");
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
                    pending.remove(&client);
                    match outcome {
                        Some(arrived) => {
                            phase.answered.insert(client.clone());
                            phase.bytes_up += arrived.bytes;
                            let verdict = match self.misaddressed(&arrived.result, round) {
                                Some(why) => Err(why),
                                None => on_result(&client, arrived),
                            };
                            match verdict {
                                Ok(()) => phase.accepted += 1,
                                Err(reason) => {
                                    // A reason may quote what the client sent (tensor names).
                                    let why = clip(&reason.to_string(), 4 * TEXT_CHARS);
                                    self.refuse(&mut phase, &client, round, &why);
                                }
                            }
                        }
                        None => {
                            phase.failed += 1;
                            warn!(client, round, "client left before answering");
                        }
                    }
                    if phase.accepted >= quorum && grace.is_none() {
                        grace = Some(Instant::now() + secs(policy.wait_after_quorum_secs));
                    }
                    if target.is_some_and(|t| phase.accepted >= t) {
                        enough = true;
                        break;
                    }
                }
            }
        }
        phase.timed_out = waiting.len();
        let went = |name: &String| {
            sent.get(name)
                .is_some_and(|(s, _): &(Arc<std::sync::atomic::AtomicBool>, u64)| {
                    s.load(std::sync::atomic::Ordering::Acquire)
                })
        };
        phase.bytes_down += sent
            .iter()
            .filter(|(name, _)| went(name))
            .map(|(_, (_, size))| size)
            .sum::<u64>();
        if !enough {
            // Silent: sent a task and never answered. A client whose task still waited for room
            // on its stream was busy with other jobs' tasks, which is no sign of a dead peer.
            phase.silent = pending.into_iter().filter(|name| went(name)).collect();
        }
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

/// An evaluation a client could honestly report: a count within what it announced, a bounded
/// finite loss, accuracies in [0, 1].
pub fn check_evaluation(
    e: &v1::EvaluateResult,
    announced: Option<u64>,
    classifies: bool,
) -> std::result::Result<(), Rejection> {
    check_count(e.num_examples, announced, "test")?;
    let valid = |a: f64| (0.0..=1.0).contains(&a);
    // A model without classes (a denoiser) reports no accuracy; whatever it sends is ignored.
    let plausible = e.loss.is_finite()
        && e.loss.abs() <= MAX_LOSS
        && (!classifies || valid(e.accuracy))
        && e.personalized_accuracy.is_none_or(valid);
    if !plausible {
        return Err(Rejection::Implausible(format!(
            "implausible evaluation (examples {}, loss {}, accuracy {})",
            e.num_examples, e.loss, e.accuracy
        )));
    }
    Ok(())
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

fn kind_name(kind: &task::Kind) -> &'static str {
    tasks::task_kind(kind).as_str()
}

/// The clients' names, as a phase addresses them.
fn names(clients: &[ClientView]) -> Vec<&str> {
    clients.iter().map(|c| c.name.as_str()).collect()
}

/// Whether a client's copy of the dataset fits the job's model.
fn compatible(c: &ClientView, dataset: &str, facts: &DataFacts) -> bool {
    misfit(c, dataset, facts).is_none()
}

/// Why a client's copy of `dataset` does not fit the job's schema, or `None` when it fits: the
/// same number of features, and only classes the job knows.
pub fn misfit(c: &ClientView, dataset: &str, facts: &DataFacts) -> Option<String> {
    if let Some(why) = c.caps.misfit_size(facts.message_bytes) {
        return Some(why);
    }
    let Some(d) = c.dataset(dataset) else {
        return Some(format!("it does not hold dataset `{dataset}`"));
    };
    if d.feature_names.len() != facts.raw_features {
        return Some(format!(
            "its dataset `{dataset}` has {} features; the job's has {}",
            d.feature_names.len(),
            facts.raw_features
        ));
    }
    if let Some(extra) = d
        .class_names
        .iter()
        .find(|c| !facts.class_names.contains(c))
    {
        return Some(format!(
            "its dataset `{dataset}` has class {:?}, which is not among the job's {} classes",
            clip(extra, ID_CHARS),
            facts.class_names.len()
        ));
    }
    None
}

/// The feature names most clients hold (ties: the count the first of them in name order has).
fn majority_features<'a>(held: &[&'a v1::DatasetInfo]) -> &'a [String] {
    let mut votes: BTreeMap<usize, usize> = BTreeMap::new();
    for d in held {
        *votes.entry(d.feature_names.len()).or_default() += 1;
    }
    let most = votes.values().copied().max().unwrap_or(0);
    held.iter()
        .find(|d| votes[&d.feature_names.len()] == most)
        .map(|d| d.feature_names.as_slice())
        .unwrap_or_default()
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

    /// One version of the model is encoded once: every task that carries it shares the bytes;
    /// the next version is encoded anew.
    #[test]
    fn the_global_model_is_encoded_once_per_version() {
        use shoal_shared::models::phase::Payload;
        use shoal_shared::tensor::{Tensor, Weights};
        let w = |v: f32| {
            Arc::new(Weights::new(vec![
                Tensor::new("w", vec![3], vec![v; 3]).unwrap()
            ]))
        };
        let bytes = |p: &TaskPayload| p.parameters.as_ref().unwrap().tensors[0].data.clone();
        let cache = EncodedModel::default();
        let first = w(1.0);
        let a = bytes(&cache.payload(Payload::Weights(Arc::clone(&first))));
        let b = bytes(&cache.payload(Payload::Weights(Arc::clone(&first))));
        assert_eq!(a.as_ptr(), b.as_ptr());
        // Equal values but another version (the next round's model): encoded again.
        let next = bytes(&cache.payload(Payload::Weights(w(1.0))));
        assert_eq!(next, a);
        assert_ne!(next.as_ptr(), a.as_ptr());
        assert_eq!(cache.payload(Payload::None), TaskPayload::default());
    }

    fn views(n: usize) -> Vec<ClientView> {
        (0..n)
            .map(|i| ClientView {
                name: format!("c{i:02}"),
                datasets: Arc::from([]),
                caps: Default::default(),
            })
            .collect()
    }

    #[test]
    fn a_nan_loss_survives_the_store_round_trip() {
        let rec = RoundRecord {
            staleness: None,
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
            silenced: Vec::new(),
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
