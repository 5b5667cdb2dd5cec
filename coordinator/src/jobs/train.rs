//! The `train` job: rounds from the first (or the one after its checkpoint) to the last, each
//! checkpointed; then the client table, the centralized baseline and the final model.

use shoal_proto::v1;
use tokio::sync::broadcast;
use tracing::{info, warn};

use crate::coordinator::Resume;
use crate::engine::round::{JobCtx, RoundRecord};
use crate::error::{Error, Result};

/// How many times one round runs again after clients left it below its quorum (each time after
/// waiting up to `clients.wait_for_clients_secs` for them): an outage, not a broken job.
const MAX_ROUND_RETRIES: u32 = 3;
use crate::report::{RunFolder, Summary};
use crate::Coordinator;

impl Coordinator {
    /// A train job from first round (or the round after its checkpoint) to summary.
    pub(crate) async fn train(
        &self,
        ctx: &JobCtx,
        run: &mut RunFolder,
        events: &broadcast::Sender<v1::WatchEvent>,
        resume: Option<Resume>,
    ) -> Result<Summary> {
        // A resumed job waits for the round it goes on with (its log lines say so).
        let next = resume.as_ref().map_or(1, |r| r.round + 1);
        let clients = ctx.wait_available(next, None).await?;
        let facts = ctx.resolve_data(&clients).await?;
        // An external model may start from parameters a file or a client gave.
        let ctx = &self.with_initial(ctx, &facts).await?;
        let mut state = ctx.init_state(facts)?;
        info!(
            dataset = %ctx.spec.dataset,
            features = state.facts.n_features,
            classes = state.facts.class_names.len(),
            size = state.global.size(),
            "job started"
        );
        let records = self
            .checkpointed_rounds(ctx, run, events, &mut state, resume)
            .await?;
        let table = self
            .end_step(
                ctx,
                "client_table",
                "scoring the final model on each client (client table)",
                ctx.client_table(&state),
                |table| !table.is_empty(),
            )
            .await?;
        let mut summary = Summary::from_rounds(&ctx.id, &ctx.spec, &records);
        summary.clients = table;
        if let (Some(b), true) = (
            state.facts.builtin,
            ctx.spec.evaluation.centralized_baseline,
        ) {
            summary.centralized_test_accuracy = self
                .end_step(
                    ctx,
                    "centralized_baseline",
                    "training the same model centrally on the pooled train rows (evaluation.centralized_baseline)",
                    async { Ok(centralized_baseline(ctx, b, &state).await) },
                    Option::is_some,
                )
                .await?;
        }
        run.write_model(
            &serde_json::json!({
                "model": ctx.spec.model,
                "feature_names": state.facts.feature_names,
                "class_names": state.facts.class_names,
                "global": state.global.to_json(),
            }),
            state.global.weights(),
        )?;
        summary.ended(ctx.created_ms);
        run.write_json("summary.json", &summary)?;
        run.write_client_table(&summary.clients)?;
        Ok(summary)
    }

    /// The rounds of a job that checkpoints (train, diffusion): from round 1, or after the
    /// checkpoint `resume` carries, each recorded with the checkpoint that follows it. Returns
    /// every round's record, the resumed ones included.
    pub(crate) async fn checkpointed_rounds(
        &self,
        ctx: &JobCtx,
        run: &mut RunFolder,
        events: &broadcast::Sender<v1::WatchEvent>,
        state: &mut crate::engine::round::TrainState,
        resume: Option<Resume>,
    ) -> Result<Vec<RoundRecord>> {
        let mut records = Vec::new();
        let mut first = 1;
        let mut resume_checkpoint = None;
        if let Some(r) = resume {
            resume_checkpoint = r.checkpoint.clone();
            if let Some(c) = &r.checkpoint {
                state.global.restore(c)?;
            }
            records = r.records;
            first = r.round + 1;
            self.print_text(&[format!(
                "[{}] resuming after round {} of {}",
                ctx.id, r.round, ctx.spec.rounds
            )]);
        }
        // What the round restarts from when its clients leave mid-round (none: round 1 starts
        // from the model the job's seed makes).
        let mut last = resume_checkpoint;
        // An `[async]` job's steps share the tasks in flight; a resumed one sends new tasks.
        let mut flight = crate::engine::buffered::Flight::default();
        for round in first..=ctx.spec.rounds {
            if ctx.spec.asynchronous.is_some() {
                let rec = ctx.buffered_step(round, state, &mut flight).await?;
                let checkpoint = state.global.checkpoint()?;
                self.record(ctx, run, events, &rec, &checkpoint, true)
                    .await?;
                records.push(rec);
                continue;
            }
            let mut tries = 0;
            let rec = loop {
                match ctx.run_round(round, state).await {
                    Err(Error::QuorumLost(why)) if tries < MAX_ROUND_RETRIES => {
                        tries += 1;
                        warn!(round, tries, "{why}: clients left; the round runs again from the same seeds once enough are back");
                        self.print_text(&[format!(
                            "[{}] {why}: clients left; running round {round} again once enough are back (clients.wait_for_clients_secs)",
                            ctx.id
                        )]);
                        match &last {
                            Some(c) => state.global.restore(c)?,
                            None => *state = ctx.init_state(state.facts.clone())?,
                        }
                    }
                    other => break other?,
                }
            };
            let checkpoint = state.global.checkpoint()?;
            self.record(ctx, run, events, &rec, &checkpoint, true)
                .await?;
            last = Some(checkpoint);
            records.push(rec);
        }
        Ok(records)
    }
}

/// The same model trained centrally on the pooled train rows, scored on the same test set (each
/// model kind says how: [`shoal_shared::models::phase::ServerHalf::baseline`]). A reference, not
/// a contestant.
async fn centralized_baseline(
    ctx: &JobCtx,
    b: shoal_shared::data::builtin::Builtin,
    state: &crate::engine::round::TrainState,
) -> Option<f64> {
    let holdout = state.facts.holdout.clone()?;
    let settings = shoal_shared::models::phase::BaselineSettings {
        local: ctx.spec.local.clone(),
        rounds: ctx.spec.rounds,
        seed: ctx.spec.seed,
        n_classes: state.facts.class_names.len(),
    };
    let baseline = state.global.baseline(&settings)?;
    let res = tokio::task::spawn_blocking(move || -> shoal_shared::Result<f64> {
        let pool = b.train_pool()?;
        baseline(&pool, &holdout)
    })
    .await;
    match res {
        Ok(Ok(acc)) => Some(acc),
        Ok(Err(e)) => {
            tracing::warn!("centralized baseline failed: {e}");
            None
        }
        Err(e) => {
            tracing::warn!("centralized baseline panicked: {e}");
            None
        }
    }
}
