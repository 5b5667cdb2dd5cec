//! `[model] kind = "external"`: a weights model whose training and scoring run in client code
//! (the Python SDK's `Client`, a Rust `Trainer` in `shoal-client`), not in Shoal.
//!
//! The job names the model's tensors (names, shapes, dtype) and how the coordinator initialises
//! them. From there it is a weights model like any other: every strategy aggregates its updates,
//! the update checks and norm bound apply, checkpoints and resume work unchanged. What the
//! coordinator cannot do is run it: there is no centralized evaluation on a holdout and no
//! centralized baseline; accuracy comes from the clients' federated evaluation.
//!
//! Principal types: [`ExternalSpec`] (the spec side, `impl Kind`), [`TensorSpec`], [`ExternalInit`].

use std::collections::BTreeSet;
use std::sync::Arc;

use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::models::phase::{Answer, ClientState, ClientTask, TaskData};
use crate::models::sgd::{EvalStats, LocalConfig, Model, Objective, TrainStats};
use crate::models::{Kind, ModelSpec, Server, ServerSetup};
use crate::tensor::{Tensor, Weights};
use crate::{Error, Result};

/// Most tensors an external model may name.
pub const MAX_TENSORS: usize = 4096;
/// Longest tensor name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Most dimensions of one tensor.
pub const MAX_DIMS: usize = 8;

/// The model's tensors and how the coordinator initialises them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalSpec {
    /// The model's tensors, in the order clients send them back.
    #[serde(default)]
    pub tensors: Vec<TensorSpec>,
    /// Initial values: `zeros` (default), `normal` (mean 0, `init_std`, seeded by the job),
    /// `file` (the safetensors file `init_file`) or `client` (asked of one client before round 1).
    /// With `file` and `client` the tensors may be left out: the parameters name them.
    #[serde(default)]
    pub init: ExternalInit,
    /// Standard deviation of `init = "normal"`.
    #[serde(default = "default_std")]
    pub init_std: f64,
    /// `init = "file"`: a safetensors file, read by whoever submits the job (`job submit`,
    /// `serve --job`), relative to the spec file; never by the coordinator from a remote spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_file: Option<String>,
}

fn default_std() -> f64 {
    0.01
}

/// One tensor of an external model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    /// Dimensions, each at least 1 (`[]` is a scalar).
    pub shape: Vec<usize>,
    /// Element type; `f32` is the one the wire carries today.
    #[serde(default = "default_dtype")]
    pub dtype: String,
}

fn default_dtype() -> String {
    "f32".into()
}

/// How the coordinator initialises an external model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExternalInit {
    #[default]
    Zeros,
    Normal,
    File,
    Client,
}

impl ExternalSpec {
    /// Whether the initial parameters come from outside the job (a file or a client).
    pub fn takes_initial(&self) -> bool {
        matches!(self.init, ExternalInit::File | ExternalInit::Client)
    }

    /// Takes `given` as the model's initial parameters: with no tensors listed, they name the
    /// tensors (in their order); otherwise they must hold exactly the listed names and shapes,
    /// and are put in the listed order. Returns the spec with its tensors and the parameters.
    pub fn adopt(&self, given: Weights) -> Result<(ExternalSpec, Weights)> {
        let what = match self.init {
            ExternalInit::File => "the init_file",
            _ => "the initial parameters",
        };
        if self.tensors.is_empty() {
            let spec = ExternalSpec {
                tensors: given
                    .tensors
                    .iter()
                    .map(|t| TensorSpec {
                        name: t.name.clone(),
                        shape: t.shape.clone(),
                        dtype: default_dtype(),
                    })
                    .collect(),
                ..self.clone()
            };
            spec.check()?;
            return Ok((spec, given));
        }
        let mut by_name: std::collections::HashMap<String, Tensor> = given
            .tensors
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        let mut ordered = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            let found = by_name.remove(&t.name).ok_or_else(|| {
                Error::Data(format!(
                    "{what} has no tensor `{}`, which model.tensors lists",
                    t.name
                ))
            })?;
            if found.shape != t.shape {
                return Err(Error::Data(format!(
                    "{what} gives `{}` shape {:?}, model.tensors says {:?}",
                    t.name, found.shape, t.shape
                )));
            }
            ordered.push(found);
        }
        if let Some(extra) = by_name.keys().min() {
            return Err(Error::Data(format!(
                "{what} holds tensor `{extra}`, which model.tensors does not list ({} more)",
                by_name.len() - 1
            )));
        }
        Ok((self.clone(), Weights::new(ordered)))
    }

    /// Elements over all tensors (saturating).
    pub fn num_params(&self) -> usize {
        self.tensors
            .iter()
            .map(|t| t.shape.iter().fold(1usize, |a, &d| a.saturating_mul(d)))
            .fold(0usize, usize::saturating_add)
    }
}

impl Kind for ExternalSpec {
    fn name(&self) -> &'static str {
        "external"
    }

    fn label(&self) -> String {
        format!(
            "external({} tensors, {} parameters)",
            self.tensors.len(),
            self.num_params()
        )
    }

    fn check(&self) -> Result<()> {
        let bad = |field: &str, m: String| Err(Error::invalid(format!("model.{field}"), m));
        match (self.init, &self.init_file) {
            (ExternalInit::File, None) => {
                return bad(
                    "init_file",
                    "init = \"file\" needs init_file = \"PATH.safetensors\"".into(),
                )
            }
            (ExternalInit::File, Some(_)) | (_, None) => {}
            (_, Some(_)) => {
                return bad(
                    "init_file",
                    "is read only with init = \"file\"; set that or drop init_file".into(),
                )
            }
        }
        // The initial parameters name the tensors when the spec does not.
        let unnamed = self.tensors.is_empty() && self.takes_initial();
        if (self.tensors.is_empty() && !unnamed) || self.tensors.len() > MAX_TENSORS {
            return bad(
                "tensors",
                format!(
                    "an external model names 1 to {MAX_TENSORS} tensors, found {} (e.g. tensors = [{{ name = \"weight\", shape = [64, 10] }}])",
                    self.tensors.len()
                ),
            );
        }
        let mut names = BTreeSet::new();
        for (i, t) in self.tensors.iter().enumerate() {
            let field = format!("tensors[{i}]");
            if t.name.trim().is_empty() || t.name.len() > MAX_NAME_BYTES {
                return bad(
                    &field,
                    format!(
                        "needs a name of 1 to {MAX_NAME_BYTES} bytes, found {:?}",
                        t.name
                    ),
                );
            }
            if !names.insert(t.name.as_str()) {
                return bad(&field, format!("repeats the tensor name `{}`", t.name));
            }
            if t.shape.len() > MAX_DIMS || t.shape.contains(&0) {
                return bad(
                    &field,
                    format!(
                        "`{}` has shape {:?}: give at most {MAX_DIMS} dimensions, each at least 1",
                        t.name, t.shape
                    ),
                );
            }
            if t.shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .is_none()
            {
                return bad(&field, format!("`{}` has too many elements", t.name));
            }
            if t.dtype != "f32" {
                return bad(
                    &field,
                    format!(
                        "`{}` has dtype `{}`: the wire carries f32 tensors only",
                        t.name, t.dtype
                    ),
                );
            }
        }
        if self.init == ExternalInit::Normal
            && !(self.init_std.is_finite() && self.init_std > 0.0 && self.init_std <= 10.0)
        {
            return bad(
                "init_std",
                format!("must be in (0, 10], found {}", self.init_std),
            );
        }
        Ok(())
    }

    fn with_hidden(&self, _hidden: &[usize]) -> Result<ModelSpec> {
        Ok(ModelSpec::External(self.clone()))
    }

    /// A weights server over [`ExternalModel`]: the job's strategy aggregates what clients send.
    fn server(&self, setup: &ServerSetup) -> Result<Server> {
        self.check()?;
        match (self.takes_initial(), &setup.initial) {
            (true, None) => {
                return Err(Error::Data(
                    "the job's initial parameters are missing (init = \"file\" or \"client\")"
                        .into(),
                ))
            }
            (false, Some(_)) => {
                return Err(Error::Data(format!(
                    "initial parameters were given to a model with init = \"{}\"",
                    serde_json::to_value(self.init)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default()
                )))
            }
            _ => {}
        }
        if self.tensors.is_empty() {
            return Err(Error::Data(
                "the external model's tensors are not known yet: adopt the initial parameters first".into(),
            ));
        }
        crate::models::sgd::kind::weights_server(
            Box::new(ExternalModel(Arc::new(self.clone()))),
            setup,
        )
    }

    /// The built-in client cannot run client code: a client runs external models only with a
    /// trainer of its own, and says so in its Hello, so the coordinator never sends it this.
    fn handle(
        &self,
        _task: ClientTask,
        _data: &TaskData<'_>,
        _state: &ClientState,
    ) -> Result<(Answer, Option<ClientState>)> {
        Err(Error::Data(
            "this client has no trainer for external models (the Python SDK or a Rust Trainer runs them)"
                .into(),
        ))
    }
}

/// The coordinator's view of an external model: it can initialise the tensors, not train or
/// score them.
#[derive(Debug)]
pub struct ExternalModel(Arc<ExternalSpec>);

impl Model for ExternalModel {
    fn init(&self, rng: &mut ChaCha8Rng) -> Weights {
        // The check keeps init_std positive and finite; a spec that bypassed it gets zeros.
        let normal = match self.0.init {
            ExternalInit::Normal => Normal::new(0.0f32, self.0.init_std as f32).ok(),
            ExternalInit::Zeros | ExternalInit::File | ExternalInit::Client => None,
        };
        Weights::new(
            self.0
                .tensors
                .iter()
                .map(|t| {
                    let n = t.shape.iter().product();
                    let data = match &normal {
                        Some(d) => (0..n).map(|_| d.sample(rng)).collect(),
                        None => vec![0.0; n],
                    };
                    Tensor {
                        name: t.name.clone(),
                        shape: t.shape.clone(),
                        data,
                    }
                })
                .collect(),
        )
    }

    fn num_params(&self) -> usize {
        self.0.num_params()
    }

    fn fit(
        &self,
        _weights: Weights,
        _data: &Dataset,
        _cfg: &LocalConfig,
        _seed: u64,
        _objective: &Objective<'_>,
    ) -> Result<(Weights, TrainStats)> {
        Err(Error::Data(
            "an external model trains in client code, not in Shoal".into(),
        ))
    }

    fn score(&self, _weights: &Weights, _data: &Dataset) -> Result<EvalStats> {
        Err(Error::Data(
            "an external model is scored by its clients, not by the coordinator".into(),
        ))
    }

    fn runs_here(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn spec(text: &str) -> Result<ModelSpec> {
        let m: ModelSpec = toml::from_str(text).map_err(|e| Error::Data(e.to_string()))?;
        m.check()?;
        Ok(m)
    }

    #[test]
    fn tensors_parse_check_and_initialise() {
        let m = spec(
            "kind = \"external\"\ntensors = [{ name = \"w\", shape = [3, 2] }, { name = \"b\", shape = [2] }]\ninit = \"normal\"\n",
        )
        .unwrap();
        let e = m.external().unwrap();
        assert_eq!(e.num_params(), 8);
        assert_eq!(m.label(), "external(2 tensors, 8 parameters)");
        let model = ExternalModel(Arc::new(e.clone()));
        let w = model.init(&mut ChaCha8Rng::seed_from_u64(1));
        assert_eq!(w.tensors[0].shape, vec![3, 2]);
        assert_eq!(w.tensors[1].name, "b");
        assert!(w.values().all(|v| v.is_finite() && v.abs() < 0.1));
        assert_eq!(w, model.init(&mut ChaCha8Rng::seed_from_u64(1)), "seeded");
        assert!(!model.runs_here());
        let zeros = ExternalModel(Arc::new(ExternalSpec {
            init: ExternalInit::Zeros,
            ..e.clone()
        }));
        assert!(zeros
            .init(&mut ChaCha8Rng::seed_from_u64(1))
            .values()
            .all(|v| v == 0.0));
    }

    #[test]
    fn a_model_over_the_limit_is_refused_before_it_is_allocated() {
        // 2^40 floats would be 4 TiB: allocating them first would abort the process.
        let huge =
            spec("kind = \"external\"\ntensors = [{ name = \"w\", shape = [1099511627776] }]")
                .unwrap();
        let setup = ServerSetup {
            n_features: 4,
            n_classes: 3,
            init_seed: 1,
            max_params: 1000,
            strategy: Default::default(),
            bound: None,
            influence: Default::default(),
            initial: None,
            spool: Default::default(),
        };
        let err = huge.server(&setup).err().unwrap().to_string();
        assert!(
            err.contains("1099511627776 parameters, over the coordinator's limit of 1000"),
            "{err}"
        );
        // Every weights model knows its size without allocating, and agrees with what it allocates.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let models: Vec<Box<dyn Model>> = vec![
            Box::new(crate::models::sgd::LogReg::new(5, 3)),
            Box::new(crate::models::sgd::Mlp::new(5, &[7, 4], 3)),
            Box::new(crate::models::diffusion::DenoiserModel::new(&Default::default(), 6).unwrap()),
            Box::new(ExternalModel(Arc::new(
                spec("kind = \"external\"\ntensors = [{ name = \"w\", shape = [2, 3] }, { name = \"s\", shape = [] }]")
                    .unwrap()
                    .external()
                    .unwrap()
                    .clone(),
            ))),
        ];
        for m in models {
            assert_eq!(m.num_params(), m.init(&mut rng).num_params(), "{m:?}");
        }
    }

    #[test]
    fn bad_tensor_lists_name_the_field() {
        for (text, says) in [
            ("kind = \"external\"", "names 1 to"),
            (
                "kind = \"external\"\ntensors = [{ name = \"w\", shape = [0] }]",
                "model.tensors[0]",
            ),
            (
                "kind = \"external\"\ntensors = [{ name = \"w\", shape = [2] }, { name = \"w\", shape = [2] }]",
                "repeats the tensor name `w`",
            ),
            (
                "kind = \"external\"\ntensors = [{ name = \"w\", shape = [2], dtype = \"f16\" }]",
                "f32 tensors only",
            ),
            (
                "kind = \"external\"\ntensors = [{ name = \"w\", shape = [2] }]\ninit = \"normal\"\ninit_std = -1.0",
                "init_std",
            ),
            (
                "kind = \"external\"\ntensors = [{ name = \"w\", shape = [4294967296, 4294967296, 4294967296] }]",
                "too many elements",
            ),
            (
                "kind = \"external\"\ntensors = [{ name = \"w\", shape = [2], size = 3 }]",
                "unknown field `size`",
            ),
        ] {
            let err = spec(text).unwrap_err().to_string();
            assert!(err.contains(says), "{text:?} gave {err:?}");
        }
    }

    /// Given parameters name the tensors of a spec that lists none, or are checked against and
    /// ordered by the list.
    #[test]
    fn initial_parameters_are_adopted_or_refused_by_name() {
        let w = Weights::new(vec![
            Tensor::new("b", vec![2], vec![1.0, 2.0]).unwrap(),
            Tensor::new("w", vec![3, 2], vec![0.5; 6]).unwrap(),
        ]);
        let open = spec("kind = \"external\"\ninit = \"client\"").unwrap();
        let (named, same) = open.external().unwrap().adopt(w.clone()).unwrap();
        assert_eq!(same, w);
        assert_eq!(named.num_params(), 8);
        let listed = spec(
            "kind = \"external\"\ninit = \"client\"\ntensors = [{ name = \"w\", shape = [3, 2] }, { name = \"b\", shape = [2] }]",
        )
        .unwrap();
        let ext = listed.external().unwrap();
        let (_, ordered) = ext.adopt(w.clone()).unwrap();
        assert_eq!(ordered.names(), vec!["w", "b"]);
        let mut extra = w.clone();
        extra
            .tensors
            .push(Tensor::new("c", vec![1], vec![0.0]).unwrap());
        let e = ext.adopt(extra).unwrap_err().to_string();
        assert!(e.contains("holds tensor `c`"), "{e}");
        let mut reshaped = w;
        reshaped.tensors[1] = Tensor::new("w", vec![2, 3], vec![0.5; 6]).unwrap();
        let e = ext.adopt(reshaped).unwrap_err().to_string();
        assert!(e.contains("`w` shape [2, 3]"), "{e}");
        // Without a source of parameters, the tensors must be listed.
        assert!(spec("kind = \"external\"\ninit = \"normal\"").is_err());
    }
}
