//! The `fusion` job: one federated training per variant (each modality alone, early and cross
//! fusion), late fusion from the single-modality models, and learned late fusion; its table and
//! chart (`fusion.md`, `fusion.svg`).

use shoal_proto::v1;
use tokio::sync::broadcast;
use tracing::info;

use crate::coordinator::Resume;
use crate::engine::round::{JobCtx, RoundRecord};
use crate::error::{Error, Result};
use crate::report::{RunFolder, Summary};
use crate::Coordinator;

impl Coordinator {
    /// A fusion job: one federated training per variant (each modality alone, early and cross
    /// fusion), late fusion from the single-modality models, and learned late fusion (a model over
    /// their outputs, trained over the federation). Rounds are numbered across the variants.
    /// After every round a [`FusionCheckpoint`] goes in with the round, so a restarted
    /// coordinator goes on from the variant and round it reached.
    pub(crate) async fn fusion(
        &self,
        ctx: &JobCtx,
        run: &mut RunFolder,
        events: &broadcast::Sender<v1::WatchEvent>,
        resume: Option<Resume>,
    ) -> Result<Summary> {
        use crate::report::VariantResult;
        use shoal_shared::fusion::{self, FeatureView};

        let clients = ctx.wait_available(1, None).await?;
        let facts = ctx.resolve_data(&clients).await?;
        let holdout = facts.holdout.clone().ok_or_else(|| {
            Error::Job("a fusion job needs a test set: a built-in dataset such as multimodal, or [evaluation] holdout".into())
        })?;
        // Views select columns by position: every client must hold the test set's columns in
        // the same order.
        for c in &clients {
            let names = c.dataset(&ctx.spec.dataset).map(|d| &d.feature_names);
            if names != Some(&holdout.feature_names) {
                return Err(Error::Job(format!(
                    "client `{}` holds `{}` with other feature names (or another order) than the test set; fusion views select columns by position",
                    c.name, ctx.spec.dataset
                )));
            }
        }
        // Modalities come from the coordinator's own test set, never from what a client announced.
        let mods = fusion::modalities(&holdout.feature_names);
        if mods.len() > fusion::MAX_MODALITIES {
            return Err(Error::Job(format!(
                "fusion compares at most {} modalities; `{}` has {}",
                fusion::MAX_MODALITIES,
                ctx.spec.dataset,
                mods.len()
            )));
        }
        if mods.len() < 2 {
            return Err(Error::Job(format!(
                "fusion needs features from at least 2 modalities (name prefixes such as m1_, m2_); `{}` has {}",
                ctx.spec.dataset,
                mods.len()
            )));
        }
        let variants = fusion::variants(&mods);
        let per = ctx.spec.rounds;
        let total = per
            .checked_mul(variants.len() as u32 + 1)
            .ok_or_else(|| Error::InvalidSpec("rounds times fusion variants overflows".into()))?;
        self.store.set_rounds_total(&ctx.id, total)?;
        // Where to start: the beginning, or the checkpoint's variant and round.
        let mut at = FusionCheckpoint::default();
        let mut records: Vec<RoundRecord> = Vec::new();
        if let Some(r) = resume {
            if let Some(c) = &r.checkpoint {
                at = serde_json::from_slice(c).map_err(|e| {
                    Error::Job(format!("the fusion checkpoint cannot be read: {e}"))
                })?;
            }
            records = r.records;
            self.print_text(&[format!(
                "[{}] resuming after round {} of {total}",
                ctx.id, r.round
            )]);
        }
        let plan: Vec<(String, Option<FeatureView>, Option<usize>)> = variants
            .iter()
            .map(|v| (v.name.clone(), Some(v.view.clone()), v.modality))
            .chain(std::iter::once((
                "learned late fusion".to_string(),
                None,
                None,
            )))
            .collect();
        for (index, (name, view, modality)) in plan.into_iter().enumerate().skip(at.variant) {
            // Learned late fusion stacks the single-modality models trained just before.
            let view = view.unwrap_or_else(|| FeatureView::Stacked {
                members: at.members.clone(),
            });
            let (vctx, vfacts) = ctx.with_view(&facts, &view)?;
            let features = vfacts.n_features;
            let mut state = vctx.init_state(vfacts)?;
            let first = if index == at.variant {
                if let Some(c) = &at.state {
                    state.global.restore(&crate::state::nested::decode(c)?)?;
                }
                at.round + 1
            } else {
                1
            };
            let offset = index as u32 * per;
            if first == 1 {
                info!(variant = %name, features, "fusion variant started");
                self.print_text(&[format!("fusion variant: {name} ({features} features)")]);
            }
            for round in first..=per {
                let mut rec = vctx.run_round(round, &mut state).await?;
                rec.round = offset + round;
                rec.rounds_total = total;
                if round == per {
                    // The variant is done: its result (and, for a single modality, its model
                    // as a stacking member) goes into the same checkpoint as its last round.
                    at.results.push(VariantResult {
                        variant: name.clone(),
                        features,
                        test_accuracy: rec.test_accuracy.unwrap_or(f64::NAN),
                        rounds: per,
                    });
                    if let (Some(m), Some(weights)) = (modality, state.global.weights()) {
                        weights.check_finite()?;
                        at.members.push(fusion::StackMember {
                            columns: mods[m].1.clone(),
                            weights: weights.clone(),
                        });
                    }
                    if at.members.len() == mods.len()
                        && !at.results.iter().any(|r| r.variant == "late fusion")
                    {
                        at.results.push(late_fusion_result(
                            &at.members,
                            &holdout,
                            facts.n_features,
                        )?);
                    }
                    at.variant = index + 1;
                    at.round = 0;
                    at.state = None;
                } else {
                    at.variant = index;
                    at.round = round;
                    at.state = Some(crate::state::nested::encode(&state.global.checkpoint()?));
                }
                let checkpoint = serde_json::to_vec(&at)
                    .map_err(|e| Error::Job(format!("cannot write the fusion checkpoint: {e}")))?;
                self.record(ctx, run, events, &rec, &checkpoint, true)
                    .await?;
                records.push(rec);
            }
        }
        let mut summary = Summary::from_rounds(&ctx.id, &ctx.spec, &records);
        summary.variants = at.results;
        write_fusion_outputs(run, &summary.variants)?;
        summary.ended(ctx.created_ms);
        run.write_json("summary.json", &summary)?;
        Ok(summary)
    }
}

/// Where a fusion job stands after a round: the variant to run next and the rounds of it done
/// (with its model when it is part way), and what the finished variants left.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct FusionCheckpoint {
    /// Index of the variant in progress (or next to start) in the job's plan.
    variant: usize,
    /// Rounds of that variant done.
    round: u32,
    /// Its global model's checkpoint after `round` (none when it has not started; see
    /// [`crate::state::nested`]).
    state: Option<String>,
    results: Vec<crate::report::VariantResult>,
    /// The single-modality models, for late and learned late fusion.
    members: Vec<shoal_shared::fusion::StackMember>,
}

/// Late fusion needs no training: the mean of the single-modality models' probabilities, scored
/// on the coordinator's test set.
fn late_fusion_result(
    members: &[shoal_shared::fusion::StackMember],
    holdout: &shoal_shared::data::Dataset,
    features: usize,
) -> Result<crate::report::VariantResult> {
    let p = shoal_shared::fusion::late_fusion_proba(members, holdout)?;
    let correct = p
        .outer_iter()
        .zip(&holdout.labels)
        .filter(|(row, &y)| shoal_shared::models::sgd::argmax(row.iter().copied()) == y)
        .count();
    Ok(crate::report::VariantResult {
        variant: "late fusion".into(),
        features,
        test_accuracy: correct as f64 / holdout.n_rows().max(1) as f64,
        rounds: 0,
    })
}

/// `fusion.md` and `fusion.svg`: the variants' test accuracy as a table and a bar chart.
fn write_fusion_outputs(run: &RunFolder, variants: &[crate::report::VariantResult]) -> Result<()> {
    let mut md =
        String::from("| variant | features | rounds | test accuracy |\n|---|---|---|---|\n");
    for v in variants {
        md.push_str(&format!(
            "| {} | {} | {} | {:.3} |\n",
            v.variant, v.features, v.rounds, v.test_accuracy
        ));
    }
    let io = |e| {
        Error::io(
            format!("cannot write the fusion table in {}", run.dir().display()),
            e,
        )
    };
    std::fs::write(run.dir().join("fusion.md"), md).map_err(io)?;
    let bars: Vec<(String, f64)> = variants
        .iter()
        .map(|v| (v.variant.clone(), v.test_accuracy))
        .collect();
    let svg =
        shoal_shared::plot::bar_chart_svg("fusion variants", "test accuracy", &bars, (720, 360))?;
    std::fs::write(run.dir().join("fusion.svg"), svg).map_err(io)
}
