//! The `automl` job: a hyperparameter search whose trials are federated `train` runs.
//!
//! Each trial is the job's base spec with one configuration's overrides, run over the connected
//! clients for a budget of rounds with `validation` set on its tasks: clients train on the train
//! part of a fixed split of their rows and report accuracy on the validation part. That
//! federated validation accuracy is the trial's score. The coordinator's test set is touched once,
//! at the end, for the best configuration and for the base (default) one.
//!
//! Trials run `parallel_trials` at a time; each is a [`JobCtx`] of its own (task ids carry the
//! trial), so clients serve the tasks of several trials at once. A finished trial is recorded as
//! one row of the job's `metrics.csv` (round = trials finished so far, `fed_accuracy` = its
//! score); `trials.csv`, `trials.md` and `trials.svg` hold the table and the score-vs-trial chart.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use futures::stream::{FuturesUnordered, StreamExt};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use shoal_proto::v1;
use shoal_shared::automl::{halving_rungs, Config, SearchAlgorithm};
use shoal_shared::plot::{line_charts_svg, Panel, Series};
use shoal_shared::seed;
use tokio::sync::broadcast;
use tracing::{info, warn, Instrument};

use crate::coordinator::Resume;
use crate::engine::round::{DataFacts, JobCtx, RoundRecord, TrainState};
use crate::error::{Error, Result};
use crate::report::{AutomlResult, RunFolder, Summary, TrialRow};
use crate::spec::AutomlOptions;
use crate::state::nested;
use crate::Coordinator;

/// Purpose of the search's own draws (random configurations, TPE candidates).
const SEED_SEARCH: u64 = 0x7365_6172_6368;

/// One trial to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Planned {
    /// 0 is the default configuration; search trials count from 1.
    trial: u32,
    config: Option<Config>,
    budget: u32,
}

/// What a trial left.
struct Finished {
    planned: Planned,
    outcome: Result<TrialOutcome>,
    seconds: f64,
}

struct TrialOutcome {
    score: Option<f64>,
    last: RoundRecord,
    bytes_up: u64,
    bytes_down: u64,
    state: TrainState,
}

type TrialFuture<'a> = Pin<Box<dyn Future<Output = Finished> + Send + 'a>>;

/// Where a search stands after a finished trial; stored with that trial's row, so a restarted
/// coordinator goes on with the trials not yet finished (those that were running start again).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Progress {
    rows: Vec<TrialRow>,
    /// Finished search trials and their scores, for TPE.
    history: Vec<(Config, f64)>,
    /// The best full-budget search trial: score, trial, configuration, its model's checkpoint
    /// (see [`nested`]).
    best: Option<(f64, u32, Config, String)>,
    /// The default configuration's score and model checkpoint.
    default: Option<(Option<f64>, String)>,
    /// Trials planned and not finished, in trial order.
    queue: Vec<Planned>,
    next_trial: u32,
    /// TPE proposals made.
    proposed: u32,
    /// Successive halving: the rung in progress and its finished trials (score, trial, config).
    rung: usize,
    rung_results: Vec<(Option<f64>, u32, Config)>,
    /// The search RNG's position (a u128, in decimal: JSON numbers stop at 2^53).
    rng_word_pos: String,
}

impl Coordinator {
    /// An automl job: the default trial and the search's, then the test set for the best and
    /// the default configuration. Resumes from the [`Progress`] stored with the last finished
    /// trial when `resume` holds one.
    pub(crate) async fn automl(
        &self,
        ctx: &JobCtx,
        opts: &AutomlOptions,
        run: &mut RunFolder,
        events: &broadcast::Sender<v1::WatchEvent>,
        resume: Option<Resume>,
    ) -> Result<Summary> {
        let clients = ctx.wait_available(1, None).await?;
        let facts = ctx.resolve_data(&clients).await?;
        let test = facts.holdout.clone();
        // Trials never see the test set: no centralized evaluation while searching.
        let trial_facts = DataFacts {
            holdout: None,
            ..facts.clone()
        };
        let full = ctx.spec.rounds;
        let mut rng = ChaCha8Rng::seed_from_u64(seed::derive(ctx.spec.seed, &[SEED_SEARCH]));
        // The plan: configurations known up front (grid, random, halving's first rung); TPE
        // proposes as trials finish.
        let (queue, planned_total): (Vec<Planned>, u32) = match opts.search {
            SearchAlgorithm::Grid => {
                let grid = opts.space.grid()?;
                let n = grid.len() as u32;
                (plan(grid, full, 1), n)
            }
            SearchAlgorithm::Random => {
                let configs: Vec<Config> = (0..opts.trials)
                    .map(|_| opts.space.sample(&mut rng))
                    .collect();
                (plan(configs, full, 1), opts.trials)
            }
            SearchAlgorithm::Halving => {
                let rungs = halving_rungs(opts.trials as usize, full, opts.eta);
                let total = rungs.iter().map(|r| r.0 as u32).sum();
                let configs: Vec<Config> = (0..opts.trials)
                    .map(|_| opts.space.sample(&mut rng))
                    .collect();
                (plan(configs, rungs[0].1, 1), total)
            }
            SearchAlgorithm::Tpe => (Vec::new(), opts.trials),
        };
        let rungs = (opts.search == SearchAlgorithm::Halving)
            .then(|| halving_rungs(opts.trials as usize, full, opts.eta));
        let total = planned_total + 1;
        self.store.set_rounds_total(&ctx.id, total)?;
        let mut records: Vec<RoundRecord> = Vec::new();
        let mut best_state: Option<TrainState> = None;
        let mut default_state: Option<TrainState> = None;
        let mut p = match resume.as_ref().and_then(|r| r.checkpoint.as_deref()) {
            Some(c) => {
                let p: Progress = serde_json::from_slice(c).map_err(|e| {
                    Error::Job(format!("the automl checkpoint cannot be read: {e}"))
                })?;
                let pos = p.rng_word_pos.parse::<u128>().map_err(|e| {
                    Error::Job(format!("the automl checkpoint's RNG position: {e}"))
                })?;
                rng.set_word_pos(pos);
                if let Some((_, _, config, c)) = &p.best {
                    best_state = Some(self.restore_trial(ctx, &trial_facts, config, c)?);
                }
                if let Some((_, c)) = &p.default {
                    default_state =
                        Some(self.restore_trial(ctx, &trial_facts, &Config::new(), c)?);
                }
                p
            }
            None => {
                let mut queue = queue;
                queue.insert(
                    0,
                    Planned {
                        trial: 0,
                        config: None,
                        budget: full,
                    },
                );
                Progress {
                    next_trial: queue.iter().map(|p| p.trial).max().unwrap_or(0) + 1,
                    queue,
                    ..Progress::default()
                }
            }
        };
        if let Some(r) = resume {
            records = r.records;
            self.print_text(&[format!(
                "[{}] resuming the search after {} finished trials; {} to run",
                ctx.id,
                r.round,
                p.queue.len()
            )]);
        } else {
            self.print_text(&[format!(
                "automl: {} search over {} ({planned_total} trials and the default, up to {full} rounds each, {} at a time, scored by federated validation accuracy)",
                opts.search.name(),
                opts.space.params.keys().cloned().collect::<Vec<_>>().join(", "),
                opts.parallel_trials
            )]);
        }

        let mut running: FuturesUnordered<TrialFuture<'_>> = FuturesUnordered::new();
        // The trials in `running`, so a checkpoint can list them as not finished.
        let mut started: BTreeMap<u32, Planned> = BTreeMap::new();
        let parallel = opts.parallel_trials as usize;
        loop {
            // Fill the free slots.
            while running.len() < parallel {
                let next = if !p.queue.is_empty() {
                    Some(p.queue.remove(0))
                } else if opts.search == SearchAlgorithm::Tpe && p.proposed < opts.trials {
                    p.proposed += 1;
                    let config = opts.tpe.propose(&opts.space, &p.history, &mut rng);
                    p.next_trial += 1;
                    Some(Planned {
                        trial: p.next_trial - 1,
                        config: Some(config),
                        budget: full,
                    })
                } else {
                    None
                };
                let Some(next) = next else { break };
                started.insert(next.trial, next.clone());
                running.push(Box::pin(self.trial(ctx, &trial_facts, next)));
            }
            let Some(done) = running.next().await else {
                break;
            };
            let Finished {
                planned,
                outcome,
                seconds,
            } = done;
            started.remove(&planned.trial);
            let label = planned
                .config
                .as_ref()
                .map_or_else(|| "default".to_string(), config_label);
            let (score, status, rec) = match outcome {
                Ok(out) => {
                    let mut rec = out.last.clone();
                    rec.round = records.len() as u32 + 1;
                    rec.rounds_total = total;
                    rec.bytes_up = out.bytes_up;
                    rec.bytes_down = out.bytes_down;
                    rec.seconds = seconds;
                    rec.test_accuracy = None;
                    rec.test_loss = None;
                    let score = out.score;
                    match &planned.config {
                        None => {
                            p.default =
                                Some((score, nested::encode(&out.state.global.checkpoint()?)));
                            default_state = Some(out.state);
                        }
                        Some(c) => {
                            if let Some(s) = score {
                                p.history.push((c.clone(), s));
                                if planned.budget == full
                                    && p.best.as_ref().is_none_or(|(b, t, ..)| {
                                        s > *b || (s == *b && planned.trial < *t)
                                    })
                                {
                                    p.best = Some((
                                        s,
                                        planned.trial,
                                        c.clone(),
                                        nested::encode(&out.state.global.checkpoint()?),
                                    ));
                                    best_state = Some(out.state);
                                }
                            }
                            if rungs.is_some() {
                                p.rung_results.push((score, planned.trial, c.clone()));
                            }
                        }
                    }
                    (score, "ok".to_string(), Some(rec))
                }
                Err(Error::Cancelled) => return Err(Error::Cancelled),
                Err(e) if matches!(e, Error::ShuttingDown) => return Err(e),
                Err(e) => {
                    warn!(trial = planned.trial, "trial failed: {e}");
                    if let (Some(c), Some(_)) = (&planned.config, &rungs) {
                        p.rung_results.push((None, planned.trial, c.clone()));
                    }
                    (None, format!("failed: {e}"), None)
                }
            };
            let name = if planned.config.is_none() {
                "default  ".to_string()
            } else {
                format!("trial {:>3}/{planned_total}", planned.trial)
            };
            self.print_text(&[format!(
                "{name}  {label}  {} rounds  validation accuracy {}  {seconds:.2} s{}",
                planned.budget,
                score.map_or_else(|| "-".into(), |s| format!("{s:.4}")),
                if status == "ok" {
                    String::new()
                } else {
                    format!("  {status}")
                }
            )]);
            p.rows.push(TrialRow {
                trial: planned.trial,
                config: label,
                budget: planned.budget,
                score,
                seconds,
                status,
            });
            // Successive halving: when a rung is done, promote its best 1/eta.
            if let Some(rungs) = &rungs {
                let in_rung = rungs[p.rung].0;
                if p.rung_results.len() == in_rung
                    && running.is_empty()
                    && p.queue.is_empty()
                    && p.rung + 1 < rungs.len()
                {
                    p.rung_results.sort_by(|a, b| {
                        let score = |s: Option<f64>| s.unwrap_or(f64::NEG_INFINITY);
                        score(b.0).total_cmp(&score(a.0)).then(a.1.cmp(&b.1))
                    });
                    let (keep, budget) = rungs[p.rung + 1];
                    for (_, _, c) in p.rung_results.drain(..).take(keep) {
                        p.queue.push(Planned {
                            trial: p.next_trial,
                            config: Some(c),
                            budget,
                        });
                        p.next_trial += 1;
                    }
                    p.rung_results.clear();
                    p.rung += 1;
                }
            }
            // A finished trial is one metrics row, stored with where the search stands.
            if let Some(rec) = rec {
                p.rng_word_pos = rng.get_word_pos().to_string();
                let queue = std::mem::take(&mut p.queue);
                p.queue = started
                    .values()
                    .cloned()
                    .chain(queue.iter().cloned())
                    .collect();
                p.queue.sort_by_key(|t| t.trial);
                let checkpoint = serde_json::to_vec(&p)
                    .map_err(|e| Error::Job(format!("cannot write the automl checkpoint: {e}")));
                p.queue = queue;
                self.record(ctx, run, events, &rec, &checkpoint?, false)
                    .await?;
                records.push(rec);
            }
        }

        let (Some((default_score, _)), Some(default_state)) = (&p.default, default_state) else {
            return Err(Error::Job(
                "the default configuration's trial failed".into(),
            ));
        };
        let default_score = *default_score;
        let (Some((best_score, best_trial, best_config, _)), Some(best_state)) =
            (p.best.clone(), best_state)
        else {
            return Err(Error::Job(
                "no trial of the search finished with a validation score".into(),
            ));
        };
        // The test set, once each for the best and the default configuration.
        let (best_test, default_test) = match &test {
            Some(t) => (
                crate::engine::round::evaluate(&best_state.global, t.clone())
                    .await?
                    .map(|s| s.accuracy),
                crate::engine::round::evaluate(&default_state.global, t.clone())
                    .await?
                    .map(|s| s.accuracy),
            ),
            None => (None, None),
        };
        info!(best_trial, best_score, "automl search finished");
        let result = AutomlResult {
            search: opts.search.name().into(),
            trials: p.rows,
            best_trial,
            best_config: config_label(&best_config),
            best_validation_accuracy: best_score,
            best_test_accuracy: best_test,
            default_validation_accuracy: default_score,
            default_test_accuracy: default_test,
        };
        write_outputs(run, &result)?;
        let mut summary = Summary::from_rounds(&ctx.id, &ctx.spec, &records);
        // Trials are not rounds of one model: the best is the search's, not a round's.
        summary.best_round = None;
        summary.best_accuracy = None;
        summary.final_fed_accuracy = None;
        summary.final_test_accuracy = best_test;
        summary.automl = Some(result);
        let best_spec = ctx.spec.trial_spec(&best_config)?;
        run.write_model(
            &serde_json::json!({
                "config": best_config,
                "spec": &*best_spec,
                "global": best_state.global.to_json(),
            }),
            best_state.global.weights(),
        )?;
        summary.ended(ctx.created_ms);
        run.write_json("summary.json", &summary)?;
        Ok(summary)
    }

    /// A trial's model as a checkpoint left it.
    fn restore_trial(
        &self,
        ctx: &JobCtx,
        facts: &DataFacts,
        config: &Config,
        checkpoint: &str,
    ) -> Result<TrainState> {
        let tctx = trial_ctx(ctx, config, 0, ctx.spec.rounds)?;
        let mut state = tctx.init_state(facts.clone())?;
        state.global.restore(&nested::decode(checkpoint)?)?;
        Ok(state)
    }

    /// Runs one trial: its spec, its own task ids, the validation split, `budget` rounds.
    fn trial<'a>(
        &'a self,
        ctx: &'a JobCtx,
        facts: &'a DataFacts,
        planned: Planned,
    ) -> impl Future<Output = Finished> + Send + 'a {
        let span = tracing::info_span!("trial", trial = planned.trial);
        async move {
            let started = Instant::now();
            let outcome = self.trial_inner(ctx, facts, &planned).await;
            Finished {
                planned,
                outcome,
                seconds: started.elapsed().as_secs_f64(),
            }
        }
        .instrument(span)
    }

    async fn trial_inner(
        &self,
        ctx: &JobCtx,
        facts: &DataFacts,
        planned: &Planned,
    ) -> Result<TrialOutcome> {
        let config = planned.config.clone().unwrap_or_default();
        let tctx = trial_ctx(ctx, &config, planned.trial, planned.budget)?;
        let mut state = tctx.init_state(facts.clone())?;
        let (mut up, mut down) = (0u64, 0u64);
        let mut last = None;
        for round in 1..=planned.budget {
            let rec = tctx.run_round(round, &mut state).await?;
            up += rec.bytes_up;
            down += rec.bytes_down;
            last = Some(rec);
        }
        let last = last.ok_or_else(|| Error::Job("a trial of zero rounds".into()))?;
        Ok(TrialOutcome {
            score: last.fed_accuracy,
            last,
            bytes_up: up,
            bytes_down: down,
            state,
        })
    }
}

/// The context a trial runs in: the job's spec with the configuration's overrides and the
/// trial's budget, its own task ids, and the validation split.
fn trial_ctx(ctx: &JobCtx, config: &Config, trial: u32, budget: u32) -> Result<JobCtx> {
    let spec = ctx.spec.trial_spec(config)?.with_rounds(budget)?;
    Ok(JobCtx {
        id: format!("{}-t{trial}", ctx.id),
        spec,
        task_seq: Default::default(),
        validation: true,
        ..ctx.clone()
    })
}

fn plan(configs: Vec<Config>, budget: u32, first: u32) -> Vec<Planned> {
    configs
        .into_iter()
        .enumerate()
        .map(|(i, c)| Planned {
            trial: first + i as u32,
            config: Some(c),
            budget,
        })
        .collect()
}

/// `name=value` pairs, in name order.
pub fn config_label(c: &Config) -> String {
    if c.is_empty() {
        return "default".into();
    }
    c.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `trials.csv`, `trials.md` and `trials.svg` (validation score per trial, and the best so far).
fn write_outputs(run: &RunFolder, r: &AutomlResult) -> Result<()> {
    let dir = run.dir();
    let io = |name: &str, e| Error::io(format!("cannot write {}", dir.join(name).display()), e);
    let mut csv = String::from("trial,config,budget_rounds,validation_accuracy,seconds,status\n");
    let mut md = String::from(
        "| trial | configuration | rounds | validation accuracy | seconds |\n|---|---|---|---|---|\n",
    );
    let mut sorted = r.trials.clone();
    sorted.sort_by_key(|t| t.trial);
    for t in &sorted {
        let score = t.score.map_or_else(String::new, |s| format!("{s:.4}"));
        csv.push_str(&format!(
            "{},\"{}\",{},{},{:.3},\"{}\"\n",
            t.trial,
            t.config.replace('"', "'"),
            t.budget,
            score,
            t.seconds,
            t.status.replace('"', "'")
        ));
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} |\n",
            t.trial,
            t.config,
            t.budget,
            if score.is_empty() {
                t.status.clone()
            } else {
                score
            },
            t.seconds
        ));
    }
    let opt = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.4}"));
    md.push_str(&format!(
        "\nBest: trial {} ({}), validation accuracy {:.4}, test accuracy {}.\nDefault: validation accuracy {}, test accuracy {}.\n",
        r.best_trial,
        r.best_config,
        r.best_validation_accuracy,
        opt(r.best_test_accuracy),
        opt(r.default_validation_accuracy),
        opt(r.default_test_accuracy)
    ));
    std::fs::write(dir.join("trials.csv"), csv).map_err(|e| io("trials.csv", e))?;
    std::fs::write(dir.join("trials.md"), md).map_err(|e| io("trials.md", e))?;
    let points: Vec<(f64, f64)> = sorted
        .iter()
        .filter_map(|t| t.score.map(|s| (f64::from(t.trial), s)))
        .collect();
    if points.is_empty() {
        return Ok(());
    }
    let mut best_so_far = Vec::with_capacity(points.len());
    let mut b = f64::MIN;
    for &(x, y) in points.iter().filter(|p| p.0 > 0.0) {
        b = b.max(y);
        best_so_far.push((x, b));
    }
    let mut by_budget: BTreeMap<u32, Vec<(f64, f64)>> = BTreeMap::new();
    for t in &sorted {
        if let Some(s) = t.score {
            by_budget
                .entry(t.budget)
                .or_default()
                .push((f64::from(t.trial), s));
        }
    }
    let mut series: Vec<Series> = by_budget
        .into_iter()
        .map(|(budget, points)| Series {
            label: format!("trial score ({budget} rounds)"),
            points,
        })
        .collect();
    series.push(Series {
        label: "best so far".into(),
        points: best_so_far,
    });
    let svg = line_charts_svg(
        &[Panel {
            title: format!(
                "{} search: validation accuracy per trial (0 = default)",
                r.search
            ),
            x_label: "trial".into(),
            y_label: "validation accuracy".into(),
            series,
        }],
        1,
        (720, 400),
    )?;
    std::fs::write(dir.join("trials.svg"), svg).map_err(|e| io("trials.svg", e))
}
