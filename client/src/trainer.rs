//! Federate a model Shoal does not know: implement [`Trainer`] and give it to the client
//! ([`crate::ClientConfig::trainer`]). The client then runs jobs whose `[model] kind =
//! "external"` through it, with the same session loop as the `shoal-client` binary (Hello,
//! heartbeats, reconnect with backoff, TLS, tokens). Rows stay where the trainer keeps them; it
//! announces only their names and sizes ([`TrainerDataset`]).
//!
//! Parameters are [`Weights`]: named `f32` tensors in the order the job's `tensors` list gives.
//! A fit must return the same names and shapes in the same order; the client checks that before
//! it answers, so a mistake reads as an error naming the tensor rather than a refused update.

use shoal_shared::models::sgd::LocalConfig;
use shoal_shared::tensor::Weights;

/// What a trainer's methods may fail with: anything printable (the reason goes to the
/// coordinator in the task's error result).
pub type TrainerError = Box<dyn std::error::Error + Send + Sync>;

/// A dataset a trainer holds, as its Hello announces it (sizes and names only, never rows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainerDataset {
    /// The name jobs give in `dataset = "..."`.
    pub name: String,
    pub train_examples: u64,
    pub test_examples: u64,
    /// Column names; clients of one job must agree on their number.
    pub feature_names: Vec<String>,
    /// Label names: the job's class list is the union over its clients.
    pub class_names: Vec<String>,
}

/// What a fit task asks: the round's local training settings as the job gives them.
#[derive(Debug, Clone)]
pub struct FitConfig {
    pub job: String,
    pub round: u32,
    pub dataset: String,
    /// The job's class list: map local labels into it by name.
    pub class_names: Vec<String>,
    /// Epochs, batch size, this round's learning rate, momentum, weight decay, FedProx's mu.
    pub local: LocalConfig,
    /// Seed for this task's randomness (derived from the job's seed, the round and the client).
    pub seed: u64,
    /// AutoML trials: train on a validation re-split, not the whole train split.
    pub validation: bool,
}

/// What an evaluation task asks.
#[derive(Debug, Clone)]
pub struct EvaluateConfig {
    pub job: String,
    pub round: u32,
    pub dataset: String,
    pub class_names: Vec<String>,
    pub validation: bool,
}

/// A fit's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct FitOutcome {
    /// The new parameters: the same names, shapes and order as those received.
    pub parameters: Weights,
    /// Train examples used: the update's weight in the average (at most the announced count).
    pub num_examples: u64,
    /// Mean training loss, for the round line.
    pub train_loss: f64,
}

/// An evaluation's answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvaluateOutcome {
    /// Test examples scored (at most the announced count).
    pub num_examples: u64,
    pub loss: f64,
    /// In [0, 1].
    pub accuracy: f64,
    /// Classes present in the local test split.
    pub classes_present: u32,
}

/// Local training and evaluation of a model in your own code. Each task is one call, on a
/// blocking thread; calls for different tasks (two jobs, an evaluation beside a fit) may run at
/// the same time, so keep state shared between tasks (an optimiser's) behind a lock.
pub trait Trainer: Send + Sync + std::fmt::Debug + 'static {
    /// The datasets this trainer can train on.
    fn datasets(&self) -> Vec<TrainerDataset>;

    /// Trains locally from the global `parameters`.
    fn fit(&self, parameters: Weights, config: &FitConfig) -> Result<FitOutcome, TrainerError>;

    /// Scores `parameters` on the local test split.
    fn evaluate(
        &self,
        parameters: &Weights,
        config: &EvaluateConfig,
    ) -> Result<EvaluateOutcome, TrainerError>;

    /// Whether [`Trainer::initial_parameters`] gives parameters; then the Hello lists the task
    /// kind `parameters`, and a job with `[model] init = "client"` may ask this client.
    fn offers_initial_parameters(&self) -> bool {
        false
    }

    /// The model's initial parameters, as your code initialises it (a job with
    /// `init = "client"` asks one client before round 1, as Flower does). `tensors` are the
    /// tensors the job lists, or empty when it leaves naming them to you.
    fn initial_parameters(&self, _config: &InitialConfig) -> Result<Weights, TrainerError> {
        Err("this trainer does not give initial parameters".into())
    }
}

/// What a request for initial parameters says.
#[derive(Debug, Clone)]
pub struct InitialConfig {
    pub job: String,
    pub dataset: String,
    pub class_names: Vec<String>,
    /// The tensors the job lists (name, shape), or none.
    pub tensors: Vec<(String, Vec<usize>)>,
    pub seed: u64,
}

/// Fails unless `new` has `old`'s tensors (names, shapes, order), naming the first that differs.
pub fn check_layout(old: &Weights, new: &Weights) -> Result<(), String> {
    if old.tensors.len() != new.tensors.len() {
        return Err(format!(
            "the trainer returned {} tensors, the job's model has {}",
            new.tensors.len(),
            old.tensors.len()
        ));
    }
    for (a, b) in old.tensors.iter().zip(&new.tensors) {
        if a.name != b.name || a.shape != b.shape {
            return Err(format!(
                "the trainer returned `{}` {:?} where the job's model has `{}` {:?}",
                b.name, b.shape, a.name, a.shape
            ));
        }
    }
    Ok(())
}
