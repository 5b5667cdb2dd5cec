//! The denoiser as a model kind: a weights model with an objective of its own, served by the
//! weights models' two halves.

use super::{DenoiserModel, DenoiserSpec};
use crate::models::sgd::Model;
use crate::{Error, Result};

impl DenoiserSpec {
    /// The denoiser for signals of `n_features` values (a denoiser models the rows themselves:
    /// labels, such as a band, play no part).
    pub fn model(&self, n_features: usize, n_classes: usize) -> Result<Box<dyn Model>> {
        if n_features == 0 {
            return Err(Error::Data(format!(
                "a denoiser model needs at least 1 feature and 2 classes (found {n_features} features, {n_classes} classes)"
            )));
        }
        self.check()?;
        Ok(Box::new(DenoiserModel::new(self, n_features)?))
    }
}

impl crate::models::Kind for DenoiserSpec {
    fn name(&self) -> &'static str {
        "denoiser"
    }

    fn label(&self) -> String {
        DenoiserSpec::label(self)
    }

    fn check(&self) -> Result<()> {
        DenoiserSpec::check(self)
    }

    fn hidden(&self) -> &[usize] {
        &self.hidden
    }

    fn with_hidden(&self, hidden: &[usize]) -> Result<crate::models::ModelSpec> {
        Ok(crate::models::ModelSpec::Denoiser(DenoiserSpec {
            hidden: hidden.to_vec(),
            ..self.clone()
        }))
    }

    fn server(&self, setup: &crate::models::ServerSetup) -> Result<crate::models::Server> {
        crate::models::sgd::kind::weights_server(
            self.model(setup.n_features, setup.n_classes)?,
            setup,
        )
    }

    fn handle(
        &self,
        task: crate::models::phase::ClientTask,
        data: &crate::models::phase::TaskData<'_>,
        state: &crate::models::phase::ClientState,
    ) -> Result<(
        crate::models::phase::Answer,
        Option<crate::models::phase::ClientState>,
    )> {
        let model = self.model(data.n_features(), task.n_classes)?;
        crate::models::sgd::client::handle(model.as_ref(), task, data, state)
    }
}
