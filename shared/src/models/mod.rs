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

pub mod diffusion;
pub mod forest;
pub mod gbdt;
pub mod phase;
pub mod sgd;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::{Error, Result};

/// Which model a job trains. Serialised into job specs (`[model] kind = "mlp"`, `hidden = [64]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ModelSpec {
    /// Multinomial logistic regression (softmax).
    #[default]
    Logreg,
    /// A multilayer perceptron with ReLU hidden layers of the given widths.
    Mlp {
        #[serde(default = "default_hidden")]
        hidden: Vec<usize>,
    },
    /// A federated random forest (not trained by gradients; see [`forest`]).
    Forest(forest::ForestParams),
    /// Federated histogram gradient boosting (see [`gbdt`]).
    Gbdt(gbdt::GbdtParams),
    /// The noise-prediction network of a diffusion job (see [`diffusion`]).
    Denoiser(diffusion::DenoiserSpec),
}

fn default_hidden() -> Vec<usize> {
    vec![64]
}

/// Limits that keep a spec from asking for an absurd network.
pub const MAX_HIDDEN_LAYERS: usize = 8;
pub const MAX_LAYER_WIDTH: usize = 65_536;

impl ModelSpec {
    /// All accepted names, for help texts and errors.
    pub const NAMES: &'static str = "logreg, mlp, forest, gbdt, denoiser";

    /// Parses a model name as given on the command line (an MLP gets one hidden layer of 64).
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "logreg" => Ok(ModelSpec::Logreg),
            "mlp" => Ok(ModelSpec::Mlp {
                hidden: default_hidden(),
            }),
            "forest" => Ok(ModelSpec::Forest(Default::default())),
            "gbdt" => Ok(ModelSpec::Gbdt(Default::default())),
            "denoiser" => Ok(ModelSpec::Denoiser(Default::default())),
            other => Err(Error::Unknown {
                what: "model",
                name: other.to_string(),
                expected: Self::NAMES.to_string(),
            }),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            ModelSpec::Logreg => "logreg",
            ModelSpec::Mlp { .. } => "mlp",
            ModelSpec::Forest(_) => "forest",
            ModelSpec::Gbdt(_) => "gbdt",
            ModelSpec::Denoiser(_) => "denoiser",
        }
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

    /// The denoiser's settings when this is one.
    pub fn denoiser(&self) -> Option<&diffusion::DenoiserSpec> {
        match self {
            ModelSpec::Denoiser(p) => Some(p),
            _ => None,
        }
    }

    /// Hidden layer widths (empty for logistic regression).
    pub fn hidden(&self) -> &[usize] {
        match self {
            ModelSpec::Logreg | ModelSpec::Forest(_) | ModelSpec::Gbdt(_) => &[],
            ModelSpec::Mlp { hidden } => hidden,
            ModelSpec::Denoiser(p) => &p.hidden,
        }
    }

    /// A short description such as `mlp(128,64)`.
    pub fn label(&self) -> String {
        match self {
            ModelSpec::Logreg => "logreg".into(),
            ModelSpec::Forest(p) => format!("forest({}/round)", p.trees_per_round),
            ModelSpec::Gbdt(p) => format!("gbdt(depth {})", p.max_depth),
            ModelSpec::Denoiser(p) => p.label(),
            ModelSpec::Mlp { hidden } => format!(
                "mlp({})",
                hidden
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }

    /// Builds a spec from a name and hidden widths (the wire form).
    pub fn from_parts(name: &str, hidden: &[usize]) -> Result<Self> {
        let spec = match Self::from_name(name)? {
            ModelSpec::Logreg if hidden.is_empty() => ModelSpec::Logreg,
            ModelSpec::Logreg => {
                return Err(Error::invalid(
                    "model.hidden",
                    "logreg has no hidden layers",
                ))
            }
            ModelSpec::Mlp { .. } => ModelSpec::Mlp {
                hidden: hidden.to_vec(),
            },
            ModelSpec::Forest(p) => ModelSpec::Forest(p),
            ModelSpec::Gbdt(p) => ModelSpec::Gbdt(p),
            ModelSpec::Denoiser(p) => ModelSpec::Denoiser(diffusion::DenoiserSpec {
                hidden: hidden.to_vec(),
                ..p
            }),
        };
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

    /// Rejects shapes no one means: no hidden layer, a zero or huge width, too many layers.
    pub fn check(&self) -> Result<()> {
        if let ModelSpec::Forest(p) = self {
            p.check()?;
        }
        if let ModelSpec::Gbdt(p) = self {
            p.check()?;
        }
        if let ModelSpec::Denoiser(p) = self {
            p.check()?;
        }
        if let ModelSpec::Mlp { hidden } = self {
            if hidden.is_empty() || hidden.len() > MAX_HIDDEN_LAYERS {
                return Err(Error::invalid(
                    "model.hidden",
                    format!(
                        "an mlp needs 1 to {MAX_HIDDEN_LAYERS} hidden layers, found {}",
                        hidden.len()
                    ),
                ));
            }
            if let Some(w) = hidden.iter().find(|&&w| w == 0 || w > MAX_LAYER_WIDTH) {
                return Err(Error::invalid(
                    "model.hidden",
                    format!("layer width {w} is outside 1..={MAX_LAYER_WIDTH}"),
                ));
            }
        }
        Ok(())
    }

    /// The model for data with `n_features` inputs and `n_classes` classes.
    pub fn build(&self, n_features: usize, n_classes: usize) -> Result<Box<dyn sgd::Model>> {
        // A denoiser models the rows themselves: labels (a band, a class) play no part.
        let needs_classes = !matches!(self, ModelSpec::Denoiser(_));
        if n_features == 0 || (needs_classes && n_classes < 2) {
            return Err(Error::Data(format!(
                "a {} model needs at least 1 feature and 2 classes (found {n_features} features, {n_classes} classes)",
                self.name()
            )));
        }
        self.check()?;
        Ok(match self {
            ModelSpec::Logreg => Box::new(sgd::LogReg::new(n_features, n_classes)),
            ModelSpec::Mlp { hidden } => Box::new(sgd::Mlp::new(n_features, hidden, n_classes)),
            ModelSpec::Forest(_) | ModelSpec::Gbdt(_) => {
                return Err(Error::invalid(
                    "model",
                    "trees are not trained by minibatch SGD (see shoal_shared::models::forest and ::gbdt)",
                ))
            }
            ModelSpec::Denoiser(p) => {
                Box::new(diffusion::DenoiserModel::new(p, n_features)?)
            }
        })
    }
}

impl ModelSpec {
    /// The client half: runs one task against this client's rows and what it keeps for the job.
    /// Returns the answer and, where the task changed it, the job's new client state.
    pub fn handle(
        &self,
        task: phase::ClientTask,
        data: &phase::TaskData<'_>,
        state: &phase::ClientState,
    ) -> Result<(phase::Answer, Option<phase::ClientState>)> {
        match self {
            ModelSpec::Forest(p) => Ok((forest::client::handle(p, task, data)?, None)),
            ModelSpec::Gbdt(p) => gbdt::client::handle(p, task, data, state),
            spec => {
                let model = spec.build(data.n_features(), task.n_classes)?;
                sgd::client::handle(model.as_ref(), task, data, state)
            }
        }
    }
}

/// The server half of a job's model: the global model and what trains it. One arm per model kind
/// (weights models share [`sgd::SgdServer`]), each delegating; see [`phase`] for the cycle.
#[derive(Debug)]
pub enum Server {
    Sgd(sgd::server::SgdServer),
    Forest(forest::server::ForestServer),
    Gbdt(gbdt::server::GbdtServer),
}

/// What a job's checkpoint holds of its model, as JSON (`kind` tags the model).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Checkpoint {
    Params {
        weights: crate::tensor::Weights,
        strategy: crate::strategy::Strategy,
    },
    /// The forest's versioned blob (JSON text).
    Forest { blob: String },
    /// The ensemble's versioned blob, once the bin edges exist.
    Gbdt { blob: Option<String> },
}

/// Scores a model on a dataset; see [`Server::evaluator`].
pub type Evaluator = Box<dyn Fn(&Dataset) -> Result<sgd::EvalStats> + Send + Sync>;

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
}

impl Server {
    /// The server half for `spec`, with a freshly initialised global model.
    pub fn new(spec: &ModelSpec, setup: &ServerSetup) -> Result<Self> {
        let (n_features, n_classes) = (setup.n_features, setup.n_classes);
        Ok(match spec {
            ModelSpec::Forest(params) => Server::Forest(forest::server::ForestServer::new(
                n_features,
                n_classes,
                params.clone(),
            )),
            ModelSpec::Gbdt(params) => Server::Gbdt(gbdt::server::GbdtServer::new(
                n_features,
                n_classes,
                params.clone(),
            )),
            spec => {
                let model: std::sync::Arc<dyn sgd::Model> =
                    std::sync::Arc::from(spec.build(n_features, n_classes)?);
                let mut rng =
                    <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(setup.init_seed);
                let weights = model.init(&mut rng);
                if weights.num_params() > setup.max_params {
                    return Err(Error::Data(format!(
                        "the model has {} parameters, over the coordinator's limit of {} (--max-tensor-elements)",
                        weights.num_params(),
                        setup.max_params
                    )));
                }
                Server::Sgd(sgd::server::SgdServer::new(
                    model,
                    weights,
                    setup.strategy.build(),
                    setup.bound,
                ))
            }
        })
    }

    /// Starts a round: its first phase.
    pub fn begin_round(&mut self, plan: phase::RoundPlan) -> Result<phase::Step> {
        match self {
            Server::Sgd(s) => s.begin_round(plan),
            Server::Forest(s) => s.begin_round(plan),
            Server::Gbdt(s) => s.begin_round(plan),
        }
    }

    /// How the driver decodes fit replies' tensors for this model.
    pub fn decode_bounds(&self) -> phase::DecodeBounds {
        match self {
            Server::Sgd(s) => s.decode_bounds(),
            Server::Forest(s) => s.decode_bounds(),
            Server::Gbdt(s) => s.decode_bounds(),
        }
    }

    /// One client's reply to the open phase; `announced`: the train examples its Hello gave.
    pub fn accept(
        &mut self,
        client: &str,
        reply: phase::Reply,
        announced: Option<u64>,
    ) -> std::result::Result<(), phase::Rejection> {
        match self {
            Server::Sgd(s) => s.accept(client, reply, announced),
            Server::Forest(s) => s.accept(client, reply, announced),
            Server::Gbdt(s) => s.accept(client, reply, announced),
        }
    }

    /// The open phase ended; the next phase, or the round's result.
    pub fn close(&mut self, tally: phase::PhaseTally) -> Result<phase::Step> {
        match self {
            Server::Sgd(s) => s.close(tally),
            Server::Forest(s) => s.close(tally),
            Server::Gbdt(s) => s.close(tally),
        }
    }

    /// The global model as an Evaluate task carries it.
    pub fn payload(&self) -> phase::Payload {
        match self {
            Server::Sgd(s) => phase::Payload::Weights(s.weights.clone()),
            Server::Forest(s) => phase::Payload::Blob(s.forest.to_blob()),
            Server::Gbdt(s) => match &s.ensemble {
                Some(e) => phase::Payload::Blob(e.to_blob()),
                None => phase::Payload::None,
            },
        }
    }

    /// Scores the global model on `data`.
    pub fn evaluate(&self, data: &Dataset) -> Result<sgd::EvalStats> {
        self.evaluator()(data)
    }

    /// A scorer of the global model as it is now, owning what it needs, so it can run on another
    /// thread while the model trains on.
    pub fn evaluator(&self) -> Evaluator {
        match self {
            Server::Sgd(s) => {
                let (model, weights) = (s.model.clone(), s.weights.clone());
                Box::new(move |data| sgd::evaluate(model.as_ref(), &weights, data))
            }
            Server::Forest(s) => {
                let forest = s.forest.clone();
                Box::new(move |data| forest.evaluate(data))
            }
            Server::Gbdt(s) => {
                let ensemble = s.ensemble.clone();
                Box::new(move |data| match &ensemble {
                    Some(e) => e.evaluate(data),
                    // Reachable only before round 1 has fixed the bin edges.
                    None => Err(Error::Data("no ensemble yet".into())),
                })
            }
        }
    }

    /// Whether evaluation yields an accuracy (a diffusion denoiser's does not: its loss is the
    /// noise-prediction MSE).
    pub fn classifies(&self) -> bool {
        match self {
            Server::Sgd(s) => s.model.classifies(),
            Server::Forest(_) | Server::Gbdt(_) => true,
        }
    }

    /// Whether clients train from the global model, so that over-selection (closing the phase
    /// at the first updates) and personalisation (local epochs from it) apply.
    pub fn trains_from_global(&self) -> bool {
        matches!(self, Server::Sgd(_))
    }

    /// Size of the model, for logs: parameters or trees.
    pub fn size(&self) -> usize {
        match self {
            Server::Sgd(s) => s.weights.num_params(),
            Server::Forest(s) => s.forest.trees.len(),
            Server::Gbdt(s) => s
                .ensemble
                .as_ref()
                .map_or(0, |e| e.rounds.iter().map(Vec::len).sum()),
        }
    }

    /// The final model as JSON for the run folder.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Server::Sgd(s) => serde_json::json!({ "weights": s.weights }),
            Server::Forest(s) => serde_json::json!({ "forest": s.forest.as_ref() }),
            Server::Gbdt(s) => serde_json::json!({ "gbdt": s.ensemble.as_deref() }),
        }
    }

    /// The checkpoint of the model, as JSON.
    pub fn checkpoint(&self) -> Result<String> {
        let text = |b: Vec<u8>| {
            String::from_utf8(b).map_err(|e| Error::Data(format!("a model blob is not text: {e}")))
        };
        let c = match self {
            Server::Sgd(s) => {
                let c = s.checkpoint();
                Checkpoint::Params {
                    weights: c.weights,
                    strategy: c.strategy,
                }
            }
            Server::Forest(s) => Checkpoint::Forest {
                blob: text(s.checkpoint())?,
            },
            Server::Gbdt(s) => Checkpoint::Gbdt {
                blob: s.checkpoint().map(text).transpose()?,
            },
        };
        serde_json::to_string(&c)
            .map_err(|e| Error::Data(format!("cannot encode a checkpoint: {e}")))
    }

    /// Puts back the model a checkpoint holds, checked against this (freshly initialised) one.
    pub fn restore(&mut self, json: &str) -> Result<()> {
        let bad = |e: String| Error::Data(format!("the checkpoint cannot be restored: {e}"));
        let c: Checkpoint = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
        match (self, c) {
            (Server::Sgd(s), Checkpoint::Params { weights, strategy }) => s
                .restore(sgd::server::SgdCheckpoint { weights, strategy })
                .map_err(|e| bad(e.to_string())),
            (Server::Forest(s), Checkpoint::Forest { blob }) => {
                s.restore(blob.as_bytes()).map_err(|e| bad(e.to_string()))
            }
            (Server::Gbdt(s), Checkpoint::Gbdt { blob }) => s
                .restore(blob.as_deref().map(str::as_bytes))
                .map_err(|e| bad(e.to_string())),
            _ => Err(bad("it was written for another kind of model".into())),
        }
    }
}
