//! The client half of a federated forest: Fit grows new trees on the local train split (the
//! global forest is not needed for that); Evaluate scores the global forest the task carries.

use super::{fit_trees, ForestParams};
use crate::models::phase::{
    Answer, ClientTask, Evaluation, FitReply, Payload, Reply, TaskData, Work,
};
use crate::{Error, Result};

pub fn handle(params: &ForestParams, task: ClientTask, data: &TaskData<'_>) -> Result<Answer> {
    match task.work {
        Work::Fit { .. } => {
            // Forests see the rows as they are: a fusion view is for weights models.
            let train = data.raw_train.remap_classes(data.class_names)?;
            let trees = fit_trees(&train, task.n_classes, params, task.seed)?;
            let stats = trees.evaluate(&train)?;
            Ok(Answer::Reply(Reply::Fit(FitReply {
                num_examples: train.n_rows() as u64,
                train_loss: stats.loss,
                parameters: None,
                control_delta: None,
                trees: Some(trees),
            })))
        }
        Work::Evaluate { .. } => {
            let test = data.raw_test.remap_classes(data.class_names)?;
            let Payload::Forest(forest) = &task.payload else {
                return Err(Error::Data(
                    "the evaluation task of a forest job carries no forest".into(),
                ));
            };
            forest.check(test.n_features(), task.n_classes, params.max_trees as usize)?;
            let stats = forest.evaluate(&test)?;
            Ok(Answer::Evaluated(Evaluation::of(&stats, &test, None)))
        }
        Work::Sketch | Work::Histogram(_) => Err(Error::Data(
            "sketch and histogram tasks are for gbdt jobs".into(),
        )),
    }
}
