//! Boosting as a model kind: its name, checks and two halves.

use super::{client, server, GbdtParams};
use crate::Result;

impl crate::models::Kind for GbdtParams {
    fn name(&self) -> &'static str {
        "gbdt"
    }

    fn label(&self) -> String {
        format!("gbdt(depth {})", self.max_depth)
    }

    fn check(&self) -> Result<()> {
        GbdtParams::check(self)
    }

    /// Boosted trees have no layers: the wire's hidden widths do not apply.
    fn with_hidden(&self, _hidden: &[usize]) -> Result<crate::models::ModelSpec> {
        Ok(crate::models::ModelSpec::Gbdt(self.clone()))
    }

    /// A sketch before the first round, then histograms level by level.
    fn training_tasks(&self) -> &'static [crate::models::phase::TaskKind] {
        use crate::models::phase::TaskKind;
        &[TaskKind::Sketch, TaskKind::Histogram]
    }

    fn server(&self, setup: &crate::models::ServerSetup) -> Result<crate::models::Server> {
        Ok(Box::new(server::GbdtServer::new(
            setup.n_features,
            setup.n_classes,
            self.clone(),
        )))
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
        client::handle(self, task, data, state)
    }
}
