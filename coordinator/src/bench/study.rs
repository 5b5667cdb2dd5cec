//! `study noniid`: every strategy against every degree of non-IID-ness, one simulation each, with
//! a markdown table and a chart of test accuracy per round; `study compression`: bytes up and
//! accuracy per update codec; `study async`: synchronous rounds against buffered asynchronous
//! steps (FedBuff) with stragglers; `study seed-forest`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use shoal_shared::compress::Compression;
use shoal_shared::data::builtin::Builtin;
use shoal_shared::data::partition::Partitioner;
use shoal_shared::models::ModelSpec;
use shoal_shared::plot::{line_charts_svg, Panel, Series};
use shoal_shared::strategy::StrategySpec;

use crate::simulate::{simulate, SimulateOptions};
use crate::spec::JobSpec;

/// What the non-IID study runs.
#[derive(Debug, Clone)]
pub struct NonIidStudy {
    pub schemes: Vec<Partitioner>,
    pub strategies: Vec<StrategySpec>,
    pub model: ModelSpec,
    pub rounds: u32,
    pub clients: usize,
    pub seed: u64,
    pub out: PathBuf,
}

impl NonIidStudy {
    /// The grid: α ∈ {0.1, 0.5, 1.0, iid} × {fedavg, fedprox, fedadam, scaffold, fedmedian}.
    pub fn default_grid(out: PathBuf) -> Self {
        NonIidStudy {
            schemes: vec![
                Partitioner::Dirichlet { alpha: 0.1 },
                Partitioner::Dirichlet { alpha: 0.5 },
                Partitioner::Dirichlet { alpha: 1.0 },
                Partitioner::Iid,
            ],
            strategies: ["fedavg", "fedprox", "fedadam", "scaffold", "fedmedian"]
                .iter()
                .filter_map(|n| StrategySpec::from_name(n).ok())
                .collect(),
            model: ModelSpec::Mlp(shoal_shared::models::sgd::MlpSpec { hidden: vec![64] }),
            rounds: 50,
            clients: 10,
            seed: 42,
            out,
        }
    }
}

/// One cell of the study.
#[derive(Debug, Clone)]
pub struct Cell {
    pub scheme: Partitioner,
    pub strategy: String,
    /// Test accuracy per round.
    pub accuracy: Vec<f64>,
    pub seconds: f64,
    /// Why the run failed, if it did.
    pub error: Option<String>,
}

impl Cell {
    pub fn last(&self) -> Option<f64> {
        self.accuracy.last().copied()
    }
    pub fn best(&self) -> Option<f64> {
        self.accuracy.iter().copied().reduce(f64::max)
    }
}

fn scheme_label(s: &Partitioner) -> String {
    match s {
        Partitioner::Dirichlet { alpha } => format!("α={alpha}"),
        other => other.to_string(),
    }
}

/// Runs the grid, printing one line per run, and writes `noniid.md`, `noniid.csv` and
/// `noniid.svg` under `out`.
pub async fn run_noniid(study: &NonIidStudy) -> anyhow::Result<Vec<Cell>> {
    std::fs::create_dir_all(&study.out)
        .with_context(|| format!("cannot create {}", study.out.display()))?;
    let mut cells = Vec::new();
    for scheme in &study.schemes {
        for strategy in &study.strategies {
            let mut spec = JobSpec::parse_toml("kind = \"train\"\ndataset = \"digits\"\n")?;
            spec.rounds = study.rounds;
            spec.seed = study.seed;
            spec.model = study.model.clone();
            spec.strategy = strategy.clone();
            let mut o = SimulateOptions::new(spec, Builtin::Digits);
            o.clients = study.clients;
            o.scheme = *scheme;
            o.out = study.out.join("runs");
            o.quiet = true;
            let started = Instant::now();
            let (accuracy, error) = match simulate(o).await {
                Ok(outcome) if outcome.job.error.is_empty() => (
                    outcome
                        .rounds
                        .iter()
                        .map(|r| r.test_accuracy.unwrap_or(f64::NAN))
                        .collect(),
                    None,
                ),
                Ok(outcome) => (Vec::new(), Some(outcome.job.error)),
                Err(e) => (Vec::new(), Some(format!("{e:#}"))),
            };
            let cell = Cell {
                scheme: *scheme,
                strategy: strategy.name().to_string(),
                accuracy,
                seconds: started.elapsed().as_secs_f64(),
                error,
            };
            crate::report::print_lines(&[format!(
                "{:<10} {:<10} final {}  best {}  {:.1} s{}",
                scheme_label(scheme),
                cell.strategy,
                fmt3(cell.last()),
                fmt3(cell.best()),
                cell.seconds,
                cell.error
                    .as_deref()
                    .map(|e| format!("  failed: {e}"))
                    .unwrap_or_default()
            )]);
            cells.push(cell);
        }
    }
    let md = markdown(study, &cells);
    std::fs::write(study.out.join("noniid.md"), &md)?;
    std::fs::write(study.out.join("noniid.csv"), csv(&cells))?;
    let svg = chart(study, &cells)?;
    std::fs::write(study.out.join("noniid.svg"), svg)?;
    crate::report::print_lines(&[
        String::new(),
        md,
        format!(
            "wrote noniid.md, noniid.csv and noniid.svg to {}",
            study.out.display()
        ),
    ]);
    Ok(cells)
}

fn fmt3(v: Option<f64>) -> String {
    v.filter(|v| v.is_finite())
        .map_or_else(|| "-".into(), |v| format!("{v:.3}"))
}

/// Final test accuracy per strategy (rows) and partition (columns); best round in parentheses.
pub fn markdown(study: &NonIidStudy, cells: &[Cell]) -> String {
    let mut out = format!(
        "Final test accuracy (best round in parentheses) on digits, {} clients, {}, {} rounds, seed {}:\n\n| strategy |",
        study.clients,
        study.model.label(),
        study.rounds,
        study.seed
    );
    for s in &study.schemes {
        let _ = write!(out, " {} |", scheme_label(s));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(study.schemes.len()));
    out.push('\n');
    for strategy in &study.strategies {
        let _ = write!(out, "| {} |", strategy.name());
        for scheme in &study.schemes {
            let cell = cells
                .iter()
                .find(|c| c.scheme == *scheme && c.strategy == strategy.name());
            let text = match cell {
                Some(c) if c.error.is_none() => format!("{} ({})", fmt3(c.last()), fmt3(c.best())),
                Some(_) => "failed".into(),
                None => "-".into(),
            };
            let _ = write!(out, " {text} |");
        }
        out.push('\n');
    }
    out
}

fn csv(cells: &[Cell]) -> String {
    let mut out = String::from("partition,strategy,round,test_accuracy\n");
    for c in cells {
        for (i, a) in c.accuracy.iter().enumerate() {
            let _ = writeln!(out, "{},{},{},{a:.6}", c.scheme, c.strategy, i + 1);
        }
    }
    out
}

fn chart(study: &NonIidStudy, cells: &[Cell]) -> anyhow::Result<String> {
    let panels: Vec<Panel> = study
        .schemes
        .iter()
        .map(|scheme| Panel {
            title: format!("digits, {}", scheme_label(scheme)),
            x_label: "round".into(),
            y_label: "test accuracy".into(),
            series: cells
                .iter()
                .filter(|c| c.scheme == *scheme)
                .map(|c| Series {
                    label: c.strategy.clone(),
                    points: c
                        .accuracy
                        .iter()
                        .enumerate()
                        .map(|(i, &a)| ((i + 1) as f64, a))
                        .collect(),
                })
                .collect(),
        })
        .collect();
    Ok(line_charts_svg(&panels, 2, (560, 380))?)
}

/// What the compression study runs: one simulation per codec, the rest of the job the same.
#[derive(Debug, Clone)]
pub struct CompressionStudy {
    pub codecs: Vec<Compression>,
    /// Hidden layer widths of the MLP.
    pub hidden: Vec<usize>,
    pub rounds: u32,
    pub clients: usize,
    pub scheme: Partitioner,
    pub seed: u64,
    pub out: PathBuf,
}

/// One line of the compression table.
#[derive(Debug, Clone)]
pub struct CompressionRow {
    pub codec: String,
    /// Bytes clients sent over the job (updates and evaluation results).
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub accuracy: Option<f64>,
    pub seconds: f64,
    pub error: Option<String>,
}

fn codec_label(c: Compression) -> String {
    match c {
        Compression::TopK { fraction } => format!("topk {fraction}"),
        other => other.name().to_string(),
    }
}

/// Runs one job per codec, printing a line each, and writes `compression.md` under `out`.
pub async fn run_compression(study: &CompressionStudy) -> anyhow::Result<Vec<CompressionRow>> {
    std::fs::create_dir_all(&study.out)
        .with_context(|| format!("cannot create {}", study.out.display()))?;
    let model = ModelSpec::from_parts("mlp", &study.hidden)?;
    let mut rows = Vec::new();
    for &codec in &study.codecs {
        let mut spec = JobSpec::parse_toml("kind = \"train\"\ndataset = \"digits\"\n")?;
        spec.rounds = study.rounds;
        spec.seed = study.seed;
        spec.model = model.clone();
        spec.evaluation.centralized_baseline = false;
        spec.updates.compression = codec.name().into();
        if let Compression::TopK { fraction } = codec {
            spec.updates.topk_fraction = fraction;
        }
        let mut o = SimulateOptions::new(spec, Builtin::Digits);
        o.clients = study.clients;
        o.scheme = study.scheme;
        o.out = study.out.join("runs");
        o.quiet = true;
        let started = Instant::now();
        let row = match simulate(o).await {
            Ok(outcome) => CompressionRow {
                codec: codec_label(codec),
                bytes_up: outcome.rounds.iter().map(|r| r.bytes_up).sum(),
                bytes_down: outcome.rounds.iter().map(|r| r.bytes_down).sum(),
                accuracy: outcome.rounds.last().and_then(|r| r.test_accuracy),
                seconds: started.elapsed().as_secs_f64(),
                error: (!outcome.job.error.is_empty()).then_some(outcome.job.error),
            },
            Err(e) => CompressionRow {
                codec: codec_label(codec),
                bytes_up: 0,
                bytes_down: 0,
                accuracy: None,
                seconds: started.elapsed().as_secs_f64(),
                error: Some(format!("{e:#}")),
            },
        };
        crate::report::print_lines(&[format!(
            "{:<10} up {:>10}  final {}  {:.1} s{}",
            row.codec,
            crate::report::human_bytes(row.bytes_up),
            fmt3(row.accuracy),
            row.seconds,
            failed(&row.error)
        )]);
        rows.push(row);
    }
    let md = compression_markdown(study, &model, &rows);
    write_table(&study.out, "compression.md", md)?;
    Ok(rows)
}

/// Bytes up and final accuracy per codec, each against the first row (f32).
pub fn compression_markdown(
    study: &CompressionStudy,
    model: &ModelSpec,
    rows: &[CompressionRow],
) -> String {
    let mut out = format!(
        "Digits, {}, {} clients, {}, {} rounds, seed {}: bytes clients sent over the job (updates and evaluation results), and final test accuracy.\n\n| compression | bytes up | fewer than f32 | final accuracy | change (points) | seconds |\n|---|---|---|---|---|---|\n",
        model.label(),
        study.clients,
        study.scheme,
        study.rounds,
        study.seed
    );
    let base = rows.first().filter(|r| r.error.is_none());
    for r in rows {
        if let Some(e) = &r.error {
            let _ = writeln!(
                out,
                "| {} | failed: {} | | | | |",
                r.codec,
                shoal_shared::text::clip(&e.replace(['\n', '|'], " "), 200)
            );
            continue;
        }
        let (ratio, change) = match base {
            Some(b) => (
                format!("{:.2}×", b.bytes_up as f64 / r.bytes_up.max(1) as f64),
                match (r.accuracy, b.accuracy) {
                    (Some(a), Some(b)) => format!("{:+.1}", (a - b) * 100.0),
                    _ => "-".into(),
                },
            ),
            None => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {ratio} | {} | {change} | {:.1} |",
            r.codec,
            crate::report::human_bytes(r.bytes_up),
            fmt3(r.accuracy),
            r.seconds
        );
    }
    out
}

/// Synchronous FedAvg rounds against `[async]` steps (FedBuff) on digits, with injected
/// stragglers: how long each takes to reach the synchronous run's final test accuracy.
#[derive(Debug, Clone)]
pub struct AsyncStudy {
    /// Rounds of the synchronous run.
    pub rounds: u32,
    /// Most steps of the asynchronous run (it reports when it first reached the target).
    pub steps: u32,
    pub clients: usize,
    /// Every client's delay per training task, and the stragglers among them.
    pub delays: crate::simulate::Delays,
    pub concurrency: u32,
    pub buffer_size: u32,
    /// Hidden layer widths of the MLP.
    pub hidden: Vec<usize>,
    pub scheme: Partitioner,
    pub seed: u64,
    pub out: PathBuf,
}

/// One run of the async study.
#[derive(Debug, Clone)]
pub struct AsyncRow {
    pub mode: String,
    pub rounds: usize,
    pub final_accuracy: Option<f64>,
    /// The rounds' (or steps') seconds, summed: the job's time without its start and end.
    pub seconds: f64,
    /// Rounds (or steps) and seconds until test accuracy first reached the target.
    pub to_target: Option<(u32, f64)>,
    pub error: Option<String>,
}

/// The first round whose test accuracy reaches `target`, and the seconds summed up to it.
fn time_to(rounds: &[shoal_proto::v1::RoundReport], target: f64) -> Option<(u32, f64)> {
    let mut elapsed = 0.0;
    for r in rounds {
        elapsed += r.seconds;
        if r.test_accuracy.is_some_and(|a| a >= target) {
            return Some((r.round, elapsed));
        }
    }
    None
}

/// Runs the synchronous job, then the asynchronous one, and writes `async.md` under `out`.
pub async fn run_async(study: &AsyncStudy) -> anyhow::Result<Vec<AsyncRow>> {
    std::fs::create_dir_all(&study.out)
        .with_context(|| format!("cannot create {}", study.out.display()))?;
    let model = ModelSpec::from_parts("mlp", &study.hidden)?;
    let mut rows: Vec<AsyncRow> = Vec::new();
    let mut target = None;
    for asynchronous in [false, true] {
        let mut spec = JobSpec::parse_toml("kind = \"train\"\ndataset = \"digits\"\n")?;
        spec.seed = study.seed;
        spec.model = model.clone();
        spec.evaluation.centralized_baseline = false;
        spec.rounds = if asynchronous {
            study.steps
        } else {
            study.rounds
        };
        if asynchronous {
            spec.asynchronous = Some(crate::spec::AsyncOptions {
                concurrency: study.concurrency,
                buffer_size: study.buffer_size,
                ..Default::default()
            });
        }
        let mode = if asynchronous {
            format!(
                "async (concurrency {}, buffer {})",
                study.concurrency, study.buffer_size
            )
        } else {
            "sync (every client, every round)".to_string()
        };
        let mut o = SimulateOptions::new(spec, Builtin::Digits);
        o.clients = study.clients;
        o.scheme = study.scheme;
        o.out = study.out.join("runs");
        o.quiet = true;
        o.delays = study.delays;
        let row = match simulate(o).await {
            Ok(outcome) => {
                let final_accuracy = outcome.rounds.last().and_then(|r| r.test_accuracy);
                if !asynchronous {
                    target = final_accuracy;
                }
                AsyncRow {
                    mode,
                    rounds: outcome.rounds.len(),
                    final_accuracy,
                    seconds: outcome.rounds.iter().map(|r| r.seconds).sum(),
                    to_target: target.and_then(|t| time_to(&outcome.rounds, t)),
                    error: (!outcome.job.error.is_empty()).then_some(outcome.job.error),
                }
            }
            Err(e) => AsyncRow {
                mode,
                rounds: 0,
                final_accuracy: None,
                seconds: 0.0,
                to_target: None,
                error: Some(format!("{e:#}")),
            },
        };
        crate::report::print_lines(&[format!(
            "{:<34} {} rounds  final {}  {:.1} s{}",
            row.mode,
            row.rounds,
            fmt3(row.final_accuracy),
            row.seconds,
            failed(&row.error)
        )]);
        rows.push(row);
    }
    let md = async_markdown(study, &model, target, &rows);
    write_table(&study.out, "async.md", md)?;
    Ok(rows)
}

/// The study's table: each run's rounds, final accuracy, and time to the synchronous run's
/// final accuracy, against the synchronous run's time.
pub fn async_markdown(
    study: &AsyncStudy,
    model: &ModelSpec,
    target: Option<f64>,
    rows: &[AsyncRow],
) -> String {
    let d = &study.delays;
    let mut out = format!(
        "Digits, {}, {} clients, {}, seed {}; every client holds each training result {} ms, the first {} of them {}× as long. Target: the synchronous run's final test accuracy ({}). Seconds are the rounds' (steps') own, summed; the last column divides the seconds to the target by the synchronous run's seconds in all.\n\n| run | rounds or steps | seconds in all | final accuracy | reached the target at | seconds to the target | against sync's whole run |\n|---|---|---|---|---|---|---|\n",
        model.label(),
        study.clients,
        study.scheme,
        study.seed,
        d.fit_delay.as_millis(),
        d.stragglers,
        d.slowdown,
        fmt3(target),
    );
    let sync_seconds = rows
        .first()
        .filter(|r| r.error.is_none())
        .map(|r| r.seconds);
    for r in rows {
        if let Some(e) = &r.error {
            let _ = writeln!(
                out,
                "| {} | failed: {} | | | | | |",
                r.mode,
                shoal_shared::text::clip(&e.replace(['\n', '|'], " "), 200)
            );
            continue;
        }
        let (at, secs, ratio) = match (r.to_target, sync_seconds) {
            (Some((round, t)), Some(s)) => (
                round.to_string(),
                format!("{t:.1}"),
                format!("{:.2}×", t / s.max(1e-9)),
            ),
            (Some((round, t)), None) => (round.to_string(), format!("{t:.1}"), "-".into()),
            (None, _) => ("not reached".into(), "-".into(), "-".into()),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {} | {at} | {secs} | {ratio} |",
            r.mode,
            r.rounds,
            r.seconds,
            fmt3(r.final_accuracy),
        );
    }
    out
}

/// A study run's failure, for its printed line ("" when it did not fail).
fn failed(error: &Option<String>) -> String {
    error
        .as_deref()
        .map(|e| format!("  failed: {e}"))
        .unwrap_or_default()
}

/// Writes a study's markdown table as `file` under `out` and prints it.
fn write_table(out: &std::path::Path, file: &str, md: String) -> anyhow::Result<()> {
    std::fs::write(out.join(file), &md)
        .with_context(|| format!("cannot write {}", out.join(file).display()))?;
    crate::report::print_lines(&[
        String::new(),
        md,
        format!("wrote {file} to {}", out.display()),
    ]);
    Ok(())
}

/// The original tutorial's federated-learning demo, done right: three `seed-fl` clients with
/// different concepts, each client's local-only forest, the federated forest (trees pooled over
/// rounds), and a centralized forest on the pooled rows, all scored on one held-out set drawn from
/// the three concepts.
#[derive(Debug, Clone)]
pub struct SeedForestStudy {
    /// Trees in each local-only forest; each client contributes as many to the federated forest.
    pub trees: u32,
    pub rounds: u32,
    pub seed: u64,
    pub out: PathBuf,
}

/// One line of the seed-forest table.
#[derive(Debug, Clone)]
pub struct SeedRow {
    pub model: String,
    pub rows: usize,
    pub trees: usize,
    pub accuracy: f64,
    /// Accuracy on each concept's part of the held-out set (thresholds 0, 1, 0.5).
    pub per_concept: Vec<f64>,
}

/// Runs the seed-forest comparison and writes `seed-forest.md` under `out`.
pub async fn run_seed_forest(study: &SeedForestStudy) -> anyhow::Result<Vec<SeedRow>> {
    use shoal_shared::data::builtin::{SEED_FL_HOLDOUT_ROWS_PER_CONCEPT, SEED_FL_THRESHOLDS};
    use shoal_shared::data::Dataset;
    use shoal_shared::models::forest::{fit_trees, Forest, ForestParams};

    if study.rounds == 0 || study.trees == 0 {
        anyhow::bail!("--rounds and --trees must be at least 1");
    }
    std::fs::create_dir_all(&study.out)
        .with_context(|| format!("cannot create {}", study.out.display()))?;
    let clients = SEED_FL_THRESHOLDS.len();
    let holdout = Builtin::SeedFl.holdout()?;
    // Each client's local train split exactly as a Shoal client derives it.
    let mut trains: Vec<Dataset> = Vec::with_capacity(clients);
    for i in 0..clients {
        let mut c = shoal_client::Catalog::new();
        c.add_builtin(Builtin::SeedFl, &Partitioner::Iid, i, clients, study.seed)?;
        let local = c
            .get("seed-fl")
            .context("the seed-fl catalog entry is missing")?;
        trains.push(local.train.as_ref().clone());
    }
    let score = |f: &Forest| -> anyhow::Result<(f64, Vec<f64>)> {
        let all = f.evaluate(&holdout)?.accuracy;
        let per = (0..clients)
            .map(|c| {
                let rows: Vec<usize> = (c * SEED_FL_HOLDOUT_ROWS_PER_CONCEPT
                    ..(c + 1) * SEED_FL_HOLDOUT_ROWS_PER_CONCEPT)
                    .collect();
                Ok(f.evaluate(&holdout.select(&rows))?.accuracy)
            })
            .collect::<anyhow::Result<Vec<f64>>>()?;
        Ok((all, per))
    };
    let params = |trees: u32| ForestParams {
        trees_per_round: trees,
        ..ForestParams::default()
    };
    let mut rows = Vec::new();
    for (i, train) in trains.iter().enumerate() {
        let f = fit_trees(train, 2, &params(study.trees), study.seed + i as u64)?;
        let (accuracy, per_concept) = score(&f)?;
        rows.push(SeedRow {
            model: format!("client {i} alone (t = {})", SEED_FL_THRESHOLDS[i]),
            rows: train.n_rows(),
            trees: f.trees.len(),
            accuracy,
            per_concept,
        });
    }

    // Federated: each client grows trees/rounds trees per round, so it contributes as many trees
    // as its local-only forest has; the global forest pools them.
    let per_round = study.trees.div_ceil(study.rounds);
    let mut spec = JobSpec::parse_toml("kind = \"train\"\ndataset = \"seed-fl\"\n")?;
    spec.rounds = study.rounds;
    spec.seed = study.seed;
    spec.model = ModelSpec::Forest(params(per_round));
    let mut o = SimulateOptions::new(spec, Builtin::SeedFl);
    o.clients = clients;
    o.out = study.out.join("runs");
    o.quiet = true;
    let outcome = simulate(o).await?;
    if !outcome.job.error.is_empty() {
        anyhow::bail!("the federated forest failed: {}", outcome.job.error);
    }
    let model_path = std::path::Path::new(&outcome.job.run_dir).join("model.json");
    let text = std::fs::read_to_string(&model_path)
        .with_context(|| format!("cannot read {}", model_path.display()))?;
    let saved: serde_json::Value = serde_json::from_str(&text)?;
    let forest: Forest = serde_json::from_value(saved["global"]["forest"].clone())
        .context("model.json holds no forest")?;
    let (accuracy, per_concept) = score(&forest)?;
    rows.push(SeedRow {
        model: format!("federated ({} rounds, rows never pooled)", study.rounds),
        rows: trains.iter().map(Dataset::n_rows).sum(),
        trees: forest.trees.len(),
        accuracy,
        per_concept,
    });

    // Centralized: the same number of trees on the pooled rows.
    let pooled = concat(&trains)?;
    let f = fit_trees(
        &pooled,
        2,
        &params(forest.trees.len().max(1) as u32),
        study.seed,
    )?;
    let (accuracy, per_concept) = score(&f)?;
    rows.push(SeedRow {
        model: "centralized (pooled rows)".into(),
        rows: pooled.n_rows(),
        trees: f.trees.len(),
        accuracy,
        per_concept,
    });

    let mut md = format!(
        "seed-fl: 3 clients with different concepts (label = x0 + x1 + N(0, 0.5²) > t), forests of {} trees, seed {}; held-out set: {} rows of each concept.\n\n| model | train rows | trees | test accuracy | t = 0 | t = 1 | t = 0.5 |\n|---|---|---|---|---|---|---|\n",
        study.trees, study.seed, SEED_FL_HOLDOUT_ROWS_PER_CONCEPT
    );
    for r in &rows {
        let _ = write!(
            md,
            "| {} | {} | {} | {:.3} |",
            r.model, r.rows, r.trees, r.accuracy
        );
        for p in &r.per_concept {
            let _ = write!(md, " {p:.3} |");
        }
        md.push('\n');
    }
    std::fs::write(study.out.join("seed-forest.md"), &md)?;
    crate::report::print_lines(&[
        md,
        format!("wrote seed-forest.md to {}", study.out.display()),
    ]);
    Ok(rows)
}

fn concat(parts: &[shoal_shared::data::Dataset]) -> anyhow::Result<shoal_shared::data::Dataset> {
    let first = parts.first().context("nothing to pool")?;
    let views: Vec<_> = parts.iter().map(|p| p.features.view()).collect();
    let features = ndarray::concatenate(ndarray::Axis(0), &views)?;
    let labels = parts
        .iter()
        .flat_map(|p| p.labels.iter().copied())
        .collect();
    Ok(shoal_shared::data::Dataset::new(
        features,
        labels,
        first.feature_names.clone(),
        first.class_names.clone(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_to_a_target_sums_the_seconds_up_to_the_first_round_that_reaches_it() {
        let round = |round, seconds, acc| shoal_proto::v1::RoundReport {
            round,
            seconds,
            test_accuracy: acc,
            ..Default::default()
        };
        let rounds = [
            round(1, 0.5, Some(0.7)),
            round(2, 0.25, None),
            round(3, 0.25, Some(0.91)),
            round(4, 1.0, Some(0.95)),
        ];
        assert_eq!(time_to(&rounds, 0.9), Some((3, 1.0)));
        assert_eq!(time_to(&rounds, 0.99), None);
    }
}
