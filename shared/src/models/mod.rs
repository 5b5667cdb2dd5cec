//! One home per model kind: each folder holds the model, its server half and its client half.
//!
//! - [`ModelSpec`]: the one list of kinds, as job specs name them; each arm delegates to its
//!   folder (the mini-redis `Command` pattern).
//! - [`phase`]: the algorithm boundary, sans I/O: what a server half asks of clients phase by
//!   phase ([`phase::Step`], [`phase::Request`]), what comes back ([`phase::Reply`]) and how a
//!   reply is refused ([`phase::Rejection`]). Its module doc says why it is shaped that way.
//! - [`Server`]: a job's server half, one arm per kind.
//!
//! # Layout
//! - `sgd/`: weights models trained by minibatch SGD (logreg, mlp), local training, their server
//!   half (a [`crate::strategy::Strategy`] aggregates the updates)
//! - `diffusion/`: the DDPM denoiser (a weights model with its own objective) and its schedules
//! - `forest/`: federated random forests
//! - `gbdt/`: lossless federated histogram gradient boosting
//! - `external/`: a weights model trained by client code (the Python SDK, a Rust `Trainer`)

pub mod diffusion;
pub mod external;
pub mod forest;
pub mod gbdt;
pub mod phase;
pub mod sgd;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Which model a job trains, as job specs name it (`[model] kind = "mlp"`, `hidden = [64]`): the
/// one list of model kinds. Each variant holds its kind's parameters, which implement [`Kind`] in
/// the kind's folder; every method here delegates through [`ModelSpec::kind`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ModelSpec {
    /// Multinomial logistic regression (softmax).
    Logreg(sgd::LogregSpec),
    /// A multilayer perceptron with ReLU hidden layers of the given widths.
    Mlp(sgd::MlpSpec),
    /// A federated random forest (not trained by gradients; see [`forest`]).
    Forest(forest::ForestParams),
    /// Federated histogram gradient boosting (see [`gbdt`]).
    Gbdt(gbdt::GbdtParams),
    /// The noise-prediction network of a diffusion job (see [`diffusion`]).
    Denoiser(diffusion::DenoiserSpec),
    /// A model that clients train in their own code (see [`external`]).
    External(external::ExternalSpec),
}

impl ModelSpec {
    /// The kind behind this spec: the one place that lists them.
    pub fn kind(&self) -> &dyn Kind {
        match self {
            ModelSpec::Logreg(k) => k,
            ModelSpec::Mlp(k) => k,
            ModelSpec::Forest(k) => k,
            ModelSpec::Gbdt(k) => k,
            ModelSpec::Denoiser(k) => k,
            ModelSpec::External(k) => k,
        }
    }
}

impl Default for ModelSpec {
    fn default() -> Self {
        ModelSpec::Logreg(sgd::LogregSpec {})
    }
}

/// What a model kind is, spec side: its name and checks, and its two halves. Implemented by each
/// kind's parameters, in the kind's folder.
pub trait Kind: std::fmt::Debug + Send + Sync {
    /// The name job specs give it (`[model] kind = "..."`).
    fn name(&self) -> &'static str;

    /// A short description such as `mlp(128,64)`.
    fn label(&self) -> String;

    /// Rejects parameters no one means, naming the field.
    fn check(&self) -> Result<()>;

    /// Hidden layer widths, as the wire carries them (empty where there are none).
    fn hidden(&self) -> &[usize] {
        &[]
    }

    /// This kind with the wire's hidden widths applied (kinds without layers ignore them).
    fn with_hidden(&self, hidden: &[usize]) -> Result<ModelSpec>;

    /// The task kinds a client must run to train this kind (federated evaluation also needs
    /// [`phase::TaskKind::Evaluate`]).
    fn training_tasks(&self) -> &'static [phase::TaskKind] {
        &[phase::TaskKind::Fit]
    }

    /// The server half, with a freshly initialised global model.
    fn server(&self, setup: &ServerSetup) -> Result<Server>;

    /// The client half: runs one task against this client's rows and what it keeps for the job.
    /// Returns the answer and, where the task changed it, the job's new client state.
    fn handle(
        &self,
        task: phase::ClientTask,
        data: &phase::TaskData<'_>,
        state: &phase::ClientState,
    ) -> Result<(phase::Answer, Option<phase::ClientState>)>;
}

impl ModelSpec {
    /// All accepted names, for help texts and errors (`logreg, mlp, ...`), as serde knows them.
    pub fn names() -> &'static str {
        static NAMES: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        NAMES.get_or_init(|| {
            // serde lists every variant when it meets an unknown one.
            let e = serde_json::from_str::<ModelSpec>(r#"{"kind":""}"#)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            // "... expected one of `logreg`, `mlp`, ... at line 1 column 10": the quoted names.
            let list = e.split("expected one of ").nth(1).unwrap_or_default();
            list.split('`')
                .skip(1)
                .step_by(2)
                .collect::<Vec<_>>()
                .join(", ")
        })
    }

    /// Parses a model name as given on the command line, with the kind's defaults (an MLP gets
    /// one hidden layer of 64).
    pub fn from_name(name: &str) -> Result<Self> {
        serde_json::from_value(serde_json::json!({ "kind": name })).map_err(|_| Error::Unknown {
            what: "model",
            name: name.to_string(),
            expected: Self::names().to_string(),
        })
    }

    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// The boosting parameters when this is a gbdt.
    pub fn gbdt(&self) -> Option<&gbdt::GbdtParams> {
        match self {
            ModelSpec::Gbdt(p) => Some(p),
            _ => None,
        }
    }

    /// The forest's parameters when this is a forest.
    pub fn forest(&self) -> Option<&forest::ForestParams> {
        match self {
            ModelSpec::Forest(p) => Some(p),
            _ => None,
        }
    }

    /// The external model's tensors when this is one.
    pub fn external(&self) -> Option<&external::ExternalSpec> {
        match self {
            ModelSpec::External(p) => Some(p),
            _ => None,
        }
    }

    /// The denoiser's settings when this is one.
    pub fn denoiser(&self) -> Option<&diffusion::DenoiserSpec> {
        match self {
            ModelSpec::Denoiser(p) => Some(p),
            _ => None,
        }
    }

    /// Hidden layer widths (empty for logistic regression).
    pub fn hidden(&self) -> &[usize] {
        self.kind().hidden()
    }

    /// A short description such as `mlp(128,64)`.
    pub fn label(&self) -> String {
        self.kind().label()
    }

    /// Builds a spec from a name and hidden widths (the wire form).
    pub fn from_parts(name: &str, hidden: &[usize]) -> Result<Self> {
        let spec = Self::from_name(name)?.kind().with_hidden(hidden)?;
        spec.check()?;
        Ok(spec)
    }

    /// Parses `128,64` into hidden widths.
    pub fn parse_hidden(text: &str) -> Result<Vec<usize>> {
        text.split(',')
            .map(|p| {
                p.trim().parse::<usize>().map_err(|_| {
                    Error::invalid(
                        "hidden layer widths",
                        format!("`{text}`: `{p}` is not a whole number (expected e.g. 128,64)"),
                    )
                })
            })
            .collect()
    }

    /// Rejects parameters no one means, naming the field.
    pub fn check(&self) -> Result<()> {
        self.kind().check()
    }

    /// The server half for this model, with a freshly initialised global model.
    pub fn server(&self, setup: &ServerSetup) -> Result<Server> {
        self.kind().server(setup)
    }

    /// The client half: runs one task against this client's rows and what it keeps for the job.
    pub fn handle(
        &self,
        task: phase::ClientTask,
        data: &phase::TaskData<'_>,
        state: &phase::ClientState,
    ) -> Result<(phase::Answer, Option<phase::ClientState>)> {
        self.kind().handle(task, data, state)
    }
}

/// A job's server half: the global model and what trains it (see [`phase::ServerHalf`]).
pub type Server = Box<dyn phase::ServerHalf>;

/// What a server half needs besides the spec: the data's shape, the job's seed and limits.
#[derive(Debug, Clone)]
pub struct ServerSetup {
    pub n_features: usize,
    pub n_classes: usize,
    /// Seeds the initial weights.
    pub init_seed: u64,
    /// Largest model, in parameters, the job may train.
    pub max_params: usize,
    pub strategy: crate::strategy::StrategySpec,
    pub bound: Option<sgd::server::NormBound>,
    /// Limits on one client's weight and update relative to the round's others.
    pub influence: phase::Influence,
    /// Initial weights given to the job instead of drawn from `init_seed` (an external model
    /// with `init = "file"` or `"client"`); the kind checks them against its layout.
    pub initial: Option<std::sync::Arc<crate::tensor::Weights>>,
    /// Where a weights model keeps the updates its influence limits may correct at close.
    pub spool: crate::spool::SpoolMaker,
}
