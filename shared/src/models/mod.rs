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
}

impl ModelSpec {
    /// The server half for this model, with a freshly initialised global model.
    pub fn server(&self, setup: &ServerSetup) -> Result<Server> {
        let (n_features, n_classes) = (setup.n_features, setup.n_classes);
        Ok(match self {
            ModelSpec::Forest(params) => Box::new(forest::server::ForestServer::new(
                n_features,
                n_classes,
                params.clone(),
            )),
            ModelSpec::Gbdt(params) => Box::new(gbdt::server::GbdtServer::new(
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
                Box::new(sgd::server::SgdServer::new(
                    model,
                    weights,
                    setup.strategy.build(),
                    setup.bound,
                ))
            }
        })
    }
}
