//! A forest as a model kind: its name, checks and two halves.

use super::{client, server, ForestParams};
use crate::Result;

impl crate::models::Kind for ForestParams {
    fn name(&self) -> &'static str {
        "forest"
    }

    fn label(&self) -> String {
        format!("forest({}/round)", self.trees_per_round)
    }

    fn check(&self) -> Result<()> {
        ForestParams::check(self)
    }

    /// A forest has no layers: the wire's hidden widths do not apply.
    fn with_hidden(&self, _hidden: &[usize]) -> Result<crate::models::ModelSpec> {
        Ok(crate::models::ModelSpec::Forest(self.clone()))
    }

    fn server(&self, setup: &crate::models::ServerSetup) -> Result<crate::models::Server> {
        Ok(Box::new(server::ForestServer::new(
            setup.n_features,
            setup.n_classes,
            self.clone(),
            setup.influence,
        )))
    }

    fn handle(
        &self,
        task: crate::models::phase::ClientTask,
        data: &crate::models::phase::TaskData<'_>,
        _state: &crate::models::phase::ClientState,
    ) -> Result<(
        crate::models::phase::Answer,
        Option<crate::models::phase::ClientState>,
    )> {
        Ok((client::handle(self, task, data)?, None))
    }
}
