//! The client half of a weights model: local training from the global weights (with FedProx's
//! proximal term and SCAFFOLD's correction as the task asks), and evaluation with optional
//! personalisation.

use super::{evaluate, train_local, Model, Objective};
use crate::models::phase::{
    Answer, ClientState, ClientTask, Evaluation, FitReply, Payload, Reply, TaskData, Work,
};
use crate::tensor::Weights;
use crate::{Error, Result};

/// How many jobs' SCAFFOLD control variates a client keeps (oldest dropped first).
pub const MAX_CONTROL_JOBS: usize = 32;

/// Runs `task` against the client's rows. Returns the answer and, after a SCAFFOLD round, the
/// client's new control variate to keep for the job.
pub fn handle(
    model: &dyn Model,
    task: ClientTask,
    data: &TaskData<'_>,
    state: &ClientState,
) -> Result<(Answer, Option<ClientState>)> {
    let Payload::Weights(global) = task.payload else {
        return Err(Error::Data("task without parameters".into()));
    };
    match task.work {
        Work::Fit {
            local: cfg,
            control,
        } => {
            let train = data.train()?;
            // SCAFFOLD: correct every step by c - c_i (c_i starts at zero for a new job).
            let (c_i, correction) = match &control {
                Some(c) => {
                    global.check_same_layout(c)?;
                    let c_i = match state.get::<Weights>() {
                        Some(c_i) => Weights::clone(&c_i),
                        None => global.zeros_like(),
                    };
                    let mut corr = c.clone();
                    corr.add_scaled(-1.0, &c_i)?;
                    (Some(c_i), Some(corr))
                }
                None => (None, None),
            };
            let objective = Objective {
                anchor: (cfg.proximal_mu > 0.0).then_some(&*global),
                correction: correction.as_ref(),
                track_mean_gradient: control.is_some(),
            };
            let (w, stats) = train_local(
                model,
                Weights::clone(&global),
                &train,
                &cfg,
                task.seed,
                &objective,
            )?;
            let (control_delta, kept) = match (c_i, stats.mean_gradient) {
                // SCAFFOLD: the new c_i is the mean local gradient along this round's path
                // (what option II estimates as (x - y) / (K lr) under plain SGD).
                (Some(c_i), Some(new_ci)) => {
                    let mut delta = new_ci.clone();
                    delta.add_scaled(-1.0, &c_i)?;
                    let kept = ClientState::new(std::sync::Arc::new(new_ci), MAX_CONTROL_JOBS);
                    (Some(delta), Some(kept))
                }
                _ => (None, None),
            };
            let reply = Reply::Fit(FitReply {
                num_examples: stats.num_examples,
                train_loss: stats.loss,
                parameters: Some(w),
                control_delta,
                trees: None,
            });
            Ok((Answer::Reply(reply), kept))
        }
        Work::Evaluate { personalize } => {
            let test = data.test()?;
            let stats = evaluate(model, &global, &test)?;
            let personalized_accuracy = match personalize {
                Some(cfg) => {
                    let train = data.train()?;
                    let (w, _) = train_local(
                        model,
                        Weights::clone(&global),
                        &train,
                        &cfg,
                        task.seed,
                        &Objective::default(),
                    )?;
                    Some(evaluate(model, &w, &test)?.accuracy)
                }
                None => None,
            };
            Ok((
                Answer::Evaluated(Evaluation::of(&stats, &test, personalized_accuracy)),
                None,
            ))
        }
        Work::Sketch | Work::Histogram(_) => Err(Error::Data(
            "sketch and histogram tasks are for gbdt jobs".into(),
        )),
    }
}
