//! Runs one task against the local data: pure and synchronous, called through `spawn_blocking`.

use shoal_proto::v1::{self, task, task_result};
use shoal_shared::model;

use crate::catalog::Catalog;

/// Runs `task` and returns its result; any failure becomes a result carrying the reason, so the
/// coordinator learns why instead of waiting for the deadline.
pub fn execute(catalog: &Catalog, task: &v1::Task) -> v1::TaskResult {
    let outcome = match run(catalog, task) {
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

fn run(catalog: &Catalog, task: &v1::Task) -> Result<task_result::Outcome, String> {
    let local = catalog
        .get(&task.dataset)
        .ok_or_else(|| format!("this client holds no dataset `{}`", task.dataset))?;
    let spec = shoal_proto::model_from_wire(task.model.as_ref()).map_err(|e| e.to_string())?;
    let params = task.parameters.as_ref().ok_or("task without parameters")?;
    let weights = shoal_proto::weights_from_wire(params, usize::MAX).map_err(|e| e.to_string())?;
    let model = spec
        .build(local.train.n_features(), task.class_names.len())
        .map_err(|e| e.to_string())?;
    match &task.kind {
        Some(task::Kind::Fit(fit)) => {
            let cfg =
                shoal_proto::local_from_wire(fit.local.as_ref()).map_err(|e| e.to_string())?;
            let train = local
                .train
                .remap_classes(&task.class_names)
                .map_err(|e| e.to_string())?;
            let (w, stats) = model::train_local(model.as_ref(), weights, &train, &cfg, task.seed)
                .map_err(|e| e.to_string())?;
            Ok(task_result::Outcome::Fit(v1::FitResult {
                parameters: Some(shoal_proto::weights_to_wire(&w)),
                num_examples: stats.num_examples,
                train_loss: stats.loss,
            }))
        }
        Some(task::Kind::Evaluate(_)) => {
            let test = local
                .test
                .remap_classes(&task.class_names)
                .map_err(|e| e.to_string())?;
            let stats =
                model::evaluate(model.as_ref(), &weights, &test).map_err(|e| e.to_string())?;
            Ok(task_result::Outcome::Evaluate(v1::EvaluateResult {
                num_examples: stats.num_examples,
                loss: stats.loss,
                accuracy: stats.accuracy,
            }))
        }
        None => Err("task without a kind".into()),
    }
}
