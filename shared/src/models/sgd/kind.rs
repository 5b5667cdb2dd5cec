//! The weights-model kinds as job specs name them (`logreg`, `mlp`), and what every weights model
//! shares: the server half over a [`Model`] and the client half that trains it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{LogReg, Mlp, Model};
use crate::models::phase::{Answer, ClientState, ClientTask, TaskData};
use crate::models::{Kind, ModelSpec, Server, ServerSetup};
use crate::{Error, Result};

/// Limits that keep a spec from asking for an absurd network.
pub const MAX_HIDDEN_LAYERS: usize = 8;
pub const MAX_LAYER_WIDTH: usize = 65_536;

/// `[model] kind = "logreg"`: multinomial logistic regression; no parameters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogregSpec {}

/// `[model] kind = "mlp"`: ReLU hidden layers of the given widths (one of 64 by default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpSpec {
    #[serde(default = "default_hidden")]
    pub hidden: Vec<usize>,
}

fn default_hidden() -> Vec<usize> {
    vec![64]
}

impl Default for MlpSpec {
    fn default() -> Self {
        MlpSpec {
            hidden: default_hidden(),
        }
    }
}

/// Rejects hidden layers no one means: none, a zero or huge width, too many layers.
pub fn check_hidden(hidden: &[usize]) -> Result<()> {
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
    Ok(())
}

/// A classifier needs at least one feature and two classes.
pub fn check_shape(name: &str, n_features: usize, n_classes: usize) -> Result<()> {
    if n_features == 0 || n_classes < 2 {
        return Err(Error::Data(format!(
            "a {name} model needs at least 1 feature and 2 classes (found {n_features} features, {n_classes} classes)"
        )));
    }
    Ok(())
}

/// The server half of any weights model: initial weights from the job's seed (within the
/// coordinator's size limit), aggregated by the job's strategy.
pub fn weights_server(model: Box<dyn Model>, setup: &ServerSetup) -> Result<Server> {
    let model: Arc<dyn Model> = Arc::from(model);
    // Before `init`: a model over the limit is refused without being allocated.
    if model.num_params() > setup.max_params {
        return Err(Error::Data(format!(
            "the model has {} parameters, over the coordinator's limit of {} (--max-tensor-elements)",
            model.num_params(),
            setup.max_params
        )));
    }
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(setup.init_seed);
    let weights = match &setup.initial {
        Some(given) => {
            let given = crate::tensor::Weights::clone(given);
            given.check_same_layout(&model.init(&mut rng))?;
            given.check_finite()?;
            given
        }
        None => model.init(&mut rng),
    };
    Ok(Box::new(super::server::SgdServer::new(
        model,
        weights,
        setup.strategy.build(),
        setup.bound,
        setup.influence,
        setup.spool.make(),
    )))
}

impl LogregSpec {
    pub fn model(&self, n_features: usize, n_classes: usize) -> Result<Box<dyn Model>> {
        check_shape("logreg", n_features, n_classes)?;
        Ok(Box::new(LogReg::new(n_features, n_classes)))
    }
}

impl MlpSpec {
    pub fn model(&self, n_features: usize, n_classes: usize) -> Result<Box<dyn Model>> {
        check_shape("mlp", n_features, n_classes)?;
        self.check()?;
        Ok(Box::new(Mlp::new(n_features, &self.hidden, n_classes)))
    }
}

impl Kind for LogregSpec {
    fn name(&self) -> &'static str {
        "logreg"
    }

    fn label(&self) -> String {
        "logreg".into()
    }

    fn check(&self) -> Result<()> {
        Ok(())
    }

    fn with_hidden(&self, hidden: &[usize]) -> Result<ModelSpec> {
        if !hidden.is_empty() {
            return Err(Error::invalid(
                "model.hidden",
                "logreg has no hidden layers",
            ));
        }
        Ok(ModelSpec::Logreg(self.clone()))
    }

    fn server(&self, setup: &ServerSetup) -> Result<Server> {
        weights_server(self.model(setup.n_features, setup.n_classes)?, setup)
    }

    fn handle(
        &self,
        task: ClientTask,
        data: &TaskData<'_>,
        state: &ClientState,
    ) -> Result<(Answer, Option<ClientState>)> {
        let model = self.model(data.n_features(), task.n_classes)?;
        super::client::handle(model.as_ref(), task, data, state)
    }
}

impl Kind for MlpSpec {
    fn name(&self) -> &'static str {
        "mlp"
    }

    fn label(&self) -> String {
        let widths: Vec<String> = self.hidden.iter().map(usize::to_string).collect();
        format!("mlp({})", widths.join(","))
    }

    fn check(&self) -> Result<()> {
        check_hidden(&self.hidden)
    }

    fn hidden(&self) -> &[usize] {
        &self.hidden
    }

    fn with_hidden(&self, hidden: &[usize]) -> Result<ModelSpec> {
        Ok(ModelSpec::Mlp(MlpSpec {
            hidden: hidden.to_vec(),
        }))
    }

    fn server(&self, setup: &ServerSetup) -> Result<Server> {
        weights_server(self.model(setup.n_features, setup.n_classes)?, setup)
    }

    fn handle(
        &self,
        task: ClientTask,
        data: &TaskData<'_>,
        state: &ClientState,
    ) -> Result<(Answer, Option<ClientState>)> {
        let model = self.model(data.n_features(), task.n_classes)?;
        super::client::handle(model.as_ref(), task, data, state)
    }
}
