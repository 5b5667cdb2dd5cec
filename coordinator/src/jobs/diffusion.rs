//! The `diffusion` job: a DDPM noise-prediction network trained over the federation (any weights
//! strategy but SCAFFOLD and FedProx), its held-out noise MSE logged every round, then signals
//! generated from pure noise and judged against the coordinator's real test signals: which band
//! each one lies nearest to (no client's mode may be lost) and how close it lies, beside an
//! untrained network's samples from the same noise.
//!
//! The math is in [`shoal_shared::models::diffusion`]; this module runs it as a job and writes
//! `forward.svg` (the forward process at four steps, the tutorial's figure), `samples.svg` (real
//! vs generated per band), `generated.csv` and `diffusion.md` into the run folder.

use std::collections::BTreeSet;
use std::sync::Arc;

use ndarray::Array2;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use shoal_proto::v1;
use shoal_shared::data::Dataset;
use shoal_shared::models::diffusion::{nearest_rows, DenoiserModel, DenoiserSpec};
use shoal_shared::plot::{line_charts_svg, Panel, Series};
use shoal_shared::seed;
use tokio::sync::broadcast;
use tracing::info;

use crate::engine::round::JobCtx;
use crate::error::{Error, Result};
use crate::report::{BandCoverage, DiffusionResult, RunFolder, Summary};
use crate::Coordinator;

/// Purposes of the generation draws (distinct from the round engine's).
const SEED_GENERATE: u64 = 0x67_656e;
const SEED_FORWARD: u64 = 0x66_7764;
/// Signals of each kind drawn per panel of `samples.svg`.
const SHOWN_PER_PANEL: usize = 3;

impl Coordinator {
    /// A diffusion job from first round (or the round after its checkpoint) to generated samples.
    pub(crate) async fn diffusion(
        &self,
        ctx: &JobCtx,
        denoiser_spec: &DenoiserSpec,
        samples: u32,
        run: &mut RunFolder,
        events: &broadcast::Sender<v1::WatchEvent>,
        resume: Option<crate::coordinator::Resume>,
    ) -> Result<Summary> {
        // A resumed job waits for the round it goes on with (its log lines say so).
        let next = resume.as_ref().map_or(1, |r| r.round + 1);
        let clients = ctx.wait_available(next, None).await?;
        let mut facts = ctx.resolve_data(&clients).await?;
        // Judge generation against the bands this federation holds, not every band the built-in
        // dataset could hand out.
        let present: BTreeSet<String> = clients
            .iter()
            .filter_map(|c| c.dataset(&ctx.spec.dataset))
            .flat_map(|d| d.class_names.iter().cloned())
            .collect();
        if let Some(h) = &facts.holdout {
            let rows: Vec<usize> = (0..h.n_rows())
                .filter(|&i| present.contains(&h.class_names[h.labels[i]]))
                .collect();
            facts.holdout = (!rows.is_empty()).then(|| Arc::new(h.select(&rows)));
        }
        let holdout = facts.holdout.clone();
        let n_features = facts.n_features;
        let mut state = ctx.init_state(facts)?;
        let denoiser = DenoiserModel::new(denoiser_spec, n_features)?;
        // A denoiser's server half is a weights model (`SgdServer`); the engine holds it as a
        // `dyn ServerHalf`, whose `weights()` is `None` only for tree kinds, so these two
        // refusals (here and after training) cannot happen with a checked diffusion spec.
        let Some(initial) = state.global.weights().cloned() else {
            return Err(Error::Job("a diffusion job needs a weights model".into()));
        };
        let alpha_bar = denoiser.schedule.final_alpha_bar();
        let header = format!(
            "diffusion: {} on `{}` ({} values per signal, {} parameters), alpha_bar_T = {alpha_bar:.2e}",
            ctx.spec.model.label(),
            ctx.spec.dataset,
            denoiser.net.signal_len,
            state.global.size()
        );
        info!(alpha_bar_t = alpha_bar, "diffusion job started");
        self.print_text(&[header]);
        // After a restart the untrained reference (`initial`) is the same: it comes from the seed.
        let records = self
            .checkpointed_rounds(ctx, run, events, &mut state, resume)
            .await?;
        let Some(final_w) = state.global.weights().cloned() else {
            return Err(Error::Job("a diffusion job needs a weights model".into()));
        };
        let job_seed = ctx.spec.seed;
        let generated = tokio::task::spawn_blocking(move || {
            generate(
                &denoiser,
                &final_w,
                &initial,
                holdout.as_deref(),
                samples,
                job_seed,
            )
        })
        .await
        .map_err(|e| Error::Job(format!("generation failed: {e}")))??;
        let mut summary = Summary::from_rounds(&ctx.id, &ctx.spec, &records);
        summary.diffusion = Some(DiffusionResult {
            final_alpha_bar: alpha_bar,
            samples,
            first_noise_mse: records.iter().find_map(|r| r.fed_loss),
            last_noise_mse: records.iter().rev().find_map(|r| r.fed_loss),
            coverage: generated.coverage.clone(),
            nearest_distance: generated.distance,
            untrained_nearest_distance: generated.untrained_distance,
            real_nearest_distance: generated.real_distance,
        });
        write_outputs(run, &generated, summary.diffusion.as_ref())?;
        run.write_model(
            &serde_json::json!({
                "model": ctx.spec.model,
                "global": state.global.to_json(),
            }),
            state.global.weights(),
        )?;
        summary.ended(ctx.created_ms);
        run.write_json("summary.json", &summary)?;
        Ok(summary)
    }
}

/// What generation produced, with the figures drawn from it.
#[derive(Debug, Default)]
struct Generated {
    signals: Option<Array2<f32>>,
    /// Band of the nearest real signal, per generated signal.
    nearest_band: Vec<String>,
    coverage: Vec<BandCoverage>,
    distance: Option<f64>,
    untrained_distance: Option<f64>,
    real_distance: Option<f64>,
    forward_svg: Option<String>,
    samples_svg: Option<String>,
}

/// Samples `n` signals with the trained weights and, from the same noise, with the initial ones;
/// scores both against `real` and draws the figures.
fn generate(
    model: &DenoiserModel,
    trained: &shoal_shared::tensor::Weights,
    initial: &shoal_shared::tensor::Weights,
    real: Option<&Dataset>,
    n: u32,
    job_seed: u64,
) -> Result<Generated> {
    let mut out = Generated::default();
    if let Some(real) = real {
        out.forward_svg = Some(forward_figure(model, real, job_seed)?);
    }
    if n == 0 {
        return Ok(out);
    }
    let seed = seed::derive(job_seed, &[SEED_GENERATE]);
    let gen = model
        .net
        .sample(trained, &model.schedule, n as usize, seed)?;
    if let Some(real) = real {
        let untrained = model
            .net
            .sample(initial, &model.schedule, n as usize, seed)?;
        let near = nearest_rows(&gen, &real.features);
        let near_u = nearest_rows(&untrained, &real.features);
        let mean = |v: &[(usize, f64)]| v.iter().map(|p| p.1).sum::<f64>() / v.len().max(1) as f64;
        out.distance = Some(mean(&near));
        out.untrained_distance = Some(mean(&near_u));
        out.real_distance = leave_one_out_distance(&real.features);
        out.nearest_band = near
            .iter()
            .map(|&(i, _)| real.class_names[real.labels[i]].clone())
            .collect();
        let bands: BTreeSet<usize> = real.labels.iter().copied().collect();
        out.coverage = bands
            .iter()
            .map(|&b| {
                let name = &real.class_names[b];
                let count = out.nearest_band.iter().filter(|x| *x == name).count();
                BandCoverage {
                    band: name.clone(),
                    nearest: count as u32,
                    share: count as f64 / f64::from(n),
                }
            })
            .collect();
        out.samples_svg = Some(samples_figure(real, &gen, &out.nearest_band, &untrained)?);
    }
    out.signals = Some(gen);
    Ok(out)
}

/// Mean distance from each real signal to its nearest other real signal: how close "as close as
/// real data" is, the floor a generator's distance can be read against.
fn leave_one_out_distance(real: &Array2<f32>) -> Option<f64> {
    if real.nrows() < 2 {
        return None;
    }
    let mut total = 0.0;
    for (i, a) in real.outer_iter().enumerate() {
        let best = real
            .outer_iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, b)| f64::from((&a - &b).mapv(|d| d * d).mean().unwrap_or(f32::MAX)))
            .fold(f64::INFINITY, f64::min);
        total += best;
    }
    Some(total / real.nrows() as f64)
}

fn line(label: String, values: impl Iterator<Item = f32>) -> Series {
    Series {
        label,
        points: values
            .enumerate()
            .map(|(i, v)| (i as f64, f64::from(v)))
            .collect(),
    }
}

/// The tutorial's figure: one real signal noised at steps 0, 10, 25 and 49 (for T = 50; the same
/// fractions of T otherwise), with the schedule's ᾱ_t in each title.
fn forward_figure(model: &DenoiserModel, real: &Dataset, job_seed: u64) -> Result<String> {
    let steps = model.schedule.steps();
    let mut ts: Vec<usize> = [0, steps / 5, steps / 2, steps - 1].to_vec();
    ts.dedup();
    let x0 = real.features.row(0).to_vec();
    let mut rng = ChaCha8Rng::seed_from_u64(seed::derive(job_seed, &[SEED_FORWARD]));
    let eps: Vec<f32> = (0..x0.len())
        .map(|_| rand_distr::Distribution::sample(&rand_distr::StandardNormal, &mut rng))
        .collect();
    let mut panels = Vec::with_capacity(ts.len());
    for t in ts {
        let xt = model.schedule.q_sample(&x0, t, &eps)?;
        panels.push(Panel {
            title: format!("t = {t} (alpha_bar = {:.3})", model.schedule.alpha_bars[t]),
            x_label: "position".into(),
            y_label: "value".into(),
            series: vec![
                line("clean x_0".into(), x0.iter().copied()),
                line("noised x_t".into(), xt.into_iter()),
            ],
        });
    }
    let n = panels.len();
    Ok(line_charts_svg(&panels, n, (360, 280))?)
}

/// Per band: a few real signals above, a few generated signals nearest to that band below; the
/// untrained network's samples in a last panel.
fn samples_figure(
    real: &Dataset,
    gen: &Array2<f32>,
    nearest_band: &[String],
    untrained: &Array2<f32>,
) -> Result<String> {
    let bands: BTreeSet<usize> = real.labels.iter().copied().collect();
    let mut top = Vec::new();
    let mut bottom = Vec::new();
    for &b in &bands {
        let name = &real.class_names[b];
        let reals: Vec<Series> = (0..real.n_rows())
            .filter(|&i| real.labels[i] == b)
            .take(SHOWN_PER_PANEL)
            .map(|i| line(format!("real {i}"), real.features.row(i).iter().copied()))
            .collect();
        top.push(Panel {
            title: format!("real: {name}"),
            x_label: "position".into(),
            y_label: "value".into(),
            series: reals,
        });
        let gens: Vec<Series> = nearest_band
            .iter()
            .enumerate()
            .filter(|(_, n)| *n == name)
            .take(SHOWN_PER_PANEL)
            .map(|(i, _)| line(format!("generated {i}"), gen.row(i).iter().copied()))
            .collect();
        bottom.push(Panel {
            title: format!("generated, nearest to {name}"),
            x_label: "position".into(),
            y_label: "value".into(),
            series: gens,
        });
    }
    bottom.push(Panel {
        title: "untrained network".into(),
        x_label: "position".into(),
        y_label: "value".into(),
        series: (0..untrained.nrows().min(SHOWN_PER_PANEL))
            .map(|i| line(format!("sample {i}"), untrained.row(i).iter().copied()))
            .collect(),
    });
    // Empty panels (a band no generated signal lies nearest to) still show their title.
    let cols = bottom.len();
    top.resize_with(cols, || Panel {
        title: String::new(),
        x_label: String::new(),
        y_label: String::new(),
        series: Vec::new(),
    });
    top.extend(bottom);
    Ok(line_charts_svg(&top, cols, (320, 240))?)
}

/// `generated.csv`, `diffusion.md`, `forward.svg` and `samples.svg`.
fn write_outputs(run: &RunFolder, g: &Generated, result: Option<&DiffusionResult>) -> Result<()> {
    let dir = run.dir();
    let io = |name: &str, e| Error::io(format!("cannot write {}", dir.join(name).display()), e);
    if let Some(sig) = &g.signals {
        let mut csv = String::new();
        let cols: Vec<String> = (0..sig.ncols()).map(|i| format!("t{i:03}")).collect();
        csv.push_str(&cols.join(","));
        if !g.nearest_band.is_empty() {
            csv.push_str(",nearest_band");
        }
        csv.push('\n');
        for (i, row) in sig.outer_iter().enumerate() {
            let vals: Vec<String> = row.iter().map(|v| format!("{v:.5}")).collect();
            csv.push_str(&vals.join(","));
            if let Some(b) = g.nearest_band.get(i) {
                csv.push(',');
                csv.push_str(b);
            }
            csv.push('\n');
        }
        std::fs::write(dir.join("generated.csv"), csv).map_err(|e| io("generated.csv", e))?;
    }
    if let Some(r) = result {
        let mut md =
            String::from("| band | generated signals nearest to it | share |\n|---|---|---|\n");
        for c in &r.coverage {
            md.push_str(&format!(
                "| {} | {} | {:.1}% |\n",
                c.band,
                c.nearest,
                100.0 * c.share
            ));
        }
        if let (Some(t), Some(u)) = (r.nearest_distance, r.untrained_nearest_distance) {
            md.push_str(&format!(
                "\nMean squared distance to the nearest real signal: {t:.4} (untrained network: {u:.4}; ratio {:.3}).\n",
                t / u
            ));
            if let Some(r) = r.real_nearest_distance {
                md.push_str(&format!(
                    "Between real test signals (each to its nearest other): {r:.4}.\n"
                ));
            }
        }
        md.push_str(&format!("\nalpha_bar_T = {:.3e}\n", r.final_alpha_bar));
        std::fs::write(dir.join("diffusion.md"), md).map_err(|e| io("diffusion.md", e))?;
    }
    for (name, svg) in [
        ("forward.svg", &g.forward_svg),
        ("samples.svg", &g.samples_svg),
    ] {
        if let Some(svg) = svg {
            std::fs::write(dir.join(name), svg).map_err(|e| io(name, e))?;
        }
    }
    Ok(())
}
