//! Runs one task against the local data: pure and synchronous, called through `spawn_blocking`.
//! What a task does belongs to its model kind's client half ([`ModelSpec::handle`]), or, for an
//! external model, to the client's [`Trainer`]; this file decodes the task, keeps each job's
//! client state and encodes the answer.

use std::collections::HashMap;
use std::sync::Mutex;

use shoal_proto::tasks;
use shoal_proto::v1::{self, task, task_result};
use shoal_shared::compress::{encode_update, Compression, EncodedTensor, ErrorFeedback};
use shoal_shared::fusion::FeatureView;
use shoal_shared::models::phase::{
    Answer, ClientState, ClientTask, Payload, Reply, TaskData, Work,
};
use shoal_shared::models::ModelSpec;
use shoal_shared::tensor::Weights;

/// Jobs whose top-k residuals a client keeps (a model's size each); beyond, the job used longest
/// ago loses its held-back values.
pub const FEEDBACK_JOBS: usize = 4;

use crate::attack::Attack;
use crate::catalog::Catalog;
use crate::trainer::{check_layout, EvaluateConfig, FitConfig, Trainer};

/// Executes tasks; keeps the per-job state a client owns across tasks (SCAFFOLD's c_i, a
/// boosting round's binned rows).
#[derive(Debug)]
pub struct Executor {
    catalog: std::sync::Arc<Catalog>,
    attack: Option<Attack>,
    trainer: Option<std::sync::Arc<dyn Trainer>>,
    /// job id -> (its client state, when it was last stored: a counter)
    states: Mutex<HashMap<String, (ClientState, u64)>>,
    /// job id -> (top-k's held-back values, when last used: the same counter)
    feedback: Mutex<HashMap<String, (ErrorFeedback, u64)>>,
    clock: std::sync::atomic::AtomicU64,
}

impl Executor {
    pub fn new(
        catalog: std::sync::Arc<Catalog>,
        attack: Option<Attack>,
        trainer: Option<std::sync::Arc<dyn Trainer>>,
    ) -> Self {
        Executor {
            catalog,
            attack,
            trainer,
            states: Mutex::new(HashMap::new()),
            feedback: Mutex::new(HashMap::new()),
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
        if task.model.as_ref().is_some_and(|m| m.kind == "external") {
            return self.run_external(task);
        }
        let err = |e: shoal_shared::Error| e.to_string();
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
        let spec: ModelSpec =
            shoal_proto::model_from_wire(task.model.as_ref()).map_err(|e| e.to_string())?;
        let payload = tasks::payload_from_wire(task).map_err(|e| e.to_string())?;
        // Fusion tasks say how to present the rows; the view applies after the class remap, so
        // stacked members see the job's class list.
        let view = if task.feature_view.is_empty() {
            None
        } else {
            Some(FeatureView::from_bytes(&task.feature_view).map_err(err)?)
        };
        let work = match &task.kind {
            Some(kind) => Work::try_from(kind).map_err(|e| e.to_string())?,
            None => return Err("task without a kind".into()),
        };
        // A compressed update and the attack (TEST ONLY) are relative to the model the task
        // started from.
        let started_from = match &payload {
            Payload::Weights(w) => Some(w.clone()),
            _ => None,
        };
        let data = TaskData {
            raw_train: &local.train,
            raw_test: &local.test,
            class_names: &task.class_names,
            view: view.as_ref(),
        };
        let client_task = ClientTask {
            job: task.job_id.clone(),
            round: task.round,
            seed: task.seed,
            n_classes: task.class_names.len(),
            payload,
            work,
        };
        let state = self.state_of(&task.job_id);
        let (answer, kept) = spec.handle(client_task, &data, &state).map_err(err)?;
        if let Some(kept) = kept {
            self.keep(&task.job_id, kept);
        }
        let mut answer = answer;
        if let (Some(attack), Some(global), Answer::Reply(Reply::Fit(fit))) =
            (&self.attack, &started_from, &mut answer)
        {
            if let Some(w) = fit.parameters.as_mut() {
                attack.apply(global, w, task.seed);
            }
        }
        self.outcome(task, started_from.as_deref(), answer)
    }

    /// The answer on the wire; a fit answer as the task's compression asks (the change from
    /// `base`, encoded), or full f32 parameters when it asks none.
    fn outcome(
        &self,
        task: &v1::Task,
        base: Option<&Weights>,
        mut answer: Answer,
    ) -> Result<task_result::Outcome, String> {
        let compression = match &task.kind {
            Some(task::Kind::Fit(fit)) => {
                shoal_proto::compression_from_wire(fit).map_err(|e| e.to_string())?
            }
            _ => Compression::None,
        };
        let local = match (&mut answer, base) {
            (Answer::Reply(Reply::Fit(fit)), Some(_)) if compression != Compression::None => {
                fit.parameters.take()
            }
            _ => None,
        };
        let mut outcome = task_result::Outcome::from(answer);
        if let (Some(local), Some(base), task_result::Outcome::Fit(fit)) =
            (local, base, &mut outcome)
        {
            let update = self.compress(&task.job_id, base, &local, compression, task.seed)?;
            fit.parameters = Some(shoal_proto::update_to_wire(update));
            fit.delta = true;
        }
        Ok(outcome)
    }

    /// Encodes an update, carrying top-k's held-back values per job (the jobs used longest ago
    /// are forgotten beyond [`FEEDBACK_JOBS`]).
    fn compress(
        &self,
        job: &str,
        base: &Weights,
        local: &Weights,
        compression: Compression,
        seed: u64,
    ) -> Result<Vec<EncodedTensor>, String> {
        let used = self
            .clock
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut all = self.feedback.lock().unwrap_or_else(|p| p.into_inner());
        let (feedback, at) = all.entry(job.to_string()).or_default();
        *at = used;
        let update = encode_update(base, local, compression, seed, feedback)
            .map_err(|e| format!("compressing the update: {e}"))?;
        while all.len() > FEEDBACK_JOBS {
            let Some(oldest) = all
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            all.remove(&oldest);
        }
        Ok(update)
    }

    /// An external model's task, through the trainer.
    fn run_external(&self, task: &v1::Task) -> Result<task_result::Outcome, String> {
        let Some(trainer) = &self.trainer else {
            return Err("this client has no trainer for external models".into());
        };
        if let Some(task::Kind::GetParameters(_)) = &task.kind {
            // The job may list no tensors yet (the answer names them), so the spec is not
            // decoded as a trainable model here.
            let config = crate::trainer::InitialConfig {
                job: task.job_id.clone(),
                dataset: task.dataset.clone(),
                class_names: task.class_names.clone(),
                tensors: task
                    .model
                    .as_ref()
                    .and_then(|m| m.external.as_ref())
                    .map(|e| {
                        e.tensors
                            .iter()
                            .map(|t| {
                                let shape = t.shape.iter().map(|&d| d as usize).collect();
                                (t.name.clone(), shape)
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                seed: task.seed,
            };
            let w = trainer
                .initial_parameters(&config)
                .map_err(|e| format!("the trainer's initial_parameters failed: {e}"))?;
            w.check_finite().map_err(|e| e.to_string())?;
            return Ok(task_result::Outcome::Parameters(v1::ParametersResult {
                parameters: Some(shoal_proto::weights_to_wire(&w)),
            }));
        }
        // Decoding the spec checks the tensor list the job sent.
        shoal_proto::model_from_wire(task.model.as_ref()).map_err(|e| e.to_string())?;
        let Payload::Weights(global) = tasks::payload_from_wire(task).map_err(|e| e.to_string())?
        else {
            return Err("an external model's task carries no parameters".into());
        };
        let work = match &task.kind {
            Some(kind) => Work::try_from(kind).map_err(|e| e.to_string())?,
            None => return Err("task without a kind".into()),
        };
        let failed = |what: &str, e: crate::trainer::TrainerError| {
            format!("the trainer's {what} failed: {e}")
        };
        let answer = match work {
            Work::Fit { local, .. } => {
                let config = FitConfig {
                    job: task.job_id.clone(),
                    round: task.round,
                    dataset: task.dataset.clone(),
                    class_names: task.class_names.clone(),
                    local,
                    seed: task.seed,
                    validation: task.validation,
                };
                let out = trainer
                    .fit(shoal_shared::tensor::Weights::clone(&global), &config)
                    .map_err(|e| failed("fit", e))?;
                check_layout(&global, &out.parameters)?;
                Answer::Reply(Reply::Fit(shoal_shared::models::phase::FitReply {
                    num_examples: out.num_examples,
                    train_loss: out.train_loss,
                    parameters: Some(out.parameters),
                    control_delta: None,
                    trees: None,
                }))
            }
            Work::Evaluate { .. } => {
                let config = EvaluateConfig {
                    job: task.job_id.clone(),
                    round: task.round,
                    dataset: task.dataset.clone(),
                    class_names: task.class_names.clone(),
                    validation: task.validation,
                };
                let out = trainer
                    .evaluate(&global, &config)
                    .map_err(|e| failed("evaluate", e))?;
                Answer::Evaluated(shoal_shared::models::phase::Evaluation {
                    num_examples: out.num_examples,
                    loss: out.loss,
                    accuracy: out.accuracy,
                    classes_present: out.classes_present,
                    personalized_accuracy: None,
                })
            }
            Work::Sketch | Work::Histogram(_) => {
                return Err("sketch and histogram tasks are for gbdt jobs".into())
            }
        };
        self.outcome(task, Some(&global), answer)
    }

    fn state_of(&self, job: &str) -> ClientState {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.get(job).map(|(s, _)| s.clone()).unwrap_or_default()
    }

    /// Keeps `state` for `job`; beyond the capacity of its kind, forgets the job of that kind
    /// stored longest ago (bounded memory across many jobs).
    fn keep(&self, job: &str, state: ClientState) {
        let used = self
            .clock
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let capacity = state.capacity();
        states.insert(job.to_string(), (state.clone(), used));
        loop {
            let same: Vec<(&String, u64)> = states
                .iter()
                .filter(|(_, (s, _))| s.same_kind(&state))
                .map(|(k, (_, t))| (k, *t))
                .collect();
            if same.len() <= capacity {
                break;
            }
            let Some(oldest) = same
                .iter()
                .min_by_key(|(_, t)| *t)
                .map(|(k, _)| (*k).clone())
            else {
                break;
            };
            states.remove(&oldest);
        }
    }
}
